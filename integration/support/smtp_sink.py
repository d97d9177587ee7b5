#!/usr/bin/env python3
"""A real SMTP server on loopback for astban's mail tests (aiosmtpd).

Prints `PORT <n>` once listening, then one JSON object per received mail:
{"from": ..., "to": [...], "data": "<the whole message>"}.
"""
import asyncio
import json
import socket
import sys

from aiosmtpd.controller import Controller


class Record:
    async def handle_DATA(self, server, session, envelope):
        print(json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        }), flush=True)
        return "250 OK"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    port = free_port()
    controller = Controller(Record(), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"PORT {port}", flush=True)
    try:
        # Exit when the test closes our stdin (or dies).
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

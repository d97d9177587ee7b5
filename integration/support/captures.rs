//! Working with the byte-exact captures in `integration/fixtures/`: picking
//! AMI messages out of a capture, and moving a capture's times to now so
//! that a daemon (whose engine drops failures older than `findtime`)
//! counts a replay as if the attack were happening.
//!
//! Include it with `#[path = "support/captures.rs"] mod captures;`.

// Each test target uses a different part of this helper.
#![allow(dead_code)]

use jiff::civil::DateTime;
use jiff::{SignedDuration, Timestamp, ZonedDateTime};

/// The messages of AMI bytes (after the banner, if they start with one),
/// each with its `\r\n\r\n` end; bytes after the last complete message
/// are left out.
pub fn messages(bytes: &[u8]) -> Vec<&[u8]> {
    let mut rest = bytes;
    if rest.starts_with(b"Asterisk Call Manager/") {
        let banner_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(0, |p| p + 2);
        rest = &rest[banner_end..];
    }
    let mut out = Vec::new();
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let (message, tail) = rest.split_at(end + 4);
        out.push(message);
        rest = tail;
    }
    out
}

/// The value of the first `key` line of one AMI message.
pub fn field<'a>(message: &'a [u8], key: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(message).ok()?;
    text.split("\r\n").find_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(": "))
    })
}

/// Whether an AMI message is event `name`.
pub fn is_event(message: &[u8], name: &str) -> bool {
    field(message, "Event") == Some(name)
}

/// The events of AMI bytes whose `RemoteAddress` is `host` (any transport,
/// any port), concatenated.
pub fn events_from(bytes: &[u8], host: &str) -> Vec<u8> {
    messages(bytes)
        .into_iter()
        .filter(|m| field(m, "Event").is_some())
        .filter(|m| {
            field(m, "RemoteAddress")
                .and_then(|a| a.split('/').nth(2))
                .is_some_and(|h| h == host)
        })
        .flatten()
        .copied()
        .collect()
}

/// Splits AMI bytes after the `n`th (1-based) event named `event`: the
/// messages through it, and the messages after it.
pub fn split_after_event(bytes: &[u8], event: &str, n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut seen = 0;
    let mut head = Vec::new();
    let mut tail = Vec::new();
    for message in messages(bytes) {
        if seen < n {
            head.extend_from_slice(message);
            if is_event(message, event) {
                seen += 1;
            }
        } else {
            tail.extend_from_slice(message);
        }
    }
    assert_eq!(seen, n, "the capture has only {seen} {event} events");
    (head, tail)
}

/// AMI bytes with every `EventTV:` and `SessionTV:` value moved by one
/// offset so that the latest is now: the events keep their order and the
/// milliseconds between them (an attempt's events stay as close together
/// as Asterisk raised them). Everything else is kept byte for byte.
pub fn fresh_event_times(bytes: &[u8]) -> Vec<u8> {
    const KEYS: [&[u8]; 2] = [b"EventTV: ", b"SessionTV: "];
    let time_of = |line: &[u8]| -> Option<(usize, Timestamp)> {
        let key = KEYS.iter().find(|k| line.starts_with(k))?;
        let value = std::str::from_utf8(&line[key.len()..]).ok()?;
        let value = value.trim_end_matches(['\r', '\n']);
        let t = Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%z", value)
            .unwrap_or_else(|e| panic!("unparsable AMI time {value:?}: {e}"));
        Some((key.len(), t))
    };
    let lines = || bytes.split_inclusive(|&b| b == b'\n');
    let Some(latest) = lines().filter_map(|l| time_of(l).map(|(_, t)| t)).max() else {
        return bytes.to_vec();
    };
    let offset = Timestamp::now().duration_since(latest);
    let mut out = Vec::with_capacity(bytes.len());
    for line in lines() {
        match time_of(line) {
            Some((key_len, t)) => {
                let moved = t.checked_add(offset).expect("a representable time");
                out.extend_from_slice(&line[..key_len]);
                out.extend_from_slice(
                    moved
                        .strftime("%Y-%m-%dT%H:%M:%S%.3f%z")
                        .to_string()
                        .as_bytes(),
                );
                out.extend_from_slice(&line[line.len() - line_end(line)..]);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// `messages` log bytes with the `[%Y-%m-%d %H:%M:%S]` stamp that starts a
/// line moved by one offset so that the latest is now, in this host's time
/// zone (as Asterisk writes it, and as astban reads it): lines keep their
/// order and the seconds between them. Lines without a stamp (there are
/// none in a real log, but an attacker's newline can make one) and every
/// other byte are kept as they are; a stamp an attacker forged at the start
/// of a line moves like Asterisk's own.
pub fn fresh_log_times(bytes: &[u8]) -> Vec<u8> {
    const STAMP: usize = "[2026-12-01 07:38:12]".len();
    let time_of = |line: &[u8]| -> Option<DateTime> {
        let stamp = std::str::from_utf8(line.get(..STAMP)?).ok()?;
        DateTime::strptime("[%Y-%m-%d %H:%M:%S]", stamp).ok()
    };
    let lines = || bytes.split_inclusive(|&b| b == b'\n');
    let Some(latest) = lines().filter_map(time_of).max() else {
        return bytes.to_vec();
    };
    let offset: SignedDuration = ZonedDateTime::now().datetime().duration_since(latest);
    let mut out = Vec::with_capacity(bytes.len());
    for line in lines() {
        match time_of(line) {
            Some(t) => {
                let moved = t.checked_add(offset).expect("a representable time");
                out.extend_from_slice(moved.strftime("[%Y-%m-%d %H:%M:%S]").to_string().as_bytes());
                out.extend_from_slice(&line[STAMP..]);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// The lines of log bytes (each with its `\n`) that contain `needle`.
pub fn log_lines_with(bytes: &[u8], needle: &str) -> Vec<u8> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .flatten()
        .copied()
        .collect()
}

/// The first `n` lines of log bytes, and the rest.
pub fn split_log_lines(bytes: &[u8], n: usize) -> (Vec<u8>, Vec<u8>) {
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    assert!(lines.len() >= n, "only {} lines, not {n}", lines.len());
    (lines[..n].concat(), lines[n..].concat())
}

/// How many bytes of `\r\n` or `\n` end `line`.
fn line_end(line: &[u8]) -> usize {
    line.iter()
        .rev()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

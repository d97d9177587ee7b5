//! A real SMTP server on loopback (Python's aiosmtpd) that records what it
//! receives. Killed when dropped.

// Each test target uses a different part of this helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

/// One received mail.
#[derive(Debug, serde::Deserialize)]
pub struct Received {
    pub to: Vec<String>,
    pub data: String,
}

impl Received {
    /// The Subject header (lettre may fold or encode long ones; ours are
    /// short ASCII).
    pub fn subject(&self) -> &str {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
    }
}

pub struct SmtpSink {
    child: Child,
    _stdin: ChildStdin,
    pub port: u16,
    mails: mpsc::UnboundedReceiver<Received>,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/integration/support/smtp_sink.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed for the mail tests");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .expect("the SMTP sink did not start: install aiosmtpd (pip install aiosmtpd)");
        let port = first
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the SMTP sink: {first}"));
        let (tx, mails) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mail: Received = serde_json::from_str(&line).expect("sink writes JSON");
                if tx.send(mail).is_err() {
                    return;
                }
            }
        });
        SmtpSink {
            child,
            _stdin: stdin,
            port,
            mails,
        }
    }

    /// The next mail, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.mails.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

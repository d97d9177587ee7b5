//! What the demo plays, in order, and what it says about it.
//!
//! Asterisk writes every attempt to its log and sends it as a security
//! event to the AMI sessions it has at that moment. The script does the
//! same with real captures (attackers renumbered into documentation ranges,
//! times moved to now): while the AMI session is up both inputs see each
//! attempt and AMI's count is the one that counts; then the session drops,
//! the log alone sees the REGISTER flood and its count takes over; then
//! AMI comes back for the last attack.
//!
//! The daemon is a black box here: the script watches it only through the
//! control socket, like `astban status` in another terminal would.

use std::collections::BTreeSet;
use std::io::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ami::{Ami, event_time};
use crate::control::protocol::InputState;
use crate::control::{Client, Status};
use crate::units::format_net;

/// One attack, as Asterisk reported it over AMI and in `messages`.
struct Step {
    what: &'static str,
    ami: &'static [u8],
    log: &'static str,
}

const CHANSIP: Step = Step {
    what: "chan_sip: wrong passwords, an unknown peer, a peer ACL, AMI login failures",
    ami: include_bytes!("../../examples/demo/ami-chansip.txt"),
    log: include_str!("../../examples/demo/messages-chansip.log"),
};
const PJSIP: Step = Step {
    what: "PJSIP: wrong passwords, an unknown endpoint, an endpoint ACL, INVITEs matching no endpoint",
    ami: include_bytes!("../../examples/demo/ami-pjsip.txt"),
    log: include_str!("../../examples/demo/messages-pjsip.log"),
};
const SVCRACK_PJSIP: Step = Step {
    what: "sipvicious svcrack guessing 31 passwords of PJSIP endpoint 300 with one Call-ID, from 203.0.113.102",
    ami: include_bytes!("../../examples/demo/ami-svcrack-pjsip.txt"),
    log: include_str!("../../examples/demo/messages-svcrack-pjsip.log"),
};
/// Played while AMI is down: only the log sees it.
const FLOOD: Step = Step {
    what: "a REGISTER flood: 30 hosts (198.51.100.10-39), 5 wrong passwords each",
    ami: b"",
    log: include_str!("../../examples/demo/messages-register-flood.log"),
};
const SVCRACK_CHANSIP: Step = Step {
    what: "svcrack guessing 31 passwords of chan_sip peer 100, from 203.0.113.101",
    ami: include_bytes!("../../examples/demo/ami-svcrack-chansip.txt"),
    log: include_str!("../../examples/demo/messages-svcrack-chansip.log"),
};

/// Gap between two AMI events or two log lines, so the bans can be
/// watched as they happen while the whole replay takes seconds.
const PACE: Duration = Duration::from_millis(15);
/// A breath between acts, for the human reading along.
const PAUSE: Duration = Duration::from_millis(1500);
/// How often the script asks the daemon for its status.
const POLL: Duration = Duration::from_millis(100);
/// Longest wait for the daemon to reach a state; past it the script says
/// so and stops replaying (the daemon keeps running).
const PATIENCE: Duration = Duration::from_secs(30);

/// What the script needs: the demo AMI, the daemon's socket, the log.
pub struct Stage<'a> {
    pub ami: &'a Ami,
    pub socket: &'a Path,
    pub log: &'a Path,
}

/// Why the replay stopped early.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("stopped")]
    Shutdown,
    #[error("the daemon did not {0} within {PATIENCE:?}")]
    Waited(&'static str),
    #[error("cannot write the replayed log: {0}")]
    Log(io::Error),
}

/// Plays the whole script, narrating, until it ends or `shutdown`.
pub async fn play(stage: Stage<'_>, shutdown: CancellationToken) {
    let (status_tx, status) = watch::channel(None);
    let watcher = tokio::spawn(watch_status(
        Client::new(stage.socket),
        status_tx,
        shutdown.clone(),
    ));
    let mut player = Player {
        stage,
        status,
        shutdown: shutdown.clone(),
        lines: 0,
        banned: BTreeSet::new(),
    };
    match player.run().await {
        Ok(()) | Err(Stopped::Shutdown) => {}
        Err(e) => say(&format!("replay stopped: {e}")),
    }
    shutdown.cancelled().await;
    let _ = watcher.await;
}

struct Player<'a> {
    stage: Stage<'a>,
    status: watch::Receiver<Option<Status>>,
    shutdown: CancellationToken,
    /// Log lines written so far.
    lines: u64,
    /// Bans already announced.
    banned: BTreeSet<String>,
}

impl Player<'_> {
    async fn run(&mut self) -> Result<(), Stopped> {
        self.until("log in to AMI", |s| s.ami.state == InputState::Up)
            .await?;
        self.pause().await?;
        say(
            "act 1: AMI is up, so AMI counts; the log sees the same attempts and is not counted twice",
        );
        for step in [&CHANSIP, &PJSIP, &SVCRACK_PJSIP] {
            self.play(step, true).await?;
        }
        self.settle().await?;

        say("act 2: the AMI session drops (as when Asterisk restarts); the log takes over");
        self.stage.ami.go_down();
        self.until("notice the AMI session down", |s| {
            s.ami.state == InputState::Down && s.log.counting
        })
        .await?;
        self.play(&FLOOD, false).await?;
        self.settle().await?;

        say("act 3: AMI is back; it counts again");
        self.stage.ami.come_back();
        self.until("log in to AMI again", |s| s.ami.state == InputState::Up)
            .await?;
        self.pause().await?;
        self.play(&SVCRACK_CHANSIP, true).await?;
        self.settle().await?;

        let socket = self.stage.socket.display();
        say(&format!(
            "replay finished. astban keeps running (Ctrl-C to stop); see for yourself:\n  \
             astban status --socket {socket}\n  astban bans --socket {socket}"
        ));
        Ok(())
    }

    /// Replays one attack: its log lines as Asterisk writes them, and its
    /// events to the AMI session when there is one.
    async fn play(&mut self, step: &Step, ami_up: bool) -> Result<(), Stopped> {
        say(&format!("replaying {}", step.what));
        let events = if ami_up { events(step.ami) } else { Vec::new() };
        let mut lines = step.log.lines();
        let mut events = events.into_iter();
        // Interleaved: each log line and each event at PACE.
        loop {
            let (line, event) = (lines.next(), events.next());
            if line.is_none() && event.is_none() {
                return Ok(());
            }
            if let Some(line) = line {
                append_now(self.stage.log, line).map_err(Stopped::Log)?;
                self.lines += 1;
            }
            if let Some(event) = event {
                tokio::select! {
                    () = self.shutdown.cancelled() => return Err(Stopped::Shutdown),
                    () = self.stage.ami.send(restamp(event)) => {}
                }
            }
            self.sleep(PACE).await?;
        }
    }

    /// Waits until the daemon has read every line written, gives the
    /// engine a moment, then says what changed.
    async fn settle(&mut self) -> Result<(), Stopped> {
        let written = self.lines;
        self.until("read the replayed log", |s| s.log_read.lines >= written)
            .await?;
        self.pause().await?;
        let Some(s) = self.status.borrow().clone() else {
            return Ok(());
        };
        let bans = Client::new(self.stage.socket)
            .bans()
            .await
            .unwrap_or_default();
        let mut nets: Vec<_> = bans.iter().map(|b| b.net).collect();
        nets.sort();
        let new: Vec<String> = nets
            .into_iter()
            .map(format_net)
            .filter(|h| self.banned.insert(h.clone()))
            .collect();
        let c = &s.counted;
        say(&format!(
            "so far: {} bans ({}); counted from AMI {} (not counted {}), from the log {} (not counted {})",
            s.engine.active_bans,
            match new.len() {
                0 => "none new".to_owned(),
                n if n > 4 => format!("{n} new: {} ... {}", new[0], new[n - 1]),
                _ => format!("new: {}", new.join(", ")),
            },
            c.ami_counted,
            c.ami_dropped,
            c.log_counted,
            c.log_dropped,
        ));
        Ok(())
    }

    async fn until(
        &mut self,
        what: &'static str,
        done: impl Fn(&Status) -> bool,
    ) -> Result<(), Stopped> {
        let shutdown = self.shutdown.clone();
        let reached = self.status.wait_for(|s| s.as_ref().is_some_and(&done));
        tokio::select! {
            () = shutdown.cancelled() => Err(Stopped::Shutdown),
            r = tokio::time::timeout(PATIENCE, reached) => match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(Stopped::Shutdown),
                Err(_) => Err(Stopped::Waited(what)),
            },
        }
    }

    async fn pause(&self) -> Result<(), Stopped> {
        self.sleep(PAUSE).await
    }

    async fn sleep(&self, d: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = self.shutdown.cancelled() => Err(Stopped::Shutdown),
            () = tokio::time::sleep(d) => Ok(()),
        }
    }
}

/// Polls the daemon's status for the script, and says when an input
/// starts or stops counting: the switch-over, as it happens.
async fn watch_status(
    client: Client,
    status: watch::Sender<Option<Status>>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(POLL);
    let mut last = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Not up yet, or stopping: ask again at the next tick.
        let Ok(s) = client.status().await else {
            continue;
        };
        let now = (s.ami.state, s.ami.counting, s.log.counting);
        if last != Some(now) {
            last = Some(now);
            let detail = s
                .ami
                .detail
                .as_deref()
                .map_or(String::new(), |d| format!(" ({d})"));
            // What AMI reports always counts (it reports nothing while
            // down); whether the log counts is the switch-over.
            let log = if s.log.counting {
                "counting"
            } else {
                "not counting"
            };
            say(&format!(
                "status: ami {}{detail}; log {}, {log}",
                s.ami.state.as_str(),
                s.log.state.as_str(),
            ));
        }
        status.send_replace(Some(s));
    }
}

/// Narration: one stderr line the demo owns. Not eprintln!: a closed
/// stderr must not stop the demo.
fn say(line: &str) {
    let _ = writeln!(io::stderr(), "demo: {line}");
}

/// The events of an AMI capture, each with its `\r\n\r\n` end; the
/// banner and the responses to the capturing client's actions are left
/// out (the demo AMI answers astban's own).
fn events(capture: &[u8]) -> Vec<&[u8]> {
    let mut rest = capture;
    let mut out = Vec::new();
    while let Some(end) = memchr::memmem::find(rest, b"\r\n\r\n") {
        let (message, tail) = rest.split_at(end + 4);
        if let Some(start) = memchr::memmem::find(message, b"Event: ") {
            // The first message follows the banner line.
            out.push(&message[start..]);
        }
        rest = tail;
    }
    out
}

/// An event with its `EventTV` (and `SessionTV`) moved to now: the engine
/// counts only failures within `findtime`, and the input gate judges each
/// by the time Asterisk saw it.
fn restamp(event: &[u8]) -> Vec<u8> {
    let now = event_time(jiff::Timestamp::now());
    let mut out = Vec::with_capacity(event.len());
    for line in event.split_inclusive(|&b| b == b'\n') {
        match [&b"EventTV: "[..], b"SessionTV: "]
            .into_iter()
            .find(|key| line.starts_with(key))
        {
            Some(key) => {
                out.extend_from_slice(key);
                out.extend_from_slice(now.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// Appends `line` with its `[YYYY-MM-DD HH:MM:SS]` stamp replaced by now.
fn append_now(path: &Path, line: &str) -> io::Result<()> {
    let now = jiff::ZonedDateTime::now()
        .strftime("[%Y-%m-%d %H:%M:%S]")
        .to_string();
    let rest = line.split_once("] ").map_or(line, |(_, rest)| rest);
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(file, "{now} {rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_capture_yields_its_events() {
        // Counted in the captures (CAPTURES.md): ChallengeSent included.
        assert_eq!(events(CHANSIP.ami).len(), 17);
        assert_eq!(events(PJSIP.ami).len(), 25);
        assert_eq!(events(SVCRACK_PJSIP.ami).len(), 33);
        assert_eq!(events(SVCRACK_CHANSIP.ami).len(), 64);
        for step in [&CHANSIP, &PJSIP, &SVCRACK_PJSIP, &SVCRACK_CHANSIP] {
            assert!(events(step.ami).iter().all(|e| e.starts_with(b"Event: ")));
        }
    }

    #[test]
    fn no_attacker_is_left_on_loopback_or_in_the_capture_network() {
        for step in [&CHANSIP, &PJSIP, &SVCRACK_PJSIP, &FLOOD, &SVCRACK_CHANSIP] {
            let text = String::from_utf8_lossy(step.ami);
            for line in text.lines().chain(step.log.lines()) {
                if let Some(addr) = line.strip_prefix("RemoteAddress: ") {
                    assert!(
                        !addr.contains("/127.0.0.") || addr.contains("/127.0.0.1/"),
                        "{line}"
                    );
                    assert!(!addr.contains("10.203."), "{line}");
                }
                assert!(!line.contains("failed for '127.0.0.2"), "{line}");
            }
        }
    }

    #[test]
    fn restamping_changes_only_the_times() {
        let event = b"Event: InvalidPassword\r\nEventTV: 2026-11-24T16:03:18.933+0000\r\nService: SIP\r\n\r\n";
        let out = String::from_utf8(restamp(event)).unwrap();
        let tv = out
            .lines()
            .find_map(|l| l.strip_prefix("EventTV: "))
            .unwrap();
        assert!(tv.parse::<jiff::Timestamp>().is_ok(), "{tv}");
        assert_ne!(tv, "2026-11-24T16:03:18.933+0000");
        assert!(out.starts_with("Event: InvalidPassword\r\nEventTV: "));
        assert!(out.ends_with("\r\nService: SIP\r\n\r\n"));
    }
}

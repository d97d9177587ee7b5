//! The fleet link: astban's bans shared through a CrowdSec Local API.
//!
//! The push task follows the engine's events and turns bans into alerts
//! (and `astban unban` into deletions) through a bounded queue kept in the
//! state dir, so a LAPI that is down or slow only delays them; it is never
//! in the path of local protection. The pull task polls the decision
//! stream ([`Lapi::stream`], [`api::parse_stream`]) and hands it to the
//! engine, which keeps pulled bans apart from its own and lets `ignoreip`
//! win over them.

pub mod api;
pub mod client;

mod pull;
mod push;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::engine::BanInfo;
use crate::failure::{FailureKind, Service};

pub use client::{Lapi, LapiError};

pub use pull::run_pull;
pub use push::{QUEUE_FILE, run_push};

/// The scenario suffixes astban pushes (for the machine's login).
pub const KIND_SCENARIOS: &[&str] = &[
    "sip-bruteforce",
    "sip-scan",
    "iax-bruteforce",
    "iax-scan",
    "ami-bruteforce",
    "ami-scan",
    "manual",
];

/// The scenario suffix of `ban`: the service attacked and whether it was
/// guessing passwords (`bruteforce`) or probing accounts, ACLs or the
/// dial plan (`scan`).
pub fn scenario_of(ban: &BanInfo) -> &'static str {
    if ban.manual && ban.failures == 0 {
        return "manual";
    }
    let service = match ban.services.iter().next() {
        Some(Service::Iax2) => "iax",
        Some(Service::Ami) => "ami",
        _ => "sip",
    };
    let guessing = ban.kinds.contains(FailureKind::InvalidPassword)
        || ban.kinds.contains(FailureKind::ChallengeResponseFailed);
    match (service, guessing) {
        ("iax", true) => "iax-bruteforce",
        ("iax", false) => "iax-scan",
        ("ami", true) => "ami-bruteforce",
        ("ami", false) => "ami-scan",
        (_, true) => "sip-bruteforce",
        (_, false) => "sip-scan",
    }
}

/// The LAPI link, for `astban status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The LAPI's URL.
    pub url: String,
    /// Whether the last request went through.
    pub up: bool,
    /// Since when it is up or down (`None` before the first request).
    pub since: Option<Timestamp>,
    /// Why it is down, while it is.
    pub error: Option<String>,
    /// When bans were last pushed.
    pub last_push: Option<Timestamp>,
    /// When the stream was last read.
    pub last_pull: Option<Timestamp>,
    /// Pushes and deletions waiting for the LAPI.
    pub queued: usize,
    /// Pushes dropped because the queue was full.
    pub dropped: u64,
    /// Bans pulled from the LAPI in force.
    pub pulled_bans: usize,
    /// Whether pushing and pulling are on.
    pub push: bool,
    /// Whether pulling is on.
    pub pull: bool,
}

/// The status shared by the two tasks and read by the control socket.
#[derive(Debug, Clone)]
pub struct Link(std::sync::Arc<watch::Sender<FleetStatus>>);

impl Link {
    /// A link to `url`, neither up nor down yet.
    pub fn new(url: &str, push: bool, pull: bool) -> Link {
        Link(std::sync::Arc::new(watch::Sender::new(FleetStatus {
            url: url.to_owned(),
            push,
            pull,
            ..FleetStatus::default()
        })))
    }

    /// The status now.
    pub fn status(&self) -> FleetStatus {
        self.0.borrow().clone()
    }

    fn update(&self, f: impl FnOnce(&mut FleetStatus)) {
        self.0.send_modify(f);
    }

    /// Records the outcome of a request (logged on a change only).
    fn outcome(&self, result: Result<(), &LapiError>) {
        let now = Timestamp::now();
        self.update(|s| match result {
            Ok(()) => {
                if !s.up {
                    tracing::info!(url = %s.url, "CrowdSec LAPI reachable");
                    s.up = true;
                    s.since = Some(now);
                    s.error = None;
                }
            }
            Err(e) => {
                let text = e.to_string();
                if s.up || s.since.is_none() || s.error.as_deref() != Some(&text) {
                    tracing::warn!(url = %s.url, "CrowdSec LAPI: {text}; local bans go on");
                }
                if s.up || s.since.is_none() {
                    s.since = Some(now);
                }
                s.up = false;
                s.error = Some(text);
            }
        });
    }
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug)]
struct Backoff {
    min: std::time::Duration,
    max: std::time::Duration,
    next: std::time::Duration,
}

impl Backoff {
    fn new(min: std::time::Duration, max: std::time::Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next try, doubling each call.
    fn wait(&mut self) -> std::time::Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

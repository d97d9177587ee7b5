//! What travels on the control socket: one [`Request`] line from the CLI,
//! one [`Answer`] line back, typed at both ends.
//!
//! Each request has exactly one reply type, fixed by [`Handler`]'s methods
//! on the daemon's side and [`Client`]'s on the CLI's, so a renamed field
//! is a compile error, never a silent `-` in `astban status`.
//!
//! [`Handler`]: super::Handler
//! [`Client`]: super::Client

use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::InputMode;
use crate::engine::{BanError, EngineStats};
use crate::input::GateStats;
use crate::logwatch::LogStats;
use crate::names::NameStatus;
use crate::units::{format_net, host_format};

/// What the CLI asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Inputs, counts, firewall health: answered with a [`Status`].
    Status,
    /// Active bans: answered with a list of [`BanInfo`](crate::engine::BanInfo).
    Bans,
    /// Ban a network now: answered with the ban made.
    Ban {
        /// The address or network, as the CLI parsed it.
        #[serde(with = "host_format")]
        host: IpNet,
        /// Ban length; the jail's bantime when absent.
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        duration: Option<Duration>,
        /// Ban even if `ignoreip` covers it.
        #[serde(default)]
        force: bool,
    },
    /// Lift a ban: answered with the ban lifted.
    Unban {
        /// The address or network.
        #[serde(with = "host_format")]
        host: IpNet,
    },
}

/// The daemon's answer to one request: `{"ok": reply}` or
/// `{"refused": {"reason": ..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer<T> {
    /// The request was carried out.
    Ok(T),
    /// It was not, and why.
    Refused(Refusal),
}

impl<T> From<Result<T, Refusal>> for Answer<T> {
    fn from(result: Result<T, Refusal>) -> Answer<T> {
        match result {
            Ok(value) => Answer::Ok(value),
            Err(refusal) => Answer::Refused(refusal),
        }
    }
}

/// Why the daemon did not carry out a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    /// The request line was not a request this daemon knows (a CLI of
    /// another version, or not the CLI at all).
    #[error("bad request: {message}")]
    BadRequest {
        /// What the decoder said.
        message: String,
    },
    /// The request line was longer than any request.
    #[error("request too long (at most {max} bytes)")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The daemon is shutting down.
    #[error("the ban engine has stopped")]
    EngineStopped,
    /// `unban` of a network astban has not banned.
    #[error(
        "{} is not banned by astban (any element of it was removed from astban's sets)",
        format_net(*host)
    )]
    NotBanned {
        /// The network asked for.
        #[serde(with = "host_format")]
        host: IpNet,
    },
    /// The engine refused a manual ban.
    #[error(transparent)]
    Ban {
        /// Why.
        #[from]
        error: BanError,
    },
}

/// What `astban status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// astban's version.
    pub version: String,
    /// When the daemon started.
    pub started: Timestamp,
    /// `auto`, `ami` or `log`.
    pub input_mode: InputMode,
    /// The AMI input.
    pub ami: InputStatus,
    /// The log input.
    pub log: InputStatus,
    /// What the log input has read.
    pub log_read: LogStats,
    /// Reports of each input that counted, or not, under the input mode.
    pub counted: GateStats,
    /// The engine's and firewall's counters.
    pub engine: EngineStats,
    /// The last SIGHUP reload, if there was one since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    /// The host names of `jail.ignoreip`: their addresses, and the ones
    /// that stopped resolving.
    #[serde(default)]
    pub ignore_names: Vec<NameStatus>,
    /// The CrowdSec LAPI link, when `[crowdsec]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::crowdsec::FleetStatus>,
}

/// One input's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputStatus {
    /// What it is doing.
    pub state: InputState,
    /// Whether its failures count right now.
    pub counting: bool,
    /// Since when, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Details for humans: why AMI is down, which file the log input reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What an input is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputState {
    /// Not used in this input mode.
    #[serde(rename = "off")]
    Off,
    /// AMI: not connected yet since start.
    #[serde(rename = "connecting")]
    Connecting,
    /// AMI: logged in and receiving security events.
    #[serde(rename = "up")]
    Up,
    /// AMI: the session is gone; reconnecting.
    #[serde(rename = "down")]
    Down,
    /// Log: reading the file as it grows.
    #[serde(rename = "following")]
    Following,
    /// Log: the file does not exist (yet).
    #[serde(rename = "waiting for the file")]
    WaitingForFile,
}

impl InputState {
    /// The word `astban status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            InputState::Off => "off",
            InputState::Connecting => "connecting",
            InputState::Up => "up",
            InputState::Down => "down",
            InputState::Following => "following",
            InputState::WaitingForFile => "waiting for the file",
        }
    }
}

/// What the last reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// When it happened.
    pub at: Timestamp,
    /// Why the new file was refused (the running config was kept), if it
    /// was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Settings applied live (`log rules`, `jail`).
    pub applied: Vec<String>,
    /// Sections that changed in the file but only take effect after a
    /// restart; until then the daemon runs with the old values.
    pub restart_needed: Vec<String>,
}

impl ReloadReport {
    /// A reload that applied nothing yet, now.
    pub fn now() -> ReloadReport {
        ReloadReport {
            at: Timestamp::now(),
            refused: None,
            applied: Vec::new(),
            restart_needed: Vec::new(),
        }
    }

    /// A reload refused for `why`: the running config was kept.
    pub fn refused(why: String) -> ReloadReport {
        ReloadReport {
            refused: Some(why),
            ..ReloadReport::now()
        }
    }
}

//! What each control request does in the running daemon: asks the engine,
//! and reads the inputs' published state for `status`.

use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};

use super::protocol::{InputState, InputStatus, Refusal, ReloadReport, Status};
use super::server::Handler;
use crate::ami::client::Health;
use crate::config::InputMode;
use crate::engine::{BanError, BanInfo, EngineGone, EngineHandle, EngineStats};
use crate::input::GateStats;
use crate::logwatch::LogStats;
use crate::names::NameStatus;

/// Bans per page when `astban bans` streams its answer: small enough that
/// the daemon holds next to nothing, large enough to cost few round trips.
const BANS_PAGE: usize = 500;

/// The control socket's view of the daemon: the engine to ask, and the
/// latest state each input published.
#[derive(Debug)]
pub struct DaemonHandler {
    /// The ban engine.
    pub engine: EngineHandle,
    /// The input mode the daemon runs in.
    pub mode: InputMode,
    /// When the daemon started.
    pub started: Timestamp,
    /// The AMI session's health.
    pub health: watch::Receiver<Health>,
    /// What the log input has read.
    pub log_stats: watch::Receiver<LogStats>,
    /// What the gate has counted.
    pub gate_stats: watch::Receiver<GateStats>,
    /// What the last reload did.
    pub reload: watch::Receiver<Option<ReloadReport>>,
    /// What the resolver knows of `jail.ignoreip`'s host names.
    pub names: watch::Receiver<Vec<NameStatus>>,
    /// The CrowdSec LAPI link, when `[crowdsec]` is on.
    pub fleet: Option<crate::crowdsec::Link>,
}

impl From<EngineGone> for Refusal {
    fn from(_: EngineGone) -> Refusal {
        Refusal::EngineStopped
    }
}

impl DaemonHandler {
    fn status_with(&self, engine: EngineStats) -> Status {
        let log_read = self.log_stats.borrow().clone();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            started: self.started,
            input_mode: self.mode,
            ami: self.ami_status(),
            log: self.log_status(&log_read),
            log_read,
            counted: *self.gate_stats.borrow(),
            engine,
            reload: self.reload.borrow().clone(),
            ignore_names: self.names.borrow().clone(),
            fleet: self.fleet.as_ref().map(crate::crowdsec::Link::status),
        }
    }

    fn ami_status(&self) -> InputStatus {
        if !self.mode.uses_ami() {
            return InputStatus::off();
        }
        let (state, since, detail) = match self.health.borrow().clone() {
            Health::Connecting => (InputState::Connecting, None, None),
            Health::Up { since, .. } => (InputState::Up, Some(since), None),
            Health::Down { since, reason, .. } => (InputState::Down, Some(since), Some(reason)),
        };
        InputStatus {
            // Its reports count whenever they arrive; while it is not up,
            // none do.
            counting: state == InputState::Up,
            state,
            since,
            detail,
        }
    }

    fn log_status(&self, read: &LogStats) -> InputStatus {
        if !self.mode.uses_log() {
            return InputStatus::off();
        }
        let ami_up = matches!(*self.health.borrow(), Health::Up { .. });
        InputStatus {
            state: match read.file_missing {
                false => InputState::Following,
                true => InputState::WaitingForFile,
            },
            // The file actually read: after a reload that changed
            // log.path it is still the old one until a restart.
            detail: read.path.as_ref().map(|p| p.display().to_string()),
            counting: match self.mode {
                InputMode::Log => true,
                InputMode::Ami => false,
                InputMode::Auto => !ami_up,
            },
            since: None,
        }
    }
}

impl InputStatus {
    fn off() -> InputStatus {
        InputStatus {
            state: InputState::Off,
            counting: false,
            since: None,
            detail: None,
        }
    }
}

impl Handler for DaemonHandler {
    async fn status(&self) -> Result<Status, Refusal> {
        Ok(self.status_with(self.engine.stats().await?))
    }

    async fn bans(&self) -> Result<mpsc::Receiver<Vec<BanInfo>>, Refusal> {
        // The first page before answering: a stopped engine is a refusal,
        // not an empty list.
        let first = self.engine.bans_page(None, BANS_PAGE).await?;
        let (tx, rx) = mpsc::channel(2);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let mut page = first;
            while let Some(last) = page.last() {
                let after = Some((last.expires, last.net));
                if tx.send(page).await.is_err() {
                    return;
                }
                match engine.bans_page(after, BANS_PAGE).await {
                    Ok(next) => page = next,
                    Err(_) => return,
                }
            }
        });
        Ok(rx)
    }

    async fn ban(
        &self,
        host: IpNet,
        duration: Option<Duration>,
        force: bool,
    ) -> Result<BanInfo, Refusal> {
        match self.engine.ban(host, duration, force).await {
            Ok(ban) => Ok(ban),
            Err(BanError::Gone(_)) => Err(Refusal::EngineStopped),
            Err(error) => Err(Refusal::Ban { error }),
        }
    }

    async fn unban(&self, host: IpNet) -> Result<BanInfo, Refusal> {
        self.engine
            .unban(host)
            .await?
            .ok_or(Refusal::NotBanned { host })
    }
}

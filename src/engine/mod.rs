//! The ban engine: the one owner of ban state.
//!
//! Like mini-redis's `db.rs`, it is one task with a clear API: the inputs
//! and the control socket send it messages through an [`EngineHandle`], it
//! decides (the policy is the pure state machine in `jail`, driven by an
//! explicit `now`), and it hands the resulting changes to the firewall's
//! applier task without waiting for `nft`. A timer in the task ends bans on
//! time (the kernel does too, on its own); another saves state a moment
//! after it changes.

mod accounts;
mod ignore;
mod jail;
mod journal;
mod state;
mod task;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::JailSettings;
use crate::failure::{AttackerText, KindSet, Report, ServiceSet};
use crate::firewall::{ActiveBan, Applier, Firewall, FirewallStatus};
use crate::metrics::{BanOrigin, Metrics};
use crate::units::format_net;

pub use ignore::{IgnoreReason, ResolvedIgnore};
pub use state::STATE_FILE;

use task::Command;

/// Reports and commands waiting for the engine. Inputs wait (backpressure)
/// rather than grow memory when it is full.
const COMMAND_QUEUE: usize = 4096;

/// Events kept for slow subscribers; a subscriber further behind loses the
/// oldest (`RecvError::Lagged`) instead of slowing the engine.
const EVENT_QUEUE: usize = 1024;

/// Most distinct accounts remembered per host: enough to show what was
/// tried, bounded because the attacker chooses them.
pub const MAX_ACCOUNTS: usize = 3;

/// Most accounts under attack and known sites listed in [`EngineStats`]:
/// `astban status` stays readable, and its reply small, whatever the
/// attack; the counts say how many there are.
pub const MAX_LISTED: usize = 20;

/// A ban, as shown by `astban bans`, mailed, and saved in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanInfo {
    /// The banned network: a single host (written without `/32`), or an
    /// IPv6 prefix, or a manually banned CIDR.
    #[serde(rename = "host", with = "crate::units::host_format")]
    pub net: IpNet,
    /// When the ban began.
    pub banned_at: Timestamp,
    /// When it ends (the kernel drops it then, astban running or not).
    pub expires: Timestamp,
    /// Failures counted in the window that led to the ban (0 for a manual
    /// ban of a host that had none).
    pub failures: u32,
    /// Which ban of this network this is within `jail.history` (1 = first).
    pub offense: u32,
    /// Banned through the control socket rather than by failures.
    pub manual: bool,
    /// Kinds of failures seen.
    pub kinds: KindSet,
    /// Services attacked.
    pub services: ServiceSet,
    /// Distinct accounts tried, at most [`MAX_ACCOUNTS`]; for humans only.
    pub accounts: Vec<AttackerText>,
    /// Banned at its first failure because it failed on this account while
    /// the account was under attack (`jail.account_ban_at_once`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_under_attack: Option<AttackerText>,
    /// Where a ban pulled from the fleet's CrowdSec LAPI came from; `None`
    /// for astban's own (and in state saved before the fleet link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<FleetOrigin>,
}

/// Who made a ban astban pulled from the CrowdSec LAPI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetOrigin {
    /// The decision's origin (`cscli`, `crowdsec`, `astban`, `CAPI`).
    pub origin: String,
    /// Its scenario.
    pub scenario: String,
}

impl fmt::Display for FleetOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CrowdSec LAPI ({}, {})", self.origin, self.scenario)
    }
}

/// A ban decision of the fleet, as the pull task hands it to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledBan {
    /// The network it bans.
    pub net: IpNet,
    /// When the decision ends.
    pub expires: Timestamp,
    /// Who made it.
    pub origin: FleetOrigin,
}

/// What one poll of the fleet's decisions changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullOutcome {
    /// Pulled bans added.
    pub added: usize,
    /// Pulled bans lifted (deleted or expired on the LAPI).
    pub lifted: usize,
    /// Decisions `ignoreip`, own addresses or their shape kept out.
    pub ignored: usize,
    /// Decisions on networks astban already bans (its own coming back).
    pub local: usize,
    /// Pulled bans in force after the poll.
    pub in_force: usize,
}

impl BanInfo {
    /// How long the ban lasts in total.
    pub fn duration(&self) -> Duration {
        Duration::try_from(self.expires.duration_since(self.banned_at)).unwrap_or_default()
    }
}

/// An account under attack: its failures from all hosts together passed
/// `jail.account_maxretry` within `jail.account_findtime`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountAttack {
    /// The account, as Asterisk's config names it.
    pub account: AttackerText,
    /// When it came under attack.
    pub since: Timestamp,
    /// When it stops being under attack, unless failures go on (each one
    /// moves this to `jail.account_bantime` after it).
    pub until: Timestamp,
    /// Failures on it since `since`, including the ones that flagged it.
    pub failures: u32,
    /// Hosts banned at their first failure on it.
    pub bans: u32,
    /// Whether hosts failing on it are banned at their first failure
    /// (`jail.account_ban_at_once` when it came under attack).
    #[serde(default)]
    pub ban_at_once: bool,
}

/// A known site (a host that logged in with a password within
/// `jail.known_host_window`) failing on one account: most likely one
/// phone with a stale password behind the office's NAT, so it is banned
/// only at `jail.known_host_maxretry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownSiteFailing {
    /// The site (its counting key: an address, or an IPv6 prefix).
    #[serde(rename = "host", with = "crate::units::host_format")]
    pub net: IpNet,
    /// The one account it fails on.
    pub account: AttackerText,
    /// Its failures in the current window.
    pub failures: u32,
    /// When it last logged in with a password.
    pub last_success: Timestamp,
}

/// Why a ban ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnbanReason {
    /// Its time was up.
    Expired,
    /// `astban unban`.
    Manual,
    /// A wider ban now covers it (a manual CIDR ban, or an IPv6 prefix ban
    /// around a single banned address); the addresses stay banned.
    Superseded,
    /// A reloaded `jail.ignoreip`, or a new address of one of its host
    /// names, now covers it.
    Ignored,
    /// nft refused to add it: it was never enforced.
    Refused,
}

impl fmt::Display for UnbanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnbanReason::Expired => "expired",
            UnbanReason::Manual => "manual",
            UnbanReason::Superseded => "superseded by a wider ban",
            UnbanReason::Ignored => "now in jail.ignoreip",
            UnbanReason::Refused => "nft refused it",
        })
    }
}

/// What the engine did, for mail, logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EngineEvent {
    /// A network was banned.
    Banned(BanInfo),
    /// A ban ended.
    Unbanned {
        /// The network that is no longer banned.
        #[serde(rename = "host", with = "crate::units::host_format")]
        net: IpNet,
        /// Why.
        reason: UnbanReason,
    },
    /// An account came under attack.
    AccountUnderAttack(AccountAttack),
    /// An account is no longer under attack (`jail.account_bantime` passed
    /// without a failure on it).
    AccountAttackOver(AccountAttack),
    /// A known site reached `jail.maxretry` failures on one account and
    /// was not banned (once per episode).
    KnownSiteFailing(KnownSiteFailing),
    /// A failure from an address that is never banned (one event per
    /// failure).
    Ignored {
        /// The address.
        host: IpAddr,
        /// Why it is never banned.
        reason: IgnoreReason,
    },
}

/// Counters for `astban status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Hosts with failures, or a reset by a success, within `findtime`
    /// (not banned).
    pub tracked_hosts: usize,
    /// Bans in force.
    pub active_bans: usize,
    /// Networks remembered for escalating their next ban.
    pub offenders: usize,
    /// Failures counted since start.
    pub failures_counted: u64,
    /// Failures that arrived older than `findtime` (a backlog) and did not
    /// count.
    pub failures_stale: u64,
    /// Tracked hosts forgotten to stay under `jail.max_tracked_hosts`.
    pub hosts_evicted: u64,
    /// Bans made since start (restored ones not included).
    pub bans_total: u64,
    /// Accounts with failures counted (matched accounts only).
    #[serde(default)]
    pub accounts_tracked: usize,
    /// Accounts under attack now, soonest to end last; at most
    /// [`MAX_LISTED`] (`accounts_under_attack_count` has them all).
    #[serde(default)]
    pub accounts_under_attack: Vec<AccountAttack>,
    /// How many accounts are under attack now.
    #[serde(default)]
    pub accounts_under_attack_count: usize,
    /// Accounts that came under attack since start.
    #[serde(default)]
    pub account_attacks_total: u64,
    /// Accounts forgotten (or not counted) to stay under
    /// `jail.max_tracked_accounts`.
    #[serde(default)]
    pub accounts_evicted: u64,
    /// Bans made at a host's first failure on an account under attack.
    #[serde(default)]
    pub bans_account_under_attack: u64,
    /// Known sites (hosts that logged in with a password within
    /// `jail.known_host_window`).
    #[serde(default)]
    pub known_sites: usize,
    /// Known sites failing on one account now, at most [`MAX_LISTED`].
    #[serde(default)]
    pub known_sites_failing: Vec<KnownSiteFailing>,
    /// Times a known site reached `jail.maxretry` on one account and was
    /// spared.
    #[serde(default)]
    pub known_sites_spared: u64,
    /// Known sites forgotten to stay under `jail.max_known_hosts`.
    #[serde(default)]
    pub known_sites_evicted: u64,
    /// Why the ban state cannot be saved, while it cannot: bans then hold
    /// in the kernel but would not survive a restart.
    pub state_error: Option<String>,
    /// The firewall's state.
    pub firewall: FirewallStatus,
}

/// The engine has stopped (shutdown); nothing more can be asked of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ban engine has stopped")]
pub struct EngineGone;

/// Why a manual ban was not made; sent as is to the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BanError {
    /// The network is or contains an address that is never banned.
    #[error(
        "{} is not banned: it covers an address that is {reason}; use --force to ban it anyway",
        format_net(*net)
    )]
    Ignored {
        /// The network asked for.
        #[serde(with = "crate::units::host_format")]
        net: IpNet,
        /// What protects it.
        reason: IgnoreReason,
    },
    /// A wider ban already covers it.
    #[error(
        "{} is already banned as part of {}; unban {1} first to ban {0} on its own",
        format_net(*net),
        format_net(*by)
    )]
    Covered {
        /// The network asked for.
        #[serde(with = "crate::units::host_format")]
        net: IpNet,
        /// The ban that covers it.
        #[serde(with = "crate::units::host_format")]
        by: IpNet,
    },
    /// An address no packet comes from (unspecified, multicast,
    /// broadcast): banning it would do nothing, or harm.
    #[error("{} is not an address an attacker sends from (unspecified, multicast or broadcast); nothing to ban", format_net(*net))]
    NotUnicast {
        /// The address asked for.
        #[serde(with = "crate::units::host_format")]
        net: IpNet,
    },
    /// A ban of no time at all.
    #[error(
        "a ban needs a duration; --for 0s bans nothing (leave --for out for the jail's bantime)"
    )]
    NoDuration,
    /// A prefix so wide that it is probably a typo.
    #[error(
        "{} is wider than /{min}, which would cut off a large part of the internet; use --force to ban it anyway",
        format_net(*net)
    )]
    TooWide {
        /// The network asked for.
        #[serde(with = "crate::units::host_format")]
        net: IpNet,
        /// The widest prefix banned without --force.
        min: u8,
    },
    /// The engine has stopped (never sent: the control socket answers
    /// it as its own refusal).
    #[error(transparent)]
    #[serde(skip)]
    Gone(#[from] EngineGone),
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state file exists but cannot be read (a corrupt one is set
    /// aside instead, never an error).
    #[error("cannot read the state file {path}: {source} (check its permissions)")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The ban journal in the state directory cannot be replayed or opened.
    #[error(
        "cannot use the ban journal in {dir}: {source} (the state directory must exist and be writable by astban)"
    )]
    Journal {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `jail.ignore_self` is on but this host's addresses cannot be listed.
    #[error(
        "cannot list this host's addresses for jail.ignore_self: {0} (set jail.ignore_self = false and list them in jail.ignoreip)"
    )]
    OwnAddresses(std::io::Error),
}

/// The way to talk to a running engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<EngineEvent>,
}

impl EngineHandle {
    /// Hands a failure or success to the engine. Waits only while the
    /// engine's queue is full.
    pub async fn report(&self, report: Report) -> Result<(), EngineGone> {
        self.commands
            .send(Command::Report(report))
            .await
            .map_err(|_| EngineGone)
    }

    /// Bans `net` by hand for `duration` (or the escalated `bantime` when
    /// `None`). Refused for `ignoreip` and own addresses unless `force`.
    pub async fn ban(
        &self,
        net: IpNet,
        duration: Option<Duration>,
        force: bool,
    ) -> Result<BanInfo, BanError> {
        self.ask(|reply| Command::Ban {
            net,
            duration,
            force,
            reply,
        })
        .await?
    }

    /// Ends the ban of exactly `net`; `None` if it was not banned (any
    /// element of exactly `net` still leaves astban's sets, so that one
    /// astban lost track of can be lifted).
    pub async fn unban(&self, net: IpNet) -> Result<Option<BanInfo>, EngineGone> {
        self.ask(|reply| Command::Unban { net, reply }).await
    }

    /// Takes over bans found in the kernel that the state lacks (a lost or
    /// corrupt state file), each with the time it has left; returns how
    /// many it took.
    pub async fn adopt(&self, bans: Vec<ActiveBan>) -> Result<usize, EngineGone> {
        self.ask(|reply| Command::Adopt { bans, reply }).await
    }

    /// Up to `limit` bans in force, soonest to end first, after the one
    /// that ends at `after` (expiry, network); for long lists.
    pub async fn bans_page(
        &self,
        after: Option<(Timestamp, IpNet)>,
        limit: usize,
    ) -> Result<Vec<BanInfo>, EngineGone> {
        self.ask(|reply| Command::BansPage {
            after,
            limit,
            reply,
        })
        .await
    }

    /// The bans in force, oldest first.
    pub async fn bans(&self) -> Result<Vec<BanInfo>, EngineGone> {
        self.ask(|reply| Command::Bans { reply }).await
    }

    /// Counters and the firewall's health.
    pub async fn stats(&self) -> Result<EngineStats, EngineGone> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Applies a reloaded `[jail]` (SIGHUP); returns how many bans the new
    /// `ignoreip` lifted. `ignore_self` and `ipv6_prefix` are read at start
    /// only.
    pub async fn reconfigure(&self, jail: JailSettings) -> Result<usize, EngineGone> {
        self.ask(|reply| Command::Reconfigure {
            jail: Box::new(jail),
            reply,
        })
        .await
    }

    /// Replaces the addresses of `jail.ignoreip`'s host names with
    /// `named` (the resolver's whole current set); returns how many
    /// automatic bans they now cover and lifted, as a reload would.
    pub async fn set_resolved_ignores(
        &self,
        named: Vec<ResolvedIgnore>,
    ) -> Result<usize, EngineGone> {
        self.ask(|reply| Command::SetNamed { named, reply }).await
    }

    /// Applies one poll of the fleet's decision stream (see the pull
    /// task): `startup` says `new` lists every decision in force.
    pub async fn pull(
        &self,
        new: Vec<PulledBan>,
        deleted: Vec<IpNet>,
        startup: bool,
    ) -> Result<PullOutcome, EngineGone> {
        self.ask(|reply| Command::Pull {
            new,
            deleted,
            startup,
            reply,
        })
        .await
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineGone> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| EngineGone)?;
        answer.await.map_err(|_| EngineGone)
    }
}

/// Starts the engine: restores state from `state_dir` (bans and offender
/// history), starts the firewall's applier (which first reconciles the
/// kernel with the restored bans, retrying until it can), then serves
/// until `shutdown` fires, when it saves state and lets the firewall flush.
///
/// `state_dir` must exist: the daemon creates it once at start (0700, see
/// [`crate::persist::create_private_dir`]), so that one error names
/// `[state] dir` and every part that keeps state there can rely on it.
///
/// Must be called within a tokio runtime (current-thread is enough).
pub fn spawn<F: Firewall>(
    jail: &JailSettings,
    state_dir: &Path,
    firewall: F,
    shutdown: CancellationToken,
) -> Result<(EngineHandle, JoinHandle<()>), EngineError> {
    spawn_metered(jail, state_dir, firewall, Metrics::default(), shutdown)
}

/// [`spawn`], counting into `metrics` (the daemon's, which the metrics
/// endpoint serves).
pub fn spawn_metered<F: Firewall>(
    jail: &JailSettings,
    state_dir: &Path,
    firewall: F,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(EngineHandle, JoinHandle<()>), EngineError> {
    let mut policy = jail::Jail::new(jail);
    if jail.ignore_self {
        policy.set_own_addresses(ignore::own_addresses().map_err(EngineError::OwnAddresses)?);
    }
    let path = state_dir.join(STATE_FILE);
    let journal_error = |source| EngineError::Journal {
        dir: state_dir.to_path_buf(),
        source,
    };
    let mut saved = state::load(&path)?;
    let next = journal::replay(state_dir, saved.journal, &mut saved).map_err(journal_error)?;
    let journal = journal::Journal::open(state_dir, next).map_err(journal_error)?;
    let mut lifted = jail::Effects::default();
    let restored = policy.restore(saved, Timestamp::now(), &mut lifted);
    tracing::info!(
        bans = restored.len(),
        lifted = lifted.changes.len(),
        path = %path.display(),
        "ban state restored"
    );
    metrics.banned(BanOrigin::Restored, restored.len() as u64);
    metrics.engine_sizes(restored.len(), 0);
    let firewall = Applier::spawn(firewall, restored, metrics.clone());
    if !lifted.changes.is_empty() {
        firewall.send(lifted.changes);
    }
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(EVENT_QUEUE);
    let engine = task::Engine::new(task::Parts {
        jail: policy,
        commands: rx,
        events: events.clone(),
        firewall,
        state_path: path,
        journal: Some(journal),
        ignore_self: jail.ignore_self,
        shutdown,
        metrics,
    });
    let handle = EngineHandle { commands, events };
    Ok((handle, tokio::spawn(engine.run())))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::failure::Service;
    use crate::failure::{Failure, Source};
    use crate::firewall::{ActiveBan, Change, FirewallError};

    /// Records what the engine asks of the firewall.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.0.lock().expect("lock").clone()
        }
    }

    impl Firewall for Recorder {
        async fn reconcile(
            &mut self,
            bans: &[ActiveBan],
            _now: Timestamp,
        ) -> Result<(), FirewallError> {
            let nets: Vec<String> = bans.iter().map(|b| b.net.to_string()).collect();
            self.0
                .lock()
                .expect("lock")
                .push(format!("reconcile [{}]", nets.join(" ")));
            Ok(())
        }

        async fn apply(
            &mut self,
            changes: &[Change],
            _now: Timestamp,
        ) -> Result<(), FirewallError> {
            let nets: Vec<String> = changes.iter().map(Change::to_string).collect();
            self.0
                .lock()
                .expect("lock")
                .push(format!("apply [{}]", nets.join(" ")));
            Ok(())
        }

        async fn verify(
            &mut self,
            _bans: &[ActiveBan],
            _now: Timestamp,
        ) -> Result<(), FirewallError> {
            Ok(())
        }

        async fn existing(&mut self, _now: Timestamp) -> Result<Vec<ActiveBan>, FirewallError> {
            Ok(Vec::new())
        }

        fn retry_interval(&self) -> Duration {
            Duration::from_millis(50)
        }

        fn check_interval(&self) -> Duration {
            Duration::ZERO
        }
    }

    fn jail() -> JailSettings {
        JailSettings::try_from(&crate::config::JailConfig {
            ignoreip: vec!["10.0.0.0/8".parse().expect("net")],
            ignore_self: false,
            ..Default::default()
        })
        .expect("a valid [jail]")
    }

    fn failure(host: &str) -> Report {
        Report::Failure(Failure {
            host: host.parse().expect("ip"),
            kind: crate::failure::FailureKind::InvalidPassword,
            service: Service::Sip,
            account: None,
            account_matched: false,
            session: None,
            time: Timestamp::now(),
            source: Source::Log,
        })
    }

    async fn next_event(events: &mut broadcast::Receiver<EngineEvent>) -> EngineEvent {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("event in time")
            .expect("event")
    }

    async fn stop(shutdown: &CancellationToken, task: JoinHandle<()>) {
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops promptly")
            .expect("no panic");
    }

    #[tokio::test]
    async fn a_burst_from_an_ignored_address_never_pushes_a_ban_out_of_the_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let (engine, task) =
            spawn(&jail(), dir.path(), Recorder::default(), shutdown.clone()).expect("spawn");
        let mut events = engine.subscribe();
        for _ in 0..5 {
            engine.report(failure("192.0.2.1")).await.expect("report");
        }
        // More failures of an ignored address than the events hold.
        for _ in 0..(4 * EVENT_QUEUE) {
            engine.report(failure("10.0.0.1")).await.expect("report");
        }
        engine.stats().await.expect("all handled");
        assert!(matches!(
            next_event(&mut events).await,
            EngineEvent::Banned(b) if b.net.to_string() == "192.0.2.1/32"
        ));
        stop(&shutdown, task).await;
    }

    #[tokio::test]
    async fn a_missing_state_dir_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("not-created");
        let err = spawn(
            &jail(),
            &missing,
            Recorder::default(),
            CancellationToken::new(),
        )
        .expect_err("the daemon creates the dir, not the engine");
        let msg = err.to_string();
        assert!(matches!(err, EngineError::Journal { .. }), "{msg}");
        assert!(
            msg.contains("not-created") && msg.contains("must exist"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn the_engine_counts_each_verdict_and_ban_into_its_metrics() {
        use crate::metrics::{EngineDrop, sample};
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let metrics = Metrics::default();
        let (engine, task) = spawn_metered(
            &jail(),
            dir.path(),
            Recorder::default(),
            metrics.clone(),
            shutdown.clone(),
        )
        .expect("spawn");
        for _ in 0..6 {
            engine.report(failure("192.0.2.1")).await.expect("report");
        }
        engine.report(failure("10.0.0.1")).await.expect("report");
        let Report::Failure(mut old) = failure("192.0.2.2") else {
            unreachable!()
        };
        old.time -= jiff::SignedDuration::from_hours(24);
        engine.report(Report::Failure(old)).await.expect("report");
        let net = "198.51.100.0/24".parse().expect("net");
        engine.ban(net, None, false).await.expect("ban");
        engine.unban(net).await.expect("unban");
        engine.stats().await.expect("all handled");
        let sample = |series| sample(&metrics, series);
        assert_eq!(
            sample(r#"astban_failures_total{kind="invalid_password",service="sip",input="log"}"#),
            Some(5.0)
        );
        assert_eq!(
            sample(r#"astban_bans_total{reason="automatic"}"#),
            Some(1.0)
        );
        assert_eq!(sample(r#"astban_bans_total{reason="manual"}"#), Some(1.0));
        assert_eq!(sample(r#"astban_unbans_total{reason="manual"}"#), Some(1.0));
        assert_eq!(sample("astban_bans_active"), Some(1.0));
        for (reason, n) in [
            (EngineDrop::AlreadyBanned, 1),
            (EngineDrop::Ignored, 1),
            (EngineDrop::Stale, 1),
            (EngineDrop::NotUnicast, 0),
        ] {
            assert_eq!(metrics.dropped_count(reason, Source::Log), n, "{reason:?}");
        }
        stop(&shutdown, task).await;
    }

    #[tokio::test]
    async fn reports_that_arrive_together_make_one_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fw = Recorder::default();
        let shutdown = CancellationToken::new();
        let (engine, task) =
            spawn(&jail(), dir.path(), fw.clone(), shutdown.clone()).expect("spawn");
        let mut events = engine.subscribe();
        for host in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            for _ in 0..5 {
                engine.report(failure(host)).await.expect("report");
            }
        }
        for _ in 0..3 {
            assert!(matches!(
                next_event(&mut events).await,
                EngineEvent::Banned(_)
            ));
        }
        let stats = engine.stats().await.expect("stats");
        assert_eq!(
            (stats.active_bans, stats.bans_total, stats.failures_counted),
            (3, 3, 15)
        );
        stop(&shutdown, task).await;
        assert_eq!(
            fw.calls(),
            [
                "reconcile []",
                "apply [+192.0.2.1/32 +192.0.2.2/32 +192.0.2.3/32]"
            ]
        );
        assert!(engine.stats().await.is_err());
    }

    #[tokio::test]
    async fn bans_survive_a_restart_and_ignoreip_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let (engine, task) =
            spawn(&jail(), dir.path(), Recorder::default(), shutdown.clone()).expect("spawn");
        let refused = engine
            .ban("10.1.2.3/32".parse().expect("net"), None, false)
            .await;
        assert!(
            matches!(refused, Err(BanError::Ignored { .. })),
            "{refused:?}"
        );
        let banned = engine
            .ban(
                "198.51.100.0/24".parse().expect("net"),
                Some(Duration::from_secs(3600)),
                false,
            )
            .await
            .expect("ban");
        stop(&shutdown, task).await;
        assert!(dir.path().join(STATE_FILE).exists());

        let fw = Recorder::default();
        let shutdown = CancellationToken::new();
        let (engine, task) =
            spawn(&jail(), dir.path(), fw.clone(), shutdown.clone()).expect("respawn");
        assert_eq!(
            engine.bans().await.expect("bans"),
            std::slice::from_ref(&banned)
        );
        let unbanned = engine.unban(banned.net).await.expect("unban");
        assert_eq!(unbanned, Some(banned));
        stop(&shutdown, task).await;
        assert_eq!(
            fw.calls(),
            ["reconcile [198.51.100.0/24]", "apply [-198.51.100.0/24]"]
        );
    }

    #[tokio::test]
    async fn a_corrupt_state_file_is_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(STATE_FILE), "garbage").expect("write");
        let shutdown = CancellationToken::new();
        let (engine, task) =
            spawn(&jail(), dir.path(), Recorder::default(), shutdown.clone()).expect("spawn");
        assert!(engine.bans().await.expect("bans").is_empty());
        stop(&shutdown, task).await;
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("bans.json.corrupt-")),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n == STATE_FILE), "{names:?}");
    }

    #[tokio::test]
    async fn bans_expire_on_the_engine_timer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fw = Recorder::default();
        let shutdown = CancellationToken::new();
        let (engine, task) =
            spawn(&jail(), dir.path(), fw.clone(), shutdown.clone()).expect("spawn");
        let mut events = engine.subscribe();
        let net: IpNet = "192.0.2.77/32".parse().expect("net");
        engine
            .ban(net, Some(Duration::from_secs(1)), false)
            .await
            .expect("ban");
        assert!(matches!(
            next_event(&mut events).await,
            EngineEvent::Banned(_)
        ));
        assert_eq!(
            next_event(&mut events).await,
            EngineEvent::Unbanned {
                net,
                reason: UnbanReason::Expired
            }
        );
        assert!(engine.bans().await.expect("bans").is_empty());
        stop(&shutdown, task).await;
        assert_eq!(
            fw.calls().last().map(String::as_str),
            Some("apply [-192.0.2.77/32]")
        );
    }

    #[test]
    fn ban_info_json_has_host_expiry_and_failures() {
        let info = BanInfo {
            net: "192.0.2.7/32".parse().expect("net"),
            banned_at: Timestamp::from_second(1_800_000_000).expect("ts"),
            expires: Timestamp::from_second(1_800_000_600).expect("ts"),
            failures: 5,
            offense: 1,
            manual: false,
            kinds: [crate::failure::FailureKind::InvalidPassword]
                .into_iter()
                .collect(),
            services: [Service::Pjsip].into_iter().collect(),
            accounts: vec![AttackerText::new("1000")],
            account_under_attack: None,
            origin: None,
        };
        let json = serde_json::to_value(&info).expect("json");
        assert_eq!(json["host"], "192.0.2.7");
        assert_eq!(json["expires"], "2027-01-15T08:10:00Z");
        assert_eq!(json["failures"], 5);
        assert_eq!(json["kinds"][0], "invalid_password");
        assert_eq!(info.duration(), Duration::from_secs(600));
        let event = serde_json::to_value(EngineEvent::Banned(info)).expect("json");
        assert_eq!(event["event"], "banned");
    }
}

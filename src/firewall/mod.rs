//! Where bans are enforced: a [`Firewall`] trait, the nftables backend and
//! a dry-run backend, and the applier task that batches, retries, and puts
//! back what someone else removed from the kernel.
//!
//! The firewall holds no policy. The engine decides who is banned until
//! when and hands over [`Change`]s; a backend turns each batch of them into
//! one transaction. Expiry belongs to the kernel: every ban carries its own
//! timeout, so bans end on time even while astban is stopped.

mod applier;
mod dry_run;
mod nft;

use std::future::Future;
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::{Backend, FirewallConfig};

pub(crate) use applier::{Applier, FirewallNews};
pub use dry_run::DryRunFirewall;
pub use nft::NftFirewall;

/// One change to the set of banned networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `net` is newly banned until `expires`.
    Ban {
        /// The banned network (a /32 or /128 for single hosts).
        net: IpNet,
        /// When the kernel should drop the ban by itself.
        expires: Timestamp,
        /// Pulled from the fleet (CrowdSec LAPI): kept in sets of its own.
        fleet: bool,
    },
    /// `net` was banned and now is until `expires` instead. Unlike a plain
    /// addition this removes the kernel's element first, because re-adding
    /// an element keeps its old timeout on older kernels; the removal costs
    /// a slower commit (~13 ms against 3 ms here), so fresh bans avoid it.
    Replace {
        /// The banned network.
        net: IpNet,
        /// The new end of the ban.
        expires: Timestamp,
        /// Pulled from the fleet.
        fleet: bool,
    },
    /// `net` is no longer banned (in astban's sets and the fleet's).
    Unban {
        /// The network whose ban ends.
        net: IpNet,
    },
}

/// `+net`, `*net` (replaced) or `-net`: compact, for logs and tests.
impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Ban { net, .. } => write!(f, "+{net}"),
            Change::Replace { net, .. } => write!(f, "*{net}"),
            Change::Unban { net } => write!(f, "-{net}"),
        }
    }
}

impl Change {
    /// The network the change is about.
    pub fn net(&self) -> IpNet {
        match self {
            Change::Ban { net, .. } | Change::Replace { net, .. } | Change::Unban { net } => *net,
        }
    }

    /// `self` followed by `next` for the same network, as one change.
    pub fn then(&self, next: Change) -> Change {
        match (self, next) {
            // The kernel may still hold the element from before: replace it.
            (
                Change::Unban { .. } | Change::Replace { .. },
                Change::Ban {
                    net,
                    expires,
                    fleet,
                },
            ) => Change::Replace {
                net,
                expires,
                fleet,
            },
            (_, next) => next,
        }
    }
}

/// A ban the engine holds at start, to be present in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveBan {
    /// The banned network.
    pub net: IpNet,
    /// When it ends.
    pub expires: Timestamp,
    /// Pulled from the fleet: in the fleet's sets.
    pub fleet: bool,
}

/// A backend that enforces bans.
///
/// Methods take `&mut self` and return `Send` futures so a backend can be
/// owned by the applier task on any tokio runtime. `reconcile` and `apply`
/// must be idempotent: after a failure the same call is simply made again.
pub trait Firewall: Send + 'static {
    /// Creates whatever of astban's table is missing, (re)installs its
    /// rules without duplicating them, and makes sure every ban in `bans`
    /// is present. Bans already in the kernel are kept as they are.
    fn reconcile(
        &mut self,
        bans: &[ActiveBan],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;

    /// Applies `changes` as one transaction (or as few as the backend
    /// can manage for very large batches). A ban whose expiry has passed is
    /// skipped (or, for a [`Change::Replace`], only removed).
    fn apply(
        &mut self,
        changes: &[Change],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;

    /// Checks, without changing anything, that astban's table and rules
    /// are in place and every ban in `bans` still is: someone else may
    /// have flushed the ruleset. [`FirewallError::Missing`] says what is
    /// gone; elements the kernel holds beyond `bans` are no concern.
    fn verify(
        &mut self,
        bans: &[ActiveBan],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), FirewallError>> + Send;

    /// The bans already in the kernel, with the time they have left: at
    /// start, what the state lacks (a lost or corrupt state file) is
    /// adopted rather than left orphaned.
    fn existing(
        &mut self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<ActiveBan>, FirewallError>> + Send;

    /// How long to wait before trying again after a failure.
    fn retry_interval(&self) -> Duration;

    /// How often to [`verify`](Firewall::verify); zero never does.
    fn check_interval(&self) -> Duration;
}

/// Why the firewall could not do what was asked. Each message says what to
/// fix; nothing is dropped from the engine while these persist.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The `nft` program (or the first word of `firewall.nft`) is missing.
    #[error(
        "cannot run {program:?}: not found; install nftables (e.g. `apt-get install nftables`) or set firewall.nft to its path"
    )]
    NotInstalled {
        /// The program astban tried to run.
        program: String,
    },
    /// The program exists but could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// The program astban tried to run.
        program: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// The kernel refused: astban lacks CAP_NET_ADMIN.
    #[error(
        "nft was not permitted to change the ruleset; astban needs CAP_NET_ADMIN (run it as root or grant the capability): {stderr}"
    )]
    NoPermission {
        /// What nft said.
        stderr: String,
    },
    /// nft ran but rejected the transaction.
    #[error("nft rejected the transaction ({status}): {stderr}")]
    Rejected {
        /// nft's exit status.
        status: std::process::ExitStatus,
        /// What nft said (shortened).
        stderr: String,
    },
    /// The transaction could not be written as JSON (a bug).
    #[error("cannot encode the nft transaction: {0}")]
    Encode(#[from] serde_json::Error),
    /// nft did not finish in time and was killed.
    #[error("nft did not finish within {0:?} and was killed")]
    Timeout(Duration),
    /// Part of what astban put in the kernel is gone (the message says
    /// what).
    #[error(
        "{0}; astban puts it back. If this repeats, something flushes the whole ruleset \
         (e.g. `flush ruleset` in /etc/nftables.conf on `systemctl restart nftables`): make it flush only its own tables"
    )]
    Missing(String),
    /// nft's listing of the ruleset is not the JSON astban expects.
    #[error("cannot read nft's listing of the ruleset: {0}")]
    Listing(String),
}

/// What the firewall is doing, for `astban status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallStatus {
    /// The last attempt succeeded and nothing is waiting.
    pub healthy: bool,
    /// Bans and unbans waiting to reach the kernel.
    pub pending: usize,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// Changes nft refused since start (each dropped alone, the others
    /// applied); a refused ban is taken back by the engine.
    pub refused: u64,
    /// The last of them, with nft's reason.
    pub last_refused: Option<String>,
}

/// The backend chosen by `firewall.backend`, so the daemon can pick one at
/// run time while the engine stays generic.
#[derive(Debug)]
pub enum AnyFirewall {
    /// Real bans with nftables.
    Nft(NftFirewall),
    /// Logged only.
    DryRun(DryRunFirewall),
}

impl AnyFirewall {
    /// The backend `config` asks for.
    pub fn from_config(config: &FirewallConfig) -> AnyFirewall {
        match config.backend {
            Backend::Nftables => AnyFirewall::Nft(NftFirewall::new(config)),
            Backend::DryRun => AnyFirewall::DryRun(DryRunFirewall::new(config)),
        }
    }
}

impl Firewall for AnyFirewall {
    async fn reconcile(&mut self, bans: &[ActiveBan], now: Timestamp) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Nft(f) => f.reconcile(bans, now).await,
            AnyFirewall::DryRun(f) => f.reconcile(bans, now).await,
        }
    }

    async fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Nft(f) => f.apply(changes, now).await,
            AnyFirewall::DryRun(f) => f.apply(changes, now).await,
        }
    }

    async fn verify(&mut self, bans: &[ActiveBan], now: Timestamp) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Nft(f) => f.verify(bans, now).await,
            AnyFirewall::DryRun(f) => f.verify(bans, now).await,
        }
    }

    async fn existing(&mut self, now: Timestamp) -> Result<Vec<ActiveBan>, FirewallError> {
        match self {
            AnyFirewall::Nft(f) => f.existing(now).await,
            AnyFirewall::DryRun(f) => f.existing(now).await,
        }
    }

    fn retry_interval(&self) -> Duration {
        match self {
            AnyFirewall::Nft(f) => f.retry_interval(),
            AnyFirewall::DryRun(f) => f.retry_interval(),
        }
    }

    fn check_interval(&self) -> Duration {
        match self {
            AnyFirewall::Nft(f) => f.check_interval(),
            AnyFirewall::DryRun(f) => f.check_interval(),
        }
    }
}

/// Seconds from `now` until `expires`, at least 1 (nft has no zero
/// timeout), or `None` when the ban is already over.
fn timeout_secs(expires: Timestamp, now: Timestamp) -> Option<u32> {
    let secs = expires.as_second().saturating_sub(now.as_second());
    (secs > 0).then(|| u32::try_from(secs).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_whole_positive_seconds() {
        let now = Timestamp::from_second(1_000).expect("ts");
        assert_eq!(
            timeout_secs(Timestamp::from_second(1_090).expect("ts"), now),
            Some(90)
        );
        assert_eq!(timeout_secs(now, now), None);
        assert_eq!(
            timeout_secs(Timestamp::from_second(10).expect("ts"), now),
            None
        );
    }

    #[test]
    fn a_ban_after_an_unban_replaces_the_element() {
        let net: IpNet = "192.0.2.1/32".parse().expect("net");
        let expires = Timestamp::from_second(1_000).expect("ts");
        let ban = Change::Ban {
            net,
            expires,
            fleet: false,
        };
        let replace = Change::Replace {
            net,
            expires,
            fleet: false,
        };
        assert_eq!(Change::Unban { net }.then(ban.clone()), replace);
        assert_eq!(replace.then(ban.clone()), replace);
        assert_eq!(ban.then(Change::Unban { net }), Change::Unban { net });
        assert_eq!(ban.then(ban.clone()), ban);
    }

    #[test]
    fn backend_follows_config() {
        let mut config = FirewallConfig::default();
        assert!(matches!(
            AnyFirewall::from_config(&config),
            AnyFirewall::Nft(_)
        ));
        config.backend = Backend::DryRun;
        assert!(matches!(
            AnyFirewall::from_config(&config),
            AnyFirewall::DryRun(_)
        ));
    }
}

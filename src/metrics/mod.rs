//! The Prometheus endpoint (`[metrics] listen`, off by default): what
//! astban counts, and the HTTP task that serves it.
//!
//! Each fact keeps one owner. The engine and the firewall's applier count
//! what happens inside them through a [`Metrics`] handle (cheap atomics,
//! incremented where the event happens); what the inputs and mail already
//! publish for `astban status` (watch channels, counters) is read at
//! scrape time by [`Published`], never copied. The registry that renders
//! both is built once when the endpoint starts.
//!
//! Labels come from astban's own enums only (failure kind, service, input,
//! reason): never a host or an account, so an attacker cannot grow the
//! number of series.

mod http;
mod published;
mod text;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::UnbanReason;
use crate::failure::{FailureKind, Service, Source};

pub use http::{Endpoint, MetricsError};
pub use published::Published;

/// Upper bounds of the ban latency histogram, in seconds: an nft commit
/// takes a few milliseconds and the engine batches within one loop turn,
/// so most bans land in the first buckets; log timestamps have one-second
/// resolution, hence the steps around 1 s; the long tail shows a firewall
/// that was failing and retried.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Why a failure that reached the engine did not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineDrop {
    /// From an address in `jail.ignoreip` or one of this host's own.
    Ignored,
    /// Older than `findtime` when it arrived (a backlog).
    Stale,
    /// From a multicast, broadcast or unspecified address.
    NotUnicast,
    /// From an address a ban already covers.
    AlreadyBanned,
}

impl EngineDrop {
    const ALL: [EngineDrop; 4] = [
        EngineDrop::Ignored,
        EngineDrop::Stale,
        EngineDrop::NotUnicast,
        EngineDrop::AlreadyBanned,
    ];

    fn as_str(self) -> &'static str {
        match self {
            EngineDrop::Ignored => "ignored",
            EngineDrop::Stale => "stale",
            EngineDrop::NotUnicast => "not_unicast",
            EngineDrop::AlreadyBanned => "already_banned",
        }
    }
}

/// How a ban came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanOrigin {
    /// Failures reached `maxretry`.
    Automatic,
    /// `astban ban`.
    Manual,
    /// Loaded from the state at start.
    Restored,
    /// Found in the kernel at start without a record in the state.
    Adopted,
    /// Pulled from the fleet's CrowdSec LAPI.
    Fleet,
}

impl BanOrigin {
    const ALL: [BanOrigin; 5] = [
        BanOrigin::Automatic,
        BanOrigin::Manual,
        BanOrigin::Restored,
        BanOrigin::Adopted,
        BanOrigin::Fleet,
    ];

    fn as_str(self) -> &'static str {
        match self {
            BanOrigin::Automatic => "automatic",
            BanOrigin::Manual => "manual",
            BanOrigin::Restored => "restored",
            BanOrigin::Adopted => "adopted",
            BanOrigin::Fleet => "fleet",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
    service: &'static str,
    input: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
    input: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The counters the engine and the applier keep for the endpoint. Cheap to
/// clone (every field shares its atomics); a handle nobody serves costs a
/// few relaxed increments per ban or failure.
#[derive(Debug, Clone)]
pub struct Metrics {
    failures: Family<FailureLabels, Counter>,
    /// Rendered by [`Published`] together with the inputs' reasons, so
    /// that one family holds every reason a failure did not count.
    dropped: Family<DropLabels, Counter>,
    bans: Family<ReasonLabel, Counter>,
    unbans: Family<ReasonLabel, Counter>,
    bans_active: Gauge,
    tracked_hosts: Gauge,
    account_attacks: Counter,
    known_site_spared: Counter,
    applied: Counter,
    refused: Counter,
    pending: Gauge,
    firewall_healthy: Gauge,
    latency: Histogram,
}

impl Default for Metrics {
    /// Every ban and unban reason starts at an explicit 0 (few, and known):
    /// `increase()` then sees the first one. Failures are by kind, service
    /// and input, too many combinations to list: each appears when it
    /// first happens.
    fn default() -> Metrics {
        let metrics = Metrics {
            failures: Family::default(),
            dropped: Family::default(),
            bans: Family::default(),
            unbans: Family::default(),
            bans_active: Gauge::default(),
            tracked_hosts: Gauge::default(),
            account_attacks: Counter::default(),
            known_site_spared: Counter::default(),
            applied: Counter::default(),
            refused: Counter::default(),
            pending: Gauge::default(),
            firewall_healthy: Gauge::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
        };
        for origin in BanOrigin::ALL {
            metrics.banned(origin, 0);
        }
        for reason in UNBAN_REASONS {
            metrics
                .unbans
                .get_or_create(&ReasonLabel {
                    reason: unban_str(reason),
                })
                .inc_by(0);
        }
        metrics
    }
}

const UNBAN_REASONS: [UnbanReason; 5] = [
    UnbanReason::Expired,
    UnbanReason::Manual,
    UnbanReason::Superseded,
    UnbanReason::Ignored,
    UnbanReason::Refused,
];

impl Metrics {
    /// A failure the engine counted.
    pub fn failure_counted(&self, kind: FailureKind, service: Service, input: Source) {
        self.failures
            .get_or_create(&FailureLabels {
                kind: kind.as_str(),
                service: service.as_str(),
                input: input_str(input),
            })
            .inc();
    }

    /// A failure the engine did not count, and why.
    pub fn failure_dropped(&self, reason: EngineDrop, input: Source) {
        self.dropped
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
                input: input_str(input),
            })
            .inc();
    }

    /// `n` bans made (or taken over) for `origin`.
    pub fn banned(&self, origin: BanOrigin, n: u64) {
        self.bans
            .get_or_create(&ReasonLabel {
                reason: origin.as_str(),
            })
            .inc_by(n);
    }

    /// A ban ended.
    pub fn unbanned(&self, reason: UnbanReason) {
        self.unbans
            .get_or_create(&ReasonLabel {
                reason: unban_str(reason),
            })
            .inc();
    }

    /// An account came under attack (its failures from all hosts passed
    /// `jail.account_maxretry`).
    pub fn account_attack(&self) {
        self.account_attacks.inc();
    }

    /// A failure at or past `maxretry` not banned: a known site failing on
    /// one account.
    pub fn known_site_spared(&self) {
        self.known_site_spared.inc();
    }

    /// The engine's sizes after a batch.
    pub fn engine_sizes(&self, active_bans: usize, tracked_hosts: usize) {
        self.bans_active.set(gauge_value(active_bans));
        self.tracked_hosts.set(gauge_value(tracked_hosts));
    }

    /// `n` changes reached the kernel.
    pub fn changes_applied(&self, n: usize) {
        self.applied.inc_by(n as u64);
    }

    /// A change nft refused (dropped alone, the others applied).
    pub fn change_refused(&self) {
        self.refused.inc();
    }

    /// The firewall's state after an attempt: changes waiting, and whether
    /// the table is in place with no error.
    pub fn firewall_state(&self, pending: usize, healthy: bool) {
        self.pending.set(gauge_value(pending));
        self.firewall_healthy.set(i64::from(healthy));
    }

    /// A ban reached the kernel `seconds` after the failure that caused it
    /// was detected.
    pub fn ban_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// The engine's count of failures dropped for `reason` from `input`.
    pub(crate) fn dropped_count(&self, reason: EngineDrop, input: Source) -> u64 {
        self.dropped
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
                input: input_str(input),
            })
            .get()
    }

    /// The registry the endpoint renders: these counters and what
    /// `published` reads at scrape time.
    fn registry(&self, published: Published) -> Registry {
        let mut r = Registry::with_prefix("astban");
        r.register(
            "failures",
            "Failures counted towards a ban, by kind, service and input",
            self.failures.clone(),
        );
        r.register(
            "bans",
            "Bans made, by reason (automatic, manual, restored at start, adopted from the kernel)",
            self.bans.clone(),
        );
        r.register(
            "unbans",
            "Bans ended, by reason (expired, manual, superseded, ignored, refused)",
            self.unbans.clone(),
        );
        r.register("bans_active", "Bans in force", self.bans_active.clone());
        r.register(
            "tracked_hosts",
            "Hosts with failures within findtime, not banned",
            self.tracked_hosts.clone(),
        );
        r.register(
            "account_attacks",
            "Times an account came under attack from many hosts (jail.account_maxretry)",
            self.account_attacks.clone(),
        );
        r.register(
            "known_site_failures_spared",
            "Failures past maxretry not banned: a known site failing on one account",
            self.known_site_spared.clone(),
        );
        r.register(
            "firewall_changes_applied",
            "Bans and unbans that reached the kernel",
            self.applied.clone(),
        );
        r.register(
            "firewall_changes_refused",
            "Changes nft refused (dropped alone; the others were applied)",
            self.refused.clone(),
        );
        r.register(
            "firewall_changes_pending",
            "Changes waiting for the kernel (nonzero for long: the firewall is failing)",
            self.pending.clone(),
        );
        r.register(
            "firewall_healthy",
            "1 while astban's table is in place and the last transaction succeeded",
            self.firewall_healthy.clone(),
        );
        r.register(
            "ban_latency_seconds",
            "From the detection of the failure that caused a ban to the nft transaction that enforced it",
            self.latency.clone(),
        );
        r.register_collector(Box::new(published::Scrape {
            published,
            engine: self.clone(),
        }));
        r
    }
}

/// The value of the sample `series` (exactly as written) in `metrics`
/// rendered with nothing published, for tests of the parts that count.
#[cfg(test)]
pub(crate) fn sample(metrics: &Metrics, series: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry(Published::default()))
        .expect("encode");
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.parse().ok())
}

fn input_str(input: Source) -> &'static str {
    match input {
        Source::Ami => "ami",
        Source::Log => "log",
    }
}

fn unban_str(reason: UnbanReason) -> &'static str {
    match reason {
        UnbanReason::Expired => "expired",
        UnbanReason::Manual => "manual",
        UnbanReason::Superseded => "superseded",
        UnbanReason::Ignored => "ignored",
        UnbanReason::Refused => "refused",
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_start_at_zero_and_failures_appear_when_they_happen() {
        let m = Metrics::default();
        assert_eq!(
            sample(&m, r#"astban_bans_total{reason="adopted"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&m, r#"astban_unbans_total{reason="refused"}"#),
            Some(0.0)
        );
        let pjsip = r#"astban_failures_total{kind="challenge_response_failed",service="pjsip",input="ami"}"#;
        assert_eq!(sample(&m, pjsip), None);
        m.failure_counted(
            FailureKind::ChallengeResponseFailed,
            Service::Pjsip,
            Source::Ami,
        );
        m.failure_counted(
            FailureKind::ChallengeResponseFailed,
            Service::Pjsip,
            Source::Ami,
        );
        assert_eq!(sample(&m, pjsip), Some(2.0));
        // The engine's reasons render with the inputs that run (none here).
        m.failure_dropped(EngineDrop::Stale, Source::Log);
        assert_eq!(
            sample(
                &m,
                r#"astban_failures_not_counted_total{reason="stale",input="log"}"#
            ),
            None
        );
    }
}

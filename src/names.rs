//! The host names of `jail.ignoreip` (a SIP trunk, an admin's dynamic
//! DNS name): one task looks them up at start and again every
//! `jail.ignore_names_interval`, or at the answer's TTL when that is
//! sooner, and hands the engine the whole current set of addresses, so
//! that the engine's task never waits on DNS.
//!
//! A name that stops resolving keeps its last addresses for
//! `jail.ignore_names_grace` (a DNS outage must not get the trunk banned),
//! then loses them; both are logged and shown by `astban status`.
//!
//! A name can only ever add single addresses: the A and AAAA answers, each
//! as a /32 or /128, at most [`MAX_ADDRESSES_PER_NAME`] of them, never the
//! unspecified, a multicast or the broadcast address. Whoever controls a
//! name's DNS can thus spare a few hosts of their choosing, never switch
//! protection off (an `ignoreip` of `0.0.0.0/0`).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::NameSettings;
use crate::engine::{EngineHandle, ResolvedIgnore};
use crate::units::{HostName, format_duration};

/// Most addresses one name adds: a trunk has a few; a name answering with
/// hundreds is a mistake or an attack, and its surplus is dropped (and
/// logged).
pub const MAX_ADDRESSES_PER_NAME: usize = 16;

/// The shortest time between two lookups of a name, whatever its TTL (0
/// is common for local names); the interval itself when that is shorter,
/// so that an admin who asks for `1s` gets it.
const MIN_REFRESH: Duration = Duration::from_secs(30);

/// What `astban status` shows of one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameStatus {
    /// The name, as in `jail.ignoreip`.
    pub name: HostName,
    /// The addresses never banned for it now (the last good answer's,
    /// while within the grace period).
    pub addresses: Vec<IpAddr>,
    /// When it last resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
    /// Since when its lookups fail, while they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Timestamp>,
    /// Why the last lookup failed, while lookups fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Addresses of the last answer left out (over the cap, or not
    /// unicast).
    #[serde(default)]
    pub dropped: usize,
}

impl NameStatus {
    fn new(name: HostName) -> NameStatus {
        NameStatus {
            name,
            addresses: Vec::new(),
            resolved_at: None,
            failing_since: None,
            error: None,
            dropped: 0,
        }
    }
}

/// One name's state and when to look it up next.
#[derive(Debug)]
struct Tracked {
    status: NameStatus,
    next: Instant,
}

/// What a lookup gave: the addresses and how long they are valid.
type Answer = Result<(Vec<IpAddr>, Duration), String>;

impl Tracked {
    /// Applies one lookup's outcome at `now` and schedules the next one;
    /// pure, so that the grace rules are tested without DNS.
    fn apply(&mut self, answer: Answer, now: Timestamp, at: Instant, settings: &NameSettings) {
        let floor = MIN_REFRESH.min(settings.interval());
        let s = &mut self.status;
        let answer = answer.and_then(|(addrs, ttl)| {
            let (usable, dropped) = usable(addrs);
            s.dropped = dropped;
            if dropped > 0 {
                tracing::warn!(name = %s.name, dropped, "host name in jail.ignoreip answered addresses that are never ignored (over {MAX_ADDRESSES_PER_NAME}, or not unicast); left out");
            }
            match usable.is_empty() {
                true => Err("no usable address in the answer".into()),
                false => Ok((usable, ttl)),
            }
        });
        match answer {
            Ok((addrs, ttl)) => {
                if s.failing_since.is_some() {
                    tracing::info!(name = %s.name, "host name in jail.ignoreip resolves again");
                }
                if s.addresses != addrs {
                    tracing::info!(name = %s.name, addresses = ?addrs, "host name in jail.ignoreip resolved");
                }
                s.addresses = addrs;
                s.resolved_at = Some(now);
                s.failing_since = None;
                s.error = None;
                self.next = at + ttl.clamp(floor, settings.interval());
            }
            Err(error) => {
                let since = *s.failing_since.get_or_insert(now);
                let failing = Duration::try_from(now.duration_since(since)).unwrap_or_default();
                let left = settings.grace().saturating_sub(failing);
                if s.error.is_none() {
                    tracing::warn!(name = %s.name, %error, "host name in jail.ignoreip does not resolve; its last addresses stay ignored for {}", format_duration(left));
                }
                if left.is_zero() && !s.addresses.is_empty() {
                    tracing::warn!(name = %s.name, addresses = ?s.addresses, "host name in jail.ignoreip has not resolved for jail.ignore_names_grace; its last addresses are no longer ignored");
                    s.addresses.clear();
                }
                s.error = Some(error);
                // Retry soon, and wake when the grace period ends.
                let retry = match left.is_zero() {
                    true => floor,
                    false => floor.min(left),
                };
                self.next = at + retry.max(Duration::from_secs(1));
            }
        }
    }
}

/// The addresses of an answer that may be ignored, in order, once each,
/// at most [`MAX_ADDRESSES_PER_NAME`]; and how many were left out.
fn usable(addrs: Vec<IpAddr>) -> (Vec<IpAddr>, usize) {
    let distinct: BTreeSet<IpAddr> = addrs.into_iter().map(|a| a.to_canonical()).collect();
    let kept: Vec<IpAddr> = distinct
        .iter()
        .copied()
        .filter(|a| {
            let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
            !(a.is_unspecified() || a.is_multicast() || broadcast)
        })
        .take(MAX_ADDRESSES_PER_NAME)
        .collect();
    let dropped = distinct.len() - kept.len();
    (kept, dropped)
}

/// Builds the resolver: the system's resolv.conf (and /etc/hosts, as
/// `getaddrinfo` would), or only `servers`.
fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| {
            format!("cannot read the system's DNS config (/etc/resolv.conf): {e}; set jail.ignore_names_servers")
        })?
    } else {
        let mut config = ResolverConfig::new();
        for &server in servers {
            config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
        }
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Names are looked up as written (fully qualified), never with the
    // search domains; and a failure is not remembered, so that a name
    // that is back is seen at the next lookup.
    options.ndots = 0;
    options.negative_max_ttl = Some(Duration::ZERO);
    Ok(builder.build())
}

async fn lookup(resolver: &Result<TokioResolver, String>, name: &HostName) -> Answer {
    let resolver = resolver.as_ref().map_err(Clone::clone)?;
    let found = resolver
        .lookup_ip(format!("{name}."))
        .await
        .map_err(|e| e.to_string())?;
    let ttl = found
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    Ok((found.iter().collect(), ttl))
}

/// The resolver task: runs until `stop`. Takes new settings from
/// `settings` (a reload), hands the engine each changed set of addresses,
/// and publishes every name's state on `status`. Ends early only if the
/// engine has stopped.
pub async fn run(
    mut settings: watch::Receiver<NameSettings>,
    engine: EngineHandle,
    status: watch::Sender<Vec<NameStatus>>,
    stop: CancellationToken,
) {
    let mut current = settings.borrow_and_update().clone();
    let mut resolver = (!current.names().is_empty()).then(|| self::resolver(current.servers()));
    let mut names: Vec<Tracked> = track(&current, Vec::new());
    let mut sent: Option<Vec<ResolvedIgnore>> = None;
    loop {
        let now = Instant::now();
        let due: Vec<usize> = (0..names.len()).filter(|&i| names[i].next <= now).collect();
        if !due.is_empty() {
            let resolver = resolver.get_or_insert_with(|| self::resolver(current.servers()));
            let lookups = due.iter().map(|&i| lookup(resolver, &names[i].status.name));
            let answers = tokio::select! {
                () = stop.cancelled() => return,
                answers = futures_util::future::join_all(lookups) => answers,
            };
            let (wall, at) = (Timestamp::now(), Instant::now());
            for (i, answer) in due.into_iter().zip(answers) {
                names[i].apply(answer, wall, at, &current);
            }
        }
        let set = resolved(&names);
        if sent.as_ref() != Some(&set) {
            match engine.set_resolved_ignores(set.clone()).await {
                Ok(0) => {}
                Ok(lifted) => tracing::info!(
                    lifted,
                    "bans lifted: addresses of host names in jail.ignoreip now cover them"
                ),
                Err(_) => return,
            }
            sent = Some(set);
        }
        status.send_replace(names.iter().map(|t| t.status.clone()).collect());
        let next = names.iter().map(|t| t.next).min();
        tokio::select! {
            () = stop.cancelled() => return,
            changed = settings.changed() => {
                if changed.is_err() {
                    // The daemon is going away: no more reloads.
                    stop.cancelled().await;
                    return;
                }
                let new = settings.borrow_and_update().clone();
                if new.servers() != current.servers() {
                    resolver = None;
                }
                names = track(&new, names);
                current = new;
            }
            () = sleep_until(next.unwrap_or(now)), if next.is_some() => {}
        }
    }
}

/// The names `settings` lists, keeping what is known of those already
/// tracked; new ones are due now.
fn track(settings: &NameSettings, mut old: Vec<Tracked>) -> Vec<Tracked> {
    let now = Instant::now();
    settings
        .names()
        .iter()
        .map(
            |name| match old.iter().position(|t| &t.status.name == name) {
                Some(i) => old.swap_remove(i),
                None => Tracked {
                    status: NameStatus::new(name.clone()),
                    next: now,
                },
            },
        )
        .collect()
}

fn resolved(names: &[Tracked]) -> Vec<ResolvedIgnore> {
    names
        .iter()
        .flat_map(|t| {
            t.status.addresses.iter().map(|&addr| ResolvedIgnore {
                name: t.status.name.clone(),
                addr,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JailConfig;

    fn settings(interval: u64, grace: u64) -> NameSettings {
        NameSettings::try_from(&JailConfig {
            ignoreip: vec!["trunk.example".parse().expect("name")],
            ignore_names_interval: Duration::from_secs(interval),
            ignore_names_grace: Duration::from_secs(grace),
            ..JailConfig::default()
        })
        .expect("valid")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("ts")
    }

    fn tracked() -> Tracked {
        Tracked {
            status: NameStatus::new("trunk.example".parse().expect("name")),
            next: Instant::now(),
        }
    }

    #[test]
    fn the_next_lookup_is_at_the_ttl_within_the_floor_and_the_interval() {
        let s = settings(300, 3600);
        let mut t = tracked();
        let start = Instant::now();
        for (ttl, wait) in [(60, 60), (0, 30), (86_400, 300)] {
            t.apply(
                Ok((ips(&["192.0.2.5"]), Duration::from_secs(ttl))),
                at(0),
                start,
                &s,
            );
            assert_eq!(t.next - start, Duration::from_secs(wait), "ttl {ttl}");
        }
        // An interval shorter than the floor wins.
        t.apply(
            Ok((ips(&["192.0.2.5"]), Duration::ZERO)),
            at(0),
            start,
            &settings(2, 10),
        );
        assert_eq!(t.next - start, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_addresses_for_the_grace_period() {
        let s = settings(300, 100);
        let mut t = tracked();
        let start = Instant::now();
        t.apply(
            Ok((ips(&["192.0.2.5"]), Duration::from_secs(60))),
            at(0),
            start,
            &s,
        );
        t.apply(Err("timed out".into()), at(10), start, &s);
        assert_eq!(t.status.addresses, ips(&["192.0.2.5"]));
        assert_eq!(t.status.failing_since, Some(at(10)));
        assert_eq!(t.next - start, Duration::from_secs(30));
        // Near the end of the grace period, the retry is at its end.
        t.apply(Err("timed out".into()), at(100), start, &s);
        assert_eq!(t.next - start, Duration::from_secs(10));
        assert_eq!(t.status.failing_since, Some(at(10)));
        t.apply(Err("NXDOMAIN".into()), at(110), start, &s);
        assert!(t.status.addresses.is_empty());
        assert_eq!(t.status.error.as_deref(), Some("NXDOMAIN"));
        // Back: failing state cleared.
        t.apply(
            Ok((ips(&["192.0.2.6"]), Duration::from_secs(60))),
            at(120),
            start,
            &s,
        );
        assert_eq!(t.status.addresses, ips(&["192.0.2.6"]));
        assert_eq!(
            (t.status.failing_since, t.status.error.clone()),
            (None, None)
        );
        assert_eq!(t.status.resolved_at, Some(at(120)));
    }

    #[test]
    fn an_answer_adds_only_a_few_unicast_addresses() {
        let mut many: Vec<IpAddr> = (0..=255u8)
            .map(|i| IpAddr::from([198, 51, 100, i]))
            .collect();
        many.extend(ips(&[
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:192.0.2.1",
        ]));
        let total = many.len();
        let (kept, dropped) = usable(many);
        assert_eq!(kept.len(), MAX_ADDRESSES_PER_NAME);
        assert_eq!(dropped, total - MAX_ADDRESSES_PER_NAME);
        assert!(kept.contains(&"192.0.2.1".parse().expect("ip")));
        // Repeats are not losses.
        assert_eq!(
            usable(ips(&["192.0.2.1", "192.0.2.1"])),
            (ips(&["192.0.2.1"]), 0)
        );
        // An answer of nothing usable is a failure: the last addresses stay.
        let s = settings(300, 100);
        let mut t = tracked();
        let start = Instant::now();
        t.apply(Ok((ips(&["192.0.2.5"]), Duration::ZERO)), at(0), start, &s);
        t.apply(Ok((ips(&["0.0.0.0"]), Duration::ZERO)), at(1), start, &s);
        assert_eq!(t.status.addresses, ips(&["192.0.2.5"]));
        assert!(t.status.error.is_some());
    }
}

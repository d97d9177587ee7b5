//! The engine and the real nftables backend against a real kernel: network
//! namespaces joined by a veth pair, `nft` run inside the protected one,
//! and UDP datagrams to prove what is dropped. Needs root; without it the
//! namespace tests are skipped with a loud message.

#[path = "support/netns.rs"]
mod netns;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use astban::config::{FirewallConfig, JailConfig, JailSettings};
use astban::engine::{self, EngineEvent, EngineHandle};
use astban::failure::{Failure, FailureKind, Report, Service, Source};
use astban::firewall::NftFirewall;
use jiff::Timestamp;
use netns::{NetnsPair, require_root};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a negative probe waits for a datagram that should not come.
const SILENCE: Duration = Duration::from_millis(300);

/// Deadline for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(10);

const TABLE: &str = "astban";

struct Running {
    engine: EngineHandle,
    task: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Running {
    fn start(jail: &JailConfig, firewall: &FirewallConfig, state: &Path) -> Running {
        let shutdown = CancellationToken::new();
        let jail = JailSettings::try_from(jail).expect("a valid [jail]");
        let (engine, task) =
            engine::spawn(&jail, state, NftFirewall::new(firewall), shutdown.clone())
                .expect("engine starts");
        Running {
            engine,
            task,
            shutdown,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("engine stops promptly")
            .expect("engine task did not panic");
    }

    async fn fail(&self, host: IpAddr, times: u32) {
        for _ in 0..times {
            self.engine
                .report(failure(host))
                .await
                .expect("engine alive");
        }
    }
}

fn jail(bantime: Duration) -> JailConfig {
    JailConfig {
        bantime,
        ignoreip: Vec::new(),
        ignore_self: false,
        ..JailConfig::default()
    }
}

fn firewall(pair: &NetnsPair) -> FirewallConfig {
    FirewallConfig {
        nft: pair.protected.nft_command(),
        retry_interval: Duration::from_millis(200),
        ..FirewallConfig::default()
    }
}

fn failure(host: IpAddr) -> Report {
    Report::Failure(Failure {
        host,
        kind: FailureKind::InvalidPassword,
        service: Service::Pjsip,
        account: None,
        account_matched: false,
        session: None,
        time: Timestamp::now(),
        source: Source::Ami,
    })
}

/// Runs blocking fixture code (nft, socket waits) off the runtime thread,
/// so the engine keeps running meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Polls `check` until it holds, failing the test after [`SOON`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool + Send + 'static) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let (ok, back) = blocking(move || (check(), check)).await;
        if ok {
            return;
        }
        check = back;
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn reaches(
    pair: &Arc<NetnsPair>,
    from: IpAddr,
    sink: &Arc<UdpSocket>,
    wait: Duration,
) -> bool {
    let (pair, sink) = (pair.clone(), sink.clone());
    blocking(move || pair.udp_reaches(from, &sink, wait).expect("probe")).await
}

fn in_set(
    pair: &Arc<NetnsPair>,
    set: &'static str,
    element: String,
) -> impl FnMut() -> bool + Send + 'static {
    let pair = pair.clone();
    move || {
        pair.protected
            .set_elements(TABLE, set)
            .expect("list set")
            .contains(&element)
    }
}

fn rule_count(pair: &NetnsPair) -> usize {
    let out = pair
        .protected
        .nft(&["-j", "list", "chain", "inet", TABLE, "input"])
        .expect("list chain");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    json["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter(|o| o.get("rule").is_some())
        .count()
}

fn sink(pair: &NetnsPair, addr: IpAddr, port: u16) -> Arc<UdpSocket> {
    Arc::new(
        pair.protected
            .udp(SocketAddr::new(addr, port))
            .expect("sink"),
    )
}

#[tokio::test]
async fn a_banned_host_is_dropped_others_pass_and_the_kernel_unbans_on_time() {
    if !require_root("a_banned_host_is_dropped_others_pass_and_the_kernel_unbans_on_time") {
        return;
    }
    let pair = Arc::new(NetnsPair::new().expect("namespaces"));
    let state = tempfile::tempdir().expect("tempdir");
    let sink = sink(&pair, netns::PROTECTED_V4.into(), 0);
    let attacker = IpAddr::from(netns::ATTACKER_V4);
    let bystander = IpAddr::from(netns::BYSTANDER_V4);
    assert!(
        reaches(&pair, attacker, &sink, SOON).await,
        "the attacker gets through before any ban"
    );

    let running = Running::start(
        &jail(Duration::from_secs(2)),
        &firewall(&pair),
        state.path(),
    );
    let mut events = running.engine.subscribe();
    running.fail(attacker, 4).await;
    running.fail(bystander, 4).await;
    running.fail(attacker, 1).await;
    let event = tokio::time::timeout(SOON, events.recv())
        .await
        .expect("in time")
        .expect("event");
    let EngineEvent::Banned(ban) = event else {
        panic!("expected a ban")
    };
    assert_eq!(ban.net, attacker.into());
    assert_eq!(ban.failures, 5);
    eventually(
        "the attacker is in the kernel set",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;

    assert!(
        !reaches(&pair, attacker, &sink, SILENCE).await,
        "banned traffic is dropped"
    );
    assert!(
        reaches(&pair, bystander, &sink, SOON).await,
        "another address still passes"
    );

    // Stop astban: the kernel must end the ban on its own.
    running.stop().await;
    let mut banned = in_set(&pair, "v4", attacker.to_string());
    eventually("the kernel drops the expired element", move || !banned()).await;
    assert!(
        reaches(&pair, attacker, &sink, SOON).await,
        "traffic passes again once the ban is over"
    );
}

#[tokio::test]
async fn a_restart_keeps_bans_and_rules_and_leaves_other_tables_alone() {
    if !require_root("a_restart_keeps_bans_and_rules_and_leaves_other_tables_alone") {
        return;
    }
    let pair = Arc::new(NetnsPair::new().expect("namespaces"));
    let state = tempfile::tempdir().expect("tempdir");
    let p = &pair.protected;
    p.nft(&["add", "table", "inet", "other"])
        .expect("other table");
    p.nft(&[
        "add",
        "chain",
        "inet",
        "other",
        "c",
        "{ type filter hook input priority 0; }",
    ])
    .expect("chain");
    p.nft(&[
        "add", "rule", "inet", "other", "c", "tcp", "dport", "22", "accept",
    ])
    .expect("rule");
    let other = || {
        pair.protected
            .nft(&["list", "table", "inet", "other"])
            .expect("list")
            .stdout
    };
    let other_before = other();

    let jail = jail(Duration::from_secs(3600));
    let firewall = firewall(&pair);
    let attacker = IpAddr::from(netns::ATTACKER_V4);
    let running = Running::start(&jail, &firewall, state.path());
    running.fail(attacker, 5).await;
    eventually(
        "the ban is in the kernel",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;
    let rules = rule_count(&pair);
    running.stop().await;

    // While astban is down: one persisted ban disappears from the kernel,
    // and an element astban does not know about appears.
    p.nft(&["delete", "element", "inet", TABLE, "v4", "{ 10.77.0.2 }"])
        .expect("delete element");
    p.nft(&[
        "add",
        "element",
        "inet",
        TABLE,
        "v4",
        "{ 10.77.0.99 timeout 1h }",
    ])
    .expect("add element");

    let running = Running::start(&jail, &firewall, state.path());
    eventually(
        "the persisted ban is back in the kernel",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;
    let stats = running.engine.stats().await.expect("stats");
    assert_eq!(stats.active_bans, 1);
    let bans = running.engine.bans().await.expect("bans");
    assert_eq!(bans[0].net, attacker.into());
    assert!(
        in_set(&pair, "v4", "10.77.0.99".into())(),
        "elements already in the kernel are kept"
    );
    // ... and one astban does not know can still be lifted.
    let unknown = running
        .engine
        .unban("10.77.0.99/32".parse().expect("net"))
        .await
        .expect("unban");
    assert_eq!(unknown, None, "not a ban astban knows");
    let mut kept = in_set(&pair, "v4", "10.77.0.99".into());
    eventually("the unknown element is removed", move || !kept()).await;
    assert_eq!(
        rule_count(&pair),
        rules,
        "rules are replaced, not duplicated"
    );
    // One per set: astban's four and the fleet's four.
    assert_eq!(rules, 8);
    assert_eq!(other(), other_before, "other tables are untouched");
    let sink = sink(&pair, netns::PROTECTED_V4.into(), 0);
    assert!(
        !reaches(&pair, attacker, &sink, SILENCE).await,
        "still dropped after the restart"
    );
    running.stop().await;

    p.nft(&["delete", "table", "inet", TABLE])
        .expect("one command removes astban");
    assert!(reaches(&pair, attacker, &sink, SOON).await);
}

#[tokio::test]
async fn a_flushed_ruleset_is_put_back_without_waiting_for_a_new_ban() {
    if !require_root("a_flushed_ruleset_is_put_back_without_waiting_for_a_new_ban") {
        return;
    }
    let pair = Arc::new(NetnsPair::new().expect("namespaces"));
    let state = tempfile::tempdir().expect("tempdir");
    let sink = sink(&pair, netns::PROTECTED_V4.into(), 0);
    let attacker = IpAddr::from(netns::ATTACKER_V4);
    let firewall = FirewallConfig {
        check_interval: Duration::from_millis(200),
        ..firewall(&pair)
    };
    let running = Running::start(&jail(Duration::from_secs(3600)), &firewall, state.path());
    running.fail(attacker, 5).await;
    eventually(
        "the ban is in the kernel",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;
    let rules = rule_count(&pair);

    // `systemctl restart nftables` with `flush ruleset` in its config.
    pair.protected
        .nft(&["flush", "ruleset"])
        .expect("flush ruleset");
    eventually(
        "the ban is back in the kernel",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;
    assert_eq!(rule_count(&pair), rules, "the rules are back too");
    assert!(
        !reaches(&pair, attacker, &sink, SILENCE).await,
        "the attacker is dropped again"
    );

    // A ban deleted by hand comes back as well: `astban unban` lifts bans.
    pair.protected
        .nft(&[
            "delete",
            "element",
            "inet",
            TABLE,
            "v4",
            &format!("{{ {attacker} }}"),
        ])
        .expect("delete element");
    eventually(
        "the deleted ban is back",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;

    let stats = running.engine.stats().await.expect("stats");
    assert_eq!((stats.active_bans, stats.bans_total), (1, 1), "no new ban");
    assert!(stats.firewall.healthy, "{:?}", stats.firewall);
    running.stop().await;
}

#[tokio::test]
async fn a_saved_ban_that_ignoreip_now_covers_leaves_the_kernel_at_restart() {
    if !require_root("a_saved_ban_that_ignoreip_now_covers_leaves_the_kernel_at_restart") {
        return;
    }
    let pair = Arc::new(NetnsPair::new().expect("namespaces"));
    let state = tempfile::tempdir().expect("tempdir");
    let sink = sink(&pair, netns::PROTECTED_V4.into(), 0);
    let attacker = IpAddr::from(netns::ATTACKER_V4);
    let firewall = firewall(&pair);
    let running = Running::start(&jail(Duration::from_secs(3600)), &firewall, state.path());
    running.fail(attacker, 5).await;
    eventually(
        "the ban is in the kernel",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;
    running.stop().await;

    // The address turns out to be a friend's: restarted with it ignored.
    let friendly = JailConfig {
        ignoreip: vec![attacker.into()],
        ..jail(Duration::from_secs(3600))
    };
    let running = Running::start(&friendly, &firewall, state.path());
    let mut banned = in_set(&pair, "v4", attacker.to_string());
    eventually("the dropped ban leaves the kernel", move || !banned()).await;
    assert!(running.engine.bans().await.expect("bans").is_empty());
    assert!(
        reaches(&pair, attacker, &sink, SOON).await,
        "the address passes again"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_ban_nft_refuses_does_not_hold_back_the_next() {
    if !require_root("a_ban_nft_refuses_does_not_hold_back_the_next") {
        return;
    }
    let pair = Arc::new(NetnsPair::new().expect("namespaces"));
    let state = tempfile::tempdir().expect("tempdir");
    let sink = sink(&pair, netns::PROTECTED_V4.into(), 0);
    let attacker = IpAddr::from(netns::ATTACKER_V4);
    let running = Running::start(
        &jail(Duration::from_secs(3600)),
        &firewall(&pair),
        state.path(),
    );
    let engine = running.engine.clone();
    let deadline = tokio::time::Instant::now() + SOON;
    while !engine.stats().await.expect("stats").firewall.healthy {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the table is never set up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An element astban does not know, which nft will not let a wider
    // ban overlap.
    pair.protected
        .nft(&[
            "add",
            "element",
            "inet",
            TABLE,
            "v4net",
            "{ 10.88.0.0/24 timeout 1h }",
        ])
        .expect("add element");
    engine
        .ban(
            "10.88.0.0/16".parse().expect("net"),
            Some(Duration::from_secs(3600)),
            false,
        )
        .await
        .expect("the engine takes the ban");
    running.fail(attacker, 5).await;
    eventually(
        "the next ban reaches the kernel",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;
    assert!(!reaches(&pair, attacker, &sink, SILENCE).await);
    let elements = pair.protected.set_elements(TABLE, "v4net").expect("list");
    assert_eq!(elements, ["10.88.0.0/24"], "the refused ban is not in");
    let stats = engine.stats().await.expect("stats");
    assert_eq!(stats.firewall.pending, 0, "{:?}", stats.firewall);
    running.stop().await;
}

#[tokio::test]
async fn ipv6_attackers_are_banned_per_prefix() {
    if !require_root("ipv6_attackers_are_banned_per_prefix") {
        return;
    }
    let pair = Arc::new(NetnsPair::new().expect("namespaces"));
    let state = tempfile::tempdir().expect("tempdir");
    let sink = sink(&pair, netns::PROTECTED_V6.into(), 0);
    let attacker = IpAddr::from(netns::ATTACKER_V6);
    assert!(
        reaches(&pair, attacker, &sink, SOON).await,
        "IPv6 works before any ban"
    );

    let running = Running::start(
        &jail(Duration::from_secs(3600)),
        &firewall(&pair),
        state.path(),
    );
    running.fail(attacker, 5).await;
    eventually(
        "the /64 is in the kernel set",
        in_set(&pair, "v6net", "fd77:0:0:a::/64".into()),
    )
    .await;
    assert!(!reaches(&pair, attacker, &sink, SILENCE).await);
    assert!(
        !reaches(&pair, netns::ATTACKER_V6_NEIGHBOUR.into(), &sink, SILENCE).await,
        "the whole prefix is dropped"
    );
    assert!(
        reaches(&pair, netns::BYSTANDER_V6.into(), &sink, SOON).await,
        "another prefix passes"
    );

    // A manual unban reaches the kernel too.
    let unbanned = running
        .engine
        .unban("fd77:0:0:a::/64".parse().expect("net"))
        .await
        .expect("unban");
    assert!(unbanned.is_some());
    let mut banned = in_set(&pair, "v6net", "fd77:0:0:a::/64".into());
    eventually("the prefix is removed", move || !banned()).await;
    assert!(reaches(&pair, attacker, &sink, SOON).await);
    running.stop().await;
}

#[tokio::test]
async fn listed_ports_limit_what_is_dropped() {
    if !require_root("listed_ports_limit_what_is_dropped") {
        return;
    }
    let pair = Arc::new(NetnsPair::new().expect("namespaces"));
    let state = tempfile::tempdir().expect("tempdir");
    let sip = sink(&pair, netns::PROTECTED_V4.into(), 5060);
    let other = sink(&pair, netns::PROTECTED_V4.into(), 0);
    let attacker = IpAddr::from(netns::ATTACKER_V4);
    let firewall = FirewallConfig {
        ports: vec![5060, 5061],
        ..firewall(&pair)
    };
    let running = Running::start(&jail(Duration::from_secs(3600)), &firewall, state.path());
    running.fail(attacker, 5).await;
    eventually(
        "the ban is in the kernel",
        in_set(&pair, "v4", attacker.to_string()),
    )
    .await;
    assert!(
        !reaches(&pair, attacker, &sip, SILENCE).await,
        "SIP is dropped"
    );
    assert!(
        reaches(&pair, attacker, &other, SOON).await,
        "other ports pass"
    );
    running.stop().await;
}

/// Needs no root: the program does not exist anywhere.
#[tokio::test]
async fn a_missing_nft_is_a_clear_error_and_the_engine_keeps_its_state() {
    let state = tempfile::tempdir().expect("tempdir");
    let firewall = FirewallConfig {
        nft: vec!["/nonexistent/astban-test/nft".into()],
        retry_interval: Duration::from_millis(100),
        ..FirewallConfig::default()
    };
    let running = Running::start(&jail(Duration::from_secs(3600)), &firewall, state.path());
    let attacker: IpAddr = "192.0.2.66".parse().expect("ip");
    running.fail(attacker, 5).await;

    let deadline = tokio::time::Instant::now() + SOON;
    let stats = loop {
        let stats = running.engine.stats().await.expect("the engine answers");
        if stats.active_bans == 1
            && stats.firewall.pending == 1
            && stats.firewall.last_error.is_some()
        {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no firewall error reported: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = stats.firewall.last_error.expect("error");
    assert!(error.contains("/nonexistent/astban-test/nft"), "{error}");
    assert!(
        error.contains("not found") && error.contains("install nftables"),
        "{error}"
    );
    assert!(!stats.firewall.healthy);

    // Still answering, still counting, nothing dropped.
    running.fail("192.0.2.67".parse().expect("ip"), 5).await;
    let bans = running.engine.bans().await.expect("bans");
    assert_eq!(bans.len(), 2);
    running.stop().await;
}

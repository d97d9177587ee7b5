//! Ban latency and restore time, against the real kernel in a network
//! namespace (root needed).
//!
//! 1. Latency: for each of `ROUNDS` hosts, 4 failures are reported, then
//!    the clock starts and the 5th (the one reaching maxretry) is reported;
//!    the clock stops when `nft monitor` in the namespace prints the new set
//!    element, i.e. when the kernel has it.
//! 2. Restore: 100,000 bans are saved by a dry-run engine, then a fresh
//!    engine with the nftables backend is started on that state; the clock
//!    runs from `engine::spawn` until the firewall reports every ban applied,
//!    and the kernel set is counted afterwards.
//!
//! Run: `cargo bench --bench ban_latency`

#[path = "../support/netns.rs"]
mod netns;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use astban::config::{FirewallConfig, JailConfig, JailSettings};
use astban::engine::{self, EngineHandle};
use astban::failure::{Failure, FailureKind, Report, Service, Source};
use astban::firewall::{DryRunFirewall, NftFirewall};
use jiff::Timestamp;
use netns::Netns;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const ROUNDS: u32 = 200;
const RESTORED: u32 = 100_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !netns::require_root("ban_latency") {
        return;
    }
    latency().await;
    restore().await;
}

fn jail() -> JailSettings {
    JailSettings::try_from(&JailConfig {
        ignoreip: Vec::new(),
        ignore_self: false,
        ..JailConfig::default()
    })
    .expect("a valid [jail]")
}

fn firewall(ns: &Netns) -> FirewallConfig {
    FirewallConfig {
        nft: ns.nft_command(),
        ..FirewallConfig::default()
    }
}

fn host(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0b00_0000 + i)
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

async fn wait_until_applied(engine: &EngineHandle) {
    loop {
        let stats = engine.stats().await.expect("engine");
        if stats.firewall.healthy && stats.firewall.pending == 0 {
            return;
        }
        if let Some(error) = stats.firewall.last_error {
            panic!("firewall failed: {error}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn latency() {
    let ns = Netns::create("bench").expect("namespace");
    let state = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let (engine, task) = engine::spawn(
        &jail(),
        state.path(),
        NftFirewall::new(&firewall(&ns)),
        shutdown.clone(),
    )
    .expect("engine");
    wait_until_applied(&engine).await;

    let mut monitor = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "nft",
            "monitor",
            "new",
            "elements",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("nft monitor");
    let mut lines = BufReader::new(monitor.stdout.take().expect("stdout")).lines();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = seen_tx.send((Instant::now(), line));
        }
    });
    // Warm-up bans until the monitor has subscribed and reports them.
    for k in 1..=250u8 {
        let net = IpAddr::from(Ipv4Addr::new(192, 0, 2, k)).into();
        engine.ban(net, None, false).await.expect("warm-up ban");
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(200), seen.recv()).await {
            line.expect("monitor works");
            break;
        }
    }

    let mut samples = Vec::new();
    for i in 0..ROUNDS {
        let host = IpAddr::from(host(i));
        for _ in 0..4 {
            engine.report(failure(host)).await.expect("engine");
        }
        // The transaction's first operation on the element is reported at
        // its commit, like the rest of it.
        let wanted = format!("{{ {host} timeout");
        let start = Instant::now();
        engine.report(failure(host)).await.expect("engine");
        let at = loop {
            let (at, line) = seen.recv().await.expect("monitor line");
            if line.contains(&wanted) {
                break at;
            }
        };
        samples.push(at.duration_since(start));
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: usize| ms(samples[(samples.len() * p / 100).min(samples.len() - 1)]);
    let mean = samples.iter().map(|&d| ms(d)).sum::<f64>() / samples.len() as f64;
    println!(
        "ban latency (failure reaching maxretry -> element in the kernel set), {ROUNDS} bans:"
    );
    println!(
        "  median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, mean {mean:.2} ms",
        pct(50),
        pct(90),
        pct(99),
        ms(samples[samples.len() - 1])
    );
    shutdown.cancel();
    task.await.expect("engine task");
}

async fn restore() {
    let state = tempfile::tempdir().expect("tempdir");
    // Make the state with a dry run: 100,000 one-hour bans.
    {
        let shutdown = CancellationToken::new();
        let dry = DryRunFirewall::new(&FirewallConfig::default());
        let (engine, task) =
            engine::spawn(&jail(), state.path(), dry, shutdown.clone()).expect("engine");
        for i in 0..RESTORED {
            let net = IpAddr::from(host(i)).into();
            engine
                .ban(net, Some(Duration::from_secs(3600)), false)
                .await
                .expect("ban");
        }
        shutdown.cancel();
        task.await.expect("engine task");
    }
    let file = state.path().join(engine::STATE_FILE);
    let size = std::fs::metadata(&file).expect("state file").len();

    let ns = Netns::create("bench").expect("namespace");
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let (engine, task) = engine::spawn(
        &jail(),
        state.path(),
        NftFirewall::new(&firewall(&ns)),
        shutdown.clone(),
    )
    .expect("engine");
    let loaded = start.elapsed();
    wait_until_applied(&engine).await;
    let applied = start.elapsed();
    let in_kernel = ns.set_elements("astban", "v4").expect("list").len();
    assert_eq!(in_kernel, RESTORED as usize, "every ban is in the kernel");
    println!(
        "restore of {RESTORED} bans ({:.1} MB state file): state loaded in {:.2} s, all in the kernel after {:.2} s",
        size as f64 / 1e6,
        loaded.as_secs_f64(),
        applied.as_secs_f64()
    );
    shutdown.cancel();
    task.await.expect("engine task");
}

//! Memory with 100,000 distinct failing hosts, each below maxretry.
//!
//! Each scenario runs in a fresh child process (this binary again) so its
//! peak is its own; RSS and peak RSS come from /proc/self/status after the
//! engine has counted every failure.
//!
//! - `typical`: 4 failures per host, one short account name each (what a
//!   distributed SIP scan looks like).
//! - `worst`: 4 failures per host, 3 distinct 64-byte account names each
//!   (an attacker trying to make astban remember as much as possible).
//!
//! Run: `cargo bench --bench engine_memory`

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use astban::config::{FirewallConfig, JailConfig, JailSettings};
use astban::engine;
use astban::failure::{AttackerText, Failure, FailureKind, Report, Service, Source};
use astban::firewall::DryRunFirewall;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

const HOSTS: u32 = 100_000;
const FAILURES_PER_HOST: u32 = 4;
const SCENARIO_VAR: &str = "ASTBAN_BENCH_SCENARIO";

fn main() {
    match std::env::var(SCENARIO_VAR) {
        Ok(scenario) => run(&scenario),
        Err(_) => {
            let exe = std::env::current_exe().expect("own path");
            for scenario in ["typical", "worst"] {
                let status = Command::new(&exe)
                    .env(SCENARIO_VAR, scenario)
                    .status()
                    .expect("child");
                assert!(status.success(), "{scenario} failed");
            }
        }
    }
}

/// `VmRSS` and `VmHWM` in MB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .expect("field")
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn run(scenario: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (base, _) = rss();
        let state = tempfile::tempdir().expect("tempdir");
        let jail = JailSettings::try_from(&JailConfig {
            ignoreip: Vec::new(),
            ignore_self: false,
            ..JailConfig::default()
        })
        .expect("a valid [jail]");
        let shutdown = CancellationToken::new();
        let dry = DryRunFirewall::new(&FirewallConfig::default());
        let (engine, task) = engine::spawn(&jail, state.path(), dry, shutdown.clone()).expect("engine");
        let start = Instant::now();
        for round in 0..FAILURES_PER_HOST {
            for i in 0..HOSTS {
                let account = match scenario {
                    "worst" => format!("{round:x}{i:08x}{}", "x".repeat(64)),
                    _ => format!("{}", 1000 + i % 500),
                };
                engine
                    .report(Report::Failure(Failure {
                        host: IpAddr::from(Ipv4Addr::from(0x0b00_0000 + i)),
                        kind: FailureKind::InvalidPassword,
                        service: Service::Sip,
                        account: Some(AttackerText::new(&account)),
                        account_matched: false,
                        session: None,
                        time: Timestamp::now(),
                        source: Source::Ami,
                    }))
                    .await
                    .expect("engine");
            }
        }
        let stats = engine.stats().await.expect("stats");
        let elapsed = start.elapsed();
        assert_eq!(stats.tracked_hosts, HOSTS as usize);
        assert_eq!(stats.active_bans, 0);
        let (now, peak) = rss();
        let failures = HOSTS * FAILURES_PER_HOST;
        println!(
            "{scenario}: {HOSTS} hosts x {FAILURES_PER_HOST} failures: RSS {now:.1} MB (peak {peak:.1} MB, \
             {base:.1} MB before the engine), {:.0} failures/s",
            f64::from(failures) / elapsed.as_secs_f64().max(f64::EPSILON)
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops")
            .expect("engine task");
    });
}

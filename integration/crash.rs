//! SIGKILL in the middle of a ban flood loses nothing: every ban astban
//! reported (logged) before it died is, after a restart, in `astban bans`
//! with its offense count and in the kernel, and the kernel holds nothing
//! astban does not list. Real daemon, real log file, real nftables in a
//! network namespace of the test's own.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/netns.rs"]
mod netns;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use daemon::Daemon;

/// Distinct attackers in the flood (198.18.0.0/15, benchmark space).
const FLOOD: u32 = 50_000;
const SOON: Duration = Duration::from_secs(60);

fn host(i: u32) -> String {
    format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 0xff, i & 0xff)
}

/// Appends one wrong-password line per attacker, stamped now.
fn flood(log: &Path) {
    let now = jiff::ZonedDateTime::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let mut text = String::with_capacity(FLOOD as usize * 130);
    for i in 0..FLOOD {
        text.push_str(&format!(
            "[{now}] NOTICE[2766] chan_sip.c: Registration from '<sip:100@pbx>' failed for '{}:5060' - Wrong password\n",
            host(i)
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .expect("log");
    file.write_all(text.as_bytes()).expect("flood");
}

/// The hosts of `banned host=...` lines.
fn reported(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.split("banned host=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A log-only daemon's setup in a temporary directory, with nftables in
/// `ns` under `table` and `jail` settings added.
struct Setup {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Setup {
    fn new(ns: &netns::Netns, table: &str, jail: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("messages");
        std::fs::write(&log, "").expect("log");
        let socket = dir.path().join("run/astban.sock");
        let nft: Vec<String> = ns.nft_command().iter().map(|s| format!("{s:?}")).collect();
        let config = dir.path().join("astban.toml");
        std::fs::write(
            &config,
            format!(
                "[input]\nmode = \"log\"\n[log]\npath = \"{}\"\n[jail]\n{jail}\n\
                 [firewall]\nbackend = \"nftables\"\ntable = \"{table}\"\nnft = [{}]\n\
                 [control]\nsocket = \"{}\"\n[state]\ndir = \"{}\"\n",
                log.display(),
                nft.join(", "),
                socket.display(),
                dir.path().join("state").display()
            ),
        )
        .expect("config");
        Setup {
            dir,
            config,
            socket,
        }
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("messages")
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }
}

#[test]
fn sigkill_during_a_ban_flood_loses_no_reported_ban() {
    if !netns::require_root("sigkill_during_a_ban_flood_loses_no_reported_ban") {
        return;
    }
    let ns = netns::Netns::create("crash").expect("namespace");
    // Kill points spread over the flood, drawn from the process id.
    let mut seed = u64::from(std::process::id()) | 1;
    for round in 0..3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 1_000 + (seed % 40_000) as usize;
        kill_and_restart(&ns, round, kill_after);
    }
}

/// One run: a fresh state and table, a flood, SIGKILL after `kill_after`
/// bans were reported, a restart, and the checks.
fn kill_and_restart(ns: &netns::Netns, round: u32, kill_after: usize) {
    let table = format!("astban_crash_{}_{round}", std::process::id());
    let setup = Setup::new(ns, &table, "maxretry = 1\nmax_tracked_hosts = 100000");
    let (config, socket) = (&setup.config, &setup.socket);
    let mut d = Daemon::start(config, socket);
    d.wait_for_log("following", SOON);
    flood(&setup.log());
    let mut bans_seen = 0;
    let deadline = Instant::now() + SOON;
    while bans_seen < kill_after {
        assert!(
            Instant::now() < deadline,
            "round {round}: only {bans_seen} bans"
        );
        if let Some(line) = d.next_line(Duration::from_secs(5))
            && line.contains("banned host=")
        {
            bans_seen += 1;
        }
    }
    let reported = reported(&d.kill());
    assert!(reported.len() >= kill_after, "round {round}");

    // Restart: everything reported is banned, once, in astban and in the
    // kernel; the kernel holds nothing more.
    let d = Daemon::start(config, socket);
    let bans = d.bans();
    let listed: BTreeSet<String> = bans
        .iter()
        .filter_map(|b| b["host"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<_> = reported.difference(&listed).take(5).collect();
    assert!(
        missing.is_empty(),
        "round {round}: {} reported bans lost (of {}), e.g. {missing:?}",
        reported.difference(&listed).count(),
        reported.len()
    );
    assert!(
        bans.iter().all(|b| b["offense"] == 1),
        "round {round}: a first ban with another offense count"
    );
    let deadline = Instant::now() + SOON;
    loop {
        let kernel: BTreeSet<String> = ns
            .set_elements(&table, "v4")
            .expect("set")
            .into_iter()
            .collect();
        if kernel == listed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: kernel {} elements, astban {} bans; only in the kernel: {:?}",
            kernel.len(),
            listed.len(),
            kernel.difference(&listed).take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(d);
    let _ = ns.nft(&["delete", "table", "inet", &table]);
}

#[test]
fn bans_in_the_kernel_that_the_state_lost_are_adopted() {
    if !netns::require_root("bans_in_the_kernel_that_the_state_lost_are_adopted") {
        return;
    }
    let ns = netns::Netns::create("adopt").expect("namespace");
    let table = format!("astban_adopt_{}", std::process::id());
    let setup = Setup::new(&ns, &table, "");
    let (config, socket, state) = (&setup.config, &setup.socket, setup.state());
    let d = Daemon::start(config, socket);
    let out = d.cli(&["ban", "198.51.100.77", "--for", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = d.bans();
    assert!(d.stop().success());
    // The state is lost (a disk replaced, a file removed by hand); the
    // kernel still holds the ban.
    std::fs::remove_dir_all(&state).expect("rm state");
    let mut d = Daemon::start(config, socket);
    d.wait_for_log("adopted", SOON);
    let after = d.bans();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["host"], "198.51.100.77");
    let expires = |b: &serde_json::Value| {
        b["expires"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .expect("expires")
    };
    let drift = expires(&after[0]).duration_since(expires(&before[0])).abs();
    assert!(drift.as_secs() <= 5, "{before:?} vs {after:?}");
    drop(d);
    let _ = ns.nft(&["delete", "table", "inet", &table]);
}

//! The whole daemon as an admin runs it: the real `astban` binary, a fake
//! AMI over real TCP, a real log file, the engine, the firewall (dry-run,
//! and nftables in network namespaces) and the control socket via the CLI.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/fake_ami.rs"]
mod fake_ami;
#[path = "support/netns.rs"]
mod netns;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use daemon::{Daemon, log_attempts};
use fake_ami::{AmiThread, Script};
use serde_json::Value;

const SOON: Duration = Duration::from_secs(20);

/// One AMI `InvalidPassword` event from `host`, as Asterisk 20 sends it.
fn invalid_password(host: &str) -> Vec<u8> {
    static SESSION: AtomicU32 = AtomicU32::new(0);
    let session = SESSION.fetch_add(1, Ordering::Relaxed);
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3f%z");
    format!(
        "Event: InvalidPassword\r\nPrivilege: security,all\r\nEventTV: {now}\r\nSeverity: Error\r\n\
         Service: SIP\r\nEventVersion: 2\r\nAccountID: 100\r\nSessionID: 0x7fcb4c{session:06x}\r\n\
         LocalAddress: IPV4/UDP/127.0.0.1/5060\r\nRemoteAddress: IPV4/UDP/{host}/5060\r\n\
         Challenge: 45249bab\r\nReceivedChallenge: 45249bab\r\nReceivedHash: 6bb25df6b17e01ca6fca682b1b7c0ad2\r\n\r\n"
    )
    .into_bytes()
}

fn attempts(host: &str, n: usize) -> Vec<u8> {
    (0..n).flat_map(|_| invalid_password(host)).collect()
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::File::create(dir.path().join("messages")).expect("log file");
        Setup { dir }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("messages")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/astban.sock")
    }

    /// Writes the config (AMI on `ami_port`, plus `extra` sections) and
    /// returns its path.
    fn config(&self, ami_port: u16, extra: &str) -> PathBuf {
        let path = self.dir.path().join("astban.toml");
        let text = format!(
            r#"
[ami]
host = "127.0.0.1"
port = {ami_port}
username = "{user}"
secret = "{secret}"
auth = "md5"
ping_interval = "1s"
ping_timeout = "2s"
connect_timeout = "2s"
reconnect_min = "100ms"
reconnect_max = "500ms"

[log]
path = "{log}"

[jail]
ignoreip = ["127.0.0.0/8", "198.51.100.9"]

[control]
socket = "{socket}"

[state]
dir = "{state}"
{extra}
"#,
            user = fake_ami::USERNAME,
            secret = fake_ami::SECRET,
            log = self.log().display(),
            socket = self.socket().display(),
            state = self.dir.path().join("state").display(),
        );
        std::fs::write(&path, text).expect("config");
        path
    }
}

fn hosts(bans: &[Value]) -> Vec<String> {
    let mut hosts: Vec<String> = bans
        .iter()
        .map(|b| b["host"].as_str().expect("host").to_owned())
        .collect();
    hosts.sort();
    hosts
}

#[test]
fn auto_mode_dry_run_bans_ignores_unbans_and_survives_restart() {
    let setup = Setup::new();
    // Connection 0: the ignored address fails first, then an attacker.
    // Any later connection: another attacker, to show AMI counts again.
    let mut after_login = vec![[attempts("198.51.100.9", 5), attempts("203.0.113.10", 5)].concat()];
    after_login.extend(std::iter::repeat_n(attempts("203.0.113.40", 5), 30));
    let fake = AmiThread::start(Script {
        after_login,
        ..Script::default()
    });
    let config = setup.config(
        fake.ami().addr().port(),
        "[firewall]\nbackend = \"dry-run\"\n[input]\nmode = \"auto\"\n",
    );

    let mut d = Daemon::start(&config, &setup.socket());
    d.wait_for_log("banned host=203.0.113.10", SOON);
    // The ignored address's five failures came first and banned nothing.
    assert_eq!(hosts(&d.bans()), ["203.0.113.10"]);
    let s = d.status();
    assert_eq!(s["ami"]["state"], "up");
    assert_eq!(s["log"]["counting"], false);

    // While AMI is up, the log's copy of attempts does not count. Log
    // lines carry whole seconds, and an attempt logged in the second AMI
    // came up may predate it (only AMI's own report of it would be
    // dropped), so the lines go in a later second: wait for the clock.
    let up_since: jiff::Timestamp = s["ami"]["since"]
        .as_str()
        .expect("since")
        .parse()
        .expect("time");
    while jiff::Timestamp::now().as_second() <= up_since.as_second() {
        std::thread::sleep(Duration::from_millis(20));
    }
    log_attempts(&setup.log(), "203.0.113.20", 5);
    let s = d.wait_status("5 log reports judged", SOON, |s| {
        s["counted"]["log_dropped"].as_u64() >= Some(5)
    });
    assert_eq!(s["counted"]["log_counted"], 0);
    assert_eq!(hosts(&d.bans()), ["203.0.113.10"]);

    // AMI goes away: the log counts from the moment it went silent.
    fake.ami().hold_new_connections(true);
    fake.ami().drop_connections();
    d.wait_status("AMI down", SOON, |s| s["ami"]["state"] == "down");
    log_attempts(&setup.log(), "203.0.113.30", 5);
    d.wait_for_log("banned host=203.0.113.30", SOON);

    // AMI comes back and counts again; the log stops counting.
    fake.ami().hold_new_connections(false);
    d.wait_for_log("banned host=203.0.113.40", SOON);
    let s = d.wait_status("AMI up", SOON, |s| s["ami"]["state"] == "up");
    assert_eq!(s["log"]["counting"], false);
    assert_eq!(
        s["counted"]["log_counted"], 5,
        "only the lines written while AMI was down counted"
    );
    assert_eq!(
        hosts(&d.bans()),
        ["203.0.113.10", "203.0.113.30", "203.0.113.40"]
    );

    // An ignored address cannot be banned by hand either, unless forced.
    let out = d.cli(&["ban", "198.51.100.9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ignoreip"));

    // Unban works, and unbanning twice says so.
    let out = d.cli(&["unban", "203.0.113.10"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.cli(&["unban", "203.0.113.10"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not banned"));
    let out = d.cli(&["ban", "192.0.2.99", "--for", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let before = d.bans();
    assert_eq!(
        hosts(&before),
        ["192.0.2.99", "203.0.113.30", "203.0.113.40"]
    );
    let status = d.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");

    // A restart keeps every ban with its expiry.
    let d = Daemon::start(&config, &setup.socket());
    let after = d.bans();
    let expiry = |bans: &[Value]| {
        let mut e: Vec<(String, String)> = bans
            .iter()
            .map(|b| (b["host"].to_string(), b["expires"].to_string()))
            .collect();
        e.sort();
        e
    };
    assert_eq!(expiry(&after), expiry(&before));
}

/// Waits until `addr` is (or is no longer) an element of astban's IPv4 set
/// in the protected namespace's kernel.
fn wait_for_set(pair: &netns::NetnsPair, table: &str, addr: &str, present: bool) {
    let deadline = Instant::now() + SOON;
    loop {
        let elements = pair
            .protected
            .set_elements(table, "v4")
            .expect("astban's set exists");
        if elements.iter().any(|e| e.contains(addr)) == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} in the kernel set: expected {present}, got {elements:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn nftables_in_a_namespace_drops_the_banned_attacker_only() {
    if !netns::require_root("nftables_in_a_namespace_drops_the_banned_attacker_only") {
        return;
    }
    let pair = netns::NetnsPair::new().expect("namespaces");
    let attacker = IpAddr::V4(netns::ATTACKER_V4);
    let bystander = IpAddr::V4(netns::BYSTANDER_V4);
    let fake = AmiThread::start(Script {
        after_login: vec![attempts(&attacker.to_string(), 5)],
        ..Script::default()
    });
    let setup = Setup::new();
    let table = format!("astban_e2e_{}", std::process::id());
    let nft: Vec<String> = pair
        .protected
        .nft_command()
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    let config = setup.config(fake.ami().addr().port(), &format!(
        "[firewall]\nbackend = \"nftables\"\ntable = \"{table}\"\nnft = [{}]\n[input]\nmode = \"ami\"\n",
        nft.join(", ")
    ));

    let sink = pair
        .protected
        .udp(SocketAddr::new(IpAddr::V4(netns::PROTECTED_V4), 0))
        .expect("listener in the protected namespace");
    let wait = Duration::from_millis(500);
    assert!(
        pair.udp_reaches(attacker, &sink, SOON).expect("probe"),
        "reachable before the ban"
    );

    let mut d = Daemon::start(&config, &setup.socket());
    d.wait_for_log("banned host=10.77.0.2", SOON);
    assert_eq!(hosts(&d.bans()), ["10.77.0.2"]);
    // The engine hands the ban to the firewall task; wait for the kernel.
    wait_for_set(&pair, &table, "10.77.0.2", true);
    assert!(
        !pair.udp_reaches(attacker, &sink, wait).expect("probe"),
        "banned attacker dropped"
    );
    assert!(
        pair.udp_reaches(bystander, &sink, SOON).expect("probe"),
        "another address passes"
    );

    let out = d.cli(&["unban", "10.77.0.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The engine hands the unban to the firewall task; probe once the
    // kernel has it (a probe sent earlier would be dropped for good).
    wait_for_set(&pair, &table, "10.77.0.2", false);
    assert!(
        pair.udp_reaches(attacker, &sink, SOON).expect("probe"),
        "unbanned attacker passes"
    );

    // A manual ban, then a clean stop: the table and the ban stay in the
    // kernel, enforced without the daemon.
    let out = d.cli(&["ban", "10.77.0.2", "--for", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_set(&pair, &table, "10.77.0.2", true);
    assert!(d.stop().success());
    assert!(
        !pair.udp_reaches(attacker, &sink, wait).expect("probe"),
        "ban outlives the daemon"
    );
    assert!(pair.udp_reaches(bystander, &sink, SOON).expect("probe"));
}

//! Two PBXs sharing bans through a real CrowdSec LAPI (Debian 12's 1.4.6
//! on loopback, see `support/crowdsec.rs`). Each PBX is an `astban run`
//! whose nftables table lives in a network namespace of its own, with an
//! attacker namespace on a veth pair in front of it: "dropped by B's
//! kernel" means a datagram from the attacker never reaches a socket in
//! B's namespace. The daemons themselves run on the host, where the LAPI
//! listens. Needs root.

#[path = "support/crowdsec.rs"]
mod crowdsec;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/netns.rs"]
mod netns;

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use daemon::{Daemon, log_attempts};

const SOON: Duration = Duration::from_secs(30);
/// The pull's poll interval in these tests.
const POLL: Duration = Duration::from_secs(1);
/// A probe this long unanswered counts as dropped.
const DROPPED: Duration = Duration::from_millis(500);

/// One PBX: its namespaces, its daemon's files, its daemon.
struct Pbx {
    pair: netns::NetnsPair,
    dir: tempfile::TempDir,
    table: String,
    sink: UdpSocket,
}

impl Pbx {
    /// A PBX whose attacker side also sends from `extra` addresses.
    fn new(name: &str, extra: &[&str]) -> Pbx {
        let pair = netns::NetnsPair::new().expect("namespaces");
        for addr in extra {
            pair.attacker
                .ip(&["addr", "add", &format!("{addr}/24"), "dev", "veth0"])
                .expect("attacker address");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::File::create(dir.path().join("messages")).expect("log file");
        let sink = pair
            .protected
            .udp(SocketAddr::new(IpAddr::V4(netns::PROTECTED_V4), 0))
            .expect("listener in the PBX's namespace");
        Pbx {
            pair,
            dir,
            table: format!("astban_fleet_{name}_{}", std::process::id()),
            sink,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("messages")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/astban.sock")
    }

    /// Writes the config and starts the daemon, following its log.
    fn start(&self, lapi: &crowdsec::Lapi, machine: &str, ignoreip: &[&str]) -> Daemon {
        let password = format!("{machine}-password-0123456789");
        let key = format!("{machine}-bouncer-key-0123456789");
        lapi.add_machine(machine, &password);
        lapi.add_bouncer(machine, &key);
        let nft: Vec<String> = self
            .pair
            .protected
            .nft_command()
            .iter()
            .map(|s| format!("{s:?}"))
            .collect();
        let mut ignore = vec!["\"127.0.0.1/32\"".to_owned()];
        ignore.extend(ignoreip.iter().map(|a| format!("{a:?}")));
        let config = format!(
            r#"
[input]
mode = "log"

[log]
path = "{log}"

[jail]
maxretry = 5
ignoreip = [{ignore}]

[control]
socket = "{socket}"

[state]
dir = "{state}"

[firewall]
backend = "nftables"
table = "{table}"
nft = [{nft}]

[crowdsec]
url = "{url}"
machine_id = "{machine}"
password = "{password}"
bouncer_key = "{key}"
poll_interval = "{poll}s"
timeout = "2s"
"#,
            log = self.log().display(),
            ignore = ignore.join(", "),
            socket = self.socket().display(),
            state = self.dir.path().join("state").display(),
            table = self.table,
            nft = nft.join(", "),
            url = lapi.url(),
            poll = POLL.as_secs(),
        );
        let path = self.dir.path().join("astban.toml");
        std::fs::write(&path, config).expect("config");
        let mut d = Daemon::start(&path, &self.socket());
        if !d.logged().contains("following ") {
            d.wait_for_log("following ", SOON);
        }
        d
    }

    /// The elements of one of astban's IPv4 sets in this PBX's kernel.
    fn set(&self, set: &str) -> Vec<String> {
        self.pair
            .protected
            .set_elements(&self.table, set)
            .expect("nft list set")
    }

    /// Waits until `addr` is (or is no longer) in `set`; how long it took.
    fn wait_set(&self, set: &str, addr: &str, present: bool) -> Duration {
        let start = Instant::now();
        loop {
            let elements = self.set(set);
            if elements.iter().any(|e| e == addr) == present {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < SOON,
                "{addr} in set {set} of {}: expected {present}, got {elements:?}",
                self.table
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether a datagram from `from` reaches the PBX.
    fn reaches(&self, from: &str, wait: Duration) -> bool {
        let from: IpAddr = from.parse().expect("addr");
        self.pair
            .udp_reaches(from, &self.sink, wait)
            .expect("probe")
    }
}

/// Hosts of `d`'s bans with their `origin`, if pulled.
fn bans(d: &Daemon) -> Vec<(String, Option<String>)> {
    d.bans()
        .iter()
        .map(|b| {
            (
                b["host"].as_str().unwrap_or_default().to_owned(),
                b["origin"]["origin"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Waits until the LAPI lists a decision on `value` of `origin`.
fn wait_decision(lapi: &crowdsec::Lapi, value: &str, origin: &str) -> serde_json::Value {
    let deadline = Instant::now() + SOON;
    loop {
        let decisions = lapi.decisions();
        if let Some(d) = decisions
            .iter()
            .find(|d| d["value"] == value && d["origin"] == origin)
        {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {origin} decision on {value} in the LAPI: {decisions:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A line the harness does not capture: the measurements are the point.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "fleet: {line}");
}

const ATTACKER: &str = "10.77.0.2";
/// In B's `ignoreip` (B's trunk, say), attacking A.
const TRUNK: &str = "10.77.0.3";
/// Banned with `cscli decisions add`.
const CSCLI: &str = "10.77.0.4";

#[test]
fn two_pbxs_share_bans_through_a_real_lapi_and_ignoreip_wins() {
    let test = "two_pbxs_share_bans_through_a_real_lapi_and_ignoreip_wins";
    if !netns::require_root(test) {
        return;
    }
    let Some(root) = crowdsec::require_crowdsec(test) else {
        return;
    };
    let lapi = crowdsec::Lapi::start(&root);
    let a = Pbx::new("a", &[CSCLI]);
    let b = Pbx::new("b", &[CSCLI]);
    let da = a.start(&lapi, &format!("pbx-a-{}", std::process::id()), &[]);
    let db = b.start(&lapi, &format!("pbx-b-{}", std::process::id()), &[TRUNK]);
    for pbx in [&a, &b] {
        assert!(pbx.reaches(ATTACKER, SOON), "reachable before any ban");
    }

    // Five failures on A: banned on A, pushed, pulled by B.
    log_attempts(&a.log(), ATTACKER, 5);
    a.wait_set("v4", ATTACKER, true);
    let banned_on_a = Instant::now();
    b.wait_set("fleet_v4", ATTACKER, true);
    let to_b = banned_on_a.elapsed();
    assert!(
        !b.reaches(ATTACKER, DROPPED),
        "B's kernel drops A's attacker"
    );
    assert!(!a.reaches(ATTACKER, DROPPED), "and A's");
    report(&format!(
        "ban on A to element in B's kernel: {} ms (poll interval {} s)",
        to_b.as_millis(),
        POLL.as_secs()
    ));
    assert!(
        to_b < POLL + Duration::from_secs(2),
        "within one poll: {to_b:?}"
    );
    let decision = wait_decision(&lapi, ATTACKER, "astban");
    assert_eq!(decision["scenario"], "astban/sip-bruteforce");
    assert_eq!(decision["type"], "ban");
    // A's own decision came back to A: not applied twice.
    assert_eq!(bans(&da), [(ATTACKER.to_owned(), None)]);
    assert!(a.set("fleet_v4").is_empty(), "{:?}", a.set("fleet_v4"));
    assert_eq!(
        bans(&db),
        [(ATTACKER.to_owned(), Some("astban".to_owned()))]
    );
    let shown = db.cli(&["bans"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout)
            .contains("CrowdSec LAPI (astban, astban/sip-bruteforce)"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );

    // B's trunk attacks A: banned on A, pushed, never banned on B.
    log_attempts(&a.log(), TRUNK, 5);
    a.wait_set("v4", TRUNK, true);
    wait_decision(&lapi, TRUNK, "astban");
    // Two polls of B after the decision is in the LAPI.
    let status = db.wait_status("two more pulls", SOON, {
        let after = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
        move |s| {
            s["fleet"]["last_pull"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t > after)
        }
    });
    assert_eq!(status["fleet"]["pulled_bans"], 1, "{status:#}");
    assert!(!b.set("fleet_v4").contains(&TRUNK.to_owned()));
    assert!(b.reaches(TRUNK, SOON), "B's trunk still reaches B");
    assert!(!a.reaches(TRUNK, DROPPED), "A bans it");

    // A decision made by hand on the LAPI host: enforced by both ...
    lapi.cscli(&["decisions", "add", "--ip", CSCLI, "--duration", "1h"]);
    a.wait_set("fleet_v4", CSCLI, true);
    b.wait_set("fleet_v4", CSCLI, true);
    assert!(!a.reaches(CSCLI, DROPPED) && !b.reaches(CSCLI, DROPPED));
    // ... lifted by both when deleted there.
    lapi.cscli(&["decisions", "delete", "--ip", CSCLI]);
    a.wait_set("fleet_v4", CSCLI, false);
    b.wait_set("fleet_v4", CSCLI, false);
    assert!(a.reaches(CSCLI, SOON) && b.reaches(CSCLI, SOON));

    // `astban unban` of a pulled ban says where it came from.
    let out = db.cli(&["unban", ATTACKER]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("came from the fleet: CrowdSec LAPI (astban, astban/sip-bruteforce)")
            && text.contains("cscli decisions delete --ip 10.77.0.2"),
        "{text}"
    );
    b.wait_set("fleet_v4", ATTACKER, false);
    assert!(b.reaches(ATTACKER, SOON));

    let status = db.status();
    assert_eq!(status["fleet"]["up"], true, "{status:#}");
    assert!(status["fleet"]["last_pull"].is_string(), "{status:#}");
    assert!(da.stop().success());
    assert!(db.stop().success());
}

#[test]
fn bans_made_while_the_lapi_is_down_reach_it_and_the_other_pbx_when_it_returns() {
    let test = "bans_made_while_the_lapi_is_down_reach_it_and_the_other_pbx_when_it_returns";
    if !netns::require_root(test) {
        return;
    }
    let Some(root) = crowdsec::require_crowdsec(test) else {
        return;
    };
    let attackers = ["10.77.0.5", "10.77.0.6", "10.77.0.7"];
    let mut lapi = crowdsec::Lapi::start(&root);
    let a = Pbx::new("da", &attackers);
    let b = Pbx::new("db", &attackers);
    let da = a.start(&lapi, &format!("pbx-da-{}", std::process::id()), &[]);
    let db = b.start(&lapi, &format!("pbx-db-{}", std::process::id()), &[]);
    db.wait_status("a first pull", SOON, |s| {
        s["fleet"]["last_pull"].is_string()
    });

    lapi.stop();
    for attacker in attackers {
        log_attempts(&a.log(), attacker, 5);
    }
    // Local protection goes on without the LAPI.
    for attacker in attackers {
        a.wait_set("v4", attacker, true);
        assert!(!a.reaches(attacker, DROPPED), "{attacker} dropped by A");
    }
    let status = da.wait_status("the LAPI seen down", SOON, |s| s["fleet"]["up"] == false);
    assert!(status["fleet"]["error"].is_string(), "{status:#}");
    assert!(b.set("fleet_v4").is_empty());

    lapi.run();
    for attacker in attackers {
        wait_decision(&lapi, attacker, "astban");
    }
    for attacker in attackers {
        b.wait_set("fleet_v4", attacker, true);
        assert!(!b.reaches(attacker, DROPPED), "{attacker} dropped by B");
    }
    let status = db.wait_status("the three pulled", SOON, |s| {
        s["fleet"]["pulled_bans"] == 3 && s["fleet"]["up"] == true
    });
    assert!(status["fleet"]["last_pull"].is_string());
    assert!(da.stop().success());
    assert!(db.stop().success());
}

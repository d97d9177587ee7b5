//! The whole daemon as an admin runs it: the real `astban` binary, a fake
//! AMI over real TCP, a real log file, the engine, the firewall (dry-run,
//! and nftables in network namespaces) and the control socket via the CLI.

#[path = "support/captures.rs"]
mod captures;
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

use captures::{
    events_from, fresh_event_times, fresh_log_times, log_lines_with, split_after_event,
    split_log_lines,
};
use daemon::{Daemon, log_attempts};
use fake_ami::{AmiThread, Script, events_of};
use serde_json::Value;

const SOON: Duration = Duration::from_secs(20);

// Asterisk 20.20.1 with PJSIP (see fixtures/pjsip/CAPTURES.md).
const AMI_PJSIP_MAIN: &[u8] = include_bytes!("fixtures/pjsip/ami-pjsip-security-events.txt");
const AMI_PJSIP_AUTH_USERNAME: &[u8] =
    include_bytes!("fixtures/pjsip/ami-pjsip-auth-username-order.txt");
const AMI_SVCRACK_PJSIP: &[u8] = include_bytes!("fixtures/pjsip/ami-svcrack-pjsip.txt");
const LOG_PJSIP_MAIN: &[u8] = include_bytes!("fixtures/pjsip/messages-pjsip.log");
const LOG_PJSIP_AUTH_USERNAME: &[u8] =
    include_bytes!("fixtures/pjsip/messages-pjsip-auth-username-order.log");
const LOG_SVCRACK_PJSIP: &[u8] = include_bytes!("fixtures/pjsip/messages-svcrack-pjsip.log");
const LOG_NEWLINE_INJECTION: &[u8] =
    include_bytes!("fixtures/pjsip/messages-pjsip-newline-injection.log");

/// The attacker of the svcrack captures.
const SVCRACK: &str = "10.203.1.2";

/// A `[jail]` with maxretry 5 (the default) that lets the captures' loopback
/// attackers (127.0.2.x) be banned: only 127.0.0.1 (and ::1) is ignored.
const JAIL_MAXRETRY_5: &str = "maxretry = 5\nignoreip = [\"127.0.0.1/32\", \"::1/128\"]";

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
        self.config_with_jail(
            ami_port,
            r#"ignoreip = ["127.0.0.0/8", "198.51.100.9"]"#,
            extra,
        )
    }

    /// Like [`Setup::config`], with `jail` as the `[jail]` section's keys.
    fn config_with_jail(&self, ami_port: u16, jail: &str, extra: &str) -> PathBuf {
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
{jail}

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

/// `extra` config sections for a dry-run daemon with input `mode`.
fn dry_run(mode: &str) -> String {
    format!("[firewall]\nbackend = \"dry-run\"\n[input]\nmode = \"{mode}\"\n")
}

/// The engine's count of failures it has counted since start.
fn failures_counted(status: &Value) -> u64 {
    status["engine"]["failures_counted"]
        .as_u64()
        .expect("engine.failures_counted")
}

/// Waits until the engine has counted `n` failures, checks it counted no
/// more, and returns the status. The engine handles reports one at a
/// time, in order: once the count is there, so is every verdict before it.
fn wait_counted(d: &Daemon, n: u64) -> Value {
    let s = d.wait_status(&format!("{n} failures counted"), SOON, |s| {
        failures_counted(s) >= n
    });
    assert_eq!(failures_counted(&s), n, "counted more than expected: {s:#}");
    s
}

/// The one ban of `host` in `bans`.
fn ban_of<'a>(bans: &'a [Value], host: &str) -> &'a Value {
    bans.iter()
        .find(|b| b["host"] == host)
        .unwrap_or_else(|| panic!("{host} not banned: {bans:#?}"))
}

/// Waits until the log input has opened the file it follows (with
/// `log.start = "end"`, lines written earlier would never be read).
fn wait_following(d: &mut Daemon) {
    if !d.logged().contains("following ") {
        d.wait_for_log("following ", SOON);
    }
}

/// Appends `bytes` to the file at `path`, in one write.
fn append(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("log file");
    file.write_all(bytes).expect("append");
}

/// svcrack against PJSIP over AMI, replayed as it happens: 4 guesses
/// (one SessionID for all of them) ban nothing, the 5th bans.
#[test]
fn svcrack_over_ami_is_banned_at_its_fifth_guess() {
    let setup = Setup::new();
    let capture = fresh_event_times(&events_of(AMI_SVCRACK_PJSIP));
    let (first_four, rest) = split_after_event(&capture, "ChallengeResponseFailed", 4);
    let (fifth, rest) = split_after_event(&rest, "ChallengeResponseFailed", 1);
    let fake = AmiThread::start(Script {
        after_login: vec![first_four],
        // The capture starts with the login's own SuccessfulAuth.
        announce_login: false,
        ..Script::default()
    });
    let config = setup.config_with_jail(fake.ami().addr().port(), JAIL_MAXRETRY_5, &dry_run("ami"));
    let mut d = Daemon::start(&config, &setup.socket());

    let s = wait_counted(&d, 4);
    assert_eq!(s["ami"]["state"], "up");
    assert_eq!(s["engine"]["active_bans"], 0, "{s:#}");
    assert_eq!(s["engine"]["tracked_hosts"], 1, "{s:#}");
    assert!(d.bans().is_empty(), "banned before the 5th guess");

    fake.ami().push(fifth);
    d.wait_for_log(&format!("banned host={SVCRACK}"), SOON);
    let bans = d.bans();
    assert_eq!(hosts(&bans), [SVCRACK]);
    let ban = ban_of(&bans, SVCRACK);
    assert_eq!(ban["failures"], 5, "banned at the 5th guess: {ban:#}");
    assert_eq!(
        ban["kinds"],
        serde_json::json!(["challenge_response_failed"])
    );
    assert_eq!(ban["services"], serde_json::json!(["pjsip"]));
    assert_eq!(failures_counted(&d.status()), 5);

    // The other 26 guesses find the host banned already; a failure from
    // another host after them shows they were all handled.
    fake.ami()
        .push([rest, invalid_password("203.0.113.77")].concat());
    let s = wait_counted(&d, 6);
    assert_eq!(s["engine"]["bans_total"], 1, "{s:#}");
    assert_eq!(hosts(&d.bans()), [SVCRACK]);
}

/// PJSIP users who mistype: 3 attempts for a nonexistent endpoint (4
/// events, 2 of them failures, each) and 4 with `auth_username`
/// identification (3 events each) stay under maxretry 5; svcrack after
/// them, on the same session, is banned.
#[test]
fn pjsip_users_with_a_few_attempts_are_not_banned_over_ami() {
    let setup = Setup::new();
    // 127.0.2.3's two attempts of the main run, and the first once more
    // as a new request (another Call-ID): 3 attempts, 12 events.
    let nonexistent = events_from(AMI_PJSIP_MAIN, "127.0.2.3");
    let (first_attempt, _) = split_after_event(&nonexistent, "ChallengeResponseFailed", 1);
    let again = String::from_utf8(first_attempt)
        .expect("ASCII capture")
        .replace("a7c3dce5d690@127.0.2.3", "b81e0f6a2c11@127.0.2.3");
    assert!(again.contains("b81e0f6a2c11@127.0.2.3"), "{again}");
    let stream = [
        fresh_event_times(&nonexistent),
        fresh_event_times(again.as_bytes()),
        fresh_event_times(&events_of(AMI_PJSIP_AUTH_USERNAME)),
        fresh_event_times(&events_of(AMI_SVCRACK_PJSIP)),
    ]
    .concat();
    let fake = AmiThread::start(Script {
        after_login: vec![stream],
        ..Script::default()
    });
    let config = setup.config_with_jail(fake.ami().addr().port(), JAIL_MAXRETRY_5, &dry_run("ami"));
    let mut d = Daemon::start(&config, &setup.socket());

    d.wait_for_log(&format!("banned host={SVCRACK}"), SOON);
    // Reports reach the engine in order: 127.0.2.3's and 127.0.2.9's came
    // before the ban.
    let s = d.status();
    assert_eq!(failures_counted(&s), 3 + 4 + 5, "{s:#}");
    assert_eq!(s["engine"]["tracked_hosts"], 2, "{s:#}");
    assert_eq!(hosts(&d.bans()), [SVCRACK]);
    let logged = d.logged();
    for host in ["127.0.2.3", "127.0.2.9"] {
        assert!(!logged.contains(&format!("banned host={host}")), "{logged}");
    }
}

/// `mode = "log"`: the daemon follows a real file. Mistyping PJSIP users
/// (6 lines for 2 attempts, 8 lines for 4) are not banned; svcrack is, at
/// its 5th `Failed to authenticate` line (all with one callid).
#[test]
fn log_mode_bans_svcrack_at_its_fifth_guess_and_not_mistyping_users() {
    let setup = Setup::new();
    // No AMI in mode "log": its port is never used.
    let config = setup.config_with_jail(1, JAIL_MAXRETRY_5, &dry_run("log"));
    let mut d = Daemon::start(&config, &setup.socket());
    wait_following(&mut d);

    let nonexistent = log_lines_with(LOG_PJSIP_MAIN, "'127.0.2.3:");
    assert_eq!(nonexistent.split_inclusive(|&b| b == b'\n').count(), 6);
    let svcrack = fresh_log_times(LOG_SVCRACK_PJSIP);
    let (first_four, rest) = split_log_lines(&svcrack, 4);
    let (fifth, _) = split_log_lines(&rest, 1);
    append(
        &setup.log(),
        &[
            fresh_log_times(&nonexistent),
            fresh_log_times(LOG_PJSIP_AUTH_USERNAME),
            first_four,
        ]
        .concat(),
    );
    let s = wait_counted(&d, 2 + 4 + 4);
    assert_eq!(s["log_read"]["lines"], 6 + 8 + 4, "{s:#}");
    // A nonexistent user's attempt is 3 lines, with auth_username 2.
    assert_eq!(s["log_read"]["failures"], 2 + 4 + 4, "{s:#}");
    assert_eq!(s["log_read"]["folded"], 4 + 4, "{s:#}");
    assert_eq!(s["engine"]["tracked_hosts"], 3, "{s:#}");
    assert_eq!(s["engine"]["active_bans"], 0, "{s:#}");
    assert!(d.bans().is_empty(), "banned before anyone's 5th attempt");

    append(&setup.log(), &fifth);
    d.wait_for_log(&format!("banned host={SVCRACK}"), SOON);
    let bans = d.bans();
    assert_eq!(hosts(&bans), [SVCRACK]);
    assert_eq!(ban_of(&bans, SVCRACK)["failures"], 5);
    assert_eq!(failures_counted(&d.status()), 2 + 4 + 5);
}

/// An attacker's percent-encoded newline in a PJSIP request URI puts a
/// line of its own into `messages`. With maxretry 1 the real sender is
/// banned at once and none of the addresses the forged lines name ever is.
#[test]
fn log_mode_never_bans_the_addresses_of_forged_lines() {
    let setup = Setup::new();
    let config = setup.config_with_jail(
        1,
        "maxretry = 1\nignoreip = [\"127.0.0.1/32\"]",
        &dry_run("log"),
    );
    let mut d = Daemon::start(&config, &setup.socket());
    wait_following(&mut d);

    append(&setup.log(), &fresh_log_times(LOG_NEWLINE_INJECTION));
    // A plain failure after the capture: once it is banned, every line
    // before it was judged.
    log_attempts(&setup.log(), "192.0.2.60", 1);
    d.wait_for_log("banned host=192.0.2.60", SOON);
    let s = d.status();
    // Each attempt: Asterisk's line cut at the newline (it counts for
    // 10.203.1.2), then the attacker's line, read as the rest of it.
    assert_eq!(s["log_read"]["lines"], 6 + 1, "{s:#}");
    assert_eq!(s["log_read"]["cut"], 3, "{s:#}");
    assert_eq!(s["log_read"]["continuation"], 3, "{s:#}");
    assert_eq!(s["log_read"]["failures"], 3 + 1, "{s:#}");
    assert_eq!(hosts(&d.bans()), [SVCRACK, "192.0.2.60"]);
    let logged = d.logged();
    assert!(!logged.contains("host=10.66.66."), "{logged}");
    assert_eq!(s["engine"]["tracked_hosts"], 0, "{s:#}");
}

/// One wrong-password REGISTER for `account` from `host`, shaped like
/// 127.0.2.2's first attempt in the PJSIP main capture (`ChallengeSent`,
/// `ChallengeResponseFailed` naming the endpoint Asterisk matched).
fn pjsip_wrong_password(host: &str, account: &str) -> String {
    let events = events_from(AMI_PJSIP_MAIN, "127.0.2.2");
    let (first, _) = split_after_event(&events, "ChallengeResponseFailed", 1);
    String::from_utf8(first)
        .expect("ASCII capture")
        .replace("127.0.2.2", host)
        .replace("AccountID: 300", &format!("AccountID: {account}"))
}

/// One REGISTER for a name no endpoint has, from `host`, shaped like
/// 127.0.2.3's first attempt (`InvalidAccountID` naming what the attacker
/// wrote, twice, and `<unknown>` in the challenge events).
fn pjsip_no_such_endpoint(host: &str, name: &str) -> String {
    let events = events_from(AMI_PJSIP_MAIN, "127.0.2.3");
    let (first, _) = split_after_event(&events, "ChallengeResponseFailed", 1);
    String::from_utf8(first)
        .expect("ASCII capture")
        .replace("127.0.2.3", host)
        .replace("AccountID: 999", &format!("AccountID: {name}"))
}

/// One successful REGISTER from `host`, shaped like 127.0.0.1's in the
/// PJSIP main capture (`ChallengeSent`, `SuccessfulAuth` with
/// `UsingPassword: 1`).
fn pjsip_registered(host: &str) -> String {
    let events = events_from(AMI_PJSIP_MAIN, "127.0.0.1");
    // The first is the AMI login's own SuccessfulAuth.
    let (_, register) = split_after_event(&events, "SuccessfulAuth", 1);
    String::from_utf8(register).expect("ASCII capture").replace(
        "RemoteAddress: IPV4/UDP/127.0.0.1/",
        &format!("RemoteAddress: IPV4/UDP/{host}/"),
    )
}

fn distributed_host(i: usize) -> String {
    format!("10.77.{}.{}", i / 250, i % 250 + 1)
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 300 hosts x 2 guesses against endpoint 300, each host below maxretry:
/// the 20th failure (jail.account_maxretry) puts the account under attack,
/// and every later guesser is banned at its first failure.
#[test]
fn a_distributed_attack_on_one_account_is_flagged_and_later_guessers_banned_at_once() {
    let setup = Setup::new();
    let stream: String = (0..300)
        .flat_map(|i| {
            let host = distributed_host(i);
            [
                pjsip_wrong_password(&host, "300"),
                pjsip_wrong_password(&host, "300"),
            ]
        })
        .collect();
    let fake = AmiThread::start(Script {
        after_login: vec![fresh_event_times(stream.as_bytes())],
        ..Script::default()
    });
    let config = setup.config_with_jail(fake.ami().addr().port(), JAIL_MAXRETRY_5, &dry_run("ami"));
    let mut d = Daemon::start(&config, &setup.socket());

    d.wait_for_log("account under attack", SOON);
    let s = d.wait_status("290 bans", SOON, |s| {
        s["engine"]["bans_total"].as_u64() >= Some(290)
    });
    let e = &s["engine"];
    assert_eq!(e["bans_total"], 290, "{s:#}");
    assert_eq!(e["bans_account_under_attack"], 290, "{s:#}");
    assert_eq!(e["accounts_under_attack_count"], 1, "{s:#}");
    assert_eq!(e["accounts_under_attack"][0]["account"], "300", "{s:#}");
    assert_eq!(e["accounts_under_attack"][0]["bans"], 290, "{s:#}");
    // The first ten hosts (20 failures) flagged it and are not banned.
    let bans = d.bans();
    let banned = hosts(&bans);
    assert!(!banned.contains(&distributed_host(9)), "{banned:?}");
    let first = ban_of(&bans, &distributed_host(10));
    assert_eq!(first["failures"], 1, "{first:#}");
    assert_eq!(first["account_under_attack"], "300", "{first:#}");

    let status = stdout(&d.cli(&["status"]));
    assert!(status.contains("account 300 UNDER ATTACK"), "{status}");
    let listed = stdout(&d.cli(&["bans"]));
    assert!(
        listed.contains("(banned at once: account 300 under attack)"),
        "{listed}"
    );
}

/// The same 600 failures, each on a name the attacker wrote
/// (`InvalidAccountID`), flag nothing and count no account.
#[test]
fn failures_on_attacker_chosen_names_flag_no_account() {
    let setup = Setup::new();
    let stream: String = (0..300)
        .flat_map(|i| {
            let host = distributed_host(i);
            [
                pjsip_no_such_endpoint(&host, &format!("{}", 2000 + 2 * i)),
                pjsip_no_such_endpoint(&host, &format!("{}", 2001 + 2 * i)),
            ]
        })
        .collect();
    let fake = AmiThread::start(Script {
        after_login: vec![fresh_event_times(stream.as_bytes())],
        ..Script::default()
    });
    let config = setup.config_with_jail(fake.ami().addr().port(), JAIL_MAXRETRY_5, &dry_run("ami"));
    let d = Daemon::start(&config, &setup.socket());
    let s = wait_counted(&d, 600);
    let e = &s["engine"];
    assert_eq!(e["accounts_tracked"], 0, "{s:#}");
    assert_eq!(e["account_attacks_total"], 0, "{s:#}");
    assert_eq!(e["active_bans"], 0, "{s:#}");
    assert!(d.bans().is_empty());
}

/// An office behind one NAT: phones register successfully, one phone
/// with a stale password fails 10 times on its account. Not banned, and
/// reported as failing from a known site; another site that registered
/// but guesses three accounts is banned at maxretry.
#[test]
fn a_known_site_with_one_failing_phone_is_spared_and_one_guessing_accounts_is_not() {
    let setup = Setup::new();
    let office = "198.51.100.20";
    let guesser = "198.51.100.21";
    let mut stream = [pjsip_registered(office), pjsip_registered(guesser)].concat();
    for _ in 0..10 {
        stream.push_str(&pjsip_wrong_password(office, "201"));
    }
    stream.push_str(&pjsip_registered(office));
    for account in ["300", "301", "302", "300", "301"] {
        stream.push_str(&pjsip_wrong_password(guesser, account));
    }
    let fake = AmiThread::start(Script {
        after_login: vec![fresh_event_times(stream.as_bytes())],
        ..Script::default()
    });
    let config = setup.config_with_jail(fake.ami().addr().port(), JAIL_MAXRETRY_5, &dry_run("ami"));
    let mut d = Daemon::start(&config, &setup.socket());

    d.wait_for_log(&format!("banned host={guesser}"), SOON);
    let logged = d.logged();
    assert!(
        logged.contains("account failing from a known site"),
        "{logged}"
    );
    let s = wait_counted(&d, 15);
    let e = &s["engine"];
    assert_eq!(hosts(&d.bans()), [guesser]);
    assert_eq!(ban_of(&d.bans(), guesser)["failures"], 5);
    assert_eq!(e["known_sites"], 2, "{s:#}");
    assert_eq!(e["known_sites_spared"], 1, "{s:#}");
    assert_eq!(e["known_sites_failing"][0]["host"], office, "{s:#}");
    assert_eq!(e["known_sites_failing"][0]["account"], "201", "{s:#}");
    assert_eq!(e["known_sites_failing"][0]["failures"], 10, "{s:#}");

    let status = stdout(&d.cli(&["status"]));
    assert!(
        status.contains(&format!(
            "{office} account 201 failing from a known site: 10 failures"
        )),
        "{status}"
    );
    assert!(status.contains("known sites: 2"), "{status}");
}

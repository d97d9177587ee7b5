//! The Prometheus endpoint of the real daemon: scraped over TCP after real
//! failures and bans, its values checked, its body checked by `promtool
//! check metrics`, and the shipped Grafana dashboard checked against the
//! names it really exports.

#[path = "support/daemon.rs"]
mod daemon;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{BIN, Daemon, log_attempts};

const SOON: Duration = Duration::from_secs(20);

/// A temp dir with a log-input, dry-run config listening on a free port.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("astban.sock")
    }

    fn config(&self, mode: &str, listen: &str) -> PathBuf {
        let path = self.path("astban.toml");
        let text = format!(
            "[input]\nmode = \"{mode}\"\n\n\
             [ami]\nhost = \"127.0.0.1\"\nport = {closed}\nsecret = \"x\"\n\n\
             [log]\npath = \"{log}\"\nstart = \"beginning\"\n\n\
             [control]\nsocket = \"{socket}\"\n\n[state]\ndir = \"{state}\"\n\n\
             [firewall]\nbackend = \"dry-run\"\n\n[metrics]\nlisten = \"{listen}\"\n",
            closed = closed_port(),
            log = self.path("messages").display(),
            socket = self.socket().display(),
            state = self.path("state").display(),
        );
        std::fs::write(&path, text).expect("config");
        std::fs::write(self.path("messages"), "").expect("log");
        path
    }

    fn start(&self, mode: &str) -> (Daemon, SocketAddr) {
        let mut d = Daemon::start(&self.config(mode, "127.0.0.1:0"), &self.socket());
        let addr = endpoint(&mut d);
        (d, addr)
    }
}

/// A local port nothing listens on (bound, then released): AMI stays down.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The address the daemon logged for its endpoint (it was told port 0).
fn endpoint(d: &mut Daemon) -> SocketAddr {
    let logged = d.logged();
    let line = logged
        .lines()
        .find(|l| l.contains("metrics endpoint listening"))
        .unwrap_or_else(|| panic!("no endpoint address logged:\n{logged}"));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr= in the line");
    addr.parse().expect("a socket address")
}

/// One HTTP/1.1 request over a fresh TCP connection: (status line,
/// headers, body).
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(SOON)).expect("read timeout");
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.into(), headers.to_ascii_lowercase(), body.into())
}

/// `GET /metrics` in the classic text format.
fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = get(addr, "/metrics", None);
    assert!(status.contains("200"), "{status}\n{body}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    body
}

/// Samples by `name{labels}` (exactly as written).
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name and value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Scrapes until `done` holds for the samples; fails with the last body.
fn wait_for(addr: SocketAddr, what: &str, done: impl Fn(&BTreeMap<String, f64>) -> bool) -> String {
    let deadline = Instant::now() + SOON;
    loop {
        let body = scrape(addr);
        if done(&samples(&body)) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(f64::NAN)
}

/// promtool from `ASTBAN_PROMTOOL`, the path `.ci/run` unpacks it to, or
/// `PATH`. Missing under CI fails the test; elsewhere it is skipped, said.
fn promtool() -> Option<PathBuf> {
    let unpacked =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/promtool/root/usr/bin/promtool");
    let found = std::env::var_os("ASTBAN_PROMTOOL")
        .map(PathBuf::from)
        .or_else(|| unpacked.exists().then_some(unpacked))
        .or_else(|| {
            Command::new("promtool")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| PathBuf::from("promtool"))
        });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "promtool is missing: .ci/run unpacks it into target/promtool (or set ASTBAN_PROMTOOL)"
        );
        eprintln!(
            "SKIPPED the promtool check: no promtool (run .ci/run once, or set ASTBAN_PROMTOOL)"
        );
    }
    found
}

fn promtool_check(body: &str) {
    let Some(promtool) = promtool() else { return };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\nbody:\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn failures_and_bans_show_in_a_real_scrape_that_promtool_accepts() {
    let s = Setup::new();
    let (mut d, addr) = s.start("log");
    log_attempts(&s.path("messages"), "203.0.113.5", 5);
    d.wait_for_log("banned host=203.0.113.5", SOON);
    // Two more after the ban: they reach the engine and do not count.
    log_attempts(&s.path("messages"), "203.0.113.5", 2);
    let ban = d.cli(&["ban", "198.51.100.7", "--for", "1h"]);
    assert!(
        ban.status.success(),
        "{}",
        String::from_utf8_lossy(&ban.stderr)
    );
    // In the kernel before the unban: queued together, the two would
    // merge into one change.
    wait_for(addr, "both bans applied", |s| {
        value(s, "astban_firewall_changes_applied_total") >= 2.0
    });
    let unban = d.cli(&["unban", "198.51.100.7"]);
    assert!(
        unban.status.success(),
        "{}",
        String::from_utf8_lossy(&unban.stderr)
    );

    let body = wait_for(addr, "the unban applied and the late lines judged", |s| {
        value(s, "astban_firewall_changes_applied_total") >= 3.0
            && value(s, "astban_log_lines_read_total") >= 7.0
            && value(s, "astban_ban_latency_seconds_count") >= 1.0
            && value(
                s,
                r#"astban_failures_not_counted_total{reason="already_banned",input="log"}"#,
            ) == 2.0
    });
    let s = samples(&body);
    let expect = [
        (
            r#"astban_failures_total{kind="invalid_password",service="sip",input="log"}"#,
            5.0,
        ),
        (r#"astban_bans_total{reason="automatic"}"#, 1.0),
        (r#"astban_bans_total{reason="manual"}"#, 1.0),
        (r#"astban_bans_total{reason="restored"}"#, 0.0),
        (r#"astban_unbans_total{reason="manual"}"#, 1.0),
        ("astban_bans_active", 1.0),
        ("astban_firewall_changes_applied_total", 3.0),
        ("astban_firewall_changes_refused_total", 0.0),
        ("astban_firewall_changes_pending", 0.0),
        ("astban_firewall_healthy", 1.0),
        ("astban_ban_latency_seconds_count", 1.0),
        (r#"astban_ban_latency_seconds_bucket{le="+Inf"}"#, 1.0),
        ("astban_log_lines_read_total", 7.0),
        ("astban_log_bytes_behind", 0.0),
        (
            r#"astban_failures_not_counted_total{reason="stale",input="log"}"#,
            0.0,
        ),
        (
            r#"astban_failures_not_counted_total{reason="input_not_counting",input="log"}"#,
            0.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(value(&s, series), want, "{series} in:\n{body}");
    }
    // A detection-to-kernel time, not a duration since start.
    assert!(value(&s, "astban_ban_latency_seconds_sum") < SOON.as_secs_f64());
    // Bounded labels: no host, no account, no AMI for a log-only astban.
    for never in ["203.0.113.5", "198.51.100.7", "100@pbx", "astban_ami_"] {
        assert!(!body.contains(never), "{never} in:\n{body}");
    }
    promtool_check(&body);

    // Prometheus asks for OpenMetrics and gets it.
    let (_, headers, om) = get(
        addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE astban_bans counter"), "{om}");
    let (status, _, _) = get(addr, "/", None);
    assert!(status.contains("404"), "{status}");
    d.stop();
}

#[test]
fn the_grafana_dashboard_is_valid_and_names_only_exported_metrics() {
    let s = Setup::new();
    // Both inputs, so that every metric the dashboard can use is exported
    // (AMI stays down: nothing listens on its port).
    let (d, addr) = s.start("auto");
    // One failure, so that the failures family has a series (AMI is down:
    // the log counts).
    log_attempts(&s.path("messages"), "203.0.113.8", 1);
    let body = wait_for(addr, "a failure counted", |s| {
        s.keys().any(|k| k.starts_with("astban_failures_total{"))
    });
    d.stop();
    promtool_check(&body);
    // Every sample's name, and every declared family's (a labelled family
    // declares its name before its first sample exists).
    let mut exported: BTreeSet<String> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().expect("a name").to_owned())
        .collect();
    for declared in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = declared.split_once(' ').expect("name and type");
        exported.insert(name.to_owned());
        if kind == "histogram" {
            for part in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{part}"));
            }
        }
    }
    assert!(exported.contains("astban_ami_up"), "{body}");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("examples/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        dash["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 16));
    // Importable as is: the data source is asked for at import.
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    let panels = dash["panels"].as_array().expect("panels");
    let names = |panel: &serde_json::Value| panel["title"].as_str().unwrap_or("").to_owned();
    let mut ids = BTreeSet::new();
    let metric = regex::Regex::new(r"\bastban_[a-z_]+").expect("regex");
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = names(panel);
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id reused"
        );
        assert!(panel["type"].as_str().is_some(), "{title}: no type");
        for key in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][key].as_u64().is_some(),
                "{title}: gridPos.{key}"
            );
        }
        assert!(
            panel["gridPos"]["x"].as_u64().unwrap_or(99)
                + panel["gridPos"]["w"].as_u64().unwrap_or(99)
                <= 24,
            "{title}: wider than the grid"
        );
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            assert!(target["refId"].as_str().is_some(), "{title}: refId");
            let names: Vec<&str> = metric.find_iter(expr).map(|m| m.as_str()).collect();
            assert!(!names.is_empty(), "{title}: {expr} names no astban metric");
            for name in names {
                assert!(
                    exported.contains(name),
                    "{title}: {name} is not exported; exported: {exported:?}"
                );
                used.insert(name.to_owned());
            }
        }
    }
    for wanted in [
        "astban_failures_total",
        "astban_bans_active",
        "astban_ban_latency_seconds_bucket",
        "astban_ami_up",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }
}

#[test]
fn a_taken_port_stops_the_start_and_names_metrics_listen() {
    let s = Setup::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let config = s.config("log", &taken.local_addr().expect("addr").to_string());
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn astban");
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("astban kept running with its metrics port taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(!status.success());
    assert!(err.contains("metrics.listen"), "{err}");
}

#[test]
fn check_config_shows_the_endpoint_and_warns_about_a_public_address() {
    let s = Setup::new();
    let check = |listen: &str| {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(s.config("log", listen))
            .output()
            .expect("check-config");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (shown, warned) = check("127.0.0.1:9772");
    assert!(
        shown.contains("[metrics]") && shown.contains("listen = \"127.0.0.1:9772\""),
        "{shown}"
    );
    assert!(!warned.contains("metrics.listen"), "{warned}");
    let (_, warned) = check("0.0.0.0:9772");
    assert!(
        warned.contains("warning") && warned.contains("metrics.listen = 0.0.0.0:9772"),
        "{warned}"
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(s.config("log", "localhost"))
        .output()
        .expect("check-config");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics.listen"));
}

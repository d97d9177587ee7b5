//! `astban test-log` as a process: output, JSON, exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integration/fixtures")
        .join(name)
}

fn astban(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_astban"))
        .args(args)
        .env("TZ", "UTC")
        .env_remove("ASTBAN_CONFIG")
        .output()
        .expect("astban runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses `--json` output: every stdout line is an object with the five
/// fields of a matched line (a line that did not count says `"counted":
/// false` and why); returns attempts per host and the counted objects.
fn json_lines(out: &Output) -> (BTreeMap<String, u64>, Vec<serde_json::Value>) {
    let (hosts, all) = json_records(out);
    let counted = all.into_iter().filter(|o| o["counted"] != false).collect();
    (hosts, counted)
}

/// Every object of `--json` output, checked for its fields, and the
/// attempts per host of the counted ones.
fn json_records(out: &Output) -> (BTreeMap<String, u64>, Vec<serde_json::Value>) {
    let mut hosts = BTreeMap::new();
    let mut objects = Vec::new();
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let obj = v.as_object().expect("an object");
        for key in ["line", "host", "time", "rule", "kind"] {
            assert!(obj.contains_key(key), "{key} missing in {line}");
        }
        if !obj.contains_key("counted") {
            let extra = obj.len() - 5;
            assert!(extra == 0 || (extra == 1 && obj["cut"] == true), "{line}");
            *hosts
                .entry(obj["host"].as_str().expect("host").to_owned())
                .or_default() += 1;
        } else {
            assert!(obj["why"].is_string(), "{line}");
        }
        objects.push(v);
    }
    (hosts, objects)
}

#[test]
fn json_has_one_object_per_attempt_and_the_summary_on_stderr() {
    let out = astban(&[
        "test-log",
        "--json",
        fixture("messages.log").to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (hosts, objects) = json_lines(&out);
    assert_eq!(hosts.get("127.0.0.2"), Some(&4));
    assert_eq!(hosts.get("127.0.0.3"), Some(&1));
    assert_eq!(hosts.get("127.0.0.4"), Some(&3));
    assert_eq!(hosts.get("127.0.0.5"), Some(&1));
    assert_eq!(hosts.get("127.0.1.10"), Some(&5));
    assert_eq!(objects.len(), 161);
    assert_eq!(
        objects[0],
        serde_json::json!({
            "line": 1, "host": "127.0.0.2", "time": "2026-11-24T16:03:18Z",
            "rule": "sip_wrong_password", "kind": "invalid_password"
        })
    );
    // The ACL-rejected REGISTER: counted at its first line (acl.c, line 5).
    let acl: Vec<_> = objects
        .iter()
        .filter(|o| o["host"] == "127.0.0.3")
        .collect();
    assert_eq!(acl[0]["line"], 5);
    assert_eq!(acl[0]["rule"], "sip_acl_rejecting");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("161  attempts counted"), "{stderr}");
    assert!(stderr.contains("6  folded lines"), "{stderr}");
}

#[test]
fn default_output_shows_rules_hosts_and_counts() {
    let out = astban(&["test-log", fixture("security.log").to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in [
        "323 lines",
        "163  attempts counted",
        "159  missed",
        "security_invalid_password",
        "Attempts by host (35)",
        "127.0.0.4",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in\n{stdout}");
    }
    assert!(out.stderr.is_empty());
}

#[test]
fn book_rules_count_lines_like_fail2ban_did() {
    let out = astban(&[
        "test-log",
        "--json",
        "--rules",
        "book",
        fixture("messages.log").to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (hosts, objects) = json_lines(&out);
    // Both "Device does not match ACL" lines count; "tried to authenticate
    // with nonexistent user" is not in the book.
    assert_eq!(hosts.get("127.0.0.3"), Some(&2));
    assert_eq!(hosts.get("127.0.0.4"), Some(&3));
    assert!(
        objects
            .iter()
            .all(|o| o["rule"].as_str().is_some_and(|r| r.starts_with("book_")))
    );
}

#[test]
fn config_rules_and_ignoreregex_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("astban.toml");
    std::fs::write(
        &config,
        r#"
[log]
ignoreregex = ["u1[0-4]@"]

[[log.rule]]
name = "ami_any"
kind = "invalid_password"
module = "manager.c"
failregex = "<HOST> failed to authenticate as 'astban'$"
"#,
    )
    .expect("write config");
    let out = astban(&[
        "test-log",
        "--json",
        "--config",
        config.to_str().expect("utf8"),
        fixture("messages.log").to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (hosts, _) = json_lines(&out);
    assert_eq!(hosts.get("127.0.1.10"), None, "ignored by ignoreregex");
    assert_eq!(hosts.get("127.0.1.15"), Some(&5));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("25  ignored"), "{stderr}");
    assert!(stderr.contains("1 rule(s) from [[log.rule]]"), "{stderr}");
}

#[test]
fn unreadable_input_is_a_clear_error_with_exit_2() {
    for (args, needle) in [
        (
            vec!["test-log", "/nonexistent/messages"],
            "/nonexistent/messages",
        ),
        (vec!["test-log", env!("CARGO_MANIFEST_DIR")], "directory"),
        (
            vec!["test-log", "--rules", "nosuchset", "/dev/null"],
            "not a built-in rule set",
        ),
        (
            vec![
                "test-log",
                "--config",
                "/nonexistent/astban.toml",
                "/dev/null",
            ],
            "does not exist",
        ),
    ] {
        let out = astban(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // An empty file was read: success.
    let out = astban(&["test-log", "/dev/null"]);
    assert_eq!(out.status.code(), Some(0));
}

/// The attempts per host each log of a real Asterisk 20.20.1 must count
/// (integration/fixtures/pjsip/CAPTURES.md).
const PJSIP_LOGS: &[(&str, &[(&str, u64)])] = &[
    (
        "messages-pjsip.log",
        &[
            ("127.0.2.2", 3),
            ("127.0.2.3", 2),
            ("127.0.2.4", 1),
            ("127.0.2.5", 2),
        ],
    ),
    (
        "security-pjsip.log",
        &[
            ("127.0.2.2", 3),
            ("127.0.2.3", 2),
            ("127.0.2.4", 1),
            ("127.0.2.5", 2),
        ],
    ),
    (
        "messages-pjsip-options-tcp.log",
        &[("127.0.2.6", 2), ("127.0.2.8", 2)],
    ),
    (
        "security-pjsip-options-tcp.log",
        &[("127.0.2.6", 2), ("127.0.2.8", 2)],
    ),
    (
        "messages-pjsip-auth-username-order.log",
        &[("127.0.2.9", 4)],
    ),
    (
        "security-pjsip-auth-username-order.log",
        &[("127.0.2.9", 4)],
    ),
    ("messages-pjsip-anonymous-invite.log", &[("127.0.2.7", 2)]),
    ("security-pjsip-anonymous-invite.log", &[]),
    ("messages-svcrack-pjsip.log", &[("10.203.1.2", 31)]),
    ("security-svcrack-pjsip.log", &[("10.203.1.2", 31)]),
    ("messages-svcrack-chansip.log", &[("10.203.1.2", 31)]),
    ("security-svcrack-chansip.log", &[("10.203.1.2", 31)]),
    ("messages-chansip-recheck.log", &[("127.0.1.77", 5)]),
    ("security-chansip-recheck.log", &[("127.0.1.77", 5)]),
    ("messages-pjsip-newline-injection.log", &[("10.203.1.2", 3)]),
    // One extension scan has no security event.
    ("messages-pjsip-ipv6.log", &[("2001:db8:203::2", 4)]),
    ("security-pjsip-ipv6.log", &[("2001:db8:203::2", 3)]),
];

#[test]
fn every_pjsip_capture_counts_its_attempts() {
    for (name, expected) in PJSIP_LOGS {
        let path = fixture(&format!("pjsip/{name}"));
        let out = astban(&["test-log", "--json", path.to_str().expect("utf8")]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let (hosts, records) = json_records(&out);
        let expected: BTreeMap<String, u64> =
            expected.iter().map(|&(h, n)| (h.to_owned(), n)).collect();
        assert_eq!(hosts, expected, "{name}");
        // A line that did not count names the line that did, and that
        // line counted the same host.
        for r in records.iter().filter(|r| r["why"] == "same attempt") {
            let at = r["counted_line"].as_u64().expect("counted_line");
            let first = records
                .iter()
                .find(|c| c["line"] == at)
                .unwrap_or_else(|| panic!("{name}: no record for line {at}"));
            assert!(first.get("counted").is_none(), "{name}: {r}");
            assert_eq!(first["host"], r["host"], "{name}: {r}");
            assert!(at < r["line"].as_u64().expect("line"), "{name}: {r}");
        }
    }
}

#[test]
fn a_mistyped_username_is_one_attempt_and_each_line_says_why() {
    let path = fixture("pjsip/messages-pjsip.log");
    let out = astban(&["test-log", "--json", path.to_str().expect("utf8")]);
    let (_, records) = json_records(&out);
    // 127.0.2.3's first attempt: lines 4-6 (request, retry, guess).
    let lines: Vec<_> = records
        .iter()
        .filter(|r| r["host"] == "127.0.2.3")
        .map(|r| (r["line"].clone(), r["rule"].clone(), r["counted"].clone()))
        .take(3)
        .collect();
    assert_eq!(
        lines,
        [
            (
                4.into(),
                "pjsip_no_endpoint".into(),
                serde_json::Value::Null
            ),
            (5.into(), "pjsip_no_endpoint".into(), false.into()),
            (6.into(), "pjsip_failed_auth".into(), false.into()),
        ]
    );
    assert_eq!(records[4]["counted_line"], 4);
    assert_eq!(records[5]["why"], "same attempt");
}

#[test]
fn a_newline_in_an_extension_counts_for_the_sender_and_nobody_else() {
    let path = fixture("pjsip/messages-pjsip-newline-injection.log");
    let out = astban(&["test-log", "--json", path.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (hosts, records) = json_records(&out);
    assert_eq!(hosts, [("10.203.1.2".to_owned(), 3)].into());
    // Each cut line counts (with "cut"), the forged line after it is its
    // continuation.
    for pair in records.chunks(2) {
        assert_eq!(pair[0]["cut"], true, "{}", pair[0]);
        assert_eq!(pair[1]["why"], "continuation", "{}", pair[1]);
        assert_eq!(pair[1]["cut_line"], pair[0]["line"]);
    }
    assert_eq!(records.len(), 6);
    let summary = text(&out.stderr);
    assert!(summary.contains("3  cut short"), "{summary}");
    assert!(summary.contains("3  continuation"), "{summary}");
}

#[test]
fn forged_lines_after_cut_ones_never_count() {
    // The issue's shape: five IAX2 lines whose MD5 field holds a newline
    // and a complete, well-formed line naming another address.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages");
    let mut log = String::new();
    for i in 0..5 {
        log.push_str(&format!(
            "[2026-12-01 10:00:0{i}] NOTICE[1638] chan_iax2.c: Host 203.0.113.40 failed MD5 authentication for 'x' (0123 != 4567)\n\
             [2026-12-01 10:00:0{i}] NOTICE[1638] chan_iax2.c: Host 10.66.66.40 failed MD5 authentication for 'y' (e7d1 != 9a2b)\n"
        ));
    }
    // A genuine line written after the longest IAX2 field still counts.
    log.push_str(&format!("{}\n", "n".repeat(255)));
    log.push_str("[2026-12-01 10:00:09] NOTICE[1639] manager.c: 198.51.100.9 failed to authenticate as 'admin'\n");
    std::fs::write(&path, log).expect("write");
    let out = astban(&["test-log", "--json", path.to_str().expect("utf8")]);
    let (hosts, _) = json_records(&out);
    assert_eq!(hosts.get("10.66.66.40"), None, "{hosts:?}");
    // The cut lines still name their sender: the address comes first.
    // (Lines within 255 bytes of a cut one may be the sender's field, so
    // some of the later pairs are taken for its text.)
    assert!(
        hosts.get("203.0.113.40").is_some_and(|&n| n >= 1),
        "{hosts:?}"
    );
    assert!(hosts.contains_key("198.51.100.9"), "{hosts:?}");
    let summary = text(&out.stderr);
    assert!(!summary.contains(" 0  cut short"), "{summary}");
}

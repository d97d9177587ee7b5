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
/// fields of a matched line and `counted` (a line that did not count says
/// why); returns attempts per host and the counted objects.
fn json_lines(out: &Output) -> (BTreeMap<String, u64>, Vec<serde_json::Value>) {
    let (hosts, all) = json_records(out);
    let counted = all.into_iter().filter(|o| o["counted"] == true).collect();
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
        for key in ["line", "host", "time", "rule", "kind", "counted"] {
            assert!(obj.contains_key(key), "{key} missing in {line}");
        }
        if obj["counted"] == true {
            let extra = obj.len() - 6;
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
            "rule": "sip_wrong_password", "kind": "invalid_password", "counted": true
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

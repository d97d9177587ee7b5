//! `astban run --demo` end to end, the real binary: the demo's AMI
//! replay counts while its session is up, the log takes over while it is
//! down, AMI comes back, and both inputs' attacks are banned; all of it
//! visible in `astban status`, and Ctrl-C stops it cleanly. No Asterisk,
//! no root.

#[path = "support/daemon.rs"]
mod daemon;

use std::time::Duration;

use daemon::Daemon;
use serde_json::Value;

/// Generous: the whole replay takes about ten seconds on an idle machine.
const SOON: Duration = Duration::from_secs(60);

fn ami(s: &Value) -> (&str, bool) {
    (
        s["ami"]["state"].as_str().unwrap_or(""),
        s["ami"]["counting"].as_bool().unwrap_or(false),
    )
}

fn counted(s: &Value, which: &str) -> u64 {
    s["counted"][which].as_u64().unwrap_or(0)
}

#[test]
fn the_demo_shows_ami_counting_the_log_taking_over_and_ami_coming_back() {
    // The demo's directory is under the temporary directory: a private
    // one keeps parallel runs apart.
    let tmp = tempfile::tempdir().expect("tempdir");
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = tmp.path().join(format!("astban-demo-{uid}"));
    let socket = dir.join("astban.sock");
    let tmpdir = tmp.path().to_str().expect("UTF-8 temp dir");
    let mut d = Daemon::start_args(&["run", "--demo"], &socket, &[("TMPDIR", tmpdir)]);

    let up = d.wait_status("AMI up, counting its replay", SOON, |s| {
        ami(s) == ("up", true) && s["log"]["counting"] == false && counted(s, "ami_counted") > 0
    });
    assert_eq!(up["input_mode"], "auto", "{up:#}");

    let down = d.wait_status("AMI down, the log counting", SOON, |s| {
        ami(s).0 == "down" && s["log"]["counting"] == true && counted(s, "log_counted") > 0
    });
    // What humans read: the `ami` line of `astban status` says it too.
    let text = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    let ami_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("ami "))
        .unwrap_or_default()
        .to_owned();
    // The outage lasts seconds (the flood is replayed and read first),
    // far longer than these two questions.
    assert!(
        ami_line.contains(" down ") && ami_line.contains("the server closed the connection"),
        "status text: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("log ") && l.ends_with(", counting")),
        "status text: {text}"
    );

    let before = counted(&down, "ami_counted");
    let again = d.wait_status("AMI up again, counting", SOON, |s| {
        ami(s) == ("up", true) && counted(s, "ami_counted") > before
    });
    assert!(
        again["ami"]["since"] != up["ami"]["since"],
        "a new session: {again:#}"
    );

    // Bans from both inputs: svcrack on PJSIP (AMI, before the drop), the
    // REGISTER flood (the log, while AMI was down), svcrack on chan_sip
    // (AMI, after it came back).
    d.wait_status("every attacker banned", SOON, |s| {
        s["engine"]["active_bans"].as_u64() == Some(32)
    });
    let bans: Vec<String> = d
        .bans()
        .iter()
        .filter_map(|b| b["host"].as_str().map(str::to_owned))
        .collect();
    for host in [
        "203.0.113.102",
        "203.0.113.101",
        "198.51.100.10",
        "198.51.100.39",
    ] {
        assert!(bans.iter().any(|b| b == host), "{host} not in {bans:?}");
    }
    d.wait_for_log("demo: replay finished", SOON);
    let said = d.logged();
    assert!(said.contains("demo: status: ami down"), "{said}");
    assert!(said.contains("dry-run"), "{said}");

    let status = d.stop_with(libc::SIGINT);
    assert!(status.success(), "exit: {status}");
}

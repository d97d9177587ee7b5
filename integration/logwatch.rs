//! The log input on real files: the capture fixtures, rotation, restarts.
//!
//! Nothing here sleeps to synchronise: tests wait for reports on the
//! channel, with a deadline.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use astban::config::{LogConfig, StartAt};
use astban::failure::{Report, Source};
use astban::logwatch::clock::Clock;
use astban::logwatch::filter::RuleSet;
use astban::logwatch::testlog;
use astban::logwatch::{self, CURSOR_FILE};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integration/fixtures")
        .join(name)
}

fn utc() -> Clock {
    Clock::new(TimeZone::UTC, Timestamp::now())
}

/// Attempts per host in a file, and the summary, as test-log finds them.
fn scan(path: &Path, rules: &RuleSet) -> (BTreeMap<IpAddr, u64>, testlog::Summary) {
    let summary =
        testlog::scan_file(path, Arc::new(rules.clone()), utc(), 8192, |_| Ok(())).expect("scan");
    (summary.hosts.clone().into_iter().collect(), summary)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The attack hosts of the captures: 127.0.1.10-39 sent 5 wrong-password
/// REGISTERs each.
fn flood_hosts() -> impl Iterator<Item = (IpAddr, u64)> {
    (10..=39).map(|i| (ip(&format!("127.0.1.{i}")), 5))
}

#[test]
fn messages_log_counts_attempts_not_lines() {
    let rules = RuleSet::load("asterisk").expect("rules");
    let (hosts, summary) = scan(&fixture("messages.log"), &rules);
    let mut expected: BTreeMap<IpAddr, u64> = flood_hosts().collect();
    // 2 REGISTERs with a wrong password for peer 100 and 2 for the
    // nonexistent 999 (chan_sip with alwaysauthreject says "Wrong
    // password" for both): 4 lines, 4 attempts.
    expected.insert(ip("127.0.0.2"), 4);
    // One REGISTER for peer 200, refused by its ACL. The capture shows the
    // acl.c / chan_sip pair of lines twice: the same source port (47307),
    // second and thread, and AMI reported two FailedACL events with one
    // SessionID - Asterisk processed the one request (and its
    // retransmission) twice. Four lines, one attempt.
    expected.insert(ip("127.0.0.3"), 1);
    // Two logins with a wrong secret (threads 3059, 3060), one as a
    // nonexistent user (thread 3102: "tried to authenticate with
    // nonexistent user" + "failed to authenticate as"): 4 lines, 3 attempts.
    expected.insert(ip("127.0.0.4"), 3);
    // One login refused by ACL: acl.c, "failed to pass IP ACL",
    // "failed to authenticate" on thread 3144: 3 lines, 1 attempt.
    expected.insert(ip("127.0.0.5"), 1);
    // astban's own test logins with a wrong secret (ignoreip's business,
    // not the rules').
    expected.insert(ip("127.0.0.1"), 2);
    assert_eq!(hosts, expected);
    // 3 folded lines of 127.0.0.3, 1 of 127.0.0.4, 2 of 127.0.0.5.
    let folded: u64 = summary.rules.iter().map(|r| r.folded).sum();
    assert_eq!(folded, 6);
    assert_eq!(summary.attempts() + folded, summary.lines);
}

#[test]
fn security_log_counts_failure_events_once_per_attempt() {
    let rules = RuleSet::load("asterisk").expect("rules");
    let (hosts, summary) = scan(&fixture("security.log"), &rules);
    let mut expected: BTreeMap<IpAddr, u64> = flood_hosts().collect();
    expected.insert(ip("127.0.0.2"), 4);
    // Two FailedACL events of one session for one REGISTER.
    expected.insert(ip("127.0.0.3"), 1);
    // InvalidPassword x2, InvalidAccountID.
    expected.insert(ip("127.0.0.4"), 3);
    expected.insert(ip("127.0.0.5"), 1);
    // astban's own: 2 wrong secrets, 2 unknown actions (RequestBadFormat).
    expected.insert(ip("127.0.0.1"), 4);
    assert_eq!(hosts, expected);
    // ChallengeSent and SuccessfulAuth are normal traffic.
    assert_eq!(summary.missed, 155 + 4);
}

// ---------------------------------------------------------------- following

/// A running log input over a temporary directory.
struct Follow {
    dir: tempfile::TempDir,
    path: PathBuf,
    reports: mpsc::Receiver<Report>,
    rules: watch::Sender<Arc<RuleSet>>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), logwatch::LogError>>,
}

impl Follow {
    fn start(start: StartAt) -> Follow {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("messages");
        Follow::start_in(dir, path, start)
    }

    fn start_in(dir: tempfile::TempDir, path: PathBuf, start: StartAt) -> Follow {
        let config = LogConfig {
            path: Some(path.clone()),
            start,
            max_line_length: 512,
            poll_interval: Duration::from_millis(200),
            ..LogConfig::default()
        };
        let rules = Arc::new(RuleSet::from_config(&config).expect("rules"));
        let (rules_tx, rules_rx) = watch::channel(rules);
        let (tx, reports) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        // The daemon creates the state dir at start; the input takes it
        // as given.
        let state = dir.path().join("state");
        astban::persist::create_private_dir(&state).expect("state dir");
        let (stats, _) = tokio::sync::watch::channel(logwatch::LogStats::default());
        let task = tokio::spawn(logwatch::run(
            logwatch::LogSettings::from(&config),
            rules_rx,
            state,
            tx,
            stats,
            shutdown.clone(),
        ));
        Follow {
            dir,
            path,
            reports,
            rules: rules_tx,
            shutdown,
            task,
        }
    }

    /// Stops the input and returns what a restart needs.
    async fn stop(self) -> (tempfile::TempDir, PathBuf) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("stops promptly");
        result.expect("joins").expect("runs cleanly");
        assert!(self.dir.path().join("state").join(CURSOR_FILE).exists());
        (self.dir, self.path)
    }

    /// The hosts of the next `n` reports, in order.
    async fn next(&mut self, n: usize) -> Vec<String> {
        let mut hosts = Vec::new();
        for _ in 0..n {
            let report = tokio::time::timeout(DEADLINE, self.reports.recv())
                .await
                .unwrap_or_else(|_| panic!("no report within {DEADLINE:?}; got {hosts:?}"))
                .expect("channel open");
            assert_eq!(report.source(), Source::Log);
            hosts.push(report.host().to_string());
        }
        hosts
    }

    fn other(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A failure line of host 10.0.0.`n`.
fn line(n: u32) -> String {
    format!(
        "[2026-11-24 16:03:18] NOTICE[2766] chan_sip.c: Registration from '<sip:{n}@x>' failed for '10.0.0.{n}:5060' - Wrong password\n"
    )
}

fn hosts(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("10.0.0.{n}")).collect()
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open");
    f.write_all(text.as_bytes()).expect("write");
}

fn lines(range: std::ops::RangeInclusive<u32>) -> String {
    range.map(line).collect()
}

#[tokio::test]
async fn waits_for_a_missing_file() {
    // (That a file appearing later is read from its start whatever
    // log.start says is tested on the follower itself, which can be
    // stepped; here the task may or may not have looked before the file
    // appears.)
    let mut f = Follow::start(StartAt::Beginning);
    append(&f.path, &lines(1..=2));
    assert_eq!(f.next(2).await, hosts(1..=2));
    append(&f.path, &line(3));
    assert_eq!(f.next(1).await, hosts(3..=3));
    f.stop().await;
}

#[tokio::test]
async fn rename_and_create_rotation_loses_and_repeats_nothing() {
    let mut f = Follow::start(StartAt::Beginning);
    append(&f.path, &lines(1..=3));
    assert_eq!(f.next(3).await, hosts(1..=3));
    append(&f.path, &line(4));
    fs::rename(&f.path, f.other("messages.1")).expect("rename");
    // A writer that still has the old file open.
    append(&f.other("messages.1"), &line(5));
    append(&f.path, &lines(6..=7));
    assert_eq!(f.next(4).await, hosts(4..=7));
    append(&f.path, &line(8));
    assert_eq!(f.next(1).await, hosts(8..=8));
    f.stop().await;
}

#[tokio::test]
async fn copytruncate_rotation_reads_the_new_lines_once() {
    let mut f = Follow::start(StartAt::Beginning);
    append(&f.path, &lines(1..=3));
    assert_eq!(f.next(3).await, hosts(1..=3));
    fs::copy(&f.path, f.other("messages.1")).expect("copy");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f.path)
        .expect("truncate");
    append(&f.path, &line(4));
    assert_eq!(f.next(1).await, hosts(4..=4));
    append(&f.path, &lines(5..=6));
    assert_eq!(f.next(2).await, hosts(5..=6));
    f.stop().await;
}

#[tokio::test]
async fn restart_resumes_where_it_stopped() {
    let mut f = Follow::start(StartAt::Beginning);
    append(&f.path, &lines(1..=3));
    assert_eq!(f.next(3).await, hosts(1..=3));
    let (dir, path) = f.stop().await;
    // Written while astban was stopped.
    append(&path, &lines(4..=5));
    let mut f = Follow::start_in(dir, path, StartAt::End);
    assert_eq!(f.next(2).await, hosts(4..=5));
    append(&f.path, &line(6));
    assert_eq!(f.next(1).await, hosts(6..=6));
    f.stop().await;
}

#[tokio::test]
async fn rotation_while_stopped_finishes_the_old_file() {
    let mut f = Follow::start(StartAt::Beginning);
    append(&f.path, &lines(1..=2));
    assert_eq!(f.next(2).await, hosts(1..=2));
    let (dir, path) = f.stop().await;
    append(&path, &line(3));
    fs::rename(&path, dir.path().join("messages.1")).expect("rename");
    append(&path, &line(4));
    let mut f = Follow::start_in(dir, path, StartAt::End);
    assert_eq!(f.next(2).await, hosts(3..=4));
    f.stop().await;
}

#[tokio::test]
async fn a_partial_line_waits_for_its_end() {
    let mut f = Follow::start(StartAt::Beginning);
    let two = line(2);
    let (head, tail) = two.split_at(80);
    // Line 1 and the start of line 2 in one write: once line 1 is
    // reported, the partial line 2 has been seen too.
    append(&f.path, &format!("{}{head}", line(1)));
    assert_eq!(f.next(1).await, hosts(1..=1));
    append(&f.path, tail);
    append(&f.path, &line(3));
    assert_eq!(f.next(2).await, hosts(2..=3));
    f.stop().await;
}

#[tokio::test]
async fn overlong_lines_are_skipped() {
    let mut f = Follow::start(StartAt::Beginning);
    let long = format!(
        "[2026-11-24 16:03:18] NOTICE[1] chan_sip.c: {}\n",
        "x".repeat(100_000)
    );
    append(&f.path, &format!("{long}{}{long}{}", line(1), line(2)));
    assert_eq!(f.next(2).await, hosts(1..=2));
    f.stop().await;
}

#[tokio::test]
async fn reloaded_rules_apply_to_later_lines() {
    let mut f = Follow::start(StartAt::Beginning);
    append(&f.path, &line(1));
    assert_eq!(f.next(1).await, hosts(1..=1));
    let custom = LogConfig {
        extra_rules: vec![astban::logwatch::filter::RuleDef::plain(
            "scanner",
            astban::failure::FailureKind::Suspicious,
            "Friendly Scanner from <HOST>$",
        )],
        ..LogConfig::default()
    };
    f.rules
        .send(Arc::new(RuleSet::from_config(&custom).expect("rules")))
        .expect("send");
    append(
        &f.path,
        "[2026-11-24 16:03:19] WARNING[1] Ext. 5: Friendly Scanner from 10.0.0.9\n",
    );
    assert_eq!(f.next(1).await, ["10.0.0.9"]);
    f.stop().await;
}

//! The AMI client against a fake AMI over real TCP that replays the
//! captures in random-sized chunks.

#[path = "support/captures.rs"]
mod captures;
#[path = "support/fake_ami.rs"]
mod fake_ami;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use astban::ami::client::{self, Health};
use astban::config::{AmiAuth, AmiConfig, Secret};
use astban::failure::{Report, Service};
use fake_ami::{CAPTURED_KEY, FakeAmi, SECRET, Script, USERNAME, WAIT, events_of};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const SECURITY: &[u8] = include_bytes!("fixtures/ami-security-events.txt");
const FLOOD: &[u8] = include_bytes!("fixtures/ami-register-flood.txt");

// Asterisk 20.20.1 with PJSIP (see fixtures/pjsip/CAPTURES.md).
const PJSIP_MAIN: &[u8] = include_bytes!("fixtures/pjsip/ami-pjsip-security-events.txt");
const PJSIP_OPTIONS_TCP: &[u8] = include_bytes!("fixtures/pjsip/ami-pjsip-options-tcp.txt");
const PJSIP_AUTH_USERNAME: &[u8] =
    include_bytes!("fixtures/pjsip/ami-pjsip-auth-username-order.txt");
const PJSIP_ANONYMOUS: &[u8] = include_bytes!("fixtures/pjsip/ami-pjsip-anonymous-invite.txt");
const PJSIP_IPV6: &[u8] = include_bytes!("fixtures/pjsip/ami-pjsip-ipv6.txt");
const SVCRACK_PJSIP: &[u8] = include_bytes!("fixtures/pjsip/ami-svcrack-pjsip.txt");
const SVCRACK_CHANSIP: &[u8] = include_bytes!("fixtures/pjsip/ami-svcrack-chansip.txt");
const CHANSIP_RECHECK: &[u8] = include_bytes!("fixtures/pjsip/ami-chansip-recheck.txt");

/// The host of the marker event appended to each replay: once its report
/// arrives, every report before it has too.
const SENTINEL_HOST: &str = "192.0.2.99";

/// A security event from [`SENTINEL_HOST`], distinct per `n`.
fn sentinel(n: u32) -> Vec<u8> {
    format!(
        "Event: InvalidPassword\r\nPrivilege: security,all\r\nEventTV: 2026-11-24T16:05:00.000+0000\r\n\
         Severity: Error\r\nService: SIP\r\nEventVersion: 2\r\nAccountID: sentinel\r\nSessionID: sentinel-{n}\r\n\
         LocalAddress: IPV4/UDP/127.0.0.1/5060\r\nRemoteAddress: IPV4/UDP/{SENTINEL_HOST}/5060\r\n\r\n"
    )
    .into_bytes()
}

/// A capture's events followed by sentinel `n`.
fn replay(capture: &[u8], n: u32) -> Vec<u8> {
    let mut bytes = events_of(capture);
    bytes.extend(sentinel(n));
    bytes
}

/// What the client logs on this thread while a capture is active.
///
/// One global subscriber (installed once) writes each event to the
/// capture of the thread that emitted it; `#[tokio::test]` runs the client
/// on the test's own thread. Per-thread subscribers would not do: tracing
/// caches each call site's interest across threads.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

/// Ends the capture of its thread when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl Logs {
    fn capture() -> (Logs, Capturing) {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            // Fails only if another subscriber is global already.
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(|| ThreadCapture)
                .try_init();
        });
        let logs = Logs::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(logs.clone()));
        (logs, Capturing)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

/// The global subscriber's writer: appends to the current thread's capture.
struct ThreadCapture;

impl Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(logs) = &*c.borrow() {
                logs.0.lock().expect("log lock").extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config(fake: &FakeAmi, auth: AmiAuth) -> AmiConfig {
    AmiConfig {
        host: "127.0.0.1".into(),
        port: fake.addr().port(),
        username: USERNAME.into(),
        secret: Secret::new(SECRET),
        auth,
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(200),
        ..AmiConfig::default()
    }
}

/// A running `client::run`, stopped when dropped.
struct Client {
    reports: mpsc::Receiver<Report>,
    health: watch::Receiver<Health>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Client {
    fn spawn(config: AmiConfig) -> Client {
        let (report_tx, reports) = mpsc::channel(1024);
        let (health_tx, health) = watch::channel(Health::Connecting);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(client::run(config, report_tx, health_tx, shutdown.clone()));
        Client {
            reports,
            health,
            shutdown,
            task: Some(task),
        }
    }

    /// Waits until health satisfies `pred`, and returns it.
    async fn health(&mut self, what: &str, pred: impl FnMut(&Health) -> bool) -> Health {
        let waited = timeout(WAIT, self.health.wait_for(pred))
            .await
            .map(|seen| seen.expect("client alive").clone());
        waited.unwrap_or_else(|_| {
            panic!(
                "health never became {what}; last: {:?}",
                *self.health.borrow()
            )
        })
    }

    async fn up(&mut self) -> jiff::Timestamp {
        match self.health("Up", |h| matches!(h, Health::Up { .. })).await {
            Health::Up { since, .. } => since,
            other => unreachable!("{other:?}"),
        }
    }

    /// Waits for a Down whose reason contains `needle`; returns it whole.
    async fn down(&mut self, needle: &str) -> (jiff::Timestamp, String) {
        let pred = |h: &Health| matches!(h, Health::Down { reason, .. } if reason.contains(needle));
        match self.health(&format!("Down ({needle})"), pred).await {
            Health::Down { since, reason, .. } => (since, reason),
            other => unreachable!("{other:?}"),
        }
    }

    /// Every report up to and including sentinel `n`.
    async fn reports_through_sentinel(&mut self, n: u32) -> Vec<Report> {
        let mut got = Vec::new();
        loop {
            let report = timeout(WAIT, self.reports.recv())
                .await
                .unwrap_or_else(|_| panic!("sentinel {n} not reported; got {} reports", got.len()))
                .expect("client alive");
            let done = matches!(&report, Report::Failure(f)
                if f.session.as_ref().is_some_and(|s| s.as_str() == format!("sentinel-{n}")));
            got.push(report);
            if done {
                return got;
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Failures per host, the sentinel left out.
fn failures_per_host(reports: &[Report]) -> BTreeMap<String, usize> {
    let mut per_host = BTreeMap::new();
    for report in reports {
        if let Report::Failure(f) = report {
            let host = f.host.to_string();
            if host != SENTINEL_HOST {
                *per_host.entry(host).or_default() += 1;
            }
        }
    }
    per_host
}

fn expected(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|&(h, n)| (h.to_owned(), n)).collect()
}

#[tokio::test]
async fn plain_login_delivers_the_captured_failures() {
    let fake = FakeAmi::start(Script {
        after_login: vec![replay(SECURITY, 1)],
        // The captures start with the login's own SuccessfulAuth.
        announce_login: false,
        ..Script::default()
    })
    .await;
    let mut client = Client::spawn(config(&fake, AmiAuth::Plain));

    let login = fake.action(0, "Login").await;
    assert_eq!(login.get("Username"), Some(USERNAME));
    assert_eq!(login.get("Secret"), Some(SECRET));
    assert_eq!(login.get("Events"), Some("security"));
    assert_eq!(login.get("AuthType"), None);
    client.up().await;

    let reports = client.reports_through_sentinel(1).await;
    assert_eq!(
        failures_per_host(&reports),
        expected(&[
            ("127.0.0.2", 4),
            ("127.0.0.3", 1),
            ("127.0.0.4", 3),
            ("127.0.0.5", 1)
        ])
    );
    let successes = reports
        .iter()
        .filter(|r| matches!(r, Report::Success(_)))
        .count();
    assert_eq!(successes, 2);
}

#[tokio::test]
async fn md5_login_answers_the_captured_challenge() {
    let fake = FakeAmi::start(Script {
        after_login: vec![replay(FLOOD, 1)],
        // The captures start with the login's own SuccessfulAuth.
        announce_login: false,
        ..Script::default()
    })
    .await;
    let mut client = Client::spawn(config(&fake, AmiAuth::Md5));

    let challenge = fake.action(0, "Challenge").await;
    assert_eq!(challenge.get("AuthType"), Some("MD5"));
    let login = fake.action(0, "Login").await;
    assert_eq!(login.get("AuthType"), Some("MD5"));
    assert_eq!(
        login.get("Key"),
        Some(CAPTURED_KEY),
        "md5hex(challenge + secret) of the capture"
    );
    assert_eq!(login.get("Events"), Some("security"));
    let on_the_wire: Vec<_> = fake.sent(0).into_iter().flat_map(|s| s.fields).collect();
    assert!(
        on_the_wire.iter().all(|(_, v)| !v.contains(SECRET)),
        "{on_the_wire:?}"
    );
    client.up().await;

    let per_host = failures_per_host(&client.reports_through_sentinel(1).await);
    let flood: Vec<(String, usize)> = (10..40)
        .map(|octet| (format!("127.0.1.{octet}"), 5))
        .collect();
    assert_eq!(per_host, flood.into_iter().collect());
}

#[tokio::test]
async fn a_dropped_connection_is_followed_by_a_reconnect() {
    let fake = FakeAmi::start(Script {
        after_login: vec![replay(SECURITY, 1), replay(FLOOD, 2)],
        // The captures start with the login's own SuccessfulAuth.
        announce_login: false,
        ..Script::default()
    })
    .await;
    let mut client = Client::spawn(config(&fake, AmiAuth::Md5));
    let first_up = client.up().await;
    let before = client.reports_through_sentinel(1).await;
    assert_eq!(failures_per_host(&before).values().sum::<usize>(), 9);

    // Hold the next connection before its banner, so Down stays visible.
    fake.hold_new_connections(true);
    fake.drop_connections();
    let (since, reason) = client.down("closed the connection").await;
    assert!(
        since >= first_up,
        "Down since the last frame ({since}), not before the login ({first_up})"
    );
    assert!(!reason.contains(SECRET));

    fake.hold_new_connections(false);
    let second_up = client.up().await;
    assert!(second_up > first_up);
    // Counted for the metrics' reconnects.
    assert!(matches!(
        *client.health.borrow(),
        Health::Up { logins: 2, .. }
    ));
    let after = client.reports_through_sentinel(2).await;
    assert_eq!(failures_per_host(&after).len(), 30);
    assert!(failures_per_host(&after).values().all(|&n| n == 5));
    assert!(fake.connections() >= 2);
}

#[tokio::test]
async fn a_refused_login_names_manager_conf_and_is_retried() {
    let (logs, _guard) = Logs::capture();
    let fake = FakeAmi::start(Script {
        refuse_logins: true,
        ..Script::default()
    })
    .await;
    let mut client = Client::spawn(config(&fake, AmiAuth::Plain));

    let (_, reason) = client.down("refused").await;
    for needle in [
        "manager.conf",
        "[astban]",
        "secret",
        "read = security",
        "permit/deny",
        "Authentication failed",
    ] {
        assert!(reason.contains(needle), "{needle:?} missing from {reason}");
    }
    assert!(!reason.contains(SECRET), "{reason}");
    // Retried with backoff, on a new connection.
    fake.action(1, "Login").await;
    let logs = logs.text();
    assert!(logs.contains("manager.conf"), "{logs}");
    assert!(!logs.contains(SECRET), "{logs}");
}

/// Asterisk reports every AMI login, astban's own included, as a
/// SuccessfulAuth security event; without `read = security` it never comes,
/// and AMI is blind: the session is treated as down (so the log counts).
#[tokio::test]
async fn a_user_without_read_security_is_reported_down() {
    let fake = FakeAmi::start(Script {
        announce_login: false,
        ..Script::default()
    })
    .await;
    let mut client = Client::spawn(AmiConfig {
        ping_interval: Duration::from_millis(50),
        ..config(&fake, AmiAuth::Md5)
    });
    client.up().await;
    let (_, reason) = client.down("read = security").await;
    assert!(reason.contains("manager.conf"), "{reason}");
    // It keeps trying, on a new connection.
    fake.action(1, "Login").await;

    // With the announcement, the first Pong keeps the session up.
    let fake = FakeAmi::start(Script::default()).await;
    let client = Client::spawn(AmiConfig {
        ping_interval: Duration::from_millis(50),
        ..config(&fake, AmiAuth::Md5)
    });
    fake.nth_action(0, "Ping", 1).await;
    assert!(matches!(*client.health.borrow(), Health::Up { .. }));
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn a_server_that_stops_answering_pings_is_detected() {
    let fake = FakeAmi::start(Script::default()).await;
    let mut client = Client::spawn(AmiConfig {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(1500),
        ..config(&fake, AmiAuth::Md5)
    });
    let up = client.up().await;
    // A third Ping on the first connection: each Pong was matched in time.
    fake.nth_action(0, "Ping", 2).await;
    assert_eq!(fake.connections(), 1);
    assert!(matches!(*client.health.borrow(), Health::Up { .. }));
    fake.answer_pings(false);

    let (since, reason) = client.down("Pong").await;
    assert!(reason.contains("ami.ping_timeout"), "{reason}");
    assert!(
        since >= up,
        "Down since the last frame ({since}), not before the login ({up})"
    );
}

#[tokio::test]
async fn an_oversized_message_drops_the_session() {
    let mut huge = b"Event: InvalidPassword\r\nAccountID: ".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 4096));
    huge.extend_from_slice(b"\r\n\r\n");
    let fake = FakeAmi::start(Script {
        after_login: vec![huge],
        ..Script::default()
    })
    .await;
    let mut client = Client::spawn(AmiConfig {
        max_message_size: 1024,
        ..config(&fake, AmiAuth::Md5)
    });
    let (_, reason) = client.down("ami.max_message_size").await;
    assert!(reason.contains("1024"), "{reason}");
    // And it comes back.
    fake.action(1, "Login").await;
}

#[tokio::test]
async fn shutdown_stops_the_client_promptly() {
    let fake = FakeAmi::start(Script::default()).await;
    let mut client = Client::spawn(config(&fake, AmiAuth::Md5));
    client.up().await;
    client.shutdown.cancel();
    let task = client.task.take().expect("running");
    timeout(WAIT, task)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
}

#[tokio::test]
async fn a_refused_connection_is_reported_down() {
    // A port that was just free: nothing listens there any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut client = Client::spawn(AmiConfig {
        host: "127.0.0.1".into(),
        port,
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(200),
        ..AmiConfig::default()
    });
    let (_, reason) = client.down("cannot connect").await;
    assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
}

/// Replays `capture` (its events, then a sentinel) to `client::run` over
/// TCP in random chunks, and returns every report up to the sentinel.
async fn replay_through_client(capture: &[u8]) -> Vec<Report> {
    let fake = FakeAmi::start(Script {
        after_login: vec![replay(capture, 1)],
        // The captures start with the login's own SuccessfulAuth.
        announce_login: false,
        ..Script::default()
    })
    .await;
    let mut client = Client::spawn(config(&fake, AmiAuth::Md5));
    client.up().await;
    client.reports_through_sentinel(1).await
}

/// The failures of `reports` (sentinel left out) all name `service`.
fn assert_service(reports: &[Report], service: Service) {
    for report in reports {
        if let Report::Failure(f) = report
            && f.host.to_string() != SENTINEL_HOST
        {
            assert_eq!(f.service, service, "{f:?}");
        }
    }
}

/// Successes as (host, service), in order.
fn successes(reports: &[Report]) -> Vec<(String, Service)> {
    reports
        .iter()
        .filter_map(|r| match r {
            Report::Success(s) => Some((s.host.to_string(), s.service)),
            Report::Failure(_) => None,
        })
        .collect()
}

/// The login's own SuccessfulAuth, which every capture starts with.
fn ami_login() -> (String, Service) {
    ("127.0.0.1".to_owned(), Service::Ami)
}

/// The main run: wrong passwords (2 events each), a nonexistent endpoint
/// and an ACL refusal (4 events each), a right password, INVITEs nobody
/// answers: one failure per attempt, and the right password a success.
#[tokio::test]
async fn pjsip_main_run_counts_one_failure_per_attempt() {
    let reports = replay_through_client(PJSIP_MAIN).await;
    assert_eq!(
        failures_per_host(&reports),
        expected(&[
            ("127.0.2.2", 3),
            ("127.0.2.3", 2),
            ("127.0.2.4", 1),
            ("127.0.2.5", 2)
        ])
    );
    assert_service(&reports, Service::Pjsip);
    assert_eq!(
        successes(&reports),
        [ami_login(), ("127.0.0.1".to_owned(), Service::Pjsip)]
    );
}

/// OPTIONS from unknown users (an existing endpoint's OPTIONS only gets a
/// challenge), then two wrong passwords over TCP.
#[tokio::test]
async fn pjsip_options_scan_and_tcp_count_one_failure_per_attempt() {
    let reports = replay_through_client(PJSIP_OPTIONS_TCP).await;
    assert_eq!(
        failures_per_host(&reports),
        expected(&[("127.0.2.6", 2), ("127.0.2.8", 2)])
    );
    assert_service(&reports, Service::Pjsip);
    assert_eq!(successes(&reports), [ami_login()]);
}

/// `auth_username` identification: Asterisk holds back InvalidAccountID
/// for the first attempts; still one failure per attempt.
#[tokio::test]
async fn pjsip_auth_username_order_counts_one_failure_per_attempt() {
    let reports = replay_through_client(PJSIP_AUTH_USERNAME).await;
    assert_eq!(failures_per_host(&reports), expected(&[("127.0.2.9", 4)]));
    assert_service(&reports, Service::Pjsip);
    assert_eq!(successes(&reports), [ami_login()]);
}

/// INVITEs to a missing extension with an anonymous endpoint raise no
/// security event: nothing to count.
#[tokio::test]
async fn pjsip_anonymous_invite_counts_nothing() {
    let reports = replay_through_client(PJSIP_ANONYMOUS).await;
    assert_eq!(failures_per_host(&reports), expected(&[]));
    assert_eq!(successes(&reports), [ami_login()]);
}

/// svcrack keeps one Call-ID (SessionID) for all 31 guesses: each counts.
#[tokio::test]
async fn svcrack_against_pjsip_counts_every_guess() {
    let reports = replay_through_client(SVCRACK_PJSIP).await;
    assert_eq!(failures_per_host(&reports), expected(&[("10.203.1.2", 31)]));
    assert_service(&reports, Service::Pjsip);
    assert_eq!(successes(&reports), [ami_login()]);
}

#[tokio::test]
async fn svcrack_against_chan_sip_counts_every_guess() {
    let reports = replay_through_client(SVCRACK_CHANSIP).await;
    assert_eq!(failures_per_host(&reports), expected(&[("10.203.1.2", 31)]));
    assert_service(&reports, Service::Sip);
    assert_eq!(successes(&reports), [ami_login()]);
}

/// chan_sip in the same Asterisk 20: ChallengeSent + InvalidPassword per
/// wrong password.
#[tokio::test]
async fn chan_sip_recheck_counts_one_failure_per_attempt() {
    let reports = replay_through_client(CHANSIP_RECHECK).await;
    assert_eq!(failures_per_host(&reports), expected(&[("127.0.1.77", 5)]));
    assert_service(&reports, Service::Sip);
    assert_eq!(successes(&reports), [ami_login()]);
}

/// `RemoteAddress: IPV6/UDP/2001:db8:203::2/46593`, no brackets.
#[tokio::test]
async fn pjsip_over_ipv6_counts_one_failure_per_attempt() {
    let reports = replay_through_client(PJSIP_IPV6).await;
    assert_eq!(
        failures_per_host(&reports),
        expected(&[("2001:db8:203::2", 3)])
    );
    assert_service(&reports, Service::Pjsip);
    assert_eq!(successes(&reports), [ami_login()]);
}

/// Events that come later in the session count like the first ones: the
/// guesses of one SessionID split across two bursts still count each.
#[tokio::test]
async fn events_pushed_later_in_the_session_are_counted() {
    let (first, rest) =
        captures::split_after_event(&events_of(SVCRACK_PJSIP), "ChallengeResponseFailed", 9);
    let fake = FakeAmi::start(Script {
        after_login: vec![[first, sentinel(1)].concat()],
        announce_login: false,
        ..Script::default()
    })
    .await;
    let mut client = Client::spawn(config(&fake, AmiAuth::Md5));
    client.up().await;
    let before = failures_per_host(&client.reports_through_sentinel(1).await);
    assert_eq!(before, expected(&[("10.203.1.2", 9)]));

    fake.push([rest, sentinel(2)].concat());
    let after = failures_per_host(&client.reports_through_sentinel(2).await);
    assert_eq!(after, expected(&[("10.203.1.2", 31 - 9)]));
    assert_eq!(fake.connections(), 1);
}

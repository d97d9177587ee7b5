//! Mail against a real SMTP server on loopback: what is sent on start, on
//! bans and under a flood, and that a dead MTA never wedges the daemon.

#[path = "support/smtp.rs"]
mod smtp;

use std::time::Duration;

use astban::config::MailConfig;
use astban::notify::{self, BanNotice, Notice};
use smtp::SmtpSink;

const WAIT: Duration = Duration::from_secs(20);

fn config(port: u16) -> MailConfig {
    MailConfig {
        enabled: true,
        destemail: "admin@pbx.example".into(),
        sender: "astban@pbx.example".into(),
        smtp_host: "127.0.0.1".into(),
        smtp_port: port,
        digest_interval: Duration::from_secs(2),
        digest_max_bans: 10,
        retries: 2,
        ..MailConfig::default()
    }
}

fn ban(i: u32) -> BanNotice {
    BanNotice {
        host: format!("203.0.113.{i}"),
        failures: 5,
        accounts: vec!["100".into(), "admin".into()],
        kinds: vec!["invalid_password".into()],
        duration: Duration::from_secs(3 * 86400),
        expires: "2026-11-28T12:00:00Z".parse().expect("timestamp"),
        offense: 1,
        manual: false,
    }
}

#[tokio::test]
async fn start_ban_flood_digest_and_stop_are_mailed() {
    let mut sink = SmtpSink::start();
    let (mailer, task) = notify::spawn(&config(sink.port), "pbx1".into()).expect("mailer");

    assert!(mailer.notify(Notice::Started("input mode: auto".into())));
    let started = sink.next(WAIT).await.expect("start mail");
    assert_eq!(started.to, ["admin@pbx.example"]);
    assert_eq!(started.subject(), "[astban] started on pbx1");
    assert!(started.data.contains("input mode: auto"));

    // The first ban after a quiet period goes out at once, with details.
    mailer.notify(Notice::Banned(ban(1)));
    let first = sink.next(WAIT).await.expect("ban mail");
    assert!(
        first
            .subject()
            .starts_with("[astban] 203.0.113.1 banned for 3days"),
        "{}",
        first.subject()
    );
    assert!(first.data.contains("100, admin"));

    // A flood of 200 bans right after becomes one digest, not 200 mails.
    for i in 2..=201 {
        assert!(mailer.notify(Notice::Banned(ban(i))));
    }
    let digest = sink.next(WAIT).await.expect("digest");
    assert_eq!(digest.subject(), "[astban] 200 hosts banned on pbx1");
    assert!(digest.data.contains("203.0.113.2\r\n") || digest.data.contains("203.0.113.2\n"));
    assert!(
        digest.data.contains("and 190 more"),
        "digest_max_bans bounds the listing"
    );

    mailer.notify(Notice::Stopped { active_bans: 201 });
    let stopped = sink.next(WAIT).await.expect("stop mail");
    assert_eq!(stopped.subject(), "[astban] stopped on pbx1");
    assert!(stopped.data.contains("201 bans stay enforced"));
    let counts = mailer.counts();
    drop(mailer);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("mailer ends after Stopped")
        .expect("task");
    // Counted for the metrics: start, ban, digest, stop.
    assert_eq!(counts.get(), (4, 0));
    assert!(
        sink.next(Duration::from_millis(300)).await.is_none(),
        "nothing else was sent"
    );
}

#[tokio::test]
async fn a_dead_mta_is_retried_a_bounded_number_of_times_then_given_up() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (mailer, task) = notify::spawn(&config(port), "pbx1".into()).expect("mailer");
    // Queuing never waits for the MTA.
    for i in 1..=50 {
        assert!(mailer.notify(Notice::Banned(ban(i))));
    }
    mailer.notify(Notice::Stopped { active_bans: 50 });
    let counts = mailer.counts();
    drop(mailer);
    // Two mails (the first ban, then the digest with the rest) and the stop
    // mail, each tried twice with a 1 s pause: the task ends on its own.
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the mailer gives up instead of hanging")
        .expect("task");
    assert_eq!(counts.get(), (0, 3), "each given up on is counted");
}

#[tokio::test]
async fn the_sendmail_transport_hands_the_mail_to_the_binary() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("received.eml");
    let args = dir.path().join("args");
    // A stand-in for /usr/sbin/sendmail that keeps what it is given.
    let script = dir.path().join("sendmail");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\ncat >> '{}'\n",
            args.display(),
            out.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = MailConfig {
        transport: astban::config::MailTransport::Sendmail,
        sendmail: script,
        ..config(0)
    };
    let (mailer, task) = notify::spawn(&config, "pbx1".into()).expect("mailer");
    mailer.notify(Notice::Banned(ban(7)));
    mailer.notify(Notice::Stopped { active_bans: 1 });
    drop(mailer);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("mailer ends")
        .expect("task");
    // Both mails went through the binary, in order; the arguments name the
    // sender and the recipient.
    let mail = std::fs::read_to_string(&out).expect("sendmail got mail");
    let ban = mail
        .find("Subject: [astban] 203.0.113.7 banned")
        .expect("ban mail");
    let stop = mail
        .find("Subject: [astban] stopped on pbx1")
        .expect("stop mail");
    assert!(ban < stop, "{mail}");
    let args = std::fs::read_to_string(&args).expect("args");
    assert!(
        args.contains("astban@pbx.example") && args.contains("admin@pbx.example"),
        "{args}"
    );
}

//! The daemon as a service: config checking, clear errors for what an
//! admin gets wrong, SIGHUP reload, a missing log file, a missing `nft`,
//! a refused AMI login. The real `astban` binary throughout.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/dnsmasq.rs"]
mod dnsmasq;
#[path = "support/fake_ami.rs"]
mod fake_ami;
#[path = "support/smtp.rs"]
mod smtp;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use daemon::{BIN, Daemon, log_attempts};
use fake_ami::{AmiThread, Script};

const SOON: Duration = Duration::from_secs(20);

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

    /// Writes a config for the log input with a dry-run firewall (unless
    /// `extra` says otherwise) and returns its path.
    fn config(&self, extra: &str) -> PathBuf {
        let path = self.path("astban.toml");
        let text = format!(
            "[input]\nmode = \"log\"\n\n[log]\npath = \"{log}\"\nstart = \"beginning\"\n\n\
             [control]\nsocket = \"{socket}\"\n\n[state]\ndir = \"{state}\"\n{extra}",
            log = self.path("messages").display(),
            socket = self.socket().display(),
            state = self.path("state").display(),
        );
        std::fs::write(&path, text).expect("config");
        path
    }
}

const DRY_RUN: &str = "\n[firewall]\nbackend = \"dry-run\"\n";

fn astban(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run astban")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn banned(d: &Daemon) -> Vec<String> {
    d.bans()
        .iter()
        .map(|b| b["host"].as_str().expect("host").to_owned())
        .collect()
}

fn hangup(d: &Daemon) {
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe {
        libc::kill(d.pid() as libc::pid_t, libc::SIGHUP);
    }
}

#[test]
fn check_config_prints_masked_settings_and_names_what_is_wrong() {
    let s = Setup::new();
    let good = s.config("\n[ami]\nsecret = \"topsecret-value\"\n");
    let out = astban(&["check-config", "--config", good.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("config OK"), "{shown}");
    assert!(shown.contains("secret = \"********\""), "{shown}");
    assert!(!shown.contains("topsecret"), "the secret leaked: {shown}");
    assert!(
        shown.contains("maxretry = 5"),
        "defaults are shown: {shown}"
    );

    for (bad, names) in [
        ("[jail]\nmaxretries = 3\n", "maxretries"),
        ("[jail]\nbantime = \"forever\"\n", "forever"),
        ("[jail]\nmaxretry = 0\n", "jail.maxretry"),
        ("[firewall]\nbackend = \"iptables\"\n", "iptables"),
        ("[jail\n", "bad.toml"),
    ] {
        let path = s.path("bad.toml");
        std::fs::write(&path, bad).expect("write");
        let out = astban(&["check-config", "--config", path.to_str().expect("utf-8")]);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(names), "{bad:?}: {err}");
    }

    let out = astban(&["check-config", "--config", "/nonexistent/astban.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"));
}

#[test]
fn check_config_warns_about_what_would_not_work() {
    let s = Setup::new();
    let dir = s.path("logdir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(s.path("messages"), "").expect("log");
    let check = |text: String| {
        let path = s.path("check.toml");
        std::fs::write(&path, text).expect("write");
        let out = astban(&["check-config", "--config", path.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", self::text(&out.stderr));
        self::text(&out.stderr)
    };
    let log_only = |path: &Path| {
        format!(
            "[input]\nmode = \"log\"\n[log]\npath = \"{}\"\n",
            path.display()
        )
    };
    let err = check(log_only(&dir));
    assert!(
        err.contains("warning") && err.contains("is a directory"),
        "{err}"
    );
    // Not readable even for root: a path through a regular file.
    let err = check(log_only(Path::new("/etc/passwd/messages")));
    assert!(
        err.contains("warning") && err.contains("cannot be read"),
        "{err}"
    );
    let with_ami = |secret: &str| {
        format!(
            "[ami]\nsecret = \"{secret}\"\n[log]\npath = \"{}\"\n",
            s.path("messages").display()
        )
    };
    let err = check(with_ami(""));
    assert!(
        err.contains("warning") && err.contains("ami.secret is empty"),
        "{err}"
    );
    // A good setup draws none.
    let err = check(with_ami("x"));
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn the_cli_says_clearly_when_no_daemon_runs() {
    let s = Setup::new();
    let out = daemon::cli(&s.socket(), &["status"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("not running") && err.contains("astban run"),
        "{err}"
    );
}

#[test]
fn a_missing_log_file_is_waited_for_then_followed() {
    let s = Setup::new();
    let config = s.config(DRY_RUN);
    let d = Daemon::start(&config, &s.socket());
    let st = d.wait_status("the missing file noticed", SOON, |st| {
        st["log"]["state"] == "waiting for the file"
    });
    assert_eq!(st["log_read"]["file_missing"], true);

    log_attempts(&s.path("messages"), "203.0.113.5", 5);
    d.wait_status("the new file followed", SOON, |st| {
        st["log"]["state"] == "following"
    });
    let mut d = d;
    d.wait_for_log("banned host=203.0.113.5", SOON);
}

#[test]
fn sighup_reloads_rules_and_refuses_a_broken_config() {
    let s = Setup::new();
    let config = s.config(DRY_RUN);
    log_attempts(&s.path("messages"), "203.0.113.1", 5);
    let mut d = Daemon::start(&config, &s.socket());
    d.wait_for_log("banned host=203.0.113.1", SOON);

    // Reload with an ignoreregex for one host's lines, and an ignoreip
    // that covers the host already banned.
    let reloaded = format!(
        "{}\n[jail]\nignoreip = [\"127.0.0.0/8\", \"203.0.113.1\"]\n",
        std::fs::read_to_string(&config).expect("config").replace(
            "start = \"beginning\"",
            "start = \"beginning\"\nignoreregex = ['192\\.0\\.2\\.77']"
        )
    );
    std::fs::write(&config, reloaded).expect("config");
    hangup(&d);
    d.wait_for_log("log rules reloaded", SOON);
    d.wait_for_log("unbanned host=203.0.113.1", SOON);
    d.wait_for_log("jail settings reloaded", SOON);
    let st = d.wait_status("the reload reported", SOON, |st| !st["reload"].is_null());
    assert_eq!(
        st["reload"]["applied"],
        serde_json::json!(["log rules", "jail"])
    );
    assert_eq!(st["reload"]["restart_needed"], serde_json::json!([]));
    log_attempts(&s.path("messages"), "192.0.2.77", 5);
    log_attempts(&s.path("messages"), "203.0.113.2", 5);
    d.wait_for_log("banned host=203.0.113.2", SOON);
    assert_eq!(
        banned(&d),
        ["203.0.113.2"],
        "ignoreip lifted 203.0.113.1 and ignoreregex kept 192.0.2.77 out"
    );

    // A moved log file waits for a restart: status keeps showing the file
    // actually read, and says what needs the restart.
    let old_log = s.path("messages").display().to_string();
    let moved = std::fs::read_to_string(&config)
        .expect("config")
        .replace(&old_log, &s.path("elsewhere").display().to_string());
    std::fs::write(&config, moved).expect("config");
    hangup(&d);
    let st = d.wait_status("the restart-needed reload", SOON, |st| {
        st["reload"]["restart_needed"] == serde_json::json!(["log (other than its rules)"])
    });
    assert_eq!(st["log"]["detail"], old_log.as_str());
    let human = text(&d.cli(&["status"]).stdout);
    assert!(
        human.contains("RESTART NEEDED for log (other than its rules)"),
        "{human}"
    );

    // A broken config is refused and the daemon keeps running on the old.
    std::fs::write(&config, "[jail]\nmaxretry = \"many\"\n").expect("config");
    hangup(&d);
    d.wait_for_log("reload refused", SOON);
    let st = d.wait_status("the refusal reported", SOON, |st| {
        st["reload"]["refused"].is_string()
    });
    assert_eq!(st["engine"]["active_bans"], 1);
    assert!(
        st["reload"]["refused"]
            .as_str()
            .is_some_and(|r| r.contains("maxretry")),
        "{st}"
    );
}

#[test]
fn a_missing_nft_is_reported_and_nothing_is_lost() {
    let s = Setup::new();
    let config = s.config("\n[firewall]\nbackend = \"nftables\"\nnft = [\"/nonexistent/nft\"]\nretry_interval = \"1s\"\n");
    log_attempts(&s.path("messages"), "203.0.113.9", 5);
    let mut d = Daemon::start(&config, &s.socket());
    d.wait_for_log("banned host=203.0.113.9", SOON);
    let st = d.wait_status("the firewall failure", SOON, |st| {
        st["engine"]["firewall"]["healthy"] == false
    });
    let error = st["engine"]["firewall"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("/nonexistent/nft"), "{error}");
    // The engine keeps the ban and still takes commands.
    assert_eq!(banned(&d), ["203.0.113.9"]);
    let out = d.cli(&["ban", "192.0.2.10"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        d.wait_status("two bans", SOON, |st| st["engine"]["active_bans"] == 2)["engine"]["firewall"]
            ["pending"]
            .as_u64() >= Some(1)
    );
    let human = text(&d.cli(&["status"]).stdout);
    assert!(human.contains("firewall: FAILING"), "{human}");
}

#[test]
fn a_refused_ami_login_is_reported_without_the_secret() {
    let fake = AmiThread::start(Script {
        refuse_logins: true,
        ..Script::default()
    });
    let s = Setup::new();
    let config = s.config(&format!(
        "{DRY_RUN}\n[ami]\nport = {}\nsecret = \"do-not-print-me\"\nauth = \"plain\"\nreconnect_min = \"100ms\"\nreconnect_max = \"200ms\"\n",
        fake.ami().addr().port()
    ));
    let text_config = std::fs::read_to_string(&config)
        .expect("config")
        .replace("mode = \"log\"", "mode = \"ami\"");
    std::fs::write(&config, text_config).expect("config");
    let mut d = Daemon::start(&config, &s.socket());
    d.wait_for_log("refused", SOON);
    let st = d.wait_status("AMI down", SOON, |st| st["ami"]["state"] == "down");
    let reason = st["ami"]["detail"].as_str().unwrap_or_default();
    assert!(
        reason.contains("manager.conf") && reason.contains("read = security"),
        "{reason}"
    );
    assert!(!reason.contains("do-not-print-me"));
    // It keeps retrying.
    let deadline = Instant::now() + SOON;
    while fake.ami().connections() < 3 {
        assert!(
            Instant::now() < deadline,
            "astban stopped retrying the login"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !d.logged().contains("do-not-print-me"),
        "the secret was logged"
    );
    assert!(d.stop().success());
}

#[test]
fn systemd_is_told_when_the_daemon_is_ready_and_stopping() {
    let s = Setup::new();
    let notify_path = s.path("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(SOON)).expect("timeout");
    let config = s.config(DRY_RUN);
    let d = Daemon::start_with_env(
        &config,
        &s.socket(),
        &[("NOTIFY_SOCKET", notify_path.to_str().expect("utf-8"))],
    );
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from astban");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means ready: the control socket answers.
    assert_eq!(d.status()["input_mode"], "log");
    assert!(d.stop().success());
    let n = notify.recv(&mut buf).expect("STOPPING=1 from astban");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn with_mail_enabled_start_bans_and_a_clean_stop_are_mailed() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut sink = smtp::SmtpSink::start();
    let s = Setup::new();
    let config = s.config(&format!(
        "{DRY_RUN}\n[mail]\nenabled = true\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\n\
         destemail = \"admin@pbx.example\"\nsender = \"astban@pbx.example\"\n",
        sink.port
    ));
    let mut d = Daemon::start(&config, &s.socket());
    let mut next = || runtime.block_on(sink.next(SOON)).expect("a mail");
    assert!(next().subject().starts_with("[astban] started on "));
    log_attempts(&s.path("messages"), "203.0.113.77", 5);
    d.wait_for_log("banned host=203.0.113.77", SOON);
    let ban = next();
    assert!(
        ban.subject()
            .starts_with("[astban] 203.0.113.77 banned for 3days"),
        "{}",
        ban.data
    );
    // SIGTERM: the daemon stops (it once hung here, waiting for the mail
    // forwarder) and says goodbye by mail.
    assert!(d.stop().success());
    let stopped = next();
    assert!(stopped.subject().starts_with("[astban] stopped on "));
    assert!(
        stopped.data.contains("1 bans stay enforced"),
        "{}",
        stopped.data
    );
}

#[test]
fn a_closed_stderr_never_stops_protection() {
    use std::io::BufRead as _;
    let s = Setup::new();
    std::fs::write(s.path("messages"), "").expect("log");
    let config = s.config(DRY_RUN);
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn astban");
    // Read until it runs, then close the pipe, as `astban run 2>&1 | head`
    // or a restarting journald does.
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("astban running") {
        line.clear();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "astban exited before running");
    }
    drop(stderr);
    // Everything it does now logs to the closed pipe.
    log_attempts(&s.path("messages"), "203.0.113.9", 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = daemon::cli(&s.socket(), &["bans", "--json"]);
        if text(&out.stdout).contains("203.0.113.9") {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "astban died with a closed stderr"
        );
        assert!(Instant::now() < deadline, "no ban: {}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status:?}");
}

#[test]
fn a_state_that_cannot_be_saved_shows_in_status() {
    let s = Setup::new();
    let d = Daemon::start(&s.config(DRY_RUN), &s.socket());
    assert!(d.status()["engine"]["state_error"].is_null());
    // Nothing, not even root, can replace a directory with the state file.
    let state = s.path("state/bans.json");
    let _ = std::fs::remove_file(&state);
    std::fs::create_dir_all(&state).expect("mkdir");
    let out = d.cli(&["ban", "192.0.2.55", "--for", "1h"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = d.wait_status("the failed save", Duration::from_secs(20), |s| {
        s["engine"]["state_error"].is_string()
    });
    let error = status["engine"]["state_error"].as_str().unwrap_or_default();
    assert!(error.contains("bans.json"), "{error}");
    let human = d.cli(&["status"]);
    assert!(
        text(&human.stdout).contains("NOT DURABLE"),
        "{}",
        text(&human.stdout)
    );
    // Once it can be saved again, status says so.
    std::fs::remove_dir(&state).expect("rmdir");
    let out = d.cli(&["ban", "192.0.2.56", "--for", "1h"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.wait_status("a good save", Duration::from_secs(20), |s| {
        s["engine"]["state_error"].is_null()
    });
}

#[test]
fn a_hung_nft_is_reported_and_never_holds_up_a_stop() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Setup::new();
    let hang = s.path("hung-nft");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 600\n").expect("script");
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = s.config(&format!(
        "\n[firewall]\nbackend = \"nftables\"\nnft = [\"{}\"]\n",
        hang.display()
    ));
    let mut d = Daemon::start(&config, &s.socket());
    d.wait_for_log("has not answered for 5s", SOON);
    // Protection goes on meanwhile: the engine still bans.
    log_attempts(&s.path("messages"), "203.0.113.9", 5);
    d.wait_for_log("banned host=203.0.113.9", SOON);
    // A stop does not wait on the hung nft (its timeout is 60 s; the stop
    // helper fails a daemon still running 30 s after SIGTERM).
    let status = d.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_changed_secret_on_reload_says_a_restart_applies_it() {
    let s = Setup::new();
    let config = s.config(&format!("{DRY_RUN}[ami]\nsecret = \"first\"\n"));
    let mut d = Daemon::start(&config, &s.socket());
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("\"first\"", "\"second\"")).expect("config");
    hangup(&d);
    let line = d.wait_for_log("changed on reload", SOON);
    assert!(line.contains("ami"), "{line}");
    assert!(
        !d.logged().contains("second"),
        "the secret leaked: {}",
        d.logged()
    );
}

/// The addresses `status --json` lists for `name`, and whether the name
/// is failing.
fn name_state(st: &serde_json::Value, name: &str) -> (Vec<String>, bool) {
    let Some(n) = st["ignore_names"]
        .as_array()
        .and_then(|names| names.iter().find(|n| n["name"] == name))
    else {
        return (Vec::new(), false);
    };
    let addrs = n["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (addrs, n["failing_since"].is_string())
}

#[test]
fn host_names_in_ignoreip_follow_their_dns_answers() {
    let s = Setup::new();
    let Some(dns) = dnsmasq::Dnsmasq::start(
        s.dir.path(),
        "192.0.2.10 trunk.astban.test\n198.51.100.20 admin.astban.test\n",
    ) else {
        return;
    };
    let names = |grace: &str| {
        format!(
            "{DRY_RUN}\n[jail]\nignoreip = [\"127.0.0.0/8\", \"trunk.astban.test\", \"admin.astban.test\"]\n\
             ignore_names_servers = [\"{}\"]\nignore_names_interval = \"1s\"\nignore_names_grace = \"{grace}\"\n",
            dns.server()
        )
    };
    let config = s.config(&names("1h"));
    let out = astban(&["check-config", "--config", config.to_str().expect("UTF-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("trunk.astban.test"));
    let bad = s.path("bad.toml");
    std::fs::write(&bad, "[jail]\nignore_names_servers = [\"dns.example\"]\n").expect("config");
    let out = astban(&["check-config", "--config", bad.to_str().expect("UTF-8")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("jail.ignore_names_servers"),
        "{}",
        text(&out.stderr)
    );
    log_attempts(&s.path("messages"), "203.0.113.5", 5);
    let mut d = Daemon::start(&config, &s.socket());
    d.wait_for_log("banned host=203.0.113.5", SOON);
    d.wait_status("both names resolved", SOON, |st| {
        name_state(st, "trunk.astban.test").0 == ["192.0.2.10"]
            && name_state(st, "admin.astban.test").0 == ["198.51.100.20"]
    });

    // The trunk moves onto the banned address: its ban is lifted. The
    // admin's name stops resolving: its last address stays ignored.
    dns.set_hosts("203.0.113.5 trunk.astban.test\n");
    d.wait_for_log("unbanned host=203.0.113.5", SOON);
    let st = d.wait_status("the admin's name failing", SOON, |st| {
        name_state(st, "trunk.astban.test").0 == ["203.0.113.5"]
            && name_state(st, "admin.astban.test") == (vec!["198.51.100.20".into()], true)
    });
    assert_eq!(st["engine"]["active_bans"], 0);
    let human = text(&d.cli(&["status"]).stdout);
    assert!(
        human.contains("ignoreip name trunk.astban.test: 203.0.113.5 (resolved"),
        "{human}"
    );
    assert!(
        human.contains("ignoreip name admin.astban.test: 198.51.100.20; NOT RESOLVING since"),
        "{human}"
    );
    log_attempts(&s.path("messages"), "198.51.100.20", 5);
    d.wait_for_log("failure ignored host=198.51.100.20", SOON);

    // A reload with no grace: the admin's address is no longer ignored.
    s.config(&names("0s"));
    hangup(&d);
    d.wait_status("the admin's address dropped", SOON, |st| {
        name_state(st, "admin.astban.test") == (Vec::new(), true)
    });
    let st = d.status();
    assert_eq!(
        st["reload"]["applied"],
        serde_json::json!(["jail.ignoreip host names"])
    );
    log_attempts(&s.path("messages"), "198.51.100.20", 5);
    d.wait_for_log("banned host=198.51.100.20", SOON);
    let human = text(&d.cli(&["status"]).stdout);
    assert!(
        human.contains("ignoreip name admin.astban.test: no addresses; NOT RESOLVING since"),
        "{human}"
    );
    assert_eq!(banned(&d), ["198.51.100.20"]);
}

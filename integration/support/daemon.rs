//! Runs the real `astban` binary as a daemon for tests: its own temp dir,
//! config, state and control socket; its log lines observable as events;
//! SIGTERM on drop.

// Each test target uses a different part of this helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_astban");

/// Longest a start may take before a test calls it hung.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running `astban run`.
pub struct Daemon {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every line the daemon logged so far (for failure messages).
    pub seen: Vec<String>,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `astban run --config <config>` and waits until it says it is
    /// running. `socket` must be the config's `[control] socket`.
    pub fn start(config: &Path, socket: &Path) -> Daemon {
        Daemon::start_with_env(config, socket, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(config: &Path, socket: &Path, env: &[(&str, &str)]) -> Daemon {
        let config = config.to_str().expect("UTF-8 config path");
        Daemon::start_args(&["run", "--config", config], socket, env)
    }

    /// Starts `astban ARGS` (a `run` of some kind, listening on `socket`)
    /// and waits until it says it is running.
    pub fn start_args(args: &[&str], socket: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(args, socket, env, START_DEADLINE)
    }

    fn spawn(args: &[&str], socket: &Path, env: &[(&str, &str)], deadline: Duration) -> Daemon {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info,astban=debug")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn astban");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            lines,
            seen: Vec::new(),
            socket: socket.to_path_buf(),
        };
        daemon.wait_for_log("astban running", deadline);
        daemon
    }

    /// Waits for a log line containing `needle`; panics with everything the
    /// daemon said if it does not come.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "astban did not log {needle:?} within {timeout:?}; it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the daemon has logged so far.
    pub fn logged(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// Runs an `astban` CLI command against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.socket, args)
    }

    /// `astban bans --json`, parsed.
    pub fn bans(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["bans", "--json"]);
        assert!(
            out.status.success(),
            "bans failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("bans --json prints a JSON array")
    }

    /// `astban status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Polls the status until `done` holds, failing with the last status
    /// after `timeout`. For states nothing else signals (an input's health,
    /// how many reports the gate has judged), so a bounded poll it is.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for the exit. A daemon that does not stop
    /// within 30 s fails the test (and is killed), rather than hanging it.
    pub fn stop(self) -> std::process::ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Like [`Daemon::stop`], with `signal` (SIGINT is Ctrl-C).
    pub fn stop_with(mut self, signal: libc::c_int) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.seen.extend(self.lines.try_iter());
                panic!(
                    "astban did not stop within 30 s of signal {signal}; it said:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Daemon {
    /// SIGKILL, as the OOM killer or a power cut would; returns every line
    /// the daemon wrote before it died (those it reported).
    pub fn kill(mut self) -> Vec<String> {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = child.wait();
        // The reader thread ends at the pipe's end: everything is in.
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.iter());
        seen
    }

    /// Receives the next line the daemon logs, if one comes within
    /// `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let _ = child.wait();
        }
    }
}

fn terminate(child: &Child) {
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// Runs an `astban` CLI command against `socket`.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run astban")
}

/// Appends `n` chan_sip wrong-password lines from `host`, stamped now, to
/// the log at `path` (created if missing).
pub fn log_attempts(path: &Path, host: &str, n: usize) {
    let now = jiff::ZonedDateTime::now().strftime("%Y-%m-%d %H:%M:%S");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("log file");
    for _ in 0..n {
        writeln!(
            file,
            "[{now}] NOTICE[2766] chan_sip.c: Registration from '<sip:100@pbx>' failed for '{host}:5060' - Wrong password"
        )
        .expect("append");
    }
}

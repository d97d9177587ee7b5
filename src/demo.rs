//! `astban run --demo`: the whole daemon on a built-in setup that needs
//! neither Asterisk nor root, and changes nothing on the machine.
//!
//! It replays a real attack capture (examples/demo-messages.log, the
//! capture's loopback attackers renumbered into documentation ranges) into a
//! log file under a private temporary directory, stamped with the current
//! time, while the daemon follows that file with the dry-run firewall.

use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Backend, Config, InputMode, StartAt};
use crate::daemon::{self, ConfigSource, DaemonError, Setup};

/// Runs the demo: prepares its directory, says what it does, and runs the
/// daemon on it while replaying the capture, until SIGTERM or SIGINT.
pub async fn run() -> Result<(), DemoError> {
    let demo = Demo::prepare().map_err(DemoError::Prepare)?;
    demo.print_banner();
    let stop = CancellationToken::new();
    let replay = tokio::spawn(demo.clone().replay(stop.clone()));
    let setup = Setup {
        config: demo.config(),
        source: ConfigSource::BuiltIn("the demo's settings are built in"),
    };
    let outcome = daemon::run(setup).await;
    stop.cancel();
    let _ = replay.await;
    // The directory goes only after the daemon is done with it.
    drop(demo);
    Ok(outcome?)
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Its directory could not be made.
    #[error("preparing the demo: {0}")]
    Prepare(io::Error),
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// The attack the demo replays: SIP wrong passwords, ACL rejections, AMI
/// login failures and a 30-host REGISTER flood, as a real Asterisk logged
/// them.
const DEMO_LOG: &str = include_str!("../examples/demo-messages.log");
/// Lines written per second, so the bans can be watched as they happen.
const LINES_PER_SECOND: u64 = 40;

/// The demo's directory and settings.
#[derive(Debug, Clone)]
pub struct Demo {
    dir: PathBuf,
}

impl Demo {
    /// Creates a fresh private directory for the demo under the system's
    /// temporary directory.
    pub fn prepare() -> io::Result<Demo> {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let dir = std::env::temp_dir().join(format!("astban-demo-{uid}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::fs::File::create(dir.join("messages"))?;
        Ok(Demo { dir })
    }

    /// The demo's configuration: log input on the replayed file, dry-run
    /// firewall, everything under the demo directory.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.input.mode = InputMode::Log;
        c.log.path = Some(self.log_path());
        c.log.start = StartAt::Beginning;
        c.firewall.backend = Backend::DryRun;
        c.control.socket = self.socket_path();
        c.state.dir = self.dir.join("state");
        c.mail.enabled = false;
        c
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("messages")
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.join("astban.sock")
    }

    /// Says plainly what the demo does and does not do.
    pub fn print_banner(&self) {
        let socket = self.socket_path();
        let lines = DEMO_LOG.lines().count();
        // Not eprintln!: a closed stderr must not stop the demo.
        let _ = writeln!(
            std::io::stderr(),
            "\
astban demo: the real daemon on a built-in setup. Nothing on this machine is changed.
  firewall:  dry-run (bans are logged, nothing is blocked, no root needed)
  input:     log only (no Asterisk needed): {lines} lines of a real attack capture
             (SIP wrong passwords, ACL rejections, AMI login failures, a 30-host
             REGISTER flood) are replayed into {log}
  jail:      5 failures within 10m ban for 3d; 127.0.0.0/8 is never banned
  control:   {socket}
In another terminal, try:
  astban status --socket {socket}
  astban bans --socket {socket}
  astban unban 198.51.100.10 --socket {socket}
(with cargo: cargo run --release -- status --socket {socket})
Stop with Ctrl-C.
",
            log = self.log_path().display(),
            socket = socket.display(),
        );
    }

    /// Appends the capture to the demo log, stamped with the current time,
    /// at a pace a human can follow; then idles until shutdown.
    pub async fn replay(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_millis(1000 / LINES_PER_SECOND));
        for line in DEMO_LOG.lines() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(e) = append_now(&self.log_path(), line) {
                tracing::error!(error = %e, "demo: cannot write the replayed log");
                return;
            }
        }
        tracing::info!("demo: replay finished; astban keeps following the log (Ctrl-C to stop)");
        shutdown.cancelled().await;
    }
}

/// Appends `line` with its `[YYYY-MM-DD HH:MM:SS]` stamp replaced by now.
fn append_now(path: &Path, line: &str) -> io::Result<()> {
    let now = jiff::ZonedDateTime::now()
        .strftime("[%Y-%m-%d %H:%M:%S]")
        .to_string();
    let rest = line.split_once("] ").map_or(line, |(_, rest)| rest);
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(file, "{now} {rest}")
}

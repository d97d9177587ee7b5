//! `astban run --demo`: the whole daemon on a built-in setup that needs
//! neither Asterisk nor root, and changes nothing on the machine.
//!
//! The demo plays Asterisk's part: an AMI server of its own on a loopback
//! port ([`ami`]) and a `messages` log under a private temporary
//! directory, into which it replays real captures ([`script`]): chan_sip
//! and PJSIP attacks, the svcrack brute force, and a REGISTER flood while
//! the AMI session is down, so the log's count takes over and AMI's comes
//! back. The daemon runs in input mode `auto` with the dry-run firewall;
//! it does not know it is in a demo.

mod ami;
mod script;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::ami::Ami;
use crate::config::{AmiAuth, Backend, Config, InputMode, Secret, StartAt};
use crate::daemon::{self, ConfigSource, DaemonError, Setup};

/// Runs the demo: prepares its directory and AMI, says what it does, and
/// runs the daemon on them while replaying the captures, until SIGTERM or
/// SIGINT.
pub async fn run() -> Result<(), DemoError> {
    let ami = Ami::start(AMI_USERNAME, AMI_SECRET)
        .await
        .map_err(DemoError::Ami)?;
    let demo = Demo::prepare(ami.addr()).map_err(DemoError::Prepare)?;
    demo.print_banner();
    let stop = CancellationToken::new();
    let stage = script::Stage {
        ami: &ami,
        socket: &demo.socket_path(),
        log: &demo.log_path(),
    };
    let setup = Setup {
        config: demo.config(),
        source: ConfigSource::BuiltIn("the demo's settings are built in"),
    };
    let daemon = async {
        let outcome = daemon::run(setup).await;
        stop.cancel();
        outcome
    };
    let ((), outcome) = tokio::join!(script::play(stage, stop.clone()), daemon);
    // The directory goes only after the daemon is done with it; a failure
    // to remove it leaves a private temporary directory, nothing worse.
    let _ = std::fs::remove_dir_all(&demo.dir);
    Ok(outcome?)
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Its directory could not be made.
    #[error("preparing the demo: {0}")]
    Prepare(io::Error),
    /// Its AMI could not listen on loopback.
    #[error("starting the demo's AMI on 127.0.0.1: {0}")]
    Ami(io::Error),
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// The AMI user of the demo's AMI. Only loopback reaches it and nothing
/// is behind it, so the secret need not be secret.
const AMI_USERNAME: &str = "astban";
const AMI_SECRET: &str = "demo";

/// The demo's directory and settings.
#[derive(Debug, Clone)]
pub struct Demo {
    dir: PathBuf,
    ami: SocketAddr,
}

impl Demo {
    /// Creates a fresh private directory for the demo under the system's
    /// temporary directory; `ami` is where the demo's AMI listens.
    pub fn prepare(ami: SocketAddr) -> io::Result<Demo> {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let dir = std::env::temp_dir().join(format!("astban-demo-{uid}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::fs::File::create(dir.join("messages"))?;
        Ok(Demo { dir, ami })
    }

    /// The demo's configuration: AMI on the demo's AMI and the log on the
    /// replayed file (input mode `auto`), dry-run firewall, everything
    /// under the demo directory.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.input.mode = InputMode::Auto;
        c.ami.host = self.ami.ip().to_string();
        c.ami.port = self.ami.port();
        c.ami.username = AMI_USERNAME.into();
        c.ami.secret = Secret::new(AMI_SECRET);
        c.ami.auth = AmiAuth::Md5;
        // Back within a second or two of the demo AMI's return.
        c.ami.reconnect_min = Duration::from_millis(250);
        c.ami.reconnect_max = Duration::from_secs(1);
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
        // Not eprintln!: a closed stderr must not stop the demo.
        let _ = writeln!(
            std::io::stderr(),
            "\
astban demo: the real daemon on a built-in setup. Nothing on this machine is changed.
  firewall:  dry-run (bans are logged, nothing is blocked, no root needed)
  input:     auto: AMI while its session is up, the log while it is down. The demo
             plays Asterisk: an AMI on {ami} and the log {log}, replaying real
             captures (chan_sip and PJSIP attacks, the svcrack brute force, a
             REGISTER flood); midway the AMI session drops and comes back.
  jail:      5 failures within 10m ban for 3d; 127.0.0.0/8 is never banned
  control:   {socket}
In another terminal, try:
  astban status --socket {socket}
  astban bans --socket {socket}
  astban unban 198.51.100.10 --socket {socket}
(with cargo: cargo run --release -- status --socket {socket})
Stop with Ctrl-C.
",
            ami = self.ami,
            log = self.log_path().display(),
            socket = socket.display(),
        );
    }
}

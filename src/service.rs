//! astban as a service of the operating system: the signals it obeys and
//! the readiness it reports to systemd.

use std::io;

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read the config.
    Reload,
    /// SIGTERM or SIGINT: stop.
    Stop,
}

/// The signals the daemon handles, installed once at start so that none
/// arriving during start-up is lost to the default action.
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; must be called within a tokio runtime.
    pub fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// A state change systemd's `Type=notify` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Protecting: inputs, engine and firewall are running.
    Ready,
    /// Applying a SIGHUP.
    Reloading,
    /// Shutting down.
    Stopping,
}

/// Tells systemd about readiness when run as a `Type=notify` service
/// (`NOTIFY_SOCKET` set); a no-op otherwise. A failure is logged, never
/// fatal: protection does not depend on systemd hearing it.
pub fn notify(state: Readiness) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = match state {
        Readiness::Ready => "READY=1",
        Readiness::Reloading => "RELOADING=1",
        Readiness::Stopping => "STOPPING=1",
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &path),
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

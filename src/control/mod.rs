//! The control socket: how `astban status|bans|ban|unban` talk to the
//! running daemon.
//!
//! One Unix socket, private to its owner (mode 0600 in a 0700 directory,
//! and peers with another uid are refused), carrying one JSON request line
//! and one JSON answer line per exchange.
//!
//! - [`protocol`]: the requests, the answers and their types.
//! - [`server`]: binds and serves the socket for a [`Handler`].
//! - [`client`]: the CLI's side, one typed method per request.
//! - [`handler`]: what each request does in the daemon.
//! - [`render`]: the answers as text for humans.

pub mod client;
pub mod handler;
pub mod protocol;
pub mod render;
pub mod server;

use std::io;
use std::path::PathBuf;

pub use client::Client;
pub use handler::DaemonHandler;
pub use protocol::{Refusal, Request, Status};
pub use server::{Handler, Server};

/// Why the control socket could not be served or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon already answers on the socket.
    #[error(
        "another astban is already running on {0} (stop it, or set [control] socket to another path)"
    )]
    InUse(PathBuf),
    /// Creating or binding the socket failed.
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The daemon is not running (no socket, or nobody listening).
    #[error(
        "astban is not running (no daemon listens on {path}: {source}); start it with `astban run` or `systemctl start astban`, or pass the right --socket"
    )]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The socket exists but this user may not use it.
    #[error("permission denied on {0}: the control socket is private to root (run with sudo)")]
    PermissionDenied(PathBuf),
    /// The daemon refused the request.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Talking to the daemon failed midway.
    #[error("control socket {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

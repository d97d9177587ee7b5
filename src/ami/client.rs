//! The AMI session: connect, log in, subscribe, keep alive, reconnect.

use jiff::Timestamp;

/// The AMI session's health, published on a `tokio::sync::watch` channel.
///
/// The input-mode fallback reads it: while AMI is not `Up`, failures from
/// the log count instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not connected yet since start.
    Connecting,
    /// Logged in and receiving security events since `since`.
    Up {
        /// When the login succeeded.
        since: Timestamp,
    },
    /// The session is gone.
    Down {
        /// The last moment AMI was known to be delivering events (the last
        /// frame received), so a silent death is covered from when it
        /// really began, not from when the Ping timed out.
        since: Timestamp,
        /// Why, for humans (`connection refused`, `login refused: ...`).
        reason: String,
    },
}

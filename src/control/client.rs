//! The CLI's side of the control socket: one typed method per request.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec};

use super::ControlError;
use super::protocol::{Answer, Request, Status};
use crate::engine::BanInfo;

/// Longest answer line: a list of bans can be long.
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// Talks to the daemon listening on one socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client of the daemon on `path`; nothing is connected until a
    /// request is made.
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client { path: path.into() }
    }

    /// The daemon's inputs, counters and firewall state.
    pub async fn status(&self) -> Result<Status, ControlError> {
        self.call(&Request::Status).await
    }

    /// The active bans, soonest to expire first.
    pub async fn bans(&self) -> Result<Vec<BanInfo>, ControlError> {
        self.call(&Request::Bans).await
    }

    /// Bans `host` for `duration` (the jail's bantime when `None`); `force`
    /// overrides `ignoreip` and the width check.
    pub async fn ban(
        &self,
        host: IpNet,
        duration: Option<Duration>,
        force: bool,
    ) -> Result<BanInfo, ControlError> {
        let request = Request::Ban {
            host,
            duration,
            force,
        };
        self.call(&request).await
    }

    /// Lifts the ban of `host`, returning it.
    pub async fn unban(&self, host: IpNet) -> Result<BanInfo, ControlError> {
        self.call(&Request::Unban { host }).await
    }

    /// Sends one request and reads its answer as `T`.
    async fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ControlError> {
        let path = self.path.as_path();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| unreachable(path, e))?;
        let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_ANSWER));
        let line = serde_json::to_string(request).map_err(|e| protocol(path, e.to_string()))?;
        framed
            .send(line)
            .await
            .map_err(|e| protocol(path, e.to_string()))?;
        let line = match framed.next().await {
            Some(Ok(line)) => line,
            Some(Err(e)) => return Err(protocol(path, e.to_string())),
            None => {
                let message = "the daemon closed the connection without answering";
                return Err(protocol(path, message.into()));
            }
        };
        match serde_json::from_str(&line) {
            Ok(Answer::Ok(value)) => Ok(value),
            Ok(Answer::Refused(refusal)) => Err(refusal.into()),
            Err(e) => Err(protocol(
                path,
                format!("unexpected answer ({e}); is the daemon the same astban version?"),
            )),
        }
    }
}

/// Why the socket could not be reached, in the user's terms.
fn unreachable(path: &Path, source: io::Error) -> ControlError {
    match source.kind() {
        io::ErrorKind::PermissionDenied => ControlError::PermissionDenied(path.to_path_buf()),
        _ => ControlError::NotRunning {
            path: path.to_path_buf(),
            source,
        },
    }
}

fn protocol(path: &Path, message: String) -> ControlError {
    ControlError::Protocol {
        path: path.to_path_buf(),
        message,
    }
}

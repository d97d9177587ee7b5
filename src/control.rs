//! The control socket: how `astban status|bans|ban|unban` talk to the
//! running daemon.
//!
//! One Unix socket, private to its owner (mode 0600 in a 0700 directory,
//! and peers with another uid are refused), carrying one JSON request line
//! and one JSON response line per exchange. The server only frames and
//! checks; what a request does is up to a [`Handler`], so the protocol can
//! be tested without an engine.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

/// Longest request or response line. Requests are tiny; responses list
/// bans, so they get more room.
const MAX_REQUEST: usize = 64 * 1024;
const MAX_RESPONSE: usize = 256 * 1024 * 1024;
/// A client that connects and says nothing is dropped after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the CLI asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Inputs, counts, firewall health.
    Status,
    /// Active bans.
    Bans,
    /// Ban an address or network now.
    Ban {
        /// Address or CIDR.
        host: String,
        /// Ban length (`"1h"`); the jail's bantime when absent.
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        duration: Option<String>,
        /// Ban even if `ignoreip` covers it.
        #[serde(default)]
        force: bool,
    },
    /// Lift a ban.
    Unban {
        /// Address or CIDR.
        host: String,
    },
}

/// The daemon's answer: `{"ok": true, "data": ...}` or
/// `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// What went wrong, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying `data`.
    pub fn ok(data: Value) -> Response {
        Response {
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    /// A failure with a message for the user.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }
}

/// Carries out requests; the daemon implements it over the engine.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: Request) -> impl Future<Output = Reply> + Send;
}

/// A handler's answer.
pub enum Reply {
    /// One response, sent as one line.
    Whole(Response),
    /// A success whose `data` arrives in pieces of JSON text that together
    /// make one value (a list of 100,000 bans): written to the socket as
    /// they come, on the same one line, so that the daemon never holds the
    /// whole answer.
    Pieces(tokio::sync::mpsc::Receiver<String>),
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply::Whole(response)
    }
}

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
    /// Talking to the daemon failed midway.
    #[error("control socket {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A bound control socket, removed again when dropped.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path` with mode 0600, creating its directory (0700) if
    /// needed. A stale socket left by a crash is replaced; a live one is an
    /// error, so two daemons never fight over bans.
    pub async fn bind(path: &Path) -> Result<Server, ControlError> {
        let bind_err = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                crate::persist::create_private_dir(dir).map_err(bind_err)?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(ControlError::InUse(path.to_path_buf()));
                }
                std::fs::remove_file(path).map_err(bind_err)?;
            }
            Ok(_) => {
                return Err(bind_err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        // Bind under a umask that already denies group and others, so the
        // socket is never reachable by them, not even briefly before chmod.
        let listener = {
            let _umask = Umask::set(0o177);
            UnixListener::bind(path).map_err(bind_err)?
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients until shutdown, each on its own task.
    pub async fn serve<H: Handler>(self, handler: Arc<H>, shutdown: CancellationToken) {
        let me = effective_uid();
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        continue;
                    }
                },
            };
            // The file mode already keeps others out; checking the peer's
            // uid as well survives a mis-set mode or directory.
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        "control socket: refused a client of another user"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: cannot check the client's uid; refused");
                    continue;
                }
            }
            let handler = Arc::clone(&handler);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    result = serve_client(stream, &*handler) => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "control client");
                        }
                    }
                }
            });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_client<H: Handler>(stream: UnixStream, handler: &H) -> Result<(), LinesCodecError> {
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_REQUEST));
    loop {
        let line = match tokio::time::timeout(REQUEST_TIMEOUT, framed.next()).await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => return Ok(()),
        };
        let reply = match line {
            Ok(line) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => handler.handle(request).await,
                Err(e) => Response::error(format!("bad request: {e}")).into(),
            },
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let response = Response::error("request too long");
                framed.send(to_line(&response)).await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match reply {
            Reply::Whole(response) => framed.send(to_line(&response)).await?,
            Reply::Pieces(mut pieces) => {
                use tokio::io::AsyncWriteExt as _;
                let stream = framed.get_mut();
                stream.write_all(b"{\"ok\":true,\"data\":").await?;
                while let Some(piece) = pieces.recv().await {
                    stream.write_all(piece.as_bytes()).await?;
                }
                stream.write_all(b"}\n").await?;
            }
        }
    }
}

fn to_line(response: &Response) -> String {
    serde_json::to_string(response)
        .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"cannot encode response: {e}\"}}"))
}

/// Sends one request to the daemon listening on `path` and returns its
/// response.
pub async fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let protocol = |message: String| ControlError::Protocol {
        path: path.to_path_buf(),
        message,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => ControlError::PermissionDenied(path.to_path_buf()),
            _ => ControlError::NotRunning {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_RESPONSE));
    let line = serde_json::to_string(request).map_err(|e| protocol(e.to_string()))?;
    framed
        .send(line)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    match framed.next().await {
        Some(Ok(line)) => {
            serde_json::from_str(&line).map_err(|e| protocol(format!("bad response: {e}")))
        }
        Some(Err(e)) => Err(protocol(e.to_string())),
        None => Err(protocol(
            "the daemon closed the connection without answering".into(),
        )),
    }
}

/// The effective uid, for comparing with peers.
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Restores the previous umask when dropped.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        // SAFETY: umask has no preconditions and cannot fail.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    /// Records requests and answers with an echo of them.
    #[derive(Default)]
    struct Echo(Mutex<Vec<Request>>);

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Reply {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(request.clone());
            }
            match request {
                Request::Unban { host } if host == "bad" => Response::error("not banned").into(),
                // A list in pieces, as the daemon sends its bans.
                Request::Bans => {
                    let (tx, rx) = tokio::sync::mpsc::channel(2);
                    tokio::spawn(async move {
                        for piece in ["[1", ",2", ",3]"] {
                            let _ = tx.send(piece.to_owned()).await;
                        }
                    });
                    Reply::Pieces(rx)
                }
                other => Response::ok(serde_json::to_value(other).unwrap_or(Value::Null)).into(),
            }
        }
    }

    async fn start() -> (
        tempfile::TempDir,
        PathBuf,
        Arc<Echo>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/astban.sock");
        let server = Server::bind(&path).await.expect("bind");
        let handler = Arc::new(Echo::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(Arc::clone(&handler), shutdown.clone()));
        (dir, path, handler, shutdown, task)
    }

    #[tokio::test]
    async fn socket_is_private_and_answers_requests() {
        let (_dir, path, handler, shutdown, task) = start().await;
        let meta = std::fs::metadata(&path).expect("socket");
        assert_eq!(meta.mode() & 0o777, 0o600);
        let dir_meta = std::fs::metadata(path.parent().expect("dir")).expect("dir");
        assert_eq!(dir_meta.mode() & 0o777, 0o700);

        let ban = Request::Ban {
            host: "192.0.2.7".into(),
            duration: Some("1h".into()),
            force: false,
        };
        let response = request(&path, &ban).await.expect("request");
        assert!(response.ok);
        assert_eq!(
            response.data.as_ref().and_then(|d| d["for"].as_str()),
            Some("1h")
        );
        let response = request(&path, &Request::Unban { host: "bad".into() })
            .await
            .expect("request");
        assert_eq!(response.error.as_deref(), Some("not banned"));
        // An answer sent in pieces is one line, one value.
        let response = request(&path, &Request::Bans).await.expect("request");
        assert!(response.ok);
        assert_eq!(response.data, Some(serde_json::json!([1, 2, 3])));
        assert_eq!(handler.0.lock().expect("lock").len(), 3);

        shutdown.cancel();
        task.await.expect("server");
        assert!(!path.exists(), "socket removed on shutdown");
    }

    #[tokio::test]
    async fn garbage_gets_an_error_not_a_crash() {
        let (_dir, path, _handler, shutdown, task) = start().await;
        let stream = UnixStream::connect(&path).await.expect("connect");
        let mut framed = Framed::new(stream, LinesCodec::new());
        framed
            .send("{\"cmd\":\"explode\"}".to_string())
            .await
            .expect("send");
        let line = framed.next().await.expect("answer").expect("line");
        let response: Response = serde_json::from_str(&line).expect("json");
        assert!(!response.ok && response.error.expect("error").contains("bad request"));

        framed
            .send("x".repeat(MAX_REQUEST + 10))
            .await
            .expect("send");
        let line = framed.next().await.expect("answer").expect("line");
        assert!(line.contains("too long"));
        // The server still serves others.
        assert!(request(&path, &Request::Status).await.expect("status").ok);
        shutdown.cancel();
        task.await.expect("server");
    }

    #[tokio::test]
    async fn second_daemon_and_missing_daemon_are_clear_errors() {
        let (_dir, path, _handler, shutdown, task) = start().await;
        match Server::bind(&path).await {
            Err(ControlError::InUse(p)) => assert_eq!(p, path),
            other => panic!("expected InUse, got {other:?}"),
        }
        shutdown.cancel();
        task.await.expect("server");

        let err = request(&path, &Request::Status)
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, ControlError::NotRunning { .. }));
        assert!(err.to_string().contains("not running"));
    }

    #[tokio::test]
    async fn stale_socket_from_a_crash_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("astban.sock");
        // A socket file nobody listens on, as a crashed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let server = Server::bind(&path).await.expect("rebind over stale socket");
        assert_eq!(server.path(), path);
    }
}

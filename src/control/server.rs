//! The control socket's server: binds it privately, frames requests and
//! answers, and leaves what a request does to a [`Handler`], so that the
//! protocol is tested without an engine.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use ipnet::IpNet;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use super::ControlError;
use super::protocol::{Answer, Refusal, Request, Status};
use crate::engine::BanInfo;

/// Longest request line: requests are tiny.
pub(super) const MAX_REQUEST: usize = 64 * 1024;
/// A client that connects and says nothing is dropped after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Carries out requests, one method per [`Request`], each with its own
/// reply type; the daemon implements it over the engine.
pub trait Handler: Send + Sync + 'static {
    /// `astban status`.
    fn status(&self) -> impl Future<Output = Result<Status, Refusal>> + Send;
    /// `astban bans`: the bans a page at a time, so that the daemon never
    /// holds 100,000 of them at once; the list ends when the channel does.
    fn bans(&self) -> impl Future<Output = Result<mpsc::Receiver<Vec<BanInfo>>, Refusal>> + Send;
    /// `astban ban`.
    fn ban(
        &self,
        host: IpNet,
        duration: Option<Duration>,
        force: bool,
    ) -> impl Future<Output = Result<BanInfo, Refusal>> + Send;
    /// `astban unban`.
    fn unban(&self, host: IpNet) -> impl Future<Output = Result<BanInfo, Refusal>> + Send;
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

async fn serve_client<H: Handler>(stream: UnixStream, handler: &H) -> io::Result<()> {
    let (read, write) = stream.into_split();
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_REQUEST));
    let mut out = BufWriter::new(write);
    loop {
        let line = match tokio::time::timeout(REQUEST_TIMEOUT, lines.next()).await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => return Ok(()),
        };
        let request = match line {
            Ok(line) => serde_json::from_str::<Request>(&line).map_err(|e| Refusal::BadRequest {
                message: e.to_string(),
            }),
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let refusal = Refusal::TooLong { max: MAX_REQUEST };
                write_answer(&mut out, &Answer::<()>::Refused(refusal)).await?;
                return Ok(());
            }
            Err(LinesCodecError::Io(e)) => return Err(e),
        };
        match request {
            Ok(request) => answer(request, handler, &mut out).await?,
            Err(refusal) => write_answer(&mut out, &Answer::<()>::Refused(refusal)).await?,
        }
    }
}

/// Carries out one request and writes its answer.
async fn answer<H: Handler, W: AsyncWrite + Unpin>(
    request: Request,
    handler: &H,
    out: &mut W,
) -> io::Result<()> {
    match request {
        Request::Status => write_answer(out, &handler.status().await.into()).await,
        Request::Bans => match handler.bans().await {
            Ok(pages) => write_list(out, pages).await,
            Err(refusal) => write_answer(out, &Answer::<()>::Refused(refusal)).await,
        },
        Request::Ban {
            host,
            duration,
            force,
        } => write_answer(out, &handler.ban(host, duration, force).await.into()).await,
        Request::Unban { host } => write_answer(out, &handler.unban(host).await.into()).await,
    }
}

/// Writes one answer as one line.
async fn write_answer<T: Serialize, W: AsyncWrite + Unpin>(
    out: &mut W,
    answer: &Answer<T>,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await
}

/// Writes `{"ok":[...]}` a page at a time: the same one line
/// [`write_answer`] would write for the whole list, without ever holding
/// it.
async fn write_list<T: Serialize, W: AsyncWrite + Unpin>(
    out: &mut W,
    mut pages: mpsc::Receiver<Vec<T>>,
) -> io::Result<()> {
    let mut buf = b"{\"ok\":[".to_vec();
    let mut first = true;
    while let Some(page) = pages.recv().await {
        for item in &page {
            if !std::mem::take(&mut first) {
                buf.push(b',');
            }
            serde_json::to_writer(&mut buf, item).map_err(io::Error::other)?;
        }
        out.write_all(&buf).await?;
        buf.clear();
    }
    buf.extend_from_slice(b"]}\n");
    out.write_all(&buf).await?;
    out.flush().await
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
    use crate::control::Client;
    use crate::units::parse_net;
    use futures_util::SinkExt;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    use tokio_util::codec::Framed;

    /// Records requests; bans what it is asked to, and knows no other ban.
    #[derive(Default)]
    struct Echo(Mutex<Vec<Request>>);

    impl Echo {
        fn saw(&self, request: Request) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(request);
            }
        }
    }

    fn ban_of(host: IpNet, duration: Duration) -> BanInfo {
        let now = jiff::Timestamp::now();
        BanInfo {
            net: host,
            banned_at: now,
            expires: now + duration,
            failures: 0,
            offense: 1,
            manual: true,
            kinds: Default::default(),
            services: Default::default(),
            accounts: vec![],
            account_under_attack: None,
            origin: None,
        }
    }

    impl Handler for Echo {
        async fn status(&self) -> Result<Status, Refusal> {
            self.saw(Request::Status);
            Err(Refusal::EngineStopped)
        }

        async fn bans(&self) -> Result<mpsc::Receiver<Vec<BanInfo>>, Refusal> {
            self.saw(Request::Bans);
            // Pages, as the daemon sends its bans.
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                for host in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
                    let net = parse_net(host).expect("address");
                    let _ = tx.send(vec![ban_of(net, Duration::from_secs(60))]).await;
                }
            });
            Ok(rx)
        }

        async fn ban(
            &self,
            host: IpNet,
            duration: Option<Duration>,
            force: bool,
        ) -> Result<BanInfo, Refusal> {
            self.saw(Request::Ban {
                host,
                duration,
                force,
            });
            Ok(ban_of(host, duration.unwrap_or(Duration::from_secs(1))))
        }

        async fn unban(&self, host: IpNet) -> Result<BanInfo, Refusal> {
            self.saw(Request::Unban { host });
            Err(Refusal::NotBanned { host })
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
    async fn socket_is_private_and_answers_requests_typed() {
        let (_dir, path, handler, shutdown, task) = start().await;
        let meta = std::fs::metadata(&path).expect("socket");
        assert_eq!(meta.mode() & 0o777, 0o600);
        let dir_meta = std::fs::metadata(path.parent().expect("dir")).expect("dir");
        assert_eq!(dir_meta.mode() & 0o777, 0o700);

        let client = Client::new(&path);
        let host = parse_net("192.0.2.7").expect("address");
        let hour = Duration::from_secs(3600);
        let ban = client.ban(host, Some(hour), true).await.expect("ban");
        assert_eq!((ban.net, ban.duration()), (host, hour));
        // A refusal arrives as the same typed value.
        match client.unban(host).await {
            Err(ControlError::Refused(Refusal::NotBanned { host: h })) => assert_eq!(h, host),
            other => panic!("expected NotBanned, got {other:?}"),
        }
        // An answer sent in pages is one line, one list.
        let bans = client.bans().await.expect("bans");
        let hosts: Vec<String> = bans.iter().map(|b| b.net.to_string()).collect();
        assert_eq!(hosts, ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32"]);
        let err = client.status().await.expect_err("refused");
        assert!(err.to_string().contains("engine has stopped"), "{err}");
        let seen = handler.0.lock().expect("lock").clone();
        assert_eq!(
            seen[0],
            Request::Ban {
                host,
                duration: Some(hour),
                force: true
            }
        );
        assert_eq!(seen.len(), 4);

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
        let answer: Answer<()> = serde_json::from_str(&line).expect("json");
        assert!(
            matches!(answer, Answer::Refused(Refusal::BadRequest { .. })),
            "{line}"
        );

        framed
            .send("x".repeat(MAX_REQUEST + 10))
            .await
            .expect("send");
        let line = framed.next().await.expect("answer").expect("line");
        let answer: Answer<()> = serde_json::from_str(&line).expect("json");
        assert_eq!(
            answer,
            Answer::Refused(Refusal::TooLong { max: MAX_REQUEST })
        );
        // The server still serves others.
        assert!(Client::new(&path).bans().await.is_ok());
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

        let err = Client::new(&path)
            .status()
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

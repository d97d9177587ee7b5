//! The demo's stand-in for Asterisk's Manager Interface: a loopback TCP
//! listener that speaks just enough AMI for astban's client (the banner,
//! `Challenge` and `Login` with an MD5 key or a plain secret, `Ping`,
//! `Logoff`) and then forwards whatever security events the demo's script
//! hands it to the logged-in session.
//!
//! The script can take the service away ([`Ami::go_down`]: the session is
//! closed and new connections are closed right after they are accepted,
//! as while Asterisk restarts) and bring it back ([`Ami::come_back`]).
//! The tests' fake AMI (`integration/support/fake_ami.rs`) does more
//! (random chunking, recording what the client sent); this one only has to
//! be believable and small.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The greeting of the captured Asterisk 20.
const BANNER: &[u8] = b"Asterisk Call Manager/9.0.0\r\n";
/// The challenge handed out for MD5 logins.
const CHALLENGE: &str = "119281354";
/// Largest action accepted from the client; astban's are a few hundred
/// bytes, so more means something else is talking: the connection is
/// closed rather than the buffer grown.
const MAX_ACTION: usize = 16 * 1024;
/// Events waiting for the session: the script sends one at a time and
/// waits when the session is slow, so a handful is plenty.
const EVENT_QUEUE: usize = 16;

/// A running demo AMI on 127.0.0.1; stops when dropped.
pub struct Ami {
    addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::Sender<Vec<u8>>,
    stop: CancellationToken,
}

struct Shared {
    username: String,
    secret: String,
    /// Whether connections are served; false closes them.
    available: watch::Sender<bool>,
    /// The events for whichever session is logged in.
    events: Mutex<mpsc::Receiver<Vec<u8>>>,
}

impl Ami {
    /// Listens on an unused loopback port, accepting `username` with
    /// `secret`.
    pub async fn start(username: &str, secret: &str) -> io::Result<Ami> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            username: username.into(),
            secret: secret.into(),
            available: watch::Sender::new(true),
            events: Mutex::new(rx),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, shared.clone(), stop.clone()));
        Ok(Ami {
            addr,
            shared,
            events,
            stop,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Hands one event (with its `\r\n\r\n` end) to the logged-in session,
    /// waiting while the session is behind. Events sent while no session
    /// is logged in wait for the next one; the script sends only while one
    /// is.
    pub async fn send(&self, event: Vec<u8>) {
        // The receiver lives as long as `self`.
        let _ = self.events.send(event).await;
    }

    /// Closes the session and every new connection, as while Asterisk
    /// restarts.
    pub fn go_down(&self) {
        self.shared.available.send_replace(false);
    }

    /// Serves connections again.
    pub fn come_back(&self) {
        self.shared.available.send_replace(true);
    }
}

impl Drop for Ami {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        if !*shared.available.borrow() {
            // Dropping the stream closes it before any banner.
            continue;
        }
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut available = shared.available.subscribe();
            tokio::select! {
                () = stop.cancelled() => {}
                _ = available.wait_for(|up| !*up) => {}
                _ = serve(stream, peer, &shared) => {}
            }
        });
    }
}

/// One connection: banner, actions until a login, then actions and
/// events until either side ends it.
async fn serve(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream.write_all(BANNER).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Held once logged in: this session receives the script's events.
    let mut events = None;
    loop {
        while let Some(action) = take_action(&mut buf) {
            match answer(&action, shared, peer) {
                Reply::Send(bytes) => stream.write_all(&bytes).await?,
                Reply::LoggedIn(bytes) => {
                    stream.write_all(&bytes).await?;
                    events = Some(shared.events.lock().await);
                }
                Reply::Close(bytes) => {
                    stream.write_all(&bytes).await?;
                    return Ok(());
                }
            }
        }
        if buf.len() > MAX_ACTION {
            return Ok(());
        }
        tokio::select! {
            read = stream.read(&mut chunk) => match read? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            },
            Some(event) = next_event(&mut events) => stream.write_all(&event).await?,
        }
    }
}

/// The next event for a logged-in session; never, before the login.
async fn next_event(
    events: &mut Option<tokio::sync::MutexGuard<'_, mpsc::Receiver<Vec<u8>>>>,
) -> Option<Vec<u8>> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

enum Reply {
    Send(Vec<u8>),
    LoggedIn(Vec<u8>),
    Close(Vec<u8>),
}

/// One action, `Key: Value` pairs in order.
type Action = Vec<(String, String)>;

fn get<'a>(action: &'a Action, key: &str) -> Option<&'a str> {
    action
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// The answers the captures show Asterisk giving.
fn answer(action: &Action, shared: &Shared, peer: SocketAddr) -> Reply {
    let id = get(action, "ActionID").unwrap_or("");
    let name = get(action, "Action").unwrap_or("");
    let reply = |body: String| format!("Response: {body}\r\n\r\n").into_bytes();
    if name.eq_ignore_ascii_case("Challenge") {
        return Reply::Send(reply(format!(
            "Success\r\nActionID: {id}\r\nChallenge: {CHALLENGE}"
        )));
    }
    if name.eq_ignore_ascii_case("Login") {
        if !login_ok(action, shared) {
            // Asterisk closes the session after a failed login.
            return Reply::Close(reply(format!(
                "Error\r\nActionID: {id}\r\nMessage: Authentication failed"
            )));
        }
        let mut bytes = reply(format!(
            "Success\r\nActionID: {id}\r\nMessage: Authentication accepted"
        ));
        // Asterisk reports a `read = security` user's own login; astban's
        // client checks for it to tell that the permission is there.
        let now = event_time(jiff::Timestamp::now());
        bytes.extend_from_slice(
            format!(
                "Event: SuccessfulAuth\r\nPrivilege: security,all\r\nEventTV: {now}\r\n\
                 Severity: Informational\r\nService: AMI\r\nEventVersion: 1\r\n\
                 AccountID: {user}\r\nSessionID: 0x7fcb24001460\r\n\
                 LocalAddress: IPV4/TCP/127.0.0.1/5038\r\nRemoteAddress: IPV4/TCP/{ip}/{port}\r\n\
                 UsingPassword: 0\r\nSessionTV: {now}\r\n\r\n",
                user = shared.username,
                ip = peer.ip(),
                port = peer.port(),
            )
            .as_bytes(),
        );
        return Reply::LoggedIn(bytes);
    }
    if name.eq_ignore_ascii_case("Ping") {
        return Reply::Send(reply(format!(
            "Success\r\nActionID: {id}\r\nPing: Pong\r\nTimestamp: {}.000000",
            jiff::Timestamp::now().as_second()
        )));
    }
    if name.eq_ignore_ascii_case("Logoff") {
        return Reply::Close(reply(format!(
            "Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish."
        )));
    }
    Reply::Send(reply(format!(
        "Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command: {name}. Use Action: ListCommands to show available commands."
    )))
}

fn login_ok(login: &Action, shared: &Shared) -> bool {
    if get(login, "Username") != Some(shared.username.as_str()) {
        return false;
    }
    match get(login, "AuthType") {
        Some(auth) if auth.eq_ignore_ascii_case("MD5") => {
            let key = Md5::new()
                .chain_update(CHALLENGE)
                .chain_update(&shared.secret)
                .finalize();
            get(login, "Key") == Some(format!("{key:x}").as_str())
        }
        _ => get(login, "Secret") == Some(shared.secret.as_str()),
    }
}

/// The next complete action in `buf` (lines up to an empty line), taken
/// out of it.
fn take_action(buf: &mut Vec<u8>) -> Option<Action> {
    let end = memchr::memmem::find(buf, b"\r\n\r\n")?;
    let raw: Vec<u8> = buf.drain(..end + 4).collect();
    let text = String::from_utf8_lossy(&raw[..end]);
    Some(
        text.split("\r\n")
            .map(|line| match line.split_once(':') {
                Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
                None => (line.to_owned(), String::new()),
            })
            .collect(),
    )
}

/// `t` the way Asterisk writes `EventTV`: `2026-11-24T16:03:18.933+0000`.
pub fn event_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_read_back_as_the_same_millisecond() {
        let t = jiff::Timestamp::from_millisecond(1_795_536_253_408).unwrap();
        assert_eq!(event_time(t), "2026-11-24T16:04:13.408+0000");
        assert_eq!(event_time(t).parse::<jiff::Timestamp>().unwrap(), t);
    }

    #[test]
    fn actions_are_taken_one_at_a_time_and_split_reads_wait() {
        let mut buf = b"Action: Ping\r\nActionID: p1\r\n\r\nAction: Log".to_vec();
        let ping = take_action(&mut buf).unwrap();
        assert_eq!(get(&ping, "action"), Some("Ping"));
        assert_eq!(get(&ping, "ActionID"), Some("p1"));
        assert!(take_action(&mut buf).is_none());
        assert_eq!(buf, b"Action: Log");
    }
}

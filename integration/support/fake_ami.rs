//! A fake Asterisk Manager Interface over real TCP, for tests.
//!
//! It listens on 127.0.0.1:0, greets like Asterisk 20, answers Challenge,
//! Login, Ping and Logoff the way the captures show, and after a successful
//! login replays scripted bytes (usually a capture) for that connection.
//! Everything it sends goes out in random-sized chunks, so the client sees
//! messages split anywhere and several per read. It records every action
//! the client sent, and the test can drop all connections, stop answering
//! Pings, hold new connections before their banner, or send more events to
//! the logged-in connections whenever it likes ([`FakeAmi::push`]).
//!
//! Include it with `#[path = "support/fake_ami.rs"] mod fake_ami;`.

// Each test target uses a different part of this helper.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The greeting of the captured Asterisk 20.
pub const BANNER: &[u8] = b"Asterisk Call Manager/9.0.0\r\n";
/// The user, secret and MD5 challenge of ami-login-variants-dialogue.txt.
pub const USERNAME: &str = "astban";
pub const SECRET: &str = "astban-secret";
pub const CHALLENGE: &str = "119281354";
/// The Key the capture's client sent for that challenge and secret.
pub const CAPTURED_KEY: &str = "44aa94644d68d1150ec34febdd69fc93";

/// How long the waiting helpers wait before failing the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the server does on every connection.
#[derive(Debug, Clone)]
pub struct Script {
    /// The user it accepts; any other is refused.
    pub username: String,
    /// The secret it accepts (plain, or as the MD5 key).
    pub secret: String,
    /// Whether logins are refused whatever they carry.
    pub refuse_logins: bool,
    /// The MD5 challenge it hands out.
    pub challenge: String,
    /// Whether a login is followed by its own `SuccessfulAuth` security
    /// event, as Asterisk does for a user with `read = security`.
    pub announce_login: bool,
    /// Bytes sent right after a successful login, by connection number;
    /// connections past the end get nothing.
    pub after_login: Vec<Vec<u8>>,
    /// Largest chunk written at once.
    pub max_chunk: usize,
    /// Seed of the chunk sizes (printed, so a failure can be replayed).
    pub seed: u64,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            username: USERNAME.into(),
            secret: SECRET.into(),
            refuse_logins: false,
            announce_login: true,
            challenge: CHALLENGE.into(),
            after_login: Vec::new(),
            max_chunk: 97,
            seed: RandomState::new().hash_one("fake-ami"),
        }
    }
}

/// One action the client sent, fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub fields: Vec<(String, String)>,
}

impl Sent {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The action name.
    pub fn action(&self) -> &str {
        self.get("Action").unwrap_or("")
    }
}

/// A running fake AMI; stops (and closes every connection) when dropped.
pub struct FakeAmi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

struct Shared {
    script: Script,
    /// Actions received, per connection in accept order.
    sent: watch::Sender<Vec<Vec<Sent>>>,
    answer_pings: AtomicBool,
    /// While false, new connections wait before their banner.
    open: watch::Sender<bool>,
    /// Bumped to drop every live connection.
    kills: watch::Sender<u64>,
    accepted: AtomicUsize,
    /// Bytes pushed to the logged-in connections, in push order.
    pushed: watch::Sender<Vec<Vec<u8>>>,
}

impl FakeAmi {
    /// Starts listening on an unused loopback port.
    pub async fn start(script: Script) -> FakeAmi {
        eprintln!("fake AMI chunk seed: {}", script.seed);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            script,
            sent: watch::Sender::new(Vec::new()),
            answer_pings: AtomicBool::new(true),
            open: watch::Sender::new(true),
            kills: watch::Sender::new(0),
            accepted: AtomicUsize::new(0),
            pushed: watch::Sender::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, shared.clone(), stop.clone()));
        FakeAmi {
            addr,
            shared,
            _stop: stop.drop_guard(),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every live connection now.
    pub fn drop_connections(&self) {
        self.shared.kills.send_modify(|k| *k += 1);
    }

    /// Whether Pings get their Pong (they do at start).
    pub fn answer_pings(&self, answer: bool) {
        self.shared.answer_pings.store(answer, Ordering::SeqCst);
    }

    /// While held, new connections are accepted but get no banner.
    pub fn hold_new_connections(&self, hold: bool) {
        self.shared.open.send_replace(!hold);
    }

    /// Sends `bytes` (in random-sized chunks, like everything else) to
    /// every connection that is logged in now, after whatever it was sent
    /// before; a connection that logs in later does not get them. Like
    /// Asterisk, which sends each event to the sessions it has then.
    pub fn push(&self, bytes: Vec<u8>) {
        self.shared.pushed.send_modify(|p| p.push(bytes));
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Everything connection `index` (0-based) sent so far.
    pub fn sent(&self, index: usize) -> Vec<Sent> {
        self.shared
            .sent
            .borrow()
            .get(index)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until connection `index` has sent an action named `name`, and
    /// returns the first such action. Panics after [`WAIT`].
    pub async fn action(&self, index: usize, name: &str) -> Sent {
        self.nth_action(index, name, 0).await
    }

    /// Like [`FakeAmi::action`], for the `nth` (0-based) such action.
    pub async fn nth_action(&self, index: usize, name: &str, nth: usize) -> Sent {
        let nth_of = |conns: &[Vec<Sent>]| {
            conns
                .get(index)
                .and_then(|c| c.iter().filter(|s| s.action() == name).nth(nth).cloned())
        };
        let mut rx = self.shared.sent.subscribe();
        let found = tokio::time::timeout(WAIT, rx.wait_for(|conns| nth_of(conns).is_some()))
            .await
            .unwrap_or_else(|_| panic!("connection {index} sent no {name} #{nth} within {WAIT:?}"))
            .expect("fake AMI alive");
        nth_of(&found).expect("just matched")
    }
}

/// The events of a capture, without its banner and responses, so they can
/// follow the fake's own login response.
pub fn events_of(capture: &[u8]) -> Vec<u8> {
    let mut rest = capture.strip_prefix(BANNER).unwrap_or(capture);
    let mut events = Vec::new();
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let (message, tail) = rest.split_at(end + 4);
        if message.starts_with(b"Event: ") {
            events.extend_from_slice(message);
        }
        rest = tail;
    }
    events
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let index = shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.sent.send_modify(|conns| conns.push(Vec::new()));
        let kills = shared.kills.subscribe();
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut kills = kills;
            tokio::select! {
                () = stop.cancelled() => {}
                _ = kills.changed() => {}
                () = Connection::new(stream, shared, index).serve() => {}
            }
        });
    }
}

struct Connection {
    stream: TcpStream,
    shared: Arc<Shared>,
    index: usize,
    rng: u64,
    buf: Vec<u8>,
    /// Once logged in: how many pushes this connection has been sent.
    pushes_sent: Option<usize>,
}

impl Connection {
    fn new(stream: TcpStream, shared: Arc<Shared>, index: usize) -> Connection {
        let _ = stream.set_nodelay(true);
        let rng = shared.script.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Connection {
            stream,
            shared,
            index,
            rng,
            buf: Vec::new(),
            pushes_sent: None,
        }
    }

    async fn serve(mut self) {
        let mut open = self.shared.open.subscribe();
        if open.wait_for(|open| *open).await.is_err() {
            return;
        }
        if self.write(BANNER).await.is_err() {
            return;
        }
        let mut pushed = self.shared.pushed.subscribe();
        loop {
            while let Some(action) = self.take_action() {
                self.shared
                    .sent
                    .send_modify(|conns| conns[self.index].push(action.clone()));
                if !self.answer(&action).await {
                    return;
                }
            }
            if !self.pushes_delivered().await {
                return;
            }
            let mut chunk = [0u8; 4096];
            tokio::select! {
                read = self.stream.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                },
                changed = pushed.changed(), if self.pushes_sent.is_some() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Writes the pushes made since the last ones written, once logged in;
    /// false if the connection is gone.
    async fn pushes_delivered(&mut self) -> bool {
        let Some(sent) = self.pushes_sent else {
            return true;
        };
        let new: Vec<Vec<u8>> = self.shared.pushed.borrow()[sent..].to_vec();
        self.pushes_sent = Some(sent + new.len());
        for bytes in &new {
            if self.write(bytes).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Answers one action; false ends the connection.
    async fn answer(&mut self, action: &Sent) -> bool {
        let id = action.get("ActionID").unwrap_or("").to_owned();
        let script = &self.shared.script;
        let reply = match action.action() {
            "Challenge" => format!(
                "Response: Success\r\nActionID: {id}\r\nChallenge: {}\r\n\r\n",
                script.challenge
            ),
            "Login" => {
                if !self.login_ok(action) {
                    let refused = format!(
                        "Response: Error\r\nActionID: {id}\r\nMessage: Authentication failed\r\n\r\n"
                    );
                    // Asterisk closes the session after a failed login.
                    let _ = self.write(refused.as_bytes()).await;
                    return false;
                }
                let accepted = format!(
                    "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
                );
                let after = script
                    .after_login
                    .get(self.index)
                    .cloned()
                    .unwrap_or_default();
                // Pushes from now on are this session's.
                self.pushes_sent = Some(self.shared.pushed.borrow().len());
                let mut bytes = accepted.into_bytes();
                if script.announce_login {
                    bytes.extend_from_slice(
                        format!(
                            "Event: SuccessfulAuth\r\nPrivilege: security,all\r\n\
                             EventTV: 2026-11-24T16:03:17.503+0000\r\nSeverity: Informational\r\n\
                             Service: AMI\r\nEventVersion: 1\r\nAccountID: {}\r\n\
                             SessionID: 0x7fcb24001460\r\nLocalAddress: IPV4/TCP/127.0.0.1/5038\r\n\
                             RemoteAddress: IPV4/TCP/127.0.0.1/51464\r\nUsingPassword: 0\r\n\
                             SessionTV: 2026-11-24T16:03:17.503+0000\r\n\r\n",
                            script.username
                        )
                        .as_bytes(),
                    );
                }
                bytes.extend_from_slice(&after);
                return self.write(&bytes).await.is_ok();
            }
            "Ping" if !self.shared.answer_pings.load(Ordering::SeqCst) => return true,
            "Ping" => format!(
                "Response: Success\r\nActionID: {id}\r\nPing: Pong\r\nTimestamp: 1795536253.408408\r\n\r\n"
            ),
            "Logoff" => {
                let bye = format!(
                    "Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish.\r\n\r\n"
                );
                let _ = self.write(bye.as_bytes()).await;
                return false;
            }
            other => format!(
                "Response: Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command: {other}. Use Action: ListCommands to show available commands.\r\n\r\n"
            ),
        };
        self.write(reply.as_bytes()).await.is_ok()
    }

    fn login_ok(&self, login: &Sent) -> bool {
        let script = &self.shared.script;
        if script.refuse_logins || login.get("Username") != Some(script.username.as_str()) {
            return false;
        }
        match login.get("AuthType") {
            Some(auth) if auth.eq_ignore_ascii_case("MD5") => {
                let key = Md5::new()
                    .chain_update(&script.challenge)
                    .chain_update(&script.secret)
                    .finalize();
                login.get("Key") == Some(format!("{key:x}").as_str())
            }
            _ => login.get("Secret") == Some(script.secret.as_str()),
        }
    }

    /// The next complete action already read (lines up to an empty line).
    fn take_action(&mut self) -> Option<Sent> {
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
        let text = String::from_utf8_lossy(&raw[..end]);
        let fields = text
            .split("\r\n")
            .map(|line| match line.split_once(": ") {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (line.to_owned(), String::new()),
            })
            .collect();
        Some(Sent { fields })
    }

    /// Writes `bytes` in random-sized chunks, yielding between them so the
    /// client's reads split anywhere.
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let size = (self.next_random() as usize % self.shared.script.max_chunk.max(1)) + 1;
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            self.stream.write_all(chunk).await?;
            self.stream.flush().await?;
            tokio::task::yield_now().await;
            rest = tail;
        }
        Ok(())
    }

    /// splitmix64.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A fake AMI served from its own thread and runtime, so a test can block
/// on the CLI and on a daemon's output without starving it.
pub struct AmiThread {
    ami: Option<FakeAmi>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AmiThread {
    pub fn start(script: Script) -> AmiThread {
        let (ami_tx, ami_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                ami_tx
                    .send(FakeAmi::start(script).await)
                    .expect("hand over");
                let _ = stopped.await;
            });
        });
        AmiThread {
            ami: Some(ami_rx.recv().expect("fake AMI started")),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn ami(&self) -> &FakeAmi {
        self.ami.as_ref().expect("running")
    }
}

impl Drop for AmiThread {
    fn drop(&mut self) {
        drop(self.ami.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

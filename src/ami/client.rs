//! The AMI session: connect, log in, subscribe, keep alive, reconnect.
//!
//! [`run`] is the AMI input's task. Each session connects over TCP, reads
//! the banner, logs in (MD5 challenge or plain secret) subscribed to the
//! `security` event class only, then turns security events into reports
//! while a Ping every `ping_interval` proves the link alive. Whatever ends
//! a session is published as [`Health::Down`] and the next one starts after
//! a capped, jittered exponential backoff, forever, until shutdown.
//!
//! TLS (manager.conf `[general] tlsenable`) is not supported: AMI normally
//! listens on localhost next to astban, and plain TCP keeps this small.

use crate::ami::quote;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jiff::Timestamp;
use md5::{Digest, Md5};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{Action, AmiCodec, CodecError, Frame, Message, MessageKind};
use super::security::SecurityEvents;
use crate::config::{AmiAuth, AmiConfig};
use crate::failure::Report;
use crate::throttle::Throttle;

/// The AMI session's health, published on a `tokio::sync::watch` channel.
///
/// The input-mode fallback reads it: while AMI is not `Up`, failures from
/// the log count instead. A watch channel keeps only the latest value, so
/// each state also carries the edge of the one before it: a reader that
/// missed a transition can still tell exactly when AMI was blind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not connected yet since start.
    Connecting,
    /// Logged in and receiving security events since `since`.
    Up {
        /// When the login succeeded.
        since: Timestamp,
        /// When AMI went silent before this session (the last `Down`'s
        /// `since`); `None` for the first session.
        down_since: Option<Timestamp>,
        /// Sessions logged in since start, this one included (more than
        /// one: AMI reconnected).
        logins: u64,
    },
    /// The session is gone.
    Down {
        /// The last moment AMI was known to be delivering events (the last
        /// frame received), so a silent death is covered from when it
        /// really began, not from when the Ping timed out.
        since: Timestamp,
        /// When the session that ended had logged in; `None` if it never
        /// did (refused connection or login).
        up_since: Option<Timestamp>,
        /// Why, for humans (`connection refused`, `login refused: ...`).
        reason: String,
        /// Sessions logged in since start.
        logins: u64,
    },
}

/// Shortest wait between two connection attempts, whatever the config, so
/// a zero `reconnect_min` cannot spin.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(10);

/// How often a skipped security event is logged at `warn`; the rest of a
/// flood goes to `debug`.
const SKIP_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Most events kept from before the login response (Asterisk sends none
/// before it; this only bounds a misbehaving peer).
const EARLY_EVENTS_MAX: usize = 64;

/// Why a session ended. Its `Display` is the `reason` of [`Health::Down`],
/// so it must say what to fix and never contain the secret.
#[derive(Debug, thiserror::Error)]
#[error("AMI at {manager}: {failure}")]
struct SessionError {
    /// `host:port`.
    manager: String,
    failure: Failure,
}

/// What went wrong with a session; [`SessionError`] adds which manager.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The TCP connection could not be made.
    #[error(
        "cannot connect: {0} (is Asterisk running, and are ami.host/ami.port its manager.conf bindaddr/port?)"
    )]
    Connect(std::io::Error),
    /// Connecting, the banner or the login took longer than allowed.
    #[error("connect and login did not complete within {0:?} (ami.connect_timeout)")]
    LoginTimeout(Duration),
    /// Asterisk answered the login (or the MD5 challenge) with an error.
    #[error(
        "login as {username:?} refused: {message:?}. Check manager.conf on the Asterisk host: \
         a [{username}] section must exist, its `secret` must match ami.secret (or ami.secret_file), \
         it needs `read = security` (or `read = all`), and its permit/deny must allow this host"
    )]
    LoginRefused {
        /// The manager.conf section astban logs in as.
        username: String,
        /// Asterisk's `Message:` (`Authentication failed`).
        message: String,
    },
    /// The MD5 challenge response did not carry a usable challenge.
    #[error("the MD5 challenge came without a Challenge value; try ami.auth = \"plain\"")]
    NoChallenge,
    /// Logged in, but Asterisk never announced astban's own login as a
    /// security event: the user cannot read the `security` class.
    #[error(
        "logged in as {0:?}, but Asterisk did not send this login's own SuccessfulAuth security event: \
         the [{0}] section of manager.conf lacks `read = security` (or `read = all`), so AMI shows no attacks; \
         treating AMI as down so that the log counts meanwhile"
    )]
    NoSecurityEvents(String),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// A Ping got no Pong in time, or could not even be sent.
    #[error("no Pong within {0:?} of a Ping (ami.ping_timeout); the link is dead")]
    PingTimeout(Duration),
    /// Reading or decoding failed (including an oversized message).
    #[error(transparent)]
    Codec(CodecError),
}

/// Runs the AMI input until `shutdown`: keeps a session up, reconnecting
/// forever, sends a [`Report`] per counted security event and publishes
/// the session's [`Health`]. Errors are logged and reflected in `health`;
/// it returns only on shutdown or when `reports` is closed.
pub async fn run(
    config: AmiConfig,
    reports: mpsc::Sender<Report>,
    health: watch::Sender<Health>,
    shutdown: CancellationToken,
) {
    let mut input = Input {
        manager: format!("{}:{}", config.host, config.port),
        security: SecurityEvents::new(&config.events),
        reports,
        health,
        last_frame: Timestamp::now(),
        session_up: None,
        last_down: None,
        logins: 0,
        skips: Throttle::new(SKIP_WARN_INTERVAL),
        next_action_id: 0,
        config,
    };
    let mut backoff = Backoff::new(input.config.reconnect_min, input.config.reconnect_max);
    loop {
        let ended = tokio::select! {
            () = shutdown.cancelled() => return,
            ended = input.session(&mut backoff) => ended,
        };
        let error = match ended {
            Ended::ReportsClosed => {
                debug!("AMI input stops: nobody receives its reports");
                return;
            }
            Ended::Failed(error) => error,
        };
        let delay = backoff.next_delay();
        warn!("AMI session down: {error}; reconnecting in {delay:.1?}");
        let down = Health::Down {
            since: input.last_frame,
            up_since: input.session_up.take(),
            reason: error.to_string(),
            logins: input.logins,
        };
        if let Health::Down { since, .. } = &down {
            input.last_down = Some(*since);
        }
        input.publish(down);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep(delay) => {}
        }
    }
}

/// How a session ended, short of shutdown.
enum Ended {
    Failed(SessionError),
    ReportsClosed,
}

impl From<SessionError> for Ended {
    fn from(error: SessionError) -> Ended {
        Ended::Failed(error)
    }
}

type Connection = Framed<TcpStream, AmiCodec>;

/// The AMI input's state that outlives a session.
struct Input {
    config: AmiConfig,
    /// `host:port`, for messages.
    manager: String,
    security: SecurityEvents,
    reports: mpsc::Sender<Report>,
    health: watch::Sender<Health>,
    /// When the last frame arrived, on any session.
    last_frame: Timestamp,
    /// When the current session logged in, if it did.
    session_up: Option<Timestamp>,
    /// The `since` of the last `Down` published.
    last_down: Option<Timestamp>,
    /// Sessions logged in since start.
    logins: u64,
    skips: Throttle,
    next_action_id: u64,
}

impl Input {
    /// One session, from connect to whatever ends it.
    async fn session(&mut self, backoff: &mut Backoff) -> Ended {
        let limit = self.config.connect_timeout;
        let (mut conn, early) = match timeout(limit, self.connect_and_login()).await {
            Ok(Ok(logged_in)) => logged_in,
            Ok(Err(error)) => return error.into(),
            Err(_) => {
                return self.failed(Failure::LoginTimeout(limit)).into();
            }
        };
        backoff.reset();
        info!(
            "AMI session up: logged in to {} as {:?}, subscribed to security events",
            self.manager, self.config.username
        );
        let since = Timestamp::now();
        self.session_up = Some(since);
        self.logins += 1;
        self.publish(Health::Up {
            since,
            down_since: self.last_down,
            logins: self.logins,
        });
        self.serve(&mut conn, early).await
    }

    /// Connects, reads the banner and logs in. Returns the connection and
    /// any events that arrived before the login response.
    async fn connect_and_login(&mut self) -> Result<(Connection, Vec<Message>), SessionError> {
        let stream = TcpStream::connect((self.config.host.as_str(), self.config.port))
            .await
            .map_err(|e| self.failed(Failure::Connect(e)))?;
        let mut conn = Framed::new(stream, AmiCodec::new(self.config.max_message_size));
        match self.next_frame(&mut conn).await? {
            Frame::Banner(banner) => {
                debug!("AMI at {} speaks version {}", self.manager, banner.version)
            }
            // The codec yields the banner first or fails.
            Frame::Message(_) => return Err(self.closed()),
        }
        let mut early = Vec::new();
        let key = match self.config.auth {
            AmiAuth::Plain => None,
            AmiAuth::Md5 => Some(self.md5_key(&mut conn, &mut early).await?),
        };
        let login =
            Action::new("Login", &self.action_id()).field("Username", self.config.username.clone());
        let login = match key {
            None => login.field("Secret", self.config.secret.expose()),
            Some(key) => login.field("AuthType", "MD5").field("Key", key),
        };
        self.request(&mut conn, &login.field("Events", "security"), &mut early)
            .await?;
        Ok((conn, early))
    }

    /// Asks for an MD5 challenge and answers it: md5hex(challenge + secret),
    /// so the secret itself never crosses the wire.
    async fn md5_key(
        &mut self,
        conn: &mut Connection,
        early: &mut Vec<Message>,
    ) -> Result<String, SessionError> {
        let challenge = Action::new("Challenge", &self.action_id()).field("AuthType", "MD5");
        let response = self.request(conn, &challenge, early).await?;
        let challenge = response
            .get("Challenge")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| self.failed(Failure::NoChallenge))?;
        Ok(challenge_key(
            challenge,
            self.config.secret.expose().as_bytes(),
        ))
    }

    /// Sends `action` and waits for its successful response. Events that
    /// arrive meanwhile are kept in `early`, at most [`EARLY_EVENTS_MAX`] of
    /// them, so a peer that floods instead of answering cannot grow memory.
    async fn request(
        &mut self,
        conn: &mut Connection,
        action: &Action,
        early: &mut Vec<Message>,
    ) -> Result<Message, SessionError> {
        conn.send(action).await.map_err(|e| self.codec_error(e))?;
        loop {
            let Frame::Message(message) = self.next_frame(conn).await? else {
                continue;
            };
            match message.kind() {
                MessageKind::Response { status, action_id }
                    if action_id == Some(action.action_id().as_bytes()) =>
                {
                    if status.eq_ignore_ascii_case(b"Success") {
                        return Ok(message);
                    }
                    return Err(self.failed(Failure::LoginRefused {
                        username: self.config.username.clone(),
                        message: quote(message.get("Message").unwrap_or(status)),
                    }));
                }
                MessageKind::Event { .. } if early.len() < EARLY_EVENTS_MAX => early.push(message),
                _ => {}
            }
        }
    }

    /// The logged-in session: events to reports, Ping/Pong, until it dies.
    async fn serve(&mut self, conn: &mut Connection, early: Vec<Message>) -> Ended {
        let mut keepalive = Keepalive::default();
        for message in early {
            if let Some(ended) = self.handle(message, &mut keepalive).await {
                return ended;
            }
        }
        let ping_timeout = self.config.ping_timeout;
        let mut ticks = tokio::time::interval_at(
            Instant::now() + self.config.ping_interval,
            self.config.ping_interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pong_deadline = sleep(ping_timeout);
        tokio::pin!(pong_deadline);
        loop {
            // Frames first: a Pong already buffered must beat its deadline,
            // and while frames keep coming the link is evidently alive.
            tokio::select! {
                biased;
                frame = self.next_frame(conn) => match frame {
                    Ok(Frame::Message(message)) => {
                        if let Some(ended) = self.handle(message, &mut keepalive).await {
                            return ended;
                        }
                    }
                    // The codec yields the banner only first.
                    Ok(Frame::Banner(_)) => {}
                    Err(error) => return error.into(),
                },
                _ = ticks.tick(), if keepalive.pending.is_none() => {
                    let id = self.action_id();
                    let sent = timeout(ping_timeout, conn.send(&Action::new("Ping", &id))).await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => return self.codec_error(error).into(),
                        Err(_) => return self.ping_timeout().into(),
                    }
                    keepalive.pending = Some(id);
                    pong_deadline.as_mut().reset(Instant::now() + ping_timeout);
                }
                () = &mut pong_deadline, if keepalive.pending.is_some() => {
                    return self.ping_timeout().into();
                }
            }
        }
    }

    /// Consumes one message: a Pong clears the pending Ping, a security
    /// event may become a report, everything else is dropped.
    async fn handle(&mut self, message: Message, keepalive: &mut Keepalive) -> Option<Ended> {
        match message.kind() {
            MessageKind::Response { action_id, .. } => {
                if action_id.is_some()
                    && action_id == keepalive.pending.as_deref().map(str::as_bytes)
                {
                    keepalive.pending = None;
                    if !keepalive.checked_read_permission {
                        keepalive.checked_read_permission = true;
                        if !keepalive.saw_own_login {
                            let username = self.config.username.clone();
                            return Some(self.failed(Failure::NoSecurityEvents(username)).into());
                        }
                    }
                }
                None
            }
            MessageKind::Event { name } => {
                if name == b"SuccessfulAuth" && self.is_own_login(&message) {
                    keepalive.saw_own_login = true;
                }
                match self.security.interpret(&message, Timestamp::now()) {
                    Ok(Some(report)) => self
                        .reports
                        .send(report)
                        .await
                        .err()
                        .map(|_| Ended::ReportsClosed),
                    Ok(None) => None,
                    Err(skip) => {
                        self.skips.log(skip);
                        None
                    }
                }
            }
            MessageKind::Other => None,
        }
    }

    /// Whether a `SuccessfulAuth` is Asterisk reporting astban's own login.
    fn is_own_login(&self, message: &Message) -> bool {
        message.get("Service") == Some(b"AMI")
            && message.get("AccountID") == Some(self.config.username.as_bytes())
    }

    async fn next_frame(&mut self, conn: &mut Connection) -> Result<Frame, SessionError> {
        match conn.next().await {
            Some(Ok(frame)) => {
                self.last_frame = Timestamp::now();
                Ok(frame)
            }
            Some(Err(error)) => Err(self.codec_error(error)),
            None => Err(self.closed()),
        }
    }

    fn publish(&self, new: Health) {
        self.health.send_if_modified(|health| {
            let changed = *health != new;
            *health = new;
            changed
        });
    }

    fn action_id(&mut self) -> String {
        self.next_action_id += 1;
        format!("astban-{}", self.next_action_id)
    }

    /// `failure`, on this input's manager.
    fn failed(&self, failure: Failure) -> SessionError {
        SessionError {
            manager: self.manager.clone(),
            failure,
        }
    }

    fn codec_error(&self, source: CodecError) -> SessionError {
        match source {
            CodecError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => self.closed(),
            source => self.failed(Failure::Codec(source)),
        }
    }

    fn closed(&self) -> SessionError {
        self.failed(Failure::Closed)
    }

    fn ping_timeout(&self) -> SessionError {
        self.failed(Failure::PingTimeout(self.config.ping_timeout))
    }
}

/// Per-session keepalive and permission-check state.
#[derive(Default)]
struct Keepalive {
    /// The ActionID of the Ping awaiting its Pong.
    pending: Option<String>,
    /// Whether Asterisk reported astban's own login as a security event.
    saw_own_login: bool,
    /// Whether the read-permission check has been made this session.
    checked_read_permission: bool,
}

/// The `Key` of an MD5 login: md5hex(challenge + secret).
fn challenge_key(challenge: &[u8], secret: &[u8]) -> String {
    let key = Md5::new()
        .chain_update(challenge)
        .chain_update(secret)
        .finalize();
    format!("{key:x}")
}

/// Capped exponential backoff with jitter: each delay is drawn from the
/// upper half of the current step, so many astbans restarting together do
/// not reconnect in lockstep.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    jitter: RandomState,
    draws: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(MIN_RECONNECT_DELAY);
        Backoff {
            min,
            max: max.max(min),
            step: min,
            jitter: RandomState::new(),
            draws: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        self.draws += 1;
        let unit = self.jitter.hash_one(self.draws) as f64 / u64::MAX as f64;
        let delay = self.step.mul_f64(0.5 + 0.5 * unit);
        self.step = self.step.saturating_mul(2).min(self.max);
        delay.max(MIN_RECONNECT_DELAY)
    }

    fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let mut backoff = Backoff::new(min, max);
        let mut step = min;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} not in upper half of {step:?}"
            );
            step = (step * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }

    #[test]
    fn a_zero_backoff_cannot_spin() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(backoff.next_delay() >= MIN_RECONNECT_DELAY);
    }

    #[test]
    fn refused_login_names_the_settings_to_check() {
        let msg = SessionError {
            manager: "127.0.0.1:5038".into(),
            failure: Failure::LoginRefused {
                username: "astban".into(),
                message: "Authentication failed".into(),
            },
        }
        .to_string();
        for needle in [
            "manager.conf",
            "[astban]",
            "secret",
            "read = security",
            "permit/deny",
            "127.0.0.1:5038",
        ] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
    }

    #[test]
    fn md5_key_matches_the_capture() {
        // From ami-login-variants-dialogue.txt: challenge 119281354, secret
        // astban-secret, Key 44aa94644d68d1150ec34febdd69fc93.
        assert_eq!(
            challenge_key(b"119281354", b"astban-secret"),
            "44aa94644d68d1150ec34febdd69fc93"
        );
    }
}

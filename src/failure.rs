//! The one fact that flows through astban: "host H failed to authenticate".
//!
//! Both inputs (AMI and the log) produce [`Failure`]s and only the engine
//! consumes them. Everything here is plain data: no parsing, no policy.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Longest attacker-supplied text (account name, session id) kept per
/// failure. Attackers choose these strings, so they are bounded to keep a
/// flood of huge usernames from costing memory in the engine and in mail.
pub const MAX_ATTACKER_TEXT: usize = 64;

/// One authentication failure, as seen by one input.
///
/// Only `host` decides who is banned, and it always comes from a field that
/// Asterisk itself writes (AMI's `RemoteAddress`, or an anchored `<HOST>`
/// in a log rule). `account` and `session` are attacker-controlled and are
/// kept for humans (logs, mail) only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The address the attempt came from.
    pub host: IpAddr,
    /// What went wrong.
    pub kind: FailureKind,
    /// Which Asterisk service was attacked.
    pub service: Service,
    /// The account the attacker tried, if Asterisk reported one.
    pub account: Option<AttackerText>,
    /// Whether Asterisk matched `account` to a configured endpoint, peer
    /// or manager user before the failure, so the name is the config's,
    /// not the attacker's (PJSIP's `ChallengeResponseFailed` for an
    /// endpoint it found; never `InvalidAccountID`, whose AccountID is
    /// whatever the attacker wrote). Set by the input from the event's
    /// meaning, never guessed from the text; only matched accounts are
    /// counted per account (see `jail.account_maxretry`).
    pub account_matched: bool,
    /// Asterisk's session id for the attempt (AMI `SessionID`), if any.
    pub session: Option<AttackerText>,
    /// When Asterisk saw the attempt (AMI `EventTV`, or the log timestamp).
    pub time: Timestamp,
    /// Which input reported it; only the input-mode fallback looks at this.
    pub source: Source,
}

/// What an input tells the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A failed attempt.
    Failure(Failure),
    /// A successful login: the host knows a password, so with
    /// `reset_on_success` its failure count starts over (an office behind
    /// one NAT address with one misconfigured phone is not an attacker).
    Success(Success),
}

/// A successful authentication (AMI `SuccessfulAuth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    /// The address that logged in.
    pub host: IpAddr,
    /// Asterisk checked a password (`UsingPassword: 1`): only then does the
    /// success make the host a known site (`jail.known_host_window`). A
    /// chan_sip peer without a secret succeeds with `UsingPassword: 0`,
    /// which anyone can.
    pub password: bool,
    /// Which service it logged in to.
    pub service: Service,
    /// When Asterisk saw it.
    pub time: Timestamp,
    /// Which input reported it.
    pub source: Source,
}

impl Failure {
    /// The account, if Asterisk matched it to a configured one.
    pub fn matched_account(&self) -> Option<&AttackerText> {
        self.account.as_ref().filter(|_| self.account_matched)
    }
}

impl Report {
    /// The address the report is about.
    pub fn host(&self) -> IpAddr {
        match self {
            Report::Failure(f) => f.host,
            Report::Success(s) => s.host,
        }
    }

    /// Which input produced the report.
    pub fn source(&self) -> Source {
        match self {
            Report::Failure(f) => f.source,
            Report::Success(s) => s.source,
        }
    }

    /// When Asterisk saw it.
    pub fn time(&self) -> Timestamp {
        match self {
            Report::Failure(f) => f.time,
            Report::Success(s) => s.time,
        }
    }
}

/// Which input produced a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The AMI security event stream.
    Ami,
    /// The `messages` log.
    Log,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Ami => "ami",
            Source::Log => "log",
        })
    }
}

/// What kind of failure an attempt was.
///
/// The variants follow Asterisk's `security_events.h` so that AMI events
/// map one to one; log rules name one of these too. `ChallengeSent` and
/// `SuccessfulAuth` are deliberately absent: they are normal traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum FailureKind {
    /// `FailedACL`: the address is not allowed by an ACL.
    FailedAcl,
    /// `InvalidAccountID`: no such account.
    InvalidAccountId,
    /// `SessionLimit`: too many sessions.
    SessionLimit,
    /// `MemoryLimit`: a memory limit was reached for the session.
    MemoryLimit,
    /// `LoadAverageLimit`: refused because of load.
    LoadAverageLimit,
    /// `RequestNotSupported`.
    RequestNotSupported,
    /// `RequestNotAllowed`.
    RequestNotAllowed,
    /// `AuthMethodNotAllowed`.
    AuthMethodNotAllowed,
    /// `RequestBadFormat`.
    RequestBadFormat,
    /// `UnexpectedAddress`: a known session from an unexpected address.
    UnexpectedAddress,
    /// `ChallengeResponseFailed`: a wrong answer to an auth challenge.
    ChallengeResponseFailed,
    /// `InvalidPassword`: wrong password (chan_sip also reports unknown
    /// users this way when `alwaysauthreject = yes`).
    InvalidPassword,
    /// `InvalidTransport`.
    InvalidTransport,
    /// A call to an extension that does not exist (log only: dial-plan
    /// scanning, "rejected because extension not found").
    ExtensionNotFound,
    /// Asterisk flagged the request as hostile (log only: "hacking attempt
    /// detected", "Rejecting unknown SIP connection").
    Suspicious,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 15] = [
        FailureKind::FailedAcl,
        FailureKind::InvalidAccountId,
        FailureKind::SessionLimit,
        FailureKind::MemoryLimit,
        FailureKind::LoadAverageLimit,
        FailureKind::RequestNotSupported,
        FailureKind::RequestNotAllowed,
        FailureKind::AuthMethodNotAllowed,
        FailureKind::RequestBadFormat,
        FailureKind::UnexpectedAddress,
        FailureKind::ChallengeResponseFailed,
        FailureKind::InvalidPassword,
        FailureKind::InvalidTransport,
        FailureKind::ExtensionNotFound,
        FailureKind::Suspicious,
    ];

    /// The name astban uses in config, rules and JSON (`invalid_password`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::FailedAcl => "failed_acl",
            FailureKind::InvalidAccountId => "invalid_account_id",
            FailureKind::SessionLimit => "session_limit",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::LoadAverageLimit => "load_average_limit",
            FailureKind::RequestNotSupported => "request_not_supported",
            FailureKind::RequestNotAllowed => "request_not_allowed",
            FailureKind::AuthMethodNotAllowed => "auth_method_not_allowed",
            FailureKind::RequestBadFormat => "request_bad_format",
            FailureKind::UnexpectedAddress => "unexpected_address",
            FailureKind::ChallengeResponseFailed => "challenge_response_failed",
            FailureKind::InvalidPassword => "invalid_password",
            FailureKind::InvalidTransport => "invalid_transport",
            FailureKind::ExtensionNotFound => "extension_not_found",
            FailureKind::Suspicious => "suspicious",
        }
    }

    /// The AMI / res_security_log event name (`InvalidPassword`), for the
    /// kinds Asterisk reports as security events.
    pub fn event_name(self) -> Option<&'static str> {
        Some(match self {
            FailureKind::FailedAcl => "FailedACL",
            FailureKind::InvalidAccountId => "InvalidAccountID",
            FailureKind::SessionLimit => "SessionLimit",
            FailureKind::MemoryLimit => "MemoryLimit",
            FailureKind::LoadAverageLimit => "LoadAverageLimit",
            FailureKind::RequestNotSupported => "RequestNotSupported",
            FailureKind::RequestNotAllowed => "RequestNotAllowed",
            FailureKind::AuthMethodNotAllowed => "AuthMethodNotAllowed",
            FailureKind::RequestBadFormat => "RequestBadFormat",
            FailureKind::UnexpectedAddress => "UnexpectedAddress",
            FailureKind::ChallengeResponseFailed => "ChallengeResponseFailed",
            FailureKind::InvalidPassword => "InvalidPassword",
            FailureKind::InvalidTransport => "InvalidTransport",
            FailureKind::ExtensionNotFound | FailureKind::Suspicious => return None,
        })
    }

    /// The kind for a security event name, or `None` for events that are
    /// not failures (`ChallengeSent`, `SuccessfulAuth`) or unknown ones.
    pub fn from_event_name(name: &str) -> Option<FailureKind> {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.event_name() == Some(name))
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is neither a kind's snake_case name nor its event name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown failure kind {0:?} (one of invalid_password, failed_acl, invalid_account_id, challenge_response_failed, ...; or the event name, e.g. InvalidPassword)"
)]
pub struct UnknownKind(pub String);

impl TryFrom<String> for FailureKind {
    type Error = UnknownKind;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for FailureKind {
    type Err = UnknownKind;

    /// Accepts both `invalid_password` and `InvalidPassword`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .or_else(|| FailureKind::from_event_name(s))
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// A set of items with a bit each, kept in one integer: a ban's failure
/// kinds and services (100,000 bans, two small sets each). Serialised as
/// the list of its items, in declaration order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BitSet<T: Flag> {
    bits: u32,
    _of: std::marker::PhantomData<T>,
}

/// Something a [`BitSet`] can hold.
pub trait Flag: Copy + Eq + 'static {
    /// Every value, in order; at most 32.
    const ALL: &'static [Self];
    /// Its position in [`Flag::ALL`]: a fieldless enum's discriminant, so
    /// that a set costs one shift per insert or lookup (it runs per AMI
    /// event and per report), not a search.
    fn index(self) -> u32;
}

impl Flag for FailureKind {
    const ALL: &'static [FailureKind] = &FailureKind::ALL;
    fn index(self) -> u32 {
        self as u32
    }
}

const _: () = assert!(FailureKind::ALL.len() <= 32, "a KindSet holds 32 kinds");

impl Flag for Service {
    const ALL: &'static [Service] = &[
        Service::Sip,
        Service::Pjsip,
        Service::Iax2,
        Service::Ami,
        Service::Other,
    ];
    fn index(self) -> u32 {
        self as u32
    }
}

/// The failure kinds of a ban.
pub type KindSet = BitSet<FailureKind>;
/// The services of a ban.
pub type ServiceSet = BitSet<Service>;

impl<T: Flag> BitSet<T> {
    fn bit(item: T) -> u32 {
        1 << item.index()
    }

    /// Adds `item`.
    pub fn insert(&mut self, item: T) {
        self.bits |= Self::bit(item);
    }

    /// Whether `item` is in.
    pub fn contains(&self, item: T) -> bool {
        self.bits & Self::bit(item) != 0
    }

    /// The items, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        T::ALL.iter().copied().filter(|&x| self.contains(x))
    }
}

impl<T: Flag> Default for BitSet<T> {
    fn default() -> Self {
        BitSet {
            bits: 0,
            _of: std::marker::PhantomData,
        }
    }
}

impl<T: Flag> FromIterator<T> for BitSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut set = BitSet::default();
        items.into_iter().for_each(|item| set.insert(item));
        set
    }
}

impl<T: Flag + fmt::Debug> fmt::Debug for BitSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Flag + Serialize> Serialize for BitSet<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de, T: Flag + Deserialize<'de>> Deserialize<'de> for BitSet<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<T>::deserialize(d)?.into_iter().collect())
    }
}

/// The Asterisk service an attempt targeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// chan_sip.
    Sip,
    /// res_pjsip.
    Pjsip,
    /// chan_iax2.
    Iax2,
    /// The Manager Interface.
    Ami,
    /// Anything else Asterisk names in `Service:`.
    Other,
}

impl Service {
    /// Maps AMI's `Service:` value; unknown services are kept as `Other`
    /// rather than rejected, since the failure still counts.
    pub fn from_ami(name: &str) -> Service {
        match name {
            "SIP" => Service::Sip,
            "PJSIP" => Service::Pjsip,
            "IAX2" => Service::Iax2,
            "AMI" => Service::Ami,
            _ => Service::Other,
        }
    }

    /// The lowercase name used in logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Sip => "sip",
            Service::Pjsip => "pjsip",
            Service::Iax2 => "iax2",
            Service::Ami => "ami",
            Service::Other => "other",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text chosen by an attacker (an account name, a session id), made safe to
/// store and print: at most [`MAX_ATTACKER_TEXT`] bytes, control characters
/// replaced, so it can neither blow up memory nor forge log lines.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AttackerText(Box<str>);

/// Read back (a state file, the control socket) through
/// [`AttackerText::new`], so that the type's promise holds whatever the
/// bytes on disk say.
impl<'de> Deserialize<'de> for AttackerText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|raw| AttackerText::new(&raw))
    }
}

impl AttackerText {
    /// Sanitises `raw`: control characters become `?`, and the result is
    /// cut at a character boundary so it fits [`MAX_ATTACKER_TEXT`] bytes.
    pub fn new(raw: &str) -> AttackerText {
        AttackerText(sanitize(raw, MAX_ATTACKER_TEXT).into_boxed_str())
    }

    /// Like [`AttackerText::new`], for bytes that may not be UTF-8.
    pub fn from_bytes(raw: &[u8]) -> AttackerText {
        AttackerText(quote(raw, MAX_ATTACKER_TEXT).into_boxed_str())
    }

    /// The sanitised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `raw` made safe to print: unsafe characters (see [`is_unsafe`]) become
/// `?`, and it is cut at a character boundary to at most `max` bytes.
pub fn sanitize(raw: &str, max: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max));
    for c in raw.chars() {
        let c = if is_unsafe(c) { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Bytes from the network or a file, made safe to quote in a message:
/// lossy UTF-8, then [`sanitize`]d to at most `max` bytes.
pub fn quote(raw: &[u8], max: usize) -> String {
    sanitize(&String::from_utf8_lossy(&raw[..raw.len().min(max)]), max)
}

/// Characters that could forge or disguise a line in a log, a terminal or
/// a mail: control characters, line and paragraph separators, and the
/// bidirectional overrides that reorder how text is shown.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

impl fmt::Debug for AttackerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AttackerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_sits_at_its_own_bit() {
        fn check<T: super::Flag + std::fmt::Debug>() {
            for (i, &item) in T::ALL.iter().enumerate() {
                assert_eq!(item.index() as usize, i, "{item:?}");
                let set: super::BitSet<T> = [item].into_iter().collect();
                assert_eq!(set.iter().collect::<Vec<_>>(), [item]);
            }
        }
        check::<super::FailureKind>();
        check::<super::Service>();
    }

    use super::*;

    #[test]
    fn kinds_round_trip_through_both_names() {
        for kind in FailureKind::ALL {
            assert_eq!(kind.as_str().parse::<FailureKind>(), Ok(kind));
            if let Some(event) = kind.event_name() {
                assert_eq!(FailureKind::from_event_name(event), Some(kind));
                assert_eq!(event.parse::<FailureKind>(), Ok(kind));
            }
        }
    }

    #[test]
    fn config_and_rules_take_either_name() {
        let kinds: Vec<FailureKind> =
            serde_json::from_str(r#"["invalid_password", "FailedACL"]"#).expect("both forms");
        assert_eq!(
            kinds,
            [FailureKind::InvalidPassword, FailureKind::FailedAcl]
        );
        assert_eq!(
            serde_json::to_string(&FailureKind::FailedAcl).expect("json"),
            r#""failed_acl""#
        );
        assert!(serde_json::from_str::<FailureKind>(r#""Bogus""#).is_err());
    }

    #[test]
    fn normal_traffic_is_not_a_failure() {
        assert_eq!(FailureKind::from_event_name("ChallengeSent"), None);
        assert_eq!(FailureKind::from_event_name("SuccessfulAuth"), None);
        assert!("nonsense".parse::<FailureKind>().is_err());
    }

    #[test]
    fn attacker_text_is_bounded_and_cannot_forge_lines() {
        let t = AttackerText::new("evil\n[2026-11-24 13:04:07] NOTICE fake");
        assert!(!t.as_str().contains('\n'));
        assert!(t.as_str().starts_with("evil?[2026"));

        let t = AttackerText::new("admin\u{202E}nimda\u{2028}x");
        assert_eq!(t.as_str(), "admin?nimda?x");

        let long = "é".repeat(100);
        let t = AttackerText::new(&long);
        assert!(t.as_str().len() <= MAX_ATTACKER_TEXT);
        assert_eq!(t.as_str().chars().count(), MAX_ATTACKER_TEXT / 2);
    }
}

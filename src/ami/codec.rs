//! The AMI wire format: a banner line, then messages of `Key: Value` lines
//! ended by an empty line. Pure: bytes in, frames out, no sockets.
//!
//! [`AmiCodec`] finds frame boundaries incrementally (it remembers how far
//! it scanned, so a message trickling in byte by byte costs linear time) and
//! hands each complete frame to the nom parsers below. A [`Message`] keeps
//! the frame's frozen bytes and the byte ranges of its keys and values, so
//! decoding allocates one small vector per message and copies nothing.
//!
//! # Line ends and injected lines
//!
//! Asterisk ends every line with `\r\n`; bare `\n` is tolerated as a line
//! end. Which one ends a *message* is learnt from the banner: after a
//! `\r\n` banner only `\r\n\r\n` ends a message. An attacker who plants
//! `\n\n` in a SIP username therefore cannot split one event into two and
//! forge a whole event of its own; whatever lines it plants stay inside the
//! real event, where a second `RemoteAddress` makes the host ambiguous
//! (see [`super::security`]).

use crate::ami::quote;
use std::fmt;

use memchr::memmem;
use nom::bytes::complete::{tag, take_till, take_while, take_while1};
use nom::combinator::{opt, rest};
use nom::sequence::{preceded, terminated};
use nom::{IResult, Offset, Parser};
use tokio_util::bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Why the byte stream cannot be decoded (the connection must be closed).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A message (or the banner) grew past the configured bound.
    #[error(
        "AMI message larger than {limit} bytes (ami.max_message_size); closing the connection instead of buffering it"
    )]
    TooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// The peer did not greet like Asterisk's Manager Interface.
    #[error(
        "the peer is not an Asterisk Manager Interface: expected the banner \"Asterisk Call Manager/<version>\", got {got:?} (check ami.host and ami.port)"
    )]
    NotAmi {
        /// The start of what the peer sent, sanitised.
        got: String,
    },
    /// An action field would break the line-based protocol.
    #[error(
        "AMI action field {key} contains a line break, which would inject a field (check the config value it comes from)"
    )]
    LineBreak {
        /// The offending key.
        key: &'static str,
    },
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What the decoder yields.
#[derive(Debug, Clone)]
pub enum Frame {
    /// The greeting line, always the first frame of a connection.
    Banner(Banner),
    /// A response, an event, or anything else made of `Key: Value` lines.
    Message(Message),
}

/// The greeting `Asterisk Call Manager/9.0.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    /// The AMI protocol version (`9.0.0`), not Asterisk's own version.
    pub version: String,
    crlf: bool,
}

/// Parses the banner line, including its line end.
pub fn parse_banner(line: &[u8]) -> Result<Banner, CodecError> {
    match banner_line(line) {
        Ok(([], (version, crlf))) => Ok(Banner {
            // Digits and dots only, so this is ASCII.
            version: String::from_utf8_lossy(version).into_owned(),
            crlf,
        }),
        _ => Err(CodecError::NotAmi { got: quote(line) }),
    }
}

/// `Asterisk Call Manager/<version>` and its line end: the version, and
/// whether the line ends with `\r\n`.
fn banner_line(input: &[u8]) -> IResult<&[u8], (&[u8], bool)> {
    (
        preceded(
            tag(&b"Asterisk Call Manager/"[..]),
            take_while1(|b: u8| b.is_ascii_digit() || b == b'.'),
        ),
        terminated(opt(tag(&b"\r"[..])), tag(&b"\n"[..])).map(|cr| cr.is_some()),
    )
        .parse(input)
}

/// One AMI message: its raw bytes and where each key and value lies in them.
#[derive(Clone)]
pub struct Message {
    frame: Bytes,
    fields: Vec<Field>,
}

/// Byte ranges of one `Key: Value` line within the frame.
///
/// `u32` offsets keep a field at 16 bytes; frames are far smaller than 4 GiB
/// because the codec bounds them.
#[derive(Debug, Clone, Copy)]
struct Field {
    key: (u32, u32),
    value: (u32, u32),
}

/// What a message is, judged by its first field as Asterisk writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind<'a> {
    /// `Response: Success|Error|Goodbye|...`, answering the action with
    /// `action_id`.
    Response {
        /// `Success`, `Error`, ...
        status: &'a [u8],
        /// The `ActionID` the client chose, if the response carries one.
        action_id: Option<&'a [u8]>,
    },
    /// `Event: <name>`.
    Event {
        /// The event name (`InvalidPassword`).
        name: &'a [u8],
    },
    /// Anything else; its fields are still all there.
    Other,
}

impl Message {
    /// Parses one complete frame (lines ended by `\n` or `\r\n`; empty lines
    /// are skipped). Never fails: a line without `:` becomes a key with an
    /// empty value, so planted text can never break the session. Lines
    /// past 4 GiB are not indexed (the codec bounds frames far below that).
    pub fn parse(frame: Bytes) -> Message {
        let mut fields = Vec::with_capacity(16);
        let mut input: &[u8] = &frame;
        while let Ok((remaining, line)) = line(input) {
            input = remaining;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let (key, value) = key_value(line);
            let (Some(key), Some(value)) = (span(&frame, key), span(&frame, value)) else {
                break;
            };
            fields.push(Field { key, value });
        }
        Message { frame, fields }
    }

    /// The raw bytes of the frame, line ends included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.frame
    }

    /// All fields in order, repeated keys included.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|f| (self.slice(f.key), self.slice(f.value)))
    }

    /// The first value of `key` (compared ASCII case-insensitively, as
    /// Asterisk does).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(k, _)| k.eq_ignore_ascii_case(key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Response, event or other, from the first field.
    pub fn kind(&self) -> MessageKind<'_> {
        let Some((key, value)) = self.fields().next() else {
            return MessageKind::Other;
        };
        if key.eq_ignore_ascii_case(b"Response") {
            MessageKind::Response {
                status: value,
                action_id: self.get("ActionID"),
            }
        } else if key.eq_ignore_ascii_case(b"Event") {
            MessageKind::Event { name: value }
        } else {
            MessageKind::Other
        }
    }

    fn slice(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.frame[start as usize..end as usize]
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.fields()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// Where `part`, a subslice of `frame`, lies in it, if that fits `u32`.
fn span(frame: &[u8], part: &[u8]) -> Option<(u32, u32)> {
    let start = frame.offset(part);
    Some((
        u32::try_from(start).ok()?,
        u32::try_from(start + part.len()).ok()?,
    ))
}

/// One line without its `\n` (a trailing `\r` is left for the caller).
fn line(input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(take_till(|b| b == b'\n'), tag(&b"\n"[..])).parse(input)
}

/// Splits `Key: Value` at the first colon; the value keeps any further
/// `: ` (`RequestType: Action: NoSuchAction`) and may be empty.
fn key_value(line: &[u8]) -> (&[u8], &[u8]) {
    let parsed: IResult<&[u8], (&[u8], &[u8])> = (
        terminated(take_till(|b| b == b':'), tag(&b":"[..])),
        preceded(take_while(|b| b == b' ' || b == b'\t'), rest),
    )
        .parse(line);
    match parsed {
        Ok((_, kv)) => kv,
        Err(_) => (line, &line[line.len()..]),
    }
}

/// An action to send, fields in order.
#[derive(Clone)]
pub struct Action {
    fields: Vec<(&'static str, String)>,
}

impl Action {
    /// `Action: <name>` with `ActionID: <id>`, so the response can be told
    /// apart from the events around it.
    pub fn new(name: &str, action_id: &str) -> Action {
        Action {
            fields: vec![
                ("Action", name.to_owned()),
                ("ActionID", action_id.to_owned()),
            ],
        }
    }

    /// Appends a field.
    pub fn field(mut self, key: &'static str, value: impl Into<String>) -> Action {
        self.fields.push((key, value.into()));
        self
    }

    /// The `ActionID` this action was created with.
    pub fn action_id(&self) -> &str {
        self.fields.get(1).map_or("", |(_, v)| v.as_str())
    }
}

impl fmt::Debug for Action {
    /// Masks `Secret` and `Key`: a Debug print must never leak the login.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.fields.iter().map(|(k, v)| {
                let shown = if matches!(*k, "Secret" | "Key") {
                    "********"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// Where the decoder is in the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Banner,
    /// After the banner; `crlf` says whether only `\r\n\r\n` ends a message.
    Messages {
        crlf: bool,
    },
}

/// Decodes [`Frame`]s and encodes [`Action`]s; one per connection.
#[derive(Debug)]
pub struct AmiCodec {
    max: usize,
    phase: Phase,
    /// Bytes of the buffer already searched for the end of the current
    /// frame, so each read is scanned once.
    scanned: usize,
}

impl AmiCodec {
    /// A codec for a fresh connection (expects the banner first) that
    /// refuses frames longer than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> AmiCodec {
        AmiCodec {
            max: max_message_size.min(u32::MAX as usize),
            phase: Phase::Banner,
            scanned: 0,
        }
    }

    /// Cuts the first frame of `len` bytes off the buffer, or says the
    /// bound is exceeded.
    fn take(&mut self, buf: &mut BytesMut, len: usize) -> Result<Bytes, CodecError> {
        if len > self.max {
            return Err(CodecError::TooLarge { limit: self.max });
        }
        self.scanned = 0;
        Ok(buf.split_to(len).freeze())
    }

    /// Records where the next search resumes, or fails if the frame can no
    /// longer fit the bound. `lookback` is the terminator length minus one:
    /// a terminator may have started in the bytes already seen.
    fn incomplete(&mut self, buf: &BytesMut, lookback: usize) -> Result<Option<Frame>, CodecError> {
        if buf.len() >= self.max {
            return Err(CodecError::TooLarge { limit: self.max });
        }
        self.scanned = buf.len().saturating_sub(lookback);
        Ok(None)
    }

    fn decode_banner(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(nl) = memchr::memchr(b'\n', &buf[self.scanned..]) else {
            return self.incomplete(buf, 0);
        };
        let line = self.take(buf, self.scanned + nl + 1)?;
        let banner = parse_banner(&line)?;
        self.phase = Phase::Messages { crlf: banner.crlf };
        Ok(Some(Frame::Banner(banner)))
    }

    fn decode_message(
        &mut self,
        buf: &mut BytesMut,
        crlf: bool,
    ) -> Result<Option<Frame>, CodecError> {
        if self.scanned == 0 {
            skip_blank_lines(buf);
        }
        let (end, lookback) = if crlf {
            (find_crlf_end(buf, self.scanned), 3)
        } else {
            (find_lf_end(buf, self.scanned), 2)
        };
        match end {
            Some(end) => Ok(Some(Frame::Message(Message::parse(self.take(buf, end)?)))),
            None => self.incomplete(buf, lookback),
        }
    }
}

/// Drops empty lines between messages; they carry nothing.
fn skip_blank_lines(buf: &mut BytesMut) {
    loop {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
        } else if buf.starts_with(b"\n") {
            buf.advance(1);
        } else {
            return;
        }
    }
}

/// End (exclusive) of the first message ended by `\r\n\r\n`, searching
/// from `from`.
fn find_crlf_end(buf: &[u8], from: usize) -> Option<usize> {
    memmem::find(&buf[from..], b"\r\n\r\n").map(|i| from + i + 4)
}

/// End (exclusive) of the first message ended by an empty line with either
/// line end (`\n\n` or `\n\r\n`), searching from `from`.
fn find_lf_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr_iter(b'\n', &buf[from..]).find_map(|i| {
        let nl = from + i;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => Some(nl + 2),
            Some([b'\r', b'\n', ..]) => Some(nl + 3),
            _ => None,
        }
    })
}

impl Decoder for AmiCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.phase {
            Phase::Banner => self.decode_banner(buf),
            Phase::Messages { crlf } => self.decode_message(buf, crlf),
        }
    }

    /// At EOF, leftover blank lines are nothing, but a partial message
    /// means the peer hung up in the middle of it.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if buf.iter().all(|&b| b == b'\r' || b == b'\n') {
            buf.clear();
            return Ok(None);
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed in the middle of an AMI message",
        )
        .into())
    }
}

impl Encoder<&Action> for AmiCodec {
    type Error = CodecError;

    fn encode(&mut self, action: &Action, dst: &mut BytesMut) -> Result<(), CodecError> {
        for (key, value) in &action.fields {
            if value.contains(['\r', '\n']) {
                return Err(CodecError::LineBreak { key });
            }
        }
        for (key, value) in &action.fields {
            dst.extend_from_slice(key.as_bytes());
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        dst.extend_from_slice(b"\r\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::fixtures::{DIALOGUE, FLOOD, RECEIVED, SECURITY, SENT};
    use proptest::prelude::*;

    /// Decodes `input` fed in chunks of `chunk` bytes, then at EOF.
    fn decode_chunked(
        mut codec: AmiCodec,
        input: &[u8],
        chunk: usize,
    ) -> Result<Vec<Frame>, CodecError> {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(frame) = codec.decode(&mut buf)? {
                frames.push(frame);
            }
        }
        while let Some(frame) = codec.decode_eof(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    fn decode_all(input: &[u8]) -> Vec<Frame> {
        decode_chunked(AmiCodec::new(64 * 1024), input, input.len()).expect("capture decodes")
    }

    fn messages(frames: &[Frame]) -> Vec<&Message> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(m),
                Frame::Banner(_) => None,
            })
            .collect()
    }

    fn event_names(frames: &[Frame]) -> Vec<String> {
        messages(frames)
            .iter()
            .filter_map(|m| match m.kind() {
                MessageKind::Event { name } => Some(String::from_utf8_lossy(name).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// The capture split where one TCP connection ends and the next starts.
    fn connections(received: &[u8]) -> Vec<&[u8]> {
        let banner = b"Asterisk Call Manager/";
        let starts: Vec<usize> = memmem::find_iter(received, banner).collect();
        starts
            .iter()
            .zip(starts.iter().skip(1).chain([&received.len()]))
            .map(|(&s, &e)| &received[s..e])
            .collect()
    }

    #[test]
    fn banner_has_no_empty_line_after_it() {
        let frames = decode_all(SECURITY);
        let Frame::Banner(banner) = &frames[0] else {
            panic!("first frame is not the banner: {:?}", frames[0]);
        };
        assert_eq!(banner.version, "9.0.0");
        let Frame::Message(login) = &frames[1] else {
            panic!("second frame is not a message");
        };
        assert_eq!(
            login.kind(),
            MessageKind::Response {
                status: b"Success",
                action_id: Some(b"login-1")
            }
        );
    }

    #[test]
    fn every_event_of_the_captures_is_decoded() {
        let count = |capture: &[u8]| memmem::find_iter(capture, b"\r\nEvent: ").count();
        for capture in [SECURITY, FLOOD] {
            let frames = decode_all(capture);
            assert_eq!(event_names(&frames).len(), count(capture));
            // Nothing is lost: every byte after the banner is in a message.
            let total: usize = frames
                .iter()
                .map(|f| match f {
                    Frame::Banner(_) => "Asterisk Call Manager/9.0.0\r\n".len(),
                    Frame::Message(m) => m.as_bytes().len(),
                })
                .sum();
            assert_eq!(total, capture.len());
        }
        let names = event_names(&decode_all(SECURITY));
        let count_of = |n: &str| names.iter().filter(|x| *x == n).count();
        assert_eq!(count_of("InvalidPassword"), 6);
        assert_eq!(count_of("FailedACL"), 3);
        assert_eq!(count_of("InvalidAccountID"), 1);
        assert_eq!(count_of("ChallengeSent"), 5);
        assert_eq!(count_of("SuccessfulAuth"), 2);
    }

    #[test]
    fn fields_keep_order_values_and_empties() {
        let frames = decode_all(SECURITY);
        let first_event = messages(&frames)[1];
        let keys: Vec<&[u8]> = first_event.fields().map(|(k, _)| k).collect();
        assert_eq!(keys[..3], [&b"Event"[..], b"Privilege", b"EventTV"]);
        assert_eq!(
            first_event.get("RemoteAddress"),
            Some(&b"IPV4/TCP/127.0.0.1/51464"[..])
        );
        assert_eq!(
            first_event.get("remoteaddress"),
            first_event.get("RemoteAddress")
        );
        assert_eq!(first_event.get("NoSuchKey"), None);
    }

    #[test]
    fn login_variants_decode_per_connection() {
        let conns = connections(RECEIVED);
        assert_eq!(conns.len(), 2, "a refused login, then an MD5 login");

        let refused = decode_all(conns[0]);
        assert!(matches!(&refused[0], Frame::Banner(b) if b.version == "9.0.0"));
        let refused = messages(&refused);
        assert_eq!(refused.len(), 1);
        assert_eq!(
            refused[0].kind(),
            MessageKind::Response {
                status: b"Error",
                action_id: Some(b"bad-1")
            }
        );
        assert_eq!(
            refused[0].get("Message"),
            Some(&b"Authentication failed"[..])
        );

        let frames = decode_all(conns[1]);
        let msgs = messages(&frames);
        let ids: Vec<_> = msgs
            .iter()
            .map(|m| match m.kind() {
                MessageKind::Response { action_id, .. } => {
                    action_id.map(|a| String::from_utf8_lossy(a).into_owned())
                }
                MessageKind::Event { name } => {
                    Some(format!("event {}", String::from_utf8_lossy(name)))
                }
                MessageKind::Other => None,
            })
            .collect();
        assert_eq!(
            ids,
            [
                "ch-1",
                "md5-1",
                "ping-2",
                "ev-1",
                "bad-2",
                "event RequestBadFormat",
                "cs-1",
                "bye-1"
            ]
            .map(|s| Some(s.to_owned()))
        );
        assert_eq!(msgs[0].get("Challenge"), Some(&b"119281354"[..]));
        assert_eq!(msgs[2].get("Ping"), Some(&b"Pong"[..]));
        let bad_format = msgs[5];
        assert_eq!(
            bad_format.get("RequestType"),
            Some(&b"Action: NoSuchAction"[..])
        );
        let settings = msgs[6];
        assert_eq!(settings.get("SystemName"), Some(&b""[..]));
        assert_eq!(settings.get("CoreRunUser"), Some(&b""[..]));
        assert_eq!(settings.fields().count(), 14);
    }

    /// The chunks the dialogue capture marks `<< received`: each runs from
    /// its header to the blank line that separates it from the next header.
    fn received_reads(dialogue: &[u8]) -> Vec<&[u8]> {
        let header = b"<< received\n";
        memmem::find_iter(dialogue, header)
            .map(|at| {
                let body = &dialogue[at + header.len()..];
                let end = [&b"\n>> sent\n"[..], b"\n<< received\n"]
                    .iter()
                    .filter_map(|next| memmem::find(body, next))
                    .min()
                    .unwrap_or(body.len());
                &body[..end]
            })
            .collect()
    }

    /// The Error response and the RequestBadFormat event arrived in one read.
    #[test]
    fn response_and_event_in_one_read() {
        let reads = received_reads(DIALOGUE);
        assert_eq!(
            reads.concat(),
            RECEIVED,
            "the reads are exactly the received bytes"
        );
        let read = reads
            .iter()
            .find(|r| memmem::find(r, b"ActionID: bad-2").is_some())
            .expect("the bad-2 read");
        let mut codec = AmiCodec::new(4096);
        codec.phase = Phase::Messages { crlf: true };
        let mut buf = BytesMut::from(*read);
        let Some(Frame::Message(first)) = codec.decode(&mut buf).expect("decodes") else {
            panic!("no response");
        };
        let Some(Frame::Message(second)) = codec.decode(&mut buf).expect("decodes") else {
            panic!("no event");
        };
        assert!(matches!(
            first.kind(),
            MessageKind::Response {
                status: b"Error",
                ..
            }
        ));
        assert_eq!(
            second.kind(),
            MessageKind::Event {
                name: b"RequestBadFormat"
            }
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn actions_encode_like_the_capture() {
        let actions = [
            Action::new("Login", "bad-1")
                .field("Username", "astban")
                .field("Secret", "not-the-secret"),
            Action::new("Challenge", "ch-1").field("AuthType", "MD5"),
            Action::new("Login", "md5-1")
                .field("AuthType", "MD5")
                .field("Username", "astban")
                .field("Key", "44aa94644d68d1150ec34febdd69fc93")
                .field("Events", "off"),
            Action::new("Ping", "ping-2"),
            Action::new("Events", "ev-1").field("EventMask", "security"),
            Action::new("NoSuchAction", "bad-2"),
            Action::new("CoreSettings", "cs-1"),
            Action::new("Logoff", "bye-1"),
        ];
        let mut codec = AmiCodec::new(4096);
        let mut out = BytesMut::new();
        for action in &actions {
            codec.encode(action, &mut out).expect("encodes");
        }
        assert_eq!(&out[..], SENT);
    }

    #[test]
    fn action_debug_hides_the_login() {
        let shown = format!(
            "{:?}",
            Action::new("Login", "l")
                .field("Secret", "astban-secret")
                .field("Key", "44aa94")
        );
        assert!(
            !shown.contains("astban-secret") && !shown.contains("44aa94"),
            "{shown}"
        );
    }

    #[test]
    fn line_breaks_in_actions_are_refused() {
        let mut out = BytesMut::new();
        let err = AmiCodec::new(4096)
            .encode(
                &Action::new("Login", "l").field("Username", "a\nEvents: all"),
                &mut out,
            )
            .expect_err("injection");
        assert!(matches!(err, CodecError::LineBreak { key: "Username" }));
        assert!(out.is_empty());
    }

    #[test]
    fn a_foreign_server_is_named_not_ami() {
        let err = decode_chunked(AmiCodec::new(4096), b"SSH-2.0-OpenSSH_9.6\r\n", 100)
            .expect_err("not AMI");
        let msg = err.to_string();
        assert!(
            msg.contains("SSH-2.0-OpenSSH_9.6") && msg.contains("ami.port"),
            "{msg}"
        );
    }

    #[test]
    fn oversized_frames_are_an_error_not_a_buffer() {
        let limit = 1024;
        // Unterminated: refused as soon as it cannot fit any more.
        let mut codec = AmiCodec::new(limit);
        let mut buf = BytesMut::from(&b"Asterisk Call Manager/9.0.0\r\n"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Banner(_)))));
        buf.extend_from_slice(b"Event: X\r\n");
        let mut refused = false;
        for _ in 0..limit {
            buf.extend_from_slice(b"K: v\r\n");
            match codec.decode(&mut buf) {
                Ok(None) => assert!(buf.len() < limit),
                Err(CodecError::TooLarge { limit: l }) => {
                    assert_eq!(l, limit);
                    refused = true;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(refused);
        // Complete but too long in one read: refused too.
        let mut big = b"Asterisk Call Manager/9.0.0\r\nEvent: X\r\nK: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(
            decode_chunked(AmiCodec::new(limit), &big, big.len()),
            Err(CodecError::TooLarge { .. })
        ));
        // A banner that never ends is bounded the same way.
        assert!(matches!(
            decode_chunked(AmiCodec::new(limit), &[b'A'; 5000], 100),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn bare_newlines_are_tolerated_after_a_bare_banner() {
        let frames = decode_all(
            b"Asterisk Call Manager/2.10.4\nResponse: Success\nActionID: a\n\nEvent: X\r\nK: v\n\n",
        );
        let msgs = messages(&frames);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].get("ActionID"), Some(&b"a"[..]));
        assert_eq!(msgs[1].get("K"), Some(&b"v"[..]));
    }

    /// After a `\r\n` banner, planted `\n\n` cannot end an event early and
    /// forge a second one: the lines stay inside the real event.
    #[test]
    fn planted_blank_lines_cannot_forge_an_event() {
        let input = b"Asterisk Call Manager/9.0.0\r\n\
            Event: InvalidPassword\r\nAccountID: x\n\nEvent: InvalidPassword\nRemoteAddress: IPV4/UDP/192.0.2.1/5060\n\n\r\n\
            RemoteAddress: IPV4/UDP/203.0.113.9/5060\r\n\r\n";
        let frames = decode_all(input);
        let msgs = messages(&frames);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].get_all("RemoteAddress").count(), 2);
        assert_eq!(
            msgs[0].kind(),
            MessageKind::Event {
                name: b"InvalidPassword"
            }
        );
    }

    #[test]
    fn a_message_cut_by_eof_is_an_unexpected_eof() {
        let err = decode_chunked(
            AmiCodec::new(4096),
            b"Asterisk Call Manager/9.0.0\r\nEvent: X\r\n",
            7,
        )
        .expect_err("truncated");
        assert!(matches!(err, CodecError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof));
        let frames = decode_chunked(
            AmiCodec::new(4096),
            b"Asterisk Call Manager/9.0.0\r\n\r\n",
            7,
        )
        .expect("clean EOF");
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn lines_without_colon_are_kept() {
        let m = Message::parse(Bytes::from_static(b"Event: X\r\nstray text\r\nK:v\r\n\r\n"));
        let fields: Vec<_> = m.fields().collect();
        assert_eq!(
            fields,
            [
                (&b"Event"[..], &b"X"[..]),
                (b"stray text", b""),
                (b"K", b"v")
            ]
        );
    }

    /// Messages a generator can vary: keys, values with `: `, empty values.
    fn message_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(("[A-Za-z][A-Za-z0-9]{0,10}", "[ -~]{0,20}"), 1..8).prop_map(
            |fields| {
                fields
                    .into_iter()
                    .map(|(k, v)| (k, v.trim_start().to_owned()))
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
            let _ = decode_chunked(AmiCodec::new(1024), &bytes, chunk);
            let mut with_banner = b"Asterisk Call Manager/9.0.0\r\n".to_vec();
            with_banner.extend_from_slice(&bytes);
            let _ = decode_chunked(AmiCodec::new(1024), &with_banner, chunk);
            let _ = Message::parse(Bytes::from(bytes));
        }

        #[test]
        fn any_split_decodes_the_same(
            bare_newlines: bool,
            split in 0usize..SECURITY.len(),
            chunk in 1usize..4096,
        ) {
            let input = if bare_newlines {
                SECURITY.split(|&b| b == b'\r').collect::<Vec<_>>().concat()
            } else {
                SECURITY.to_vec()
            };
            let split = split.min(input.len());
            let whole = decode_all(&input);
            prop_assert_eq!(event_names(&whole).len(), 17);
            let mut codec = AmiCodec::new(64 * 1024);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            let (a, b) = input.split_at(split);
            for piece in a.chunks(chunk).chain(b.chunks(chunk)) {
                buf.extend_from_slice(piece);
                while let Some(frame) = codec.decode(&mut buf).expect("decodes") {
                    frames.push(frame);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(format!("{whole:?}"), format!("{frames:?}"));
        }

        #[test]
        fn generated_messages_round_trip(msgs in prop::collection::vec(message_strategy(), 1..5), chunk in 1usize..50) {
            let mut wire = b"Asterisk Call Manager/9.0.0\r\n".to_vec();
            for fields in &msgs {
                for (k, v) in fields {
                    wire.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
            }
            let frames = decode_chunked(AmiCodec::new(64 * 1024), &wire, chunk).expect("decodes");
            let decoded: Vec<Vec<(String, String)>> = messages(&frames)
                .iter()
                .map(|m| m.fields().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned())).collect())
                .collect();
            prop_assert_eq!(decoded, msgs);
        }
    }
}

//! AMI decode throughput, on one core.
//!
//! The flood capture (150 wrong-password REGISTERs from 30 sources: 301
//! security events) is repeated in memory and fed to the codec in 8 KiB
//! reads, as `FramedRead` would from the socket. Two figures:
//!
//! - codec only: framing and field parsing of every message;
//! - codec + mapping: the same, plus turning each security event into a
//!   `Report` (address and time parsing, attempt dedup, attacker text).
//!
//! Run with `cargo bench --bench ami_decode`. The target is at least
//! 1,000,000 security events/s on one core.

use std::hint::black_box;
use std::time::{Duration, Instant};

use astban::ami::codec::{AmiCodec, Frame, MessageKind};
use astban::ami::security::SecurityEvents;
use astban::config::AmiConfig;
use jiff::Timestamp;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

const FLOOD: &[u8] = include_bytes!("../fixtures/ami-register-flood.txt");
const BANNER: &[u8] = b"Asterisk Call Manager/9.0.0\r\n";
const REPEATS: usize = 200;
const READ_SIZE: usize = 8 * 1024;
const ROUNDS: usize = 5;

/// Counts what one pass over the stream produced.
#[derive(Default)]
struct Tally {
    events: u64,
    reports: u64,
}

/// Decodes `stream` in reads of [`READ_SIZE`]; maps events when `map` is set.
fn pass(stream: &[u8], map: bool) -> Tally {
    let mut codec = AmiCodec::new(64 * 1024);
    let mut buf = BytesMut::with_capacity(2 * READ_SIZE);
    let kinds = AmiConfig::default().events;
    // Each repetition replays the same sessions; a fresh mapper per
    // repetition keeps the dedup cache from discarding the replays, so
    // every failure is fully built.
    let mut security = SecurityEvents::new(&kinds);
    let now = Timestamp::now();
    let mut tally = Tally::default();
    let mut messages_in_repeat = 0;
    for read in stream.chunks(READ_SIZE) {
        buf.extend_from_slice(read);
        while let Some(frame) = codec.decode(&mut buf).expect("capture decodes") {
            let Frame::Message(message) = frame else {
                continue;
            };
            if let MessageKind::Event { .. } = message.kind() {
                tally.events += 1;
            }
            if map {
                if let Ok(Some(report)) = security.interpret(&message, now) {
                    tally.reports += 1;
                    black_box(report);
                }
                messages_in_repeat += 1;
                if messages_in_repeat == MESSAGES_PER_REPEAT {
                    messages_in_repeat = 0;
                    security = SecurityEvents::new(&kinds);
                }
            } else {
                black_box(&message);
            }
        }
    }
    tally
}

/// Messages in the flood capture after its banner (events and responses).
const MESSAGES_PER_REPEAT: usize = 303;

fn measure(name: &str, stream: &[u8], map: bool) {
    let mut best = Duration::MAX;
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        tally = pass(stream, map);
        best = best.min(start.elapsed());
    }
    let secs = best.as_secs_f64();
    println!(
        "{name:<18} {:>10.0} security events/s  {:>7.1} MB/s  ({} events, {} reports, best of {ROUNDS}: {:.1} ms)",
        tally.events as f64 / secs,
        stream.len() as f64 / secs / 1e6,
        tally.events,
        tally.reports,
        secs * 1e3,
    );
}

fn main() {
    let body = FLOOD
        .strip_prefix(BANNER)
        .expect("the capture starts with the banner");
    let mut stream = BANNER.to_vec();
    for _ in 0..REPEATS {
        stream.extend_from_slice(body);
    }
    let frames = {
        let mut codec = AmiCodec::new(64 * 1024);
        let mut buf = BytesMut::from(FLOOD);
        std::iter::from_fn(|| codec.decode(&mut buf).expect("decodes")).count()
    };
    assert_eq!(
        frames,
        MESSAGES_PER_REPEAT + 1,
        "banner + messages of one capture"
    );
    println!(
        "ami_decode: flood capture x{REPEATS} ({} bytes), {READ_SIZE}-byte reads, one thread",
        stream.len()
    );
    measure("codec only", &stream, false);
    measure("codec + mapping", &stream, true);
}

//! Which security events are one attempt, so that each attempt counts once.
//!
//! # What an attempt is
//!
//! Read from a real Asterisk 20 (`integration/fixtures/pjsip/`, and the
//! chan_sip captures beside it), per source address and `SessionID`:
//!
//! | what the client did | events |
//! |---|---|
//! | PJSIP, existing endpoint, wrong password | `ChallengeSent`, `ChallengeResponseFailed` |
//! | PJSIP, no such endpoint | `InvalidAccountID`, `ChallengeSent`, `InvalidAccountID`, `ChallengeResponseFailed` |
//! | PJSIP, endpoint ACL refuses the source | `FailedACL`, `ChallengeSent`, `FailedACL`, `ChallengeResponseFailed` |
//! | PJSIP, INVITE or OPTIONS nobody answers | `InvalidAccountID`, `ChallengeSent` |
//! | chan_sip, wrong password (or unknown peer) | `ChallengeSent`, `InvalidPassword` |
//! | chan_sip, peer ACL refuses the source | `FailedACL`, `FailedACL` |
//! | sipvicious `svcrack` against PJSIP | `ChallengeSent`, then `ChallengeResponseFailed` per guess, all one `SessionID` |
//!
//! So an attempt is: a request refused before any password was checked
//! (possibly raised twice: for the unauthenticated request and for its
//! authenticated retry after the challenge, or by chan_sip's second pass),
//! optionally ended by one password guess. A guess with nothing open before
//! it is an attempt of its own.
//!
//! # Why the SessionID cannot be trusted further
//!
//! PJSIP's `SessionID` is the SIP Call-ID, which the client chooses: a
//! brute-force tool keeps one for thousands of guesses. The SessionID may
//! therefore *merge* the events of one attempt, but the state machine below
//! never lets it merge two guesses: after a guess nothing is open, so the
//! next guess counts, whatever its SessionID. Every counted attempt absorbs
//! at most one guess, so failures counted ≥ guesses made.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};

use crate::failure::{FailureKind, Service};

/// The events of one attempt arrive this close together (a challenge and
/// the client's retry take one round trip). An open attempt older than this
/// is forgotten: the next event opens a new one, which can only count more.
pub const ATTEMPT_WINDOW: SignedDuration = SignedDuration::from_secs(2);

/// Open attempts remembered at most; past it the oldest are forgotten, so
/// a flood of distinct sessions costs fixed memory (at worst an attempt
/// then counts twice, never less).
pub const OPEN_ATTEMPTS_CAP: usize = 4096;

/// The part an event plays in an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Refused before any password was checked: `InvalidAccountID`,
    /// `FailedACL` and every other failure event that is not a guess.
    Refused,
    /// `ChallengeSent`: normal traffic, but it tells the unauthenticated
    /// request from its retry.
    Challenged,
    /// A password guess that failed: `ChallengeResponseFailed`,
    /// `InvalidPassword`.
    Guess,
    /// `SuccessfulAuth`: whatever was open is over.
    Succeeded,
}

impl Step {
    /// The step of a failure of `kind`.
    pub fn of_failure(kind: FailureKind) -> Step {
        match kind {
            FailureKind::ChallengeResponseFailed | FailureKind::InvalidPassword => Step::Guess,
            _ => Step::Refused,
        }
    }
}

/// Where an open attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A refusal was counted. `again` once a second refusal without a
    /// challenge (chan_sip's doubled `FailedACL`) was folded in.
    Refused { again: bool },
    /// The refused request was challenged; its retry may come.
    Challenged,
    /// The retry was refused too (PJSIP raises the event again); its guess
    /// may come.
    Retried,
}

/// What one event does, given the attempt open for its key (if any):
/// whether it counts, and what stays open afterwards.
fn advance(open: Option<Phase>, step: Step) -> (bool, Option<Phase>) {
    use Phase::*;
    match (step, open) {
        (Step::Refused, None) => (true, Some(Refused { again: false })),
        (Step::Refused, Some(Refused { again: false })) => (false, Some(Refused { again: true })),
        (Step::Refused, Some(Challenged)) => (false, Some(Retried)),
        // A third refusal, or a refusal after the retry: a new request.
        (Step::Refused, Some(Refused { again: true } | Retried)) => {
            (true, Some(Refused { again: false }))
        }
        (Step::Challenged, None) => (false, None),
        (Step::Challenged, Some(Refused { again: false } | Challenged)) => {
            (false, Some(Challenged))
        }
        // Refused twice already: that attempt is complete, and what follows
        // the challenge starts anew.
        (Step::Challenged, Some(Refused { again: true })) => (false, None),
        // What looked like the retry was challenged itself: it was a fresh
        // unauthenticated request (a scanner reusing its Call-ID).
        (Step::Challenged, Some(Retried)) => (true, Some(Challenged)),
        // A guess ends the attempt it belongs to, counted when it opened;
        // alone it is an attempt. Nothing stays open after a guess.
        (Step::Guess, open) => (open.is_none(), None),
        (Step::Succeeded, _) => (false, None),
    }
}

/// Which attempt an event belongs to. The session id is kept as a keyed
/// hash, so an entry has a fixed size whatever the attacker sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    host: IpAddr,
    service: Service,
    session: u64,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    phase: Phase,
    last: Timestamp,
}

/// The attempts open right now, at most [`OPEN_ATTEMPTS_CAP`] of them.
/// One per AMI input; pure apart from the hasher's random key.
#[derive(Debug, Default)]
pub struct Attempts {
    hasher: RandomState,
    open: HashMap<Key, Open>,
}

impl Attempts {
    /// Whether an event counts as a new failure. `session` is `None` when
    /// the event has no usable SessionID: then nothing can be merged, and
    /// every refusal and guess counts.
    pub fn counts(
        &mut self,
        host: IpAddr,
        service: Service,
        session: Option<&[u8]>,
        step: Step,
        time: Timestamp,
    ) -> bool {
        let Some(session) = session else {
            return matches!(step, Step::Refused | Step::Guess);
        };
        let key = Key {
            host,
            service,
            session: self.hasher.hash_one(session),
        };
        let open = self
            .open
            .get(&key)
            .filter(|o| time.duration_since(o.last).abs() < ATTEMPT_WINDOW)
            .map(|o| o.phase);
        let (counts, next) = advance(open, step);
        match next {
            Some(phase) => {
                if self.open.len() >= OPEN_ATTEMPTS_CAP && !self.open.contains_key(&key) {
                    self.make_room(time);
                }
                self.open.insert(key, Open { phase, last: time });
            }
            None => {
                self.open.remove(&key);
            }
        }
        counts
    }

    /// At the cap: drops the attempts past the window, and everything if
    /// that frees less than half, so a sweep runs at most once per
    /// `OPEN_ATTEMPTS_CAP / 2` new attempts.
    fn make_room(&mut self, now: Timestamp) {
        self.open
            .retain(|_, o| now.duration_since(o.last).abs() < ATTEMPT_WINDOW);
        if self.open.len() > OPEN_ATTEMPTS_CAP / 2 {
            self.open.clear();
        }
    }

    /// How many attempts are open (for tests and bounds).
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no attempt is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    /// Counts over a sequence of steps, all one session, 1 ms apart.
    fn count(steps: &[Step]) -> usize {
        let mut attempts = Attempts::default();
        steps
            .iter()
            .enumerate()
            .filter(|&(i, &step)| {
                let t = Timestamp::UNIX_EPOCH + SignedDuration::from_millis(i as i64);
                attempts.counts(HOST, Service::Pjsip, Some(b"call-id"), step, t)
            })
            .count()
    }

    use Step::{Challenged as C, Guess as G, Refused as R, Succeeded as S};

    #[test]
    fn the_captured_shapes_count_once() {
        assert_eq!(count(&[C, G]), 1, "wrong password");
        assert_eq!(count(&[R, C, R, G]), 1, "no such endpoint / ACL");
        assert_eq!(count(&[R, C]), 1, "INVITE nobody answers");
        assert_eq!(count(&[R, R]), 1, "chan_sip's doubled FailedACL");
        assert_eq!(count(&[C, S]), 0, "a success");
    }

    #[test]
    fn a_reused_session_never_merges_two_guesses() {
        // svcrack: one challenge, then guesses on the same Call-ID.
        let mut steps = vec![C];
        steps.extend([G; 31]);
        assert_eq!(count(&steps), 31);
        // Every attempt absorbs at most one guess, whatever comes between.
        for shape in [
            vec![R, G, G],
            vec![R, C, R, G, G],
            vec![R, R, G, R, G],
            vec![R, C, R, G, R, C, R, G],
        ] {
            let guesses = shape.iter().filter(|&&s| s == G).count();
            assert!(count(&shape) >= guesses, "{shape:?}");
        }
    }

    #[test]
    fn a_scanner_reusing_its_call_id_counts_per_request() {
        // Unauthenticated requests only: each is challenged.
        assert_eq!(count(&[R, C, R, C, R, C, R, C]), 4);
        // Refusals with no challenge at all: chan_sip doubles each.
        assert_eq!(count(&[R, R, R, R, R, R]), 3);
    }

    #[test]
    fn any_sequence_counts_at_least_every_guess() {
        // Exhaustive over short sequences: counted ≥ guesses, and ≥ half
        // the refusals (at most two refusals merge into one attempt).
        let steps = [R, C, G, S];
        for len in 1..=7u32 {
            for n in 0..4usize.pow(len) {
                let seq: Vec<Step> = (0..len).map(|i| steps[n / 4usize.pow(i) % 4]).collect();
                let counted = count(&seq);
                let guesses = seq.iter().filter(|&&s| s == G).count();
                let refusals = seq.iter().filter(|&&s| s == R).count();
                assert!(counted >= guesses, "{seq:?}");
                assert!(2 * counted >= refusals, "{seq:?}");
            }
        }
    }

    #[test]
    fn sessions_hosts_and_time_separate_attempts() {
        let mut a = Attempts::default();
        let t0 = Timestamp::UNIX_EPOCH;
        let other = IpAddr::from([192, 0, 2, 2]);
        assert!(a.counts(HOST, Service::Pjsip, Some(b"a"), R, t0));
        assert!(a.counts(HOST, Service::Pjsip, Some(b"b"), R, t0));
        assert!(a.counts(other, Service::Pjsip, Some(b"a"), R, t0));
        // The retry of "a", within the window, is folded in.
        assert!(!a.counts(HOST, Service::Pjsip, Some(b"a"), R, t0));
        // After the window the same session is a new attempt.
        let later = t0 + ATTEMPT_WINDOW;
        assert!(a.counts(HOST, Service::Pjsip, Some(b"b"), R, later));
        // Without a session nothing merges.
        assert!(a.counts(HOST, Service::Pjsip, None, R, t0));
        assert!(a.counts(HOST, Service::Pjsip, None, R, t0));
        assert!(!a.counts(HOST, Service::Pjsip, None, C, t0));
    }

    #[test]
    fn open_attempts_are_bounded() {
        let mut a = Attempts::default();
        let t0 = Timestamp::UNIX_EPOCH;
        let refuse = |a: &mut Attempts, session: String, t| {
            a.counts(HOST, Service::Pjsip, Some(session.as_bytes()), R, t)
        };
        for i in 0..(3 * OPEN_ATTEMPTS_CAP) {
            assert!(refuse(&mut a, i.to_string(), t0));
            assert!(a.len() <= OPEN_ATTEMPTS_CAP);
        }
        // At the cap, attempts past the window are what make room.
        let mut a = Attempts::default();
        for i in 0..OPEN_ATTEMPTS_CAP {
            assert!(refuse(&mut a, i.to_string(), t0));
        }
        assert_eq!(a.len(), OPEN_ATTEMPTS_CAP);
        assert!(refuse(&mut a, "later".into(), t0 + ATTEMPT_WINDOW));
        assert_eq!(a.len(), 1);
    }
}

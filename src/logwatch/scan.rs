//! Reading a log line after line: what each line means in context.
//!
//! [`RuleSet::match_line`] judges one line alone. Two things need the lines
//! around it:
//!
//! * **Attempts, not lines.** One attempt can write several lines. Read
//!   from a real Asterisk 20 (`integration/fixtures/pjsip/`):
//!
//!   | attempt | lines |
//!   |---|---|
//!   | PJSIP, wrong password | `Failed to authenticate` |
//!   | PJSIP, no such endpoint | `No matching endpoint found` (request), the same (its authenticated retry), `Failed to authenticate` |
//!   | PJSIP, endpoint ACL | acl.c `SIP ACL: Rejecting` + `Not match Endpoint ACL`, both again for the retry, `Failed to authenticate` |
//!   | chan_sip, peer ACL | acl.c `SIP Peer ACL: Rejecting` + `Device does not match ACL`, both twice |
//!   | AMI login, unknown user or ACL | `nonexistent user` or acl.c + `failed to pass IP ACL`, then `failed to authenticate` |
//!
//!   Rules that share an `attempt` group describe such lines. Within a
//!   group, per host, an attempt is: a *refusal* (at most one line per
//!   module, for the request), the same again (its retry), and at most one
//!   *guess* (a rule with `step = "guess"`), which ends it. A line that does
//!   not fit an attempt open for its host (a third request, a second guess,
//!   another session or thread, a later second) starts a new one, so a
//!   guess is never folded into another guess: every password tried
//!   counts. Lines of one attempt share pjsip's callid or the security
//!   log's SessionID (`session`) or, without one, Asterisk's thread; up to
//!   [`ATTEMPTS_PER_HOST`] attempts are open per host (phones behind one
//!   NAT address). The session is the attacker's text, so it only ever
//!   joins lines the rules above allow to be one attempt. Unlike AMI, the
//!   log has no `ChallengeSent`, so a scanner that reuses one callid for
//!   unauthenticated requests counts once per two of them.
//!
//! * **Newlines in attacker text.** Asterisk does not escape newlines in
//!   what it logs: a real Asterisk writes a SIP extension's percent-decoded
//!   `%0A` raw (`messages-pjsip-newline-injection.log`), IAX2 fields and
//!   AMI header values carry raw bytes. An attacker can then end a message
//!   early and make the rest look like log lines of its own, naming any
//!   address. A line that begins a rule's message and does not complete it
//!   inside the sender's text (after the address where the rule has a
//!   wildcard there, or before it where the rule's opening is unique) was
//!   cut by such a newline, and the physical lines after it are the rest of
//!   the message, which never count:
//!
//!   - up to the line at which the cut line's text joined with them reads
//!     as the whole rule (an ending alone never ends it); or,
//!   - where the sender's text can supply the message's ending itself (a
//!     quote, a parenthesis: `sender_text_max`), every line that starts
//!     within the longest such field, whatever it says. A genuine line
//!     written within those bytes after such a cut is lost with them:
//!     bounded blindness, never a planted address.
//!
//!   The cut line itself counts for its address only where Asterisk writes
//!   the address before any attacker text (`host_first`); a newline before
//!   the address makes the attempt count for nobody (SIP and PJSIP headers
//!   cannot carry one; AMI counts those attempts in auto mode). A
//!   continuation ends after [`MAX_CONTINUATION_BYTES`] or
//!   [`MAX_CONTINUATION_LINES`] whatever it says: longer than any field.
//!
//!   Not caught: a sender's text that ends the line with nothing of
//!   Asterisk's after it (chan_iax2's `failed to authenticate as %s` before
//!   Asterisk 18.21, 20.6 and 21.1, which strip such bytes): there a
//!   forged next line cannot be told from a genuine one. That is why rules
//!   keep the address before attacker text or before Asterisk's fixed
//!   endings wherever Asterisk allows it, why the AMI security events
//!   (structured, one field per value) are astban's primary input, and why
//!   `ignoreip` protects the addresses that matter most.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use jiff::Timestamp;

use super::clock::Clock;
use super::filter::{LineMatch, RuleSet};
use super::lines::Line;
use super::rule::{Rule, Step};

/// Hosts with open attempts kept at most; at the cap, those past the window
/// are dropped, and all if that frees less than half (at worst a line of an
/// attempt then counts again, never less).
const MAX_OPEN_ATTEMPTS: usize = 4096;

/// Hosts with open attempts at which a new second sweeps out those past the
/// window.
const SWEEP_AT: usize = 64;

/// Attempts open at once per host and group: phones behind one NAT
/// address fail at the same time, each with its own callid. Past it the
/// stalest is forgotten (its further lines then count again).
pub const ATTEMPTS_PER_HOST: usize = 4;

/// The lines of one attempt are written within this many seconds of the
/// one before.
const ATTEMPT_WINDOW_SECS: i64 = 1;

/// Bytes after a cut line that may still be the rest of its message. The
/// longest attacker fields Asterisk writes raw (an IAX2 IE, a SIP
/// extension, an AMI header) are at most about a kilobyte.
pub const MAX_CONTINUATION_BYTES: usize = 4096;

/// Physical lines after a cut line that may still be the rest of its
/// message; bounds the work of re-reading the joined text too.
pub const MAX_CONTINUATION_LINES: usize = 64;

/// What one line meant.
#[derive(Debug, Clone, Copy)]
pub enum Event<'r> {
    /// Not a log line (no prefix).
    NoPrefix,
    /// Longer than `log.max_line_length`, and neither its head nor its
    /// tail names a sender certainly; skipped.
    TooLong,
    /// A log line no rule matched.
    Missed,
    /// A log line that began a rule's shape and was cut short, and cannot
    /// be attributed (the rule has attacker text before the address) or
    /// was ignored.
    Cut {
        /// The rule whose shape it began.
        rule: &'r Rule,
    },
    /// The rest of a cut message: not counted, whatever it says.
    Continuation {
        /// The rule whose message was cut.
        rule: &'r Rule,
        /// How many lines before this one the cut line is.
        back: u64,
    },
    /// A rule matched, but the line can be read as naming several hosts.
    Ambiguous {
        /// The rule.
        rule: &'r Rule,
    },
    /// A rule matched and an ignoreregex too.
    Ignored {
        /// The rule.
        rule: &'r Rule,
        /// The host.
        host: IpAddr,
    },
    /// Another line of an attempt already counted.
    Folded {
        /// The rule.
        rule: &'r Rule,
        /// The host.
        host: IpAddr,
        /// The line's time.
        time: Option<Timestamp>,
        /// How many lines before this one the attempt was counted.
        back: u64,
    },
    /// A failed attempt.
    Attempt(Attempt<'r>),
}

/// A failed attempt found in the log.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'r> {
    /// The rule that matched.
    pub rule: &'r Rule,
    /// The address Asterisk wrote.
    pub host: IpAddr,
    /// The line's time, or `None` if its date is impossible.
    pub time: Option<Timestamp>,
    /// Whether the line was cut short (it still names its sender, see
    /// [`Rule::host_first`]).
    pub cut: bool,
}

/// A cut message whose rest is still to come.
#[derive(Debug)]
struct Pending {
    rule: usize,
    /// The scanner's line number of the cut line.
    line: u64,
    /// The cut line's target, then each line after it, joined by spaces.
    text: Vec<u8>,
    cut_len: usize,
    /// Lines joined on so far.
    lines: usize,
}

/// An attempt that further lines may still belong to.
#[derive(Debug, Clone, Copy)]
struct Open {
    session: Option<u64>,
    thread: Option<u64>,
    /// Requests seen (1, or 2 once the retry was refused too).
    requests: u8,
    /// Modules whose refusal line the current request has written, one
    /// bit each ([`Rule::module_bit`]).
    seen: u64,
    second: i64,
    /// The scanner's line number of the line that counted.
    counted: u64,
    /// The scanner's line number of its latest line.
    touched: u64,
}

/// The attempts open for one host in one group.
type Slots = [Option<Open>; ATTEMPTS_PER_HOST];

/// A host (as its IPv6 or IPv4-mapped bits) and an attempt group: one
/// integer pair, which hashes in a fraction of what `(usize, IpAddr)` takes
/// (this is per matched line).
type OpenKey = (u128, usize);

fn open_key(group: usize, host: IpAddr) -> OpenKey {
    let bits = match host {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    (bits, group)
}

/// One line's place in the attempts of its group.
struct Place {
    group: usize,
    host: IpAddr,
    module_bit: u64,
    step: Step,
    session: Option<u64>,
    thread: Option<u64>,
    second: i64,
}

/// Judges lines in order. One per log being read.
#[derive(Debug)]
pub struct Scanner {
    rules: Arc<RuleSet>,
    clock: Clock,
    pending: Option<Pending>,
    open: HashMap<OpenKey, Slots>,
    /// The latest second an attempt line was seen at: attempts open before
    /// the window are dropped when it moves on, so the table holds only
    /// the last second or two of attempts.
    latest_second: i64,
    /// Lines judged so far.
    line: u64,
    /// Scratch space for an over-long line's head and tail.
    joined: Vec<u8>,
}

impl Scanner {
    /// A scanner with `rules`, converting times with `clock`.
    pub fn new(rules: Arc<RuleSet>, clock: Clock) -> Scanner {
        Scanner {
            rules,
            clock,
            pending: None,
            open: HashMap::new(),
            latest_second: i64::MIN,
            line: 0,
            joined: Vec::new(),
        }
    }

    /// Switches to new rules (a reload). Open attempts and a pending cut
    /// message belong to the old rules and are forgotten.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        self.rules = rules;
        self.open.clear();
        self.pending = None;
    }

    /// The clock, e.g. to move "now" forward.
    pub fn clock_mut(&mut self) -> &mut Clock {
        &mut self.clock
    }

    /// Judges the next physical line.
    pub fn scan(&mut self, line: Line<'_>) -> Event<'_> {
        self.line += 1;
        let text = match line {
            Line::Text(text) => text,
            Line::TooLong { head, tail } => {
                // Within a cut message it is more of the attacker's text
                // (and longer than any field: the message ends with it).
                if let Some(pending) = self.pending.take() {
                    return Event::Continuation {
                        rule: &self.rules.rules()[pending.rule],
                        back: self.line - pending.line,
                    };
                }
                return self.too_long(head, tail);
            }
        };
        if let Some((rule, cut_line)) = self.continues(text) {
            return Event::Continuation {
                rule: &self.rules.rules()[rule],
                back: self.line - cut_line,
            };
        }
        let (prefix, id, host, session, cut) = match self.rules.match_line(text) {
            LineMatch::NoPrefix => return Event::NoPrefix,
            LineMatch::Missed { .. } => return Event::Missed,
            LineMatch::Cut {
                prefix,
                rule,
                host,
                ignored,
                ..
            } => {
                let target = self.rules.target_of(rule, text, &prefix);
                let mut pending = Pending {
                    rule,
                    line: self.line,
                    text: Vec::with_capacity(target.len() + 256),
                    cut_len: target.len(),
                    lines: 0,
                };
                pending.text.extend_from_slice(target);
                self.pending = Some(pending);
                let rule_ref = &self.rules.rules()[rule];
                match (host, ignored) {
                    (Some(host), true) => {
                        return Event::Ignored {
                            rule: rule_ref,
                            host,
                        };
                    }
                    (Some(host), false) => (prefix, rule, host, None, true),
                    (None, _) => return Event::Cut { rule: rule_ref },
                }
            }
            LineMatch::Ambiguous { rule, .. } => {
                return Event::Ambiguous {
                    rule: &self.rules.rules()[rule],
                };
            }
            LineMatch::Ignored { rule, host, .. } => {
                return Event::Ignored {
                    rule: &self.rules.rules()[rule],
                    host,
                };
            }
            LineMatch::Failure {
                prefix,
                rule,
                host,
                session,
            } => (prefix, rule, host, session, false),
        };
        let time = self.clock.timestamp(prefix.stamp);
        let session = session.map(session_hash);
        let rule = &self.rules.rules()[id];
        if let (Some(group), Some(t)) = (rule.attempt(), time) {
            let place = Place {
                group,
                host,
                module_bit: rule.module_bit(),
                step: rule.step(),
                session,
                thread: prefix.thread,
                second: t.as_second(),
            };
            // Stale attempts fail `admits` anyway; sweep them out only
            // when there are enough to be worth a pass over the table.
            if place.second > self.latest_second && self.open.len() >= SWEEP_AT {
                self.latest_second = place.second;
                let oldest = place.second - ATTEMPT_WINDOW_SECS;
                self.open.retain(|_, slots| {
                    for slot in slots.iter_mut() {
                        if slot.is_some_and(|o| o.second < oldest) {
                            *slot = None;
                        }
                    }
                    slots.iter().any(Option::is_some)
                });
            }
            if let Some(counted) = fold(&mut self.open, &place, self.line) {
                return Event::Folded {
                    rule,
                    host,
                    time,
                    back: self.line - counted,
                };
            }
        }
        Event::Attempt(Attempt {
            rule,
            host,
            time,
            cut,
        })
    }

    /// An over-long line (an attacker's long username, say), of which only
    /// the head and the tail are kept. The sender's text in the middle is
    /// gone, so only readings that do not depend on it count: from the
    /// head, a rule that writes the address before any sender text; from
    /// the head's prefix joined to the tail, a rule whose address is
    /// followed by Asterisk's fixed ending only.
    fn too_long(&mut self, head: &[u8], tail: &[u8]) -> Event<'_> {
        let rules = &self.rules;
        let mut found = None;
        self.joined.clear();
        self.joined.extend_from_slice(head);
        self.joined.extend_from_slice(b" ... ");
        self.joined.extend_from_slice(tail);
        if let LineMatch::Failure {
            prefix, rule, host, ..
        } = rules.match_line(&self.joined)
            && rules.rules()[rule].ends_fixed()
        {
            found = Some((rule, host, prefix.stamp));
        }
        if found.is_none() {
            match rules.match_line(head) {
                LineMatch::Cut {
                    prefix,
                    rule,
                    host: Some(host),
                    ignored: false,
                    ..
                } => found = Some((rule, host, prefix.stamp)),
                LineMatch::Failure {
                    prefix, rule, host, ..
                } if rules.rules()[rule].host_first() => {
                    found = Some((rule, host, prefix.stamp));
                }
                _ => {}
            }
        }
        let Some((id, host, stamp)) = found else {
            return Event::TooLong;
        };
        let time = self.clock.timestamp(stamp);
        Event::Attempt(Attempt {
            rule: &self.rules.rules()[id],
            host,
            time,
            cut: false,
        })
    }

    /// If `text` is the rest of a pending cut message, the cut line's rule
    /// and line number.
    ///
    /// Where the sender's text can end the message by itself (its ending is
    /// a quote or a parenthesis), every line that starts within the rule's
    /// `sender_text_max` bytes of the cut is the sender's; past them, the
    /// message is over. Elsewhere the line that completes the message ends
    /// it. Either way it ends once longer than any attacker field.
    fn continues(&mut self, text: &[u8]) -> Option<(usize, u64)> {
        let pending = self.pending.as_mut()?;
        let rule = &self.rules.rules()[pending.rule];
        let after_cut = pending.text.len() - pending.cut_len;
        if rule.sender_text_max().is_some_and(|max| after_cut >= max) {
            self.pending = None;
            return None;
        }
        pending.text.push(b' ');
        pending.text.extend_from_slice(text);
        pending.lines += 1;
        let found = (pending.rule, pending.line);
        let done = pending.text.len() - pending.cut_len > MAX_CONTINUATION_BYTES
            || pending.lines >= MAX_CONTINUATION_LINES
            || (rule.sender_text_max().is_none()
                && self.rules.completes(pending.rule, &pending.text));
        if done {
            self.pending = None;
        }
        Some(found)
    }
}

/// A session's fingerprint (FNV-1a). Not keyed: a collision the sender
/// arranges only joins their own lines, which the attempt rules bound
/// anyway (a guess never joins another guess).
fn session_hash(session: &[u8]) -> u64 {
    session.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Records a line of an attempt group; returns the line number of the line
/// that counted the attempt this line belongs to, or `None` if it opens a
/// new attempt (and so counts).
fn fold(open: &mut HashMap<OpenKey, Slots>, place: &Place, line: u64) -> Option<u64> {
    let key = open_key(place.group, place.host);
    let fresh = Open {
        session: place.session,
        thread: place.thread,
        requests: 1,
        seen: place.module_bit,
        second: place.second,
        counted: line,
        touched: line,
    };
    let Some(slots) = open.get_mut(&key) else {
        // Nothing open: the line is an attempt; a guess leaves nothing
        // open after it.
        if place.step == Step::Refusal {
            if open.len() >= MAX_OPEN_ATTEMPTS {
                open.retain(|_, slots| {
                    slots
                        .iter()
                        .flatten()
                        .any(|o| o.second + ATTEMPT_WINDOW_SECS >= place.second)
                });
                if open.len() > MAX_OPEN_ATTEMPTS / 2 {
                    open.clear();
                }
            }
            let mut slots: Slots = [None; ATTEMPTS_PER_HOST];
            slots[0] = Some(fresh);
            open.insert(key, slots);
        }
        return None;
    };
    let Some(i) = pick(slots, place) else {
        if place.step == Step::Refusal {
            // A free slot, or the stalest attempt's.
            let i = slots
                .iter()
                .position(Option::is_none)
                .or_else(|| {
                    (0..ATTEMPTS_PER_HOST).min_by_key(|&i| slots[i].map_or(0, |o| o.touched))
                })
                .unwrap_or(0);
            slots[i] = Some(fresh);
        }
        return None;
    };
    let o = slots[i]?;
    let joined = match place.step {
        // The guess ends the attempt it belongs to.
        Step::Guess => {
            slots[i] = None;
            return Some(o.counted);
        }
        // Another module's line of the same request.
        Step::Refusal if o.seen & place.module_bit == 0 => Open {
            seen: o.seen | place.module_bit,
            ..o
        },
        // The same line again: the authenticated retry of the request.
        Step::Refusal if o.requests == 1 => Open {
            requests: 2,
            seen: place.module_bit,
            ..o
        },
        // A third request: a new attempt.
        Step::Refusal => {
            slots[i] = Some(fresh);
            return None;
        }
    };
    slots[i] = Some(Open {
        session: joined.session.or(place.session),
        thread: place.thread.or(joined.thread),
        second: place.second,
        touched: line,
        ..joined
    });
    Some(o.counted)
}

/// The open attempt a line belongs to: the one with its session, else
/// the latest one it may join (a line without a session, like acl.c's,
/// joins the request it is written beside).
fn pick(slots: &Slots, place: &Place) -> Option<usize> {
    let admits = |i: &usize| slots[*i].is_some_and(|o| o.admits(place));
    let latest = |i: &usize| slots[*i].map_or(0, |o| o.touched);
    if let Some(session) = place.session {
        let same = (0..ATTEMPTS_PER_HOST)
            .filter(admits)
            .find(|&i| slots[i].is_some_and(|o| o.session == Some(session)));
        if same.is_some() {
            return same;
        }
    }
    (0..ATTEMPTS_PER_HOST).filter(admits).max_by_key(latest)
}

impl Open {
    /// Whether a line may belong to this attempt: within the window, the
    /// same session where both have one, and the same thread where neither
    /// has.
    fn admits(&self, place: &Place) -> bool {
        let same_session = match (self.session, place.session) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let same_thread = match (self.session.or(place.session), self.thread, place.thread) {
            (None, Some(a), Some(b)) => a == b,
            _ => true,
        };
        (self.second..=self.second + ATTEMPT_WINDOW_SECS).contains(&place.second)
            && same_session
            && same_thread
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;

    fn scanner() -> Scanner {
        let rules = Arc::new(RuleSet::load("asterisk").expect("rules"));
        Scanner::new(rules, Clock::new(TimeZone::UTC, Timestamp::UNIX_EPOCH))
    }

    /// One word (or `rule host`) per line.
    fn judge(lines: &[&str]) -> Vec<String> {
        let mut s = scanner();
        lines
            .iter()
            .map(|line| match s.scan(Line::Text(line.as_bytes())) {
                Event::NoPrefix => "no prefix".into(),
                Event::TooLong => "too long".into(),
                Event::Missed => "missed".into(),
                Event::Cut { .. } => "cut".into(),
                Event::Continuation { .. } => "continuation".into(),
                Event::Ambiguous { .. } => "ambiguous".into(),
                Event::Ignored { .. } => "ignored".into(),
                Event::Folded {
                    rule, host, back, ..
                } => {
                    format!("folded {} {host} -{back}", rule.name())
                }
                Event::Attempt(a) if a.cut => format!("cut {} {}", a.rule.name(), a.host),
                Event::Attempt(a) => format!("{} {}", a.rule.name(), a.host),
            })
            .collect()
    }

    #[test]
    fn a_forged_line_after_a_cut_one_never_counts() {
        // An IAX2 MD5 result "abc\n<forged line>" (IAX2 carries it as raw
        // bytes): the real message ends on the forged line, with
        // Asterisk's own ")". Within the 255 bytes such a field can hold,
        // every line is the sender's; past them, lines are judged again.
        let cut = "[2026-11-24 16:03:18] NOTICE[5] chan_iax2.c: Host 203.0.113.5 failed MD5 authentication for 'peer' (e7df7cd2ca07f4f1ab415d457a6e1c13 != abc";
        let forged = "[2026-11-24 16:03:18] NOTICE[5] chan_iax2.c: Host 10.0.0.1 failed MD5 authentication for 'peer' (e7df7cd2ca07f4f1ab415d457a6e1c13 != 53ac4bc41ee4ec77888ed4aa50677247)";
        let later = "[2026-11-24 16:03:19] NOTICE[5] chan_iax2.c: Host 203.0.113.5 failed MD5 authentication for 'peer' (e7df7cd2ca07f4f1ab415d457a6e1c13 != 53ac4bc41ee4ec77888ed4aa50677247)";
        assert_eq!(
            judge(&[cut, forged, "x)", later, later]),
            [
                "cut iax2_wrong_password 203.0.113.5",
                "continuation",
                "continuation",
                "continuation",
                "iax2_wrong_password 203.0.113.5"
            ]
        );
    }

    #[test]
    fn a_cut_line_never_swallows_the_next_genuine_line() {
        // The rest of the extension carries no prefix and completes the
        // message: the genuine line after it is judged as usual.
        let lines = [
            "[2026-12-01 08:19:06] NOTICE[20795] res_pjsip_session.c:  anonymous: Call (UDP:203.0.113.5:42307) to extension '1",
            "23' rejected because extension not found in context 'default'.",
            "[2026-12-01 08:19:06] NOTICE[20796] res_pjsip_session.c:  anonymous: Call (UDP:198.51.100.7:5060) to extension '9' rejected because extension not found in context 'default'.",
        ];
        assert_eq!(
            judge(&lines),
            [
                "cut pjsip_extension_not_found 203.0.113.5",
                "continuation",
                "pjsip_extension_not_found 198.51.100.7"
            ]
        );
        // Filler lines inside the field do not end the message early.
        let lines = [
            "[2026-12-01 08:19:06] NOTICE[20795] res_pjsip_session.c:  anonymous: Call (UDP:203.0.113.5:42307) to extension '1",
            "filler",
            "",
            "[2026-12-01 08:19:06] NOTICE[1] manager.c: 10.0.0.1 failed to authenticate as 'x' rejected because extension not found in context 'default'.",
            "[2026-12-01 08:19:07] NOTICE[6] manager.c: 203.0.113.5 failed to authenticate as 'y'",
        ];
        assert_eq!(
            judge(&lines),
            [
                "cut pjsip_extension_not_found 203.0.113.5",
                "continuation",
                "continuation",
                "continuation",
                "ami_failed_auth 203.0.113.5"
            ]
        );
    }

    #[test]
    fn the_continuation_is_bounded() {
        let cut = "[2026-12-01 08:19:06] NOTICE[20795] res_pjsip_session.c:  anonymous: Call (UDP:203.0.113.5:42307) to extension '1";
        let filler = "x".repeat(1000);
        let genuine =
            "[2026-11-24 16:03:19] NOTICE[6] manager.c: 198.51.100.7 failed to authenticate as 'y'";
        let mut lines = vec![cut];
        lines.extend([filler.as_str(); 5]);
        lines.push(genuine);
        let judged = judge(&lines);
        assert!(
            judged[1..=5].iter().all(|j| j == "continuation"),
            "{judged:?}"
        );
        assert_eq!(judged[6], "ami_failed_auth 198.51.100.7");
        // And in lines: many short ones end it too.
        let mut lines = vec![cut];
        lines.extend([""; MAX_CONTINUATION_LINES]);
        lines.push(genuine);
        let judged = judge(&lines);
        assert_eq!(
            judged[MAX_CONTINUATION_LINES + 1],
            "ami_failed_auth 198.51.100.7"
        );
    }

    #[test]
    fn companion_lines_count_once_per_attempt() {
        let lines = [
            // One REGISTER refused by ACL, processed twice (as captured).
            "[2026-11-24 16:03:19] NOTICE[2766] acl.c: SIP Peer ACL: Rejecting '127.0.0.3' due to a failure to pass ACL '(BASELINE)'",
            "[2026-11-24 16:03:19] NOTICE[2766] chan_sip.c: Registration from '<sip:200@127.0.0.1>' failed for '127.0.0.3:47307' - Device does not match ACL",
            "[2026-11-24 16:03:19] NOTICE[2766] acl.c: SIP Peer ACL: Rejecting '127.0.0.3' due to a failure to pass ACL '(BASELINE)'",
            "[2026-11-24 16:03:20] NOTICE[2766] chan_sip.c: Registration from '<sip:200@127.0.0.1>' failed for '127.0.0.3:47307' - Device does not match ACL",
            // Later: a new attempt.
            "[2026-11-24 16:03:25] NOTICE[2766] acl.c: SIP Peer ACL: Rejecting '127.0.0.3' due to a failure to pass ACL '(BASELINE)'",
            // AMI: each login is its own session thread.
            "[2026-11-24 16:03:21] NOTICE[3102] manager.c: 127.0.0.4 tried to authenticate with nonexistent user 'nosuchuser'",
            "[2026-11-24 16:03:21] NOTICE[3102] manager.c: 127.0.0.4 failed to authenticate as 'nosuchuser'",
            "[2026-11-24 16:03:21] NOTICE[3103] manager.c: 127.0.0.4 failed to authenticate as 'astban'",
            // Two wrong secrets on one connection are two guesses.
            "[2026-11-24 16:03:21] NOTICE[3103] manager.c: 127.0.0.4 failed to authenticate as 'astban'",
            // Rules without an attempt group count every line.
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:100@x>' failed for '127.0.0.2:5060' - Wrong password",
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:100@x>' failed for '127.0.0.2:5060' - Wrong password",
        ];
        assert_eq!(
            judge(&lines),
            [
                "sip_acl_rejecting 127.0.0.3",
                "folded sip_acl 127.0.0.3 -1",
                "folded sip_acl_rejecting 127.0.0.3 -2",
                "folded sip_acl 127.0.0.3 -3",
                "sip_acl_rejecting 127.0.0.3",
                "ami_unknown_user 127.0.0.4",
                "folded ami_failed_auth 127.0.0.4 -1",
                "ami_failed_auth 127.0.0.4",
                "ami_failed_auth 127.0.0.4",
                "sip_wrong_password 127.0.0.2",
                "sip_wrong_password 127.0.0.2",
            ]
        );
    }

    #[test]
    fn a_reused_callid_never_folds_two_guesses() {
        let guess = "[2026-12-01 07:47:41] NOTICE[1] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:300@x>' failed for '10.203.1.2:5060' (callid: 2262848910) - Failed to authenticate";
        let refused = "[2026-12-01 07:47:41] NOTICE[1] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:999@x>' failed for '10.203.1.2:5060' (callid: 2262848910) - No matching endpoint found";
        // Four guesses, four refusals: the first refusal and the third
        // (a third request) open attempts that the next guess ends.
        let judged = judge(&[
            refused, guess, guess, refused, refused, refused, guess, guess,
        ]);
        let counted = judged.iter().filter(|j| !j.starts_with("folded")).count();
        assert_eq!(counted, 5, "{judged:?}");
    }

    /// A real line of each built-in rule, from 203.0.113.5, with `@` where
    /// the sender's text stands, and how often the sender counts when a
    /// newline is injected there (1 where Asterisk writes the address
    /// first, else 0). Rules whose lines carry no text of the sender are
    /// listed apart, and so is the one whose sender's text ends the line.
    const SAMPLES: &[(&str, &str, usize)] = &[
        (
            "sip_wrong_password",
            "chan_sip.c: Registration from '<sip:1@@x>' failed for '203.0.113.5:5060' - Wrong password",
            0,
        ),
        (
            "sip_unknown_peer",
            "chan_sip.c: Registration from '<sip:1@@x>' failed for '203.0.113.5:5060' - No matching peer found",
            0,
        ),
        (
            "sip_peer_may_not_register",
            "chan_sip.c: Registration from '<sip:1@@x>' failed for '203.0.113.5:5060' - Peer is not supposed to register",
            0,
        ),
        (
            "sip_wrong_transport",
            "chan_sip.c: Registration from '<sip:1@@x>' failed for '203.0.113.5:5060' - Device not configured to use this transport type",
            0,
        ),
        (
            "sip_acl",
            "chan_sip.c: Registration from '<sip:1@@x>' failed for '203.0.113.5:5060' - Device does not match ACL",
            0,
        ),
        (
            "sip_extension_not_found",
            "chan_sip.c: Call from '' (203.0.113.5:5060) to extension '1@' rejected because extension not found in context 'default'.",
            0,
        ),
        (
            "pjsip_no_endpoint",
            "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:9@@x>' failed for '203.0.113.5:5060' (callid: c1) - No matching endpoint found",
            0,
        ),
        (
            "pjsip_failed_auth",
            "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:300@x>' failed for '203.0.113.5:5060' (callid: c@1) - Failed to authenticate",
            0,
        ),
        (
            "pjsip_acl",
            "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:4@@x>' failed for '203.0.113.5:5060' (callid: c1) - Not match Endpoint ACL",
            0,
        ),
        (
            "pjsip_extension_not_found",
            "res_pjsip_session.c:  anonymous: Call (UDP:203.0.113.5:5060) to extension '9@' rejected because extension not found in context 'default'.",
            1,
        ),
        (
            "pjsip_extension_not_found_old",
            "res_pjsip_session.c: Call from 'anonymous' (UDP:203.0.113.5:5060) to extension '9@' rejected because extension not found in context 'default'.",
            1,
        ),
        (
            "iax2_wrong_password",
            "chan_iax2.c: Host 203.0.113.5 failed MD5 authentication for 'peer' (e7df7cd2ca07f4f1ab415d457a6e1c13 != 53@ac)",
            1,
        ),
        (
            "iax2_unknown_peer",
            "chan_iax2.c: No registration for peer 'x@' (from 203.0.113.5)",
            0,
        ),
        (
            "iax2_connect_rejected",
            "chan_iax2.c: Rejected connect attempt from 203.0.113.5:4569, who was trying to reach '1@@default'",
            1,
        ),
        (
            "iax2_extension_not_found",
            "chan_iax2.c: Rejected dial attempt from 203.0.113.5:4569, request '1@@default' does not exist",
            1,
        ),
        (
            "ami_unknown_user",
            "manager.c: 203.0.113.5 tried to authenticate with nonexistent user 'x@'",
            1,
        ),
        (
            "ami_acl",
            "manager.c: 203.0.113.5 failed to pass IP ACL as 'x@'",
            1,
        ),
        (
            "ami_failed_auth",
            "manager.c: 203.0.113.5 failed to authenticate as 'x@'",
            1,
        ),
        (
            "security_failed_acl",
            "res_security_log.c: SecurityEvent=\"FailedACL\",EventTV=\"2026-12-01T10:00:00.000+0000\",Severity=\"Error\",Service=\"AMI\",EventVersion=\"1\",AccountID=\"x@\",SessionID=\"0x1\",LocalAddress=\"IPV4/TCP/127.0.0.1/5038\",RemoteAddress=\"IPV4/TCP/203.0.113.5/5038\",ACLName=\"a\"",
            0,
        ),
        (
            "security_invalid_account_id",
            "res_security_log.c: SecurityEvent=\"InvalidAccountID\",EventTV=\"2026-12-01T10:00:00.000+0000\",Severity=\"Error\",Service=\"AMI\",EventVersion=\"1\",AccountID=\"x@\",SessionID=\"0x1\",LocalAddress=\"IPV4/TCP/127.0.0.1/5038\",RemoteAddress=\"IPV4/TCP/203.0.113.5/5038\"",
            0,
        ),
        (
            "security_invalid_password",
            "res_security_log.c: SecurityEvent=\"InvalidPassword\",EventTV=\"2026-12-01T10:00:00.000+0000\",Severity=\"Error\",Service=\"AMI\",EventVersion=\"1\",AccountID=\"x@\",SessionID=\"0x1\",LocalAddress=\"IPV4/TCP/127.0.0.1/5038\",RemoteAddress=\"IPV4/TCP/203.0.113.5/5038\"",
            0,
        ),
        (
            "security_challenge_response_failed",
            "res_security_log.c: SecurityEvent=\"ChallengeResponseFailed\",EventTV=\"2026-12-01T10:00:00.000+0000\",Severity=\"Error\",Service=\"PJSIP\",EventVersion=\"1\",AccountID=\"300\",SessionID=\"c@1\",LocalAddress=\"IPV4/UDP/127.0.0.1/5060\",RemoteAddress=\"IPV4/UDP/203.0.113.5/5060\",Challenge=\"\",Response=\"r\",ExpectedResponse=\"\"",
            0,
        ),
    ];

    /// Rules whose lines hold no text the sender chose (the address, fixed
    /// text, names from the config), so no newline can be injected.
    const NO_SENDER_TEXT: &[&str] = &[
        "sip_acl_rejecting",
        "sip_hacking_attempt",
        "sip_unknown_connection",
        "pjsip_acl_rejecting",
        "iax2_wrong_plaintext",
        "iax2_peer_not_dynamic",
        "iax2_register_denied",
        "iax2_empty_registration",
        "ami_acl_rejecting",
    ];

    /// The sender's username ends the line with no text of Asterisk's after
    /// it: a newline there cannot be told from the end of the message
    /// (Asterisk 18.21, 20.6, 21.1 and later strip such bytes).
    const SENDER_TEXT_ENDS_THE_LINE: &[&str] = &["iax2_failed_auth"];

    #[test]
    fn every_rule_matches_its_sample_line() {
        let rules = RuleSet::load("asterisk").expect("rules");
        for (name, sample, _) in SAMPLES {
            let line = format!(
                "[2026-12-01 10:00:00] NOTICE[42] {}",
                sample.replace('@', "")
            );
            match rules.match_line(line.as_bytes()) {
                LineMatch::Failure { rule, host, .. } => {
                    assert_eq!(rules.rules()[rule].name(), *name, "{line}");
                    assert_eq!(host, IpAddr::from([203, 0, 113, 5]), "{line}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_newline_in_sender_text_never_counts_a_forged_line_for_any_rule() {
        let rules = RuleSet::load("asterisk").expect("rules");
        // Every built-in rule is either tested here or listed with why not.
        for rule in rules.rules() {
            let name = rule.name();
            let listed = SAMPLES.iter().any(|(n, ..)| *n == name)
                || NO_SENDER_TEXT.contains(&name)
                || SENDER_TEXT_ENDS_THE_LINE.contains(&name)
                // Not every security event is spelled out: they share one shape.
                || name.starts_with("security_");
            assert!(listed, "rule {name} has no newline-injection case");
        }
        let prefix = "[2026-12-01 10:00:00] NOTICE[42] ";
        let genuine = "[2026-12-01 10:00:01] NOTICE[43] manager.c: 198.51.100.7 failed to authenticate as 'admin'";
        for (name, sample, sender) in SAMPLES {
            let at = sample.find('@').expect("marker");
            let module_end = sample.find(": ").expect("module") + 2;
            let (before, after) = (&sample[..at], &sample[at + 1..]);
            // The sender's text: a newline, then what an attacker would
            // put before a complete line of the same rule naming another
            // address (nothing; the message's ending alone on a line;
            // filler as long as an IAX2 field), a newline, then filler
            // before Asterisk's own rest of the message.
            let forged = format!(
                "{prefix}{}",
                sample
                    .replace('@', "")
                    .replace("203.0.113.5", "10.66.66.66")
            );
            let ending = &sample[sample.len() - 2..];
            let filler = "f".repeat(250);
            for before_forged in [
                vec![],
                vec![ending],
                vec![filler.as_str()],
                vec![ending, ending],
            ] {
                let mut lines = vec![format!("{prefix}{before}")];
                lines.extend(before_forged.iter().map(|l| (*l).to_owned()));
                lines.push(forged.clone());
                lines.push(format!("x{after}"));
                // Where every line within the sender's field is the
                // sender's, the genuine line comes after the field.
                let rule = rules
                    .rules()
                    .iter()
                    .find(|r| r.name() == *name)
                    .expect("rule");
                if let Some(max) = rule.sender_text_max() {
                    lines.push("n".repeat(max));
                }
                lines.push(genuine.to_owned());
                let judged = judge(&lines.iter().map(String::as_str).collect::<Vec<_>>());
                let count = |host: &str| {
                    judged
                        .iter()
                        .filter(|j| !j.starts_with("folded") && j.ends_with(&format!(" {host}")))
                        .count()
                };
                let shape = format!("{name} after {before_forged:?}");
                assert_eq!(count("10.66.66.66"), 0, "{shape}: {judged:?}");
                assert_eq!(count("198.51.100.7"), 1, "{shape}: {judged:?}");
                assert_eq!(count("203.0.113.5"), *sender, "{shape}: {judged:?}");
                assert!(
                    judged[0].starts_with("cut"),
                    "{shape} [{}]: {judged:?}",
                    &sample[..module_end]
                );
            }
        }
    }

    #[test]
    fn a_reason_no_rule_names_is_not_a_cut_line() {
        // chan_sip reasons without a rule of their own.
        let lines = [
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:1@x>' failed for '198.51.100.2:5060' - Unknown failure",
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:1@x>' failed for '198.51.100.2:5060' - RTP initialization failed",
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:1@x>' failed for '198.51.100.3:5060' - Wrong password",
        ];
        assert_eq!(
            judge(&lines),
            ["missed", "missed", "sip_wrong_password 198.51.100.3"]
        );
    }

    #[test]
    fn phones_behind_one_nat_keep_their_attempts_apart() {
        // Two phones of one office, mistyped usernames, interleaved: each
        // attempt (request, retry, guess) has its own callid.
        let line = |callid: &str, reason: &str| {
            format!(
                "[2026-12-01 07:38:13] NOTICE[23093] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:999@x>' failed for '198.51.100.20:5060' (callid: {callid}) - {reason}"
            )
        };
        let (nme, fta) = ("No matching endpoint found", "Failed to authenticate");
        let lines = [
            line("a", nme),
            line("b", nme),
            line("a", nme),
            line("b", nme),
            line("b", fta),
            line("a", fta),
        ];
        let judged = judge(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        let counted = judged.iter().filter(|j| !j.starts_with("folded")).count();
        assert_eq!(counted, 2, "{judged:?}");
    }

    #[test]
    fn every_rule_matches_under_every_logger_prefix() {
        let rules = RuleSet::load("asterisk").expect("rules");
        // dateformat = %F %T; Asterisk's default dateformat with a call id;
        // the `file:line function:` form; the syslog form.
        let shapes: [fn(&str, &str) -> String; 4] = [
            |module, message| format!("[2026-12-01 10:00:00] NOTICE[42] {module}: {message}"),
            |module, message| {
                format!("[Dec  1 10:00:00] WARNING[42][C-0000001d] {module}: {message}")
            },
            |module, message| {
                format!(
                    "[2026-12-01 10:00:00] NOTICE[42]: {module}:688 log_failed_request: {message}"
                )
            },
            |module, message| {
                format!(
                    "Dec  1 10:00:00 pbx asterisk[123]: NOTICE[42]: {module}:688 in new_invite: {message}"
                )
            },
        ];
        for (name, sample, _) in SAMPLES {
            let sample = sample.replace('@', "");
            let (module, message) = sample.split_once(": ").expect("module");
            for shape in shapes {
                let line = shape(module, message);
                match rules.match_line(line.as_bytes()) {
                    LineMatch::Failure { rule, host, .. } => {
                        assert_eq!(rules.rules()[rule].name(), *name, "{line}");
                        assert_eq!(host, IpAddr::from([203, 0, 113, 5]), "{line}");
                    }
                    other => panic!("{line}: {other:?}"),
                }
            }
        }
    }

    /// Judges `line` as the line reader hands out a line longer than
    /// `max`: its first and last `max / 2` bytes.
    fn judge_long(line: &str, max: usize) -> String {
        let mut s = scanner();
        let keep = max / 2;
        let event = s.scan(Line::TooLong {
            head: &line.as_bytes()[..keep],
            tail: &line.as_bytes()[line.len() - keep..],
        });
        match event {
            Event::Attempt(a) => format!("{} {}", a.rule.name(), a.host),
            Event::TooLong => "too long".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_long_username_does_not_escape_the_log() {
        let long = "u".repeat(20_000);
        // The address first: the head names it.
        let line = format!(
            "[2026-11-24 16:03:21] NOTICE[3102] manager.c: 203.0.113.5 failed to authenticate as '{long}'"
        );
        assert_eq!(judge_long(&line, 8192), "ami_failed_auth 203.0.113.5");
        let line = format!(
            "[2026-12-01 08:19:06] NOTICE[1] res_pjsip_session.c:  anonymous: Call (UDP:203.0.113.5:5060) to extension '{long}' rejected because extension not found in context 'default'."
        );
        assert_eq!(
            judge_long(&line, 8192),
            "pjsip_extension_not_found 203.0.113.5"
        );
        // The address before Asterisk's fixed ending: the tail names it.
        let line = format!(
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:{long}@x>' failed for '203.0.113.5:5060' - Wrong password"
        );
        assert_eq!(judge_long(&line, 8192), "sip_wrong_password 203.0.113.5");
        // A planted address in the kept head, or the sender's text after
        // the address in the tail (a callid), names nobody.
        let line = format!(
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:x>' failed for '10.0.0.1:5060' - Wrong password' {long} ' failed for '203.0.113.5:5060' - Wrong password"
        );
        assert_eq!(judge_long(&line, 8192), "sip_wrong_password 203.0.113.5");
        let line = format!(
            "[2026-11-24 16:03:21] NOTICE[2766] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:{long}@x>' failed for '203.0.113.5:5060' (callid: 10.0.0.1' failed for '10.0.0.2:5060' (callid: x) - Failed to authenticate"
        );
        assert_eq!(judge_long(&line, 8192), "too long");
    }
}

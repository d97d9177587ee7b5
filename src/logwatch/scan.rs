//! Reading a log line after line: what each line means in context.
//!
//! [`RuleSet::match_line`] judges one line alone. Two things need the lines
//! around it:
//!
//! * **Attempts, not lines.** Rules that share an `attempt` group describe
//!   lines Asterisk writes for one attempt. Of such lines from one host and
//!   one Asterisk thread, only the first counts; the others within the next
//!   second are its companions.
//! * **Forged continuation lines.** Asterisk does not escape newlines in
//!   what it logs, and a few fields (IAX2 usernames, for one) can carry
//!   them. An attacker can then end a message early and make the rest look
//!   like a perfectly shaped log line of its own, naming any address. When
//!   a line begins a rule's shape up to the address and stops short of the
//!   rule's end, it was cut by such a newline: the physical lines that
//!   follow, up to and including the next one with a log prefix, are its
//!   continuation and never count.
//!
//!   This does not catch an attacker who finishes the first line's shape
//!   *and* then adds a forged line; nothing in a plain-text log tells those
//!   apart. That is why rules keep attacker text before Asterisk's fixed
//!   endings wherever Asterisk allows it, why the AMI security events
//!   (structured, one field per value) are astban's primary input, and why
//!   `ignoreip` protects the addresses that matter most.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use jiff::Timestamp;

use super::clock::Clock;
use super::filter::{LineMatch, RuleSet};
use super::rule::Rule;

/// Attempt-group entries kept at most; under a flood of distinct hosts the
/// table is emptied rather than grown (at worst a companion line counts).
const MAX_OPEN_ATTEMPTS: usize = 4096;

/// Companion lines are written within this many seconds of the first.
const COMPANION_WINDOW_SECS: i64 = 1;

/// What one line meant.
#[derive(Debug, Clone, Copy)]
pub enum Event<'r> {
    /// Not a log line (no prefix).
    NoPrefix,
    /// A log line no rule matched.
    Missed,
    /// A log line that began a rule's shape and was cut short.
    Cut,
    /// A line after a cut one: not counted, whatever it says.
    Continuation,
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
    Companion {
        /// The rule.
        rule: &'r Rule,
        /// The host.
        host: IpAddr,
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
}

/// Judges lines in order. One per log being read.
#[derive(Debug)]
pub struct Scanner {
    rules: Arc<RuleSet>,
    clock: Clock,
    continuation: bool,
    open: HashMap<(usize, IpAddr, Option<u64>), i64>,
    latest_second: i64,
}

impl Scanner {
    /// A scanner with `rules`, converting times with `clock`.
    pub fn new(rules: Arc<RuleSet>, clock: Clock) -> Scanner {
        Scanner {
            rules,
            clock,
            continuation: false,
            open: HashMap::new(),
            latest_second: i64::MIN,
        }
    }

    /// The rules in use.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Switches to new rules (a reload). Open attempts belong to the old
    /// rules' groups and are forgotten.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        self.rules = rules;
        self.open.clear();
    }

    /// The clock, e.g. to move "now" forward.
    pub fn clock_mut(&mut self) -> &mut Clock {
        &mut self.clock
    }

    /// Judges the next line (without its newline).
    pub fn scan<'s>(&'s mut self, line: &[u8]) -> Event<'s> {
        let matched = self.rules.match_line(line);
        if self.continuation {
            // Text after a cut line is attacker text up to and including
            // the first line that looks like a log line again.
            self.continuation = matches!(matched, LineMatch::NoPrefix);
            return Event::Continuation;
        }
        let (prefix, id, host) = match matched {
            LineMatch::NoPrefix => return Event::NoPrefix,
            LineMatch::Missed { cut, .. } => {
                self.continuation = cut;
                return if cut { Event::Cut } else { Event::Missed };
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
            LineMatch::Failure { prefix, rule, host } => (prefix, rule, host),
        };
        let time = self.clock.timestamp(prefix.stamp);
        let rule = &self.rules.rules()[id];
        if let (Some(group), Some(t)) = (rule.attempt(), time) {
            if is_companion(&mut self.open, &mut self.latest_second, (group, host, prefix.thread), t.as_second()) {
                return Event::Companion { rule, host };
            }
        }
        Event::Attempt(Attempt { rule, host, time })
    }
}

/// Records a line of an attempt group; true if an earlier line of the same
/// attempt was counted within the window.
fn is_companion(
    open: &mut HashMap<(usize, IpAddr, Option<u64>), i64>,
    latest: &mut i64,
    key: (usize, IpAddr, Option<u64>),
    second: i64,
) -> bool {
    if second > *latest {
        *latest = second;
        open.retain(|_, first| *first >= second - COMPANION_WINDOW_SECS);
    }
    if let Some(&first) = open.get(&key) {
        if (first..=first + COMPANION_WINDOW_SECS).contains(&second) {
            return true;
        }
    }
    if open.len() >= MAX_OPEN_ATTEMPTS {
        open.clear();
    }
    open.insert(key, second);
    false
}

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
            if is_companion(
                &mut self.open,
                &mut self.latest_second,
                (group, host, prefix.thread),
                t.as_second(),
            ) {
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
            .map(|line| match s.scan(line.as_bytes()) {
                Event::NoPrefix => "no prefix".into(),
                Event::Missed => "missed".into(),
                Event::Cut => "cut".into(),
                Event::Continuation => "continuation".into(),
                Event::Ambiguous { .. } => "ambiguous".into(),
                Event::Ignored { .. } => "ignored".into(),
                Event::Companion { rule, host } => format!("companion {} {host}", rule.name()),
                Event::Attempt(a) => format!("{} {}", a.rule.name(), a.host),
            })
            .collect()
    }

    #[test]
    fn a_forged_line_after_a_cut_one_never_counts() {
        // An IAX2 username "abc\n<forged line>" (IAX2 carries usernames as
        // raw bytes): the real message ends on the forged line, with
        // Asterisk's own " (x != y)" ending.
        let lines = [
            "[2026-11-24 16:03:18] NOTICE[5] chan_iax2.c: Host 203.0.113.5 failed MD5 authentication for 'abc",
            "[2026-11-24 16:03:18] NOTICE[5] chan_iax2.c: Host 10.0.0.1 failed MD5 authentication for 'x' (e7df != 53ac)",
            "[2026-11-24 16:03:19] NOTICE[5] chan_iax2.c: Host 203.0.113.5 failed MD5 authentication for 'y' (e7df != 53ac)",
        ];
        assert_eq!(
            judge(&lines),
            ["cut", "continuation", "iax2_wrong_password 203.0.113.5"]
        );
        // Filler lines first do not help: the continuation lasts up to and
        // including the next line that looks like a log line.
        let lines = [
            "[2026-11-24 16:03:18] NOTICE[5] manager.c: 203.0.113.5 failed to authenticate as 'abc",
            "filler",
            "",
            "[2026-11-24 16:03:18] NOTICE[5] manager.c: 10.0.0.1 failed to authenticate as 'x'",
            "[2026-11-24 16:03:19] NOTICE[6] manager.c: 203.0.113.5 failed to authenticate as 'y'",
        ];
        assert_eq!(
            judge(&lines),
            [
                "cut",
                "continuation",
                "continuation",
                "continuation",
                "ami_failed_auth 203.0.113.5"
            ]
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
            // Rules without an attempt group count every line.
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:100@x>' failed for '127.0.0.2:5060' - Wrong password",
            "[2026-11-24 16:03:21] NOTICE[2766] chan_sip.c: Registration from '<sip:100@x>' failed for '127.0.0.2:5060' - Wrong password",
        ];
        assert_eq!(
            judge(&lines),
            [
                "sip_acl_rejecting 127.0.0.3",
                "companion sip_acl 127.0.0.3",
                "companion sip_acl_rejecting 127.0.0.3",
                "companion sip_acl 127.0.0.3",
                "sip_acl_rejecting 127.0.0.3",
                "ami_unknown_user 127.0.0.4",
                "companion ami_failed_auth 127.0.0.4",
                "ami_failed_auth 127.0.0.4",
                "sip_wrong_password 127.0.0.2",
                "sip_wrong_password 127.0.0.2",
            ]
        );
    }
}

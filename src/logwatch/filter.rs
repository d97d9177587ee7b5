//! failregex / ignoreregex rules over log lines.
//!
//! A [`RuleSet`] is built once (at start and on reload) from a built-in set
//! or a rules file, plus the config's extra rules and ignoreregex. Matching
//! a line is then pure and allocation-free:
//!
//! 1. the prefix is parsed structurally ([`prefix`]) — no regex;
//! 2. only the rules for the line's module (`chan_sip.c`, `manager.c`, ...)
//!    are tried, in order;
//! 3. each rule first checks its literal head, then looks for readings of
//!    `<HOST>` only where its literal text before the host occurs
//!    ([`Rule::read`]); the first rule with a reading decides;
//! 4. ignoreregex runs only on lines that matched.
//!
//! [`prefix`]: super::prefix

use std::fmt;
use std::net::IpAddr;

use regex::bytes::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

use super::host;
use super::prefix::{self, Prefix};
use super::rule::{self, Reading, Rule, Step};
use crate::failure::{FailureKind, Service};

/// The built-in rule sets, by name; `asterisk` is the default.
pub const BUILTIN_SETS: [(&str, &str); 2] = [
    ("asterisk", include_str!("../../conf/rules/asterisk.toml")),
    ("book", include_str!("../../conf/rules/book.toml")),
];

/// Partial shapes remembered per line for the continuation check; more
/// are checked on the spot.
const MAX_PARTIALS: usize = 8;

/// One failregex rule as written in a rules file or in `[[log.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Unique name, shown by `astban test-log`.
    pub name: String,
    /// The failure this line means.
    pub kind: FailureKind,
    /// The service attacked, when the rule knows it.
    #[serde(default)]
    pub service: Option<Service>,
    /// The regex, with `<HOST>` where Asterisk writes the address.
    pub failregex: String,
    /// Only lines logged by this source file (`chan_sip.c`,
    /// `res_pjsip/pjsip_distributor.c`, `Ext.` for dialplan `Log()`) are
    /// tried; the cheapest way to keep a rule off unrelated lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Where the regex is anchored.
    #[serde(default, skip_serializing_if = "Anchor::is_message")]
    pub anchor: Anchor,
    /// Rules naming the same attempt describe lines Asterisk writes for
    /// one attempt (an ACL rejection logged by acl.c and by chan_sip, a
    /// PJSIP request and its authenticated retry): such lines count once
    /// per attempt (see [`super::scan`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
    /// Within its attempt group: a refusal (the default), or the guess
    /// that ends the attempt.
    #[serde(default, skip_serializing_if = "is_refusal")]
    pub step: Step,
    /// Asterisk writes the address before any text the sender chose: a
    /// line cut short by a newline in that text still counts for the
    /// address (and what follows it never does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_first: bool,
    /// No other message of the rule's module begins with the rule's
    /// leading literal text, so a line that begins with it and stops
    /// before the address was cut short by a newline in attacker text (and
    /// the lines after it are the attacker's, up to the rest of the
    /// message).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starts_unique: bool,
    /// For a message whose ending is so short (a quote, a parenthesis)
    /// that the sender's text can end it by itself: the longest that text
    /// can be (an IAX2 field is at most 255 bytes). After a line cut in it,
    /// every line that starts within this many bytes is the sender's, even
    /// one that seems to end the message; without it, the line that
    /// completes the message ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_text_max: Option<usize>,
    /// Where Asterisk writes the attempt's session id, as literal text
    /// around `<SESSION>` (`"(callid: <SESSION>) - "`): lines of an attempt
    /// group that share it may be one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl RuleDef {
    /// A rule with only what every rule needs: anchored on the message,
    /// any module, in no attempt group; what `[[log.rule]]` gives when it
    /// sets just these three keys.
    pub fn plain(name: &str, kind: FailureKind, failregex: &str) -> RuleDef {
        RuleDef {
            name: name.into(),
            kind,
            service: None,
            failregex: failregex.into(),
            module: None,
            anchor: Anchor::Message,
            attempt: None,
            step: Step::Refusal,
            host_first: false,
            starts_unique: false,
            sender_text_max: None,
            session: None,
        }
    }
}

fn is_refusal(step: &Step) -> bool {
    *step == Step::Refusal
}

/// Where a rule's regex is anchored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// At the message, after `module: ` (the default, and the safe one).
    #[default]
    Message,
    /// At the log level (`NOTICE[1638] chan_sip.c: ...`), for rules written
    /// for fail2ban as `NOTICE.* .*: ...`.
    Level,
}

impl Anchor {
    fn is_message(&self) -> bool {
        *self == Anchor::Message
    }
}

/// The contents of a rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleDef>,
    #[serde(default)]
    ignoreregex: Vec<String>,
}

/// Why a rule set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `log.rules` is neither a built-in name nor a readable file.
    #[error(
        "log.rules = {name:?} is not a built-in rule set ({}) and cannot be read as a rules file: {source}",
        builtin_names()
    )]
    Read {
        /// The value of `log.rules`.
        name: String,
        /// Why the file could not be read.
        source: std::io::Error,
    },
    /// A rules file is not valid TOML of the expected shape.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or built-in set).
        origin: String,
        /// The TOML error, which names the line and key.
        message: String,
    },
    /// A rule does not compile or breaks a rule of rules.
    #[error("rule {name:?} ({origin}): {problem}")]
    Rule {
        /// Where the rule was written.
        origin: String,
        /// Its name.
        name: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// An ignoreregex does not compile.
    #[error("ignoreregex {regex:?} ({origin}): {problem}")]
    Ignore {
        /// Where it was written.
        origin: String,
        /// The regex.
        regex: String,
        /// The regex error.
        problem: String,
    },
    /// No rules at all: nothing would ever be counted.
    #[error(
        "{origin} has no rules, so no line would ever count; name a set with rules in log.rules"
    )]
    Empty {
        /// The rule set.
        origin: String,
    },
}

fn builtin_names() -> String {
    BUILTIN_SETS.map(|(n, _)| n).join(", ")
}

/// What one line means under a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineMatch<'l> {
    /// The line has no log prefix: garbage, or the continuation of a
    /// message that contained a newline.
    NoPrefix,
    /// A log line no rule matched.
    Missed {
        /// The line's prefix.
        prefix: Prefix<'l>,
    },
    /// A log line that began a rule's shape up to the address and did not
    /// finish it: a newline in attacker text cut it short, and the lines
    /// after it are the rest of the message (see [`super::scan`]).
    Cut {
        /// The line's prefix.
        prefix: Prefix<'l>,
        /// Index of the rule whose shape it began.
        rule: usize,
        /// The address, when the rule writes it before any attacker text
        /// ([`Rule::host_first`]): the cut line then still names it.
        host: Option<IpAddr>,
        /// Whether an ignoreregex matched the line.
        ignored: bool,
    },
    /// A rule matched but its readings disagree about the host.
    Ambiguous {
        /// The line's prefix.
        prefix: Prefix<'l>,
        /// Index of the rule.
        rule: usize,
    },
    /// A rule matched, and so did an ignoreregex.
    Ignored {
        /// The line's prefix.
        prefix: Prefix<'l>,
        /// Index of the rule.
        rule: usize,
        /// The host it named.
        host: IpAddr,
    },
    /// A failure of `host`.
    Failure {
        /// The line's prefix.
        prefix: Prefix<'l>,
        /// Index of the rule.
        rule: usize,
        /// The host Asterisk wrote.
        host: IpAddr,
        /// The attempt's session text, if the rule marks one.
        session: Option<&'l [u8]>,
    },
}

/// A module name and the rules to try on its lines, in order.
/// The rules to try on one module's lines, and among them one per
/// distinct unique opening (`starts_unique`), for the cut check.
#[derive(Clone)]
struct ModuleRules {
    module: Box<[u8]>,
    ids: Box<[usize]>,
    openings: Box<[usize]>,
}

impl ModuleRules {
    fn new(module: &[u8], ids: Box<[usize]>, rules: &[Rule]) -> ModuleRules {
        let mut openings: Vec<usize> = Vec::new();
        for &id in &ids {
            let rule = &rules[id];
            if rule.starts_unique() && !openings.iter().any(|&o| rules[o].opens_like(rule)) {
                openings.push(id);
            }
        }
        ModuleRules {
            module: module.into(),
            ids,
            openings: openings.into(),
        }
    }
}

/// A compiled set of rules.
///
/// Cloning is cheap (compiled regexes are shared) and gives the clone its
/// own regex scratch space: a thread that scans with its own clone never
/// contends with another for it.
#[derive(Clone)]
pub struct RuleSet {
    origin: String,
    rules: Vec<Rule>,
    /// For each module named by a rule: the rules to try on its lines.
    by_module: Vec<ModuleRules>,
    /// The rules to try on lines of any other module.
    any_module: ModuleRules,
    ignore: Option<RegexSet>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("origin", &self.origin)
            .field(
                "rules",
                &self.rules.iter().map(Rule::name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What a rule set is built from: `[log]`'s `rules`, `[[log.rule]]` and
/// `ignoreregex` (`&LogConfig` converts into it), so that the filter needs
/// nothing else of the config.
#[derive(Debug, Clone, Copy)]
pub struct RuleSources<'a> {
    /// A built-in set's name (`asterisk`, `book`) or a rules file's path.
    pub rules: &'a str,
    /// Rules added to the set.
    pub extra_rules: &'a [RuleDef],
    /// Lines matching any of these never count.
    pub ignoreregex: &'a [String],
}

impl RuleSet {
    /// The set `config.rules` names (built-in or a file), plus
    /// `config.extra_rules` and `config.ignoreregex`.
    pub fn from_config<'a>(config: impl Into<RuleSources<'a>>) -> Result<RuleSet, FilterError> {
        let config = config.into();
        let (origin, file) = load_file(config.rules)?;
        let mut defs: Vec<(RuleDef, String)> =
            file.rule.into_iter().map(|d| (d, origin.clone())).collect();
        defs.extend(
            config
                .extra_rules
                .iter()
                .enumerate()
                .map(|(i, d)| (d.clone(), format!("log.rule[{i}]"))),
        );
        let mut ignore: Vec<(String, String)> = file
            .ignoreregex
            .into_iter()
            .map(|r| (r, origin.clone()))
            .collect();
        ignore.extend(
            config
                .ignoreregex
                .iter()
                .enumerate()
                .map(|(i, r)| (r.clone(), format!("log.ignoreregex[{i}]"))),
        );
        let mut description = origin;
        if !config.extra_rules.is_empty() {
            description.push_str(&format!(
                " + {} rule(s) from [[log.rule]]",
                config.extra_rules.len()
            ));
        }
        RuleSet::new(description, defs, ignore)
    }

    /// A built-in set alone (`asterisk`, `book`), or a rules file.
    pub fn load(name_or_path: &str) -> Result<RuleSet, FilterError> {
        RuleSet::from_config(RuleSources {
            rules: name_or_path,
            extra_rules: &[],
            ignoreregex: &[],
        })
    }

    /// Compiles rules, each with the place it was written (for errors),
    /// and ignoreregexes likewise.
    pub fn new(
        origin: String,
        defs: Vec<(RuleDef, String)>,
        ignoreregex: Vec<(String, String)>,
    ) -> Result<RuleSet, FilterError> {
        if defs.is_empty() {
            return Err(FilterError::Empty { origin });
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(defs.len());
        let mut attempts: Vec<String> = Vec::new();
        let mut modules: Vec<String> = Vec::new();
        for (def, def_origin) in &defs {
            let fail = |problem: String| FilterError::Rule {
                origin: def_origin.clone(),
                name: def.name.clone(),
                problem,
            };
            if def.name.is_empty() {
                return Err(fail("has an empty name".into()));
            }
            if rules.iter().any(|r| r.name() == def.name) {
                return Err(fail(
                    "the name is used by an earlier rule; names must be unique".into(),
                ));
            }
            let attempt =
                def.attempt
                    .as_ref()
                    .map(|a| match attempts.iter().position(|x| x == a) {
                        Some(i) => i,
                        None => {
                            attempts.push(a.clone());
                            attempts.len() - 1
                        }
                    });
            let module = match def.module.as_deref() {
                None => 0,
                Some(m) => match modules.iter().position(|x| x == m) {
                    Some(i) => i + 1,
                    None => {
                        modules.push(m.to_owned());
                        modules.len()
                    }
                },
            };
            let rule = Rule::compile(def, rules.len(), attempt, module);
            rules.push(rule.map_err(|e| fail(e.to_string()))?);
        }
        let ignore = compile_ignore(&ignoreregex)?;
        let any_ids = (0..rules.len())
            .filter(|&i| rules[i].module().is_none())
            .collect();
        let any_module = ModuleRules::new(b"", any_ids, &rules);
        let mut by_module: Vec<ModuleRules> = Vec::new();
        for rule in &rules {
            let Some(module) = rule.module() else {
                continue;
            };
            if by_module.iter().any(|m| *m.module == *module) {
                continue;
            }
            let ids = (0..rules.len())
                .filter(|&i| rules[i].module().is_none_or(|m| m == module))
                .collect();
            by_module.push(ModuleRules::new(module, ids, &rules));
        }
        Ok(RuleSet {
            origin,
            rules,
            by_module,
            any_module,
            ignore,
        })
    }

    /// Where the rules came from, for humans.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Matches one line (without its newline).
    pub fn match_line<'l>(&self, line: &'l [u8]) -> LineMatch<'l> {
        let Some(prefix) = prefix::parse(line) else {
            return LineMatch::NoPrefix;
        };
        let module = prefix.module;
        // Most lines come from modules no rule names: reject on length and
        // last byte before comparing whole names.
        let found = self
            .by_module
            .iter()
            .find(|m| {
                m.module.len() == module.len()
                    && m.module.last() == module.last()
                    && *m.module == *module
            })
            .unwrap_or(&self.any_module);
        let ids = &*found.ids;
        let mut partials = [(0usize, 0usize); MAX_PARTIALS];
        let mut n_partials = 0;
        let mut cut = None;
        for &id in ids {
            let rule = &self.rules[id];
            let target = target(line, &prefix, rule);
            match rule.read(target) {
                Reading::Host(host) => {
                    return if self.ignored(line) {
                        LineMatch::Ignored {
                            prefix,
                            rule: id,
                            host,
                        }
                    } else {
                        LineMatch::Failure {
                            prefix,
                            rule: id,
                            host,
                            session: rule.session(target),
                        }
                    };
                }
                Reading::Ambiguous => return LineMatch::Ambiguous { prefix, rule: id },
                Reading::Nothing { partial: Some(at) } if cut.is_none() => {
                    if n_partials < MAX_PARTIALS {
                        partials[n_partials] = (id, at);
                        n_partials += 1;
                    } else if rule.started_at(target, at) {
                        cut = Some((id, at));
                    }
                }
                Reading::Nothing { .. } => {}
            }
        }
        // Only now, with no rule matching, is it worth asking whether the
        // line began a rule's shape.
        let cut = cut.or_else(|| {
            partials[..n_partials].iter().copied().find(|&(id, at)| {
                let rule = &self.rules[id];
                rule.started_at(target(line, &prefix, rule), at)
            })
        });
        let Some((id, at)) = cut else {
            // A message cut before its address: it began a rule's unique
            // opening and never reached the text before the address.
            let began = found.openings.iter().copied().find(|&id| {
                let rule = &self.rules[id];
                rule.began_before_host(target(line, &prefix, rule))
            });
            return match began {
                Some(rule) => LineMatch::Cut {
                    prefix,
                    rule,
                    host: None,
                    ignored: false,
                },
                None => LineMatch::Missed { prefix },
            };
        };
        let rule = &self.rules[id];
        let host = rule
            .host_first()
            .then(|| host::parse_at(target(line, &prefix, rule), at))
            .flatten()
            .map(|t| t.addr);
        LineMatch::Cut {
            prefix,
            rule: id,
            host,
            ignored: host.is_some() && self.ignored(line),
        }
    }

    /// The text rule `id` is matched against in `line`.
    pub fn target_of<'l>(&self, id: usize, line: &'l [u8], prefix: &Prefix<'_>) -> &'l [u8] {
        match self.rules.get(id) {
            Some(rule) => target(line, prefix, rule),
            None => &line[prefix.message_start..],
        }
    }

    /// Whether an ignoreregex matches the line.
    fn ignored(&self, line: &[u8]) -> bool {
        self.ignore.as_ref().is_some_and(|set| set.is_match(line))
    }

    /// Whether the cut message of rule `id` has ended: `joined` (the cut
    /// line's target with the lines after it) reads as a complete message
    /// of the rule. Only the whole rule ends it: an ending alone (`'.`,
    /// `)`) is text an attacker can put on a line of its own.
    ///
    /// Rules of the same module that open with the same text (chan_sip's
    /// "Registration from '" for each reason) describe the same message, so
    /// any of them may complete it.
    pub fn completes(&self, id: usize, joined: &[u8]) -> bool {
        let Some(cut) = self.rules.get(id) else {
            return false;
        };
        self.rules
            .iter()
            .filter(|r| r.index() == id || (r.module() == cut.module() && r.opens_like(cut)))
            .any(|r| !matches!(r.read(joined), Reading::Nothing { .. }))
    }
}

fn target<'l>(line: &'l [u8], prefix: &Prefix<'_>, rule: &Rule) -> &'l [u8] {
    match rule.anchor() {
        Anchor::Message => &line[prefix.message_start..],
        Anchor::Level => &line[prefix.level_start..],
    }
}

fn load_file(name: &str) -> Result<(String, RuleFile), FilterError> {
    let (origin, text) = match BUILTIN_SETS.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => (format!("built-in rule set {n:?}"), (*text).to_owned()),
        None => {
            let text = std::fs::read_to_string(name).map_err(|source| FilterError::Read {
                name: name.to_owned(),
                source,
            })?;
            (format!("rules file {name}"), text)
        }
    };
    let file = toml::from_str(&text).map_err(|e| FilterError::Parse {
        origin: origin.clone(),
        message: e.to_string(),
    })?;
    Ok((origin, file))
}

fn compile_ignore(ignoreregex: &[(String, String)]) -> Result<Option<RegexSet>, FilterError> {
    if ignoreregex.is_empty() {
        return Ok(None);
    }
    for (regex, origin) in ignoreregex {
        rule::build(regex).map_err(|e| FilterError::Ignore {
            origin: origin.clone(),
            regex: regex.clone(),
            problem: e.to_string(),
        })?;
    }
    RegexSetBuilder::new(ignoreregex.iter().map(|(r, _)| r))
        .unicode(false)
        .build()
        .map(Some)
        .map_err(|e| FilterError::Ignore {
            origin: "ignoreregex".into(),
            regex: String::new(),
            problem: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a line means: `rule host`, or a word for the other outcomes.
    fn judge(set: &RuleSet, line: &str) -> String {
        match set.match_line(line.as_bytes()) {
            LineMatch::Failure { rule, host, .. } => format!("{} {host}", set.rules()[rule].name()),
            LineMatch::Ambiguous { .. } => "ambiguous".into(),
            LineMatch::Ignored { .. } => "ignored".into(),
            LineMatch::Cut { host: Some(h), .. } => format!("cut {h}"),
            LineMatch::Cut { host: None, .. } => "cut".into(),
            LineMatch::Missed { .. } => "missed".into(),
            LineMatch::NoPrefix => "no prefix".into(),
        }
    }

    fn asterisk() -> RuleSet {
        RuleSet::load("asterisk").expect("built-in set compiles")
    }

    const P: &str = "[2026-11-24 16:03:18] NOTICE[2766] ";

    #[test]
    fn built_in_sets_compile() {
        for (name, _) in BUILTIN_SETS {
            let set = RuleSet::load(name).expect(name);
            assert!(!set.rules().is_empty());
        }
        let set = RuleSet::load("asterisk").expect("asterisk");
        let groups: std::collections::BTreeSet<_> =
            set.rules().iter().filter_map(Rule::attempt).collect();
        assert_eq!(groups.len(), 4);
    }

    #[test]
    fn every_asterisk_rule_matches_what_asterisk_writes() {
        let set = asterisk();
        let cases = [
            (
                "chan_sip.c: Registration from '<sip:100@192.0.2.1>' failed for '203.0.113.5:5060' - Wrong password",
                "sip_wrong_password 203.0.113.5",
            ),
            (
                "chan_sip.c: Registration from '\"100\" <sip:100@x>' failed for '203.0.113.5' - No matching peer found",
                "sip_unknown_peer 203.0.113.5",
            ),
            (
                "chan_sip.c: Registration from '<sip:1@x>' failed for '[2001:db8::5]:5060' - Username/auth name mismatch",
                "sip_unknown_peer 2001:db8::5",
            ),
            (
                "chan_sip.c: Registration from '<sip:1@x>' failed for '203.0.113.5:5060' - Not a local domain",
                "sip_unknown_peer 203.0.113.5",
            ),
            (
                "chan_sip.c: Registration from '<sip:1@x>' failed for '203.0.113.5:5060' - Peer is not supposed to register",
                "sip_peer_may_not_register 203.0.113.5",
            ),
            (
                "chan_sip.c: Registration from '<sip:1@x>' failed for '203.0.113.5:5060' - Device not configured to use this transport type",
                "sip_wrong_transport 203.0.113.5",
            ),
            (
                "chan_sip.c: Registration from '<sip:1@x>' failed for '203.0.113.5:5060' - Device does not match ACL",
                "sip_acl 203.0.113.5",
            ),
            (
                "chan_sip.c: Registration from '<sip:1@x>' failed for '203.0.113.5' - ACL error (permit/deny)",
                "sip_acl 203.0.113.5",
            ),
            (
                "acl.c: SIP Peer ACL: Rejecting '203.0.113.5' due to a failure to pass ACL '(BASELINE)'",
                "sip_acl_rejecting 203.0.113.5",
            ),
            (
                "chan_sip.c: Call from '' (203.0.113.5:10836) to extension '0972598285108' rejected because extension not found in context 'default'.",
                "sip_extension_not_found 203.0.113.5",
            ),
            (
                "chan_sip.c: hacking attempt detected '203.0.113.5'",
                "sip_hacking_attempt 203.0.113.5",
            ),
            (
                "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '\"1000\" <sip:1000@10.0.0.1>' failed for '203.0.113.5:48336' (callid: 276666022) - No matching endpoint found",
                "pjsip_no_endpoint 203.0.113.5",
            ),
            (
                "res_pjsip/pjsip_distributor.c: Request 'INVITE' from '<sip:1@x>' failed for '203.0.113.5:5060' (callid: a@b) - No matching endpoint found after 5 tries in 1.234 ms",
                "pjsip_no_endpoint 203.0.113.5",
            ),
            (
                "res_pjsip/pjsip_distributor.c: Request from '<sip:1@x>' failed for '[2001:db8::5]:5060' (callid: a) - Failed to authenticate",
                "pjsip_failed_auth 2001:db8::5",
            ),
            (
                "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:1@x>' failed for '203.0.113.5:5060' (callid: a) - Error to authenticate",
                "pjsip_failed_auth 203.0.113.5",
            ),
            (
                "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:1@x>' failed for '203.0.113.5:5060' (callid: a) - Not match Endpoint Contact ACL",
                "pjsip_acl 203.0.113.5",
            ),
            (
                "acl.c: SIP ACL: Rejecting '203.0.113.5' due to a failure to pass ACL 'office'",
                "pjsip_acl_rejecting 203.0.113.5",
            ),
            (
                "chan_iax2.c: Host 203.0.113.5 failed MD5 authentication for 'Fail2ban' (e7df7cd2ca07f4f1ab415d457a6e1c13 != 53ac4bc41ee4ec77888ed4aa50677247)",
                "iax2_wrong_password 203.0.113.5",
            ),
            (
                "chan_iax2.c: Host 203.0.113.5 failed to authenticate as 'Fail2ban'",
                "iax2_failed_auth 203.0.113.5",
            ),
            (
                "chan_iax2.c: No registration for peer 'Fail2ban' (from 203.0.113.5)",
                "iax2_unknown_peer 203.0.113.5",
            ),
            (
                "manager.c: 203.0.113.5 tried to authenticate with nonexistent user 'opennms'",
                "ami_unknown_user 203.0.113.5",
            ),
            (
                "manager.c: 203.0.113.5 failed to pass IP ACL as 'aclonly'",
                "ami_acl 203.0.113.5",
            ),
            (
                "acl.c: Manager User ACL: Rejecting '203.0.113.5' due to a failure to pass ACL '(BASELINE)'",
                "ami_acl_rejecting 203.0.113.5",
            ),
            (
                "manager.c: ::ffff:203.0.113.5 failed to authenticate as 'admin'",
                "ami_failed_auth 203.0.113.5",
            ),
        ];
        for (rest, expected) in cases {
            assert_eq!(judge(&set, &format!("{P}{rest}")), expected, "{rest}");
        }
        let syslog = "Nov  4 18:30:40 pbx asterisk[32229]: NOTICE[32257]: chan_sip.c:23417 in handle_request_register: Registration from '<sip:301@example.com>' failed for '203.0.113.5:36998' - Wrong password";
        assert_eq!(judge(&set, syslog), "sip_wrong_password 203.0.113.5");
        let dialplan = "[2013-11-11 14:33:38] WARNING[6756][C-0000001d] Ext. s: \"Rejecting unknown SIP connection from 203.0.113.5\"";
        assert_eq!(judge(&set, dialplan), "sip_unknown_connection 203.0.113.5");
        let security = "[2026-11-24 16:03:19] SECURITY[2771] res_security_log.c: SecurityEvent=\"InvalidAccountID\",EventTV=\"2026-11-24T16:03:21.504+0000\",Severity=\"Error\",Service=\"AMI\",EventVersion=\"1\",AccountID=\"nosuchuser\",SessionID=\"0x7fcb3bb99460\",LocalAddress=\"IPV4/TCP/127.0.0.1/5038\",RemoteAddress=\"IPV6/TCP/2001:db8::5/35949\",SessionTV=\"1970-01-01T00:00:00.000+0000\"";
        assert_eq!(
            judge(&set, security),
            "security_invalid_account_id 2001:db8::5"
        );
    }

    #[test]
    fn quoted_rule_text_elsewhere_in_a_message_does_not_match() {
        let set = asterisk();
        for line in [
            // The rule's text inside another message.
            format!("{P}chan_sip.c: Received response: \"Forbidden\" from 'Registration from '<x>' failed for '10.0.0.1:5060' - Wrong password'"),
            // The right message from a module that does not write it.
            format!("{P}res_foo.c: Registration from '<x>' failed for '10.0.0.1:5060' - Wrong password"),
            // A level the attacker named inside the message.
            format!("{P}pbx.c: NOTICE[1] manager.c: 10.0.0.1 failed to authenticate as 'x'"),
            // Normal traffic.
            "[2026-11-24 16:03:18] SECURITY[2771] res_security_log.c: SecurityEvent=\"ChallengeSent\",EventTV=\"x\",Severity=\"Informational\",Service=\"SIP\",EventVersion=\"1\",AccountID=\"100\",SessionID=\"0x1\",LocalAddress=\"IPV4/UDP/127.0.0.1/5060\",RemoteAddress=\"IPV4/UDP/10.0.0.1/59568\",Challenge=\"45249bab\"".into(),
        ] {
            assert_eq!(judge(&set, &line), "missed", "{line}");
        }
    }

    #[test]
    fn chan_sip_from_header_cannot_choose_the_host() {
        let set = asterisk();
        let line = format!(
            "{P}chan_sip.c: Registration from '<sip:x@y>' failed for '10.0.0.1:5060' - Wrong password' failed for '203.0.113.5:5060' - Wrong password"
        );
        assert_eq!(judge(&set, &line), "sip_wrong_password 203.0.113.5");
        let line = format!(
            "{P}chan_sip.c: Registration from '' failed for '10.0.0.1' - Wrong password' failed for '[2001:db8::5]:5060' - Device does not match ACL"
        );
        assert_eq!(judge(&set, &line), "sip_acl 2001:db8::5");
    }

    #[test]
    fn attacker_text_on_both_sides_makes_a_planted_line_ambiguous() {
        let set = asterisk();
        for rest in [
            // pjsip: a planted reading in the callid, or in the From header.
            "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:1@x>' failed for '203.0.113.5:5060' (callid: a' failed for '10.0.0.1:5060' (callid: b) - No matching endpoint found",
            "res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:1@x>' failed for '10.0.0.1:5060' (callid: b) - No matching endpoint found' failed for '203.0.113.5:5060' (callid: a) - No matching endpoint found",
            // chan_sip calls: in the caller name, or in the extension.
            "chan_sip.c: Call from 'x' (10.0.0.1:5060) to extension '1' rejected because extension not found in context 'default'.' (203.0.113.5:5060) to extension '2' rejected because extension not found in context 'default'.",
            "chan_sip.c: Call from '' (203.0.113.5:5060) to extension '1' (10.0.0.1:5060) to extension '2' rejected because extension not found in context 'default'.",
            // res_security_log: a RemoteAddress planted (with a SessionID
            // before it) in AccountID, in SessionID or in ReceivedHash.
            "res_security_log.c: SecurityEvent=\"InvalidPassword\",EventTV=\"x\",Severity=\"Error\",Service=\"SIP\",EventVersion=\"2\",AccountID=\"a\",SessionID=\"0x1\",LocalAddress=\"x\",RemoteAddress=\"IPV4/UDP/10.0.0.1/5060\",SessionID=\"0x1\",LocalAddress=\"IPV4/UDP/127.0.0.1/5060\",RemoteAddress=\"IPV4/UDP/203.0.113.5/5060\",Challenge=\"1\",ReceivedChallenge=\"1\",ReceivedHash=\"2\"",
            "res_security_log.c: SecurityEvent=\"InvalidAccountID\",EventTV=\"x\",Severity=\"Error\",Service=\"PJSIP\",EventVersion=\"1\",AccountID=\"1\",SessionID=\"x\",a=\"b\",RemoteAddress=\"IPV4/UDP/10.0.0.1/1111\",y=\"z\",LocalAddress=\"IPV4/UDP/1.2.3.4/5060\",RemoteAddress=\"IPV4/UDP/203.0.113.5/5061\"",
            "res_security_log.c: SecurityEvent=\"InvalidPassword\",EventTV=\"x\",Severity=\"Error\",Service=\"SIP\",EventVersion=\"2\",AccountID=\"a\",SessionID=\"0x1\",LocalAddress=\"IPV4/UDP/127.0.0.1/5060\",RemoteAddress=\"IPV4/UDP/203.0.113.5/5060\",Challenge=\"1\",ReceivedChallenge=\"1\",ReceivedHash=\"2\",RemoteAddress=\"IPV4/UDP/10.0.0.1/5060\"",
        ] {
            assert_eq!(judge(&set, &format!("{P}{rest}")), "ambiguous", "{rest}");
        }
    }

    #[test]
    fn pjsip_calls_to_missing_extensions_over_every_transport() {
        let set = asterisk();
        for (transport, addr, host) in [
            ("UDP", "203.0.113.5:5060", "203.0.113.5"),
            ("TCP", "203.0.113.5:40312", "203.0.113.5"),
            ("TLS", "203.0.113.5:5061", "203.0.113.5"),
            ("WS", "203.0.113.5:8088", "203.0.113.5"),
            ("WSS", "203.0.113.5:8089", "203.0.113.5"),
            ("UDP", "[2001:db8::5]:5060", "2001:db8::5"),
            ("TCP6", "[2001:db8::5]:5060", "2001:db8::5"),
        ] {
            for message in [
                format!(
                    " anonymous: Call ({transport}:{addr}) to extension '9011' rejected because extension not found in context 'from-external'."
                ),
                format!(
                    "Call from 'anonymous' ({transport}:{addr}) to extension '9011' rejected because extension not found in context 'default'."
                ),
            ] {
                let line = format!("{P}res_pjsip_session.c: {message}");
                let judged = judge(&set, &line);
                assert!(judged.ends_with(&format!(" {host}")), "{line}: {judged}");
                assert!(
                    judged.starts_with("pjsip_extension_not_found"),
                    "{line}: {judged}"
                );
            }
        }
        // The extension is the caller's: a planted address there changes
        // nothing, the address after the transport is Asterisk's.
        let line = format!(
            "{P}res_pjsip_session.c:  anonymous: Call (UDP:203.0.113.5:5060) to extension '1) to extension (UDP:10.0.0.1:5060)' rejected because extension not found in context 'default'."
        );
        assert_eq!(judge(&set, &line), "pjsip_extension_not_found 203.0.113.5");
    }

    #[test]
    fn host_first_messages_ignore_what_follows() {
        let set = asterisk();
        for (rest, expected) in [
            (
                "manager.c: 203.0.113.5 failed to authenticate as 'x' from 10.0.0.1 failed to authenticate as 'y'",
                "ami_failed_auth 203.0.113.5",
            ),
            (
                "manager.c: 203.0.113.5 tried to authenticate with nonexistent user '10.0.0.1 tried to authenticate with nonexistent user 'a'",
                "ami_unknown_user 203.0.113.5",
            ),
            (
                "chan_iax2.c: Host 203.0.113.5 failed MD5 authentication for 'peer' (e7df7cd2ca07f4f1ab415d457a6e1c13 != x' (from 10.0.0.1)' (b != c))",
                "iax2_wrong_password 203.0.113.5",
            ),
            (
                "chan_iax2.c: No registration for peer 'a' (from 10.0.0.1)' (from 203.0.113.5)",
                "iax2_unknown_peer 203.0.113.5",
            ),
            (
                "acl.c: SIP Peer ACL: Rejecting '203.0.113.5' due to a failure to pass ACL 'x' y '10.0.0.1'",
                "sip_acl_rejecting 203.0.113.5",
            ),
        ] {
            assert_eq!(judge(&set, &format!("{P}{rest}")), expected, "{rest}");
        }
        // fail2ban's own sample: a SessionID that plants a RemoteAddress,
        // but Asterisk's closing quote spoils the planted reading.
        let line = format!(
            "{P}res_security_log.c: SecurityEvent=\"InvalidAccountID\",EventTV=\"x\",Severity=\"Error\",Service=\"PJSIP\",EventVersion=\"1\",AccountID=\"70000180\",SessionID=\"\",LocalAddress=\"IPV4/UDP/127.0.0.1/5060\",RemoteAddress=\"IPV4/UDP/5.6.7.8/1111\"\",LocalAddress=\"IPV4/UDP/1.2.3.4/5060\",RemoteAddress=\"IPV4/UDP/10.250.251.252/5061\""
        );
        assert_eq!(
            judge(&set, &line),
            "security_invalid_account_id 10.250.251.252"
        );
        // The dialplan extension is the caller's; a message it forges ends
        // where the real one begins, so it does not match (nothing of the
        // caller's follows the address, so it is not a cut line either).
        let line = "[2013-11-11 14:33:38] WARNING[6756] Ext. s: \"Rejecting unknown SIP connection from 10.0.0.1\": \"Rejecting unknown SIP connection from 203.0.113.5\"";
        assert_eq!(judge(&set, line), "missed");
        // SIP Contact ACL names an address the sender chose: not a rule.
        let line = format!(
            "{P}acl.c: SIP Contact ACL: Rejecting '10.0.0.1' due to a failure to pass ACL 'x'"
        );
        assert_eq!(judge(&set, &line), "missed");
    }

    #[test]
    fn a_message_cut_after_the_host_is_reported_as_cut() {
        let set = asterisk();
        // Asterisk writes these addresses before any attacker text: the
        // cut line still names its sender.
        let line = format!("{P}chan_iax2.c: Host 203.0.113.5 failed MD5 authentication for 'abc");
        assert_eq!(judge(&set, &line), "cut 203.0.113.5");
        let line = format!("{P}manager.c: 203.0.113.5 failed to authenticate as 'abc");
        assert_eq!(judge(&set, &line), "cut 203.0.113.5");
        let line = format!(
            "{P}res_pjsip_session.c:  anonymous: Call (UDP:203.0.113.5:5060) to extension '1"
        );
        assert_eq!(judge(&set, &line), "cut 203.0.113.5");
        // Here the address follows the sender's From header: nobody.
        let line = format!("{P}chan_sip.c: Call from 'x' (203.0.113.5:5060) to extension '1");
        assert_eq!(judge(&set, &line), "cut");
        let line = format!("{P}chan_iax2.c: Peer 'x' is now REACHABLE!");
        assert_eq!(judge(&set, &line), "missed");
    }

    #[test]
    fn book_rules_are_anchored_at_the_level() {
        let book = RuleSet::load("book").expect("book");
        let line = format!(
            "{P}chan_sip.c: Registration from '<sip:1@x>' failed for '203.0.113.5:5060' - Wrong password"
        );
        assert_eq!(judge(&book, &line), "book_wrong_password 203.0.113.5");
        // Unanchored at the end as printed, so a planted reading is
        // possible: nobody counts.
        let line = format!(
            "{P}manager.c: 203.0.113.5 failed to authenticate as 'x' 10.0.0.1 failed to authenticate as 'y'"
        );
        assert_eq!(judge(&book, &line), "ambiguous");
        assert_eq!(judge(&asterisk(), &line), "ami_failed_auth 203.0.113.5");
        let warning = "[2026-11-24 16:03:18] WARNING[1] chan_sip.c: NOTICE x: Registration from '' failed for '10.0.0.1' - Wrong password";
        assert_eq!(judge(&book, warning), "missed");
        // `NOTICE.* <HOST>` reaches an address in many lines; only one
        // followed by the rule's own text is a cut line.
        let other =
            format!("{P}manager.c: 203.0.113.5 tried to authenticate with nonexistent user 'x'");
        assert_eq!(judge(&book, &other), "missed");
    }

    #[test]
    fn config_adds_rules_and_ignoreregex() {
        let extra = [RuleDef::plain(
            "custom",
            FailureKind::Suspicious,
            "Friendly Scanner from <HOST>$",
        )];
        let set = RuleSet::from_config(RuleSources {
            rules: "asterisk",
            extra_rules: &extra,
            ignoreregex: &["<sip:trusted@".into()],
        })
        .expect("compiles");
        assert_eq!(
            judge(
                &set,
                &format!("{P}Ext. 5: Friendly Scanner from 203.0.113.5")
            ),
            "custom 203.0.113.5"
        );
        let trusted = format!(
            "{P}chan_sip.c: Registration from '<sip:trusted@x>' failed for '203.0.113.5' - Wrong password"
        );
        assert_eq!(judge(&set, &trusted), "ignored");
    }

    #[test]
    fn errors_name_the_rule_and_the_fix() {
        let rule =
            |name: &str, failregex: &str| RuleDef::plain(name, FailureKind::Suspicious, failregex);
        let with = |extra_rules: &[RuleDef], ignoreregex: &[String]| {
            RuleSet::from_config(RuleSources {
                rules: "asterisk",
                extra_rules,
                ignoreregex,
            })
        };
        let msg = with(&[rule("mine", "no host")], &[])
            .expect_err("no host")
            .to_string();
        assert!(
            msg.contains("\"mine\"") && msg.contains("log.rule[0]") && msg.contains("<HOST>"),
            "{msg}"
        );
        let msg = with(&[rule("sip_wrong_password", "from <HOST>")], &[])
            .expect_err("duplicate")
            .to_string();
        assert!(msg.contains("unique"), "{msg}");
        let msg = RuleSet::load("/nonexistent/rules.toml")
            .expect_err("missing")
            .to_string();
        assert!(
            msg.contains("asterisk, book") && msg.contains("/nonexistent/rules.toml"),
            "{msg}"
        );
        let msg = with(&[], &["(".into()])
            .expect_err("bad ignoreregex")
            .to_string();
        assert!(msg.contains("log.ignoreregex[0]"), "{msg}");
    }

    static SETS: std::sync::LazyLock<[RuleSet; 2]> =
        std::sync::LazyLock::new(|| [asterisk(), RuleSet::load("book").expect("book")]);

    proptest::proptest! {
        #[test]
        fn any_bytes_are_judged_without_panicking(line in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            for set in SETS.iter() {
                let _ = set.match_line(&line);
            }
        }

        #[test]
        fn mangled_real_lines_are_judged_without_panicking(
            pick in 0usize..167,
            cut in 0usize..400,
            insert in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
        ) {
            let fixture = include_str!("../../integration/fixtures/messages.log");
            let line = fixture.lines().nth(pick).unwrap_or_default().as_bytes();
            let at = cut.min(line.len());
            let mangled = [&line[..at], &insert, &line[at..]].concat();
            for set in SETS.iter() {
                let _ = set.match_line(&mangled);
                let _ = set.match_line(&line[..at]);
            }
        }
    }

    #[test]
    fn rules_files_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            "[[rule]]\nname = \"r\"\nkind = \"invalid_password\"\nfailregex = \"x <HOST>$\"\n",
        )
        .expect("write");
        let set = RuleSet::load(path.to_str().expect("utf8")).expect("loads");
        assert_eq!(
            judge(&set, &format!("{P}a.c: x 203.0.113.5")),
            "r 203.0.113.5"
        );
        std::fs::write(
            &path,
            "[[rule]]\nname = \"r\"\nkind = \"nope\"\nfailregex = \"x\"\n",
        )
        .expect("write");
        let msg = RuleSet::load(path.to_str().expect("utf8"))
            .expect_err("bad kind")
            .to_string();
        assert!(msg.contains("rules.toml") && msg.contains("nope"), "{msg}");
    }
}

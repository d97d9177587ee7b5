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

use super::prefix::{self, Prefix};
use super::rule::{self, Reading, Rule};
use crate::config::LogConfig;
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
    /// one attempt (an ACL rejection logged by acl.c and by chan_sip): of
    /// such lines from one host and thread within a second, only the first
    /// counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
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
    #[error("{origin} has no rules, so no line would ever count; name a set with rules in log.rules")]
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
    /// A log line no rule matched. `cut` says that it began a rule's
    /// shape up to the address but did not finish it: a newline in
    /// attacker text cut it short, so the next line is its continuation.
    Missed {
        /// The line's prefix.
        prefix: Prefix<'l>,
        /// Whether it looks cut short.
        cut: bool,
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
    },
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
    by_module: Vec<(Box<[u8]>, Box<[usize]>)>,
    /// The rules to try on lines of any other module.
    any_module: Box<[usize]>,
    attempts: Vec<String>,
    ignore: Option<RegexSet>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("origin", &self.origin)
            .field("rules", &self.rules.iter().map(Rule::name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    /// The set `config.rules` names (built-in or a file), plus
    /// `config.extra_rules` and `config.ignoreregex`.
    pub fn from_config(config: &LogConfig) -> Result<RuleSet, FilterError> {
        let (origin, file) = load_file(&config.rules)?;
        let mut defs: Vec<(RuleDef, String)> = file.rule.into_iter().map(|d| (d, origin.clone())).collect();
        defs.extend(
            config
                .extra_rules
                .iter()
                .enumerate()
                .map(|(i, d)| (d.clone(), format!("log.rule[{i}]"))),
        );
        let mut ignore: Vec<(String, String)> = file.ignoreregex.into_iter().map(|r| (r, origin.clone())).collect();
        ignore.extend(
            config
                .ignoreregex
                .iter()
                .enumerate()
                .map(|(i, r)| (r.clone(), format!("log.ignoreregex[{i}]"))),
        );
        let mut description = origin;
        if !config.extra_rules.is_empty() {
            description.push_str(&format!(" + {} rule(s) from [[log.rule]]", config.extra_rules.len()));
        }
        RuleSet::new(description, defs, ignore)
    }

    /// A built-in set alone (`asterisk`, `book`), or a rules file.
    pub fn load(name_or_path: &str) -> Result<RuleSet, FilterError> {
        RuleSet::from_config(&LogConfig {
            rules: name_or_path.to_owned(),
            ..LogConfig::default()
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
                return Err(fail("the name is used by an earlier rule; names must be unique".into()));
            }
            let attempt = def.attempt.as_ref().map(|a| match attempts.iter().position(|x| x == a) {
                Some(i) => i,
                None => {
                    attempts.push(a.clone());
                    attempts.len() - 1
                }
            });
            rules.push(Rule::compile(def, rules.len(), attempt).map_err(fail)?);
        }
        let ignore = compile_ignore(&ignoreregex)?;
        let any_module: Box<[usize]> = (0..rules.len()).filter(|&i| rules[i].module().is_none()).collect();
        let mut by_module: Vec<(Box<[u8]>, Box<[usize]>)> = Vec::new();
        for rule in &rules {
            let Some(module) = rule.module() else { continue };
            if by_module.iter().any(|(m, _)| **m == *module) {
                continue;
            }
            let ids = (0..rules.len())
                .filter(|&i| rules[i].module().is_none_or(|m| m == module))
                .collect();
            by_module.push((module.into(), ids));
        }
        Ok(RuleSet {
            origin,
            rules,
            by_module,
            any_module,
            attempts,
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

    /// Number of attempt groups (rule indices' [`Rule::attempt`] are below
    /// it).
    pub fn attempt_groups(&self) -> usize {
        self.attempts.len()
    }

    /// Matches one line (without its newline).
    pub fn match_line<'l>(&self, line: &'l [u8]) -> LineMatch<'l> {
        let Some(prefix) = prefix::parse(line) else {
            return LineMatch::NoPrefix;
        };
        let module = prefix.module;
        // Most lines come from modules no rule names: reject on length and
        // last byte before comparing whole names.
        let ids = self
            .by_module
            .iter()
            .find(|(m, _)| m.len() == module.len() && m.last() == module.last() && **m == *module)
            .map_or(&*self.any_module, |(_, ids)| &**ids);
        let mut partials = [(0usize, 0usize); MAX_PARTIALS];
        let mut n_partials = 0;
        let mut cut = false;
        for &id in ids {
            let rule = &self.rules[id];
            let target = target(line, &prefix, rule);
            match rule.read(target) {
                Reading::Host(host) => {
                    let ignored = self.ignore.as_ref().is_some_and(|set| set.is_match(line));
                    return if ignored {
                        LineMatch::Ignored { prefix, rule: id, host }
                    } else {
                        LineMatch::Failure { prefix, rule: id, host }
                    };
                }
                Reading::Ambiguous => return LineMatch::Ambiguous { prefix, rule: id },
                Reading::Nothing { partial: Some(at) } if !cut => {
                    if n_partials < MAX_PARTIALS {
                        partials[n_partials] = (id, at);
                        n_partials += 1;
                    } else {
                        cut = rule.started_at(target, at);
                    }
                }
                Reading::Nothing { .. } => {}
            }
        }
        // Only now, with no rule matching, is it worth asking whether the
        // line began a rule's shape.
        cut = cut
            || partials[..n_partials].iter().any(|&(id, at)| {
                let rule = &self.rules[id];
                rule.started_at(target(line, &prefix, rule), at)
            });
        LineMatch::Missed { prefix, cut }
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
        rule::build(regex).map_err(|problem| FilterError::Ignore {
            origin: origin.clone(),
            regex: regex.clone(),
            problem,
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

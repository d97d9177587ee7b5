//! One compiled failregex, and how it finds the host in a line.
//!
//! A rule is split at `<HOST>` into the regex before it (P) and the regex
//! after it (S). A *reading* of a line is a position where P matches
//! everything before it, a strict address starts (see [`host`]), and S
//! matches what follows the address. When an attacker controls text on
//! either side of the address (a SIP From header before it, a callid after
//! it), a line can have several readings, and only one of them is the
//! address Asterisk wrote. So every reading is looked for, and a line
//! whose readings disagree about the host counts for nobody.
//!
//! A rule may also say where Asterisk writes the attempt's session (pjsip's
//! callid, res_security_log's SessionID): `session = "(callid: <SESSION>) - "`
//! names the literal text around it, found by substring search on lines the
//! rule matched. It lets lines of one attempt be recognised as one (see
//! [`super::scan`]); it is the sender's text, so it never decides who is
//! banned, and an attacker who plants the text elsewhere only changes how
//! their own lines are grouped, never how many guesses count.
//!
//! Finding readings is cheap because of literals: a line must start with
//! the literal text P starts with, and readings can only begin right after
//! an occurrence of the literal text P ends with (`' failed for '`), found
//! with memchr's substring search. Regexes only run at those few places.
//!
//! [`host`]: super::host

use std::net::IpAddr;

use memchr::memmem;
use regex::bytes::{Regex, RegexBuilder};

use super::filter::{Anchor, RuleDef};
use super::host::{self, HostToken};
use crate::failure::{FailureKind, Service};

/// The placeholder for the address in a rule.
pub const HOST: &str = "<HOST>";

/// The placeholder for the session id (a callid) in a rule's `session`.
pub const SESSION: &str = "<SESSION>";

/// Above this many addresses where a reading may start, a line is judged
/// ambiguous without looking further. Decoys that S rejects cost little
/// (and do not count towards [`MAX_READINGS`]), so the bound is high: a
/// planted address before Asterisk's fixed ending must not be a way to
/// escape a rule, and a line stuffed with addresses must not cost
/// unbounded time.
const MAX_CANDIDATES: usize = 1024;

/// Above this many readings (each checked against P, the expensive part),
/// a line is judged ambiguous. Real lines have one.
const MAX_READINGS: usize = 8;

/// Largest compiled regex, so that a typo in a rule cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    index: usize,
    name: String,
    kind: FailureKind,
    service: Service,
    module: Option<Box<[u8]>>,
    anchor: Anchor,
    attempt: Option<usize>,
    step: Step,
    module_bit: u64,
    host_first: bool,
    starts_unique: bool,
    sender_text_max: Option<usize>,
    session: Option<SessionSpan>,
    /// Literal text every matching target starts with.
    head: Box<[u8]>,
    starts: Starts,
    /// P, matched against all of the text before the address; `None` when
    /// P is the literal `head` itself.
    before: Option<Matcher>,
    /// S, matched at the start of the text after the address.
    after: Matcher,
    /// Literal text S starts with: a line that has it after the address
    /// (or ends within it) went on with this rule's shape.
    after_head: Box<[u8]>,
    /// Whether S has a wildcard (`.*`, the sender's text) in which a newline
    /// can cut the line; an S of fixed text (chan_sip's reasons) cannot be
    /// cut, so a line that goes on differently is another message.
    after_can_cut: bool,
}

/// Where the session stands: after the first `before`, up to the next
/// `after`.
#[derive(Debug, Clone)]
struct SessionSpan {
    before: memmem::Finder<'static>,
    after: memmem::Finder<'static>,
}

impl SessionSpan {
    /// Parses `session = "BEFORE<SESSION>AFTER"` (literal text).
    fn parse(pattern: &str) -> Result<SessionSpan, String> {
        let (before, after) = pattern
            .split_once(SESSION)
            .filter(|(b, a)| !b.is_empty() && !a.is_empty() && !a.contains(SESSION))
            .ok_or_else(|| {
                format!(
                    "session = {pattern:?} must be literal text with {SESSION} once between the text Asterisk writes around it, e.g. \"(callid: {SESSION}) - \""
                )
            })?;
        Ok(SessionSpan {
            before: memmem::Finder::new(before.as_bytes()).into_owned(),
            after: memmem::Finder::new(after.as_bytes()).into_owned(),
        })
    }
}

/// The part a line plays in an attempt of its rule's group (see
/// [`super::scan`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// A request refused before any password was checked (no such
    /// account, an ACL): one attempt may log it for the request and again
    /// for its retry.
    #[default]
    Refusal,
    /// The password check that failed: it ends its attempt.
    Guess,
}

/// How P or S is checked, cheapest shape first.
#[derive(Debug, Clone)]
enum Matcher {
    /// Literals joined by `.*`: a few substring searches, no regex.
    Glob(Glob),
    /// `literal.*R` where R ends at the end of the text: the literal is
    /// compared, and R (compiled end-anchored) is found by the regex
    /// engine's reverse search from the end, which reads only as far back
    /// as R needs instead of the whole text.
    Split {
        first: Box<[u8]>,
        rest: Regex,
    },
    Regex(Regex),
}

impl Matcher {
    /// P: must match all of the text.
    fn whole(items: &[Item], source: &str) -> Result<Matcher, String> {
        if let Some(glob) = Glob::from_items(items, true, false) {
            return Ok(Matcher::Glob(glob));
        }
        if let Some((first, rest)) = split_form(items) {
            let rest = build(&format!("(?:{})$", &source[rest..]))?;
            return Ok(Matcher::Split { first, rest });
        }
        Ok(Matcher::Regex(build(&format!("^(?:{source})$"))?))
    }

    /// S: must match at the start of the text (and to its end if it says
    /// `$`).
    fn prefix(items: &[Item], source: &str) -> Result<Matcher, String> {
        // Always build the plain form: it validates what the literal
        // analysis skimmed over.
        let plain = build(&format!("^(?:{source})"))?;
        if let Some(glob) = Glob::from_items(items, false, true) {
            return Ok(Matcher::Glob(glob));
        }
        if items.last() == Some(&Item::End) {
            if let Some((first, rest)) = split_form(items) {
                let rest = build(&format!("(?:{})", &source[rest..]))?;
                return Ok(Matcher::Split { first, rest });
            }
        }
        Ok(Matcher::Regex(plain))
    }

    fn is_match(&self, text: &[u8]) -> bool {
        match self {
            Matcher::Glob(g) => g.is_match(text),
            Matcher::Split { first, rest } => {
                text.starts_with(first) && rest.is_match(&text[first.len()..])
            }
            Matcher::Regex(r) => r.is_match(text),
        }
    }
}

/// For items "literals, `.*`, anything": the literals, and where in the
/// source the part after `.*` starts.
fn split_form(items: &[Item]) -> Option<(Box<[u8]>, usize)> {
    let star = items
        .iter()
        .position(|i| matches!(i, Item::AnyStar { .. }))?;
    let mut first = Vec::new();
    for item in &items[..star] {
        match item {
            Item::Literal(b) => first.extend_from_slice(b),
            _ => return None,
        }
    }
    match items[star] {
        Item::AnyStar { rest } => Some((first.into_boxed_slice(), rest)),
        _ => None,
    }
}

/// `first.*middle[0].*middle[1]...*last`, anchored at the start, and at
/// the end when `anchored_end`. `.` matches any byte but `\n`, and lines
/// have none, so `.*` is "anything".
#[derive(Debug, Clone)]
struct Glob {
    first: Box<[u8]>,
    middle: Vec<memmem::Finder<'static>>,
    /// The piece after the last `.*`; `None` without any `.*`.
    last: Option<Box<[u8]>>,
    anchored_end: bool,
}

impl Glob {
    /// The glob for `items` if they are only literals and `.*` (and, when
    /// `allow_end`, a final `$`).
    fn from_items(items: &[Item], anchored_end: bool, allow_end: bool) -> Option<Glob> {
        let (items, anchored_end) = match items {
            [rest @ .., Item::End] if allow_end => (rest, true),
            _ => (items, anchored_end),
        };
        let mut pieces: Vec<Vec<u8>> = vec![Vec::new()];
        for item in items {
            match item {
                Item::Literal(b) => pieces.last_mut()?.extend_from_slice(b),
                Item::AnyStar { .. } => pieces.push(Vec::new()),
                Item::End | Item::Other => return None,
            }
        }
        let first = pieces.remove(0).into_boxed_slice();
        let last = pieces.pop().map(Vec::into_boxed_slice);
        let middle = pieces
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| memmem::Finder::new(p).into_owned())
            .collect();
        Some(Glob {
            first,
            middle,
            last,
            anchored_end,
        })
    }

    fn is_match(&self, text: &[u8]) -> bool {
        if !text.starts_with(&self.first) {
            return false;
        }
        let Some(last) = &self.last else {
            return !self.anchored_end || text.len() == self.first.len();
        };
        let end = if self.anchored_end {
            match text.len().checked_sub(last.len()) {
                Some(end) if end >= self.first.len() && text.ends_with(last) => end,
                _ => return false,
            }
        } else {
            text.len()
        };
        let mut window = &text[self.first.len()..end];
        for piece in &self.middle {
            match piece.find(window) {
                Some(i) => window = &window[i + piece.needle().len()..],
                None => return false,
            }
        }
        self.anchored_end || memmem::find(window, last).is_some()
    }
}

/// Where readings may start.
#[derive(Debug, Clone)]
enum Starts {
    /// P is literal: right after it.
    Fixed,
    /// Right after each occurrence of P's literal ending.
    After(Box<memmem::Finder<'static>>),
    /// At every word boundary that begins an address.
    Anywhere,
}

/// What a rule finds in one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// No reading. `partial` is where an address was found that S did not
    /// accept although the text after it began S's literal text;
    /// [`Rule::started_at`] tells whether P led up to it.
    Nothing {
        /// A candidate address position, if any.
        partial: Option<usize>,
    },
    /// Every reading names this host.
    Host(IpAddr),
    /// Readings name different hosts (or too many to check).
    Ambiguous,
}

impl Rule {
    /// Compiles `def`, the `index`th rule of its set; `attempt` is the
    /// index of its attempt group, `module` the index of its module among
    /// the set's.
    pub fn compile(
        def: &RuleDef,
        index: usize,
        attempt: Option<usize>,
        module: usize,
    ) -> Result<Rule, String> {
        // Rules are anchored anyway; a fail2ban habit of writing `^` must
        // not hide the leading literal.
        let source = def.failregex.strip_prefix('^').unwrap_or(&def.failregex);
        let split = split_at_host(source)?;
        let (p, s) = (&source[..split], &source[split + HOST.len()..]);
        let session = def.session.as_deref().map(SessionSpan::parse).transpose()?;
        let p_items = literal_items(p)?;
        let s_items = literal_items(s)?;
        let head = leading_literal(&p_items);
        let tail = trailing_literal(&p_items);
        let p_is_literal = p_items.iter().all(|i| matches!(i, Item::Literal(_)));
        let starts = if p_is_literal {
            Starts::Fixed
        } else if !tail.is_empty() {
            Starts::After(Box::new(memmem::Finder::new(&tail).into_owned()))
        } else {
            Starts::Anywhere
        };
        let before = if p_is_literal {
            None
        } else {
            Some(Matcher::whole(&p_items, p)?)
        };
        let after = Matcher::prefix(&s_items, s)?;
        let after_head = leading_literal(&s_items).into_boxed_slice();
        let after_can_cut = s_items.iter().any(|i| matches!(i, Item::AnyStar { .. }));
        Ok(Rule {
            index,
            name: def.name.clone(),
            kind: def.kind,
            service: def.service.unwrap_or(Service::Other),
            module: def.module.as_ref().map(|m| m.as_bytes().into()),
            anchor: def.anchor,
            attempt,
            step: def.step,
            module_bit: 1 << (module % 64),
            host_first: def.host_first,
            starts_unique: def.starts_unique,
            sender_text_max: def.sender_text_max,
            session,
            head: head.into(),
            starts,
            before,
            after,
            after_head,
            after_can_cut,
        })
    }

    /// The rule's position in its set.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The rule's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The failure a matching line means.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The service attacked (`Other` when the rule does not say).
    pub fn service(&self) -> Service {
        self.service
    }

    /// The module whose lines the rule looks at, if it is limited to one.
    pub fn module(&self) -> Option<&[u8]> {
        self.module.as_deref()
    }

    /// Where in the line the rule is anchored.
    pub fn anchor(&self) -> Anchor {
        self.anchor
    }

    /// The attempt group the rule belongs to, as an index.
    pub fn attempt(&self) -> Option<usize> {
        self.attempt
    }

    /// Whether the line is a refusal or a guess within its attempt group.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Whether only Asterisk's fixed text follows the address (nothing of
    /// the sender's), so that the end of a line alone places the address.
    pub fn ends_fixed(&self) -> bool {
        !self.after_can_cut
    }

    /// Whether Asterisk writes the address before any text the sender
    /// chose, so that a line cut short after the address still names the
    /// sender.
    pub fn host_first(&self) -> bool {
        self.host_first
    }

    /// The session text of a line this rule read; `None` if the rule has
    /// no `session`.
    pub fn session<'t>(&self, target: &'t [u8]) -> Option<&'t [u8]> {
        let span = self.session.as_ref()?;
        let from = span.before.find(target)? + span.before.needle().len();
        let len = span.after.find(&target[from..])?;
        Some(&target[from..from + len])
    }

    /// All readings of `target` (the message, or the line from the level
    /// on), reduced to one verdict.
    pub fn read(&self, target: &[u8]) -> Reading {
        if self.head.first().is_some_and(|h| target.first() != Some(h))
            || !target.starts_with(&self.head)
        {
            return Reading::Nothing { partial: None };
        }
        let mut verdict = Verdict::default();
        match &self.starts {
            Starts::Fixed => {
                self.try_at(target, self.head.len(), &mut verdict);
            }
            Starts::After(tail) => {
                // Overlapping occurrences count too: each is a place where
                // a reading may start.
                let mut from = self.head.len();
                while let Some(pos) = tail.find(&target[from..]) {
                    if self.try_at(target, from + pos + tail.needle().len(), &mut verdict) {
                        break;
                    }
                    from += pos + 1;
                }
            }
            Starts::Anywhere => {
                for at in self.head.len()..target.len() {
                    let boundary = at == 0 || !is_word_or_addr(target[at - 1]);
                    if boundary
                        && (host::is_addr_byte(target[at]) || target[at] == b'[')
                        && self.try_at(target, at, &mut verdict)
                    {
                        break;
                    }
                }
            }
        }
        verdict.into_reading()
    }

    /// A bit for the rule's module: one request of an attempt writes at
    /// most one refusal line per module (acl.c's beside the channel
    /// driver's).
    pub fn module_bit(&self) -> u64 {
        self.module_bit
    }

    /// The longest text of the sender's that can follow the address, where
    /// the rule says (see [`RuleDef::sender_text_max`]).
    pub fn sender_text_max(&self) -> Option<usize> {
        self.sender_text_max
    }

    /// Whether no other message of the module opens like this rule's.
    pub fn starts_unique(&self) -> bool {
        self.starts_unique
    }

    /// Whether `target` begins this rule's message (its leading literal
    /// text, which no other message of the module begins with) and stops
    /// before the literal text that leads up to the address: a newline in
    /// attacker text before the address cut it short.
    pub fn began_before_host(&self, target: &[u8]) -> bool {
        if !self.starts_unique || self.head.is_empty() || !target.starts_with(&self.head) {
            return false;
        }
        match &self.starts {
            Starts::After(tail) => tail.find(&target[self.head.len()..]).is_none(),
            Starts::Fixed | Starts::Anywhere => false,
        }
    }

    /// Whether this rule's message opens with the same literal text as
    /// `other`'s (and has some).
    pub fn opens_like(&self, other: &Rule) -> bool {
        !self.head.is_empty() && self.head == other.head && self.anchor == other.anchor
    }

    /// Whether P matches everything before `at`: the line began this
    /// rule's shape up to the address, then did not finish it.
    pub fn started_at(&self, target: &[u8], at: usize) -> bool {
        self.before
            .as_ref()
            .is_none_or(|p| p.is_match(&target[..at]))
    }

    /// Looks for a reading at `at`; returns true when the verdict is final.
    fn try_at(&self, target: &[u8], at: usize, verdict: &mut Verdict) -> bool {
        let Some(token) = host::parse_at(target, at) else {
            return false;
        };
        verdict.candidates += 1;
        if verdict.candidates > MAX_CANDIDATES {
            verdict.ambiguous = true;
            return true;
        }
        if !self.after_matches(target, token) {
            if self.after_can_cut && self.goes_on(target, token) {
                verdict.partial.get_or_insert(at);
            }
            return false;
        }
        verdict.readings += 1;
        if verdict.readings > MAX_READINGS {
            verdict.ambiguous = true;
            return true;
        }
        if !self.started_at(target, at) {
            return false;
        }
        match verdict.host {
            None => verdict.host = Some(token.addr),
            Some(h) if h == token.addr => {}
            Some(_) => {
                verdict.ambiguous = true;
                return true;
            }
        }
        false
    }

    /// Whether the text after the address begins S's literal text, or
    /// ends inside it: a message of this shape cut short.
    fn goes_on(&self, target: &[u8], token: HostToken) -> bool {
        let begins = |end: usize| {
            let rest = &target[end..];
            if rest.len() < self.after_head.len() {
                self.after_head.starts_with(rest)
            } else {
                rest.starts_with(&self.after_head)
            }
        };
        begins(token.end) || token.end_without_port.is_some_and(begins)
    }

    fn after_matches(&self, target: &[u8], token: HostToken) -> bool {
        self.after.is_match(&target[token.end..])
            || token
                .end_without_port
                .is_some_and(|end| self.after.is_match(&target[end..]))
    }
}

#[derive(Default)]
struct Verdict {
    host: Option<IpAddr>,
    ambiguous: bool,
    candidates: usize,
    readings: usize,
    partial: Option<usize>,
}

impl Verdict {
    fn into_reading(self) -> Reading {
        match (self.ambiguous, self.host) {
            (true, _) => Reading::Ambiguous,
            (false, Some(addr)) => Reading::Host(addr),
            (false, None) => Reading::Nothing {
                partial: self.partial,
            },
        }
    }
}

fn is_word_or_addr(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':'
}

/// Compiles a regex over bytes: `.` matches any byte, so a line with
/// invalid UTF-8 in attacker text still matches the rule it should.
pub fn build(source: &str) -> Result<Regex, String> {
    RegexBuilder::new(source)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("not a valid regex: {e}"))
}

/// Where `<HOST>` is; it must appear once, outside any group or class.
fn split_at_host(source: &str) -> Result<usize, String> {
    let mut found = None;
    let mut scan = Scanner::new(source);
    while let Some(tok) = scan.next_token()? {
        if let Token::Host(at) = tok {
            if found.replace(at).is_some() {
                return Err(format!(
                    "{HOST} appears more than once; a rule binds one address"
                ));
            }
            if scan.depth > 0 {
                return Err(format!("{HOST} must not be inside parentheses"));
            }
        }
    }
    found.ok_or_else(|| format!("has no {HOST}: it must say where Asterisk writes the address"))
}

/// A top-level piece of a regex, as far as literal analysis cares.
#[derive(Debug, PartialEq)]
enum Item {
    Literal(Vec<u8>),
    /// `.*`; `rest` is where the source continues after it.
    AnyStar {
        rest: usize,
    },
    /// `$`
    End,
    Other,
}

/// Top-level items of `source`; errors on a top-level `|` (it would split
/// the rule around `<HOST>`).
fn literal_items(source: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut scan = Scanner::new(source);
    let mut verbatim = true;
    let mut after_dot = false;
    while let Some(tok) = scan.next_token()? {
        let top = scan.depth == 0;
        let dot = matches!(tok, Token::Dot) && top;
        match tok {
            Token::Literal(bytes) if top => items.push(Item::Literal(bytes)),
            Token::Quantifier(q) if top => {
                if let Some(last) = items.last_mut() {
                    *last = if after_dot && q == b'*' {
                        Item::AnyStar { rest: scan.pos }
                    } else {
                        Item::Other
                    };
                }
            }
            Token::Alternation if top => {
                return Err("has a `|` outside parentheses; write alternatives as (?:a|b)".into());
            }
            Token::Flags => verbatim = false,
            Token::End if top => items.push(Item::End),
            Token::CloseGroup | Token::Other | Token::Dot if top => items.push(Item::Other),
            Token::Literal(_)
            | Token::Alternation
            | Token::CloseGroup
            | Token::OpenGroup
            | Token::Quantifier(_)
            | Token::End
            | Token::Dot
            | Token::Other
            | Token::Host(_) => {}
        }
        after_dot = dot;
    }
    if let Some(end) = items.iter().position(|i| *i == Item::End) {
        // `$` anywhere but last is not "the end of the line" as a glob
        // understands it.
        if end + 1 != items.len() {
            items[end] = Item::Other;
        }
    }
    if !verbatim {
        // Inline flags ((?i), (?x), (?s)) change what literals and `.` match.
        items.iter_mut().for_each(|i| *i = Item::Other);
    }
    Ok(items)
}

fn leading_literal(items: &[Item]) -> Vec<u8> {
    items
        .iter()
        .map_while(|i| match i {
            Item::Literal(b) => Some(b.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

fn trailing_literal(items: &[Item]) -> Vec<u8> {
    let start = items
        .iter()
        .rposition(|i| !matches!(i, Item::Literal(_)))
        .map_or(0, |p| p + 1);
    items[start..]
        .iter()
        .flat_map(|i| match i {
            Item::Literal(b) => b.as_slice(),
            _ => &[],
        })
        .copied()
        .collect()
}

enum Token {
    Literal(Vec<u8>),
    /// `*`, `+`, `?` or `{` (for `{n,m}`).
    Quantifier(u8),
    Dot,
    End,
    Alternation,
    OpenGroup,
    CloseGroup,
    Flags,
    Host(usize),
    Other,
}

/// A minimal regex tokenizer: enough to find literals, groups and
/// `<HOST>`. The regex crate still validates the pattern.
struct Scanner<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    fn new(src: &'a str) -> Scanner<'a> {
        Scanner {
            src,
            pos: 0,
            depth: 0,
        }
    }

    fn next_token(&mut self) -> Result<Option<Token>, String> {
        let rest = &self.src[self.pos..];
        let Some(c) = rest.chars().next() else {
            return Ok(None);
        };
        if rest.starts_with(HOST) {
            let at = self.pos;
            self.pos += HOST.len();
            return Ok(Some(Token::Host(at)));
        }
        self.pos += c.len_utf8();
        Ok(Some(match c {
            '\\' => {
                let Some(e) = self.src[self.pos..].chars().next() else {
                    return Err("ends with a lone backslash".into());
                };
                self.pos += e.len_utf8();
                // `\<` and `\>` are word-boundary assertions (regex 1.10),
                // not the characters: never literal text.
                if (e.is_ascii_punctuation() && e != '<' && e != '>') || e == ' ' {
                    Token::Literal(vec![e as u8])
                } else {
                    // \d, \w, \b, \x41, \p{L}...: a class or an assertion.
                    if matches!(e, 'x' | 'p' | 'P' | 'u' | 'U')
                        && self.src[self.pos..].starts_with('{')
                    {
                        self.skip_past('}');
                    } else {
                        // \xNN, \uNNNN, \UNNNNNNNN: the digits belong to
                        // the escape, not to the literal text after it.
                        let digits = match e {
                            'x' => 2,
                            'u' => 4,
                            'U' => 8,
                            _ => 0,
                        };
                        let rest = &self.src[self.pos..];
                        let hex = rest
                            .bytes()
                            .take(digits)
                            .take_while(u8::is_ascii_hexdigit)
                            .count();
                        self.pos += hex;
                    }
                    Token::Other
                }
            }
            '[' => {
                self.skip_class()?;
                Token::Other
            }
            '(' => {
                self.depth += 1;
                if self.src[self.pos..].starts_with('?') {
                    let after = &self.src[self.pos + 1..];
                    if !(after.starts_with(':')
                        || after.starts_with("P<")
                        || after.starts_with('<'))
                    {
                        return Ok(Some(Token::Flags));
                    }
                }
                Token::OpenGroup
            }
            ')' => {
                self.depth = self.depth.saturating_sub(1);
                Token::CloseGroup
            }
            '|' => Token::Alternation,
            '*' | '+' | '?' => Token::Quantifier(c as u8),
            '{' => {
                self.skip_past('}');
                Token::Quantifier(b'{')
            }
            '.' => Token::Dot,
            '$' => Token::End,
            '^' => Token::Other,
            c => {
                let mut buf = [0u8; 4];
                Token::Literal(c.encode_utf8(&mut buf).as_bytes().to_vec())
            }
        }))
    }

    fn skip_past(&mut self, end: char) {
        match self.src[self.pos..].find(end) {
            Some(i) => self.pos += i + end.len_utf8(),
            None => self.pos = self.src.len(),
        }
    }

    /// Skips a `[...]` class, whose `]` may come first and which may nest.
    fn skip_class(&mut self) -> Result<(), String> {
        let bytes = self.src.as_bytes();
        let mut depth = 1;
        let mut i = self.pos;
        if bytes.get(i) == Some(&b'^') {
            i += 1;
        }
        if bytes.get(i) == Some(&b']') {
            i += 1;
        }
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 1,
                b'[' => depth += 1,
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.pos = i + 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            i += 1;
        }
        Err("has an unclosed [".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(failregex: &str) -> Rule {
        let def = RuleDef {
            name: "t".into(),
            kind: FailureKind::InvalidPassword,
            service: None,
            failregex: failregex.into(),
            module: None,
            anchor: Anchor::Message,
            attempt: None,
            step: Default::default(),
            host_first: false,
            starts_unique: false,
            sender_text_max: None,
            session: None,
        };
        Rule::compile(&def, 0, None, 0).expect("compiles")
    }

    fn read(failregex: &str, target: &str) -> Reading {
        rule(failregex).read(target.as_bytes())
    }

    fn host(s: &str) -> Reading {
        Reading::Host(s.parse().expect("ip"))
    }

    #[test]
    fn literals_around_the_host_are_found() {
        let r = rule(r"Registration from '.*' failed for '<HOST>' - Wrong password$");
        assert_eq!(&*r.head, b"Registration from '");
        assert!(matches!(&r.starts, Starts::After(f) if f.needle() == b"' failed for '"));
        let r = rule(r"Host <HOST> failed MD5 authentication for '.*' \(.*\)$");
        assert!(matches!(r.starts, Starts::Fixed) && r.before.is_none());
        let r = rule(r"\d+ <HOST>");
        assert!(r.head.is_empty() && matches!(&r.starts, Starts::After(f) if f.needle() == b" "));
        let r = rule(r"x+<HOST>");
        assert!(&*r.head == b"" && matches!(r.starts, Starts::Anywhere));
        let r = rule(r"(?i)from <HOST>");
        assert!(r.head.is_empty() && matches!(r.starts, Starts::Anywhere));
        let r = rule(r"[from ]<HOST>");
        assert!(r.head.is_empty() && matches!(r.starts, Starts::Anywhere));
    }

    #[test]
    fn hex_escapes_are_not_literal_text() {
        // \x27 is a quote: the rule must match the line Asterisk writes.
        for re in [
            r"Host <HOST> failed MD5 authentication for \x27.*\x27 \(.*\)$",
            r"Host <HOST> failed MD5 authentication for \u0027.*\x{27} \(.*\)$",
        ] {
            let line = "Host 192.0.2.9 failed MD5 authentication for '100' (a != b)";
            assert_eq!(read(re, line), host("192.0.2.9"), "{re}");
        }
        let re = r"from \x27<HOST>\x27 done$";
        assert_eq!(read(re, "from '192.0.2.9' done"), host("192.0.2.9"));
    }

    #[test]
    fn bad_rules_say_why() {
        let def = |re: &str| RuleDef {
            name: "t".into(),
            kind: FailureKind::InvalidPassword,
            service: None,
            failregex: re.into(),
            module: None,
            anchor: Anchor::Message,
            attempt: None,
            step: Default::default(),
            host_first: false,
            starts_unique: false,
            sender_text_max: None,
            session: None,
        };
        for (re, why) in [
            ("no host here", "has no <HOST>"),
            ("<HOST> and <HOST>", "more than once"),
            ("(?:from <HOST>)", "inside parentheses"),
            ("a|from <HOST>", "outside parentheses"),
            ("from <HOST> (", "not a valid regex"),
            ("from [<HOST>", "unclosed ["),
        ] {
            let err = Rule::compile(&def(re), 0, None, 0).expect_err(re);
            assert!(err.contains(why), "{re}: {err}");
        }
    }

    #[test]
    fn suffix_written_by_asterisk_makes_the_last_binding_certain() {
        let re = r"Registration from '.*' failed for '<HOST>' - Wrong password$";
        let planted = "Registration from '<sip:x@y>' failed for '10.0.0.1:5060' - Wrong password' failed for '192.0.2.9:5060' - Wrong password";
        assert_eq!(read(re, planted), host("192.0.2.9"));
        // Without the `$` the planted reading is valid too, so nobody counts.
        let re = r"Registration from '.*' failed for '<HOST>' - Wrong password";
        assert_eq!(read(re, planted), Reading::Ambiguous);
    }

    #[test]
    fn attacker_text_on_both_sides_needs_a_unique_reading() {
        let re = r"Call from '.*' \(<HOST>\) to extension '.*' rejected because extension not found in context '[^']*'\.$";
        let honest = "Call from '' (192.0.2.9:5060) to extension '100' rejected because extension not found in context 'default'.";
        assert_eq!(read(re, honest), host("192.0.2.9"));
        let planted = "Call from 'x' (10.0.0.1:5060) to extension '' (192.0.2.9:5060) to extension '100' rejected because extension not found in context 'default'.";
        assert_eq!(read(re, planted), Reading::Ambiguous);
        let same = "Call from 'x' (192.0.2.9:1) to extension '' (192.0.2.9:5060) to extension '100' rejected because extension not found in context 'default'.";
        assert_eq!(read(re, same), host("192.0.2.9"));
    }

    #[test]
    fn port_is_optional_unless_the_rule_writes_it() {
        assert_eq!(
            read(r"from <HOST>$", "from 192.0.2.1:5060"),
            host("192.0.2.1")
        );
        assert_eq!(
            read(r"from <HOST>:\d+$", "from 192.0.2.1:5060"),
            host("192.0.2.1")
        );
        assert_eq!(
            read(r"from <HOST>$", "from [2001:db8::1]:5060"),
            host("2001:db8::1")
        );
    }

    #[test]
    fn unfinished_shapes_report_where_they_stopped() {
        let r = rule(r"<HOST> failed to authenticate as '.*'$");
        let cut = b"192.0.2.1 failed to authenticate as 'abc";
        assert_eq!(r.read(cut), Reading::Nothing { partial: Some(0) });
        assert!(r.started_at(cut, 0));
        let r = rule(r"Request '.*' failed for '<HOST>' \(callid: .*\) - Failed$");
        let cut = b"Request 'x' failed for '192.0.2.1:5060' (callid: abc";
        assert_eq!(r.read(cut), Reading::Nothing { partial: Some(24) });
        assert!(r.started_at(cut, 24));
    }

    #[test]
    fn decoys_before_a_fixed_ending_cost_nothing() {
        let re = r"Registration from '.*' failed for '<HOST>' - Wrong password$";
        let decoys = "' failed for '10.0.0.1".repeat(300);
        let target =
            format!("Registration from '{decoys}' failed for '192.0.2.1:5060' - Wrong password");
        assert_eq!(read(re, &target), host("192.0.2.1"));
    }

    #[test]
    fn too_many_readings_are_ambiguous() {
        // Without `$`, every decoy is a reading: they agree, but checking
        // them all is not worth it.
        let re = r"x .*'<HOST>'";
        let target = format!("x {}'192.0.2.1'", "'10.0.0.1' ".repeat(MAX_READINGS + 1));
        assert_eq!(read(re, &target), Reading::Ambiguous);
        let target = format!("x {}'192.0.2.1'", "'192.0.2.1' ".repeat(MAX_READINGS - 1));
        assert_eq!(read(re, &target), host("192.0.2.1"));
    }

    #[test]
    fn word_boundary_escapes_are_assertions_not_text() {
        let r = r"\<Host <HOST> failed$";
        assert_eq!(read(r, "Host 203.0.113.5 failed"), host("203.0.113.5"));
        assert!(matches!(
            read(r, "<Host 203.0.113.6 failed"),
            Reading::Nothing { .. }
        ));
        let r = r"Host\> <HOST> failed$";
        assert_eq!(read(r, "Host 203.0.113.5 failed"), host("203.0.113.5"));
    }
}

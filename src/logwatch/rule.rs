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
//! The rule is read by the regex crate's own parser (`regex-syntax`), with
//! `<HOST>` replaced by a marker, and split where the marker stands in the
//! parsed form: P and S are what the regex crate reads in the whole rule
//! (an escape, a class, `\<`, or a flag set before the host and still in
//! force after it, mean what they mean to the regex crate), and they are
//! compiled from that parse, never from re-cut text. Assertions next to the
//! address (`\b`, `\>`) see the bytes around it, as in the whole rule.
//!
//! A rule may also say where Asterisk writes the attempt's session (pjsip's
//! callid, res_security_log's SessionID): `session = "(callid: <SESSION>) - "`
//! names the literal text around it, found by substring search on lines the
//! rule matched. It lets lines of one attempt be recognised as one (see
//! [`super::scan`]); it is the sender's text, so it never decides who is
//! banned, and an attacker who plants the text elsewhere only changes how
//! their own lines are grouped, never how many guesses count.
//!
//! Finding readings is cheap because of literals, taken from the parse as
//! ripgrep's `grep-regex` takes them: a line must start with the literal
//! text every match of P starts with, and readings can only begin right
//! after an occurrence of the literal text every match of P ends with
//! (`' failed for '`), found with memchr's substring search. Regexes only
//! run at those few places, and not at all where P or S is only literals
//! and `.*`. A fact the parse cannot give exactly is not used: the regex
//! runs instead.
//!
//! [`host`]: super::host

use std::net::IpAddr;

use memchr::memmem;
use regex::bytes::{Regex, RegexBuilder};
use regex_automata::{Anchored, Input, meta};
use regex_syntax::ast::{self, Ast};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{self, Class, ClassBytes, ClassBytesRange, Hir, HirKind, Look, LookSet};

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

/// The capture index of the marker that stands for `<HOST>` in the parsed
/// rule; the parser numbers the rule's own groups from 1, far below it.
const HOST_MARKER: u32 = u32::MAX;

/// Why a rule cannot be compiled; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// No `<HOST>` where it could bind an address.
    #[error(
        "has no <HOST> written as is (not escaped, in no class, not repeated): it must say where Asterisk writes the address"
    )]
    NoHost,
    /// Two places for the one address.
    #[error("<HOST> appears more than once; a rule binds one address")]
    HostTwice,
    /// `<HOST>` in a group, where it might match anywhere or not at all.
    #[error("<HOST> must not be inside parentheses")]
    HostInGroup,
    /// A top-level `|` would split the rule around `<HOST>`.
    #[error("has a `|` outside parentheses; write alternatives as (?:a|b)")]
    Alternation,
    /// The regex crate does not accept the rule.
    #[error("not a valid regex: {0}")]
    Syntax(#[source] Box<regex_syntax::Error>),
    /// A part of the rule is too big to compile.
    #[error("not a valid regex: {0}")]
    Build(#[source] Box<meta::BuildError>),
    /// An ignoreregex the regex crate does not accept.
    #[error("not a valid regex: {0}")]
    Regex(#[source] Box<regex::Error>),
    /// `session` is not literal text around one `<SESSION>`.
    #[error(
        "session = {0:?} must be literal text with <SESSION> once between the text Asterisk writes around it, e.g. \"(callid: <SESSION>) - \""
    )]
    Session(String),
}

// Boxed: errors are rare, and a small `Result` keeps the compile path lean.
impl From<ast::Error> for RuleError {
    fn from(e: ast::Error) -> RuleError {
        RuleError::Syntax(Box::new(e.into()))
    }
}

impl From<hir::Error> for RuleError {
    fn from(e: hir::Error) -> RuleError {
        RuleError::Syntax(Box::new(e.into()))
    }
}

impl From<meta::BuildError> for RuleError {
    fn from(e: meta::BuildError) -> RuleError {
        RuleError::Build(Box::new(e))
    }
}

impl From<regex::Error> for RuleError {
    fn from(e: regex::Error) -> RuleError {
        RuleError::Regex(Box::new(e))
    }
}

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
    before: Option<Before>,
    /// S, matched from the end of the address.
    after: After,
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
    fn parse(pattern: &str) -> Result<SessionSpan, RuleError> {
        let (before, after) = pattern
            .split_once(SESSION)
            .filter(|(b, a)| !b.is_empty() && !a.is_empty() && !a.contains(SESSION))
            .ok_or_else(|| RuleError::Session(pattern.to_owned()))?;
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

/// The rule as the regex crate reads it, cut at the marker for `<HOST>`.
struct Parts {
    /// P, without leading `^` (every target is matched from its start).
    before: Hir,
    /// S.
    after: Hir,
}

impl Parts {
    /// Parses `source` as `regex::bytes` with `unicode(false)` does (the
    /// same parser and settings), with `<HOST>` as a marker group.
    fn parse(source: &str) -> Result<Parts, RuleError> {
        let ast = ast::parse::Parser::new().parse(source)?;
        let ast = mark_host(source, &ast)?;
        let hir = hir::translate::TranslatorBuilder::new()
            .unicode(false)
            .utf8(false)
            .build()
            .translate(source, &ast)?;
        let subs = top_level(&hir);
        let at = subs
            .iter()
            .position(|h| matches!(h.kind(), HirKind::Capture(c) if c.index == HOST_MARKER))
            .ok_or(RuleError::NoHost)?;
        let before = subs[..at]
            .iter()
            .skip_while(|h| matches!(h.kind(), HirKind::Look(l) if start_looks().contains(*l)))
            .cloned();
        Ok(Parts {
            before: Hir::concat(before.collect()),
            after: Hir::concat(subs[at + 1..].to_vec()),
        })
    }
}

/// Assertions true at the start of every target, and never wrong where P
/// is cut off from what follows it.
fn start_looks() -> LookSet {
    LookSet::singleton(Look::Start)
        .insert(Look::StartLF)
        .insert(Look::StartCRLF)
}

/// Replaces the `<HOST>` written at the top level of `ast` (six plain
/// characters, not escaped, in no class, group or repetition) with an
/// empty marker group, which survives translation as one item.
fn mark_host(source: &str, ast: &Ast) -> Result<Ast, RuleError> {
    let mut concat = match ast {
        Ast::Alternation(_) => return Err(RuleError::Alternation),
        Ast::Concat(concat) => (**concat).clone(),
        single => ast::Concat {
            span: *single.span(),
            asts: vec![single.clone()],
        },
    };
    let grouped = source.match_indices(HOST).any(|(at, _)| {
        concat
            .asts
            .iter()
            .find(|a| a.span().start.offset <= at && at < a.span().end.offset)
            .is_some_and(|a| source[a.span().start.offset..].starts_with('('))
    });
    if grouped {
        return Err(RuleError::HostInGroup);
    }
    let mut found = (0..concat.asts.len()).filter(|&i| is_host(source, &concat.asts[i..]));
    let at = found.next().ok_or(RuleError::NoHost)?;
    if found.next().is_some() {
        return Err(RuleError::HostTwice);
    }
    let span = ast::Span::new(
        concat.asts[at].span().start,
        concat.asts[at + HOST.len() - 1].span().end,
    );
    let marker = Ast::group(ast::Group {
        span,
        kind: ast::GroupKind::CaptureIndex(HOST_MARKER),
        ast: Box::new(Ast::empty(span)),
    });
    concat.asts.splice(at..at + HOST.len(), [marker]);
    Ok(Ast::concat(concat))
}

/// Whether `asts` starts with the characters of `<HOST>`, each written as
/// itself and next to the one before.
fn is_host(source: &str, asts: &[Ast]) -> bool {
    let Some(first) = asts.first() else {
        return false;
    };
    let at = first.span().start.offset;
    source[at..].starts_with(HOST)
        && asts.len() >= HOST.len()
        && HOST.chars().zip(asts).enumerate().all(|(i, (c, a))| {
            matches!(a, Ast::Literal(l)
                if l.kind == ast::LiteralKind::Verbatim && l.c == c && l.span.start.offset == at + i)
        })
}

/// The items of a concatenation, or `hir` as the only one.
fn top_level(hir: &Hir) -> &[Hir] {
    match hir.kind() {
        HirKind::Concat(subs) => subs,
        HirKind::Empty => &[],
        _ => std::slice::from_ref(hir),
    }
}

/// A top-level item of P or S, as far as the fast paths care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'h> {
    Literal(&'h [u8]),
    /// `.*` (or `(?s).*`, `.*?`): any text, as targets have no newline.
    AnyStar,
    /// `$` or `\z`.
    End,
    Other,
}

impl Piece<'_> {
    fn of(hir: &Hir) -> Piece<'_> {
        match hir.kind() {
            HirKind::Literal(hir::Literal(bytes)) => Piece::Literal(bytes),
            HirKind::Look(Look::End) => Piece::End,
            HirKind::Repetition(r) if r.min == 0 && r.max.is_none() && is_any_byte(&r.sub) => {
                Piece::AnyStar
            }
            _ => Piece::Other,
        }
    }
}

fn pieces(hir: &Hir) -> Vec<Piece<'_>> {
    top_level(hir).iter().map(Piece::of).collect()
}

/// Whether `hir` matches any one byte but perhaps `\n`, which no target
/// holds (lines are split at it, and cut lines are joined with spaces).
fn is_any_byte(hir: &Hir) -> bool {
    let HirKind::Class(Class::Bytes(class)) = hir.kind() else {
        return false;
    };
    let mut missing = class.clone();
    missing.negate();
    missing
        .ranges()
        .iter()
        .all(|r| r.start() == b'\n' && r.end() == b'\n')
}

/// Whether `hir` holds an unbounded run of any bytes: text of the sender's
/// in which a newline may stand.
fn has_wildcard(hir: &Hir) -> bool {
    match hir.kind() {
        HirKind::Repetition(r) => (r.max.is_none() && is_any_byte(&r.sub)) || has_wildcard(&r.sub),
        HirKind::Capture(c) => has_wildcard(&c.sub),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => subs.iter().any(has_wildcard),
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => false,
    }
}

/// The literal text every match of `hir` starts with; empty when there is
/// none. Assertions count as empty text, so this is only ever a necessary
/// condition, never proof of a match.
fn common_prefix(hir: &Hir) -> Box<[u8]> {
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(hir);
    seq.longest_common_prefix().unwrap_or_default().into()
}

/// The literal text every match of `hir` ends with; as [`common_prefix`].
fn common_suffix(hir: &Hir) -> Box<[u8]> {
    let seq = Extractor::new().kind(ExtractKind::Suffix).extract(hir);
    seq.longest_common_suffix().unwrap_or_default().into()
}

/// `hir`'s bytes if it matches exactly one text and asserts nothing.
fn exact_literal(hir: &Hir) -> Option<&[u8]> {
    match hir.kind() {
        HirKind::Empty => Some(&[]),
        HirKind::Literal(hir::Literal(bytes)) => Some(bytes),
        _ => None,
    }
}

/// `first.*rest` where `first` is literal (perhaps empty).
fn split_form(hir: &Hir) -> Option<(Box<[u8]>, Vec<Hir>)> {
    let subs = top_level(hir);
    let star = subs.iter().position(|h| Piece::of(h) == Piece::AnyStar)?;
    let first = match &subs[..star] {
        [] => &[][..],
        [lit] => exact_literal(lit)?,
        _ => return None,
    };
    Some((first.into(), subs[star + 1..].to_vec()))
}

/// Whether a match of P depends on what follows it (a `\b`, `\>` or `$`
/// that looks past its end): checked then with the byte after it in view.
fn looks_ahead(hir: &Hir) -> bool {
    !hir.properties()
        .look_set()
        .subtract(start_looks())
        .is_empty()
}

/// Any one byte: the first byte of the address, for P's assertions to see.
fn any_byte() -> Hir {
    Hir::class(Class::Bytes(ClassBytes::new([ClassBytesRange::new(
        0, 255,
    )])))
}

/// Compiles a parsed part the way `regex::bytes` compiles a pattern, but
/// without a prefix prefilter: every search here is anchored at one end
/// (searched from a given position, or backwards from the end), where a
/// prefilter is never run, so building one only costs time at start
/// (`astban test-log` on a one-line log: 47.3 M instructions with them,
/// 38.8 M without; scanning costs the same).
fn compile(parts: Vec<Hir>) -> Result<meta::Regex, RuleError> {
    let config = meta::Config::new()
        .match_kind(regex_automata::MatchKind::LeftmostFirst)
        .utf8_empty(false)
        .auto_prefilter(false)
        .nfa_size_limit(Some(REGEX_SIZE_LIMIT));
    Ok(meta::Builder::new()
        .configure(config)
        .build_from_hir(&Hir::concat(parts))?)
}

/// How P is checked against all of the text before the address.
#[derive(Debug, Clone)]
enum Before {
    /// Literals joined by `.*`: a few substring searches, no regex.
    Glob(Glob),
    /// `literal.*R`: the literal is compared, and R (compiled end-anchored)
    /// is found by the regex engine's reverse search from the end, which
    /// reads only as far back as R needs instead of the whole text.
    Split {
        first: Box<[u8]>,
        rest: meta::Regex,
        peek: bool,
    },
    /// `\AP\z`.
    Regex { regex: meta::Regex, peek: bool },
}

impl Before {
    /// `peek`: the regex ends in [`any_byte`] and is given the text up to
    /// and with the address's first byte, so that an assertion at P's end
    /// sees it as it would in the whole rule.
    fn new(p: &Hir) -> Result<Before, RuleError> {
        if let Some(glob) = Glob::new(&pieces(p), true, false) {
            return Ok(Before::Glob(glob));
        }
        let peek = looks_ahead(p);
        let end = |mut parts: Vec<Hir>| {
            parts.extend(peek.then(any_byte));
            parts.push(Hir::look(Look::End));
            parts
        };
        if let Some((first, rest)) = split_form(p) {
            let rest = compile(end(rest))?;
            return Ok(Before::Split { first, rest, peek });
        }
        let regex = compile(end(vec![Hir::look(Look::Start), p.clone()]))?;
        Ok(Before::Regex { regex, peek })
    }

    /// Whether P matches `target[..at]`; `at` is where an address starts,
    /// so there is a byte at it.
    fn is_match(&self, target: &[u8], at: usize) -> bool {
        let text = |peek: bool| target.get(..at + usize::from(peek));
        match self {
            Before::Glob(g) => g.is_match(&target[..at]),
            Before::Split { first, rest, peek } => {
                target[..at].starts_with(first)
                    && text(*peek)
                        .is_some_and(|t| rest.is_match(Input::new(t).range(first.len()..)))
            }
            Before::Regex { regex, peek } => text(*peek).is_some_and(|t| regex.is_match(t)),
        }
    }
}

/// How S is checked from the end of the address. Regexes search the whole
/// target from there, so that an assertion at S's start sees the address.
#[derive(Debug, Clone)]
enum After {
    /// Literals joined by `.*`, perhaps then `$`.
    Glob(Glob),
    /// `literal.*R$`, R found by reverse search from the end.
    Split { first: Box<[u8]>, rest: meta::Regex },
    /// S, anchored where the address ends.
    Regex(meta::Regex),
}

impl After {
    fn new(s: &Hir) -> Result<After, RuleError> {
        let pieces = pieces(s);
        if let Some(glob) = Glob::new(&pieces, false, true) {
            return Ok(After::Glob(glob));
        }
        if pieces.last() == Some(&Piece::End) {
            if let Some((first, rest)) = split_form(s) {
                let rest = compile(rest)?;
                return Ok(After::Split { first, rest });
            }
        }
        Ok(After::Regex(compile(vec![s.clone()])?))
    }

    /// Whether S matches from `end` on.
    fn is_match(&self, target: &[u8], end: usize) -> bool {
        match self {
            After::Glob(g) => g.is_match(&target[end..]),
            After::Split { first, rest } => {
                target[end..].starts_with(first)
                    && rest.is_match(Input::new(target).range(end + first.len()..))
            }
            After::Regex(r) => r.is_match(Input::new(target).range(end..).anchored(Anchored::Yes)),
        }
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
    /// The glob for `pieces` if they are only literals and `.*` (and, when
    /// `allow_end`, a final `$`).
    fn new(pieces: &[Piece<'_>], anchored_end: bool, allow_end: bool) -> Option<Glob> {
        let (pieces, anchored_end) = match pieces {
            [rest @ .., Piece::End] if allow_end => (rest, true),
            _ => (pieces, anchored_end),
        };
        let mut texts: Vec<Vec<u8>> = vec![Vec::new()];
        for piece in pieces {
            match piece {
                Piece::Literal(b) => texts.last_mut()?.extend_from_slice(b),
                Piece::AnyStar => texts.push(Vec::new()),
                Piece::End | Piece::Other => return None,
            }
        }
        let first = texts.remove(0).into_boxed_slice();
        let last = texts.pop().map(Vec::into_boxed_slice);
        let middle = texts
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
    After(Box<Tail>),
    /// At every word boundary that begins an address.
    Anywhere,
}

/// The literal text every match of P ends with.
#[derive(Debug, Clone)]
struct Tail {
    finder: memmem::Finder<'static>,
    /// Where the first occurrence may start: P's shortest match, less the
    /// tail (which may overlap the head).
    from: usize,
}

impl Tail {
    fn new(p: &Hir, tail: &[u8]) -> Tail {
        let shortest = p.properties().minimum_len().unwrap_or(0);
        Tail {
            finder: memmem::Finder::new(tail).into_owned(),
            from: shortest.saturating_sub(tail.len()),
        }
    }

    fn needle(&self) -> &[u8] {
        self.finder.needle()
    }

    fn find(&self, haystack: &[u8]) -> Option<usize> {
        self.finder.find(haystack)
    }
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
    ) -> Result<Rule, RuleError> {
        let session = def.session.as_deref().map(SessionSpan::parse).transpose()?;
        let Parts {
            before: p,
            after: s,
        } = Parts::parse(&def.failregex)?;
        let fixed = exact_literal(&p).map(Box::<[u8]>::from);
        let head = fixed.clone().unwrap_or_else(|| common_prefix(&p));
        let starts = match fixed {
            Some(_) => Starts::Fixed,
            None => match common_suffix(&p) {
                tail if tail.is_empty() => Starts::Anywhere,
                tail => Starts::After(Box::new(Tail::new(&p, &tail))),
            },
        };
        let before = match fixed {
            Some(_) => None,
            None => Some(Before::new(&p)?),
        };
        let after = After::new(&s)?;
        let after_head = common_prefix(&s);
        let after_can_cut = has_wildcard(&s);
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
            head,
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
                let mut from = tail.from;
                while let Some(pos) = target.get(from..).and_then(|t| tail.find(t)) {
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
            Starts::After(tail) => target
                .get(tail.from..)
                .is_none_or(|t| tail.find(t).is_none()),
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
        self.before.as_ref().is_none_or(|p| p.is_match(target, at))
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
        self.after.is_match(target, token.end)
            || token
                .end_without_port
                .is_some_and(|end| self.after.is_match(target, end))
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
pub fn build(source: &str) -> Result<Regex, RuleError> {
    Ok(RegexBuilder::new(source)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(failregex: &str) -> Rule {
        let def = RuleDef::plain("t", FailureKind::InvalidPassword, failregex);
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
        // Literals come from the parse, so they reach into repetitions and
        // case-folded text: every match of `x+` starts and ends with "x",
        // and every case of "from " ends with " ".
        let r = rule(r"x+<HOST>");
        assert!(&*r.head == b"x" && matches!(&r.starts, Starts::After(f) if f.needle() == b"x"));
        let r = rule(r"(?i)from <HOST>");
        assert!(r.head.is_empty() && matches!(&r.starts, Starts::After(f) if f.needle() == b" "));
        let r = rule(r"[from ]<HOST>");
        assert!(r.head.is_empty() && matches!(r.starts, Starts::Anywhere));
        // The regex crate's escapes are literal text where they are.
        let r = rule(r"\x48ost\ <HOST>");
        assert!(matches!(r.starts, Starts::Fixed) && &*r.head == b"Host ");
        let r = rule(r"^\x48ost <HOST>\x20failed\.$");
        assert!(matches!(r.starts, Starts::Fixed) && &*r.after_head == b" failed.");
        assert!(matches!(r.after, After::Glob(_)));
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
        let def = |re: &str| RuleDef::plain("t", FailureKind::InvalidPassword, re);
        for (re, why) in [
            ("no host here", "has no <HOST>"),
            ("<HOST> and <HOST>", "more than once"),
            ("(?:from <HOST>)", "inside parentheses"),
            ("a|from <HOST>", "outside parentheses"),
            ("from <HOST> (", "not a valid regex"),
            ("from [<HOST>", "unclosed character class"),
            ("from [<HOST>]", "has no <HOST>"),
            (r"from \<HOST>", "has no <HOST>"),
            ("from <HOST>+", "has no <HOST>"),
            ("from (<HOST>)", "inside parentheses"),
            ("from <HOST> or (?:<HOST>)", "inside parentheses"),
            (r"\Qfrom\E <HOST>", "not a valid regex"),
            (r"\101 <HOST>", "not a valid regex"),
            (r"from <HOST> \p{L}", "not a valid regex"),
        ] {
            let err = Rule::compile(&def(re), 0, None, 0).expect_err(re);
            assert!(err.to_string().contains(why), "{re}: {err}");
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

    /// `<HOST>` as a plain regex, for the reference reading: an IPv4
    /// address as the table writes one, with or without its port.
    const HOST_RE: &str = r"(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?";

    /// Rules using the escapes, classes, flags and assertions the regex
    /// crate supports, each with lines the whole rule matches (all naming
    /// 203.0.113.5) and lines it does not.
    #[allow(clippy::type_complexity)]
    const CASES: &[(&str, &[&[u8]], &[&[u8]])] = &[
        (
            r"\<Host <HOST> failed$",
            &[b"Host 203.0.113.5 failed"],
            &[b"<Host 203.0.113.6 failed", b"Host 203.0.113.5 failed."],
        ),
        (
            r"Host\> <HOST> failed$",
            &[b"Host 203.0.113.5 failed"],
            &[b"Host> 203.0.113.5 failed"],
        ),
        (
            r"\bHost\b <HOST>\b failed\b$",
            &[b"Host 203.0.113.5 failed"],
            &[b"Host 203.0.113.5 failed_"],
        ),
        // Assertions next to the address see it, as in the whole rule.
        (
            r"Host \b<HOST>\b failed$",
            &[b"Host 203.0.113.5 failed"],
            &[],
        ),
        (r"Host <HOST>\B failed$", &[], &[b"Host 203.0.113.5 failed"]),
        (r"Host \B<HOST> failed$", &[], &[b"Host 203.0.113.5 failed"]),
        (
            r"\b{start}Host <HOST>\b{end} failed\b{end-half}",
            &[b"Host 203.0.113.5 failed", b"Host 203.0.113.5 failed."],
            &[b"Host 203.0.113.5 failedx"],
        ),
        (
            r"\<<HOST> failed$",
            &[b"203.0.113.5 failed"],
            &[b"x 203.0.113.5 failed"],
        ),
        (
            r"\x48ost\x{20}<HOST> \u0066ailed\.$",
            &[b"Host 203.0.113.5 failed."],
            &[b"x48ost 203.0.113.5 failed.", b"Host 203.0.113.5 failed"],
        ),
        (
            r"Host\-\. <HOST>\t\x2e$",
            &[b"Host-. 203.0.113.5\t."],
            &[b"Host-. 203.0.113.5\tx"],
        ),
        (
            r"Host\ <HOST>\ failed\#$",
            &[b"Host 203.0.113.5 failed#"],
            &[b"Host\\ 203.0.113.5 failed#"],
        ),
        // A flag set before the address holds after it.
        (
            r"(?i)host <HOST> FAILED$",
            &[b"Host 203.0.113.5 failed", b"HOST 203.0.113.5 FaIlEd"],
            &[b"Host 203.0.113.5 failure"],
        ),
        (
            r"Host <HOST> (?i)FAILED$",
            &[b"Host 203.0.113.5 failed"],
            &[b"host 203.0.113.5 failed"],
        ),
        (
            r"(?x) Host \  <HOST> \  failed $  # the words Asterisk writes",
            &[b"Host 203.0.113.5 failed"],
            &[b"Host 203.0.113.5  failed", b"Host203.0.113.5failed"],
        ),
        (
            r"^(?i)h\x4fst <HOST>$",
            &[b"HoSt 203.0.113.5", b"host 203.0.113.5"],
            &[b"hst 203.0.113.5"],
        ),
        (
            r"^\A(?m:^)Host <HOST>$\z",
            &[b"Host 203.0.113.5"],
            &[b" Host 203.0.113.5"],
        ),
        (
            r"Host <HOST>(?m:$)",
            &[b"Host 203.0.113.5"],
            &[b"Host 203.0.113.5 x"],
        ),
        (
            r"(?Rm)Host <HOST>$",
            &[b"Host 203.0.113.5\r", b"Host 203.0.113.5"],
            &[b"Host 203.0.113.5 \r"],
        ),
        (
            r"Call from '.*' \(<HOST>\) to '[^']*'\.$",
            &[b"Call from 'x' (203.0.113.5) to 'y'."],
            &[b"Call from 'x' (203.0.113.5) to 'y''."],
        ),
        (
            r"[Hh]ost [[:alpha:]]+ <HOST> \w+ \S+$",
            &[b"host via 203.0.113.5 failed auth"],
            &[
                b"host v1a 203.0.113.5 failed auth",
                b"Host via 203.0.113.5 failed",
            ],
        ),
        (
            r"caf\xE9 <HOST> \xFF$",
            &[b"caf\xE9 203.0.113.5 \xFF"],
            &[b"caf\xC3\xA9 203.0.113.5 \xFF"],
        ),
        (
            r"(?u:\w)+ <HOST>$",
            &[b"caf\xC3\xA9 203.0.113.5"],
            &[b"caf\xE9 203.0.113.5"],
        ),
        (
            r"Host .*? '<HOST>' .+(?s:.)*$",
            &[b"Host abc '203.0.113.5' x", b"Host '' '203.0.113.5' ''"],
            &[b"Host abc '203.0.113.5' "],
        ),
        (
            r"(?U)Host .* <HOST> failed.*$",
            &[b"Host x y 203.0.113.5 failed z"],
            &[b"Host 203.0.113.5 failed"],
        ),
        (
            r"Host (?:a|bc){2,3} <HOST> x{2}$",
            &[b"Host abca 203.0.113.5 xx"],
            &[b"Host a 203.0.113.5 xx", b"Host abca 203.0.113.5 xxx"],
        ),
        (
            r"(?:Host|Peer) '<HOST>'(?:,|$)",
            &[b"Peer '203.0.113.5'", b"Host '203.0.113.5',x"],
            &[b"Host '203.0.113.5';"],
        ),
        (
            r"Host <HOST>:\d+$",
            &[b"Host 203.0.113.5:5060"],
            &[b"Host 203.0.113.5"],
        ),
        (
            r"(?-u:\xE9)? ?Host <HOST>$",
            &[b"\xE9 Host 203.0.113.5", b"Host 203.0.113.5"],
            &[b"\xE9\xE9Host 203.0.113.5"],
        ),
    ];

    /// The whole rule as the regex crate reads it, `<HOST>` an address.
    /// (Not wrapped in a group: a `(?x)` comment would swallow its `)`.)
    fn plain(failregex: &str) -> Regex {
        let whole = format!("^{}", failregex.replacen(HOST, HOST_RE, 1));
        build(&whole).expect("the reference compiles")
    }

    /// The table's rules, compiled both ways once.
    fn compiled() -> &'static [(Rule, Regex)] {
        static COMPILED: std::sync::OnceLock<Vec<(Rule, Regex)>> = std::sync::OnceLock::new();
        COMPILED.get_or_init(|| CASES.iter().map(|(re, ..)| (rule(re), plain(re))).collect())
    }

    #[test]
    fn escapes_and_assertions_read_as_the_regex_crate_reads_them() {
        let expected = host("203.0.113.5");
        for ((re, hits, misses), (rule, plain)) in CASES.iter().zip(compiled()) {
            for (line, hit) in hits
                .iter()
                .map(|l| (l, true))
                .chain(misses.iter().map(|l| (l, false)))
            {
                let shown = String::from_utf8_lossy(line);
                assert_eq!(
                    plain.is_match(line),
                    hit,
                    "the table is wrong: {re} on {shown:?}"
                );
                let ours = rule.read(line);
                if hit {
                    assert_eq!(ours, expected, "{re} on {shown:?}");
                } else {
                    assert!(
                        matches!(ours, Reading::Nothing { .. }),
                        "{re} on {shown:?}: {ours:?}"
                    );
                }
            }
        }
    }

    /// Pieces the property test edits lines with: the table's words and
    /// separators, and a second address (no lone digits or colons, which
    /// would make addresses the strict parser rightly refuses).
    const VOCABULARY: &[&[u8]] = &[
        b"Host",
        b"host",
        b"HOST",
        b"Peer",
        b"failed",
        b"FAILED",
        b"x",
        b"xx",
        b"abc",
        b"_",
        b" ",
        b"'",
        b"<",
        b">",
        b"(",
        b")",
        b".",
        b"-",
        b",",
        b"\t",
        b"\r",
        b"#",
        b"\\",
        b"\xE9",
        b"\xC3\xA9",
        b"\xFF",
        b"203.0.113.5",
        b"198.51.100.7",
    ];

    /// Splits a line into words (letters, digits, dots, colons: an address
    /// stays whole) and single other bytes.
    fn pieces_of(line: &[u8]) -> Vec<Vec<u8>> {
        let wordy = |b: &u8| b.is_ascii_alphanumeric() || *b == b'.' || *b == b':';
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        for &b in line {
            match pieces.last_mut() {
                Some(last) if wordy(&b) && last.last().is_some_and(wordy) => last.push(b),
                _ => pieces.push(vec![b]),
            }
        }
        pieces
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Near misses of the table's lines: a reading exists exactly when
        /// the whole rule matches as a plain regex.
        #[test]
        fn readings_agree_with_the_plain_regex(
            case in 0..CASES.len(),
            which in proptest::num::usize::ANY,
            edits in proptest::collection::vec((0u8..4, proptest::num::usize::ANY, 0..VOCABULARY.len()), 1..4),
        ) {
            let (re, hits, misses) = CASES[case];
            let lines: Vec<&[u8]> = hits.iter().chain(misses.iter()).copied().collect();
            let mut pieces = pieces_of(lines[which % lines.len()]);
            for (op, at, word) in edits {
                let word = VOCABULARY[word].to_vec();
                let at = at % (pieces.len() + 1);
                match op {
                    0 if at < pieces.len() => drop(pieces.remove(at)),
                    1 => pieces.insert(at, word),
                    2 if at < pieces.len() => pieces[at] = word,
                    3 if at < pieces.len() => pieces[at].make_ascii_uppercase(),
                    _ => {}
                }
            }
            let line = pieces.concat();
            let (rule, plain) = &compiled()[case];
            let ours = rule.read(&line);
            proptest::prop_assert_eq!(
                !matches!(ours, Reading::Nothing { .. }),
                plain.is_match(&line),
                "{} on {:?}: {:?}", re, String::from_utf8_lossy(&line), ours
            );
        }
    }
}

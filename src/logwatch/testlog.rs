//! `astban test-log FILE`: what the rules make of a log, like
//! fail2ban-regex, for admins checking their logs and rules.
//!
//! The file is read once, front to back, by the [`Scanner`] the daemon
//! uses, fed by the same [`LineReader`]: what test-log counts is what
//! astban would count, by construction. Memory does not grow with the
//! file: one read buffer, and records are written as they are found.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;

use super::clock::Clock;
use super::filter::{FilterError, RuleSet};
use super::lines::{Line, LineReader, Stop};
use super::scan::{Attempt, Event, Scanner};
use crate::config::{Config, ConfigError, LogConfig};

/// Bytes read at a time: large reads, few system calls.
const READ_SIZE: usize = 1 << 20;

/// stdout buffer for `--json`.
const JSON_BUFFER: usize = 1 << 16;

/// `astban test-log` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TestLogArgs {
    /// The log file to check, e.g. /var/log/asterisk/messages.
    pub file: PathBuf,
    /// Use the [log] rules, extra rules and ignoreregex of this config.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The rule set: `asterisk` (default), `book`, or a rules file.
    /// Replaces the config's `log.rules`; its extra rules still apply.
    #[arg(long, value_name = "SET")]
    pub rules: Option<String>,
    /// Print one JSON object per line a rule matched on stdout (counted
    /// or not, and why), and the summary on stderr.
    #[arg(long)]
    pub json: bool,
}

/// Why test-log could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum TestLogError {
    /// The config file is wrong.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The rules are wrong.
    #[error("{0}")]
    Rules(#[from] FilterError),
    /// The log file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Write(io::Error),
}

/// Runs the command; errors mean "exit 2".
pub fn run(args: TestLogArgs) -> Result<ExitCode, TestLogError> {
    let log = log_config(&args)?;
    let rules = Arc::new(RuleSet::from_config(&log)?);
    let read_err = |source| TestLogError::Read {
        path: args.file.clone(),
        source,
    };
    if std::fs::metadata(&args.file).map_err(read_err)?.is_dir() {
        return Err(read_err(io::Error::other("it is a directory")));
    }
    let scan = |on_record: &mut dyn FnMut(&Record) -> io::Result<()>| {
        let rules = Arc::clone(&rules);
        scan_file(
            &args.file,
            rules,
            Clock::system(),
            log.max_line_length,
            on_record,
        )
    };
    let result = if args.json {
        let mut json = JsonLines::new(&rules, io::stdout().lock());
        scan(&mut |r| json.write(r))
            .and_then(|s| json.flush().map(|()| s).map_err(ScanError::Write))
    } else {
        scan(&mut |_| Ok(()))
    };
    let summary = match result {
        Ok(summary) => summary,
        Err(ScanError::Read(e)) => return Err(read_err(e)),
        // `astban test-log --json | head` closing the pipe early is fine.
        Err(ScanError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            return Ok(ExitCode::SUCCESS);
        }
        Err(ScanError::Write(e)) => return Err(TestLogError::Write(e)),
    };
    show(&summary.render(&args.file, &rules), args.json)
}

/// The config's `[log]` section (or the defaults), with `--rules` applied.
fn log_config(args: &TestLogArgs) -> Result<LogConfig, TestLogError> {
    let mut log = match &args.config {
        Some(path) => Config::load(Some(path))?.log,
        None => LogConfig::default(),
    };
    if let Some(rules) = &args.rules {
        log.rules = rules.clone();
    }
    Ok(log)
}

/// Prints the summary: on stderr when stdout carries the JSON.
fn show(text: &str, json: bool) -> Result<ExitCode, TestLogError> {
    let shown = if json {
        io::stderr().lock().write_all(text.as_bytes())
    } else {
        io::stdout().lock().write_all(text.as_bytes())
    };
    match shown {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(TestLogError::Write(e)),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading the log failed.
    #[error("read: {0}")]
    Read(io::Error),
    /// The record sink failed.
    #[error("write: {0}")]
    Write(io::Error),
}

/// Counts of one rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleCount {
    /// Lines counted as attempts.
    pub attempts: u64,
    /// Lines folded into an attempt counted at another line.
    pub folded: u64,
    /// Lines whose readings disagreed.
    pub ambiguous: u64,
    /// Lines dropped by ignoreregex.
    pub ignored: u64,
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Physical lines read (too-long ones included).
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Per rule, in rule order.
    pub rules: Vec<RuleCount>,
    /// Attempts per host.
    pub hosts: HashMap<IpAddr, u64>,
    /// Log lines no rule matched.
    pub missed: u64,
    /// Lines without a log prefix.
    pub no_prefix: u64,
    /// Lines cut short by a newline in attacker text.
    pub cut: u64,
    /// Lines skipped as the continuation of a cut line.
    pub continuation: u64,
    /// Lines longer than `max_line_length`.
    pub too_long: u64,
    /// Time the scan took.
    pub elapsed: Duration,
}

impl Summary {
    /// All attempts counted.
    pub fn attempts(&self) -> u64 {
        self.rules.iter().map(|r| r.attempts).sum()
    }

    fn render(&self, file: &Path, rules: &RuleSet) -> String {
        let total = |f: fn(&RuleCount) -> u64| self.rules.iter().map(f).sum::<u64>();
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.lines as f64 / secs
        } else {
            0.0
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "astban test-log {} ({})",
            file.display(),
            rules.origin()
        );
        let _ = writeln!(
            out,
            "\n{} lines, {:.1} MB in {:.3} s ({:.0} lines/s)",
            self.lines,
            self.bytes as f64 / 1e6,
            secs,
            rate
        );
        for (label, n) in [
            ("attempts counted", self.attempts()),
            (
                "folded lines (same attempt, not counted again)",
                total(|r| r.folded),
            ),
            ("ignored (ignoreregex)", total(|r| r.ignored)),
            (
                "ambiguous (host not certain, not counted)",
                total(|r| r.ambiguous),
            ),
            ("cut short by a newline in attacker text", self.cut),
            (
                "continuation of a cut line (not counted)",
                self.continuation,
            ),
            ("missed (log lines no rule matched)", self.missed),
            ("not log lines", self.no_prefix),
            ("too long (over log.max_line_length)", self.too_long),
        ] {
            let _ = writeln!(out, "  {n:>10}  {label}");
        }
        let _ = writeln!(out, "\nRules (attempts, folded, ambiguous, ignored):");
        let width = rules
            .rules()
            .iter()
            .map(|r| r.name().len())
            .max()
            .unwrap_or(0);
        for (rule, c) in rules.rules().iter().zip(&self.rules) {
            let _ = writeln!(
                out,
                "  {:width$}  {:<26} {:>9} {:>9} {:>9} {:>9}",
                rule.name(),
                rule.kind().as_str(),
                c.attempts,
                c.folded,
                c.ambiguous,
                c.ignored
            );
        }
        let mut hosts: Vec<_> = self.hosts.iter().collect();
        hosts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(out, "\nAttempts by host ({}):", hosts.len());
        for (host, n) in hosts {
            let _ = writeln!(out, "  {host:<39} {n:>9}");
        }
        out
    }
}

/// A line a rule matched, as test-log reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// 1-based line number in the file.
    pub line: u64,
    /// The host, when the line names one certainly.
    pub host: Option<IpAddr>,
    /// The line's time.
    pub time: Option<Timestamp>,
    /// Index of the rule in its set.
    pub rule: usize,
    /// Whether it counted, and if not, why.
    pub outcome: Outcome,
}

/// What became of a matched line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted as an attempt; `cut` if the line was cut short by a newline
    /// in attacker text (it still names its sender).
    Counted {
        /// Whether the line was cut short.
        cut: bool,
    },
    /// Another line of the attempt counted at line `counted_line`.
    Folded {
        /// The line that counted.
        counted_line: u64,
    },
    /// An ignoreregex matched.
    Ignored,
    /// The line reads as naming more than one host.
    Ambiguous,
    /// Cut short with attacker text before the address: nobody is named.
    Cut,
    /// The rest of the message cut short at line `cut_line`.
    Continuation {
        /// The cut line.
        cut_line: u64,
    },
}

impl Record {
    /// Whether the line counted as an attempt.
    pub fn counted(&self) -> bool {
        matches!(self.outcome, Outcome::Counted { .. })
    }
}

/// Scans the file at `path` with the daemon's [`Scanner`], calling
/// `on_record` for each line a rule matched (counted or not), in file
/// order, and stops at the first error `on_record` returns.
///
/// One pass on one thread, on purpose: how a line is judged depends on
/// the lines before it (open attempts, a cut message), so only the
/// daemon's own order gives the daemon's answer. The file is read in
/// [`READ_SIZE`] pieces into one buffer; its unfinished last line is
/// judged too (the daemon would wait for its newline).
pub fn scan_file(
    path: &Path,
    rules: Arc<RuleSet>,
    clock: Clock,
    max_line: usize,
    mut on_record: impl FnMut(&Record) -> io::Result<()>,
) -> Result<Summary, ScanError> {
    let started = Instant::now();
    let mut file = File::open(path).map_err(ScanError::Read)?;
    let mut reader = LineReader::new(max_line, READ_SIZE, 0);
    let mut pass = Pass {
        tally: Tally::new(rules.rules().len()),
        scanner: Scanner::new(rules, clock),
        failed: None,
    };
    loop {
        let stop = reader
            .read_lines(&mut file, READ_SIZE as u64, |line, _| {
                pass.line(line, &mut on_record)
            })
            .map_err(ScanError::Read)?;
        pass.check()?;
        if stop == Stop::Eof {
            break;
        }
    }
    reader.finish(|line, _| pass.line(line, &mut on_record));
    pass.check()?;
    let mut summary = pass.tally.summary;
    summary.bytes = reader.offset();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The state of one [`scan_file`].
struct Pass {
    scanner: Scanner,
    tally: Tally,
    /// The sink's error: the lines after it are skipped, and the read
    /// loop stops at its next turn.
    failed: Option<io::Error>,
}

impl Pass {
    fn line(&mut self, line: Line<'_>, on_record: &mut impl FnMut(&Record) -> io::Result<()>) {
        if self.failed.is_some() {
            return;
        }
        let record = self.tally.judge(self.scanner.scan(line));
        if let Some(Err(e)) = record.map(|r| on_record(&r)) {
            self.failed = Some(e);
        }
    }

    fn check(&mut self) -> Result<(), ScanError> {
        self.failed
            .take()
            .map_or(Ok(()), |e| Err(ScanError::Write(e)))
    }
}

/// Counts the scanner's events into a [`Summary`] and turns those of
/// matched lines into [`Record`]s.
struct Tally {
    summary: Summary,
}

impl Tally {
    fn new(rules: usize) -> Tally {
        Tally {
            summary: Summary {
                rules: vec![RuleCount::default(); rules],
                ..Summary::default()
            },
        }
    }

    /// Counts the next line's event; its record if a rule matched it.
    fn judge(&mut self, event: Event<'_>) -> Option<Record> {
        let s = &mut self.summary;
        s.lines += 1;
        let line = s.lines;
        let (rule, host, time, outcome) = match event {
            Event::TooLong => {
                s.too_long += 1;
                return None;
            }
            Event::NoPrefix => {
                s.no_prefix += 1;
                return None;
            }
            Event::Missed => {
                s.missed += 1;
                return None;
            }
            Event::Cut { rule } => {
                s.cut += 1;
                (rule, None, None, Outcome::Cut)
            }
            Event::Continuation { rule, back } => {
                s.continuation += 1;
                let cut_line = line - back;
                (rule, None, None, Outcome::Continuation { cut_line })
            }
            Event::Ambiguous { rule } => {
                s.rules[rule.index()].ambiguous += 1;
                (rule, None, None, Outcome::Ambiguous)
            }
            Event::Ignored { rule, host } => {
                s.rules[rule.index()].ignored += 1;
                (rule, Some(host), None, Outcome::Ignored)
            }
            Event::Folded {
                rule,
                host,
                time,
                back,
            } => {
                s.rules[rule.index()].folded += 1;
                let counted_line = line - back;
                (rule, Some(host), time, Outcome::Folded { counted_line })
            }
            Event::Attempt(Attempt {
                rule,
                host,
                time,
                cut,
            }) => {
                s.rules[rule.index()].attempts += 1;
                s.cut += u64::from(cut);
                *s.hosts.entry(host).or_default() += 1;
                (rule, Some(host), time, Outcome::Counted { cut })
            }
        };
        Some(Record {
            line,
            host,
            time,
            rule: rule.index(),
            outcome,
        })
    }
}

/// One `--json` line: a counted attempt as
/// `{"line":N,"host":"...","time":"...","rule":"...","kind":"..."}` (the
/// shape test-log always had, plus `"cut":true` for a cut line), a line
/// that did not count with `"counted":false`, `"why"` and the line it
/// refers to (`"counted_line"` of a folded line, `"cut_line"` of a
/// continuation). Fields are written in this order.
#[derive(Serialize)]
struct JsonRecord<'a> {
    line: u64,
    host: Option<IpAddr>,
    time: Option<&'a str>,
    rule: &'a str,
    kind: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cut: bool,
    #[serde(skip_serializing_if = "is_true")]
    counted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    counted_line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cut_line: Option<u64>,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl<'a> JsonRecord<'a> {
    /// The line of `record`, whose time is written as `time`.
    fn new(record: &Record, time: Option<&'a str>, rules: &'a RuleSet) -> Option<JsonRecord<'a>> {
        let rule = rules.rules().get(record.rule)?;
        let mut json = JsonRecord {
            line: record.line,
            host: record.host,
            time,
            rule: rule.name(),
            kind: rule.kind().as_str(),
            cut: false,
            counted: false,
            why: None,
            counted_line: None,
            cut_line: None,
        };
        match record.outcome {
            Outcome::Counted { cut } => {
                json.counted = true;
                json.cut = cut;
            }
            Outcome::Folded { counted_line } => {
                json.why = Some("same attempt");
                json.counted_line = Some(counted_line);
            }
            Outcome::Ignored => json.why = Some("ignoreregex"),
            Outcome::Ambiguous => json.why = Some("ambiguous"),
            Outcome::Cut => json.why = Some("cut"),
            Outcome::Continuation { cut_line } => {
                json.why = Some("continuation");
                json.cut_line = Some(cut_line);
            }
        }
        Some(json)
    }
}

/// Writes [`JsonRecord`]s, one per line, into a buffer.
struct JsonLines<'r, W: Write> {
    out: BufWriter<W>,
    rules: &'r RuleSet,
    time: TimeText,
}

impl<'r, W: Write> JsonLines<'r, W> {
    fn new(rules: &'r RuleSet, out: W) -> JsonLines<'r, W> {
        JsonLines {
            out: BufWriter::with_capacity(JSON_BUFFER, out),
            rules,
            time: TimeText::default(),
        }
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        let time = record.time.map(|t| self.time.of(t));
        let Some(json) = JsonRecord::new(record, time, self.rules) else {
            return Ok(());
        };
        serde_json::to_writer(&mut self.out, &json)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A timestamp's text as `Display` (and serde) writes it,
/// `2026-11-24T16:03:18Z`, kept from one record to the next: a log's
/// lines come many to a minute, and formatting a timestamp whole cost a
/// quarter of writing a record.
#[derive(Debug, Default)]
struct TimeText {
    last: Option<Timestamp>,
    text: String,
}

impl TimeText {
    /// The text of `t`.
    fn of(&mut self, t: Timestamp) -> &str {
        match self.last {
            Some(last) if last == t => {}
            // `YYYY-MM-DDTHH:MM:SSZ` of the same minute: only the seconds
            // differ.
            Some(last) if same_minute(last, t) && self.text.len() == 20 => {
                let second = t.as_second().rem_euclid(60) as u8;
                self.text.truncate(17);
                self.text.push(char::from(b'0' + second / 10));
                self.text.push(char::from(b'0' + second % 10));
                self.text.push('Z');
            }
            _ => {
                self.text.clear();
                let _ = write!(self.text, "{t}");
            }
        }
        self.last = Some(t);
        &self.text
    }
}

/// Whether `a` and `b` are whole seconds of the same minute.
fn same_minute(a: Timestamp, b: Timestamp) -> bool {
    a.subsec_nanosecond() == 0
        && b.subsec_nanosecond() == 0
        && a.as_second().div_euclid(60) == b.as_second().div_euclid(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_text_is_what_display_writes() {
        let mut text = TimeText::default();
        let base = Timestamp::from_second(1_795_996_740).expect("time");
        let seconds = [
            0, 1, 1, 59, 60, 61, 119, 3599, 3600, 86_399, 86_400, 30, -1, -61,
        ];
        for s in seconds {
            let t = base + jiff::SignedDuration::from_secs(s);
            assert_eq!(text.of(t), t.to_string(), "{s}");
        }
        let t = base + jiff::SignedDuration::from_millis(1500);
        assert_eq!(text.of(t), t.to_string());
        let t = base + jiff::SignedDuration::from_secs(2);
        assert_eq!(text.of(t), t.to_string());
    }
}

//! `astban test-log FILE`: what the rules make of a log, like
//! fail2ban-regex, for admins checking their logs and rules.
//!
//! The file is streamed through one buffer, so memory does not grow with
//! its size, and scanned by the same [`Scanner`] the daemon uses: what
//! test-log counts is what astban would count.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::clock::Clock;
use super::filter::{FilterError, RuleSet};
use super::lines::{Line, LineReader};
use super::scan::{Attempt, Event, Scanner};
use crate::config::{Config, ConfigError, LogConfig};

/// Bytes read at a time.
const READ_SIZE: usize = 1 << 20;

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
    /// Print one JSON object per counted attempt on stdout, and the
    /// summary on stderr.
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
    let mut log = match &args.config {
        Some(path) => Config::load(Some(path))?.log,
        None => LogConfig::default(),
    };
    if let Some(rules) = &args.rules {
        log.rules = rules.clone();
    }
    let rules = Arc::new(RuleSet::from_config(&log)?);
    let read_err = |source| TestLogError::Read {
        path: args.file.clone(),
        source,
    };
    let file = File::open(&args.file).map_err(read_err)?;
    if file.metadata().map_err(read_err)?.is_dir() {
        return Err(read_err(io::Error::other("it is a directory")));
    }
    let scanner = Scanner::new(Arc::clone(&rules), Clock::system());
    let stdout = io::stdout();
    let result = if args.json {
        let mut json = JsonLines::new(&rules, BufWriter::with_capacity(1 << 16, stdout.lock()));
        let summary = scan(file, scanner, log.max_line_length, |n, a| json.write(n, a));
        summary.and_then(|s| json.flush().map(|()| s).map_err(ScanError::Write))
    } else {
        scan(file, scanner, log.max_line_length, |_, _| Ok(()))
    };
    let summary = match result {
        Ok(summary) => summary,
        Err(ScanError::Read(e)) => return Err(read_err(e)),
        // `astban test-log --json | head` closing the pipe early is fine.
        Err(ScanError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(ScanError::Write(e)) => return Err(TestLogError::Write(e)),
    };
    let text = summary.render(&args.file, &rules);
    let shown = if args.json {
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
    /// The attempt sink failed.
    #[error("write: {0}")]
    Write(io::Error),
}

/// Counts of one rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleCount {
    /// Lines counted as attempts.
    pub attempts: u64,
    /// Lines that were companions of a counted attempt.
    pub companions: u64,
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
        let rate = if secs > 0.0 { self.lines as f64 / secs } else { 0.0 };
        let mut out = String::new();
        let _ = writeln!(out, "astban test-log {} ({})", file.display(), rules.origin());
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
            ("companion lines (same attempt, not counted again)", total(|r| r.companions)),
            ("ignored (ignoreregex)", total(|r| r.ignored)),
            ("ambiguous (host not certain, not counted)", total(|r| r.ambiguous)),
            ("cut short by a newline in attacker text", self.cut),
            ("continuation of a cut line (not counted)", self.continuation),
            ("missed (log lines no rule matched)", self.missed),
            ("not log lines", self.no_prefix),
            ("too long (over log.max_line_length)", self.too_long),
        ] {
            let _ = writeln!(out, "  {n:>10}  {label}");
        }
        let _ = writeln!(out, "\nRules (attempts, companions, ambiguous, ignored):");
        let width = rules.rules().iter().map(|r| r.name().len()).max().unwrap_or(0);
        for (rule, c) in rules.rules().iter().zip(&self.rules) {
            let _ = writeln!(
                out,
                "  {:width$}  {:<26} {:>9} {:>9} {:>9} {:>9}",
                rule.name(),
                rule.kind().as_str(),
                c.attempts,
                c.companions,
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

/// Scans `src` to its end, calling `on_attempt` with the 1-based line
/// number of each counted attempt.
pub fn scan(
    mut src: impl Read,
    mut scanner: Scanner,
    max_line: usize,
    mut on_attempt: impl FnMut(u64, &Attempt<'_>) -> io::Result<()>,
) -> Result<Summary, ScanError> {
    let started = Instant::now();
    let rules = Arc::clone(scanner.rules());
    let mut summary = Summary {
        rules: vec![RuleCount::default(); rules.rules().len()],
        ..Summary::default()
    };
    let mut failed: Option<io::Error> = None;
    let mut reader = LineReader::new(max_line, READ_SIZE, 0);
    let mut on_line = |line: Line<'_>, _end: u64| {
        summary.lines += 1;
        let text = match line {
            Line::Text(text) => text,
            Line::TooLong => {
                summary.too_long += 1;
                return;
            }
        };
        match scanner.scan(text) {
            Event::NoPrefix => summary.no_prefix += 1,
            Event::Missed => summary.missed += 1,
            Event::Cut => summary.cut += 1,
            Event::Continuation => summary.continuation += 1,
            Event::Ambiguous { rule } => summary.rules[rule.index()].ambiguous += 1,
            Event::Ignored { rule, .. } => summary.rules[rule.index()].ignored += 1,
            Event::Companion { rule, .. } => summary.rules[rule.index()].companions += 1,
            Event::Attempt(attempt) => {
                summary.rules[attempt.rule.index()].attempts += 1;
                *summary.hosts.entry(attempt.host).or_default() += 1;
                if failed.is_none() {
                    if let Err(e) = on_attempt(summary.lines, &attempt) {
                        failed = Some(e);
                    }
                }
            }
        }
    };
    reader.read_lines(&mut src, u64::MAX, &mut on_line).map_err(ScanError::Read)?;
    reader.finish(&mut on_line);
    if let Some(e) = failed {
        return Err(ScanError::Write(e));
    }
    summary.bytes = reader.offset();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Writes `{"line":N,"host":"...","time":"...","rule":"...","kind":"..."}`
/// lines without allocating per line.
struct JsonLines<W> {
    out: W,
    /// `,"rule":"name","kind":"kind"}` per rule index, JSON-escaped once.
    tails: Vec<String>,
    last_time: Option<(Timestamp, String)>,
}

impl<W: Write> JsonLines<W> {
    fn new(rules: &RuleSet, out: W) -> JsonLines<W> {
        let tails = rules
            .rules()
            .iter()
            .map(|r| {
                let name = serde_json::to_string(r.name()).unwrap_or_else(|_| "\"?\"".into());
                format!(",\"rule\":{name},\"kind\":\"{}\"}}\n", r.kind().as_str())
            })
            .collect();
        JsonLines {
            out,
            tails,
            last_time: None,
        }
    }

    fn write(&mut self, line: u64, attempt: &Attempt<'_>) -> io::Result<()> {
        write!(self.out, "{{\"line\":{line},\"host\":\"{}\",\"time\":", attempt.host)?;
        match attempt.time {
            None => self.out.write_all(b"null")?,
            Some(t) => {
                if self.last_time.as_ref().is_none_or(|(last, _)| *last != t) {
                    self.last_time = Some((t, format!("\"{t}\"")));
                }
                if let Some((_, text)) = &self.last_time {
                    self.out.write_all(text.as_bytes())?;
                }
            }
        }
        match self.tails.get(attempt.rule.index()) {
            Some(tail) => self.out.write_all(tail.as_bytes()),
            None => self.out.write_all(b"}\n"),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

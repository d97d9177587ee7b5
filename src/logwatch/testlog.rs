//! `astban test-log FILE`: what the rules make of a log, like
//! fail2ban-regex, for admins checking their logs and rules.
//!
//! The file is streamed, in newline-aligned chunks on all cores (see
//! [`scan_file`]), so memory does not grow with its size; every chunk is
//! judged by the same [`Scanner`] the daemon uses, so what test-log counts
//! is what astban would count.

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
use super::rule::Rule;
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
    let mut log = match &args.config {
        Some(path) => Config::load(Some(path))?.log,
        None => LogConfig::default(),
    };
    if let Some(rules) = &args.rules {
        log.rules = rules.clone();
    }
    let rules = RuleSet::from_config(&log)?;
    let read_err = |source| TestLogError::Read {
        path: args.file.clone(),
        source,
    };
    let meta = std::fs::metadata(&args.file).map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(io::Error::other("it is a directory")));
    }
    // Fail here, with the file's name, if it cannot be opened.
    File::open(&args.file).map_err(read_err)?;
    let clock = Clock::system();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stdout = io::stdout();
    let result = if args.json {
        let mut json = JsonLines::new(&rules, BufWriter::with_capacity(1 << 16, stdout.lock()));
        let summary = scan_file(
            &args.file,
            &rules,
            &clock,
            log.max_line_length,
            workers,
            |r| json.write(r),
        );
        summary.and_then(|s| json.flush().map(|()| s).map_err(ScanError::Write))
    } else {
        scan_file(
            &args.file,
            &rules,
            &clock,
            log.max_line_length,
            workers,
            |_| Ok(()),
        )
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
    fn merge(&mut self, other: Summary) {
        self.lines += other.lines;
        for (mine, theirs) in self.rules.iter_mut().zip(&other.rules) {
            mine.attempts += theirs.attempts;
            mine.folded += theirs.folded;
            mine.ambiguous += theirs.ambiguous;
            mine.ignored += theirs.ignored;
        }
        for (host, n) in other.hosts {
            *self.hosts.entry(host).or_default() += n;
        }
        self.missed += other.missed;
        self.no_prefix += other.no_prefix;
        self.cut += other.cut;
        self.continuation += other.continuation;
        self.too_long += other.too_long;
    }

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

/// Scans the file at `path`, calling `on_record` for each line a rule
/// matched (counted or not), in file order.
///
/// A large file is cut into equal newline-aligned chunks scanned by up to
/// `workers` threads, two rounds of chunks in flight at most, so memory
/// stays bounded whatever the file's size. Each chunk's scanner first
/// reads the [`WARMUP`] bytes before the chunk (without counting them), so
/// attempt groups and cut lines that straddle a boundary are judged as a
/// single pass would judge them, unless more than that much log falls in
/// the second around the boundary.
pub fn scan_file(
    path: &Path,
    rules: &RuleSet,
    clock: &Clock,
    max_line: usize,
    workers: usize,
    mut on_record: impl FnMut(&Record) -> io::Result<()>,
) -> Result<Summary, ScanError> {
    let started = Instant::now();
    let size = std::fs::metadata(path).map_err(ScanError::Read)?.len();
    let workers = workers.clamp(1, MAX_WORKERS) as u64;
    let rounds = size.div_ceil(workers * MAX_CHUNK).max(1);
    let chunks = if size < MIN_PARALLEL {
        1
    } else {
        rounds * workers
    };
    let chunk_size = size.div_ceil(chunks).max(1);
    let per_worker: Vec<(RuleSet, Clock)> = (0..workers)
        .map(|_| (rules.clone(), clock.clone()))
        .collect();
    let mut summary = Summary {
        rules: vec![RuleCount::default(); rules.rules().len()],
        bytes: size,
        ..Summary::default()
    };
    let mut lines_before = 0u64;
    let mut write = |result: ChunkResult, summary: &mut Summary| -> Result<(), ScanError> {
        for record in &result.records {
            // Lines a record points back to may lie in an earlier chunk.
            let absolute = |back: u64| (lines_before + record.line).saturating_sub(back);
            let outcome = match record.outcome {
                Outcome::Folded { counted_line } => Outcome::Folded {
                    counted_line: absolute(counted_line),
                },
                Outcome::Continuation { cut_line } => Outcome::Continuation {
                    cut_line: absolute(cut_line),
                },
                other => other,
            };
            let record = Record {
                line: lines_before + record.line,
                outcome,
                ..*record
            };
            on_record(&record).map_err(ScanError::Write)?;
        }
        lines_before += result.summary.lines;
        summary.merge(result.summary);
        Ok(())
    };
    let mut pending: Vec<ChunkResult> = Vec::new();
    let mut first = 0u64;
    while first < chunks {
        let last = (first + workers).min(chunks);
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = (first..last)
                .zip(&per_worker)
                .map(|(i, (rules, clock))| {
                    let chunk = Chunk {
                        start: i * chunk_size,
                        end: ((i + 1) * chunk_size).min(size),
                        last: i + 1 == chunks,
                    };
                    scope.spawn(move || scan_chunk(path, chunk, rules, clock.clone(), max_line))
                })
                .collect();
            // Report the previous round while this one is scanned.
            let written = pending.drain(..).try_for_each(|r| write(r, &mut summary));
            let results: Result<Vec<ChunkResult>, ScanError> = handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ScanError::Read(io::Error::other("a scan thread panicked")))
                    })
                })
                .collect();
            written.and(results)
        })?;
        pending = results;
        first = last;
    }
    pending
        .into_iter()
        .try_for_each(|r| write(r, &mut summary))?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Largest chunk one thread scans at a time; bounds memory.
const MAX_CHUNK: u64 = 32 << 20;
/// Below this a file is scanned by one thread.
const MIN_PARALLEL: u64 = 4 << 20;
/// Bytes read before a chunk to rebuild the scanner's state.
pub const WARMUP: u64 = 1 << 20;
const MAX_WORKERS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Lines starting in `start..end` belong to the chunk.
    start: u64,
    end: u64,
    /// The chunk ends with the file: its last line needs no newline.
    last: bool,
}

struct ChunkResult {
    summary: Summary,
    /// Line numbers relative to the chunk; `Folded` and `Continuation`
    /// hold how many lines back the line they name is.
    records: Vec<Record>,
}

fn scan_chunk(
    path: &Path,
    chunk: Chunk,
    rules: &RuleSet,
    clock: Clock,
    max_line: usize,
) -> Result<ChunkResult, ScanError> {
    use std::io::{Seek, SeekFrom};

    let mut file = File::open(path).map_err(ScanError::Read)?;
    let from = chunk.start.saturating_sub(WARMUP);
    file.seek(SeekFrom::Start(from)).map_err(ScanError::Read)?;
    // A line starting before `end` ends within max_line + 1 bytes after it
    // (or is dropped as too long by then).
    let limit = if chunk.last {
        u64::MAX
    } else {
        chunk.end - from + max_line as u64 + 1
    };
    let mut src = file.take(limit);
    let mut scanner = Scanner::new(Arc::new(rules.clone()), clock);
    let mut summary = Summary {
        rules: vec![RuleCount::default(); rules.rules().len()],
        ..Summary::default()
    };
    let mut records = Vec::new();
    let mut line_start = from;
    let mut on_line = |line: Line<'_>, end: u64| {
        let start = std::mem::replace(&mut line_start, end);
        let counted = (chunk.start..chunk.end).contains(&start);
        if start >= chunk.end {
            return;
        }
        let event = scanner.scan(line);
        if !counted {
            return;
        }
        summary.lines += 1;
        let line = summary.lines;
        let mut record = |rule: &Rule, host, time, outcome| {
            records.push(Record {
                line,
                host,
                time,
                rule: rule.index(),
                outcome,
            })
        };
        match event {
            Event::TooLong => summary.too_long += 1,
            Event::NoPrefix => summary.no_prefix += 1,
            Event::Missed => summary.missed += 1,
            Event::Cut { rule } => {
                summary.cut += 1;
                record(rule, None, None, Outcome::Cut);
            }
            Event::Continuation { rule, back } => {
                summary.continuation += 1;
                record(rule, None, None, Outcome::Continuation { cut_line: back });
            }
            Event::Ambiguous { rule } => {
                summary.rules[rule.index()].ambiguous += 1;
                record(rule, None, None, Outcome::Ambiguous);
            }
            Event::Ignored { rule, host } => {
                summary.rules[rule.index()].ignored += 1;
                record(rule, Some(host), None, Outcome::Ignored);
            }
            Event::Folded {
                rule,
                host,
                time,
                back,
            } => {
                summary.rules[rule.index()].folded += 1;
                record(
                    rule,
                    Some(host),
                    time,
                    Outcome::Folded { counted_line: back },
                );
            }
            Event::Attempt(Attempt {
                rule,
                host,
                time,
                cut,
            }) => {
                summary.rules[rule.index()].attempts += 1;
                summary.cut += u64::from(cut);
                *summary.hosts.entry(host).or_default() += 1;
                record(rule, Some(host), time, Outcome::Counted { cut });
            }
        }
    };
    let mut reader = LineReader::new(max_line, READ_SIZE, from);
    reader
        .read_lines(&mut src, u64::MAX, &mut on_line)
        .map_err(ScanError::Read)?;
    if chunk.last {
        reader.finish(&mut on_line);
    }
    Ok(ChunkResult { summary, records })
}

/// Writes one JSON object per record: a counted attempt as
/// `{"line":N,"host":"...","time":"...","rule":"...","kind":"..."}` (the
/// shape test-log always had, plus `"cut":true` for a cut line), a line
/// that did not count with `"counted":false`, `"why"` and the line it
/// refers to (`"counted_line"` of a folded line, `"cut_line"` of a
/// continuation); without allocating per counted line.
struct JsonLines<W> {
    out: W,
    /// `,"rule":"name","kind":"kind"` per rule index, JSON-escaped once.
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
                format!(",\"rule\":{name},\"kind\":\"{}\"", r.kind().as_str())
            })
            .collect();
        JsonLines {
            out,
            tails,
            last_time: None,
        }
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.out.write_all(b"{\"line\":")?;
        write_decimal(&mut self.out, record.line)?;
        self.out.write_all(b",\"host\":")?;
        match record.host {
            None => self.out.write_all(b"null")?,
            Some(IpAddr::V4(v4)) => {
                self.out.write_all(b"\"")?;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.write_all(b".")?;
                    }
                    write_decimal(&mut self.out, u64::from(octet))?;
                }
                self.out.write_all(b"\"")?;
            }
            Some(IpAddr::V6(v6)) => write!(self.out, "\"{v6}\"")?,
        }
        self.out.write_all(b",\"time\":")?;
        match record.time {
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
        if let Some(tail) = self.tails.get(record.rule) {
            self.out.write_all(tail.as_bytes())?;
        }
        let (why, refers) = match record.outcome {
            Outcome::Counted { cut: false } => return self.out.write_all(b"}\n"),
            Outcome::Counted { cut: true } => return self.out.write_all(b",\"cut\":true}\n"),
            Outcome::Folded { counted_line } => {
                ("same attempt", Some(("counted_line", counted_line)))
            }
            Outcome::Ignored => ("ignoreregex", None),
            Outcome::Ambiguous => ("ambiguous", None),
            Outcome::Cut => ("cut", None),
            Outcome::Continuation { cut_line } => ("continuation", Some(("cut_line", cut_line))),
        };
        write!(self.out, ",\"counted\":false,\"why\":\"{why}\"")?;
        if let Some((key, line)) = refers {
            write!(self.out, ",\"{key}\":{line}")?;
        }
        self.out.write_all(b"}\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `write!("{n}")` without the formatting machinery, which shows in a
/// profile at a few hundred thousand lines per second.
fn write_decimal(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.write_all(&digits[at..])
}

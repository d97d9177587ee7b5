//! The `messages` log input: following the file and matching its lines.
//!
//! [`run`] is the task the daemon starts. The pieces below it are pure or
//! synchronous and tested on their own: [`prefix`] parses Asterisk's line
//! prefix, [`host`] the address, [`rule`] and [`filter`] match rules,
//! [`scan`] judges lines in context (attempts, continuation lines),
//! [`clock`] converts timestamps, [`lines`] splits bytes into bounded lines
//! and [`tail`] follows the file across rotation. [`testlog`] is
//! `astban test-log`.

pub mod clock;
pub mod filter;
pub mod host;
pub mod lines;
pub mod prefix;
pub mod rule;
pub mod scan;
pub mod tail;
pub mod testlog;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::clock::Clock;
use self::filter::RuleSet;
use self::scan::{Event, Scanner};
use self::tail::{Cursor, Follower, Notice, Poll, SavedCursor, StartAt};
use crate::failure::{Failure, Report, Source};
use crate::persist::{self, Loaded};
use crate::throttle::Throttle;

/// The cursor's file in the state directory.
pub const CURSOR_FILE: &str = "log-cursor.json";

/// Where Asterisk writes its `messages` log when `log.path` is not set:
/// the sample logger.conf of Asterisk 19 and later names it `messages.log`,
/// older ones `messages`.
pub const DEFAULT_PATHS: [&str; 2] = [
    "/var/log/asterisk/messages.log",
    "/var/log/asterisk/messages",
];

/// How often a line that cannot be attributed (ambiguous, cut) is logged
/// at `warn`; the rest of a flood goes to `debug` and the counters.
const SKIP_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Bytes read per batch: a batch runs on a blocking thread, and its
/// reports are sent before the next is read, so a large backlog neither
/// stalls the runtime nor piles up in memory.
const BATCH_BYTES: u64 = 1 << 20;

/// How often a moved cursor is written to disk (and always on shutdown).
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// What the log input has done so far, for `astban status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogStats {
    /// The file followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Lines read.
    pub lines: u64,
    /// Failed attempts found in them (before the input-mode rule).
    pub failures: u64,
    /// Lines of an attempt already counted (not counted again).
    #[serde(default)]
    pub folded: u64,
    /// Lines a rule matched that read as naming several hosts.
    #[serde(default)]
    pub ambiguous: u64,
    /// Lines cut short by a newline in attacker text.
    #[serde(default)]
    pub cut: u64,
    /// Lines after a cut one that belong to its message (never counted).
    #[serde(default)]
    pub continuation: u64,
    /// Lines without a log prefix outside a cut message.
    #[serde(default)]
    pub unparsable: u64,
    /// Lines longer than `log.max_line_length` whose kept ends named no
    /// sender certainly.
    pub too_long: u64,
    /// Bytes of the file not read yet, at the last read: nonzero for long
    /// means the input falls behind Asterisk.
    #[serde(default)]
    pub behind: u64,
    /// Whether the file is missing right now.
    pub file_missing: bool,
}

/// The file to follow: `configured`, or else whichever of
/// [`DEFAULT_PATHS`] exists (the one written last if both do), or else the
/// older name. Returns the path and, when it was chosen rather than
/// configured, why, for the log.
pub fn choose_path(configured: Option<&Path>) -> (PathBuf, Option<String>) {
    choose_among(configured, &DEFAULT_PATHS.map(Path::new))
}

/// [`choose_path`] over any candidates, newest name first.
fn choose_among(configured: Option<&Path>, candidates: &[&Path]) -> (PathBuf, Option<String>) {
    if let Some(path) = configured {
        return (path.to_path_buf(), None);
    }
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // Ties (both written in the same instant, or no mtime) go to the
    // newer name, which comes first.
    let found = candidates
        .iter()
        .rev()
        .filter_map(|&p| Some((modified(p)?, p)))
        .max_by_key(|&(at, _)| at);
    match (found, candidates.last()) {
        (Some((_, p)), _) => (
            p.to_path_buf(),
            Some(format!(
                "log.path is not set; following {}, which exists",
                p.display()
            )),
        ),
        (None, Some(&oldest)) => (
            oldest.to_path_buf(),
            Some(format!(
                "log.path is not set and no {} exists yet; waiting for {} (set log.path if your logger.conf names another file)",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
                oldest.display()
            )),
        ),
        (None, None) => (PathBuf::new(), None),
    }
}

/// What is wrong with `path` as the log to follow, if anything: for
/// `check-config`, which should say so before the daemon runs.
pub fn path_problem(path: &Path) -> Option<String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "log file {shown} does not exist (yet); astban waits for it, but check log.path and logger.conf"
        )),
        Err(e) => Some(format!("log file {shown} cannot be read: {e}")),
        Ok(meta) if meta.is_dir() => Some(format!(
            "log.path {shown} is a directory; set it to Asterisk's messages file"
        )),
        Ok(_) => std::fs::File::open(path)
            .err()
            .map(|e| format!("log file {shown} cannot be read: {e}")),
    }
}

/// Why the log input stopped.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The engine dropped its end of the report channel.
    #[error("the engine no longer takes reports; the log input stops")]
    ReportsClosed,
    /// The blocking reader panicked or was cancelled.
    #[error("the log reader thread failed: {0}")]
    Reader(#[from] tokio::task::JoinError),
}

/// What the log input needs of `[log]` besides its rules (those come
/// compiled, as a [`RuleSet`]); `&LogConfig` converts into it.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// The file to follow; `None` picks a default (see [`choose_path`]).
    pub path: Option<PathBuf>,
    /// Longest line read whole.
    pub max_line_length: usize,
    /// How often to look at the file when inotify cannot be used.
    pub poll_interval: Duration,
    /// Where to start without a saved cursor.
    pub start: StartAt,
}

/// Follows `config.path` (or the default file, see [`choose_path`]) and
/// reports every counted attempt until `shutdown` fires.
///
/// It keeps running when the file is missing or unreadable (saying so once
/// in the log), picks up new rules from `rules` (a SIGHUP reload), and
/// keeps its cursor in `state_dir` so that lines written while astban was
/// stopped are still read. `stats` is updated after each batch's reports
/// have been handed on.
///
/// `state_dir` must exist: the daemon creates it once at start.
pub async fn run(
    config: LogSettings,
    mut rules: watch::Receiver<Arc<RuleSet>>,
    state_dir: PathBuf,
    reports: mpsc::Sender<Report>,
    stats: watch::Sender<LogStats>,
    shutdown: CancellationToken,
) -> Result<(), LogError> {
    let cursor_path = state_dir.join(CURSOR_FILE);
    let (mut path, chosen) = choose_path(config.path.as_deref());
    if let Some(why) = chosen {
        tracing::info!("{why}");
    }
    stats.send_modify(|s| s.path = Some(path.clone()));
    let saved = load_cursor(&cursor_path);
    let wake = Arc::new(Notify::new());
    let mut watcher = watch_dir(&path, &wake);
    let scanner = Scanner::new(Arc::clone(&rules.borrow_and_update()), Clock::system());
    let follower = Follower::new(
        path.clone(),
        config.max_line_length,
        config.start,
        saved.clone(),
    );
    let mut reader = Reader {
        follower,
        scanner,
        warn: Throttle::new(SKIP_WARN_INTERVAL),
    };
    let mut poll_tick = tokio::time::interval(config.poll_interval);
    poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut save_tick = tokio::time::interval(CURSOR_SAVE_INTERVAL);
    save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut committed = saved.map(|s| s.cursor);
    let mut stored = committed;

    'follow: loop {
        // New rules apply from the next batch on: lines written after a
        // reload are judged by the new rules.
        if rules.has_changed().unwrap_or(false) {
            reader
                .scanner
                .set_rules(Arc::clone(&rules.borrow_and_update()));
            tracing::info!("log rules reloaded");
        }
        let (back, batch) = tokio::task::spawn_blocking(move || {
            let batch = reader.batch();
            (reader, batch)
        })
        .await?;
        reader = back;
        let failures = batch.reports.len() as u64;
        for (report, cursor) in batch.reports {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'follow,
                sent = reports.send(report) => {
                    sent.map_err(|_| LogError::ReportsClosed)?;
                    committed = Some(cursor);
                }
            }
        }
        if batch.end.is_some() {
            committed = batch.end;
        }
        stats.send_if_modified(|s| {
            let before = s.clone();
            s.lines += batch.lines;
            s.failures += failures;
            s.folded += batch.counts.folded;
            s.ambiguous += batch.counts.ambiguous;
            s.cut += batch.counts.cut;
            s.continuation += batch.counts.continuation;
            s.unparsable += batch.counts.unparsable;
            s.too_long += batch.too_long;
            s.file_missing = batch.missing.unwrap_or(s.file_missing);
            s.behind = batch.behind;
            *s != before
        });
        if batch.poll == Poll::More {
            tokio::task::yield_now().await;
            continue;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break 'follow,
                () = wake.notified() => break,
                _ = poll_tick.tick() => {
                    // Unset log.path and no file yet: Asterisk may create
                    // the other default name (messages.log) instead.
                    if config.path.is_none() && stats.borrow().file_missing {
                        let (found, _) = choose_path(None);
                        if found != path && found.exists() {
                            tracing::info!("log.path is not set; {} appeared, following it", found.display());
                            path = found;
                            reader.follower = Follower::new(
                                path.clone(),
                                config.max_line_length,
                                StartAt::Beginning,
                                None,
                            );
                            watcher = None;
                            stats.send_modify(|s| s.path = Some(path.clone()));
                        }
                    }
                    if watcher.is_none() {
                        watcher = watch_dir(&path, &wake);
                    }
                    break;
                }
                _ = save_tick.tick() => {
                    if committed != stored {
                        save_cursor(&cursor_path, reader.follower.path(), committed).await;
                        stored = committed;
                    }
                }
            }
        }
    }
    if committed != stored {
        save_cursor(&cursor_path, reader.follower.path(), committed).await;
    }
    Ok(())
}

/// The follower and the scanner, moved to a blocking thread for each batch.
struct Reader {
    follower: Follower,
    scanner: Scanner,
    warn: Throttle,
}

/// Lines of a batch that did not count, by why.
#[derive(Debug, Default)]
struct Uncounted {
    folded: u64,
    ambiguous: u64,
    cut: u64,
    continuation: u64,
    unparsable: u64,
}

struct Batch {
    /// Reports, each with the cursor just past its line.
    reports: Vec<(Report, Cursor)>,
    /// The cursor past the last line read, if any line was.
    end: Option<Cursor>,
    poll: Poll,
    /// Lines read, and how many of them were too long.
    lines: u64,
    too_long: u64,
    counts: Uncounted,
    /// Whether the file turned out missing (or present again).
    missing: Option<bool>,
    /// Bytes of the file left to read after this batch.
    behind: u64,
}

impl Reader {
    fn batch(&mut self) -> Batch {
        let now = Timestamp::now();
        self.scanner.clock_mut().set_now(now);
        let mut reports = Vec::new();
        let mut end = None;
        let mut too_long = 0u64;
        let mut lines = 0u64;
        let mut missing = None;
        let mut counts = Uncounted::default();
        let path = self.follower.path().to_path_buf();
        let scanner = &mut self.scanner;
        let warn = &mut self.warn;
        let poll = self.follower.poll(
            BATCH_BYTES,
            |line, cursor| {
                end = Some(cursor);
                lines += 1;
                match scanner.scan(line) {
                    Event::Attempt(a) => {
                        let failure = Failure {
                            host: a.host,
                            kind: a.rule.kind(),
                            service: a.rule.service(),
                            account: None,
                            account_matched: false,
                            session: None,
                            time: a.time.unwrap_or(now),
                            source: Source::Log,
                        };
                        reports.push((Report::Failure(failure), cursor));
                        counts.cut += u64::from(a.cut);
                    }
                    Event::TooLong => too_long += 1,
                    Event::Folded { .. } => counts.folded += 1,
                    Event::Continuation { .. } => counts.continuation += 1,
                    Event::NoPrefix => counts.unparsable += 1,
                    Event::Ambiguous { rule } => {
                        counts.ambiguous += 1;
                        warn.log(format_args!(
                            "a line of {} matches rule {} but can be read as naming several addresses (attacker text?); counted for nobody",
                            path.display(),
                            rule.name()
                        ));
                    }
                    Event::Cut { rule } => {
                        counts.cut += 1;
                        warn.log(format_args!(
                            "a line of {} begins rule {} and is cut short by a newline in attacker text; counted for nobody, and the rest of its message is skipped",
                            path.display(),
                            rule.name()
                        ));
                    }
                    Event::Missed | Event::Ignored { .. } => {}
                }
            },
            |notice| {
                announce(&path, notice);
                match notice {
                    Notice::Missing => missing = Some(true),
                    Notice::Following { .. } | Notice::Rotated | Notice::Truncated => {
                        missing = Some(false)
                    }
                    Notice::Error(_) | Notice::LostRotated => {}
                }
            },
        );
        if too_long > 0 {
            tracing::warn!(
                "skipped {too_long} line(s) of {} longer than log.max_line_length",
                path.display()
            );
        }
        Batch {
            reports,
            end,
            poll,
            lines,
            too_long,
            counts,
            missing,
            behind: self.follower.behind(),
        }
    }
}

fn announce(path: &Path, notice: &Notice) {
    let path = path.display();
    match notice {
        Notice::Missing => {
            tracing::warn!("log file {path} does not exist (yet); waiting for it to appear")
        }
        Notice::Error(e) => tracing::warn!("log input: {e}; retrying"),
        Notice::Following { offset } => tracing::info!("following {path} from offset {offset}"),
        Notice::Rotated => {
            tracing::info!("{path} was rotated; finished the old file, reading the new one")
        }
        Notice::Truncated => tracing::info!("{path} was truncated; reading it from the start"),
        Notice::LostRotated => tracing::warn!(
            "{path} was rotated while astban was stopped and the old file is gone; lines written to it since are not read"
        ),
    }
}

/// Watches the file's directory (so creation and renames are seen too);
/// `None` when inotify cannot be used, in which case polling does the job.
fn watch_dir(path: &Path, wake: &Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;

    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_os_string());
    let wake = Arc::clone(wake);
    let handler = move |event: notify::Result<notify::Event>| {
        if wakes(&event, name.as_deref()) {
            wake.notify_one();
        }
    };
    let result = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match result {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!(
                "cannot watch {} with inotify ({e}); polling it",
                dir.display()
            );
            None
        }
    }
}

/// Whether a watch event may mean new lines: a change to the followed
/// file's name (or an error, to be safe). Opening and reading it, which the
/// input itself does, must not wake it, or it would wake itself forever.
fn wakes(event: &notify::Result<notify::Event>, name: Option<&std::ffi::OsStr>) -> bool {
    match event {
        Err(_) => true,
        Ok(event) => {
            !matches!(event.kind, notify::EventKind::Access(_))
                && event.paths.iter().any(|p| p.file_name() == name)
        }
    }
}

fn load_cursor(path: &Path) -> Option<SavedCursor> {
    match persist::load_json::<SavedCursor>(path) {
        Ok(Loaded::Value(saved)) => Some(saved),
        Ok(Loaded::Missing) => None,
        Ok(Loaded::Corrupt { error, moved_to }) => {
            tracing::warn!(
                "log cursor {} was unreadable ({error}); moved to {}, starting as configured by log.start",
                path.display(),
                moved_to.display()
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                "cannot read log cursor {}: {e}; starting as configured by log.start",
                path.display()
            );
            None
        }
    }
}

async fn save_cursor(path: &Path, followed: &Path, cursor: Option<Cursor>) {
    let Some(cursor) = cursor else { return };
    let saved = SavedCursor {
        path: followed.to_path_buf(),
        cursor,
    };
    let path = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        persist::save_json(&path, &saved).map_err(|e| (path, e))
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err((path, e))) => tracing::warn!("cannot save log cursor {}: {e}", path.display()),
        Err(e) => tracing::warn!("cannot save log cursor: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::net::IpAddr;

    /// What a scan found: attempts per host, then the lines read and the
    /// folded, ambiguous, cut, continuation, no-prefix and too-long ones.
    type Counts = (BTreeMap<IpAddr, u64>, [u64; 7]);

    /// The daemon's path over a whole file: the follower, the scanner and
    /// the batches of [`run`], from the file's start.
    fn daemon_counts(path: &Path, rules: &Arc<RuleSet>) -> Counts {
        let mut reader = Reader {
            follower: Follower::new(path.to_path_buf(), 8192, StartAt::Beginning, None),
            scanner: Scanner::new(Arc::clone(rules), Clock::system()),
            warn: Throttle::new(SKIP_WARN_INTERVAL),
        };
        let (mut hosts, mut n) = (BTreeMap::new(), [0u64; 7]);
        loop {
            let batch = reader.batch();
            for (report, _) in &batch.reports {
                *hosts.entry(report.host()).or_default() += 1;
            }
            let c = &batch.counts;
            let more = [
                batch.lines,
                c.folded,
                c.ambiguous,
                c.cut,
                c.continuation,
                c.unparsable,
                batch.too_long,
            ];
            n.iter_mut().zip(more).for_each(|(n, m)| *n += m);
            if batch.poll != Poll::More {
                return (hosts, n);
            }
        }
    }

    /// `astban test-log`'s answer for the same file.
    fn test_log_counts(path: &Path, rules: &Arc<RuleSet>) -> Counts {
        let s = testlog::scan_file(path, Arc::clone(rules), Clock::system(), 8192, |_| Ok(()))
            .expect("scan");
        let total = |f: fn(&testlog::RuleCount) -> u64| s.rules.iter().map(f).sum::<u64>();
        let n = [
            s.lines,
            total(|r| r.folded),
            total(|r| r.ambiguous),
            s.cut,
            s.continuation,
            s.no_prefix,
            s.too_long,
        ];
        (s.hosts.into_iter().collect(), n)
    }

    /// A log of `bytes` or more in the shapes that depend on the lines
    /// around them: attempts of two lines, cut lines and their rest, an
    /// over-long line.
    fn generated_log(path: &Path, bytes: u64) {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
        let mut second = 0u64;
        let mut written = 0u64;
        while written < bytes {
            second += 1;
            let t = format!(
                "[2026-11-24 {:02}:{:02}:{:02}]",
                (second / 3600) % 24,
                (second / 60) % 60,
                second % 60
            );
            let h = format!(
                "10.{}.{}.{}",
                second % 7,
                (second / 256) % 256,
                second % 256
            );
            let long = if second % 97 == 0 {
                "u".repeat(9000)
            } else {
                "u".into()
            };
            let noise = if second % 89 == 0 {
                "n".repeat(9000)
            } else {
                "n".into()
            };
            let lines = format!(
                "{t} NOTICE[2766] acl.c: SIP Peer ACL: Rejecting '{h}' due to a failure to pass ACL 'x'\n\
                 {t} NOTICE[2766] chan_sip.c: Registration from '<sip:1@x>' failed for '{h}:5060' - Device does not match ACL\n\
                 {t} NOTICE[9] chan_iax2.c: Host {h} failed MD5 authentication for 'cut\n\
                 {t} NOTICE[9] chan_iax2.c: Host 192.0.2.1 failed MD5 authentication for 'x' (e7df != b)\n\
                 {}\n\
                 {t} NOTICE[3] manager.c: {h} failed to authenticate as '{long}'\n\
                 {t} NOTICE[1] cdr.c: {noise}\n\
                 not a log line\n",
                "f".repeat(255)
            );
            out.write_all(lines.as_bytes()).expect("write");
            written += lines.len() as u64;
        }
        out.flush().expect("flush");
    }

    #[test]
    fn test_log_counts_what_the_daemon_counts() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures");
        let mut logs: Vec<PathBuf> = [fixtures.clone(), fixtures.join("pjsip")]
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).expect("fixtures"))
            .map(|entry| entry.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        assert!(logs.len() > 10, "{logs:?}");
        // Larger than a batch, so the daemon's batches are crossed.
        let dir = tempfile::tempdir().expect("tempdir");
        let generated = dir.path().join("generated.log");
        generated_log(&generated, 3 * BATCH_BYTES);
        logs.push(generated.clone());
        for set in ["asterisk", "book"] {
            let rules = Arc::new(RuleSet::load(set).expect("rules"));
            for log in &logs {
                let daemon = daemon_counts(log, &rules);
                assert!(daemon.1[0] > 0, "{}", log.display());
                assert_eq!(
                    test_log_counts(log, &rules),
                    daemon,
                    "{set}: {}",
                    log.display()
                );
            }
        }
        // The generated log has every kind of line but ambiguous ones.
        let rules = Arc::new(RuleSet::load("asterisk").expect("rules"));
        let (_, n) = daemon_counts(&generated, &rules);
        assert!(n.iter().enumerate().all(|(i, &n)| i == 2 || n > 0), "{n:?}");
    }

    #[test]
    fn only_changes_to_the_followed_name_wake_the_input() {
        use notify::event::{AccessKind, CreateKind, ModifyKind};
        use notify::{Event, EventKind};
        let name = Some(std::ffi::OsStr::new("messages"));
        let event = |kind, path: &str| Ok(Event::new(kind).add_path(PathBuf::from(path)));
        assert!(wakes(
            &event(
                EventKind::Modify(ModifyKind::Any),
                "/var/log/asterisk/messages"
            ),
            name
        ));
        assert!(wakes(
            &event(
                EventKind::Create(CreateKind::File),
                "/var/log/asterisk/messages"
            ),
            name
        ));
        assert!(!wakes(
            &event(
                EventKind::Modify(ModifyKind::Any),
                "/var/log/asterisk/queue_log"
            ),
            name
        ));
        // The input's own open and reads.
        assert!(!wakes(
            &event(
                EventKind::Access(AccessKind::Any),
                "/var/log/asterisk/messages"
            ),
            name
        ));
        assert!(wakes(&Err(notify::Error::generic("overflow")), name));
    }

    #[test]
    fn an_unset_path_follows_the_file_asterisk_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("messages.log");
        let old = dir.path().join("messages");
        let candidates = [new.as_path(), old.as_path()];
        // Configured: as configured, whatever exists.
        assert_eq!(choose_among(Some(&old), &candidates), (old.clone(), None));
        // Neither exists: wait for the older name, and say so.
        let (path, why) = choose_among(None, &candidates);
        assert_eq!(path, old);
        assert!(why.expect("why").contains("waiting"));
        // One exists: that one.
        std::fs::write(&new, "").expect("write");
        assert_eq!(choose_among(None, &candidates).0, new);
        // Both: the one written last.
        let past = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::write(&old, "").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&new)
            .and_then(|f| f.set_modified(past))
            .expect("set mtime");
        let (path, why) = choose_among(None, &candidates);
        assert_eq!(path, old);
        assert!(why.expect("why").contains("following"));
    }
}

//! Which failures count: the input-mode rule between the inputs and the
//! engine.
//!
//! In `auto` mode AMI is authoritative while its session is up; while it is
//! down, failures from the log count instead. The decision is made on the
//! time Asterisk saw the attempt, not on when astban read it, so a log line
//! read late still counts exactly when AMI was blind at that moment. Log
//! timestamps have one-second resolution, so a second in which AMI went
//! down or came back may hold attempts that both inputs report: there,
//! reports are matched by host and second and the second report of a pair
//! is dropped. An attempt is never counted twice; in the worst case an
//! attempt in a switch-over second counts once although it happened twice.

use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ami::client::Health;
use crate::config::InputMode;
use crate::failure::{FailureKind, KindSet, Report, Source};

/// Down intervals remembered: enough for a flapping link, small enough to
/// scan per report.
const MAX_INTERVALS: usize = 32;
/// Recent (host, second) records kept per input for switch-over matching.
const MAX_RECENT: usize = 4096;

/// How many reports of each input counted, for `astban status` (and for
/// tests, which need to know a report was judged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GateStats {
    /// AMI reports that counted.
    pub ami_counted: u64,
    /// AMI reports dropped (mode `log`, or already counted from the log).
    pub ami_dropped: u64,
    /// Log reports that counted.
    pub log_counted: u64,
    /// Log reports dropped (AMI covered that moment, or mode `ami`).
    pub log_dropped: u64,
}

impl GateStats {
    fn record(&mut self, source: Source, counted: bool) {
        let n = match (source, counted) {
            (Source::Ami, true) => &mut self.ami_counted,
            (Source::Ami, false) => &mut self.ami_dropped,
            (Source::Log, true) => &mut self.log_counted,
            (Source::Log, false) => &mut self.log_dropped,
        };
        *n += 1;
    }
}

/// The pure decision: does this report count?
#[derive(Debug)]
pub struct Gate {
    mode: InputMode,
    /// The kinds AMI reports (those of `ami.events` it has events for);
    /// log failures of other kinds are the log's alone and always count.
    ami_kinds: KindSet,
    /// Closed periods when AMI was not delivering events, oldest first, as
    /// half-open `[start, end)` in milliseconds since the epoch.
    down: VecDeque<(i64, i64)>,
    /// Start of the current down period; `Some(i64::MIN)` until AMI first
    /// comes up (before that nothing watched).
    down_since: Option<i64>,
    /// AMI failures recently counted, for matching log lines of the same
    /// second.
    ami_recent: Recent,
    /// Log failures counted in switch-over seconds, for matching AMI
    /// failures of the same second.
    log_recent: Recent,
}

/// A bounded multiset of (host, second).
#[derive(Debug, Default)]
struct Recent(VecDeque<(IpAddr, i64)>);

impl Recent {
    fn push(&mut self, host: IpAddr, second: i64) {
        if self.0.len() == MAX_RECENT {
            self.0.pop_front();
        }
        self.0.push_back((host, second));
    }

    /// Removes one matching record; true if there was one.
    fn take(&mut self, host: IpAddr, second: i64) -> bool {
        match self.0.iter().position(|&r| r == (host, second)) {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }
}

impl Gate {
    /// A gate for `mode` where AMI reports the kinds in `ami_events`; AMI
    /// counts as down until the first `Up`.
    pub fn new(mode: InputMode, ami_events: &[FailureKind]) -> Gate {
        Gate {
            mode,
            ami_kinds: ami_events
                .iter()
                .copied()
                .filter(|k| k.event_name().is_some())
                .collect(),
            down: VecDeque::new(),
            down_since: Some(i64::MIN),
            ami_recent: Recent::default(),
            log_recent: Recent::default(),
        }
    }

    /// Records a change of the AMI session's health. The watch channel
    /// may have skipped states in between; each state's record of the edge
    /// before it fills the gap.
    pub fn set_health(&mut self, health: &Health) {
        match *health {
            Health::Up {
                since, down_since, ..
            } => {
                let start = match self.down_since.take() {
                    Some(start) => Some(start),
                    // A Down was missed: its own start is in this Up.
                    None => down_since.map(|d| d.as_millisecond()),
                };
                if let Some(start) = start {
                    self.close_down(start, since.as_millisecond());
                }
            }
            Health::Down {
                since, up_since, ..
            } => match (self.down_since, up_since) {
                (None, _) => self.down_since = Some(since.as_millisecond()),
                // An Up was missed: AMI was covering from `up` until `since`.
                (Some(start), Some(up)) => {
                    self.close_down(start, up.as_millisecond());
                    self.down_since = Some(since.as_millisecond());
                }
                (Some(_), None) => {}
            },
            Health::Connecting => {}
        }
    }

    fn close_down(&mut self, start: i64, end: i64) {
        if self.down.len() == MAX_INTERVALS {
            self.down.pop_front();
        }
        self.down.push_back((start, end));
    }

    /// Whether AMI reports failures of `kind` at all.
    fn ami_reports(&self, kind: FailureKind) -> bool {
        self.ami_kinds.contains(kind)
    }

    /// Whether AMI was blind at some moment of the second starting at
    /// `second_ms`.
    fn down_during(&self, second_ms: i64) -> bool {
        let end = second_ms + 1000;
        self.down_since.is_some_and(|s| s < end)
            || self.down.iter().any(|&(s, e)| s < end && e > second_ms)
    }

    /// Whether AMI changed state within the second starting at `second_ms`.
    fn switch_in(&self, second_ms: i64) -> bool {
        let within = |t: i64| t >= second_ms && t < second_ms + 1000;
        self.down_since.is_some_and(within)
            || self.down.iter().any(|&(s, e)| within(s) || within(e))
    }

    /// Decides whether `report` counts, and remembers what is needed to
    /// keep the other input from counting the same attempt.
    pub fn admit(&mut self, report: &Report) -> bool {
        let source = report.source();
        match (self.mode, source) {
            (InputMode::Log, Source::Log) | (InputMode::Ami, Source::Ami) => return true,
            (InputMode::Log, Source::Ami) | (InputMode::Ami, Source::Log) => return false,
            (InputMode::Auto, _) => {}
        }
        // A success only resets a count; it cannot double anything.
        let Report::Failure(failure) = report else {
            return source == Source::Ami || self.down_during(second_of(report.time()));
        };
        let second = second_of(failure.time);
        match source {
            Source::Ami => {
                if self.switch_in(second) && self.log_recent.take(failure.host, second) {
                    return false;
                }
                self.ami_recent.push(failure.host, second);
                true
            }
            Source::Log => {
                if !self.ami_reports(failure.kind) {
                    return true;
                }
                if !self.down_during(second) {
                    return false;
                }
                if self.switch_in(second) {
                    if self.ami_recent.take(failure.host, second) {
                        return false;
                    }
                    self.log_recent.push(failure.host, second);
                }
                true
            }
        }
    }
}

/// The start of the second holding `t`, in milliseconds.
fn second_of(t: Timestamp) -> i64 {
    t.as_second() * 1000
}

/// Where admitted reports go: the engine in the daemon, a channel in tests.
pub trait ReportSink {
    /// Delivers one report; an error means the receiver is gone.
    fn deliver(&self, report: Report) -> impl Future<Output = Result<(), ()>> + Send;
}

impl ReportSink for mpsc::Sender<Report> {
    async fn deliver(&self, report: Report) -> Result<(), ()> {
        self.send(report).await.map_err(|_| ())
    }
}

/// The gate's channels: where reports come from and where what counts
/// goes.
pub struct Inputs<S> {
    /// The AMI session's health.
    pub health: watch::Receiver<Health>,
    /// Reports from AMI.
    pub ami: mpsc::Receiver<Report>,
    /// Reports from the log.
    pub log: mpsc::Receiver<Report>,
    /// Where counted reports go.
    pub sink: S,
    /// Counters, updated after every decision.
    pub stats: watch::Sender<GateStats>,
}

/// Forwards the reports of both inputs that `gate` admits to the sink,
/// until shutdown or until the sink is gone.
///
/// Health changes are applied before any report that follows them, so a
/// report is always judged against the AMI state of its own time.
pub async fn run<S: ReportSink>(mut gate: Gate, inputs: Inputs<S>, shutdown: CancellationToken) {
    let Inputs {
        mut health,
        mut ami,
        mut log,
        sink,
        stats,
    } = inputs;
    gate.set_health(&health.borrow_and_update());
    let (mut ami_open, mut log_open, mut health_open) = (true, true, true);
    loop {
        let report = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                // What the inputs already handed over (the log input has
                // moved its cursor past it) still reaches the engine,
                // which stops only after the gate.
                for report in drain(&mut ami).chain(drain(&mut log)) {
                    if !judge(&mut gate, &sink, &stats, report).await {
                        return;
                    }
                }
                return;
            }
            changed = health.changed(), if health_open => {
                match changed {
                    Ok(()) => gate.set_health(&health.borrow_and_update()),
                    Err(_) => health_open = false,
                }
                continue;
            }
            r = ami.recv(), if ami_open => match r {
                Some(r) => r,
                None => { ami_open = false; continue; }
            },
            r = log.recv(), if log_open => match r {
                Some(r) => r,
                None => { log_open = false; continue; }
            },
            else => return,
        };
        if !judge(&mut gate, &sink, &stats, report).await {
            return;
        }
    }
}

/// The reports already queued in `rx`, without waiting for more.
fn drain(rx: &mut mpsc::Receiver<Report>) -> impl Iterator<Item = Report> + '_ {
    std::iter::from_fn(move || rx.try_recv().ok())
}

/// Passes one report through the gate to the sink; false once the sink is
/// gone.
async fn judge<S: ReportSink>(
    gate: &mut Gate,
    sink: &S,
    stats: &watch::Sender<GateStats>,
    report: Report,
) -> bool {
    let counted = gate.admit(&report);
    stats.send_modify(|s| s.record(report.source(), counted));
    if counted {
        return sink.deliver(report).await.is_ok();
    }
    tracing::trace!(host = %report.host(), source = %report.source(), "not counted: the other input covers this moment");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::{Failure, Service};

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_795_536_000_000 + ms).expect("valid")
    }

    fn failure(source: Source, host: &str, ms: i64) -> Report {
        Report::Failure(Failure {
            host: host.parse().expect("ip"),
            kind: FailureKind::InvalidPassword,
            service: Service::Sip,
            account: None,
            account_matched: false,
            session: None,
            // Log lines only carry whole seconds.
            time: if source == Source::Log {
                ts(ms - ms.rem_euclid(1000))
            } else {
                ts(ms)
            },
            source,
        })
    }

    fn up(ms: i64) -> Health {
        Health::Up {
            since: ts(ms),
            down_since: None,
            logins: 1,
        }
    }

    fn down(ms: i64) -> Health {
        Health::Down {
            since: ts(ms),
            up_since: None,
            reason: "test".into(),
            logins: 0,
        }
    }

    #[test]
    fn single_input_modes_count_only_their_input() {
        let mut g = Gate::new(InputMode::Log, &FailureKind::ALL);
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 0)));
        assert!(!g.admit(&failure(Source::Ami, "192.0.2.1", 0)));
        let mut g = Gate::new(InputMode::Ami, &FailureKind::ALL);
        g.set_health(&down(0));
        assert!(g.admit(&failure(Source::Ami, "192.0.2.1", 10)));
        assert!(!g.admit(&failure(Source::Log, "192.0.2.1", 10)));
    }

    #[test]
    fn auto_counts_the_log_until_ami_first_comes_up() {
        let mut g = Gate::new(InputMode::Auto, &FailureKind::ALL);
        g.set_health(&Health::Connecting);
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 0)));
        g.set_health(&up(5_000));
        assert!(!g.admit(&failure(Source::Log, "192.0.2.1", 10_000)));
        assert!(g.admit(&failure(Source::Ami, "192.0.2.1", 10_000)));
        // A line from before AMI came up, read late, still counts.
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 3_000)));
    }

    #[test]
    fn auto_switches_to_the_log_from_the_moment_ami_went_silent() {
        let mut g = Gate::new(InputMode::Auto, &FailureKind::ALL);
        g.set_health(&up(0));
        // AMI died silently at 20.5 s (last frame); the Ping timeout
        // notices later, but the log covers from 20.5 s on.
        g.set_health(&down(20_500));
        assert!(!g.admit(&failure(Source::Log, "192.0.2.1", 19_000)));
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 21_000)));
        g.set_health(&up(40_200));
        assert!(
            g.admit(&failure(Source::Log, "192.0.2.1", 30_000)),
            "inside the down interval"
        );
        assert!(
            !g.admit(&failure(Source::Log, "192.0.2.1", 41_000)),
            "AMI is back"
        );
    }

    #[test]
    fn an_attempt_in_the_switch_second_is_counted_once() {
        let mut g = Gate::new(InputMode::Auto, &FailureKind::ALL);
        g.set_health(&up(0));
        // Attempt at 10.2 s seen by AMI, which then dies at 10.6 s.
        assert!(g.admit(&failure(Source::Ami, "192.0.2.1", 10_200)));
        g.set_health(&down(10_600));
        // The log line of that attempt (second 10) arrives: already counted.
        assert!(!g.admit(&failure(Source::Log, "192.0.2.1", 10_200)));
        // A second attempt in the same second, only in the log: counts.
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 10_800)));
        // Another host in that second is unaffected.
        assert!(g.admit(&failure(Source::Log, "192.0.2.9", 10_900)));
    }

    #[test]
    fn the_switch_back_second_is_not_counted_twice() {
        let mut g = Gate::new(InputMode::Auto, &FailureKind::ALL);
        g.set_health(&up(0));
        g.set_health(&down(5_000));
        g.set_health(&up(30_400));
        // The log line read first, then AMI reports the same attempt.
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 30_500)));
        assert!(!g.admit(&failure(Source::Ami, "192.0.2.1", 30_500)));
        // Later AMI failures count normally.
        assert!(g.admit(&failure(Source::Ami, "192.0.2.1", 31_000)));
    }

    #[test]
    fn a_missed_down_is_recovered_from_the_next_up() {
        let mut g = Gate::new(InputMode::Auto, &FailureKind::ALL);
        g.set_health(&up(0));
        // The watch channel skipped the Down at 10 s.
        g.set_health(&Health::Up {
            since: ts(30_000),
            down_since: Some(ts(10_000)),
            logins: 2,
        });
        assert!(!g.admit(&failure(Source::Log, "192.0.2.1", 5_000)));
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 20_000)));
        assert!(!g.admit(&failure(Source::Log, "192.0.2.1", 40_000)));
    }

    #[test]
    fn a_missed_up_is_recovered_from_the_next_down() {
        let mut g = Gate::new(InputMode::Auto, &FailureKind::ALL);
        // Down since start; the Up at 10 s was skipped, then AMI died at 50 s.
        g.set_health(&Health::Down {
            since: ts(50_000),
            up_since: Some(ts(10_000)),
            reason: "test".into(),
            logins: 1,
        });
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 5_000)));
        assert!(
            !g.admit(&failure(Source::Log, "192.0.2.1", 20_000)),
            "AMI covered it"
        );
        assert!(g.admit(&failure(Source::Log, "192.0.2.1", 60_000)));
    }

    #[test]
    fn kinds_ami_does_not_report_count_from_the_log() {
        let ami_events = [FailureKind::InvalidPassword, FailureKind::FailedAcl];
        let mut g = Gate::new(InputMode::Auto, &ami_events);
        g.set_health(&up(0));
        let of_kind = |kind| {
            let mut r = failure(Source::Log, "192.0.2.1", 5_000);
            if let Report::Failure(f) = &mut r {
                f.kind = kind;
            }
            r
        };
        assert!(!g.admit(&of_kind(FailureKind::InvalidPassword)));
        // Dial-plan scanning is only in the log; an event left out of
        // ami.events is the log's to count too.
        assert!(g.admit(&of_kind(FailureKind::ExtensionNotFound)));
        assert!(g.admit(&of_kind(FailureKind::InvalidAccountId)));
        // In `ami` mode the log never counts.
        let mut g = Gate::new(InputMode::Ami, &ami_events);
        assert!(!g.admit(&of_kind(FailureKind::ExtensionNotFound)));
    }

    /// The gate task's channels, from the test's side.
    struct Harness {
        health: watch::Sender<Health>,
        ami: mpsc::Sender<Report>,
        log: mpsc::Sender<Report>,
        out: mpsc::Receiver<Report>,
        stats: watch::Receiver<GateStats>,
    }

    fn harness() -> (Harness, Inputs<mpsc::Sender<Report>>) {
        let (health, health_rx) = watch::channel(Health::Connecting);
        let (ami, ami_rx) = mpsc::channel(8);
        let (log, log_rx) = mpsc::channel(8);
        let (out_tx, out) = mpsc::channel(8);
        let (stats_tx, stats) = watch::channel(GateStats::default());
        let inputs = Inputs {
            health: health_rx,
            ami: ami_rx,
            log: log_rx,
            sink: out_tx,
            stats: stats_tx,
        };
        (
            Harness {
                health,
                ami,
                log,
                out,
                stats,
            },
            inputs,
        )
    }

    #[tokio::test]
    async fn reports_queued_at_shutdown_still_reach_the_engine() {
        let (mut h, inputs) = harness();
        let shutdown = CancellationToken::new();
        // Queued, then shut down before the gate ever ran.
        for host in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            h.log
                .send(failure(Source::Log, host, 1_000))
                .await
                .expect("send");
        }
        shutdown.cancel();
        run(
            Gate::new(InputMode::Log, &FailureKind::ALL),
            inputs,
            shutdown,
        )
        .await;
        let mut delivered = Vec::new();
        while let Ok(r) = h.out.try_recv() {
            delivered.push(r.host().to_string());
        }
        assert_eq!(delivered, ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
    }

    #[tokio::test]
    async fn run_forwards_what_counts() {
        let (h, inputs) = harness();
        let Harness {
            health: health_tx,
            ami: ami_tx,
            log: log_tx,
            out: mut out_rx,
            stats: stats_rx,
        } = h;
        let shutdown = CancellationToken::new();
        let gate = Gate::new(InputMode::Auto, &FailureKind::ALL);
        let task = tokio::spawn(run(gate, inputs, shutdown.clone()));

        log_tx
            .send(failure(Source::Log, "192.0.2.1", 1_000))
            .await
            .expect("send");
        assert_eq!(
            out_rx.recv().await.map(|r| r.host()),
            Some("192.0.2.1".parse().expect("ip"))
        );

        health_tx.send(up(2_000)).expect("health");
        // Health is applied before later reports: this line is judged
        // against AMI being up, and dropped.
        log_tx
            .send(failure(Source::Log, "192.0.2.2", 3_000))
            .await
            .expect("send");
        let mut judged = stats_rx.clone();
        judged
            .wait_for(|s| s.log_dropped == 1)
            .await
            .expect("gate running");
        ami_tx
            .send(failure(Source::Ami, "192.0.2.3", 3_000))
            .await
            .expect("send");
        assert_eq!(
            out_rx.recv().await.map(|r| r.host()),
            Some("192.0.2.3".parse().expect("ip"))
        );

        let stats = *stats_rx.borrow();
        assert_eq!(
            (stats.log_counted, stats.log_dropped, stats.ami_counted),
            (1, 1, 1)
        );
        shutdown.cancel();
        task.await.expect("gate task");
    }
}

//! The engine task: a thin loop around the [`Jail`] that owns it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::ignore::{ResolvedIgnore, own_addresses};
use super::jail::{Effects, Jail, Verdict};
use super::journal::{Journal, Record};
use super::state::{self, Saved};
use super::{BanError, BanInfo, EngineEvent, EngineStats};
use crate::config::JailSettings;
use crate::failure::Report;
use crate::firewall::{ActiveBan, Applier, FirewallNews};
use crate::metrics::{BanOrigin, EngineDrop, Metrics};
use crate::units::{format_duration, format_net};

/// Most commands handled before the resulting changes go to the firewall:
/// large enough to batch a burst, small enough to keep latency low.
const MAX_BATCH: usize = 1024;

/// State is saved this long after it changes, so a burst of bans costs one
/// write.
const SAVE_DELAY: Duration = Duration::from_secs(1);

/// How often stale hosts are forgotten and own addresses re-read.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// What an [`super::EngineHandle`] asks of the engine.
#[derive(Debug)]
pub(super) enum Command {
    Report(Report),
    Ban {
        net: IpNet,
        duration: Option<Duration>,
        force: bool,
        reply: oneshot::Sender<Result<BanInfo, BanError>>,
    },
    Unban {
        net: IpNet,
        reply: oneshot::Sender<Option<BanInfo>>,
    },
    Bans {
        reply: oneshot::Sender<Vec<BanInfo>>,
    },
    BansPage {
        after: Option<(Timestamp, IpNet)>,
        limit: usize,
        reply: oneshot::Sender<Vec<BanInfo>>,
    },
    Stats {
        reply: oneshot::Sender<EngineStats>,
    },
    Reconfigure {
        jail: Box<JailSettings>,
        reply: oneshot::Sender<usize>,
    },
    Adopt {
        bans: Vec<ActiveBan>,
        reply: oneshot::Sender<usize>,
    },
    SetNamed {
        named: Vec<ResolvedIgnore>,
        reply: oneshot::Sender<usize>,
    },
    Pull {
        new: Vec<super::PulledBan>,
        deleted: Vec<IpNet>,
        startup: bool,
        reply: oneshot::Sender<super::PullOutcome>,
    },
}

/// Everything the engine task is made of.
pub(super) struct Parts {
    pub(super) jail: Jail,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) events: broadcast::Sender<EngineEvent>,
    pub(super) firewall: Applier,
    pub(super) state_path: PathBuf,
    /// Taken while a commit runs on a blocking thread.
    pub(super) journal: Option<Journal>,
    pub(super) ignore_self: bool,
    pub(super) shutdown: CancellationToken,
    pub(super) metrics: Metrics,
}

pub(super) struct Engine {
    parts: Parts,
    /// When to save next, if state changed since the last save.
    save_at: Option<Instant>,
    /// The save in progress, so that two never write at once.
    saving: Option<JoinHandle<Result<(), String>>>,
    /// Why the last save failed, while saves fail: the state is not
    /// durable, which `astban status` says.
    save_error: Option<String>,
    /// Why the journal could not be written, while it cannot.
    journal_error: Option<String>,
}

/// An answer to send once the batch it belongs to is durable.
type Reply = Box<dyn FnOnce() + Send>;

impl Engine {
    pub(super) fn new(parts: Parts) -> Engine {
        Engine {
            parts,
            save_at: None,
            saving: None,
            save_error: None,
            journal_error: None,
        }
    }

    pub(super) async fn run(mut self) {
        let mut housekeeping =
            tokio::time::interval_at(Instant::now() + HOUSEKEEPING, HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut fx = Effects::default();
            let mut replies: Vec<Reply> = Vec::new();
            let expiry = self.parts.jail.next_expiry().map(deadline);
            let later = Instant::now() + HOUSEKEEPING;
            // Timers first: they are rarely ready, so a flood of reports
            // cannot starve them, and reports are never starved either.
            tokio::select! {
                biased;
                () = self.parts.shutdown.cancelled() => break,
                () = sleep_until(expiry.unwrap_or(later)), if expiry.is_some() => {
                    self.parts.jail.expire(Timestamp::now(), &mut fx);
                }
                () = sleep_until(self.save_at.unwrap_or(later)), if self.save_at.is_some() => {
                    self.save_at = None;
                    self.save_in_background();
                }
                _ = housekeeping.tick() => self.housekeep(&mut fx),
                news = self.parts.firewall.news() => match news {
                    FirewallNews::Refused(net) => self.parts.jail.refused(net, &mut fx),
                    FirewallNews::Died(why) => {
                        tracing::error!("the firewall task failed ({why}); the ban engine stops so that astban is restarted");
                        break;
                    }
                },
                command = self.parts.commands.recv() => {
                    let Some(command) = command else { break };
                    self.handle(command, &mut fx, &mut replies);
                    // Whatever else is already queued joins the same
                    // journal write and firewall transaction.
                    for _ in 1..MAX_BATCH {
                        match self.parts.commands.try_recv() {
                            Ok(command) => self.handle(command, &mut fx, &mut replies),
                            Err(_) => break,
                        }
                    }
                }
            }
            // Durable first: nothing is logged, mailed, answered or sent
            // to the kernel that a crash right now would lose.
            self.commit(std::mem::take(&mut fx.journal)).await;
            self.publish(fx);
            for reply in replies {
                reply();
            }
        }
        self.stop().await;
    }

    fn handle(&mut self, command: Command, fx: &mut Effects, replies: &mut Vec<Reply>) {
        let now = Timestamp::now();
        let jail = &mut self.parts.jail;
        match command {
            Command::Report(report) => {
                let verdict = jail.report(&report, now, fx);
                count(&self.parts.metrics, &report, &verdict);
                trace(report.host(), verdict);
            }
            Command::Ban {
                net,
                duration,
                force,
                reply,
            } => {
                let result = jail.manual_ban(net, duration, force, now, fx);
                replies.push(Box::new(move || {
                    let _ = reply.send(result);
                }));
            }
            Command::Unban { net, reply } => {
                let result = jail.unban(net, fx);
                replies.push(Box::new(move || {
                    let _ = reply.send(result);
                }));
            }
            Command::Bans { reply } => {
                let _ = reply.send(jail.bans());
            }
            Command::BansPage {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(jail.bans_page(after, limit));
            }
            Command::Stats { reply } => {
                let mut stats = jail.stats(self.parts.firewall.status(), now);
                self.collect_save();
                stats.state_error = self
                    .journal_error
                    .clone()
                    .or_else(|| self.save_error.clone());
                let _ = reply.send(stats);
            }
            Command::Adopt { bans, reply } => {
                let result = jail.adopt(&bans, now, fx);
                self.parts.metrics.banned(BanOrigin::Adopted, result as u64);
                replies.push(Box::new(move || {
                    let _ = reply.send(result);
                }));
            }
            Command::Pull {
                new,
                deleted,
                startup,
                reply,
            } => {
                let result = jail.pull(&new, &deleted, startup, now, fx);
                self.parts
                    .metrics
                    .banned(BanOrigin::Fleet, result.added as u64);
                replies.push(Box::new(move || {
                    let _ = reply.send(result);
                }));
            }
            Command::SetNamed { named, reply } => {
                let result = jail.set_named(&named, fx);
                replies.push(Box::new(move || {
                    let _ = reply.send(result);
                }));
            }
            Command::Reconfigure {
                jail: config,
                reply,
            } => {
                let result = jail.reconfigure(&config, fx);
                replies.push(Box::new(move || {
                    let _ = reply.send(result);
                }));
            }
        }
    }

    /// Appends the batch's bans and unbans to the journal and fsyncs it,
    /// off the runtime thread; the engine waits (that is the point), the
    /// inputs and the control socket do not.
    async fn commit(&mut self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let Some(mut journal) = self.parts.journal.take() else {
            self.journal_failed(&std::io::Error::other("no journal is open"));
            return;
        };
        let done = tokio::task::spawn_blocking(move || {
            let result = journal.commit(&records);
            (journal, result)
        })
        .await;
        match done {
            Ok((journal, result)) => {
                self.parts.journal = Some(journal);
                match result {
                    Ok(()) => self.journal_error = None,
                    Err(e) => self.journal_failed(&e),
                }
            }
            Err(e) => self.journal_failed(&std::io::Error::other(e.to_string())),
        }
    }

    fn journal_failed(&mut self, e: &std::io::Error) {
        tracing::error!(
            "cannot write the ban journal in {}: {e}; bans hold in the kernel but a crash now would lose them",
            self.journal_dir().display()
        );
        self.journal_error = Some(format!(
            "cannot write the ban journal in {}: {e}",
            self.journal_dir().display()
        ));
    }

    fn journal_dir(&self) -> PathBuf {
        self.parts
            .state_path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// Sends what the last batch decided: changes to the firewall, events
    /// to subscribers and the log, and schedules a save.
    fn publish(&mut self, fx: Effects) {
        if !fx.changes.is_empty() {
            self.parts.firewall.send_detected(fx.changes, fx.detected);
        }
        let (bans, tracked) = self.parts.jail.sizes();
        self.parts.metrics.engine_sizes(bans, tracked);
        if fx.persist && self.save_at.is_none() {
            self.save_at = Some(Instant::now() + SAVE_DELAY);
        }
        for event in fx.events {
            log(&event);
            match &event {
                EngineEvent::Banned(ban) if ban.manual => {
                    self.parts.metrics.banned(BanOrigin::Manual, 1)
                }
                EngineEvent::Banned(_) => self.parts.metrics.banned(BanOrigin::Automatic, 1),
                EngineEvent::Unbanned { reason, .. } => self.parts.metrics.unbanned(*reason),
                EngineEvent::AccountUnderAttack(_) => self.parts.metrics.account_attack(),
                EngineEvent::Ignored { .. }
                | EngineEvent::AccountAttackOver(_)
                | EngineEvent::KnownSiteFailing(_) => {}
            }
            // Only bans and unbans go to subscribers (mail): the broadcast
            // drops its oldest under load, and a burst of failures from an
            // ignored address must never push a ban out of it.
            if matches!(event, EngineEvent::Ignored { .. }) {
                continue;
            }
            // No subscribers is fine.
            let _ = self.parts.events.send(event);
        }
    }

    fn housekeep(&mut self, fx: &mut Effects) {
        if self.parts.ignore_self {
            match own_addresses() {
                Ok(own) => self.parts.jail.set_own_addresses(own),
                Err(e) => tracing::warn!(
                    "cannot re-read this host's addresses (keeping the last ones): {e}"
                ),
            }
        }
        self.parts.jail.housekeep(Timestamp::now(), fx);
    }

    /// Takes the outcome of a finished background save.
    fn collect_save(&mut self) {
        use futures_util::FutureExt as _;
        if !self.saving.as_ref().is_some_and(JoinHandle::is_finished) {
            return;
        }
        if let Some(done) = self.saving.take().and_then(|s| s.now_or_never()) {
            self.save_error = match done {
                Ok(result) => result.err(),
                Err(e) => Some(format!("the save task failed: {e}")),
            };
        }
    }

    fn save_in_background(&mut self) {
        if self.saving.as_ref().is_some_and(|s| !s.is_finished()) {
            self.save_at = Some(Instant::now() + SAVE_DELAY);
            return;
        }
        self.collect_save();
        // What comes after this snapshot goes to a new journal; once the
        // snapshot is on disk the older ones are not needed.
        let mut snapshot = self.parts.jail.snapshot();
        if let Some(journal) = &mut self.parts.journal {
            if let Err(e) = journal.rotate() {
                self.journal_error = Some(format!("cannot start a new ban journal: {e}"));
            }
            snapshot.journal = journal.generation();
        }
        let path = self.parts.state_path.clone();
        let dir = self.journal_dir();
        self.saving = Some(tokio::task::spawn_blocking(move || {
            save(&path, &snapshot)?;
            Journal::forget_before(&dir, snapshot.journal)
                .map_err(|e| format!("cannot remove old ban journals in {}: {e}", dir.display()))
        }));
    }

    /// Saves state one last time and lets the firewall apply what is
    /// queued.
    async fn stop(self) {
        let Engine { parts, saving, .. } = self;
        // Callers waiting on a full queue learn that the engine is gone.
        drop(parts.commands);
        if let Some(saving) = saving {
            let _ = saving.await;
        }
        let mut snapshot = parts.jail.snapshot();
        if let Some(mut journal) = parts.journal {
            // A journal that cannot rotate keeps its records: the
            // snapshot then says to replay it.
            let _ = journal.rotate();
            snapshot.journal = journal.generation();
        }
        let path = parts.state_path;
        let bans = snapshot.bans.len();
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        match tokio::task::spawn_blocking(move || {
            save(&path, &snapshot)?;
            Journal::forget_before(&dir, snapshot.journal).map_err(|e| e.to_string())
        })
        .await
        {
            Ok(_) => {}
            Err(e) => tracing::error!("saving ban state failed: {e}"),
        }
        parts.firewall.finish().await;
        tracing::info!(bans, "ban engine stopped");
    }
}

/// Saves the state; on failure logs it and returns what to show in status.
fn save(path: &Path, saved: &Saved) -> Result<(), String> {
    state::save(path, saved).map_err(|e| {
        tracing::error!(
            path = %path.display(),
            "cannot save ban state: {e}; bans and history will not survive a restart until this works"
        );
        format!("cannot save {}: {e}", path.display())
    })
}

/// The tokio instant at which the wall-clock time `at` arrives.
fn deadline(at: Timestamp) -> Instant {
    let wait = at.duration_since(Timestamp::now());
    Instant::now() + Duration::try_from(wait).unwrap_or(Duration::ZERO)
}

/// What a failure's verdict adds to the metrics (a success's adds nothing).
fn count(metrics: &Metrics, report: &Report, verdict: &Verdict) {
    let Report::Failure(failure) = report else {
        return;
    };
    let input = failure.source;
    match verdict {
        Verdict::Counted { .. } | Verdict::Banned(_) => {
            metrics.failure_counted(failure.kind, failure.service, input)
        }
        Verdict::Spared { .. } => {
            metrics.failure_counted(failure.kind, failure.service, input);
            metrics.known_site_spared();
        }
        Verdict::Ignored(_) => metrics.failure_dropped(EngineDrop::Ignored, input),
        Verdict::Stale => metrics.failure_dropped(EngineDrop::Stale, input),
        Verdict::NotUnicast => metrics.failure_dropped(EngineDrop::NotUnicast, input),
        Verdict::AlreadyBanned(_) => metrics.failure_dropped(EngineDrop::AlreadyBanned, input),
        Verdict::Reset(_) | Verdict::NotReset(_) | Verdict::Unchanged => {}
    }
}

fn trace(host: IpAddr, verdict: Verdict) {
    match verdict {
        Verdict::Counted { key, count } => tracing::debug!(%host, %key, count, "failure counted"),
        Verdict::Spared { key, count } => tracing::debug!(
            %host,
            %key,
            count,
            "failure counted; not banned yet: a known site failing on one account"
        ),
        Verdict::Stale => tracing::debug!(%host, "failure older than findtime, not counted"),
        Verdict::NotUnicast => {
            tracing::debug!(%host, "failure from a multicast, broadcast or unspecified address, never counted")
        }
        Verdict::AlreadyBanned(by) => tracing::debug!(%host, %by, "failure from a banned network"),
        Verdict::Reset(key) => {
            tracing::debug!(%host, %key, "successful login, failure count reset")
        }
        Verdict::NotReset(key) => tracing::debug!(
            %host,
            %key,
            "successful login, failure count kept: it was reset less than findtime ago"
        ),
        // Logged with their events.
        Verdict::Ignored(_) | Verdict::Banned(_) | Verdict::Unchanged => {}
    }
}

fn log(event: &EngineEvent) {
    match event {
        EngineEvent::Banned(ban) => tracing::info!(
            host = %format_net(ban.net),
            failures = ban.failures,
            offense = ban.offense,
            duration = %format_duration(ban.duration()),
            manual = ban.manual,
            "banned"
        ),
        EngineEvent::Unbanned { net, reason } => {
            tracing::info!(host = %format_net(*net), %reason, "unbanned")
        }
        EngineEvent::Ignored { host, reason } => tracing::debug!(%host, %reason, "failure ignored"),
        EngineEvent::AccountUnderAttack(a) => tracing::warn!(
            account = %a.account,
            failures = a.failures,
            until = %a.until,
            "account under attack: its failures from all hosts passed jail.account_maxretry"
        ),
        EngineEvent::AccountAttackOver(a) => tracing::info!(
            account = %a.account,
            failures = a.failures,
            bans = a.bans,
            "account no longer under attack"
        ),
        EngineEvent::KnownSiteFailing(site) => tracing::warn!(
            host = %format_net(site.net),
            account = %site.account,
            failures = site.failures,
            "account failing from a known site (it logged in with a password recently): not banned before jail.known_host_maxretry"
        ),
    }
}

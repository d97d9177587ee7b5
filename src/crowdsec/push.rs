//! The push task: astban's bans become LAPI alerts, `astban unban`
//! deletes them, through a bounded queue that survives a restart.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::api::Push;
use super::{Backoff, Lapi, Link, scenario_of};
use crate::config::CrowdsecSettings;
use crate::engine::{EngineEvent, UnbanReason};

/// The queue's file in the state dir.
pub const QUEUE_FILE: &str = "crowdsec-queue.json";

/// Most alerts sent in one `POST /v1/alerts`: a flood of bans goes out in
/// a few requests rather than one per ban, and no request grows unbounded.
const MAX_PER_REQUEST: usize = 100;

/// Retry waits while the LAPI is down: soon at first, then every minute.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Something to tell the LAPI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
enum Job {
    Push(Push),
    Delete {
        #[serde(with = "crate::units::host_format")]
        net: IpNet,
        scenario: String,
    },
}

/// What waits for the LAPI, and the scenario of each live pushed ban (to
/// delete exactly astban's decision on unban). Bounded: at `max` jobs the
/// oldest is dropped (and counted), so a LAPI down for days costs at most
/// `max` small records; the kernel still has every ban.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Queue {
    jobs: VecDeque<Job>,
    #[serde(default)]
    pushed: Vec<(String, String, Timestamp)>,
    #[serde(skip)]
    max: usize,
    #[serde(skip)]
    dropped: u64,
}

impl Queue {
    fn add(&mut self, job: Job) {
        while self.jobs.len() >= self.max.max(1) {
            self.jobs.pop_front();
            self.dropped += 1;
        }
        self.jobs.push_back(job);
    }

    /// The scenario astban pushed `net` under, if it did and it is live.
    fn scenario_of(&self, net: IpNet, now: Timestamp) -> Option<String> {
        let value = super::api::value(net);
        self.pushed
            .iter()
            .find(|(v, _, expires)| *v == value && *expires > now)
            .map(|(_, s, _)| s.clone())
    }

    fn sent(&mut self, job: &Job, now: Timestamp) {
        self.pushed.retain(|(_, _, expires)| *expires > now);
        match job {
            Job::Push(p) => {
                let value = super::api::value(p.net);
                self.pushed.retain(|(v, _, _)| *v != value);
                if self.pushed.len() < self.max.max(1) {
                    self.pushed.push((value, p.scenario.clone(), p.expires));
                }
            }
            Job::Delete { net, .. } => {
                let value = super::api::value(*net);
                self.pushed.retain(|(v, _, _)| *v != value);
            }
        }
    }
}

fn load(path: &Path, max: usize) -> Queue {
    let mut queue = match crate::persist::load_json::<Queue>(path) {
        Ok(crate::persist::Loaded::Value(q)) => q,
        Ok(crate::persist::Loaded::Missing) => Queue::default(),
        Ok(crate::persist::Loaded::Corrupt { error, moved_to }) => {
            tracing::warn!(moved_to = %moved_to.display(), "CrowdSec push queue unreadable ({error}); starting empty");
            Queue::default()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read the CrowdSec push queue ({e}); starting empty");
            Queue::default()
        }
    };
    queue.max = max;
    while queue.jobs.len() > max {
        queue.jobs.pop_front();
    }
    queue
}

/// The alert for a ban, if it is one astban pushes.
fn push_of(event: &EngineEvent, settings: &CrowdsecSettings) -> Option<Job> {
    let EngineEvent::Banned(ban) = event else {
        return None;
    };
    if ban.origin.is_some() || (ban.manual && !settings.push_manual) {
        return None;
    }
    let mut message = format!("astban: {} failures", ban.failures);
    let kinds: Vec<&str> = ban.kinds.iter().map(|k| k.as_str()).collect();
    if !kinds.is_empty() {
        message.push_str(&format!(" ({})", kinds.join(", ")));
    }
    if !ban.accounts.is_empty() {
        let accounts: Vec<String> = ban.accounts.iter().map(|a| format!("{a:?}")).collect();
        message.push_str(&format!("; accounts tried: {}", accounts.join(", ")));
    }
    Some(Job::Push(Push {
        net: ban.net,
        expires: ban.expires,
        scenario: format!("{}/{}", settings.scenario_prefix, scenario_of(ban)),
        message,
        failures: ban.failures,
    }))
}

/// Follows `events` until `shutdown`, pushing bans and deleting manually
/// lifted ones. Never waits on the engine: events it falls behind on are
/// lost to it only (the engine keeps going), and said so.
pub async fn run_push(
    settings: CrowdsecSettings,
    mut lapi: Lapi,
    mut events: broadcast::Receiver<EngineEvent>,
    state_dir: PathBuf,
    link: Link,
    shutdown: CancellationToken,
) {
    let path = state_dir.join(QUEUE_FILE);
    let mut queue = load(&path, settings.queue_max);
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut retry_at: Option<tokio::time::Instant> = None;
    // When the queue changed and is not saved yet: saved a moment later,
    // so that a flood of bans costs one write, not one fsync'd rewrite of
    // the whole queue per ban.
    let mut save_at: Option<tokio::time::Instant> = None;
    loop {
        link.update(|s| {
            s.queued = queue.jobs.len();
            s.dropped = queue.dropped;
        });
        if save_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
            save_at = None;
            let (p, snapshot) = (path.clone(), queue.clone());
            let _ = tokio::task::spawn_blocking(move || save(&p, &snapshot)).await;
        }
        let ready =
            !queue.jobs.is_empty() && retry_at.is_none_or(|at| at <= tokio::time::Instant::now());
        if ready {
            let batch: Vec<Job> = queue.jobs.iter().take(MAX_PER_REQUEST).cloned().collect();
            match send(&mut lapi, &batch).await {
                Ok(sent) => {
                    let now = Timestamp::now();
                    let done: Vec<Job> = queue.jobs.drain(..sent).collect();
                    for job in &done {
                        queue.sent(job, now);
                    }
                    link.update(|s| s.last_push = Some(now));
                    link.outcome(Ok(()));
                    backoff.reset();
                    retry_at = None;
                }
                Err((sent, e)) => {
                    let now = Timestamp::now();
                    let done: Vec<Job> = queue.jobs.drain(..sent).collect();
                    for job in &done {
                        queue.sent(job, now);
                    }
                    link.outcome(Err(&e));
                    if e.transient() {
                        retry_at = Some(tokio::time::Instant::now() + backoff.wait());
                    } else {
                        tracing::warn!("dropping a push the LAPI refused: {e}");
                        queue.jobs.pop_front();
                    }
                }
            }
            changed(&mut save_at);
            continue;
        }
        let wait = retry_at.unwrap_or_else(|| tokio::time::Instant::now() + RETRY_MAX);
        let save_due = save_at.unwrap_or(wait);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(wait), if retry_at.is_some() => {}
            () = tokio::time::sleep_until(save_due), if save_at.is_some() => {}
            event = events.recv() => match event {
                Ok(event) => {
                    if let Some(job) = push_of(&event, &settings) {
                        queue.add(job);
                        changed(&mut save_at);
                    } else if let EngineEvent::Unbanned { net, reason: UnbanReason::Manual } = event {
                        if let Some(scenario) = queue.scenario_of(net, Timestamp::now()) {
                            queue.add(Job::Delete { net, scenario });
                            changed(&mut save_at);
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("the CrowdSec push fell {n} events behind the engine; those bans stay local");
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    if save_at.is_some() {
        save(&path, &queue);
    }
}

/// How long a changed queue waits to be saved (a SIGKILL loses at most
/// this much of it; the bans themselves are in the engine's journal).
const SAVE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Notes that the queue changed: a save is due within [`SAVE_DELAY`].
fn changed(save_at: &mut Option<tokio::time::Instant>) {
    save_at.get_or_insert_with(|| tokio::time::Instant::now() + SAVE_DELAY);
}

/// Writes the queue atomically; a failure is logged, and the queue stays
/// in memory.
fn save(path: &std::path::Path, queue: &Queue) {
    if let Err(e) = crate::persist::save_json(path, queue) {
        tracing::warn!(path = %path.display(), "cannot save the CrowdSec push queue: {e}");
    }
}

/// Sends `batch` in order: runs of pushes as one request each, deletions
/// one by one. Returns how many jobs went through, and the error that
/// stopped it.
async fn send(lapi: &mut Lapi, batch: &[Job]) -> Result<usize, (usize, super::LapiError)> {
    let mut done = 0;
    while done < batch.len() {
        match &batch[done] {
            Job::Push(_) => {
                let run: Vec<Push> = batch[done..]
                    .iter()
                    .map_while(|j| match j {
                        Job::Push(p) => Some(p.clone()),
                        Job::Delete { .. } => None,
                    })
                    .collect();
                lapi.push(&run).await.map_err(|e| (done, e))?;
                done += run.len();
            }
            Job::Delete { net, scenario } => {
                lapi.delete(*net, scenario).await.map_err(|e| (done, e))?;
                done += 1;
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(n: u8) -> Job {
        Job::Push(Push {
            net: format!("192.0.2.{n}/32").parse().expect("net"),
            expires: Timestamp::from_second(2_000_000_000).expect("ts"),
            scenario: "astban/sip-bruteforce".into(),
            message: String::new(),
            failures: 5,
        })
    }

    #[test]
    fn the_queue_drops_its_oldest_at_the_bound_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(QUEUE_FILE);
        let mut q = load(&path, 2);
        for n in 1..=3 {
            q.add(push(n));
        }
        assert_eq!(q.dropped, 1);
        assert_eq!(q.jobs, [push(2), push(3)]);
        crate::persist::save_json(&path, &q).expect("save");
        let again = load(&path, 10);
        assert_eq!(again.jobs, [push(2), push(3)]);
    }

    #[test]
    fn an_unban_deletes_only_what_was_pushed_under_its_scenario() {
        let mut q = load(Path::new("/nonexistent/q.json"), 10);
        let now = Timestamp::from_second(1_900_000_000).expect("ts");
        let net: IpNet = "192.0.2.1/32".parse().expect("net");
        assert_eq!(q.scenario_of(net, now), None);
        q.sent(&push(1), now);
        assert_eq!(
            q.scenario_of(net, now).as_deref(),
            Some("astban/sip-bruteforce")
        );
        q.sent(
            &Job::Delete {
                net,
                scenario: "astban/sip-bruteforce".into(),
            },
            now,
        );
        assert_eq!(q.scenario_of(net, now), None);
    }
}

//! Mail notifications: start and stop, and bans, batched into digests
//! under a flood.
//!
//! The mailer is its own task behind a bounded queue. Whoever notifies
//! never waits for it: when the queue is full a notice is counted as missed
//! and the next digest says so. A failing MTA costs a bounded number of
//! retries per mail and is logged; it never stops the daemon.

mod forward;
mod message;
mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use forward::{describe, forward_bans, system_name};
pub use message::{
    AccountNotice, BanNotice, Mail, account_attack_mail, ban_mail, digest_mail, started_mail,
    stopped_mail,
};
pub use transport::{NotifyError, Transport};

#[cfg(doc)]
use crate::config::Config;
use crate::config::MailConfig;

/// Notices queued before new ones are counted as missed.
const QUEUE: usize = 1024;
/// Longest a stop waits for the last mails to go out.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Something worth a mail.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The daemon started; the text describes its setup.
    Started(String),
    /// A host was banned.
    Banned(BanNotice),
    /// An account came under attack.
    AccountUnderAttack(AccountNotice),
    /// The daemon is stopping with this many bans in place.
    Stopped {
        /// Bans that stay in the kernel.
        active_bans: usize,
    },
}

/// The sending side of the mailer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mailer {
    tx: mpsc::Sender<Notice>,
    /// Notices dropped because the queue was full; the next digest says so.
    missed: Arc<AtomicUsize>,
    counts: MailCounts,
}

/// Mails delivered and given up on since start, kept by the mail task for
/// the metrics endpoint. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct MailCounts(Arc<[AtomicU64; 2]>);

impl MailCounts {
    /// (sent, failed after every retry).
    pub fn get(&self) -> (u64, u64) {
        (
            self.0[0].load(Ordering::Relaxed),
            self.0[1].load(Ordering::Relaxed),
        )
    }

    fn record(&self, sent: bool) {
        self.0[usize::from(!sent)].fetch_add(1, Ordering::Relaxed);
    }
}

impl Mailer {
    /// Queues a notice without waiting. Returns false (and the next digest
    /// reports it) when the mailer is too far behind.
    pub fn notify(&self, notice: Notice) -> bool {
        match self.tx.try_send(notice) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if self.missed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("mail queue full; notices are being dropped");
                }
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// How many mails were sent and given up on.
    pub fn counts(&self) -> MailCounts {
        self.counts.clone()
    }

    /// Counts `n` notices that never reached the mailer (its source fell
    /// behind), so that the next digest says so.
    pub fn missed(&self, n: usize) {
        self.missed.fetch_add(n, Ordering::Relaxed);
    }
}

/// Starts the mailer task, with `config` as [`Config::load`] validated it
/// (at least one try per mail, at least one ban per digest). It ends after a `Stopped` notice has been
/// mailed (or given up on), or when every [`Mailer`] is dropped.
pub fn spawn(config: &MailConfig, system: String) -> Result<(Mailer, JoinHandle<()>), NotifyError> {
    let transport = Transport::from_config(config)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let missed = Arc::new(AtomicUsize::new(0));
    let counts = MailCounts::default();
    let task = MailTask {
        missed: Arc::clone(&missed),
        counts: counts.clone(),
        transport,
        system,
        rx,
        batch: Batch::new(config.digest_interval, config.digest_max_bans),
        retries: config.retries,
    };
    Ok((Mailer { tx, missed, counts }, tokio::spawn(task.run())))
}

/// Waits for the mailer to deliver its last mails, at most [`STOP_GRACE`].
pub async fn finish(task: JoinHandle<()>) {
    if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
        tracing::warn!("gave up waiting for the last mails after {STOP_GRACE:?}");
    }
}

struct MailTask {
    transport: Transport,
    system: String,
    rx: mpsc::Receiver<Notice>,
    missed: Arc<AtomicUsize>,
    counts: MailCounts,
    batch: Batch,
    retries: u32,
}

impl MailTask {
    async fn run(mut self) {
        loop {
            let due = self.batch.due();
            let notice = tokio::select! {
                notice = self.rx.recv() => notice,
                _ = sleep_until(due) => {
                    self.flush().await;
                    continue;
                }
            };
            match notice {
                Some(Notice::Started(summary)) => {
                    self.send(started_mail(&self.system, &summary)).await
                }
                Some(Notice::Banned(ban)) => {
                    if let Some(ban) = self.batch.push(ban, Instant::now()) {
                        let mail = ban_mail(&self.system, &ban);
                        self.send(mail).await;
                    }
                }
                Some(Notice::AccountUnderAttack(account)) => {
                    self.send(account_attack_mail(&self.system, &account)).await
                }
                Some(Notice::Stopped { active_bans }) => {
                    self.flush().await;
                    self.send(stopped_mail(&self.system, active_bans)).await;
                    return;
                }
                None => {
                    self.flush().await;
                    return;
                }
            }
        }
    }

    async fn flush(&mut self) {
        if let Some(digest) = self
            .batch
            .take(Instant::now(), self.missed.swap(0, Ordering::Relaxed))
        {
            let mail = match digest.bans.as_slice() {
                [one] if digest.omitted == 0 && digest.missed == 0 => ban_mail(&self.system, one),
                bans => digest_mail(
                    &self.system,
                    bans,
                    digest.omitted,
                    digest.missed,
                    self.batch.interval,
                ),
            };
            self.send(mail).await;
        }
    }

    /// Sends with a bounded number of attempts and a growing pause.
    async fn send(&mut self, mail: Mail) {
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=self.retries {
            match self.transport.send(&mail).await {
                Ok(()) => {
                    tracing::debug!(subject = %mail.subject, "mail sent");
                    self.counts.record(true);
                    return;
                }
                Err(e) if attempt < self.retries => {
                    tracing::warn!(error = %e, attempt, "sending mail failed; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, subject = %mail.subject, "giving up on a mail after {attempt} attempts");
                    self.counts.record(false);
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The digest policy: the first ban after a quiet interval is mailed at
/// once; bans that follow within the interval wait and go out together.
#[derive(Debug)]
struct Batch {
    interval: Duration,
    max: usize,
    pending: Vec<BanNotice>,
    omitted: usize,
    last_sent: Option<Instant>,
}

/// What a flush sends.
#[derive(Debug)]
struct Digest {
    bans: Vec<BanNotice>,
    omitted: usize,
    missed: usize,
}

impl Batch {
    fn new(interval: Duration, max: usize) -> Batch {
        Batch {
            interval,
            max,
            pending: Vec::new(),
            omitted: 0,
            last_sent: None,
        }
    }

    /// Takes a ban; returns it back when it should be mailed right away.
    fn push(&mut self, ban: BanNotice, now: Instant) -> Option<BanNotice> {
        let quiet = self
            .last_sent
            .is_none_or(|t| now.duration_since(t) >= self.interval);
        if quiet && self.pending.is_empty() {
            self.last_sent = Some(now);
            return Some(ban);
        }
        if self.pending.len() < self.max {
            self.pending.push(ban);
        } else {
            self.omitted += 1;
        }
        None
    }

    /// When the pending bans are due.
    fn due(&self) -> Option<Instant> {
        if self.pending.is_empty() && self.omitted == 0 {
            return None;
        }
        Some(
            self.last_sent
                .map_or_else(Instant::now, |t| t + self.interval),
        )
    }

    /// Takes what is pending, with `missed` notices that never reached
    /// the queue.
    fn take(&mut self, now: Instant, missed: usize) -> Option<Digest> {
        if self.pending.is_empty() && self.omitted == 0 && missed == 0 {
            return None;
        }
        self.last_sent = Some(now);
        Some(Digest {
            bans: std::mem::take(&mut self.pending),
            omitted: std::mem::take(&mut self.omitted),
            missed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(i: u32) -> BanNotice {
        BanNotice {
            host: format!("192.0.2.{i}"),
            failures: 5,
            accounts: Vec::new(),
            kinds: vec!["invalid_password".into()],
            duration: Duration::from_secs(60),
            expires: jiff::Timestamp::UNIX_EPOCH,
            offense: 1,
            manual: false,
        }
    }

    #[test]
    fn first_ban_goes_out_at_once_then_a_flood_is_batched() {
        let t0 = Instant::now();
        let mut b = Batch::new(Duration::from_secs(60), 3);
        assert!(b.push(ban(1), t0).is_some(), "quiet: mail at once");
        assert_eq!(b.due(), None);
        for i in 2..=10 {
            assert!(b.push(ban(i), t0 + Duration::from_secs(1)).is_none());
        }
        assert_eq!(b.due(), Some(t0 + Duration::from_secs(60)));
        let d = b.take(t0 + Duration::from_secs(60), 0).expect("digest");
        assert_eq!(d.bans.len(), 3, "bounded by digest_max_bans");
        assert_eq!(d.omitted, 6, "the rest is counted");
        assert!(b.take(t0 + Duration::from_secs(61), 0).is_none());
        // Within the interval after the digest: batched again.
        assert!(b.push(ban(11), t0 + Duration::from_secs(70)).is_none());
        // After a quiet interval: immediate again.
        let mut b = Batch::new(Duration::from_secs(60), 3);
        assert!(b.push(ban(1), t0).is_some());
        assert!(b.push(ban(2), t0 + Duration::from_secs(61)).is_some());
    }
}

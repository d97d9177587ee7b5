//! The task that owns the firewall: it coalesces changes into batches and
//! keeps retrying while the firewall fails.
//!
//! The engine hands changes over without waiting, so an nft run (a few
//! milliseconds, or seconds for a large restore, or forever while nft is
//! missing) never stops it from counting failures. Changes that arrive
//! while a transaction runs are merged per network, latest wins, and go out
//! together in the next one; nothing is dropped while the firewall fails.

use std::collections::HashMap;

use ipnet::IpNet;
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::{ActiveBan, Change, Firewall, FirewallError, FirewallStatus};

/// The engine's side of the applier task.
#[derive(Debug)]
pub(crate) struct Applier {
    changes: mpsc::UnboundedSender<Vec<Change>>,
    status: watch::Receiver<FirewallStatus>,
    task: JoinHandle<()>,
}

impl Applier {
    /// Starts the task: it first reconciles `firewall` with `restored`,
    /// then applies whatever is sent.
    pub(crate) fn spawn<F: Firewall>(firewall: F, restored: Vec<ActiveBan>) -> Applier {
        let (changes, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(FirewallStatus {
            healthy: false,
            pending: restored.len(),
            last_error: None,
        });
        let worker = Worker {
            firewall,
            rx,
            status: status_tx,
            restored,
            synced: false,
            pending: HashMap::new(),
            last_error: None,
        };
        Applier {
            changes,
            status,
            task: tokio::spawn(worker.run()),
        }
    }

    /// Queues `changes`; they reach the kernel with the next transaction.
    pub(crate) fn send(&self, changes: Vec<Change>) {
        if self.changes.send(changes).is_err() {
            tracing::error!("firewall task has stopped; bans are no longer applied");
        }
    }

    /// The firewall's state after its last attempt.
    pub(crate) fn status(&self) -> FirewallStatus {
        self.status.borrow().clone()
    }

    /// Lets the task make one last attempt with what is queued, and waits
    /// for it to end.
    pub(crate) async fn finish(self) {
        drop(self.changes);
        if let Err(e) = self.task.await {
            tracing::error!("firewall task failed: {e}");
        }
    }
}

struct Worker<F> {
    firewall: F,
    rx: mpsc::UnboundedReceiver<Vec<Change>>,
    status: watch::Sender<FirewallStatus>,
    /// Bans to reconcile with, until the first reconcile succeeds.
    restored: Vec<ActiveBan>,
    /// The table and its rules are known to be in place.
    synced: bool,
    /// Changes not yet in the kernel, one per network.
    pending: HashMap<IpNet, Change>,
    last_error: Option<String>,
}

impl<F: Firewall> Worker<F> {
    async fn run(mut self) {
        let retry = self.firewall.retry_interval();
        let mut retry_at: Option<Instant> = None;
        loop {
            if retry_at.is_none() && self.has_work() && !self.attempt().await {
                retry_at = Some(Instant::now() + retry);
            }
            tokio::select! {
                batch = self.rx.recv() => match batch {
                    Some(batch) => {
                        self.merge(batch);
                        while let Ok(batch) = self.rx.try_recv() {
                            self.merge(batch);
                        }
                        self.publish();
                    }
                    None => break,
                },
                () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    retry_at = None;
                }
            }
        }
        // The engine has stopped: one last try, so its final decisions
        // reach the kernel.
        if self.has_work() {
            self.attempt().await;
        }
    }

    fn has_work(&self) -> bool {
        !self.synced || !self.pending.is_empty()
    }

    fn merge(&mut self, batch: Vec<Change>) {
        for change in batch {
            let net = change.net();
            let merged = match self.pending.remove(&net) {
                Some(earlier) => earlier.then(change),
                None => change,
            };
            self.pending.insert(net, merged);
        }
    }

    /// One try at bringing the kernel up to date; `false` if it failed.
    async fn attempt(&mut self) -> bool {
        let now = Timestamp::now();
        if !self.synced {
            if let Err(e) = self.firewall.reconcile(&self.restored, now).await {
                return self.failed(e);
            }
            self.synced = true;
            self.restored = Vec::new();
        }
        let mut changes: Vec<Change> = self.pending.values().cloned().collect();
        changes.sort_by_key(Change::net);
        if !changes.is_empty()
            && let Err(e) = self.firewall.apply(&changes, now).await
        {
            // Rebuild the table on the next try, in case it was deleted.
            self.synced = false;
            return self.failed(e);
        }
        self.pending.clear();
        if self.last_error.take().is_some() {
            tracing::info!(applied = changes.len(), "firewall recovered");
        }
        self.publish();
        true
    }

    fn failed(&mut self, error: FirewallError) -> bool {
        let message = error.to_string();
        let retry = humantime::format_duration(self.firewall.retry_interval());
        if self.last_error.as_deref() == Some(message.as_str()) {
            tracing::debug!(
                pending = self.pending.len(),
                "firewall still failing: {message}"
            );
        } else {
            tracing::error!(
                pending = self.pending.len(),
                "firewall: {message}; retrying every {retry}"
            );
        }
        self.last_error = Some(message);
        self.publish();
        false
    }

    fn publish(&self) {
        self.status.send_replace(FirewallStatus {
            healthy: self.synced && self.last_error.is_none(),
            pending: self.pending.len() + self.restored.len(),
            last_error: self.last_error.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Records every call; fails while `failing` is set.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<String>>>,
        failing: Arc<Mutex<bool>>,
    }

    impl Recorder {
        fn result(&self, call: String) -> Result<(), FirewallError> {
            self.calls.lock().expect("lock").push(call);
            if *self.failing.lock().expect("lock") {
                Err(FirewallError::NotInstalled {
                    program: "nft".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    impl Firewall for Recorder {
        async fn reconcile(
            &mut self,
            bans: &[ActiveBan],
            _now: Timestamp,
        ) -> Result<(), FirewallError> {
            self.result(format!("reconcile {}", bans.len()))
        }

        async fn apply(
            &mut self,
            changes: &[Change],
            _now: Timestamp,
        ) -> Result<(), FirewallError> {
            let nets: Vec<String> = changes.iter().map(Change::to_string).collect();
            self.result(format!("apply {}", nets.join(" ")))
        }

        fn retry_interval(&self) -> Duration {
            Duration::from_millis(10)
        }
    }

    fn ban(net: &str) -> Change {
        Change::Ban {
            net: net.parse().expect("net"),
            expires: Timestamp::now() + jiff::SignedDuration::from_secs(60),
        }
    }

    async fn wait_for(applier: &Applier, what: impl Fn(&FirewallStatus) -> bool) -> FirewallStatus {
        let mut status = applier.status.clone();
        tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| what(s)))
            .await
            .expect("status in time")
            .expect("task alive")
            .clone()
    }

    #[tokio::test]
    async fn failures_keep_changes_and_retry_until_they_succeed() {
        let fw = Recorder::default();
        *fw.failing.lock().expect("lock") = true;
        let applier = Applier::spawn(fw.clone(), Vec::new());
        applier.send(vec![ban("192.0.2.1/32")]);
        applier.send(vec![ban("192.0.2.2/32")]);
        let status = wait_for(&applier, |s| s.last_error.is_some() && s.pending == 2).await;
        assert!(!status.healthy);
        assert!(
            status
                .last_error
                .expect("error")
                .contains("install nftables")
        );

        *fw.failing.lock().expect("lock") = false;
        let status = wait_for(&applier, |s| s.healthy).await;
        assert_eq!(status.pending, 0);
        applier.finish().await;
        let calls = fw.calls.lock().expect("lock");
        assert_eq!(
            calls.last().map(String::as_str),
            Some("apply +192.0.2.1/32 +192.0.2.2/32")
        );
        assert!(calls.iter().filter(|c| c.starts_with("reconcile")).count() >= 2);
    }

    #[tokio::test]
    async fn the_latest_change_of_a_network_wins() {
        let fw = Recorder::default();
        *fw.failing.lock().expect("lock") = true;
        let applier = Applier::spawn(fw.clone(), vec![]);
        applier.send(vec![ban("192.0.2.1/32")]);
        applier.send(vec![Change::Unban {
            net: "192.0.2.1/32".parse().expect("net"),
        }]);
        wait_for(&applier, |s| s.last_error.is_some() && s.pending == 1).await;
        *fw.failing.lock().expect("lock") = false;
        wait_for(&applier, |s| s.healthy).await;
        applier.finish().await;
        assert_eq!(
            fw.calls.lock().expect("lock").last().map(String::as_str),
            Some("apply -192.0.2.1/32")
        );
    }

    #[tokio::test]
    async fn finishing_flushes_what_is_queued() {
        let fw = Recorder::default();
        let applier = Applier::spawn(fw.clone(), Vec::new());
        applier.send(vec![ban("192.0.2.9/32")]);
        applier.finish().await;
        let calls = fw.calls.lock().expect("lock");
        assert_eq!(calls.first().map(String::as_str), Some("reconcile 0"));
        assert_eq!(
            calls.last().map(String::as_str),
            Some("apply +192.0.2.9/32")
        );
    }
}

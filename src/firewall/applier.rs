//! The task that owns the firewall: it coalesces changes into batches,
//! keeps retrying while the firewall fails, and keeps the kernel in line
//! with what it was told.
//!
//! The engine hands changes over without waiting, so an nft run (a few
//! milliseconds, or seconds for a large restore, or forever while nft is
//! missing) never stops it from counting failures. Changes that arrive
//! while a transaction runs are merged per network, latest wins, and go out
//! together in the next one; nothing is dropped while the firewall fails.
//! A change nft itself refuses is dropped, alone, so that it cannot hold
//! back the others.
//!
//! The task also keeps a mirror of what should be in the kernel (every ban
//! it was given and not since told to lift). Whenever the table has to be
//! rebuilt, after a failure or because a periodic check found it (or some
//! bans) gone, the mirror is what goes back in.

use std::collections::HashMap;

use ipnet::IpNet;
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::{ActiveBan, Change, Firewall, FirewallError, FirewallStatus};
use crate::metrics::Metrics;

/// Changes handed over together, with when the failure behind each
/// automatic ban among them was detected.
type Batch = (Vec<Change>, Vec<(IpNet, Timestamp)>);

/// Longest a stop waits for the firewall's last transaction.
pub(crate) const FINISH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the applier tells the engine.
#[derive(Debug)]
pub(crate) enum FirewallNews {
    /// nft refused to add this ban: the engine takes it back.
    Refused(IpNet),
    /// The worker task is gone, and why.
    Died(String),
}

/// The engine's side of the applier task.
#[derive(Debug)]
pub(crate) struct Applier {
    changes: mpsc::UnboundedSender<Batch>,
    status: watch::Receiver<FirewallStatus>,
    /// The worker; `None` once it has been seen to end.
    task: Option<JoinHandle<()>>,
    /// Bans nft refused (dropped from the kernel's view): the engine takes
    /// them back, so that `astban bans` never lists what is not enforced.
    refused: mpsc::UnboundedReceiver<IpNet>,
}

impl Applier {
    /// Starts the task: it first reconciles `firewall` with `restored`,
    /// then applies whatever is sent, counting into `metrics`.
    pub(crate) fn spawn<F: Firewall>(
        firewall: F,
        restored: Vec<ActiveBan>,
        metrics: Metrics,
    ) -> Applier {
        let (changes, rx) = mpsc::unbounded_channel();
        let (refused_tx, refused) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(FirewallStatus {
            healthy: false,
            pending: restored.len(),
            last_error: None,
            refused: 0,
            last_refused: None,
        });
        let worker = Worker {
            firewall,
            rx,
            status: status_tx,
            mirror: restored
                .into_iter()
                .map(|b| (b.net, (b.expires, b.fleet)))
                .collect(),
            synced: false,
            pending: HashMap::new(),
            last_error: None,
            refused: refused_tx,
            refused_count: 0,
            last_refused: None,
            detected: HashMap::new(),
            metrics,
        };
        Applier {
            changes,
            status,
            task: Some(tokio::spawn(worker.run())),
            refused,
        }
    }

    /// What the worker has to tell the engine: a ban nft refused, or its
    /// own death (only a panic ends it while the engine still feeds it; the
    /// engine then stops too, so that astban is restarted rather than run on
    /// with bans that reach no kernel).
    pub(crate) async fn news(&mut self) -> FirewallNews {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            Some(net) = self.refused.recv() => FirewallNews::Refused(net),
            ended = task => {
                self.task = None;
                FirewallNews::Died(match ended {
                    Err(e) => e.to_string(),
                    Ok(()) => "it ended".into(),
                })
            }
        }
    }

    /// Queues `changes`; they reach the kernel with the next transaction.
    pub(crate) fn send(&self, changes: Vec<Change>) {
        self.send_detected(changes, Vec::new());
    }

    /// Queues `changes`, with when the failure behind each automatic ban
    /// among them was detected: the time to the kernel is measured from
    /// there.
    pub(crate) fn send_detected(&self, changes: Vec<Change>, detected: Vec<(IpNet, Timestamp)>) {
        if self.changes.send((changes, detected)).is_err() {
            tracing::error!("firewall task has stopped; bans are no longer applied");
        }
    }

    /// The firewall's state after its last attempt.
    pub(crate) fn status(&self) -> FirewallStatus {
        self.status.borrow().clone()
    }

    /// Lets the task make one last attempt with what is queued, and waits
    /// for it to end, at most [`FINISH_DEADLINE`]: a hung `nft` must not
    /// hold up a stop (the kernel keeps the bans it has, each with its
    /// timeout, and the journal has the rest for the next start).
    pub(crate) async fn finish(self) {
        drop(self.changes);
        let Some(mut task) = self.task else { return };
        match tokio::time::timeout(FINISH_DEADLINE, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("firewall task failed: {e}"),
            Err(_) => {
                task.abort();
                tracing::warn!(
                    "the firewall did not finish within {}s of the stop; the kernel keeps what it has, the rest is applied at the next start",
                    FINISH_DEADLINE.as_secs()
                );
            }
        }
    }
}

struct Worker<F> {
    firewall: F,
    rx: mpsc::UnboundedReceiver<Batch>,
    status: watch::Sender<FirewallStatus>,
    /// The bans that should be in the kernel, and when each ends: every
    /// change given is folded in, so a rebuilt table gets all of them.
    mirror: HashMap<IpNet, (Timestamp, bool)>,
    /// The table and its rules are known to be in place.
    synced: bool,
    /// Changes not yet in the kernel, one per network.
    pending: HashMap<IpNet, Change>,
    last_error: Option<String>,
    /// Where refused bans are told.
    refused: mpsc::UnboundedSender<IpNet>,
    refused_count: u64,
    last_refused: Option<String>,
    /// When the failure behind each pending automatic ban was detected;
    /// one entry per pending ban at most.
    detected: HashMap<IpNet, Timestamp>,
    metrics: Metrics,
}

impl<F: Firewall> Worker<F> {
    async fn run(mut self) {
        let retry = self.firewall.retry_interval();
        let every = self.firewall.check_interval();
        let next_check = || (!every.is_zero()).then(|| Instant::now() + every);
        let mut check_at = next_check();
        let mut retry_at: Option<Instant> = None;
        loop {
            if retry_at.is_none() && self.has_work() && !self.attempt().await {
                retry_at = Some(Instant::now() + retry);
            }
            let idle = !self.has_work();
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
                // While there is work, attempts find out soon enough.
                () = sleep_until(check_at.unwrap_or_else(Instant::now)), if idle && check_at.is_some() => {
                    check_at = next_check();
                    self.check().await;
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

    fn merge(&mut self, (changes, detected): Batch) {
        for change in changes {
            let net = change.net();
            match change {
                Change::Ban { expires, fleet, .. } | Change::Replace { expires, fleet, .. } => {
                    self.mirror.insert(net, (expires, fleet));
                }
                Change::Unban { .. } => {
                    self.mirror.remove(&net);
                    self.detected.remove(&net);
                }
            }
            let merged = match self.pending.remove(&net) {
                Some(earlier) => earlier.then(change),
                None => change,
            };
            self.pending.insert(net, merged);
        }
        for (net, at) in detected {
            if self.pending.contains_key(&net) {
                self.detected.entry(net).or_insert(at);
            }
        }
    }

    /// Asks the firewall whether the kernel still holds what it should;
    /// if not, the next attempt rebuilds it.
    async fn check(&mut self) {
        let now = Timestamp::now();
        let bans = self.wanted(now);
        match self.firewall.verify(&bans, now).await {
            Ok(()) => {}
            Err(e @ FirewallError::Missing(_)) => {
                tracing::warn!("firewall: {e}");
                self.synced = false;
            }
            Err(e) => {
                self.synced = false;
                self.failed(e);
            }
        }
    }

    /// One try at bringing the kernel up to date; `false` if it failed.
    async fn attempt(&mut self) -> bool {
        let now = Timestamp::now();
        let resynced = !self.synced;
        if resynced && let Err(e) = self.resync(now).await {
            return self.failed(e);
        }
        // Refusals from here on are of these changes (the rare ban of an
        // earlier batch refused by a rebuild inside `apply` aside).
        let refused_before = self.refused_count;
        let mut changes: Vec<Change> = self.pending.values().cloned().collect();
        changes.sort_by_key(apply_order);
        let count = changes.len();
        if let Err(e) = self.apply(changes, resynced, now).await {
            // Rebuild the table on the next try, in case it was deleted.
            self.synced = false;
            return self.failed(e);
        }
        self.pending.clear();
        let refused = usize::try_from(self.refused_count - refused_before).unwrap_or(count);
        self.metrics.changes_applied(count.saturating_sub(refused));
        self.measure_latency();
        // A flood's batch must not keep its table for good.
        if self.pending.capacity() > 4096 {
            self.pending.shrink_to(1024);
        }
        if self.last_error.take().is_some() {
            tracing::info!(applied = count, "firewall recovered");
        }
        self.publish();
        true
    }

    /// Applies `changes`. When nft rejects them, the changes it refuses on
    /// their own are found and dropped, and the others applied.
    async fn apply(
        &mut self,
        changes: Vec<Change>,
        resynced: bool,
        now: Timestamp,
    ) -> Result<(), FirewallError> {
        if changes.is_empty() {
            return Ok(());
        }
        match self.firewall.apply(&changes, now).await {
            Err(FirewallError::Rejected { .. }) => {}
            done => return done,
        }
        // nft rejects every change while the table is gone: rebuild it
        // before blaming a change.
        let mut changes = changes;
        if !resynced {
            self.resync(now).await?;
            // A ban the rebuild found refused is dropped already.
            changes.retain(|c| self.pending.contains_key(&c.net()));
        }
        let refused = self.bisect(changes, !resynced, now).await?;
        self.drop_refused(refused);
        Ok(())
    }

    /// (Re)creates the table and puts every ban of the mirror in it.
    async fn resync(&mut self, now: Timestamp) -> Result<(), FirewallError> {
        let bans = self.wanted(now);
        match self.firewall.reconcile(&bans, now).await {
            Ok(()) => {}
            Err(FirewallError::Rejected { .. }) if !bans.is_empty() => {
                // A ban nft refuses must not keep the others out: the
                // table on its own, then the bans in parts.
                self.firewall.reconcile(&[], now).await?;
                let bans = bans
                    .iter()
                    .map(|b| Change::Ban {
                        net: b.net,
                        expires: b.expires,
                        fleet: b.fleet,
                    })
                    .collect();
                let refused = self.bisect(bans, false, now).await?;
                self.drop_refused(refused);
            }
            Err(e) => return Err(e),
        }
        self.synced = true;
        Ok(())
    }

    /// Applies `changes`, splitting in halves whatever nft rejects (`whole`
    /// tries them all at once first), down to the single changes it
    /// refuses; those are returned with nft's reason, all others are
    /// applied. Any other error stops it: applying again is harmless.
    async fn bisect(
        &mut self,
        changes: Vec<Change>,
        whole: bool,
        now: Timestamp,
    ) -> Result<Vec<(Change, String)>, FirewallError> {
        let mut refused = Vec::new();
        let mut todo: Vec<Vec<Change>> = match whole || changes.len() < 2 {
            true => vec![changes],
            false => halves(changes).into(),
        };
        while let Some(part) = todo.pop() {
            match self.firewall.apply(&part, now).await {
                Ok(()) => {}
                Err(FirewallError::Rejected { stderr, .. }) => {
                    match <[Change; 1]>::try_from(part) {
                        Ok([change]) => refused.push((change, stderr)),
                        Err(part) => todo.extend(halves(part)),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(refused)
    }

    fn drop_refused(&mut self, refused: Vec<(Change, String)>) {
        for (change, reason) in refused {
            let net = change.net();
            self.mirror.remove(&net);
            // Found by a rebuild, it is pending too: not tried again.
            self.pending.remove(&net);
            self.detected.remove(&net);
            let what = match change {
                Change::Ban { .. } | Change::Replace { .. } => "ban",
                Change::Unban { .. } => "unban",
            };
            tracing::error!(
                host = %net,
                "nft refused the {what} of {net}, which is dropped (the other changes were applied): {reason}"
            );
            self.refused_count += 1;
            self.metrics.change_refused();
            self.last_refused = Some(format!("the {what} of {net}: {reason}"));
            if what == "ban" {
                let _ = self.refused.send(net);
            }
        }
    }

    /// Observes, for each automatic ban just enforced, the time from the
    /// detection of its failure until now (refused ones left the mirror).
    fn measure_latency(&mut self) {
        let now = Timestamp::now();
        for (net, at) in self.detected.drain() {
            if self.mirror.contains_key(&net) {
                let took = now.duration_since(at).as_secs_f64().max(0.0);
                self.metrics.ban_latency(took);
            }
        }
        if self.detected.capacity() > 4096 {
            self.detected.shrink_to(1024);
        }
    }

    /// The mirror's bans that have not ended by `now`.
    fn wanted(&mut self, now: Timestamp) -> Vec<ActiveBan> {
        self.mirror.retain(|_, (expires, _)| *expires > now);
        let mut bans: Vec<ActiveBan> = self
            .mirror
            .iter()
            .map(|(&net, &(expires, fleet))| ActiveBan {
                net,
                expires,
                fleet,
            })
            .collect();
        bans.sort_by_key(|b| b.net);
        bans
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

    /// Changes waiting for the kernel: the queued ones, and while the table
    /// needs rebuilding every ban of the mirror (queued bans are among
    /// them, queued unbans are not).
    fn waiting(&self) -> usize {
        if self.synced {
            return self.pending.len();
        }
        let unbans = self
            .pending
            .keys()
            .filter(|net| !self.mirror.contains_key(net))
            .count();
        self.mirror.len() + unbans
    }

    fn publish(&self) {
        let (healthy, pending) = (self.synced && self.last_error.is_none(), self.waiting());
        self.metrics.firewall_state(pending, healthy);
        self.status.send_replace(FirewallStatus {
            healthy,
            pending,
            last_error: self.last_error.clone(),
            refused: self.refused_count,
            last_refused: self.last_refused.clone(),
        });
    }
}

/// Removals before additions, so that split parts of a batch never add an
/// element that overlaps one the same batch removes.
fn apply_order(change: &Change) -> (u8, IpNet) {
    let rank = match change {
        Change::Unban { .. } => 0,
        Change::Replace { .. } => 1,
        Change::Ban { .. } => 2,
    };
    (rank, change.net())
}

/// `changes` cut in two, the first half on top of a stack.
fn halves(mut changes: Vec<Change>) -> [Vec<Change>; 2] {
    let second = changes.split_off(changes.len() / 2);
    [second, changes]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::Duration;

    use super::*;

    /// A kernel in memory: whether astban's table exists and what its sets
    /// hold. Records every call; every call fails while `failing` is set,
    /// and nft-like rejections come from a missing table or `refuse`.
    #[derive(Clone, Default)]
    struct FakeKernel {
        state: Arc<Mutex<Kernel>>,
        check_every: Duration,
    }

    #[derive(Default)]
    struct Kernel {
        calls: Vec<String>,
        failing: bool,
        table: bool,
        elements: BTreeSet<IpNet>,
        /// A network nft refuses to add or remove.
        refuse: Option<IpNet>,
        /// The next apply panics, as a bug in a backend would.
        panics: bool,
    }

    impl FakeKernel {
        fn checking(every: Duration) -> FakeKernel {
            FakeKernel {
                check_every: every,
                ..FakeKernel::default()
            }
        }

        fn state(&self) -> MutexGuard<'_, Kernel> {
            self.state.lock().expect("lock")
        }

        fn calls(&self) -> Vec<String> {
            self.state().calls.clone()
        }

        fn elements(&self) -> Vec<String> {
            self.state().elements.iter().map(IpNet::to_string).collect()
        }

        /// `nft flush ruleset`.
        fn flush(&self) {
            let mut state = self.state();
            state.table = false;
            state.elements.clear();
        }
    }

    impl Kernel {
        fn call(&mut self, call: String, nets: &[IpNet]) -> Result<(), FirewallError> {
            self.calls.push(call);
            if self.failing {
                return Err(FirewallError::NotInstalled {
                    program: "nft".into(),
                });
            }
            let stderr = if !self.table {
                "Error: Could not process rule: No such file or directory"
            } else if nets.iter().any(|n| Some(*n) == self.refuse) {
                "Error: interval overlaps with an existing one"
            } else {
                return Ok(());
            };
            Err(FirewallError::Rejected {
                status: std::process::ExitStatus::from_raw(256),
                stderr: stderr.into(),
            })
        }
    }

    impl Firewall for FakeKernel {
        async fn reconcile(
            &mut self,
            bans: &[ActiveBan],
            _now: Timestamp,
        ) -> Result<(), FirewallError> {
            let nets: Vec<IpNet> = bans.iter().map(|b| b.net).collect();
            let mut state = self.state();
            let call = format!("reconcile {}", join(&nets));
            if !state.failing {
                state.table = true;
            }
            state.call(call, &nets)?;
            state.elements.extend(nets);
            Ok(())
        }

        async fn apply(
            &mut self,
            changes: &[Change],
            _now: Timestamp,
        ) -> Result<(), FirewallError> {
            let panics = self.state().panics;
            assert!(!panics, "a backend bug");
            let nets: Vec<IpNet> = changes.iter().map(Change::net).collect();
            let shown: Vec<String> = changes.iter().map(Change::to_string).collect();
            let mut state = self.state();
            state.call(format!("apply {}", shown.join(" ")), &nets)?;
            for change in changes {
                match change {
                    Change::Ban { net, .. } | Change::Replace { net, .. } => {
                        state.elements.insert(*net)
                    }
                    Change::Unban { net } => state.elements.remove(net),
                };
            }
            Ok(())
        }

        async fn verify(
            &mut self,
            bans: &[ActiveBan],
            _now: Timestamp,
        ) -> Result<(), FirewallError> {
            let mut state = self.state();
            state.calls.push("verify".into());
            if !state.table {
                return Err(FirewallError::Missing("the table is gone".into()));
            }
            match bans.iter().find(|b| !state.elements.contains(&b.net)) {
                Some(ban) => Err(FirewallError::Missing(format!("{} is gone", ban.net))),
                None => Ok(()),
            }
        }

        async fn existing(&mut self, _now: Timestamp) -> Result<Vec<ActiveBan>, FirewallError> {
            Ok(Vec::new())
        }

        fn retry_interval(&self) -> Duration {
            Duration::from_millis(10)
        }

        fn check_interval(&self) -> Duration {
            self.check_every
        }
    }

    fn join(nets: &[IpNet]) -> String {
        let nets: Vec<String> = nets.iter().map(IpNet::to_string).collect();
        format!("[{}]", nets.join(" "))
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn in_a_minute() -> Timestamp {
        Timestamp::now() + jiff::SignedDuration::from_secs(60)
    }

    fn ban(s: &str) -> Change {
        Change::Ban {
            net: net(s),
            expires: in_a_minute(),
            fleet: false,
        }
    }

    fn restored(s: &str) -> ActiveBan {
        ActiveBan {
            net: net(s),
            expires: in_a_minute(),
            fleet: false,
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

    /// Waits until the fake kernel holds exactly `expected`, re-checking
    /// whenever the applier publishes its status (after every attempt).
    async fn wait_for_kernel(applier: &Applier, fw: &FakeKernel, expected: &[&str]) {
        let mut status = applier.status.clone();
        let reached = tokio::time::timeout(
            Duration::from_secs(5),
            status.wait_for(|s| s.healthy && fw.elements() == expected),
        )
        .await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "kernel holds {:?}, not {expected:?}; calls: {:?}",
            fw.elements(),
            fw.calls()
        );
    }

    #[tokio::test]
    async fn failures_keep_changes_and_retry_until_they_succeed() {
        let fw = FakeKernel::default();
        fw.state().failing = true;
        let applier = Applier::spawn(fw.clone(), Vec::new(), Metrics::default());
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

        fw.state().failing = false;
        let status = wait_for(&applier, |s| s.healthy).await;
        assert_eq!(status.pending, 0);
        applier.finish().await;
        let calls = fw.calls();
        assert_eq!(
            calls.last().map(String::as_str),
            Some("apply +192.0.2.1/32 +192.0.2.2/32")
        );
        assert!(calls.iter().filter(|c| c.starts_with("reconcile")).count() >= 2);
    }

    #[tokio::test]
    async fn applied_refused_and_the_latency_from_detection_are_counted() {
        let fw = FakeKernel::default();
        fw.state().failing = true;
        fw.state().refuse = Some(net("192.0.2.9/32"));
        let metrics = Metrics::default();
        let applier = Applier::spawn(fw.clone(), Vec::new(), metrics.clone());
        let detected = Timestamp::now() - jiff::SignedDuration::from_secs(2);
        applier.send_detected(
            vec![ban("192.0.2.1/32"), ban("192.0.2.9/32")],
            vec![
                (net("192.0.2.1/32"), detected),
                (net("192.0.2.9/32"), detected),
            ],
        );
        applier.send(vec![ban("198.51.100.0/24")]);
        wait_for(&applier, |s| s.last_error.is_some() && s.pending == 3).await;
        let sample = |series| crate::metrics::sample(&metrics, series);
        assert_eq!(sample("astban_firewall_changes_pending"), Some(3.0));
        assert_eq!(sample("astban_ban_latency_seconds_count"), Some(0.0));

        fw.state().failing = false;
        wait_for(&applier, |s| s.healthy && s.refused == 1).await;
        applier.finish().await;
        assert_eq!(sample("astban_firewall_changes_applied_total"), Some(2.0));
        assert_eq!(sample("astban_firewall_changes_refused_total"), Some(1.0));
        assert_eq!(sample("astban_firewall_changes_pending"), Some(0.0));
        assert_eq!(sample("astban_firewall_healthy"), Some(1.0));
        // One automatic ban enforced (the manual one has no detection, the
        // refused one was never enforced), after the failing attempts.
        assert_eq!(sample("astban_ban_latency_seconds_count"), Some(1.0));
        let took = sample("astban_ban_latency_seconds_sum").expect("sum");
        assert!((2.0..60.0).contains(&took), "{took}");
    }

    #[tokio::test]
    async fn the_latest_change_of_a_network_wins() {
        let fw = FakeKernel::default();
        fw.state().failing = true;
        let applier = Applier::spawn(fw.clone(), vec![], Metrics::default());
        applier.send(vec![ban("192.0.2.1/32")]);
        applier.send(vec![Change::Unban {
            net: net("192.0.2.1/32"),
        }]);
        wait_for(&applier, |s| s.last_error.is_some() && s.pending == 1).await;
        fw.state().failing = false;
        wait_for(&applier, |s| s.healthy).await;
        applier.finish().await;
        assert_eq!(
            fw.calls().last().map(String::as_str),
            Some("apply -192.0.2.1/32")
        );
    }

    #[tokio::test]
    async fn a_worker_that_dies_is_told_to_the_engine() {
        let fw = FakeKernel::default();
        let mut applier = Applier::spawn(fw.clone(), vec![], Metrics::default());
        wait_for(&applier, |s| s.healthy).await;
        fw.state().panics = true;
        applier.send(vec![ban("192.0.2.1/32")]);
        let news = tokio::time::timeout(Duration::from_secs(5), applier.news())
            .await
            .expect("told");
        assert!(
            matches!(&news, FirewallNews::Died(why) if why.contains("panic")),
            "{news:?}"
        );
        // Finishing a dead worker returns at once.
        applier.finish().await;
    }

    #[tokio::test]
    async fn finishing_flushes_what_is_queued() {
        let fw = FakeKernel::default();
        let applier = Applier::spawn(fw.clone(), Vec::new(), Metrics::default());
        applier.send(vec![ban("192.0.2.9/32")]);
        applier.finish().await;
        let calls = fw.calls();
        assert_eq!(calls.first().map(String::as_str), Some("reconcile []"));
        assert_eq!(
            calls.last().map(String::as_str),
            Some("apply +192.0.2.9/32")
        );
    }

    #[tokio::test]
    async fn a_rebuilt_table_gets_every_ban_given_not_only_the_restored() {
        let fw = FakeKernel::default();
        let applier = Applier::spawn(
            fw.clone(),
            vec![restored("192.0.2.1/32")],
            Metrics::default(),
        );
        applier.send(vec![ban("192.0.2.2/32")]);
        applier.send(vec![Change::Unban {
            net: net("192.0.2.1/32"),
        }]);
        wait_for_kernel(&applier, &fw, &["192.0.2.2/32"]).await;

        // The ruleset is flushed; the next ban finds no table.
        fw.flush();
        applier.send(vec![ban("192.0.2.3/32")]);
        wait_for_kernel(&applier, &fw, &["192.0.2.2/32", "192.0.2.3/32"]).await;
        applier.finish().await;
        assert!(
            fw.calls()
                .contains(&"reconcile [192.0.2.2/32 192.0.2.3/32]".to_owned()),
            "{:?}",
            fw.calls()
        );
    }

    #[tokio::test]
    async fn a_periodic_check_puts_back_a_flushed_table_and_lost_bans() {
        let fw = FakeKernel::checking(Duration::from_millis(10));
        let applier = Applier::spawn(
            fw.clone(),
            vec![restored("192.0.2.1/32")],
            Metrics::default(),
        );
        applier.send(vec![ban("2001:db8::/64")]);
        wait_for_kernel(&applier, &fw, &["192.0.2.1/32", "2001:db8::/64"]).await;

        // No change arrives: the check alone notices.
        fw.flush();
        wait_for_kernel(&applier, &fw, &["192.0.2.1/32", "2001:db8::/64"]).await;
        assert!(fw.state().table);

        fw.state().elements.remove(&net("2001:db8::/64"));
        wait_for_kernel(&applier, &fw, &["192.0.2.1/32", "2001:db8::/64"]).await;
        applier.finish().await;
    }

    #[tokio::test]
    async fn a_change_nft_refuses_is_dropped_and_the_rest_applied() {
        let fw = FakeKernel::default();
        fw.state().refuse = Some(net("192.0.2.66/32"));
        let mut applier = Applier::spawn(
            fw.clone(),
            vec![restored("192.0.2.1/32"), restored("192.0.2.66/32")],
            Metrics::default(),
        );
        wait_for_kernel(&applier, &fw, &["192.0.2.1/32"]).await;

        applier.send(vec![
            ban("192.0.2.2/32"),
            ban("192.0.2.66/32"),
            ban("192.0.2.3/32"),
            ban("192.0.2.4/32"),
        ]);
        wait_for_kernel(
            &applier,
            &fw,
            &[
                "192.0.2.1/32",
                "192.0.2.2/32",
                "192.0.2.3/32",
                "192.0.2.4/32",
            ],
        )
        .await;
        let status = wait_for(&applier, |s| s.pending == 0).await;
        assert!(status.healthy && status.last_error.is_none(), "{status:?}");
        // The refusal is counted, said, and handed back to the engine.
        assert!(status.refused >= 1, "{status:?}");
        assert!(
            status
                .last_refused
                .as_deref()
                .is_some_and(|r| r.contains("192.0.2.66")),
            "{status:?}"
        );
        let back = tokio::time::timeout(Duration::from_secs(5), applier.news())
            .await
            .expect("told");
        assert!(
            matches!(back, FirewallNews::Refused(n) if n == net("192.0.2.66/32")),
            "{back:?}"
        );

        // Later bans are not held back, and a rebuilt table does not try
        // the refused one again.
        applier.send(vec![ban("192.0.2.5/32")]);
        wait_for_kernel(
            &applier,
            &fw,
            &[
                "192.0.2.1/32",
                "192.0.2.2/32",
                "192.0.2.3/32",
                "192.0.2.4/32",
                "192.0.2.5/32",
            ],
        )
        .await;
        fw.flush();
        applier.send(vec![ban("192.0.2.6/32")]);
        wait_for(&applier, |s| s.healthy && s.pending == 0).await;
        applier.finish().await;
        let calls = fw.calls();
        let last_reconcile = calls
            .iter()
            .rev()
            .find(|c| c.starts_with("reconcile"))
            .expect("reconciled");
        assert!(!last_reconcile.contains("192.0.2.66"), "{calls:?}");
        assert_eq!(fw.elements().len(), 6, "{calls:?}");
    }
}

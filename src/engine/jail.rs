//! The ban policy as a pure state machine: every method takes the time as
//! an argument and returns what should happen, so it is tested without a
//! runtime, a clock or a firewall.
//!
//! Invariants:
//! - a network is either tracked (counting failures) or banned, never both;
//! - active bans never overlap (a wider ban supersedes the ones inside it),
//!   so the kernel's interval sets never see overlapping elements;
//! - `expiry` holds exactly one `(expires, net)` entry per ban.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv6Net};
use jiff::Timestamp;

use super::accounts::{
    AccountState, Accounts, KnownSites, SiteChange, SiteVerdict, saved_attack_of,
};
use super::ignore::{IgnoreList, IgnoreReason, ResolvedIgnore, canonical_net};
use super::journal::Record;
use super::state::{Saved, SavedOffender, SavedSite};
use super::{
    BanError, BanInfo, EngineEvent, EngineStats, FleetOrigin, MAX_ACCOUNTS, PullOutcome, PulledBan,
    UnbanReason,
};
use crate::config::JailSettings;
use crate::failure::{AttackerText, Failure, KindSet, Report, ServiceSet};
use crate::firewall::{ActiveBan, Change, FirewallStatus};

/// Longest manual ban astban computes with (100 years): keeps timestamp
/// arithmetic far from overflow whatever a caller asks (the config's
/// numbers come bounded in [`JailSettings`]).
const MAX_SPAN: i64 = 100 * 365 * 24 * 3600;

/// The widest prefixes a manual ban takes without `--force`: a /8 of IPv4
/// or a /16 of IPv6 is a typo far more often than an intent.
const MIN_MANUAL_PREFIX_V4: u8 = 16;
const MIN_MANUAL_PREFIX_V6: u8 = 32;

/// Whether `ip` can be the source of an attack: not the unspecified
/// address, not multicast, not the IPv4 broadcast address. Such addresses
/// in an event or a line are bogus (or forged), and banning them does
/// nothing useful.
fn is_unicast(ip: IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_unspecified() || ip.is_multicast() || broadcast)
}

/// What one call produced: firewall changes, events, and whether the
/// persistent state changed.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) changes: Vec<Change>,
    pub(crate) events: Vec<EngineEvent>,
    /// Bans and unbans to make durable before anything else is told.
    pub(crate) journal: Vec<Record>,
    pub(crate) persist: bool,
    /// When the failure that caused each automatic ban was detected, for
    /// the ban latency the applier measures.
    pub(crate) detected: Vec<(IpNet, Timestamp)>,
}

/// What became of one report (for debug logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The host is never banned.
    Ignored(IgnoreReason),
    /// A ban already covers the host (the failure raced the firewall, or
    /// came from a log backlog).
    AlreadyBanned(IpNet),
    /// Older than `findtime`: a backlog that no longer counts.
    Stale,
    /// Not an address anyone attacks from (multicast, broadcast,
    /// unspecified): never counted, never banned.
    NotUnicast,
    /// Counted; `count` failures of `key` are now in the window.
    Counted { key: IpNet, count: u32 },
    /// Counted, and `count` is `maxretry` or more, but `key` is a known
    /// site failing on one account: banned only at `known_host_maxretry`.
    Spared { key: IpNet, count: u32 },
    /// This failure reached `maxretry`: `key` is banned.
    Banned(IpNet),
    /// A success cleared the count of `key`.
    Reset(IpNet),
    /// A success within `findtime` of the last one that cleared the count
    /// of `key`: the count stands, or one known password would buy
    /// unlimited guesses at others.
    NotReset(IpNet),
    /// A success with nothing to clear.
    Unchanged,
}

/// `bantime × factor^(offense-1)`, at most `bantime_max`.
fn bantime_for(settings: &JailSettings, offense: u32) -> i64 {
    let factor = settings
        .bantime_factor
        .checked_pow(offense.saturating_sub(1))
        .unwrap_or(u64::MAX);
    // bantime ≥ 1 and bantime_max ≥ bantime: the product only needs
    // capping.
    let secs = u64::try_from(settings.bantime)
        .unwrap_or(u64::MAX)
        .saturating_mul(factor);
    i64::try_from(secs).map_or(settings.bantime_max, |s| s.min(settings.bantime_max))
}

/// A host that has failed but is not banned. Kept small, since a flood of
/// distinct sources makes hundreds of thousands of these: the failure
/// times are `u32` Unix seconds, kinds and services are bit sets.
#[derive(Debug, Default)]
struct Tracked {
    /// Times of the failures still in the window; fewer than the host's
    /// threshold (`maxretry`, or `known_host_maxretry` for a known site).
    times: Vec<u32>,
    /// Distinct accounts tried, at most [`MAX_ACCOUNTS`].
    accounts: Vec<AttackerText>,
    /// When the host last failed (by astban's clock), for eviction.
    last_seen: u32,
    /// When a success last cleared the count (0: never).
    reset_at: u32,
    kinds: KindSet,
    services: ServiceSet,
}

impl Tracked {
    fn record(&mut self, failure: &Failure, at: u32, now: u32, window_start: u32) {
        self.times.retain(|&t| t > window_start);
        self.times.push(at);
        self.last_seen = now;
        self.kinds.insert(failure.kind);
        self.services.insert(failure.service);
        if let Some(account) = &failure.account
            && self.accounts.len() < MAX_ACCOUNTS
            && !self.accounts.contains(account)
        {
            self.accounts.push(account.clone());
        }
    }

    fn count(&self) -> u32 {
        u32::try_from(self.times.len()).unwrap_or(u32::MAX)
    }

    /// Whether any failure is still in the window.
    fn failing(&self, window_start: u32) -> bool {
        self.times.iter().any(|&t| t > window_start)
    }

    /// Whether anything about the host still matters: failures in the
    /// window, or a reset recent enough to refuse another.
    fn live(&self, window_start: u32) -> bool {
        self.reset_at > window_start || self.failing(window_start)
    }

    /// Starts the count over, remembering when.
    fn reset(&mut self, now: u32) {
        self.times.clear();
        self.accounts.clear();
        self.kinds = KindSet::default();
        self.services = ServiceSet::default();
        self.reset_at = now;
    }
}

/// A ban about to be made.
struct NewBan {
    net: IpNet,
    /// What was counted against it.
    tracked: Option<Tracked>,
    /// Its length; `None` for the escalated bantime.
    secs: Option<i64>,
    manual: bool,
    /// It replaces a ban of the same network.
    replacing: bool,
    /// Made at once because the host failed on this account under attack.
    account_under_attack: Option<AttackerText>,
}

/// A network's past bans.
#[derive(Debug, Clone, Copy)]
struct Offender {
    offenses: u32,
    last_expires: Timestamp,
}

/// All ban state. See the module documentation for its invariants.
#[derive(Debug)]
pub(crate) struct Jail {
    settings: JailSettings,
    ignore: IgnoreList,
    tracked: HashMap<IpNet, Tracked>,
    /// Shared with a snapshot being written, so that saving 100,000 bans
    /// copies pointers, not bans.
    bans: HashMap<IpNet, Arc<BanInfo>>,
    /// Bans not shaped like a counting key (CIDRs, single IPv6 addresses):
    /// few, and found by containment rather than by lookup.
    odd: BTreeSet<IpNet>,
    expiry: BTreeSet<(Timestamp, IpNet)>,
    offenders: HashMap<IpNet, Offender>,
    /// Failures per account Asterisk matched; accounts under attack.
    accounts: Accounts,
    /// Hosts that logged in with a password.
    sites: KnownSites,
    failures_counted: u64,
    /// Failures dropped for being older than `findtime` when they arrived.
    failures_stale: u64,
    /// Tracked hosts forgotten, with their failures, to stay under the cap.
    hosts_evicted: u64,
    bans_total: u64,
    /// Bans made at a first failure on an account under attack.
    bans_account_under_attack: u64,
}

impl Jail {
    pub(crate) fn new(settings: &JailSettings) -> Jail {
        Jail {
            settings: settings.clone(),
            ignore: IgnoreList::new(&settings.ignoreip),
            tracked: HashMap::new(),
            bans: HashMap::new(),
            odd: BTreeSet::new(),
            expiry: BTreeSet::new(),
            offenders: HashMap::new(),
            accounts: Accounts::default(),
            sites: KnownSites::default(),
            failures_counted: 0,
            failures_stale: 0,
            hosts_evicted: 0,
            bans_total: 0,
            bans_account_under_attack: 0,
        }
    }

    /// Applies a reloaded `[jail]`: new numbers count from now on, and
    /// `ignoreip` wins at once, lifting automatic bans it now covers (a
    /// forced manual ban stays). Returns how many bans were lifted.
    ///
    /// `ipv6_prefix` keeps its running value: every counting key and the
    /// shape of every ban depend on it, so it changes with a restart only.
    pub(crate) fn reconfigure(&mut self, settings: &JailSettings, fx: &mut Effects) -> usize {
        let ipv6_prefix = self.settings.ipv6_prefix;
        self.settings = settings.clone();
        self.settings.ipv6_prefix = ipv6_prefix;
        self.ignore.set_listed(&settings.ignoreip);
        self.lift_ignored(fx)
    }

    /// Takes the current addresses of `ignoreip`'s host names (the
    /// resolver's whole set, replacing the last), lifting automatic bans
    /// they now cover as a reloaded `ignoreip` does. Returns how many.
    pub(crate) fn set_named(&mut self, named: &[ResolvedIgnore], fx: &mut Effects) -> usize {
        self.ignore.set_named(named);
        self.lift_ignored(fx)
    }

    /// Lifts the automatic bans the ignore list covers (a forced manual
    /// ban stays); how many.
    fn lift_ignored(&mut self, fx: &mut Effects) -> usize {
        let covered: Vec<IpNet> = self
            .bans
            .values()
            .filter(|b| !b.manual && self.ignore.overlap(b.net).is_some())
            .map(|b| b.net)
            .collect();
        for &net in &covered {
            self.remove_ban(net, UnbanReason::Ignored, fx);
        }
        covered.len()
    }

    /// This host's own addresses, never banned (`jail.ignore_self`).
    pub(crate) fn set_own_addresses(&mut self, own: Vec<IpAddr>) {
        self.ignore.set_own(own);
    }

    /// Counts a failure (banning at `maxretry`) or applies a success.
    pub(crate) fn report(&mut self, report: &Report, now: Timestamp, fx: &mut Effects) -> Verdict {
        match report {
            Report::Failure(failure) => self.failure(failure, now, fx),
            Report::Success(success) => {
                let host = success.host.to_canonical();
                if self.ignore.host(host).is_some() {
                    return Verdict::Unchanged;
                }
                let key = self.key(host);
                let now_s = now.as_second();
                if success.password {
                    match self.sites.success(key, unix_u32(now_s), &self.settings) {
                        SiteChange::New => {
                            fx.journal.push(Record::KnownSite(SavedSite {
                                host: key,
                                last_success: at_second(now_s),
                            }));
                            fx.persist = true;
                        }
                        SiteChange::Refreshed => fx.persist = true,
                        SiteChange::None => {}
                    }
                }
                if !self.settings.reset_on_success {
                    return Verdict::Unchanged;
                }
                let window_start = unix_u32(now_s - self.settings.findtime);
                match self.tracked.get_mut(&key) {
                    Some(t) if t.failing(window_start) => {
                        // At most once per findtime.
                        if t.reset_at > window_start {
                            return Verdict::NotReset(key);
                        }
                        t.reset(unix_u32(now_s));
                        Verdict::Reset(key)
                    }
                    _ => Verdict::Unchanged,
                }
            }
        }
    }

    fn failure(&mut self, failure: &Failure, now: Timestamp, fx: &mut Effects) -> Verdict {
        let host = failure.host.to_canonical();
        if !is_unicast(host) {
            return Verdict::NotUnicast;
        }
        if let Some(reason) = self.ignore.host(host) {
            fx.events.push(EngineEvent::Ignored {
                host,
                reason: reason.clone(),
            });
            return Verdict::Ignored(reason);
        }
        if let Some(by) = self.covering(IpNet::from(host)) {
            return Verdict::AlreadyBanned(by);
        }
        // Asterisk's time says when the attempt happened; a clock ahead of
        // ours must not stretch the window.
        let now_s = now.as_second();
        let at = failure.time.as_second().min(now_s);
        let window_start = now_s - self.settings.findtime;
        if at <= window_start {
            self.failures_stale += 1;
            return Verdict::Stale;
        }
        let key = self.key(host);
        let at = unix_u32(at);
        if !self.tracked.contains_key(&key) && self.tracked.len() >= self.settings.max_tracked_hosts
        {
            self.make_room(window_start);
        }
        let now_u = unix_u32(now_s);
        let fresh = self
            .tracked
            .get(&key)
            .is_none_or(|t| !t.failing(unix_u32(window_start)));
        let account = failure.matched_account();
        let site = self
            .sites
            .failure(key, account, fresh, now_u, &self.settings);
        // A known site failing on one account is most likely one phone
        // with a stale password: it neither counts against the account
        // (the office's own phone would flag it) nor is banned at once.
        let lenient = site == SiteVerdict::OneAccount;
        let mut maxretry = if lenient {
            self.settings.known_host_maxretry
        } else {
            self.settings.maxretry
        };
        let mut attacked = None;
        if let Some(account) = account
            && !lenient
        {
            let state = self
                .accounts
                .record(account, at, now_u, &self.settings, &mut fx.events);
            // The failure that flags the account is one of the attack's
            // own; the ones after it ban at once.
            if state == AccountState::UnderAttack && self.settings.account_ban_at_once {
                maxretry = 1;
                attacked = Some(account.clone());
            }
            if let AccountState::Started(info) = state {
                fx.journal
                    .push(Record::AccountUnderAttack(saved_attack_of(&info)));
                fx.events.push(EngineEvent::AccountUnderAttack(info));
                fx.persist = true;
            }
        }
        let tracked = self.tracked.entry(key).or_default();
        tracked.record(failure, at, now_u, unix_u32(window_start));
        self.failures_counted += 1;
        let count = tracked.count();
        if count < maxretry {
            if lenient && count >= self.settings.maxretry {
                if let Some(info) = self.sites.spare(key) {
                    fx.events.push(EngineEvent::KnownSiteFailing(info));
                }
                return Verdict::Spared { key, count };
            }
            return Verdict::Counted { key, count };
        }
        let tracked = self.tracked.remove(&key);
        self.sites.settle(key);
        if let Some(account) = &attacked {
            self.accounts.banned_for(account);
            self.bans_account_under_attack += 1;
        }
        let ban = NewBan {
            net: key,
            tracked,
            secs: None,
            manual: false,
            replacing: false,
            account_under_attack: attacked,
        };
        self.ban(ban, now, fx);
        fx.detected.push((key, failure.time.min(now)));
        Verdict::Banned(key)
    }

    /// A ban through the control socket: `net` for `duration`, or for the
    /// escalated bantime of its next offense.
    pub(crate) fn manual_ban(
        &mut self,
        net: IpNet,
        duration: Option<Duration>,
        force: bool,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<BanInfo, BanError> {
        let mut net = canonical_net(net);
        if duration.is_some_and(|d| d.is_zero()) {
            return Err(BanError::NoDuration);
        }
        if net.prefix_len() == net.max_prefix_len() {
            if !is_unicast(net.addr()) {
                return Err(BanError::NotUnicast { net });
            }
            // One IPv6 address is banned as automatic bans are: its prefix.
            net = self.key(net.addr());
        }
        let min = match net {
            IpNet::V4(_) => MIN_MANUAL_PREFIX_V4,
            IpNet::V6(_) => MIN_MANUAL_PREFIX_V6,
        };
        if !force && net.prefix_len() < min {
            return Err(BanError::TooWide { net, min });
        }
        if !force && let Some(reason) = self.ignore.overlap(net) {
            return Err(BanError::Ignored { net, reason });
        }
        if let Some(by) = self.covering(net)
            && by != net
        {
            return Err(BanError::Covered { net, by });
        }
        // Banned again: the new ban replaces the old one.
        let replacing = self.take_ban(net).is_some();
        let tracked = self.tracked.remove(&net);
        let secs = duration.map(|d| {
            i64::try_from(d.as_secs())
                .unwrap_or(MAX_SPAN)
                .clamp(1, MAX_SPAN)
        });
        let ban = NewBan {
            net,
            tracked,
            secs,
            manual: true,
            replacing,
            account_under_attack: None,
        };
        Ok(self.ban(ban, now, fx))
    }

    /// Ends the ban of exactly `net`, if there is one. If there is not,
    /// `net` still leaves the firewall: an element astban no longer knows
    /// (its state file was corrupt, say) must not be beyond `astban unban`.
    pub(crate) fn unban(&mut self, net: IpNet, fx: &mut Effects) -> Option<BanInfo> {
        let net = canonical_net(net);
        let info = self.remove_ban(net, UnbanReason::Manual, fx);
        if info.is_none() && self.lift_unknown(net, fx) {
            tracing::info!(host = %net, "not a ban astban knows; removed from its sets in case an earlier run left it there");
        }
        info
    }

    /// Ends every ban whose time is up at `now`.
    pub(crate) fn expire(&mut self, now: Timestamp, fx: &mut Effects) {
        while let Some(&(expires, net)) = self.expiry.first() {
            if expires > now {
                break;
            }
            // Pulled bans end quietly, as they came (see `pull`); the
            // kernel drops the element on its own timeout too.
            if self.bans.get(&net).is_some_and(|b| b.origin.is_some()) {
                self.take_ban(net);
                fx.changes.push(Change::Unban { net });
                fx.persist = true;
                continue;
            }
            self.remove_ban(net, UnbanReason::Expired, fx);
        }
    }

    /// When the next ban ends.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.expiry.first().map(|&(expires, _)| expires)
    }

    /// Forgets what no longer matters (hosts whose failures left the
    /// window, offenders past `history`) and gives memory back after a
    /// flood.
    pub(crate) fn housekeep(&mut self, now: Timestamp, fx: &mut Effects) {
        let window_start = unix_u32(now.as_second() - self.settings.findtime);
        self.tracked.retain(|_, t| t.live(window_start));
        let now_u = unix_u32(now.as_second());
        self.accounts
            .housekeep(now_u, &self.settings, &mut fx.events);
        let tracked = &self.tracked;
        self.sites.housekeep(now_u, &self.settings, |key| {
            tracked.get(&key).is_some_and(|t| t.failing(window_start))
        });
        let history = self.settings.history;
        self.offenders.retain(|_, o| !forgotten(o, now, history));
        if self.tracked.capacity() > 4 * self.tracked.len() {
            self.tracked.shrink_to_fit();
        }
        if self.offenders.capacity() > 4 * self.offenders.len() {
            self.offenders.shrink_to_fit();
        }
    }

    /// The bans in force, oldest first.
    /// Up to `limit` bans, soonest to end first, after `after` (the
    /// expiry and network of the last one of the previous page): a long
    /// list is handed out a page at a time, never copied whole.
    pub(crate) fn bans_page(
        &self,
        after: Option<(Timestamp, IpNet)>,
        limit: usize,
    ) -> Vec<BanInfo> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.expiry
            .range((from, Bound::Unbounded))
            .filter_map(|(_, net)| self.bans.get(net).map(|b| BanInfo::clone(b)))
            .take(limit)
            .collect()
    }

    pub(crate) fn bans(&self) -> Vec<BanInfo> {
        let mut bans: Vec<BanInfo> = self.bans.values().map(|b| BanInfo::clone(b)).collect();
        bans.sort_by_key(|b| (b.banned_at, b.net));
        bans
    }

    /// Bans in force and hosts tracked, for the metrics after each batch.
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.bans.len(), self.tracked.len())
    }

    pub(crate) fn stats(&self, firewall: FirewallStatus, now: Timestamp) -> EngineStats {
        let (accounts_under_attack, accounts_under_attack_count) =
            self.accounts.attacks(unix_u32(now.as_second()));
        EngineStats {
            accounts_tracked: self.accounts.len(),
            accounts_under_attack,
            accounts_under_attack_count,
            account_attacks_total: self.accounts.attacks_total,
            accounts_evicted: self.accounts.evicted,
            bans_account_under_attack: self.bans_account_under_attack,
            known_sites: self.sites.len(),
            known_sites_failing: self.sites.failing(),
            known_sites_spared: self.sites.spared,
            known_sites_evicted: self.sites.evicted,
            tracked_hosts: self.tracked.len(),
            active_bans: self.bans.len(),
            offenders: self.offenders.len(),
            failures_counted: self.failures_counted,
            failures_stale: self.failures_stale,
            hosts_evicted: self.hosts_evicted,
            bans_total: self.bans_total,
            state_error: None,
            firewall,
        }
    }

    /// What to save: bans and offender history (failure counts are not
    /// worth a write per failure and rebuild within `findtime`).
    pub(crate) fn snapshot(&self) -> Saved {
        let mut offenders: Vec<SavedOffender> = self
            .offenders
            .iter()
            .map(|(&host, o)| SavedOffender {
                host,
                offenses: o.offenses,
                last_expires: o.last_expires,
            })
            .collect();
        offenders.sort_by_key(|o| o.host);
        let mut bans: Vec<Arc<BanInfo>> = self.bans.values().cloned().collect();
        bans.sort_by_key(|b| (b.banned_at, b.net));
        Saved {
            bans,
            offenders,
            journal: 0,
            known_sites: self.sites.snapshot(),
            accounts_under_attack: self.accounts.snapshot(),
        }
    }

    /// Loads saved state: bans still in force (with the time they have
    /// left) and history not yet forgotten. Returns the bans, for the
    /// firewall to reconcile with.
    ///
    /// A saved ban that is over, or that `ignoreip` or an own address now
    /// covers, is lifted through `fx`: the kernel may still hold it (the
    /// state file lags the kernel by a moment, and `ignoreip` may have
    /// grown while astban was down), and nothing else would lift it.
    pub(crate) fn restore(
        &mut self,
        saved: Saved,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Vec<ActiveBan> {
        let mut bans = saved.bans;
        // Wider first, so that a narrower duplicate from a hand-edited file
        // is recognised as covered.
        bans.sort_by_key(|b| b.net.prefix_len());
        let mut lifted = Vec::new();
        for ban in bans {
            let mut ban = Arc::unwrap_or_clone(ban);
            ban.net = canonical_net(ban.net);
            if self.covering(ban.net).is_some() {
                continue;
            }
            if ban.expires <= now {
                lifted.push(ban.net);
                continue;
            }
            if !ban.manual
                && let Some(reason) = self.ignore.overlap(ban.net)
            {
                tracing::warn!(host = %ban.net, "saved ban lifted: the address is {reason}");
                lifted.push(ban.net);
                continue;
            }
            ban.accounts = ban
                .accounts
                .iter()
                .take(MAX_ACCOUNTS)
                .map(|a| AttackerText::new(a.as_str()))
                .collect();
            self.insert_ban(ban);
        }
        for net in lifted {
            self.lift_unknown(net, fx);
        }
        let history = self.settings.history;
        let mut offenders: Vec<SavedOffender> = saved.offenders;
        // The most recent first, in case the cap was lowered.
        offenders.sort_by_key(|o| std::cmp::Reverse(o.last_expires));
        for o in offenders.into_iter().take(self.settings.max_tracked_hosts) {
            let offender = Offender {
                offenses: o.offenses.max(1),
                last_expires: o.last_expires,
            };
            if !forgotten(&offender, now, history) {
                self.offenders.insert(canonical_net(o.host), offender);
            }
        }
        let now_u = unix_u32(now.as_second());
        self.sites.restore(saved.known_sites, now_u, &self.settings);
        self.accounts
            .restore(saved.accounts_under_attack, now_u, &self.settings);
        self.bans
            .values()
            .map(|b| ActiveBan {
                net: b.net,
                expires: b.expires,
                fleet: b.origin.is_some(),
            })
            .collect()
    }

    /// Applies one poll of the fleet's decision stream. `new` bans what
    /// no ban covers yet (astban's own decisions coming back find their
    /// local ban and are skipped), for the decision's time; `ignoreip` and
    /// own addresses win over every one of them. `deleted` lifts pulled
    /// bans (never local ones); after a `startup` listing, which holds
    /// every decision in force, pulled bans it lacks are lifted too.
    ///
    /// Pulled bans raise no events: a startup listing can hold thousands
    /// (CAPI), which must not push local bans out of the event queue.
    pub(crate) fn pull(
        &mut self,
        new: &[PulledBan],
        deleted: &[IpNet],
        startup: bool,
        now: Timestamp,
        fx: &mut Effects,
    ) -> PullOutcome {
        let mut out = PullOutcome::default();
        // One per network: the longest decision.
        let mut wanted: HashMap<IpNet, &PulledBan> = HashMap::new();
        for b in new.iter().filter(|b| b.expires > now) {
            let net = canonical_net(b.net);
            let e = wanted.entry(net).or_insert(b);
            if b.expires > e.expires {
                *e = b;
            }
        }
        let pulled = |b: &BanInfo| b.origin.is_some();
        let gone: Vec<IpNet> = if startup {
            self.bans
                .values()
                .filter(|b| pulled(b) && !wanted.contains_key(&b.net))
                .map(|b| b.net)
                .collect()
        } else {
            deleted
                .iter()
                .map(|&n| canonical_net(n))
                .filter(|n| !wanted.contains_key(n) && self.bans.get(n).is_some_and(|b| pulled(b)))
                .collect()
        };
        for net in gone {
            self.lift_pulled(net, fx);
            out.lifted += 1;
        }
        let mut wanted: Vec<(IpNet, &PulledBan)> = wanted.into_iter().collect();
        // Wider first, so that a narrower one inside it is seen as covered.
        wanted.sort_by_key(|(net, _)| (net.prefix_len(), *net));
        for (net, b) in wanted {
            // As for a manual ban without --force: no address nobody
            // sends from, no huge prefix.
            let min = match net {
                IpNet::V4(_) => MIN_MANUAL_PREFIX_V4,
                IpNet::V6(_) => MIN_MANUAL_PREFIX_V6,
            };
            let odd = (net.prefix_len() == net.max_prefix_len() && !is_unicast(net.addr()))
                || net.prefix_len() < min;
            if odd || self.ignore.overlap(net).is_some() {
                out.ignored += 1;
                continue;
            }
            let origin = Some(b.origin.clone());
            if let Some(existing) = self.bans.get(&net) {
                if !pulled(existing) {
                    out.local += 1;
                } else if existing.expires != b.expires || existing.origin != origin {
                    let Some(mut info) = self.take_ban(net) else {
                        continue;
                    };
                    info.expires = b.expires;
                    info.origin = origin;
                    self.insert_ban(info.clone());
                    fx.changes.push(Change::Replace {
                        net,
                        expires: b.expires,
                        fleet: true,
                    });
                    fx.journal.push(Record::Ban(info));
                    fx.persist = true;
                }
                continue;
            }
            if self.covering(net).is_some() {
                out.local += 1;
                continue;
            }
            // Pulled bans inside it give way (one interval set holds
            // them); astban's own stay, in their own sets.
            for inner in self.inside(net) {
                if self.bans.get(&inner).is_some_and(|b| pulled(b)) {
                    self.lift_pulled(inner, fx);
                }
            }
            let info = BanInfo {
                net,
                banned_at: at_second(now.as_second()),
                expires: b.expires,
                failures: 0,
                offense: 1,
                manual: false,
                kinds: Default::default(),
                services: Default::default(),
                accounts: Vec::new(),
                account_under_attack: None,
                origin,
            };
            self.insert_ban(info.clone());
            fx.changes.push(Change::Ban {
                net,
                expires: b.expires,
                fleet: true,
            });
            fx.journal.push(Record::Ban(info));
            fx.persist = true;
            out.added += 1;
        }
        out.in_force = self.bans.values().filter(|b| pulled(b)).count();
        out
    }

    /// Ends a pulled ban the fleet no longer has, quietly (see `pull`).
    fn lift_pulled(&mut self, net: IpNet, fx: &mut Effects) {
        if self.take_ban(net).is_some() {
            fx.changes.push(Change::Unban { net });
            fx.journal.push(Record::Unban(net));
            fx.persist = true;
        }
    }

    /// Takes back the ban of `net`, which nft refused: it is not enforced,
    /// so it must not be listed as if it were.
    pub(crate) fn refused(&mut self, net: IpNet, fx: &mut Effects) {
        self.remove_ban(net, UnbanReason::Refused, fx);
    }

    /// Takes over `found` (bans in the kernel at start) where no ban covers
    /// them yet: the state file was lost or set aside, or lagged. They keep
    /// the time the kernel gives them; what `ignoreip` now protects is
    /// lifted instead. Returns how many were adopted.
    pub(crate) fn adopt(&mut self, found: &[ActiveBan], now: Timestamp, fx: &mut Effects) -> usize {
        let mut adopted = 0;
        for ban in found {
            let net = canonical_net(ban.net);
            if ban.expires <= now || self.covering(net).is_some() {
                continue;
            }
            if self.ignore.overlap(net).is_some() {
                self.lift_unknown(net, fx);
                continue;
            }
            let offense = self.offender(net, now).map_or(1, |o| o.offenses.max(1));
            let info = BanInfo {
                net,
                banned_at: at_second(now.as_second()),
                expires: ban.expires,
                failures: 0,
                offense,
                manual: false,
                kinds: Default::default(),
                services: Default::default(),
                accounts: Vec::new(),
                account_under_attack: None,
                // A startup listing of the stream lifts it if the LAPI no
                // longer has it.
                origin: ban.fleet.then(|| FleetOrigin {
                    origin: "unknown".into(),
                    scenario: "found in the kernel".into(),
                }),
            };
            for inner in self.inside(net) {
                self.remove_ban(inner, UnbanReason::Superseded, fx);
            }
            self.insert_ban(info.clone());
            self.remember_offender(net, offense, ban.expires, now);
            fx.journal.push(Record::Ban(info));
            fx.persist = true;
            adopted += 1;
        }
        adopted
    }

    /// The network a host's failures are counted and banned under: the
    /// address itself for IPv4, its `ipv6_prefix` for IPv6, unless that
    /// prefix would cover an ignored address (this host's own /64, say),
    /// in which case only the address.
    fn key(&self, host: IpAddr) -> IpNet {
        if let IpAddr::V6(v6) = host
            && let Ok(prefix) = Ipv6Net::new(v6, self.settings.ipv6_prefix)
        {
            let prefix = IpNet::V6(prefix.trunc());
            if self.ignore.overlap(prefix).is_none() {
                return prefix;
            }
        }
        IpNet::from(host)
    }

    /// Whether a ban of `net` has the shape of a counting key, so that it
    /// is found by lookup.
    fn key_shaped(&self, net: IpNet) -> bool {
        match net {
            IpNet::V4(n) => n.prefix_len() == 32,
            IpNet::V6(n) => n.prefix_len() == self.settings.ipv6_prefix,
        }
    }

    /// The ban that covers all of `net`, if any.
    fn covering(&self, net: IpNet) -> Option<IpNet> {
        if self.bans.contains_key(&net) {
            return Some(net);
        }
        if let IpNet::V6(v6) = net
            && v6.prefix_len() > self.settings.ipv6_prefix
            && let Ok(prefix) = Ipv6Net::new(v6.addr(), self.settings.ipv6_prefix)
        {
            let prefix = IpNet::V6(prefix.trunc());
            if self.bans.contains_key(&prefix) {
                return Some(prefix);
            }
        }
        self.odd.iter().find(|b| b.contains(&net)).copied()
    }

    /// Bans strictly inside `net`.
    fn inside(&self, net: IpNet) -> Vec<IpNet> {
        let wide = match net {
            IpNet::V4(n) => n.prefix_len() < 32,
            IpNet::V6(n) => n.prefix_len() < self.settings.ipv6_prefix,
        };
        let within = |b: &&IpNet| **b != net && net.contains(*b);
        if wide {
            self.bans.keys().filter(within).copied().collect()
        } else {
            self.odd.iter().filter(within).copied().collect()
        }
    }

    fn ban(&mut self, ban: NewBan, now: Timestamp, fx: &mut Effects) -> BanInfo {
        let NewBan {
            net,
            tracked,
            secs,
            manual,
            replacing,
            account_under_attack,
        } = ban;
        for inner in self.inside(net) {
            self.remove_ban(inner, UnbanReason::Superseded, fx);
        }
        if !self.key_shaped(net) {
            self.tracked.retain(|key, _| !net.contains(key));
        }
        let offense = self
            .offender(net, now)
            .map_or(1, |o| o.offenses.saturating_add(1));
        let secs = secs.unwrap_or_else(|| bantime_for(&self.settings, offense));
        let banned_at = at_second(now.as_second());
        let expires = at_second(now.as_second().saturating_add(secs));
        let tracked = tracked.unwrap_or_default();
        let info = BanInfo {
            net,
            banned_at,
            expires,
            failures: tracked.count(),
            offense,
            manual,
            kinds: tracked.kinds,
            services: tracked.services,
            accounts: tracked.accounts,
            account_under_attack,
            origin: None,
        };
        self.insert_ban(info.clone());
        self.remember_offender(net, offense, expires, now);
        self.bans_total += 1;
        fx.changes.push(if replacing {
            Change::Replace {
                net,
                expires,
                fleet: false,
            }
        } else {
            Change::Ban {
                net,
                expires,
                fleet: false,
            }
        });
        fx.journal.push(Record::Ban(info.clone()));
        fx.events.push(EngineEvent::Banned(info.clone()));
        fx.persist = true;
        info
    }

    fn insert_ban(&mut self, info: BanInfo) {
        let net = info.net;
        self.expiry.insert((info.expires, net));
        if !self.key_shaped(net) {
            self.odd.insert(net);
        }
        self.bans.insert(net, Arc::new(info));
    }

    /// Takes `net`, which is not a ban, out of the firewall, unless a ban
    /// overlaps it: that one keeps the addresses banned, and nft would
    /// refuse an element overlapping it in an interval set. Returns
    /// whether it did.
    fn lift_unknown(&mut self, net: IpNet, fx: &mut Effects) -> bool {
        let lift = self.covering(net).is_none() && self.inside(net).is_empty();
        if lift {
            fx.changes.push(Change::Unban { net });
        }
        lift
    }

    /// Removes a ban from every index, without telling anyone.
    fn take_ban(&mut self, net: IpNet) -> Option<BanInfo> {
        let info = Arc::unwrap_or_clone(self.bans.remove(&net)?);
        self.expiry.remove(&(info.expires, net));
        self.odd.remove(&net);
        Some(info)
    }

    fn remove_ban(&mut self, net: IpNet, reason: UnbanReason, fx: &mut Effects) -> Option<BanInfo> {
        let info = self.take_ban(net)?;
        fx.changes.push(Change::Unban { net });
        // An expiry needs no record: a restart drops what is over.
        if reason != UnbanReason::Expired {
            fx.journal.push(Record::Unban(net));
        }
        fx.events.push(EngineEvent::Unbanned { net, reason });
        fx.persist = true;
        Some(info)
    }

    fn offender(&self, net: IpNet, now: Timestamp) -> Option<Offender> {
        self.offenders
            .get(&net)
            .filter(|o| !forgotten(o, now, self.settings.history))
            .copied()
    }

    fn remember_offender(
        &mut self,
        net: IpNet,
        offenses: u32,
        last_expires: Timestamp,
        now: Timestamp,
    ) {
        let cap = self.settings.max_tracked_hosts;
        if !self.offenders.contains_key(&net) && self.offenders.len() >= cap {
            let history = self.settings.history;
            self.offenders.retain(|_, o| !forgotten(o, now, history));
            if self.offenders.len() >= cap {
                let count = (self.offenders.len() + 1 - cap).max(cap / 10);
                evict_oldest(&mut self.offenders, count, |o| o.last_expires);
            }
        }
        self.offenders.insert(
            net,
            Offender {
                offenses,
                last_expires,
            },
        );
    }

    /// Frees room for one more tracked host: first hosts whose failures
    /// all left the window, then a tenth, the fewest failures first (the
    /// stalest among equals), so that this O(n) sweep runs at most once per
    /// n/10 new hosts, and a flood of one-failure sources (cheap with IPv6)
    /// cannot push out a host close to its ban.
    fn make_room(&mut self, window_start: i64) {
        let window_start = unix_u32(window_start);
        self.tracked.retain(|_, t| t.live(window_start));
        let cap = self.settings.max_tracked_hosts;
        if self.tracked.len() >= cap {
            let count = (self.tracked.len() + 1 - cap).max(cap / 10);
            let before = self.tracked.len();
            evict_oldest(&mut self.tracked, count, |t| (t.count(), t.last_seen));
            let evicted = before - self.tracked.len();
            self.hosts_evicted += evicted as u64;
            tracing::warn!(
                evicted,
                cap,
                "more hosts failing than jail.max_tracked_hosts: forgot those with the fewest failures"
            );
        }
    }
}

/// Removes the `count` entries of `map` with the smallest `age`.
fn evict_oldest<V, A: Ord + Copy>(
    map: &mut HashMap<IpNet, V>,
    count: usize,
    age: impl Fn(&V) -> A,
) {
    let mut ages: Vec<A> = map.values().map(&age).collect();
    let count = count.min(ages.len());
    if count == 0 {
        return;
    }
    let (_, &mut cutoff, _) = ages.select_nth_unstable(count - 1);
    let mut ties = count - ages.iter().filter(|&&a| a < cutoff).count();
    map.retain(|_, v| {
        let a = age(v);
        if a < cutoff {
            false
        } else if a == cutoff && ties > 0 {
            ties -= 1;
            false
        } else {
            true
        }
    });
}

fn forgotten(offender: &Offender, now: Timestamp, history: i64) -> bool {
    offender.last_expires.as_second().saturating_add(history) < now.as_second()
}

/// Unix seconds as stored per tracked host (valid until 2106).
fn unix_u32(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

fn at_second(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(if secs < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JailConfig;
    use crate::failure::{FailureKind, Service, Source, Success};

    const T0: i64 = 1_800_000_000;

    fn t(offset: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset).expect("ts")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn settings(config: JailConfig) -> JailSettings {
        JailSettings::try_from(&config).expect("a valid [jail]")
    }

    fn jail_of(config: JailConfig) -> Jail {
        Jail::new(&settings(config))
    }

    fn config() -> JailConfig {
        JailConfig {
            ignoreip: Vec::new(),
            ignore_self: false,
            ..JailConfig::default()
        }
    }

    fn failure(host: &str, at: Timestamp) -> Report {
        Report::Failure(Failure {
            host: host.parse().expect("ip"),
            kind: FailureKind::InvalidPassword,
            service: Service::Pjsip,
            account: Some(AttackerText::new("1000")),
            account_matched: false,
            session: None,
            time: at,
            source: Source::Ami,
        })
    }

    /// Reports `n` failures of `host` at `at` (seen at `at` too).
    fn fail(jail: &mut Jail, host: &str, n: u32, at: Timestamp) -> (Verdict, Effects) {
        let mut fx = Effects::default();
        let mut verdict = Verdict::Unchanged;
        for _ in 0..n {
            verdict = jail.report(&failure(host, at), at, &mut fx);
        }
        (verdict, fx)
    }

    #[test]
    fn the_maxretry_th_failure_bans_for_bantime() {
        let mut jail = jail_of(config());
        let (verdict, fx) = fail(&mut jail, "192.0.2.7", 4, t(0));
        assert_eq!(
            verdict,
            Verdict::Counted {
                key: net("192.0.2.7/32"),
                count: 4
            }
        );
        assert!(fx.changes.is_empty() && fx.events.is_empty() && !fx.persist);

        let (verdict, fx) = fail(&mut jail, "192.0.2.7", 1, t(1));
        assert_eq!(verdict, Verdict::Banned(net("192.0.2.7/32")));
        let expires = t(1 + 3 * 24 * 3600);
        assert_eq!(
            fx.changes,
            [Change::Ban {
                net: net("192.0.2.7/32"),
                expires,
                fleet: false
            }]
        );
        let EngineEvent::Banned(info) = &fx.events[0] else {
            panic!("{:?}", fx.events)
        };
        assert_eq!((info.failures, info.offense, info.manual), (5, 1, false));
        assert_eq!(
            info.kinds.iter().collect::<Vec<_>>(),
            [FailureKind::InvalidPassword]
        );
        assert_eq!(info.services.iter().collect::<Vec<_>>(), [Service::Pjsip]);
        assert_eq!(info.accounts, [AttackerText::new("1000")]);
        assert!(fx.persist);
        assert_eq!(jail.stats(FirewallStatus::default(), t(0)).tracked_hosts, 0);

        // Further failures (racing the firewall) change nothing.
        let (verdict, fx) = fail(&mut jail, "192.0.2.7", 1, t(2));
        assert_eq!(verdict, Verdict::AlreadyBanned(net("192.0.2.7/32")));
        assert!(fx.changes.is_empty());
    }

    #[test]
    fn addresses_a_name_resolves_to_lift_automatic_bans_and_are_ignored() {
        let mut jail = jail_of(config());
        fail(&mut jail, "192.0.2.7", 5, t(0));
        fail(&mut jail, "198.51.100.1", 5, t(0));
        let mut fx = Effects::default();
        jail.manual_ban(net("192.0.2.8/32"), None, false, t(0), &mut fx)
            .expect("manual ban");
        let name: crate::units::HostName = "trunk.example".parse().expect("name");
        let resolved = |addrs: &[&str]| -> Vec<ResolvedIgnore> {
            addrs
                .iter()
                .map(|a| ResolvedIgnore {
                    name: name.clone(),
                    addr: a.parse().expect("ip"),
                })
                .collect()
        };
        let mut fx = Effects::default();
        assert_eq!(
            jail.set_named(&resolved(&["192.0.2.7", "192.0.2.8"]), &mut fx),
            1
        );
        // The manual ban stays, as with a reloaded ignoreip.
        let banned: Vec<IpNet> = jail.bans().iter().map(|b| b.net).collect();
        assert!(banned.contains(&net("192.0.2.8/32")) && !banned.contains(&net("192.0.2.7/32")));
        assert_eq!(
            fx.changes,
            [Change::Unban {
                net: net("192.0.2.7/32")
            }]
        );
        assert!(matches!(
            fail(&mut jail, "192.0.2.7", 1, t(1)).0,
            Verdict::Ignored(IgnoreReason::Named { .. })
        ));
        // A reload keeps the names' addresses (they are not ignoreip's
        // networks); a new set replaces the old one.
        jail.reconfigure(&settings(config()), &mut Effects::default());
        assert!(matches!(
            fail(&mut jail, "192.0.2.7", 1, t(1)).0,
            Verdict::Ignored(_)
        ));
        let mut fx = Effects::default();
        assert_eq!(jail.set_named(&resolved(&["198.51.100.1"]), &mut fx), 1);
        assert!(matches!(
            fail(&mut jail, "192.0.2.7", 1, t(2)).0,
            Verdict::Counted { .. }
        ));
    }

    #[test]
    fn a_reload_applies_new_numbers_and_ignoreip_wins_at_once() {
        let mut jail = jail_of(config());
        fail(&mut jail, "192.0.2.7", 5, t(0));
        let mut fx = Effects::default();
        jail.manual_ban(net("192.0.2.8/32"), None, false, t(0), &mut fx)
            .expect("manual ban");
        assert_eq!(jail.bans().len(), 2);

        fail(&mut jail, "2001:db8:1:2::1", 1, t(0));
        let mut fx = Effects::default();
        let reloaded = JailConfig {
            maxretry: 2,
            ignoreip: vec![net("192.0.2.0/24").into()],
            ipv6_prefix: 48,
            ..config()
        };
        assert_eq!(jail.reconfigure(&settings(reloaded), &mut fx), 1);
        // The automatic ban is lifted; the admin's own ban stays.
        assert_eq!(
            jail.bans().iter().map(|b| b.net).collect::<Vec<_>>(),
            [net("192.0.2.8/32")]
        );
        assert_eq!(
            fx.changes,
            [Change::Unban {
                net: net("192.0.2.7/32")
            }]
        );
        assert!(matches!(
            fx.events.as_slice(),
            [EngineEvent::Unbanned {
                reason: UnbanReason::Ignored,
                ..
            }]
        ));
        // The new ignoreip and maxretry apply from now on.
        assert!(matches!(
            fail(&mut jail, "192.0.2.9", 1, t(1)).0,
            Verdict::Ignored(_)
        ));
        assert_eq!(
            fail(&mut jail, "198.51.100.1", 2, t(1)).0,
            Verdict::Banned(net("198.51.100.1/32"))
        );
        // ipv6_prefix keys every index: it waits for a restart, and the
        // /64 counted before the reload goes on counting.
        assert_eq!(
            fail(&mut jail, "2001:db8:1:2::9", 1, t(1)).0,
            Verdict::Banned(net("2001:db8:1:2::/64"))
        );
        assert_eq!(
            fail(&mut jail, "2001:db8:1:2::1", 1, t(2)).0,
            Verdict::AlreadyBanned(net("2001:db8:1:2::/64"))
        );
    }

    #[test]
    fn failures_leave_the_window_after_findtime() {
        let mut jail = jail_of(config());
        fail(&mut jail, "192.0.2.7", 3, t(0));
        // 10 minutes later the first three no longer count.
        let (verdict, _) = fail(&mut jail, "192.0.2.7", 2, t(600));
        assert_eq!(
            verdict,
            Verdict::Counted {
                key: net("192.0.2.7/32"),
                count: 2
            }
        );
        // A sliding window: 3 more within findtime of the last two ban.
        let (verdict, _) = fail(&mut jail, "192.0.2.7", 3, t(900));
        assert_eq!(verdict, Verdict::Banned(net("192.0.2.7/32")));
    }

    #[test]
    fn failures_count_by_asterisk_time_and_old_ones_do_not_count() {
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        // A log backlog read an hour late.
        for _ in 0..10 {
            let verdict = jail.report(&failure("192.0.2.7", t(0)), t(3600), &mut fx);
            assert_eq!(verdict, Verdict::Stale);
        }
        // Failures from 9 minutes ago still count; a time in the future is
        // clamped to now.
        for _ in 0..4 {
            jail.report(&failure("192.0.2.8", t(3600 - 540)), t(3600), &mut fx);
        }
        let verdict = jail.report(&failure("192.0.2.8", t(99_999)), t(3600), &mut fx);
        assert_eq!(verdict, Verdict::Banned(net("192.0.2.8/32")));
        assert_eq!(
            jail.stats(FirewallStatus::default(), t(0)).failures_counted,
            5
        );
    }

    fn success(host: &str, at: Timestamp) -> Report {
        Report::Success(Success {
            host: host.parse().expect("ip"),
            password: true,
            service: Service::Pjsip,
            time: at,
            source: Source::Ami,
        })
    }

    #[test]
    fn a_success_resets_the_count_at_most_once_per_findtime() {
        let mut jail = jail_of(config());
        let key = net("192.0.2.7/32");
        let mut fx = Effects::default();
        fail(&mut jail, "192.0.2.7", 4, t(0));
        assert_eq!(
            jail.report(&success("192.0.2.7", t(1)), t(1), &mut fx),
            Verdict::Reset(key)
        );
        // One valid login between every maxretry-1 guesses buys nothing
        // more: the next success within findtime leaves the count alone.
        fail(&mut jail, "192.0.2.7", 4, t(2));
        assert_eq!(
            jail.report(&success("192.0.2.7", t(3)), t(3), &mut fx),
            Verdict::NotReset(key)
        );
        // Housekeeping keeps the memory of the reset while it matters.
        jail.housekeep(t(4), &mut Effects::default());
        assert_eq!(
            fail(&mut jail, "192.0.2.7", 1, t(5)).0,
            Verdict::Banned(key)
        );

        // Once findtime has passed, a success resets again.
        let mut jail = jail_of(config());
        fail(&mut jail, "192.0.2.7", 4, t(0));
        jail.report(&success("192.0.2.7", t(1)), t(1), &mut fx);
        // The reset alone is remembered, not forgotten by housekeeping.
        jail.housekeep(t(599), &mut Effects::default());
        assert_eq!(jail.stats(FirewallStatus::default(), t(0)).tracked_hosts, 1);
        fail(&mut jail, "192.0.2.7", 4, t(602));
        assert_eq!(
            jail.report(&success("192.0.2.7", t(603)), t(603), &mut fx),
            Verdict::Reset(key)
        );
        jail.housekeep(t(603 + 601), &mut Effects::default());
        assert_eq!(jail.stats(FirewallStatus::default(), t(0)).tracked_hosts, 0);
        assert!(fx.changes.is_empty());
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut jail = jail_of(config());
        fail(&mut jail, "192.0.2.7", 4, t(0));
        let success = success("192.0.2.7", t(1));
        assert_eq!(
            jail.report(&success, t(1), &mut Effects::default()),
            Verdict::Reset(net("192.0.2.7/32"))
        );
        let (verdict, _) = fail(&mut jail, "192.0.2.7", 4, t(2));
        assert_eq!(
            verdict,
            Verdict::Counted {
                key: net("192.0.2.7/32"),
                count: 4
            }
        );

        let mut jail = jail_of(JailConfig {
            reset_on_success: false,
            ..config()
        });
        fail(&mut jail, "192.0.2.7", 4, t(0));
        assert_eq!(
            jail.report(&success, t(1), &mut Effects::default()),
            Verdict::Unchanged
        );
        assert_eq!(
            fail(&mut jail, "192.0.2.7", 1, t(2)).0,
            Verdict::Banned(net("192.0.2.7/32"))
        );
    }

    #[test]
    fn the_smallest_settings_work_as_written() {
        // The settings type holds the bounds; the policy takes them as
        // they are: one failure bans, no escalation, one tracked host.
        let mut jail = jail_of(JailConfig {
            maxretry: 1,
            bantime: Duration::from_secs(1),
            bantime_factor: 1,
            bantime_max: Duration::from_secs(1),
            history: Duration::ZERO,
            max_tracked_hosts: 1,
            ipv6_prefix: 128,
            ..config()
        });
        let (verdict, fx) = fail(&mut jail, "192.0.2.7", 1, t(0));
        assert_eq!(verdict, Verdict::Banned(net("192.0.2.7/32")));
        assert_eq!(
            fx.changes,
            [Change::Ban {
                net: net("192.0.2.7/32"),
                expires: t(1),
                fleet: false
            }]
        );
        let (verdict, _) = fail(&mut jail, "2001:db8::1", 1, t(0));
        assert_eq!(verdict, Verdict::Banned(net("2001:db8::1/128")));
    }

    #[test]
    fn escalation_stops_at_bantime_max() {
        let mut jail = jail_of(JailConfig {
            bantime: Duration::from_secs(100),
            bantime_factor: u32::MAX,
            bantime_max: Duration::from_secs(250),
            ..config()
        });
        let mut expires = Vec::new();
        for round in 0..3 {
            let at = t(round * 1000);
            let mut fx = Effects::default();
            jail.expire(at, &mut fx);
            let (_, fx) = fail(&mut jail, "192.0.2.7", 5, at);
            let EngineEvent::Banned(info) = &fx.events[0] else {
                panic!("{:?}", fx.events)
            };
            expires.push(info.expires.as_second() - at.as_second());
        }
        assert_eq!(expires, [100, 250, 250]);
    }

    #[test]
    fn a_tracked_host_stays_64_bytes() {
        // A flood makes hundreds of thousands of these: kinds and services
        // are bit sets of one `u32` each, inside the padding.
        assert_eq!(std::mem::size_of::<Tracked>(), 64);
        assert_eq!(std::mem::size_of::<KindSet>(), 4);
    }

    #[test]
    fn ignoreip_wins_for_v4_v6_and_cidrs() {
        let mut jail = jail_of(JailConfig {
            ignoreip: vec![
                net("10.0.0.0/8").into(),
                net("192.0.2.7/32").into(),
                net("2001:db8:5::/48").into(),
            ],
            ..config()
        });
        for host in [
            "10.1.2.3",
            "192.0.2.7",
            "2001:db8:5:1::9",
            "::ffff:10.9.9.9",
        ] {
            let (verdict, fx) = fail(&mut jail, host, 20, t(0));
            assert!(
                matches!(verdict, Verdict::Ignored(IgnoreReason::Listed { .. })),
                "{host}: {verdict:?}"
            );
            assert!(fx.changes.is_empty(), "{host}");
            assert_eq!(fx.events.len(), 20);
            assert!(matches!(fx.events[0], EngineEvent::Ignored { .. }));
        }
        assert_eq!(
            fail(&mut jail, "192.0.2.8", 5, t(0)).0,
            Verdict::Banned(net("192.0.2.8/32"))
        );

        // A manual ban of an ignored network is refused unless forced.
        let mut fx = Effects::default();
        let refused = jail.manual_ban(net("10.0.0.0/16"), None, false, t(0), &mut fx);
        assert!(
            matches!(refused, Err(BanError::Ignored { .. })),
            "{refused:?}"
        );
        let refused = jail.manual_ban(net("0.0.0.0/0"), None, false, t(0), &mut fx);
        assert!(
            matches!(refused, Err(BanError::TooWide { min: 16, .. })),
            "{refused:?}"
        );
        assert!(fx.changes.is_empty());
        let forced = jail
            .manual_ban(net("10.0.0.0/16"), None, true, t(0), &mut fx)
            .expect("forced");
        assert!(forced.manual);
    }

    #[test]
    fn own_addresses_are_ignored() {
        let mut jail = jail_of(config());
        jail.set_own_addresses(vec!["198.51.100.4".parse().expect("ip")]);
        let (verdict, _) = fail(&mut jail, "198.51.100.4", 5, t(0));
        assert_eq!(
            verdict,
            Verdict::Ignored(IgnoreReason::OwnAddress {
                addr: "198.51.100.4".parse().expect("ip")
            })
        );
    }

    #[test]
    fn repeat_offenders_get_escalating_bans_up_to_the_maximum() {
        let mut jail = jail_of(JailConfig {
            bantime: Duration::from_secs(100),
            bantime_factor: 3,
            bantime_max: Duration::from_secs(1000),
            ..config()
        });
        let mut now = 0;
        let mut durations = Vec::new();
        for _ in 0..4 {
            let (_, fx) = fail(&mut jail, "192.0.2.7", 5, t(now));
            let EngineEvent::Banned(info) = &fx.events[0] else {
                panic!("{:?}", fx.events)
            };
            durations.push((info.offense, info.duration().as_secs()));
            now += i64::try_from(info.duration().as_secs()).expect("secs");
            let mut fx = Effects::default();
            jail.expire(t(now), &mut fx);
            assert_eq!(
                fx.events,
                [EngineEvent::Unbanned {
                    net: net("192.0.2.7/32"),
                    reason: UnbanReason::Expired
                }]
            );
            assert_eq!(
                fx.changes,
                [Change::Unban {
                    net: net("192.0.2.7/32")
                }]
            );
        }
        assert_eq!(durations, [(1, 100), (2, 300), (3, 900), (4, 1000)]);
    }

    #[test]
    fn offenders_are_forgotten_after_history() {
        let mut jail = jail_of(JailConfig {
            bantime: Duration::from_secs(100),
            history: Duration::from_secs(1000),
            ..config()
        });
        fail(&mut jail, "192.0.2.7", 5, t(0));
        jail.expire(t(100), &mut Effects::default());
        let (_, fx) = fail(&mut jail, "192.0.2.7", 5, t(100 + 1001));
        let EngineEvent::Banned(info) = &fx.events[0] else {
            panic!("{:?}", fx.events)
        };
        assert_eq!(info.offense, 1);
        jail.housekeep(t(100_000), &mut Effects::default());
        assert_eq!(jail.stats(FirewallStatus::default(), t(0)).offenders, 0);
    }

    #[test]
    fn ipv6_hosts_are_counted_and_banned_per_prefix() {
        let mut jail = jail_of(config());
        fail(&mut jail, "2001:db8:1:2::1", 2, t(0));
        fail(&mut jail, "2001:db8:1:2:aaaa::7", 2, t(0));
        let (verdict, fx) = fail(&mut jail, "2001:db8:1:2:ffff::", 1, t(0));
        assert_eq!(verdict, Verdict::Banned(net("2001:db8:1:2::/64")));
        assert!(
            matches!(fx.changes[0], Change::Ban { net: n, .. } if n == net("2001:db8:1:2::/64"))
        );
        // Anyone in the prefix is covered; the next prefix is not.
        assert_eq!(
            fail(&mut jail, "2001:db8:1:2::99", 1, t(1)).0,
            Verdict::AlreadyBanned(net("2001:db8:1:2::/64"))
        );
        assert_eq!(
            fail(&mut jail, "2001:db8:1:3::1", 1, t(1)).0,
            Verdict::Counted {
                key: net("2001:db8:1:3::/64"),
                count: 1
            }
        );

        let mut jail = jail_of(JailConfig {
            ipv6_prefix: 48,
            ..config()
        });
        assert_eq!(
            fail(&mut jail, "2001:db8:1:2::1", 1, t(0)).0,
            Verdict::Counted {
                key: net("2001:db8:1::/48"),
                count: 1
            }
        );
    }

    #[test]
    fn a_prefix_that_holds_an_ignored_address_is_banned_per_address() {
        let mut jail = jail_of(config());
        jail.set_own_addresses(vec!["2001:db8:0:1::10".parse().expect("ip")]);
        let (verdict, _) = fail(&mut jail, "2001:db8:0:1::66", 5, t(0));
        assert_eq!(verdict, Verdict::Banned(net("2001:db8:0:1::66/128")));
        // A single banned address is still found by containment.
        assert_eq!(
            fail(&mut jail, "2001:db8:0:1::66", 1, t(1)).0,
            Verdict::AlreadyBanned(net("2001:db8:0:1::66/128"))
        );
    }

    #[test]
    fn the_cap_evicts_the_stalest_hosts_not_the_banned() {
        let mut jail = jail_of(JailConfig {
            max_tracked_hosts: 3,
            ..config()
        });
        fail(&mut jail, "192.0.2.9", 5, t(0)); // banned: not tracked
        fail(&mut jail, "192.0.2.1", 3, t(1));
        fail(&mut jail, "192.0.2.2", 3, t(2));
        fail(&mut jail, "192.0.2.3", 3, t(3));
        assert_eq!(jail.stats(FirewallStatus::default(), t(0)).tracked_hosts, 3);
        fail(&mut jail, "192.0.2.2", 1, t(4)); // .2 has the most failures now
        fail(&mut jail, "192.0.2.4", 1, t(5));
        let stats = jail.stats(FirewallStatus::default(), t(0));
        assert_eq!((stats.tracked_hosts, stats.active_bans), (3, 1));
        assert_eq!(stats.hosts_evicted, 1);
        // .1 (3 failures, the stalest of the fewest) was evicted and starts
        // over, evicting .4 (1 failure); .2 kept its count.
        assert_eq!(
            fail(&mut jail, "192.0.2.1", 1, t(6)).0,
            Verdict::Counted {
                key: net("192.0.2.1/32"),
                count: 1
            }
        );
        assert_eq!(
            fail(&mut jail, "192.0.2.2", 1, t(7)).0,
            Verdict::Banned(net("192.0.2.2/32"))
        );
    }

    #[test]
    fn a_flood_of_one_failure_sources_cannot_evict_a_host_close_to_its_ban() {
        let mut jail = jail_of(JailConfig {
            max_tracked_hosts: 1000,
            ..config()
        });
        fail(&mut jail, "2001:db8:ffff::1", 4, t(0));
        // 1,100 distinct /64s failing once each, later than the host.
        for i in 0..1100u32 {
            let host = format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff);
            fail(&mut jail, &host, 1, t(1));
        }
        let stats = jail.stats(FirewallStatus::default(), t(0));
        assert!(stats.hosts_evicted >= 100, "{stats:?}");
        // Its fifth failure bans it: its four were kept.
        assert_eq!(
            fail(&mut jail, "2001:db8:ffff::1", 1, t(2)).0,
            Verdict::Banned(net("2001:db8:ffff::/64"))
        );
    }

    #[test]
    fn stale_failures_are_counted_as_such() {
        let mut jail = jail_of(config());
        let old = Timestamp::from_second(t(0).as_second() - 3600).expect("time");
        let mut fx = Effects::default();
        assert_eq!(
            jail.report(&failure("192.0.2.5", old), t(0), &mut fx),
            Verdict::Stale
        );
        let stats = jail.stats(FirewallStatus::default(), t(0));
        assert_eq!((stats.failures_stale, stats.failures_counted), (1, 0));
    }

    #[test]
    fn eviction_removes_exactly_the_oldest() {
        let mut map: HashMap<IpNet, u32> = (0..100u32)
            .map(|i| {
                (
                    IpNet::from(IpAddr::from([10, 0, 0, u8::try_from(i).expect("u8")])),
                    i % 10,
                )
            })
            .collect();
        evict_oldest(&mut map, 15, |&v| v);
        assert_eq!(map.len(), 85);
        assert_eq!(map.values().filter(|&&v| v == 0).count(), 0);
        assert_eq!(map.values().filter(|&&v| v == 1).count(), 5);
    }

    #[test]
    fn accounts_are_bounded_and_distinct() {
        let mut jail = jail_of(JailConfig {
            maxretry: 10,
            ..config()
        });
        let mut fx = Effects::default();
        for (i, name) in ["a", "b", "a", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .enumerate()
        {
            let mut report = failure("192.0.2.7", t(0));
            if let Report::Failure(f) = &mut report {
                f.account = Some(AttackerText::new(name));
                f.kind = if i % 2 == 0 {
                    FailureKind::InvalidPassword
                } else {
                    FailureKind::InvalidAccountId
                };
            }
            jail.report(&report, t(0), &mut fx);
        }
        let EngineEvent::Banned(info) = &fx.events[0] else {
            panic!("{:?}", fx.events)
        };
        let accounts: Vec<&str> = info.accounts.iter().map(AttackerText::as_str).collect();
        assert_eq!(accounts, ["a", "b", "c"]);
        assert_eq!(
            info.kinds.iter().collect::<Vec<_>>(),
            [FailureKind::InvalidAccountId, FailureKind::InvalidPassword]
        );
    }

    #[test]
    fn manual_bans_cover_supersede_and_replace() {
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        fail(&mut jail, "192.0.2.7", 5, t(0));
        fail(&mut jail, "192.0.2.8", 3, t(0));

        let wide = jail
            .manual_ban(
                net("192.0.2.0/24"),
                Some(Duration::from_secs(60)),
                false,
                t(1),
                &mut fx,
            )
            .expect("ban");
        assert_eq!((wide.manual, wide.expires), (true, t(61)));
        assert_eq!(
            fx.changes,
            [
                Change::Unban {
                    net: net("192.0.2.7/32")
                },
                Change::Ban {
                    net: net("192.0.2.0/24"),
                    expires: t(61),
                    fleet: false
                }
            ]
        );
        assert!(matches!(
            fx.events[0],
            EngineEvent::Unbanned {
                reason: UnbanReason::Superseded,
                ..
            }
        ));
        let stats = jail.stats(FirewallStatus::default(), t(0));
        assert_eq!((stats.active_bans, stats.tracked_hosts), (1, 0));

        // Inside a banned network: refused, and failures are covered.
        let covered = jail.manual_ban(net("192.0.2.9/32"), None, false, t(2), &mut fx);
        assert_eq!(
            covered,
            Err(BanError::Covered {
                net: net("192.0.2.9/32"),
                by: net("192.0.2.0/24")
            })
        );
        assert_eq!(
            fail(&mut jail, "192.0.2.200", 1, t(2)).0,
            Verdict::AlreadyBanned(net("192.0.2.0/24"))
        );

        // The same network again replaces the ban (and is an offense more).
        let mut fx = Effects::default();
        let again = jail
            .manual_ban(net("192.0.2.0/24"), None, false, t(3), &mut fx)
            .expect("ban");
        assert_eq!(
            (again.offense, again.expires),
            (2, t(3 + 2 * 3 * 24 * 3600))
        );
        assert_eq!(
            fx.changes,
            [Change::Replace {
                net: net("192.0.2.0/24"),
                expires: again.expires,
                fleet: false
            }]
        );
        assert_eq!(jail.next_expiry(), Some(again.expires));

        let mut fx = Effects::default();
        assert!(jail.unban(net("192.0.2.1/32"), &mut fx).is_none());
        assert!(fx.changes.is_empty());
        let gone = jail
            .unban(net("192.0.2.0/24"), &mut fx)
            .expect("was banned");
        assert_eq!(gone.net, net("192.0.2.0/24"));
        assert_eq!(
            fx.changes,
            [Change::Unban {
                net: net("192.0.2.0/24")
            }]
        );
        assert_eq!(jail.next_expiry(), None);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut jail = jail_of(config());
        fail(&mut jail, "192.0.2.7", 5, t(0));
        fail(&mut jail, "2001:db8:1:2::1", 5, t(0));
        let mut fx = Effects::default();
        jail.manual_ban(
            net("198.51.100.0/24"),
            Some(Duration::from_secs(100)),
            false,
            t(0),
            &mut fx,
        )
        .expect("ban");
        jail.manual_ban(
            net("203.0.113.5/32"),
            Some(Duration::from_secs(10)),
            false,
            t(0),
            &mut fx,
        )
        .expect("ban");
        let saved = jail.snapshot();
        let json = serde_json::to_string(&saved).expect("json");
        assert!(json.contains(r#""host":"192.0.2.7""#), "{json}");
        let back: Saved = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, saved);

        // Restored 50 s later: the 10 s ban is over and dropped.
        let mut restored = jail_of(config());
        let mut fx = Effects::default();
        let mut active = restored.restore(back, t(50), &mut fx);
        assert_eq!(
            fx.changes,
            [Change::Unban {
                net: net("203.0.113.5/32")
            }]
        );
        active.sort_by_key(|b| b.net);
        let nets: Vec<IpNet> = active.iter().map(|b| b.net).collect();
        assert_eq!(
            nets,
            [
                net("192.0.2.7/32"),
                net("198.51.100.0/24"),
                net("2001:db8:1:2::/64")
            ]
        );
        assert_eq!(active[1].expires, t(100));
        assert_eq!(
            restored.bans(),
            jail.bans()
                .into_iter()
                .filter(|b| b.expires > t(50))
                .collect::<Vec<_>>()
        );
        // Failures of a restored ban are covered; history escalates.
        assert_eq!(
            fail(&mut restored, "198.51.100.77", 1, t(51)).0,
            Verdict::AlreadyBanned(net("198.51.100.0/24"))
        );
        restored.expire(t(3 * 24 * 3600), &mut Effects::default());
        let (_, fx) = fail(&mut restored, "192.0.2.7", 5, t(3 * 24 * 3600 + 1));
        let EngineEvent::Banned(info) = &fx.events[0] else {
            panic!("{:?}", fx.events)
        };
        assert_eq!(info.offense, 2);
    }

    #[test]
    fn restore_drops_what_ignoreip_now_protects_and_overlaps() {
        let saved = Saved {
            bans: ["192.0.2.7/32", "192.0.2.0/24", "10.0.0.1/32"]
                .into_iter()
                .map(|n| BanInfo {
                    net: net(n),
                    banned_at: t(0),
                    expires: t(1000),
                    failures: 5,
                    offense: 1,
                    manual: false,
                    kinds: Default::default(),
                    services: Default::default(),
                    accounts: vec![AttackerText::new("x"); 9],
                    account_under_attack: None,
                    origin: None,
                })
                .map(Arc::new)
                .collect(),
            offenders: Vec::new(),
            journal: 0,
            ..Saved::default()
        };
        let mut jail = jail_of(JailConfig {
            ignoreip: vec![net("10.0.0.0/8").into()],
            ..config()
        });
        let mut fx = Effects::default();
        let active = jail.restore(saved, t(1), &mut fx);
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].net, net("192.0.2.0/24"));
        assert_eq!(jail.bans()[0].accounts.len(), MAX_ACCOUNTS);
        // The ignored ban leaves the kernel; the covered one is still
        // banned by the wider ban.
        assert_eq!(
            fx.changes,
            [Change::Unban {
                net: net("10.0.0.1/32")
            }]
        );
        assert!(fx.events.is_empty());
    }

    #[test]
    fn restore_lifts_bans_that_are_over() {
        let ban = |n: &str, expires: i64| BanInfo {
            net: net(n),
            banned_at: t(0),
            expires: t(expires),
            failures: 5,
            offense: 1,
            manual: false,
            kinds: Default::default(),
            services: Default::default(),
            accounts: Vec::new(),
            account_under_attack: None,
            origin: None,
        };
        let saved = Saved {
            bans: [
                ban("192.0.2.1/32", 100),
                ban("192.0.2.2/32", 1000),
                ban("198.51.100.0/24", 100),
                ban("203.0.113.0/24", 100),
                ban("203.0.113.9/32", 1000),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
            offenders: Vec::new(),
            journal: 0,
            ..Saved::default()
        };
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        let active = jail.restore(saved, t(500), &mut fx);
        let nets: Vec<IpNet> = active.iter().map(|b| b.net).collect();
        assert_eq!(nets.len(), 2);
        assert!(nets.contains(&net("192.0.2.2/32")) && nets.contains(&net("203.0.113.9/32")));
        // An over /24 around a live ban is left to the kernel's timeout:
        // removing it means adding it for a second first.
        assert_eq!(
            fx.changes,
            [
                Change::Unban {
                    net: net("198.51.100.0/24")
                },
                Change::Unban {
                    net: net("192.0.2.1/32")
                },
            ]
        );
    }

    #[test]
    fn unbanning_what_astban_does_not_know_still_clears_the_firewall() {
        let mut jail = jail_of(config());
        jail.manual_ban(
            net("198.51.100.0/24"),
            None,
            false,
            t(0),
            &mut Effects::default(),
        )
        .expect("ban");
        let mut fx = Effects::default();
        assert_eq!(jail.unban(net("192.0.2.99/32"), &mut fx), None);
        assert_eq!(jail.unban(net("::ffff:192.0.2.98/128"), &mut fx), None);
        assert_eq!(
            fx.changes,
            [
                Change::Unban {
                    net: net("192.0.2.99/32")
                },
                Change::Unban {
                    net: net("192.0.2.98/32")
                }
            ]
        );
        assert!(fx.events.is_empty() && !fx.persist);
        // Inside or around a known ban: it keeps the addresses banned.
        let mut fx = Effects::default();
        assert_eq!(jail.unban(net("198.51.100.0/25"), &mut fx), None);
        assert_eq!(jail.unban(net("198.51.0.0/16"), &mut fx), None);
        assert!(fx.changes.is_empty(), "{:?}", fx.changes);
    }

    #[test]
    fn addresses_nobody_sends_from_are_never_banned() {
        let mut jail = jail_of(config());
        for host in ["224.0.0.1", "255.255.255.255", "0.0.0.0", "ff02::1", "::"] {
            let (verdict, fx) = fail(&mut jail, host, 10, t(0));
            assert_eq!(verdict, Verdict::NotUnicast, "{host}");
            assert!(fx.changes.is_empty(), "{host}");
        }
        assert!(jail.bans().is_empty());
        let mut fx = Effects::default();
        for host in ["0.0.0.0/32", "::/128", "239.1.2.3/32", "255.255.255.255/32"] {
            let refused = jail.manual_ban(net(host), None, true, t(0), &mut fx);
            assert!(
                matches!(refused, Err(BanError::NotUnicast { .. })),
                "{host}: {refused:?}"
            );
        }
    }

    #[test]
    fn manual_bans_refuse_zero_durations_and_huge_prefixes_and_ban_ipv6_by_prefix() {
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        let zero = jail.manual_ban(
            net("192.0.2.7/32"),
            Some(Duration::ZERO),
            true,
            t(0),
            &mut fx,
        );
        assert!(matches!(zero, Err(BanError::NoDuration)), "{zero:?}");
        for wide in ["2000::/3", "10.0.0.0/8", "192.0.0.0/15"] {
            let refused = jail.manual_ban(net(wide), None, false, t(0), &mut fx);
            assert!(
                matches!(refused, Err(BanError::TooWide { .. })),
                "{wide}: {refused:?}"
            );
        }
        assert!(fx.changes.is_empty());
        let forced = jail
            .manual_ban(net("2000::/3"), None, true, t(0), &mut fx)
            .expect("forced");
        assert_eq!(forced.net, net("2000::/3"));
        // One IPv6 address: banned as its /64, like an automatic ban.
        let mut jail = jail_of(config());
        let v6 = jail
            .manual_ban(net("2001:db8:1:2::7/128"), None, false, t(0), &mut fx)
            .expect("banned");
        assert_eq!(v6.net, net("2001:db8:1:2::/64"));
    }

    #[test]
    fn kernel_bans_the_state_lacks_are_adopted_unless_covered_ignored_or_over() {
        let mut jail = jail_of(JailConfig {
            ignoreip: vec![net("10.0.0.0/8").into()],
            ..config()
        });
        fail(&mut jail, "192.0.2.9", 5, t(0));
        let found = |n: &str, secs: i64| ActiveBan {
            net: net(n),
            expires: Timestamp::from_second(t(0).as_second() + secs).expect("ts"),
            fleet: false,
        };
        let mut fx = Effects::default();
        let adopted = jail.adopt(
            &[
                found("192.0.2.9/32", 100),   // already banned
                found("203.0.113.5/32", 600), // lost by the state
                found("10.1.2.3/32", 600),    // ignoreip now: lifted
                found("198.51.100.1/32", -1), // over
            ],
            t(0),
            &mut fx,
        );
        assert_eq!(adopted, 1);
        let ban = jail
            .bans()
            .into_iter()
            .find(|b| b.net == net("203.0.113.5/32"))
            .expect("adopted");
        assert_eq!(
            ban.expires,
            Timestamp::from_second(t(0).as_second() + 600).expect("ts")
        );
        assert!(
            fx.journal
                .iter()
                .any(|r| matches!(r, Record::Ban(b) if b.net == ban.net))
        );
        assert!(
            fx.changes
                .iter()
                .any(|c| matches!(c, Change::Unban { net: n } if *n == net("10.1.2.3/32")))
        );
    }

    #[test]
    fn a_ban_nft_refused_is_taken_back() {
        let mut jail = jail_of(config());
        fail(&mut jail, "192.0.2.9", 5, t(0));
        let mut fx = Effects::default();
        jail.refused(net("192.0.2.9/32"), &mut fx);
        assert!(jail.bans().is_empty());
        assert!(matches!(
            fx.events.as_slice(),
            [EngineEvent::Unbanned {
                reason: UnbanReason::Refused,
                ..
            }]
        ));
        assert!(matches!(fx.journal.as_slice(), [Record::Unban(_)]));
    }

    /// A wrong password for `account`, which Asterisk matched (PJSIP's
    /// `ChallengeResponseFailed` for an endpoint), or, with `matched`
    /// false, a name the attacker chose (`InvalidAccountID`).
    fn on_account(host: &str, account: &str, matched: bool, at: Timestamp) -> Report {
        Report::Failure(Failure {
            host: host.parse().expect("ip"),
            kind: if matched {
                FailureKind::ChallengeResponseFailed
            } else {
                FailureKind::InvalidAccountId
            },
            service: Service::Pjsip,
            account: Some(AttackerText::new(account)),
            account_matched: matched,
            session: None,
            time: at,
            source: Source::Ami,
        })
    }

    fn host_n(i: u32) -> String {
        format!("203.0.{}.{}", i / 250, i % 250 + 1)
    }

    #[test]
    fn a_distributed_attack_on_one_account_flags_it_and_bans_later_guessers_at_once() {
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        let mut banned = Vec::new();
        // 300 hosts, 2 guesses each, all below maxretry 5.
        for i in 0..300 {
            for _ in 0..2 {
                let at = t(i64::from(i) / 2);
                let report = on_account(&host_n(i), "300", true, at);
                if let Verdict::Banned(net) = jail.report(&report, at, &mut fx) {
                    banned.push(net);
                }
            }
        }
        // The 20th failure (the 10th host's 2nd) flags the account: from
        // the 11th host on, every guesser is banned at its first failure.
        let flagged: Vec<&EngineEvent> = fx
            .events
            .iter()
            .filter(|e| matches!(e, EngineEvent::AccountUnderAttack(_)))
            .collect();
        let [EngineEvent::AccountUnderAttack(attack)] = flagged.as_slice() else {
            panic!("{flagged:?}")
        };
        assert_eq!((attack.account.as_str(), attack.failures), ("300", 20));
        assert_eq!(banned.len(), 290);
        assert_eq!(
            banned[0],
            IpNet::from(host_n(10).parse::<IpAddr>().expect("ip"))
        );
        let bans = jail.bans();
        assert!(bans.iter().all(|b| b.failures == 1
            && b.account_under_attack.as_ref().map(AttackerText::as_str) == Some("300")));
        assert!(
            fx.journal
                .iter()
                .any(|r| matches!(r, Record::AccountUnderAttack(a) if a.account.as_str() == "300"))
        );
        let stats = jail.stats(FirewallStatus::default(), t(150));
        assert_eq!(stats.accounts_under_attack_count, 1);
        assert_eq!(stats.accounts_under_attack[0].bans, 290);
        assert_eq!(stats.accounts_under_attack[0].failures, 20 + 290);
        assert_eq!(
            (stats.bans_account_under_attack, stats.account_attacks_total),
            (290, 1)
        );
        // The 10 hosts that failed before the flag fail again: banned at
        // once too.
        assert_eq!(
            jail.report(
                &on_account(&host_n(0), "300", true, t(151)),
                t(151),
                &mut fx
            ),
            Verdict::Banned(IpNet::from(host_n(0).parse::<IpAddr>().expect("ip")))
        );
        // Another account is not under attack.
        assert!(matches!(
            jail.report(
                &on_account(&host_n(1), "301", true, t(151)),
                t(151),
                &mut fx
            ),
            Verdict::Counted { .. }
        ));

        // account_bantime after the last failure the attack is over.
        let mut fx = Effects::default();
        jail.housekeep(t(151 + 3600), &mut fx);
        assert!(
            fx.events.iter().any(
                |e| matches!(e, EngineEvent::AccountAttackOver(a) if a.account.as_str() == "300")
            ),
            "{:?}",
            fx.events
        );
        let stats = jail.stats(FirewallStatus::default(), t(151 + 3600));
        assert_eq!(stats.accounts_under_attack_count, 0);
        assert!(matches!(
            jail.report(
                &on_account("198.51.100.1", "300", true, t(3800)),
                t(3800),
                &mut fx
            ),
            Verdict::Counted { count: 1, .. }
        ));
    }

    #[test]
    fn attacker_chosen_names_are_never_counted_per_account() {
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        for i in 0..600 {
            let at = t(i64::from(i) / 4);
            // The same 600 failures, one InvalidAccountID name each, and
            // the name of a real account among them, written by the
            // attacker.
            let name = if i % 2 == 0 {
                "300".to_owned()
            } else {
                format!("u{i}")
            };
            jail.report(&on_account(&host_n(i / 2), &name, false, at), at, &mut fx);
        }
        assert!(fx.events.is_empty(), "{:?}", fx.events);
        assert!(jail.bans().is_empty());
        let stats = jail.stats(FirewallStatus::default(), t(150));
        assert_eq!(
            (stats.accounts_tracked, stats.accounts_under_attack_count),
            (0, 0)
        );
    }

    #[test]
    fn accounts_are_bounded_and_one_under_attack_is_never_pushed_out() {
        let mut jail = jail_of(JailConfig {
            account_maxretry: 3,
            max_tracked_accounts: 10,
            ..config()
        });
        let mut fx = Effects::default();
        for i in 0..3 {
            jail.report(&on_account(&host_n(i), "300", true, t(0)), t(0), &mut fx);
        }
        for i in 0..1000 {
            let account = format!("{}", 1000 + i);
            jail.report(
                &on_account(&host_n(i % 200 + 3), &account, true, t(1)),
                t(1),
                &mut fx,
            );
        }
        let stats = jail.stats(FirewallStatus::default(), t(1));
        assert!(stats.accounts_tracked <= 10, "{}", stats.accounts_tracked);
        assert!(stats.accounts_evicted >= 990, "{}", stats.accounts_evicted);
        assert_eq!(stats.accounts_under_attack[0].account.as_str(), "300");
        assert!(matches!(
            jail.report(
                &on_account("198.51.100.1", "300", true, t(2)),
                t(2),
                &mut fx
            ),
            Verdict::Banned(_)
        ));
    }

    #[test]
    fn account_counting_can_be_off_or_only_flag() {
        let mut jail = jail_of(JailConfig {
            account_maxretry: 0,
            ..config()
        });
        let mut fx = Effects::default();
        for i in 0..100 {
            jail.report(&on_account(&host_n(i), "300", true, t(0)), t(0), &mut fx);
        }
        assert!(fx.events.is_empty() && jail.bans().is_empty());

        let mut jail = jail_of(JailConfig {
            account_ban_at_once: false,
            ..config()
        });
        let mut fx = Effects::default();
        for i in 0..100 {
            jail.report(&on_account(&host_n(i), "300", true, t(0)), t(0), &mut fx);
        }
        assert!(
            fx.events
                .iter()
                .any(|e| matches!(e, EngineEvent::AccountUnderAttack(_)))
        );
        assert!(jail.bans().is_empty());
    }

    #[test]
    fn a_known_site_failing_on_one_account_is_spared_until_known_host_maxretry() {
        let office = "198.51.100.20";
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        jail.report(&success(office, t(0)), t(0), &mut fx);
        assert!(matches!(fx.journal.as_slice(), [Record::KnownSite(_)]));
        // One phone with a stale password: 10 failures on one account.
        let mut verdicts = Vec::new();
        for i in 0..10 {
            verdicts.push(jail.report(&on_account(office, "201", true, t(i)), t(i), &mut fx));
        }
        assert!(jail.bans().is_empty());
        assert_eq!(
            verdicts[4],
            Verdict::Spared {
                key: net("198.51.100.20/32"),
                count: 5
            }
        );
        let reported: Vec<&EngineEvent> = fx
            .events
            .iter()
            .filter(|e| matches!(e, EngineEvent::KnownSiteFailing(_)))
            .collect();
        let [EngineEvent::KnownSiteFailing(site)] = reported.as_slice() else {
            panic!("{reported:?}")
        };
        assert_eq!((site.account.as_str(), site.failures), ("201", 5));
        let stats = jail.stats(FirewallStatus::default(), t(10));
        assert_eq!((stats.known_sites, stats.known_sites_spared), (1, 1));
        assert_eq!(stats.known_sites_failing[0].failures, 10);
        // They count neither against the account nor to maxretry.
        assert_eq!(stats.accounts_tracked, 0);
        // known_host_maxretry (30) still bans.
        let mut last = Verdict::Unchanged;
        for i in 10..30 {
            last = jail.report(&on_account(office, "201", true, t(i)), t(i), &mut fx);
        }
        assert_eq!(last, Verdict::Banned(net("198.51.100.20/32")));
    }

    #[test]
    fn a_known_site_guessing_several_accounts_is_banned_at_maxretry() {
        let office = "198.51.100.20";
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        jail.report(&success(office, t(0)), t(0), &mut fx);
        let mut verdicts = Vec::new();
        for (i, account) in ["201", "201", "202", "203", "201"].iter().enumerate() {
            let at = t(i as i64 + 1);
            verdicts.push(jail.report(&on_account(office, account, true, at), at, &mut fx));
        }
        assert_eq!(verdicts[4], Verdict::Banned(net("198.51.100.20/32")));
        // Unknown accounts count as usual too.
        let other = "198.51.100.21";
        jail.report(&success(other, t(0)), t(0), &mut fx);
        let mut last = Verdict::Unchanged;
        for i in 0..5 {
            let name = if i == 0 { "201" } else { "nobody" };
            last = jail.report(&on_account(other, name, i == 0, t(i)), t(i), &mut fx);
        }
        assert_eq!(last, Verdict::Banned(net("198.51.100.21/32")));
        // A success without a password makes no known site.
        let mut jail = jail_of(config());
        let mut nopass = success(office, t(0));
        if let Report::Success(s) = &mut nopass {
            s.password = false;
        }
        jail.report(&nopass, t(0), &mut fx);
        assert_eq!(jail.stats(FirewallStatus::default(), t(0)).known_sites, 0);
    }

    #[test]
    fn a_known_site_is_not_banned_at_once_by_an_account_under_attack() {
        let office = "198.51.100.20";
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        jail.report(&success(office, t(0)), t(0), &mut fx);
        for i in 0..20 {
            jail.report(&on_account(&host_n(i), "201", true, t(1)), t(1), &mut fx);
        }
        let stats = jail.stats(FirewallStatus::default(), t(1));
        assert_eq!(stats.accounts_under_attack_count, 1);
        assert!(matches!(
            jail.report(&on_account(office, "201", true, t(2)), t(2), &mut fx),
            Verdict::Counted { count: 1, .. }
        ));
        // After known_host_window it is a stranger again.
        let later = t(7 * 24 * 3600 + 10);
        jail.housekeep(later, &mut fx);
        assert_eq!(jail.stats(FirewallStatus::default(), later).known_sites, 0);
    }

    #[test]
    fn known_sites_and_accounts_under_attack_survive_a_restart() {
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        jail.report(&success("198.51.100.20", t(0)), t(0), &mut fx);
        for i in 0..20 {
            jail.report(&on_account(&host_n(i), "300", true, t(1)), t(1), &mut fx);
        }
        let saved = jail.snapshot();
        let json = serde_json::to_string(&saved).expect("json");
        let back: Saved = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, saved);
        let mut restored = jail_of(config());
        restored.restore(back, t(100), &mut Effects::default());
        let stats = restored.stats(FirewallStatus::default(), t(100));
        assert_eq!(
            (stats.known_sites, stats.accounts_under_attack_count),
            (1, 1)
        );
        assert!(matches!(
            restored.report(
                &on_account("192.0.2.50", "300", true, t(101)),
                t(101),
                &mut fx
            ),
            Verdict::Banned(_)
        ));
        let mut verdict = Verdict::Unchanged;
        for i in 0..6 {
            verdict = restored.report(
                &on_account("198.51.100.20", "201", true, t(102 + i)),
                t(102 + i),
                &mut fx,
            );
        }
        assert!(
            matches!(verdict, Verdict::Spared { count: 6, .. }),
            "{verdict:?}"
        );
        // Over by the time of a later restart: not restored.
        let mut late = jail_of(config());
        late.restore(jail.snapshot(), t(2 * 3600), &mut Effects::default());
        assert_eq!(
            late.stats(FirewallStatus::default(), t(2 * 3600))
                .accounts_under_attack_count,
            0
        );
    }

    #[test]
    fn hosts_that_never_touch_a_matched_account_leave_both_tables_alone() {
        let mut jail = jail_of(config());
        for i in 0..1000 {
            fail(&mut jail, &host_n(i), 4, t(0));
        }
        let stats = jail.stats(FirewallStatus::default(), t(0));
        assert_eq!(
            (
                stats.tracked_hosts,
                stats.accounts_tracked,
                stats.known_sites
            ),
            (1000, 0, 0)
        );
    }

    fn pulled(n: &str, secs: i64, origin: &str) -> PulledBan {
        PulledBan {
            net: net(n),
            expires: t(secs),
            origin: FleetOrigin {
                origin: origin.into(),
                scenario: "crowdsecurity/ssh-bf".into(),
            },
        }
    }

    #[test]
    fn pulled_bans_are_kept_apart_ignoreip_wins_and_own_bans_are_not_doubled() {
        let mut jail = jail_of(JailConfig {
            ignoreip: vec!["10.0.0.0/8".parse().expect("net")],
            ..config()
        });
        fail(&mut jail, "192.0.2.7", 5, t(0));
        let mut fx = Effects::default();
        let new = [
            pulled("198.51.100.1/32", 600, "cscli"),
            // Its own decision coming back.
            pulled("192.0.2.7/32", 600, "astban"),
            // In ignoreip, or covering it.
            pulled("10.1.2.3/32", 600, "astban"),
            pulled("10.0.0.0/8", 600, "CAPI"),
            pulled("0.0.0.0/1", 600, "CAPI"),
            pulled("198.51.100.2/32", 0, "cscli"),
        ];
        let out = jail.pull(&new, &[], true, t(0), &mut fx);
        assert_eq!(
            (out.added, out.local, out.ignored, out.in_force),
            (1, 1, 3, 1)
        );
        assert_eq!(
            fx.changes,
            [Change::Ban {
                net: net("198.51.100.1/32"),
                expires: t(600),
                fleet: true
            }]
        );
        assert!(fx.events.is_empty());
        let ban = jail
            .bans()
            .into_iter()
            .find(|b| b.origin.is_some())
            .expect("pulled");
        assert_eq!(
            ban.origin.as_ref().map(|o| o.origin.as_str()),
            Some("cscli")
        );
        // A failure of a host the fleet bans is one of a banned network.
        let (verdict, _) = fail(&mut jail, "198.51.100.1", 1, t(1));
        assert_eq!(verdict, Verdict::AlreadyBanned(net("198.51.100.1/32")));

        // A delta deleting it lifts it; deleting a local ban does nothing.
        let mut fx = Effects::default();
        let out = jail.pull(
            &[],
            &[net("198.51.100.1/32"), net("192.0.2.7/32")],
            false,
            t(2),
            &mut fx,
        );
        assert_eq!((out.lifted, out.in_force), (1, 0));
        assert_eq!(
            fx.changes,
            [Change::Unban {
                net: net("198.51.100.1/32")
            }]
        );
        assert_eq!(jail.bans().len(), 1);
    }

    #[test]
    fn a_startup_listing_lifts_pulled_bans_it_lacks_and_a_pulled_ban_ends_on_time() {
        let mut jail = jail_of(config());
        let mut fx = Effects::default();
        jail.pull(
            &[
                pulled("198.51.100.1/32", 600, "cscli"),
                pulled("198.51.100.2/32", 60, "cscli"),
            ],
            &[],
            true,
            t(0),
            &mut fx,
        );
        let mut fx = Effects::default();
        let out = jail.pull(
            &[pulled("198.51.100.2/32", 60, "cscli")],
            &[],
            true,
            t(1),
            &mut fx,
        );
        assert_eq!((out.lifted, out.added, out.in_force), (1, 0, 1));
        let mut fx = Effects::default();
        jail.expire(t(60), &mut fx);
        assert!(jail.bans().is_empty());
        assert!(fx.events.is_empty() && fx.journal.is_empty());
        assert_eq!(
            fx.changes,
            [Change::Unban {
                net: net("198.51.100.2/32")
            }]
        );
        // The ban restores as pulled, in the fleet's set.
        let mut jail = jail_of(config());
        jail.pull(
            &[pulled("198.51.100.3/32", 600, "cscli")],
            &[],
            true,
            t(0),
            &mut Effects::default(),
        );
        let saved = jail.snapshot();
        let mut restored = jail_of(config());
        let active = restored.restore(saved, t(1), &mut Effects::default());
        assert!(active.iter().all(|b| b.fleet) && active.len() == 1);
    }
}

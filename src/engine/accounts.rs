//! Two bounded tables the jail consults besides its per-host counts:
//! failures per account Asterisk matched (a distributed attack on one
//! account), and known sites (hosts that logged in with a password: an
//! office behind one NAT). Pure like the jail: time comes in as Unix
//! seconds, events go out through the caller's list.
//!
//! Neither table is touched by a host that never fails on a matched
//! account and never logs in, so a flood of distinct scanners costs them
//! nothing; both are capped whatever the attack.

use std::collections::HashMap;

use ipnet::IpNet;
use jiff::Timestamp;

use super::state::{SavedAttack, SavedSite};
use super::{AccountAttack, EngineEvent, KnownSiteFailing, MAX_LISTED};
use crate::config::JailSettings;
use crate::failure::AttackerText;

/// A known site's success is saved again (a snapshot, never a journal
/// record) once it is this much older than the last one saved: phones
/// register every few minutes, and a write per REGISTER is not worth what
/// a crash would lose (at most this much of `known_host_window`).
const SITE_REFRESH: u32 = 3600;

/// Where an account stands after a failure on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AccountState {
    /// Not under attack (or not counted: account counting is off, or the
    /// table is full of accounts under attack).
    Calm,
    /// This failure put it under attack.
    Started(AccountAttack),
    /// It was under attack already.
    UnderAttack,
}

/// Failures per matched account, and the accounts under attack.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    map: HashMap<AttackerText, Account>,
    /// Accounts forgotten, or not counted, at `max_tracked_accounts`.
    pub(crate) evicted: u64,
    /// Accounts that came under attack since start.
    pub(crate) attacks_total: u64,
}

#[derive(Debug, Default)]
struct Account {
    /// Failures in the window while not under attack; fewer than
    /// `account_maxretry`.
    times: Vec<u32>,
    last_seen: u32,
    attack: Option<Attack>,
}

#[derive(Debug, Clone, Copy)]
struct Attack {
    since: u32,
    until: u32,
    failures: u32,
    bans: u32,
    ban_at_once: bool,
}

impl Account {
    /// Whether anything about it still matters at `now`.
    fn live(&self, now: u32, window_start: u32) -> bool {
        self.attack.is_some_and(|a| a.until > now) || self.times.iter().any(|&t| t > window_start)
    }
}

fn attack_info(account: &AttackerText, a: &Attack) -> AccountAttack {
    AccountAttack {
        account: account.clone(),
        since: at_second(a.since),
        until: at_second(a.until),
        failures: a.failures,
        bans: a.bans,
        ban_at_once: a.ban_at_once,
    }
}

impl Accounts {
    /// Counts a failure on `account` (one Asterisk matched) at `at`, seen
    /// at `now`, and says where the account stands. An attack found over
    /// on the way is reported through `events`.
    pub(crate) fn record(
        &mut self,
        account: &AttackerText,
        at: u32,
        now: u32,
        s: &JailSettings,
        events: &mut Vec<EngineEvent>,
    ) -> AccountState {
        if s.account_maxretry == 0 {
            return AccountState::Calm;
        }
        let window_start = now.saturating_sub(secs_u32(s.account_findtime));
        let bantime = secs_u32(s.account_bantime);
        if !self.map.contains_key(account) && self.map.len() >= s.max_tracked_accounts {
            self.make_room(now, window_start, s.max_tracked_accounts, events);
            if self.map.len() >= s.max_tracked_accounts {
                // Every slot is an account under attack: this one is not
                // counted rather than push one of them out.
                self.evicted += 1;
                return AccountState::Calm;
            }
        }
        let entry = self.map.entry(account.clone()).or_default();
        entry.last_seen = now;
        if let Some(attack) = &mut entry.attack {
            if attack.until > now {
                attack.failures = attack.failures.saturating_add(1);
                attack.until = attack.until.max(now.saturating_add(bantime));
                return AccountState::UnderAttack;
            }
            events.push(EngineEvent::AccountAttackOver(attack_info(account, attack)));
            entry.attack = None;
        }
        entry.times.retain(|&t| t > window_start);
        entry.times.push(at);
        let count = u32::try_from(entry.times.len()).unwrap_or(u32::MAX);
        if count < s.account_maxretry {
            return AccountState::Calm;
        }
        let attack = Attack {
            since: now,
            until: now.saturating_add(bantime),
            failures: count,
            bans: 0,
            ban_at_once: s.account_ban_at_once,
        };
        entry.times = Vec::new();
        entry.attack = Some(attack);
        self.attacks_total += 1;
        AccountState::Started(attack_info(account, &attack))
    }

    /// Counts a host banned at once because `account` is under attack.
    pub(crate) fn banned_for(&mut self, account: &AttackerText) {
        if let Some(attack) = self.map.get_mut(account).and_then(|a| a.attack.as_mut()) {
            attack.bans = attack.bans.saturating_add(1);
        }
    }

    /// Ends the attacks that are over (pushing
    /// [`EngineEvent::AccountAttackOver`]) and forgets accounts with no
    /// failure left in the window.
    pub(crate) fn housekeep(&mut self, now: u32, s: &JailSettings, events: &mut Vec<EngineEvent>) {
        let window_start = now.saturating_sub(secs_u32(s.account_findtime));
        self.end_attacks(now, events);
        self.map.retain(|_, a| a.live(now, window_start));
        if self.map.capacity() > 4 * self.map.len() {
            self.map.shrink_to_fit();
        }
    }

    fn end_attacks(&mut self, now: u32, events: &mut Vec<EngineEvent>) {
        for (name, account) in &mut self.map {
            if let Some(attack) = account.attack.filter(|a| a.until <= now) {
                events.push(EngineEvent::AccountAttackOver(attack_info(name, &attack)));
                account.attack = None;
            }
        }
    }

    /// Frees room for one more account: first those that no longer
    /// matter, then a tenth of the rest, the fewest recent failures first
    /// (the stalest among equals). An account under attack is never
    /// pushed out.
    fn make_room(
        &mut self,
        now: u32,
        window_start: u32,
        cap: usize,
        events: &mut Vec<EngineEvent>,
    ) {
        self.end_attacks(now, events);
        self.map.retain(|_, a| a.live(now, window_start));
        if self.map.len() < cap {
            return;
        }
        let mut ages: Vec<(usize, u32)> = self
            .map
            .values()
            .filter(|a| a.attack.is_none())
            .map(|a| (a.times.len(), a.last_seen))
            .collect();
        let count = (self.map.len() + 1 - cap).max(cap / 10).min(ages.len());
        if count == 0 {
            return;
        }
        let (_, &mut cutoff, _) = ages.select_nth_unstable(count - 1);
        let mut left = count;
        let before = self.map.len();
        self.map.retain(|_, a| {
            let evict = left > 0 && a.attack.is_none() && (a.times.len(), a.last_seen) <= cutoff;
            if evict {
                left -= 1;
            }
            !evict
        });
        let evicted = before - self.map.len();
        self.evicted += evicted as u64;
        tracing::warn!(
            evicted,
            cap,
            "more accounts failing than jail.max_tracked_accounts: forgot those with the fewest failures"
        );
    }

    /// Accounts counted.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The accounts under attack at `now`, oldest attack first; at most
    /// [`MAX_LISTED`], with how many there are.
    pub(crate) fn attacks(&self, now: u32) -> (Vec<AccountAttack>, usize) {
        let mut all: Vec<AccountAttack> = self
            .map
            .iter()
            .filter_map(|(name, a)| {
                a.attack
                    .filter(|a| a.until > now)
                    .map(|a| attack_info(name, &a))
            })
            .collect();
        let count = all.len();
        all.sort_by(|a, b| (a.since, &a.account).cmp(&(b.since, &b.account)));
        all.truncate(MAX_LISTED);
        (all, count)
    }

    /// The attacks to save.
    pub(crate) fn snapshot(&self) -> Vec<SavedAttack> {
        let mut saved: Vec<SavedAttack> = self
            .map
            .iter()
            .filter_map(|(name, a)| a.attack.map(|a| saved_attack(name, &a)))
            .collect();
        saved.sort_by(|a, b| a.account.cmp(&b.account));
        saved
    }

    /// Takes back saved attacks that are not over at `now`.
    pub(crate) fn restore(&mut self, saved: Vec<SavedAttack>, now: u32, s: &JailSettings) {
        for a in saved.into_iter().take(s.max_tracked_accounts) {
            let until = unix_u32(a.until.as_second());
            if until <= now {
                continue;
            }
            let attack = Attack {
                since: unix_u32(a.since.as_second()),
                until,
                failures: a.failures,
                bans: a.bans,
                ban_at_once: s.account_ban_at_once,
            };
            self.map.insert(
                a.account,
                Account {
                    times: Vec::new(),
                    last_seen: now,
                    attack: Some(attack),
                },
            );
        }
    }
}

/// What is saved of an attack.
pub(crate) fn saved_attack_of(info: &AccountAttack) -> SavedAttack {
    SavedAttack {
        account: info.account.clone(),
        since: info.since,
        until: info.until,
        failures: info.failures,
        bans: info.bans,
    }
}

fn saved_attack(account: &AttackerText, a: &Attack) -> SavedAttack {
    saved_attack_of(&attack_info(account, a))
}

/// What a known site's failures are, in the current window.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Episode {
    /// None in the window.
    Quiet,
    /// All on this one matched account.
    One {
        account: AttackerText,
        failures: u32,
        /// Reported as spared already.
        reported: bool,
    },
    /// On several accounts, on an account Asterisk did not match, or of a
    /// kind that names none: they count as anybody's.
    Spread,
}

#[derive(Debug)]
struct Site {
    last_success: u32,
    /// The `last_success` the state file holds (as far as the jail knows).
    saved_success: u32,
    episode: Episode,
}

/// How a known site's failure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SiteVerdict {
    /// Not a known site.
    Unknown,
    /// A known site whose failures are all on one matched account: banned
    /// at `known_host_maxretry`.
    OneAccount,
    /// A known site failing otherwise: banned at `maxretry`.
    Spread,
}

/// Hosts that logged in with a password within `known_host_window`.
#[derive(Debug, Default)]
pub(crate) struct KnownSites {
    map: HashMap<IpNet, Site>,
    /// Sites forgotten at `max_known_hosts`.
    pub(crate) evicted: u64,
    /// Times a site reached `maxretry` on one account and was spared.
    pub(crate) spared: u64,
}

/// What a success did to the known sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SiteChange {
    /// Nothing worth saving.
    None,
    /// A new known site: journal it.
    New,
    /// A known site's time moved far enough to be saved with the next
    /// snapshot.
    Refreshed,
}

impl KnownSites {
    /// Records a password login of `key` at `now`.
    pub(crate) fn success(&mut self, key: IpNet, now: u32, s: &JailSettings) -> SiteChange {
        if s.known_host_window == 0 {
            return SiteChange::None;
        }
        if let Some(site) = self.map.get_mut(&key) {
            site.last_success = site.last_success.max(now);
            if site.last_success.saturating_sub(site.saved_success) < SITE_REFRESH {
                return SiteChange::None;
            }
            site.saved_success = site.last_success;
            return SiteChange::Refreshed;
        }
        if self.map.len() >= s.max_known_hosts {
            self.make_room(now, s);
        }
        self.map.insert(
            key,
            Site {
                last_success: now,
                saved_success: now,
                episode: Episode::Quiet,
            },
        );
        SiteChange::New
    }

    /// How a failure of `key` on `account` (`None` unless Asterisk matched
    /// it) counts. `fresh`: the host has no other failure in the window,
    /// so what its earlier failures were no longer matters.
    pub(crate) fn failure(
        &mut self,
        key: IpNet,
        account: Option<&AttackerText>,
        fresh: bool,
        now: u32,
        s: &JailSettings,
    ) -> SiteVerdict {
        let window = secs_u32(s.known_host_window);
        let Some(site) = self.map.get_mut(&key) else {
            return SiteVerdict::Unknown;
        };
        if site.last_success.saturating_add(window) < now {
            return SiteVerdict::Unknown;
        }
        if fresh {
            site.episode = Episode::Quiet;
        }
        site.episode = match (&site.episode, account) {
            (Episode::Quiet, Some(account)) => Episode::One {
                account: account.clone(),
                failures: 1,
                reported: false,
            },
            (
                Episode::One {
                    account: one,
                    failures,
                    reported,
                },
                Some(account),
            ) if one == account => Episode::One {
                account: one.clone(),
                failures: failures.saturating_add(1),
                reported: *reported,
            },
            _ => Episode::Spread,
        };
        match site.episode {
            Episode::One { .. } => SiteVerdict::OneAccount,
            _ => SiteVerdict::Spread,
        }
    }

    /// Called when a known site failing on one account has reached
    /// `maxretry` and was not banned: the report, the first time in the
    /// episode.
    pub(crate) fn spare(&mut self, key: IpNet) -> Option<KnownSiteFailing> {
        let site = self.map.get_mut(&key)?;
        let Episode::One {
            account,
            failures,
            reported,
        } = &mut site.episode
        else {
            return None;
        };
        if *reported {
            return None;
        }
        *reported = true;
        self.spared += 1;
        Some(KnownSiteFailing {
            net: key,
            account: account.clone(),
            failures: *failures,
            last_success: at_second(site.last_success),
        })
    }

    /// The site's episode is over (it was banned, or its failures left the
    /// window).
    pub(crate) fn settle(&mut self, key: IpNet) {
        if let Some(site) = self.map.get_mut(&key) {
            site.episode = Episode::Quiet;
        }
    }

    /// Forgets sites past the window and ends episodes of hosts
    /// `failing` no longer reports failing.
    pub(crate) fn housekeep(
        &mut self,
        now: u32,
        s: &JailSettings,
        failing: impl Fn(IpNet) -> bool,
    ) {
        let window = secs_u32(s.known_host_window);
        self.map
            .retain(|_, site| site.last_success.saturating_add(window) >= now);
        for (&key, site) in &mut self.map {
            if site.episode != Episode::Quiet && !failing(key) {
                site.episode = Episode::Quiet;
            }
        }
        if self.map.capacity() > 4 * self.map.len() {
            self.map.shrink_to_fit();
        }
    }

    /// Frees room for one more site: those past the window, then a tenth,
    /// the longest silent first.
    fn make_room(&mut self, now: u32, s: &JailSettings) {
        let window = secs_u32(s.known_host_window);
        let before = self.map.len();
        self.map
            .retain(|_, site| site.last_success.saturating_add(window) >= now);
        let cap = s.max_known_hosts;
        if self.map.len() >= cap {
            let mut ages: Vec<u32> = self.map.values().map(|site| site.last_success).collect();
            let count = (self.map.len() + 1 - cap).max(cap / 10).min(ages.len());
            if count > 0 {
                let (_, &mut cutoff, _) = ages.select_nth_unstable(count - 1);
                let mut left = count;
                self.map.retain(|_, site| {
                    let evict = left > 0 && site.last_success <= cutoff;
                    if evict {
                        left -= 1;
                    }
                    !evict
                });
            }
            self.evicted += (before - self.map.len()) as u64;
            tracing::warn!(
                cap,
                "more known sites than jail.max_known_hosts: forgot the longest silent"
            );
        }
    }

    /// Known sites now.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Sites failing on one account, most failures first; at most
    /// [`MAX_LISTED`].
    pub(crate) fn failing(&self) -> Vec<KnownSiteFailing> {
        let mut all: Vec<KnownSiteFailing> = self
            .map
            .iter()
            .filter_map(|(&net, site)| match &site.episode {
                Episode::One {
                    account, failures, ..
                } => Some(KnownSiteFailing {
                    net,
                    account: account.clone(),
                    failures: *failures,
                    last_success: at_second(site.last_success),
                }),
                _ => None,
            })
            .collect();
        all.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.net.cmp(&b.net)));
        all.truncate(MAX_LISTED);
        all
    }

    /// The sites to save.
    pub(crate) fn snapshot(&self) -> Vec<SavedSite> {
        let mut saved: Vec<SavedSite> = self
            .map
            .iter()
            .map(|(&host, site)| SavedSite {
                host,
                last_success: at_second(site.last_success),
            })
            .collect();
        saved.sort_by_key(|s| s.host);
        saved
    }

    /// Takes back saved sites still within the window at `now`, the most
    /// recent first in case the cap was lowered.
    pub(crate) fn restore(&mut self, mut saved: Vec<SavedSite>, now: u32, s: &JailSettings) {
        let window = secs_u32(s.known_host_window);
        saved.sort_by_key(|site| std::cmp::Reverse(site.last_success));
        for site in saved.into_iter().take(s.max_known_hosts) {
            let last = unix_u32(site.last_success.as_second());
            if window == 0 || last.saturating_add(window) < now {
                continue;
            }
            self.map.insert(
                super::ignore::canonical_net(site.host),
                Site {
                    last_success: last,
                    saved_success: last,
                    episode: Episode::Quiet,
                },
            );
        }
    }
}

/// A configured span in seconds (bounded by the config to ten years) as
/// the tables' `u32`.
fn secs_u32(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

fn unix_u32(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

fn at_second(secs: u32) -> Timestamp {
    Timestamp::from_second(i64::from(secs)).unwrap_or(Timestamp::UNIX_EPOCH)
}

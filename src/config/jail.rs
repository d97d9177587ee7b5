//! `[jail]` checked once into the numbers the ban policy computes with.

use std::time::Duration;

use ipnet::IpNet;

use super::{Invalid, JailConfig};
use crate::units::{IgnoreEntry, MAX_DURATION, format_duration};

/// `[jail]`, validated: every number in range and in the unit the policy
/// computes with (seconds as `i64`, like `Timestamp::as_second`), so that
/// `engine::jail` neither checks nor clamps them. Only `TryFrom` makes one
/// (a private field keeps struct literals out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSettings {
    /// Failures within `findtime` that ban; at least 1.
    pub(crate) maxretry: u32,
    /// The counting window in seconds; at least 1.
    pub(crate) findtime: i64,
    /// A first ban's length in seconds; at least 1.
    pub(crate) bantime: i64,
    /// Escalation per repeat offense; at least 1 (1 = none).
    pub(crate) bantime_factor: u64,
    /// The longest escalated ban in seconds; at least `bantime`.
    pub(crate) bantime_max: i64,
    /// How long past bans are remembered, in seconds; 0 forgets at once.
    pub(crate) history: i64,
    /// Networks never banned (the host names of `jail.ignoreip` are not
    /// here: see [`super::NameSettings`]).
    pub(crate) ignoreip: Vec<IpNet>,
    /// Also never ban this host's own addresses.
    pub(crate) ignore_self: bool,
    /// IPv6 counting and ban prefix; 1 to 128.
    pub(crate) ipv6_prefix: u8,
    /// Most hosts tracked (and offenders remembered) at once; at least 1.
    pub(crate) max_tracked_hosts: usize,
    /// A successful login clears the host's count.
    pub(crate) reset_on_success: bool,
    /// Failures on one matched account that put it under attack; 0 is off.
    pub(crate) account_maxretry: u32,
    /// The account counting window in seconds; at least 1.
    pub(crate) account_findtime: i64,
    /// How long an account stays under attack, in seconds; at least 1.
    pub(crate) account_bantime: i64,
    /// Ban at the first failure on an account under attack.
    pub(crate) account_ban_at_once: bool,
    /// Most accounts counted at once; at least 1.
    pub(crate) max_tracked_accounts: usize,
    /// How long a password login makes a host a known site, in seconds;
    /// 0 is off.
    pub(crate) known_host_window: i64,
    /// Failures on one account that ban a known site; at least `maxretry`.
    pub(crate) known_host_maxretry: u32,
    /// Most known sites at once; at least 1.
    pub(crate) max_known_hosts: usize,
    _checked: (),
}

impl TryFrom<&JailConfig> for JailSettings {
    type Error = Invalid;

    fn try_from(j: &JailConfig) -> Result<JailSettings, Invalid> {
        let invalid = |key: &'static str, message: &str| {
            Err(Invalid {
                key,
                message: message.into(),
            })
        };
        if j.maxretry == 0 {
            return invalid("jail.maxretry", "must be at least 1");
        }
        if j.findtime.as_secs() == 0 {
            return invalid("jail.findtime", "must be at least 1s (e.g. \"10m\")");
        }
        if j.bantime.as_secs() == 0 {
            return invalid("jail.bantime", "must be at least 1s (e.g. \"3d\")");
        }
        if j.bantime_factor == 0 {
            return invalid(
                "jail.bantime_factor",
                "must be at least 1 (1 = no escalation)",
            );
        }
        if j.bantime_max < j.bantime {
            return invalid("jail.bantime_max", "must not be shorter than jail.bantime");
        }
        if !(1..=128).contains(&j.ipv6_prefix) {
            return invalid("jail.ipv6_prefix", "must be between 1 and 128 (default 64)");
        }
        if j.max_tracked_hosts == 0 {
            return invalid("jail.max_tracked_hosts", "must be at least 1");
        }
        if j.account_maxretry > 0 {
            if j.account_findtime.as_secs() == 0 {
                return invalid(
                    "jail.account_findtime",
                    "must be at least 1s (e.g. \"10m\"), or set jail.account_maxretry = 0 to count no accounts",
                );
            }
            if j.account_bantime.as_secs() == 0 {
                return invalid(
                    "jail.account_bantime",
                    "must be at least 1s (e.g. \"1h\"), or set jail.account_maxretry = 0 to count no accounts",
                );
            }
        }
        if j.max_tracked_accounts == 0 {
            return invalid("jail.max_tracked_accounts", "must be at least 1");
        }
        if j.known_host_maxretry < j.maxretry {
            return invalid(
                "jail.known_host_maxretry",
                "must not be lower than jail.maxretry (a known site is banned later, never sooner)",
            );
        }
        if j.max_known_hosts == 0 {
            return invalid("jail.max_known_hosts", "must be at least 1");
        }
        Ok(JailSettings {
            maxretry: j.maxretry,
            findtime: secs("jail.findtime", j.findtime)?,
            bantime: secs("jail.bantime", j.bantime)?,
            bantime_factor: j.bantime_factor.into(),
            bantime_max: secs("jail.bantime_max", j.bantime_max)?,
            history: secs("jail.history", j.history)?,
            // Host names are looked up by `crate::names`, which hands the
            // engine their addresses apart.
            ignoreip: j
                .ignoreip
                .iter()
                .filter_map(|e| match e {
                    IgnoreEntry::Net(net) => Some(*net),
                    IgnoreEntry::Name(_) => None,
                })
                .collect(),
            ignore_self: j.ignore_self,
            ipv6_prefix: j.ipv6_prefix,
            max_tracked_hosts: j.max_tracked_hosts,
            reset_on_success: j.reset_on_success,
            account_maxretry: j.account_maxretry,
            account_findtime: secs("jail.account_findtime", j.account_findtime)?,
            account_bantime: secs("jail.account_bantime", j.account_bantime)?,
            account_ban_at_once: j.account_ban_at_once,
            max_tracked_accounts: j.max_tracked_accounts,
            known_host_window: secs("jail.known_host_window", j.known_host_window)?,
            known_host_maxretry: j.known_host_maxretry,
            max_known_hosts: j.max_known_hosts,
            _checked: (),
        })
    }
}

impl Default for JailSettings {
    /// The built-in `[jail]`.
    fn default() -> JailSettings {
        JailSettings::try_from(&JailConfig::default()).expect("the default [jail] is valid")
    }
}

/// Whole seconds of `d`, which parsing already bounds by [`MAX_DURATION`];
/// a config built in code is held to the same bound here.
fn secs(key: &'static str, d: Duration) -> Result<i64, Invalid> {
    if d > MAX_DURATION {
        return Err(Invalid {
            key,
            message: format!("is too long (at most {})", format_duration(MAX_DURATION)),
        });
    }
    // MAX_DURATION is ten years of seconds: far inside i64.
    Ok(d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(j: JailConfig) -> Result<JailSettings, String> {
        JailSettings::try_from(&j).map_err(|e| e.to_string())
    }

    #[test]
    fn every_refusal_names_its_key() {
        let d = JailConfig::default;
        for (config, key) in [
            (
                JailConfig { maxretry: 0, ..d() },
                "jail.maxretry: must be at least 1",
            ),
            (
                JailConfig {
                    findtime: Duration::from_millis(900),
                    ..d()
                },
                "jail.findtime:",
            ),
            (
                JailConfig {
                    bantime: Duration::from_millis(500),
                    ..d()
                },
                "jail.bantime:",
            ),
            (
                JailConfig {
                    bantime_factor: 0,
                    ..d()
                },
                "jail.bantime_factor:",
            ),
            (
                JailConfig {
                    bantime_max: Duration::from_secs(60),
                    ..d()
                },
                "jail.bantime_max: must not be shorter than jail.bantime",
            ),
            (
                JailConfig {
                    ipv6_prefix: 0,
                    ..d()
                },
                "jail.ipv6_prefix:",
            ),
            (
                JailConfig {
                    ipv6_prefix: 129,
                    ..d()
                },
                "jail.ipv6_prefix:",
            ),
            (
                JailConfig {
                    max_tracked_hosts: 0,
                    ..d()
                },
                "jail.max_tracked_hosts:",
            ),
            (
                JailConfig {
                    history: Duration::MAX,
                    ..d()
                },
                "jail.history: is too long",
            ),
            (
                JailConfig {
                    account_findtime: Duration::ZERO,
                    ..d()
                },
                "jail.account_findtime:",
            ),
            (
                JailConfig {
                    account_bantime: Duration::from_millis(10),
                    ..d()
                },
                "jail.account_bantime:",
            ),
            (
                JailConfig {
                    max_tracked_accounts: 0,
                    ..d()
                },
                "jail.max_tracked_accounts:",
            ),
            (
                JailConfig {
                    known_host_maxretry: 4,
                    ..d()
                },
                "jail.known_host_maxretry: must not be lower than jail.maxretry",
            ),
            (
                JailConfig {
                    max_known_hosts: 0,
                    ..d()
                },
                "jail.max_known_hosts:",
            ),
            (
                JailConfig {
                    known_host_window: Duration::MAX,
                    ..d()
                },
                "jail.known_host_window: is too long",
            ),
        ] {
            let msg = check(config).expect_err(key);
            assert!(msg.starts_with(key), "{key}: {msg}");
        }
    }

    #[test]
    fn settings_are_in_the_policys_units() {
        let s = check(JailConfig {
            findtime: Duration::from_millis(1300),
            bantime: Duration::from_millis(1500),
            bantime_max: Duration::from_secs(3600),
            history: Duration::ZERO,
            ..JailConfig::default()
        })
        .expect("valid");
        assert_eq!((s.findtime, s.bantime, s.bantime_max), (1, 1, 3600));
        assert_eq!((s.maxretry, s.bantime_factor, s.history), (5, 2, 0));
        assert_eq!(
            JailSettings::default(),
            check(JailConfig::default()).expect("valid")
        );
        // Account counting off: its window is not looked at.
        let off = check(JailConfig {
            account_maxretry: 0,
            account_findtime: Duration::ZERO,
            ..JailConfig::default()
        })
        .expect("valid");
        assert_eq!(off.account_maxretry, 0);
    }
}

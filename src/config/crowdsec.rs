//! `[crowdsec]`: the fleet link to a CrowdSec Local API, off unless `url`
//! is set; checked once into [`CrowdsecSettings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Invalid, Secret};
use crate::units::duration;

/// `[crowdsec]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrowdsecConfig {
    /// The LAPI's base URL (`http://127.0.0.1:8080`); unset keeps the
    /// fleet link off.
    pub url: Option<String>,
    /// The machine astban pushes as (`cscli machines add`).
    pub machine_id: String,
    /// The machine's password. Prefer `password_file`.
    pub password: Secret,
    /// A file whose first line is the machine's password.
    pub password_file: Option<PathBuf>,
    /// The bouncer key astban pulls with (`cscli bouncers add`). Prefer
    /// `bouncer_key_file`.
    pub bouncer_key: Secret,
    /// A file whose first line is the bouncer key.
    pub bouncer_key_file: Option<PathBuf>,
    /// Push astban's automatic bans as alerts.
    pub push: bool,
    /// Push manual bans (`astban ban`) too.
    pub push_manual: bool,
    /// Enforce the LAPI's decisions.
    pub pull: bool,
    /// How often the decision stream is polled.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// The first part of pushed scenarios: `<prefix>/sip-bruteforce`.
    pub scenario_prefix: String,
    /// Only pull decisions of these origins (`cscli`, `crowdsec`,
    /// `astban`, `CAPI`, `lists`); empty pulls every origin.
    pub origins: Vec<String>,
    /// How long one LAPI request may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Most pushes kept while the LAPI is unreachable; the oldest are
    /// dropped beyond it.
    pub queue_max: usize,
}

impl Default for CrowdsecConfig {
    fn default() -> Self {
        CrowdsecConfig {
            url: None,
            machine_id: String::new(),
            password: Secret::default(),
            password_file: None,
            bouncer_key: Secret::default(),
            bouncer_key_file: None,
            push: true,
            push_manual: false,
            pull: true,
            poll_interval: Duration::from_secs(10),
            scenario_prefix: "astban".into(),
            origins: Vec::new(),
            timeout: Duration::from_secs(10),
            queue_max: 10_000,
        }
    }
}

/// `[crowdsec]`, validated. Only `TryFrom` makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrowdsecSettings {
    /// The LAPI's base URL, ending in `/`.
    pub(crate) url: reqwest::Url,
    /// Pushing, if on: the machine and its password.
    pub(crate) push: Option<(String, Secret)>,
    /// Push manual bans too.
    pub(crate) push_manual: bool,
    /// Pulling, if on: the bouncer key.
    pub(crate) pull: Option<Secret>,
    /// How often the stream is polled; at least 1s.
    pub(crate) poll_interval: Duration,
    /// Pushed scenarios are `<prefix>/<kind>`.
    pub(crate) scenario_prefix: String,
    /// Origins pulled; empty is all.
    pub(crate) origins: Vec<String>,
    /// Per-request timeout; at least 1s.
    pub(crate) timeout: Duration,
    /// Most queued pushes; at least 1.
    pub(crate) queue_max: usize,
    _checked: (),
}

impl CrowdsecSettings {
    /// The settings of `config`, or `None` while `url` is unset (the fleet
    /// link is off). A secret named by a `*_file` key counts as set: the
    /// file is read after the checks.
    pub fn from_config(config: &CrowdsecConfig) -> Result<Option<CrowdsecSettings>, Invalid> {
        if config.url.is_none() {
            return Ok(None);
        }
        CrowdsecSettings::try_from(config).map(Some)
    }
}

impl TryFrom<&CrowdsecConfig> for CrowdsecSettings {
    type Error = Invalid;

    fn try_from(c: &CrowdsecConfig) -> Result<CrowdsecSettings, Invalid> {
        let invalid = |key: &'static str, message: String| Err(Invalid { key, message });
        let Some(raw) = c.url.as_deref() else {
            return invalid("crowdsec.url", "must be set to use [crowdsec]".into());
        };
        let mut url = match reqwest::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => url,
            _ => {
                return invalid(
                    "crowdsec.url",
                    format!("{raw:?} is not an http(s) URL (e.g. \"http://127.0.0.1:8080\")"),
                );
            }
        };
        // The LAPI authenticates by token and key, never by URL; a user or
        // password here would only end up in the log and in status.
        if !url.username().is_empty() || url.password().is_some() {
            return invalid(
                "crowdsec.url",
                "must not carry a user or password; set crowdsec.machine_id and crowdsec.password_file".into(),
            );
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        if !c.push && !c.pull {
            return invalid(
                "crowdsec.push",
                "push and pull are both off; unset crowdsec.url to turn the fleet link off".into(),
            );
        }
        let push = if c.push {
            if c.machine_id.is_empty() {
                return invalid(
                    "crowdsec.machine_id",
                    "must name the machine added with `cscli machines add` (or set push = false)"
                        .into(),
                );
            }
            if c.password.is_empty() && c.password_file.is_none() {
                return invalid(
                    "crowdsec.password",
                    "is empty: set crowdsec.password_file (or password) to the machine's password, or push = false".into(),
                );
            }
            Some((c.machine_id.clone(), c.password.clone()))
        } else {
            None
        };
        let pull = if c.pull {
            if c.bouncer_key.is_empty() && c.bouncer_key_file.is_none() {
                return invalid(
                    "crowdsec.bouncer_key",
                    "is empty: set crowdsec.bouncer_key_file (or bouncer_key) to the key `cscli bouncers add` printed, or pull = false".into(),
                );
            }
            Some(c.bouncer_key.clone())
        } else {
            None
        };
        if c.poll_interval < Duration::from_secs(1) {
            return invalid(
                "crowdsec.poll_interval",
                "must be at least 1s (e.g. \"10s\")".into(),
            );
        }
        if c.timeout < Duration::from_secs(1) {
            return invalid(
                "crowdsec.timeout",
                "must be at least 1s (e.g. \"10s\")".into(),
            );
        }
        let prefix = c.scenario_prefix.trim_end_matches('/');
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_./".contains(ch))
        {
            return invalid(
                "crowdsec.scenario_prefix",
                format!(
                    "{:?} must be letters, digits and - _ . / (e.g. \"astban\")",
                    c.scenario_prefix
                ),
            );
        }
        if c.queue_max == 0 {
            return invalid("crowdsec.queue_max", "must be at least 1".into());
        }
        Ok(CrowdsecSettings {
            url,
            push,
            push_manual: c.push_manual,
            pull,
            poll_interval: c.poll_interval,
            scenario_prefix: prefix.to_owned(),
            origins: c.origins.clone(),
            timeout: c.timeout,
            queue_max: c.queue_max,
            _checked: (),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> CrowdsecConfig {
        CrowdsecConfig {
            url: Some("http://127.0.0.1:8080".into()),
            machine_id: "pbx1".into(),
            password: Secret::new("pw"),
            bouncer_key: Secret::new("key"),
            ..Default::default()
        }
    }

    #[test]
    fn off_without_url_and_defaults_push_and_pull_once_set() {
        assert_eq!(
            CrowdsecSettings::from_config(&CrowdsecConfig::default()),
            Ok(None)
        );
        let s = CrowdsecSettings::from_config(&on())
            .expect("valid")
            .expect("on");
        assert_eq!(s.url.as_str(), "http://127.0.0.1:8080/");
        assert!(s.push.is_some() && s.pull.is_some());
        assert_eq!(s.poll_interval, Duration::from_secs(10));
        assert_eq!(s.scenario_prefix, "astban");
    }

    #[test]
    fn errors_name_the_key_to_fix() {
        let key = |c: CrowdsecConfig| CrowdsecSettings::try_from(&c).expect_err("invalid").key;
        assert_eq!(
            key(CrowdsecConfig {
                url: Some("ftp://x".into()),
                ..on()
            }),
            "crowdsec.url"
        );
        for (url, prefix, bad) in [
            ("http://user:pw@127.0.0.1:8080", "astban", "crowdsec.url"),
            ("http://127.0.0.1:8080", "/", "crowdsec.scenario_prefix"),
        ] {
            let c = CrowdsecConfig {
                url: Some(url.into()),
                scenario_prefix: prefix.into(),
                ..on()
            };
            assert_eq!(key(c), bad, "{url} {prefix}");
        }
        assert_eq!(
            key(CrowdsecConfig {
                password: Secret::default(),
                ..on()
            }),
            "crowdsec.password"
        );
        assert_eq!(
            key(CrowdsecConfig {
                bouncer_key: Secret::default(),
                ..on()
            }),
            "crowdsec.bouncer_key"
        );
        assert_eq!(
            key(CrowdsecConfig {
                poll_interval: Duration::from_millis(10),
                ..on()
            }),
            "crowdsec.poll_interval"
        );
        // Pull only needs no machine.
        let pull_only = CrowdsecConfig {
            push: false,
            machine_id: String::new(),
            password: Secret::default(),
            ..on()
        };
        assert!(CrowdsecSettings::try_from(&pull_only).is_ok());
    }
}

//! The host names of `jail.ignoreip` and how they are looked up, checked
//! once for the resolver task (`crate::names`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{Invalid, JailConfig};
use crate::units::{HostName, IgnoreEntry};

/// Most host names in `jail.ignoreip`: each is a lookup per interval, and
/// a list longer than this is a list of networks written as names.
pub const MAX_NAMES: usize = 64;

/// Most DNS servers in `jail.ignore_names_servers` (the resolver tries
/// them in turn; more only slows a failure down).
const MAX_SERVERS: usize = 8;

/// The port of a server written without one.
const DNS_PORT: u16 = 53;

/// `jail.ignoreip`'s host names and `jail.ignore_names_*`, validated. Only
/// `TryFrom` makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameSettings {
    names: Vec<HostName>,
    servers: Vec<SocketAddr>,
    interval: Duration,
    grace: Duration,
}

impl NameSettings {
    /// The names, in config order, without duplicates.
    pub fn names(&self) -> &[HostName] {
        &self.names
    }

    /// The DNS servers to ask; empty means the system's resolv.conf.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The longest time between two lookups of a name.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long a name that stops resolving keeps its last addresses.
    pub fn grace(&self) -> Duration {
        self.grace
    }
}

impl TryFrom<&JailConfig> for NameSettings {
    type Error = Invalid;

    fn try_from(j: &JailConfig) -> Result<NameSettings, Invalid> {
        let invalid = |key: &'static str, message: String| Err(Invalid { key, message });
        let mut names: Vec<HostName> = Vec::new();
        for entry in &j.ignoreip {
            if let IgnoreEntry::Name(name) = entry
                && !names.contains(name)
            {
                names.push(name.clone());
            }
        }
        if names.len() > MAX_NAMES {
            return invalid(
                "jail.ignoreip",
                format!(
                    "lists {} host names; at most {MAX_NAMES} (write networks as CIDRs)",
                    names.len()
                ),
            );
        }
        if j.ignore_names_servers.len() > MAX_SERVERS {
            return invalid(
                "jail.ignore_names_servers",
                format!("at most {MAX_SERVERS} servers"),
            );
        }
        let mut servers = Vec::new();
        for s in &j.ignore_names_servers {
            let s = s.trim();
            let Some(server) = s.parse::<SocketAddr>().ok().or_else(|| {
                s.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, DNS_PORT))
            }) else {
                return invalid(
                    "jail.ignore_names_servers",
                    format!(
                        "{s:?} is not a server address (e.g. \"192.0.2.53\", \"127.0.0.1:5353\", \"[2001:db8::53]:53\")"
                    ),
                );
            };
            servers.push(server);
        }
        if j.ignore_names_interval < Duration::from_secs(1) {
            return invalid(
                "jail.ignore_names_interval",
                "must be at least 1s (e.g. \"5m\")".into(),
            );
        }
        Ok(NameSettings {
            names,
            servers,
            interval: Duration::from_secs(j.ignore_names_interval.as_secs()),
            grace: Duration::from_secs(j.ignore_names_grace.as_secs()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jail(ignoreip: &[&str], servers: &[&str]) -> JailConfig {
        JailConfig {
            ignoreip: ignoreip.iter().map(|s| s.parse().expect("entry")).collect(),
            ignore_names_servers: servers.iter().map(|s| s.to_string()).collect(),
            ..JailConfig::default()
        }
    }

    #[test]
    fn names_are_kept_apart_once_each_and_servers_get_a_port() {
        let s = NameSettings::try_from(&jail(
            &["10.0.0.0/8", "b.example", "a.example", "B.example."],
            &["127.0.0.1:5353", "192.0.2.53", "[2001:db8::53]:5300"],
        ))
        .expect("valid");
        let names: Vec<&str> = s.names().iter().map(HostName::as_str).collect();
        assert_eq!(names, ["b.example", "a.example"]);
        let servers: Vec<String> = s.servers().iter().map(|a| a.to_string()).collect();
        assert_eq!(
            servers,
            ["127.0.0.1:5353", "192.0.2.53:53", "[2001:db8::53]:5300"]
        );
        assert!(
            NameSettings::try_from(&JailConfig::default())
                .expect("valid")
                .names()
                .is_empty()
        );
    }

    #[test]
    fn every_refusal_names_its_key() {
        let many: Vec<String> = (0..=MAX_NAMES).map(|i| format!("h{i}.example")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let short = JailConfig {
            ignore_names_interval: Duration::from_millis(500),
            ..JailConfig::default()
        };
        for (config, key) in [
            (jail(&many, &[]), "jail.ignoreip:"),
            (jail(&[], &["dns.example"]), "jail.ignore_names_servers:"),
            (
                jail(&[], &["127.0.0.1:99999"]),
                "jail.ignore_names_servers:",
            ),
            (short, "jail.ignore_names_interval:"),
        ] {
            let msg = NameSettings::try_from(&config).expect_err(key).to_string();
            assert!(msg.starts_with(key), "{key}: {msg}");
        }
    }
}

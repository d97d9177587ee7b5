//! How astban reads and writes hosts and durations, the same way in the
//! config, on the control socket, in the state files and in mail: one
//! place, so that what one part prints another can always read back.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parses `"1.2.3.4"` as `1.2.3.4/32` and `"10.0.0.0/8"` as itself.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            format!(
                "{s:?} is not an IP address or CIDR (e.g. 192.0.2.7, 10.0.0.0/8, 2001:db8::/32)"
            )
        })
}

/// A fully qualified DNS host name (`sip.provider.example`), lowercase and
/// without the final dot: what `jail.ignoreip` accepts besides addresses.
///
/// It must have a dot and a top label that is not all digits, so that a
/// mistyped address (`192.0.2.300`) or a bare word is an error rather
/// than a name that resolves to something no one meant. It is always
/// looked up as written, never with the resolver's search domains.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(Arc<str>);

impl HostName {
    /// The name as written in the config, lowercase, without the final dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as shared text (cheap to clone).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HostName {
    type Err = String;

    fn from_str(s: &str) -> Result<HostName, String> {
        let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let bad = |why: &str| Err(format!("{s:?} is not a host name: {why}"));
        if name.is_empty() || name.len() > 253 {
            return bad("it must be 1 to 253 characters");
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return bad("write it fully qualified, with its domain (e.g. sip.provider.example)");
        }
        for label in &labels {
            let ok_chars = label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if label.is_empty()
                || label.len() > 63
                || !ok_chars
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return bad(
                    "each part between dots must be 1 to 63 of a-z 0-9 - (not at its ends)",
                );
            }
        }
        if labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return bad("it looks like a mistyped IP address");
        }
        Ok(HostName(name.into()))
    }
}

impl Serialize for HostName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HostName, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One `jail.ignoreip` entry: a network, or a host name whose addresses
/// are looked up (see `crate::names`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreEntry {
    /// An address (as a /32 or /128) or a CIDR.
    Net(IpNet),
    /// A host name.
    Name(HostName),
}

impl From<IpNet> for IgnoreEntry {
    fn from(net: IpNet) -> IgnoreEntry {
        IgnoreEntry::Net(net)
    }
}

impl From<IpAddr> for IgnoreEntry {
    fn from(addr: IpAddr) -> IgnoreEntry {
        IgnoreEntry::Net(addr.into())
    }
}

impl FromStr for IgnoreEntry {
    type Err = String;

    /// An address or CIDR if it reads as one ([`parse_net`]), else a
    /// [`HostName`]; the error shows both forms.
    fn from_str(s: &str) -> Result<IgnoreEntry, String> {
        if let Ok(net) = parse_net(s) {
            return Ok(IgnoreEntry::Net(net));
        }
        s.parse::<HostName>().map(IgnoreEntry::Name).map_err(|why| {
            format!(
                "{s:?} is neither an IP address or CIDR (e.g. 192.0.2.7, 10.0.0.0/8, 2001:db8::/32) nor a host name ({why})"
            )
        })
    }
}

impl fmt::Display for IgnoreEntry {
    /// A network as a CIDR (as `check-config` always printed it), a name
    /// as itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreEntry::Net(net) => write!(f, "{net}"),
            IgnoreEntry::Name(name) => write!(f, "{name}"),
        }
    }
}

impl Serialize for IgnoreEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IgnoreEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IgnoreEntry, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Formats a network the way [`parse_net`] reads it: `192.0.2.7` for a
/// single host, `10.0.0.0/8` for a network.
pub fn format_net(net: IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// Longest duration accepted anywhere: ten years is "forever" for a ban,
/// and keeps every deadline far from overflowing a clock.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses `"90"`, `"10m"`, `"3d"`, `"1h 30m"`, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| {
            format!("{s:?} is not a duration ({e}); use seconds or e.g. \"90s\", \"10m\", \"3d\"")
        })?,
    };
    check_duration(d)
}

fn check_duration(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "{} is too long (at most {})",
            format_duration(d),
            format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// Formats a duration the way the config accepts it (`3days 2h`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Serde for durations given as seconds or humantime strings.
pub mod duration {
    use super::{Duration, check_duration, format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Accepts an integer number of seconds or a string like `"10m"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => check_duration(Duration::from_secs(s)),
            Raw::Text(t) => parse_duration(&t),
        }
        .map_err(serde::de::Error::custom)
    }

    /// Writes the humantime form.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
}

/// Serde for one network: a single host as a bare address (`192.0.2.7`),
/// anything wider as a CIDR (`2001:db8::/64`).
pub mod host_format {
    use super::{IpNet, format_net, parse_net};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes [`format_net`]'s form.
    pub fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_net(*net))
    }

    /// Reads [`parse_net`]'s forms.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(d)?;
        parse_net(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_entries_are_networks_or_fully_qualified_names() {
        let entry = |s: &str| s.parse::<IgnoreEntry>();
        assert_eq!(
            entry("192.0.2.7"),
            Ok(IgnoreEntry::Net("192.0.2.7/32".parse().expect("net")))
        );
        assert_eq!(
            entry("Sip.Provider.Example.").map(|e| e.to_string()),
            Ok("sip.provider.example".into())
        );
        for bad in [
            "not-an-ip",
            "192.0.2.300",
            "10.0.0.0/33",
            "a..example",
            "-a.example",
            "a_b.example",
            "",
        ] {
            let msg = entry(bad).expect_err(bad);
            assert!(msg.contains("neither an IP address"), "{bad}: {msg}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(entry(&long).is_err());
    }
}

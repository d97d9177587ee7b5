//! How astban reads and writes hosts and durations, the same way in the
//! config, on the control socket, in the state files and in mail: one
//! place, so that what one part prints another can always read back.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

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

/// Serde for lists of addresses and CIDRs.
pub mod net_list {
    use super::{IpNet, parse_net};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads each entry with [`parse_net`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse_net(s).map_err(serde::de::Error::custom))
            .collect()
    }

    /// Writes each entry as a CIDR.
    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
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

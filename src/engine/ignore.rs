//! `ignoreip`: networks that are never banned, whatever else says so.

use std::fmt;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::units::HostName;

/// An address a host name of `jail.ignoreip` resolved to, as the resolver
/// task (`crate::names`) hands it to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIgnore {
    /// The name.
    pub name: HostName,
    /// One of its addresses (never a network: see `crate::names`).
    pub addr: IpAddr,
}

/// Why an address is never banned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IgnoreReason {
    /// It is in `jail.ignoreip`.
    Listed {
        /// The matching `ignoreip` entry.
        net: IpNet,
    },
    /// A host name in `jail.ignoreip` resolves to it.
    Named {
        /// The name.
        name: HostName,
        /// The address.
        addr: IpAddr,
    },
    /// It is one of this host's own addresses (`jail.ignore_self`).
    OwnAddress {
        /// The address.
        addr: IpAddr,
    },
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreReason::Listed { net } => write!(f, "in jail.ignoreip ({net})"),
            IgnoreReason::Named { name, addr } => {
                write!(f, "in jail.ignoreip as {name} ({addr})")
            }
            IgnoreReason::OwnAddress { addr } => write!(f, "this host's own address {addr}"),
        }
    }
}

/// The configured `ignoreip` networks, the addresses of its host names,
/// and this host's own addresses.
///
/// Lists are short (a handful of entries), so a linear scan beats any
/// index.
#[derive(Debug, Clone, Default)]
pub(crate) struct IgnoreList {
    listed: Vec<IpNet>,
    /// At most `crate::config::MAX_NAMES` names times `crate::names`'s
    /// cap per name: still short enough to scan.
    named: Vec<(IpAddr, HostName)>,
    own: Vec<IpAddr>,
}

impl IgnoreList {
    /// The configured networks (IPv4-mapped IPv6 entries count as IPv4).
    pub(crate) fn new(listed: &[IpNet]) -> IgnoreList {
        IgnoreList {
            listed: listed.iter().map(|&n| canonical_net(n)).collect(),
            named: Vec::new(),
            own: Vec::new(),
        }
    }

    /// Replaces the configured networks (a config reload).
    pub(crate) fn set_listed(&mut self, listed: &[IpNet]) {
        self.listed = listed.iter().map(|&n| canonical_net(n)).collect();
    }

    /// Replaces the addresses of `ignoreip`'s host names (a lookup
    /// changed them).
    pub(crate) fn set_named(&mut self, named: &[ResolvedIgnore]) {
        self.named = named
            .iter()
            .map(|r| (r.addr.to_canonical(), r.name.clone()))
            .collect();
    }

    /// Replaces this host's own addresses (interfaces come and go).
    pub(crate) fn set_own(&mut self, own: Vec<IpAddr>) {
        self.own = own.into_iter().map(|a| a.to_canonical()).collect();
    }

    /// Why `host` must not be banned, if it must not.
    pub(crate) fn host(&self, host: IpAddr) -> Option<IgnoreReason> {
        self.overlap(IpNet::from(host))
    }

    /// Why banning `net` would ban an ignored address, if it would: an
    /// ignored network inside `net` counts as much as one around it.
    pub(crate) fn overlap(&self, net: IpNet) -> Option<IgnoreReason> {
        let listed = self
            .listed
            .iter()
            .find(|l| l.contains(&net) || net.contains(*l))
            .map(|&net| IgnoreReason::Listed { net });
        let named = || {
            self.named
                .iter()
                .find(|(a, _)| net.contains(a))
                .map(|(addr, name)| IgnoreReason::Named {
                    name: name.clone(),
                    addr: *addr,
                })
        };
        listed.or_else(named).or_else(|| {
            self.own
                .iter()
                .find(|a| net.contains(*a))
                .map(|&addr| IgnoreReason::OwnAddress { addr })
        })
    }
}

/// This host's interface addresses, for `jail.ignore_self`.
pub(crate) fn own_addresses() -> io::Result<Vec<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?.iter().map(|i| i.ip()).collect())
}

/// `net` truncated to its prefix, with IPv4-mapped IPv6 (`::ffff:a.b.c.d`,
/// as Asterisk reports IPv4 peers on a dual-stack socket) turned into IPv4.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn listed_networks_match_v4_and_v6_hosts() {
        let list = IgnoreList::new(&[net("10.0.0.0/8"), net("2001:db8::/32"), net("192.0.2.7/32")]);
        assert_eq!(
            list.host(ip("10.200.3.4")),
            Some(IgnoreReason::Listed {
                net: net("10.0.0.0/8")
            })
        );
        assert!(list.host(ip("192.0.2.7")).is_some());
        assert!(list.host(ip("192.0.2.8")).is_none());
        assert!(list.host(ip("2001:db8:1::5")).is_some());
        assert!(list.host(ip("2001:db9::5")).is_none());
    }

    #[test]
    fn a_network_overlapping_an_ignored_one_is_ignored_both_ways() {
        let list = IgnoreList::new(&[net("192.0.2.7/32")]);
        assert!(list.overlap(net("192.0.2.0/24")).is_some());
        assert!(list.overlap(net("192.0.3.0/24")).is_none());
        let list = IgnoreList::new(&[net("10.0.0.0/8")]);
        assert!(list.overlap(net("10.1.0.0/16")).is_some());
    }

    #[test]
    fn own_addresses_are_ignored_and_mapped_addresses_are_ipv4() {
        let mut list = IgnoreList::new(&[]);
        list.set_own(vec![ip("198.51.100.4"), ip("2001:db8::1")]);
        assert_eq!(
            list.host(ip("198.51.100.4")),
            Some(IgnoreReason::OwnAddress {
                addr: ip("198.51.100.4")
            })
        );
        assert!(list.overlap(net("2001:db8::/64")).is_some());
        assert_eq!(
            canonical_net(net("::ffff:192.0.2.1/128")),
            net("192.0.2.1/32")
        );
        assert_eq!(
            canonical_net(net("::ffff:192.0.2.0/120")),
            net("192.0.2.0/24")
        );
        assert_eq!(canonical_net(net("2001:db8::1/64")), net("2001:db8::/64"));
    }

    #[test]
    fn addresses_of_names_are_ignored_and_say_which_name() {
        let mut list = IgnoreList::new(&[]);
        let name: HostName = "sip.provider.example".parse().expect("name");
        list.set_named(&[ResolvedIgnore {
            name: name.clone(),
            addr: ip("::ffff:198.51.100.9"),
        }]);
        let reason = list.host(ip("198.51.100.9")).expect("ignored");
        assert_eq!(
            reason.to_string(),
            "in jail.ignoreip as sip.provider.example (198.51.100.9)"
        );
        assert!(list.overlap(net("198.51.100.0/24")).is_some());
        assert!(list.host(ip("198.51.100.10")).is_none());
        list.set_named(&[]);
        assert!(list.host(ip("198.51.100.9")).is_none());
    }

    #[test]
    fn this_host_has_addresses() {
        let own = own_addresses().expect("getifaddrs");
        assert!(own.iter().any(|a| a.is_loopback()), "{own:?}");
    }
}

//! The nftables backend.
//!
//! astban owns one table, `inet <firewall.table>`, and touches nothing
//! else; `nft delete table inet astban` removes every trace of it:
//!
//! ```text
//! table inet astban {
//!     set v4    { type ipv4_addr; flags timeout; }            # single hosts
//!     set v4net { type ipv4_addr; flags interval,timeout; }   # networks
//!     set v6    { type ipv6_addr; flags timeout; }
//!     set v6net { type ipv6_addr; flags interval,timeout; }   # e.g. /64 prefixes
//!     set fleet_v4, fleet_v4net, fleet_v6, fleet_v6net        # pulled from CrowdSec
//!     chain input {
//!         type filter hook input priority -10; policy accept;
//!         [meta l4proto { tcp, udp } th dport { PORTS }] ip saddr @v4 drop
//!         ... one rule per set
//!     }
//! }
//! ```
//!
//! Single hosts live in hash sets because nft 1.0.6 reads back a whole
//! interval set on every change: one addition to an interval set of
//! 100,000 elements took 0.54 s here, against 5 ms for a hash set of the
//! same size. Interval sets hold only prefixes, which are few.
//!
//! JSON is built with the `nftables` crate's schema and fed to
//! `<firewall.nft...> -j -f -`. The process is run here rather than through
//! the crate's helper because the helper does not capture nft's stderr, and
//! nft's stderr is the only useful part of a failure.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use nftables::batch::Batch;
use nftables::expr::{
    Elem, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{ActiveBan, Change, Firewall, FirewallError, timeout_secs};
use crate::config::FirewallConfig;

/// The chain astban installs its rules in.
const CHAIN: &str = "input";

/// Most set-element operations sent to one nft process. A single
/// transaction of 100,000 additions works (0.5 s here); chunks keep the
/// JSON text and nft's memory modest and a failure's retry cheap.
const MAX_ELEMENTS_PER_TRANSACTION: usize = 30_000;

/// How long one nft run may take before it is killed.
const NFT_TIMEOUT: Duration = Duration::from_secs(60);

/// After this long without an answer from nft, astban says so.
const NFT_SLOW: Duration = Duration::from_secs(5);

/// Seconds before its end within which a ban missing from the kernel is
/// not missed.
const EXPIRY_SLACK: i64 = 2;

/// Longest part of nft's stderr kept in an error: nft echoes the failing
/// input, which for JSON can be a multi-megabyte line.
const MAX_STDERR: usize = 1024;

/// The sets, the address family their rule matches, and whether they hold
/// prefixes. Bans pulled from the fleet live in the `fleet_` sets, so that
/// `nft list table` tells them from astban's own.
const SETS: [(&str, &str, SetType, bool); 8] = [
    ("v4", "ip", SetType::Ipv4Addr, false),
    ("v4net", "ip", SetType::Ipv4Addr, true),
    ("v6", "ip6", SetType::Ipv6Addr, false),
    ("v6net", "ip6", SetType::Ipv6Addr, true),
    ("fleet_v4", "ip", SetType::Ipv4Addr, false),
    ("fleet_v4net", "ip", SetType::Ipv4Addr, true),
    ("fleet_v6", "ip6", SetType::Ipv6Addr, false),
    ("fleet_v6net", "ip6", SetType::Ipv6Addr, true),
];

/// The prefix of the sets of pulled bans.
const FLEET: &str = "fleet_";

/// Bans in an nftables table of astban's own.
#[derive(Debug, Clone)]
pub struct NftFirewall {
    program: String,
    args: Vec<String>,
    table: String,
    ports: Vec<u16>,
    priority: i32,
    retry_interval: Duration,
    check_interval: Duration,
}

impl NftFirewall {
    /// The backend described by `config` (`firewall.nft` is the command
    /// prefix, e.g. `["ip", "netns", "exec", "pbx", "nft"]`).
    pub fn new(config: &FirewallConfig) -> NftFirewall {
        let (program, args) = match config.nft.split_first() {
            Some((program, args)) => (program.clone(), args.to_vec()),
            None => ("nft".to_owned(), Vec::new()),
        };
        NftFirewall {
            program,
            args,
            table: config.table.clone(),
            ports: config.ports.clone(),
            priority: config.priority,
            retry_interval: config.retry_interval,
            check_interval: config.check_interval,
        }
    }

    /// The set a ban of `net` is stored in: hosts in the hash sets `v4` and
    /// `v6`, prefixes in the interval sets `v4net` and `v6net`; pulled
    /// bans in the same with `fleet_` in front.
    pub fn set_name(net: IpNet, fleet: bool) -> &'static str {
        let host = net.prefix_len() == net.max_prefix_len();
        match (net, host, fleet) {
            (IpNet::V4(_), true, false) => "v4",
            (IpNet::V4(_), false, false) => "v4net",
            (IpNet::V6(_), true, false) => "v6",
            (IpNet::V6(_), false, false) => "v6net",
            (IpNet::V4(_), true, true) => "fleet_v4",
            (IpNet::V4(_), false, true) => "fleet_v4net",
            (IpNet::V6(_), true, true) => "fleet_v6",
            (IpNet::V6(_), false, true) => "fleet_v6net",
        }
    }

    /// Table, sets and chain (`add` leaves existing ones alone), then the
    /// chain's rules replaced by flush + add in the same transaction, so a
    /// restart never duplicates them and set elements are never touched.
    fn structure(&self, batch: &mut Batch<'_>) {
        batch.add(NfListObject::Table(Table {
            family: NfFamily::INet,
            name: self.table.clone().into(),
            handle: None,
        }));
        for (name, _, set_type, interval) in SETS {
            let mut flags = HashSet::from([SetFlag::Timeout]);
            if interval {
                flags.insert(SetFlag::Interval);
            }
            batch.add(NfListObject::Set(Box::new(Set {
                family: NfFamily::INet,
                table: self.table.clone().into(),
                name: name.into(),
                handle: None,
                set_type: SetTypeValue::Single(set_type),
                policy: None,
                flags: Some(flags),
                elem: None,
                timeout: None,
                gc_interval: None,
                size: None,
                comment: None,
            })));
        }
        let chain = Chain {
            family: NfFamily::INet,
            table: self.table.clone().into(),
            name: CHAIN.into(),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Input),
            prio: Some(self.priority),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        };
        batch.add(NfListObject::Chain(chain.clone()));
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain)));
        for (set, proto, _, _) in SETS {
            let mut expr = self.port_matches();
            expr.push(Statement::Match(Match {
                left: payload(proto, "saddr"),
                right: Expression::String(format!("@{set}").into()),
                op: Operator::EQ,
            }));
            expr.push(Statement::Drop(None));
            batch.add(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: self.table.clone().into(),
                chain: CHAIN.into(),
                expr: expr.into(),
                handle: None,
                index: None,
                comment: None,
            }));
        }
    }

    /// `meta l4proto { tcp, udp } th dport { PORTS }`, or nothing when all
    /// ports are blocked.
    fn port_matches(&self) -> Vec<Statement<'static>> {
        if self.ports.is_empty() {
            return Vec::new();
        }
        let protocols = ["tcp", "udp"].map(|p| SetItem::Element(Expression::String(p.into())));
        let ports = self
            .ports
            .iter()
            .map(|&p| SetItem::Element(Expression::Number(p.into())));
        vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::L4proto,
                })),
                right: Expression::Named(NamedExpression::Set(protocols.into())),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: payload("th", "dport"),
                right: Expression::Named(NamedExpression::Set(ports.collect())),
                op: Operator::EQ,
            }),
        ]
    }

    /// Adds `cmd` for `elems` of one set to `batch`, if there are any.
    fn elements<'a>(
        &'a self,
        batch: &mut Batch<'a>,
        cmd: fn(NfListObject<'a>) -> NfCmd<'a>,
        set: &'a str,
        elems: Vec<Expression<'a>>,
    ) {
        if elems.is_empty() {
            return;
        }
        batch.add_cmd(cmd(NfListObject::Element(Element {
            family: NfFamily::INet,
            table: self.table.as_str().into(),
            name: set.into(),
            elem: elems.into(),
        })));
    }

    /// One transaction for `changes`, or `None` when nothing is left to do
    /// (only expired bans).
    ///
    /// An element to remove (unban, or replace) is first added with a 1 s
    /// timeout and then deleted, which succeeds whether or not the kernel
    /// still had it (nft 1.0.6 has no `destroy`). All removals precede all
    /// additions, so an interval set never sees two overlapping elements.
    fn changes_batch(&self, changes: &[Change], now: Timestamp) -> Option<Batch<'_>> {
        let mut batch = Batch::new();
        let mut any = false;
        for (set, _, _, _) in SETS {
            let mut removals = Vec::new();
            let mut additions = Vec::new();
            for change in changes {
                match *change {
                    Change::Ban {
                        net,
                        expires,
                        fleet,
                    } if NftFirewall::set_name(net, fleet) == set => {
                        additions.extend(timeout_secs(expires, now).map(|t| (net, t)))
                    }
                    Change::Replace {
                        net,
                        expires,
                        fleet,
                    } if NftFirewall::set_name(net, fleet) == set => {
                        removals.push(net);
                        additions.extend(timeout_secs(expires, now).map(|t| (net, t)));
                    }
                    // An unban clears both astban's set and the fleet's:
                    // the engine never holds a network in both.
                    Change::Unban { net }
                        if NftFirewall::set_name(net, false) == set
                            || NftFirewall::set_name(net, true) == set =>
                    {
                        removals.push(net)
                    }
                    _ => {}
                }
            }
            any |= !removals.is_empty() || !additions.is_empty();
            self.elements(
                &mut batch,
                NfCmd::Add,
                set,
                removals.iter().map(|&n| element(n, 1)).collect(),
            );
            self.elements(
                &mut batch,
                NfCmd::Delete,
                set,
                removals.iter().map(|&n| value(n)).collect(),
            );
            self.elements(
                &mut batch,
                NfCmd::Add,
                set,
                additions.iter().map(|&(n, t)| element(n, t)).collect(),
            );
        }
        any.then_some(batch)
    }

    /// Runs `batch` as one transaction: `<program> <args...> -j -f -` with
    /// the batch on stdin.
    async fn run(&self, batch: Batch<'_>) -> Result<(), FirewallError> {
        let payload = serde_json::to_vec(&batch.to_nftables())?;
        self.nft(&["-j", "-f", "-"], payload).await.map(drop)
    }

    /// `<program> <args...> -j <command...>`, parsed off the runtime's
    /// thread: with many bans it is megabytes (6.8 MB and 60 ms to parse
    /// for 100,000 here).
    async fn list(&self, command: &[&str]) -> Result<Listing, FirewallError> {
        let mut args = vec!["-j"];
        args.extend_from_slice(command);
        let out = self.nft(&args, Vec::new()).await?;
        match tokio::task::spawn_blocking(move || serde_json::from_slice(&out)).await {
            Ok(parsed) => parsed.map_err(|e| FirewallError::Listing(e.to_string())),
            Err(e) => Err(FirewallError::Listing(format!("the parser stopped: {e}"))),
        }
    }

    /// Runs `<program> <args...> <nft_args...>` with `input` on stdin and
    /// returns what it wrote to stdout.
    async fn nft(&self, nft_args: &[&str], input: Vec<u8>) -> Result<Vec<u8>, FirewallError> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .args(nft_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => FirewallError::NotInstalled {
                    program: self.program.clone(),
                },
                _ => FirewallError::Spawn {
                    program: self.program.clone(),
                    source,
                },
            })?;
        let stdin = child.stdin.take();
        // Fed concurrently with waiting, so nft can never block on a full
        // stderr pipe while astban blocks on a full stdin pipe.
        let feed = async move {
            match stdin {
                Some(mut stdin) => stdin.write_all(&input).await,
                None => Ok(()),
            }
        };
        let run = tokio::time::timeout(NFT_TIMEOUT, async {
            tokio::join!(feed, child.wait_with_output())
        });
        tokio::pin!(run);
        // Said once, early: an nft that hangs (a wedged netlink socket, a
        // kernel busy with a huge set) is worth knowing before it times out.
        let slow = tokio::time::sleep(NFT_SLOW);
        tokio::pin!(slow);
        let finished = tokio::select! {
            finished = &mut run => finished,
            () = &mut slow => {
                tracing::warn!(
                    "{} has not answered for {}s; still waiting (at most {}s)",
                    self.program,
                    NFT_SLOW.as_secs(),
                    NFT_TIMEOUT.as_secs()
                );
                run.await
            }
        };
        let (fed, output) = finished.map_err(|_| FirewallError::Timeout(NFT_TIMEOUT))?;
        let spawn_error = |source| FirewallError::Spawn {
            program: self.program.clone(),
            source,
        };
        let output = output.map_err(spawn_error)?;
        if output.status.success() {
            return fed.map(|()| output.stdout).map_err(spawn_error);
        }
        let stderr = shorten(String::from_utf8_lossy(&output.stderr).trim());
        if stderr.contains("Operation not permitted") {
            Err(FirewallError::NoPermission { stderr })
        } else {
            Err(FirewallError::Rejected {
                status: output.status,
                stderr,
            })
        }
    }
}

impl Firewall for NftFirewall {
    async fn reconcile(&mut self, bans: &[ActiveBan], now: Timestamp) -> Result<(), FirewallError> {
        let mut batch = Batch::new();
        self.structure(&mut batch);
        self.run(batch).await?;
        // Plain `add`: an element the kernel already has keeps its timeout.
        let live: Vec<(IpNet, bool, u32)> = bans
            .iter()
            .filter_map(|b| timeout_secs(b.expires, now).map(|t| (b.net, b.fleet, t)))
            .collect();
        for chunk in live.chunks(MAX_ELEMENTS_PER_TRANSACTION) {
            let mut batch = Batch::new();
            for (set, _, _, _) in SETS {
                let elems = chunk
                    .iter()
                    .filter(|(net, fleet, _)| NftFirewall::set_name(*net, *fleet) == set)
                    .map(|&(net, _, t)| element(net, t))
                    .collect();
                self.elements(&mut batch, NfCmd::Add, set, elems);
            }
            self.run(batch).await?;
        }
        Ok(())
    }

    async fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<(), FirewallError> {
        // A replacement costs three element operations.
        for chunk in changes.chunks(MAX_ELEMENTS_PER_TRANSACTION / 3) {
            if let Some(batch) = self.changes_batch(chunk, now) {
                self.run(batch).await?;
            }
        }
        Ok(())
    }

    /// Two listings: the ruleset without set elements first (5 ms
    /// whatever the sets hold, since nft 1.0.6 then skips reading
    /// elements), then, only if there are bans to look for, astban's table
    /// with its elements (1.1 s, 130 MB for nft and 13 MB for astban with
    /// 100,000 bans here).
    async fn verify(&mut self, bans: &[ActiveBan], now: Timestamp) -> Result<(), FirewallError> {
        let ruleset = self.list(&["-t", "list", "ruleset"]).await?;
        if let Some(gap) = ruleset.structure_gap(&self.table) {
            return Err(FirewallError::Missing(gap));
        }
        // A ban about to end may already be gone: its timeout was rounded
        // to whole seconds.
        let soon = now.as_second().saturating_add(EXPIRY_SLACK);
        let mut live = bans.iter().filter(|b| b.expires.as_second() > soon);
        let Some(first) = live.next() else {
            return Ok(());
        };
        let table = ["list", "table", "inet", &self.table];
        let present = self.list(&table).await?.elements(&self.table);
        let mut missing: Vec<IpNet> = std::iter::once(first)
            .chain(live)
            .map(|b| b.net)
            .filter(|net| !present.contains(net))
            .collect();
        if !missing.is_empty() {
            // A listing made while the kernel grows a set's hash table
            // (right after many additions) can skip elements: 5-8% of
            // 100,000 here. Only what a second listing lacks too is gone.
            let again = self.list(&table).await?.elements(&self.table);
            missing.retain(|net| !again.contains(net));
        }
        match missing.as_slice() {
            [] => Ok(()),
            [net] => Err(FirewallError::Missing(format!(
                "the ban of {net} is gone from table inet {}",
                self.table
            ))),
            [net, ..] => Err(FirewallError::Missing(format!(
                "{} bans ({net} and others) are gone from table inet {}",
                missing.len(),
                self.table
            ))),
        }
    }

    async fn existing(&mut self, now: Timestamp) -> Result<Vec<ActiveBan>, FirewallError> {
        let table = ["list", "table", "inet", &self.table];
        let listing = match self.list(&table).await {
            Ok(listing) => listing,
            // No table yet: a first start.
            Err(FirewallError::Rejected { stderr, .. }) if stderr.contains("No such file") => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        Ok(listing
            .elements_left(&self.table)
            .into_iter()
            .filter_map(|(net, fleet, left)| {
                let left = i64::try_from(left?).ok()?;
                Some(ActiveBan {
                    net,
                    expires: Timestamp::from_second(now.as_second().saturating_add(left)).ok()?,
                    fleet,
                })
            })
            .collect())
    }

    fn retry_interval(&self) -> Duration {
        self.retry_interval
    }

    fn check_interval(&self) -> Duration {
        self.check_interval
    }
}

/// The part of a `nft -j list` answer that `verify` reads; serde skips
/// the rest (rule expressions, handles, timeouts) without keeping it, so a
/// listing of 100,000 elements costs little more than the elements.
#[derive(Debug, Deserialize)]
struct Listing {
    /// One `{kind: object}` map per table, set, chain, rule...
    nftables: Vec<HashMap<String, Listed>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Listed {
    family: String,
    name: String,
    table: String,
    chain: String,
    elem: Vec<ListedElement>,
}

/// A set element as nft lists it: `"192.0.2.7"`, `{"prefix": {...}}`, or
/// either wrapped in `{"elem": {"val": ..., "timeout": ...}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ListedElement {
    Addr(IpAddr),
    Prefix {
        prefix: ListedPrefix,
    },
    Wrapped {
        elem: Box<ListedValue>,
    },
    /// A range or anything else astban never adds.
    Other(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct ListedValue {
    val: ListedElement,
    /// Seconds the element has left (timeout sets only).
    #[serde(default)]
    expires: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ListedPrefix {
    addr: IpAddr,
    len: u8,
}

impl ListedElement {
    fn net(&self) -> Option<IpNet> {
        match self {
            ListedElement::Addr(addr) => Some(IpNet::from(*addr)),
            ListedElement::Prefix { prefix } => IpNet::new(prefix.addr, prefix.len).ok(),
            ListedElement::Wrapped { elem } => elem.val.net(),
            ListedElement::Other(_) => None,
        }
    }
}

impl Listing {
    /// The `(kind, object)` pairs that belong to `inet <table>`.
    fn of<'a>(&'a self, table: &'a str) -> impl Iterator<Item = (&'a str, &'a Listed)> {
        self.nftables
            .iter()
            .flatten()
            .filter(move |(kind, o)| {
                let owner = if *kind == "table" { &o.name } else { &o.table };
                o.family == "inet" && owner == table
            })
            .map(|(kind, o)| (kind.as_str(), o))
    }

    /// What of astban's table, sets, chain and rules is missing, if
    /// anything.
    fn structure_gap(&self, table: &str) -> Option<String> {
        let has = |kind: &str, name: &str| self.of(table).any(|(k, o)| k == kind && o.name == name);
        if !self.of(table).any(|(kind, _)| kind == "table") {
            return Some(format!("table inet {table} is gone from the kernel"));
        }
        if let Some((set, ..)) = SETS.iter().find(|(set, ..)| !has("set", set)) {
            return Some(format!("set {set} of table inet {table} is gone"));
        }
        let rules = self
            .of(table)
            .filter(|(kind, o)| *kind == "rule" && o.chain == CHAIN)
            .count();
        if !has("chain", CHAIN) || rules < SETS.len() {
            return Some(format!("the rules of chain inet {table} {CHAIN} are gone"));
        }
        None
    }

    /// The elements of astban's sets, whether in a fleet set, with the
    /// seconds they have left (`None` if nft did not say).
    fn elements_left(&self, table: &str) -> Vec<(IpNet, bool, Option<u64>)> {
        self.of(table)
            .filter(|(kind, set)| *kind == "set" && SETS.iter().any(|(name, ..)| set.name == *name))
            .flat_map(|(_, set)| {
                let fleet = set.name.starts_with(FLEET);
                set.elem.iter().map(move |e| (fleet, e))
            })
            .filter_map(|(fleet, e)| match e {
                ListedElement::Wrapped { elem } => Some((elem.val.net()?, fleet, elem.expires)),
                other => Some((other.net()?, fleet, None)),
            })
            .collect()
    }

    /// The elements of astban's sets. Timeouts do not matter: astban only
    /// asks whether a ban is there.
    fn elements(&self, table: &str) -> HashSet<IpNet> {
        self.of(table)
            .filter(|(kind, set)| *kind == "set" && SETS.iter().any(|(name, ..)| set.name == *name))
            .flat_map(|(_, set)| &set.elem)
            .filter_map(ListedElement::net)
            .collect()
    }
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

/// A set element's value: an address, or a prefix.
fn value(net: IpNet) -> Expression<'static> {
    let addr = Expression::String(net.network().to_string().into());
    if net.prefix_len() == net.max_prefix_len() {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(addr),
            len: net.prefix_len().into(),
        }))
    }
}

/// A set element with its own timeout in seconds.
fn element(net: IpNet, timeout: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Elem(Elem {
        val: Box::new(value(net)),
        timeout: Some(timeout),
        expires: None,
        comment: None,
        counter: None,
    }))
}

fn shorten(s: &str) -> String {
    if s.len() <= MAX_STDERR {
        return s.to_owned();
    }
    let mut end = MAX_STDERR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn firewall(ports: Vec<u16>) -> NftFirewall {
        NftFirewall::new(&FirewallConfig {
            ports,
            table: "t".into(),
            ..FirewallConfig::default()
        })
    }

    fn json(batch: Batch<'_>) -> serde_json::Value {
        serde_json::to_value(batch.to_nftables()).expect("serialize")
    }

    #[test]
    fn hosts_go_to_hash_sets_and_prefixes_to_interval_sets() {
        let set = |s: &str| NftFirewall::set_name(s.parse().expect("net"), false);
        let fleet = |s: &str| NftFirewall::set_name(s.parse().expect("net"), true);
        assert_eq!(fleet("192.0.2.7/32"), "fleet_v4");
        assert_eq!(fleet("2001:db8::/64"), "fleet_v6net");
        assert_eq!(set("192.0.2.7/32"), "v4");
        assert_eq!(set("192.0.2.0/24"), "v4net");
        assert_eq!(set("2001:db8::1/128"), "v6");
        assert_eq!(set("2001:db8::/64"), "v6net");
    }

    #[test]
    fn structure_flushes_the_chain_before_adding_rules() {
        let fw = firewall(Vec::new());
        let mut batch = Batch::new();
        fw.structure(&mut batch);
        let text = json(batch).to_string();
        let flush = text.find(r#""flush""#).expect("flush");
        let first_rule = text.find(r#""rule""#).expect("rule");
        assert!(flush < first_rule);
        assert_eq!(text.matches(r#""rule""#).count(), SETS.len());
        assert!(text.contains(r#""@v6net""#));
        assert!(!text.contains("dport"), "all ports blocked: {text}");
    }

    #[test]
    fn listed_ports_limit_every_rule() {
        let text = {
            let fw = firewall(vec![5060, 5061]);
            let mut batch = Batch::new();
            fw.structure(&mut batch);
            json(batch).to_string()
        };
        assert_eq!(text.matches(r#""dport""#).count(), SETS.len());
        assert!(text.contains("[5060,5061]"), "{text}");
    }

    /// `(command, elements)` of each command in the batch for `changes`.
    fn commands(fw: &NftFirewall, changes: &[Change], now: Timestamp) -> Vec<(String, String)> {
        let value = json(fw.changes_batch(changes, now).expect("work to do"));
        value["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .map(|c| {
                let (cmd, obj) = c.as_object().expect("object").iter().next().expect("cmd");
                (cmd.clone(), obj["element"]["elem"].to_string())
            })
            .collect()
    }

    #[test]
    fn a_fresh_ban_is_one_addition_and_removals_come_first() {
        let fw = firewall(Vec::new());
        let now = Timestamp::from_second(1_000).expect("ts");
        let changes = [
            Change::Ban {
                net: "10.0.0.0/24".parse().expect("net"),
                expires: Timestamp::from_second(1_600).expect("ts"),
                fleet: false,
            },
            Change::Unban {
                net: "10.0.0.0/25".parse().expect("net"),
            },
            Change::Ban {
                net: "10.9.9.9/32".parse().expect("net"),
                expires: now,
                fleet: false,
            },
        ];
        let cmds = commands(&fw, &changes, now);
        // The expired ban of 10.9.9.9 is skipped entirely.
        assert!(!format!("{cmds:?}").contains("10.9.9.9"));
        let names: Vec<&str> = cmds.iter().map(|(c, _)| c.as_str()).collect();
        // The unban clears v4net and fleet_v4net; sets go in SETS order.
        assert_eq!(names, ["add", "delete", "add", "add", "delete"]);
        assert!(cmds[0].1.contains(r#""len":25"#) && cmds[0].1.contains(r#""timeout":1"#));
        assert!(cmds[1].1.contains(r#""len":25"#));
        assert!(cmds[2].1.contains(r#""len":24"#) && cmds[2].1.contains(r#""timeout":600"#));
        assert!(cmds[4].1.contains(r#""len":25"#));
        assert!(fw.changes_batch(&changes[2..], now).is_none());
    }

    #[test]
    fn a_replacement_removes_the_old_element_first() {
        let fw = firewall(Vec::new());
        let now = Timestamp::from_second(1_000).expect("ts");
        let net = "192.0.2.7/32".parse().expect("net");
        let cmds = commands(
            &fw,
            &[Change::Replace {
                net,
                expires: Timestamp::from_second(1_060).expect("ts"),
                fleet: false,
            }],
            now,
        );
        let names: Vec<&str> = cmds.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["add", "delete", "add"]);
        assert_eq!(cmds[1].1, r#"["192.0.2.7"]"#);
        assert!(cmds[2].1.contains(r#""timeout":60"#));
        // Replaced by a ban that is already over: only removed.
        let cmds = commands(
            &fw,
            &[Change::Replace {
                net,
                expires: now,
                fleet: false,
            }],
            now,
        );
        assert_eq!(cmds.len(), 2);
        // A pulled ban goes to the fleet's set.
        let value = json(
            fw.changes_batch(
                &[Change::Ban {
                    net,
                    expires: Timestamp::from_second(1_060).expect("ts"),
                    fleet: true,
                }],
                now,
            )
            .expect("work"),
        );
        assert_eq!(value["nftables"][0]["add"]["element"]["name"], "fleet_v4");
    }

    /// A stand-in for nft: `sh -c SCRIPT` (nft's own arguments follow and
    /// are ignored).
    fn fake_nft(script: &str) -> NftFirewall {
        NftFirewall::new(&FirewallConfig {
            nft: vec!["sh".into(), "-c".into(), script.into(), "fake-nft".into()],
            ..FirewallConfig::default()
        })
    }

    fn one_ban() -> [Change; 1] {
        [Change::Ban {
            net: "192.0.2.7/32".parse().expect("net"),
            expires: Timestamp::now() + jiff::SignedDuration::from_secs(60),
            fleet: false,
        }]
    }

    #[tokio::test]
    async fn nft_gets_the_whole_transaction_on_stdin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("payload.json");
        let mut fw = fake_nft(&format!("cat > '{}'", out.display()));
        fw.apply(&one_ban(), Timestamp::now())
            .await
            .expect("applied");
        let payload: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).expect("payload")).expect("json");
        assert_eq!(
            payload["nftables"][0]["add"]["element"]["elem"][0]["elem"]["val"],
            "192.0.2.7"
        );
    }

    #[tokio::test]
    async fn failures_say_what_to_fix() {
        let mut fw =
            fake_nft("echo 'Error: Could not process rule: Operation not permitted' >&2; exit 1");
        let error = fw
            .apply(&one_ban(), Timestamp::now())
            .await
            .expect_err("refused");
        assert!(
            matches!(error, FirewallError::NoPermission { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("CAP_NET_ADMIN"), "{error}");

        let mut fw = fake_nft(
            "cat >/dev/null; echo 'Error: interval overlaps with an existing one' >&2; exit 1",
        );
        let error = fw
            .reconcile(&[], Timestamp::now())
            .await
            .expect_err("rejected");
        assert!(matches!(error, FirewallError::Rejected { .. }), "{error:?}");
        assert!(error.to_string().contains("interval overlaps"), "{error}");

        let mut fw = NftFirewall::new(&FirewallConfig {
            nft: vec!["/nonexistent/nft".into()],
            ..FirewallConfig::default()
        });
        let error = fw
            .apply(&one_ban(), Timestamp::now())
            .await
            .expect_err("missing");
        assert!(
            matches!(error, FirewallError::NotInstalled { .. }),
            "{error:?}"
        );
    }

    /// `nft -j -t list ruleset` as nft 1.0.6 writes it (handles left out),
    /// with another table that has a chain of the same name.
    fn ruleset(astban_sets: &[&str], astban_rules: usize) -> serde_json::Value {
        let mut objects = vec![
            serde_json::json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
            serde_json::json!({"table": {"family": "inet", "name": "other"}}),
            serde_json::json!({"set": {"family": "inet", "table": "other", "name": "v4", "type": "ipv4_addr"}}),
            serde_json::json!({"chain": {"family": "inet", "table": "other", "name": "input", "hook": "input"}}),
            serde_json::json!({"table": {"family": "ip", "name": "t"}}),
            serde_json::json!({"table": {"family": "inet", "name": "t"}}),
        ];
        for set in astban_sets {
            objects.push(serde_json::json!({"set": {"family": "inet", "table": "t", "name": set, "flags": ["timeout"]}}));
        }
        objects.push(serde_json::json!({"chain": {"family": "inet", "table": "t", "name": "input", "type": "filter", "hook": "input", "prio": -10}}));
        for set in SETS.iter().take(astban_rules).map(|(set, ..)| set) {
            objects.push(serde_json::json!({"rule": {"family": "inet", "table": "t", "chain": "input", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": format!("@{set}")}},
                {"drop": null}
            ]}}));
        }
        serde_json::json!({ "nftables": objects })
    }

    fn gap(listing: serde_json::Value, table: &str) -> Option<String> {
        serde_json::from_value::<Listing>(listing)
            .expect("listing")
            .structure_gap(table)
    }

    #[test]
    fn a_complete_table_has_no_gap_and_losses_are_named() {
        let all = SETS.map(|(set, ..)| set);
        assert_eq!(gap(ruleset(&all, SETS.len()), "t"), None);
        assert_eq!(
            gap(ruleset(&all, SETS.len()), "astban").as_deref(),
            Some("table inet astban is gone from the kernel")
        );
        assert_eq!(
            gap(ruleset(&["v4", "v4net", "v6"], 4), "t").as_deref(),
            Some("set v6net of table inet t is gone")
        );
        assert_eq!(
            gap(ruleset(&all, 0), "t").as_deref(),
            Some("the rules of chain inet t input are gone")
        );
        assert!(gap(serde_json::json!({"nftables": []}), "t").is_some());
    }

    #[test]
    fn elements_are_read_as_nft_lists_them() {
        // `nft -j list table inet t`, trimmed.
        let listing = serde_json::json!({"nftables": [
            {"table": {"family": "inet", "name": "t"}},
            {"set": {"family": "inet", "table": "t", "name": "v4", "elem": [
                {"elem": {"val": "192.0.2.7", "timeout": 3600, "expires": 3599}},
                "192.0.2.8"
            ]}},
            {"set": {"family": "inet", "table": "t", "name": "v4net", "elem": [
                {"elem": {"val": {"prefix": {"addr": "198.51.100.0", "len": 24}}, "timeout": 3600}},
                {"elem": {"val": {"range": ["10.0.0.1", "10.0.0.9"]}}}
            ]}},
            {"set": {"family": "inet", "table": "t", "name": "v6net", "elem": [
                {"elem": {"val": {"prefix": {"addr": "2001:db8:1:2::", "len": 64}}, "timeout": 60}}
            ]}},
            {"set": {"family": "inet", "table": "t", "name": "other", "elem": ["203.0.113.1"]}},
            {"set": {"family": "inet", "table": "u", "name": "v4", "elem": ["203.0.113.2"]}}
        ]});
        let listing: Listing = serde_json::from_value(listing).expect("listing");
        let mut found: Vec<String> = listing
            .elements("t")
            .into_iter()
            .map(|n| n.to_string())
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                "192.0.2.7/32",
                "192.0.2.8/32",
                "198.51.100.0/24",
                "2001:db8:1:2::/64"
            ]
        );
    }

    /// A stand-in for nft that answers `list ruleset` from `ruleset.json`
    /// and `list table` from `table-N.json` for its N-th call, or
    /// `table.json` when there is none.
    fn listing_nft(dir: &Path) -> NftFirewall {
        let script = format!(
            r#"cd '{}' || exit 1
case "$*" in
  *ruleset*) cat ruleset.json ;;
  *) n=$(($(cat calls 2>/dev/null || echo 0) + 1)); echo $n > calls
     cat table-$n.json 2>/dev/null || cat table.json ;;
esac"#,
            dir.display()
        );
        NftFirewall::new(&FirewallConfig {
            nft: vec!["sh".into(), "-c".into(), script, "fake-nft".into()],
            table: "t".into(),
            ..FirewallConfig::default()
        })
    }

    fn table_listing(hosts: &[&str]) -> String {
        serde_json::json!({"nftables": [
            {"table": {"family": "inet", "name": "t"}},
            {"set": {"family": "inet", "table": "t", "name": "v4", "elem":
                hosts.iter().map(|h| serde_json::json!({"elem": {"val": h, "timeout": 60}})).collect::<Vec<_>>()
            }}
        ]})
        .to_string()
    }

    #[tokio::test]
    async fn verify_finds_a_missing_table_and_missing_bans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write listing")
        };
        let mut fw = listing_nft(dir.path());
        let now = Timestamp::now();
        let ban = |host: &str, secs: i64| ActiveBan {
            net: format!("{host}/32").parse().expect("net"),
            expires: now + jiff::SignedDuration::from_secs(secs),
            fleet: false,
        };
        write(
            "ruleset.json",
            ruleset(&SETS.map(|(set, ..)| set), SETS.len()).to_string(),
        );
        fw.verify(&[], now)
            .await
            .expect("complete, no bans to look for");

        // The first listing of the table skipped .8 (as one made while
        // the kernel resizes the set can); the second has it.
        write("table-1.json", table_listing(&["192.0.2.7"]));
        write("table.json", table_listing(&["192.0.2.7", "192.0.2.8"]));
        let bans = [ban("192.0.2.7", 60), ban("192.0.2.8", 60)];
        fw.verify(&bans, now).await.expect("all there");

        // Gone for good; a ban about to end is not missed.
        write("table.json", table_listing(&["192.0.2.7"]));
        let bans = [
            ban("192.0.2.7", 60),
            ban("192.0.2.8", 60),
            ban("192.0.2.9", 1),
        ];
        let error = fw.verify(&bans, now).await.expect_err("one is gone");
        assert!(matches!(error, FirewallError::Missing(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("the ban of 192.0.2.8/32 is gone from table inet t"),
            "{error}"
        );

        write("ruleset.json", ruleset(&[], 0).to_string());
        let error = fw.verify(&bans, now).await.expect_err("no table");
        assert!(error.to_string().contains("flush ruleset"), "{error}");

        write("ruleset.json", "Error: not JSON".into());
        let error = fw.verify(&bans, now).await.expect_err("unreadable");
        assert!(matches!(error, FirewallError::Listing(_)), "{error:?}");
    }

    #[test]
    fn long_stderr_is_shortened_on_a_char_boundary() {
        let s = "é".repeat(MAX_STDERR);
        let short = shorten(&s);
        assert!(short.len() <= MAX_STDERR + 3);
        assert!(short.ends_with("..."));
    }
}

//! The control socket's answers as text for humans: what `astban status`,
//! `bans` and `ban` print without `--json`.

use std::fmt::Write as _;

use super::protocol::{InputStatus, ReloadReport, Status};
use crate::config::InputMode;
use crate::engine::BanInfo;
use crate::names::NameStatus;
use crate::units::format_net;

/// `astban status`.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "astban {} running since {}", s.version, s.started);
    let _ = writeln!(out, "input mode: {}", mode(s.input_mode));
    input(&mut out, "ami", &s.ami);
    input(&mut out, "log", &s.log);
    let read = &s.log_read;
    let _ = writeln!(
        out,
        "log read: {} lines, {} failures found, {} folded into an attempt, {} too long",
        read.lines, read.failures, read.folded, read.too_long
    );
    let _ = writeln!(
        out,
        "log lines not attributed: {} ambiguous, {} cut short, {} continuation, {} unparsable",
        read.ambiguous, read.cut, read.continuation, read.unparsable
    );
    let c = &s.counted;
    let _ = writeln!(
        out,
        "counted: ami {} ({} not counted), log {} ({} not counted)",
        c.ami_counted, c.ami_dropped, c.log_counted, c.log_dropped
    );
    let e = &s.engine;
    let _ = writeln!(
        out,
        "engine: {} active bans, {} hosts tracked, {} offenders remembered, {} failures counted, {} bans since start",
        e.active_bans, e.tracked_hosts, e.offenders, e.failures_counted, e.bans_total
    );
    let _ = writeln!(
        out,
        "engine dropped: {} failures older than findtime, {} hosts evicted at jail.max_tracked_hosts",
        e.failures_stale, e.hosts_evicted
    );
    let _ = writeln!(
        out,
        "accounts: {} counted, {} under attack ({} since start), {} evicted at jail.max_tracked_accounts, {} hosts banned at once for it",
        e.accounts_tracked,
        e.accounts_under_attack_count,
        e.account_attacks_total,
        e.accounts_evicted,
        e.bans_account_under_attack
    );
    for a in &e.accounts_under_attack {
        let _ = writeln!(
            out,
            "  account {} UNDER ATTACK since {} until {}: {} failures, {} hosts banned at their first",
            a.account, a.since, a.until, a.failures, a.bans
        );
    }
    if e.accounts_under_attack_count > e.accounts_under_attack.len() {
        let _ = writeln!(
            out,
            "  ... and {} more",
            e.accounts_under_attack_count - e.accounts_under_attack.len()
        );
    }
    let _ = writeln!(
        out,
        "known sites: {} (logged in with a password within jail.known_host_window), {} spared at maxretry, {} evicted",
        e.known_sites, e.known_sites_spared, e.known_sites_evicted
    );
    for site in &e.known_sites_failing {
        let _ = writeln!(
            out,
            "  {} account {} failing from a known site: {} failures (last login {})",
            format_net(site.net),
            site.account,
            site.failures,
            site.last_success
        );
    }
    match &e.state_error {
        None => out.push_str("state: saved\n"),
        Some(error) => {
            let _ = writeln!(out, "state: NOT DURABLE ({error})");
        }
    }
    let fw = &e.firewall;
    let health = if fw.healthy { "healthy" } else { "FAILING" };
    let _ = write!(out, "firewall: {health}, {} changes pending", fw.pending);
    if let Some(error) = &fw.last_error {
        let _ = write!(out, "; last error: {error}");
    }
    if let Some(refused) = &fw.last_refused {
        let _ = write!(
            out,
            "; {} change(s) refused by nft, last {refused}",
            fw.refused
        );
    }
    out.push('\n');
    for name in &s.ignore_names {
        ignore_name(&mut out, name);
    }
    if let Some(fleet) = &s.fleet {
        self::fleet(&mut out, fleet);
    }
    if let Some(reload) = &s.reload {
        self::reload(&mut out, reload);
    }
    out
}

fn mode(mode: InputMode) -> &'static str {
    match mode {
        InputMode::Auto => "auto",
        InputMode::Ami => "ami",
        InputMode::Log => "log",
    }
}

fn input(out: &mut String, name: &str, i: &InputStatus) {
    let _ = write!(out, "  {name:<4} {}", i.state.as_str());
    if let Some(since) = i.since {
        let _ = write!(out, " since {since}");
    }
    if let Some(detail) = &i.detail {
        let _ = write!(out, " ({detail})");
    }
    let counting = if i.counting {
        "counting"
    } else {
        "not counting"
    };
    let _ = writeln!(out, ", {counting}");
}

/// One host name of `jail.ignoreip`: what it stands for now, and loudly
/// when it does not resolve.
fn ignore_name(out: &mut String, n: &NameStatus) {
    let addrs: Vec<String> = n.addresses.iter().map(ToString::to_string).collect();
    let addrs = match addrs.as_slice() {
        [] => "no addresses".to_owned(),
        list => list.join(", "),
    };
    let _ = write!(out, "ignoreip name {}: {addrs}", n.name);
    match (&n.failing_since, &n.error) {
        (Some(since), error) => {
            let _ = write!(out, "; NOT RESOLVING since {since}");
            if let Some(error) = error {
                let _ = write!(out, " ({error})");
            }
            if !n.addresses.is_empty() {
                out.push_str(", last addresses kept for jail.ignore_names_grace");
            }
        }
        (None, _) => match n.resolved_at {
            Some(at) => {
                let _ = write!(out, " (resolved {at})");
            }
            None => out.push_str(" (not looked up yet)"),
        },
    }
    if n.dropped > 0 {
        let _ = write!(out, "; {} addresses of its answer left out", n.dropped);
    }
    out.push('\n');
}

fn fleet(out: &mut String, f: &crate::crowdsec::FleetStatus) {
    let link = match (f.up, f.since) {
        (_, None) => "connecting".to_owned(),
        (true, Some(since)) => format!("up since {since}"),
        (false, Some(since)) => format!("DOWN since {since}"),
    };
    let _ = write!(out, "crowdsec: {} {link}", f.url);
    if let Some(error) = &f.error {
        let _ = write!(out, " ({error})");
    }
    let never = |t: Option<jiff::Timestamp>| t.map_or("never".to_owned(), |t| t.to_string());
    if f.push {
        let _ = write!(
            out,
            "; last push {}, {} queued",
            never(f.last_push),
            f.queued
        );
        if f.dropped > 0 {
            let _ = write!(out, " ({} dropped at the bound)", f.dropped);
        }
    }
    if f.pull {
        let _ = write!(
            out,
            "; last pull {}, {} pulled bans",
            never(f.last_pull),
            f.pulled_bans
        );
    }
    out.push('\n');
}

fn reload(out: &mut String, r: &ReloadReport) {
    let _ = write!(out, "last reload: {}", r.at);
    if let Some(why) = &r.refused {
        let _ = writeln!(out, ", REFUSED ({why}); the running config was kept");
        return;
    }
    let list = |items: &[String]| match items {
        [] => "nothing".to_owned(),
        items => items.join(", "),
    };
    let _ = write!(out, ", applied {}", list(&r.applied));
    if !r.restart_needed.is_empty() {
        let _ = write!(out, "; RESTART NEEDED for {}", r.restart_needed.join(", "));
    }
    out.push('\n');
}

/// `astban bans`: a header and one ban per line.
pub fn bans(bans: &[BanInfo]) -> String {
    if bans.is_empty() {
        return "no active bans\n".into();
    }
    let mut out = format!(
        "{:<40} {:<26} {:>8}  accounts\n",
        "host", "expires", "failures"
    );
    for ban in bans {
        let _ = writeln!(out, "{}", ban_line(ban));
    }
    out
}

/// One ban as a line: host, expiry, failures, accounts tried, and the
/// account under attack that made it, if one did.
pub fn ban_line(ban: &BanInfo) -> String {
    let accounts: Vec<&str> = ban.accounts.iter().map(|a| a.as_str()).collect();
    let mut line = format!(
        "{:<40} {:<26} {:>8}  {}",
        format_net(ban.net),
        ban.expires.to_string(),
        ban.failures,
        accounts.join(", ")
    );
    if let Some(account) = &ban.account_under_attack {
        let _ = write!(line, " (banned at once: account {account} under attack)");
    }
    if let Some(origin) = &ban.origin {
        let _ = write!(line, " (from {origin})");
    }
    line
}

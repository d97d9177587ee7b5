//! What astban's mails say. Pure formatting, no sending.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;

use crate::units::format_duration;

/// One ban, as a mail reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanNotice {
    /// The banned address or network.
    pub host: String,
    /// Failures that led to the ban (0 for a manual ban).
    pub failures: u32,
    /// Accounts the attacker tried (already sanitised, bounded).
    pub accounts: Vec<String>,
    /// Kinds of failure seen (`invalid_password`, ...).
    pub kinds: Vec<String>,
    /// How long the ban lasts.
    pub duration: Duration,
    /// When the kernel lifts it.
    pub expires: Timestamp,
    /// 1 for a first ban; higher for repeat offenders.
    pub offense: u32,
    /// Banned by an admin (`astban ban`), not by the jail.
    pub manual: bool,
}

/// An account under attack, as a mail reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountNotice {
    /// The account (the config's name, sanitised).
    pub account: String,
    /// Failures on it, from all hosts, that flagged it.
    pub failures: u32,
    /// Until when it stays under attack, unless failures go on.
    pub until: Timestamp,
    /// Whether hosts failing on it are now banned at their first failure.
    pub ban_at_once: bool,
}

/// The mail sent when an account comes under attack: never batched, since
/// it is rare and asks for a human (change the password, check the phone).
pub fn account_attack_mail(system: &str, a: &AccountNotice) -> Mail {
    let mut body = format!(
        "astban on {system}: account {} is under attack.\n\n{} failed logins on it from all hosts together within jail.account_findtime.\n",
        a.account, a.failures
    );
    if a.ban_at_once {
        body.push_str(
            "Until it calms down, any host that fails on it is banned at its first failure.\n",
        );
    }
    let _ = write!(
        body,
        "It stays under attack until {} (later if the failures go on).\nConsider a stronger password for it. See `astban status`.\n",
        a.until
    );
    Mail {
        subject: format!("[astban] account {} under attack on {system}", a.account),
        body,
    }
}

/// A mail ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// The mail for a single ban.
pub fn ban_mail(system: &str, ban: &BanNotice) -> Mail {
    let mut body = format!("astban on {system} banned {}.\n\n", ban.host);
    ban_details(&mut body, ban);
    let _ = write!(body, "\nLift it early with: astban unban {}\n", ban.host);
    Mail {
        subject: format!(
            "[astban] {} banned for {} on {system}{}",
            ban.host,
            format_duration(ban.duration),
            if ban.manual {
                " (manual)".to_string()
            } else {
                format!(" ({} failures)", ban.failures)
            }
        ),
        body,
    }
}

/// One mail for many bans, sent instead of a mail per ban under a flood.
/// `omitted` bans did not fit the digest and are only counted; `missed`
/// counts notices lost because astban was too busy to queue them.
pub fn digest_mail(
    system: &str,
    bans: &[BanNotice],
    omitted: usize,
    missed: usize,
    window: Duration,
) -> Mail {
    let total = bans.len() + omitted;
    let mut body = format!(
        "astban on {system} banned {total} hosts in the last {}.\n",
        format_duration(window)
    );
    for ban in bans {
        let _ = writeln!(body, "\n{}", ban.host);
        ban_details(&mut body, ban);
    }
    if omitted > 0 {
        let _ = writeln!(body, "\n... and {omitted} more (see `astban bans`).");
    }
    if missed > 0 {
        let _ = writeln!(
            body,
            "\n{missed} ban notices were dropped because mail could not keep up."
        );
    }
    Mail {
        subject: format!("[astban] {total} hosts banned on {system}"),
        body,
    }
}

fn ban_details(body: &mut String, ban: &BanNotice) {
    if ban.manual {
        let _ = writeln!(body, "  reason:     banned by an administrator");
    } else {
        let _ = writeln!(
            body,
            "  failures:   {} ({})",
            ban.failures,
            ban.kinds.join(", ")
        );
    }
    if !ban.accounts.is_empty() {
        let _ = writeln!(body, "  accounts:   {}", ban.accounts.join(", "));
    }
    let _ = writeln!(body, "  banned for: {}", format_duration(ban.duration));
    let _ = writeln!(body, "  expires:    {}", ban.expires);
    if ban.offense > 1 {
        let _ = writeln!(
            body,
            "  offense:    #{} (ban time escalated for a repeat offender)",
            ban.offense
        );
    }
}

/// The mail sent when the daemon starts; `summary` says how it is set up.
pub fn started_mail(system: &str, summary: &str) -> Mail {
    Mail {
        subject: format!("[astban] started on {system}"),
        body: format!("astban started on {system}.\n\n{summary}\n"),
    }
}

/// The mail sent when the daemon stops.
pub fn stopped_mail(system: &str, active_bans: usize) -> Mail {
    Mail {
        subject: format!("[astban] stopped on {system}"),
        body: format!(
            "astban stopped on {system}.\n\n{active_bans} bans stay enforced by the kernel until they expire;\nnew attacks are not banned until astban runs again.\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(host: &str) -> BanNotice {
        BanNotice {
            host: host.into(),
            failures: 5,
            accounts: vec!["100".into(), "admin".into()],
            kinds: vec!["invalid_password".into()],
            duration: Duration::from_secs(3 * 86400),
            expires: "2026-11-28T12:00:00Z".parse().expect("ts"),
            offense: 2,
            manual: false,
        }
    }

    #[test]
    fn account_mail_names_the_account_and_what_happens_now() {
        let mail = account_attack_mail(
            "pbx1",
            &AccountNotice {
                account: "300".into(),
                failures: 20,
                until: Timestamp::UNIX_EPOCH,
                ban_at_once: true,
            },
        );
        assert_eq!(mail.subject, "[astban] account 300 under attack on pbx1");
        assert!(mail.body.contains("20 failed logins"), "{}", mail.body);
        assert!(mail.body.contains("first failure"), "{}", mail.body);
    }

    #[test]
    fn ban_mail_says_who_why_and_how_long() {
        let m = ban_mail("pbx1", &ban("203.0.113.7"));
        assert_eq!(
            m.subject,
            "[astban] 203.0.113.7 banned for 3days on pbx1 (5 failures)"
        );
        for part in [
            "203.0.113.7",
            "5 (invalid_password)",
            "100, admin",
            "3days",
            "2026-11-28T12:00:00Z",
            "#2",
            "astban unban 203.0.113.7",
        ] {
            assert!(m.body.contains(part), "{part:?} missing from {}", m.body);
        }
    }

    #[test]
    fn digest_counts_what_it_does_not_list() {
        let bans = [ban("203.0.113.7"), ban("203.0.113.8")];
        let m = digest_mail("pbx1", &bans, 998, 3, Duration::from_secs(60));
        assert_eq!(m.subject, "[astban] 1000 hosts banned on pbx1");
        assert!(m.body.contains("203.0.113.8"));
        assert!(m.body.contains("and 998 more"));
        assert!(m.body.contains("3 ban notices were dropped"));
    }
}

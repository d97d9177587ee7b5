//! From the engine's events to the mailer's notices.

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{AccountNotice, BanNotice, Mailer, Notice};
use crate::config::Config;
use crate::engine::{BanInfo, EngineEvent};
use crate::units::{format_duration, format_net};

/// Mails each ban until shutdown. Events are read from the engine's
/// broadcast, which drops the oldest for a reader that falls behind rather
/// than slow the engine; what is dropped is counted into the next digest,
/// never silently lost.
pub async fn forward_bans(
    mut events: broadcast::Receiver<EngineEvent>,
    mailer: Mailer,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(EngineEvent::Banned(ban)) => {
                mailer.notify(Notice::Banned(ban_notice(&ban)));
            }
            Ok(EngineEvent::AccountUnderAttack(attack)) => {
                mailer.notify(Notice::AccountUnderAttack(AccountNotice {
                    account: attack.account.to_string(),
                    failures: attack.failures,
                    until: attack.until,
                    ban_at_once: attack.ban_at_once,
                }));
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "mail fell behind the ban events");
                mailer.missed(usize::try_from(n).unwrap_or(usize::MAX));
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// What a mail says about a ban.
fn ban_notice(ban: &BanInfo) -> BanNotice {
    BanNotice {
        host: format_net(ban.net),
        failures: ban.failures,
        accounts: ban.accounts.iter().map(|a| a.to_string()).collect(),
        kinds: ban.kinds.iter().map(|k| k.to_string()).collect(),
        duration: ban.duration(),
        expires: ban.expires,
        offense: ban.offense,
        manual: ban.manual,
    }
}

/// A one-paragraph description of the setup, for the start mail.
pub fn describe(config: &Config) -> String {
    let j = &config.jail;
    format!(
        "input mode: {:?}\njail: {} failures within {} ban for {} (x{} for repeat offenders, at most {})\nfirewall: {:?}, table inet {}",
        config.input.mode,
        j.maxretry,
        format_duration(j.findtime),
        format_duration(j.bantime),
        j.bantime_factor,
        format_duration(j.bantime_max),
        config.firewall.backend,
        config.firewall.table,
    )
}

/// This machine's name, for the mail subject.
pub fn system_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

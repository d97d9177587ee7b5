//! A backend that only logs: for trying astban safely and for tests.

use std::time::Duration;

use jiff::Timestamp;

use super::{ActiveBan, Change, Firewall, FirewallError, timeout_secs};
use crate::config::FirewallConfig;
use crate::units::format_duration;

/// Logs the bans it would enforce and never touches the kernel.
#[derive(Debug, Clone)]
pub struct DryRunFirewall {
    table: String,
    retry_interval: Duration,
}

impl DryRunFirewall {
    /// A dry run that names the table the nftables backend would use.
    pub fn new(config: &FirewallConfig) -> DryRunFirewall {
        DryRunFirewall {
            table: config.table.clone(),
            retry_interval: config.retry_interval,
        }
    }
}

impl Firewall for DryRunFirewall {
    async fn reconcile(&mut self, bans: &[ActiveBan], now: Timestamp) -> Result<(), FirewallError> {
        let live = bans
            .iter()
            .filter(|b| timeout_secs(b.expires, now).is_some())
            .count();
        tracing::info!(
            table = %self.table,
            bans = live,
            "dry-run: would create table inet {} and restore {live} bans",
            self.table
        );
        Ok(())
    }

    async fn apply(&mut self, changes: &[Change], now: Timestamp) -> Result<(), FirewallError> {
        for change in changes {
            match *change {
                Change::Ban { net, expires, .. } | Change::Replace { net, expires, .. } => {
                    if let Some(secs) = timeout_secs(expires, now) {
                        let duration = format_duration(Duration::from_secs(secs.into()));
                        tracing::info!(%net, %duration, "dry-run: would ban");
                    }
                }
                Change::Unban { net } => tracing::info!(%net, "dry-run: would unban"),
            }
        }
        Ok(())
    }

    /// Nothing is in the kernel, so nothing can go missing.
    async fn verify(&mut self, _bans: &[ActiveBan], _now: Timestamp) -> Result<(), FirewallError> {
        Ok(())
    }

    /// Nothing is ever in a kernel.
    async fn existing(&mut self, _now: Timestamp) -> Result<Vec<ActiveBan>, FirewallError> {
        Ok(Vec::new())
    }

    fn retry_interval(&self) -> Duration {
        self.retry_interval
    }

    fn check_interval(&self) -> Duration {
        Duration::ZERO
    }
}

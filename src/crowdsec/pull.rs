//! The pull task: the LAPI's decisions, polled from the decision stream,
//! become pulled bans in the engine (sets of their own in nftables).
//!
//! The first poll, and the first after any failure, asks for the whole
//! listing (`startup=true`): deltas missed while the LAPI was unreachable
//! are unknowable, and the listing lets the engine lift pulled bans the
//! LAPI no longer has.

use tokio_util::sync::CancellationToken;

use super::{Lapi, Link};
use crate::config::CrowdsecSettings;
use crate::engine::{EngineHandle, FleetOrigin, PulledBan};

/// Polls `lapi`'s stream every `poll_interval` until `shutdown`, handing
/// each poll to `engine`. A failed poll only waits for the next one:
/// pulled bans already in force stay until their decision's time is up.
pub async fn run_pull(
    settings: CrowdsecSettings,
    lapi: Lapi,
    engine: EngineHandle,
    link: Link,
    shutdown: CancellationToken,
) {
    let mut startup = true;
    let mut tick = tokio::time::interval(settings.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let delta = tokio::select! {
            () = shutdown.cancelled() => break,
            delta = lapi.stream(startup, &settings.origins) => delta,
        };
        let delta = match delta {
            Ok(delta) => delta,
            Err(e) => {
                link.outcome(Err(&e));
                startup = true;
                continue;
            }
        };
        let new: Vec<PulledBan> = delta
            .new
            .into_iter()
            .map(|d| PulledBan {
                net: d.net,
                expires: d.expires,
                origin: FleetOrigin {
                    origin: d.origin,
                    scenario: d.scenario,
                },
            })
            .collect();
        let listed = new.len();
        let Ok(outcome) = engine.pull(new, delta.deleted, startup).await else {
            break;
        };
        if outcome.added + outcome.lifted > 0 || startup {
            tracing::info!(
                startup,
                listed,
                added = outcome.added,
                lifted = outcome.lifted,
                ignored = outcome.ignored,
                already_banned = outcome.local,
                in_force = outcome.in_force,
                "CrowdSec decisions pulled"
            );
        }
        startup = false;
        link.outcome(Ok(()));
        let now = jiff::Timestamp::now();
        link.update(|s| {
            s.last_pull = Some(now);
            s.pulled_bans = outcome.in_force;
        });
    }
}

//! The pull task: the LAPI's decision stream, polled, handed to the
//! engine.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Backoff, Lapi, Link};
use crate::config::CrowdsecSettings;
use crate::engine::{EngineHandle, FleetUpdate};

/// Polls the stream every `poll_interval` until `shutdown`: the first poll
/// and the first after any failure ask for everything (`startup=true`),
/// which the engine takes as the whole truth, the others for deltas.
pub async fn run_pull(
    settings: CrowdsecSettings,
    lapi: Lapi,
    engine: EngineHandle,
    link: Link,
    shutdown: CancellationToken,
) {
    let mut startup = true;
    let mut backoff = Backoff::new(settings.poll_interval, Duration::from_secs(60).max(settings.poll_interval));
    loop {
        let wait = match lapi.stream(startup, &settings.origins).await {
            Ok(delta) => {
                link.outcome(Ok(()));
                let update = FleetUpdate {
                    full: startup,
                    new: delta.new,
                    deleted: delta.deleted,
                };
                match engine.fleet(update).await {
                    Ok(pulled) => link.update(|s| {
                        s.pulled_bans = pulled;
                        s.last_pull = Some(jiff::Timestamp::now());
                    }),
                    Err(_) => break,
                }
                startup = false;
                backoff.reset();
                settings.poll_interval
            }
            Err(e) => {
                link.outcome(Err(&e));
                startup = true;
                backoff.wait()
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

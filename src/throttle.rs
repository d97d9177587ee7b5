//! A warning that a flood cannot turn into a flood of log lines.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Logs at `warn` at most once per interval, and at `debug` in between,
/// saying how many were held back. Used where attacker traffic decides how
/// often something is worth saying (unparsable AMI events, log lines that
/// cannot be attributed).
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    next_warn: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// A throttle that warns at most once per `interval`.
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            next_warn: None,
            suppressed: 0,
        }
    }

    /// Logs `what`: at `warn` if the interval has passed since the last
    /// warning, else at `debug`.
    pub fn log(&mut self, what: impl Display) {
        let now = Instant::now();
        if self.next_warn.is_none_or(|at| now >= at) {
            match self.suppressed {
                0 => tracing::warn!("{what}"),
                n => tracing::warn!("{what} ({n} more like it since the last such warning)"),
            }
            self.next_warn = Some(now + self.interval);
            self.suppressed = 0;
        } else {
            tracing::debug!("{what}");
            self.suppressed += 1;
        }
    }
}

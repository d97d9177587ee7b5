//! What the inputs and mail already publish, rendered at scrape time: the
//! watch channels `astban status` reads, so the endpoint never keeps a
//! second copy of a count.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

use super::{DropLabels, EngineDrop, Metrics};
use crate::ami::client::Health;
use crate::failure::Source;
use crate::input::GateStats;
use crate::logwatch::LogStats;
use crate::notify::MailCounts;

/// The published state of the parts that run: `None` for an input the
/// mode does not use, or mail when it is off, so that a log-only astban
/// never shows an AMI that is "down".
#[derive(Debug, Default)]
pub struct Published {
    /// The AMI session's health.
    pub ami: Option<watch::Receiver<Health>>,
    /// The log input's counters.
    pub log: Option<watch::Receiver<LogStats>>,
    /// The gate's counters.
    pub gate: Option<watch::Receiver<GateStats>>,
    /// Mail sent and given up on.
    pub mail: Option<MailCounts>,
}

/// What a scrape reads: the published state, and the engine's reasons for
/// not counting a failure, which share a family with the inputs' reasons.
#[derive(Debug)]
pub(super) struct Scrape {
    pub(super) published: Published,
    pub(super) engine: Metrics,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.not_counted(&mut encoder)?;
        let published = &self.published;
        if let Some(health) = &published.ami {
            let (up, logins) = match &*health.borrow() {
                Health::Connecting => (0, 0),
                Health::Up { logins, .. } => (1, *logins),
                Health::Down { logins, .. } => (0, *logins),
            };
            gauge(
                &mut encoder,
                "ami_up",
                "1 while the AMI session is logged in and receiving security events.",
                up,
            )?;
            counter(
                &mut encoder,
                "ami_reconnects",
                "AMI sessions logged in again after an earlier one ended.",
                logins.saturating_sub(1),
            )?;
        }
        if let Some(log) = &published.log {
            let log = log.borrow().clone();
            counter(
                &mut encoder,
                "log_lines_read",
                "Lines read from the log.",
                log.lines,
            )?;
            gauge(
                &mut encoder,
                "log_bytes_behind",
                "Bytes of the log file not read yet, at the last read (a backlog).",
                i64::try_from(log.behind).unwrap_or(i64::MAX),
            )?;
            gauge(
                &mut encoder,
                "log_file_missing",
                "1 while the log file does not exist.",
                i64::from(log.file_missing),
            )?;
        }
        if let Some(mail) = &published.mail {
            let (sent, failed) = mail.get();
            counter(&mut encoder, "mail_sent", "Mails delivered.", sent)?;
            counter(
                &mut encoder,
                "mail_failed",
                "Mails given up on after every retry.",
                failed,
            )?;
        }
        Ok(())
    }
}

impl Scrape {
    /// One family for every reason a failure did not count: the engine's
    /// (ignored, stale, not_unicast, already_banned), the gate's
    /// (input_not_counting: the other input covered that moment, or the
    /// mode does not use this one) and the log's (ambiguous lines naming
    /// several hosts, duplicate lines of an attempt already counted).
    fn not_counted(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let published = &self.published;
        let mut rows: Vec<(&'static str, Source, u64)> = Vec::new();
        for reason in EngineDrop::ALL {
            for input in published.inputs() {
                let n = self.engine.dropped_count(reason, input);
                rows.push((reason.as_str(), input, n));
            }
        }
        if let Some(gate) = &published.gate {
            let gate = *gate.borrow();
            for input in published.inputs() {
                let n = match input {
                    Source::Ami => gate.ami_dropped,
                    Source::Log => gate.log_dropped,
                };
                rows.push(("input_not_counting", input, n));
            }
        }
        if let Some(log) = &published.log {
            let log = log.borrow();
            rows.push(("ambiguous", Source::Log, log.ambiguous));
            rows.push(("duplicate", Source::Log, log.folded));
        }
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "failures_not_counted",
            "Failures that did not count, by reason and input.",
            None,
            counter.metric_type(),
        )?;
        for (reason, input, n) in rows {
            let labels = DropLabels {
                reason,
                input: super::input_str(input),
            };
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Published {
    /// The inputs that run.
    fn inputs(&self) -> impl Iterator<Item = Source> {
        [
            self.ami.is_some().then_some(Source::Ami),
            self.log.is_some().then_some(Source::Log),
        ]
        .into_iter()
        .flatten()
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

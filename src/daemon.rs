//! `astban run`: wires the inputs, the engine, the firewall, mail and the
//! control socket into one service, and owns its lifecycle: start, SIGHUP
//! reload, supervision of every task, and a stop with a deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ami::client::Health;
use crate::config::{Backend, Config};
use crate::control::protocol::ReloadReport;
use crate::control::{self, DaemonHandler};
use crate::engine::{self, EngineHandle};
use crate::failure::Report;
use crate::firewall::{AnyFirewall, Firewall as _};
use crate::input::{self, Gate, GateStats, Inputs, ReportSink};
use crate::logwatch::{self, LogStats, filter::RuleSet};
use crate::notify::{self, Notice};
use crate::reload::Plan;
use crate::service::{self, Readiness, Signal, Signals};

/// Reports buffered between an input and the gate. Enough to absorb a
/// burst; when full, the input waits (AMI's TCP window or the log file
/// holds the rest), so memory stays bounded.
const REPORT_QUEUE: usize = 4096;

/// Longest a stop waits for the inputs, the gate and the control socket
/// to end once told to; the engine then gets its own deadline for the
/// firewall's last transaction.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Longest a stop waits for the engine to save its state and hand the
/// firewall its last changes (which has a deadline of its own, shorter).
const ENGINE_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// What the daemon runs with.
#[derive(Debug)]
pub struct Setup {
    /// The config to start with.
    pub config: Config,
    /// Where SIGHUP re-reads it from.
    pub source: ConfigSource,
}

/// Where the running config came from, and so what SIGHUP does.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file (or, when `None`, the default path or the built-in defaults),
    /// plus the `ASTBAN_*` environment: re-read on SIGHUP.
    File(Option<PathBuf>),
    /// Built in by the caller (the demo): SIGHUP is ignored, for this
    /// reason.
    BuiltIn(&'static str),
}

/// Why the daemon could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory could not be created.
    #[error("cannot create state directory {path}: {source} (set [state] dir, or run as root)")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// The log rules did not compile.
    #[error(transparent)]
    Rules(#[from] logwatch::filter::FilterError),
    /// The control socket could not be served.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// Mail is enabled but cannot be set up.
    #[error(transparent)]
    Mail(#[from] notify::NotifyError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A task that should run until shutdown ended; astban stops so that
    /// the service manager restarts it.
    #[error("{0} stopped unexpectedly (see the log above)")]
    TaskEnded(&'static str),
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// Every task runs until shutdown. One that ends early (a panic, a dead
/// input, the engine or its firewall task) stops the daemon with an error,
/// so that the service manager restarts it instead of leaving astban
/// running blind.
pub async fn run(setup: Setup) -> Result<(), DaemonError> {
    let Setup { config, source } = setup;
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    crate::persist::create_private_dir(&config.state.dir).map_err(|source| {
        DaemonError::StateDir {
            path: config.state.dir.clone(),
            source,
        }
    })?;
    // The control socket is also the one-instance lock: take it before
    // touching the firewall, and compile the rules before starting anything.
    let server = control::Server::bind(&config.control.socket).await?;
    let mode = config.input.mode;
    let rules = mode
        .uses_log()
        .then(|| RuleSet::from_config(&config.log))
        .transpose()?;

    let engine_stop = CancellationToken::new();
    let firewall = AnyFirewall::from_config(&config.firewall);
    let (engine, engine_task) = engine::spawn(
        &config.jail,
        &config.state.dir,
        firewall,
        engine_stop.clone(),
    )?;
    // The engine outlives the other tasks at a stop, so it is supervised
    // apart from them.
    let mut core = Tasks::default();
    core.spawn("the ban engine", async move {
        let _ = engine_task.await;
    });
    tokio::spawn(adopt_kernel_bans(
        AnyFirewall::from_config(&config.firewall),
        engine.clone(),
        engine_stop.clone(),
    ));

    let shutdown = CancellationToken::new();
    let (health_tx, health_rx) = watch::channel(Health::Connecting);
    let (ami_tx, ami_rx) = mpsc::channel(REPORT_QUEUE);
    let (log_tx, log_rx) = mpsc::channel(REPORT_QUEUE);
    let (log_stats_tx, log_stats) = watch::channel(LogStats::default());
    let (gate_stats_tx, gate_stats) = watch::channel(GateStats::default());
    let (reload_tx, reload_rx) = watch::channel(None);
    let mut tasks = Tasks::default();

    if mode.uses_ami() {
        let run = crate::ami::client::run(config.ami.clone(), ami_tx, health_tx, shutdown.clone());
        tasks.spawn("the AMI input", run);
    }
    let rules_tx = rules.map(|rules| {
        let (rules_tx, rules_rx) = watch::channel(Arc::new(rules));
        let (log_cfg, state_dir, stop) = (
            config.log.clone(),
            config.state.dir.clone(),
            shutdown.clone(),
        );
        tasks.spawn("the log input", async move {
            let run = logwatch::run(log_cfg, rules_rx, state_dir, log_tx, log_stats_tx, stop);
            if let Err(e) = run.await {
                tracing::error!(error = %e, "the log input failed");
            }
        });
        rules_tx
    });

    let inputs = Inputs {
        health: health_rx.clone(),
        ami: ami_rx,
        log: log_rx,
        sink: engine.clone(),
        stats: gate_stats_tx,
    };
    let gate = Gate::new(mode, &config.ami.events);
    tasks.spawn("the input gate", input::run(gate, inputs, shutdown.clone()));

    let handler = DaemonHandler {
        engine: engine.clone(),
        mode,
        started: Timestamp::now(),
        health: health_rx,
        log_stats,
        gate_stats,
        reload: reload_rx,
    };
    tasks.spawn(
        "the control socket",
        server.serve(Arc::new(handler), shutdown.clone()),
    );

    let mail = if config.mail.enabled {
        let (mailer, task) = notify::spawn(&config.mail, notify::system_name())?;
        if config.mail.on_start_stop {
            mailer.notify(Notice::Started(notify::describe(&config)));
        }
        let forward = notify::forward_bans(engine.subscribe(), mailer.clone(), shutdown.clone());
        tasks.spawn("mail notifications", forward);
        Some((mailer, task))
    } else {
        None
    };

    tracing::info!(
        mode = ?mode,
        firewall = ?config.firewall.backend,
        socket = %config.control.socket.display(),
        "astban running"
    );
    service::notify(Readiness::Ready);

    let mut running = config;
    let outcome = loop {
        tokio::select! {
            signal = signals.next() => match (signal, &source) {
                (Signal::Stop, _) => break Ok(()),
                (Signal::Reload, ConfigSource::BuiltIn(why)) => {
                    tracing::warn!("SIGHUP ignored: {why}");
                }
                (Signal::Reload, ConfigSource::File(path)) => {
                    service::notify(Readiness::Reloading);
                    let (applied, report) =
                        reload(running, path.as_deref(), rules_tx.as_ref(), &engine).await;
                    running = applied;
                    reload_tx.send_replace(Some(report));
                    service::notify(Readiness::Ready);
                }
            },
            ended = tasks.next_ended() => {
                tracing::error!(task = ended, "stopped unexpectedly; shutting astban down so that it is restarted");
                break Err(DaemonError::TaskEnded(ended));
            }
            ended = core.next_ended() => {
                tracing::error!(task = ended, "stopped unexpectedly; shutting astban down so that it is restarted");
                break Err(DaemonError::TaskEnded(ended));
            }
        }
    };

    tracing::info!("stopping");
    service::notify(Readiness::Stopping);
    shutdown.cancel();
    tasks.finish(STOP_DEADLINE).await;
    let active_bans = engine.stats().await.map(|s| s.active_bans).unwrap_or(0);
    engine_stop.cancel();
    core.finish(ENGINE_STOP_DEADLINE).await;
    if let Some((mailer, task)) = mail {
        if running.mail.on_start_stop {
            mailer.notify(Notice::Stopped { active_bans });
        }
        drop(mailer);
        notify::finish(task).await;
    }
    match running.firewall.backend {
        Backend::Nftables => tracing::info!(
            active_bans,
            "stopped; bans stay enforced by the kernel until they expire"
        ),
        Backend::DryRun => tracing::info!(active_bans, "stopped (dry-run: nothing was enforced)"),
    }
    outcome
}

/// Bans in the kernel that the state lacks are adopted, not orphaned; off
/// the start path, so that a slow or hung nft delays nothing.
async fn adopt_kernel_bans(mut lister: AnyFirewall, engine: EngineHandle, stop: CancellationToken) {
    let found = tokio::select! {
        () = stop.cancelled() => return,
        found = lister.existing(Timestamp::now()) => found,
    };
    match found {
        Ok(found) if !found.is_empty() => {
            let adopted = engine.adopt(found).await.unwrap_or_default();
            if adopted > 0 {
                tracing::warn!(
                    adopted,
                    "bans in the kernel that the ban state lacked were adopted with the time they have left"
                );
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot list the bans already in the kernel ({e}); none adopted"),
    }
}

/// The daemon's tasks, each named for the message when one ends early.
#[derive(Default)]
struct Tasks(tokio::task::JoinSet<&'static str>);

impl Tasks {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(async move {
            task.await;
            name
        });
    }

    /// The name of the next task to end (or "a task that panicked").
    async fn next_ended(&mut self) -> &'static str {
        match self.0.join_next().await {
            Some(Ok(name)) => name,
            Some(Err(_)) => "a task that panicked",
            None => std::future::pending().await,
        }
    }

    /// Waits for every task after shutdown was signalled, at most
    /// `deadline`; the ones still running then are aborted and named.
    async fn finish(mut self, deadline: Duration) {
        let all = async { while self.0.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                left = self.0.len(),
                "tasks did not stop within {deadline:?}; aborted"
            );
            self.0.shutdown().await;
        }
    }
}

/// Re-reads the config and applies what can be applied live (log rules,
/// `[jail]`). Returns the config now in force and what was done; a broken
/// file is refused whole and the running config kept.
async fn reload(
    running: Config,
    path: Option<&std::path::Path>,
    rules_tx: Option<&watch::Sender<Arc<RuleSet>>>,
    engine: &EngineHandle,
) -> (Config, ReloadReport) {
    let mut report = ReloadReport {
        at: Timestamp::now(),
        ..ReloadReport::default()
    };
    let file = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; keeping the running config");
            report.refused = Some(e.to_string());
            return (running, report);
        }
    };
    let plan = Plan::new(&running, &file);
    // Compile first, apply after: a bad rule must not leave half a reload.
    let rules = match rules_tx.filter(|_| plan.rules_changed) {
        Some(tx) => match RuleSet::from_config(&plan.applied.log) {
            Ok(rules) => Some((tx, rules)),
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the log rules do not compile; keeping the running config");
                report.refused = Some(e.to_string());
                return (running, report);
            }
        },
        None => None,
    };
    if let Some((tx, rules)) = rules {
        tx.send_replace(Arc::new(rules));
        tracing::info!(rules = %plan.applied.log.rules, "log rules reloaded");
        report.applied.push("log rules".into());
    }
    let mut applied = plan.applied;
    if plan.jail_changed {
        match engine.reconfigure(applied.jail.clone()).await {
            Ok(lifted) => {
                tracing::info!(lifted, "jail settings reloaded");
                report.applied.push("jail".into());
            }
            Err(_) => {
                tracing::error!("the ban engine has stopped; jail settings not applied");
                applied.jail = running.jail;
            }
        }
    }
    for &section in &plan.restart_needed {
        tracing::warn!(section, "changed on reload; restart astban to apply it");
        report.restart_needed.push(section.into());
    }
    (applied, report)
}

impl ReportSink for EngineHandle {
    async fn deliver(&self, report: Report) -> Result<(), ()> {
        self.report(report).await.map_err(drop)
    }
}

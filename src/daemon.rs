//! `astban run`: wires the inputs, the engine, the firewall, mail and the
//! control socket into one service, and owns its lifecycle: start, SIGHUP
//! reload, supervision of every task, and a stop with a deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ami::client::Health;
use crate::config::{self, Backend, Config, JailSettings, NameSettings};
use crate::control::protocol::ReloadReport;
use crate::control::{self, DaemonHandler};
use crate::engine::{self, EngineHandle};
use crate::failure::Report;
use crate::firewall::{AnyFirewall, Firewall as _};
use crate::input::{self, Gate, GateStats, Inputs, ReportSink};
use crate::logwatch::{self, LogStats, filter::RuleSet};
use crate::metrics::{self, Metrics};
use crate::names::{self, NameStatus};
use crate::notify::{self, Mailer, Notice};
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
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] config::Invalid),
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
    /// `metrics.listen` cannot be bound.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The CrowdSec LAPI client could not be set up (TLS roots).
    #[error("cannot set up the CrowdSec LAPI client for crowdsec.url: {0}")]
    Lapi(reqwest::Error),
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
    let mut daemon = Daemon::start(config).await?;
    service::notify(Readiness::Ready);
    let outcome = daemon.serve(&mut signals, &source).await;
    tracing::info!("stopping");
    service::notify(Readiness::Stopping);
    daemon.stop().await;
    outcome
}

/// The running daemon: its tasks and what a reload or a stop needs.
struct Daemon {
    /// The config in force (not the file's, which may ask for more).
    config: Config,
    engine: EngineHandle,
    /// The engine, supervised apart: it outlives the other tasks at a stop.
    core: Tasks,
    engine_stop: CancellationToken,
    /// The inputs, the gate, the control socket, mail forwarding.
    tasks: Tasks,
    shutdown: CancellationToken,
    /// The log input's rules, when it runs.
    rules: Option<watch::Sender<Arc<RuleSet>>>,
    reload: watch::Sender<Option<ReloadReport>>,
    mail: Option<(Mailer, JoinHandle<()>)>,
    /// The host names of `jail.ignoreip`, for the resolver task.
    names: watch::Sender<NameSettings>,
}

/// What the inputs publish, for the control socket and the metrics.
#[derive(Clone)]
struct Published {
    health: watch::Receiver<Health>,
    log_stats: watch::Receiver<LogStats>,
    gate_stats: watch::Receiver<GateStats>,
}

impl Daemon {
    /// Starts everything, in an order that makes a failed start harmless:
    /// the state dir, the control socket (the one-instance lock) and the
    /// rules before the firewall is touched.
    async fn start(config: Config) -> Result<Daemon, DaemonError> {
        crate::persist::create_private_dir(&config.state.dir).map_err(|source| {
            DaemonError::StateDir {
                path: config.state.dir.clone(),
                source,
            }
        })?;
        let server = control::Server::bind(&config.control.socket).await?;
        let endpoint = match config.metrics.listen {
            Some(addr) => Some(metrics::Endpoint::bind(addr).await?),
            None => None,
        };
        let rules = (config.input.mode.uses_log())
            .then(|| RuleSet::from_config(&config.log))
            .transpose()?;

        let engine_stop = CancellationToken::new();
        let counters = Metrics::default();
        let (engine, engine_task) = engine::spawn_metered(
            &JailSettings::try_from(&config.jail)?,
            &config.state.dir,
            AnyFirewall::from_config(&config.firewall),
            counters.clone(),
            engine_stop.clone(),
        )?;
        let mut core = Tasks::default();
        core.spawn("the ban engine", async move {
            let _ = engine_task.await;
        });
        tokio::spawn(adopt_kernel_bans(
            AnyFirewall::from_config(&config.firewall),
            engine.clone(),
            engine_stop.clone(),
        ));

        let mut daemon = Daemon {
            engine,
            core,
            engine_stop,
            tasks: Tasks::default(),
            shutdown: CancellationToken::new(),
            rules: None,
            reload: watch::channel(None).0,
            mail: None,
            names: watch::channel(NameSettings::try_from(&config.jail)?).0,
            config,
        };
        let names = daemon.start_names();
        let published = daemon.start_inputs(rules);
        let fleet = daemon.start_fleet()?;
        daemon.serve_control(server, published.clone(), names, fleet);
        daemon.start_mail()?;
        if let Some(endpoint) = endpoint {
            daemon.serve_metrics(endpoint, counters, published);
        }
        tracing::info!(
            mode = ?daemon.config.input.mode,
            firewall = ?daemon.config.firewall.backend,
            socket = %daemon.config.control.socket.display(),
            "astban running"
        );
        Ok(daemon)
    }

    /// The AMI and log inputs the mode asks for, and the gate between them
    /// and the engine.
    fn start_inputs(&mut self, rules: Option<RuleSet>) -> Published {
        let (config, stop) = (&self.config, &self.shutdown);
        let (health_tx, health) = watch::channel(Health::Connecting);
        let (ami_tx, ami_rx) = mpsc::channel(REPORT_QUEUE);
        let (log_tx, log_rx) = mpsc::channel(REPORT_QUEUE);
        let (log_stats_tx, log_stats) = watch::channel(LogStats::default());
        let (gate_stats_tx, gate_stats) = watch::channel(GateStats::default());
        if config.input.mode.uses_ami() {
            let run = crate::ami::client::run(config.ami.clone(), ami_tx, health_tx, stop.clone());
            self.tasks.spawn("the AMI input", run);
        }
        if let Some(rules) = rules {
            let (rules_tx, rules_rx) = watch::channel(Arc::new(rules));
            let run = logwatch::run(
                logwatch::LogSettings::from(&config.log),
                rules_rx,
                config.state.dir.clone(),
                log_tx,
                log_stats_tx,
                stop.clone(),
            );
            self.tasks.spawn("the log input", async move {
                if let Err(e) = run.await {
                    tracing::error!(error = %e, "the log input failed");
                }
            });
            self.rules = Some(rules_tx);
        }
        let inputs = Inputs {
            health: health.clone(),
            ami: ami_rx,
            log: log_rx,
            sink: self.engine.clone(),
            stats: gate_stats_tx,
        };
        let gate = Gate::new(config.input.mode, &config.ami.events);
        let run = input::run(gate, inputs, stop.clone());
        self.tasks.spawn("the input gate", run);
        Published {
            health,
            log_stats,
            gate_stats,
        }
    }

    /// The task that looks up `jail.ignoreip`'s host names, off the
    /// engine's task; what it knows of each, for the control socket.
    fn start_names(&mut self) -> watch::Receiver<Vec<NameStatus>> {
        let (status_tx, status) = watch::channel(Vec::new());
        let run = names::run(
            self.names.subscribe(),
            self.engine.clone(),
            status_tx,
            self.shutdown.clone(),
        );
        self.tasks.spawn("the host name resolver", run);
        status
    }

    fn serve_control(
        &mut self,
        server: control::Server,
        published: Published,
        names: watch::Receiver<Vec<NameStatus>>,
        fleet: Option<crate::crowdsec::Link>,
    ) {
        let handler = DaemonHandler {
            engine: self.engine.clone(),
            mode: self.config.input.mode,
            started: Timestamp::now(),
            health: published.health,
            log_stats: published.log_stats,
            gate_stats: published.gate_stats,
            reload: self.reload.subscribe(),
            names,
            fleet,
        };
        let serve = server.serve(Arc::new(handler), self.shutdown.clone());
        self.tasks.spawn("the control socket", serve);
    }

    fn serve_metrics(&mut self, endpoint: metrics::Endpoint, counters: Metrics, from: Published) {
        let mode = self.config.input.mode;
        let published = metrics::Published {
            ami: mode.uses_ami().then_some(from.health),
            log: mode.uses_log().then_some(from.log_stats),
            gate: Some(from.gate_stats),
            mail: self.mail.as_ref().map(|(mailer, _)| mailer.counts()),
        };
        match endpoint.local_addr() {
            Ok(addr) => tracing::info!(%addr, "metrics endpoint listening"),
            Err(e) => tracing::warn!("metrics endpoint listening (its address is unknown: {e})"),
        }
        let serve = endpoint.serve(counters, published, self.shutdown.clone());
        self.tasks.spawn("the metrics endpoint", serve);
    }

    /// The CrowdSec push and pull tasks, when `[crowdsec]` is on; neither
    /// is in the path of local bans (see [`crate::crowdsec`]).
    fn start_fleet(&mut self) -> Result<Option<crate::crowdsec::Link>, DaemonError> {
        use crate::crowdsec::{Lapi, Link};
        let Some(settings) = crate::config::CrowdsecSettings::from_config(&self.config.crowdsec)?
        else {
            return Ok(None);
        };
        let link = Link::new(
            settings.url.as_str(),
            settings.push.is_some(),
            settings.pull.is_some(),
        );
        if settings.push.is_some() {
            let lapi = Lapi::new(&settings).map_err(DaemonError::Lapi)?;
            let run = crate::crowdsec::run_push(
                settings.clone(),
                lapi,
                self.engine.subscribe(),
                self.config.state.dir.clone(),
                link.clone(),
                self.shutdown.clone(),
            );
            self.tasks.spawn("the CrowdSec push", run);
        }
        if settings.pull.is_some() {
            let lapi = Lapi::new(&settings).map_err(DaemonError::Lapi)?;
            let run = crate::crowdsec::run_pull(
                settings.clone(),
                lapi,
                self.engine.clone(),
                link.clone(),
                self.shutdown.clone(),
            );
            self.tasks.spawn("the CrowdSec pull", run);
        }
        Ok(Some(link))
    }

    fn start_mail(&mut self) -> Result<(), DaemonError> {
        let config = &self.config;
        if !config.mail.enabled {
            return Ok(());
        }
        let (mailer, task) = notify::spawn(&config.mail, notify::system_name())?;
        if config.mail.on_start_stop {
            mailer.notify(Notice::Started(notify::describe(config)));
        }
        let forward = notify::forward_bans(
            self.engine.subscribe(),
            mailer.clone(),
            self.shutdown.clone(),
        );
        self.tasks.spawn("mail notifications", forward);
        self.mail = Some((mailer, task));
        Ok(())
    }

    /// Obeys signals until told to stop, or until a task ends early.
    async fn serve(
        &mut self,
        signals: &mut Signals,
        source: &ConfigSource,
    ) -> Result<(), DaemonError> {
        loop {
            tokio::select! {
                signal = signals.next() => match (signal, source) {
                    (Signal::Stop, _) => return Ok(()),
                    (Signal::Reload, ConfigSource::BuiltIn(why)) => {
                        tracing::warn!("SIGHUP ignored: {why}");
                    }
                    (Signal::Reload, ConfigSource::File(path)) => {
                        service::notify(Readiness::Reloading);
                        self.reload(path.as_deref()).await;
                        service::notify(Readiness::Ready);
                    }
                },
                ended = self.tasks.next_ended() => return Err(ended_early(ended)),
                ended = self.core.next_ended() => return Err(ended_early(ended)),
            }
        }
    }

    /// Stops the inputs first, then the engine (which saves its state and
    /// hands the firewall its last changes), then mail; each with a
    /// deadline.
    async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.finish(STOP_DEADLINE).await;
        let active_bans = self
            .engine
            .stats()
            .await
            .map(|s| s.active_bans)
            .unwrap_or(0);
        self.engine_stop.cancel();
        self.core.finish(ENGINE_STOP_DEADLINE).await;
        if let Some((mailer, task)) = self.mail {
            if self.config.mail.on_start_stop {
                mailer.notify(Notice::Stopped { active_bans });
            }
            drop(mailer);
            notify::finish(task).await;
        }
        match self.config.firewall.backend {
            Backend::Nftables => tracing::info!(
                active_bans,
                "stopped; bans stay enforced by the kernel until they expire"
            ),
            Backend::DryRun => {
                tracing::info!(active_bans, "stopped (dry-run: nothing was enforced)")
            }
        }
    }

    /// Re-reads the config and applies what can be applied live (log
    /// rules, `[jail]`); a broken file is refused whole and the running
    /// config kept. What was done is published for `astban status`.
    async fn reload(&mut self, path: Option<&Path>) {
        let report = match Config::load(path) {
            Ok(file) => self.apply(Plan::new(&self.config, &file)).await,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; keeping the running config");
                ReloadReport::refused(e.to_string())
            }
        };
        self.reload.send_replace(Some(report));
    }

    async fn apply(&mut self, plan: Plan) -> ReloadReport {
        // Compile first, apply after: a bad rule must not leave half a reload.
        let rules = match self.rules.as_ref().filter(|_| plan.rules_changed) {
            Some(tx) => match RuleSet::from_config(&plan.applied.log) {
                Ok(rules) => Some((tx, rules)),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: the log rules do not compile; keeping the running config");
                    return ReloadReport::refused(e.to_string());
                }
            },
            None => None,
        };
        let jail = match JailSettings::try_from(&plan.applied.jail) {
            Ok(jail) => jail,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; keeping the running config");
                return ReloadReport::refused(e.to_string());
            }
        };
        let names = match NameSettings::try_from(&plan.applied.jail) {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; keeping the running config");
                return ReloadReport::refused(e.to_string());
            }
        };
        let mut report = ReloadReport::now();
        if plan.names_changed {
            self.names.send_replace(names);
            tracing::info!("host names in jail.ignoreip reloaded");
            report.applied.push("jail.ignoreip host names".into());
        }
        if let Some((tx, rules)) = rules {
            tx.send_replace(Arc::new(rules));
            tracing::info!(rules = %plan.applied.log.rules, "log rules reloaded");
            report.applied.push("log rules".into());
        }
        let previous_jail = self.config.jail.clone();
        self.config = plan.applied;
        if plan.jail_changed {
            match self.engine.reconfigure(jail).await {
                Ok(lifted) => {
                    tracing::info!(lifted, "jail settings reloaded");
                    report.applied.push("jail".into());
                }
                Err(_) => {
                    tracing::error!("the ban engine has stopped; jail settings not applied");
                    self.config.jail = previous_jail;
                }
            }
        }
        for &section in &plan.restart_needed {
            tracing::warn!(section, "changed on reload; restart astban to apply it");
            report.restart_needed.push(section.into());
        }
        report
    }
}

fn ended_early(task: &'static str) -> DaemonError {
    tracing::error!(
        task,
        "stopped unexpectedly; shutting astban down so that it is restarted"
    );
    DaemonError::TaskEnded(task)
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

impl ReportSink for EngineHandle {
    async fn deliver(&self, report: Report) -> Result<(), ()> {
        self.report(report).await.map_err(drop)
    }
}

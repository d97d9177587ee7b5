//! `astban run`: wires the inputs, the engine, the firewall, mail and the
//! control socket into one service, and owns its lifecycle (start, SIGHUP
//! reload, SIGTERM/SIGINT shutdown, systemd readiness).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ami::client::Health;
use crate::config::{self, Backend, Config, InputMode, JailSettings};
use crate::control::{self, Handler, Reply, Request, Response};
use crate::demo::Demo;
use crate::engine::EngineStats;
use crate::engine::{self, EngineEvent, EngineHandle};
use crate::failure::Report;
use crate::firewall::{AnyFirewall, Firewall as _};
use crate::input::{self, Gate, GateStats, Inputs, ReportSink};
use crate::logwatch::{self, LogStats, filter::RuleSet};
use crate::notify::{self, BanNotice, Mailer, Notice};
use crate::units::{format_net, parse_duration, parse_net};

/// Reports buffered between an input and the gate. Enough to absorb a
/// burst; when full, the input waits (AMI's TCP window or the log file
/// holds the rest), so memory stays bounded.
const REPORT_QUEUE: usize = 4096;

/// Why the daemon could not start.
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
    /// A setting is not allowed (a config changed after it was loaded).
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
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A task that should run until shutdown ended; astban stops so that
    /// the service manager restarts it.
    #[error("{0} stopped unexpectedly (see the log above)")]
    TaskEnded(&'static str),
}

/// Runs the daemon until SIGTERM or SIGINT. `config_path` is re-read on
/// SIGHUP; `demo` keeps the demo's files alive and replays its log.
///
/// Every task runs until shutdown. One that ends early (a panic, a dead
/// input) stops the daemon with an error, so that the service manager
/// restarts it instead of leaving astban running blind.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    demo: Option<Demo>,
) -> Result<(), DaemonError> {
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    create_private_dir(&config.state.dir)?;
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
        &JailSettings::try_from(&config.jail)?,
        &config.state.dir,
        firewall,
        engine_stop.clone(),
    )?;
    // Bans in the kernel that the state lacks are adopted, not orphaned;
    // off the start path, so that a slow or hung nft delays nothing.
    {
        let mut lister = AnyFirewall::from_config(&config.firewall);
        let engine = engine.clone();
        let stop = engine_stop.clone();
        tokio::spawn(async move {
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
                Err(e) => {
                    tracing::warn!("cannot list the bans already in the kernel ({e}); none adopted")
                }
            }
        });
    }

    let shutdown = CancellationToken::new();
    let (health_tx, health_rx) = watch::channel(Health::Connecting);
    let (ami_tx, ami_rx) = mpsc::channel(REPORT_QUEUE);
    let (log_tx, log_rx) = mpsc::channel(REPORT_QUEUE);
    let (log_stats_tx, log_stats) = watch::channel(LogStats::default());
    let (gate_stats_tx, gate_stats) = watch::channel(GateStats::default());
    let mut tasks = Tasks::default();

    if mode.uses_ami() {
        let run = crate::ami::client::run(config.ami.clone(), ami_tx, health_tx, shutdown.clone());
        tasks.spawn("the AMI input", run);
    }
    let rules_tx = rules.map(|rules| {
        let (rules_tx, rules_rx) = watch::channel(Arc::new(rules));
        let (log_cfg, state_dir, stop) = (
            logwatch::LogSettings::from(&config.log),
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

    let control = Arc::new(Control {
        engine: engine.clone(),
        health: health_rx,
        log_stats,
        gate_stats,
        mode,
        started: Timestamp::now(),
        config: watch::channel(Arc::new(config.clone())).0,
    });
    tasks.spawn(
        "the control socket",
        server.serve(Arc::clone(&control), shutdown.clone()),
    );

    let mail = if config.mail.enabled {
        let (mailer, task) = notify::spawn(&config.mail, system_name())?;
        if config.mail.on_start_stop {
            mailer.notify(Notice::Started(describe(&config)));
        }
        let forward = forward_bans(engine.subscribe(), mailer.clone(), shutdown.clone());
        tasks.spawn("mail notifications", forward);
        Some((mailer, task))
    } else {
        None
    };

    if let Some(demo) = &demo {
        tasks.spawn("the demo", demo.clone().replay(shutdown.clone()));
    }

    tracing::info!(
        mode = ?mode,
        firewall = ?config.firewall.backend,
        socket = %config.control.socket.display(),
        "astban running"
    );
    sd_notify("READY=1");

    let mut config = config;
    let outcome = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break Ok(()),
                Signal::Reload if demo.is_some() => {
                    tracing::warn!("demo: SIGHUP ignored (the demo's settings are built in)");
                }
                Signal::Reload => {
                    sd_notify("RELOADING=1");
                    let path = config_path.as_deref();
                    config = reload(config, path, rules_tx.as_ref(), &control).await;
                    sd_notify("READY=1");
                }
            },
            ended = tasks.next_ended() => {
                tracing::error!(task = ended, "stopped unexpectedly; shutting astban down so that it is restarted");
                break Err(DaemonError::TaskEnded(ended));
            }
        }
    };

    tracing::info!("stopping");
    sd_notify("STOPPING=1");
    shutdown.cancel();
    tasks.finish().await;
    let active_bans = engine.stats().await.map(|s| s.active_bans).unwrap_or(0);
    engine_stop.cancel();
    let _ = engine_task.await;
    if let Some((mailer, task)) = mail {
        if config.mail.on_start_stop {
            mailer.notify(Notice::Stopped { active_bans });
        }
        drop(mailer);
        notify::finish(task).await;
    }
    match config.firewall.backend {
        Backend::Nftables => tracing::info!(
            active_bans,
            "stopped; bans stay enforced by the kernel until they expire"
        ),
        Backend::DryRun => tracing::info!(active_bans, "stopped (dry-run: nothing was enforced)"),
    }
    outcome
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

    /// Waits for every task after shutdown was signalled.
    async fn finish(mut self) {
        while self.0.join_next().await.is_some() {}
    }
}

/// Applies a reloaded config where that can be done live (log rules,
/// `[jail]`), and says what needs a restart. A broken config is refused and
/// the old one kept.
async fn reload(
    old: Config,
    path: Option<&Path>,
    rules_tx: Option<&watch::Sender<Arc<RuleSet>>>,
    control: &Control,
) -> Config {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; keeping the running config");
            return old;
        }
    };
    // Compile first, apply after: a bad rule must not leave half a reload.
    let rules = match rules_tx.map(|_| RuleSet::from_config(&new.log)).transpose() {
        Ok(rules) => rules,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the log rules do not compile; keeping the running config");
            return old;
        }
    };
    // Config::load checked [jail]; this only gives it its type.
    let jail = match JailSettings::try_from(&new.jail) {
        Ok(jail) => jail,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; keeping the running config");
            return old;
        }
    };
    if let (Some(tx), Some(rules)) = (rules_tx, rules) {
        tx.send_replace(Arc::new(rules));
        tracing::info!(rules = %new.log.rules, "log rules reloaded");
    }
    if !toml_eq(&old.jail, &new.jail) {
        match control.engine.reconfigure(jail).await {
            Ok(lifted) => tracing::info!(lifted, "jail settings reloaded"),
            Err(_) => tracing::error!("the ban engine has stopped; jail settings not applied"),
        }
    }
    let restart_needed = [
        // Secrets serialise masked: compare them themselves.
        (
            "ami",
            toml_eq(&old.ami, &new.ami) && old.ami.secret == new.ami.secret,
        ),
        ("input", toml_eq(&old.input, &new.input)),
        (
            "jail.ignore_self",
            old.jail.ignore_self == new.jail.ignore_self,
        ),
        (
            "jail.ipv6_prefix",
            old.jail.ipv6_prefix == new.jail.ipv6_prefix,
        ),
        ("firewall", toml_eq(&old.firewall, &new.firewall)),
        (
            "mail",
            toml_eq(&old.mail, &new.mail) && old.mail.password == new.mail.password,
        ),
        ("control", toml_eq(&old.control, &new.control)),
        ("state", toml_eq(&old.state, &new.state)),
        ("log (other than rules)", {
            let same_rules = |l: &crate::config::LogConfig| {
                let mut l = l.clone();
                l.rules.clear();
                l.extra_rules.clear();
                l.ignoreregex.clear();
                l
            };
            toml_eq(&same_rules(&old.log), &same_rules(&new.log))
        }),
    ];
    for (section, same) in restart_needed {
        if !same {
            tracing::warn!(section, "changed on reload; restart astban to apply it");
        }
    }
    control.config.send_replace(Arc::new(new.clone()));
    new
}

fn toml_eq<T: Serialize>(a: &T, b: &T) -> bool {
    toml::to_string(a).ok() == toml::to_string(b).ok()
}

/// What a mail says about a ban.
fn ban_notice(ban: &engine::BanInfo) -> BanNotice {
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

async fn forward_bans(
    mut events: tokio::sync::broadcast::Receiver<EngineEvent>,
    mailer: Mailer,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(EngineEvent::Banned(ban)) => {
                mailer.notify(Notice::Banned(ban_notice(&ban)));
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "mail fell behind the ban events")
            }
            Err(RecvError::Closed) => return,
        }
    }
}

impl ReportSink for EngineHandle {
    async fn deliver(&self, report: Report) -> Result<(), ()> {
        self.report(report).await.map_err(drop)
    }
}

/// The control socket's view of the daemon.
struct Control {
    engine: EngineHandle,
    health: watch::Receiver<Health>,
    log_stats: watch::Receiver<LogStats>,
    gate_stats: watch::Receiver<GateStats>,
    mode: InputMode,
    started: Timestamp,
    config: watch::Sender<Arc<Config>>,
}

/// What `astban status --json` prints.
#[derive(Debug, Serialize)]
pub struct Status {
    /// astban's version.
    pub version: String,
    /// When the daemon started.
    pub started: Timestamp,
    /// `auto`, `ami` or `log`.
    pub input_mode: InputMode,
    /// The AMI input.
    pub ami: InputStatus,
    /// The log input.
    pub log: InputStatus,
    /// What the log input has read.
    pub log_read: LogStats,
    /// Reports of each input that counted, or not, under the input mode.
    pub counted: GateStats,
    /// The engine's and firewall's counters.
    pub engine: EngineStats,
}

/// One input's state.
#[derive(Debug, Serialize)]
pub struct InputStatus {
    /// `up`, `down`, `connecting`, `following` or `off`.
    pub state: String,
    /// Whether its failures count right now.
    pub counting: bool,
    /// Since when, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Details for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Control {
    fn status(&self, engine: EngineStats) -> Status {
        let health = self.health.borrow().clone();
        let ami_up = matches!(health, Health::Up { .. });
        let ami = if !self.mode.uses_ami() {
            InputStatus {
                state: "off".into(),
                counting: false,
                since: None,
                detail: None,
            }
        } else {
            let (state, since, detail) = match health {
                Health::Connecting => ("connecting", None, None),
                Health::Up { since, .. } => ("up", Some(since), None),
                Health::Down { since, reason, .. } => ("down", Some(since), Some(reason)),
            };
            InputStatus {
                state: state.into(),
                counting: true,
                since,
                detail,
            }
        };
        let log_read = self.log_stats.borrow().clone();
        let log = InputStatus {
            state: match (self.mode.uses_log(), log_read.file_missing) {
                (false, _) => "off",
                (true, false) => "following",
                (true, true) => "waiting for the file",
            }
            .into(),
            counting: match self.mode {
                InputMode::Log => true,
                InputMode::Ami => false,
                InputMode::Auto => !ami_up,
            },
            since: None,
            detail: log_read.path.as_ref().map(|p| p.display().to_string()),
        };
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            started: self.started,
            input_mode: self.mode,
            ami,
            log,
            log_read,
            counted: *self.gate_stats.borrow(),
            engine,
        }
    }
}

/// Bans per page when `astban bans` streams its answer: small enough that
/// the daemon holds next to nothing, large enough to cost few round trips.
const BANS_PAGE: usize = 500;

impl Handler for Control {
    async fn handle(&self, request: Request) -> Reply {
        self.answer(request).await
    }
}

/// The bans as pieces of one JSON array, a page at a time.
fn stream_bans(engine: EngineHandle) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut after = None;
        let mut piece = String::from("[");
        let mut first = true;
        loop {
            let Ok(page) = engine.bans_page(after, BANS_PAGE).await else {
                break;
            };
            let Some(last) = page.last() else { break };
            after = Some((last.expires, last.net));
            for ban in &page {
                if !std::mem::take(&mut first) {
                    piece.push(',');
                }
                match serde_json::to_string(ban) {
                    Ok(json) => piece.push_str(&json),
                    Err(_) => piece.push_str("null"),
                }
            }
            if tx.send(std::mem::take(&mut piece)).await.is_err() {
                return;
            }
        }
        piece.push(']');
        let _ = tx.send(piece).await;
    });
    rx
}

impl Control {
    async fn answer(&self, request: Request) -> Reply {
        let gone = |_| Response::error("the ban engine has stopped");
        let response = match request {
            Request::Status => match self.engine.stats().await {
                Ok(stats) => to_response(&self.status(stats)),
                Err(e) => gone(e),
            },
            // Streamed: 100,000 bans are never held whole.
            Request::Bans => return Reply::Pieces(stream_bans(self.engine.clone())),
            Request::Ban {
                host,
                duration,
                force,
            } => {
                let net = match parse_net(&host) {
                    Ok(n) => n,
                    Err(e) => return Response::error(e).into(),
                };
                let duration = match duration.as_deref().map(parse_duration).transpose() {
                    Ok(d) => d,
                    Err(e) => return Response::error(e).into(),
                };
                match self.engine.ban(net, duration, force).await {
                    Ok(ban) => to_response(&ban),
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Unban { host } => {
                let net: IpNet = match parse_net(&host) {
                    Ok(n) => n,
                    Err(e) => return Response::error(e).into(),
                };
                match self.engine.unban(net).await {
                    Ok(Some(ban)) => to_response(&ban),
                    Ok(None) => Response::error(format!(
                        "{} is not banned by astban (any element of it was removed from astban's sets)",
                        host.trim()
                    )),
                    Err(e) => gone(e),
                }
            }
        };
        response.into()
    }
}

fn to_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_value(value) {
        Ok(v) => Response::ok(v),
        Err(e) => Response::error(format!("cannot encode the answer: {e}")),
    }
}

/// `astban status` for humans.
pub fn render_status(data: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "astban {} running since {}",
        text(&data["version"]),
        text(&data["started"])
    );
    let _ = writeln!(out, "input mode: {}", text(&data["input_mode"]));
    for input in ["ami", "log"] {
        let i = &data[input];
        let mut line = format!("  {input:<4} {}", text(&i["state"]));
        if let Some(since) = i["since"].as_str() {
            let _ = write!(line, " since {since}");
        }
        if let Some(detail) = i["detail"].as_str() {
            let _ = write!(line, " ({detail})");
        }
        line.push_str(if i["counting"].as_bool() == Some(true) {
            ", counting"
        } else {
            ", not counting"
        });
        let _ = writeln!(out, "{line}");
    }
    let (read, counted) = (&data["log_read"], &data["counted"]);
    let _ = writeln!(
        out,
        "log read: {} lines, {} failures found, {} folded into an attempt, {} too long",
        text(&read["lines"]),
        text(&read["failures"]),
        text(&read["folded"]),
        text(&read["too_long"])
    );
    let _ = writeln!(
        out,
        "log lines not attributed: {} ambiguous, {} cut short, {} continuation, {} unparsable",
        text(&read["ambiguous"]),
        text(&read["cut"]),
        text(&read["continuation"]),
        text(&read["unparsable"])
    );
    let _ = writeln!(
        out,
        "counted: ami {} ({} not counted), log {} ({} not counted)",
        text(&counted["ami_counted"]),
        text(&counted["ami_dropped"]),
        text(&counted["log_counted"]),
        text(&counted["log_dropped"])
    );
    let engine = &data["engine"];
    let _ = writeln!(
        out,
        "engine: {} active bans, {} hosts tracked, {} offenders remembered, {} failures counted, {} bans since start",
        text(&engine["active_bans"]),
        text(&engine["tracked_hosts"]),
        text(&engine["offenders"]),
        text(&engine["failures_counted"]),
        text(&engine["bans_total"])
    );
    let _ = writeln!(
        out,
        "engine dropped: {} failures older than findtime, {} hosts evicted at jail.max_tracked_hosts",
        text(&engine["failures_stale"]),
        text(&engine["hosts_evicted"])
    );
    match engine["state_error"].as_str() {
        None => out.push_str("state: saved\n"),
        Some(error) => {
            let _ = writeln!(out, "state: NOT DURABLE ({error})");
        }
    }
    let fw = &engine["firewall"];
    let _ = write!(
        out,
        "firewall: {}, {} changes pending",
        if fw["healthy"].as_bool() == Some(true) {
            "healthy"
        } else {
            "FAILING"
        },
        text(&fw["pending"])
    );
    if let Some(error) = fw["last_error"].as_str() {
        let _ = write!(out, "; last error: {error}");
    }
    if let Some(refused) = fw["last_refused"].as_str() {
        let _ = write!(
            out,
            "; {} change(s) refused by nft, last {refused}",
            text(&fw["refused"])
        );
    }
    out.push('\n');
    out
}

/// `astban bans` for humans: one ban per line.
pub fn render_bans(data: &Value) -> String {
    let bans = data.as_array().map(Vec::as_slice).unwrap_or_default();
    if bans.is_empty() {
        return "no active bans\n".into();
    }
    let mut out = format!(
        "{:<40} {:<26} {:>8}  accounts\n",
        "host", "expires", "failures"
    );
    for ban in bans {
        let _ = writeln!(out, "{}", render_ban_line(ban));
    }
    out
}

/// One ban as a line: host, expiry, failures, accounts tried.
pub fn render_ban_line(ban: &Value) -> String {
    let accounts: Vec<&str> = ban["accounts"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "{:<40} {:<26} {:>8}  {}",
        ban["host"].as_str().unwrap_or("?"),
        ban["expires"].as_str().unwrap_or("?"),
        ban["failures"].as_u64().unwrap_or(0),
        accounts.join(", ")
    )
}

/// A one-paragraph description of the setup, for the start mail.
fn describe(config: &Config) -> String {
    let j = &config.jail;
    format!(
        "input mode: {:?}\njail: {} failures within {} ban for {} (x{} for repeat offenders, at most {})\nfirewall: {:?}, table inet {}",
        config.input.mode,
        j.maxretry,
        crate::units::format_duration(j.findtime),
        crate::units::format_duration(j.bantime),
        j.bantime_factor,
        crate::units::format_duration(j.bantime_max),
        config.firewall.backend,
        config.firewall.table,
    )
}

fn system_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    crate::persist::create_private_dir(dir).map_err(|source| DaemonError::StateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// What a signal asks of the daemon.
enum Signal {
    Reload,
    Stop,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// Tells systemd about readiness when run as a `Type=notify` service; a
/// no-op otherwise.
fn sd_notify(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

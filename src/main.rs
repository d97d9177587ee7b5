//! The `astban` command line. It parses arguments, sets up logging and
//! hands over to the library; what each command does lives there.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;

use astban::cli::{Cli, Command, LogFormat, SocketArg};
use astban::config::{Config, DEFAULT_CONFIG_PATH};
use astban::control::{Client, render};
use astban::daemon::{self, ConfigSource, Setup};
use astban::demo;
use astban::logwatch::filter::RuleSet;
use astban::logwatch::testlog;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // Not eprintln!: with stderr gone the exit code still says why.
            let _ = writeln!(std::io::stderr(), "astban: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config, demo } => {
            let runtime = runtime()?;
            runtime.block_on(async {
                if demo {
                    demo::run().await?;
                } else {
                    let cfg = Config::load(config.config.as_deref())?;
                    let source = ConfigSource::File(config.config);
                    daemon::run(Setup {
                        config: cfg,
                        source,
                    })
                    .await?;
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        // Exit 2 tells scripts the file (or the rules) could not be read.
        Command::TestLog(args) => Ok(testlog::run(args).unwrap_or_else(|e| {
            eprintln!("astban: {e}");
            ExitCode::from(2)
        })),
        Command::CheckConfig { config } => check_config(config.config.as_deref()),
        Command::Status { socket, json } => {
            let status = ask(&socket, |c| async move { c.status().await })?;
            match json {
                true => print_json(&status)?,
                false => print!("{}", render::status(&status)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bans { socket, json } => {
            let bans = ask(&socket, |c| async move { c.bans().await })?;
            match json {
                true => print_json(&bans)?,
                false => print!("{}", render::bans(&bans)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ban {
            host,
            duration,
            force,
            socket,
        } => {
            let ban = ask(
                &socket,
                |c| async move { c.ban(host, duration, force).await },
            )?;
            println!("banned {}", render::ban_line(&ban));
            Ok(ExitCode::SUCCESS)
        }
        Command::Unban { host, socket } => {
            let ban = ask(&socket, |c| async move { c.unban(host).await })?;
            println!("unbanned {}", astban::units::format_net(ban.net));
            if let Some(origin) = &ban.origin {
                // Lifted here only: the LAPI still holds the decision.
                let flag = if ban.net.prefix_len() == ban.net.max_prefix_len() {
                    "--ip"
                } else {
                    "--range"
                };
                println!(
                    "it came from the fleet: {origin}; the LAPI may send it again unless it is deleted there (`cscli decisions delete {flag} {}`)",
                    astban::units::format_net(ban.net)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `astban check-config`: loads and validates the config and the rules
/// exactly as the daemon will, warns about what would not work, and
/// prints the effective settings with secrets masked.
fn check_config(path: Option<&Path>) -> Result<ExitCode> {
    let cfg = Config::load(path)?;
    // The rules (built-in or a file, extra rules, ignoreregex) are
    // part of the config: compile them exactly as the daemon will, which
    // is only when the input mode reads the log.
    let rules = (cfg.input.mode.uses_log())
        .then(|| RuleSet::from_config(&cfg.log))
        .transpose()?;
    let source = match path {
        Some(p) => p.display().to_string(),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => DEFAULT_CONFIG_PATH.into(),
        None => "built-in defaults".into(),
    };
    let (log_path, chosen) = astban::logwatch::choose_path(cfg.log.path.as_deref());
    let mut warnings = cfg.warnings();
    if cfg.input.mode.uses_log() {
        warnings.extend(astban::logwatch::path_problem(&log_path));
    }
    for warning in &warnings {
        eprintln!("astban: warning: {warning}");
    }
    let log_file = match (cfg.input.mode.uses_log(), chosen) {
        (false, _) => String::new(),
        (true, None) => format!("# log file: {}\n", log_path.display()),
        (true, Some(why)) => format!("# log file: {} ({why})\n", log_path.display()),
    };
    let rules = match &rules {
        Some(r) => format!("{} ({} rules)", r.origin(), r.rules().len()),
        None => "not used (input.mode = \"ami\")".into(),
    };
    print!(
        "# astban: config OK ({source}, plus ASTBAN_* environment); log rules: {rules}\n{log_file}\n{}",
        cfg.to_masked_toml()?
    );
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes, each once: astban's errors already quote
/// their cause, which `{:#}` would print a second time.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// One request to the running daemon; its error becomes ours.
fn ask<T, F: Future<Output = Result<T, astban::control::ControlError>>>(
    socket: &SocketArg,
    call: impl FnOnce(Client) -> F,
) -> Result<T> {
    let path = match &socket.socket {
        Some(p) => p.clone(),
        None => Config::control_socket(socket.config.config.as_deref())?,
    };
    Ok(runtime()?.block_on(call(Client::new(path)))?)
}

fn print_json(value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// astban is I/O bound and small; one thread keeps it lean and simple.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a human at a terminal, never in files or journald.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed, journald
        // restarting) is lost; protection goes on. The default would
        // report it with eprintln!, which panics on a broken pipe.
        .log_internal_errors(false)
        .with_ansi(ansi);
    // Under systemd, journald timestamps every line and shows no colours.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if journald => builder.without_time().init(),
        LogFormat::Text => builder.init(),
    }
}

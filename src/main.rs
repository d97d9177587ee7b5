//! The `astban` command line. Business logic lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use astban::logwatch::testlog::{self, TestLogArgs};

/// Bans Asterisk brute-force and account-scanning attackers.
#[derive(Debug, Parser)]
#[command(name = "astban", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what the log rules make of a log file (like fail2ban-regex).
    TestLog(TestLogArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::TestLog(args) => testlog::run(args).map_err(anyhow::Error::from),
    };
    result.unwrap_or_else(|e| {
        eprintln!("astban: {e:#}");
        ExitCode::from(2)
    })
}

//! The command line's definition: what `astban` accepts, as clap types.
//!
//! It lives in the library, not in `main.rs`, so that the man page and the
//! shell completions are generated from the same definition the binary
//! parses (`cargo run --example gen-docs`, see `examples/gen-docs.rs`).
//! What each command does is `main.rs`'s business.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::logwatch::testlog::TestLogArgs;
use crate::units::{parse_duration, parse_net};

/// Bans Asterisk brute-force and account-scanning attackers with nftables,
/// from AMI security events and the messages log.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Plain lines (journald adds its own timestamps).
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file [default: /etc/astban/astban.toml if it exists, else
    /// built-in defaults].
    #[arg(long, short, env = "ASTBAN_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SocketArg {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Control socket [default: [control] socket of the config].
    #[arg(long, env = "ASTBAN_SOCKET")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (SIGTERM/SIGINT stop, SIGHUP
    /// reloads).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Run a self-contained demo: dry-run firewall, no Asterisk, no root;
        /// replays a bundled attack log into a temporary directory.
        #[arg(long, conflicts_with = "config")]
        demo: bool,
    },
    /// Show what the log rules match in FILE, like fail2ban-regex.
    TestLog(TestLogArgs),
    /// Validate the config and print the effective settings (secrets
    /// masked).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the daemon's inputs, counts and firewall state.
    Status {
        #[command(flatten)]
        socket: SocketArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List active bans.
    Bans {
        #[command(flatten)]
        socket: SocketArg,
        /// Print JSON: an array of objects with host, expires, failures, ...
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or network now.
    Ban {
        /// Address or CIDR.
        #[arg(value_parser = parse_net)]
        host: IpNet,
        /// Ban length, e.g. 1h or 3d [default: the jail's bantime].
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// Ban even an address covered by ignoreip.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Lift a ban.
    Unban {
        /// Address or CIDR.
        #[arg(value_parser = parse_net)]
        host: IpNet,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// The whole command line as a clap command, for generators (man page,
/// completions).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

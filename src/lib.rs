//! astban: bans Asterisk brute-force and account-scanning attackers.
//!
//! Data flow (see DESIGN.md): the AMI input ([`ami`]) and the log input
//! ([`logwatch`]) turn what Asterisk reports into [`failure::Failure`]s;
//! [`input`] decides which of them count under the configured input mode;
//! the [`engine`] alone owns ban state and drives the [`firewall`];
//! [`notify`] mails about it and [`control`] lets the CLI ask and command.

pub mod ami;
pub mod cli;
pub mod config;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod failure;
pub mod firewall;
pub mod input;
pub mod logwatch;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod persist;
pub mod reload;
pub mod service;
pub mod throttle;
pub mod units;

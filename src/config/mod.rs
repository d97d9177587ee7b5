//! Configuration: built-in defaults ← TOML file ← `ASTBAN_SECTION__KEY`
//! environment, validated into typed settings.
//!
//! The sections here are the raw serde form: what figment reads and
//! `check-config` prints. A part that would otherwise check or reinterpret
//! raw values takes a settings type made from its section instead:
//! [`JailSettings`] (by `TryFrom`, which is also the check [`Config::load`]
//! runs), and the log input's `LogSettings` and `RuleSources` (by `From`;
//! logwatch needs nothing else of the config).
//!
//! Every struct denies unknown keys and every error names where the bad
//! value came from (file or environment variable), the key, and what is
//! allowed, because a daemon that guesses at a typo is a daemon that
//! silently does not protect anything.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::failure::FailureKind;
use crate::logwatch::LogSettings;
use crate::logwatch::filter::{RuleDef, RuleSources};
use crate::units::{IgnoreEntry, duration};

mod crowdsec;
mod jail;
mod names;

pub use crate::logwatch::tail::StartAt;
pub use crowdsec::{CrowdsecConfig, CrowdsecSettings};
pub use jail::JailSettings;
pub use names::NameSettings;

/// Where `astban` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/astban/astban.toml";

/// Prefix of environment overrides: `ASTBAN_JAIL__MAXRETRY=3`.
pub const ENV_PREFIX: &str = "ASTBAN_";

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The Asterisk Manager Interface input.
    pub ami: AmiConfig,
    /// Which inputs count.
    pub input: InputConfig,
    /// The `messages` log input.
    pub log: LogConfig,
    /// Ban policy.
    pub jail: JailConfig,
    /// Where bans are enforced.
    pub firewall: FirewallConfig,
    /// Mail notifications.
    pub mail: MailConfig,
    /// The control socket used by `astban status|bans|ban|unban`.
    pub control: ControlConfig,
    /// Persistent state (bans, offender history, log cursor).
    pub state: StateConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The fleet link: sharing bans through a CrowdSec Local API.
    pub crowdsec: CrowdsecConfig,
}

/// `[ami]`: how to reach and log in to the Manager Interface.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmiConfig {
    /// Host name or address of Asterisk's AMI listener.
    pub host: String,
    /// AMI TCP port (manager.conf `port`).
    pub port: u16,
    /// The manager.conf section astban logs in as.
    pub username: String,
    /// The section's `secret`. Prefer `secret_file`.
    pub secret: Secret,
    /// A file whose first line is the secret; wins over `secret`.
    pub secret_file: Option<PathBuf>,
    /// `md5` (challenge/response, the secret never crosses the wire) or
    /// `plain`.
    pub auth: AmiAuth,
    /// How often to send `Action: Ping`.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// How long to wait for the Pong before declaring the link dead.
    #[serde(with = "duration")]
    pub ping_timeout: Duration,
    /// TCP connect and login timeout.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`, with jitter.
    #[serde(with = "duration")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// Largest AMI message accepted, in bytes; a larger one drops the
    /// connection instead of growing the buffer.
    pub max_message_size: usize,
    /// Security events that count as failures.
    pub events: Vec<FailureKind>,
}

impl Default for AmiConfig {
    fn default() -> Self {
        AmiConfig {
            host: "127.0.0.1".into(),
            port: 5038,
            username: "astban".into(),
            secret: Secret::default(),
            secret_file: None,
            auth: AmiAuth::Md5,
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            max_message_size: 64 * 1024,
            events: FailureKind::ALL
                .into_iter()
                .filter(|k| k.event_name().is_some())
                .collect(),
        }
    }
}

/// AMI login method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AmiAuth {
    /// `Action: Challenge` then `Key: md5(challenge + secret)`.
    Md5,
    /// `Secret:` in clear text.
    Plain,
}

/// `[input]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Which inputs count failures.
    pub mode: InputMode,
}

/// Which inputs count failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputMode {
    /// AMI while its session is up, the log while it is down.
    #[default]
    Auto,
    /// AMI only.
    Ami,
    /// The log only (PBXs without AMI security events).
    Log,
}

impl InputMode {
    /// Whether the AMI input runs in this mode.
    pub fn uses_ami(self) -> bool {
        matches!(self, InputMode::Auto | InputMode::Ami)
    }

    /// Whether the log input runs in this mode.
    pub fn uses_log(self) -> bool {
        matches!(self, InputMode::Auto | InputMode::Log)
    }
}

/// `[log]`: the `messages` log and its rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The log file to follow; unset, whichever of Asterisk's two default
    /// names exists (see [`crate::logwatch::DEFAULT_PATHS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// A built-in rule set (`asterisk`, `book`) or the path of a rules
    /// TOML file.
    pub rules: String,
    /// Rules added to the set.
    #[serde(rename = "rule")]
    pub extra_rules: Vec<RuleDef>,
    /// Lines matching any of these never count.
    pub ignoreregex: Vec<String>,
    /// Longest line read whole; of a longer one only both ends are judged.
    pub max_line_length: usize,
    /// How often to look at the file when inotify cannot be used.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// Where to start when there is no saved cursor.
    pub start: StartAt,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            path: None,
            rules: "asterisk".into(),
            extra_rules: Vec::new(),
            ignoreregex: Vec::new(),
            max_line_length: 8 * 1024,
            poll_interval: Duration::from_secs(1),
            start: StartAt::End,
        }
    }
}

impl<'a> From<&'a LogConfig> for RuleSources<'a> {
    fn from(log: &'a LogConfig) -> RuleSources<'a> {
        RuleSources {
            rules: &log.rules,
            extra_rules: &log.extra_rules,
            ignoreregex: &log.ignoreregex,
        }
    }
}

impl From<&LogConfig> for LogSettings {
    fn from(log: &LogConfig) -> LogSettings {
        LogSettings {
            path: log.path.clone(),
            max_line_length: log.max_line_length,
            poll_interval: log.poll_interval,
            start: log.start,
        }
    }
}

/// `[jail]`: when a host is banned and for how long.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JailConfig {
    /// Failures within `findtime` that trigger a ban.
    pub maxretry: u32,
    /// The window failures are counted in.
    #[serde(with = "duration")]
    pub findtime: Duration,
    /// Length of a first ban.
    #[serde(with = "duration")]
    pub bantime: Duration,
    /// Each further ban of the same host lasts this many times the last.
    pub bantime_factor: u32,
    /// Escalated bans never exceed this.
    #[serde(with = "duration")]
    pub bantime_max: Duration,
    /// How long a host's ban history is remembered for escalation.
    #[serde(with = "duration")]
    pub history: Duration,
    /// Networks that are never banned: addresses, CIDRs, and host names
    /// whose addresses are looked up (`crate::names`).
    pub ignoreip: Vec<IgnoreEntry>,
    /// DNS servers (`address` or `address:port`) for the host names in
    /// `ignoreip`; empty uses the system's `/etc/resolv.conf`.
    pub ignore_names_servers: Vec<String>,
    /// How often host names are looked up again (sooner when their TTL
    /// is shorter).
    #[serde(with = "duration")]
    pub ignore_names_interval: Duration,
    /// How long a name that stops resolving keeps its last addresses.
    #[serde(with = "duration")]
    pub ignore_names_grace: Duration,
    /// Also never ban the addresses of this host's own interfaces.
    pub ignore_self: bool,
    /// IPv6 sources are counted and banned per prefix of this length.
    pub ipv6_prefix: u8,
    /// Most hosts tracked at once; the stalest non-banned ones are
    /// forgotten first.
    pub max_tracked_hosts: usize,
    /// A successful login clears the host's failure count.
    pub reset_on_success: bool,
    /// Failures on one account Asterisk matched, from all hosts together,
    /// within `account_findtime` that put the account under attack; 0 is
    /// off.
    pub account_maxretry: u32,
    /// The window an account's failures are counted in.
    #[serde(with = "duration")]
    pub account_findtime: Duration,
    /// How long an account stays under attack after its last failure.
    #[serde(with = "duration")]
    pub account_bantime: Duration,
    /// While an account is under attack, a host failing on it is banned at
    /// its first failure.
    pub account_ban_at_once: bool,
    /// Most accounts counted at once.
    pub max_tracked_accounts: usize,
    /// A host that logged in with a password this recently is a known
    /// site; zero turns known sites off.
    #[serde(with = "duration")]
    pub known_host_window: Duration,
    /// Failures on one account that ban a known site.
    pub known_host_maxretry: u32,
    /// Most known sites remembered at once.
    pub max_known_hosts: usize,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            maxretry: 5,
            findtime: Duration::from_secs(10 * 60),
            bantime: Duration::from_secs(3 * 24 * 3600),
            bantime_factor: 2,
            bantime_max: Duration::from_secs(5 * 7 * 24 * 3600),
            history: Duration::from_secs(30 * 24 * 3600),
            ignoreip: vec![
                IgnoreEntry::Net("127.0.0.0/8".parse().expect("literal")),
                IgnoreEntry::Net("::1/128".parse().expect("literal")),
            ],
            ignore_names_servers: Vec::new(),
            ignore_names_interval: Duration::from_secs(5 * 60),
            ignore_names_grace: Duration::from_secs(24 * 3600),
            ignore_self: true,
            ipv6_prefix: 64,
            max_tracked_hosts: 200_000,
            reset_on_success: true,
            account_maxretry: 20,
            account_findtime: Duration::from_secs(10 * 60),
            account_bantime: Duration::from_secs(3600),
            account_ban_at_once: true,
            max_tracked_accounts: 10_000,
            known_host_window: Duration::from_secs(7 * 24 * 3600),
            known_host_maxretry: 30,
            max_known_hosts: 10_000,
        }
    }
}

/// `[firewall]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallConfig {
    /// `nftables` enforces bans; `dry-run` only logs them.
    pub backend: Backend,
    /// The `inet` table astban owns.
    pub table: String,
    /// Ports to block for banned hosts (TCP and UDP); empty blocks all.
    pub ports: Vec<u16>,
    /// Priority of astban's input hook; below 0 runs before the usual
    /// `filter` chains.
    pub priority: i32,
    /// The `nft` command; a prefix like `["ip", "netns", "exec", "pbx",
    /// "nft"]` runs it elsewhere.
    pub nft: Vec<String>,
    /// Delay before a failed `nft` transaction is tried again.
    #[serde(with = "duration")]
    pub retry_interval: Duration,
    /// How often astban checks that its table, rules and bans are still in
    /// the kernel (restoring them if not); zero never checks.
    #[serde(with = "duration")]
    pub check_interval: Duration,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            backend: Backend::Nftables,
            table: "astban".into(),
            ports: Vec::new(),
            priority: -10,
            nft: vec!["nft".into()],
            retry_interval: Duration::from_secs(5),
            check_interval: Duration::from_secs(30),
        }
    }
}

/// Firewall backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Real bans in the kernel.
    Nftables,
    /// Logs what would be done; nothing is blocked.
    DryRun,
}

/// `[mail]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// Send mail at all.
    pub enabled: bool,
    /// Recipient.
    pub destemail: String,
    /// From address.
    pub sender: String,
    /// `smtp` (a local MTA) or `sendmail` (the binary).
    pub transport: MailTransport,
    /// SMTP server.
    pub smtp_host: String,
    /// SMTP port.
    pub smtp_port: u16,
    /// Require STARTTLS (needs the `tls` cargo feature).
    pub starttls: bool,
    /// SMTP AUTH user, if the MTA wants one.
    pub username: Option<String>,
    /// SMTP AUTH password. Prefer `password_file`.
    pub password: Secret,
    /// A file whose first line is the SMTP password.
    pub password_file: Option<PathBuf>,
    /// The sendmail binary for `transport = "sendmail"`.
    pub sendmail: PathBuf,
    /// Mail on daemon start and stop.
    pub on_start_stop: bool,
    /// Bans are collected for this long and sent as one mail, so a flood
    /// gives one digest instead of thousands of mails.
    #[serde(with = "duration")]
    pub digest_interval: Duration,
    /// Most bans listed in one digest; the rest are only counted.
    pub digest_max_bans: usize,
    /// Attempts per mail before it is given up.
    pub retries: u32,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            enabled: false,
            destemail: "root@localhost".into(),
            sender: "astban@localhost".into(),
            transport: MailTransport::Smtp,
            smtp_host: "localhost".into(),
            smtp_port: 25,
            starttls: false,
            username: None,
            password: Secret::default(),
            password_file: None,
            sendmail: PathBuf::from("/usr/sbin/sendmail"),
            on_start_stop: true,
            digest_interval: Duration::from_secs(60),
            digest_max_bans: 200,
            retries: 3,
        }
    }
}

/// How mail leaves the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    /// SMTP to `smtp_host:smtp_port`.
    Smtp,
    /// The sendmail binary.
    Sendmail,
}

/// `[control]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// The Unix socket path (created mode 0600).
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from("/run/astban/astban.sock"),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for bans, offender history and the log cursor.
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("/var/lib/astban"),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics` (`"127.0.0.1:9772"`); unset, nothing
    /// listens. Port 0 picks a free port (logged at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

/// A secret that never shows up in `Debug`, logs or `check-config`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    /// Takes a string or a bare number (`secret = 123456`, or a numeric
    /// `ASTBAN_AMI__SECRET`), so that a type error never quotes the secret.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Unsigned(u64),
            Signed(i64),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Text(s)) => Ok(Secret(s)),
            Ok(Raw::Unsigned(n)) => Ok(Secret(n.to_string())),
            Ok(Raw::Signed(n)) => Ok(Secret(n.to_string())),
            Err(_) => Err(serde::de::Error::custom("a secret must be a string")),
        }
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"********\""
        })
    }
}

impl Serialize for Secret {
    /// Serialises masked: the only serialisation of a config is for humans.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "********" })
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment did not parse, or a value has the wrong type
    /// or an unknown key.
    #[error("{}", describe_parse_errors(.0))]
    Parse(Box<figment::Error>),
    /// A value parsed but is not allowed.
    #[error("{key}{origin}: {message}")]
    Invalid {
        /// The dotted key (`jail.maxretry`).
        key: String,
        /// " in FILE" or " from ENV", when known.
        origin: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A secret file could not be read.
    #[error("{key}: cannot read {path}: {source}")]
    SecretFile {
        /// The key that named the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A value that parsed but is not allowed: the key and what is allowed.
/// Settings types' `TryFrom` return it; [`Config::load`] adds where the
/// value came from ([`ConfigError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Invalid {
    /// The dotted key (`jail.maxretry`).
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    /// `invalid`, with the file or variable that set its key.
    fn invalid(invalid: Invalid, figment: &Figment) -> ConfigError {
        let origin = figment
            .find_metadata(invalid.key)
            .map(|m| match &m.source {
                Some(source) => format!(" in {source}"),
                None => format!(" from {}", m.name),
            })
            .unwrap_or_default();
        ConfigError::Invalid {
            key: invalid.key.into(),
            origin,
            message: invalid.message,
        }
    }
}

impl Config {
    /// What is valid but probably not what the admin wants, for
    /// `check-config` (checks that need no I/O; see
    /// [`crate::logwatch::path_problem`] for the log file).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.input.mode.uses_ami() && self.ami.secret.is_empty() {
            warnings.push(
                "ami.secret is empty: Asterisk will refuse the login; set ami.secret_file (or ami.secret) to the secret of astban's user in manager.conf".into(),
            );
        }
        if let Some(addr) = self.metrics.listen
            && !addr.ip().is_loopback()
        {
            warnings.push(format!(
                "metrics.listen = {addr} is not a loopback address: anyone who reaches it sees how many failures and bans there are (no hosts or accounts); firewall the port, or listen on 127.0.0.1"
            ));
        }
        warnings
    }

    /// Loads defaults ← `path` (if given; it must exist) ← environment.
    ///
    /// Without `path`, [`DEFAULT_CONFIG_PATH`] is used when it exists, so a
    /// fresh install runs on defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_figment(providers(path)?)
    }

    /// Just `[control] socket`, for the CLI: read on its own so that a
    /// config broken elsewhere (a typo, an unreadable secret file) does not
    /// keep `astban status` from reaching the running daemon.
    pub fn control_socket(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
        let figment = providers(path)?;
        if !figment.contains("control.socket") {
            return Ok(ControlConfig::default().socket);
        }
        figment
            .extract_inner("control.socket")
            .map_err(|e| ConfigError::Parse(Box::new(e)))
    }

    /// Loads a config from TOML text (plus the environment), for the
    /// built-in demo and for tests.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(
            Figment::new()
                .merge(Toml::string(toml))
                .merge(env_provider()),
        )
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config
            .check()
            .map_err(|e| ConfigError::invalid(e, &figment))?;
        config.resolve_secret_files()?;
        Ok(config)
    }

    /// Every check, each section's by building its settings where it has
    /// them; the first problem found, by key.
    fn check(&self) -> Result<(), Invalid> {
        JailSettings::try_from(&self.jail)?;
        NameSettings::try_from(&self.jail)?;
        CrowdsecSettings::from_config(&self.crowdsec)?;
        self.firewall.check()?;
        self.ami.check(self.input.mode)?;
        self.log.check()?;
        self.mail.check()
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.ami.secret_file {
            self.ami.secret = read_secret_file("ami.secret_file", path)?;
        }
        if let Some(path) = &self.mail.password_file {
            self.mail.password = read_secret_file("mail.password_file", path)?;
        }
        if let Some(path) = &self.crowdsec.password_file {
            self.crowdsec.password = read_secret_file("crowdsec.password_file", path)?;
        }
        if let Some(path) = &self.crowdsec.bouncer_key_file {
            self.crowdsec.bouncer_key = read_secret_file("crowdsec.bouncer_key_file", path)?;
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets masked, for
    /// `astban check-config`.
    pub fn to_masked_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

impl FirewallConfig {
    fn check(&self) -> Result<(), Invalid> {
        let fw = self;
        if fw.table.is_empty()
            || fw.table.len() > 32
            || !fw
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return invalid(
                "firewall.table",
                format!(
                    "{:?} is not a valid nft table name (1-32 of A-Z a-z 0-9 _)",
                    fw.table
                ),
            );
        }
        if fw.nft.is_empty() || fw.nft[0].is_empty() {
            return invalid(
                "firewall.nft",
                "must name the nft command, e.g. [\"nft\"]".into(),
            );
        }
        if fw.retry_interval < Duration::from_millis(100) {
            return invalid(
                "firewall.retry_interval",
                "must be at least 100ms (e.g. \"5s\")".into(),
            );
        }
        if fw.ports.contains(&0) {
            return invalid(
                "firewall.ports",
                "port 0 cannot be blocked; list 1-65535".into(),
            );
        }
        Ok(())
    }
}

impl AmiConfig {
    /// The login and keepalive settings matter only when the input mode
    /// uses AMI; the message size bound is checked in every mode.
    fn check(&self, mode: InputMode) -> Result<(), Invalid> {
        let ami = self;
        if mode.uses_ami() {
            if ami.username.is_empty() {
                return invalid(
                    "ami.username",
                    "must name the manager.conf user section".into(),
                );
            }
            if ami.ping_interval.is_zero() || ami.ping_timeout.is_zero() {
                return invalid(
                    "ami.ping_interval",
                    "ping_interval and ping_timeout must be longer than 0s".into(),
                );
            }
            if ami.connect_timeout.is_zero() {
                return invalid(
                    "ami.connect_timeout",
                    "must be longer than 0s (e.g. \"10s\")".into(),
                );
            }
            if !ami.events.iter().any(|k| k.event_name().is_some()) {
                return invalid(
                    "ami.events",
                    "must list at least one security event (e.g. [\"invalid_password\"]), or use input.mode = \"log\"".into(),
                );
            }
            if ami.reconnect_min.is_zero() {
                return invalid(
                    "ami.reconnect_min",
                    "must be longer than 0s (e.g. \"1s\")".into(),
                );
            }
            if ami.reconnect_max < ami.reconnect_min {
                return invalid(
                    "ami.reconnect_max",
                    "must not be shorter than ami.reconnect_min".into(),
                );
            }
        }
        if !(1024..=16 << 20).contains(&ami.max_message_size) {
            return invalid(
                "ami.max_message_size",
                "must be between 1024 bytes and 16 MiB".into(),
            );
        }
        Ok(())
    }
}

impl LogConfig {
    fn check(&self) -> Result<(), Invalid> {
        if !(256..=1 << 20).contains(&self.max_line_length) {
            return invalid(
                "log.max_line_length",
                "must be between 256 bytes and 1 MiB".into(),
            );
        }
        if self.poll_interval < Duration::from_millis(10) {
            return invalid(
                "log.poll_interval",
                "must be at least 10ms (e.g. \"1s\")".into(),
            );
        }
        Ok(())
    }
}

impl MailConfig {
    fn check(&self) -> Result<(), Invalid> {
        let mail = self;
        if mail.enabled {
            if mail.destemail.parse::<lettre::message::Mailbox>().is_err() {
                return invalid(
                    "mail.destemail",
                    format!("{:?} is not a mail address", mail.destemail),
                );
            }
            if mail.sender.parse::<lettre::message::Mailbox>().is_err() {
                return invalid(
                    "mail.sender",
                    format!("{:?} is not a mail address", mail.sender),
                );
            }
            if mail.retries == 0 {
                return invalid(
                    "mail.retries",
                    "must be at least 1 (the first try counts)".into(),
                );
            }
            if mail.digest_max_bans == 0 {
                return invalid(
                    "mail.digest_max_bans",
                    "must be at least 1 (bans listed in one digest)".into(),
                );
            }
            if mail.starttls && !cfg!(feature = "tls") {
                return invalid(
                    "mail.starttls",
                    "this astban was built without TLS; rebuild with `--features tls` or set starttls = false".into(),
                );
            }
        }
        Ok(())
    }
}

/// A refusal of `key`'s value, for the section checks.
fn invalid(key: &'static str, message: String) -> Result<(), Invalid> {
    Err(Invalid { key, message })
}

/// One line per problem: where it came from, the key, what is wrong.
fn describe_parse_errors(errors: &figment::Error) -> String {
    let lines: Vec<String> = errors
        .clone()
        .into_iter()
        .map(|e| {
            let origin = match &e.metadata {
                Some(m) => match &m.source {
                    Some(source) => source.to_string(),
                    None => m.name.to_string(),
                },
                None => "config".into(),
            };
            if e.path.is_empty() {
                format!("{origin}: {}", e.kind)
            } else {
                format!("{origin}: {}: {}", e.path.join("."), e.kind)
            }
        })
        .collect();
    lines.join("\n")
}

/// The file (`path`, which must exist, or the default path if it exists)
/// and the environment, in that order of precedence.
fn providers(path: Option<&Path>) -> Result<Figment, ConfigError> {
    let file = match path {
        Some(p) => {
            if !p.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    origin: String::new(),
                    message: format!(
                        "{} does not exist (copy conf/astban.toml there, or leave --config out to run on defaults)",
                        p.display()
                    ),
                });
            }
            Some(p.to_path_buf())
        }
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    let mut figment = Figment::new();
    if let Some(file) = &file {
        figment = figment.merge(Toml::file_exact(file));
    }
    Ok(figment.merge(env_provider()))
}

fn env_provider() -> Env {
    // Only SECTION__KEY variables are config; ASTBAN_CONFIG and friends
    // belong to the command line.
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

fn read_secret_file(key: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Secret::new(text.lines().next().unwrap_or("").trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Figment::new().merge(Toml::string(toml)))
    }

    #[test]
    fn mail_settings_that_would_send_nothing_are_refused_by_key() {
        let mail = "[mail]\nenabled = true\ndestemail = \"root@localhost\"\nsender = \"astban@localhost\"\n";
        for (extra, key) in [
            ("retries = 0", "mail.retries"),
            ("digest_max_bans = 0", "mail.digest_max_bans"),
        ] {
            let msg = load(&format!("{mail}{extra}\n"))
                .expect_err(extra)
                .to_string();
            assert!(msg.contains(key) && msg.contains("at least 1"), "{msg}");
        }
        load(mail).expect("the defaults send");
    }

    #[test]
    fn defaults_are_the_books_jail() {
        let c = load("").expect("defaults load");
        assert_eq!(c.jail.maxretry, 5);
        assert_eq!(c.jail.findtime, Duration::from_secs(600));
        assert_eq!(c.jail.bantime, Duration::from_secs(3 * 86400));
        assert_eq!(c.input.mode, InputMode::Auto);
        assert_eq!(c.firewall.backend, Backend::Nftables);
        assert_eq!(c.ami.auth, AmiAuth::Md5);
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        let c =
            load("[jail]\nfindtime = 90\nbantime = \"3d\"\nbantime_max = \"1w\"").expect("loads");
        assert_eq!(c.jail.findtime, Duration::from_secs(90));
        assert_eq!(c.jail.bantime, Duration::from_secs(3 * 86400));
        let err = load("[jail]\nbantime = \"forever\"").expect_err("bad duration");
        let msg = err.to_string();
        assert!(msg.contains("bantime") && msg.contains("forever"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let msg = load("[jail]\nmaxretries = 3")
            .expect_err("typo")
            .to_string();
        assert!(msg.contains("maxretries"), "{msg}");
        let msg = load("[jails]\nmaxretry = 3").expect_err("typo").to_string();
        assert!(msg.contains("jails"), "{msg}");
    }

    #[test]
    fn invalid_values_name_key_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("astban.toml");
        std::fs::write(&path, "[jail]\nmaxretry = 0\n").expect("write");
        let msg = Config::from_figment(Figment::new().merge(Toml::file_exact(&path)))
            .expect_err("maxretry 0")
            .to_string();
        assert!(msg.contains("jail.maxretry"), "{msg}");
        assert!(msg.contains("astban.toml"), "{msg}");
        assert!(msg.contains("at least 1"), "{msg}");
    }

    #[test]
    fn ignoreip_takes_addresses_cidrs_and_host_names() {
        let c = load(
            "[jail]\nignoreip = [\"192.0.2.7\", \"10.1.2.3/8\", \"2001:db8::/32\", \"SIP.Provider.example\"]",
        )
        .expect("loads");
        let nets: Vec<String> = c.jail.ignoreip.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            nets,
            [
                "192.0.2.7/32",
                "10.0.0.0/8",
                "2001:db8::/32",
                "sip.provider.example"
            ]
        );
        let names = NameSettings::try_from(&c.jail).expect("valid");
        assert_eq!(names.names().len(), 1);
        let msg = load("[jail]\nignoreip = [\"not-an-ip\"]")
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("not-an-ip"), "{msg}");
        assert!(msg.contains("jail.ignoreip"), "{msg}");
    }

    #[test]
    // figment::Jail's closure must return figment::Error, which is large.
    #[allow(clippy::result_large_err)]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("astban.toml", "[jail]\nmaxretry = 3\n")?;
            jail.set_env("ASTBAN_JAIL__MAXRETRY", "7");
            jail.set_env("ASTBAN_FIREWALL__BACKEND", "dry-run");
            jail.set_env("ASTBAN_CONFIG", "ignored: not a SECTION__KEY variable");
            let c = Config::load(Some(Path::new("astban.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.jail.maxretry, 7);
            assert_eq!(c.firewall.backend, Backend::DryRun);
            Ok(())
        });
    }

    #[test]
    // figment::Jail's closure must return figment::Error, which is large.
    #[allow(clippy::result_large_err)]
    fn an_invalid_override_names_key_and_variable() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("astban.toml", "[jail]\nmaxretry = 3\n")?;
            jail.set_env("ASTBAN_JAIL__MAXRETRY", "0");
            let msg = Config::load(Some(Path::new("astban.toml")))
                .expect_err("maxretry 0")
                .to_string();
            assert!(
                msg.starts_with("jail.maxretry from ") && msg.contains("ASTBAN_"),
                "{msg}"
            );
            assert!(msg.ends_with("must be at least 1"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn the_cli_finds_the_socket_in_a_config_broken_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("astban.toml");
        std::fs::write(
            &path,
            "[control]\nsocket = \"/run/x/a.sock\"\n[ami]\nsecret_file = \"/nonexistent\"\n[jail]\nmaxretry = 0\n",
        )
        .expect("write");
        assert!(Config::load(Some(&path)).is_err());
        assert_eq!(
            Config::control_socket(Some(&path)).expect("socket"),
            Path::new("/run/x/a.sock")
        );
        std::fs::write(&path, "[jail]\nmaxretry = 3\n").expect("write");
        assert_eq!(
            Config::control_socket(Some(&path)).expect("socket"),
            ControlConfig::default().socket
        );
    }

    #[test]
    fn missing_config_file_is_a_clear_error() {
        let msg = Config::load(Some(Path::new("/nonexistent/astban.toml")))
            .expect_err("missing")
            .to_string();
        assert!(
            msg.contains("/nonexistent/astban.toml") && msg.contains("does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_are_masked_and_read_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret-from-file\n").expect("write");
        let toml = format!(
            "[ami]\nsecret = \"inline-secret\"\nsecret_file = {:?}\n",
            path.display().to_string()
        );
        let c = load(&toml).expect("loads");
        assert_eq!(c.ami.secret.expose(), "s3cret-from-file");
        let shown = c.to_masked_toml().expect("renders");
        assert!(
            !shown.contains("s3cret") && !shown.contains("inline-secret"),
            "{shown}"
        );
        assert!(shown.contains("secret = \"********\""), "{shown}");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn numeric_secrets_are_secrets_not_type_errors() {
        let c = load("[ami]\nsecret = 987654321\n").expect("a number is a secret too");
        assert_eq!(c.ami.secret.expose(), "987654321");
        let msg = load("[ami]\nsecret = [1, 2]\n")
            .expect_err("not a secret")
            .to_string();
        assert!(msg.contains("ami.secret") && !msg.contains('1'), "{msg}");
    }

    #[test]
    fn values_that_would_stall_or_overflow_are_refused() {
        for (toml, key) in [
            ("[log]\npoll_interval = 0", "log.poll_interval"),
            ("[firewall]\nretry_interval = 0", "firewall.retry_interval"),
            ("[ami]\nconnect_timeout = 0", "ami.connect_timeout"),
            ("[ami]\nevents = []", "ami.events"),
            ("[log]\nmax_line_length = 100000000", "log.max_line_length"),
            ("[jail]\nbantime_max = \"1000 years\"", "too long"),
            ("[jail]\nbantime = 9223372036854775807", "too long"),
        ] {
            let msg = load(toml).expect_err(toml).to_string();
            assert!(msg.contains(key), "{toml}: {msg}");
        }
        // The log-only mode does not need AMI events.
        load("[input]\nmode = \"log\"\n[ami]\nevents = []").expect("log mode");
    }

    #[test]
    fn shipped_config_states_the_defaults() {
        let shipped = load(include_str!("../../conf/astban.toml")).expect("conf/astban.toml loads");
        let render = |c: &Config| c.to_masked_toml().expect("renders");
        assert_eq!(render(&shipped), render(&Config::default()));
    }

    #[test]
    fn example_configs_load() {
        let log_only =
            load(include_str!("../../examples/log-only.toml")).expect("log-only.toml loads");
        assert_eq!(log_only.input.mode, InputMode::Log);
        assert_eq!(log_only.log.start, StartAt::Beginning);
    }

    #[test]
    fn masked_toml_loads_back() {
        let c = load("[jail]\nmaxretry = 4\nignoreip = [\"10.0.0.0/8\"]").expect("loads");
        let again =
            load(&c.to_masked_toml().expect("renders")).expect("rendered config is valid TOML");
        assert_eq!(again.jail.maxretry, 4);
        assert_eq!(again.jail.ignoreip, c.jail.ignoreip);
        let c = load("[jail]\nignoreip = [\"10.0.0.0/8\", \"pbx.example.org\"]").expect("loads");
        let again = load(&c.to_masked_toml().expect("renders")).expect("loads back");
        assert_eq!(again.jail.ignoreip, c.jail.ignoreip);
        assert_eq!(again.jail.bantime, c.jail.bantime);
    }
}

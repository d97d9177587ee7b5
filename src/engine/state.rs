//! The engine's state file: active bans and offender history.

use std::io;
use std::path::Path;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{BanInfo, EngineError};
use crate::failure::AttackerText;
use crate::persist::{self, Loaded};

/// The file in `state.dir` that holds bans and offender history.
pub const STATE_FILE: &str = "bans.json";

/// What survives a restart. Fields default to empty so that a file from
/// an older astban, or one edited by hand, still loads.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Saved {
    #[serde(default)]
    pub(crate) bans: Vec<std::sync::Arc<BanInfo>>,
    #[serde(default)]
    pub(crate) offenders: Vec<SavedOffender>,
    /// The first ban journal (see [`super::journal`]) whose records came
    /// after this snapshot; 0 in a file from before the journal.
    #[serde(default)]
    pub(crate) journal: u64,
    /// Hosts that logged in with a password (`jail.known_host_window`).
    #[serde(default)]
    pub(crate) known_sites: Vec<SavedSite>,
    /// Accounts under attack (`jail.account_maxretry`).
    #[serde(default)]
    pub(crate) accounts_under_attack: Vec<SavedAttack>,
}

/// A known site: when it last logged in with a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedSite {
    #[serde(with = "crate::units::host_format")]
    pub(crate) host: IpNet,
    pub(crate) last_success: Timestamp,
}

/// An account under attack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedAttack {
    pub(crate) account: AttackerText,
    pub(crate) since: Timestamp,
    pub(crate) until: Timestamp,
    #[serde(default)]
    pub(crate) failures: u32,
    #[serde(default)]
    pub(crate) bans: u32,
}

/// A network's ban history, kept to escalate its next ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedOffender {
    #[serde(with = "crate::units::host_format")]
    pub(crate) host: IpNet,
    /// Bans so far within the history window.
    pub(crate) offenses: u32,
    /// When the last of them ended (or ends).
    pub(crate) last_expires: Timestamp,
}

/// Reads the state file. A missing file is a first start; a corrupt one is
/// logged, set aside for a human, and astban starts fresh.
pub(crate) fn load(path: &Path) -> Result<Saved, EngineError> {
    match persist::load_json(path) {
        Ok(Loaded::Value(saved)) => Ok(saved),
        Ok(Loaded::Missing) => Ok(Saved::default()),
        Ok(Loaded::Corrupt { error, moved_to }) => {
            tracing::error!(
                path = %path.display(),
                moved_to = %moved_to.display(),
                "the ban state file is corrupt ({error}); it was set aside and astban starts without the bans it held \
                 (elements already in the kernel still expire on time)"
            );
            Ok(Saved::default())
        }
        Err(source) => Err(EngineError::State {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the state file atomically.
pub(crate) fn save(path: &Path, saved: &Saved) -> io::Result<()> {
    persist::save_json(path, saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_file_is_set_aside_and_astban_starts_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, b"{\"bans\": [ {\"host\": ").expect("write");
        let saved = load(&path).expect("not fatal");
        assert_eq!(saved, Saved::default());
        assert!(!path.exists());
        let set_aside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            set_aside
                .iter()
                .any(|n| n.starts_with("bans.json.corrupt-")),
            "{set_aside:?}"
        );
    }

    #[test]
    fn a_bad_address_makes_the_file_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, br#"{"offenders":[{"host":"not-an-ip","offenses":1,"last_expires":"2026-01-01T00:00:00Z"}]}"#)
            .expect("write");
        assert_eq!(load(&path).expect("not fatal"), Saved::default());
    }

    #[test]
    fn a_file_from_before_accounts_and_known_sites_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        std::fs::write(
            &path,
            br#"{"bans":[{"host":"192.0.2.7","banned_at":"2027-01-15T08:00:00Z","expires":"2027-01-15T09:00:00Z","failures":5,"offense":1,"manual":false,"kinds":["invalid_password"],"services":["sip"],"accounts":["100"]}],"offenders":[],"journal":3}"#,
        )
        .expect("write");
        let saved = load(&path).expect("load");
        assert_eq!(saved.bans.len(), 1);
        assert_eq!(saved.bans[0].account_under_attack, None);
        assert!(saved.known_sites.is_empty() && saved.accounts_under_attack.is_empty());
        assert_eq!(saved.journal, 3);
    }

    #[test]
    fn a_missing_file_is_a_first_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load(&dir.path().join(STATE_FILE)).expect("load"),
            Saved::default()
        );
    }

    #[test]
    fn hosts_are_written_without_a_prefix_length() {
        let offender = |host: &str| SavedOffender {
            host: host.parse().expect("net"),
            offenses: 2,
            last_expires: Timestamp::from_second(1_800_000_000).expect("ts"),
        };
        let json = serde_json::to_string(&[offender("192.0.2.7/32"), offender("2001:db8::/64")])
            .expect("json");
        assert!(json.contains(r#""host":"192.0.2.7""#), "{json}");
        assert!(json.contains(r#""host":"2001:db8::/64""#), "{json}");
        assert!(
            json.contains(r#""last_expires":"2027-01-15T08:00:00Z""#),
            "{json}"
        );
        let back: Vec<SavedOffender> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back[0], offender("192.0.2.7/32"));
    }
}

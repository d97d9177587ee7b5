//! What a SIGHUP may change while the daemon runs, decided by comparing
//! the running config with the file's, section by section.
//!
//! The log rules and most of `[jail]` apply live; everything else (the
//! inputs, the firewall, mail, the sockets and files) is wired at start, so
//! a change there is reported as needing a restart and the running value is
//! kept. [`Plan::applied`] is then the config actually in force, which is
//! what the daemon keeps, not the file's.

use serde::Serialize;

use crate::config::{Config, JailSettings, LogConfig, NameSettings};

/// What a reload will do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The config in force after the reload: the new file's live
    /// sections, the running values of the rest.
    pub applied: Config,
    /// The log rules (`log.rules`, `[[log.rule]]`, `log.ignoreregex`)
    /// changed and must be recompiled.
    pub rules_changed: bool,
    /// `[jail]` settings that apply live changed.
    pub jail_changed: bool,
    /// The host names of `jail.ignoreip`, or how they are looked up
    /// (`jail.ignore_names_*`), changed: the resolver task takes them.
    pub names_changed: bool,
    /// Settings that changed in the file but wait for a restart.
    pub restart_needed: Vec<&'static str>,
}

impl Plan {
    /// Compares `running` with `file` (the config just read).
    pub fn new(running: &Config, file: &Config) -> Plan {
        let mut applied = running.clone();
        let rules_changed = !same(&rules_of(&running.log), &rules_of(&file.log));
        applied.log.rules.clone_from(&file.log.rules);
        applied.log.extra_rules.clone_from(&file.log.extra_rules);
        applied.log.ignoreregex.clone_from(&file.log.ignoreregex);
        // The jail takes every setting live except these two, which shape
        // the state it already holds (own addresses, IPv6 prefix keys).
        let mut jail = file.jail.clone();
        jail.ignore_self = running.jail.ignore_self;
        jail.ipv6_prefix = running.jail.ipv6_prefix;
        // Compared as the engine takes them: a change to the host names
        // alone goes to the resolver, not the engine.
        let jail_changed =
            JailSettings::try_from(&running.jail).ok() != JailSettings::try_from(&jail).ok();
        let names_changed =
            NameSettings::try_from(&running.jail).ok() != NameSettings::try_from(&jail).ok();
        applied.jail = jail;

        let mut restart_needed = Vec::new();
        let mut check = |name, changed: bool| {
            if changed {
                restart_needed.push(name);
            }
        };
        // Secrets serialise masked: compare them themselves.
        check(
            "ami",
            !same(&running.ami, &file.ami) || running.ami.secret != file.ami.secret,
        );
        check("input", !same(&running.input, &file.input));
        check(
            "jail.ignore_self",
            running.jail.ignore_self != file.jail.ignore_self,
        );
        check(
            "jail.ipv6_prefix",
            running.jail.ipv6_prefix != file.jail.ipv6_prefix,
        );
        check("firewall", !same(&running.firewall, &file.firewall));
        check(
            "mail",
            !same(&running.mail, &file.mail) || running.mail.password != file.mail.password,
        );
        check("control", !same(&running.control, &file.control));
        check("state", !same(&running.state, &file.state));
        check("metrics", running.metrics != file.metrics);
        check("log (other than its rules)", !same(&applied.log, &file.log));
        Plan {
            applied,
            rules_changed,
            jail_changed,
            names_changed,
            restart_needed,
        }
    }
}

/// The parts of `[log]` that a reload recompiles.
#[derive(Serialize)]
struct Rules<'a> {
    rules: &'a str,
    rule: &'a [crate::logwatch::filter::RuleDef],
    ignoreregex: &'a [String],
}

fn rules_of(log: &LogConfig) -> Rules<'_> {
    Rules {
        rules: &log.rules,
        rule: &log.extra_rules,
        ignoreregex: &log.ignoreregex,
    }
}

/// Whether two sections say the same, compared through their TOML form
/// (every section serialises; none needs `PartialEq` for this alone). One
/// that cannot be written counts as changed.
fn same<T: Serialize>(a: &T, b: &T) -> bool {
    match (toml::to_string(a), toml::to_string(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn base() -> Config {
        Config::default()
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let plan = Plan::new(&base(), &base());
        assert!(!plan.rules_changed && !plan.jail_changed && !plan.names_changed);
        assert!(plan.restart_needed.is_empty());
    }

    #[test]
    fn host_names_and_their_lookup_settings_apply_live() {
        let mut file = base();
        file.jail
            .ignoreip
            .push("trunk.example".parse().expect("name"));
        // A name is the resolver's business alone: the engine is not
        // reconfigured (which would re-check every ban) for it.
        let plan = Plan::new(&base(), &file);
        assert!(plan.names_changed && !plan.jail_changed);
        assert!(plan.restart_needed.is_empty());
        let mut later = file.clone();
        later.jail.ignore_names_servers = vec!["127.0.0.1:5353".into()];
        let plan = Plan::new(&file, &later);
        assert!(plan.names_changed && !plan.jail_changed);
        // A network alone is no business of the resolver's.
        let mut nets = base();
        nets.jail
            .ignoreip
            .push("192.0.2.0/24".parse().expect("net"));
        let plan = Plan::new(&base(), &nets);
        assert!(plan.jail_changed && !plan.names_changed);
    }

    #[test]
    fn live_sections_apply_and_the_rest_keeps_its_running_value() {
        let running = base();
        let mut file = base();
        file.jail.maxretry = 3;
        file.jail.ipv6_prefix = 48;
        file.log.ignoreregex = vec!["test".into()];
        file.log.path = Some("/elsewhere/messages".into());
        file.firewall.table = "other".into();
        let plan = Plan::new(&running, &file);
        assert!(plan.rules_changed && plan.jail_changed);
        assert_eq!(plan.applied.jail.maxretry, 3);
        assert_eq!(plan.applied.log.ignoreregex, ["test"]);
        // What waits for a restart stays as it runs, so that status and
        // the next reload compare against what is really in force.
        assert_eq!(plan.applied.jail.ipv6_prefix, running.jail.ipv6_prefix);
        assert_eq!(plan.applied.log.path, running.log.path);
        assert_eq!(plan.applied.firewall.table, running.firewall.table);
        assert_eq!(
            plan.restart_needed,
            ["jail.ipv6_prefix", "firewall", "log (other than its rules)"]
        );
    }

    #[test]
    fn a_changed_secret_needs_a_restart_though_it_prints_masked() {
        let mut file = base();
        file.ami.secret = Secret::new("new");
        file.mail.password = Secret::new("new");
        let plan = Plan::new(&base(), &file);
        assert_eq!(plan.restart_needed, ["ami", "mail"]);
    }
}

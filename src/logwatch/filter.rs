//! failregex / ignoreregex rules over log lines.

use serde::{Deserialize, Serialize};

use crate::failure::{FailureKind, Service};

/// One failregex rule as written in a rules file or in `[[log.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Unique name, shown by `astban test-log`.
    pub name: String,
    /// The failure this line means.
    pub kind: FailureKind,
    /// The service attacked, when the rule knows it.
    #[serde(default)]
    pub service: Option<Service>,
    /// The regex, with `<HOST>` where Asterisk writes the address.
    pub failregex: String,
}

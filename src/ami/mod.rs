//! The Asterisk Manager Interface input: a pure codec, a client that keeps a
//! session alive, and the mapping of security events to failures.
//!
//! The daemon starts [`client::run`]; [`codec`] and [`security`] are pure
//! and are what the tests and the `ami_decode` benchmark drive directly.

pub mod client;
pub mod codec;
pub mod security;

/// The byte-exact captures from a real Asterisk 20, for the unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    pub(crate) const SECURITY: &[u8] =
        include_bytes!("../../integration/fixtures/ami-security-events.txt");
    pub(crate) const FLOOD: &[u8] =
        include_bytes!("../../integration/fixtures/ami-register-flood.txt");
    pub(crate) const RECEIVED: &[u8] =
        include_bytes!("../../integration/fixtures/ami-login-variants-received.txt");
    pub(crate) const SENT: &[u8] =
        include_bytes!("../../integration/fixtures/ami-login-variants-sent.txt");
    pub(crate) const DIALOGUE: &[u8] =
        include_bytes!("../../integration/fixtures/ami-login-variants-dialogue.txt");
}

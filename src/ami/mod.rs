//! The Asterisk Manager Interface input: a pure codec, a client that keeps a
//! session alive, and the mapping of security events to failures.
//!
//! The daemon starts [`client::run`]; [`codec`] and [`security`] are pure
//! and are what the tests and the `ami_decode` benchmark drive directly.

pub mod client;
pub mod codec;
pub mod security;

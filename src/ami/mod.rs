//! The Asterisk Manager Interface input: a pure codec, a client that keeps a
//! session alive, and the mapping of security events to failures.

pub mod client;
pub mod codec;
pub mod security;

//! The Asterisk Manager Interface input: a pure codec, a client that keeps a
//! session alive, and the mapping of security events to failures.
//!
//! The daemon starts [`client::run`]; [`codec`] and [`security`] are pure
//! and are what the tests and the `ami_decode` benchmark drive directly.

pub mod attempt;
pub mod client;
pub mod codec;
pub mod security;

/// Longest quote of server text in an error message: enough to recognise
/// it, short enough that a hostile server cannot flood the log.
const QUOTE_MAX: usize = 120;

/// Text from the AMI server, sanitised and bounded for an error message.
fn quote(raw: &[u8]) -> String {
    crate::failure::quote(raw, QUOTE_MAX)
}

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

    /// A capture's name, its bytes, and the attempts per host it must count.
    pub(crate) type Expected = (
        &'static str,
        &'static [u8],
        &'static [(&'static str, usize)],
    );

    /// The PJSIP captures (Asterisk 20.20.1, pjproject 2.17), by name, with
    /// the attempts per host each must count (see `pjsip/CAPTURES.md`).
    pub(crate) const PJSIP: [Expected; 7] = [
        (
            "ami-pjsip-security-events.txt",
            include_bytes!("../../integration/fixtures/pjsip/ami-pjsip-security-events.txt"),
            &[
                ("127.0.2.2", 3),
                ("127.0.2.3", 2),
                ("127.0.2.4", 1),
                ("127.0.2.5", 2),
            ],
        ),
        (
            "ami-pjsip-options-tcp.txt",
            include_bytes!("../../integration/fixtures/pjsip/ami-pjsip-options-tcp.txt"),
            &[("127.0.2.6", 2), ("127.0.2.8", 2)],
        ),
        (
            "ami-pjsip-auth-username-order.txt",
            include_bytes!("../../integration/fixtures/pjsip/ami-pjsip-auth-username-order.txt"),
            &[("127.0.2.9", 4)],
        ),
        (
            "ami-pjsip-anonymous-invite.txt",
            include_bytes!("../../integration/fixtures/pjsip/ami-pjsip-anonymous-invite.txt"),
            &[],
        ),
        (
            "ami-svcrack-pjsip.txt",
            include_bytes!("../../integration/fixtures/pjsip/ami-svcrack-pjsip.txt"),
            &[("10.203.1.2", 31)],
        ),
        (
            "ami-svcrack-chansip.txt",
            include_bytes!("../../integration/fixtures/pjsip/ami-svcrack-chansip.txt"),
            &[("10.203.1.2", 31)],
        ),
        (
            "ami-chansip-recheck.txt",
            include_bytes!("../../integration/fixtures/pjsip/ami-chansip-recheck.txt"),
            &[("127.0.1.77", 5)],
        ),
    ];

    /// The IPv6 capture, kept apart: its host is banned as a /64.
    pub(crate) const PJSIP_IPV6: &[u8] =
        include_bytes!("../../integration/fixtures/pjsip/ami-pjsip-ipv6.txt");
}

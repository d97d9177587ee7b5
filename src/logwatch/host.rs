//! The `<HOST>` token: a strict IPv4 or IPv6 address as Asterisk prints
//! one, optionally in brackets and optionally followed by `:port`.
//!
//! Parsed by hand rather than by a regex so that what counts as an address
//! is exactly what `std::net` accepts (no leading zeros, no octal, no
//! hostnames), and so that a rule can ask for the token with or without its
//! port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest address text looked at: a full IPv6 address with an embedded
/// IPv4 part is 45 characters; anything longer is not an address.
const MAX_ADDR: usize = 45;

/// An address found at a given position of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostToken {
    /// The address, IPv4-mapped IPv6 folded to IPv4.
    pub addr: IpAddr,
    /// Where the token ends, port included.
    pub end: usize,
    /// Where the token ends without its `:port`, when it has one; a rule
    /// that writes the port itself (`<HOST>:\d+`) continues from here.
    pub end_without_port: Option<usize>,
}

/// Whether `b` can be part of an address's text.
pub fn is_addr_byte(b: u8) -> bool {
    ADDR_BYTES[usize::from(b)]
}

/// [`is_addr_byte`] as a table: it is asked of every byte of every
/// candidate address.
const ADDR_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_hexdigit() || c == b':' || c == b'.';
        b += 1;
    }
    table
};

/// Reads the address that starts exactly at `at`, or `None`.
///
/// The token must end at a word boundary: `1.2.3.4x` is not an address.
pub fn parse_at(text: &[u8], at: usize) -> Option<HostToken> {
    let rest = text.get(at..)?;
    let (addr, len, port_len) = if rest.first() == Some(&b'[') {
        bracketed(rest)?
    } else {
        bare(rest)?
    };
    let end = at + len + port_len;
    if text
        .get(end)
        .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return None;
    }
    Some(HostToken {
        addr,
        end,
        end_without_port: (port_len > 0).then_some(at + len),
    })
}

/// `[addr]` or `[addr]:port`.
fn bracketed(rest: &[u8]) -> Option<(IpAddr, usize, usize)> {
    let close = rest.iter().take(MAX_ADDR + 2).position(|&b| b == b']')?;
    let addr = parse_addr(&rest[1..close])?;
    let len = close + 1;
    Some((addr, len, port_len(&rest[len..])))
}

/// `addr`, or `a.b.c.d:port` (IPv6 with a port is always bracketed).
fn bare(rest: &[u8]) -> Option<(IpAddr, usize, usize)> {
    let window = &rest[..rest.len().min(MAX_ADDR + 7)];
    let run = window
        .iter()
        .position(|&b| !is_addr_byte(b))
        .unwrap_or(window.len());
    let token = &rest[..run];
    if let Some(addr) = parse_addr(token) {
        return Some((addr, run, 0));
    }
    if let Some(colon) = token.iter().rposition(|&b| b == b':') {
        let (host, port) = (&token[..colon], &token[colon..]);
        if let Some(v4) = parse_v4(host) {
            if port_len(port) == port.len() {
                return Some((IpAddr::V4(v4), colon, port.len()));
            }
        }
    }
    // A sentence may end right after the address ("from 1.2.3.4.").
    if let [head @ .., b'.' | b':'] = token {
        if let Some(addr) = parse_addr(head) {
            return Some((addr, head.len(), 0));
        }
    }
    None
}

/// Length of a `:port` (1-65535) at the start of `rest`, or 0.
fn port_len(rest: &[u8]) -> usize {
    if rest.first() != Some(&b':') {
        return 0;
    }
    let digits = rest[1..]
        .iter()
        .take(6)
        .take_while(|b| b.is_ascii_digit())
        .count();
    // At most 6 digits: no overflow.
    let port = rest[1..1 + digits]
        .iter()
        .fold(0u32, |n, &b| n * 10 + u32::from(b - b'0'));
    let valid = (1..=5).contains(&digits) && (1..=u32::from(u16::MAX)).contains(&port);
    if valid { 1 + digits } else { 0 }
}

fn parse_addr(token: &[u8]) -> Option<IpAddr> {
    if token.is_empty() || token.len() > MAX_ADDR {
        return None;
    }
    if let Some(v4) = parse_v4(token) {
        return Some(IpAddr::V4(v4));
    }
    if !may_be_v6(token) {
        return None;
    }
    let v6: Ipv6Addr = std::str::from_utf8(token).ok()?.parse().ok()?;
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// Whether `token` can be IPv6 text at all: it has a colon, and dots
/// only after the last one (an embedded IPv4 part ends the address). It
/// turns away the common `a.b.c.d:port` before `std`'s parser, which took
/// 4% of test-log's time failing on it.
fn may_be_v6(token: &[u8]) -> bool {
    memchr::memrchr(b':', token).is_some_and(|last| !token[..last].contains(&b'.'))
}

/// Dotted quad, each part 0-255 without leading zeros, as `std` accepts
/// it; by hand, in one pass, because this runs on every candidate address.
fn parse_v4(token: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut at = 0;
    for (i, octet) in octets.iter_mut().enumerate() {
        if i > 0 {
            (token.get(at) == Some(&b'.')).then_some(())?;
            at += 1;
        }
        let part = &token[at..];
        let (mut n, mut len) = (0u16, 0);
        while let Some(&b) = part.get(len).filter(|b| len < 3 && b.is_ascii_digit()) {
            n = n * 10 + u16::from(b - b'0');
            len += 1;
        }
        if len == 0 || (len > 1 && part[0] == b'0') {
            return None;
        }
        *octet = u8::try_from(n).ok()?;
        at += len;
    }
    (at == token.len()).then(|| Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str, at: usize) -> Option<(String, usize, Option<usize>)> {
        parse_at(text.as_bytes(), at).map(|t| (t.addr.to_string(), t.end, t.end_without_port))
    }

    #[test]
    fn ipv4_with_and_without_port() {
        assert_eq!(host("'1.2.3.4'", 1), Some(("1.2.3.4".into(), 8, None)));
        assert_eq!(
            host("'1.2.3.4:5060'", 1),
            Some(("1.2.3.4".into(), 13, Some(8)))
        );
        assert_eq!(host("from 1.2.3.4.", 5), Some(("1.2.3.4".into(), 12, None)));
    }

    #[test]
    fn ipv6_forms() {
        assert_eq!(
            host("[2001:db8::1]:5060'", 0),
            Some(("2001:db8::1".into(), 18, Some(13)))
        );
        assert_eq!(
            host("[2001:db8::1]'", 0),
            Some(("2001:db8::1".into(), 13, None))
        );
        assert_eq!(
            host("2001:db8::1/5060", 0),
            Some(("2001:db8::1".into(), 11, None))
        );
        assert_eq!(host("::1 ", 0), Some(("::1".into(), 3, None)));
    }

    #[test]
    fn mapped_ipv6_is_folded_to_ipv4() {
        assert_eq!(
            host("::ffff:192.0.2.7 x", 0),
            Some(("192.0.2.7".into(), 16, None))
        );
        assert_eq!(
            host("[::ffff:192.0.2.7]:5060", 0),
            Some(("192.0.2.7".into(), 23, Some(18)))
        );
    }

    #[test]
    fn rejects_what_is_not_strictly_an_address() {
        for text in [
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.4x",
            "1.2.3.4_",
            "example.com",
            "",
            "[1.2.3.4",
            "dead:beef",
            "1.2.3.4:99999x",
            "::g",
            "1111111111111111111111111111111111111111111111111111",
        ] {
            assert_eq!(parse_at(text.as_bytes(), 0), None, "{text:?}");
        }
    }

    #[test]
    fn ipv4_parsing_agrees_with_std() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "1.2.3.4",
            "10.0.0.1",
            "256.0.0.1",
            "01.2.3.4",
            "1.2.3.",
            ".1.2.3",
            "1..2.3",
            "1.2.3.4.5",
            "1234.1.1.1",
            "1.2.3.x",
        ] {
            assert_eq!(parse_v4(text.as_bytes()), text.parse().ok(), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn ipv4_parsing_agrees_with_std_on_any_text(
            text in "[0-9.x]{0,20}|[0-9]{0,4}(\\.[0-9]{0,4}){0,4}x?"
        ) {
            proptest::prop_assert_eq!(parse_v4(text.as_bytes()), text.parse().ok());
        }
    }

    #[test]
    fn ipv6_parsing_agrees_with_std() {
        for text in [
            "1.2.3.4:5060",
            "::1",
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4:5",
            "::1.2.3.4:5",
            "1.2::3",
            "2001:db8::5",
            "dead:beef",
            "12345",
        ] {
            let std = text
                .parse::<Ipv6Addr>()
                .ok()
                .map(|v6| v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4));
            let std = std.or_else(|| text.parse::<Ipv4Addr>().ok().map(IpAddr::V4));
            assert_eq!(parse_addr(text.as_bytes()), std, "{text}");
        }
    }

    #[test]
    fn a_bad_port_is_not_part_of_the_token() {
        // "1.2.3.4:0" is an address followed by ":0", which the rule must
        // then account for; it is not a port.
        assert_eq!(host("1.2.3.4:0", 0), None);
        assert_eq!(host("1.2.3.4:65536", 0), None);
        assert_eq!(host("1.2.3.4:00000", 0), None);
        assert_eq!(
            host("1.2.3.4:65535", 0),
            Some(("1.2.3.4".into(), 13, Some(7)))
        );
        assert_eq!(
            host("1.2.3.4:0080", 0),
            Some(("1.2.3.4".into(), 12, Some(7)))
        );
        assert_eq!(host("1.2.3.4: x", 0), Some(("1.2.3.4".into(), 7, None)));
    }
}

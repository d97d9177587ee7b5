//! Security events → [`Report`]s.
//!
//! Only Asterisk's own structured `RemoteAddress` decides the host; the
//! account, session id and challenge fields are attacker text, kept for
//! humans only. Pure apart from [`Attempts`], the small bounded table that
//! folds the several events Asterisk raises for one attempt into one.

use crate::ami::quote;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use jiff::Timestamp;

use super::attempt::{Attempts, Step};
use super::codec::{Message, MessageKind};
use crate::failure::{
    AttackerText, Failure, FailureKind, KindSet, Report, Service, Source, Success,
};

/// A security event that should have counted but cannot be attributed to a
/// host. The caller logs it; the event is dropped, never guessed at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// The event has no `RemoteAddress`.
    #[error("{event} event without RemoteAddress; skipped")]
    NoAddress {
        /// The event name.
        event: &'static str,
    },
    /// `RemoteAddress` is not `IPV4|IPV6/<transport>/<address>/<port>`.
    #[error("{event} event with unparsable RemoteAddress {value:?}; skipped")]
    BadAddress {
        /// The event name.
        event: &'static str,
        /// The start of the value, sanitised.
        value: String,
    },
    /// `RemoteAddress` appears more than once: text planted in another
    /// field (a newline in a SIP username) added one, so the host is
    /// ambiguous.
    #[error(
        "{event} event carries RemoteAddress {count} times (a field injected through attacker text?); host is ambiguous, skipped"
    )]
    AmbiguousAddress {
        /// The event name.
        event: &'static str,
        /// How many `RemoteAddress` fields it had.
        count: usize,
    },
}

/// Turns security events into reports; one per AMI input.
#[derive(Debug)]
pub struct SecurityEvents {
    /// The kinds configured in `ami.events`.
    enabled: KindSet,
    attempts: Attempts,
}

impl SecurityEvents {
    /// Counts the given kinds (config `ami.events`); other failure events
    /// are ignored.
    pub fn new(kinds: &[FailureKind]) -> SecurityEvents {
        SecurityEvents {
            enabled: kinds.iter().copied().collect(),
            attempts: Attempts::default(),
        }
    }

    /// The report for `message`, if it is a counted failure or a successful
    /// login. Responses, `ChallengeSent`, disabled kinds and the further
    /// events of an attempt already counted give `Ok(None)` (see
    /// [`super::attempt`] for what one attempt is). `now` stands in for a
    /// missing or unparsable `EventTV`.
    pub fn interpret(&mut self, message: &Message, now: Timestamp) -> Result<Option<Report>, Skip> {
        let MessageKind::Event { name } = message.kind() else {
            return Ok(None);
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return Ok(None);
        };
        let (step, kind) = match name {
            "SuccessfulAuth" => (Step::Succeeded, None),
            "ChallengeSent" => (Step::Challenged, None),
            _ => match FailureKind::from_event_name(name) {
                Some(kind) if self.enabled.contains(kind) => (Step::of_failure(kind), Some(kind)),
                _ => return Ok(None),
            },
        };
        let event = kind
            .and_then(FailureKind::event_name)
            .unwrap_or(match step {
                Step::Succeeded => "SuccessfulAuth",
                _ => "ChallengeSent",
            });
        let host = match remote_host(message, event) {
            Ok(host) => host,
            // Normal traffic that cannot be placed only loses its hint.
            Err(_) if step == Step::Challenged => return Ok(None),
            Err(skip) => return Err(skip),
        };
        let time = event_time(message, now);
        let service = service(message);
        let mut sessions = message.get_all("SessionID").filter(|s| !s.is_empty());
        let session = sessions.next();
        // A second SessionID was planted through attacker text; merging on
        // it would let the attacker choose which events are one attempt.
        // An AMI login is one event whatever went wrong, and AMI's
        // SessionID is a reused heap address: nothing to merge there.
        let merge_key = session.filter(|_| sessions.next().is_none() && service != Service::Ami);
        let counts = self.attempts.counts(host, service, merge_key, step, time);
        let Some(kind) = kind else {
            return Ok(
                (step == Step::Succeeded).then_some(Report::Success(Success {
                    host,
                    password: message.get("UsingPassword") == Some(b"1".as_slice()),
                    service,
                    time,
                    source: Source::Ami,
                })),
            );
        };
        if !counts {
            return Ok(None);
        }
        let account = message.get("AccountID");
        Ok(Some(Report::Failure(Failure {
            host,
            kind,
            service,
            account_matched: account.is_some_and(|a| account_matched(kind, service, a)),
            account: account.map(AttackerText::from_bytes),
            session: session.map(AttackerText::from_bytes),
            time,
            source: Source::Ami,
        })))
    }
}

/// Whether Asterisk raises `kind` for `service` only after it matched the
/// account to one in its config, so that `AccountID` is the config's name
/// (read from Asterisk 20's source and the captures):
///
/// - `ChallengeResponseFailed`: res_pjsip reports the endpoint's sorcery
///   id, and `<unknown>` for the artificial endpoint it challenges unknown
///   or ACL-refused requests with; chan_sip raises it only when
///   `sip_find_peer` found the peer; manager.c only for an existing user.
/// - `InvalidPassword` from AMI: manager.c raises `InvalidAccountID` for a
///   user that does not exist. chan_sip's is *not* proof: with
///   `alwaysauthreject` it fakes a challenge for an unknown peer and
///   raises `InvalidPassword` with the name the attacker sent (`999` in
///   `captures/ami-security-events.txt`).
/// - Everything else (`InvalidAccountID`, `FailedACL`, ...) names what the
///   attacker wrote, or was refused before any password was checked.
pub fn account_matched(kind: FailureKind, service: Service, account: &[u8]) -> bool {
    let named = !account.is_empty() && account != b"<unknown>";
    named
        && match kind {
            FailureKind::ChallengeResponseFailed => true,
            FailureKind::InvalidPassword => service == Service::Ami,
            _ => false,
        }
}

/// The one `RemoteAddress` of the event, parsed.
fn remote_host(message: &Message, event: &'static str) -> Result<IpAddr, Skip> {
    let mut values = message.get_all("RemoteAddress");
    let Some(value) = values.next() else {
        return Err(Skip::NoAddress { event });
    };
    let extra = values.count();
    if extra > 0 {
        return Err(Skip::AmbiguousAddress {
            event,
            count: extra + 1,
        });
    }
    parse_remote_address(value).ok_or_else(|| Skip::BadAddress {
        event,
        value: quote(value),
    })
}

/// Parses Asterisk's `IPV4/UDP/192.0.2.7/5060` and `IPV6/TCP/2001:db8::7/5060`
/// (the IPv6 address bare or in brackets), strictly: the family must match
/// the address, the transport must be one Asterisk names (UDP, TCP, TLS,
/// WS, WSS) and the port must be a port. IPv4-mapped IPv6 addresses become
/// IPv4, since that is what the packets carry. The unspecified address is
/// refused: it names nobody.
pub fn parse_remote_address(value: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('/');
    let (family, transport, address, port) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !matches!(transport, "UDP" | "TCP" | "TLS" | "WS" | "WSS")
        || port.is_empty()
        || port.len() > 5
        || !port.bytes().all(|b| b.is_ascii_digit())
        || port.parse::<u16>().is_err()
    {
        return None;
    }
    let host = match family {
        "IPV4" => IpAddr::V4(address.parse::<Ipv4Addr>().ok()?),
        "IPV6" => {
            let bare = match address.strip_prefix('[') {
                Some(inner) => inner.strip_suffix(']')?,
                None => address,
            };
            IpAddr::V6(bare.parse::<Ipv6Addr>().ok()?).to_canonical()
        }
        _ => return None,
    };
    (!host.is_unspecified()).then_some(host)
}

/// The event's own time (`EventTV: 2026-11-24T16:03:18.933+0000`), or `now`.
fn event_time(message: &Message, now: Timestamp) -> Timestamp {
    message
        .get("EventTV")
        .and_then(|tv| std::str::from_utf8(tv).ok())
        .and_then(|tv| tv.parse().ok())
        .unwrap_or(now)
}

fn service(message: &Message) -> Service {
    message
        .get("Service")
        .and_then(|s| std::str::from_utf8(s).ok())
        .map_or(Service::Other, Service::from_ami)
}

#[cfg(test)]
mod tests {
    use crate::ami::fixtures::{FLOOD, PJSIP, PJSIP_IPV6, RECEIVED, SECURITY};
    use std::collections::BTreeMap;

    use tokio_util::bytes::{Bytes, BytesMut};
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::ami::codec::{AmiCodec, Frame};

    fn all_kinds() -> SecurityEvents {
        SecurityEvents::new(&crate::config::AmiConfig::default().events)
    }

    fn reports(capture: &[u8]) -> Vec<Report> {
        let mut codec = AmiCodec::new(64 * 1024);
        let mut buf = BytesMut::from(capture);
        let mut events = all_kinds();
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).expect("capture decodes") {
            if let Frame::Message(m) = frame {
                out.extend(
                    events
                        .interpret(&m, Timestamp::UNIX_EPOCH)
                        .expect("capture maps"),
                );
            }
        }
        out
    }

    fn failures_per_host(reports: &[Report]) -> BTreeMap<String, usize> {
        let mut per_host = BTreeMap::new();
        for r in reports {
            if let Report::Failure(f) = r {
                *per_host.entry(f.host.to_string()).or_default() += 1;
            }
        }
        per_host
    }

    fn event(fields: &str) -> Message {
        Message::parse(Bytes::from(format!(
            "{}\r\n\r\n",
            fields.replace('\n', "\r\n")
        )))
    }

    #[test]
    fn one_failure_per_attempt_in_the_security_capture() {
        let reports = reports(SECURITY);
        let expected: BTreeMap<String, usize> = [
            ("127.0.0.2", 4),
            ("127.0.0.3", 1),
            ("127.0.0.4", 3),
            ("127.0.0.5", 1),
        ]
        .map(|(h, n)| (h.to_owned(), n))
        .into();
        assert_eq!(failures_per_host(&reports), expected);

        let successes: Vec<_> = reports
            .iter()
            .filter_map(|r| match r {
                Report::Success(s) => Some((s.host.to_string(), s.service)),
                Report::Failure(_) => None,
            })
            .collect();
        assert_eq!(
            successes,
            [
                ("127.0.0.1".to_owned(), Service::Ami),
                ("127.0.0.1".to_owned(), Service::Sip)
            ]
        );
    }

    #[test]
    fn failures_carry_the_events_own_fields() {
        let reports = reports(SECURITY);
        let Some(Report::Failure(first)) = reports.iter().find(|r| matches!(r, Report::Failure(_)))
        else {
            panic!("no failure");
        };
        assert_eq!(first.host, IpAddr::from([127, 0, 0, 2]));
        assert_eq!(first.kind, FailureKind::InvalidPassword);
        assert_eq!(first.service, Service::Sip);
        assert_eq!(
            first.account.as_ref().map(AttackerText::as_str),
            Some("100")
        );
        assert_eq!(
            first.session.as_ref().map(AttackerText::as_str),
            Some("0x7fcb4c002180")
        );
        assert_eq!(
            first.time,
            "2026-11-24T16:03:18.933Z"
                .parse::<Timestamp>()
                .expect("literal")
        );
        assert_eq!(first.source, Source::Ami);

        let kinds: Vec<(String, FailureKind, Service)> = reports
            .iter()
            .filter_map(|r| match r {
                Report::Failure(f) if f.host != first.host => {
                    Some((f.host.to_string(), f.kind, f.service))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("127.0.0.3".to_owned(), FailureKind::FailedAcl, Service::Sip),
                (
                    "127.0.0.4".to_owned(),
                    FailureKind::InvalidPassword,
                    Service::Ami
                ),
                (
                    "127.0.0.4".to_owned(),
                    FailureKind::InvalidPassword,
                    Service::Ami
                ),
                (
                    "127.0.0.4".to_owned(),
                    FailureKind::InvalidAccountId,
                    Service::Ami
                ),
                ("127.0.0.5".to_owned(), FailureKind::FailedAcl, Service::Ami),
            ]
        );
    }

    #[test]
    fn flood_counts_five_attempts_per_source() {
        let per_host = failures_per_host(&reports(FLOOD));
        assert_eq!(per_host.len(), 30);
        for octet in 10..40 {
            assert_eq!(
                per_host.get(&format!("127.0.1.{octet}")),
                Some(&5),
                "127.0.1.{octet}"
            );
        }
    }

    #[test]
    fn login_variants_give_the_bad_format_failure() {
        // Two connections; the codec expects one banner each.
        let second =
            memchr::memmem::rfind(RECEIVED, b"Asterisk Call Manager/").expect("two connections");
        let reports: Vec<Report> = [&RECEIVED[..second], &RECEIVED[second..]]
            .into_iter()
            .flat_map(reports)
            .collect();
        assert_eq!(reports.len(), 1);
        let Report::Failure(f) = &reports[0] else {
            panic!("not a failure");
        };
        assert_eq!(
            (f.kind, f.host),
            (FailureKind::RequestBadFormat, IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(f.account.as_ref().map(AttackerText::as_str), Some("astban"));
    }

    #[test]
    fn remote_address_forms() {
        let ok = |s: &str, ip: &str| {
            assert_eq!(parse_remote_address(s.as_bytes()), ip.parse().ok(), "{s}")
        };
        ok("IPV4/UDP/192.0.2.7/5060", "192.0.2.7");
        ok("IPV4/TCP/192.0.2.7/1", "192.0.2.7");
        ok("IPV4/TLS/192.0.2.7/5061", "192.0.2.7");
        ok("IPV4/WS/192.0.2.7/8088", "192.0.2.7");
        ok("IPV4/WSS/192.0.2.7/8089", "192.0.2.7");
        ok("IPV6/UDP/2001:db8::7/5060", "2001:db8::7");
        ok("IPV6/TCP/[2001:db8::7]/5060", "2001:db8::7");
        ok("IPV6/UDP/::ffff:192.0.2.7/5060", "192.0.2.7");
        for bad in [
            "",
            "IPV4/UDP/192.0.2.7",
            "IPV4/UDP/192.0.2.7/5060/x",
            "IPV4/UDP/2001:db8::7/5060",
            "IPV6/UDP/192.0.2.7/5060",
            "IPV6/UDP/[2001:db8::7/5060",
            "IPV4/SCTP/192.0.2.7/5060",
            "IPV4/UDP/192.0.2.7/65536",
            "IPV4/UDP/192.0.2.7/+5060",
            "IPV4/UDP/192.0.2.7/",
            "IPV4/UDP/192.0.2.007/5060",
            "IPV4/UDP/ 192.0.2.7/5060",
            "IPV4/UDP/0.0.0.0/5060",
            "IPV6/UDP/::/5060",
            "ipv4/udp/192.0.2.7/5060",
        ] {
            assert_eq!(parse_remote_address(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn only_remote_address_decides_the_host() {
        let mut events = all_kinds();
        let m = event(
            "Event: InvalidPassword\nEventTV: 2026-11-24T16:03:18.933+0000\nService: SIP\n\
             AccountID: 192.0.2.66\nSessionID: 192.0.2.67\nLocalAddress: IPV4/UDP/192.0.2.68/5060\n\
             RemoteAddress: IPV4/UDP/203.0.113.9/5060\nChallenge: 192.0.2.69",
        );
        let report = events
            .interpret(&m, Timestamp::UNIX_EPOCH)
            .expect("maps")
            .expect("counts");
        assert_eq!(report.host(), IpAddr::from([203, 0, 113, 9]));
    }

    #[test]
    fn injected_remote_address_makes_the_event_ambiguous() {
        let mut events = all_kinds();
        let m = event(
            "Event: InvalidPassword\nAccountID: x\nRemoteAddress: IPV4/UDP/192.0.2.1/5060\n\
             SessionID: s\nRemoteAddress: IPV4/UDP/203.0.113.9/5060",
        );
        assert_eq!(
            events.interpret(&m, Timestamp::UNIX_EPOCH),
            Err(Skip::AmbiguousAddress {
                event: "InvalidPassword",
                count: 2
            })
        );
    }

    #[test]
    fn unusable_addresses_are_skipped_and_quoted_briefly() {
        let mut events = all_kinds();
        let missing = event("Event: FailedACL\nSessionID: s");
        assert_eq!(
            events.interpret(&missing, Timestamp::UNIX_EPOCH),
            Err(Skip::NoAddress { event: "FailedACL" })
        );
        let huge = format!(
            "Event: FailedACL\nRemoteAddress: IPV4/UDP/{}",
            "9".repeat(10_000)
        );
        let err = events
            .interpret(&event(&huge), Timestamp::UNIX_EPOCH)
            .expect_err("bad address");
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn missing_or_bad_event_time_falls_back_to_now() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().expect("literal");
        let mut events = all_kinds();
        for tv in ["", "EventTV: yesterday\n"] {
            let m = event(&format!(
                "Event: InvalidPassword\n{tv}RemoteAddress: IPV4/UDP/192.0.2.1/5060"
            ));
            let report = events.interpret(&m, now).expect("maps").expect("counts");
            assert_eq!(report.time(), now);
        }
    }

    #[test]
    fn normal_traffic_and_disabled_kinds_report_nothing() {
        let mut only_passwords = SecurityEvents::new(&[FailureKind::InvalidPassword]);
        for name in ["ChallengeSent", "FailedACL", "SomethingNew"] {
            let m = event(&format!(
                "Event: {name}\nRemoteAddress: IPV4/UDP/192.0.2.1/5060"
            ));
            assert_eq!(
                only_passwords.interpret(&m, Timestamp::UNIX_EPOCH),
                Ok(None),
                "{name}"
            );
        }
        let response =
            event("Response: Success\nActionID: x\nRemoteAddress: IPV4/UDP/192.0.2.1/5060");
        assert_eq!(
            only_passwords.interpret(&response, Timestamp::UNIX_EPOCH),
            Ok(None)
        );
    }

    #[test]
    fn the_pjsip_captures_count_one_failure_per_attempt() {
        for (name, capture, expected) in PJSIP {
            let expected: BTreeMap<String, usize> =
                expected.iter().map(|&(h, n)| (h.to_owned(), n)).collect();
            assert_eq!(failures_per_host(&reports(capture)), expected, "{name}");
        }
        let v6 = failures_per_host(&reports(PJSIP_IPV6));
        assert_eq!(v6, [("2001:db8:203::2".to_owned(), 3)].into());
    }

    #[test]
    fn pjsip_failures_carry_the_kind_of_the_attempts_first_event() {
        let (_, capture, _) = PJSIP[0];
        let kinds: Vec<(String, FailureKind, Service)> = reports(capture)
            .iter()
            .filter_map(|r| match r {
                Report::Failure(f) => Some((f.host.to_string(), f.kind, f.service)),
                Report::Success(_) => None,
            })
            .collect();
        let k = |h: &str, kind| (h.to_owned(), kind, Service::Pjsip);
        assert_eq!(
            kinds,
            [
                k("127.0.2.2", FailureKind::ChallengeResponseFailed),
                k("127.0.2.2", FailureKind::ChallengeResponseFailed),
                k("127.0.2.2", FailureKind::ChallengeResponseFailed),
                k("127.0.2.3", FailureKind::InvalidAccountId),
                k("127.0.2.3", FailureKind::InvalidAccountId),
                k("127.0.2.4", FailureKind::FailedAcl),
                k("127.0.2.5", FailureKind::InvalidAccountId),
                k("127.0.2.5", FailureKind::InvalidAccountId),
            ]
        );
    }

    /// (host, matched account) of every failure of `capture`.
    fn matched(capture: &[u8]) -> Vec<(String, Option<String>)> {
        reports(capture)
            .iter()
            .filter_map(|r| match r {
                Report::Failure(f) => Some((
                    f.host.to_string(),
                    f.matched_account().map(|a| a.as_str().to_owned()),
                )),
                Report::Success(_) => None,
            })
            .collect()
    }

    #[test]
    fn only_accounts_asterisk_matched_are_marked_so() {
        let m = |h: &str, a: Option<&str>| (h.to_owned(), a.map(str::to_owned));
        // PJSIP: the wrong passwords for endpoint 300 name it; the
        // nonexistent 999, the ACL-refused 400 and the anonymous INVITE
        // name what the attacker wrote (or `<unknown>`).
        assert_eq!(
            matched(PJSIP[0].1),
            [
                m("127.0.2.2", Some("300")),
                m("127.0.2.2", Some("300")),
                m("127.0.2.2", Some("300")),
                m("127.0.2.3", None),
                m("127.0.2.3", None),
                m("127.0.2.4", None),
                m("127.0.2.5", None),
                m("127.0.2.5", None),
            ]
        );
        // chan_sip with alwaysauthreject: InvalidPassword for peer 100 and
        // for the nonexistent 999 alike, so neither proves a peer. AMI:
        // the wrong secret for the existing user `astban` does.
        let security = matched(SECURITY);
        assert!(
            security
                .iter()
                .filter(|(h, _)| h != "127.0.0.4")
                .all(|(_, a)| a.is_none()),
            "{security:?}"
        );
        let ami: Vec<_> = security.iter().filter(|(h, _)| h == "127.0.0.4").collect();
        assert_eq!(ami.len(), 3, "{ami:?}");
        assert_eq!(
            ami.iter().filter(|(_, a)| a.is_some()).count(),
            2,
            "{ami:?}"
        );
        // A successful PJSIP REGISTER proves a password; the AMI login's
        // own SuccessfulAuth says UsingPassword: 0.
        let successes: Vec<(Service, bool)> = reports(PJSIP[0].1)
            .iter()
            .filter_map(|r| match r {
                Report::Success(s) => Some((s.service, s.password)),
                Report::Failure(_) => None,
            })
            .collect();
        assert_eq!(successes, [(Service::Ami, false), (Service::Pjsip, true)]);
        assert!(!account_matched(
            FailureKind::ChallengeResponseFailed,
            Service::Pjsip,
            b"<unknown>"
        ));
        assert!(!account_matched(
            FailureKind::InvalidAccountId,
            Service::Pjsip,
            b"300"
        ));
    }

    #[test]
    fn a_session_repeating_after_the_window_is_a_new_attempt() {
        let mut events = all_kinds();
        let at = |secs: i64| {
            let tv = Timestamp::from_second(1_800_000_000 + secs).expect("in range");
            event(&format!(
                "Event: FailedACL\nEventTV: {tv}\nSessionID: 0x7fcb4c00fdd0\nRemoteAddress: IPV4/UDP/192.0.2.1/5060"
            ))
        };
        let counted = |events: &mut SecurityEvents, m: &Message| {
            events
                .interpret(m, Timestamp::UNIX_EPOCH)
                .expect("maps")
                .is_some()
        };
        assert!(counted(&mut events, &at(0)));
        assert!(!counted(&mut events, &at(1)));
        assert!(counted(&mut events, &at(10)));
        // Another host with the same (reused) session id is another attempt.
        let other = event(
            "Event: FailedACL\nSessionID: 0x7fcb4c00fdd0\nRemoteAddress: IPV4/UDP/192.0.2.2/5060",
        );
        assert!(counted(&mut events, &other));
    }

    #[test]
    fn a_reused_session_id_never_merges_two_guesses() {
        let mut events = all_kinds();
        let guess = event(
            "Event: ChallengeResponseFailed\nEventTV: 2026-12-01T07:47:41.877+0000\nService: PJSIP\n\
             AccountID: 300\nSessionID: 101386309\nRemoteAddress: IPV4/UDP/192.0.2.1/5060",
        );
        let refused = event(
            "Event: InvalidAccountID\nEventTV: 2026-12-01T07:47:41.877+0000\nService: PJSIP\n\
             AccountID: 999\nSessionID: 101386309\nRemoteAddress: IPV4/UDP/192.0.2.1/5060",
        );
        let mut counted = 0;
        for m in [&refused, &guess, &guess, &refused, &guess, &guess] {
            counted += usize::from(
                events
                    .interpret(m, Timestamp::UNIX_EPOCH)
                    .expect("maps")
                    .is_some(),
            );
        }
        assert_eq!(counted, 4);
    }

    #[test]
    fn a_planted_session_id_does_not_collapse_attempts() {
        let mut events = all_kinds();
        let m = event(
            "Event: InvalidPassword\nAccountID: x\nSessionID: chosen\nSessionID: 0x7fcb4c002180\n\
             RemoteAddress: IPV4/UDP/192.0.2.1/5060",
        );
        for _ in 0..3 {
            assert!(
                events
                    .interpret(&m, Timestamp::UNIX_EPOCH)
                    .expect("maps")
                    .is_some()
            );
        }
    }
}

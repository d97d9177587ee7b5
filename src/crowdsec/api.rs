//! The LAPI's JSON, as pure types and functions: what astban sends
//! (alerts with one decision) and what it reads (logins, the decision
//! stream). Parsing is tolerant where CrowdSec versions differ: 1.4.6
//! (Debian 12) sends empty lists as `null`, later releases as `[]`; a
//! decision astban cannot use (another scope, an unparsable value) is
//! skipped, never fatal to the rest of the stream.

use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::units::format_net;

/// `POST /v1/watchers/login`.
#[derive(Debug, Serialize)]
pub struct Login<'a> {
    /// The machine (`cscli machines add <id>`).
    pub machine_id: &'a str,
    /// Its password.
    pub password: &'a str,
    /// Scenarios the machine reports; informative for `cscli machines`.
    pub scenarios: Vec<String>,
}

/// The login's answer: a JWT and when it expires.
#[derive(Debug, Deserialize)]
pub struct Token {
    /// The bearer token.
    pub token: String,
    /// RFC 3339; when it stops being accepted.
    #[serde(default)]
    pub expire: Option<String>,
}

impl Token {
    /// When the token expires, or `None` if the LAPI's answer does not say
    /// in a form astban reads.
    pub fn expires(&self) -> Option<Timestamp> {
        self.expire.as_deref()?.parse().ok()
    }
}

/// One ban astban pushes: an alert with one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// The banned network (a host as /32 or /128, or a prefix).
    #[serde(with = "crate::units::host_format")]
    pub net: IpNet,
    /// When the ban ends; the decision's duration is what is left of it.
    pub expires: Timestamp,
    /// `<prefix>/<kind>`, e.g. `astban/sip-bruteforce`.
    pub scenario: String,
    /// For humans: failures and accounts tried.
    pub message: String,
    /// Failures counted.
    pub failures: u32,
}

/// The LAPI scope of `net`: `Ip` for one address, `Range` for a prefix.
pub fn scope(net: IpNet) -> &'static str {
    if net.prefix_len() == net.max_prefix_len() {
        "Ip"
    } else {
        "Range"
    }
}

/// The value of `net` in its scope: `192.0.2.1`, `2001:db8::/64`.
pub fn value(net: IpNet) -> String {
    format_net(net)
}

/// The `POST /v1/alerts` body for `pushes` at `now` (`None` if every one
/// of them is over). `origin` marks the decisions as astban's.
pub fn alerts(pushes: &[Push], now: Timestamp) -> Vec<serde_json::Value> {
    pushes
        .iter()
        .filter_map(|p| {
            let left = p.expires.as_second().checked_sub(now.as_second())?;
            if left <= 0 {
                return None;
            }
            let scope = scope(p.net);
            let value = value(p.net);
            let at = now.to_string();
            let mut source = serde_json::json!({ "scope": scope, "value": value });
            source[if scope == "Ip" { "ip" } else { "range" }] = value.clone().into();
            Some(serde_json::json!({
                "scenario": p.scenario,
                "scenario_hash": "",
                "scenario_version": "",
                "message": p.message,
                "events_count": p.failures.max(1),
                "start_at": at,
                "stop_at": at,
                "capacity": 0,
                "leakspeed": "0",
                "simulated": false,
                "events": [],
                "source": source,
                "decisions": [{
                    "origin": "astban",
                    "type": "ban",
                    "scope": scope,
                    "value": value,
                    "duration": format!("{left}s"),
                    "scenario": p.scenario,
                }],
            }))
        })
        .collect()
}

/// A decision from the stream, as the LAPI writes it.
#[derive(Debug, Deserialize)]
struct RawDecision {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    scenario: Option<String>,
}

/// `GET /v1/decisions/stream`'s body.
#[derive(Debug, Deserialize)]
struct RawStream {
    #[serde(default)]
    new: Option<Vec<RawDecision>>,
    #[serde(default)]
    deleted: Option<Vec<RawDecision>>,
}

/// A ban decision astban can enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The LAPI's id for it.
    pub id: i64,
    /// The network it bans.
    pub net: IpNet,
    /// When it ends (`now` + its duration).
    pub expires: Timestamp,
    /// Who made it: `cscli`, `crowdsec`, `astban`, `CAPI`, ...
    pub origin: String,
    /// Why: the scenario.
    pub scenario: String,
}

/// One poll's worth of the stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamDelta {
    /// Decisions to enforce.
    pub new: Vec<Decision>,
    /// Networks whose decision was deleted or expired.
    pub deleted: Vec<IpNet>,
    /// Decisions skipped: not a ban, another scope, a bad value.
    pub skipped: usize,
}

/// Why a body from the LAPI could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the LAPI's answer is not the JSON astban expects: {0}")]
pub struct BadBody(#[from] pub serde_json::Error);

/// Parses a stream body at `now`.
pub fn parse_stream(body: &[u8], now: Timestamp) -> Result<StreamDelta, BadBody> {
    let raw: RawStream = serde_json::from_slice(body)?;
    let mut delta = StreamDelta::default();
    for d in raw.new.into_iter().flatten() {
        match decision(&d, now) {
            Some(decision) => delta.new.push(decision),
            None => delta.skipped += 1,
        }
    }
    for d in raw.deleted.into_iter().flatten() {
        match d
            .scope
            .as_deref()
            .zip(d.value.as_deref())
            .and_then(|(s, v)| net(s, v))
        {
            Some(net) => delta.deleted.push(net),
            None => delta.skipped += 1,
        }
    }
    Ok(delta)
}

fn decision(d: &RawDecision, now: Timestamp) -> Option<Decision> {
    if !d.kind.as_deref()?.eq_ignore_ascii_case("ban") {
        return None;
    }
    let net = net(d.scope.as_deref()?, d.value.as_deref()?)?;
    let left = go_duration(d.duration.as_deref()?)?;
    let secs = i64::try_from(left.as_secs()).ok()?;
    if secs == 0 {
        return None;
    }
    Some(Decision {
        id: d.id.unwrap_or_default(),
        net,
        expires: Timestamp::from_second(now.as_second().checked_add(secs)?).ok()?,
        origin: d.origin.clone().unwrap_or_default(),
        scenario: d.scenario.clone().unwrap_or_default(),
    })
}

/// The network of a decision in scope `Ip` or `Range` (any case); other
/// scopes (`Country`, `AS`, `Username`) have none.
fn net(scope: &str, value: &str) -> Option<IpNet> {
    if scope.eq_ignore_ascii_case("ip") {
        let addr: std::net::IpAddr = value.trim().parse().ok()?;
        Some(IpNet::from(addr.to_canonical()))
    } else if scope.eq_ignore_ascii_case("range") {
        let net: IpNet = value.trim().parse().ok()?;
        Some(net.trunc())
    } else {
        None
    }
}

/// Reads a Go `time.Duration` string (`1h2m3.5s`, `9m59.01s`, `150ms`);
/// `None` for a negative one (an expired decision) or garbage.
pub fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.starts_with('-') {
        return None;
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("ts")
    }

    #[test]
    fn go_durations_are_read_as_the_lapi_writes_them() {
        let d = |s| go_duration(s).map(|d| d.as_millis());
        assert_eq!(d("9m59.016783074s"), Some(599_016));
        assert_eq!(d("4h0m0s"), Some(14_400_000));
        assert_eq!(d("167h59m59s"), Some(604_799_000));
        assert_eq!(d("150ms"), Some(150));
        assert_eq!(d("0"), Some(0));
        assert_eq!(d("-39.25ms"), None);
        assert_eq!(d("10 minutes"), None);
        assert_eq!(d(""), Some(0));
    }

    /// CrowdSec 1.4.6 (Debian 12): empty lists are `null`.
    #[test]
    fn a_1_4_stream_with_nulls_is_empty() {
        let delta = parse_stream(br#"{"deleted":null,"new":null}"#, now()).expect("parse");
        assert_eq!(delta, StreamDelta::default());
        let delta = parse_stream(br#"{}"#, now()).expect("parse");
        assert_eq!(delta, StreamDelta::default());
    }

    /// Bodies as 1.4.6 sent them to astban (captured on loopback) and as
    /// later releases write them (arrays, `until`, `uuid`).
    #[test]
    fn new_and_deleted_decisions_are_read_and_others_skipped() {
        let body = br#"{"deleted":[{"duration":"-39.253462ms","id":1,"origin":"astban","scenario":"astban/sip-bruteforce","scope":"Ip","type":"ban","value":"192.0.2.9"}],
          "new":[
            {"duration":"9m59.016783074s","id":2,"origin":"astban","scenario":"astban/sip-bruteforce","scope":"Range","type":"ban","value":"2001:db8:1::/64"},
            {"duration":"3h59m58s","id":3,"origin":"cscli","scenario":"manual 'ban' from 'x'","scope":"Ip","type":"ban","value":"198.51.100.5","until":"2027-01-15T12:00:00Z","uuid":"b3"},
            {"duration":"1h","id":4,"origin":"CAPI","scenario":"ssh-bf","scope":"ip","type":"ban","value":"::ffff:203.0.113.4"},
            {"duration":"1h","id":5,"origin":"cscli","scenario":"x","scope":"Country","type":"ban","value":"FR"},
            {"duration":"1h","id":6,"origin":"cscli","scenario":"x","scope":"Ip","type":"captcha","value":"192.0.2.10"},
            {"duration":"1h","id":7,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"not-an-ip"}
          ]}"#;
        let delta = parse_stream(body, now()).expect("parse");
        assert_eq!(
            delta.deleted,
            ["192.0.2.9/32".parse::<IpNet>().expect("net")]
        );
        let nets: Vec<String> = delta.new.iter().map(|d| d.net.to_string()).collect();
        assert_eq!(
            nets,
            ["2001:db8:1::/64", "198.51.100.5/32", "203.0.113.4/32"]
        );
        assert_eq!(delta.new[1].origin, "cscli");
        assert_eq!(delta.new[1].expires.as_second(), now().as_second() + 14_398);
        assert_eq!(delta.new[0].expires.as_second(), now().as_second() + 599);
        assert_eq!(delta.skipped, 3);
    }

    #[test]
    fn a_body_that_is_not_a_stream_is_an_error() {
        assert!(parse_stream(b"<html>", now()).is_err());
        assert!(parse_stream(br#"{"new":{"a":1}}"#, now()).is_err());
    }

    #[test]
    fn an_alert_carries_one_decision_with_the_time_left() {
        let push = Push {
            net: "2001:db8:1::/64".parse().expect("net"),
            expires: Timestamp::from_second(now().as_second() + 600).expect("ts"),
            scenario: "astban/sip-bruteforce".into(),
            message: "5 failures".into(),
            failures: 5,
        };
        let over = Push {
            expires: now(),
            ..push.clone()
        };
        let body = alerts(&[push, over], now());
        assert_eq!(body.len(), 1);
        let d = &body[0]["decisions"][0];
        assert_eq!(d["scope"], "Range");
        assert_eq!(d["value"], "2001:db8:1::/64");
        assert_eq!(d["duration"], "600s");
        assert_eq!(d["type"], "ban");
        assert_eq!(body[0]["source"]["range"], "2001:db8:1::/64");
        assert_eq!(body[0]["events_count"], 5);
    }

    #[test]
    fn token_expiry_is_read() {
        let t: Token =
            serde_json::from_str(r#"{"code":200,"expire":"2026-12-01T13:25:33Z","token":"eyJ"}"#)
                .expect("parse");
        assert_eq!(
            t.expires().map(|t| t.to_string()).as_deref(),
            Some("2026-12-01T13:25:33Z")
        );
    }
}

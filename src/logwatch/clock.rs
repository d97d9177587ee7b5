//! Turning a line's [`Stamp`] into a [`Timestamp`].
//!
//! Time zone conversion costs far more than matching a line, and
//! consecutive lines share a minute, so the start of the last minute seen
//! is cached and only the seconds are added.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};

use super::prefix::{Civil, Stamp};

/// A year-less syslog stamp may be up to this far ahead of "now" and still
/// be taken as this year: clocks of the writer and the reader differ a
/// little, and a day of slack is far from the months that separate the
/// two readings of a stamp around new year.
const FUTURE_SLACK_SECS: i64 = 86_400;

/// Converts stamps of one log, in one time zone.
#[derive(Debug, Clone)]
pub struct Clock {
    tz: TimeZone,
    now: Timestamp,
    last: Option<(MinuteKey, Option<i64>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MinuteKey {
    civil: Civil,
    offset: Option<i32>,
    year_less: bool,
}

impl Clock {
    /// A clock for local-time stamps in `tz`; `now` picks the year of
    /// year-less stamps (the one that does not put them in the future).
    pub fn new(tz: TimeZone, now: Timestamp) -> Clock {
        Clock {
            tz,
            now,
            last: None,
        }
    }

    /// The system time zone and the current time.
    pub fn system() -> Clock {
        Clock::new(TimeZone::system(), Timestamp::now())
    }

    /// Moves "now" forward, for a long-running reader.
    pub fn set_now(&mut self, now: Timestamp) {
        self.now = now;
        self.last = None;
    }

    /// The instant `stamp` names, or `None` for an impossible date.
    pub fn timestamp(&mut self, stamp: Stamp) -> Option<Timestamp> {
        let (civil, offset, year_less) = match stamp {
            Stamp::Local(c) => (c, None, false),
            Stamp::NoYear(c) => (c, None, true),
            Stamp::Offset(c, o) => (c, Some(o), false),
        };
        let key = MinuteKey {
            civil: Civil { second: 0, ..civil },
            offset,
            year_less,
        };
        let minute_start = match self.last {
            Some((k, start)) if k == key => start,
            _ => {
                let start = self.minute_start(key);
                self.last = Some((key, start));
                start
            }
        };
        Timestamp::from_second(minute_start? + i64::from(civil.second)).ok()
    }

    fn minute_start(&self, key: MinuteKey) -> Option<i64> {
        let at = |year: i16| {
            let c = key.civil;
            DateTime::new(year, c.month, c.day, c.hour, c.minute, 0, 0).ok()
        };
        let ts = match (key.offset, key.year_less) {
            (Some(seconds), _) => Offset::from_seconds(seconds)
                .ok()?
                .to_timestamp(at(key.civil.year)?)
                .ok()?,
            (None, false) => self.tz.to_timestamp(at(key.civil.year)?).ok()?,
            (None, true) => {
                let this_year = self.tz.to_datetime(self.now).year();
                let latest = self.now.as_second() + FUTURE_SLACK_SECS;
                // Feb 29 needs a leap year, so look back a few years.
                (0..=4)
                    .filter_map(|back| at(this_year - back))
                    .filter_map(|dt| self.tz.to_timestamp(dt).ok())
                    .find(|ts| ts.as_second() <= latest)?
            }
        };
        Some(ts.as_second())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logwatch::prefix::tests_support::civil;

    fn utc_clock(now: &str) -> Clock {
        Clock::new(TimeZone::UTC, now.parse().expect("timestamp"))
    }

    #[test]
    fn local_stamps_use_the_zone() {
        let mut clock = Clock::new(
            TimeZone::get("Europe/Zurich").expect("tz"),
            Timestamp::UNIX_EPOCH,
        );
        let ts = clock.timestamp(Stamp::Local(civil(2026, 11, 24, 16, 3, 18)));
        assert_eq!(
            ts.map(|t| t.to_string()),
            Some("2026-11-24T15:03:18Z".into())
        );
        // Same minute, from the cache.
        let ts = clock.timestamp(Stamp::Local(civil(2026, 11, 24, 16, 3, 59)));
        assert_eq!(
            ts.map(|t| t.to_string()),
            Some("2026-11-24T15:03:59Z".into())
        );
    }

    #[test]
    fn year_less_stamps_are_never_in_the_future() {
        let mut clock = utc_clock("2027-01-02T00:00:00Z");
        let dec = clock.timestamp(Stamp::NoYear(civil(0, 12, 31, 23, 59, 59)));
        assert_eq!(
            dec.map(|t| t.to_string()),
            Some("2026-12-31T23:59:59Z".into())
        );
        let jan = clock.timestamp(Stamp::NoYear(civil(0, 1, 1, 0, 0, 1)));
        assert_eq!(
            jan.map(|t| t.to_string()),
            Some("2027-01-01T00:00:01Z".into())
        );
        // Feb 29 lands in the last leap year.
        let leap = clock.timestamp(Stamp::NoYear(civil(0, 2, 29, 12, 0, 0)));
        assert_eq!(
            leap.map(|t| t.to_string()),
            Some("2024-02-29T12:00:00Z".into())
        );
    }

    #[test]
    fn offsets_and_impossible_dates() {
        let mut clock = utc_clock("2026-01-01T00:00:00Z");
        let ts = clock.timestamp(Stamp::Offset(civil(2026, 11, 24, 13, 4, 7), 3600));
        assert_eq!(
            ts.map(|t| t.to_string()),
            Some("2026-11-24T12:04:07Z".into())
        );
        assert_eq!(
            clock.timestamp(Stamp::Local(civil(2026, 2, 30, 0, 0, 0))),
            None
        );
        assert_eq!(
            clock.timestamp(Stamp::Local(civil(2026, 13, 1, 0, 0, 0))),
            None
        );
    }
}

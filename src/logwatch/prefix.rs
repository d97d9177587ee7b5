//! The part of a log line that Asterisk (or syslog) writes before the
//! message, parsed structurally.
//!
//! Rules are anchored at the message start, so finding that start must not
//! depend on the message: the prefix is parsed field by field, left to
//! right, and a line that does not have one is not a log line (it may be
//! the continuation of a message that contained a newline).
//!
//! Accepted shapes:
//!
//! ```text
//! [2026-11-24 13:04:07] NOTICE[1638] chan_sip.c: message
//! [2026-11-24 13:04:07.123] NOTICE[1638][C-0000001d] chan_sip.c: message
//! [2026-11-24 13:04:07] NOTICE[12931]: chan_sip.c:28468 handle_request_register: message
//! [Nov  4 18:30:40] NOTICE[32257] chan_sip.c:23417 in handle_request_register: message
//! Nov  4 18:30:40 host asterisk[32229]: NOTICE[32257]: chan_sip.c:23417 in handle_request_register: message
//! 2026-11-24T13:04:07.123+01:00 host asterisk[32229]: NOTICE[32257]: chan_sip.c: message
//! [2026-11-24 13:04:07] WARNING[6756][C-0000001d] Ext. s: message   (dialplan Log())
//! ```

/// The timestamp as written, not yet converted (conversion needs the time
/// zone and, for syslog's year-less stamps, the current date).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// `YYYY-MM-DD HH:MM:SS`, local time.
    Local(Civil),
    /// `Mon dd HH:MM:SS`, local time of an unknown year.
    NoYear(Civil),
    /// RFC 3339 with its own UTC offset, in seconds east of UTC.
    Offset(Civil, i32),
}

/// Calendar fields of a stamp; `year` is 0 for [`Stamp::NoYear`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Civil {
    /// Year.
    pub year: i16,
    /// Month, 1-12.
    pub month: i8,
    /// Day of month, 1-31.
    pub day: i8,
    /// Hour, 0-23.
    pub hour: i8,
    /// Minute, 0-59.
    pub minute: i8,
    /// Second, 0-60.
    pub second: i8,
}

/// A parsed prefix; positions index into the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix<'a> {
    /// When Asterisk wrote the line.
    pub stamp: Stamp,
    /// Asterisk's thread id (`NOTICE[1638]`), when it fits a u64.
    pub thread: Option<u64>,
    /// The source file that logged the line (`chan_sip.c`,
    /// `res_pjsip/pjsip_distributor.c`), or `Ext.` for dialplan `Log()`.
    pub module: &'a [u8],
    /// Where the level (`NOTICE`) starts.
    pub level_start: usize,
    /// Where the message starts.
    pub message_start: usize,
}

/// Parses the prefix of `line`, or returns `None` when it has none.
pub fn parse(line: &[u8]) -> Option<Prefix<'_>> {
    let mut p = Parser { line, pos: 0 };
    let stamp = if p.eat(b'[') {
        let stamp = p.bracketed_stamp()?;
        p.want(b']')?;
        p.want(b' ')?;
        stamp
    } else {
        let stamp = p.syslog_stamp()?;
        p.want(b' ')?;
        p.token(|b| b != b' ' && b != b'\t')?; // host name
        p.want(b' ')?;
        p.token(|b| NAME.has(b))?; // tag
        if p.eat(b'[') {
            p.token(|b| b.is_ascii_digit())?;
            p.want(b']')?;
        }
        p.want(b':')?;
        p.want(b' ')?;
        stamp
    };
    let level_start = p.pos;
    p.token(|b| b.is_ascii_uppercase())?;
    p.eat(b' ');
    p.want(b'[')?;
    let thread = p.token(|b| b.is_ascii_digit())?;
    p.want(b']')?;
    if p.eat(b'[') {
        p.token(|b| CALL_ID.has(b))?;
        p.want(b']')?;
    }
    p.eat(b':');
    p.want(b' ')?;
    let module = p.module()?;
    Some(Prefix {
        stamp,
        thread: thread.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        }),
        module,
        level_start,
        message_start: p.pos,
    })
}

/// Bytes of a source file name or a syslog tag (`res_pjsip/x.c`).
const NAME: ByteClass = ByteClass::alphanumeric_and(b"_./-");
/// Bytes of a call id (`C-0000001d`).
const CALL_ID: ByteClass = ByteClass::alphanumeric_and(b"-");
/// Bytes of a function name.
const FUNCTION: ByteClass = ByteClass::alphanumeric_and(b"_");

/// A set of bytes as a table: one load per byte where the prefix is
/// parsed on every line, instead of a chain of comparisons.
struct ByteClass([bool; 256]);

impl ByteClass {
    const fn alphanumeric_and(extra: &[u8]) -> ByteClass {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = (b as u8).is_ascii_alphanumeric();
            b += 1;
        }
        let mut i = 0;
        while i < extra.len() {
            table[extra[i] as usize] = true;
            i += 1;
        }
        ByteClass(table)
    }

    fn has(&self, b: u8) -> bool {
        self.0[usize::from(b)]
    }
}

/// The value of `field` if it is all ASCII digits (at most four).
fn digits(field: &[u8]) -> Option<i32> {
    field.iter().try_fold(0i32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + i32::from(b - b'0'))
    })
}

struct Parser<'a> {
    line: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.pos += usize::from(hit);
        hit
    }

    fn want(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// One or more bytes accepted by `ok` (at most 64: no prefix field is
    /// longer, and a bound keeps a garbage line cheap).
    #[inline(always)]
    fn token(&mut self, ok: impl Fn(u8) -> bool) -> Option<&'a [u8]> {
        let rest = &self.line[self.pos..];
        let window = &rest[..rest.len().min(65)];
        let len = window.iter().position(|&b| !ok(b)).unwrap_or(window.len());
        if len == 0 || len > 64 {
            return None;
        }
        self.pos += len;
        Some(&rest[..len])
    }

    fn number(&mut self, len: usize) -> Option<i32> {
        let n = digits(self.line.get(self.pos..self.pos + len)?)?;
        self.pos += len;
        Some(n)
    }

    /// The next `N` bytes, if they have `sep` at each of `at` (the
    /// fixed-width fields of a stamp are read in one piece: this runs on
    /// every line).
    fn fixed<const N: usize>(&self, sep: u8, at: [usize; 2]) -> Option<&'a [u8; N]> {
        let field: &[u8; N] = self.line.get(self.pos..self.pos + N)?.try_into().ok()?;
        (field[at[0]] == sep && field[at[1]] == sep).then_some(field)
    }

    /// `HH:MM:SS` with an optional `.fraction`.
    fn clock(&mut self) -> Option<(i8, i8, i8)> {
        let f = self.fixed::<8>(b':', [2, 5])?;
        let (h, m, s) = (digits(&f[..2])?, digits(&f[3..5])?, digits(&f[6..])?);
        self.pos += 8;
        if self.eat(b'.') {
            self.token(|b| b.is_ascii_digit())?;
        }
        Some((h as i8, m as i8, s as i8))
    }

    /// `YYYY-MM-DD`.
    fn iso_date(&mut self) -> Option<(i16, i8, i8)> {
        let f = self.fixed::<10>(b'-', [4, 7])?;
        let (y, mo, d) = (digits(&f[..4])?, digits(&f[5..7])?, digits(&f[8..])?);
        self.pos += 10;
        Some((y as i16, mo as i8, d as i8))
    }

    /// `Nov  4` or `Nov 14` (and the `Nov 4` that some tools write).
    fn month_day(&mut self) -> Option<(i8, i8)> {
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let name = self.line.get(self.pos..self.pos + 3)?;
        let month = MONTHS.iter().position(|m| m.as_slice() == name)? as i8 + 1;
        self.pos += 3;
        self.want(b' ')?;
        self.eat(b' ');
        let day = match self.number(2) {
            Some(d) => d,
            None => self.number(1)?,
        };
        Some((month, day as i8))
    }

    fn bracketed_stamp(&mut self) -> Option<Stamp> {
        if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            let (year, month, day) = self.iso_date()?;
            self.want(b' ')?;
            let (hour, minute, second) = self.clock()?;
            Some(Stamp::Local(Civil {
                year,
                month,
                day,
                hour,
                minute,
                second,
            }))
        } else {
            self.no_year_stamp()
        }
    }

    fn no_year_stamp(&mut self) -> Option<Stamp> {
        let (month, day) = self.month_day()?;
        self.want(b' ')?;
        let (hour, minute, second) = self.clock()?;
        Some(Stamp::NoYear(Civil {
            year: 0,
            month,
            day,
            hour,
            minute,
            second,
        }))
    }

    /// `Nov  4 18:30:40`, or RFC 3339 as rsyslog's high-precision format
    /// writes it.
    fn syslog_stamp(&mut self) -> Option<Stamp> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return self.no_year_stamp();
        }
        let (year, month, day) = self.iso_date()?;
        self.want(b'T')?;
        let (hour, minute, second) = self.clock()?;
        let civil = Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        };
        if self.eat(b'Z') {
            return Some(Stamp::Offset(civil, 0));
        }
        let sign = match self.peek()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        self.pos += 1;
        let oh = self.number(2)?;
        self.want(b':')?;
        let om = self.number(2)?;
        Some(Stamp::Offset(civil, sign * (oh * 3600 + om * 60)))
    }

    /// `chan_sip.c: `, `chan_sip.c:23417 handle_request_register: `,
    /// `chan_sip.c:23417 in handle_request_register: `, or `Ext. s: `.
    fn module(&mut self) -> Option<&'a [u8]> {
        if self.line[self.pos..].starts_with(b"Ext. ") {
            // Dialplan Log(): the extension after "Ext. " is the caller's
            // choice, so it is never part of the module; the message starts
            // after the first ": " that follows it.
            let module = &self.line[self.pos..self.pos + 4];
            let rest = &self.line[self.pos + 5..];
            let sep = memchr::memmem::find(rest, b": ")?;
            self.pos += 5 + sep + 2;
            return Some(module);
        }
        let module = self.token(|b| NAME.has(b))?;
        self.want(b':')?;
        if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.token(|b| b.is_ascii_digit())?;
            self.want(b' ')?;
            if self.line[self.pos..].starts_with(b"in ") {
                self.pos += 3;
            }
            self.token(|b| FUNCTION.has(b))?;
            self.want(b':')?;
        }
        // "module:" at the very end of a line leaves an empty message.
        if self.pos < self.line.len() {
            self.want(b' ')?;
        }
        Some(module)
    }
}

/// Builds a [`Civil`] in one line, for the tests of this module and of
/// `clock`.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::Civil;

    pub(crate) fn civil(year: i16, month: i8, day: i8, hour: i8, minute: i8, second: i8) -> Civil {
        Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::civil;
    use super::*;

    fn message(line: &str) -> Option<(&str, &str, Option<u64>)> {
        let p = parse(line.as_bytes())?;
        Some((
            std::str::from_utf8(p.module).ok()?,
            &line[p.message_start..],
            p.thread,
        ))
    }

    #[test]
    fn dateformat_f_t() {
        let line = "[2026-11-24 16:03:18] NOTICE[2766] chan_sip.c: Registration from 'x'";
        let p = parse(line.as_bytes()).expect("prefix");
        assert_eq!(p.stamp, Stamp::Local(civil(2026, 11, 24, 16, 3, 18)));
        assert_eq!(&line[p.level_start..p.level_start + 6], "NOTICE");
        assert_eq!(
            message(line),
            Some(("chan_sip.c", "Registration from 'x'", Some(2766)))
        );
    }

    #[test]
    fn call_ids_line_numbers_and_functions() {
        let expect = Some(("chan_sip.c", "Call from ''", Some(436)));
        assert_eq!(
            message("[2013-02-05 23:44:42] NOTICE[436][C-00000fa9] chan_sip.c: Call from ''"),
            expect
        );
        assert_eq!(
            message(
                "[2016-08-19 11:11:26] NOTICE[436]: chan_sip.c:28468 handle_request_register: Call from ''"
            ),
            expect
        );
        assert_eq!(
            message("[2016-08-19 11:11:26.123] NOTICE[436] chan_sip.c:28468 in f: Call from ''"),
            expect
        );
        assert_eq!(
            message("[2016-06-09 00:01:02] NOTICE [436] chan_sip.c: Call from ''"),
            expect
        );
        assert_eq!(
            message("[2026-11-24 16:03:18] NOTICE[17103] res_pjsip/pjsip_distributor.c: Request"),
            Some(("res_pjsip/pjsip_distributor.c", "Request", Some(17103)))
        );
    }

    #[test]
    fn syslog_forms() {
        let line = "Nov  4 18:30:40 localhost asterisk[32229]: NOTICE[32257]: chan_sip.c:23417 in handle_request_register: Registration";
        let p = parse(line.as_bytes()).expect("prefix");
        assert_eq!(p.stamp, Stamp::NoYear(civil(0, 11, 4, 18, 30, 40)));
        assert_eq!(&line[p.message_start..], "Registration");
        assert_eq!(&line[p.level_start..p.level_start + 6], "NOTICE");

        let line = "2026-11-24T13:04:07.123+01:00 pbx asterisk[1]: NOTICE[2]: manager.c: x";
        let p = parse(line.as_bytes()).expect("prefix");
        assert_eq!(p.stamp, Stamp::Offset(civil(2026, 11, 24, 13, 4, 7), 3600));
        assert_eq!(&line[p.message_start..], "x");
        assert_eq!(
            parse(b"[Nov 14 18:30:40] NOTICE[1] chan_iax2.c: y").map(|p| p.stamp),
            Some(Stamp::NoYear(civil(0, 11, 14, 18, 30, 40)))
        );
    }

    #[test]
    fn dialplan_log_extension_is_not_the_module() {
        let line = "[2013-11-11 14:33:38] WARNING[6756][C-0000001d] Ext. s: \"Rejecting unknown SIP connection from 192.0.2.1\"";
        assert_eq!(
            message(line),
            Some((
                "Ext.",
                "\"Rejecting unknown SIP connection from 192.0.2.1\"",
                Some(6756)
            ))
        );
    }

    #[test]
    fn lines_without_a_prefix() {
        for line in [
            "",
            "Registration from '<sip:x>' failed for '1.2.3.4' - Wrong password",
            "[2026-11-24 16:03:18] Registration from",
            "[2026-11-24 16:03:18] NOTICE chan_sip.c: x",
            "[2026-11-24 16:03:18] notice[1] chan_sip.c: x",
            "[2026-1-24 16:03:18] NOTICE[1] chan_sip.c: x",
            "[2026-11-24 16:3:18] NOTICE[1] chan_sip.c: x",
            "[2026-11-24 16:03:1x] NOTICE[1] chan_sip.c: x",
            "[2026-11-24 16-03-18] NOTICE[1] chan_sip.c: x",
            "[2026:11:24 16:03:18] NOTICE[1] chan_sip.c: x",
            "[2026-11-24 16:03:18.] NOTICE[1] chan_sip.c: x",
            "[2026-11-24 16:03",
            "[2026-11-24 16:03:18] NOTICE[1] chan sip.c: x",
            "Foo  4 18:30:40 host asterisk[1]: NOTICE[2]: a.c: x",
        ] {
            assert_eq!(parse(line.as_bytes()), None, "{line:?}");
        }
    }
}

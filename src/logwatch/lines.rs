//! Splitting a byte stream into bounded lines, with one reusable buffer.
//!
//! A line longer than the bound is dropped as soon as it is known to be too
//! long (without buffering the rest of it), and reading resynchronises at
//! the next newline. The reader also tracks the stream offset just past the
//! last whole line, which is what a cursor must store: a partial last line
//! is re-read from its start after a restart.

use std::io::{self, Read};

/// Smallest buffer: enough for many lines per read.
const MIN_BUFFER: usize = 64 * 1024;

/// What the reader hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line, without its `\n` (or `\r\n`).
    Text(&'a [u8]),
    /// A line longer than the bound: only its first and last bytes (half
    /// the bound each) are kept, so that a rule whose address is near an
    /// end of the message still finds it, while the line costs no more
    /// memory than the bound.
    TooLong {
        /// The line's first bytes.
        head: &'a [u8],
        /// The line's last bytes (without its `\n`).
        tail: &'a [u8],
    },
}

/// Whether [`LineReader::read_lines`] stopped at the end of the data or
/// because the byte budget was used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The source returned end of file.
    Eof,
    /// `budget` bytes were read; there may be more.
    Budget,
}

/// A line splitter over any [`Read`].
#[derive(Debug)]
pub struct LineReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_line: usize,
    skipping: bool,
    offset: u64,
    /// While skipping an overlong line: its first bytes, and a window on
    /// its last ones.
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl LineReader {
    /// A reader for lines of at most `max_line` bytes, whose source is at
    /// `offset`, reading `read_size` bytes at a time.
    pub fn new(max_line: usize, read_size: usize, offset: u64) -> LineReader {
        let size = read_size.max(MIN_BUFFER).max(max_line.saturating_add(1));
        LineReader {
            buf: vec![0; size].into_boxed_slice(),
            start: 0,
            end: 0,
            max_line,
            skipping: false,
            offset,
            head: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// Bytes kept at each end of an overlong line.
    fn keep(&self) -> usize {
        self.max_line / 2
    }

    fn tail_window(&self) -> &[u8] {
        let tail = strip_cr(&self.tail);
        &tail[tail.len().saturating_sub(self.keep())..]
    }

    /// The stream offset just past the last line handed out.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Forgets buffered bytes and continues at `offset` (after a seek).
    pub fn reset(&mut self, offset: u64) {
        self.start = 0;
        self.end = 0;
        self.skipping = false;
        self.offset = offset;
        self.head.clear();
        self.tail.clear();
    }

    /// Whether the rest of an overlong line is being skipped (the offset
    /// is then inside that line).
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Whether bytes of an unfinished line are buffered (or being skipped).
    #[cfg(test)]
    fn has_partial(&self) -> bool {
        self.end > self.start || self.skipping
    }

    /// Reads from `src` until end of file or until about `budget` bytes
    /// were read, handing each whole line to `f` with the offset just past
    /// it.
    pub fn read_lines(
        &mut self,
        src: &mut impl Read,
        budget: u64,
        mut f: impl FnMut(Line<'_>, u64),
    ) -> io::Result<Stop> {
        let mut read = 0u64;
        loop {
            self.drain(&mut f);
            if read >= budget {
                return Ok(Stop::Budget);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = match src.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(Stop::Eof);
            }
            self.end += n;
            read += n as u64;
        }
    }

    /// Hands out the unfinished last line, for a source that has ended
    /// for good (a file read once, not followed).
    pub fn finish(&mut self, mut f: impl FnMut(Line<'_>, u64)) {
        if self.skipping {
            let rest = self.end - self.start;
            let keep = self.keep();
            push_tail(&mut self.tail, keep, &self.buf[self.start..self.end]);
            self.offset += rest as u64;
            f(
                Line::TooLong {
                    head: &self.head,
                    tail: self.tail_window(),
                },
                self.offset,
            );
            self.reset(self.offset);
            return;
        }
        if self.end == self.start {
            self.reset(self.offset);
            return;
        }
        let len = self.end - self.start;
        self.offset += len as u64;
        f(
            Line::Text(strip_cr(&self.buf[self.start..self.end])),
            self.offset,
        );
        self.start = 0;
        self.end = 0;
    }

    fn drain(&mut self, f: &mut impl FnMut(Line<'_>, u64)) {
        let keep = self.keep();
        while let Some(nl) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
            let (from, to) = (self.start, self.start + nl);
            self.start += nl + 1;
            self.offset += nl as u64 + 1;
            if self.skipping {
                self.skipping = false;
                push_tail(&mut self.tail, keep, &self.buf[from..to]);
                f(
                    Line::TooLong {
                        head: &self.head,
                        tail: self.tail_window(),
                    },
                    self.offset,
                );
                self.head.clear();
                self.tail.clear();
            } else if to - from > self.max_line {
                let line = strip_cr(&self.buf[from..to]);
                let tail = &line[line.len().saturating_sub(keep)..];
                f(
                    Line::TooLong {
                        head: &line[..keep.min(line.len())],
                        tail,
                    },
                    self.offset,
                );
            } else {
                f(Line::Text(strip_cr(&self.buf[from..to])), self.offset);
            }
        }
        let pending = self.end - self.start;
        if pending > self.max_line || (self.skipping && pending > 0) {
            // No newline yet and already too long: keep its head and a
            // window on its tail, and skip the rest instead of buffering.
            let bytes = &self.buf[self.start..self.end];
            if !self.skipping {
                let split = keep.min(bytes.len());
                self.head.clear();
                self.head.extend_from_slice(&bytes[..split]);
                self.tail.clear();
                push_tail(&mut self.tail, keep, &bytes[split..]);
            } else {
                push_tail(&mut self.tail, keep, bytes);
            }
            self.skipping = true;
            self.offset += pending as u64;
            self.start = 0;
            self.end = 0;
        }
    }
}

/// Adds bytes of an overlong line to its tail window of `keep` bytes and
/// a possible `\r` (held in at most twice that, so that trimming is
/// amortised).
fn push_tail(tail: &mut Vec<u8>, keep: usize, bytes: &[u8]) {
    let keep = keep + 1;
    let bytes = &bytes[bytes.len().saturating_sub(keep)..];
    tail.extend_from_slice(bytes);
    if tail.len() > 2 * keep {
        let cut = tail.len() - keep;
        tail.drain(..cut);
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that returns at most `chunk` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn lines(data: &[u8], max_line: usize, chunk: usize) -> (Vec<String>, u64, bool) {
        let mut reader = LineReader::new(max_line, 0, 0);
        let mut out = Vec::new();
        let mut src = Trickle { data, chunk };
        let stop = reader
            .read_lines(&mut src, u64::MAX, |line, end| {
                out.push(match line {
                    Line::Text(t) => format!("{}@{end}", String::from_utf8_lossy(t)),
                    Line::TooLong { head, tail } => format!(
                        "<long {}...{}>@{end}",
                        String::from_utf8_lossy(head),
                        String::from_utf8_lossy(tail)
                    ),
                })
            })
            .expect("read");
        assert_eq!(stop, Stop::Eof);
        (out, reader.offset(), reader.has_partial())
    }

    #[test]
    fn splits_lines_and_keeps_the_partial_one() {
        for chunk in [1, 3, 1000] {
            let (out, offset, partial) = lines(b"ab\ncd\r\n\nef", 100, chunk);
            assert_eq!(out, ["ab@3", "cd@7", "@8"], "chunk {chunk}");
            assert_eq!(offset, 8);
            assert!(partial);
        }
    }

    #[test]
    fn long_lines_are_cut_to_their_ends_and_reading_resynchronises() {
        let long = "x".repeat(MIN_BUFFER * 3);
        let data = format!("ok\n{long}\nnext\n");
        for chunk in [7, 4096, usize::MAX] {
            let (out, offset, partial) = lines(data.as_bytes(), 100, chunk);
            let end = 3 + long.len() + 1;
            assert_eq!(out[0], "ok@3");
            assert!(out[1].starts_with("<long "), "{out:?}");
            assert_eq!(out[2], format!("next@{}", end + 5));
            assert_eq!(out.len(), 3);
            assert_eq!(offset, data.len() as u64);
            assert!(!partial);
        }
        // A line of exactly the bound is fine.
        let (out, offset, _) = lines(b"12345\n123456\n", 5, 2);
        assert_eq!(out[0], "12345@6");
        assert!(out[1].starts_with("<long ") && out.len() == 2, "{out:?}");
        assert_eq!(offset, 13);
    }

    #[test]
    fn a_long_line_keeps_its_head_and_its_tail() {
        let middle = "m".repeat(MIN_BUFFER * 3);
        let data = format!("HEAD{middle}TAIL\r\nnext\n");
        for chunk in [7, 4096, usize::MAX] {
            let (out, _, _) = lines(data.as_bytes(), 20, chunk);
            assert_eq!(out.len(), 2, "{out:?}");
            let end = data.len() - 5;
            assert_eq!(
                out[0],
                format!("<long HEADmmmmmm...mmmmmmTAIL>@{end}"),
                "chunk {chunk}"
            );
        }
        // Seen whole in the buffer.
        let (out, _, _) = lines(b"0123456789abcdefghij!\n", 20, usize::MAX);
        assert_eq!(out, ["<long 0123456789...bcdefghij!>@22"]);
    }

    #[test]
    fn finish_hands_out_the_last_line() {
        let mut reader = LineReader::new(100, 0, 10);
        let mut src: &[u8] = b"a\nlast";
        let mut out = Vec::new();
        reader
            .read_lines(&mut src, u64::MAX, |_, end| out.push(end))
            .expect("read");
        reader.finish(|line, end| {
            assert_eq!(line, Line::Text(b"last"));
            out.push(end);
        });
        assert_eq!(out, [12, 16]);
        assert!(!reader.has_partial());
    }
}

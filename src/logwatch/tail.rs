//! Following a log file across rotation, and resuming where it stopped.
//!
//! The [`Follower`] is synchronous and knows nothing about rules: it hands
//! out whole lines, each with the [`Cursor`] just past it. Whoever
//! consumes a line commits its cursor, and a restart resumes from the last
//! committed one, so no line is lost or read twice across restarts.
//!
//! Rotation:
//! * **rename + create** (logrotate's default, Asterisk's `logger rotate`):
//!   the path names a new file. The old one is still open here and is read
//!   to its end before the new one is read from its start.
//! * **copytruncate**: the same file gets shorter than the cursor, or the
//!   byte before the cursor is no longer the newline that ended the last
//!   line read (truncated and written again before we looked); reading
//!   starts over at offset 0.
//! * **missing file**: waited for; when it appears it is new, so it is read
//!   from its start.
//! * **rotated while astban was stopped**: the old file is looked up by its
//!   inode among its siblings and finished first.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lines::{Line, LineReader, Stop};

/// Bytes read per read(2) call.
const READ_SIZE: usize = 256 * 1024;

/// Where to start reading a file there is no saved cursor for
/// (`log.start`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only lines written from now on (the default for a daemon).
    #[default]
    End,
    /// The whole file (demos, first runs that should judge history).
    Beginning,
}

/// A file and a position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub inode: u64,
    /// Offset just past the last line consumed.
    pub offset: u64,
}

/// A cursor with the path it belongs to, as stored in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCursor {
    /// The followed path.
    pub path: PathBuf,
    /// Where reading stopped.
    #[serde(flatten)]
    pub cursor: Cursor,
}

/// What [`Follower::poll`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Everything written so far was read.
    Idle,
    /// The byte budget ran out; call again.
    More,
    /// There is no file to read (yet).
    Waiting,
}

/// Something worth telling the admin, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The file does not exist (yet).
    Missing,
    /// It cannot be opened or read.
    Error(String),
    /// Reading (again) from `offset`.
    Following {
        /// Where reading starts.
        offset: u64,
    },
    /// The path now names a new file; the old one was finished.
    Rotated,
    /// The file was truncated; reading starts over.
    Truncated,
    /// The file was rotated while astban was stopped and the old one could
    /// not be found: lines written to it since the cursor are lost.
    LostRotated,
}

struct Open {
    file: File,
    id: (u64, u64),
    reader: LineReader,
}

/// Follows one path.
pub struct Follower {
    path: PathBuf,
    max_line: usize,
    open: Option<Open>,
    /// How the next open positions itself; after the first open, files are
    /// new and read from their start.
    first: Option<(StartAt, Option<SavedCursor>)>,
    last_notice: Option<Notice>,
}

impl Follower {
    /// A follower of `path`; `saved` is the cursor of an earlier run, used
    /// when it is for the same path.
    pub fn new(
        path: PathBuf,
        max_line: usize,
        start: StartAt,
        saved: Option<SavedCursor>,
    ) -> Follower {
        let saved = saved.filter(|s| s.path == path);
        Follower {
            path,
            max_line,
            open: None,
            first: Some((start, saved)),
            last_notice: None,
        }
    }

    /// The path followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the open file past what was read: a backlog while it
    /// grows (0 with no file open, or when its size cannot be read).
    pub fn behind(&self) -> u64 {
        self.open.as_ref().map_or(0, |open| {
            open.file
                .metadata()
                .map_or(0, |m| m.len().saturating_sub(open.reader.offset()))
        })
    }

    /// Reads what is new, up to about `budget` bytes, handing each line to
    /// `on_line` with the cursor just past it. `on_notice` hears about
    /// state changes (each distinct one once in a row).
    pub fn poll(
        &mut self,
        budget: u64,
        mut on_line: impl FnMut(Line<'_>, Cursor),
        mut on_notice: impl FnMut(&Notice),
    ) -> Poll {
        let mut notice = |n: Notice, last: &mut Option<Notice>| {
            if last.as_ref() != Some(&n) {
                on_notice(&n);
                *last = Some(n);
            }
        };
        loop {
            let Some(open) = &mut self.open else {
                match self.open_path() {
                    Ok((open, n)) => {
                        for n in n {
                            notice(n, &mut self.last_notice);
                        }
                        self.open = Some(open);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // A file that appears later is all new.
                        if let Some((start, None)) = &mut self.first {
                            *start = StartAt::Beginning;
                        }
                        notice(Notice::Missing, &mut self.last_notice);
                        return Poll::Waiting;
                    }
                    Err(e) => {
                        notice(
                            Notice::Error(format!("cannot open {}: {e}", self.path.display())),
                            &mut self.last_notice,
                        );
                        return Poll::Waiting;
                    }
                }
            };
            // Truncation is checked before reading: once the file has grown
            // past the cursor again, reading first would take the middle of
            // a new line for a line.
            match truncated(open) {
                Ok(false) => {}
                Ok(true) => {
                    notice(Notice::Truncated, &mut self.last_notice);
                    continue;
                }
                Err(e) => {
                    notice(
                        Notice::Error(format!("cannot read {}: {e}", self.path.display())),
                        &mut self.last_notice,
                    );
                    self.open = None;
                    return Poll::Waiting;
                }
            }
            let id = open.id;
            let stop = open
                .reader
                .read_lines(&mut open.file, budget, |line, offset| {
                    on_line(
                        line,
                        Cursor {
                            dev: id.0,
                            inode: id.1,
                            offset,
                        },
                    )
                });
            match stop {
                Ok(Stop::Budget) => return Poll::More,
                Ok(Stop::Eof) => {}
                Err(e) => {
                    notice(
                        Notice::Error(format!("cannot read {}: {e}", self.path.display())),
                        &mut self.last_notice,
                    );
                    self.open = None;
                    return Poll::Waiting;
                }
            }
            match self.check_rotation() {
                Ok(None) => return Poll::Idle,
                Ok(Some(n)) => notice(n, &mut self.last_notice),
                Err(e) => {
                    notice(
                        Notice::Error(format!("cannot check {}: {e}", self.path.display())),
                        &mut self.last_notice,
                    );
                    return Poll::Idle;
                }
            }
        }
    }

    /// At the end of the open file: does the path name another file now?
    /// If so, switches to it.
    fn check_rotation(&mut self) -> io::Result<Option<Notice>> {
        let Some(open) = &mut self.open else {
            return Ok(None);
        };
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            // Renamed away and not created again yet: keep the old file,
            // a writer may still append to it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if (meta.dev(), meta.ino()) == open.id {
            return Ok(None);
        }
        self.open = None;
        let (new, _) = self.open_path()?;
        self.open = Some(new);
        Ok(Some(Notice::Rotated))
    }

    /// Opens the path, positioned as the first open or a later one must be.
    fn open_path(&mut self) -> io::Result<(Open, Vec<Notice>)> {
        let mut file = File::open(&self.path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            // Opening a directory succeeds and reading it fails: refuse it
            // here, once, instead of "following" it on every poll.
            return Err(io::Error::other(
                "it is a directory; set log.path to Asterisk's messages file",
            ));
        }
        let id = (meta.dev(), meta.ino());
        let mut notices = Vec::new();
        let offset = match self.first.take() {
            None => 0,
            Some((_, Some(saved))) if (saved.cursor.dev, saved.cursor.inode) != id => {
                // Rotated while stopped: finish the old file first.
                match find_sibling(&self.path, (saved.cursor.dev, saved.cursor.inode)) {
                    Some(old) => {
                        let mut old = File::open(old)?;
                        let old_len = old.metadata()?.len();
                        let start = if saved.cursor.offset <= old_len {
                            saved.cursor.offset
                        } else {
                            0
                        };
                        old.seek(SeekFrom::Start(start))?;
                        notices.push(Notice::Following { offset: start });
                        let open = Open {
                            file: old,
                            id: (saved.cursor.dev, saved.cursor.inode),
                            reader: LineReader::new(self.max_line, READ_SIZE, start),
                        };
                        return Ok((open, notices));
                    }
                    None => {
                        notices.push(Notice::LostRotated);
                        0
                    }
                }
            }
            Some((_, Some(saved))) => {
                let offset = saved.cursor.offset;
                if offset <= meta.len() && ends_line(&file, offset, false)? {
                    offset
                } else {
                    notices.push(Notice::Truncated);
                    0
                }
            }
            Some((StartAt::Beginning, None)) => 0,
            Some((StartAt::End, None)) => end_of_last_line(&file, meta.len(), self.max_line)?,
        };
        file.seek(SeekFrom::Start(offset))?;
        notices.push(Notice::Following { offset });
        let open = Open {
            file,
            id,
            reader: LineReader::new(self.max_line, READ_SIZE, offset),
        };
        Ok((open, notices))
    }
}

/// Whether the open file was truncated under the cursor (copytruncate);
/// if so, rewinds to its start.
fn truncated(open: &mut Open) -> io::Result<bool> {
    let offset = open.reader.offset();
    let len = open.file.metadata()?.len();
    if len >= offset && ends_line(&open.file, offset, open.reader.is_skipping())? {
        return Ok(false);
    }
    open.file.seek(SeekFrom::Start(0))?;
    open.reader.reset(0);
    Ok(true)
}

/// Whether the byte before `offset` is the newline that ended the last
/// line consumed (trivially true at 0, or while skipping an overlong line).
fn ends_line(file: &File, offset: u64, skipping: bool) -> io::Result<bool> {
    if offset == 0 || skipping {
        return Ok(true);
    }
    let mut byte = [0u8];
    match file.read_at(&mut byte, offset - 1)? {
        1 => Ok(byte[0] == b'\n'),
        _ => Ok(false),
    }
}

/// The offset just past the file's last newline: where "only new lines"
/// starts without cutting a line being written in half.
fn end_of_last_line(file: &File, len: u64, max_line: usize) -> io::Result<u64> {
    let window = len.min(max_line as u64 + 1);
    let mut tail = vec![0u8; window as usize];
    let mut reader = file.try_clone()?;
    reader.seek(SeekFrom::Start(len - window))?;
    reader.read_exact(&mut tail)?;
    Ok(match memchr::memrchr(b'\n', &tail) {
        Some(i) => len - window + i as u64 + 1,
        // No newline in the last max_line bytes: the last line is too long
        // anyway; start at the end.
        None if window == len => 0,
        None => len,
    })
}

/// A file in the same directory as `path` with the given (dev, inode).
fn find_sibling(path: &Path, id: (u64, u64)) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| fs::metadata(e.path()).is_ok_and(|m| (m.dev(), m.ino()) == id))
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(f: &mut Follower) -> (Vec<String>, Poll, Vec<Notice>) {
        let mut lines = Vec::new();
        let mut notices = Vec::new();
        let poll = f.poll(
            u64::MAX,
            |line, _| {
                if let Line::Text(t) = line {
                    lines.push(String::from_utf8_lossy(t).into_owned());
                }
            },
            |n| notices.push(n.clone()),
        );
        (lines, poll, notices)
    }

    fn append(path: &Path, text: &str) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
    }

    #[test]
    fn starts_at_the_end_of_the_last_whole_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("messages");
        append(&path, "old\npartial");
        let mut f = Follower::new(path.clone(), 100, StartAt::End, None);
        let (lines, poll, notices) = collect(&mut f);
        assert!(lines.is_empty());
        assert_eq!(poll, Poll::Idle);
        assert_eq!(notices, [Notice::Following { offset: 4 }]);
        append(&path, " line\nnew\n");
        assert_eq!(collect(&mut f).0, ["partial line", "new"]);
    }

    #[test]
    fn waits_for_a_missing_file_and_reads_it_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("messages");
        let mut f = Follower::new(path.clone(), 100, StartAt::End, None);
        let (_, poll, notices) = collect(&mut f);
        assert_eq!((poll, notices), (Poll::Waiting, vec![Notice::Missing]));
        // Told once, not on every poll.
        assert!(collect(&mut f).2.is_empty());
        append(&path, "a\nb\n");
        assert_eq!(collect(&mut f).0, ["a", "b"]);
    }

    #[test]
    fn rename_and_create_finishes_the_old_file_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("messages");
        append(&path, "1\n");
        let mut f = Follower::new(path.clone(), 100, StartAt::Beginning, None);
        assert_eq!(collect(&mut f).0, ["1"]);
        append(&path, "2\n");
        fs::rename(&path, dir.path().join("messages.1")).expect("rename");
        append(&dir.path().join("messages.1"), "3\n");
        assert_eq!(collect(&mut f).0, ["2", "3"]);
        append(&path, "4\n");
        let (lines, _, notices) = collect(&mut f);
        assert_eq!(lines, ["4"]);
        assert!(notices.contains(&Notice::Rotated), "{notices:?}");
    }

    #[test]
    fn copytruncate_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("messages");
        append(&path, "first line\nsecond line\n");
        let mut f = Follower::new(path.clone(), 100, StartAt::Beginning, None);
        assert_eq!(collect(&mut f).0.len(), 2);
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .expect("truncate");
        // Written again past the old length before we look: the byte
        // before the cursor is no longer a newline.
        append(&path, "a much longer line than before!\n");
        let (lines, _, notices) = collect(&mut f);
        assert_eq!(lines, ["a much longer line than before!"]);
        assert!(notices.contains(&Notice::Truncated));
    }

    #[test]
    fn resumes_from_a_saved_cursor_even_across_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("messages");
        append(&path, "1\n2\n");
        let mut f = Follower::new(path.clone(), 100, StartAt::Beginning, None);
        let mut cursors = Vec::new();
        f.poll(u64::MAX, |_, c| cursors.push(c), |_| {});
        let saved = SavedCursor {
            path: path.clone(),
            cursor: cursors[0],
        };

        // Same file: continue after line 1.
        let mut f = Follower::new(path.clone(), 100, StartAt::End, Some(saved.clone()));
        assert_eq!(collect(&mut f).0, ["2"]);

        // Rotated while stopped: the rest of the old file, then the new one.
        append(&path, "3\n");
        fs::rename(&path, dir.path().join("messages.1")).expect("rename");
        append(&path, "4\n");
        let mut f = Follower::new(path.clone(), 100, StartAt::End, Some(saved));
        let mut all = collect(&mut f).0;
        all.extend(collect(&mut f).0);
        assert_eq!(all, ["2", "3", "4"]);
    }

    #[test]
    fn a_directory_is_refused_once_and_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = Follower::new(dir.path().to_path_buf(), 1024, StartAt::Beginning, None);
        let (lines, poll, notices) = collect(&mut f);
        assert!(lines.is_empty());
        assert_eq!(poll, Poll::Waiting);
        assert!(
            matches!(notices.as_slice(), [Notice::Error(e)] if e.contains("is a directory")),
            "{notices:?}"
        );
        // Said once, however often it is polled.
        for _ in 0..3 {
            let (_, poll, notices) = collect(&mut f);
            assert_eq!((poll, notices), (Poll::Waiting, vec![]));
        }
    }
}

//! Small, crash-safe state files: bans, offender history, the log cursor.
//!
//! A daemon that dies mid-write must never leave a half-written file that
//! loses every ban, and a file that cannot be read must never stop the
//! daemon from starting: it is set aside for a human and astban starts
//! fresh.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Creates `dir` and its parents, the last one private (0700): state and
/// the control socket say who is banned and let one ban and unban.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `data` to `path` so that a crash leaves either the old or the new
/// content: write a temporary file beside it, fsync, rename, fsync the
/// directory. The file is created mode 0600 (it lists who is banned and
/// why).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(data))
}

/// Like [`write_atomic`], with the content written by `write` to a
/// buffered file: a large state is streamed, never held whole in memory.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<&File>) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("state path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = io::BufWriter::with_capacity(1 << 16, &f);
        write(&mut out)?;
        out.flush()?;
        drop(out);
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Serialises `value` as JSON, streamed, and writes it like
/// [`write_atomic`].
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomic_with(path, |out| {
        serde_json::to_writer(out, value).map_err(io::Error::other)
    })
}

/// What [`load_json`] found.
#[derive(Debug)]
pub enum Loaded<T> {
    /// The file held a valid value.
    Value(T),
    /// There was no file (a first start).
    Missing,
    /// The file could not be parsed; it was renamed to `moved_to` so that
    /// astban can start fresh and a human can look at it.
    Corrupt {
        /// Why it could not be read.
        error: String,
        /// Where the bad file now is.
        moved_to: PathBuf,
    },
}

/// Reads a JSON state file written by [`save_json`], setting a corrupt one
/// aside. Only I/O errors other than "not found" are returned as errors.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> io::Result<Loaded<T>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice(&data) {
        Ok(v) => Ok(Loaded::Value(v)),
        Err(e) => {
            let stamp = jiff::Timestamp::now().as_second();
            let mut moved = path.as_os_str().to_os_string();
            moved.push(format!(".corrupt-{stamp}"));
            let moved_to = PathBuf::from(moved);
            fs::rename(path, &moved_to)?;
            Ok(Loaded::Corrupt {
                error: e.to_string(),
                moved_to,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_is_private_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        save_json(&path, &vec![1u32, 2, 3]).expect("save");
        save_json(&path, &vec![4u32]).expect("overwrite");
        match load_json::<Vec<u32>>(&path).expect("load") {
            Loaded::Value(v) => assert_eq!(v, [4]),
            other => panic!("unexpected {other:?}"),
        }
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn missing_is_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            load_json::<u32>(&dir.path().join("nope")),
            Ok(Loaded::Missing)
        ));
    }

    #[test]
    fn corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        fs::write(&path, b"{ not json").expect("write");
        match load_json::<Vec<u32>>(&path).expect("load") {
            Loaded::Corrupt { moved_to, error } => {
                assert!(!path.exists());
                assert_eq!(fs::read(&moved_to).expect("moved"), b"{ not json");
                assert!(!error.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

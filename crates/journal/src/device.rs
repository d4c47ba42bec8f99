//! Where the log lives: a [`Storage`] (a directory of segments) of [`Device`]s (one
//! segment file each), with the real implementations over the file system.
//!
//! The journal reaches the media only through these two traits, so tests can put a
//! fault-injecting implementation underneath (`crate::testing::CrashStorage`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::JournalError;

/// One segment's bytes.
///
/// `sync` must make durable every byte written (and every truncation done) before the
/// call began; bytes written while it runs may or may not be covered.
pub trait Device: Send + Sync + fmt::Debug {
    /// Writes all of `data` at `offset`, extending the device if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Fills `buf` from `offset`; fails if the device ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Persists everything written so far (`fdatasync` for a file).
    fn sync(&self) -> io::Result<()>;
    /// The device's current size in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the device holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts the device to `len` bytes (durable after the next `sync`).
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// A directory of segments, each named by its sequence number.
///
/// Creating and removing segments is durable after the next `sync_directory`.
pub trait Storage: Send + Sync + fmt::Debug {
    /// The sequence numbers of the segments present, in any order.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// Opens an existing segment.
    fn open(&self, sequence: u64) -> io::Result<Arc<dyn Device>>;
    /// Creates a new, empty segment; fails if it exists.
    fn create(&self, sequence: u64) -> io::Result<Arc<dyn Device>>;
    /// Removes a segment.
    fn remove(&self, sequence: u64) -> io::Result<()>;
    /// Persists the directory: segments created or removed so far.
    fn sync_directory(&self) -> io::Result<()>;
}

/// A segment file.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
}

impl FileDevice {
    /// Wraps an open file (opened for reading and writing).
    pub fn new(file: File) -> Self {
        Self { file }
    }
}

impl Device for FileDevice {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        // fdatasync: the data and the metadata needed to read it (the size), not times.
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

/// Name of the lock file that keeps two journals out of one directory.
const LOCK_FILE_NAME: &str = "journal.lock";
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".log";

/// The segment file name for a sequence number: `segment-` + twenty digits + `.log`.
pub fn segment_file_name(sequence: u64) -> String {
    format!("{SEGMENT_PREFIX}{sequence:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A journal directory on the file system. Holds an exclusive `flock` on
/// `journal.lock` in the directory for as long as it lives, so a second journal (in
/// this process or another) cannot open the same directory.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    dir_handle: File,
    _lock: File,
}

impl FileStorage {
    /// Opens (creating if needed) the directory and locks it. A directory it creates is
    /// made durable in its parent before anything is written into it.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let context = |what: &str| format!("{what} journal directory {}", dir.display());
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| JournalError::io(context("creating"), e))?;
            let parent = match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            File::open(parent)
                .and_then(|parent| parent.sync_all())
                .map_err(|e| JournalError::io(context("persisting the parent of"), e))?;
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE_NAME))
            .map_err(|e| JournalError::io(context("opening the lock file of"), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(JournalError::Locked {
                    path: dir.to_path_buf(),
                });
            }
            return Err(JournalError::io(context("locking"), error));
        }
        let dir_handle = File::open(dir).map_err(|e| JournalError::io(context("opening"), e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            dir_handle,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sequence: u64) -> PathBuf {
        self.dir.join(segment_file_name(sequence))
    }
}

impl Storage for FileStorage {
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut sequences = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(sequence) = entry.file_name().to_str().and_then(parse_segment_file_name) {
                sequences.push(sequence);
            }
        }
        Ok(sequences)
    }

    fn open(&self, sequence: u64) -> io::Result<Arc<dyn Device>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(sequence))?;
        Ok(Arc::new(FileDevice::new(file)))
    }

    fn create(&self, sequence: u64) -> io::Result<Arc<dyn Device>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(sequence))?;
        Ok(Arc::new(FileDevice::new(file)))
    }

    fn remove(&self, sequence: u64) -> io::Result<()> {
        fs::remove_file(self.path(sequence))
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.dir_handle.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_sequence_and_parse_back() {
        assert_eq!(segment_file_name(7), "segment-00000000000000000007.log");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert!(segment_file_name(9) < segment_file_name(10));
        for bad in [
            "segment-7.log",
            "segment-0000000000000000000a.log",
            "journal.lock",
            "segment-00000000000000000007.log.tmp",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }
}

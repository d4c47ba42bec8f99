//! Coverage-guided fuzzing harnesses for Pagoda, one module per target.
//!
//! Each target is a function `run(&[u8])` that feeds one input to the code
//! under test and asserts what must hold for every input; a panic is a
//! finding. The same functions serve the AFL++ entry points in `src/bin`
//! (built with `cargo afl build --features afl`) and the corpus replay test
//! (`tests/replay.rs`, an ordinary `cargo test`). `crates/fuzz/README.md` has
//! the commands.
//!
//! - [`wire`]: the frame header, every request and response decoder, and the
//!   `FrameReader` over an arbitrary byte stream.
//! - [`dispatch`]: a real node on loopback served sequences of well-framed
//!   requests.
//! - [`journal`]: journal recovery of arbitrary segment bytes.
//! - [`checkpoint`]: manifests and data objects loaded as a baseline.
//! - [`catalog`]: `Catalog::open` on an arbitrary `regions.meta`.

use std::path::{Path, PathBuf};

pub mod catalog;
pub mod checkpoint;
pub mod dispatch;
pub mod journal;
pub mod wire;

/// A target's harness: runs one input, panics on a finding.
pub type Harness = fn(&[u8]);

/// Every target, by name: the corpus of target `name` is `corpus/<name>`.
pub const TARGETS: [(&str, Harness); 5] = [
    ("wire", wire::run),
    ("dispatch", dispatch::run),
    ("journal", journal::run),
    ("checkpoint", checkpoint::run),
    ("catalog", catalog::run),
];

/// Where harnesses put their files: `PAGODA_FUZZ_TMP` if set, else
/// `/dev/shm` where it exists (the fuzzers write files for every input, and
/// a memory file system keeps that cheap), else the system's temp dir.
pub fn scratch_base() -> PathBuf {
    if let Some(dir) = std::env::var_os("PAGODA_FUZZ_TMP") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// A fresh temporary directory for one input, removed when dropped.
pub fn scratch_dir(target: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pagoda-fuzz-{target}-input-"))
        .tempdir_in(scratch_base())
        .expect("creating a scratch dir")
}

/// A directory that lives as long as the process (a node's data dir, a
/// store). AFL++ ends its fuzzing processes without running destructors, so
/// each new one removes the directories of processes that are gone.
#[derive(Debug)]
pub struct ProcessDir {
    path: PathBuf,
}

impl ProcessDir {
    /// Creates `pagoda-fuzz-<target>-<pid>` in [`scratch_base`], after removing
    /// those of dead processes.
    pub fn new(target: &str) -> ProcessDir {
        let base = scratch_base();
        let prefix = format!("pagoda-fuzz-{target}-");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|name| name.strip_prefix(&prefix))
                    .and_then(|pid| pid.parse::<u32>().ok())
                else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let path = base.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a process dir");
        ProcessDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ProcessDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

//! What a node checks before it serves, so that a mistake in its
//! configuration fails the start with one message that names the fix,
//! rather than the first request or checkpoint:
//!
//! - the data dir can be created and written (a probe file is written and
//!   removed);
//! - a storage directory can be created (whether it can be written, the
//!   backend's own probe finds out next, whatever the backend:
//!   `Storage::open_checked` writes, reads back and deletes a probe object);
//! - the capacity fits the host's RAM. Only a warning: regions are
//!   thin-provisioned, so a node may promise more than it has until they
//!   fill.

use std::io::Write;
use std::path::Path;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::storage::StorageConfig;

/// Where Linux says how much RAM the host has (`MemTotal`).
const MEMINFO_PATH: &str = "/proc/meminfo";

/// The name of the file written and removed to prove a directory writable.
const PROBE_FILE_NAME: &str = ".pagoda-probe";

/// Checks the directories the node will write and warns (a log line) when
/// the capacity exceeds the host's RAM.
pub fn check(config: &NodeConfig) -> Result<(), NodeError> {
    check_writable_dir(&config.data_dir, "data dir", "--data-dir")?;
    if let Some(StorageConfig::Dir(dir)) = &config.storage {
        create_dir(dir, "storage dir", "--storage")?;
    }
    let host_memory_bytes = std::fs::read_to_string(MEMINFO_PATH)
        .ok()
        .and_then(|meminfo| mem_total_bytes(&meminfo));
    if let Some(warning) =
        host_memory_bytes.and_then(|ram| capacity_warning(config.capacity_bytes, ram))
    {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// Creates `dir` if it is missing and proves it writable by writing and
/// removing a probe file. `what` names the directory in messages and
/// `flag` the setting to change.
pub fn check_writable_dir(dir: &Path, what: &str, flag: &str) -> Result<(), NodeError> {
    create_dir(dir, what, flag)?;
    let shown = dir.display();
    let probe = dir.join(PROBE_FILE_NAME);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .and_then(|mut file| file.write_all(b"pagoda probe"));
    if let Err(error) = written {
        return Err(NodeError::Config(format!(
            "{what} {shown} is not writable ({error}); {}, or let this user write it",
            fix(flag)
        )));
    }
    std::fs::remove_file(&probe).map_err(|error| {
        NodeError::Config(format!(
            "{what} {shown}: the probe file {} cannot be removed ({error}); {}",
            probe.display(),
            fix(flag)
        ))
    })
}

/// Creates `dir` if it is missing; a file where it or a parent should be
/// is named.
pub fn create_dir(dir: &Path, what: &str, flag: &str) -> Result<(), NodeError> {
    let shown = dir.display();
    if dir.exists() && !dir.is_dir() {
        return Err(NodeError::Config(format!(
            "{what} {shown} is a file, not a directory; {}",
            fix(flag)
        )));
    }
    std::fs::create_dir_all(dir).map_err(|error| {
        // Under a file, the OS says "not a directory" without saying which
        // path is the file: name it.
        let file = dir
            .ancestors()
            .skip(1)
            .find(|ancestor| ancestor.exists())
            .filter(|ancestor| !ancestor.is_dir());
        NodeError::Config(match file {
            Some(file) => format!(
                "{what} {shown} cannot be created: {} is a file, not a directory; {}",
                file.display(),
                fix(flag)
            ),
            None => format!("{what} {shown} cannot be created ({error}); {}", fix(flag)),
        })
    })
}

/// What to do about a directory the node cannot use.
fn fix(flag: &str) -> String {
    format!("give {flag} a directory this user can create and write")
}

/// The host's RAM from the text of `/proc/meminfo` (`MemTotal:  N kB`).
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?;
    let kibibytes: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kibibytes.checked_mul(1024)
}

/// The warning for a capacity larger than the host's RAM, if it is.
pub fn capacity_warning(capacity_bytes: u64, host_memory_bytes: u64) -> Option<String> {
    const MIB: u64 = 1 << 20;
    (capacity_bytes > host_memory_bytes).then(|| {
        format!(
            "--capacity {} MiB is more than this host's RAM ({} MiB, MemTotal in {MEMINFO_PATH}): \
             the node starts, as regions take RAM only when written, but once they fill more \
             than the host has, it swaps or the kernel kills the node; lower --capacity below \
             {} MiB",
            capacity_bytes / MIB,
            host_memory_bytes / MIB,
            host_memory_bytes / MIB
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the reading of MemTotal: kB are KiB, and a file without the
    // line (another kernel, a sandbox) gives no figure rather than zero.
    #[test]
    fn reads_mem_total() {
        let meminfo = "MemTotal:       16318000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(16_318_000 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1000 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots\n"), None);
    }

    // Guards the RAM warning: only above the host's RAM, naming both sizes.
    #[test]
    fn warns_only_above_the_host_memory() {
        assert_eq!(capacity_warning(1 << 30, 2 << 30), None);
        assert_eq!(capacity_warning(2 << 30, 2 << 30), None);
        let warning = capacity_warning(4 << 30, 2 << 30).unwrap();
        assert!(
            warning.starts_with("--capacity 4096 MiB is more than this host's RAM (2048 MiB"),
            "{warning}"
        );
        assert!(
            warning.ends_with("lower --capacity below 2048 MiB"),
            "{warning}"
        );
    }

    // Guards the data dir check: a missing dir is created and left empty, a
    // path under a file names the file.
    #[test]
    fn data_dir_is_created_or_the_file_in_the_way_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        check_writable_dir(&dir, "data dir", "--data-dir").unwrap();
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let error = check_writable_dir(&file.join("sub"), "data dir", "--data-dir")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "configuration: data dir {}/sub cannot be created: {} is a file, not a \
                 directory; give --data-dir a directory this user can create and write",
                file.display(),
                file.display()
            )
        );
        let error = check_writable_dir(&file, "data dir", "--data-dir")
            .unwrap_err()
            .to_string();
        assert!(error.contains("is a file, not a directory"), "{error}");
    }
}

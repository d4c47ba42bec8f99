//! The embedded coordinator: one JSON file in a directory of this machine
//! (by default the node's data dir), shared by the processes of this
//! machine under an exclusive `flock`.
//!
//! Every operation takes the lock, reads the file, drops the leases whose
//! deadline has passed (with the keys they kept), applies the change,
//! writes the file whole (to a temporary file, fsync, rename, fsync of the
//! directory) and lets the lock go. Lease deadlines are wall-clock times:
//! the processes that share the file share this machine's clock.
//!
//! It has no fault tolerance of its own: it lives and dies with the
//! machine (and the directory) it is on. Use etcd for a cluster.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{
    ClusterError, Coordinator, LeaseId, NodeRecord, RegionRecord, Revision, Versioned, WriterRecord,
};

/// The file's name in its directory.
pub const FILE_NAME: &str = "coordinator.json";
/// The largest file read back (the records of a few thousand regions fit
/// many times over).
const FILE_BYTES_MAX: u64 = 64 << 20;

/// See the module docs.
#[derive(Debug)]
pub struct EmbeddedCoordinator {
    dir: PathBuf,
}

/// Whether an operation writes the file back, and how.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Save {
    No,
    Volatile,
    Durable,
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// The revision of the newest change.
    revision: Revision,
    next_lease: LeaseId,
    /// Lease id -> (ttl ms, deadline in ms since the Unix epoch).
    leases: BTreeMap<LeaseId, (u64, u64)>,
    nodes: BTreeMap<String, (NodeRecord, LeaseId)>,
    regions: BTreeMap<String, (RegionRecord, Revision)>,
    writers: BTreeMap<String, (WriterRecord, LeaseId)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl State {
    fn expire(&mut self) {
        let now = now_ms();
        self.leases.retain(|_, (_, deadline)| *deadline > now);
        let leases = &self.leases;
        self.nodes
            .retain(|_, (_, lease)| leases.contains_key(lease));
        self.writers
            .retain(|_, (_, lease)| leases.contains_key(lease));
    }

    fn check_lease(&self, lease: LeaseId) -> Result<(), ClusterError> {
        if self.leases.contains_key(&lease) {
            Ok(())
        } else {
            Err(ClusterError::LeaseExpired(lease))
        }
    }
}

impl EmbeddedCoordinator {
    /// Opens (creating) the coordinator file in `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddedCoordinator, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::Unavailable {
            endpoint: format!("embedded:{}", dir.display()),
            message: format!("creating the directory: {e}"),
        })?;
        let coordinator = EmbeddedCoordinator {
            dir: dir.to_path_buf(),
        };
        // Reads (and creates) the file once, so that a damaged one is
        // reported at start.
        coordinator.with_state(Save::No, |_| Ok(()))?;
        Ok(coordinator)
    }

    fn unavailable(&self, what: &str, error: impl std::fmt::Display) -> ClusterError {
        ClusterError::Unavailable {
            endpoint: self.endpoint(),
            message: format!("{what}: {error}"),
        }
    }

    /// Runs `f` on the state under the lock; writes it back if `write`
    /// (synced to disk if `Save::Durable`: leases and node records are
    /// not, as they mean nothing after a restart of the machine).
    fn with_state<T>(
        &self,
        write: Save,
        f: impl FnOnce(&mut State) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("coordinator.lock"))
            .map_err(|e| self.unavailable("opening the lock file", e))?;
        // SAFETY: flock on a descriptor we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.unavailable("locking", std::io::Error::last_os_error()));
        }
        let path = self.dir.join(FILE_NAME);
        let mut state = match File::open(&path) {
            Ok(file) => {
                let len = file
                    .metadata()
                    .map_err(|e| self.unavailable("reading", e))?
                    .len();
                if len > FILE_BYTES_MAX {
                    return Err(ClusterError::Corrupt {
                        key: path.display().to_string(),
                        message: format!("{len} bytes, more than the {FILE_BYTES_MAX} allowed"),
                    });
                }
                serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
                    ClusterError::Corrupt {
                        key: path.display().to_string(),
                        message: e.to_string(),
                    }
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(self.unavailable("reading", e)),
        };
        state.expire();
        let out = f(&mut state)?;
        match write {
            Save::No if path.exists() => {}
            // Leases and node records need no fsync of their own, but the
            // file they share with region records is renamed over the old
            // one: it must be complete on disk first.
            Save::Volatile => self.save(&state, true)?,
            Save::No | Save::Durable => self.save(&state, true)?,
        }
        drop(lock);
        Ok(out)
    }

    fn save(&self, state: &State, durable: bool) -> Result<(), ClusterError> {
        let path = self.dir.join(FILE_NAME);
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let bytes =
            serde_json::to_vec_pretty(state).map_err(|e| self.unavailable("encoding", e))?;
        let mut file = File::create(&tmp).map_err(|e| self.unavailable("writing", e))?;
        file.write_all(&bytes)
            .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
            .map_err(|e| self.unavailable("writing", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.unavailable("renaming", e))?;
        if !durable {
            return Ok(());
        }
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| self.unavailable("syncing the directory", e))
    }
}

impl Coordinator for EmbeddedCoordinator {
    fn endpoint(&self) -> String {
        format!("embedded:{}", self.dir.display())
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, ClusterError> {
        let ttl_ms = ttl.max(crate::LEASE_MIN).as_millis() as u64;
        self.with_state(Save::Volatile, |state| {
            state.next_lease += 1;
            let id = state.next_lease;
            state.leases.insert(id, (ttl_ms, now_ms() + ttl_ms));
            Ok(id)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, ClusterError> {
        self.with_state(Save::Volatile, |state| {
            let Some((ttl_ms, deadline)) = state.leases.get_mut(&lease) else {
                return Err(ClusterError::LeaseExpired(lease));
            };
            *deadline = now_ms() + *ttl_ms;
            Ok(Duration::from_millis(*ttl_ms))
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), ClusterError> {
        self.with_state(Save::Volatile, |state| {
            state.leases.remove(&lease);
            state.expire();
            state.revision += 1;
            Ok(())
        })
    }

    fn put_node(&self, record: &NodeRecord, lease: LeaseId) -> Result<(), ClusterError> {
        self.with_state(Save::Volatile, |state| {
            state.check_lease(lease)?;
            state.revision += 1;
            state
                .nodes
                .insert(record.addr.clone(), (record.clone(), lease));
            Ok(())
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        self.with_state(Save::No, |state| {
            Ok(state.nodes.values().map(|(node, _)| node.clone()).collect())
        })
    }

    fn create_region(&self, record: &RegionRecord) -> Result<Revision, ClusterError> {
        self.with_state(Save::Durable, |state| {
            if state.regions.contains_key(&record.name) {
                return Err(ClusterError::Exists(format!("region {:?}", record.name)));
            }
            state.revision += 1;
            let revision = state.revision;
            state
                .regions
                .insert(record.name.clone(), (record.clone(), revision));
            Ok(revision)
        })
    }

    fn region(&self, name: &str) -> Result<Option<Versioned<RegionRecord>>, ClusterError> {
        self.with_state(Save::No, |state| {
            Ok(state.regions.get(name).map(|(value, revision)| Versioned {
                value: value.clone(),
                revision: *revision,
            }))
        })
    }

    fn regions(&self) -> Result<Vec<Versioned<RegionRecord>>, ClusterError> {
        self.with_state(Save::No, |state| {
            Ok(state
                .regions
                .values()
                .map(|(value, revision)| Versioned {
                    value: value.clone(),
                    revision: *revision,
                })
                .collect())
        })
    }

    fn update_region(
        &self,
        record: &RegionRecord,
        expected: Revision,
    ) -> Result<Revision, ClusterError> {
        self.with_state(Save::Durable, |state| {
            let Some((_, revision)) = state.regions.get(&record.name) else {
                return Err(ClusterError::NotFound(format!("region {:?}", record.name)));
            };
            if *revision != expected {
                return Err(ClusterError::Conflict(format!("region {:?}", record.name)));
            }
            state.revision += 1;
            let revision = state.revision;
            state
                .regions
                .insert(record.name.clone(), (record.clone(), revision));
            Ok(revision)
        })
    }

    fn delete_region(&self, name: &str) -> Result<(), ClusterError> {
        self.with_state(Save::Durable, |state| {
            state.revision += 1;
            state.regions.remove(name);
            state.writers.remove(name);
            Ok(())
        })
    }

    fn claim_writer(
        &self,
        region: &str,
        record: &WriterRecord,
        lease: LeaseId,
    ) -> Result<Option<WriterRecord>, ClusterError> {
        self.with_state(Save::Durable, |state| {
            state.check_lease(lease)?;
            match state.writers.get(region) {
                Some((holder, held)) if *held != lease => Ok(Some(holder.clone())),
                _ => {
                    state.revision += 1;
                    state
                        .writers
                        .insert(region.to_owned(), (record.clone(), lease));
                    Ok(None)
                }
            }
        })
    }

    fn release_writer(&self, region: &str, lease: LeaseId) -> Result<(), ClusterError> {
        self.with_state(Save::Durable, |state| {
            if state
                .writers
                .get(region)
                .is_some_and(|(_, held)| *held == lease)
            {
                state.revision += 1;
                state.writers.remove(region);
            }
            Ok(())
        })
    }

    fn writer(&self, region: &str) -> Result<Option<WriterRecord>, ClusterError> {
        self.with_state(Save::No, |state| {
            Ok(state.writers.get(region).map(|(record, _)| record.clone()))
        })
    }
}

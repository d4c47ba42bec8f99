//! The catalog: which regions a node holds, persisted in its data dir.
//!
//! The file `regions.meta` holds the whole catalog:
//!
//! ```text
//! offset size field
//!  0     8    magic     "PGDACAT1"
//!  8     4    length    of the JSON body, little-endian
//! 12     4    checksum  crc32c of the JSON body
//! 16     n    body      {"next_id":N,"regions":[{"id":..,"name":..,"size":..,"page_size":..}]}
//! ```
//!
//! It is replaced atomically: written to `regions.meta.tmp`, fsynced, renamed
//! over the old file, and the directory fsynced. A crash at any point leaves
//! either the old or the new catalog. A failed write or fsync latches the
//! catalog into a failed state: it refuses further changes until restart, and
//! the change that failed is not applied in memory either.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pagoda_wire::limits::{REGION_NAME_BYTES_MAX, REGIONS_MAX};
use pagoda_wire::{RegionInfo, RegionState};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::arena::Arena;
use crate::error::NodeError;
use crate::region::{Region, validate_shape};
use crate::replication::{PersistedRole, Role};

const MAGIC: &[u8; 8] = b"PGDACAT1";
const FILE_NAME: &str = "regions.meta";
const LOCK_FILE_NAME: &str = "LOCK";
/// The largest catalog file the node will read: REGIONS_MAX entries with the
/// longest names, with room to spare.
const CATALOG_BYTES_MAX: u64 = 8 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Persisted {
    next_id: u64,
    regions: Vec<PersistedRegion>,
}

#[derive(Serialize, Deserialize)]
struct PersistedRegion {
    id: u64,
    name: String,
    size: u64,
    page_size: u32,
    /// Unique across nodes and re-creations; names its checkpoints. Catalogs
    /// written before uids existed get one at load.
    #[serde(default)]
    uid: u64,
    /// Set while the region is being recovered onto this node.
    #[serde(default, skip_serializing_if = "is_false")]
    recovering: bool,
    /// Set once the region has moved to another node.
    #[serde(default, skip_serializing_if = "is_false")]
    moved: bool,
    /// The newest checkpoint known to be complete in storage (0: none). A
    /// restart that finds an older one there refuses to roll the region back
    /// silently.
    #[serde(default, skip_serializing_if = "is_zero", alias = "checkpoint_epoch")]
    checkpoint: u64,
    /// The highest writer epoch handed out (0: none yet). Persisted before
    /// a writer learns its epoch, so a restart never hands it out again.
    #[serde(default, skip_serializing_if = "is_zero")]
    writer_epoch: u64,
    /// Its role in replication; absent when not replicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replication: Option<PersistedRole>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// What to do when `regions.meta` is missing from a data dir a node has used
/// before (its `node.id` is there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingCatalog {
    /// Refuse to start: the regions' checkpoints would be forgotten.
    Refuse,
    /// Start with no regions (the operator said so).
    StartEmpty,
}

/// The file that marks a data dir as used by a node, holding its id.
const NODE_ID_FILE_NAME: &str = "node.id";

struct State {
    next_id: u64,
    by_name: HashMap<String, Arc<Region>>,
    by_id: HashMap<u64, Arc<Region>>,
    /// The same regions by uid (a replica's primary names them so).
    by_uid: HashMap<u64, Arc<Region>>,
    failed: Option<String>,
}

/// The node's regions; see the module documentation.
pub struct Catalog {
    dir: PathBuf,
    arena: Arc<Arena>,
    state: RwLock<State>,
    _lock: File,
}

pub(crate) fn validate_name(name: &str) -> Result<(), NodeError> {
    if name.is_empty() || name.len() > REGION_NAME_BYTES_MAX {
        return Err(NodeError::InvalidArgument(format!(
            "region name must be 1 to {REGION_NAME_BYTES_MAX} bytes"
        )));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(NodeError::InvalidArgument(
            "region name must not contain control characters".into(),
        ));
    }
    Ok(())
}

impl Catalog {
    /// Opens the catalog in `dir` (creating the dir and an empty catalog if
    /// needed) and takes the dir's lock, so two nodes never share a data dir.
    /// A data dir a node has used before (it holds `node.id`) but whose
    /// `regions.meta` is gone is refused.
    pub fn open(dir: &Path, arena: Arc<Arena>) -> Result<Catalog, NodeError> {
        Catalog::open_with(dir, arena, MissingCatalog::Refuse)
    }

    /// [`Catalog::open`], saying what to do about a missing `regions.meta`.
    pub fn open_with(
        dir: &Path,
        arena: Arc<Arena>,
        missing: MissingCatalog,
    ) -> Result<Catalog, NodeError> {
        fs::create_dir_all(dir)
            .map_err(|e| NodeError::io(format!("creating data dir {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let used_before = dir.join(NODE_ID_FILE_NAME).exists();
        let mut found = true;
        let persisted = match File::open(&path) {
            Ok(file) => read_catalog(&path, file)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if used_before {
                    match missing {
                        MissingCatalog::Refuse => {
                            return Err(NodeError::CatalogMismatch(format!(
                                "{} is missing, but a node has used data dir {} before (it holds \
                                 {NODE_ID_FILE_NAME}): starting would forget every region and \
                                 its checkpoints. Restore {FILE_NAME} from a backup, or start \
                                 with --accept-storage-mismatch to begin with no regions",
                                path.display(),
                                dir.display()
                            )));
                        }
                        MissingCatalog::StartEmpty => tracing::error!(
                            path = %path.display(),
                            "the catalog is missing; starting with no regions as told \
                             (--accept-storage-mismatch): regions it held are forgotten"
                        ),
                    }
                }
                found = false;
                Persisted {
                    next_id: 1,
                    regions: Vec::new(),
                }
            }
            Err(error) => {
                return Err(NodeError::io(format!("opening {}", path.display()), error));
            }
        };
        let mut state = State {
            next_id: persisted.next_id,
            by_name: HashMap::new(),
            by_id: HashMap::new(),
            by_uid: HashMap::new(),
            failed: None,
        };
        let corrupt = |detail: String| NodeError::Corrupt {
            path: path.display().to_string(),
            detail,
        };
        if persisted.regions.len() > REGIONS_MAX {
            return Err(corrupt(format!(
                "{} regions exceed the limit",
                persisted.regions.len()
            )));
        }
        for entry in persisted.regions {
            validate_name(&entry.name).map_err(|e| corrupt(e.to_string()))?;
            if entry.id >= state.next_id || state.by_id.contains_key(&entry.id) {
                return Err(corrupt(format!(
                    "region id {} is duplicated or beyond next_id",
                    entry.id
                )));
            }
            let info = RegionInfo {
                id: entry.id,
                size: entry.size,
                page_size: entry.page_size,
                name: entry.name,
            };
            let uid = if entry.uid == 0 { new_uid() } else { entry.uid };
            let region =
                Region::new(info, uid, arena.clone()).map_err(|e| corrupt(e.to_string()))?;
            region.set_durable_checkpoint(entry.checkpoint);
            // The log's position is not persisted: a writer that held the
            // last epoch before the restart cannot resume it (its numbering
            // would not match), so the epoch moves past it.
            match &entry.replication {
                // A replicated copy learns writer epochs from its primary
                // (and a restarted copy is fenced or rebuilt before it takes
                // or applies a write).
                Some(role) => {
                    region.log().raise_writer_epoch(entry.writer_epoch);
                    *region.role().lock() = Role::restored(role);
                }
                None if entry.writer_epoch > 0 => {
                    region.log().raise_writer_epoch(entry.writer_epoch + 1);
                }
                None => {}
            }
            if entry.recovering {
                region.set_state(
                    RegionState::Damaged,
                    "its recovery was interrupted by a restart; delete it and recover it again",
                );
            } else if entry.moved {
                region.set_state(
                    RegionState::Damaged,
                    "it moved to another node before this node restarted; delete it here",
                );
            }
            let region = Arc::new(region);
            arena.register(&region);
            if state
                .by_name
                .insert(region.info().name.clone(), region.clone())
                .is_some()
            {
                return Err(corrupt(format!(
                    "region name {:?} is duplicated",
                    region.info().name
                )));
            }
            if state.by_uid.insert(region.uid(), region.clone()).is_some() {
                return Err(corrupt(format!(
                    "region uid {:x} is duplicated",
                    region.uid()
                )));
            }
            state.by_id.insert(region.info().id, region);
        }
        let catalog = Catalog {
            dir: dir.to_path_buf(),
            arena,
            state: RwLock::new(state),
            _lock: lock,
        };
        if !found || !used_before {
            // From now on the dir is known to hold a catalog: write one even
            // with no region in it, then mark the dir as used.
            catalog.persist(&catalog.state.read())?;
            write_node_id(dir)?;
        }
        Ok(catalog)
    }

    /// Creates a region and persists the catalog.
    pub fn create(&self, name: &str, size: u64, page_size: u32) -> Result<RegionInfo, NodeError> {
        self.create_region(name, size, page_size, new_uid(), RegionState::Active)
            .map(|region| region.info().clone())
    }

    /// Creates a region with a given uid and state and persists the catalog.
    pub fn create_region(
        &self,
        name: &str,
        size: u64,
        page_size: u32,
        uid: u64,
        initial: RegionState,
    ) -> Result<Arc<Region>, NodeError> {
        validate_name(name)?;
        crate::checkpoint::check_name_storable(name)?;
        validate_shape(size, page_size)?;
        let mut state = self.state.write();
        if let Some(reason) = &state.failed {
            return Err(NodeError::MetadataFailed(reason.clone()));
        }
        if state.by_name.contains_key(name) {
            return Err(NodeError::RegionExists(name.to_owned()));
        }
        if state.by_uid.contains_key(&uid) {
            return Err(NodeError::RegionExists(format!("{name} (uid {uid:016x})")));
        }
        if state.by_name.len() >= REGIONS_MAX {
            return Err(NodeError::TooManyRegions(REGIONS_MAX));
        }
        // Ids are never reused; a catalog whose ids are used up (only a
        // damaged or hand-edited one can be) takes no new region.
        let Some(next_id) = state.next_id.checked_add(1) else {
            return Err(NodeError::RegionIdsExhausted(state.next_id));
        };
        let info = RegionInfo {
            id: state.next_id,
            size,
            page_size,
            name: name.to_owned(),
        };
        let region = Region::new(info.clone(), uid, self.arena.clone())?;
        if initial != RegionState::Active {
            region.set_state(initial, "");
        }
        let region = Arc::new(region);
        self.arena.register(&region);
        state.next_id = next_id;
        state.by_name.insert(name.to_owned(), region.clone());
        state.by_id.insert(info.id, region.clone());
        state.by_uid.insert(uid, region.clone());
        if let Err(error) = self.persist(&state) {
            // Undo in memory too: the caller is told the region does not exist.
            state.next_id = info.id;
            state.by_name.remove(name);
            state.by_id.remove(&info.id);
            state.by_uid.remove(&uid);
            state.failed = Some(error.to_string());
            return Err(NodeError::MetadataFailed(error.to_string()));
        }
        Ok(region)
    }

    /// Persists the catalog again after a region's state changed (recovered,
    /// moved), so a restart finds it in the right state.
    pub fn save_states(&self) -> Result<(), NodeError> {
        let mut state = self.state.write();
        if let Some(reason) = &state.failed {
            return Err(NodeError::MetadataFailed(reason.clone()));
        }
        if let Err(error) = self.persist(&state) {
            state.failed = Some(error.to_string());
            return Err(NodeError::MetadataFailed(error.to_string()));
        }
        Ok(())
    }

    /// Every region, ordered by name.
    pub fn regions(&self) -> Vec<Arc<Region>> {
        let state = self.state.read();
        let mut list: Vec<_> = state.by_name.values().cloned().collect();
        list.sort_by(|a, b| a.info().name.cmp(&b.info().name));
        list
    }

    /// Deletes a region and persists the catalog. Its RAM is freed once the
    /// last request using it finishes.
    pub fn delete(&self, name: &str) -> Result<(), NodeError> {
        let mut state = self.state.write();
        if let Some(reason) = &state.failed {
            return Err(NodeError::MetadataFailed(reason.clone()));
        }
        let Some(region) = state.by_name.remove(name) else {
            return Err(NodeError::RegionNotFound(name.to_owned()));
        };
        state.by_id.remove(&region.info().id);
        state.by_uid.remove(&region.uid());
        if let Err(error) = self.persist(&state) {
            state.by_id.insert(region.info().id, region.clone());
            state.by_uid.insert(region.uid(), region.clone());
            state.by_name.insert(name.to_owned(), region);
            state.failed = Some(error.to_string());
            return Err(NodeError::MetadataFailed(error.to_string()));
        }
        Ok(())
    }

    /// The region with this name.
    pub fn by_name(&self, name: &str) -> Result<Arc<Region>, NodeError> {
        self.state
            .read()
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::RegionNotFound(name.to_owned()))
    }

    /// The region with this uid.
    pub fn by_uid(&self, uid: u64) -> Result<Arc<Region>, NodeError> {
        self.state
            .read()
            .by_uid
            .get(&uid)
            .cloned()
            .ok_or_else(|| NodeError::RegionNotFound(format!("uid {uid:016x}")))
    }

    /// The region with this id.
    pub fn by_id(&self, id: u64) -> Result<Arc<Region>, NodeError> {
        self.state
            .read()
            .by_id
            .get(&id)
            .cloned()
            .ok_or(NodeError::RegionIdNotFound(id))
    }

    /// All regions, ordered by name.
    pub fn list(&self) -> Vec<RegionInfo> {
        let state = self.state.read();
        let mut list: Vec<_> = state.by_name.values().map(|r| r.info().clone()).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.state.read().by_name.len()
    }

    /// Whether the catalog holds no region.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn persist(&self, state: &State) -> Result<(), NodeError> {
        let mut regions: Vec<_> = state
            .by_id
            .values()
            .map(|region| {
                let info = region.info();
                PersistedRegion {
                    id: info.id,
                    name: info.name.clone(),
                    size: info.size,
                    page_size: info.page_size,
                    uid: region.uid(),
                    recovering: region.state() == RegionState::Recovering,
                    moved: region.state() == RegionState::ReadOnly,
                    checkpoint: region.durable_checkpoint(),
                    writer_epoch: region.log().writer_epoch(),
                    replication: region.role().lock().persisted(),
                }
            })
            .collect();
        regions.sort_by_key(|r| r.id);
        let body = serde_json::to_vec(&Persisted {
            next_id: state.next_id,
            regions,
        })
        .expect("catalog serializes");
        let mut bytes = Vec::with_capacity(16 + body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);

        let temporary = self.dir.join(format!("{FILE_NAME}.tmp"));
        let path = self.dir.join(FILE_NAME);
        let context = |what: &str| format!("{what} {}", temporary.display());
        let mut file =
            File::create(&temporary).map_err(|e| NodeError::io(context("creating"), e))?;
        file.write_all(&bytes)
            .map_err(|e| NodeError::io(context("writing"), e))?;
        file.sync_all()
            .map_err(|e| NodeError::io(context("syncing"), e))?;
        drop(file);
        fs::rename(&temporary, &path)
            .map_err(|e| NodeError::io(format!("renaming over {}", path.display()), e))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| NodeError::io(format!("syncing dir {}", self.dir.display()), e))?;
        Ok(())
    }
}

/// A fresh region uid: random, never 0.
pub fn new_uid() -> u64 {
    rand::random::<u64>() | 1
}

fn read_catalog(path: &Path, file: File) -> Result<Persisted, NodeError> {
    use std::io::Read;
    let corrupt = |detail: &str| NodeError::Corrupt {
        path: path.display().to_string(),
        detail: detail.to_owned(),
    };
    let mut bytes = Vec::new();
    file.take(CATALOG_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| NodeError::io(format!("reading {}", path.display()), e))?;
    if bytes.len() as u64 > CATALOG_BYTES_MAX {
        return Err(corrupt("file exceeds the catalog size limit"));
    }
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a Pagoda catalog (bad magic or too short)"));
    }
    let length = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let checksum = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let body = &bytes[16..];
    if body.len() != length {
        return Err(corrupt("length does not match the file (truncated?)"));
    }
    if crc32c::crc32c(body) != checksum {
        return Err(corrupt("checksum mismatch"));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(&format!("invalid body: {e}")))
}

/// Marks the data dir as used by a node: writes `node.id` (a random id, for
/// the logs and for later use), durably.
fn write_node_id(dir: &Path) -> Result<(), NodeError> {
    let path = dir.join(NODE_ID_FILE_NAME);
    let temporary = dir.join(format!("{NODE_ID_FILE_NAME}.tmp"));
    let context = |what: &str| format!("{what} {}", path.display());
    fs::write(&temporary, format!("{:016x}\n", new_uid()))
        .and_then(|()| File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, &path))
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| NodeError::io(context("writing"), e))
}

fn lock_dir(dir: &Path) -> Result<File, NodeError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NodeError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on a file descriptor we own.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        return Err(NodeError::Config(format!(
            "data dir {} is in use by another node ({})",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena() -> Arc<Arena> {
        Arc::new(Arena::new(4 << 20, 2 << 20).unwrap())
    }

    // Guards persistence: regions survive a reopen with the same ids, and ids
    // are never reused after a delete.
    #[test]
    fn regions_survive_reopen_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let catalog = Catalog::open(dir.path(), arena()).unwrap();
            catalog.create("a", 1 << 20, 4096).unwrap();
            catalog.create("b", 1 << 30, 65536).unwrap();
            catalog.delete("a").unwrap();
        }
        let catalog = Catalog::open(dir.path(), arena()).unwrap();
        let list = catalog.list();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].name.as_str(), list[0].id, list[0].page_size),
            ("b", 2, 65536)
        );
        assert_eq!(catalog.create("c", 4096, 4096).unwrap().id, 3);
    }

    // Guards the data dir lock: a second node on the same dir is refused.
    #[test]
    fn second_open_of_a_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Catalog::open(dir.path(), arena()).unwrap();
        let error = Catalog::open(dir.path(), arena()).err().unwrap();
        assert!(error.to_string().contains("in use"), "{error}");
    }

    // Guards the deleted-catalog finding: a data dir a node has used whose
    // regions.meta is gone is refused (it used to start with no regions,
    // forgetting their checkpoints), unless the operator accepts it; a fresh
    // dir, and a used one that never had a region, start normally.
    #[test]
    fn a_missing_catalog_in_a_used_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Catalog::open(dir.path(), arena()).unwrap());
        // Used, with no region ever created: still fine.
        drop(Catalog::open(dir.path(), arena()).unwrap());
        {
            let catalog = Catalog::open(dir.path(), arena()).unwrap();
            catalog.create("a", 1 << 20, 4096).unwrap();
        }
        fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        let error = Catalog::open(dir.path(), arena()).err().unwrap();
        assert!(matches!(error, NodeError::CatalogMismatch(_)), "{error}");
        assert!(
            error.to_string().contains("--accept-storage-mismatch"),
            "{error}"
        );
        let catalog = Catalog::open_with(dir.path(), arena(), MissingCatalog::StartEmpty).unwrap();
        assert!(catalog.is_empty());
        drop(catalog);
        // Accepted once: the new, empty catalog is the record from now on.
        assert!(Catalog::open(dir.path(), arena()).unwrap().is_empty());
    }

    // Guards the id overflow the fuzzer found: a catalog whose next id is
    // u64::MAX opens, and creating a region in it is refused with an error
    // rather than overflowing (a panic, or a wrapped id that is reused).
    #[test]
    fn exhausted_region_ids_refuse_a_create() {
        let dir = tempfile::tempdir().unwrap();
        let body = br#"{"next_id":18446744073709551615,"regions":[]}"#;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        bytes.extend_from_slice(body);
        fs::write(dir.path().join(FILE_NAME), bytes).unwrap();
        let catalog = Catalog::open(dir.path(), arena()).unwrap();
        let error = catalog.create("a", 1 << 20, 4096).unwrap_err();
        assert!(error.to_string().contains("used up"), "{error}");
        assert!(catalog.is_empty());
    }

    // Guards compatibility with catalogs written before the checkpoint
    // counter was renamed: `checkpoint_epoch` still loads as the recorded
    // checkpoint number, and the next save writes it as `checkpoint`.
    #[test]
    fn a_catalog_with_the_old_checkpoint_field_loads() {
        let dir = tempfile::tempdir().unwrap();
        let body = br#"{"next_id":2,"regions":[{"id":1,"name":"a","size":1048576,"page_size":4096,"uid":7,"checkpoint_epoch":3}]}"#;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        bytes.extend_from_slice(body);
        fs::write(dir.path().join(FILE_NAME), bytes).unwrap();
        let catalog = Catalog::open(dir.path(), arena()).unwrap();
        assert_eq!(catalog.by_name("a").unwrap().durable_checkpoint(), 3);
        catalog.save_states().unwrap();
        drop(catalog);
        let saved = fs::read(dir.path().join(FILE_NAME)).unwrap();
        let saved = String::from_utf8_lossy(&saved[16..]);
        assert!(saved.contains(r#""checkpoint":3"#), "{saved}");
        assert!(!saved.contains("epoch"), "{saved}");
    }

    // Guards corruption detection: a flipped byte is reported, not loaded.
    #[test]
    fn corrupt_catalog_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let catalog = Catalog::open(dir.path(), arena()).unwrap();
            catalog.create("a", 1 << 20, 4096).unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let error = Catalog::open(dir.path(), arena()).err().unwrap();
        assert!(error.to_string().contains("checksum"), "{error}");
    }
}

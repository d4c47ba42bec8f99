//! Checkpoints: a region's baseline in the storage backend.
//!
//! Checkpoint number N writes the pages dirty since checkpoint N-1 (all
//! written pages for a full one) as *data objects*, then a *manifest* naming
//! every object that makes up the whole baseline and which of their pages are
//! still live. The manifest is written last, after every data object it names
//! is stored; only a complete manifest that verifies counts, so a checkpoint
//! cut short by a crash or an error leaves the previous one as the baseline.
//!
//! Keys, under the region's name (percent-encoded, and shortened to a prefix
//! and a hash when that is long: see [`encode_name`]):
//!
//! ```text
//! regions/<name>/manifests/<checkpoint number, 20 digits>.manifest
//! regions/<name>/data/<checkpoint number, 20 digits>-<nonce, 16 hex>-<n, 6 digits>.obj
//! ```
//!
//! The nonce is random per attempt, so two attempts at one checkpoint number
//! (a retry after a failure, or two nodes) never overwrite each other's
//! objects.
//!
//! A data object (all integers little-endian):
//!
//! ```text
//! offset size field
//!  0     8    magic       "PGDAOBJ1"
//!  8     4    version     1
//! 12     4    page_size
//! 16     8    region uid
//! 24     8    checkpoint  the checkpoint number
//! 32     4    count       pages in the object
//! 36     4    index_crc   crc32c of the index
//! 40     4    reserved    0
//! 44     4    header_crc  crc32c of bytes 0..44
//! 48     16*count index   per page: page number u64, crc32c of its bytes u32, 0 u32
//! ...    count*page_size  the pages, in index order (ascending page numbers)
//! ```
//!
//! A manifest is `"PGDAMAN1"`, the body's length (u32), its crc32c (u32) and a
//! JSON body ([`Manifest`]). Each object entry lists its live *runs*: pages
//! `first..first+count` are the object's index entries `index..index+count`.
//!
//! Loading verifies everything it reads: the manifest's magic, length and
//! checksum and that its runs lie inside the region and the objects; each
//! object's header and index checksums, that the header matches the manifest,
//! and every page's checksum and number. Any failure names the object and is
//! an error; nothing is loaded silently.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use pagoda_wire::CheckpointInfo;
use pagoda_wire::limits::{PAGE_BYTES_MAX, PAGE_BYTES_MIN};
use serde::{Deserialize, Serialize};

use crate::error::{NodeError, StorageCause};
use crate::region::{CheckpointMark, Region};
use crate::storage::{STORAGE_PARALLELISM, Storage};

const OBJECT_MAGIC: &[u8; 8] = b"PGDAOBJ1";
const OBJECT_VERSION: u32 = 1;
const OBJECT_HEADER_BYTES: usize = 48;
const INDEX_ENTRY_BYTES: usize = 16;
const MANIFEST_MAGIC: &[u8; 8] = b"PGDAMAN1";
const MANIFEST_FORMAT: u32 = 1;
/// The largest manifest a node will read.
const MANIFEST_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Default target size of a data object.
pub const OBJECT_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// Most pages in one data object.
const OBJECT_PAGES_MAX: u64 = 1 << 20;

/// One data object as a manifest names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// The object's key, relative to the store's root.
    pub key: String,
    /// The number of the checkpoint that wrote it.
    #[serde(alias = "epoch")]
    pub checkpoint: u64,
    /// Pages the object holds.
    pub pages: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Live runs: `[first page, first index, count]`.
    pub runs: Vec<[u64; 3]>,
}

/// A checkpoint's manifest: the whole baseline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// The region's name.
    pub name: String,
    /// The region's uid.
    pub uid: u64,
    /// Region size in bytes.
    pub size: u64,
    /// Page size in bytes.
    pub page_size: u32,
    /// This checkpoint's number (ascending per region).
    #[serde(alias = "epoch")]
    pub number: u64,
    /// When the checkpoint began (its point in time), ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Live pages in all.
    pub pages: u64,
    /// The objects, oldest first.
    pub objects: Vec<ObjectEntry>,
    /// Every write at or below this log sequence number is in the
    /// checkpoint (some above it may be too: replaying them over it is
    /// harmless). 0 in manifests written before it was recorded.
    #[serde(default)]
    pub lsn: u64,
    /// The primary epoch of the node that took it (0: not replicated).
    #[serde(default)]
    pub primary_epoch: u64,
}

impl Manifest {
    /// The baseline's age.
    pub fn age(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.started_unix_ms))
    }

    /// The point in time the baseline holds.
    pub fn started(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.started_unix_ms)
    }

    fn encode(&self) -> Bytes {
        let body = serde_json::to_vec(self).expect("manifest serializes");
        let mut bytes = Vec::with_capacity(16 + body.len());
        bytes.extend_from_slice(MANIFEST_MAGIC);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        Bytes::from(bytes)
    }

    /// Decodes and verifies a manifest read from `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Manifest, NodeError> {
        let corrupt = |detail: String| NodeError::CorruptObject {
            key: key.to_owned(),
            detail,
        };
        if bytes.len() < 16 || &bytes[..8] != MANIFEST_MAGIC {
            return Err(corrupt("not a manifest (bad magic or too short)".into()));
        }
        let length = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let checksum = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        let body = &bytes[16..];
        if body.len() != length {
            return Err(corrupt(format!(
                "length says {length} bytes, {} present (truncated?)",
                body.len()
            )));
        }
        if crc32c::crc32c(body) != checksum {
            return Err(corrupt("checksum mismatch".into()));
        }
        let manifest: Manifest =
            serde_json::from_slice(body).map_err(|e| corrupt(format!("invalid body: {e}")))?;
        manifest.validate().map_err(corrupt)?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!("unknown manifest format {}", self.format));
        }
        crate::region::validate_shape(self.size, self.page_size).map_err(|e| e.to_string())?;
        let page_count = self.size / self.page_size as u64;
        let mut live = 0u64;
        for object in &self.objects {
            if object.pages > OBJECT_PAGES_MAX {
                return Err(format!(
                    "object {} claims {} pages",
                    object.key, object.pages
                ));
            }
            let expected = object_bytes(object.pages, self.page_size);
            if object.bytes != expected {
                return Err(format!(
                    "object {} has {} bytes, {} pages need {expected}",
                    object.key, object.bytes, object.pages
                ));
            }
            for &[first, index, count] in &object.runs {
                if count == 0
                    || first.checked_add(count).is_none_or(|end| end > page_count)
                    || index
                        .checked_add(count)
                        .is_none_or(|end| end > object.pages)
                {
                    return Err(format!(
                        "object {} has a run [{first}, {index}, {count}] outside the region or the object",
                        object.key
                    ));
                }
                live += count;
            }
        }
        if live != self.pages {
            return Err(format!(
                "runs hold {live} pages, the manifest says {}",
                self.pages
            ));
        }
        Ok(())
    }
}

fn object_bytes(pages: u64, page_size: u32) -> u64 {
    OBJECT_HEADER_BYTES as u64 + pages * (INDEX_ENTRY_BYTES as u64 + page_size as u64)
}

/// The longest percent-encoding of a name that is used as it is; a longer
/// one is shortened (see [`encode_name`]). Object stores encode `%` again
/// (`%25`), so a kept encoding can grow to 5/3 of this in a file name: 150
/// bytes, well inside the 255 that file systems allow in one component.
const NAME_SEGMENT_BYTES_MAX: usize = 90;
/// How much of a long name's encoding its shortened form keeps, to stay
/// readable in listings.
const NAME_SEGMENT_PREFIX_BYTES: usize = 48;

/// Encodes a region name into one key segment of bounded length, made only of
/// ASCII letters, digits, `-`, `_`, `%` and `.`.
///
/// A name is percent-encoded (everything but letters, digits, `-` and `_`).
/// If that is longer than [`NAME_SEGMENT_BYTES_MAX`] bytes (52 CJK characters
/// take 156), the segment is the first bytes of the encoding, a `.`, and 32
/// hex digits of the SHA-256 of the whole name. A plain encoding never holds a
/// `.`, so the two forms never collide, and names whose encoding is short keep
/// the keys they always had.
fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.len() <= NAME_SEGMENT_BYTES_MAX {
        return out;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    // Cut at an escape's boundary, so the prefix never ends in half of one.
    let mut cut = NAME_SEGMENT_PREFIX_BYTES;
    while out.as_bytes()[cut - 1] == b'%' || out.as_bytes()[cut - 2] == b'%' {
        cut -= 1;
    }
    out.truncate(cut);
    out.push('.');
    for byte in &digest[..16] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The longest key a region's objects can have, for any valid name: checked
/// at region creation so that a name that cannot be stored is refused there,
/// not at its first checkpoint.
pub fn check_name_storable(name: &str) -> Result<(), NodeError> {
    let key = data_key(name, u64::MAX, u64::MAX, u32::MAX);
    let segment = encode_name(name);
    if segment.len() > NAME_SEGMENT_BYTES_MAX || key.as_ref().len() > KEY_BYTES_MAX {
        return Err(NodeError::InvalidArgument(format!(
            "region name {name:?} cannot be stored: its storage key would be {} bytes",
            key.as_ref().len()
        )));
    }
    Ok(())
}

/// The longest storage key Pagoda writes (S3 allows 1,024).
pub const KEY_BYTES_MAX: usize = 256;

/// The prefix of everything a region keeps in storage.
pub fn region_prefix(name: &str) -> Path {
    Path::from(format!("regions/{}", encode_name(name)))
}

fn manifests_prefix(name: &str) -> Path {
    Path::from(format!("regions/{}/manifests", encode_name(name)))
}

fn data_prefix(name: &str) -> Path {
    Path::from(format!("regions/{}/data", encode_name(name)))
}

fn manifest_key(name: &str, number: u64) -> Path {
    Path::from(format!(
        "regions/{}/manifests/{number:020}.manifest",
        encode_name(name)
    ))
}

fn data_key(name: &str, checkpoint: u64, nonce: u64, object: u32) -> Path {
    Path::from(format!(
        "regions/{}/data/{checkpoint:020}-{nonce:016x}-{object:06}.obj",
        encode_name(name)
    ))
}

/// The checkpoint number in a manifest or data key's file name.
fn key_number(key: &Path) -> Option<u64> {
    let file = key.filename()?;
    file.get(..20)?.parse().ok()
}

/// Checkpoint numbers of the region's manifests in storage, ascending.
pub fn list_manifests(storage: &Storage, name: &str) -> Result<Vec<u64>, NodeError> {
    let listed = storage.block_on(storage.list(&manifests_prefix(name)))?;
    let mut numbers: Vec<u64> = listed
        .iter()
        .filter(|meta| meta.location.extension() == Some("manifest"))
        .filter_map(|meta| key_number(&meta.location))
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Reads and verifies the manifest of checkpoint `number`.
pub fn read_manifest(storage: &Storage, name: &str, number: u64) -> Result<Manifest, NodeError> {
    let key = manifest_key(name, number);
    let bytes = storage.block_on(async {
        let meta = storage
            .store()
            .head(&key)
            .await
            .map_err(|e| NodeError::Storage {
                context: format!("reading {key}"),
                cause: StorageCause::from(&e),
            })?;
        if meta.size > MANIFEST_BYTES_MAX {
            return Err(NodeError::CorruptObject {
                key: key.to_string(),
                detail: format!("{} bytes exceed the manifest limit", meta.size),
            });
        }
        storage.get(&key).await
    })?;
    let manifest = Manifest::decode(key.as_ref(), &bytes)?;
    if manifest.name != name || manifest.number != number {
        return Err(NodeError::CorruptObject {
            key: key.to_string(),
            detail: format!(
                "names region {:?} checkpoint {}, expected {name:?} checkpoint {number}",
                manifest.name, manifest.number
            ),
        });
    }
    Ok(manifest)
}

/// The latest manifest of the region (optionally only one with this uid).
/// An invalid latest manifest is an error, not a reason to fall back
/// silently to an older one.
pub fn latest_manifest(
    storage: &Storage,
    name: &str,
    uid: Option<u64>,
) -> Result<Option<Manifest>, NodeError> {
    for number in list_manifests(storage, name)?.into_iter().rev() {
        let manifest = read_manifest(storage, name, number)?;
        if uid.is_none_or(|uid| uid == manifest.uid) {
            return Ok(Some(manifest));
        }
    }
    Ok(None)
}

/// How a node checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointSettings {
    /// Target size of a data object.
    pub object_bytes: usize,
    /// Manifests kept per region (at least 1).
    pub retain: usize,
}

/// Takes a checkpoint of `region`; see the module documentation.
pub fn checkpoint(
    storage: &Storage,
    region: &Region,
    full: bool,
    settings: CheckpointSettings,
    previous: Option<&Manifest>,
) -> Result<(CheckpointInfo, Manifest), NodeError> {
    let began = Instant::now();
    let info = region.info().clone();
    let last = region.last_checkpoint();
    let stored_max = list_manifests(storage, &info.name)?
        .last()
        .copied()
        .unwrap_or(0);
    let number = stored_max.max(last.as_ref().map_or(0, |mark| mark.number)) + 1;
    let previous = if full { None } else { previous };
    let from = match (&last, previous) {
        (Some(mark), Some(_)) => mark.start_seq,
        _ => 0,
    };
    if from == 0 {
        // A full checkpoint holds every page: a region still loading its
        // baseline lazily loads the rest first. An incremental one need not
        // wait: pages not loaded yet are not dirty, and its manifest keeps
        // naming them in the previous baseline's objects.
        region.ensure_all_loaded()?;
    }
    // Read before the snapshot starts: every write numbered at or below it
    // has been applied, so the snapshot holds it.
    let lsn = region.log().applied();
    let primary_epoch = crate::replication::primary_epoch(region);
    let (to, journal_through) = region.begin_snapshot(number, from);
    let started = SystemTime::now();
    struct EndSnapshot<'a>(&'a Region);
    impl Drop for EndSnapshot<'_> {
        fn drop(&mut self) {
            self.0.end_snapshot();
        }
    }
    let _end = EndSnapshot(region);
    let nonce: u64 = rand::random();
    let page_size = info.page_size as usize;
    let object_pages = (settings.object_bytes / page_size).clamp(1, OBJECT_PAGES_MAX as usize);

    let mut written: Vec<ObjectEntry> = Vec::new();
    let mut new_pages: Vec<u64> = Vec::new();
    let mut bytes_written = 0u64;
    let mut uploads: VecDeque<tokio::task::JoinHandle<Result<(), NodeError>>> = VecDeque::new();
    let mut pages: Vec<u64> = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    let store = storage.store().clone();
    let description = storage.description().to_owned();
    let mut upload = |pages: &mut Vec<u64>, data: &mut Vec<u8>| -> Result<(), NodeError> {
        if pages.is_empty() {
            return Ok(());
        }
        let object = written.len() as u32;
        let key = data_key(&info.name, number, nonce, object);
        let (head, body) = encode_object(info.page_size, region.uid(), number, pages, data);
        let size = (head.len() + body.len()) as u64;
        written.push(ObjectEntry {
            key: key.to_string(),
            checkpoint: number,
            pages: pages.len() as u64,
            bytes: size,
            runs: runs_of(pages, 0),
        });
        new_pages.append(pages);
        bytes_written += size;
        *data = Vec::with_capacity(object_pages * page_size);
        if uploads.len() >= STORAGE_PARALLELISM {
            let first = uploads.pop_front().expect("non-empty");
            storage
                .block_on(first)
                .map_err(|e| NodeError::storage("an upload task", e.to_string()))??;
        }
        let store = store.clone();
        let description = description.clone();
        uploads.push_back(storage.spawn(async move {
            let payload: object_store::PutPayload = [head, body].into_iter().collect();
            store
                .put(&key, payload)
                .await
                .map(|_| ())
                .map_err(|e| NodeError::Storage {
                    context: format!("writing {key} ({description})"),
                    cause: StorageCause::from(&e),
                })
        }));
        Ok(())
    };
    let mut result = Ok(());
    for number in 0..region.segment_count() {
        let before = pages.len();
        if let Err(error) = region.snapshot_segment(number, &mut pages, &mut data) {
            result = Err(error);
            break;
        }
        debug_assert!(pages[before..].is_sorted());
        // Split at the object size so objects stay near their target.
        while pages.len() >= object_pages {
            let mut rest_pages = pages.split_off(object_pages);
            let mut rest_data = data.split_off(object_pages * page_size);
            if let Err(error) = upload(&mut pages, &mut data) {
                result = Err(error);
                break;
            }
            pages.append(&mut rest_pages);
            data.append(&mut rest_data);
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = upload(&mut pages, &mut data);
    }
    // Wait for every upload, even after a failure, so none outlives the
    // checkpoint.
    for handle in uploads {
        let outcome = storage
            .block_on(handle)
            .map_err(|e| NodeError::storage("an upload task", e.to_string()))
            .and_then(|inner| inner);
        if result.is_ok() {
            result = outcome;
        }
    }
    if let Err(error) = result {
        remove_objects(storage, written.iter().map(|object| object.key.as_str()));
        return Err(error);
    }
    let written_keys: Vec<String> = written.iter().map(|object| object.key.clone()).collect();

    let mut objects = match previous {
        Some(previous) => supersede(&previous.objects, &new_pages),
        None => Vec::new(),
    };
    let objects_written = written.len() as u32;
    objects.extend(written);
    let live = objects
        .iter()
        .flat_map(|object| object.runs.iter().map(|run| run[2]))
        .sum();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: info.name.clone(),
        uid: region.uid(),
        size: info.size,
        page_size: info.page_size,
        number,
        started_unix_ms: started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        pages: live,
        objects,
        lsn,
        primary_epoch,
    };
    let encoded = manifest.encode();
    bytes_written += encoded.len() as u64;
    let key = manifest_key(&info.name, number);
    if let Err(error) = storage.block_on(storage.put(&key, encoded)) {
        // The put may have stored the manifest after all (a lost reply):
        // its objects may go only once it is surely gone.
        if storage.block_on(storage.delete(&key)).is_ok() {
            remove_objects(storage, written_keys.iter().map(String::as_str));
        }
        return Err(error);
    }
    region.checkpoint_completed(CheckpointMark {
        number,
        start_seq: to,
        started,
        journal_through,
    });
    let info = CheckpointInfo {
        number,
        pages: new_pages.len() as u64,
        bytes: bytes_written,
        objects: objects_written,
        full: previous.is_none(),
        baseline_pages: live,
        micros: began.elapsed().as_micros() as u64,
    };
    Ok((info, manifest))
}

/// Deletes the objects of a failed attempt, so that a full disk is not left
/// full of objects no manifest names. Best effort: what is left is collected
/// after a later checkpoint.
fn remove_objects<'a>(storage: &Storage, keys: impl Iterator<Item = &'a str>) {
    for key in keys {
        // Keys are stored encoded: parse, never re-encode (`Path::from` would
        // turn every `%` into `%25`).
        let Ok(path) = Path::parse(key) else {
            tracing::warn!(key, "not a valid object key; left in place");
            continue;
        };
        if let Err(error) = storage.block_on(storage.delete(&path)) {
            tracing::warn!(key, %error, "could not remove an object of a failed checkpoint");
        }
    }
}

/// Encodes a data object: header and index, then the pages.
fn encode_object(
    page_size: u32,
    uid: u64,
    checkpoint: u64,
    pages: &[u64],
    data: &mut Vec<u8>,
) -> (Bytes, Bytes) {
    let mut index = Vec::with_capacity(pages.len() * INDEX_ENTRY_BYTES);
    for (page, bytes) in pages.iter().zip(data.chunks_exact(page_size as usize)) {
        index.extend_from_slice(&page.to_le_bytes());
        index.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
        index.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut head = Vec::with_capacity(OBJECT_HEADER_BYTES + index.len());
    head.extend_from_slice(OBJECT_MAGIC);
    head.extend_from_slice(&OBJECT_VERSION.to_le_bytes());
    head.extend_from_slice(&page_size.to_le_bytes());
    head.extend_from_slice(&uid.to_le_bytes());
    head.extend_from_slice(&checkpoint.to_le_bytes());
    head.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    head.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    let header_crc = crc32c::crc32c(&head);
    head.extend_from_slice(&header_crc.to_le_bytes());
    head.extend_from_slice(&index);
    (Bytes::from(head), Bytes::from(std::mem::take(data)))
}

/// Runs of consecutive pages in a sorted page list, as `[first, index, count]`
/// with indexes counted from `base`.
fn runs_of(pages: &[u64], base: u64) -> Vec<[u64; 3]> {
    let mut runs: Vec<[u64; 3]> = Vec::new();
    for (offset, &page) in pages.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if run[0] + run[2] == page => run[2] += 1,
            _ => runs.push([page, base + offset as u64, 1]),
        }
    }
    runs
}

/// The previous baseline's objects with the pages in `newer` (sorted) taken
/// out of their live runs; objects left with no live page are dropped.
fn supersede(objects: &[ObjectEntry], newer: &[u64]) -> Vec<ObjectEntry> {
    let mut out = Vec::with_capacity(objects.len());
    for object in objects {
        let mut runs = Vec::with_capacity(object.runs.len());
        for &[first, index, count] in &object.runs {
            let end = first + count;
            let mut cursor = first;
            let start = newer.partition_point(|&page| page < first);
            for &page in newer[start..].iter().take_while(|&&page| page < end) {
                if page > cursor {
                    runs.push([cursor, index + (cursor - first), page - cursor]);
                }
                cursor = page + 1;
            }
            if cursor < end {
                runs.push([cursor, index + (cursor - first), end - cursor]);
            }
        }
        if !runs.is_empty() {
            out.push(ObjectEntry {
                runs,
                ..object.clone()
            });
        }
    }
    out
}

/// Progress of loading a baseline, updated as objects are read.
pub trait LoadProgress: Sync {
    /// `pages` more pages (of `bytes` bytes read from storage) are loaded.
    fn loaded(&self, pages: u64, bytes: u64);
}

impl LoadProgress for () {
    fn loaded(&self, _pages: u64, _bytes: u64) {}
}

/// `manifest` with the pages in `pages` (sorted) taken out of its objects'
/// live runs: the baseline to load when those pages come from elsewhere (a
/// recovery copies the pages dirty since the checkpoint from the source).
pub fn without_pages(manifest: &Manifest, pages: &[u64]) -> Manifest {
    debug_assert!(pages.is_sorted());
    let objects = supersede(&manifest.objects, pages);
    let live = objects
        .iter()
        .flat_map(|object| object.runs.iter().map(|run| run[2]))
        .sum();
    Manifest {
        objects,
        pages: live,
        ..manifest.clone()
    }
}

/// Checks that the baseline `manifest` describes has `region`'s shape.
pub fn check_fits(region: &Region, manifest: &Manifest) -> Result<(), NodeError> {
    let info = region.info();
    if manifest.size != info.size || manifest.page_size != info.page_size {
        return Err(NodeError::InvalidArgument(format!(
            "baseline of {:?} has {} bytes in pages of {}, the region {} in pages of {}",
            manifest.name, manifest.size, manifest.page_size, info.size, info.page_size
        )));
    }
    Ok(())
}

/// Loads the baseline `manifest` describes into `region`, reading objects in
/// parallel and verifying everything (see the module documentation).
pub fn load_baseline(
    storage: &Storage,
    region: &Region,
    manifest: &Manifest,
    progress: &dyn LoadProgress,
) -> Result<(), NodeError> {
    check_fits(region, manifest)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failure: parking_lot::Mutex<Option<NodeError>> = parking_lot::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..STORAGE_PARALLELISM {
            scope.spawn(|| {
                loop {
                    if failure.lock().is_some() {
                        return;
                    }
                    let number = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(object) = manifest.objects.get(number) else {
                        return;
                    };
                    if let Err(error) = load_object(storage, region, manifest, object, progress) {
                        failure.lock().get_or_insert(error);
                        return;
                    }
                }
            });
        }
    });
    match failure.into_inner() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn load_object(
    storage: &Storage,
    region: &Region,
    manifest: &Manifest,
    object: &ObjectEntry,
    progress: &dyn LoadProgress,
) -> Result<(), NodeError> {
    if object.runs.is_empty() {
        return Ok(());
    }
    let mut opened = OpenObject::open(storage, manifest, object, &object.runs)?;
    // Each run is read straight into the region's memory, a piece per
    // segment it covers (see `OpenObject::read_pages`). The region keeps a
    // piece's pages unnumbered (and zeroes them) unless every one of them
    // verifies. A failure part-way leaves the region partly loaded, which
    // the caller then marks damaged.
    let pages_per_segment = region.pages_per_segment();
    for &[first, index_start, count] in &object.runs {
        let mut done = 0;
        while done < count {
            let start = first + done;
            let segment_end = (start / pages_per_segment + 1) * pages_per_segment;
            let piece = (segment_end - start).min(count - done);
            region.restore_with(start..start + piece, |bytes| {
                opened.read_pages(index_start + done, bytes)
            })?;
            progress.loaded(piece, 0);
            done += piece;
        }
    }
    progress.loaded(0, opened.read_bytes);
    Ok(())
}

/// A data object open for loading: its header and index read and verified
/// against the manifest, and the index entries of the runs to be read
/// checked against the pages the manifest says they are. Used by the eager
/// load (whole objects) and the lazy one (the runs of a few segments).
pub(crate) struct OpenObject<'a> {
    key: &'a str,
    reader: crate::storage::ObjectReader<'a>,
    /// The object's index (its entries, after the header).
    index: Vec<u8>,
    data_start: u64,
    page_size: usize,
    /// Bytes read from storage so far.
    pub(crate) read_bytes: u64,
}

impl<'a> OpenObject<'a> {
    /// Opens `object` of `manifest` to read `runs` (each `[first page, first
    /// index, count]`, within the object's live runs, in ascending order).
    pub(crate) fn open(
        storage: &'a Storage,
        manifest: &Manifest,
        object: &'a ObjectEntry,
        runs: &[[u64; 3]],
    ) -> Result<OpenObject<'a>, NodeError> {
        let corrupt = |detail: String| NodeError::CorruptObject {
            key: object.key.clone(),
            detail,
        };
        // Keys are stored in their encoded form: parse them, never re-encode
        // (`Path::from` would turn every `%` into `%25`, naming another
        // object).
        let key = Path::parse(&object.key).map_err(|e| corrupt(format!("invalid key: {e}")))?;
        let page_size = manifest.page_size as usize;
        let head_bytes = OBJECT_HEADER_BYTES + object.pages as usize * INDEX_ENTRY_BYTES;
        let data_start = head_bytes as u64;
        // The header and index, then every run: planned, so that a remote
        // store fetches them in as few requests as it can.
        let mut plan = Vec::with_capacity(runs.len() + 1);
        plan.push(0..head_bytes as u64);
        for &[_, index, count] in runs {
            let start = data_start + index * page_size as u64;
            plan.push(start..start + count * page_size as u64);
        }
        let mut reader = storage.open_object(&key, &plan)?;
        if reader.size() != object.bytes {
            return Err(corrupt(format!(
                "{} bytes, the manifest says {} (truncated?)",
                reader.size(),
                object.bytes
            )));
        }
        let mut head = vec![0u8; head_bytes];
        reader.read_into(0, &mut head, &mut |_| Ok(()))?;
        if &head[..8] != OBJECT_MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let field32 = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap());
        let field64 = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap());
        if crc32c::crc32c(&head[..44]) != field32(44) {
            return Err(corrupt("header checksum mismatch".into()));
        }
        if field32(8) != OBJECT_VERSION {
            return Err(corrupt(format!("unknown version {}", field32(8))));
        }
        let page_size_field = field32(12);
        if page_size_field != manifest.page_size
            || !(PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&page_size_field)
        {
            return Err(corrupt(format!(
                "page size {page_size_field}, the manifest says {}",
                manifest.page_size
            )));
        }
        if field64(16) != manifest.uid || field64(24) != object.checkpoint {
            return Err(corrupt(format!(
                "belongs to region uid {:#x} checkpoint {}, the manifest says uid {:#x} checkpoint {}",
                field64(16),
                field64(24),
                manifest.uid,
                object.checkpoint
            )));
        }
        if field32(32) as u64 != object.pages {
            return Err(corrupt(format!(
                "holds {} pages, the manifest says {}",
                field32(32),
                object.pages
            )));
        }
        if crc32c::crc32c(&head[OBJECT_HEADER_BYTES..]) != field32(36) {
            return Err(corrupt("index checksum mismatch".into()));
        }
        let opened = OpenObject {
            key: &object.key,
            reader,
            index: head.split_off(OBJECT_HEADER_BYTES),
            data_start,
            page_size,
            read_bytes: head_bytes as u64,
        };
        for &[first, index_start, count] in runs {
            for offset in 0..count {
                let (page, _) = opened.entry(index_start + offset);
                if page != first + offset {
                    return Err(corrupt(format!(
                        "index entry {} is page {page}, the manifest says {}",
                        index_start + offset,
                        first + offset
                    )));
                }
            }
        }
        Ok(opened)
    }

    /// Index entry `i`: its page number and the page's checksum.
    fn entry(&self, i: u64) -> (u64, u32) {
        entry_of(&self.index, i)
    }

    /// Reads the pages of index entries `first_index..` into `bytes` (whole
    /// pages, of a run `open` checked), verifying each page as soon as it
    /// lands, while it is still in the CPU's cache: one pass over the bytes
    /// besides the read itself.
    pub(crate) fn read_pages(
        &mut self,
        first_index: u64,
        bytes: &mut [u8],
    ) -> Result<(), NodeError> {
        let page_size = self.page_size;
        debug_assert!(bytes.len().is_multiple_of(page_size));
        let count = (bytes.len() / page_size) as u64;
        let at = self.data_start + first_index * page_size as u64;
        let (index, key) = (&self.index, self.key);
        let mut verified = 0u64;
        self.reader.read_into(at, bytes, &mut |landed| {
            while (verified + 1) as usize * page_size <= landed.len() {
                let from = verified as usize * page_size;
                let (page, crc) = entry_of(index, first_index + verified);
                if crc32c::crc32c(&landed[from..from + page_size]) != crc {
                    return Err(NodeError::CorruptObject {
                        key: key.to_owned(),
                        detail: format!("page {page} checksum mismatch"),
                    });
                }
                verified += 1;
            }
            Ok(())
        })?;
        assert_eq!(verified, count, "every page of the piece verified");
        self.read_bytes += bytes.len() as u64;
        Ok(())
    }
}

fn entry_of(index: &[u8], i: u64) -> (u64, u32) {
    let at = i as usize * INDEX_ENTRY_BYTES;
    (
        u64::from_le_bytes(index[at..at + 8].try_into().unwrap()),
        u32::from_le_bytes(index[at + 8..at + 12].try_into().unwrap()),
    )
}

/// Deletes manifests beyond the newest `retain` and every data object older
/// than `current` that no kept manifest names. Objects of `current` or newer
/// (an attempt in progress) are never touched.
pub fn collect_garbage(
    storage: &Storage,
    name: &str,
    retain: usize,
    current: &Manifest,
) -> Result<GcReport, NodeError> {
    let mut report = GcReport::default();
    let numbers = list_manifests(storage, name)?;
    let keep_from = numbers.len().saturating_sub(retain.max(1));
    let mut live: HashSet<String> = HashSet::new();
    for &number in &numbers[keep_from..] {
        let manifest = if number == current.number {
            current.clone()
        } else {
            // A kept manifest that cannot be read stops collection: better
            // to keep garbage than to delete what it might name.
            read_manifest(storage, name, number)?
        };
        live.extend(manifest.objects.into_iter().map(|object| object.key));
    }
    for &number in &numbers[..keep_from] {
        storage.block_on(storage.delete(&manifest_key(name, number)))?;
        report.manifests += 1;
    }
    // Staging files of this region's puts that a crash interrupted: none is
    // in flight now, since the caller holds the region's checkpoint lock.
    let staging = storage.remove_staging(&region_prefix(name), Duration::ZERO)?;
    report.objects += staging.files;
    report.bytes += staging.bytes;
    for meta in storage.block_on(storage.list(&data_prefix(name)))? {
        let Some(number) = key_number(&meta.location) else {
            continue;
        };
        if number < current.number && !live.contains(meta.location.as_ref()) {
            storage.block_on(storage.delete(&meta.location))?;
            report.objects += 1;
            report.bytes += meta.size;
        }
    }
    Ok(report)
}

/// What garbage collection removed.
#[derive(Clone, Copy, Debug, Default)]
pub struct GcReport {
    /// Manifests deleted.
    pub manifests: u64,
    /// Data objects deleted.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Deletes everything a region keeps in storage (manifests first, so no
/// manifest ever names a missing object).
pub fn purge(storage: &Storage, name: &str) -> Result<(), NodeError> {
    for number in list_manifests(storage, name)? {
        storage.block_on(storage.delete(&manifest_key(name, number)))?;
    }
    for meta in storage.block_on(storage.list(&region_prefix(name)))? {
        storage.block_on(storage.delete(&meta.location))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pagoda_wire::{RegionInfo, RegionState};

    use super::*;
    use crate::arena::Arena;
    use crate::region::BASELINE_SEQ;
    use crate::storage::StorageConfig;

    // Guards the run arithmetic that the baseline's correctness rests on.
    #[test]
    fn supersede_cuts_runs_around_newer_pages() {
        assert_eq!(
            runs_of(&[1, 2, 3, 7, 9, 10], 0),
            vec![[1, 0, 3], [7, 3, 1], [9, 4, 2]]
        );
        let object = ObjectEntry {
            key: "k".into(),
            checkpoint: 1,
            pages: 10,
            bytes: 0,
            runs: vec![[0, 0, 10]],
        };
        let out = supersede(std::slice::from_ref(&object), &[0, 3, 4, 9, 20]);
        assert_eq!(out[0].runs, vec![[1, 1, 2], [5, 5, 4]]);
        assert!(supersede(&[object], &(0..10).collect::<Vec<_>>()).is_empty());
    }

    // Guards compatibility with manifests written before the checkpoint
    // counter was renamed: `epoch` (of the manifest and of each object) still
    // loads as the checkpoint number, and keys keep their form.
    #[test]
    fn a_manifest_with_the_old_field_names_loads() {
        let body = br#"{"format":1,"name":"r","uid":5,"size":1048576,"page_size":4096,"epoch":3,"started_unix_ms":0,"pages":2,"objects":[{"key":"k","epoch":2,"pages":2,"bytes":8272,"runs":[[10,0,2]]}]}"#;
        let mut bytes = MANIFEST_MAGIC.to_vec();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        bytes.extend_from_slice(body);
        let manifest = Manifest::decode("m", &bytes).unwrap();
        assert_eq!((manifest.number, manifest.objects[0].checkpoint), (3, 2));
        let encoded = manifest.encode();
        let written = String::from_utf8_lossy(&encoded[16..]);
        assert!(written.contains(r#""number":3"#), "{written}");
        assert!(written.contains(r#""checkpoint":2"#), "{written}");
        assert_eq!(
            manifest_key("r", 3).as_ref(),
            "regions/r/manifests/00000000000000000003.manifest"
        );
        assert_eq!(
            data_key("r", 3, 0xab, 1).as_ref(),
            "regions/r/data/00000000000000000003-00000000000000ab-000001.obj"
        );
    }

    // Guards key parsing and name encoding: odd names stay in one segment.
    #[test]
    fn keys_round_trip() {
        assert_eq!(encode_name("a/b c"), "a%2Fb%20c");
        assert_eq!(key_number(&manifest_key("x", 42)), Some(42));
        assert_eq!(key_number(&data_key("x", 7, 0xabc, 3)), Some(7));
    }

    // Guards against "File name too long" (a checkpoint that can never
    // succeed): every valid name, however many bytes its encoding takes,
    // gives bounded keys, and distinct long names give distinct keys.
    #[test]
    fn keys_are_bounded_for_every_name() {
        let longest = "\u{7FFF}".repeat(85);
        assert_eq!(longest.len(), 255);
        let names = [
            "plain".to_owned(),
            "數".repeat(18),
            "數".repeat(84) + "a",
            longest.clone(),
            "%".repeat(255),
            ".".repeat(255),
            "a".repeat(255),
        ];
        let mut segments = HashSet::new();
        for name in &names {
            check_name_storable(name).unwrap();
            let segment = encode_name(name);
            assert!(segment.len() <= NAME_SEGMENT_BYTES_MAX, "{segment}");
            assert!(
                segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_%.".contains(&b))
            );
            // Object stores re-encode `%`; even then one component fits 255.
            let component = Path::from(format!("{segment}.manifest"));
            assert!(component.as_ref().len() <= 200, "{component}");
            assert!(segments.insert(segment));
        }
        // Short encodings are unchanged, so existing keys stay valid.
        assert_eq!(encode_name("a b"), "a%20b");
        assert_ne!(
            encode_name(&("數".repeat(84) + "b")),
            encode_name(&names[2])
        );
    }

    // Guards manifest verification: a flipped byte, a truncation and a run
    // outside the region are all refused.
    #[test]
    fn manifest_verification() {
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: "r".into(),
            uid: 5,
            size: 1 << 20,
            page_size: 4096,
            number: 3,
            started_unix_ms: 0,
            lsn: 0,
            primary_epoch: 0,
            pages: 2,
            objects: vec![ObjectEntry {
                key: "k".into(),
                checkpoint: 3,
                pages: 2,
                bytes: object_bytes(2, 4096),
                runs: vec![[10, 0, 2]],
            }],
        };
        let bytes = manifest.encode();
        assert!(Manifest::decode("m", &bytes).is_ok());
        let mut flipped = bytes.to_vec();
        let at = flipped.len() - 5;
        flipped[at] ^= 1;
        assert!(Manifest::decode("m", &flipped).is_err());
        assert!(Manifest::decode("m", &bytes[..bytes.len() - 1]).is_err());
        let mut outside = manifest.clone();
        outside.objects[0].runs = vec![[255, 0, 2]];
        assert!(Manifest::decode("m", &outside.encode()).is_err());
    }

    /// What a region made for the load tests holds: every page of
    /// `region`, unwritten segments as zeros.
    fn contents(region: &Region) -> Vec<u8> {
        let segment_bytes = (region.pages_per_segment() * region.info().page_size as u64) as usize;
        let mut out = Vec::new();
        for number in 0..region.segment_count() {
            let before = out.len();
            region.copy_segment(number, &mut out).unwrap();
            if out.len() == before {
                let length = (region.info().size as usize - before).min(segment_bytes);
                out.resize(before + length, 0);
            }
        }
        out
    }

    fn page_bytes(page: u64, version: u8) -> Vec<u8> {
        let mut bytes = vec![version; 4096];
        bytes[..8].copy_from_slice(&page.to_le_bytes());
        bytes
    }

    /// A region of three segments (2 MiB of 4 KiB pages, the last segment
    /// partly), written whole, checkpointed into one object (so its run
    /// spans every segment boundary), then pages 500..530 (across the
    /// first boundary) rewritten and checkpointed incrementally.
    fn two_checkpoints() -> (
        tempfile::TempDir,
        Storage,
        Arc<Arena>,
        RegionInfo,
        Manifest,
        Vec<u8>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageConfig::Dir(dir.path().to_path_buf())).unwrap();
        let arena = Arc::new(Arena::new(64 << 20, 2 << 20).unwrap());
        let pages = 1300u64;
        let info = RegionInfo {
            id: 1,
            size: pages * 4096,
            page_size: 4096,
            name: "load".into(),
        };
        let region = Region::new(info.clone(), 9, arena.clone()).unwrap();
        let mut model = Vec::new();
        for page in 0..pages {
            let bytes = page_bytes(page, 1);
            region.restore_pages(&[page], &bytes, false).unwrap();
            model.extend_from_slice(&bytes);
        }
        let settings = CheckpointSettings {
            object_bytes: OBJECT_BYTES_DEFAULT,
            retain: 2,
        };
        let (_, full) = checkpoint(&storage, &region, true, settings, None).unwrap();
        assert_eq!((full.objects.len(), full.objects[0].runs.len()), (1, 1));
        region.checkpoint_completed(CheckpointMark {
            number: full.number,
            start_seq: region.mark(),
            started: full.started(),
            journal_through: 0,
        });
        for page in 500..530u64 {
            let bytes = page_bytes(page, 2);
            region.restore_pages(&[page], &bytes, false).unwrap();
            model[page as usize * 4096..(page as usize + 1) * 4096].copy_from_slice(&bytes);
        }
        let (_, incremental) = checkpoint(&storage, &region, false, settings, Some(&full)).unwrap();
        assert_eq!(incremental.objects.len(), 2, "{incremental:?}");
        (dir, storage, arena, info, incremental, model)
    }

    fn recovering(info: &RegionInfo, arena: &Arc<Arena>) -> Region {
        let region = Region::new(info.clone(), 9, arena.clone()).unwrap();
        region.set_state(RegionState::Recovering, "loading");
        region
    }

    // Guards the load straight into segment memory: runs that cross segment
    // boundaries (a full checkpoint's, and an incremental one's that cut it)
    // load to exactly the pages written, every page numbered as loaded from
    // the baseline (none dirty since it) and counted once; and a baseline
    // loaded without some pages leaves exactly those unwritten.
    #[test]
    fn runs_across_segments_load_in_place() {
        let (_dir, storage, arena, info, manifest, model) = two_checkpoints();
        let region = recovering(&info, &arena);
        load_baseline(&storage, &region, &manifest, &()).unwrap();
        assert!(contents(&region) == model, "the loaded region differs");
        assert_eq!(region.dirty_count(0), 1300, "every page loaded once");
        assert_eq!(region.dirty_count(BASELINE_SEQ), 0, "none dirty");
        assert_eq!(region.segments_allocated(), 3);

        let skipped: Vec<u64> = (505..520).chain(1290..1300).collect();
        let rest = without_pages(&manifest, &skipped);
        assert_eq!(rest.pages, 1300 - skipped.len() as u64);
        let region = recovering(&info, &arena);
        load_baseline(&storage, &region, &rest, &()).unwrap();
        let mut expected = model.clone();
        for &page in &skipped {
            expected[page as usize * 4096..(page as usize + 1) * 4096].fill(0);
        }
        assert!(
            contents(&region) == expected,
            "skipped pages must stay unwritten"
        );
        assert_eq!(region.dirty_count(0), rest.pages);
    }

    // Guards verification in the same pass as the read: a flipped bit in a
    // page of the second segment fails the load with that page's checksum
    // error naming the object, and the piece it was read into (the rest of
    // its run within that segment) is left zeroed and unnumbered rather
    // than holding unverified bytes.
    #[test]
    fn a_corrupted_page_fails_the_load_and_leaves_nothing_unverified() {
        let (dir, storage, arena, info, manifest, model) = two_checkpoints();
        let full = manifest
            .objects
            .iter()
            .find(|object| object.pages == 1300)
            .expect("the full checkpoint's object");
        let path = dir.path().join(&full.key);
        let mut bytes = std::fs::read(&path).unwrap();
        let data_start = OBJECT_HEADER_BYTES + 1300 * INDEX_ENTRY_BYTES;
        bytes[data_start + 700 * 4096 + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();

        let region = recovering(&info, &arena);
        match load_baseline(&storage, &region, &manifest, &()) {
            Err(NodeError::CorruptObject { key, detail }) => {
                assert_eq!(key, full.key);
                assert_eq!(detail, "page 700 checksum mismatch");
            }
            other => panic!("expected the checksum error, got {other:?}"),
        }
        // The damaged page's piece: its run from 530 (after the pages the
        // incremental checkpoint took out) to the segment's end at 1024.
        let loaded = contents(&region);
        let piece = 530 * 4096..1024 * 4096;
        assert!(loaded[piece.clone()].iter().all(|&byte| byte == 0));
        for page in (0..500).chain(1024..1300) {
            let at = page * 4096..(page + 1) * 4096;
            assert!(
                loaded[at.clone()] == model[at.clone()] || loaded[at].iter().all(|&b| b == 0),
                "page {page} holds bytes it was never given"
            );
        }
        assert!(region.dirty_count(0) <= 1300 - (1024 - 530));
    }
}

//! The bulk tier: a file on the node's SSD where cold segments' pages go
//! when RAM runs short (`--bulk-dir`, `--bulk-capacity`).
//!
//! **Blocks, content-addressed.** The file is an array of
//! [`BLOCK_BYTES`] blocks. A segment paged out is cut into blocks; each is
//! stored by its content: an all-zero block takes no block at all (its
//! reference is [`ZERO_BLOCK`]), and a block whose BLAKE3 digest (its first
//! 16 bytes) names a block already stored takes another reference to it
//! instead of a new one, within a region and across regions. A block's
//! reference count says how many paged-out segment pages point at it; at
//! zero it is free again. A page of more than one block is simply several
//! blocks.
//!
//! **Checksums.** Each stored block's CRC32C is kept beside the index and
//! checked on every read, so the tier never hands out a torn or stale block:
//! a mismatch is an error, never data.
//!
//! **No lock across I/O.** The index (digests, reference counts, free list)
//! sits behind one mutex that is never held across a read or a write: a
//! segment's new blocks are allocated under it, written without it, and only
//! then published for others to share. Reads take no lock at all: a block's
//! checksum is an atomic, and the caller holds a reference to the block
//! (through its segment) for as long as the read may be used.
//!
//! **Direct I/O.** The file is opened with `O_DIRECT` where the file system
//! allows it, so paged-out bytes do not come back into RAM through the page
//! cache, which would defeat the point of paging them out; where it does not
//! (tmpfs), the tier works through the page cache and says so in the log.
//!
//! **What a restart keeps.** The index lives in RAM. A graceful stop, once
//! every region is checkpointed, pages the regions out and saves the index
//! (`bulk.index`: the blocks in use with their checksums and digests, each
//! region's segments with their blocks, and a CRC32C over it all); the next
//! start reads and removes it, takes the blocks over, and serves those
//! regions from here at once (see `tiering`). Without an intact index (a
//! crash, a damaged file) the tier starts empty (the file is kept, its old
//! bytes never read), and regions reload from their checkpoints and
//! journals (see `docs/design.md`, "The bulk tier").
//!
//! **Hot blocks in RAM.** A read of a single page also goes through a small
//! cache of blocks in RAM (a quarter of the node's RAM, see
//! [`BlockCache`]): tiering moves whole segments, so a page read often in a
//! segment that is cold as a whole would otherwise go to the disk every
//! time. Blocks never change while referenced (a write stores new ones), so
//! a cached block is its block's bytes for as long as it is referenced; only
//! a reader that holds a reference inserts, and a block's entry is dropped
//! when its last reference goes, before the block can be reused.
//!
//! **Room.** The file is allocated at its full capacity when the node
//! starts (`fallocate`), so a disk without room fails the start, and no
//! page-out can later find the disk full.
//!
//! **Failure.** A failed write latches the tier failed: nothing more is
//! paged out to it (the node then reports out of memory when RAM is full),
//! and the segment whose write failed stays in RAM, so nothing is lost.

pub use crate::bulk_reads::{READ_THREADS, READ_THREADS_MAX};
use std::alloc::Layout;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::NodeError;

/// Bytes of one bulk-tier block: the smallest page.
pub const BLOCK_BYTES: usize = 4096;
/// A block's number in the bulk file.
pub type BlockRef = u32;
/// The reference of an all-zero block, which takes no space.
pub const ZERO_BLOCK: BlockRef = BlockRef::MAX;
/// The bulk file's name in `--bulk-dir`.
pub const FILE_NAME: &str = "bulk.data";

/// A block's digest: the first 16 bytes of its BLAKE3 hash.
type Digest = [u8; 16];

/// Hashes a digest by its first eight bytes: they are already uniformly
/// random, so hashing them again (SipHash) would only cost time — about a
/// third of a second for the million blocks a 4 GiB restart takes over.
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    fn write_usize(&mut self, _length: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The bulk tier's settings.
#[derive(Clone, Debug)]
pub struct BulkConfig {
    /// The directory holding the bulk file.
    pub dir: PathBuf,
    /// Bytes the bulk file may hold (rounded down to whole blocks).
    pub capacity_bytes: u64,
}

/// The bulk tier's figures, for the node's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkStat {
    /// Bytes the tier may hold.
    pub capacity_bytes: u64,
    /// Bytes of blocks stored (each distinct block once).
    pub used_bytes: u64,
    /// Bytes of non-zero pages paged out, counting every reference: what
    /// the tier would hold without sharing identical blocks.
    pub referenced_bytes: u64,
    /// Bytes of all-zero blocks paged out, which take no space.
    pub zero_bytes: u64,
}

impl BulkStat {
    /// Bytes saved by storing zero blocks as nothing and identical blocks
    /// once.
    pub fn saved_bytes(&self) -> u64 {
        self.zero_bytes + self.referenced_bytes.saturating_sub(self.used_bytes)
    }
}

struct BlockMeta {
    refs: u32,
    digest: Digest,
    /// Whether `by_digest` names this block (a block stored while an equal
    /// one was being written is not shared).
    published: bool,
    /// Taken over from a saved index and not yet published: whole (it was
    /// written before the index was saved), so [`BulkStore::publish_adopted`]
    /// may name it in `by_digest`. Cleared when the block is freed.
    adopted: bool,
}

struct Index {
    by_digest: HashMap<Digest, BlockRef, std::hash::BuildHasherDefault<DigestHasher>>,
    /// Per block handed out so far (blocks beyond its length were never
    /// used).
    meta: Vec<BlockMeta>,
    free: Vec<BlockRef>,
}

/// Shards of the block cache (each its own lock).
const CACHE_SHARDS: usize = 16;

/// Blocks in RAM for reads of single pages; see the module documentation.
/// Each shard is a CLOCK over its slots: a hit sets the slot's bit, and
/// room is made by sweeping to the first slot without it, clearing bits on
/// the way.
pub struct BlockCache {
    shards: Box<[Mutex<CacheShard>]>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct CacheShard {
    slot_of: HashMap<BlockRef, usize>,
    /// Per slot: the block it holds (`ZERO_BLOCK`: none) and its bit.
    slots: Vec<(BlockRef, bool)>,
    bytes: Box<[u8]>,
    free: Vec<usize>,
    hand: usize,
}

impl BlockCache {
    /// A cache of about `blocks` blocks (none if 0); its memory is
    /// allocated up front, and an allocation that fails leaves it empty.
    pub fn new(blocks: usize) -> BlockCache {
        let per_shard = blocks / CACHE_SHARDS;
        let shards = (0..if per_shard == 0 { 0 } else { CACHE_SHARDS })
            .map(|_| {
                let mut bytes = Vec::new();
                if bytes.try_reserve_exact(per_shard * BLOCK_BYTES).is_err() {
                    return None;
                }
                bytes.resize(per_shard * BLOCK_BYTES, 0);
                Some(Mutex::new(CacheShard {
                    slot_of: HashMap::with_capacity(per_shard),
                    slots: vec![(ZERO_BLOCK, false); per_shard],
                    bytes: bytes.into_boxed_slice(),
                    free: (0..per_shard).rev().collect(),
                    hand: 0,
                }))
            })
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        BlockCache {
            shards: shards.into_boxed_slice(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Blocks the cache holds at most.
    pub fn capacity_blocks(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().slots.len())
            .sum()
    }

    /// Lookups that found their block, and lookups that did not, since the
    /// start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn shard(&self, block: BlockRef) -> Option<&Mutex<CacheShard>> {
        if self.shards.is_empty() {
            return None;
        }
        // Consecutive blocks to different shards.
        Some(&self.shards[block as usize % self.shards.len()])
    }

    /// Copies `block` into `out` if cached.
    fn get(&self, block: BlockRef, out: &mut [u8]) -> bool {
        let Some(shard) = self.shard(block) else {
            return false;
        };
        let mut shard = shard.lock();
        let Some(&slot) = shard.slot_of.get(&block) else {
            drop(shard);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        shard.slots[slot].1 = true;
        out.copy_from_slice(&shard.bytes[slot * BLOCK_BYTES..(slot + 1) * BLOCK_BYTES]);
        drop(shard);
        self.hits.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Keeps `bytes` as `block`'s, making room if needed. The caller holds a
    /// reference to the block and has checked the bytes.
    fn insert(&self, block: BlockRef, bytes: &[u8]) {
        let Some(shard) = self.shard(block) else {
            return;
        };
        let mut shard = shard.lock();
        let shard = &mut *shard;
        if shard.slot_of.contains_key(&block) {
            return;
        }
        let slot = match shard.free.pop() {
            Some(slot) => slot,
            None => {
                // At most two sweeps: the first clears every bit.
                let count = shard.slots.len();
                let mut victim = shard.hand;
                for _ in 0..2 * count {
                    let at = shard.hand;
                    shard.hand = (shard.hand + 1) % count;
                    if !std::mem::replace(&mut shard.slots[at].1, false) {
                        victim = at;
                        break;
                    }
                }
                shard.slot_of.remove(&shard.slots[victim].0);
                victim
            }
        };
        shard.slots[slot] = (block, false);
        shard.slot_of.insert(block, slot);
        shard.bytes[slot * BLOCK_BYTES..(slot + 1) * BLOCK_BYTES].copy_from_slice(bytes);
    }

    /// Forgets `block` (its last reference went).
    fn forget(&self, block: BlockRef) {
        let Some(shard) = self.shard(block) else {
            return;
        };
        let mut shard = shard.lock();
        if let Some(slot) = shard.slot_of.remove(&block) {
            shard.slots[slot] = (ZERO_BLOCK, false);
            shard.free.push(slot);
        }
    }
}

/// The bulk tier; see the module documentation.
pub struct BulkStore {
    file: File,
    path: PathBuf,
    direct: bool,
    blocks: u32,
    index: Mutex<Index>,
    /// Per block, the CRC32C of its bytes as last written.
    checksums: Box<[AtomicU32]>,
    failed: Mutex<Option<String>>,
    is_failed: AtomicBool,
    used_blocks: AtomicU64,
    referenced_blocks: AtomicU64,
    zero_blocks: AtomicU64,
    cache: BlockCache,
}

/// A buffer aligned for direct I/O.
pub struct AlignedBuf {
    pointer: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned memory, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: see `Send`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (a non-zero multiple of
    /// [`BLOCK_BYTES`]), aligned to [`BLOCK_BYTES`]; an allocation failure
    /// is an error.
    pub fn new(len: usize) -> Result<AlignedBuf, NodeError> {
        assert!(len > 0 && len.is_multiple_of(BLOCK_BYTES));
        let layout = Layout::from_size_align(len, BLOCK_BYTES).expect("a valid layout");
        // SAFETY: a non-zero size.
        let pointer = unsafe { std::alloc::alloc_zeroed(layout) };
        let pointer = std::ptr::NonNull::new(pointer)
            .ok_or(NodeError::MetadataAllocation { bytes: len as u64 })?;
        Ok(AlignedBuf { pointer, len })
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialized bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, BLOCK_BYTES).expect("a valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.pointer.as_ptr(), layout) };
    }
}

fn digest(block: &[u8]) -> Digest {
    blake3::hash(block).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

fn is_zero(block: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: any bytes are valid u64s; alignment is handled by
        // `align_to`.
        unsafe { block.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// The index file a graceful stop leaves in the bulk dir.
pub const INDEX_FILE_NAME: &str = "bulk.index";
const INDEX_MAGIC: &[u8; 8] = b"PGDBIDX1";
/// The largest index file read (a larger one is ignored as damaged).
const INDEX_BYTES_MAX: u64 = 1 << 30;

/// A region's paged-out segments, as a graceful stop saved them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRegion {
    /// The region's uid.
    pub uid: u64,
    /// The checkpoint its pages are exactly.
    pub checkpoint: u64,
    /// Its size and page size.
    pub size: u64,
    /// Its page size.
    pub page_size: u32,
    /// Its segments, each with a block per 4 KiB.
    pub segments: Vec<(u32, Box<[BlockRef]>)>,
}

/// What a graceful stop left in the bulk dir: the blocks in use (with their
/// checksums and digests) and each saved region's segments.
#[derive(Debug, Default)]
pub struct SavedIndex {
    blocks: Vec<(BlockRef, u32, Digest)>,
    /// The regions saved.
    pub regions: Vec<SavedRegion>,
}

/// Reads and removes the index a graceful stop left; `None` (logged) when
/// there is none, or it is damaged, or it is for another capacity.
fn read_index(config: &BulkConfig) -> Option<SavedIndex> {
    let path = config.dir.join(INDEX_FILE_NAME);
    let bytes = match std::fs::metadata(&path) {
        Ok(metadata) if metadata.len() <= INDEX_BYTES_MAX => std::fs::read(&path),
        Ok(_) => Err(std::io::Error::other("larger than any index")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => Err(error),
    };
    // Whatever it holds, it describes the tier only until the node writes.
    let removed = std::fs::remove_file(&path).and_then(|()| File::open(&config.dir)?.sync_all());
    let parsed = bytes
        .map_err(|e| e.to_string())
        .and_then(|bytes| parse_index(&bytes, config.capacity_bytes / BLOCK_BYTES as u64));
    match (parsed, removed) {
        (Ok(index), Ok(())) => Some(index),
        (Err(problem), _) => {
            tracing::warn!(path = %path.display(), problem, "ignoring the bulk index; regions reload from their checkpoints");
            None
        }
        (Ok(_), Err(error)) => {
            tracing::warn!(path = %path.display(), %error, "could not remove the bulk index; regions reload from their checkpoints");
            None
        }
    }
}

/// Bytes an unprivileged writer may still allocate in the file system of
/// `dir`; `None` if it cannot be told.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and a buffer statvfs fills on success.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn parse_index(bytes: &[u8], capacity_blocks: u64) -> Result<SavedIndex, String> {
    let (body, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or("shorter than its checksum")?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return Err("checksum mismatch".into());
    }
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let piece = body.get(at..at + n).ok_or("truncated")?;
        at += n;
        Ok(piece)
    };
    if take(8)? != INDEX_MAGIC {
        return Err("bad magic".into());
    }
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    if u64_of(take(8)?) != capacity_blocks {
        return Err("written for another --bulk-capacity".into());
    }
    let used = u64_of(take(8)?);
    if used > capacity_blocks {
        return Err(format!("{used} blocks in use, more than the tier holds"));
    }
    let mut index = SavedIndex::default();
    for _ in 0..used {
        let block = u32_of(take(4)?);
        if block as u64 >= capacity_blocks {
            return Err(format!("block {block} beyond the tier"));
        }
        let crc = u32_of(take(4)?);
        let digest: Digest = take(16)?.try_into().expect("16 bytes");
        index.blocks.push((block, crc, digest));
    }
    let mut known = vec![false; capacity_blocks as usize];
    for &(block, _, _) in &index.blocks {
        known[block as usize] = true;
    }
    let regions = u64_of(take(8)?);
    for _ in 0..regions {
        let uid = u64_of(take(8)?);
        let checkpoint = u64_of(take(8)?);
        let size = u64_of(take(8)?);
        let page_size = u32_of(take(4)?);
        let segments = u64_of(take(8)?);
        let mut region = SavedRegion {
            uid,
            checkpoint,
            size,
            page_size,
            segments: Vec::new(),
        };
        for _ in 0..segments {
            let number = u32_of(take(4)?);
            let count = u32_of(take(4)?) as usize;
            let refs: Box<[BlockRef]> = take(count.checked_mul(4).ok_or("too many refs")?)?
                .chunks_exact(4)
                .map(u32_of)
                .collect();
            if let Some(block) = refs
                .iter()
                .find(|&&b| b != ZERO_BLOCK && !known.get(b as usize).copied().unwrap_or(false))
            {
                return Err(format!("region {uid:#x} names block {block}, not in use"));
            }
            region.segments.push((number, refs));
        }
        index.regions.push(region);
    }
    if at != body.len() {
        return Err("trailing bytes".into());
    }
    Ok(index)
}

impl BulkStore {
    /// Opens the bulk tier in `config.dir`: with the blocks a graceful stop
    /// saved, if it left an intact index for a file of this capacity (the
    /// index is removed as it is read: it describes the tier only until the
    /// node writes again); else afresh: the file is kept as it is (resized to
    /// the capacity), and nothing in it is read until stored again.
    pub fn open(config: &BulkConfig) -> Result<(BulkStore, Option<SavedIndex>), NodeError> {
        let mut saved = read_index(config);
        let file_bytes = std::fs::metadata(config.dir.join(FILE_NAME)).map_or(0, |m| m.len());
        let capacity = config.capacity_bytes / BLOCK_BYTES as u64 * BLOCK_BYTES as u64;
        if saved.is_some() && file_bytes != capacity {
            tracing::warn!(
                dir = %config.dir.display(),
                "the bulk file does not match its index; regions reload from their checkpoints"
            );
            saved = None;
        }
        let store = BulkStore::open_file(config, saved.is_none())?;
        Ok((store, saved))
    }

    fn open_file(config: &BulkConfig, afresh: bool) -> Result<BulkStore, NodeError> {
        let blocks = config.capacity_bytes / BLOCK_BYTES as u64;
        if blocks == 0 {
            return Err(NodeError::Config(format!(
                "--bulk-capacity {} bytes is less than one block of {BLOCK_BYTES} bytes",
                config.capacity_bytes
            )));
        }
        if blocks >= ZERO_BLOCK as u64 {
            return Err(NodeError::Config(format!(
                "--bulk-capacity {} bytes exceeds the limit of {} bytes",
                config.capacity_bytes,
                (ZERO_BLOCK as u64 - 1) * BLOCK_BYTES as u64
            )));
        }
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| NodeError::io(format!("creating bulk dir {}", config.dir.display()), e))?;
        let path = config.dir.join(FILE_NAME);
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                // Started afresh, the old bytes are simply never read (only
                // blocks stored since are): truncating the file would free
                // its extents, then `fallocate` take them again (0.8 s for
                // 6 GiB here, on every start after a crash).
                .truncate(false)
                .custom_flags(flags)
                .open(&path)
        };
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(file) => (file, true),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(
                    path = %path.display(),
                    "the bulk dir's file system does not take direct I/O; using the page cache"
                );
                let file = open(0)
                    .map_err(|e| NodeError::io(format!("creating {}", path.display()), e))?;
                (file, false)
            }
            Err(error) => {
                return Err(NodeError::io(format!("creating {}", path.display()), error));
            }
        };
        // The whole capacity now: a disk without room for it fails the
        // start, saying so, rather than a page-out later.
        let bytes = blocks * BLOCK_BYTES as u64;
        let length = file
            .metadata()
            .map_err(|e| NodeError::io(format!("reading {}", path.display()), e))?
            .len();
        if length > bytes {
            // A smaller capacity than last time (only afresh: an index for
            // another capacity is refused).
            debug_assert!(afresh);
            file.set_len(bytes)
                .map_err(|e| NodeError::io(format!("shrinking {}", path.display()), e))?;
        }
        let refuse = |why: String| {
            NodeError::Config(format!(
                "reserving {bytes} bytes for the bulk tier in {}: {why} (give a smaller \
                 --bulk-capacity, or a --bulk-dir with room)",
                config.dir.display()
            ))
        };
        // Checked first: a file system may allocate what room it has before
        // `fallocate` fails, filling the disk for everyone else meanwhile.
        let held = file
            .metadata()
            .map_or(0, |metadata| metadata.blocks() * 512);
        if let Some(free) = free_bytes(&config.dir)
            && bytes.saturating_sub(held) > free
        {
            return Err(refuse(format!("the file system has {free} bytes free")));
        }
        // SAFETY: a valid descriptor; the result is checked.
        let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
                tracing::info!(path = %path.display(), "the bulk file cannot be preallocated; it grows as pages go out");
            } else {
                // Give back whatever it did allocate.
                let _ = file.set_len(0);
                return Err(refuse(error.to_string()));
            }
        }
        let mut checksums = Vec::new();
        checksums
            .try_reserve_exact(blocks as usize)
            .map_err(|_| NodeError::MetadataAllocation { bytes: blocks * 4 })?;
        checksums.resize_with(blocks as usize, || AtomicU32::new(0));
        Ok(BulkStore {
            file,
            path,
            direct,
            blocks: blocks as u32,
            index: Mutex::new(Index {
                by_digest: HashMap::default(),
                meta: Vec::new(),
                free: Vec::new(),
            }),
            checksums: checksums.into_boxed_slice(),
            failed: Mutex::new(None),
            is_failed: AtomicBool::new(false),
            used_blocks: AtomicU64::new(0),
            referenced_blocks: AtomicU64::new(0),
            zero_blocks: AtomicU64::new(0),
            cache: BlockCache::new(0),
        })
    }

    /// Gives the tier a cache of `blocks` blocks in RAM for reads of single
    /// pages (see [`BulkStore::read_page`]); before the tier is in use.
    pub fn set_cache(&mut self, blocks: usize) {
        self.cache = BlockCache::new(blocks);
    }

    /// The cache of blocks in RAM.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// The bulk file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file is written and read with direct I/O.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Why the tier stopped taking pages, once a write failed.
    pub fn failure(&self) -> Option<String> {
        if !self.is_failed.load(Ordering::Acquire) {
            return None;
        }
        self.failed.lock().clone()
    }

    /// The tier's figures.
    pub fn stat(&self) -> BulkStat {
        let block = BLOCK_BYTES as u64;
        BulkStat {
            capacity_bytes: self.blocks as u64 * block,
            used_bytes: self.used_blocks.load(Ordering::Relaxed) * block,
            referenced_bytes: self.referenced_blocks.load(Ordering::Relaxed) * block,
            zero_bytes: self.zero_blocks.load(Ordering::Relaxed) * block,
        }
    }

    fn fail(&self, what: String) -> NodeError {
        tracing::error!(path = %self.path.display(), "{what}; the bulk tier takes no more pages");
        self.failed.lock().get_or_insert_with(|| what.clone());
        self.is_failed.store(true, Ordering::Release);
        NodeError::BulkFailed(what)
    }

    /// Stores `bytes` (whole blocks, aligned for direct I/O) and returns a
    /// reference per block. All or nothing: on an error no reference is
    /// left taken. `BulkFull` when the tier has no room for the new blocks.
    pub fn store(&self, bytes: &AlignedBuf) -> Result<Box<[BlockRef]>, NodeError> {
        if let Some(reason) = self.failure() {
            return Err(NodeError::BulkFailed(reason));
        }
        let count = bytes.len() / BLOCK_BYTES;
        let mut refs = Vec::new();
        refs.try_reserve_exact(count)
            .map_err(|_| NodeError::MetadataAllocation {
                bytes: count as u64 * 4,
            })?;
        // Digests first, without the lock.
        let digests: Vec<Option<Digest>> = bytes
            .chunks_exact(BLOCK_BYTES)
            .map(|block| (!is_zero(block)).then(|| digest(block)))
            .collect();
        // Blocks to write: (block, index of the source block).
        let mut fresh: Vec<(BlockRef, usize)> = Vec::new();
        {
            let mut index = self.index.lock();
            for (source, digest) in digests.iter().enumerate() {
                let Some(digest) = digest else {
                    refs.push(ZERO_BLOCK);
                    continue;
                };
                if let Some(&block) = index.by_digest.get(digest) {
                    index.meta[block as usize].refs += 1;
                    refs.push(block);
                    continue;
                }
                // The same content twice in this batch: share the first.
                if let Some(&(block, _)) = fresh
                    .iter()
                    .find(|&&(_, other)| digests[other].as_ref() == Some(digest))
                {
                    index.meta[block as usize].refs += 1;
                    refs.push(block);
                    continue;
                }
                let block = match index.free.pop() {
                    Some(block) => block,
                    None if (index.meta.len() as u64) < self.blocks as u64 => {
                        if index.meta.try_reserve(1).is_err() {
                            Self::release_locked(self, &mut index, &refs);
                            return Err(NodeError::MetadataAllocation { bytes: 24 });
                        }
                        index.meta.push(BlockMeta {
                            refs: 0,
                            digest: [0; 16],
                            published: false,
                            adopted: false,
                        });
                        (index.meta.len() - 1) as BlockRef
                    }
                    None => {
                        Self::release_locked(self, &mut index, &refs);
                        return Err(NodeError::BulkFull {
                            capacity_bytes: self.blocks as u64 * BLOCK_BYTES as u64,
                        });
                    }
                };
                let meta = &mut index.meta[block as usize];
                meta.refs = 1;
                meta.digest = *digest;
                meta.published = false;
                self.used_blocks.fetch_add(1, Ordering::Relaxed);
                fresh.push((block, source));
                refs.push(block);
            }
        }
        // The new blocks, in runs that are consecutive in both the file and
        // the source, without the lock.
        let mut at = 0;
        while at < fresh.len() {
            let (first, source) = fresh[at];
            let mut run = 1;
            while at + run < fresh.len()
                && fresh[at + run].0 == first + run as BlockRef
                && fresh[at + run].1 == source + run
            {
                run += 1;
            }
            let bytes = &bytes[source * BLOCK_BYTES..(source + run) * BLOCK_BYTES];
            for (offset, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
                self.checksums[first as usize + offset]
                    .store(crc32c::crc32c(block), Ordering::Relaxed);
            }
            if let Err(error) = self
                .file
                .write_all_at(bytes, first as u64 * BLOCK_BYTES as u64)
            {
                let error = self.fail(format!(
                    "writing {} blocks at block {first} of {}: {error}",
                    run,
                    self.path.display()
                ));
                self.release(&refs);
                return Err(error);
            }
            at += run;
        }
        let mut index = self.index.lock();
        for &(block, _) in &fresh {
            let digest = index.meta[block as usize].digest;
            if let std::collections::hash_map::Entry::Vacant(entry) = index.by_digest.entry(digest)
            {
                entry.insert(block);
                index.meta[block as usize].published = true;
            }
        }
        drop(index);
        let zeros = refs.iter().filter(|&&block| block == ZERO_BLOCK).count() as u64;
        self.zero_blocks.fetch_add(zeros, Ordering::Relaxed);
        self.referenced_blocks
            .fetch_add(refs.len() as u64 - zeros, Ordering::Relaxed);
        Ok(refs.into_boxed_slice())
    }

    fn release_locked(&self, index: &mut Index, refs: &[BlockRef]) {
        for &block in refs {
            if block == ZERO_BLOCK {
                continue;
            }
            let meta = &mut index.meta[block as usize];
            assert!(
                meta.refs > 0,
                "block {block} released more often than taken"
            );
            meta.refs -= 1;
            if meta.refs == 0 {
                meta.adopted = false;
                // Before the block can be handed out again.
                self.cache.forget(block);
                if meta.published {
                    let digest = meta.digest;
                    meta.published = false;
                    index.by_digest.remove(&digest);
                }
                index.free.push(block);
                self.used_blocks.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes one more reference on each block of `refs`, which the caller
    /// holds already (a read that goes on after the segment's lock is given
    /// up keeps its blocks this way); given back with
    /// [`BulkStore::release`]. Not counted as paged out.
    pub fn retain(&self, refs: &[BlockRef]) {
        let mut index = self.index.lock();
        for &block in refs {
            if block == ZERO_BLOCK {
                continue;
            }
            let meta = &mut index.meta[block as usize];
            assert!(meta.refs > 0, "block {block} retained without a reference");
            meta.refs += 1;
        }
    }

    /// Gives back references taken by [`BulkStore::store`] (a segment paged
    /// back in, or a region deleted).
    pub fn release(&self, refs: &[BlockRef]) {
        self.release_locked(&mut self.index.lock(), refs);
    }

    /// Forgets references [`BulkStore::store`] counted as paged out (after
    /// [`BulkStore::release`] of the same references once they leave the
    /// tier).
    pub fn uncount(&self, refs: &[BlockRef]) {
        let zeros = refs.iter().filter(|&&block| block == ZERO_BLOCK).count() as u64;
        self.zero_blocks.fetch_sub(zeros, Ordering::Relaxed);
        self.referenced_blocks
            .fetch_sub(refs.len() as u64 - zeros, Ordering::Relaxed);
    }

    /// Reads the blocks `refs` names into `out` (aligned, one block per
    /// reference), verifying each block's checksum. Runs of consecutive
    /// blocks are read with one call. The caller holds the references.
    pub fn read(&self, refs: &[BlockRef], out: &mut [u8]) -> Result<(), NodeError> {
        assert_eq!(out.len(), refs.len() * BLOCK_BYTES);
        let mut at = 0;
        while at < refs.len() {
            let first = refs[at];
            if first == ZERO_BLOCK {
                out[at * BLOCK_BYTES..(at + 1) * BLOCK_BYTES].fill(0);
                at += 1;
                continue;
            }
            let mut run = 1;
            while at + run < refs.len() && refs[at + run] == first + run as BlockRef {
                run += 1;
            }
            let bytes = &mut out[at * BLOCK_BYTES..(at + run) * BLOCK_BYTES];
            self.file
                .read_exact_at(bytes, first as u64 * BLOCK_BYTES as u64)
                .map_err(|e| {
                    NodeError::io(
                        format!("reading block {first} of {}", self.path.display()),
                        e,
                    )
                })?;
            for (offset, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
                let number = first as usize + offset;
                if crc32c::crc32c(block) != self.checksums[number].load(Ordering::Relaxed) {
                    return Err(NodeError::BulkCorrupt {
                        path: self.path.display().to_string(),
                        block: number as u64,
                    });
                }
            }
            at += run;
        }
        Ok(())
    }

    /// Reads one page's blocks `refs` into `out` like [`BulkStore::read`],
    /// through the cache of blocks in RAM: cached blocks are copied, the
    /// others read and then cached. The caller holds the references for the
    /// whole call (a page-in, which reads without them, uses `read`).
    pub fn read_page(&self, refs: &[BlockRef], out: &mut [u8]) -> Result<(), NodeError> {
        assert_eq!(out.len(), refs.len() * BLOCK_BYTES);
        for (block, out) in refs.iter().zip(out.chunks_exact_mut(BLOCK_BYTES)) {
            if *block == ZERO_BLOCK {
                out.fill(0);
            } else if !self.cache.get(*block, out) {
                self.read(std::slice::from_ref(block), out)?;
                self.cache.insert(*block, out);
            }
        }
        Ok(())
    }

    /// Copies one page's blocks `refs` into `out` if every one is zero or
    /// cached (no I/O); `false`, with `out` unspecified, if not.
    pub fn read_cached(&self, refs: &[BlockRef], out: &mut [u8]) -> bool {
        refs.iter()
            .zip(out.chunks_exact_mut(BLOCK_BYTES))
            .all(|(block, out)| {
                if *block == ZERO_BLOCK {
                    out.fill(0);
                    true
                } else {
                    self.cache.get(*block, out)
                }
            })
    }

    /// Takes over the blocks of a saved index that the regions the node
    /// restored still reference (`kept`: every reference of theirs); the rest
    /// are free.
    pub fn adopt(&self, saved: &SavedIndex, kept: &[&[BlockRef]]) {
        let mut index = self.index.lock();
        assert!(index.meta.is_empty(), "adopted into a fresh tier");
        // Arrays by block number (the parse checked every number against
        // the capacity): a million blocks take a few milliseconds.
        let mut known: Vec<(u32, Digest)> = Vec::new();
        let mut refs: Vec<u32> = Vec::new();
        let (mut referenced, mut zeros, mut highest) = (0u64, 0u64, 0usize);
        for &(block, crc, digest) in &saved.blocks {
            let at = block as usize;
            if known.len() <= at {
                known.resize(at + 1, (0, [0; 16]));
            }
            known[at] = (crc, digest);
        }
        refs.resize(known.len(), 0);
        for &block in kept.iter().flat_map(|refs| refs.iter()) {
            if block == ZERO_BLOCK {
                zeros += 1;
            } else {
                referenced += 1;
                refs[block as usize] += 1;
                highest = highest.max(block as usize + 1);
            }
        }
        let used = refs.iter().filter(|&&count| count > 0).count();
        index.meta.reserve(highest);
        // The digest map (a million random inserts for 4 GiB: most of the
        // time a takeover took) is built later, by `publish_adopted`, while
        // the node serves.
        for block in 0..highest as BlockRef {
            let count = refs[block as usize];
            let (crc, digest) = known[block as usize];
            index.meta.push(BlockMeta {
                refs: count,
                digest,
                published: false,
                adopted: count > 0,
            });
            if count > 0 {
                self.checksums[block as usize].store(crc, Ordering::Relaxed);
            } else {
                index.free.push(block);
            }
        }
        self.used_blocks.store(used as u64, Ordering::Relaxed);
        self.referenced_blocks.store(referenced, Ordering::Relaxed);
        self.zero_blocks.store(zeros, Ordering::Relaxed);
    }

    /// Names the blocks [`BulkStore::adopt`] took over in the digest map,
    /// so that stores share them again; a chunk at a time under the index
    /// lock, so stores meanwhile wait little (and, until it is done, may
    /// store a duplicate of an adopted block rather than share it). Returns
    /// how many blocks it published.
    pub fn publish_adopted(&self) -> u64 {
        const CHUNK: usize = 16 * 1024;
        let mut published = 0;
        let mut start = 0;
        loop {
            let mut index = self.index.lock();
            let index = &mut *index;
            let end = (start + CHUNK).min(index.meta.len());
            if start >= end {
                return published;
            }
            for block in start..end {
                let meta = &mut index.meta[block];
                if !meta.adopted {
                    continue;
                }
                meta.adopted = false;
                if let std::collections::hash_map::Entry::Vacant(entry) =
                    index.by_digest.entry(meta.digest)
                {
                    entry.insert(block as BlockRef);
                    meta.published = true;
                    published += 1;
                }
            }
            start = end;
        }
    }

    /// Writes the index of the tier as it is now, for the next start (a
    /// graceful stop, after every region's pages went out): the bulk file is
    /// flushed first, the index written beside it and renamed into place.
    pub fn save_index(&self, regions: &[SavedRegion]) -> Result<(), NodeError> {
        self.file
            .sync_data()
            .map_err(|e| NodeError::io(format!("flushing {}", self.path.display()), e))?;
        let mut out = Vec::new();
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&(self.blocks as u64).to_le_bytes());
        {
            let index = self.index.lock();
            let used: Vec<(usize, &BlockMeta)> = index
                .meta
                .iter()
                .enumerate()
                .filter(|(_, meta)| meta.refs > 0)
                .collect();
            out.extend_from_slice(&(used.len() as u64).to_le_bytes());
            for (block, meta) in used {
                out.extend_from_slice(&(block as u32).to_le_bytes());
                out.extend_from_slice(&self.checksums[block].load(Ordering::Relaxed).to_le_bytes());
                out.extend_from_slice(&meta.digest);
            }
        }
        out.extend_from_slice(&(regions.len() as u64).to_le_bytes());
        for region in regions {
            for value in [region.uid, region.checkpoint, region.size] {
                out.extend_from_slice(&value.to_le_bytes());
            }
            out.extend_from_slice(&region.page_size.to_le_bytes());
            out.extend_from_slice(&(region.segments.len() as u64).to_le_bytes());
            for (number, refs) in &region.segments {
                out.extend_from_slice(&number.to_le_bytes());
                out.extend_from_slice(&(refs.len() as u32).to_le_bytes());
                for block in refs.iter() {
                    out.extend_from_slice(&block.to_le_bytes());
                }
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let dir = self.path.parent().expect("the bulk file is in a dir");
        let staging = dir.join(format!("{INDEX_FILE_NAME}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&staging)?;
            std::io::Write::write_all(&mut file, &out)?;
            file.sync_all()?;
            std::fs::rename(&staging, dir.join(INDEX_FILE_NAME))?;
            File::open(dir)?.sync_all()
        };
        write()
            .map_err(|e| NodeError::io(format!("writing the bulk index in {}", dir.display()), e))
    }

    /// The reference count of `block` (tests).
    #[cfg(test)]
    fn refs(&self, block: BlockRef) -> u32 {
        self.index.lock().meta[block as usize].refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(blocks: u64) -> (tempfile::TempDir, BulkStore) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BulkStore::open(&BulkConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes: blocks * BLOCK_BYTES as u64,
        })
        .unwrap();
        (dir, store)
    }

    fn buffer(fills: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::new(fills.len() * BLOCK_BYTES).unwrap();
        for (block, &fill) in buf.chunks_exact_mut(BLOCK_BYTES).zip(fills) {
            block.fill(fill);
        }
        buf
    }

    // Guards the block cache's one rule: a cached block is its block's
    // bytes. A block read (and cached) whose last reference goes is
    // forgotten, so when its number is reused for other bytes a read returns
    // those, not the old ones; reads of cached blocks need no disk (the
    // file's bytes are changed behind the tier's back, and the cached copy
    // is what comes back); a full cache evicts, and stays within its size.
    #[test]
    fn the_block_cache_never_serves_a_freed_block() {
        let (_dir, mut store) = store(64);
        store.set_cache(CACHE_SHARDS * 2);
        assert_eq!(store.cache().capacity_blocks(), CACHE_SHARDS * 2);
        let first = store.store(&buffer(&[7])).unwrap();
        let mut out = AlignedBuf::new(BLOCK_BYTES).unwrap();
        assert!(!store.read_cached(&first, &mut out));
        store.read_page(&first, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 7));
        // Cached now: the disk is not read again.
        store
            .file
            .write_all_at(&buffer(&[9]), first[0] as u64 * BLOCK_BYTES as u64)
            .unwrap();
        let mut cached = AlignedBuf::new(BLOCK_BYTES).unwrap();
        assert!(store.read_cached(&first, &mut cached));
        assert!(cached.iter().all(|&b| b == 7));
        assert_eq!(store.cache().counts(), (1, 2), "one hit, two misses");
        // The last reference goes; the number is reused for other bytes.
        store.release(&first);
        store.uncount(&first);
        let second = store.store(&buffer(&[8])).unwrap();
        assert_eq!(second, first, "the freed block is reused");
        assert!(!store.read_cached(&second, &mut cached), "forgotten");
        store.read_page(&second, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 8));
        // Many more blocks than slots: evicted, never beyond the size.
        let many = store
            .store(&buffer(&(10..60).collect::<Vec<u8>>()))
            .unwrap();
        for _ in 0..3 {
            for (at, block) in many.iter().enumerate() {
                store
                    .read_page(std::slice::from_ref(block), &mut out)
                    .unwrap();
                assert!(out.iter().all(|&b| b == 10 + at as u8));
            }
        }
        let held: usize = store
            .cache()
            .shards
            .iter()
            .map(|shard| shard.lock().slot_of.len())
            .sum();
        assert!(held <= CACHE_SHARDS * 2, "{held} blocks cached");
        // A cache of nothing caches nothing.
        store.set_cache(0);
        store.read_page(&second, &mut out).unwrap();
        assert!(!store.read_cached(&second, &mut out));
    }

    // Guards the space rules: zero blocks take nothing, identical blocks
    // (in one batch and across batches) are stored once, and what is read
    // back is what was stored.
    #[test]
    fn zeros_are_free_and_duplicates_stored_once() {
        let (_dir, store) = store(16);
        let first = store.store(&buffer(&[0, 1, 2, 1])).unwrap();
        assert_eq!(first[0], ZERO_BLOCK);
        assert_eq!(first[1], first[3], "identical blocks share");
        assert_ne!(first[1], first[2]);
        let second = store.store(&buffer(&[2, 2, 0, 3])).unwrap();
        assert_eq!(second[0], first[2], "shared across batches");
        assert_eq!(store.refs(first[2]), 3);
        let stat = store.stat();
        assert_eq!(stat.used_bytes, 3 * BLOCK_BYTES as u64);
        assert_eq!(stat.referenced_bytes, 6 * BLOCK_BYTES as u64);
        assert_eq!(stat.zero_bytes, 2 * BLOCK_BYTES as u64);
        assert_eq!(stat.saved_bytes(), 5 * BLOCK_BYTES as u64);
        let mut out = AlignedBuf::new(4 * BLOCK_BYTES).unwrap();
        store.read(&second, &mut out).unwrap();
        assert_eq!(&out[..], &buffer(&[2, 2, 0, 3])[..]);
    }

    // Guards reference counting: a block is freed (and its digest
    // forgotten) exactly when its last reference goes, and then reused.
    #[test]
    fn blocks_are_freed_at_the_last_reference() {
        let (_dir, store) = store(2);
        let a = store.store(&buffer(&[5])).unwrap();
        let b = store.store(&buffer(&[5])).unwrap();
        assert_eq!(a, b);
        store.release(&a);
        store.uncount(&a);
        assert_eq!(store.stat().used_bytes, BLOCK_BYTES as u64);
        store.release(&b);
        store.uncount(&b);
        assert_eq!(
            store.stat(),
            BulkStat {
                capacity_bytes: 2 * BLOCK_BYTES as u64,
                ..BulkStat::default()
            }
        );
        // Freed: two new distinct blocks fit in a tier of two.
        let c = store.store(&buffer(&[6, 7])).unwrap();
        let mut out = AlignedBuf::new(2 * BLOCK_BYTES).unwrap();
        store.read(&c, &mut out).unwrap();
        assert_eq!(&out[..], &buffer(&[6, 7])[..]);
    }

    // Guards the all-or-nothing rule: a batch that does not fit takes no
    // reference and leaves the tier as it was.
    #[test]
    fn a_full_tier_refuses_and_keeps_nothing() {
        let (_dir, store) = store(2);
        let kept = store.store(&buffer(&[1])).unwrap();
        let error = store.store(&buffer(&[1, 2, 3])).unwrap_err();
        assert!(matches!(error, NodeError::BulkFull { .. }), "{error}");
        assert_eq!(
            store.refs(kept[0]),
            1,
            "the shared block's count rolled back"
        );
        assert_eq!(store.stat().used_bytes, BLOCK_BYTES as u64);
        store.store(&buffer(&[2])).unwrap();
    }

    // Guards reference counting against a model: random batches stored and
    // released in random order; after every step the space used is the
    // number of distinct non-zero contents still referenced, and every live
    // batch reads back as stored.
    #[test]
    fn reference_counts_follow_a_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (_dir, store) = store(64);
        let mut live: Vec<(Vec<u8>, Box<[BlockRef]>)> = Vec::new();
        let mut model: HashMap<u8, u64> = HashMap::new();
        for step in 0..2_000 {
            if live.is_empty() || (live.len() < 24 && rng.gen_bool(0.55)) {
                let fills: Vec<u8> = (0..rng.gen_range(1..8))
                    .map(|_| rng.gen_range(0..12u8))
                    .collect();
                match store.store(&buffer(&fills)) {
                    Ok(refs) => {
                        for &fill in &fills {
                            *model.entry(fill).or_default() += 1;
                        }
                        live.push((fills, refs));
                    }
                    Err(NodeError::BulkFull { .. }) => {}
                    Err(error) => panic!("step {step}: {error}"),
                }
            } else {
                let (fills, refs) = live.swap_remove(rng.gen_range(0..live.len()));
                store.release(&refs);
                store.uncount(&refs);
                for fill in fills {
                    *model.get_mut(&fill).unwrap() -= 1;
                }
            }
            let distinct = model
                .iter()
                .filter(|&(&fill, &count)| fill != 0 && count > 0)
                .count();
            let referenced: u64 = model
                .iter()
                .filter(|&(&fill, _)| fill != 0)
                .map(|(_, &c)| c)
                .sum();
            let stat = store.stat();
            assert_eq!(
                stat.used_bytes,
                distinct as u64 * BLOCK_BYTES as u64,
                "step {step}"
            );
            assert_eq!(
                stat.referenced_bytes,
                referenced * BLOCK_BYTES as u64,
                "step {step}"
            );
            assert_eq!(
                stat.zero_bytes,
                model.get(&0).copied().unwrap_or(0) * BLOCK_BYTES as u64,
                "step {step}"
            );
        }
        for (fills, refs) in &live {
            let mut out = AlignedBuf::new(fills.len() * BLOCK_BYTES).unwrap();
            store.read(refs, &mut out).unwrap();
            assert_eq!(&out[..], &buffer(fills)[..]);
        }
    }

    // Guards the room check: a capacity the disk cannot hold fails the open,
    // naming the setting to change, and a capacity it can is reserved.
    #[test]
    fn the_capacity_is_reserved_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = |capacity_bytes| BulkConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes,
        };
        // 4 TiB: within the tier's limit, beyond this disk.
        let error = BulkStore::open(&config(1 << 42)).map(drop).unwrap_err();
        assert!(error.to_string().contains("--bulk-capacity"), "{error}");
        let (store, _) = BulkStore::open(&config(64 * BLOCK_BYTES as u64)).unwrap();
        let metadata = std::fs::metadata(store.path()).unwrap();
        assert_eq!(metadata.len(), 64 * BLOCK_BYTES as u64);
    }

    // Guards the restart index: what a stop saves parses back to the same
    // regions and blocks, and any truncation or changed byte is refused
    // (never a panic, never a partial index).
    #[test]
    fn the_index_round_trips_and_damage_is_refused() {
        let (dir, store) = store(16);
        let refs = store.store(&buffer(&[1, 0, 2, 1])).unwrap();
        let region = SavedRegion {
            uid: 7,
            checkpoint: 3,
            size: 16 << 20,
            page_size: 4096,
            segments: vec![(5, refs.clone())],
        };
        store.save_index(std::slice::from_ref(&region)).unwrap();
        let bytes = std::fs::read(dir.path().join(INDEX_FILE_NAME)).unwrap();
        let parsed = parse_index(&bytes, 16).unwrap();
        assert_eq!(parsed.regions, vec![region]);
        assert_eq!(parsed.blocks.len(), 2);
        assert!(parse_index(&bytes, 32).is_err(), "another capacity");
        for cut in 0..bytes.len() {
            assert!(parse_index(&bytes[..cut], 16).is_err(), "cut at {cut}");
        }
        for at in (0..bytes.len()).step_by(3) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(parse_index(&damaged, 16).is_err(), "byte {at} changed");
        }
        // Adopted by a new tier: the blocks read back as stored.
        drop(store);
        let (again, saved) = BulkStore::open(&BulkConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes: 16 * BLOCK_BYTES as u64,
        })
        .unwrap();
        let saved = saved.expect("the index was read");
        assert!(!dir.path().join(INDEX_FILE_NAME).exists(), "consumed");
        again.adopt(&saved, &[&refs]);
        assert_eq!(again.stat().used_bytes, 2 * BLOCK_BYTES as u64);
        let mut out = AlignedBuf::new(4 * BLOCK_BYTES).unwrap();
        again.read(&refs, &mut out).unwrap();
        assert_eq!(&out[..], &buffer(&[1, 0, 2, 1])[..]);
        // Shared again once published, except a block freed before that.
        again.release(&refs[2..3]);
        again.uncount(&refs[2..3]);
        assert_eq!(again.publish_adopted(), 1, "the block of twos was freed");
        let ones = again.store(&buffer(&[1])).unwrap();
        assert_eq!(ones[0], refs[0], "the adopted block of ones is shared");
        let twos = again.store(&buffer(&[2])).unwrap();
        assert_eq!(again.refs(twos[0]), 1, "a new block of twos");
        assert_eq!(again.stat().used_bytes, 2 * BLOCK_BYTES as u64);
    }

    // Guards the checksum: a block changed on disk behind the tier's back
    // is refused, never served.
    #[test]
    fn a_damaged_block_is_refused() {
        let (dir, store) = store(4);
        let refs = store.store(&buffer(&[9, 8])).unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        file.write_all_at(&[0xff; 512], refs[1] as u64 * BLOCK_BYTES as u64 + 512)
            .unwrap();
        file.sync_all().unwrap();
        drop(file);
        let mut out = AlignedBuf::new(2 * BLOCK_BYTES).unwrap();
        let error = store.read(&refs, &mut out).unwrap_err();
        assert!(
            matches!(error, NodeError::BulkCorrupt { block, .. } if block == refs[1] as u64),
            "{error}"
        );
    }
}

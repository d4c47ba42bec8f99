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
//! **What a restart keeps.** Nothing yet: the index lives in RAM, the file is
//! recreated empty at start, and a region's pages come back from its
//! checkpoints and journal as they did before the bulk tier existed (see
//! `docs/design.md`, "The bulk tier").
//!
//! **Room.** The file is allocated at its full capacity when the node
//! starts (`fallocate`), so a disk without room fails the start, and no
//! page-out can later find the disk full.
//!
//! **Failure.** A failed write latches the tier failed: nothing more is
//! paged out to it (the node then reports out of memory when RAM is full),
//! and the segment whose write failed stays in RAM, so nothing is lost.

use std::alloc::Layout;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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
}

struct Index {
    by_digest: HashMap<Digest, BlockRef>,
    /// Per block handed out so far (blocks beyond its length were never
    /// used).
    meta: Vec<BlockMeta>,
    free: Vec<BlockRef>,
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

impl BulkStore {
    /// Creates the bulk file afresh in `config.dir` (a file left by an
    /// earlier run is replaced: see "What a restart keeps").
    pub fn open(config: &BulkConfig) -> Result<BulkStore, NodeError> {
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
                .truncate(true)
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
        // SAFETY: a valid descriptor; the result is checked.
        let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
                tracing::info!(path = %path.display(), "the bulk file cannot be preallocated; it grows as pages go out");
            } else {
                return Err(NodeError::Config(format!(
                    "reserving {bytes} bytes for the bulk tier in {}: {error} (give a smaller --bulk-capacity, or a --bulk-dir with room)",
                    config.dir.display()
                )));
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
                by_digest: HashMap::new(),
                meta: Vec::new(),
                free: Vec::new(),
            }),
            checksums: checksums.into_boxed_slice(),
            failed: Mutex::new(None),
            is_failed: AtomicBool::new(false),
            used_blocks: AtomicU64::new(0),
            referenced_blocks: AtomicU64::new(0),
            zero_blocks: AtomicU64::new(0),
        })
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
        let store = BulkStore::open(&BulkConfig {
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
        let store = BulkStore::open(&config(64 * BLOCK_BYTES as u64)).unwrap();
        let metadata = std::fs::metadata(store.path()).unwrap();
        assert_eq!(metadata.len(), 64 * BLOCK_BYTES as u64);
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

//! A region on the node: its pages (a segment table over the arena), the
//! write tracking that checkpoints and recovery rely on, and everything else
//! the node keeps per region (its state, checkpoint marks and baseline, its
//! journal). The region is the one owner of that state: deleting it from the
//! catalog drops all of it, with no side map to clean.
//!
//! Each table entry is a lock guarding the segment it holds (or none).
//! Holding an entry's lock is what gives the right to touch that segment's
//! bytes: readers share it, writers hold it exclusively. A request never holds
//! two entries' locks at once, so there is no lock order to get wrong.
//!
//! **Write sequence numbers.** Every write batch takes the next number of the
//! region's sequence, and each page remembers the number of its last write
//! (0: not written since the region was created or loaded). "Pages dirty since
//! checkpoint E" are the pages whose number is above the sequence value at
//! E's start; "dirty since mark M" likewise. A writer holds the region's
//! *gate* shared for its whole batch; taking a mark or starting a snapshot
//! holds it exclusively for a moment, so no batch straddles a mark.
//!
//! **Copy-on-write snapshots.** A checkpoint covers the pages whose numbers
//! lie in `(from, to]`, `to` being the sequence value at its start. It visits
//! the segments one by one and copies those pages out under the segment's
//! lock. A writer about to overwrite such a page in a segment the checkpoint
//! has not visited yet first saves the old bytes beside the segment; the
//! checkpoint takes the saved copy instead. Either way it sees every page as
//! it was at its start, while writers go on.
//!
//! **Tiers.** A segment is *unwritten* (no memory; reads as zeros),
//! *resident* (its pages in the region's memory file), or *paged out* (its
//! pages in the node's bulk tier, one block reference each per 4 KiB, see
//! `bulk`): the entry is the one indirection that says where the segment's
//! pages are, and moving them between tiers rewrites only it. Write numbers
//! stay in the entry whatever the tier, so checkpoints, replication and
//! recovery see the same dirty pages. Reads of a paged-out segment are
//! served from the bulk tier under the entry's shared lock (which blocks no
//! other segment, and no reader of this one). Whole pages written to a
//! paged-out segment go to the bulk tier in place: stored as new blocks
//! first (the one step that can fail), then swapped in under the entry's
//! exclusive lock. Byte-range writes page the segment back in
//! ([`Region::allocate`]). A write into a resident segment holds a *pin* on
//! it for the rest of its batch, so the pager cannot page it out between the
//! check and the write; a segment paged back in keeps its blocks as a clean
//! copy until its first change. The pager (`tiering`) pages out only
//! segments without pins, copying the bytes under the shared lock and
//! writing them to the bulk tier under no lock at all; it commits the move
//! only if the segment did not change meanwhile (`changes`).
//!
//! **Lazy load.** After a restart a segment may not be loaded from the
//! region's baseline yet (see `lazy_load`): its entry is empty until the
//! loader publishes it whole (`Region::load_segment`). Every request path
//! calls `Region::ensure_loaded` before it resolves a segment, holding no
//! lock of the region, so no request ever sees such a segment as unwritten.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use pagoda_wire::limits::{BATCH_BYTES_MAX, PAGE_BYTES_MAX, PAGE_BYTES_MIN, REGION_BYTES_MAX};
use pagoda_wire::message::PageList;
use pagoda_wire::{PageRange, RegionInfo, RegionState};
use parking_lot::{Mutex, RwLock};

use pagoda_journal::Journal;

use crate::arena::Arena;
use crate::bulk::{AlignedBuf, BLOCK_BYTES, BlockRef, ZERO_BLOCK};
use crate::checkpoint::Manifest;
use crate::error::NodeError;
use crate::region_memory::RegionMemory;
use crate::replication::Role;
use crate::write_log::WriteLog;

/// A segment's number in its region, in its table entry while the segment
/// holds memory.
type SegmentSlot = u32;

const NO_SEGMENT: SegmentSlot = SegmentSlot::MAX;

/// Checks a region's shape: a power-of-two page size within limits and a
/// non-zero size that is a multiple of it, within the region limit.
pub fn validate_shape(size: u64, page_size: u32) -> Result<(), NodeError> {
    if !page_size.is_power_of_two() || !(PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&page_size) {
        return Err(NodeError::InvalidArgument(format!(
            "page size {page_size} must be a power of two from {PAGE_BYTES_MIN} to {PAGE_BYTES_MAX}"
        )));
    }
    if size == 0 || !size.is_multiple_of(page_size as u64) {
        return Err(NodeError::InvalidArgument(format!(
            "region size {size} must be a non-zero multiple of the page size {page_size}"
        )));
    }
    if size > REGION_BYTES_MAX {
        return Err(NodeError::InvalidArgument(format!(
            "region size {size} exceeds the limit of {REGION_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Pages of a read left to fetch from the bulk tier (see
/// [`Region::read_pages_deferred`]): where each goes in the reply, and its
/// blocks, referenced until the fetch is dropped.
#[must_use = "the pages are zeros in the reply until fetched"]
pub struct BulkFetch {
    arena: Arc<Arena>,
    page_size: usize,
    /// Per page: its offset in the reply's payload, and its blocks.
    pages: Vec<(usize, Box<[BlockRef]>)>,
}

impl BulkFetch {
    /// Pages to fetch.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether there is nothing to fetch.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Reads every page into its place in `payload` (the reply's payload as
    /// [`Region::read_pages_deferred`] left it), checking each block's
    /// checksum; the references go back when `self` is dropped.
    pub fn run(&self, payload: &mut [u8]) -> Result<(), NodeError> {
        let bulk = self
            .arena
            .bulk()
            .expect("a fetch is made only of pages in the bulk tier");
        let mut buffer = AlignedBuf::new(self.page_size)?;
        for (offset, blocks) in &self.pages {
            bulk.read_page(blocks, &mut buffer)?;
            payload[*offset..*offset + self.page_size].copy_from_slice(&buffer);
        }
        Ok(())
    }
}

impl Drop for BulkFetch {
    fn drop(&mut self) {
        if let Some(bulk) = self.arena.bulk() {
            for (_, blocks) in &self.pages {
                bulk.release(blocks);
            }
        }
    }
}

/// A segment table entry.
struct Segment {
    /// The segment's number while it holds memory (resident); `NO_SEGMENT`
    /// while unwritten or paged out.
    slot: SegmentSlot,
    /// While paged out: a bulk-tier block per [`BLOCK_BYTES`] of the
    /// segment.
    paged_out: Option<Box<[BlockRef]>>,
    /// While resident after a page-in, until its first change: the blocks it
    /// was paged in from, still the segment's bytes, and the value of
    /// `changes` they match. Paging the segment out again then writes
    /// nothing.
    clean_copy: Option<(Box<[BlockRef]>, u64)>,
    /// The memory file's version of the segment when it was paged out (a
    /// page-in resumes above it).
    last_version: u64,
    /// Bumped by every change to the segment's bytes or tier: a page-out
    /// commits only if it did not move while the bytes were written out.
    changes: u64,
    /// Accesses lately (decayed by the pager): how warm the segment is.
    usage: AtomicU32,
    /// Batches about to write into the segment: while non-zero it is not
    /// paged out.
    pins: AtomicU32,
    /// Per page, the sequence number of its last write; empty while the
    /// segment is unwritten.
    seqs: Box<[u64]>,
    /// The highest number in `seqs`.
    max_seq: u64,
    /// Pages (index in the segment, old contents) saved for the running
    /// snapshot before they were overwritten.
    saved: Vec<(u32, Saved)>,
    /// The id of the last snapshot that visited this segment.
    visited: u64,
}

impl Segment {
    fn empty() -> Segment {
        Segment {
            slot: NO_SEGMENT,
            paged_out: None,
            clean_copy: None,
            last_version: 0,
            changes: 0,
            usage: AtomicU32::new(0),
            pins: AtomicU32::new(0),
            seqs: Box::new([]),
            max_seq: 0,
            saved: Vec::new(),
            visited: 0,
        }
    }

    fn is_resident(&self) -> bool {
        self.slot != NO_SEGMENT
    }

    /// Holds pages in either tier (written at least once).
    fn is_stored(&self) -> bool {
        self.slot != NO_SEGMENT || self.paged_out.is_some()
    }

    /// Counts an access for the pager's measure of warmth (only on a node
    /// with a bulk tier: elsewhere nothing reads it, and the count would only
    /// bounce the entry's cache line between connection threads).
    fn touch(&self, tiered: bool) {
        if tiered && self.usage.load(Ordering::Relaxed) < USAGE_MAX {
            self.usage.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A page's old contents kept for the running snapshot.
enum Saved {
    /// Copied out of RAM.
    Bytes(Box<[u8]>),
    /// The bulk-tier blocks it had while paged out: their references are
    /// held until the snapshot reads them, then given back.
    Blocks(Box<[BlockRef]>),
}

/// Where [`Segment::usage`] stops counting.
const USAGE_MAX: u32 = 1 << 20;

/// Times a batch tries to make a segment resident before it gives up (each
/// try loses only to a concurrent page-out of the same segment).
const RESIDENT_TRIES: usize = 64;

/// A segment's tier and warmth, as [`Region::segment_usage`] reports them.
#[derive(Clone, Copy, Debug)]
pub struct SegmentUsage {
    /// The segment's number.
    pub number: usize,
    /// Accesses lately.
    pub usage: u32,
    /// In RAM (else paged out).
    pub resident: bool,
    /// Pinned by a batch in progress (not to be paged out now).
    pub pinned: bool,
}

/// Pins on the segments a batch writes into, taken by [`Region::allocate`]
/// once each is resident, and given back when dropped.
#[must_use = "the pins keep the batch's segments resident until it is written"]
pub struct Pinned<'a> {
    region: &'a Region,
    segments: Vec<usize>,
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        for &number in &self.segments {
            if let Some(entry) = self.region.segments.get(number) {
                entry.read().pins.fetch_sub(1, Ordering::Release);
            }
        }
    }
}

/// Segments per chunk of the segment table (256 MiB of region with 2 MiB
/// segments). The table's entries are allocated a chunk at a time, on the
/// first write into the chunk, so a region's metadata grows with the
/// segments written, not with its size.
const CHUNK_SEGMENTS: usize = 128;

/// The segment table: a fixed top level of chunk pointers (16 bytes per
/// 256 MiB of region: 64 KiB for the largest region) and chunks of
/// [`CHUNK_SEGMENTS`] entries allocated on first write. An entry of a chunk
/// never allocated is an unwritten segment: its pages read as zeros.
struct SegmentTable {
    chunks: Box<[OnceLock<Box<Chunk>>]>,
    count: usize,
}

impl SegmentTable {
    fn new(count: usize) -> Result<SegmentTable, NodeError> {
        let chunk_count = count.div_ceil(CHUNK_SEGMENTS);
        let mut chunks = Vec::new();
        chunks
            .try_reserve_exact(chunk_count)
            .map_err(|_| metadata_allocation_failed(chunk_count * 16))?;
        chunks.resize_with(chunk_count, OnceLock::new);
        Ok(SegmentTable {
            chunks: chunks.into_boxed_slice(),
            count,
        })
    }

    /// Segment `number`'s entry, if its chunk was ever allocated.
    fn get(&self, number: usize) -> Option<&RwLock<Segment>> {
        debug_assert!(number < self.count);
        self.chunks[number / CHUNK_SEGMENTS]
            .get()
            .map(|chunk| &chunk[number % CHUNK_SEGMENTS])
    }

    /// Segment `number`'s entry, allocating its chunk if needed. An
    /// allocation failure is an error, not an abort.
    fn get_or_allocate(&self, number: usize) -> Result<&RwLock<Segment>, NodeError> {
        let cell = &self.chunks[number / CHUNK_SEGMENTS];
        if cell.get().is_none() {
            let mut entries = Vec::new();
            entries
                .try_reserve_exact(CHUNK_SEGMENTS)
                .map_err(|_| metadata_allocation_failed(CHUNK_BYTES))?;
            entries.resize_with(CHUNK_SEGMENTS, || RwLock::new(Segment::empty()));
            let chunk: Box<Chunk> = entries
                .into_boxed_slice()
                .try_into()
                .unwrap_or_else(|_| unreachable!("the chunk has CHUNK_SEGMENTS entries"));
            // Another writer may have set it first; then ours is dropped.
            let _ = cell.set(chunk);
        }
        Ok(&cell.get().expect("set above")[number % CHUNK_SEGMENTS])
    }

    /// The entries of allocated chunks, with their segment numbers, from
    /// segment `first` on.
    fn allocated_from(&self, first: usize) -> impl Iterator<Item = (usize, &RwLock<Segment>)> {
        self.chunks
            .iter()
            .enumerate()
            .skip(first / CHUNK_SEGMENTS)
            .filter_map(|(chunk_number, cell)| cell.get().map(|chunk| (chunk_number, chunk)))
            .flat_map(move |(chunk_number, chunk)| {
                chunk
                    .iter()
                    .enumerate()
                    .map(move |(index, entry)| (chunk_number * CHUNK_SEGMENTS + index, entry))
            })
            .filter(move |&(number, _)| number >= first && number < self.count)
    }

    /// Bytes of metadata the table holds now.
    fn bytes(&self) -> u64 {
        let chunks = self
            .chunks
            .iter()
            .filter(|cell| cell.get().is_some())
            .count();
        (self.chunks.len() * std::mem::size_of::<OnceLock<Box<Chunk>>>() + chunks * CHUNK_BYTES)
            as u64
    }
}

/// The entries of one chunk of the segment table.
type Chunk = [RwLock<Segment>; CHUNK_SEGMENTS];

/// Bytes of one chunk of the segment table.
const CHUNK_BYTES: usize = CHUNK_SEGMENTS * std::mem::size_of::<RwLock<Segment>>();

fn metadata_allocation_failed(bytes: usize) -> NodeError {
    NodeError::MetadataAllocation {
        bytes: bytes as u64,
    }
}

/// A completed checkpoint, as the region remembers it.
#[derive(Clone, Debug)]
pub struct CheckpointMark {
    /// Its number (ascending per region).
    pub number: u64,
    /// The sequence value at its start: pages above it are dirty since.
    pub start_seq: u64,
    /// When it started.
    pub started: std::time::SystemTime,
    /// The highest node-journal id the checkpoint covers.
    pub journal_through: u64,
}

/// The number pages loaded from a baseline carry: above "never written"
/// (0), so a full checkpoint includes them, and at or below the start mark of
/// the baseline they came from, so they are not dirty since it. Writes are
/// numbered from `BASELINE_SEQ + 1`.
pub const BASELINE_SEQ: u64 = 1;

/// How many completed checkpoints a region remembers for `DirtyPages`.
const CHECKPOINT_HISTORY: usize = 16;

/// A region held by the node.
pub struct Region {
    info: RegionInfo,
    uid: u64,
    arena: Arc<Arena>,
    /// The region's pages and the metadata co-located clients read.
    memory: RegionMemory,
    segments: SegmentTable,
    pages_per_segment: u64,
    segments_allocated: AtomicU64,
    segments_paged_out: AtomicU64,
    /// Whether the node has a bulk tier (and so counts accesses).
    tiered: bool,
    /// The checkpoint its pages were restored from the bulk tier at, by a
    /// restart after a graceful stop (0: not).
    restored_checkpoint: AtomicU64,
    /// Block references of the paged-out segments: all, and all-zero ones.
    bulk_blocks: AtomicU64,
    bulk_zero_blocks: AtomicU64,
    pages_read: AtomicU64,
    pages_written: AtomicU64,
    /// The last sequence number handed out.
    seq: AtomicU64,
    /// Writers hold it shared for a batch; marks and snapshots exclusively.
    gate: RwLock<()>,
    /// The running snapshot: its id (0: none; unique per attempt, so a
    /// retried checkpoint never mistakes a segment visited by a failed one
    /// for visited), and its `(from, to]` range. Changed only under the gate
    /// held exclusively.
    snapshot: RwLock<(u64, u64, u64)>,
    snapshots_begun: AtomicU64,
    state: AtomicU8,
    state_reason: Mutex<String>,
    checkpoints: Mutex<Vec<CheckpointMark>>,
    /// Held for the whole of a checkpoint: one at a time per region.
    pub(crate) checkpoint_lock: Mutex<()>,
    /// Held while a journal record is persisted and applied, so records are
    /// applied in the order the node's journal holds them.
    pub(crate) journal_lock: Mutex<()>,
    journal_applied: AtomicU64,
    /// The newest checkpoint known to be complete in storage, as the catalog
    /// records it.
    durable_checkpoint: AtomicU64,
    /// The latest baseline in storage (the manifest of the last checkpoint
    /// completed or loaded), which the next incremental checkpoint extends.
    baseline: Mutex<Option<Arc<Manifest>>>,
    /// The node's journal of records shipped to this region, once opened.
    journal: Mutex<Option<Arc<Journal>>>,
    /// The order of mutating requests and the writer fencing epoch.
    log: WriteLog,
    /// Its role in replication (solo, primary, replica, fenced).
    role: Mutex<Role>,
    /// The lazy load of its baseline after a restart, while it runs.
    loading: crate::lazy_load::Loading,
}

impl Region {
    /// A region with no segments allocated: every page reads as zeros.
    pub fn new(info: RegionInfo, uid: u64, arena: Arc<Arena>) -> Result<Region, NodeError> {
        let tiered = arena.bulk().is_some();
        validate_shape(info.size, info.page_size)?;
        let segment_bytes = arena.segment_bytes() as u64;
        assert!(segment_bytes >= info.page_size as u64);
        let segment_count = info.size.div_ceil(segment_bytes);
        Ok(Region {
            pages_per_segment: segment_bytes / info.page_size as u64,
            segments: SegmentTable::new(segment_count as usize)?,
            memory: RegionMemory::new(info.size, info.page_size, segment_bytes as usize)?,
            info,
            uid,
            arena,
            segments_allocated: AtomicU64::new(0),
            segments_paged_out: AtomicU64::new(0),
            tiered,
            restored_checkpoint: AtomicU64::new(0),
            bulk_blocks: AtomicU64::new(0),
            bulk_zero_blocks: AtomicU64::new(0),
            pages_read: AtomicU64::new(0),
            pages_written: AtomicU64::new(0),
            seq: AtomicU64::new(BASELINE_SEQ),
            gate: RwLock::new(()),
            snapshot: RwLock::new((0, 0, 0)),
            snapshots_begun: AtomicU64::new(0),
            state: AtomicU8::new(RegionState::Active as u8),
            state_reason: Mutex::new(String::new()),
            checkpoints: Mutex::new(Vec::new()),
            checkpoint_lock: Mutex::new(()),
            journal_lock: Mutex::new(()),
            journal_applied: AtomicU64::new(0),
            durable_checkpoint: AtomicU64::new(0),
            baseline: Mutex::new(None),
            journal: Mutex::new(None),
            log: WriteLog::default(),
            role: Mutex::new(Role::Solo),
            loading: crate::lazy_load::Loading::new(),
        })
    }

    /// The newest checkpoint known to be complete in storage (0: none).
    pub fn durable_checkpoint(&self) -> u64 {
        self.durable_checkpoint.load(Ordering::Relaxed)
    }

    /// Records the newest checkpoint complete in storage; the catalog
    /// persists it at its next save.
    pub fn set_durable_checkpoint(&self, number: u64) {
        self.durable_checkpoint.store(number, Ordering::Relaxed);
    }

    /// The latest baseline in storage, if any.
    pub fn baseline(&self) -> Option<Arc<Manifest>> {
        self.baseline.lock().clone()
    }

    /// Records a newer baseline (a checkpoint completed or loaded).
    pub fn set_baseline(&self, manifest: Arc<Manifest>) {
        *self.baseline.lock() = Some(manifest);
    }

    /// The node's journal of this region, once opened.
    pub fn journal(&self) -> Option<Arc<Journal>> {
        self.journal.lock().clone()
    }

    /// Records the region's opened journal.
    pub fn set_journal(&self, journal: Arc<Journal>) {
        *self.journal.lock() = Some(journal);
    }

    /// The region's write log: the order of mutating requests and the
    /// writer epoch.
    pub fn log(&self) -> &WriteLog {
        &self.log
    }

    /// The region's role in replication.
    pub fn role(&self) -> &Mutex<Role> {
        &self.role
    }

    /// The region's memory files (for co-located clients).
    pub fn memory(&self) -> &RegionMemory {
        &self.memory
    }

    /// The region's description.
    pub fn info(&self) -> &RegionInfo {
        &self.info
    }

    /// The region's unique id, kept in its checkpoints (names are reused;
    /// uids are not).
    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// Number of pages.
    pub fn page_count(&self) -> u64 {
        self.info.size / self.info.page_size as u64
    }

    /// Number of segments in the table.
    pub fn segment_count(&self) -> usize {
        self.segments.count
    }

    /// Bytes of the node's RAM (besides page segments) this region's
    /// metadata takes: the segment table and each written segment's write
    /// numbers. It grows with the segments written, not with the region's
    /// size.
    pub fn metadata_bytes(&self) -> u64 {
        let blocks = self.arena.segment_bytes() / BLOCK_BYTES;
        self.segments.bytes()
            + (self.segments_allocated() + self.segments_paged_out())
                * self.pages_per_segment
                * std::mem::size_of::<u64>() as u64
            + self.segments_paged_out() * (blocks * std::mem::size_of::<BlockRef>()) as u64
    }

    /// Pages per segment.
    pub fn pages_per_segment(&self) -> u64 {
        self.pages_per_segment
    }

    /// One bit per segment from `start` on (at most `max` segments; least
    /// significant bit first), set where the region holds the segment's
    /// pages; the number of segments described, and where to continue
    /// (`u64::MAX`: the last segment is described).
    pub fn stored_segments(&self, start: u64, max: u32) -> (Vec<u8>, u32, u64) {
        // A segment not yet loaded from the baseline holds pages all the
        // same. A load that fails damages the region, which then serves no
        // one: its map is never used.
        let _ = self.ensure_all_loaded();
        let total = self.segments.count as u64;
        let first = start.min(total);
        let count = (total - first).min(max as u64);
        let mut bits = vec![0u8; count.div_ceil(8) as usize];
        for (number, entry) in self.segments.allocated_from(first as usize) {
            let index = number as u64 - first;
            if index >= count {
                break;
            }
            if entry.read().is_stored() {
                bits[(index / 8) as usize] |= 1 << (index % 8);
            }
        }
        let next = if first + count >= total {
            u64::MAX
        } else {
            first + count
        };
        (bits, count as u32, next)
    }

    /// Segments currently holding RAM.
    pub fn segments_allocated(&self) -> u64 {
        self.segments_allocated.load(Ordering::Relaxed)
    }

    /// Segments whose pages are in the bulk tier.
    pub fn segments_paged_out(&self) -> u64 {
        self.segments_paged_out.load(Ordering::Relaxed)
    }

    /// Bytes of the region's pages in the bulk tier, and of those the bytes
    /// of all-zero blocks (which take no space there).
    pub fn bulk_bytes(&self) -> (u64, u64) {
        let block = BLOCK_BYTES as u64;
        (
            self.bulk_blocks.load(Ordering::Relaxed) * block,
            self.bulk_zero_blocks.load(Ordering::Relaxed) * block,
        )
    }

    /// Pages read since the node started.
    pub fn pages_read(&self) -> u64 {
        self.pages_read.load(Ordering::Relaxed)
    }

    /// Pages written since the node started.
    pub fn pages_written(&self) -> u64 {
        self.pages_written.load(Ordering::Relaxed)
    }

    /// The region's state.
    pub fn state(&self) -> RegionState {
        RegionState::from_u8(self.state.load(Ordering::Acquire)).expect("valid state")
    }

    /// Why the region is in its state (empty when active).
    pub fn state_reason(&self) -> String {
        self.state_reason.lock().clone()
    }

    /// Changes the region's state. Taking the gate makes the change wait for
    /// writes in progress, so none completes after it.
    pub fn set_state(&self, state: RegionState, reason: impl Into<String>) {
        let _gate = self.gate.write();
        *self.state_reason.lock() = reason.into();
        self.state.store(state as u8, Ordering::Release);
        // Co-located clients read only what the node would serve.
        self.memory
            .set_open(matches!(state, RegionState::Active | RegionState::ReadOnly));
    }

    fn unavailable(&self) -> NodeError {
        NodeError::RegionUnavailable {
            name: self.info.name.clone(),
            reason: self.state_reason(),
        }
    }

    /// Refuses service unless the region is active or read-only.
    pub fn check_readable(&self) -> Result<(), NodeError> {
        match self.state() {
            RegionState::Active | RegionState::ReadOnly => Ok(()),
            RegionState::Recovering | RegionState::Damaged => Err(self.unavailable()),
        }
    }

    fn check_in_range(&self, mut pages: impl Iterator<Item = u64>) -> Result<(), NodeError> {
        let page_count = self.page_count();
        match pages.find(|&page| page >= page_count) {
            Some(page) => Err(NodeError::OutOfRange {
                page,
                pages: page_count,
            }),
            None => Ok(()),
        }
    }

    fn locate(&self, page: u64) -> (usize, usize) {
        let segment = (page / self.pages_per_segment) as usize;
        let index = (page % self.pages_per_segment) as usize;
        (segment, index)
    }

    /// Appends the named pages to `out`, in order. Checks every page first, so
    /// a request with a bad page appends nothing. Pages in the bulk tier are
    /// read here, in the caller's thread.
    pub fn read_pages(&self, pages: PageList<'_>, out: &mut Vec<u8>) -> Result<(), NodeError> {
        self.read_pages_with(pages, out, None)
    }

    /// Like [`Region::read_pages`], but pages in the bulk tier are left as
    /// zeros in `out` and returned as a [`BulkFetch`] (`None` when there are
    /// none) that reads them later, elsewhere: the caller goes on meanwhile.
    /// The read still sees every page as it is now, since the fetch holds
    /// references on the blocks (a later write to such a page stores new
    /// blocks; these stay as they are until the fetch is done).
    pub fn read_pages_deferred(
        &self,
        pages: PageList<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Option<BulkFetch>, NodeError> {
        // Made at the first paged-out page: the hit path pays nothing.
        let mut fetch = None;
        self.read_pages_with(pages, out, Some(&mut fetch))?;
        Ok(fetch)
    }

    fn read_pages_with(
        &self,
        pages: PageList<'_>,
        out: &mut Vec<u8>,
        mut defer: Option<&mut Option<BulkFetch>>,
    ) -> Result<(), NodeError> {
        self.check_readable()?;
        self.check_in_range(pages.iter())?;
        let count = pages.len();
        let page_size = self.info.page_size as usize;
        // The page count is bounded by the wire format, but not the bytes it
        // asks for: refuse before reserving anything.
        let reply_bytes = count * page_size;
        if reply_bytes > BATCH_BYTES_MAX {
            return Err(NodeError::InvalidArgument(format!(
                "read of {count} pages of {page_size} bytes exceeds the batch limit of {BATCH_BYTES_MAX} bytes"
            )));
        }
        out.reserve(reply_bytes);
        let base = out.len();
        let mut scratch = None;
        for page in pages.iter() {
            let (segment, index) = self.locate(page);
            self.ensure_loaded(segment)?;
            match self.segments.get(segment).map(|entry| entry.read()) {
                Some(segment) if segment.is_resident() => {
                    segment.touch(self.tiered);
                    out.extend_from_slice(self.page_bytes(&segment, index))
                }
                Some(segment) if segment.paged_out.is_some() => {
                    segment.touch(self.tiered);
                    let at = out.len();
                    out.resize(at + page_size, 0);
                    let blocks = self.page_blocks(&segment, index);
                    if self.bulk()?.read_cached(blocks, &mut out[at..]) {
                        // A hot page: no I/O.
                        continue;
                    }
                    if let Some(fetch) = defer.as_deref_mut() {
                        // Under the entry's shared lock: the blocks are the
                        // page's now, and stay readable once retained.
                        self.bulk()?.retain(blocks);
                        fetch
                            .get_or_insert_with(|| BulkFetch {
                                arena: self.arena.clone(),
                                page_size,
                                pages: Vec::new(),
                            })
                            .pages
                            .push((at - base, blocks.into()));
                        continue;
                    }
                    let buffer = match &mut scratch {
                        Some(buffer) => buffer,
                        None => scratch.insert(AlignedBuf::new(page_size)?),
                    };
                    // Under the entry's shared lock: it holds the blocks'
                    // references; other segments and readers go on.
                    self.read_paged_out(&segment, index, buffer)?;
                    out[at..].copy_from_slice(buffer);
                }
                _ => out.resize(out.len() + page_size, 0),
            }
        }
        self.pages_read.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The bytes of page `index` of an allocated segment, borrowed for as
    /// long as the caller holds the segment's lock.
    fn page_bytes<'a>(&self, segment: &'a Segment, index: usize) -> &'a [u8] {
        debug_assert_ne!(segment.slot, NO_SEGMENT);
        let page_size = self.info.page_size as usize;
        // SAFETY: the slot is allocated to this region, the caller holds the
        // entry's lock (excluding writers), and the page lies inside the
        // segment because pages never straddle segments.
        unsafe {
            std::slice::from_raw_parts(
                self.memory
                    .segment_pointer(segment.slot as usize)
                    .add(index * page_size),
                page_size,
            )
        }
    }

    /// Reads page `index` of a paged-out segment from the bulk tier into
    /// `out` (one page, aligned). The caller holds the entry's lock.
    fn read_paged_out(
        &self,
        segment: &Segment,
        index: usize,
        out: &mut [u8],
    ) -> Result<(), NodeError> {
        self.bulk()?
            .read_page(self.page_blocks(segment, index), out)
    }

    /// The bulk-tier blocks of page `index` of a paged-out segment.
    fn page_blocks<'a>(&self, segment: &'a Segment, index: usize) -> &'a [BlockRef] {
        let refs = segment.paged_out.as_ref().expect("a paged-out segment");
        let per_page = self.info.page_size as usize / BLOCK_BYTES;
        &refs[index * per_page..(index + 1) * per_page]
    }

    fn bulk(&self) -> Result<&crate::bulk::BulkStore, NodeError> {
        self.arena.bulk().ok_or_else(|| {
            NodeError::Config("a paged-out segment on a node without a bulk tier".into())
        })
    }

    /// Writes the named pages from `data`. Checks every page and allocates
    /// every segment the batch needs before copying anything, so a batch that
    /// fails (out of range, out of memory) changes no page's contents.
    pub fn write_pages(&self, pages: PageList<'_>, data: &[u8]) -> Result<(), NodeError> {
        self.write(pages.iter(), pages.len(), data, Track::Write)
    }

    /// Writes pages while the region is being recovered: `track` says whether
    /// they count as written since the baseline (copied from a source) or
    /// not (loaded from the baseline itself).
    pub fn restore_pages(
        &self,
        pages: &[u64],
        data: &[u8],
        from_baseline: bool,
    ) -> Result<(), NodeError> {
        let track = if from_baseline {
            Track::Baseline
        } else {
            Track::Restore
        };
        self.write(pages.iter().copied(), pages.len(), data, track)
    }

    fn write(
        &self,
        pages: impl Iterator<Item = u64> + Clone,
        count: usize,
        data: &[u8],
        track: Track,
    ) -> Result<(), NodeError> {
        self.check_in_range(pages.clone())?;
        let page_size = self.info.page_size as usize;
        if data.len() != count * page_size {
            return Err(NodeError::InvalidArgument(format!(
                "write of {count} pages carries {} bytes, expected {}",
                data.len(),
                count * page_size
            )));
        }
        // Before the gate: a load may wait, and must not hold up marks.
        for page in pages.clone() {
            self.ensure_loaded(self.locate(page).0)?;
        }
        let _gate = self.gate.read();
        self.check_writable(track)?;
        let (_pinned, paged_out) = self.prepare_whole_pages(pages.clone())?;
        // Pages of paged-out segments are stored in the bulk tier first, as
        // new blocks: the only step that can fail, and it changes no page.
        let mut stored = self.store_in_bulk(pages.clone(), data, &paged_out)?;
        let seq = match track {
            Track::Baseline => BASELINE_SEQ,
            Track::Write | Track::Restore => self.seq.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let snapshot = *self.snapshot.read();
        for (at, (page, bytes)) in pages.zip(data.chunks_exact(page_size)).enumerate() {
            let blocks = stored.as_mut().and_then(|stored| stored[at].take());
            self.write_piece(page, 0, bytes, seq, snapshot, blocks);
        }
        self.pages_written
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    fn check_writable(&self, track: Track) -> Result<(), NodeError> {
        match (self.state(), track) {
            (RegionState::Active, _) => Ok(()),
            (RegionState::ReadOnly, _) => Err(NodeError::ReadOnly(self.info.name.clone())),
            (RegionState::Recovering, Track::Baseline | Track::Restore) => Ok(()),
            (RegionState::Recovering | RegionState::Damaged, _) => Err(self.unavailable()),
        }
    }

    /// For a batch of whole pages: pins every segment the pages lie in that
    /// is resident or unwritten (allocating the latter), and returns those
    /// that are paged out, whose pages go to the bulk tier in place.
    fn prepare_whole_pages(
        &self,
        pages: impl Iterator<Item = u64>,
    ) -> Result<(Pinned<'_>, Vec<usize>), NodeError> {
        let mut pinned = Pinned {
            region: self,
            segments: Vec::new(),
        };
        let mut paged_out = Vec::new();
        for page in pages {
            let (number, _) = self.locate(page);
            if pinned.segments.contains(&number) || paged_out.contains(&number) {
                continue;
            }
            let is_paged_out = self
                .segments
                .get(number)
                .is_some_and(|entry| entry.read().paged_out.is_some());
            if is_paged_out {
                paged_out.push(number);
            } else {
                self.make_resident(number)?;
                pinned.segments.push(number);
            }
        }
        Ok((pinned, paged_out))
    }

    /// Stores the pages of `data` that lie in `paged_out` segments in the
    /// bulk tier, in one batch; per page of the batch, its new blocks (none
    /// for pages elsewhere). `None` when no page is paged out.
    #[allow(clippy::type_complexity)]
    fn store_in_bulk(
        &self,
        pages: impl Iterator<Item = u64>,
        data: &[u8],
        paged_out: &[usize],
    ) -> Result<Option<Vec<Option<Box<[BlockRef]>>>>, NodeError> {
        if paged_out.is_empty() {
            return Ok(None);
        }
        let page_size = self.info.page_size as usize;
        let chosen: Vec<usize> = pages
            .enumerate()
            .filter(|&(_, page)| paged_out.contains(&self.locate(page).0))
            .map(|(at, _)| at)
            .collect();
        let mut buffer = AlignedBuf::new(chosen.len() * page_size)?;
        for (slot, &at) in chosen.iter().enumerate() {
            buffer[slot * page_size..(slot + 1) * page_size]
                .copy_from_slice(&data[at * page_size..(at + 1) * page_size]);
        }
        let refs = self.bulk()?.store(&buffer)?;
        let per_page = page_size / BLOCK_BYTES;
        let mut stored: Vec<Option<Box<[BlockRef]>>> =
            (0..data.len() / page_size).map(|_| None).collect();
        for (slot, &at) in chosen.iter().enumerate() {
            stored[at] = Some(refs[slot * per_page..(slot + 1) * per_page].into());
        }
        Ok(Some(stored))
    }

    /// Makes every segment the pages lie in resident (allocating unwritten
    /// ones, paging paged-out ones back in) and pins it, before anything is
    /// written. The caller holds no entry's lock.
    pub(crate) fn allocate(
        &self,
        pages: impl Iterator<Item = u64>,
    ) -> Result<Pinned<'_>, NodeError> {
        let mut pinned = Pinned {
            region: self,
            segments: Vec::new(),
        };
        for page in pages {
            let (number, _) = self.locate(page);
            if pinned.segments.contains(&number) {
                continue;
            }
            self.make_resident(number)?;
            pinned.segments.push(number);
        }
        Ok(pinned)
    }

    /// Makes segment `number` resident and takes a pin on it.
    fn make_resident(&self, number: usize) -> Result<(), NodeError> {
        let entry = self.segments.get_or_allocate(number)?;
        for _ in 0..RESIDENT_TRIES {
            {
                let segment = entry.read();
                if segment.is_resident() {
                    // Under the shared lock: a page-out commits under the
                    // exclusive one, and then sees the pin.
                    segment.pins.fetch_add(1, Ordering::Acquire);
                    return Ok(());
                }
            }
            // RAM first, holding no entry's lock: making room may page out
            // other segments, of this region too.
            let reservation = self.arena.reserve()?;
            let paged_out = {
                let segment = entry.read();
                segment
                    .paged_out
                    .as_ref()
                    .map(|refs| (refs.clone(), segment.changes))
            };
            // The blocks are read under no lock; the move commits only if
            // the segment is still paged out with the same blocks. A block
            // released and reused meanwhile fails its checksum: that read
            // counts only if the segment did not change.
            let bytes = match &paged_out {
                Some((refs, changes)) => {
                    let mut buffer = AlignedBuf::new(refs.len() * BLOCK_BYTES)?;
                    if let Err(error) = self.bulk()?.read(refs, &mut buffer) {
                        if entry.read().changes == *changes {
                            return Err(error);
                        }
                        continue;
                    }
                    Some(buffer)
                }
                None => None,
            };
            let mut segment = entry.write();
            if segment.is_resident() {
                // Someone else made it resident meanwhile.
                continue;
            }
            match (&bytes, &paged_out) {
                (None, None) if segment.paged_out.is_none() => {
                    let pages = self.pages_per_segment as usize;
                    let mut seqs = Vec::new();
                    seqs.try_reserve_exact(pages)
                        .map_err(|_| metadata_allocation_failed(pages * 8))?;
                    seqs.resize(pages, 0);
                    self.memory.allocate(number, 0)?;
                    segment.seqs = seqs.into_boxed_slice();
                }
                (Some(bytes), Some((refs, changes)))
                    if segment.changes == *changes && segment.paged_out.is_some() =>
                {
                    self.memory.allocate(number, segment.last_version)?;
                    self.memory.begin_write(number);
                    // SAFETY: the segment's memory was just allocated to this
                    // region, the write lock makes this the only access, and
                    // the buffer is the segment's length.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            self.memory.segment_pointer(number),
                            bytes.len(),
                        );
                    }
                    self.memory.end_write(number);
                    let refs = segment.paged_out.take().expect("checked above");
                    self.uncount_paged_out(&refs);
                    // Kept: until the segment changes, they are its bytes.
                    segment.clean_copy = Some((refs, segment.changes + 1));
                    self.segments_paged_out.fetch_sub(1, Ordering::Relaxed);
                    self.arena.count_paging(false);
                }
                // The segment moved while its blocks were read: again.
                _ => continue,
            }
            reservation.keep();
            segment.slot = number as SegmentSlot;
            segment.changes += 1;
            segment.pins.fetch_add(1, Ordering::Acquire);
            self.segments_allocated.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(NodeError::Contended(format!(
            "segment {number} of region {:?} kept moving between tiers",
            self.info.name
        )))
    }

    /// Gives back a paged-out segment's block references.
    fn forget_blocks(&self, refs: &[BlockRef]) {
        self.uncount_paged_out(refs);
        self.release_blocks(refs);
    }

    /// Gives back block references (a segment's, or a page's).
    fn release_blocks(&self, refs: &[BlockRef]) {
        let bulk = self
            .arena
            .bulk()
            .expect("blocks, so the node has a bulk tier");
        bulk.release(refs);
        bulk.uncount(refs);
    }

    /// Takes a paged-out segment's blocks out of the region's figures.
    fn uncount_paged_out(&self, refs: &[BlockRef]) {
        let zeros = refs.iter().filter(|&&block| block == ZERO_BLOCK).count() as u64;
        self.bulk_blocks
            .fetch_sub(refs.len() as u64, Ordering::Relaxed);
        self.bulk_zero_blocks.fetch_sub(zeros, Ordering::Relaxed);
    }

    /// Drops a resident segment's clean copy once it no longer matches
    /// (the caller holds the entry exclusively).
    fn drop_stale_copy(&self, segment: &mut Segment) {
        if segment
            .clean_copy
            .as_ref()
            .is_some_and(|(_, at)| *at != segment.changes)
        {
            let (refs, _) = segment.clean_copy.take().expect("checked");
            self.release_blocks(&refs);
        }
    }

    /// Pages segment `number` out to the bulk tier if it is resident and
    /// unpinned; `Ok(false)` if it was not (or changed while its bytes were
    /// written out, or the bulk tier is full). `buffer` is a segment's worth
    /// of scratch. Takes only this segment's lock, and no lock across I/O.
    pub fn page_out(&self, number: usize, buffer: &mut AlignedBuf) -> Result<bool, NodeError> {
        let bulk = self.bulk()?;
        let Some(entry) = self.segments.get(number) else {
            return Ok(false);
        };
        let segment_bytes = self.arena.segment_bytes();
        assert_eq!(buffer.len(), segment_bytes);
        let changes = {
            let segment = entry.read();
            if !segment.is_resident() || segment.pins.load(Ordering::Acquire) > 0 {
                return Ok(false);
            }
            if segment
                .clean_copy
                .as_ref()
                .is_some_and(|(_, at)| *at == segment.changes)
            {
                drop(segment);
                return Ok(self.page_out_clean(entry));
            }
            // SAFETY: the segment is resident in this region, the shared
            // lock excludes writers, and the buffer is a segment long.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.memory.segment_pointer(number),
                    buffer.as_mut_ptr(),
                    segment_bytes,
                );
            }
            segment.changes
        };
        let refs = match bulk.store(buffer) {
            Ok(refs) => refs,
            Err(NodeError::BulkFull { .. }) => return Ok(false),
            Err(error) => return Err(error),
        };
        let mut segment = entry.write();
        if !segment.is_resident()
            || segment.pins.load(Ordering::Acquire) > 0
            || segment.changes != changes
        {
            drop(segment);
            bulk.release(&refs);
            bulk.uncount(&refs);
            return Ok(false);
        }
        if let Some((stale, _)) = segment.clean_copy.take() {
            self.release_blocks(&stale);
        }
        self.commit_page_out(&mut segment, number, refs);
        Ok(true)
    }

    /// Pages out a resident segment whose clean copy still matches it: no
    /// I/O, only the move. `false` if it changed or was pinned meanwhile.
    fn page_out_clean(&self, entry: &RwLock<Segment>) -> bool {
        let mut segment = entry.write();
        let number = segment.slot as usize;
        let matches = segment
            .clean_copy
            .as_ref()
            .is_some_and(|(_, at)| *at == segment.changes);
        if !segment.is_resident() || segment.pins.load(Ordering::Acquire) > 0 || !matches {
            return false;
        }
        let (refs, _) = segment.clean_copy.take().expect("checked");
        self.commit_page_out(&mut segment, number, refs);
        true
    }

    /// Moves a resident segment to the bulk tier, whose blocks `refs` hold
    /// its bytes (the caller holds the entry exclusively).
    fn commit_page_out(&self, segment: &mut Segment, number: usize, refs: Box<[BlockRef]>) {
        let zeros = refs.iter().filter(|&&block| block == ZERO_BLOCK).count() as u64;
        self.bulk_blocks
            .fetch_add(refs.len() as u64, Ordering::Relaxed);
        self.bulk_zero_blocks.fetch_add(zeros, Ordering::Relaxed);
        segment.last_version = self.memory.page_out(number);
        segment.slot = NO_SEGMENT;
        segment.paged_out = Some(refs);
        segment.changes += 1;
        self.segments_allocated.fetch_sub(1, Ordering::Relaxed);
        self.segments_paged_out.fetch_add(1, Ordering::Relaxed);
        self.arena.release();
        self.arena.count_paging(true);
    }

    /// The region's paged-out segments, each with its blocks (what a
    /// graceful stop saves in the bulk tier's index).
    pub fn paged_out_segments(&self) -> Vec<(u32, Box<[BlockRef]>)> {
        self.segments
            .allocated_from(0)
            .filter_map(|(number, entry)| {
                let segment = entry.read();
                segment
                    .paged_out
                    .as_ref()
                    .map(|refs| (number as u32, refs.clone()))
            })
            .collect()
    }

    /// Sets up segments a graceful stop left paged out in the bulk tier,
    /// holding checkpoint `checkpoint` exactly: their pages count as loaded
    /// from that baseline. The region serves them at once; the pager brings
    /// them into RAM in the background. The caller has adopted the blocks.
    pub fn restore_paged_out(
        &self,
        segments: &[(u32, Box<[BlockRef]>)],
        checkpoint: u64,
    ) -> Result<(), NodeError> {
        let blocks = self.arena.segment_bytes() / BLOCK_BYTES;
        for (number, refs) in segments {
            let number = *number as usize;
            if number >= self.segments.count || refs.len() != blocks {
                return Err(NodeError::InvalidArgument(format!(
                    "saved segment {number} of {} blocks does not fit region {:?}",
                    refs.len(),
                    self.info.name
                )));
            }
        }
        for (number, refs) in segments {
            let entry = self.segments.get_or_allocate(*number as usize)?;
            let mut segment = entry.write();
            assert!(!segment.is_stored(), "restored into a fresh region");
            let pages = self.pages_per_segment as usize;
            let mut seqs = Vec::new();
            seqs.try_reserve_exact(pages)
                .map_err(|_| metadata_allocation_failed(pages * 8))?;
            seqs.resize(pages, BASELINE_SEQ);
            segment.seqs = seqs.into_boxed_slice();
            segment.max_seq = BASELINE_SEQ;
            let zeros = refs.iter().filter(|&&block| block == ZERO_BLOCK).count() as u64;
            self.bulk_blocks
                .fetch_add(refs.len() as u64, Ordering::Relaxed);
            self.bulk_zero_blocks.fetch_add(zeros, Ordering::Relaxed);
            self.memory.mark_paged_out(*number as usize);
            segment.paged_out = Some(refs.clone());
            self.segments_paged_out.fetch_add(1, Ordering::Relaxed);
        }
        self.restored_checkpoint
            .store(checkpoint, Ordering::Relaxed);
        Ok(())
    }

    /// The checkpoint the region's pages were restored from the bulk tier
    /// at (0: they were not).
    pub fn restored_checkpoint(&self) -> u64 {
        self.restored_checkpoint.load(Ordering::Relaxed)
    }

    /// Forgets segments restored from the bulk tier (their checkpoint turned
    /// out not to be the region's baseline): the region is empty again, to
    /// be loaded from storage.
    pub fn forget_restored(&self) {
        for (number, entry) in self.segments.allocated_from(0) {
            let mut segment = entry.write();
            if let Some(refs) = segment.paged_out.take() {
                self.forget_blocks(&refs);
                self.memory.mark_unwritten(number);
                self.segments_paged_out.fetch_sub(1, Ordering::Relaxed);
                *segment = Segment::empty();
            }
        }
        self.restored_checkpoint.store(0, Ordering::Relaxed);
    }

    /// Every stored segment's tier and warmth; with `decay`, halves each
    /// warmth afterwards (the pager's periodic pass).
    pub fn segment_usage(&self, decay: bool) -> Vec<SegmentUsage> {
        let mut usages = Vec::new();
        for (number, entry) in self.segments.allocated_from(0) {
            let segment = entry.read();
            if !segment.is_stored() {
                continue;
            }
            let usage = if decay {
                segment
                    .usage
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u / 2))
                    .expect("always Some")
            } else {
                segment.usage.load(Ordering::Relaxed)
            };
            usages.push(SegmentUsage {
                number,
                usage,
                resident: segment.is_resident(),
                pinned: segment.pins.load(Ordering::Relaxed) > 0,
            });
        }
        usages
    }

    /// Pages segment `number` back in if it is paged out (the pager's
    /// promotion of a warm segment); `Ok(false)` if it was not.
    pub fn page_in(&self, number: usize) -> Result<bool, NodeError> {
        let Some(entry) = self.segments.get(number) else {
            return Ok(false);
        };
        if entry.read().paged_out.is_none() {
            return Ok(false);
        }
        self.make_resident(number)?;
        entry.read().pins.fetch_sub(1, Ordering::Release);
        Ok(true)
    }

    /// Writes `bytes` at `offset` within `page` (whose segment is pinned
    /// resident, or was paged out when `blocks`, the page's new contents,
    /// were stored in the bulk tier), saving the page first if the running
    /// snapshot still needs it.
    fn write_piece(
        &self,
        page: u64,
        offset: usize,
        bytes: &[u8],
        seq: u64,
        snapshot: (u64, u64, u64),
        blocks: Option<Box<[BlockRef]>>,
    ) {
        let (snapshot_id, from, to) = snapshot;
        let page_size = self.info.page_size as usize;
        debug_assert!(offset + bytes.len() <= page_size);
        let (segment, index) = self.locate(page);
        let mut segment = self
            .segments
            .get(segment)
            .expect("the segment was allocated before the write")
            .write();
        segment.changes += 1;
        segment.touch(self.tiered);
        let old = segment.seqs[index];
        let snapshot_needs_it =
            snapshot_id != 0 && segment.visited != snapshot_id && old > from && old <= to;
        if !segment.is_resident() {
            // Paged out since before the batch: the page's new blocks take
            // the place of its old ones, in the bulk tier.
            let blocks = blocks.expect("a page of a paged-out segment was stored first");
            debug_assert_eq!(offset, 0);
            let per_page = page_size / BLOCK_BYTES;
            let refs = segment
                .paged_out
                .as_mut()
                .expect("not resident, so paged out");
            let slot = &mut refs[index * per_page..(index + 1) * per_page];
            let zeros =
                |refs: &[BlockRef]| refs.iter().filter(|&&b| b == ZERO_BLOCK).count() as u64;
            self.bulk_zero_blocks
                .fetch_sub(zeros(slot), Ordering::Relaxed);
            self.bulk_zero_blocks
                .fetch_add(zeros(&blocks), Ordering::Relaxed);
            let old_blocks: Box<[BlockRef]> = (&*slot).into();
            slot.copy_from_slice(&blocks);
            if snapshot_needs_it {
                segment
                    .saved
                    .push((index as u32, Saved::Blocks(old_blocks)));
            } else {
                let bulk = self
                    .arena
                    .bulk()
                    .expect("paged out, so the node has a bulk tier");
                bulk.release(&old_blocks);
                bulk.uncount(&old_blocks);
            }
            if seq != 0 {
                segment.seqs[index] = seq;
                segment.max_seq = segment.max_seq.max(seq);
            }
            return;
        }
        if let Some(blocks) = blocks {
            // Paged back in meanwhile: the stored blocks are not needed.
            self.release_blocks(&blocks);
        }
        self.drop_stale_copy(&mut segment);
        if snapshot_needs_it {
            // The running snapshot still needs this page as it was.
            let saved = Saved::Bytes(self.page_bytes(&segment, index).into());
            segment.saved.push((index as u32, saved));
        }
        // Co-located readers retry or ask the node while the bytes change.
        self.memory.begin_write(segment.slot as usize);
        // SAFETY: the slot is allocated to this region, the write lock makes
        // this the only access, and the bytes lie inside the page.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.memory
                    .segment_pointer(segment.slot as usize)
                    .add(index * page_size + offset),
                bytes.len(),
            );
        }
        self.memory.end_write(segment.slot as usize);
        if seq != 0 {
            segment.seqs[index] = seq;
            segment.max_seq = segment.max_seq.max(seq);
        }
    }

    /// Checks byte-range writes (a journal record's) and makes the segments
    /// they need resident, pinned until [`Region::write_bytes`] consumes the
    /// pins, so that it cannot fail after the record is persisted.
    pub fn prepare_bytes(&self, entries: &[(u64, &[u8])]) -> Result<Pinned<'_>, NodeError> {
        for &(offset, bytes) in entries {
            let end = offset.checked_add(bytes.len() as u64);
            if end.is_none_or(|end| end > self.info.size) {
                return Err(NodeError::InvalidArgument(format!(
                    "write of {} bytes at offset {offset} lies outside the region of {} bytes",
                    bytes.len(),
                    self.info.size
                )));
            }
        }
        let segment_bytes = self.arena.segment_bytes() as u64;
        for &(offset, bytes) in entries.iter().filter(|(_, bytes)| !bytes.is_empty()) {
            let last = (offset + bytes.len() as u64 - 1) / segment_bytes;
            for number in offset / segment_bytes..=last {
                self.ensure_loaded(number as usize)?;
            }
        }
        let _gate = self.gate.read();
        self.check_writable(Track::Write)?;
        let page_size = self.info.page_size as u64;
        self.allocate(
            entries
                .iter()
                .filter(|(_, bytes)| !bytes.is_empty())
                .flat_map(|&(offset, bytes)| {
                    offset / page_size..=(offset + bytes.len() as u64 - 1) / page_size
                }),
        )
    }

    /// Applies byte-range writes (a journal record's, `journal_id` in the
    /// node's journal of this region) as one batch, into the segments
    /// [`Region::prepare_bytes`] pinned.
    pub fn write_bytes(
        &self,
        entries: &[(u64, &[u8])],
        journal_id: u64,
        pinned: Pinned<'_>,
    ) -> Result<(), NodeError> {
        debug_assert!(std::ptr::eq(pinned.region, self));
        let _gate = self.gate.read();
        self.check_writable(Track::Write)?;
        let page_size = self.info.page_size as u64;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = *self.snapshot.read();
        let mut pieces = 0u64;
        for &(offset, bytes) in entries {
            let mut at = offset;
            let mut rest = bytes;
            while !rest.is_empty() {
                let page = at / page_size;
                let within = (at % page_size) as usize;
                let take = rest.len().min(page_size as usize - within);
                let (head, tail) = rest.split_at(take);
                self.write_piece(page, within, head, seq, snapshot, None);
                pieces += 1;
                at += take as u64;
                rest = tail;
            }
        }
        self.pages_written.fetch_add(pieces, Ordering::Relaxed);
        self.journal_applied
            .fetch_max(journal_id, Ordering::Relaxed);
        Ok(())
    }

    /// The highest node-journal id applied to the region.
    pub fn journal_applied(&self) -> u64 {
        self.journal_applied.load(Ordering::Relaxed)
    }

    /// The current mark: every write that completed before the call is at or
    /// below it, every write that starts after is above it.
    pub fn mark(&self) -> u64 {
        let _gate = self.gate.write();
        self.seq.load(Ordering::Relaxed)
    }

    /// Makes the region read-only (it moved) and returns the mark after its
    /// last write.
    pub fn freeze(&self) -> Result<u64, NodeError> {
        let _gate = self.gate.write();
        match self.state() {
            RegionState::Active | RegionState::ReadOnly => {}
            _ => return Err(self.unavailable()),
        }
        *self.state_reason.lock() = "moved to another node".into();
        self.state
            .store(RegionState::ReadOnly as u8, Ordering::Release);
        Ok(self.seq.load(Ordering::Relaxed))
    }

    /// Ranges of pages written after `since` (a sequence value), starting at
    /// `start_page`, at most `max_ranges`; also returns where to continue
    /// (`u64::MAX` when done).
    pub fn dirty_ranges(
        &self,
        since: u64,
        start_page: u64,
        max_ranges: usize,
    ) -> (Vec<PageRange>, u64) {
        if since < BASELINE_SEQ {
            // Every page the baseline holds counts: all must be in. A load
            // that fails damages the region, which then serves no one.
            let _ = self.ensure_all_loaded();
        }
        let mut ranges: Vec<PageRange> = Vec::new();
        let first_segment = (start_page / self.pages_per_segment) as usize;
        for (number, entry) in self.segments.allocated_from(first_segment) {
            let segment = entry.read();
            if segment.max_seq <= since {
                continue;
            }
            let base = number as u64 * self.pages_per_segment;
            for (index, &seq) in segment.seqs.iter().enumerate() {
                let page = base + index as u64;
                if seq <= since || page < start_page {
                    continue;
                }
                match ranges.last_mut() {
                    Some(last)
                        if last.start + last.count as u64 == page && last.count < u32::MAX =>
                    {
                        last.count += 1
                    }
                    _ => {
                        if ranges.len() == max_ranges {
                            return (ranges, page);
                        }
                        ranges.push(PageRange {
                            start: page,
                            count: 1,
                        });
                    }
                }
            }
        }
        (ranges, u64::MAX)
    }

    /// Pages written after `since`.
    pub fn dirty_count(&self, since: u64) -> u64 {
        if since < BASELINE_SEQ {
            // As in `dirty_ranges`.
            let _ = self.ensure_all_loaded();
        }
        self.segments
            .allocated_from(0)
            .map(|(_, entry)| {
                let segment = entry.read();
                if segment.max_seq <= since {
                    0
                } else {
                    segment.seqs.iter().filter(|&&seq| seq > since).count() as u64
                }
            })
            .sum()
    }

    /// The segment size of the region's table (the arena's).
    pub fn segment_bytes(&self) -> u64 {
        self.arena.segment_bytes() as u64
    }

    /// The BLAKE3 digest of segment `number`'s bytes as a reader sees them
    /// (see `pagoda_wire::checksum`): the whole segment, or for the last
    /// segment of a region whose size is not a multiple of the segment
    /// size, only the region's bytes in it. An unwritten segment hashes as
    /// zeros of that length. The segment's entry lock is held shared while
    /// it is hashed, as `read_pages` does, so no write tears it.
    pub fn segment_digest(&self, number: u64) -> Result<[u8; 32], NodeError> {
        assert!(
            number < self.segments.count as u64,
            "segment {number} beyond the region's {}",
            self.segments.count
        );
        let segment_bytes = self.arena.segment_bytes() as u64;
        let length = (self.info.size - number * segment_bytes).min(segment_bytes) as usize;
        let mut digest = None;
        self.with_segment_bytes(number as usize, length, |bytes| {
            digest = Some(*blake3::hash(bytes).as_bytes())
        })?;
        Ok(digest.unwrap_or_else(|| crate::checksum::zero_digest(length)))
    }

    /// Calls `f` with the first `length` bytes of segment `number` under the
    /// entry's shared lock, read from the bulk tier if it is paged out; not
    /// at all for an unwritten segment (zeros).
    fn with_segment_bytes(
        &self,
        number: usize,
        length: usize,
        f: impl FnOnce(&[u8]),
    ) -> Result<(), NodeError> {
        self.ensure_loaded(number)?;
        let Some(entry) = self.segments.get(number) else {
            return Ok(());
        };
        let segment = entry.read();
        if segment.is_resident() {
            // SAFETY: the slot is allocated to this region, the entry's lock
            // is held (excluding writers), and `length` is at most the
            // segment size.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    self.memory.segment_pointer(segment.slot as usize),
                    length,
                )
            };
            f(bytes);
        } else if let Some(refs) = &segment.paged_out {
            let mut buffer = AlignedBuf::new(refs.len() * BLOCK_BYTES)?;
            self.bulk()?.read(refs, &mut buffer)?;
            f(&buffer[..length]);
        }
        Ok(())
    }

    /// Appends segment `number`'s bytes as a reader sees them to `out`
    /// (nothing for an unwritten segment, which reads as zeros), under the
    /// segment's entry lock.
    pub fn copy_segment(&self, number: usize, out: &mut Vec<u8>) -> Result<(), NodeError> {
        let segment_bytes = self.arena.segment_bytes() as u64;
        let length = (self.info.size - number as u64 * segment_bytes).min(segment_bytes) as usize;
        self.with_segment_bytes(number, length, |bytes| out.extend_from_slice(bytes))
    }

    /// Replaces segment `number`'s pages with `bytes` (a replica's rebuild):
    /// the segment's whole length, or empty for zeros. The pages count as
    /// written.
    pub fn restore_segment(&self, number: u64, bytes: &[u8]) -> Result<(), NodeError> {
        let segment_bytes = self.arena.segment_bytes() as u64;
        if number >= self.segments.count as u64 {
            return Err(NodeError::InvalidArgument(format!(
                "segment {number} is beyond the region's {}",
                self.segments.count
            )));
        }
        let length = (self.info.size - number * segment_bytes).min(segment_bytes) as usize;
        if !bytes.is_empty() && bytes.len() != length {
            return Err(NodeError::InvalidArgument(format!(
                "segment {number} carries {} bytes, expected {length} (or none for zeros)",
                bytes.len()
            )));
        }
        // An unloaded segment would look unwritten, and its baseline load
        // would come after these pages.
        self.ensure_loaded(number as usize)?;
        let page_size = self.info.page_size as usize;
        let first = number * self.pages_per_segment;
        let pages: Vec<u64> = (first..first + (length / page_size) as u64).collect();
        let zeros;
        let data = if bytes.is_empty() {
            if self
                .segments
                .get(number as usize)
                .is_none_or(|e| !e.read().is_stored())
            {
                // Unwritten here too: zeros already.
                return Ok(());
            }
            zeros = vec![0u8; length];
            &zeros[..]
        } else {
            bytes
        };
        self.write(pages.iter().copied(), pages.len(), data, Track::Write)
    }

    /// Starts a snapshot of the pages written after `from` for checkpoint
    /// `number`; returns `to`, the sequence value it is taken at, and the
    /// highest journal id applied before it (the snapshot covers it).
    pub fn begin_snapshot(&self, number: u64, from: u64) -> (u64, u64) {
        assert_ne!(number, 0);
        let _gate = self.gate.write();
        let to = self.seq.load(Ordering::Relaxed);
        let id = self.snapshots_begun.fetch_add(1, Ordering::Relaxed) + 1;
        *self.snapshot.write() = (id, from, to);
        (to, self.journal_applied.load(Ordering::Relaxed))
    }

    /// Appends to `pages` and `data` the snapshot's pages of segment
    /// `number`, as they were at the snapshot's start, in page order.
    pub fn snapshot_segment(
        &self,
        number: usize,
        pages: &mut Vec<u64>,
        data: &mut Vec<u8>,
    ) -> Result<(), NodeError> {
        let (id, from, to) = *self.snapshot.read();
        assert_ne!(id, 0, "no snapshot is running");
        // A segment whose chunk was never allocated holds no page yet, and
        // one allocated from now on holds none the snapshot covers.
        let Some(entry) = self.segments.get(number) else {
            return Ok(());
        };
        let mut segment = entry.write();
        segment.visited = id;
        let saved = std::mem::take(&mut segment.saved);
        let result = if !segment.is_stored() || (segment.max_seq <= from && saved.is_empty()) {
            Ok(())
        } else {
            self.snapshot_pages(number, &segment, &saved, (from, to), pages, data)
        };
        drop(segment);
        self.release_saved(saved);
        result
    }

    /// [`Region::snapshot_segment`]'s pages: the saved ones as they were,
    /// the others in `(from, to]` as they are.
    fn snapshot_pages(
        &self,
        number: usize,
        segment: &Segment,
        saved: &[(u32, Saved)],
        (from, to): (u64, u64),
        pages: &mut Vec<u64>,
        data: &mut Vec<u8>,
    ) -> Result<(), NodeError> {
        let base = number as u64 * self.pages_per_segment;
        let mut scratch = None;
        for index in 0..segment.seqs.len() {
            let seq = segment.seqs[index];
            let old = saved.iter().find(|(i, _)| *i as usize == index);
            if old.is_none() && (seq <= from || seq > to) {
                continue;
            }
            pages.push(base + index as u64);
            match old {
                Some((_, Saved::Bytes(bytes))) => data.extend_from_slice(bytes),
                None if segment.is_resident() => {
                    data.extend_from_slice(self.page_bytes(segment, index))
                }
                // From the bulk tier, under the entry's lock (which a writer
                // would need too).
                _ => {
                    let buffer = match &mut scratch {
                        Some(buffer) => buffer,
                        None => scratch.insert(AlignedBuf::new(self.info.page_size as usize)?),
                    };
                    match old {
                        Some((_, Saved::Blocks(blocks))) => self.bulk()?.read(blocks, buffer)?,
                        _ => self.read_paged_out(segment, index, buffer)?,
                    }
                    data.extend_from_slice(buffer);
                }
            }
        }
        Ok(())
    }

    /// Ends the running snapshot, dropping any saved pages.
    pub fn end_snapshot(&self) {
        let _gate = self.gate.write();
        *self.snapshot.write() = (0, 0, 0);
        for (_, entry) in self.segments.allocated_from(0) {
            let mut segment = entry.write();
            if !segment.saved.is_empty() {
                self.release_saved(std::mem::take(&mut segment.saved));
            }
        }
    }

    /// Gives back the bulk-tier blocks of saved pages.
    fn release_saved(&self, saved: Vec<(u32, Saved)>) {
        for (_, old) in saved {
            if let Saved::Blocks(blocks) = old {
                let bulk = self.arena.bulk().expect("saved blocks, so a bulk tier");
                bulk.release(&blocks);
                bulk.uncount(&blocks);
            }
        }
    }

    /// Records a completed checkpoint.
    pub fn checkpoint_completed(&self, mark: CheckpointMark) {
        let mut checkpoints = self.checkpoints.lock();
        checkpoints.push(mark);
        if checkpoints.len() > CHECKPOINT_HISTORY {
            checkpoints.remove(0);
        }
    }

    /// The latest completed checkpoint.
    pub fn last_checkpoint(&self) -> Option<CheckpointMark> {
        self.checkpoints.lock().last().cloned()
    }

    /// The sequence value at the start of checkpoint `number`, if the region
    /// still remembers it (checkpoint 0: the region's creation or load).
    pub fn checkpoint_start(&self, number: u64) -> Option<u64> {
        if number == 0 {
            return Some(0);
        }
        self.checkpoints
            .lock()
            .iter()
            .find(|mark| mark.number == number)
            .map(|mark| mark.start_seq)
    }
}

/// What a write does to the pages' sequence numbers.
#[derive(Clone, Copy)]
enum Track {
    /// A client's write: numbered; refused unless active.
    Write,
    /// A page copied from a recovery's source: numbered (dirty since the
    /// baseline); allowed while recovering.
    Restore,
    /// A page loaded from the baseline: not numbered (clean).
    Baseline,
}

impl Drop for Region {
    fn drop(&mut self) {
        for (_, segment) in self.segments.allocated_from(0) {
            // The memory itself goes back to the kernel when `memory` drops,
            // whoever still maps it.
            let mut segment = segment.write();
            self.release_saved(std::mem::take(&mut segment.saved));
            if let Some((refs, _)) = segment.clean_copy.take() {
                self.release_blocks(&refs);
            }
            if segment.is_resident() {
                self.arena.release();
            } else if let Some(refs) = &segment.paged_out {
                self.forget_blocks(refs);
            }
        }
    }
}

impl Region {
    /// Loads `pages` from the region's baseline straight into its memory:
    /// makes their segment resident, then lets `fill` write the pages' bytes
    /// in place (the whole run, in page order) under the segment's lock and
    /// seqlock, so no reader sees them before `fill` returns. They are then
    /// numbered [`BASELINE_SEQ`] and counted as written, as
    /// `restore_pages(.., true)` does. If `fill` fails, the run's pages are
    /// zeroed (nothing unverified stays in memory), keep their numbers, and
    /// its error is returned. The run must lie within one segment.
    pub(crate) fn restore_with(
        &self,
        pages: std::ops::Range<u64>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        if pages.is_empty() {
            return Ok(());
        }
        self.check_in_range(std::iter::once(pages.end - 1))?;
        let (number, first) = self.locate(pages.start);
        assert_eq!(
            self.locate(pages.end - 1).0,
            number,
            "pages {pages:?} span segments"
        );
        let count = (pages.end - pages.start) as usize;
        let page_size = self.info.page_size as usize;
        let _gate = self.gate.read();
        self.check_writable(Track::Baseline)?;
        let _pinned = self.allocate(std::iter::once(pages.start))?;
        let (snapshot_id, from, to) = *self.snapshot.read();
        let mut segment = self
            .segments
            .get(number)
            .expect("the segment was allocated above")
            .write();
        assert!(
            segment.is_resident(),
            "segment pinned resident above was paged out"
        );
        // A page-out that copied the bytes before this fill must not commit.
        segment.changes += 1;
        for index in first..first + count {
            let old = segment.seqs[index];
            if snapshot_id != 0 && segment.visited != snapshot_id && old > from && old <= to {
                // The running snapshot still needs this page as it was.
                let saved = Saved::Bytes(self.page_bytes(&segment, index).into());
                segment.saved.push((index as u32, saved));
            }
        }
        let slot = segment.slot as usize;
        // Co-located readers retry or ask the node while the bytes change.
        self.memory.begin_write(slot);
        // SAFETY: the slot is allocated to this region, the write lock makes
        // this the only access, and the run lies inside the segment.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                self.memory.segment_pointer(slot).add(first * page_size),
                count * page_size,
            )
        };
        let result = fill(bytes);
        if result.is_err() {
            bytes.fill(0);
        }
        self.memory.end_write(slot);
        result?;
        segment.seqs[first..first + count].fill(BASELINE_SEQ);
        segment.max_seq = segment.max_seq.max(BASELINE_SEQ);
        self.pages_written
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The lazy load of a region's baseline (see `lazy_load`).
impl Region {
    /// The region's lazy-load slot.
    pub(crate) fn loading(&self) -> &crate::lazy_load::Loading {
        &self.loading
    }

    /// Segments still to be loaded from the baseline (0: the region is not
    /// loading).
    pub fn segments_loading(&self) -> u64 {
        self.loading.segments_left()
    }

    /// Returns once segment `number` holds its pages from the baseline the
    /// region is loading (at once when it is not loading). The caller holds
    /// no lock of the region.
    #[inline]
    pub(crate) fn ensure_loaded(&self, number: usize) -> Result<(), NodeError> {
        self.loading.ensure(self, number)
    }

    /// Returns once every segment holds its pages from the baseline, or the
    /// error the load damaged the region with. The caller holds no lock of
    /// the region.
    pub fn ensure_all_loaded(&self) -> Result<(), NodeError> {
        self.loading.ensure_all(self)
    }

    /// Loads segment `number`, never stored before, from the baseline:
    /// allocates its memory with the memory-file version odd, lets `fill`
    /// write the segment's bytes in place, then publishes the segment under
    /// its entry's exclusive lock, numbering the pages of `pieces` (indexes
    /// in the segment) [`BASELINE_SEQ`] and counting them as written. No
    /// request or co-located reader sees the segment before `fill` returns.
    /// The caller's claim on the segment (see `lazy_load`) is what makes it
    /// the only one to touch the memory meanwhile: every request waits for
    /// the load, and the entry stays empty, so scans (dirty pages, the
    /// pager, snapshots) pass over the segment rather than wait for the
    /// storage reads. If `fill` fails, the region's co-located readers are
    /// shut out (the caller marks it damaged), the memory goes back, and the
    /// error is returned.
    pub(crate) fn load_segment(
        &self,
        number: usize,
        pieces: &[std::ops::Range<usize>],
        fill: impl FnOnce(&mut [u8]) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        let entry = self.segments.get_or_allocate(number)?;
        let reservation = self.arena.reserve()?;
        let pages = self.pages_per_segment as usize;
        let mut seqs = Vec::new();
        seqs.try_reserve_exact(pages)
            .map_err(|_| metadata_allocation_failed(pages * 8))?;
        seqs.resize(pages, 0);
        debug_assert!(!entry.read().is_stored(), "segment {number} loaded twice");
        self.memory.allocate_for_load(number)?;
        // SAFETY: the segment's memory was just allocated to this region,
        // the caller's claim makes this the only access (see above), and
        // the slice is the segment's length.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                self.memory.segment_pointer(number),
                self.arena.segment_bytes(),
            )
        };
        if let Err(error) = fill(bytes) {
            self.memory.set_open(false);
            self.memory.release(number);
            return Err(error);
        }
        let mut loaded = 0u64;
        for piece in pieces {
            seqs[piece.clone()].fill(BASELINE_SEQ);
            loaded += piece.len() as u64;
        }
        let mut segment = entry.write();
        assert!(
            !segment.is_stored(),
            "segment {number} of region {:?} loaded from its baseline twice",
            self.info.name
        );
        reservation.keep();
        segment.slot = number as SegmentSlot;
        segment.seqs = seqs.into_boxed_slice();
        segment.max_seq = BASELINE_SEQ;
        segment.changes += 1;
        self.memory.end_write(number);
        self.segments_allocated.fetch_add(1, Ordering::Relaxed);
        drop(segment);
        self.pages_written.fetch_add(loaded, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(list: &[u64]) -> Vec<u8> {
        list.iter().flat_map(|page| page.to_le_bytes()).collect()
    }

    fn region(size: u64, capacity: u64) -> (Arc<Arena>, Region) {
        let arena = Arc::new(Arena::new(capacity, 2 * 1024 * 1024).unwrap());
        let info = RegionInfo {
            id: 1,
            size,
            page_size: 4096,
            name: "r".into(),
        };
        (arena.clone(), Region::new(info, 1, arena).unwrap())
    }

    fn list(bytes: &[u8]) -> PageList<'_> {
        let mut payload = 0u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&((bytes.len() / 8) as u32).to_le_bytes());
        payload.extend_from_slice(bytes);
        let request = pagoda_wire::Request::decode(0x20, Box::leak(payload.into_boxed_slice()));
        match request.unwrap() {
            pagoda_wire::Request::ReadPages { pages, .. } => pages,
            other => panic!("unexpected {other:?}"),
        }
    }

    // Guards thin provisioning: unwritten pages read as zeros and cost no RAM;
    // a write allocates exactly the segment it lands in.
    #[test]
    fn unwritten_pages_are_zero_and_free() {
        let (arena, region) = region(64 << 20, 8 << 20);
        let page_bytes = pages(&[0, 5000]);
        let mut out = Vec::new();
        region.read_pages(list(&page_bytes), &mut out).unwrap();
        assert_eq!(out.len(), 8192);
        assert!(out.iter().all(|&b| b == 0));
        assert_eq!(arena.used_bytes(), 0);
        region
            .write_pages(list(&pages(&[5000])), &[7u8; 4096])
            .unwrap();
        assert_eq!(region.segments_allocated(), 1);
        out.clear();
        region.read_pages(list(&page_bytes), &mut out).unwrap();
        assert!(out[..4096].iter().all(|&b| b == 0));
        assert!(out[4096..].iter().all(|&b| b == 7));
    }

    fn bulk_region(size: u64, ram: u64, bulk: u64) -> (tempfile::TempDir, Arc<Arena>, Region) {
        bulk_region_paged(size, ram, bulk, 4096)
    }

    fn bulk_region_paged(
        size: u64,
        ram: u64,
        bulk: u64,
        page_size: u32,
    ) -> (tempfile::TempDir, Arc<Arena>, Region) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::bulk::BulkStore::open(&crate::bulk::BulkConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes: bulk,
        })
        .unwrap();
        let arena = Arc::new(Arena::new(ram, 2 << 20).unwrap().with_bulk(store, 0, 0));
        let info = RegionInfo {
            id: 1,
            size,
            page_size,
            name: "r".into(),
        };
        let region = Region::new(info, 1, arena.clone()).unwrap();
        (dir, arena, region)
    }

    // Guards pages larger than a block: a 64 KiB page is sixteen blocks,
    // read, written in place and paged back in whole, and a 2 MiB page (a
    // whole segment) likewise.
    #[test]
    fn large_pages_span_blocks_in_the_bulk_tier() {
        for page_size in [64 << 10, 2 << 20] {
            let (_dir, arena, region) = bulk_region_paged(8 << 20, 8 << 20, 32 << 20, page_size);
            let page = |fill: u8| {
                let mut bytes = vec![fill; page_size as usize];
                bytes[page_size as usize - 1] = fill.wrapping_add(1);
                bytes
            };
            let read = |number: u64| {
                let mut out = Vec::new();
                region
                    .read_pages(list(&pages(&[number])), &mut out)
                    .unwrap();
                out
            };
            region.write_pages(list(&pages(&[0])), &page(1)).unwrap();
            let mut buffer = AlignedBuf::new(2 << 20).unwrap();
            assert!(region.page_out(0, &mut buffer).unwrap());
            assert_eq!(read(0), page(1), "page size {page_size}");
            region.write_pages(list(&pages(&[0])), &page(2)).unwrap();
            assert_eq!(region.segments_paged_out(), 1, "written in place");
            assert_eq!(read(0), page(2), "page size {page_size}");
            assert!(region.page_in(0).unwrap());
            assert_eq!(read(0), page(2), "page size {page_size}");
            assert_eq!(arena.paging(), (1, 1));
        }
    }

    fn read(region: &Region, page: u64) -> Vec<u8> {
        let mut out = Vec::new();
        region.read_pages(list(&pages(&[page])), &mut out).unwrap();
        out
    }

    // Guards the move between tiers: a paged-out segment gives its RAM
    // back, reads the same from the bulk tier (zero pages as nothing), keeps
    // its write numbers; a whole-page write lands in the bulk tier in place
    // (no page-in), and a partial write pages it back in with the bytes
    // intact.
    #[test]
    fn a_paged_out_segment_reads_the_same_and_takes_writes() {
        let (_dir, arena, region) = bulk_region(8 << 20, 8 << 20, 16 << 20);
        region
            .write_pages(list(&pages(&[0])), &[0u8; 4096])
            .unwrap();
        region
            .write_pages(list(&pages(&[1, 2])), &[5u8; 8192])
            .unwrap();
        let dirty = region.dirty_count(0);
        let mut buffer = AlignedBuf::new(2 << 20).unwrap();
        assert!(region.page_out(0, &mut buffer).unwrap());
        assert!(!region.page_out(0, &mut buffer).unwrap(), "already out");
        assert_eq!(arena.used_bytes(), 0, "its RAM went back");
        assert_eq!(region.segments_paged_out(), 1);
        let bulk = || arena.bulk().unwrap().stat();
        assert_eq!(
            bulk().used_bytes,
            4096,
            "pages 1 and 2 are one block; zeros none"
        );
        assert_eq!(region.bulk_bytes(), (2 << 20, (2 << 20) - 8192));
        assert_eq!(read(&region, 0), vec![0u8; 4096]);
        assert_eq!(read(&region, 2), vec![5u8; 4096]);
        assert_eq!(read(&region, 3), vec![0u8; 4096]);
        assert_eq!(region.dirty_count(0), dirty, "write numbers survive");
        // Whole pages: in place.
        region
            .write_pages(list(&pages(&[3, 2])), &[[6u8; 4096], [7u8; 4096]].concat())
            .unwrap();
        assert_eq!((region.segments_paged_out(), arena.used_bytes()), (1, 0));
        assert_eq!(bulk().used_bytes, 3 * 4096);
        assert_eq!(region.bulk_bytes(), (2 << 20, (2 << 20) - 3 * 4096));
        assert_eq!(read(&region, 1), vec![5u8; 4096]);
        assert_eq!(read(&region, 2), vec![7u8; 4096]);
        assert_eq!(read(&region, 3), vec![6u8; 4096]);
        assert_eq!(region.dirty_count(0), dirty + 1);
        // A byte range: paged in.
        let entries = [(3 * 4096 + 10, &[9u8; 3][..])];
        let pinned = region.prepare_bytes(&entries).unwrap();
        region.write_bytes(&entries, 1, pinned).unwrap();
        assert_eq!(
            (region.segments_paged_out(), arena.used_bytes()),
            (0, 2 << 20)
        );
        assert_eq!(bulk().used_bytes, 0, "blocks freed");
        let mut expected = vec![6u8; 4096];
        expected[10..13].fill(9);
        assert_eq!(read(&region, 3), expected);
        assert_eq!(read(&region, 2), vec![7u8; 4096]);
    }

    // Guards the clean copy: a segment paged back in keeps its blocks, so
    // paging it out again unchanged writes nothing; once written, the copy
    // is dropped and the next page-out stores the new bytes.
    #[test]
    fn a_segment_paged_in_and_out_unchanged_writes_nothing() {
        let (_dir, arena, region) = bulk_region(8 << 20, 8 << 20, 16 << 20);
        region
            .write_pages(list(&pages(&[7])), &[3u8; 4096])
            .unwrap();
        let mut buffer = AlignedBuf::new(2 << 20).unwrap();
        assert!(region.page_out(0, &mut buffer).unwrap());
        assert!(region.page_in(0).unwrap());
        let bulk = || arena.bulk().unwrap().stat();
        assert_eq!(bulk().used_bytes, 4096, "the copy is kept");
        // Scribble over the scratch buffer: a page-out that used it would
        // store garbage, which the read below would see.
        buffer.fill(0xee);
        assert!(region.page_out(0, &mut buffer).unwrap());
        assert_eq!(read(&region, 7), vec![3u8; 4096]);
        assert!(region.page_in(0).unwrap());
        let entries = [(7 * 4096, &[4u8; 2][..])];
        let pinned = region.prepare_bytes(&entries).unwrap();
        region.write_bytes(&entries, 1, pinned).unwrap();
        assert_eq!(bulk().used_bytes, 0, "a change drops the copy");
        assert!(region.page_out(0, &mut buffer).unwrap());
        let mut expected = vec![3u8; 4096];
        expected[..2].fill(4);
        assert_eq!(read(&region, 7), expected);
        assert_eq!(arena.paging(), (3, 2));
    }

    // Guards copy-on-write across tiers: a snapshot taken while a paged-out
    // page is overwritten in place sees the page as it was (its old blocks
    // held until read), and the held blocks are given back afterwards.
    #[test]
    fn a_snapshot_keeps_a_paged_out_page_overwritten_in_place() {
        let (_dir, arena, region) = bulk_region(8 << 20, 8 << 20, 16 << 20);
        region
            .write_pages(list(&pages(&[5])), &[1u8; 4096])
            .unwrap();
        let mut buffer = AlignedBuf::new(2 << 20).unwrap();
        assert!(region.page_out(0, &mut buffer).unwrap());
        let (to, _) = region.begin_snapshot(1, 0);
        assert!(to > 0);
        region
            .write_pages(list(&pages(&[5])), &[2u8; 4096])
            .unwrap();
        assert_eq!(
            arena.bulk().unwrap().stat().used_bytes,
            2 * 4096,
            "old block held"
        );
        let (mut snapshot_pages, mut data) = (Vec::new(), Vec::new());
        region
            .snapshot_segment(0, &mut snapshot_pages, &mut data)
            .unwrap();
        region.end_snapshot();
        assert_eq!(snapshot_pages, vec![5]);
        assert_eq!(data, vec![1u8; 4096], "the page as it was at the start");
        assert_eq!(
            arena.bulk().unwrap().stat().used_bytes,
            4096,
            "old block released"
        );
        assert_eq!(read(&region, 5), vec![2u8; 4096]);
    }

    // Guards room-making: with RAM for one segment, writing a second pages
    // the first out through the pager, and both read back.
    #[test]
    fn a_full_ram_pages_out_for_a_write() {
        let (_dir, arena, region) = bulk_region(8 << 20, 2 << 20, 16 << 20);
        let region = Arc::new(region);
        arena.register(&region);
        let _pager = crate::tiering::Pager::install(arena.clone()).unwrap();
        region
            .write_pages(list(&pages(&[0])), &[1u8; 4096])
            .unwrap();
        region
            .write_pages(list(&pages(&[512])), &[2u8; 4096])
            .unwrap();
        assert_eq!(arena.paging(), (1, 0));
        assert_eq!(read(&region, 0), vec![1u8; 4096]);
        assert_eq!(read(&region, 512), vec![2u8; 4096]);
        // Whole pages over both segments: the paged-out one takes its page
        // in place.
        region
            .write_pages(list(&pages(&[1, 513])), &[3u8; 8192])
            .unwrap();
        assert_eq!(arena.paging(), (1, 0));
        assert_eq!(read(&region, 1), vec![3u8; 4096]);
        // Byte ranges over both need both resident: refused whole, nothing
        // written.
        let entries = [(2 * 4096, &[4u8; 8][..]), (514 * 4096, &[4u8; 8][..])];
        let error = region.prepare_bytes(&entries).map(drop).unwrap_err();
        assert!(matches!(error, NodeError::OutOfMemory { .. }), "{error}");
        assert_eq!(read(&region, 2), vec![0u8; 4096]);
        assert_eq!(read(&region, 514), vec![0u8; 4096]);
    }

    // Guards the all-or-nothing rule: a batch that runs out of segments or
    // names a page out of range changes nothing.
    #[test]
    fn failing_batches_change_nothing() {
        let (arena, region) = region(64 << 20, 2 << 20);
        region
            .write_pages(list(&pages(&[0])), &[1u8; 4096])
            .unwrap();
        // Page 1024 is in the second segment, which does not fit.
        let error = region
            .write_pages(list(&pages(&[1, 1024])), &[2u8; 8192])
            .unwrap_err();
        assert!(matches!(error, NodeError::OutOfMemory { .. }), "{error}");
        let error = region
            .write_pages(list(&pages(&[1, 1 << 20])), &[2u8; 8192])
            .unwrap_err();
        assert!(matches!(error, NodeError::OutOfRange { .. }), "{error}");
        let mut out = Vec::new();
        region.read_pages(list(&pages(&[0, 1])), &mut out).unwrap();
        assert!(out[..4096].iter().all(|&b| b == 1));
        assert!(out[4096..].iter().all(|&b| b == 0));
        drop(region);
        assert_eq!(arena.used_bytes(), 0, "a dropped region returns its RAM");
    }
}

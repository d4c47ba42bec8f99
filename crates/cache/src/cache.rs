//! The page cache: frames, a page table, an eviction policy and a backing
//! store, put together.
//!
//! Every access works on a chunk of consecutive pages: it pins the pages that
//! are resident (shared for reads, exclusive for writes), takes frames for the
//! ones that are not (from the free list, or by evicting victims the policy
//! names and writing the dirty ones back in one batch), fetches the missing
//! pages in one batch, copies, and releases. A thread never waits for another
//! thread while it holds a pin: if it would have to, it lets everything go,
//! backs off and retries one page at a time. That keeps a cache even of a
//! single frame free of deadlock with any number of threads.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::frame::{Attempt, DIRTY, EXCLUSIVE, Frames, NO_PAGE, PREFETCHED, VALID, backoff};
use crate::policy::{AccessBits, EvictionPolicy, FrameId, PolicyKind};
use crate::prefetch::{Detector, PrefetchConfig, Written, thread_tag};
use crate::stats::{CacheStats, StripedCounter};
use crate::table::PageTable;

/// An error from the store under the cache, passed through unchanged.
pub type BackingError = Box<dyn std::error::Error + Send + Sync>;

/// Where pages come from on a miss and go on write-back: the client's
/// connection to a memory node, or a `Vec<u8>` in tests.
pub trait Backing: Send + Sync {
    /// Fills each buffer (one page each, in order) with the page's contents.
    fn read_pages(&self, pages: &[u64], buffers: &mut [&mut [u8]]) -> Result<(), BackingError>;
    /// Stores each page's contents; returns once they are acknowledged.
    fn write_pages(&self, pages: &[u64], buffers: &[&[u8]]) -> Result<(), BackingError>;

    /// Starts reading `pages` into `buffer` (their bytes, in order) and
    /// returns without waiting for them, for read-ahead. The default reads
    /// them at once, so read-ahead works over any backing, only without
    /// overlapping the fetch with the caller's work.
    fn start_read(
        &self,
        pages: &[u64],
        mut buffer: Vec<u8>,
    ) -> Result<Box<dyn ReadAhead>, BackingError> {
        let page_size = buffer.len() / pages.len().max(1);
        let mut buffers: Vec<&mut [u8]> = buffer.chunks_mut(page_size.max(1)).collect();
        self.read_pages(pages, &mut buffers)?;
        Ok(Box::new(Arrived(Some(buffer))))
    }
}

/// A read started by [`Backing::start_read`]. Dropping it abandons the read:
/// its reply, if it comes, is dropped.
pub trait ReadAhead: Send {
    /// The pages' bytes once they have arrived (`Some(Ok)`), the read's
    /// failure (`Some(Err)`), or `None` while it is in flight. Never waits.
    /// With `receive`, it may first take in whatever replies the backing
    /// has received (once per round of polls is enough: it takes them all).
    fn poll(&mut self, receive: bool) -> Option<Result<Vec<u8>, BackingError>>;
}

/// A read that completed when it was started.
struct Arrived(Option<Vec<u8>>);

impl ReadAhead for Arrived {
    fn poll(&mut self, _receive: bool) -> Option<Result<Vec<u8>, BackingError>> {
        self.0.take().map(Ok)
    }
}

/// Reads the region offsets a page refers to out of its bytes: the
/// application's reference extractor (see [`PageCache::set_reference_extractor`]).
pub type Extractor = Arc<dyn Fn(&[u8], &mut Vec<u64>) + Send + Sync>;

/// An error of a cache operation.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The byte range lies outside the region.
    #[error("range of {len} bytes at offset {offset} lies outside the region of {size} bytes")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The region's size.
        size: u64,
    },
    /// The backing store failed.
    #[error(transparent)]
    Backing(BackingError),
}

/// How a cache is built.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// RAM for cached pages, in bytes; rounded down to whole pages, at least
    /// one page.
    pub capacity_bytes: u64,
    /// The region's page size.
    pub page_size: usize,
    /// The region's size in bytes; a multiple of the page size.
    pub region_bytes: u64,
    /// The eviction policy.
    pub policy: PolicyKind,
    /// Most pages in one call to the backing store.
    pub batch_pages_max: usize,
    /// Read-ahead.
    pub prefetch: PrefetchConfig,
}

/// Victims taken per eviction when a single frame is needed, so that dirty
/// victims are written back in batches rather than one round trip each.
const EVICT_BATCH_PAGES: usize = 16;
const NO_FRAME: FrameId = FrameId::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
}

enum Outcome {
    Done,
    Retry,
}

/// The pages one chunk of an access works on: consecutive ones (a range
/// read or written) or a sorted list of distinct ones ([`PageCache::read_many`]).
#[derive(Clone, Copy)]
enum Run<'a> {
    Range { first: u64, count: usize },
    List(&'a [u64]),
}

impl Run<'_> {
    fn len(&self) -> usize {
        match self {
            Run::Range { count, .. } => *count,
            Run::List(pages) => pages.len(),
        }
    }

    fn page(&self, index: usize) -> u64 {
        match self {
            Run::Range { first, .. } => first + index as u64,
            Run::List(pages) => pages[index],
        }
    }
}

/// A concurrent page cache over a backing store; see the module documentation.
pub struct PageCache<B> {
    frames: Frames,
    table: PageTable,
    policy: Box<dyn EvictionPolicy>,
    free: Mutex<Vec<FrameId>>,
    /// Serializes flushes: a flush skips a frame whose DIRTY bit another
    /// flush has cleared, so it must not return before that flush's batch is
    /// acknowledged (or has failed and marked the frame dirty again).
    flush_lock: Mutex<()>,
    backing: B,
    page_size: usize,
    region_bytes: u64,
    chunk_pages: usize,
    evict_batch_pages: usize,
    batch_pages_max: usize,
    hits: StripedCounter,
    misses: AtomicU64,
    evictions: AtomicU64,
    pages_fetched: AtomicU64,
    pages_written_back: AtomicU64,
    prefetch: Prefetch,
}

/// A read-ahead in flight.
struct InFlight {
    pages: Vec<u64>,
    read: Box<dyn ReadAhead>,
    /// Installed only if it arrives by then.
    deadline: Instant,
    /// `Written::now` before it was sent.
    sent: u64,
}

#[derive(Default)]
struct Queue {
    calls: VecDeque<InFlight>,
    /// Their pages, so a page is never read ahead twice at once.
    pages: rustc_hash::FxHashSet<u64>,
}

/// The cache's read-ahead state; see the `prefetch` module.
struct Prefetch {
    config: PrefetchConfig,
    detector: Detector,
    written: Written,
    queue: Mutex<Queue>,
    /// Pages in `queue`: checked without its lock.
    in_flight: AtomicUsize,
    /// Most pages in flight at once.
    in_flight_max: usize,
    /// The current cap on a stream's window (adapted; at most `depth_max`).
    depth_cap: AtomicU64,
    references: RwLock<Option<(Extractor, Duration)>>,
    /// Reply buffers back from installed read-aheads, for reuse.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
    issued: AtomicU64,
    used: AtomicU64,
    late: AtomicU64,
    wasted: AtomicU64,
    refs_invalid: AtomicU64,
    failed: AtomicU64,
    /// Installed and wasted since the cap was last adapted.
    window_installed: AtomicU64,
    window_wasted: AtomicU64,
}

/// Read-ahead pages installed between two adaptations of the depth cap.
const ADAPT_EVERY: u64 = 256;
/// Smallest depth cap the adaptation goes down to.
const DEPTH_CAP_MIN: u64 = 4;
/// Most pages in flight at once, whatever the cache's size.
const IN_FLIGHT_PAGES_MAX: usize = 4096;
/// Pages in the first request of a read-ahead; later ones double.
const FIRST_BATCH_PAGES: usize = 8;
/// Uses of read-ahead pages between two collections of replies.
const COLLECT_EVERY_USES: u64 = 8;
/// Reply buffers kept for reuse (a fresh one costs a page fault per page),
/// and the largest kept: at most 16 MiB held between read-aheads.
const SPARE_BUFFERS_MAX: usize = 16;
const SPARE_BUFFER_BYTES_MAX: usize = 1 << 20;

impl<B: Backing> PageCache<B> {
    /// Builds a cache; see [`CacheConfig`].
    pub fn new(config: CacheConfig, backing: B) -> PageCache<B> {
        let page_size = config.page_size;
        assert!(
            page_size.is_power_of_two(),
            "page size must be a power of two"
        );
        assert!(
            config.region_bytes.is_multiple_of(page_size as u64),
            "region size must be a multiple of the page size"
        );
        assert!(config.batch_pages_max > 0);
        let frame_count = (config.capacity_bytes / page_size as u64).max(1) as usize;
        let pages = config.region_bytes / page_size as u64;
        let frames = Frames::new(frame_count, page_size);
        // The policy keeps its access bits in the frames' state words.
        let policy = config
            .policy
            .build_with(AccessBits::Frames(frames.meta.clone()));
        PageCache {
            frames,
            table: PageTable::new(pages),
            policy,
            free: Mutex::new((0..frame_count as FrameId).rev().collect()),
            flush_lock: Mutex::new(()),
            backing,
            page_size,
            region_bytes: config.region_bytes,
            chunk_pages: config.batch_pages_max.min((frame_count / 4).max(1)),
            evict_batch_pages: EVICT_BATCH_PAGES.min((frame_count / 8).max(1)),
            batch_pages_max: config.batch_pages_max,
            hits: StripedCounter::new(),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            pages_fetched: AtomicU64::new(0),
            pages_written_back: AtomicU64::new(0),
            prefetch: Prefetch {
                detector: Detector::new(pages),
                written: Written::new(),
                queue: Mutex::new(Queue::default()),
                in_flight: AtomicUsize::new(0),
                in_flight_max: (frame_count / 4).clamp(1, IN_FLIGHT_PAGES_MAX),
                depth_cap: AtomicU64::new(
                    (config.prefetch.depth_max as u64).clamp(1, (frame_count as u64 / 4).max(1)),
                ),
                config: config.prefetch,
                references: RwLock::new(None),
                spare_buffers: Mutex::new(Vec::new()),
                issued: AtomicU64::new(0),
                used: AtomicU64::new(0),
                late: AtomicU64::new(0),
                wasted: AtomicU64::new(0),
                refs_invalid: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                window_installed: AtomicU64::new(0),
                window_wasted: AtomicU64::new(0),
            },
        }
    }

    /// The backing store.
    pub fn backing(&self) -> &B {
        &self.backing
    }

    /// The page size.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The region's size.
    pub fn region_bytes(&self) -> u64 {
        self.region_bytes
    }

    /// The eviction policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Counters since the cache was built.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            frames: self.frames.meta.len() as u64,
            hits: self.hits.sum(),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            pages_fetched: self.pages_fetched.load(Ordering::Relaxed),
            pages_written_back: self.pages_written_back.load(Ordering::Relaxed),
            prefetch_issued: self.prefetch.issued.load(Ordering::Relaxed),
            prefetch_used: self.prefetch.used.load(Ordering::Relaxed),
            prefetch_late: self.prefetch.late.load(Ordering::Relaxed),
            prefetch_wasted: self.prefetch.wasted.load(Ordering::Relaxed),
            prefetch_failed: self.prefetch.failed.load(Ordering::Relaxed),
            references_invalid: self.prefetch.refs_invalid.load(Ordering::Relaxed),
        }
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), CacheError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.region_bytes => Ok(()),
            _ => Err(CacheError::OutOfRange {
                offset,
                len: len as u64,
                size: self.region_bytes,
            }),
        }
    }

    /// The first and last pages of a byte range inside the region; `None` for
    /// an empty range.
    fn page_span(&self, offset: u64, len: usize) -> Result<Option<(u64, u64)>, CacheError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(None);
        }
        let page_size = self.page_size as u64;
        Ok(Some((
            offset / page_size,
            (offset + len as u64 - 1) / page_size,
        )))
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), CacheError> {
        let Some((first, last)) = self.page_span(offset, buf.len())? else {
            return Ok(());
        };
        let page_size = self.page_size as u64;
        if first == last {
            // The hit path: one lookup, one pin, one copy, no lock.
            if let Some(frame) = self.table.get(first) {
                let meta = &self.frames.meta[frame as usize];
                // The pin also sets the policy's access bit.
                if let Attempt::Acquired = meta.pin_referencing(first) {
                    let start = (offset - first * page_size) as usize;
                    // SAFETY: the pin excludes writers.
                    let bytes = unsafe { self.frames.bytes(frame) };
                    buf.copy_from_slice(&bytes[start..start + buf.len()]);
                    let first_use = first_use(meta, &self.prefetch.used);
                    meta.unpin_shared();
                    self.hits.increment();
                    if first_use {
                        self.after_access(Some((first, first)), false, &[first]);
                    }
                    return Ok(());
                }
            }
        }
        let frames = &self.frames;
        let len = buf.len();
        let mut copy = |page: u64, frame: FrameId| {
            let (range, in_page) = overlap(offset, len, page, page_size);
            // SAFETY: the frame is pinned for us.
            let bytes = unsafe { frames.bytes(frame) };
            buf[range].copy_from_slice(&bytes[in_page]);
        };
        self.access(offset, len, first, last, Mode::Read, &mut copy)
    }

    /// Reads `buf.len()` bytes at `offset` if every page they cover is
    /// resident and free to read right now; returns false (with `buf` in an
    /// unspecified state) otherwise, having waited for nothing and fetched
    /// nothing. For callers that must not block (an async runtime's thread):
    /// a hit is served in place, anything else goes where blocking is fine.
    pub fn try_read_resident(&self, offset: u64, buf: &mut [u8]) -> Result<bool, CacheError> {
        let Some((first, last)) = self.page_span(offset, buf.len())? else {
            return Ok(true);
        };
        let page_size = self.page_size as u64;
        let mut pinned: Vec<FrameId> = Vec::with_capacity((last - first + 1) as usize);
        let mut complete = true;
        for page in first..=last {
            let Some(frame) = self.table.get(page) else {
                complete = false;
                break;
            };
            // The pin also sets the policy's access bit.
            match self.frames.meta[frame as usize].pin_referencing(page) {
                Attempt::Acquired => pinned.push(frame),
                Attempt::Busy | Attempt::Stale => {
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            for (index, &frame) in pinned.iter().enumerate() {
                let page = first + index as u64;
                let (range, in_page) = overlap(offset, buf.len(), page, page_size);
                // SAFETY: the pin excludes writers.
                let bytes = unsafe { self.frames.bytes(frame) };
                buf[range].copy_from_slice(&bytes[in_page]);
                first_use(&self.frames.meta[frame as usize], &self.prefetch.used);
            }
            self.hits.add(pinned.len() as u64);
        }
        for &frame in &pinned {
            self.frames.meta[frame as usize].unpin_shared();
        }
        Ok(complete)
    }

    /// Writes `buf` at `offset`. The pages stay dirty in the cache until they
    /// are evicted or flushed.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), CacheError> {
        let Some((first, last)) = self.page_span(offset, buf.len())? else {
            return Ok(());
        };
        let page_size = self.page_size as u64;
        let frames = &self.frames;
        let mut copy = |page: u64, frame: FrameId| {
            let (range, in_page) = overlap(offset, buf.len(), page, page_size);
            // SAFETY: the frame is held exclusively by us.
            let bytes = unsafe { frames.bytes_mut(frame) };
            bytes[in_page].copy_from_slice(&buf[range]);
        };
        self.access(offset, buf.len(), first, last, Mode::Write, &mut copy)
    }

    /// Copies `buf` at `offset` into those of its pages that are resident,
    /// without marking them dirty; pages not resident are skipped. For bytes
    /// the backing already holds (a transaction's writes, shipped to the node
    /// before they are applied here), so that the cache agrees with it. A page
    /// being loaded is waited for, then updated.
    pub fn update_resident(&self, offset: u64, buf: &[u8]) -> Result<(), CacheError> {
        let Some((first, last)) = self.page_span(offset, buf.len())? else {
            return Ok(());
        };
        let page_size = self.page_size as u64;
        for page in first..=last {
            // The backing holds these bytes now: no read-ahead sent before
            // may install older ones.
            self.prefetch.written.mark(page);
            let mut spins = 0;
            // One page at a time, holding nothing else: waiting is safe.
            while let Some(frame) = self.table.get(page) {
                let meta = &self.frames.meta[frame as usize];
                match meta.lock_exclusive(page) {
                    Attempt::Acquired => {
                        let (range, in_page) = overlap(offset, buf.len(), page, page_size);
                        // SAFETY: the frame is held exclusively by us.
                        let bytes = unsafe { self.frames.bytes_mut(frame) };
                        bytes[in_page].copy_from_slice(&buf[range]);
                        self.release(&[frame], Mode::Write, false);
                        break;
                    }
                    Attempt::Busy | Attempt::Stale => backoff(&mut spins),
                }
            }
        }
        Ok(())
    }

    fn access(
        &self,
        offset: u64,
        len: usize,
        first: u64,
        last: u64,
        mode: Mode,
        copy: &mut dyn FnMut(u64, FrameId),
    ) -> Result<(), CacheError> {
        if self.prefetch.in_flight.load(Ordering::Relaxed) > 0 {
            // A read-ahead of one of these pages may have arrived.
            self.collect_read_ahead();
        }
        let mut page = first;
        let mut chunk = self.chunk_pages;
        let mut spins = 0;
        let mut touched = Vec::new();
        let mut missed = false;
        while page <= last {
            let count = (chunk as u64).min(last - page + 1) as usize;
            match self.access_chunk(
                Run::Range { first: page, count },
                mode,
                offset,
                len,
                copy,
                &mut touched,
                &mut missed,
            )? {
                Outcome::Done => {
                    page += count as u64;
                    chunk = self.chunk_pages;
                    spins = 0;
                }
                Outcome::Retry => {
                    chunk = 1;
                    backoff(&mut spins);
                }
            }
        }
        self.after_access(Some((first, last)), missed, &touched);
        Ok(())
    }

    /// Reads several ranges at once: `reads` holds (offset, buffer) pairs,
    /// in any order, overlapping or not. The pages none of them has
    /// resident are fetched together (in requests of up to the batch
    /// size), so independent misses wait for one round trip rather than
    /// one each. Every range is checked before anything is read.
    pub fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<(), CacheError> {
        // (page, read) for every page each read covers, in page order.
        let mut covers: Vec<(u64, usize)> = Vec::new();
        for (index, (offset, buf)) in reads.iter().enumerate() {
            if let Some((first, last)) = self.page_span(*offset, buf.len())? {
                covers.extend((first..=last).map(|page| (page, index)));
            }
        }
        if covers.is_empty() {
            return Ok(());
        }
        covers.sort_unstable();
        let mut pages: Vec<u64> = covers.iter().map(|&(page, _)| page).collect();
        pages.dedup();
        if self.prefetch.in_flight.load(Ordering::Relaxed) > 0 {
            self.collect_read_ahead();
        }
        let frames = &self.frames;
        let page_size = self.page_size as u64;
        let mut copy = |page: u64, frame: FrameId| {
            let start = covers.partition_point(|&(p, _)| p < page);
            for &(_, index) in covers[start..].iter().take_while(|&&(p, _)| p == page) {
                let (offset, buf) = &mut reads[index];
                let (range, in_page) = overlap(*offset, buf.len(), page, page_size);
                // SAFETY: the frame is pinned for us.
                let bytes = unsafe { frames.bytes(frame) };
                buf[range].copy_from_slice(&bytes[in_page]);
            }
        };
        let mut done = 0;
        let mut chunk = self.chunk_pages;
        let mut spins = 0;
        let mut touched = Vec::new();
        let mut missed = false;
        while done < pages.len() {
            let count = chunk.min(pages.len() - done);
            match self.access_chunk(
                Run::List(&pages[done..done + count]),
                Mode::Read,
                0,
                0,
                &mut copy,
                &mut touched,
                &mut missed,
            )? {
                Outcome::Done => {
                    done += count;
                    chunk = self.chunk_pages;
                    spins = 0;
                }
                Outcome::Retry => {
                    chunk = 1;
                    backoff(&mut spins);
                }
            }
        }
        // Scattered pages are no stream: only references are followed.
        self.after_access(None, missed, &touched);
        Ok(())
    }

    /// Pins or locks the pages of `run`, loading the missing ones,
    /// copies, and releases. `Retry` means it let everything go because it
    /// would otherwise have waited while holding pins. Pages used for the
    /// first time (fetched now, or read ahead and not used before) are added
    /// to `touched`; `missed` is set if any was fetched.
    #[allow(clippy::too_many_arguments)]
    fn access_chunk(
        &self,
        run: Run<'_>,
        mode: Mode,
        offset: u64,
        len: usize,
        copy: &mut dyn FnMut(u64, FrameId),
        touched: &mut Vec<u64>,
        missed: &mut bool,
    ) -> Result<Outcome, CacheError> {
        let mut held: Vec<FrameId> = Vec::with_capacity(run.len());
        let mut misses: Vec<u64> = Vec::new();
        for index in 0..run.len() {
            let page = run.page(index);
            let mut spins = 0;
            loop {
                let Some(frame) = self.table.get(page) else {
                    held.push(NO_FRAME);
                    misses.push(page);
                    break;
                };
                let meta = &self.frames.meta[frame as usize];
                let attempt = match mode {
                    Mode::Read => meta.pin_shared(page),
                    Mode::Write => meta.lock_exclusive(page),
                };
                match attempt {
                    Attempt::Acquired => {
                        if first_use(meta, &self.prefetch.used) {
                            touched.push(page);
                        } else {
                            self.policy.touch(frame);
                        }
                        self.hits.increment();
                        held.push(frame);
                        break;
                    }
                    Attempt::Stale => backoff(&mut spins),
                    Attempt::Busy => {
                        if held.iter().any(|&f| f != NO_FRAME) {
                            self.release(&held, mode, false);
                            return Ok(Outcome::Retry);
                        }
                        backoff(&mut spins);
                    }
                }
            }
        }
        if !misses.is_empty() {
            let mut fresh = Vec::with_capacity(misses.len());
            if let Err(error) = self.acquire_frames(misses.len(), &mut fresh) {
                self.free_frames(&fresh);
                self.release(&held, mode, false);
                return Err(error);
            }
            if fresh.len() < misses.len() {
                // Every other frame is pinned; let go and let them finish.
                self.free_frames(&fresh);
                self.release(&held, mode, false);
                return Ok(Outcome::Retry);
            }
            if !self.install(&misses, &fresh) {
                self.free_frames(&fresh);
                self.release(&held, mode, false);
                return Ok(Outcome::Retry);
            }
            if let Err(error) = self.load(&misses, &fresh, mode, offset, len) {
                self.uninstall(&misses, &fresh);
                self.release(&held, mode, false);
                return Err(error);
            }
            let mut fresh_iter = fresh.iter();
            for slot in held.iter_mut().filter(|f| **f == NO_FRAME) {
                *slot = *fresh_iter.next().expect("a frame per miss");
            }
            for (&page, &frame) in misses.iter().zip(&fresh) {
                self.policy.admit(frame, page);
            }
            *missed = true;
            touched.extend_from_slice(&misses);
        }
        for (index, &frame) in held.iter().enumerate() {
            copy(run.page(index), frame);
        }
        self.release(&held, mode, true);
        Ok(Outcome::Done)
    }

    /// Maps each missing page to its fresh frame. On a lost race (another
    /// thread installed one of the pages first) undoes its own mappings.
    fn install(&self, pages: &[u64], frames: &[FrameId]) -> bool {
        for (index, (&page, &frame)) in pages.iter().zip(frames).enumerate() {
            self.frames.meta[frame as usize]
                .page
                .store(page, Ordering::Release);
            if !self.table.install(page, frame) {
                for (&page, &frame) in pages[..index].iter().zip(frames) {
                    self.table.remove(page, frame);
                }
                for &frame in frames {
                    self.frames.meta[frame as usize]
                        .page
                        .store(NO_PAGE, Ordering::Release);
                }
                return false;
            }
        }
        true
    }

    /// Fetches the installed pages that need their old contents (all of them
    /// for a read; for a write, only pages the write covers partly), then
    /// marks the frames valid: pinned for a read, still exclusive for a write.
    fn load(
        &self,
        pages: &[u64],
        frames: &[FrameId],
        mode: Mode,
        offset: u64,
        len: usize,
    ) -> Result<(), CacheError> {
        let page_size = self.page_size as u64;
        let mut fetch_pages = Vec::with_capacity(pages.len());
        let mut buffers: Vec<&mut [u8]> = Vec::with_capacity(pages.len());
        for (&page, &frame) in pages.iter().zip(frames) {
            let covered =
                offset <= page * page_size && page * page_size + page_size <= offset + len as u64;
            if mode == Mode::Read || !covered {
                fetch_pages.push(page);
                // SAFETY: the frame is exclusive to us and not yet valid.
                buffers.push(unsafe { self.frames.bytes_mut(frame) });
            }
        }
        for (page_batch, buffer_batch) in fetch_pages
            .chunks(self.batch_pages_max)
            .zip(buffers.chunks_mut(self.batch_pages_max))
        {
            self.backing
                .read_pages(page_batch, buffer_batch)
                .map_err(CacheError::Backing)?;
        }
        self.misses.fetch_add(pages.len() as u64, Ordering::Relaxed);
        self.pages_fetched
            .fetch_add(fetch_pages.len() as u64, Ordering::Relaxed);
        for &frame in frames {
            let state = match mode {
                Mode::Read => VALID | 1,
                Mode::Write => VALID | EXCLUSIVE,
            };
            self.frames.meta[frame as usize].set(state);
        }
        Ok(())
    }

    /// Undoes `install` after a failed load and frees the frames.
    fn uninstall(&self, pages: &[u64], frames: &[FrameId]) {
        for (&page, &frame) in pages.iter().zip(frames) {
            self.table.remove(page, frame);
            self.frames.meta[frame as usize]
                .page
                .store(NO_PAGE, Ordering::Release);
        }
        self.free_frames(frames);
    }

    /// Releases held frames: unpins reads; for writes, drops EXCLUSIVE and
    /// marks the page dirty if it was written.
    fn release(&self, held: &[FrameId], mode: Mode, written: bool) {
        for &frame in held.iter().filter(|&&f| f != NO_FRAME) {
            let meta = &self.frames.meta[frame as usize];
            match mode {
                Mode::Read => meta.unpin_shared(),
                Mode::Write => {
                    let state = meta.state.load(Ordering::Relaxed) & !EXCLUSIVE;
                    meta.set(if written { state | DIRTY } else { state });
                }
            }
        }
    }

    /// Returns exclusive, page-less frames to the free list.
    fn free_frames(&self, frames: &[FrameId]) {
        for &frame in frames {
            self.frames.meta[frame as usize].set(0);
        }
        self.free.lock().extend_from_slice(frames);
    }

    /// Takes up to `want` frames, exclusive and page-less, into `out`: free
    /// ones first, then by eviction. Fewer than `want` means every other frame
    /// is pinned right now.
    fn acquire_frames(&self, want: usize, out: &mut Vec<FrameId>) -> Result<(), CacheError> {
        {
            let mut free = self.free.lock();
            while out.len() < want {
                match free.pop() {
                    Some(frame) => out.push(frame),
                    None => break,
                }
            }
        }
        for &frame in out.iter() {
            self.frames.meta[frame as usize].take_free();
        }
        if out.len() < want {
            self.evict(want - out.len(), out)?;
        }
        Ok(())
    }

    /// Evicts at least `need` frames if it can (more, up to the eviction
    /// batch, so dirty victims are written back together), handing `need` of
    /// them to `out` and the rest to the free list.
    fn evict(&self, need: usize, out: &mut Vec<FrameId>) -> Result<(), CacheError> {
        let target = need.max(self.evict_batch_pages);
        let mut victims: Vec<(FrameId, u64, u64)> = Vec::with_capacity(target);
        while victims.len() < target {
            let mut claimed_state = 0;
            let frames = &self.frames;
            let victim =
                self.policy
                    .victim(&mut |frame| match frames.meta[frame as usize].claim() {
                        Some(state) => {
                            claimed_state = state;
                            true
                        }
                        None => false,
                    });
            let Some(frame) = victim else { break };
            let page = self.frames.meta[frame as usize]
                .page
                .load(Ordering::Acquire);
            assert_ne!(page, NO_PAGE, "the policy named a frame holding no page");
            victims.push((frame, page, claimed_state));
        }
        let dirty: Vec<_> = victims
            .iter()
            .filter(|(_, _, state)| state & DIRTY != 0)
            .copied()
            .collect();
        for &(_, page, _) in &dirty {
            self.prefetch.written.mark(page);
        }
        for batch in dirty.chunks(self.batch_pages_max) {
            let pages: Vec<u64> = batch.iter().map(|v| v.1).collect();
            // SAFETY: the victims are exclusive to us.
            let buffers: Vec<&[u8]> = batch
                .iter()
                .map(|v| unsafe { self.frames.bytes(v.0) })
                .collect();
            if let Err(error) = self.backing.write_pages(&pages, &buffers) {
                // Nothing was unmapped yet: give every victim back as it was,
                // except that earlier batches are now clean.
                let written: std::collections::HashSet<FrameId> = dirty
                    .iter()
                    .take_while(|v| v.0 != batch[0].0)
                    .map(|v| v.0)
                    .collect();
                for &(frame, page, state) in &victims {
                    let state = if written.contains(&frame) {
                        state & !DIRTY
                    } else {
                        state
                    };
                    self.frames.meta[frame as usize].set(state);
                    self.policy.admit(frame, page);
                }
                return Err(CacheError::Backing(error));
            }
            self.pages_written_back
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        self.evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        for &(_, page, _) in &dirty {
            self.prefetch.written.mark(page);
        }
        let wasted = victims
            .iter()
            .filter(|(_, _, state)| state & PREFETCHED != 0)
            .count() as u64;
        if wasted > 0 {
            self.prefetch.wasted.fetch_add(wasted, Ordering::Relaxed);
            self.prefetch
                .window_wasted
                .fetch_add(wasted, Ordering::Relaxed);
        }
        let mut spare = Vec::new();
        for (index, &(frame, page, _)) in victims.iter().enumerate() {
            self.table.remove(page, frame);
            let meta = &self.frames.meta[frame as usize];
            meta.page.store(NO_PAGE, Ordering::Release);
            meta.set(EXCLUSIVE);
            if index < need {
                out.push(frame);
            } else {
                spare.push(frame);
            }
        }
        if !spare.is_empty() {
            self.free_frames(&spare);
        }
        Ok(())
    }

    /// Writes every dirty page back and returns once the backing store has
    /// acknowledged them all. Writes that complete before the call are
    /// covered; writes concurrent with it may or may not be.
    pub fn flush(&self) -> Result<(), CacheError> {
        let _serialized = self.flush_lock.lock();
        let mut batch: Vec<(FrameId, u64)> = Vec::with_capacity(self.batch_pages_max);
        for frame in 0..self.frames.meta.len() as FrameId {
            let meta = &self.frames.meta[frame as usize];
            let mut spins = 0;
            loop {
                let state = meta.state.load(Ordering::Acquire);
                if state & DIRTY == 0 {
                    break;
                }
                if state & EXCLUSIVE != 0 {
                    // A writer or an evictor owns it; an evictor writes it
                    // back before letting go, a writer leaves it dirty.
                    backoff(&mut spins);
                    continue;
                }
                let page = meta.page.load(Ordering::Acquire);
                match meta.pin_shared(page) {
                    Attempt::Acquired => {
                        let before = meta.state.fetch_and(!DIRTY, Ordering::AcqRel);
                        if before & DIRTY != 0 {
                            batch.push((frame, page));
                        } else {
                            meta.unpin_shared();
                        }
                        break;
                    }
                    Attempt::Busy | Attempt::Stale => backoff(&mut spins),
                }
            }
            if batch.len() == self.batch_pages_max {
                self.write_back_pinned(&mut batch)?;
            }
        }
        if !batch.is_empty() {
            self.write_back_pinned(&mut batch)?;
        }
        Ok(())
    }

    /// Writes back pinned frames whose DIRTY bit the caller cleared; on
    /// failure sets it again. Unpins them either way.
    fn write_back_pinned(&self, batch: &mut Vec<(FrameId, u64)>) -> Result<(), CacheError> {
        let pages: Vec<u64> = batch.iter().map(|v| v.1).collect();
        for &page in &pages {
            self.prefetch.written.mark(page);
        }
        // SAFETY: the frames are pinned, so no writer touches them.
        let buffers: Vec<&[u8]> = batch
            .iter()
            .map(|v| unsafe { self.frames.bytes(v.0) })
            .collect();
        let result = self.backing.write_pages(&pages, &buffers);
        for &page in &pages {
            self.prefetch.written.mark(page);
        }
        for &(frame, _) in batch.iter() {
            let meta = &self.frames.meta[frame as usize];
            if result.is_err() {
                meta.state.fetch_or(DIRTY, Ordering::AcqRel);
            }
            meta.unpin_shared();
        }
        if result.is_ok() {
            self.pages_written_back
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        batch.clear();
        result.map_err(CacheError::Backing)
    }

    /// Pages currently dirty in the cache.
    pub fn dirty_pages(&self) -> usize {
        self.frames
            .meta
            .iter()
            .filter(|meta| meta.state.load(Ordering::Relaxed) & DIRTY != 0)
            .count()
    }
}

impl<B: Backing> PageCache<B> {
    /// Reads ahead the pages holding `offsets` (bytes into the region): an
    /// application's hint that it will soon use them. Each page not resident
    /// and not already on its way is fetched without waiting and installed
    /// if it arrives within `deadline`; one that does not is fetched on
    /// demand later, as if no hint had been given. Returns the pages sent.
    pub fn prefetch(&self, offsets: &[u64], deadline: Duration) -> Result<usize, CacheError> {
        let page_size = self.page_size as u64;
        let mut pages = Vec::with_capacity(offsets.len());
        for &offset in offsets {
            self.check_range(offset, 1)?;
            pages.push(offset / page_size);
        }
        pages.dedup();
        let sent = self.read_ahead(pages.into_iter(), deadline, true);
        self.collect_read_ahead();
        Ok(sent)
    }

    /// Sets (or with `None` clears) the region's reference extractor: when a
    /// page is used for the first time after it arrived (a demand miss, or
    /// the first use of a read-ahead page), `extract(bytes, out)` is called
    /// with its bytes and pushes the region offsets the page refers to; those
    /// pages are read ahead with `deadline`. Offsets outside the region are
    /// ignored and counted ([`CacheStats::references_invalid`]). The
    /// extractor runs on the accessing thread while the page is pinned for
    /// reading: it must be quick and must not call into this cache.
    pub fn set_reference_extractor(&self, extract: Option<Extractor>, deadline: Duration) {
        *self.prefetch.references.write() = extract.map(|extract| (extract, deadline));
    }

    /// After an access of `first..=last` that used the pages in `touched`
    /// for the first time (`missed`: some were fetched on demand): feeds the
    /// stream detector, runs the reference extractor, and sends what they
    /// ask for.
    fn after_access(&self, span: Option<(u64, u64)>, missed: bool, touched: &[u64]) {
        if touched.is_empty() {
            return;
        }
        let prefetch = &self.prefetch;
        let mut sent = 0;
        if let Some((first, last)) = span
            && prefetch.config.trend
        {
            let cap = prefetch.depth_cap.load(Ordering::Relaxed);
            if let Some(window) = prefetch
                .detector
                .observe(thread_tag(), first, last, missed, cap)
            {
                sent += self.read_ahead(window.pages(), prefetch.config.deadline, false);
            }
        }
        let references = prefetch.references.read().clone();
        if let Some((extract, deadline)) = references {
            let mut offsets = Vec::new();
            for &page in touched {
                offsets.clear();
                if !self.with_page(page, &mut |bytes| extract(bytes, &mut offsets)) {
                    continue;
                }
                let page_size = self.page_size as u64;
                let mut invalid = 0;
                let targets: Vec<u64> = offsets
                    .iter()
                    .filter_map(|&offset| {
                        if offset < self.region_bytes {
                            Some(offset / page_size)
                        } else {
                            invalid += 1;
                            None
                        }
                    })
                    .collect();
                if invalid > 0 {
                    prefetch.refs_invalid.fetch_add(invalid, Ordering::Relaxed);
                }
                sent += self.read_ahead(targets.into_iter(), deadline, true);
            }
        }
        // Replies are taken in after a miss, after sending, and on every
        // few uses of read-ahead pages: often enough to stay ahead of a
        // stream (a window is a quarter or more of its depth), rarely enough
        // that a stream of hits does not pay a system call each.
        if prefetch.in_flight.load(Ordering::Relaxed) > 0
            && (missed
                || sent > 0
                || prefetch
                    .used
                    .load(Ordering::Relaxed)
                    .is_multiple_of(COLLECT_EVERY_USES))
        {
            self.collect_read_ahead();
        }
    }

    /// Runs `f` on a resident page's bytes under a reader pin; false if the
    /// page is not resident or busy.
    fn with_page(&self, page: u64, f: &mut dyn FnMut(&[u8])) -> bool {
        let Some(frame) = self.table.get(page) else {
            return false;
        };
        let meta = &self.frames.meta[frame as usize];
        match meta.pin_shared(page) {
            Attempt::Acquired => {
                // SAFETY: the pin excludes writers.
                f(unsafe { self.frames.bytes(frame) });
                meta.unpin_shared();
                true
            }
            Attempt::Busy | Attempt::Stale => false,
        }
    }

    /// Sends reads of those `pages` that are neither resident nor already on
    /// their way, without waiting, in batches; at most `in_flight_max` pages
    /// are in flight at once (the rest are not read ahead). Returns the
    /// pages sent.
    fn read_ahead(
        &self,
        pages: impl Iterator<Item = u64>,
        deadline: Duration,
        graded: bool,
    ) -> usize {
        let prefetch = &self.prefetch;
        let mut chosen = Vec::new();
        {
            let mut queue = prefetch.queue.lock();
            for page in pages {
                if queue.pages.len() >= prefetch.in_flight_max {
                    break;
                }
                if self.table.get(page).is_some() || !queue.pages.insert(page) {
                    continue;
                }
                chosen.push(page);
            }
            prefetch
                .in_flight
                .store(queue.pages.len(), Ordering::Relaxed);
        }
        if chosen.is_empty() {
            return 0;
        }
        let deadline = Instant::now() + deadline;
        let mut calls = Vec::new();
        let mut failed = Vec::new();
        // Graded (hints and references, used right away and in order): the
        // first pages go in a small request that arrives soon, the rest in
        // requests doubling in size up to the batch limit. A stream's window
        // is sent ahead of need, whole (large requests reach the
        // connection's bandwidth).
        let mut batches = Vec::new();
        let mut rest = &chosen[..];
        let mut size = if graded {
            FIRST_BATCH_PAGES.min(self.batch_pages_max)
        } else {
            self.batch_pages_max
        };
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(size.min(rest.len()));
            batches.push(batch);
            rest = tail;
            size = (size * 2).min(self.batch_pages_max);
        }
        for batch in batches {
            // Taken before the read is sent: a write-back after this moment
            // voids the read's contents.
            let sent = prefetch.written.now();
            let mut buffer = prefetch.spare_buffers.lock().pop().unwrap_or_default();
            buffer.resize(batch.len() * self.page_size, 0);
            match self.backing.start_read(batch, buffer) {
                Ok(read) => calls.push(InFlight {
                    pages: batch.to_vec(),
                    read,
                    deadline,
                    sent,
                }),
                Err(error) => {
                    tracing::debug!(%error, pages = batch.len(), "read-ahead not sent");
                    failed.extend_from_slice(batch);
                }
            }
        }
        let sent = chosen.len() - failed.len();
        prefetch.issued.fetch_add(sent as u64, Ordering::Relaxed);
        prefetch
            .failed
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        let mut queue = prefetch.queue.lock();
        for page in &failed {
            queue.pages.remove(page);
        }
        queue.calls.extend(calls);
        prefetch
            .in_flight
            .store(queue.pages.len(), Ordering::Relaxed);
        sent
    }

    /// Takes in the read-aheads that have arrived and installs those that
    /// came by their deadline; drops those past it. Never waits for one.
    /// Called holding no pin.
    fn collect_read_ahead(&self) {
        let prefetch = &self.prefetch;
        let mut arrived = Vec::new();
        {
            let Some(mut queue) = prefetch.queue.try_lock() else {
                // Another thread is collecting.
                return;
            };
            let now = Instant::now();
            let mut receive = true;
            let mut index = 0;
            while index < queue.calls.len() {
                let call = &mut queue.calls[index];
                let polled = call.read.poll(receive);
                receive = false;
                match polled {
                    Some(result) => {
                        let call = queue.calls.remove(index).expect("in range");
                        for page in &call.pages {
                            queue.pages.remove(page);
                        }
                        arrived.push((call, result));
                    }
                    None if now >= call.deadline => {
                        // Abandoned: dropping the read drops its reply.
                        let call = queue.calls.remove(index).expect("in range");
                        for page in &call.pages {
                            queue.pages.remove(page);
                        }
                        prefetch
                            .late
                            .fetch_add(call.pages.len() as u64, Ordering::Relaxed);
                    }
                    None => index += 1,
                }
            }
            prefetch
                .in_flight
                .store(queue.pages.len(), Ordering::Relaxed);
        }
        for (call, result) in arrived {
            match result {
                Ok(buffer) => {
                    if Instant::now() <= call.deadline {
                        self.install_read_ahead(&call.pages, &buffer, call.sent);
                    } else {
                        prefetch
                            .late
                            .fetch_add(call.pages.len() as u64, Ordering::Relaxed);
                    }
                    let mut spare = prefetch.spare_buffers.lock();
                    if spare.len() < SPARE_BUFFERS_MAX
                        && buffer.capacity() <= SPARE_BUFFER_BYTES_MAX
                    {
                        spare.push(buffer);
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, pages = call.pages.len(), "read-ahead failed");
                    prefetch
                        .failed
                        .fetch_add(call.pages.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Installs read-ahead pages that are still absent and were not written
    /// back since the read was sent, each into a frame taken without
    /// waiting (free, or by eviction). They enter the policy as read-ahead
    /// pages, marked so that their first use counts as used.
    fn install_read_ahead(&self, pages: &[u64], buffer: &[u8], sent: u64) {
        let prefetch = &self.prefetch;
        let wanted: Vec<(u64, &[u8])> = pages
            .iter()
            .copied()
            .zip(buffer.chunks_exact(self.page_size))
            .filter(|&(page, _)| {
                self.table.get(page).is_none() && !prefetch.written.since(page, sent)
            })
            .collect();
        let mut dropped = (pages.len() - wanted.len()) as u64;
        let mut installed = 0u64;
        // All the frames at once, so that evictions go in batches too.
        let mut fresh = Vec::with_capacity(wanted.len());
        if let Err(error) = self.acquire_frames(wanted.len(), &mut fresh) {
            tracing::debug!(%error, "no frames for read-ahead");
        }
        let mut spare = Vec::new();
        for (index, &(page, bytes)) in wanted.iter().enumerate() {
            let Some(&frame) = fresh.get(index) else {
                dropped += (wanted.len() - index) as u64;
                break;
            };
            let meta = &self.frames.meta[frame as usize];
            meta.page.store(page, Ordering::Release);
            if !self.table.install(page, frame) {
                meta.page.store(NO_PAGE, Ordering::Release);
                spare.push(frame);
                dropped += 1;
                continue;
            }
            // A write-back that began after the check above and finished
            // before the install: its mark is visible now.
            if prefetch.written.since(page, sent) {
                self.table.remove(page, frame);
                meta.page.store(NO_PAGE, Ordering::Release);
                spare.push(frame);
                dropped += 1;
                continue;
            }
            // SAFETY: the frame is exclusive to us and not yet valid.
            unsafe { self.frames.bytes_mut(frame) }.copy_from_slice(bytes);
            meta.set(VALID | PREFETCHED);
            self.policy.admit_prefetched(frame, page);
            installed += 1;
        }
        if !spare.is_empty() {
            self.free_frames(&spare);
        }
        prefetch.late.fetch_add(dropped, Ordering::Relaxed);
        self.pages_fetched.fetch_add(installed, Ordering::Relaxed);
        let window = prefetch
            .window_installed
            .fetch_add(installed, Ordering::Relaxed)
            + installed;
        if window >= ADAPT_EVERY {
            self.adapt_depth_cap();
        }
    }

    /// Halves the streams' depth cap when more than a quarter of the pages
    /// read ahead lately were evicted unused, doubles it (up to the
    /// configured most) when fewer than one in sixteen were.
    fn adapt_depth_cap(&self) {
        let prefetch = &self.prefetch;
        let installed = prefetch.window_installed.swap(0, Ordering::Relaxed);
        let wasted = prefetch.window_wasted.swap(0, Ordering::Relaxed);
        if installed == 0 {
            return;
        }
        let most =
            (prefetch.config.depth_max as u64).clamp(1, (self.frames.meta.len() as u64 / 4).max(1));
        let cap = prefetch.depth_cap.load(Ordering::Relaxed);
        let next = if wasted * 4 > installed {
            (cap / 2).max(DEPTH_CAP_MIN.min(most))
        } else if wasted * 16 < installed {
            (cap * 2).min(most)
        } else {
            cap
        };
        prefetch.depth_cap.store(next, Ordering::Relaxed);
    }
}

/// Whether this access is the first use of a read-ahead page: clears the
/// mark (only one thread sees it set) and counts the page as used. The
/// caller holds a pin or the frame's EXCLUSIVE bit.
#[inline]
fn first_use(meta: &crate::frame::Frame, used: &AtomicU64) -> bool {
    let first = meta.state.load(Ordering::Relaxed) & PREFETCHED != 0
        && meta.state.fetch_and(!PREFETCHED, Ordering::AcqRel) & PREFETCHED != 0;
    if first {
        used.fetch_add(1, Ordering::Relaxed);
    }
    first
}

/// The part of `[offset, offset+len)` inside `page`: as a range of the
/// caller's buffer and as a range of the page.
#[inline]
fn overlap(
    offset: u64,
    len: usize,
    page: u64,
    page_size: u64,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let page_start = page * page_size;
    let from = offset.max(page_start);
    let to = (offset + len as u64).min(page_start + page_size);
    debug_assert!(from < to);
    (
        (from - offset) as usize..(to - offset) as usize,
        (from - page_start) as usize..(to - page_start) as usize,
    )
}

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

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::frame::{Attempt, DIRTY, EXCLUSIVE, Frames, NO_PAGE, VALID, backoff};
use crate::policy::{EvictionPolicy, FrameId, PolicyKind};
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
}

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
}

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
        PageCache {
            frames: Frames::new(frame_count, page_size),
            table: PageTable::new(pages),
            policy: config.policy.build(frame_count),
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
                if let Attempt::Acquired = meta.pin_shared(first) {
                    let start = (offset - first * page_size) as usize;
                    // SAFETY: the pin excludes writers.
                    let bytes = unsafe { self.frames.bytes(frame) };
                    buf.copy_from_slice(&bytes[start..start + buf.len()]);
                    self.policy.touch(frame);
                    meta.unpin_shared();
                    self.hits.increment();
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
        let mut page = first;
        let mut chunk = self.chunk_pages;
        let mut spins = 0;
        while page <= last {
            let count = (chunk as u64).min(last - page + 1) as usize;
            match self.access_chunk(page, count, mode, offset, len, copy)? {
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
        Ok(())
    }

    /// Pins or locks `count` pages from `first`, loading the missing ones,
    /// copies, and releases. `Retry` means it let everything go because it
    /// would otherwise have waited while holding pins.
    fn access_chunk(
        &self,
        first: u64,
        count: usize,
        mode: Mode,
        offset: u64,
        len: usize,
        copy: &mut dyn FnMut(u64, FrameId),
    ) -> Result<Outcome, CacheError> {
        let mut held: Vec<FrameId> = Vec::with_capacity(count);
        let mut misses: Vec<u64> = Vec::new();
        for page in first..first + count as u64 {
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
                        self.policy.touch(frame);
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
        }
        for (index, &frame) in held.iter().enumerate() {
            copy(first + index as u64, frame);
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
        // SAFETY: the frames are pinned, so no writer touches them.
        let buffers: Vec<&[u8]> = batch
            .iter()
            .map(|v| unsafe { self.frames.bytes(v.0) })
            .collect();
        let result = self.backing.write_pages(&pages, &buffers);
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

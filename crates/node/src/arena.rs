//! The arena: the node's capacity for pages, counted in fixed-size segments.
//!
//! Each region keeps its pages in memory of its own (see `region_memory`),
//! so that a co-located client can be handed exactly the regions it may
//! read; the arena is the one place that counts how many segments all
//! regions hold together, and refuses a segment beyond the node's capacity
//! (`OutOfMemory`).
//!
//! With a bulk tier (see `bulk`), the arena also holds it, and a segment
//! asked for when RAM is full is made room for by paging a cold segment out
//! ([`Arena::reserve`], through the node's pager); out of memory is then
//! reported only when both tiers are full.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use crate::bulk::BulkStore;
use crate::bulk_reads::ReadPool;
use crate::error::NodeError;
use crate::region::Region;

/// Segments of RAM below which a node keeps no cache of hot bulk-tier
/// blocks (64 MiB in segments of 2 MiB).
pub const CACHE_SEGMENTS_MIN: u64 = 32;

/// Times [`Arena::reserve`] pages a segment out for room before it gives up.
const RECLAIM_TRIES: usize = 16;

/// Pages one cold segment out to the bulk tier; `Ok(false)` when none could
/// be.
pub type Reclaimer = Box<dyn Fn() -> Result<bool, NodeError> + Send + Sync>;

/// The node's page capacity; see the module documentation.
pub struct Arena {
    /// Bytes of segments.
    capacity_bytes: u64,
    segment_bytes: usize,
    segments: u64,
    used: AtomicU64,
    bulk: Option<BulkStore>,
    /// Reads the bulk tier for connections (see `bulk_reads`).
    reads: Option<ReadPool>,
    reclaimer: OnceLock<Reclaimer>,
    /// Every region whose segments the arena counts, for the pager.
    regions: Mutex<Vec<Weak<Region>>>,
    paged_out: AtomicU64,
    paged_in: AtomicU64,
}

/// A segment's worth of RAM, counted; given back when dropped unless
/// [`Reservation::keep`] says it is now in use.
#[must_use = "a reservation is given back when dropped"]
pub struct Reservation<'a> {
    arena: Option<&'a Arena>,
}

impl Reservation<'_> {
    /// The segment is in use: it stays counted until [`Arena::release`].
    pub fn keep(mut self) {
        self.arena = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(arena) = self.arena {
            arena.release();
        }
    }
}

impl Arena {
    /// A capacity of `capacity_bytes` (rounded down to whole segments) in
    /// segments of `segment_bytes` each.
    pub fn new(capacity_bytes: u64, segment_bytes: u64) -> Result<Arena, NodeError> {
        assert!(segment_bytes.is_power_of_two());
        let segments = capacity_bytes / segment_bytes;
        if segments == 0 {
            return Err(NodeError::Config(format!(
                "capacity {capacity_bytes} bytes is less than one segment of {segment_bytes} bytes"
            )));
        }
        if segments > u32::MAX as u64 {
            return Err(NodeError::Config(format!(
                "capacity {capacity_bytes} bytes is too large"
            )));
        }
        Ok(Arena {
            capacity_bytes: segments * segment_bytes,
            segment_bytes: segment_bytes as usize,
            segments,
            used: AtomicU64::new(0),
            bulk: None,
            reads: None,
            reclaimer: OnceLock::new(),
            regions: Mutex::new(Vec::new()),
            paged_out: AtomicU64::new(0),
            paged_in: AtomicU64::new(0),
        })
    }

    /// The arena with a bulk tier behind it, `read_threads` threads to read
    /// it for connections (0: they read it themselves), and a cache of hot
    /// blocks of `cache_bytes` (whole segments, at most half the RAM, none
    /// below [`CACHE_SEGMENTS_MIN`]) taken from the RAM, where it counts as
    /// used.
    pub fn with_bulk(
        mut self,
        mut bulk: BulkStore,
        read_threads: usize,
        cache_bytes: u64,
    ) -> Arena {
        // A small RAM keeps every segment for pages (write batches pin
        // theirs): no cache below `CACHE_SEGMENTS_MIN`.
        let cache_segments = if self.segments < CACHE_SEGMENTS_MIN {
            0
        } else {
            (cache_bytes / self.segment_bytes as u64).min(self.segments / 2)
        };
        bulk.set_cache(cache_segments as usize * (self.segment_bytes / crate::bulk::BLOCK_BYTES));
        self.used.store(cache_segments, Ordering::Relaxed);
        self.bulk = Some(bulk);
        self.reads = ReadPool::start(read_threads);
        self
    }

    /// The threads that read the bulk tier for connections, if the node has
    /// a bulk tier (and they could start).
    pub(crate) fn reads(&self) -> Option<&ReadPool> {
        self.reads.as_ref()
    }

    /// The bulk tier, if the node has one.
    pub fn bulk(&self) -> Option<&BulkStore> {
        self.bulk.as_ref()
    }

    /// Sets what makes room when RAM is full (the node's pager), once.
    pub fn set_reclaimer(&self, reclaimer: Reclaimer) {
        let _ = self.reclaimer.set(reclaimer);
    }

    /// Records a region whose segments the arena counts (the pager looks
    /// for cold segments among them).
    pub fn register(&self, region: &Arc<Region>) {
        let mut regions = self.regions.lock();
        regions.retain(|region| region.strong_count() > 0);
        regions.push(Arc::downgrade(region));
    }

    /// The regions alive now.
    pub fn regions(&self) -> Vec<Arc<Region>> {
        self.regions
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Counts a segment paged out to the bulk tier, or back in.
    pub fn count_paging(&self, out: bool) {
        let counter = if out { &self.paged_out } else { &self.paged_in };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Segments paged out to the bulk tier, and back in, since the start.
    pub fn paging(&self) -> (u64, u64) {
        (
            self.paged_out.load(Ordering::Relaxed),
            self.paged_in.load(Ordering::Relaxed),
        )
    }

    /// Segments of RAM in all.
    pub fn segments(&self) -> u64 {
        self.segments
    }

    /// Segments of RAM in use.
    pub fn used_segments(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts one more segment, paging cold segments out to the bulk tier
    /// while RAM is full. The caller must hold no segment's lock (the pager
    /// takes others'). `OutOfMemory` without a bulk tier; `TiersFull` when
    /// nothing more could be paged out.
    pub fn reserve(&self) -> Result<Reservation<'_>, NodeError> {
        let mut tries = 0;
        loop {
            match self.allocate() {
                Ok(()) => return Ok(Reservation { arena: Some(self) }),
                Err(error) => {
                    let (Some(bulk), Some(reclaim)) = (&self.bulk, self.reclaimer.get()) else {
                        return Err(error);
                    };
                    tries += 1;
                    let freed = tries <= RECLAIM_TRIES && reclaim()?;
                    if !freed {
                        if let Some(reason) = bulk.failure() {
                            return Err(NodeError::BulkFailed(reason));
                        }
                        let stat = bulk.stat();
                        if stat.used_bytes + self.segment_bytes as u64 <= stat.capacity_bytes {
                            // The bulk tier has room: every segment in RAM
                            // is pinned by a write in progress.
                            return Err(error);
                        }
                        return Err(NodeError::TiersFull {
                            ram_bytes: self.capacity_bytes,
                            bulk_bytes: stat.capacity_bytes,
                        });
                    }
                }
            }
        }
    }

    /// Bytes per segment.
    pub fn segment_bytes(&self) -> usize {
        self.segment_bytes
    }

    /// Total capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes in allocated segments.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed) * self.segment_bytes as u64
    }

    /// Counts one more segment; `OutOfMemory` if the capacity is used up.
    pub fn allocate(&self) -> Result<(), NodeError> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used < self.segments).then_some(used + 1)
            })
            .map(|_| ())
            .map_err(|_| NodeError::OutOfMemory {
                capacity_bytes: self.capacity_bytes,
                segments: self.segments,
                segment_bytes: self.segment_bytes as u64,
            })
    }

    /// Counts one segment less.
    pub fn release(&self) {
        let before = self.used.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "released more segments than were allocated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the capacity bound: segments are counted up to capacity, and a
    // released one can be allocated again.
    #[test]
    fn allocates_up_to_capacity() {
        let arena = Arena::new(3 * 4096, 4096).unwrap();
        for _ in 0..3 {
            arena.allocate().unwrap();
        }
        assert!(matches!(
            arena.allocate(),
            Err(NodeError::OutOfMemory { .. })
        ));
        assert_eq!(arena.used_bytes(), 3 * 4096);
        arena.release();
        arena.allocate().unwrap();
        assert_eq!(arena.used_bytes(), 3 * 4096);
    }
}

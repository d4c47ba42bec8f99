//! Cache counters. Hits are counted on striped, cache-line-padded counters so
//! that threads hitting in parallel do not contend on one line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter split over several cache lines; see the module documentation.
pub struct StripedCounter {
    stripes: [Padded; STRIPES],
}

impl Default for StripedCounter {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = Cell::new(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES);
}

impl StripedCounter {
    /// A counter at zero.
    pub fn new() -> StripedCounter {
        StripedCounter {
            stripes: Default::default(),
        }
    }

    /// Adds one.
    #[inline]
    pub fn increment(&self) {
        let stripe = STRIPE.with(|s| s.get());
        self.stripes[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `count`.
    #[inline]
    pub fn add(&self, count: u64) {
        let stripe = STRIPE.with(|s| s.get());
        self.stripes[stripe].0.fetch_add(count, Ordering::Relaxed);
    }

    /// The total.
    pub fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// What a cache has done since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Frames (page slots) in the cache.
    pub frames: u64,
    /// Page accesses served from the cache.
    pub hits: u64,
    /// Page accesses that had to take a frame (and usually fetch).
    pub misses: u64,
    /// Pages evicted.
    pub evictions: u64,
    /// Pages fetched from the backing store.
    pub pages_fetched: u64,
    /// Pages written back to the backing store.
    pub pages_written_back: u64,
    /// Pages read ahead (sent).
    pub prefetch_issued: u64,
    /// Read-ahead pages used after they were installed.
    pub prefetch_used: u64,
    /// Read-ahead pages not installed: past their deadline, or the page was
    /// fetched on demand or written back meanwhile.
    pub prefetch_late: u64,
    /// Read-ahead pages evicted before any use.
    pub prefetch_wasted: u64,
    /// Read-ahead pages whose read failed (or could not be sent).
    pub prefetch_failed: u64,
    /// Offsets a reference extractor gave that lie outside the region
    /// (ignored).
    pub references_invalid: u64,
}

impl CacheStats {
    /// Hits over all page accesses; 0 when there were none.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

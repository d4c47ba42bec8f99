//! The page table: page number to frame, lock-free for lookups.
//!
//! One flat array with an entry per page of the region, in a mapping the
//! kernel backs as it is first touched (with huge pages where it can, see
//! [`crate::huge`]): a lookup is one load, and a region far larger than the
//! cache costs only the stretches of the table its accesses reach. An entry
//! is 0 when the page is not resident, or the frame id plus one.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::huge::HugeArray;
use crate::policy::FrameId;

/// Page number to frame; see the module documentation.
pub struct PageTable {
    entries: HugeArray<AtomicU32>,
}

impl PageTable {
    /// A table for `pages` pages, all absent.
    pub fn new(pages: u64) -> PageTable {
        let pages = usize::try_from(pages).expect("the region's pages fit the address space");
        PageTable {
            entries: HugeArray::zeroed(pages),
        }
    }

    /// The frame holding `page`, if any. The answer may be stale by the time
    /// it is used; callers confirm it against the frame's own page number.
    #[inline]
    pub fn get(&self, page: u64) -> Option<FrameId> {
        debug_assert!(page < self.entries.len() as u64);
        match self.entries[page as usize].load(Ordering::Acquire) {
            0 => None,
            value => Some(value - 1),
        }
    }

    fn entry(&self, page: u64) -> &AtomicU32 {
        assert!(
            page < self.entries.len() as u64,
            "page {page} beyond the table"
        );
        &self.entries[page as usize]
    }

    /// Maps `page` to `frame` if the page is absent; false if it is present.
    pub fn install(&self, page: u64, frame: FrameId) -> bool {
        self.entry(page)
            .compare_exchange(0, frame + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Unmaps `page`, which must be mapped to `frame`.
    pub fn remove(&self, page: u64, frame: FrameId) {
        let removed =
            self.entry(page)
                .compare_exchange(frame + 1, 0, Ordering::AcqRel, Ordering::Acquire);
        assert!(
            removed.is_ok(),
            "page {page} was not mapped to frame {frame}: {removed:?}"
        );
    }
}

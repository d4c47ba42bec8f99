//! The page table: page number to frame, lock-free for lookups.
//!
//! Two levels: a fixed array of leaf pointers, one per 1,024 pages, and leaves
//! of 1,024 entries allocated on first use. An entry is 0 when the page is not
//! resident, or the frame id plus one. A region far larger than the cache costs
//! only the top array (8 bytes per 1,024 pages) plus the leaves it touches.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use crate::policy::FrameId;

const LEAF_BITS: u32 = 10;
const LEAF_ENTRIES: usize = 1 << LEAF_BITS;

struct Leaf {
    entries: [AtomicU32; LEAF_ENTRIES],
}

/// Page number to frame; see the module documentation.
pub struct PageTable {
    leaves: Box<[AtomicPtr<Leaf>]>,
    pages: u64,
}

impl PageTable {
    /// A table for `pages` pages, all absent.
    pub fn new(pages: u64) -> PageTable {
        let leaf_count = pages.div_ceil(LEAF_ENTRIES as u64) as usize;
        PageTable {
            leaves: (0..leaf_count)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
            pages,
        }
    }

    /// The frame holding `page`, if any. The answer may be stale by the time
    /// it is used; callers confirm it against the frame's own page number.
    #[inline]
    pub fn get(&self, page: u64) -> Option<FrameId> {
        debug_assert!(page < self.pages);
        let leaf = self.leaves[(page >> LEAF_BITS) as usize].load(Ordering::Acquire);
        if leaf.is_null() {
            return None;
        }
        // SAFETY: leaves are never freed while the table lives.
        let entry = unsafe { &(*leaf).entries[(page as usize) & (LEAF_ENTRIES - 1)] };
        match entry.load(Ordering::Acquire) {
            0 => None,
            value => Some(value - 1),
        }
    }

    fn entry(&self, page: u64) -> &AtomicU32 {
        assert!(page < self.pages, "page {page} beyond the table");
        let slot = &self.leaves[(page >> LEAF_BITS) as usize];
        let mut leaf = slot.load(Ordering::Acquire);
        if leaf.is_null() {
            let fresh = Box::into_raw(Box::new(Leaf {
                entries: [const { AtomicU32::new(0) }; LEAF_ENTRIES],
            }));
            match slot.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => leaf = fresh,
                Err(existing) => {
                    // SAFETY: `fresh` was never shared.
                    drop(unsafe { Box::from_raw(fresh) });
                    leaf = existing;
                }
            }
        }
        // SAFETY: leaves are never freed while the table lives.
        unsafe { &(*leaf).entries[(page as usize) & (LEAF_ENTRIES - 1)] }
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

impl Drop for PageTable {
    fn drop(&mut self) {
        for slot in self.leaves.iter_mut() {
            let leaf = *slot.get_mut();
            if !leaf.is_null() {
                // SAFETY: each leaf was created by Box::into_raw and is freed
                // once, here, when no reference can remain.
                drop(unsafe { Box::from_raw(leaf) });
            }
        }
    }
}

//! The arena: the node's RAM for pages, one anonymous mapping divided into
//! fixed-size segments, with a free list.
//!
//! The mapping is reserved at start but the kernel backs it with memory only
//! when a segment is first written, and a freed segment is handed back to the
//! kernel (`MADV_DONTNEED`), which also makes it read as zeros when reused.
//! A segment is backed with memory in one call when it is allocated
//! (`MADV_POPULATE_WRITE`) rather than by a page fault per 4 KiB page as it
//! is first touched: loading a baseline into fresh segments spent most of its
//! extra time in those faults. Segments are aligned to their size.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::NodeError;

/// `madvise` advice that backs a range with memory at once (Linux 5.14).
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Index of a segment in the arena.
pub type SegmentSlot = u32;

/// The node's page RAM; see the module documentation.
pub struct Arena {
    /// The first segment, aligned to the segment size.
    base: NonNull<u8>,
    /// The whole mapping, as mmap returned it (for munmap).
    mapping: NonNull<u8>,
    mapping_bytes: usize,
    /// Bytes of segments.
    capacity_bytes: usize,
    segment_bytes: usize,
    segments: u32,
    free: Mutex<Vec<SegmentSlot>>,
    used: AtomicU64,
}

// SAFETY: the arena hands out raw access to disjoint segments; callers
// (regions) guard each segment's bytes with that segment's lock, so the
// mapping itself is shared only as an address range.
unsafe impl Send for Arena {}
// SAFETY: see `Send`; every method is safe to call from several threads.
unsafe impl Sync for Arena {}

impl Arena {
    /// Reserves `capacity_bytes` (rounded down to whole segments) of address
    /// space for segments of `segment_bytes` each.
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
        let capacity_bytes = (segments * segment_bytes) as usize;
        // One segment more than needed, so the segments can start aligned.
        let mapping_bytes = capacity_bytes + segment_bytes as usize;
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked before use.
        let pointer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if pointer == libc::MAP_FAILED {
            return Err(NodeError::io(
                format!("reserving {mapping_bytes} bytes of address space for the arena"),
                std::io::Error::last_os_error(),
            ));
        }
        let mapping = NonNull::new(pointer.cast::<u8>()).expect("mmap returned null");
        let misalignment = (pointer as usize) % segment_bytes as usize;
        let skip = if misalignment == 0 {
            0
        } else {
            segment_bytes as usize - misalignment
        };
        // SAFETY: skip < segment_bytes, inside the mapping.
        let base = unsafe { NonNull::new_unchecked(mapping.as_ptr().add(skip)) };

        // Hand out low slots first, so a lightly used node touches little.
        let free = (0..segments as u32).rev().collect();
        Ok(Arena {
            base,
            mapping,
            mapping_bytes,
            capacity_bytes,
            segment_bytes: segment_bytes as usize,
            segments: segments as u32,
            free: Mutex::new(free),
            used: AtomicU64::new(0),
        })
    }

    /// Bytes per segment.
    pub fn segment_bytes(&self) -> usize {
        self.segment_bytes
    }

    /// Total capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes as u64
    }

    /// Bytes in allocated segments.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed) * self.segment_bytes as u64
    }

    /// Takes a free segment, zero-filled; `OutOfMemory` if none is left.
    pub fn allocate(&self) -> Result<SegmentSlot, NodeError> {
        let slot = self.free.lock().pop().ok_or(NodeError::OutOfMemory {
            capacity_bytes: self.capacity_bytes(),
            segments: self.segments as u64,
            segment_bytes: self.segment_bytes as u64,
        })?;
        self.used.fetch_add(1, Ordering::Relaxed);
        // Back the whole segment now, in one call, rather than with a fault
        // per page on first touch. Advice only: where the kernel lacks it
        // (before Linux 5.14) pages are faulted in as they are touched.
        // SAFETY: the range is the segment, inside the mapping.
        unsafe {
            libc::madvise(
                self.segment_pointer(slot).cast(),
                self.segment_bytes,
                MADV_POPULATE_WRITE,
            )
        };
        Ok(slot)
    }

    /// Returns a segment to the free list and its memory to the kernel.
    ///
    /// The caller must hold no reference into the segment.
    pub fn release(&self, slot: SegmentSlot) {
        assert!(slot < self.segments, "segment slot out of range");
        // SAFETY: the range is inside the mapping; MADV_DONTNEED on a private
        // anonymous mapping discards the pages, which read as zeros afterwards.
        let result = unsafe {
            libc::madvise(
                self.segment_pointer(slot).cast(),
                self.segment_bytes,
                libc::MADV_DONTNEED,
            )
        };
        if result != 0 {
            // The memory stays resident and dirty, so zero it by hand: the
            // next owner must read zeros.
            // SAFETY: the caller gave up every reference into the segment.
            unsafe { std::ptr::write_bytes(self.segment_pointer(slot), 0, self.segment_bytes) };
        }
        self.used.fetch_sub(1, Ordering::Relaxed);
        self.free.lock().push(slot);
    }

    /// The first byte of a segment.
    ///
    /// Reading or writing through the pointer is sound only while the caller
    /// holds the segment (allocated to it, and guarded by its lock).
    pub fn segment_pointer(&self, slot: SegmentSlot) -> *mut u8 {
        assert!(slot < self.segments, "segment slot out of range");
        // SAFETY: slot < segments, so the offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(slot as usize * self.segment_bytes) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is
        // unmapped once, here.
        unsafe { libc::munmap(self.mapping.as_ptr().cast(), self.mapping_bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the capacity bound and that a released segment reads as zeros.
    #[test]
    fn allocates_up_to_capacity_and_zeroes_released_segments() {
        let arena = Arena::new(3 * 4096, 4096).unwrap();
        let slots: Vec<_> = (0..3).map(|_| arena.allocate().unwrap()).collect();
        assert!(matches!(
            arena.allocate(),
            Err(NodeError::OutOfMemory { .. })
        ));
        assert_eq!(arena.used_bytes(), 3 * 4096);
        // SAFETY: slot 0 is allocated to this test and nothing else touches it.
        unsafe { std::ptr::write_bytes(arena.segment_pointer(slots[0]), 0xab, 4096) };
        arena.release(slots[0]);
        let again = arena.allocate().unwrap();
        assert_eq!(again, slots[0]);
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(arena.segment_pointer(again), 4096) };
        assert!(bytes.iter().all(|&b| b == 0));
    }
}

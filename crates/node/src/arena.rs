//! The arena: the node's capacity for pages, counted in fixed-size segments.
//!
//! Each region keeps its pages in memory of its own (see `region_memory`),
//! so that a co-located client can be handed exactly the regions it may
//! read; the arena is the one place that counts how many segments all
//! regions hold together, and refuses a segment beyond the node's capacity
//! (`OutOfMemory`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::NodeError;

/// The node's page capacity; see the module documentation.
pub struct Arena {
    /// Bytes of segments.
    capacity_bytes: u64,
    segment_bytes: usize,
    segments: u64,
    used: AtomicU64,
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
        })
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

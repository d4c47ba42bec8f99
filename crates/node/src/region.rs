//! A region's pages on the node: a segment table over the arena.
//!
//! Each table entry is a lock guarding the segment slot it holds (or none).
//! Holding an entry's lock is what gives the right to touch that segment's
//! bytes: readers share it, writers hold it exclusively. A request never holds
//! two entries' locks at once, so there is no lock order to get wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pagoda_wire::RegionInfo;
use pagoda_wire::limits::{BATCH_BYTES_MAX, PAGE_BYTES_MAX, PAGE_BYTES_MIN, REGION_BYTES_MAX};
use pagoda_wire::message::PageList;
use parking_lot::RwLock;

use crate::arena::{Arena, SegmentSlot};
use crate::error::NodeError;

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

/// A region held by the node.
pub struct Region {
    info: RegionInfo,
    arena: Arc<Arena>,
    segments: Box<[RwLock<SegmentSlot>]>,
    pages_per_segment: u64,
    segments_allocated: AtomicU64,
    pages_read: AtomicU64,
    pages_written: AtomicU64,
}

impl Region {
    /// A region with no segments allocated: every page reads as zeros.
    pub fn new(info: RegionInfo, arena: Arc<Arena>) -> Result<Region, NodeError> {
        validate_shape(info.size, info.page_size)?;
        let segment_bytes = arena.segment_bytes() as u64;
        assert!(segment_bytes >= info.page_size as u64);
        let segment_count = info.size.div_ceil(segment_bytes);
        Ok(Region {
            pages_per_segment: segment_bytes / info.page_size as u64,
            segments: (0..segment_count)
                .map(|_| RwLock::new(NO_SEGMENT))
                .collect(),
            info,
            arena,
            segments_allocated: AtomicU64::new(0),
            pages_read: AtomicU64::new(0),
            pages_written: AtomicU64::new(0),
        })
    }

    /// The region's description.
    pub fn info(&self) -> &RegionInfo {
        &self.info
    }

    /// Number of pages.
    pub fn page_count(&self) -> u64 {
        self.info.size / self.info.page_size as u64
    }

    /// Segments currently holding RAM.
    pub fn segments_allocated(&self) -> u64 {
        self.segments_allocated.load(Ordering::Relaxed)
    }

    /// Pages read since the node started.
    pub fn pages_read(&self) -> u64 {
        self.pages_read.load(Ordering::Relaxed)
    }

    /// Pages written since the node started.
    pub fn pages_written(&self) -> u64 {
        self.pages_written.load(Ordering::Relaxed)
    }

    fn check_pages(&self, pages: PageList<'_>) -> Result<(), NodeError> {
        let count = self.page_count();
        match pages.iter().find(|&page| page >= count) {
            Some(page) => Err(NodeError::OutOfRange { page, pages: count }),
            None => Ok(()),
        }
    }

    fn locate(&self, page: u64) -> (usize, usize) {
        let segment = (page / self.pages_per_segment) as usize;
        let offset = (page % self.pages_per_segment) as usize * self.info.page_size as usize;
        (segment, offset)
    }

    /// Appends the named pages to `out`, in order. Checks every page first, so
    /// a request with a bad page appends nothing.
    pub fn read_pages(&self, pages: PageList<'_>, out: &mut Vec<u8>) -> Result<(), NodeError> {
        self.check_pages(pages)?;
        let page_size = self.info.page_size as usize;
        // The page count is bounded by the wire format, but not the bytes it
        // asks for: refuse before reserving anything.
        let reply_bytes = pages.len() * page_size;
        if reply_bytes > BATCH_BYTES_MAX {
            return Err(NodeError::InvalidArgument(format!(
                "read of {} pages of {page_size} bytes exceeds the batch limit of {BATCH_BYTES_MAX} bytes",
                pages.len()
            )));
        }
        out.reserve(reply_bytes);
        for page in pages.iter() {
            let (segment, offset) = self.locate(page);
            let slot = self.segments[segment].read();
            if *slot == NO_SEGMENT {
                out.resize(out.len() + page_size, 0);
            } else {
                // SAFETY: the slot is allocated to this region and the read
                // lock excludes writers; offset + page_size <= segment_bytes
                // because pages never straddle segments.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        self.arena.segment_pointer(*slot).add(offset),
                        page_size,
                    )
                };
                out.extend_from_slice(bytes);
            }
        }
        self.pages_read
            .fetch_add(pages.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the named pages from `data`. Checks every page and allocates
    /// every segment the batch needs before copying anything, so a batch that
    /// fails (out of range, out of memory) changes no page's contents.
    pub fn write_pages(&self, pages: PageList<'_>, data: &[u8]) -> Result<(), NodeError> {
        self.check_pages(pages)?;
        let page_size = self.info.page_size as usize;
        if data.len() != pages.len() * page_size {
            return Err(NodeError::InvalidArgument(format!(
                "write of {} pages carries {} bytes, expected {}",
                pages.len(),
                data.len(),
                pages.len() * page_size
            )));
        }
        for page in pages.iter() {
            let (segment, _) = self.locate(page);
            if *self.segments[segment].read() != NO_SEGMENT {
                continue;
            }
            let mut slot = self.segments[segment].write();
            if *slot == NO_SEGMENT {
                *slot = self.arena.allocate()?;
                self.segments_allocated.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (page, bytes) in pages.iter().zip(data.chunks_exact(page_size)) {
            let (segment, offset) = self.locate(page);
            let slot = self.segments[segment].write();
            assert_ne!(*slot, NO_SEGMENT, "segment allocated above was released");
            // SAFETY: the slot is allocated to this region, the write lock
            // makes this the only access, and the page lies inside it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.arena.segment_pointer(*slot).add(offset),
                    page_size,
                );
            }
        }
        self.pages_written
            .fetch_add(pages.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        for segment in self.segments.iter_mut() {
            let slot = *segment.get_mut();
            if slot != NO_SEGMENT {
                self.arena.release(slot);
            }
        }
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
        (arena.clone(), Region::new(info, arena).unwrap())
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

//! A backing store in a `Vec<u8>`, for tests and benchmarks of the cache
//! without a network. It can be told to fail, to test error paths.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::cache::{Backing, BackingError};

/// A region's pages in memory; see the module documentation.
pub struct MemoryBacking {
    bytes: RwLock<Vec<u8>>,
    page_size: usize,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
    /// Calls to `read_pages`.
    pub read_calls: AtomicU64,
    /// Calls to `write_pages`.
    pub write_calls: AtomicU64,
}

impl MemoryBacking {
    /// `region_bytes` of zeros in pages of `page_size`.
    pub fn new(region_bytes: usize, page_size: usize) -> MemoryBacking {
        MemoryBacking {
            bytes: RwLock::new(vec![0; region_bytes]),
            page_size,
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            read_calls: AtomicU64::new(0),
            write_calls: AtomicU64::new(0),
        }
    }

    /// Makes later writes fail (or succeed again).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Makes later reads fail (or succeed again).
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// A copy of the stored bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().clone()
    }
}

impl Backing for MemoryBacking {
    fn read_pages(&self, pages: &[u64], buffers: &mut [&mut [u8]]) -> Result<(), BackingError> {
        self.read_calls.fetch_add(1, Ordering::Relaxed);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err("injected read failure".into());
        }
        let bytes = self.bytes.read();
        for (&page, buffer) in pages.iter().zip(buffers.iter_mut()) {
            let start = page as usize * self.page_size;
            buffer.copy_from_slice(&bytes[start..start + self.page_size]);
        }
        Ok(())
    }

    fn write_pages(&self, pages: &[u64], buffers: &[&[u8]]) -> Result<(), BackingError> {
        self.write_calls.fetch_add(1, Ordering::Relaxed);
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err("injected write failure".into());
        }
        let mut bytes = self.bytes.write();
        for (&page, buffer) in pages.iter().zip(buffers) {
            let start = page as usize * self.page_size;
            bytes[start..start + self.page_size].copy_from_slice(buffer);
        }
        Ok(())
    }
}

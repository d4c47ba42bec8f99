//! A backing store in a `Vec<u8>`, for tests and benchmarks of the cache
//! without a network. It can be told to fail, to test error paths.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::cache::{Backing, BackingError, ReadAhead};

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
    /// Calls to `start_read`.
    pub read_ahead_calls: AtomicU64,
    /// How long a read-ahead takes to arrive; `None`: it arrives at once.
    read_ahead_delay: Mutex<Option<Duration>>,
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
            read_ahead_calls: AtomicU64::new(0),
            read_ahead_delay: Mutex::new(None),
        }
    }

    /// Makes read-aheads arrive `delay` after they are sent (their contents
    /// are those at the time they were sent, as a node's reply would be).
    pub fn set_read_ahead_delay(&self, delay: Option<Duration>) {
        *self.read_ahead_delay.lock() = delay;
    }

    /// Makes later writes fail (or succeed again).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Makes later reads fail (or succeed again).
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    fn read_into(&self, pages: &[u64], buffers: &mut [&mut [u8]]) -> Result<(), BackingError> {
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

    /// A copy of the stored bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().clone()
    }
}

impl Backing for MemoryBacking {
    fn read_pages(&self, pages: &[u64], buffers: &mut [&mut [u8]]) -> Result<(), BackingError> {
        self.read_calls.fetch_add(1, Ordering::Relaxed);
        self.read_into(pages, buffers)
    }

    fn start_read(
        &self,
        pages: &[u64],
        mut buffer: Vec<u8>,
    ) -> Result<Box<dyn ReadAhead>, BackingError> {
        self.read_ahead_calls.fetch_add(1, Ordering::Relaxed);
        let read = {
            let mut buffers: Vec<&mut [u8]> = buffer.chunks_mut(self.page_size).collect();
            self.read_into(pages, &mut buffers)
        };
        let result = read.map(|()| buffer);
        let arrives = Instant::now() + self.read_ahead_delay.lock().unwrap_or_default();
        Ok(Box::new(Delayed {
            result: Some(result),
            arrives,
        }))
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

/// A read-ahead of a [`MemoryBacking`]: its contents as of when it was sent,
/// handed out once its delay has passed.
struct Delayed {
    result: Option<Result<Vec<u8>, BackingError>>,
    arrives: Instant,
}

impl ReadAhead for Delayed {
    fn poll(&mut self, _receive: bool) -> Option<Result<Vec<u8>, BackingError>> {
        if Instant::now() < self.arrives {
            return None;
        }
        self.result.take()
    }
}

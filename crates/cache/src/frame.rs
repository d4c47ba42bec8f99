//! Frames: the page-sized slots of the cache, and the state word that makes
//! each one a tiny reader-writer lock plus flags.
//!
//! ```text
//! bits 0..32  pins       readers copying out of the frame
//! bit  32     EXCLUSIVE  one thread owns the frame: loading, writing or evicting it
//! bit  33     VALID      the frame holds its page's contents
//! bit  34     DIRTY      the contents differ from the backing store
//! bit  35     PREFETCHED read ahead and not used yet
//! bit  36     REFERENCED used since the eviction policy last looked
//! ```
//!
//! Readers add a pin only while EXCLUSIVE is clear; EXCLUSIVE is taken only
//! when there are no pins. While a thread holds EXCLUSIVE no other thread
//! changes the word except for REFERENCED (the policy's access bit, cleared
//! by its sweeps at any time), so the owner may store it outright: a bit the
//! store loses or restores costs the policy one access's worth of accuracy,
//! never correctness.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::huge::{HugeArray, Zeroed};

/// The page number of a frame that holds no page.
pub const NO_PAGE: u64 = u64::MAX;

pub const PINS: u64 = (1 << 32) - 1;
pub const EXCLUSIVE: u64 = 1 << 32;
pub const VALID: u64 = 1 << 33;
pub const DIRTY: u64 = 1 << 34;
pub const PREFETCHED: u64 = 1 << 35;
pub const REFERENCED: u64 = 1 << 36;

/// One frame's metadata.
pub struct Frame {
    /// The page the frame holds, or `NO_PAGE`. Written only by the owner of
    /// EXCLUSIVE.
    pub page: AtomicU64,
    /// See the module documentation.
    pub state: AtomicU64,
}

/// The outcome of trying to pin or lock a frame.
pub enum Attempt {
    /// Done.
    Acquired,
    /// Another thread owns the frame; try again later.
    Busy,
    /// The frame no longer holds the page.
    Stale,
}

// SAFETY: two atomics; all zeros is page 0, state 0 (the page is set to
// `NO_PAGE` before the frame is used), and nothing needs dropping.
unsafe impl Zeroed for Frame {}

impl Frame {
    /// Adds a reader pin if the frame holds `page` and nobody owns it.
    #[inline]
    pub fn pin_shared(&self, page: u64) -> Attempt {
        self.pin(page, false)
    }

    /// [`Frame::pin_shared`] for a hit: the same compare-and-swap also sets
    /// REFERENCED, the policy's access bit, unless the page was read ahead
    /// and this is its first use (which does not count as a reference).
    #[inline]
    pub fn pin_referencing(&self, page: u64) -> Attempt {
        self.pin(page, true)
    }

    #[inline]
    fn pin(&self, page: u64, reference: bool) -> Attempt {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & EXCLUSIVE != 0 {
                return Attempt::Busy;
            }
            if state & VALID == 0 {
                return Attempt::Stale;
            }
            debug_assert!(state & PINS < PINS, "pin count overflow");
            let referenced = if reference && state & PREFETCHED == 0 {
                REFERENCED
            } else {
                0
            };
            match self.state.compare_exchange_weak(
                state,
                (state + 1) | referenced,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        // The frame may have been evicted and reused between the table lookup
        // and the pin; the pin keeps it from changing now, so check.
        if self.page.load(Ordering::Acquire) != page {
            self.unpin_shared();
            return Attempt::Stale;
        }
        Attempt::Acquired
    }

    /// Drops a reader pin.
    #[inline]
    pub fn unpin_shared(&self) {
        let previous = self.state.fetch_sub(1, Ordering::Release);
        debug_assert!(previous & PINS > 0, "unpin without a pin");
    }

    /// Takes EXCLUSIVE if the frame holds `page`, is valid and unpinned.
    pub fn lock_exclusive(&self, page: u64) -> Attempt {
        let state = self.state.load(Ordering::Acquire);
        if state & EXCLUSIVE != 0 || state & PINS != 0 {
            return Attempt::Busy;
        }
        if state & VALID == 0 {
            return Attempt::Stale;
        }
        if self
            .state
            .compare_exchange(
                state,
                state | EXCLUSIVE,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Attempt::Busy;
        }
        if self.page.load(Ordering::Acquire) != page {
            self.state.store(state, Ordering::Release);
            return Attempt::Stale;
        }
        Attempt::Acquired
    }

    /// Takes EXCLUSIVE of a valid, unpinned frame for eviction, whatever page
    /// it holds. Returns the state before, or None if it is busy.
    pub fn claim(&self) -> Option<u64> {
        let state = self.state.load(Ordering::Acquire);
        if state & (EXCLUSIVE | PINS) != 0 || state & VALID == 0 {
            return None;
        }
        self.state
            .compare_exchange(
                state,
                state | EXCLUSIVE,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()
    }

    /// Takes EXCLUSIVE of a free frame (state 0), waiting out the brief pins
    /// of readers that looked it up just before it was freed.
    pub fn take_free(&self) {
        let mut spins = 0u32;
        while self
            .state
            .compare_exchange_weak(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            backoff(&mut spins);
        }
    }

    /// Sets the state outright. Only the owner of EXCLUSIVE may call this.
    pub fn set(&self, state: u64) {
        debug_assert!(self.state.load(Ordering::Relaxed) & EXCLUSIVE != 0);
        self.state.store(state, Ordering::Release);
    }
}

/// Waits a little longer each time: spin, then yield, then sleep briefly.
pub fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else if *spins < 256 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// The frames' metadata and their page memory, each an array in huge
/// pages where the kernel allows (see [`crate::huge`]).
pub struct Frames {
    pub meta: Arc<HugeArray<Frame>>,
    memory: HugeArray<u8>,
    page_size: usize,
}

// SAFETY: the memory is shared between threads only under the state-word
// protocol above: bytes of a frame are written only by the owner of its
// EXCLUSIVE bit and read only by it or by pin holders.
unsafe impl Send for Frames {}
// SAFETY: see `Send`.
unsafe impl Sync for Frames {}

impl Frames {
    /// `count` frames of `page_size` bytes.
    pub fn new(count: usize, page_size: usize) -> Frames {
        assert!(count > 0 && page_size.is_power_of_two());
        let bytes = count.checked_mul(page_size).expect("cache size overflows");
        let meta = HugeArray::<Frame>::zeroed(count);
        for frame in meta.iter() {
            frame.page.store(NO_PAGE, Ordering::Relaxed);
        }
        Frames {
            meta: Arc::new(meta),
            memory: HugeArray::zeroed(bytes),
            page_size,
        }
    }

    /// A frame's bytes, for reading. The caller holds a pin or EXCLUSIVE.
    ///
    /// # Safety
    /// No other thread may write the frame for the lifetime of the slice.
    #[inline]
    pub unsafe fn bytes(&self, frame: u32) -> &[u8] {
        // SAFETY: in bounds by construction; exclusion is the caller's promise.
        unsafe {
            std::slice::from_raw_parts(
                self.memory.as_ptr().add(frame as usize * self.page_size),
                self.page_size,
            )
        }
    }

    /// A frame's bytes, for writing. The caller holds EXCLUSIVE.
    ///
    /// # Safety
    /// No other thread may access the frame for the lifetime of the slice.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, frame: u32) -> &mut [u8] {
        // SAFETY: in bounds by construction; exclusion is the caller's promise.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.memory.as_ptr().add(frame as usize * self.page_size),
                self.page_size,
            )
        }
    }
}

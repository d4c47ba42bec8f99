//! Arrays in memory the kernel may back with huge pages.
//!
//! A hit touches the page table's entry for its page, the frame's state word
//! and the frame's bytes. With the cache's arrays in 4 KiB pages, each of
//! those is a TLB miss of its own once the cache spans more than the TLB
//! covers (a few MiB), and the page walk is a chain of cache misses. Mapped
//! with `MADV_HUGEPAGE`, a 2 MiB page covers half a million table entries,
//! 128 Ki frame states or 512 frames, so the TLB covers a cache of many GiB.
//!
//! The mapping is anonymous and private, reserved without commitment
//! (`MAP_NORESERVE`): the kernel backs it as it is first touched, so a page
//! table for a region far larger than the cache costs only the parts its
//! accesses reach. The advice is only advice: where transparent huge pages
//! are off the arrays work the same in 4 KiB pages.

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

/// Types whose all-zero bytes are a valid value (the mapping starts zeroed).
///
/// # Safety
/// The all-zero bit pattern must be a valid value of the type, and the type
/// must need no drop.
pub unsafe trait Zeroed: Sized {}

// SAFETY: zero is a valid integer, and atomics need no drop.
unsafe impl Zeroed for AtomicU32 {}
// SAFETY: as above.
unsafe impl Zeroed for AtomicU64 {}
// SAFETY: as above.
unsafe impl Zeroed for u8 {}
// SAFETY: zero is `false`, and an atomic needs no drop.
unsafe impl Zeroed for AtomicBool {}

/// A fixed-size array of `T` in its own anonymous mapping, zeroed, with
/// huge pages advised; see the module documentation.
pub struct HugeArray<T: Zeroed> {
    pointer: NonNull<T>,
    len: usize,
    bytes: usize,
}

// SAFETY: the array owns its mapping; sharing it is sharing `[T]`.
unsafe impl<T: Zeroed + Send> Send for HugeArray<T> {}
// SAFETY: as above.
unsafe impl<T: Zeroed + Sync> Sync for HugeArray<T> {}

impl<T: Zeroed> HugeArray<T> {
    /// `len` zeroed elements. Panics (like a failed allocation) if the
    /// address space cannot be reserved.
    pub fn zeroed(len: usize) -> HugeArray<T> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("array size overflows")
            .max(1);
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked before use.
        let pointer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if pointer == libc::MAP_FAILED {
            let error = std::io::Error::last_os_error();
            panic!("reserving {bytes} bytes for the page cache: {error}");
        }
        // Advice only: without transparent huge pages (or before 2.6.38)
        // the array is backed in small pages. The mapping's start need not
        // be 2 MiB-aligned; the kernel uses huge pages for the aligned
        // stretches inside it.
        // SAFETY: the range is the mapping just made.
        unsafe { libc::madvise(pointer, bytes, libc::MADV_HUGEPAGE) };
        HugeArray {
            pointer: NonNull::new(pointer.cast::<T>()).expect("mmap returned null"),
            len,
            bytes,
        }
    }

    /// The array's first byte, for memory that is handed out by offset.
    pub fn as_ptr(&self) -> *mut T {
        self.pointer.as_ptr()
    }
}

impl<T: Zeroed> Deref for HugeArray<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `len` elements, zero-initialised (valid by `Zeroed`), live
        // as long as `self`.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.len) }
    }
}

impl<T: Zeroed> Drop for HugeArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `zeroed`; `T` needs no drop.
        unsafe { libc::munmap(self.pointer.as_ptr().cast(), self.bytes) };
    }
}

//! A region's page memory: a sparse memfd of its own (segment `n` at offset
//! `n × segment_bytes`), and a small metadata memfd beside it that a
//! co-located client maps read-only to read pages without asking the node.
//!
//! **Why a file per region.** A co-located client is handed the memory of the
//! regions it may read as file descriptors (see `docs/design.md`, "Co-located
//! access"). One file for the whole arena would expose every region's pages to
//! every such client; a file per region exposes exactly one. The node's
//! capacity is still accounted globally, in segments, by [`crate::arena`].
//!
//! **Thin provisioning.** The data file is sized to the region but holds
//! memory only where segments were allocated; the node maps it in windows of
//! [`WINDOW_BYTES`] as segments in them are first allocated, so address space
//! grows with what is written, not with the region's size. A segment's memory
//! goes back to the kernel with `fallocate(PUNCH_HOLE)`, which frees it even
//! while a client still maps the file.
//!
//! **Metadata, a seqlock per segment.** Reading a hole of a shared memory
//! mapping allocates a page into the file, and a reader in another process
//! must never take a page torn by a write in progress. So the metadata file
//! holds, per segment, a 64-bit version: 0 the segment holds no memory (its
//! pages read as zeros, and a reader must not touch the data file there),
//! [`PAGED_OUT`] (1) the segment's pages are in the node's bulk tier (a
//! reader must ask the node), any other odd value a write in progress, even
//! and non-zero stable. A segment paged back in resumes above the version it
//! had before, so a reader never mistakes one residency for another. The node changes a version
//! only under the segment's lock in the region's table (see `region`), and
//! bumps it around every change to the segment's bytes: writes, recovery
//! loads, restores, and release. The layout (little-endian 64-bit words):
//!
//! | word | meaning                                               |
//! |------|-------------------------------------------------------|
//! | 0    | magic `METADATA_MAGIC`                                |
//! | 1    | layout version (1)                                    |
//! | 2    | state: 0 open, 1 closed (deleted, recovering, damaged) |
//! | 3    | segment size in bytes                                 |
//! | 4    | page size in bytes                                    |
//! | 5    | region size in bytes                                  |
//! | 6    | segment count                                         |
//! | 7    | reserved (0)                                          |
//! | 8 +n | version of segment `n`                                |
//!
//! **Memory model.** The writer side is the kernel's seqcount (and
//! crossbeam's `SeqLock`): store the odd version, a release fence, the data
//! stores, then store the even version with release ordering. The reader in
//! the client loads the version with acquire ordering, copies the page with
//! relaxed atomic 64-bit loads, issues an acquire fence, and loads the version
//! again; equal even versions mean the copy is not torn. Data stores on the
//! node are ordinary copies: within the node the segment's lock excludes
//! every other access, and the client is another process, outside the node's
//! abstract machine; what orders them for the client is the hardware's
//! ordering of the fences above.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use crate::error::NodeError;

/// The metadata file's magic word ("PGDSHM01" little-endian).
pub const METADATA_MAGIC: u64 = u64::from_le_bytes(*b"PGDSHM01");
/// The metadata layout's version.
pub const METADATA_LAYOUT: u64 = 1;
/// Words before the segment versions.
pub const METADATA_HEADER_WORDS: usize = 8;
/// The version of a segment whose pages are in the bulk tier.
pub const PAGED_OUT: u64 = 1;
/// Bytes of the data file the node maps at a time.
pub const WINDOW_BYTES: usize = 1 << 30;

/// `madvise` advice that backs a range with memory at once (Linux 5.14).
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// A region's data and metadata files, mapped; see the module documentation.
pub struct RegionMemory {
    data: OwnedFd,
    data_bytes: usize,
    segment_bytes: usize,
    /// The data file's windows, each mapped on first use.
    windows: Box<[OnceLock<usize>]>,
    metadata: OwnedFd,
    metadata_map: NonNull<AtomicU64>,
    metadata_bytes: usize,
    segment_count: usize,
}

// SAFETY: the mappings are shared as address ranges; every access to a
// segment's bytes is guarded by that segment's lock in the region's table,
// and the metadata words are atomics.
unsafe impl Send for RegionMemory {}
// SAFETY: see `Send`.
unsafe impl Sync for RegionMemory {}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> NodeError {
    move |error| NodeError::io(what, error)
}

fn last_error(what: String) -> NodeError {
    NodeError::io(what, std::io::Error::last_os_error())
}

fn memfd(name: &str, bytes: usize) -> Result<OwnedFd, NodeError> {
    let name = std::ffi::CString::new(name).expect("no NUL in a fixed name");
    // SAFETY: a valid NUL-terminated name; the result is checked.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(last_error("creating a memory file for a region".into()));
    }
    // SAFETY: a fresh descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid descriptor; the result is checked.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) } != 0 {
        return Err(last_error(format!(
            "sizing a region's memory file to {bytes} bytes"
        )));
    }
    // Its size never changes again: a client's mapping can never lose pages
    // under it (SIGBUS) by a shrink.
    let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: a valid descriptor; the result is checked.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(last_error("sealing a region's memory file".into()));
    }
    Ok(fd)
}

fn map(fd: &OwnedFd, offset: usize, bytes: usize) -> Result<NonNull<u8>, NodeError> {
    // SAFETY: a shared mapping of a file this type owns, with no address
    // hint; the result is checked.
    let pointer = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if pointer == libc::MAP_FAILED {
        return Err(last_error(format!(
            "mapping {bytes} bytes of a region's memory file"
        )));
    }
    Ok(NonNull::new(pointer.cast()).expect("mmap returned null"))
}

impl RegionMemory {
    /// Files for a region of `size` bytes, pages of `page_size`, segments of
    /// `segment_bytes`; no memory is allocated until segments are.
    pub fn new(size: u64, page_size: u32, segment_bytes: usize) -> Result<RegionMemory, NodeError> {
        assert!(segment_bytes.is_power_of_two() && segment_bytes <= WINDOW_BYTES);
        let segment_count = size.div_ceil(segment_bytes as u64) as usize;
        let data_bytes = segment_count * segment_bytes;
        let data = memfd("pagoda-region", data_bytes)?;
        let metadata_bytes = (METADATA_HEADER_WORDS + segment_count) * 8;
        let metadata = memfd("pagoda-region-metadata", metadata_bytes)?;
        let metadata_map = map(&metadata, 0, metadata_bytes)?.cast::<AtomicU64>();
        let windows = (0..data_bytes.div_ceil(WINDOW_BYTES))
            .map(|_| OnceLock::new())
            .collect();
        let memory = RegionMemory {
            data,
            data_bytes,
            segment_bytes,
            windows,
            metadata,
            metadata_map,
            metadata_bytes,
            segment_count,
        };
        let header = [
            METADATA_MAGIC,
            METADATA_LAYOUT,
            0,
            segment_bytes as u64,
            page_size as u64,
            size,
            segment_count as u64,
            0,
        ];
        for (index, value) in header.into_iter().enumerate() {
            memory.word(index).store(value, Ordering::Release);
        }
        Ok(memory)
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(
            index < self.metadata_bytes / 8,
            "metadata word out of range"
        );
        // SAFETY: the index is inside the mapping, which lives as long as
        // `self` and is aligned to the page.
        unsafe { &*self.metadata_map.as_ptr().add(index) }
    }

    fn version(&self, segment: usize) -> &AtomicU64 {
        assert!(segment < self.segment_count, "segment out of range");
        self.word(METADATA_HEADER_WORDS + segment)
    }

    /// Maps the window holding `segment` if it is not yet, and backs the
    /// segment with memory; then marks it present (readable by clients) with
    /// a version above `after` (0 for a segment never held; what
    /// [`RegionMemory::page_out`] returned for one paged back in, whose
    /// bytes the caller then writes under [`RegionMemory::begin_write`]).
    /// The caller holds the segment's lock exclusively.
    pub fn allocate(&self, segment: usize, after: u64) -> Result<(), NodeError> {
        self.back(segment)?;
        let version = self.version(segment);
        debug_assert!(matches!(version.load(Ordering::Relaxed), 0 | PAGED_OUT));
        debug_assert!(after.is_multiple_of(2));
        version.store(after + 2, Ordering::Release);
        Ok(())
    }

    /// Like [`RegionMemory::allocate`] for a segment never held, but leaves
    /// it marked as being written (as [`RegionMemory::begin_write`] does):
    /// a segment loaded lazily from the baseline is fresh memory, all zeros,
    /// and no co-located reader may take those for its pages before the
    /// caller has written them and called [`RegionMemory::end_write`]. The
    /// caller holds the segment's claim of the lazy load (no one else
    /// touches the segment until it is published).
    pub fn allocate_for_load(&self, segment: usize) -> Result<(), NodeError> {
        self.back(segment)?;
        let version = self.version(segment);
        debug_assert!(matches!(version.load(Ordering::Relaxed), 0 | PAGED_OUT));
        version.store(3, Ordering::Relaxed);
        fence(Ordering::Release);
        Ok(())
    }

    /// Maps the window holding `segment` if it is not yet, and backs the
    /// segment with memory.
    fn back(&self, segment: usize) -> Result<(), NodeError> {
        let window = segment * self.segment_bytes / WINDOW_BYTES;
        if self.windows[window].get().is_none() {
            let offset = window * WINDOW_BYTES;
            let bytes = (self.data_bytes - offset).min(WINDOW_BYTES);
            let pointer = map(&self.data, offset, bytes)?;
            if let Err(ours) = self.windows[window].set(pointer.as_ptr() as usize) {
                // Another segment's allocation mapped it first.
                // SAFETY: our mapping, never handed out.
                unsafe { libc::munmap(ours as *mut libc::c_void, bytes) };
            }
        }
        // Back the whole segment now, in one call, rather than with a fault
        // per page on first touch. Advice only: where the kernel lacks it
        // (before Linux 5.14) pages are faulted in as they are touched.
        // SAFETY: the range is the segment, inside the window's mapping.
        unsafe {
            libc::madvise(
                self.segment_pointer(segment).cast(),
                self.segment_bytes,
                MADV_POPULATE_WRITE,
            )
        };
        Ok(())
    }

    /// Marks a segment that holds no memory as paged out (restored from the
    /// bulk tier at start, or not yet loaded from the baseline): co-located
    /// clients ask the node for its pages rather than read zeros.
    pub fn mark_paged_out(&self, segment: usize) {
        let version = self.version(segment);
        debug_assert_eq!(version.load(Ordering::Relaxed), 0);
        version.store(PAGED_OUT, Ordering::Release);
    }

    /// Marks a paged-out segment unwritten again (its restored pages were
    /// forgotten).
    pub fn mark_unwritten(&self, segment: usize) {
        self.version(segment).store(0, Ordering::Release);
    }

    /// Gives a segment's memory back to the kernel because its pages went to
    /// the bulk tier: clients ask the node for them from now on. Returns the
    /// version it had, for [`RegionMemory::allocate`] to resume above. The
    /// caller holds the segment's lock exclusively and no reference into it.
    pub fn page_out(&self, segment: usize) -> u64 {
        let version = self.version(segment);
        let old = version.load(Ordering::Relaxed);
        debug_assert!(
            old >= 2 && old.is_multiple_of(2),
            "segment {segment} version {old}"
        );
        version.store(old | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.punch(segment * self.segment_bytes, self.segment_bytes);
        version.store(PAGED_OUT, Ordering::Release);
        old
    }

    /// Gives a segment's memory back to the kernel; its pages read as zeros
    /// afterwards, and clients read them so without touching the file. The
    /// caller holds the segment's lock exclusively and no reference into it.
    pub fn release(&self, segment: usize) {
        let version = self.version(segment);
        let old = version.load(Ordering::Relaxed);
        // Odd first: a client that read the version before sees it change.
        version.store(old | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.punch(segment * self.segment_bytes, self.segment_bytes);
        version.store(0, Ordering::Release);
    }

    fn punch(&self, offset: usize, bytes: usize) {
        // SAFETY: a valid descriptor; the range is inside the file.
        let result = unsafe {
            libc::fallocate(
                self.data.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                bytes as libc::off_t,
            )
        };
        if result != 0 {
            // tmpfs supports hole punching since Linux 3.5; without it the
            // memory stays until the file is closed. Say so once per call.
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not free a region's memory at once"
            );
        }
    }

    /// The first byte of an allocated segment.
    ///
    /// Reading or writing through the pointer is sound only while the caller
    /// holds the segment (allocated to the region, and guarded by its lock).
    pub fn segment_pointer(&self, segment: usize) -> *mut u8 {
        assert!(segment < self.segment_count, "segment out of range");
        let offset = segment * self.segment_bytes;
        let base = *self.windows[offset / WINDOW_BYTES]
            .get()
            .expect("the segment's window is mapped when it is allocated");
        (base + offset % WINDOW_BYTES) as *mut u8
    }

    /// Marks a change to an allocated segment's bytes as begun: readers in
    /// other processes retry or fall back until [`RegionMemory::end_write`].
    /// The caller holds the segment's lock exclusively.
    pub fn begin_write(&self, segment: usize) {
        let version = self.version(segment);
        let old = version.load(Ordering::Relaxed);
        debug_assert!(
            old != 0 && old.is_multiple_of(2),
            "segment {segment} version {old}"
        );
        version.store(old + 1, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    /// Marks the change begun by [`RegionMemory::begin_write`] as done.
    pub fn end_write(&self, segment: usize) {
        let version = self.version(segment);
        let old = version.load(Ordering::Relaxed);
        debug_assert!(!old.is_multiple_of(2));
        version.store(old + 1, Ordering::Release);
    }

    /// Marks the files open (the region serves reads) or closed (it is
    /// recovering or damaged): a co-located client reads a closed region's
    /// pages over its connection, where the node refuses them.
    pub fn set_open(&self, open: bool) {
        self.word(2).store(u64::from(!open), Ordering::Release);
    }

    /// Read-only descriptors of the data and metadata files, for a
    /// co-located client: opened anew through `/proc/self/fd` with
    /// `O_RDONLY`, so the client can map them only for reading and can
    /// neither write nor resize them.
    pub fn read_only_files(&self) -> Result<(OwnedFd, OwnedFd), NodeError> {
        let reopen = |fd: &OwnedFd| -> Result<OwnedFd, NodeError> {
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            std::fs::OpenOptions::new()
                .read(true)
                .open(&path)
                .map(OwnedFd::from)
                .map_err(io_error(format!("reopening {path} read-only")))
        };
        Ok((reopen(&self.data)?, reopen(&self.metadata)?))
    }

    /// Bytes of the data file (whole segments).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes as u64
    }

    /// Bytes of the metadata file.
    pub fn metadata_bytes(&self) -> u64 {
        self.metadata_bytes as u64
    }
}

impl Drop for RegionMemory {
    fn drop(&mut self) {
        // Closed first, every segment odd: a client still mapping the files
        // stops reading them and asks the node, which answers that the region
        // is gone. Then the memory goes back to the kernel at once, whoever
        // still holds the files.
        self.word(2).store(1, Ordering::Release);
        for segment in 0..self.segment_count {
            let version = self.version(segment);
            let old = version.load(Ordering::Relaxed);
            if old != 0 {
                version.store(old | 1, Ordering::Relaxed);
            }
        }
        fence(Ordering::Release);
        self.punch(0, self.data_bytes);
        for (index, window) in self.windows.iter().enumerate() {
            if let Some(&base) = window.get() {
                let bytes = (self.data_bytes - index * WINDOW_BYTES).min(WINDOW_BYTES);
                // SAFETY: the window was mapped with this length and is
                // unmapped once, here; no reference into it outlives `self`.
                unsafe { libc::munmap(base as *mut libc::c_void, bytes) };
            }
        }
        // SAFETY: as above, for the metadata mapping.
        unsafe { libc::munmap(self.metadata_map.as_ptr().cast(), self.metadata_bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards thin provisioning and the seqlock words: a fresh file holds no
    // memory, an allocated segment is stable and even, a write makes it odd
    // then even, and a release frees the memory and reads as absent.
    #[test]
    fn versions_follow_allocation_writes_and_release() {
        let memory = RegionMemory::new(8 << 20, 4096, 2 << 20).unwrap();
        assert_eq!(memory.word(0).load(Ordering::Relaxed), METADATA_MAGIC);
        assert_eq!(memory.version(1).load(Ordering::Relaxed), 0);
        memory.allocate(1, 0).unwrap();
        assert_eq!(memory.version(1).load(Ordering::Relaxed), 2);
        memory.begin_write(1);
        assert_eq!(memory.version(1).load(Ordering::Relaxed), 3);
        // SAFETY: segment 1 is allocated and this test is its only user.
        unsafe { std::ptr::write_bytes(memory.segment_pointer(1), 0xab, 4096) };
        memory.end_write(1);
        assert_eq!(memory.version(1).load(Ordering::Relaxed), 4);
        let mut stat = unsafe { std::mem::zeroed::<libc::stat>() };
        // SAFETY: a valid descriptor and a stat buffer.
        unsafe { libc::fstat(memory.data.as_raw_fd(), &mut stat) };
        assert!(stat.st_blocks > 0, "the allocated segment holds memory");
        memory.set_open(false);
        assert_eq!(memory.word(2).load(Ordering::Relaxed), 1, "closed");
        memory.set_open(true);
        assert_eq!(memory.word(2).load(Ordering::Relaxed), 0, "open again");
        memory.release(1);
        assert_eq!(memory.version(1).load(Ordering::Relaxed), 0);
        // SAFETY: as above.
        unsafe { libc::fstat(memory.data.as_raw_fd(), &mut stat) };
        assert_eq!(stat.st_blocks, 0, "a released segment holds no memory");
    }

    // Guards the co-located client's protection: the descriptors it gets
    // cannot be mapped for writing.
    #[test]
    fn shared_files_are_read_only() {
        let memory = RegionMemory::new(2 << 20, 4096, 2 << 20).unwrap();
        let (data, _metadata) = memory.read_only_files().unwrap();
        // SAFETY: a mapping attempt whose result is only checked.
        let pointer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.as_raw_fd(),
                0,
            )
        };
        assert_eq!(pointer, libc::MAP_FAILED, "a writable shared mapping");
    }
}

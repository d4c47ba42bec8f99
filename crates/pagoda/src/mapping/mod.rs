//! Mapped regions (capability C13) and application-defined page protection
//! (C17): a region at one address range of the process, reached by
//! ordinary loads and stores.
//!
//! # How it works
//!
//! The local tier of a mapping is a memfd as large as the region, sparse:
//! only the pages held locally have memory. The application's mapping of
//! it is registered with a userfaultfd for three kinds of fault. Pages come
//! in by `UFFDIO_COPY` (one call allocates the page in the memfd, copies
//! it from a buffer and maps it, so no page is zeroed first), and are read
//! for write-back with `pread`: no other view of the memfd exists.
//!
//! - **Missing** (the page is not held locally): take a frame of the local
//!   budget (evicting if it is full), read the page from the node into a
//!   buffer, and install it. A page the client knows the node has never
//!   stored is filled with zeros without a round trip.
//! - **Write-protect**: a page is mapped write-protected unless the fault
//!   that brought it in was a write; the first write to it faults, the page
//!   is marked dirty and the protection lifted (or, with
//!   [`DirtyTracking::Kernel`], the kernel lifts it and records the page
//!   written). Only dirty pages are written back, and a flush protects each
//!   page again before it reads it, so a write during the flush marks it
//!   dirty again.
//! - **Minor** (the page is held but not mapped for the application): how
//!   the eviction policy learns of references. A hit in a mapping is a
//!   plain load no code sees; so when the policy offers a victim that is
//!   still mapped, the mapping does not evict it but *zaps* it
//!   (`MADV_DONTNEED` on the application's mapping: the page stays in the
//!   memfd) and refuses it, and the policy moves it along its queue as it
//!   would a busy frame. An access before the policy offers it again takes
//!   a minor fault, which counts as the policy's hit (`touch`) and maps the
//!   page back without copying it. A page offered again still unmapped was
//!   not referenced meanwhile and is evicted. One eviction round zaps at
//!   most [`ZAPS_PER_EVICTION_MAX`] candidates and takes mapped ones as
//!   they come after that (a budget whose pages were all touched since
//!   their last offer, as one just filled, would otherwise be walked
//!   whole on every eviction). So the two-phase policy sees
//!   references at the pages it is about to decide on, and the cost (one
//!   minor fault per referenced candidate) grows with the eviction rate,
//!   not with the hit rate: a mapping whose pages all fit takes no fault
//!   after the first touch of each page.
//!
//! No fault holds the mapping's lock across the network, so faults of
//! several application threads are fetched in parallel, pipelined on the
//! region's connection.
//!
//! # Who serves a fault
//!
//! With [`FaultMode::Signal`] (the default on x86-64) the kernel queues no
//! message: it sends the faulting thread `SIGBUS`, and the mapping's signal
//! handler serves the fault on that thread and returns, so the access is
//! retried and finds its page. No thread is woken on either side, which on
//! a machine where a thread's wakeup costs about 10 µs halves a miss. With
//! the other modes, fault threads (`MapOptions::fault_threads`) read the
//! userfaultfd, and they alone can serve faults taken in kernel mode (a
//! system call writing into the mapping).
//!
//! What serving on the faulting thread asks of the application, as any
//! handler of synchronous faults does (a JIT's or a garbage collector's):
//!
//! - The process's `SIGBUS` handler is the mapping's from the first such
//!   mapping on; it hands every `SIGBUS` that is not a fault of a mapping to
//!   the handler it replaced (or the default action). An application that
//!   installs a `SIGBUS` handler afterwards must pass on what it does not
//!   handle to the one it replaced, as this one does (it is installed once
//!   per process, never again over a later one).
//! - The handler runs on the faulting thread's stack (tens of KiB: the
//!   network read and the eviction), with every other signal held until
//!   it returns, and it takes the mapping's and the connection's locks and
//!   may allocate. So a mapping's pages must not be touched by code that
//!   holds those or the allocator's locks: a violation handler, a signal
//!   handler, an allocator whose heap is in the mapping, or a buffer given
//!   to a call on the same [`crate::Client`] (which may hold the
//!   connection while it copies). errno is kept across a fault.
//! - A system call given a page not held locally fails with `EFAULT`, as
//!   with [`FaultMode::UserModeOnly`].
//!
//! # Protection
//!
//! [`Mapping::protect`] marks page ranges read-only or as guards. A write
//! to a read-only page (or to a mapping of a region open for reading only)
//! and any access to a guard page reaches the code serving faults, which
//! calls the violation handler ([`Mapping::on_violation`]) instead of
//! letting the access through; the handler's [`Verdict`] decides what
//! happens next.
//!
//! # Outcomes of a fault that cannot be served
//!
//! A page that cannot be fetched (the node is unreachable after the
//! client's reconnect window, or refuses) is logged at error level with the
//! region, the offset and the cause, and the faulting thread gets `SIGBUS`,
//! as for a mapped file whose read fails (served on the faulting thread:
//! the `SIGBUS` goes on to the handler the mapping's replaced, by default
//! ending the process). Its access is never completed with a wrong value.

mod signal;
mod uffd;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pagoda_cache::Backing;
use pagoda_cache::policy::{EvictionPolicy, FrameId, PolicyKind};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::error::ClientError;
use crate::link::Retry;
use crate::region::Region;

pub use uffd::FaultMode;

/// Default spin of the first fault thread, in microseconds: none. On the
/// two-core machine of `docs/benchmarks.md` a spinning fault thread takes
/// the core the application and the node need, and a mapped miss got
/// slower (p50 37 µs against 34-40 µs without); with cores to spare it
/// saves the fault thread's wakeup.
pub const FAULT_SPIN_US_DEFAULT: u64 = 0;
/// Default number of fault threads of a mapping.
pub const FAULT_THREADS_DEFAULT: usize = 4;
/// The smallest local budget of a mapping, in pages: one instruction may
/// touch four pages (two operands, each across a page boundary), and it
/// must be able to hold them all at once to make progress.
pub const LOCAL_PAGES_MIN: u64 = 4;
/// Victims taken per eviction when one frame is needed, so that dirty
/// victims are written back in batches.
const EVICT_BATCH_PAGES: usize = 16;
/// Most mapped candidates one eviction round zaps and refuses (see the
/// module documentation); past it a mapped candidate is zapped and taken.
/// Bounds the time a fault waits for an eviction.
pub const ZAPS_PER_EVICTION_MAX: usize = 256;
/// Pages one eviction ahead of need frees: few, so that it takes about as
/// long as the read it overlaps.
const EVICT_AHEAD_PAGES: usize = 2;
/// The smallest budget, in frames, whose evictions run ahead of need
/// (while a fault's read is in flight): below it the frames kept free
/// would be a noticeable part of the budget.
const REPLENISH_FRAMES_MIN: usize = 16 * EVICT_BATCH_PAGES;
/// Messages read from the userfaultfd at once.
const MESSAGES_PER_READ: usize = 16;
/// How long a fault thread waits for a busy page before it looks again.
const BUSY_WAIT: Duration = Duration::from_millis(20);

/// How a region is mapped; see [`Region::map`].
#[derive(Clone, Debug)]
pub struct MapOptions {
    /// RAM for the pages held locally, in bytes; rounded down to whole
    /// pages, at least [`LOCAL_PAGES_MIN`] pages. From 256 pages on, a
    /// fault whose page is read over the connection evicts two pages while
    /// the read is in flight if fewer frames are free than one eviction
    /// round frees (1/16 of the budget, at most 16), so the budget's last
    /// few frames may stand free.
    pub local_bytes: u64,
    /// Threads serving faults where a fault thread serves them (not with
    /// [`FaultMode::Signal`], where each faulting thread serves its own);
    /// faults of that many application threads are fetched at once.
    pub fault_threads: usize,
    /// Which faults the kernel hands to the mapping; see [`FaultMode`].
    pub fault_mode: FaultMode,
    /// The eviction policy of the local tier.
    pub policy: PolicyKind,
    /// How stores are found; see [`DirtyTracking`].
    pub dirty_tracking: DirtyTracking,
    /// How long the first fault thread keeps looking for the next fault
    /// (spinning) after serving one, before it sleeps: a fault that comes
    /// meanwhile costs no thread wakeup. Zero never spins. Unused with
    /// [`FaultMode::Signal`].
    pub spin: Duration,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            local_bytes: crate::region::CACHE_BYTES_DEFAULT,
            fault_threads: FAULT_THREADS_DEFAULT,
            fault_mode: FaultMode::default(),
            policy: PolicyKind::default(),
            dirty_tracking: DirtyTracking::default(),
            spin: Duration::from_micros(FAULT_SPIN_US_DEFAULT),
        }
    }
}

impl MapOptions {
    /// Defaults with a local budget of `local_bytes`.
    pub fn with_local_bytes(local_bytes: u64) -> MapOptions {
        MapOptions {
            local_bytes,
            ..MapOptions::default()
        }
    }
}

/// How a mapping learns which pages were written since their last
/// write-back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirtyTracking {
    /// The kernel resolves the first store to a clean page by itself and
    /// records it (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7); evictions and
    /// flushes read the record (`PAGEMAP_SCAN`). No fault per first store,
    /// but [`Protection::ReadOnly`] cannot be enforced (a store to a
    /// protected page is resolved without asking). Falls back to `Faults`
    /// on an older kernel, and a mapping of a region open for reading only
    /// always uses `Faults`.
    #[default]
    Kernel,
    /// The first store to each clean page is a write-protect fault served
    /// by a fault thread (about the cost of a minor fault). Needed for
    /// [`Protection::ReadOnly`].
    Faults,
}

/// What an application may do with a range of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Loads and stores (the default).
    ReadWrite,
    /// Loads only: a store calls the violation handler.
    ReadOnly,
    /// Nothing: any access calls the violation handler.
    Guard,
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protection::ReadWrite => "read-write",
            Protection::ReadOnly => "read-only",
            Protection::Guard => "guard",
        })
    }
}

/// The kind of access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A load (or an instruction fetch).
    Read,
    /// A store.
    Write,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// An access a page's protection does not allow.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The region's name.
    pub region: String,
    /// The offset in the region of the faulting address, rounded down to
    /// the page the kernel reports (4 KiB).
    pub offset: u64,
    /// The faulting address, as the kernel reports it (rounded down to its
    /// 4 KiB page).
    pub address: usize,
    /// What was attempted.
    pub access: Access,
    /// The protection it violates. `ReadOnly` also for a store to a
    /// mapping of a region open for reading only.
    pub protection: Protection,
    /// The faulting thread's id (`gettid`); 0 if the kernel did not say.
    pub thread: u32,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} access to region {:?} at offset {} (address {:#x}) violates its {} protection",
            self.access, self.region, self.offset, self.address, self.protection
        )
    }
}

/// What happens to an access that violated a page's protection, as the
/// violation handler decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The page becomes read-write (for a guard page: and is brought in)
    /// and the access goes on. For a store to a mapping of a region open
    /// for reading only, which nothing can allow, this acts as `Signal`.
    Allow,
    /// The faulting thread gets `SIGSEGV` (sent with `tgkill`): its own
    /// handler runs, or the process ends as on any segmentation fault. The
    /// access is tried again if the handler returns.
    Signal,
    /// The process stops: the violation is logged and printed to standard
    /// error as `pagoda: stopping the process: <violation>`, then the
    /// process aborts. What the default handler answers.
    Stop,
}

/// A violation handler: called on a fault thread while the faulting thread
/// waits, or ([`FaultMode::Signal`]) on the faulting thread inside the
/// mapping's `SIGBUS` handler. It must not touch a page of the mapping
/// whose access would fault (that thread would wait for itself).
pub type ViolationHandler = Arc<dyn Fn(&Violation) -> Verdict + Send + Sync>;

/// A mapping's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingStats {
    /// Pages read from the node on a fault.
    pub pages_fetched: u64,
    /// Pages filled with zeros without a round trip (never stored).
    pub pages_zero_filled: u64,
    /// Minor faults: a page held locally mapped back after the policy
    /// looked at it (the policy's hits).
    pub minor_faults: u64,
    /// Pages unmapped for the application while kept locally: by an
    /// eviction, so that a next access tells the policy they are used (see
    /// [`Region::map`]), or made guard pages.
    pub pages_zapped: u64,
    /// Frames the eviction policy offered as victims (each taken, zapped
    /// and refused, or passed over as busy): the eviction's work.
    pub eviction_candidates: u64,
    /// Write-protect faults: first writes to clean pages.
    pub write_faults: u64,
    /// Pages written back to the node (evictions and flushes).
    pub pages_written_back: u64,
    /// Pages evicted from the local tier.
    pub evictions: u64,
    /// Of them, evicted ahead of need while a fault's read was on the
    /// network (see [`MapOptions::local_bytes`]).
    pub evictions_ahead: u64,
    /// Protection violations.
    pub violations: u64,
    /// Faults that could not be served (the thread got `SIGBUS`).
    pub failed_faults: u64,
    /// Pages held locally now.
    pub resident_pages: u64,
    /// Of them, dirty now.
    pub dirty_pages: u64,
}

/// A frame's state bits.
const MAPPED: u8 = 1;
const DIRTY: u8 = 2;
/// Being filled or evicted: faults on it wait.
const BUSY: u8 = 4;
/// Being written back by a flush: not evicted meanwhile.
const FLUSHING: u8 = 8;

/// The mapping's bookkeeping, under one lock held only for short steps
/// (never across the network).
struct Table {
    /// Resident pages and their frames.
    pages: HashMap<u64, FrameId>,
    frame_page: Vec<u64>,
    frame_state: Vec<u8>,
    /// Bumped each time a frame is given back (evicted or released), so
    /// that a waiter can tell its page left even if the frame came back
    /// holding the same page.
    frame_generation: Vec<u32>,
    /// The eviction that last zapped each frame.
    zapped_by: Vec<u64>,
    /// A thread is evicting ahead of need ([`Shared::replenish`]).
    replenishing: bool,
    /// Evictions begun.
    eviction: u64,
    free: Vec<FrameId>,
    /// Protected ranges of pages: start → (end, protection), disjoint; a
    /// page in none is read-write.
    protection: BTreeMap<u64, (u64, Protection)>,
    /// Segments the node has never stored (bit set), for a write open;
    /// `None` when that is not known.
    unstored: Option<Vec<u64>>,
}

impl Table {
    fn protection_of(&self, page: u64) -> Protection {
        match self.protection.range(..=page).next_back() {
            Some((_, &(end, protection))) if page < end => protection,
            _ => Protection::ReadWrite,
        }
    }

    fn set_protection(&mut self, start: u64, end: u64, protection: Protection) {
        // Cut the ranges that overlap [start, end) down to what lies
        // outside it, then insert the new one.
        let overlapping: Vec<(u64, (u64, Protection))> = self
            .protection
            .range(..end)
            .filter(|(_, (range_end, _))| *range_end > start)
            .map(|(&range_start, &value)| (range_start, value))
            .collect();
        for (range_start, (range_end, kind)) in overlapping {
            self.protection.remove(&range_start);
            if range_start < start {
                self.protection.insert(range_start, (start, kind));
            }
            if range_end > end {
                self.protection.insert(end, (range_end, kind));
            }
        }
        if protection != Protection::ReadWrite {
            self.protection.insert(start, (end, protection));
        }
    }
}

struct Shared {
    region: Region,
    uffd: uffd::Uffd,
    /// Faults are served on the faulting thread ([`FaultMode::Signal`]).
    on_faulting_thread: bool,
    /// With kernel-resolved write protection: where written pages are
    /// read from.
    pagemap: Option<uffd::Pagemap>,
    tier: Tier,
    page_size: usize,
    /// The system's page size: what a fault's address is rounded to.
    os_page: usize,
    segment_pages: u64,
    read_only: bool,
    table: Mutex<Table>,
    changed: Condvar,
    policy: Box<dyn EvictionPolicy>,
    /// Serializes flushes (a flush must not return while another's batch
    /// holding pages it cleared is in flight).
    flush_lock: Mutex<()>,
    handler: RwLock<ViolationHandler>,
    zeros: Vec<u8>,
    stop: OwnedFd,
    pages_fetched: AtomicU64,
    pages_zero_filled: AtomicU64,
    minor_faults: AtomicU64,
    pages_zapped: AtomicU64,
    eviction_candidates: AtomicU64,
    write_faults: AtomicU64,
    pages_written_back: AtomicU64,
    evictions: AtomicU64,
    evictions_ahead: AtomicU64,
    violations: AtomicU64,
    failed_faults: AtomicU64,
}

// SAFETY: the raw pointers are the two mappings, which live as long as
// `Shared`; every access through them is coordinated by the table lock and
// the page states (see the module documentation).
unsafe impl Send for Shared {}
// SAFETY: see `Send`.
unsafe impl Sync for Shared {}

/// A region mapped into the process; see the module documentation and
/// [`Region::map`].
///
/// # Aliasing
///
/// [`Mapping::as_slice`] and [`Mapping::as_mut_slice`] follow Rust's rules
/// as for any memory: shared views through `&self`, one exclusive view
/// through `&mut self` (split it with `chunks_mut` to hand pieces to
/// threads). [`Mapping::as_atomic_u64s`] gives a view several threads may
/// load and store at once through `&self`. Serving a fault installs a
/// page whole (`UFFDIO_COPY`) only while it is not mapped for the
/// application, so no view ever sees a page change under it except by its
/// own stores; a flush reads pages
/// while they may be written (a page written during a flush is marked
/// dirty again and sent again by the next flush).
pub struct Mapping {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    closed: bool,
}

/// A fault, as a fault thread reads it from the userfaultfd or the signal
/// handler learns it.
struct Fault {
    address: usize,
    access: Access,
    /// Whether the page was mapped write-protected; `None` when the kernel
    /// did not say (a fault served on its thread), to be told from the
    /// page's state.
    write_protect: Option<bool>,
    /// The faulting thread, or [`THIS_THREAD`].
    thread: u32,
}

/// A fault's thread when it is the thread serving it (a fault served on the
/// faulting thread): its id is asked for only when needed, saving a system
/// call on every fault.
const THIS_THREAD: u32 = u32::MAX;

/// The id of a fault's thread.
fn thread_id(thread: u32) -> u32 {
    if thread == THIS_THREAD {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() as u32 }
    } else {
        thread
    }
}

impl Fault {
    fn from_message(message: &uffd::Message) -> Fault {
        Fault {
            address: message.address as usize,
            access: if message.flags & uffd::PAGEFAULT_FLAG_WRITE != 0 {
                Access::Write
            } else {
                Access::Read
            },
            write_protect: Some(message.flags & uffd::PAGEFAULT_FLAG_WP != 0),
            thread: message.ptid,
        }
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("region", &self.shared.region.name())
            .field("len", &self.shared.tier.len)
            .finish()
    }
}

fn os_error(what: &str) -> ClientError {
    ClientError::Io(std::io::Error::new(
        std::io::Error::last_os_error().kind(),
        format!("{what}: {}", std::io::Error::last_os_error()),
    ))
}

/// The default violation handler: stops the process.
fn stop_handler() -> ViolationHandler {
    Arc::new(|_: &Violation| Verdict::Stop)
}

impl Region {
    /// Maps the region into the process: see [`Mapping`]. The handle moves
    /// into the mapping (reads and writes go through the mapping from now
    /// on; [`Mapping::unmap`] ends it). Writes made through this handle
    /// before are flushed first.
    ///
    /// Needs Linux 6.3 or later (write-protected minor-fault resolution on
    /// shared memory) and a userfaultfd: see [`FaultMode`] for what the
    /// kernel must allow.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
    /// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
    /// # let address = node.local_addr();
    /// use pagoda::{Client, ClientOptions, MapOptions, RegionOptions};
    ///
    /// let client = Client::connect(address, ClientOptions::default())?;
    /// let region = client.open_or_create_region("numbers", 1 << 20, 4096, RegionOptions::default())?;
    /// // 1 MiB of the region at one address range, 64 KiB of it held locally.
    /// let mut mapping = region.map(MapOptions::with_local_bytes(64 << 10))?;
    /// let numbers: &mut [u64] = pagoda::bytemuck::cast_slice_mut(mapping.as_mut_slice());
    /// for (index, number) in numbers.iter_mut().enumerate() {
    ///     *number = index as u64 * 3; // plain stores; pages fault in and out
    /// }
    /// assert_eq!(numbers.iter().sum::<u64>(), 3 * (131_071 * 131_072 / 2));
    /// mapping.flush()?; // every page written is on the node
    /// mapping.unmap()?;
    /// let region = client.open_region_read_only("numbers", RegionOptions::default())?;
    /// assert_eq!(region.read_value::<u64>(8 * 1000)?, 3000);
    /// # Ok::<(), pagoda::ClientError>(())
    /// ```
    pub fn map(self, options: MapOptions) -> Result<Mapping, ClientError> {
        Mapping::new(self, options)
    }
}

impl Mapping {
    fn new(region: Region, options: MapOptions) -> Result<Mapping, ClientError> {
        region.flush()?;
        let page_size = region.page_size();
        let len = usize::try_from(region.len()).map_err(|_| {
            ClientError::InvalidArgument("the region is larger than the address space".into())
        })?;
        let os_page = page_size_of_system();
        if !page_size.is_multiple_of(os_page) {
            return Err(ClientError::InvalidArgument(format!(
                "region page size {page_size} is not a multiple of the system's {os_page}"
            )));
        }
        let frames = (options.local_bytes / page_size as u64).max(LOCAL_PAGES_MIN);
        let frames = frames.min(region.len() / page_size as u64).max(1);
        if frames > FrameId::MAX as u64 / 2 {
            return Err(ClientError::InvalidArgument(format!(
                "local budget of {} bytes is too large",
                options.local_bytes
            )));
        }
        let on_faulting_thread = options.fault_mode.on_faulting_thread();
        if options.fault_threads == 0 && !on_faulting_thread {
            return Err(ClientError::InvalidArgument(
                "a mapping needs at least one fault thread".into(),
            ));
        }
        let want_async = options.dirty_tracking == DirtyTracking::Kernel && !region.is_read_only();
        let uffd =
            uffd::Uffd::open(options.fault_mode, want_async).map_err(ClientError::Unsupported)?;
        let pagemap = if uffd.wp_async {
            Some(uffd::Pagemap::open().map_err(|error| {
                ClientError::Unsupported(format!("opening /proc/self/pagemap: {error}"))
            })?)
        } else {
            None
        };
        let tier = Tier::new(len).map_err(ClientError::Io)?;
        if let Err(error) = uffd.register(tier.user, len) {
            return Err(ClientError::Unsupported(format!(
                "registering the mapping with userfaultfd: {error}"
            )));
        }
        probe_continue_wp().map_err(ClientError::Unsupported)?;
        // SAFETY: eventfd takes an initial value and flags.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(os_error("eventfd"));
        }
        // SAFETY: a new fd this function owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let frames = frames as usize;
        let read_only = region.is_read_only();
        let shared = Arc::new(Shared {
            uffd,
            on_faulting_thread,
            pagemap,
            tier,
            page_size,
            os_page,
            segment_pages: (pagoda_wire::limits::SEGMENT_BYTES / page_size as u64).max(1),
            read_only,
            table: Mutex::new(Table {
                pages: HashMap::with_capacity(frames),
                frame_page: vec![u64::MAX; frames],
                frame_state: vec![0; frames],
                frame_generation: vec![0; frames],
                zapped_by: vec![0; frames],
                replenishing: false,
                eviction: 0,
                free: (0..frames as FrameId).rev().collect(),
                protection: BTreeMap::new(),
                unstored: None,
            }),
            changed: Condvar::new(),
            policy: options.policy.build(frames),
            flush_lock: Mutex::new(()),
            handler: RwLock::new(stop_handler()),
            zeros: vec![0; page_size],
            stop,
            pages_fetched: AtomicU64::new(0),
            pages_zero_filled: AtomicU64::new(0),
            minor_faults: AtomicU64::new(0),
            pages_zapped: AtomicU64::new(0),
            eviction_candidates: AtomicU64::new(0),
            write_faults: AtomicU64::new(0),
            pages_written_back: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            evictions_ahead: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            failed_faults: AtomicU64::new(0),
            region,
        });
        if !read_only {
            shared.table.lock().unstored = shared.region.unstored_segments()?;
        }
        let spin = options.spin;
        let thread_count = if on_faulting_thread {
            if let Err(error) = signal::register(shared.clone()) {
                return Err(ClientError::Unsupported(format!(
                    "installing the SIGBUS handler that serves the mapping's faults: {error}"
                )));
            }
            0
        } else {
            options.fault_threads
        };
        let mut threads = Vec::with_capacity(thread_count);
        for index in 0..thread_count {
            let worker = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pagoda-fault-{index}"))
                .spawn(move || worker.serve(index, spin));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    let mapping = Mapping {
                        shared,
                        threads,
                        closed: false,
                    };
                    drop(mapping);
                    return Err(ClientError::Io(error));
                }
            }
        }
        tracing::debug!(
            region = %shared.region.name(),
            bytes = len,
            local_pages = frames,
            kernel_faults = shared.uffd.kernel_faults,
            on_faulting_thread,
            "region mapped"
        );
        Ok(Mapping {
            shared,
            threads,
            closed: false,
        })
    }

    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *const u8 {
        self.shared.tier.user
    }

    /// The first byte of the mapping, for stores.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.shared.tier.user
    }

    /// Its length in bytes (the region's size).
    pub fn len(&self) -> usize {
        self.shared.tier.len
    }

    /// Whether the mapping is empty (never: regions are not).
    pub fn is_empty(&self) -> bool {
        self.shared.tier.len == 0
    }

    /// The whole region, for loads.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and lives as long
        // as `self`; see "Aliasing" above.
        unsafe { std::slice::from_raw_parts(self.shared.tier.user, self.shared.tier.len) }
    }

    /// The whole region, for loads and stores.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` makes this view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.shared.tier.user, self.shared.tier.len) }
    }

    /// The whole region as 64-bit words that several threads may load and
    /// store through `&self`.
    pub fn as_atomic_u64s(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned and `len` is a multiple of
        // the page size, so of 8; atomics allow shared mutation.
        unsafe {
            std::slice::from_raw_parts(
                self.shared.tier.user.cast::<AtomicU64>(),
                self.shared.tier.len / 8,
            )
        }
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        self.shared.region.name()
    }

    /// The region's page size.
    pub fn page_size(&self) -> usize {
        self.shared.page_size
    }

    /// Whether faults taken in kernel mode (a system call reading or
    /// writing the mapping) are served; see [`FaultMode::UserModeOnly`].
    pub fn serves_kernel_faults(&self) -> bool {
        self.shared.uffd.kernel_faults
    }

    /// Whether faults are served on the faulting thread
    /// ([`FaultMode::Signal`]) rather than by fault threads.
    pub fn serves_faults_on_faulting_thread(&self) -> bool {
        self.shared.on_faulting_thread
    }

    /// Returns once every page written before the call is on the node, as
    /// [`Region::flush`].
    pub fn flush(&self) -> Result<(), ClientError> {
        self.shared.flush()
    }

    /// Flushes and ends the mapping; the error of the flush, if any.
    pub fn unmap(mut self) -> Result<(), ClientError> {
        self.close()
    }

    /// Flushes and stops serving faults (once: a second call does
    /// nothing); the error of the flush.
    fn close(&mut self) -> Result<(), ClientError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let flushed = self.shared.flush();
        if self.shared.on_faulting_thread {
            signal::unregister(&self.shared);
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to the eventfd the threads poll.
        unsafe { libc::write(self.shared.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        flushed
    }

    /// The mapping's counters.
    pub fn stats(&self) -> MappingStats {
        self.shared.stats()
    }

    /// Sets the protection of `range` (byte offsets, whole pages of the
    /// region).
    pub fn protect(&self, range: Range<u64>, protection: Protection) -> Result<(), ClientError> {
        self.shared.protect(range, protection)
    }

    /// The protection of the page holding `offset`.
    pub fn protection_at(&self, offset: u64) -> Protection {
        let page = offset / self.shared.page_size as u64;
        self.shared.table.lock().protection_of(page)
    }

    /// Calls `handler` for each access a protection does not allow, in
    /// place of the default (which stops the process: [`Verdict::Stop`]).
    pub fn on_violation(&self, handler: impl Fn(&Violation) -> Verdict + Send + Sync + 'static) {
        *self.shared.handler.write() = Arc::new(handler);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::warn!(region = %self.shared.region.name(), %error,
                "flush on unmapping failed; unflushed writes are lost");
        }
    }
}

/// The local tier's memory: a memfd of `len` bytes, sparse, mapped once
/// (`MAP_SHARED`) for the application (`user`). Pages come in by
/// `UFFDIO_COPY` (which allocates them in the memfd) and are read for
/// write-back with `pread`, so no other view of them exists to keep page
/// tables for or to unmap on eviction. The mapping is not inherited by a
/// child process: its copy would not be registered with the userfaultfd,
/// so its first access to a page not held locally would read zeros.
struct Tier {
    memfd: OwnedFd,
    user: *mut u8,
    len: usize,
}

impl Tier {
    fn new(len: usize) -> std::io::Result<Tier> {
        let error = |what: &str| {
            let cause = std::io::Error::last_os_error();
            std::io::Error::new(cause.kind(), format!("{what}: {cause}"))
        };
        // SAFETY: memfd_create takes a NUL-terminated name and flags.
        let memfd = unsafe { libc::memfd_create(c"pagoda-mapping".as_ptr(), libc::MFD_CLOEXEC) };
        if memfd < 0 {
            return Err(error("memfd_create"));
        }
        // SAFETY: a new fd this function owns.
        let memfd = unsafe { OwnedFd::from_raw_fd(memfd) };
        // SAFETY: ftruncate on an fd this function owns.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(error("sizing the mapping's memfd"));
        }
        // SAFETY: a new shared mapping of the memfd; nothing else refers to
        // the address range yet.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                memfd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(error("mapping the region's address range"));
        }
        // SAFETY: madvise on the mapping made just above.
        unsafe { libc::madvise(address, len, libc::MADV_DONTFORK) };
        Ok(Tier {
            memfd,
            user: address.cast(),
            len,
        })
    }

    /// Reads page `page` of the memfd into `buffer` (one page).
    fn read_page(&self, page: u64, buffer: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buffer.len() {
            // SAFETY: pread into the unread rest of `buffer`.
            let read = unsafe {
                libc::pread(
                    self.memfd.as_raw_fd(),
                    buffer[done..].as_mut_ptr().cast(),
                    buffer.len() - done,
                    (page * buffer.len() as u64 + done as u64) as libc::off_t,
                )
            };
            match read {
                read if read > 0 => done += read as usize,
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the page is past the memfd's end",
                    ));
                }
                _ => {
                    let error = std::io::Error::last_os_error();
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes one page into the memfd at `page` (the kernel probe and
    /// tests: the pages a mapping serves come in by `UFFDIO_COPY`).
    fn write_page(&self, page: u64, bytes: &[u8]) -> std::io::Result<()> {
        // SAFETY: pwrite from a live buffer.
        let written = unsafe {
            libc::pwrite(
                self.memfd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                (page * bytes.len() as u64) as libc::off_t,
            )
        };
        if written == bytes.len() as isize {
            Ok(())
        } else if written < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "short write to the memfd",
            ))
        }
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Tier::new`; whoever made this tier
        // has stopped using it (a mapping's fault threads have ended, no
        // signal handler holds it, and the application's views borrowed
        // the `Mapping`).
        unsafe { libc::munmap(self.user.cast(), self.len) };
    }
}

thread_local! {
    /// A page read from the node on its way into a mapping.
    static FILL_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn page_size_of_system() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

/// Whether this kernel maps a shared-memory page write-protected on a
/// minor fault's resolution (`UFFDIO_CONTINUE_MODE_WP`, Linux 6.3): tried
/// once per process on a page of its own.
fn probe_continue_wp() -> Result<(), String> {
    static PROBED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBED
        .get_or_init(|| {
            let os_page = page_size_of_system();
            let uffd = uffd::Uffd::open(FaultMode::UserModeOnly, false)
                .or_else(|_| uffd::Uffd::open(FaultMode::Auto, false))?;
            let tier = Tier::new(os_page).map_err(|error| error.to_string())?;
            uffd.register(tier.user, os_page)
                .map_err(|error| format!("UFFDIO_REGISTER: {error}"))?;
            let mut page = vec![0u8; os_page];
            page[0] = 1;
            tier.write_page(0, &page)
                .map_err(|error| format!("writing the probe's memfd: {error}"))?;
            uffd.continue_range(tier.user, os_page, true)
                .map_err(|error| {
                    format!(
                        "this kernel cannot map a page write-protected on a minor fault \
                         (UFFDIO_CONTINUE_MODE_WP, Linux 6.3 or later): {error}"
                    )
                })
        })
        .clone()
}

/// What a fault thread does about one fault, decided under the lock.
enum Step {
    Done,
    /// Call the violation handler, then act on its verdict.
    Violate(Violation),
    /// Fetch or zero-fill the page into `frame`, then map it.
    Fill {
        frame: FrameId,
        zero: bool,
    },
    /// The fault cannot be served: why.
    Fail(String),
}

impl Shared {
    /// Whether `address` is in the application's view.
    fn contains(&self, address: usize) -> bool {
        let base = self.tier.user as usize;
        address >= base && address < base + self.tier.len
    }

    fn page_address(&self, page: u64) -> *mut u8 {
        // SAFETY: callers pass pages of the region, inside the mapping.
        unsafe { self.tier.user.add(page as usize * self.page_size) }
    }

    /// A fault thread: waits for faults and serves them. Each thread
    /// waits on an epoll set of its own holding the userfaultfd with
    /// `EPOLLEXCLUSIVE`, so one fault wakes one thread, not all of them.
    /// The first thread spins (reading without blocking) for `spin` after
    /// each fault it served: a thread that faults again soon (a scan, a
    /// pointer chase) then finds a thread awake, and pays no wakeup.
    fn serve(&self, index: usize, spin: Duration) {
        let epoll = match self.epoll() {
            Ok(epoll) => epoll,
            Err(error) => {
                tracing::error!(region = %self.region.name(), %error,
                    "a fault thread could not wait for faults; it stops");
                return;
            }
        };
        let spin = if index == 0 { spin } else { Duration::ZERO };
        let mut messages = [uffd::Message::default(); MESSAGES_PER_READ];
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let mut last_served = std::time::Instant::now();
        loop {
            let count = match self.uffd.read(&mut messages) {
                Ok(count) => count,
                Err(error) => {
                    tracing::error!(region = %self.region.name(), %error,
                        "reading the userfaultfd failed; this fault thread stops");
                    return;
                }
            };
            if count > 0 {
                for message in &messages[..count] {
                    if message.event == uffd::EVENT_PAGEFAULT {
                        self.fault(&Fault::from_message(message));
                    }
                }
                last_served = std::time::Instant::now();
                continue;
            }
            if last_served.elapsed() < spin {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: waits on an epoll fd this thread owns, into `events`.
            let ready = unsafe {
                libc::epoll_wait(
                    epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    -1,
                )
            };
            if ready < 0 {
                continue;
            }
            if events[..ready as usize].iter().any(|event| event.u64 == 1) {
                return;
            }
        }
    }

    /// An epoll set of the userfaultfd (exclusive wakeups, key 0) and the
    /// stop eventfd (key 1).
    fn epoll(&self) -> std::io::Result<OwnedFd> {
        // SAFETY: epoll_create1 takes flags and returns a new fd.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd this function owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let add = |fd: i32, events: u32, key: u64| {
            let mut event = libc::epoll_event { events, u64: key };
            // SAFETY: adds an fd this mapping owns to the epoll set.
            if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) }
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        add(
            self.uffd.raw(),
            (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
            0,
        )?;
        add(self.stop.as_raw_fd(), libc::EPOLLIN as u32, 1)?;
        Ok(epoll)
    }

    /// Serves one fault; false if it could not be served (see
    /// [`Shared::fail`]).
    fn fault(&self, fault: &Fault) -> bool {
        if !self.contains(fault.address) {
            return true;
        }
        let offset = (fault.address - self.tier.user as usize) as u64;
        let page = offset / self.page_size as u64;
        let access = fault.access;
        loop {
            let step = self.decide(page, fault, offset);
            match step {
                Step::Done => return true,
                Step::Violate(violation) => {
                    self.violations.fetch_add(1, Ordering::Relaxed);
                    let handler = self.handler.read().clone();
                    let mut verdict = handler(&violation);
                    if verdict == Verdict::Allow
                        && self.read_only
                        && access == Access::Write
                        && self.table.lock().protection_of(page) == Protection::ReadWrite
                    {
                        // Nothing can make a store to a region open for
                        // reading only reach the node.
                        tracing::warn!(region = %self.region.name(), offset,
                            "a store to a mapping of a region open for reading only cannot be \
                             allowed; the thread gets SIGSEGV");
                        verdict = Verdict::Signal;
                    }
                    match verdict {
                        Verdict::Allow => {
                            let mut table = self.table.lock();
                            table.set_protection(page, page + 1, Protection::ReadWrite);
                            drop(table);
                            continue;
                        }
                        Verdict::Signal => {
                            signal_thread(thread_id(fault.thread), libc::SIGSEGV);
                            return true;
                        }
                        Verdict::Stop => {
                            let text = format!("pagoda: stopping the process: {violation}");
                            tracing::error!("{text}");
                            eprintln!("{text}");
                            std::process::abort();
                        }
                    }
                }
                Step::Fill { frame, zero } => {
                    return self.fill(page, frame, zero, access, offset, fault.thread);
                }
                Step::Fail(cause) => {
                    self.fail(offset, &cause, fault.thread);
                    return false;
                }
            }
        }
    }

    /// Decides what a fault needs, doing at once whatever takes no network.
    fn decide(&self, page: u64, fault: &Fault, offset: u64) -> Step {
        let address = self.page_address(page);
        let access = fault.access;
        let violation = |protection| {
            Step::Violate(Violation {
                region: self.region.name().to_string(),
                offset,
                address: fault.address,
                access,
                protection,
                thread: thread_id(fault.thread),
            })
        };
        let mut table = self.table.lock();
        loop {
            let mut protection = table.protection_of(page);
            if self.read_only && protection == Protection::ReadWrite {
                protection = Protection::ReadOnly;
            }
            let refused = protection == Protection::Guard
                || (access == Access::Write && protection == Protection::ReadOnly);
            if let Some(&frame) = table.pages.get(&page) {
                let state = table.frame_state[frame as usize];
                if state & BUSY != 0 {
                    self.changed.wait_for(&mut table, BUSY_WAIT);
                    continue;
                }
                // Not told (a fault served on its thread): only a store to
                // a mapped page faults on it.
                let write_protect = fault
                    .write_protect
                    .unwrap_or(state & MAPPED != 0 && access == Access::Write);
                if write_protect {
                    if state & MAPPED == 0 {
                        let _ = self.uffd.wake(address, self.page_size);
                        return Step::Done;
                    }
                    if refused {
                        return violation(protection);
                    }
                    table.frame_state[frame as usize] |= DIRTY;
                    self.write_faults.fetch_add(1, Ordering::Relaxed);
                    if let Err(error) = self.uffd.write_protect(address, self.page_size, false) {
                        tracing::error!(region = %self.region.name(), %error,
                            "lifting write protection failed");
                    }
                    return Step::Done;
                }
                if state & MAPPED != 0 {
                    let _ = self.uffd.wake(address, self.page_size);
                    return Step::Done;
                }
                if refused {
                    return violation(protection);
                }
                // A minor fault: the policy's hit.
                let dirty = state & DIRTY != 0 || access == Access::Write;
                self.policy.touch(frame);
                self.minor_faults.fetch_add(1, Ordering::Relaxed);
                // A page that may not be written stays protected even when
                // dirty, so that a store reaches the handler.
                let protect = !dirty || protection != Protection::ReadWrite;
                match self.uffd.continue_range(address, self.page_size, protect) {
                    Ok(()) => {
                        let state = &mut table.frame_state[frame as usize];
                        *state |= MAPPED;
                        if access == Access::Write {
                            *state |= DIRTY;
                        }
                    }
                    Err(error) => {
                        tracing::error!(region = %self.region.name(), %error,
                            "mapping a local page back failed");
                        let _ = self.uffd.wake(address, self.page_size);
                    }
                }
                return Step::Done;
            }
            if fault.write_protect == Some(true) {
                // The page left meanwhile: the access faults again.
                let _ = self.uffd.wake(address, self.page_size);
                return Step::Done;
            }
            if refused {
                return violation(protection);
            }
            let frame = match self.take_frame(&mut table) {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(error) => {
                    return Step::Fail(format!(
                        "no frame of the local budget could be freed: {error}"
                    ));
                }
            };
            if table.pages.contains_key(&page) {
                // Another thread brought the page in while this one
                // evicted: use it.
                table.free.push(frame);
                continue;
            }
            table.pages.insert(page, frame);
            table.frame_page[frame as usize] = page;
            table.frame_state[frame as usize] = BUSY;
            let segment = page / self.segment_pages;
            let zero = table
                .unstored
                .as_ref()
                .is_some_and(|bits| bit(bits, segment));
            return Step::Fill { frame, zero };
        }
    }

    /// Brings `page` into `frame` (marked busy) and maps it; false if it
    /// could not (see [`Shared::fail`]).
    fn fill(
        &self,
        page: u64,
        frame: FrameId,
        zero: bool,
        access: Access,
        offset: u64,
        thread: u32,
    ) -> bool {
        let fill = |buffer: &mut Vec<u8>| {
            buffer.resize(self.page_size, 0);
            let fetched = if zero {
                Ok(())
            } else {
                // The eviction that keeps frames free is done while the
                // read is on the network, where it costs no wait.
                let backing = self.region.cache().backing();
                let read = backing.send_page_read(page, &mut buffer[..]);
                if read.in_flight() {
                    self.replenish();
                }
                backing.finish_page_read(read)
            };
            let source = if zero {
                self.zeros.as_ptr()
            } else {
                buffer.as_ptr()
            };
            self.map_filled(page, frame, zero, fetched, source, access, offset, thread)
        };
        // The thread's buffer is borrowed only here, and nothing here
        // touches a mapping's view, so a fault served on this thread finds
        // it free; a fresh one serves a thread whose locals are gone (a
        // fault from a thread-local destructor).
        FILL_BUFFER
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut buffer) => Some(fill(&mut buffer)),
                Err(_) => None,
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| fill(&mut Vec::new()))
    }

    /// The second half of [`Shared::fill`]: installs the page read (or
    /// zeros) at `source`.
    #[allow(clippy::too_many_arguments)]
    fn map_filled(
        &self,
        page: u64,
        frame: FrameId,
        zero: bool,
        fetched: Result<(), pagoda_cache::BackingError>,
        source: *const u8,
        access: Access,
        offset: u64,
        thread: u32,
    ) -> bool {
        let address = self.page_address(page);
        let mut table = self.table.lock();
        let protection = table.protection_of(page);
        if protection == Protection::Guard {
            // Made a guard while it was fetched: not mapped; the access
            // faults again and finds the guard.
            self.release(&mut table, page, frame);
            drop(table);
            self.changed.notify_all();
            let _ = self.uffd.wake(address, self.page_size);
            return true;
        }
        let protect =
            access == Access::Read || protection != Protection::ReadWrite || self.read_only;
        // One call allocates the page in the memfd, copies it there and
        // maps it: the page is never zeroed first, and no other view maps it.
        let mapped = fetched.map_err(|error| error.to_string()).and_then(|()| {
            self.uffd
                .copy(address, source, self.page_size, protect)
                .map_err(|error| format!("UFFDIO_COPY: {error}"))
        });
        match mapped {
            Ok(()) => {
                if zero {
                    self.pages_zero_filled.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.pages_fetched.fetch_add(1, Ordering::Relaxed);
                }
                let dirty = if access == Access::Write && !protect {
                    DIRTY
                } else {
                    0
                };
                table.frame_state[frame as usize] = MAPPED | dirty;
                self.policy.admit(frame, page);
                drop(table);
                self.changed.notify_all();
                true
            }
            Err(cause) => {
                self.release(&mut table, page, frame);
                drop(table);
                self.changed.notify_all();
                self.fail(offset, &cause, thread);
                false
            }
        }
    }

    /// Gives back a frame (evicted, or a fill that failed) and its page's memory
    /// (under the lock: a fill of the page begun after it must not lose
    /// its contents to this).
    fn release(&self, table: &mut Table, page: u64, frame: FrameId) {
        self.punch(page);
        table.pages.remove(&page);
        table.frame_state[frame as usize] = 0;
        table.frame_page[frame as usize] = u64::MAX;
        table.frame_generation[frame as usize] =
            table.frame_generation[frame as usize].wrapping_add(1);
        table.free.push(frame);
    }

    /// Ends a fault that cannot be served: logged, and `SIGBUS` to the
    /// faulting thread (a fault served on its own thread is in the
    /// handler of that `SIGBUS` already: the handler passes it on).
    fn fail(&self, offset: u64, cause: &str, thread: u32) {
        self.failed_faults.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            region = %self.region.name(),
            offset,
            %cause,
            "a page of the mapping could not be brought in; the faulting thread gets SIGBUS"
        );
        if !self.on_faulting_thread {
            signal_thread(thread_id(thread), libc::SIGBUS);
        }
    }

    /// A free frame, evicting if there is none; `None` if the lock was let
    /// go meanwhile (the caller looks at its fault again); the error of a
    /// write-back of dirty victims that failed (they stay held and dirty).
    fn take_frame(
        &self,
        table: &mut MutexGuard<'_, Table>,
    ) -> Result<Option<FrameId>, ClientError> {
        if let Some(frame) = table.free.pop() {
            return Ok(Some(frame));
        }
        let batch = (table.frame_state.len() / 16).clamp(1, EVICT_BATCH_PAGES);
        if !self.evict_round(table, batch)? {
            // Every frame is busy: wait for one to change.
            self.changed.wait_for(table, BUSY_WAIT);
        }
        Ok(None)
    }

    /// Frees frames before they are needed, while this thread's page read
    /// is in flight: one eviction round when the free frames are fewer
    /// than a round frees, unless another thread is at it. A failure is
    /// left to the fault that next needs a frame (the victims stay held and
    /// dirty, logged).
    fn replenish(&self) {
        let mut table = self.table.lock();
        let round = (table.frame_state.len() / 16).clamp(1, EVICT_BATCH_PAGES);
        if table.replenishing
            || table.free.len() >= round
            || table.frame_state.len() < REPLENISH_FRAMES_MIN
        {
            return;
        }
        table.replenishing = true;
        let before = table.free.len();
        let _ = self.evict_round(&mut table, EVICT_AHEAD_PAGES);
        let freed = table.free.len().saturating_sub(before);
        table.replenishing = false;
        self.evictions_ahead
            .fetch_add(freed as u64, Ordering::Relaxed);
    }

    /// One eviction round: victims chosen, the dirty ones written back,
    /// then all freed. False if every frame was busy; the error of a
    /// write-back that failed (its pages stay held and dirty).
    fn evict_round(
        &self,
        table: &mut MutexGuard<'_, Table>,
        batch: usize,
    ) -> Result<bool, ClientError> {
        let victims = self.choose_victims(table, batch);
        if victims.is_empty() {
            return Ok(false);
        }
        let dirty: Vec<(FrameId, u64)> = victims
            .iter()
            .filter(|&&frame| table.frame_state[frame as usize] & DIRTY != 0)
            .map(|&frame| (frame, table.frame_page[frame as usize]))
            .collect();
        let written = if dirty.is_empty() {
            Ok(())
        } else {
            self.mark_stored(table, dirty.iter().map(|&(_, page)| page));
            MutexGuard::unlocked(table, || self.write_back(&dirty))
        };
        if let Err(error) = &written {
            tracing::warn!(region = %self.region.name(), %error, pages = dirty.len(),
                "writing back evicted pages failed; they stay held and dirty");
            for &(frame, page) in &dirty {
                table.frame_state[frame as usize] &= !BUSY;
                self.policy.admit(frame, page);
            }
        }
        for frame in victims {
            let state = table.frame_state[frame as usize];
            if state & BUSY == 0 {
                continue;
            }
            let page = table.frame_page[frame as usize];
            self.release(table, page, frame);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.changed.notify_all();
        written.map(|()| true)
    }

    /// Victims from the policy, marked busy; mapped candidates are zapped
    /// and refused (see the module documentation) until the round has
    /// zapped [`ZAPS_PER_EVICTION_MAX`] pages or looked at twice as many
    /// candidates: past that every candidate that is not busy is taken
    /// (a mapped one zapped first), so that a round's work is bounded by
    /// that number, not by the budget's size.
    fn choose_victims(&self, table: &mut Table, batch: usize) -> Vec<FrameId> {
        // Pages zapped by this eviction are not taken by it while it may
        // still choose: they must have the time of a round of the policy's
        // queue to be referenced (a minor fault), or the zap would teach
        // the policy nothing. Once the round's work is spent, or if
        // nothing else can be taken (every page was mapped: the first
        // evictions), they are taken after all.
        table.eviction += 1;
        let eviction = table.eviction;
        let mut victims = Vec::new();
        let mut candidates = 0usize;
        for fresh_allowed in [false, true] {
            let mut zaps = 0usize;
            while victims.len() < batch {
                let claimed = self.policy.victim(&mut |frame| {
                    candidates += 1;
                    let index = frame as usize;
                    let state = table.frame_state[index];
                    if state & (BUSY | FLUSHING) != 0 {
                        return false;
                    }
                    // Refusing every mapped page would have the policy walk
                    // its whole queue (every page of a budget that just
                    // filled is mapped) on every eviction, and refusing the
                    // round's zapped pages would have it offer them again
                    // and again.
                    let spent =
                        zaps >= ZAPS_PER_EVICTION_MAX || candidates > 2 * ZAPS_PER_EVICTION_MAX;
                    if state & MAPPED != 0 {
                        self.zap(table, frame);
                        if !spent {
                            zaps += 1;
                            table.zapped_by[index] = eviction;
                            return false;
                        }
                    } else if table.zapped_by[index] == eviction && !fresh_allowed && !spent {
                        return false;
                    }
                    table.frame_state[index] |= BUSY;
                    true
                });
                match claimed {
                    Some(frame) => victims.push(frame),
                    None => break,
                }
            }
            if !victims.is_empty() {
                break;
            }
        }
        self.eviction_candidates
            .fetch_add(candidates as u64, Ordering::Relaxed);
        victims
    }

    /// Unmaps a frame's page for the application, keeping it in the
    /// memfd: its next access is a minor fault. With kernel-resolved write
    /// protection, whether it was written is read just after: a page
    /// zapped after a store reads as written, one zapped while protected
    /// does not, and no store can come between (an access now faults, and
    /// its fault thread waits for the table lock this caller holds).
    fn zap(&self, table: &mut Table, frame: FrameId) {
        let page = table.frame_page[frame as usize];
        let address = self.page_address(page);
        // SAFETY: a page-aligned range of the application's mapping.
        unsafe { libc::madvise(address.cast(), self.page_size, libc::MADV_DONTNEED) };
        table.frame_state[frame as usize] &= !MAPPED;
        self.pages_zapped.fetch_add(1, Ordering::Relaxed);
        if let Some(pagemap) = &self.pagemap {
            let mut written = false;
            // SAFETY: the end of the page is within the mapping.
            let end = unsafe { address.add(self.page_size) };
            if let Err(error) = pagemap.take_written(address, end, |_, _| written = true) {
                // Not knowing, count it written: a needless write-back
                // rather than a lost one.
                tracing::warn!(region = %self.region.name(), %error, "PAGEMAP_SCAN failed");
                written = true;
            }
            if written {
                table.frame_state[frame as usize] |= DIRTY;
            }
        }
    }

    /// Marks dirty every resident page written since the last time (with
    /// kernel-resolved write protection; the pages are protected again).
    fn take_written(&self, table: &mut Table) -> Result<(), ClientError> {
        let Some(pagemap) = &self.pagemap else {
            return Ok(());
        };
        let base = self.tier.user as usize;
        let page_size = self.page_size;
        // SAFETY: one past the end of the mapping.
        let end = unsafe { self.tier.user.add(self.tier.len) };
        pagemap
            .take_written(self.tier.user, end, |start, stop| {
                let first = ((start - base) / page_size) as u64;
                let last = ((stop - 1 - base) / page_size) as u64;
                for page in first..=last {
                    // A busy page is not mapped (being filled, or zapped
                    // for eviction with what it had written read then):
                    // the scan reports it because its entry is empty and
                    // unprotected, not because it was written.
                    if let Some(&frame) = table.pages.get(&page)
                        && table.frame_state[frame as usize] & BUSY == 0
                    {
                        table.frame_state[frame as usize] |= DIRTY;
                    }
                }
            })
            .map_err(|error| {
                ClientError::Io(std::io::Error::new(
                    error.kind(),
                    format!("finding the written pages (PAGEMAP_SCAN): {error}"),
                ))
            })
    }

    /// Frees a page's memory: its next access is a missing fault.
    fn punch(&self, page: u64) {
        // SAFETY: fallocate on the mapping's memfd, within its size.
        unsafe {
            libc::fallocate(
                self.tier.memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (page * self.page_size as u64) as libc::off_t,
                self.page_size as libc::off_t,
            )
        };
    }

    /// Records that the node stores these pages from now on.
    fn mark_stored(&self, table: &mut Table, pages: impl Iterator<Item = u64>) {
        if let Some(bits) = table.unstored.as_mut() {
            for page in pages {
                let segment = page / self.segment_pages;
                bits[(segment / 64) as usize] &= !(1u64 << (segment % 64));
            }
        }
    }

    /// Writes pages (held busy or flushing) to the node, in batches, each
    /// read from the memfd.
    fn write_back(&self, pages: &[(FrameId, u64)]) -> Result<(), ClientError> {
        let backing = self.region.cache().backing();
        let mut bytes = Vec::new();
        for chunk in pages.chunks(pagoda_wire::limits::BATCH_PAGES_MAX.max(1)) {
            let numbers: Vec<u64> = chunk.iter().map(|&(_, page)| page).collect();
            bytes.resize(numbers.len() * self.page_size, 0);
            for (&page, buffer) in numbers.iter().zip(bytes.chunks_exact_mut(self.page_size)) {
                self.tier.read_page(page, buffer).map_err(|error| {
                    ClientError::Io(std::io::Error::new(
                        error.kind(),
                        format!("reading page {page} of the mapping's memfd: {error}"),
                    ))
                })?;
            }
            let buffers: Vec<&[u8]> = bytes.chunks_exact(self.page_size).collect();
            backing
                .write_pages(&numbers, &buffers)
                .map_err(backing_error)?;
            self.pages_written_back
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), ClientError> {
        let _flushing = self.flush_lock.lock();
        let mut table = self.table.lock();
        // With kernel-resolved write protection, the pages written since
        // the last look are read (and protected again) first.
        self.take_written(&mut table)?;
        // Dirty pages being evicted are being written by their eviction:
        // waited for below. The others are written here.
        let mut evicting: Vec<(usize, u64, u32)> = Vec::new();
        let mut dirty: Vec<(FrameId, u64)> = Vec::new();
        for frame in 0..table.frame_state.len() {
            let state = table.frame_state[frame];
            if state & DIRTY == 0 {
                continue;
            }
            let page = table.frame_page[frame];
            if state & BUSY != 0 {
                evicting.push((frame, page, table.frame_generation[frame]));
                continue;
            }
            table.frame_state[frame] = (state & !DIRTY) | FLUSHING;
            dirty.push((frame as FrameId, page));
        }
        // Protected before they are read: a store from now on faults and
        // marks its page dirty again. One call per run of consecutive
        // mapped pages.
        dirty.sort_unstable_by_key(|&(_, page)| page);
        let mut run: Option<(u64, u64)> = None;
        // (Pages the kernel tracks were protected again by the scan; a
        // page mapped writable on a store fault counts as written there.)
        let tracked = self.pagemap.is_some();
        let protect_run = |run: (u64, u64)| {
            let _ = self.uffd.write_protect(
                self.page_address(run.0),
                (run.1 - run.0) as usize * self.page_size,
                true,
            );
        };
        for &(frame, page) in &dirty {
            if tracked || table.frame_state[frame as usize] & MAPPED == 0 {
                continue;
            }
            run = match run {
                Some((start, end)) if end == page => Some((start, end + 1)),
                Some(previous) => {
                    protect_run(previous);
                    Some((page, page + 1))
                }
                None => Some((page, page + 1)),
            };
        }
        if let Some(last) = run {
            protect_run(last);
        }
        self.mark_stored(&mut table, dirty.iter().map(|&(_, page)| page));
        drop(table);
        let written = self.write_back(&dirty);
        let mut table = self.table.lock();
        for &(frame, _) in &dirty {
            let state = &mut table.frame_state[frame as usize];
            *state &= !FLUSHING;
            if written.is_err() {
                *state |= DIRTY;
            }
        }
        self.changed.notify_all();
        written?;
        for (frame, page, generation) in evicting {
            // Until the eviction ends: the frame given back (its page is on
            // the node), or its write-back failed (the page is still held,
            // dirty, not busy).
            while table.frame_generation[frame] == generation
                && table.frame_state[frame] & BUSY != 0
            {
                self.changed.wait_for(&mut table, BUSY_WAIT);
            }
            if table.frame_generation[frame] == generation && table.frame_state[frame] & DIRTY != 0
            {
                return Err(ClientError::Disconnected(format!(
                    "writing back page {page} of region {:?} (evicted during the flush) failed",
                    self.region.name()
                )));
            }
        }
        drop(table);
        self.region.flush()
    }

    fn protect(&self, range: Range<u64>, protection: Protection) -> Result<(), ClientError> {
        let page_size = self.page_size as u64;
        if range.start > range.end
            || range.end > self.tier.len as u64
            || !range.start.is_multiple_of(page_size)
            || !range.end.is_multiple_of(page_size)
        {
            return Err(ClientError::InvalidArgument(format!(
                "protect {}..{}: the range must be whole pages of {page_size} bytes within \
                 the region's {} bytes",
                range.start, range.end, self.tier.len
            )));
        }
        if protection == Protection::ReadOnly && self.pagemap.is_some() {
            return Err(ClientError::InvalidArgument(
                "read-only protection needs a mapping whose stores fault: map with \
                 MapOptions { dirty_tracking: DirtyTracking::Faults, .. }"
                    .into(),
            ));
        }
        let (start, end) = (range.start / page_size, range.end / page_size);
        let mut table = self.table.lock();
        table.set_protection(start, end, protection);
        let resident: Vec<(u64, FrameId)> = if end - start < table.pages.len() as u64 {
            (start..end)
                .filter_map(|page| table.pages.get(&page).map(|&frame| (page, frame)))
                .collect()
        } else {
            table
                .pages
                .iter()
                .filter(|&(&page, _)| (start..end).contains(&page))
                .map(|(&page, &frame)| (page, frame))
                .collect()
        };
        for (page, frame) in resident {
            // A busy page is being filled or evicted: its fill looks at
            // the new protection, and an evicted one comes back under it.
            let state = table.frame_state[frame as usize];
            if state & MAPPED == 0 || state & BUSY != 0 {
                continue;
            }
            match protection {
                Protection::Guard => self.zap(&mut table, frame),
                Protection::ReadOnly => {
                    let _ = self
                        .uffd
                        .write_protect(self.page_address(page), self.page_size, true);
                }
                Protection::ReadWrite => {}
            }
        }
        Ok(())
    }

    fn stats(&self) -> MappingStats {
        let table = self.table.lock();
        let resident_pages = table.pages.len() as u64;
        let dirty_pages = table
            .frame_state
            .iter()
            .filter(|&&state| state & DIRTY != 0)
            .count() as u64;
        drop(table);
        MappingStats {
            pages_fetched: self.pages_fetched.load(Ordering::Relaxed),
            pages_zero_filled: self.pages_zero_filled.load(Ordering::Relaxed),
            minor_faults: self.minor_faults.load(Ordering::Relaxed),
            pages_zapped: self.pages_zapped.load(Ordering::Relaxed),
            eviction_candidates: self.eviction_candidates.load(Ordering::Relaxed),
            write_faults: self.write_faults.load(Ordering::Relaxed),
            pages_written_back: self.pages_written_back.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            evictions_ahead: self.evictions_ahead.load(Ordering::Relaxed),
            violations: self.violations.load(Ordering::Relaxed),
            failed_faults: self.failed_faults.load(Ordering::Relaxed),
            resident_pages,
            dirty_pages,
        }
    }
}

fn bit(bits: &[u64], index: u64) -> bool {
    bits.get((index / 64) as usize)
        .is_some_and(|word| word & (1u64 << (index % 64)) != 0)
}

fn backing_error(error: pagoda_cache::BackingError) -> ClientError {
    match error.downcast::<ClientError>() {
        Ok(error) => *error,
        Err(error) => ClientError::Protocol(error.to_string()),
    }
}

/// Sends `signal` to thread `thread` of this process; without a thread id
/// (the kernel did not give one) the process aborts, as no thread can be
/// told.
fn signal_thread(thread: u32, signal: libc::c_int) {
    if thread == 0 {
        eprintln!("pagoda: a fault of a mapping could not be served and its thread is unknown");
        std::process::abort();
    }
    // SAFETY: tgkill sends a signal to a thread of this process.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            thread as libc::pid_t,
            signal,
        )
    };
}

impl Region {
    /// The segments of the region the node has never stored, as a bit set
    /// (bit `n` of word `n / 64`); `None` when the node cannot say (an
    /// older node, or a segment size this client does not expect).
    fn unstored_segments(&self) -> Result<Option<Vec<u64>>, ClientError> {
        let backing = self.cache().backing();
        let segments = self.len().div_ceil(pagoda_wire::limits::SEGMENT_BYTES);
        let mut unstored = vec![0u64; segments.div_ceil(64) as usize];
        let mut start = 0u64;
        while start < segments {
            let reply = backing.link.call_into_with(
                Retry::Safe,
                |buffer, id| {
                    pagoda_wire::Request::StoredSegments {
                        region: backing.binding.id(),
                        start_segment: start,
                    }
                    .encode(buffer, id, 0)
                },
                &mut [],
                &|| Ok(()),
            )?;
            let (segment_bytes, next, count, bits) = match reply.decode() {
                Ok(pagoda_wire::Response::SegmentMap {
                    segment_bytes,
                    next_segment,
                    count,
                    bits,
                }) => (segment_bytes, next_segment, count as u64, bits),
                // A node from before the request: every page is fetched.
                Err(error) if error.code() == Some(pagoda_wire::ErrorCode::UnknownOpcode) => {
                    return Ok(None);
                }
                Err(error) => return Err(error),
                Ok(other) => return Err(crate::unexpected(&other)),
            };
            if segment_bytes != pagoda_wire::limits::SEGMENT_BYTES || count == 0 {
                return Ok(None);
            }
            for index in 0..count.min(segments - start) {
                let stored = bits[(index / 8) as usize] & (1 << (index % 8)) != 0;
                if !stored {
                    let segment = start + index;
                    unstored[(segment / 64) as usize] |= 1 << (segment % 64);
                }
            }
            if next == u64::MAX {
                break;
            }
            if next <= start {
                return Err(ClientError::Protocol(format!(
                    "segment map does not advance (next segment {next})"
                )));
            }
            start = next;
        }
        Ok(Some(unstored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the kernel behaviour kernel-resolved dirty tracking relies on
    // (`zap`): a page zapped after a store is reported written by
    // PAGEMAP_SCAN, one zapped while still protected is not, and the scan
    // protects what it reports, so a second scan reports nothing.
    #[test]
    fn a_zapped_page_tells_whether_it_was_written() {
        let page = page_size_of_system();
        let Ok(uffd) = uffd::Uffd::open(FaultMode::Auto, true) else {
            panic!("no userfaultfd here");
        };
        assert!(uffd.wp_async, "this kernel has no UFFD_FEATURE_WP_ASYNC");
        let pagemap = uffd::Pagemap::open().unwrap();
        let tier = Tier::new(4 * page).unwrap();
        let user = tier.user;
        let mut bytes = vec![0u8; page];
        bytes[0] = 1;
        // SAFETY: the tier's mapping, used only here.
        unsafe {
            uffd.register(user, 4 * page).unwrap();
            for index in 0..4 {
                tier.write_page(index as u64, &bytes).unwrap();
                uffd.continue_range(user.add(index * page), page, true)
                    .unwrap();
            }
            let scan = || {
                let mut found = Vec::new();
                pagemap
                    .take_written(user, user.add(4 * page), |start, end| {
                        found.push(((start - user as usize) / page, (end - user as usize) / page))
                    })
                    .unwrap();
                found
            };
            assert_eq!(scan(), []);
            *user.add(page) = 5;
            assert_eq!(scan(), [(1, 2)]);
            *user.add(2 * page) = 5;
            libc::madvise(user.add(2 * page).cast(), page, libc::MADV_DONTNEED);
            libc::madvise(user.add(3 * page).cast(), page, libc::MADV_DONTNEED);
            assert_eq!(scan(), [(2, 3)]);
            assert_eq!(scan(), []);
        }
    }
}

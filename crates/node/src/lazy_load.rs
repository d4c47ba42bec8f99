//! The lazy load of a region's baseline at start: a restarted node whose
//! regions were not kept in the bulk tier (a crash, or no bulk tier) serves
//! at once, loading each segment from the region's newest checkpoint on its
//! first access, while a background loader brings in the rest.
//!
//! **States.** Each segment of a loading region is *unloaded*, *loading*
//! (claimed by one thread, which reads it from storage) or *loaded*. A
//! segment no run of the baseline covers holds no page and is loaded from the
//! start. A segment is claimed by a compare-and-swap, so it is loaded exactly
//! once, and it is loaded whole (`Region::load_segment`): its memory is
//! allocated with the memory-file version odd, the runs of every object that
//! cover it are read in and each page verified, and only then is it published
//! in its table entry, under the entry's exclusive lock. The storage reads
//! hold no lock: scans of the region (dirty pages, the pager, snapshots) pass
//! over a segment being loaded rather than wait for the disk. Until it is
//! published an unloaded segment's entry is empty and its memory-file
//! version says *paged out*, so co-located clients ask the node rather than
//! read zeros. Once loaded a segment is an ordinary one (the pager may page
//! it out); it is never loaded again, so a write made after its load can
//! never be overwritten by the baseline.
//!
//! **Who waits.** Every access that resolves a segment for a request calls
//! `Region::ensure_loaded` first, holding no lock of the region: reads
//! (`read_pages`), whole-page and byte-range writes (`write`,
//! `prepare_bytes`, so journal replay too), a replica's segment rebuild
//! (`restore_segment`), and segment digests and copies
//! (`with_segment_bytes`). An unloaded segment is loaded there and then, in
//! the calling thread, ahead of the background loader; one another thread is
//! loading is waited for. Whole-region operations that must see every page
//! wait for the whole load: a full checkpoint (an incremental one does not:
//! unloaded pages are not dirty, and its manifest keeps naming them in the
//! baseline's objects), the segment map and page lists "dirty since never"
//! that a replica or a recovery copies from (`stored_segments`,
//! `dirty_ranges` and `dirty_count` below the baseline's number). A graceful
//! stop does not save a region that is still loading in the bulk tier's
//! index (`tiering::save_for_restart`): its next start loads it from storage
//! again.
//!
//! **Damage.** A page whose checksum fails, or an object that cannot be read,
//! marks the region damaged with the reason, as an eager load does; the
//! request that hit it, and every later one, gets the region-unavailable
//! error. Nothing unverified is ever served: a segment whose load fails is
//! zeroed, and the region's co-located readers are shut out before that.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pagoda_wire::RegionState;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::checkpoint::{Manifest, OpenObject};
use crate::error::NodeError;
use crate::region::Region;
use crate::storage::{STORAGE_PARALLELISM, Storage};

/// How a starting node loads a region's baseline from storage (when the bulk
/// tier did not keep the region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Serve at once; each segment loads on first access while a background
    /// loader brings in the rest (the default).
    Lazy,
    /// Load every region's baseline before serving: what nodes did before
    /// the lazy load, kept to compare the two side by side.
    Eager,
    /// For tests only: lazy, with a background loader of one thread that
    /// pauses this long before each batch of segments, so that a load can
    /// be watched while it runs.
    LazyPaced(Duration),
}

const UNLOADED: u8 = 0;
const LOADING: u8 = 1;
const LOADED: u8 = 2;

/// Segments a background worker claims at a time: 16 MiB of 2 MiB
/// segments, a default data object's worth, so each object's header and
/// index is read about once.
const BATCH_SEGMENTS: usize = 8;
/// How long a request waits for a segment that another thread is loading
/// before it gives up: a storage read stuck this long is an error.
const WAIT_MS_MAX: u64 = 120_000;
/// How often a waiter looks again (it is woken at once on progress).
const WAIT_POLL_MS: u64 = 50;

/// A region's lazy-load slot: empty (nothing to load, the usual case, one
/// atomic load per access) or the load in progress.
pub(crate) struct Loading {
    active: AtomicBool,
    load: RwLock<Option<Arc<LazyLoad>>>,
}

impl Loading {
    pub(crate) fn new() -> Loading {
        Loading {
            active: AtomicBool::new(false),
            load: RwLock::new(None),
        }
    }

    fn current(&self) -> Option<Arc<LazyLoad>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        self.load.read().clone()
    }

    /// Returns once segment `number` holds its pages from the baseline
    /// (loading it here if no one is), or the error that damaged the region.
    #[inline]
    pub(crate) fn ensure(&self, region: &Region, number: usize) -> Result<(), NodeError> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.current() {
            Some(load) => load.ensure(region, number..number + 1),
            None => Ok(()),
        }
    }

    /// Returns once every segment holds its pages from the baseline (loading
    /// what no one is loading here), or the error that damaged the region.
    pub(crate) fn ensure_all(&self, region: &Region) -> Result<(), NodeError> {
        let Some(load) = self.current() else {
            return Ok(());
        };
        let count = load.states.len();
        let mut start = 0;
        while start < count {
            let end = (start + BATCH_SEGMENTS).min(count);
            load.ensure(region, start..end)?;
            start = end;
        }
        Ok(())
    }

    /// Segments not loaded yet (0 when the region is not loading).
    pub(crate) fn segments_left(&self) -> u64 {
        self.current()
            .map_or(0, |load| load.left.load(Ordering::Relaxed))
    }

    fn start(&self, load: Arc<LazyLoad>) {
        *self.load.write() = Some(load);
        self.active.store(true, Ordering::Release);
    }

    fn finish(&self) {
        self.active.store(false, Ordering::Release);
        *self.load.write() = None;
    }
}

/// One run's piece within one segment: pages `first..first + count` are the
/// object's index entries `index..index + count`.
#[derive(Clone, Copy, Debug)]
struct Piece {
    object: u32,
    first: u64,
    index: u64,
    count: u64,
}

/// A region's load in progress.
pub(crate) struct LazyLoad {
    storage: Arc<Storage>,
    manifest: Arc<Manifest>,
    pages_per_segment: u64,
    /// Per segment: [`UNLOADED`], [`LOADING`] or [`LOADED`].
    states: Box<[AtomicU8]>,
    /// Segment `s`'s pieces are `pieces[starts[s]..starts[s + 1]]`.
    starts: Box<[usize]>,
    pieces: Box<[Piece]>,
    /// Segments not loaded yet.
    left: AtomicU64,
    /// The load failed: the region is damaged.
    failed: AtomicBool,
    /// Waiters sleep here; every segment loaded (or the failure) wakes them.
    lock: Mutex<()>,
    changed: Condvar,
    /// The background loader's next batch.
    next: AtomicUsize,
    began: Instant,
    pages_loaded: AtomicU64,
    bytes_read: AtomicU64,
}

impl LazyLoad {
    fn pieces_of(&self, segment: usize) -> &[Piece] {
        &self.pieces[self.starts[segment]..self.starts[segment + 1]]
    }

    fn unavailable(region: &Region) -> NodeError {
        NodeError::RegionUnavailable {
            name: region.info().name.clone(),
            reason: region.state_reason(),
        }
    }

    /// Loads the unloaded segments of `segments` here, then waits for those
    /// another thread is loading.
    fn ensure(&self, region: &Region, segments: Range<usize>) -> Result<(), NodeError> {
        self.claim_and_load(region, segments.clone())?;
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
        for number in segments {
            loop {
                if self.failed.load(Ordering::Acquire) {
                    return Err(Self::unavailable(region));
                }
                if self.states[number].load(Ordering::Acquire) == LOADED {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(NodeError::Contended(format!(
                        "segment {number} of region {:?} is still loading from its baseline \
                         after {WAIT_MS_MAX} ms",
                        region.info().name
                    )));
                }
                let mut guard = self.lock.lock();
                if self.states[number].load(Ordering::Acquire) != LOADED
                    && !self.failed.load(Ordering::Acquire)
                {
                    self.changed
                        .wait_for(&mut guard, Duration::from_millis(WAIT_POLL_MS));
                }
            }
        }
        Ok(())
    }

    /// Claims the unloaded segments of `segments` and loads them; `Ok` also
    /// when there was none to claim. A failure damages the region.
    fn claim_and_load(&self, region: &Region, segments: Range<usize>) -> Result<(), NodeError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Self::unavailable(region));
        }
        let claimed: Vec<usize> = segments
            .filter(|&number| {
                self.states[number]
                    .compare_exchange(UNLOADED, LOADING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .collect();
        if claimed.is_empty() {
            return Ok(());
        }
        match self.load_claimed(region, &claimed) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.fail(region, &error);
                Err(Self::unavailable(region))
            }
        }
    }

    /// Loads segments this thread claimed: each object their pieces lie in
    /// is opened once (its header and index verified), then each segment is
    /// filled whole from those objects.
    fn load_claimed(&self, region: &Region, claimed: &[usize]) -> Result<(), NodeError> {
        let mut wanted: Vec<(u32, Vec<[u64; 3]>)> = Vec::new();
        for &number in claimed {
            for piece in self.pieces_of(number) {
                let run = [piece.first, piece.index, piece.count];
                match wanted
                    .iter_mut()
                    .find(|(object, _)| *object == piece.object)
                {
                    Some((_, runs)) => runs.push(run),
                    None => wanted.push((piece.object, vec![run])),
                }
            }
        }
        let mut opened = Vec::with_capacity(wanted.len());
        for (object, runs) in &wanted {
            let entry = &self.manifest.objects[*object as usize];
            opened.push((
                *object,
                OpenObject::open(&self.storage, &self.manifest, entry, runs)?,
            ));
        }
        let page_size = self.manifest.page_size as usize;
        for &number in claimed {
            let base = number as u64 * self.pages_per_segment;
            let pieces = self.pieces_of(number);
            let ranges: Vec<Range<usize>> = pieces
                .iter()
                .map(|piece| {
                    (piece.first - base) as usize..(piece.first - base + piece.count) as usize
                })
                .collect();
            region.load_segment(number, &ranges, |bytes| {
                for piece in pieces {
                    let (_, object) = opened
                        .iter_mut()
                        .find(|(object, _)| *object == piece.object)
                        .expect("every piece's object was opened above");
                    let at = (piece.first - base) as usize * page_size;
                    object.read_pages(
                        piece.index,
                        &mut bytes[at..at + piece.count as usize * page_size],
                    )?;
                }
                Ok(())
            })?;
            let pages: u64 = pieces.iter().map(|piece| piece.count).sum();
            self.pages_loaded.fetch_add(pages, Ordering::Relaxed);
            self.loaded(region, number);
        }
        let read: u64 = opened.iter().map(|(_, object)| object.read_bytes).sum();
        self.bytes_read.fetch_add(read, Ordering::Relaxed);
        Ok(())
    }

    fn wake(&self) {
        let _guard = self.lock.lock();
        self.changed.notify_all();
    }

    /// Segment `number` is in; the last one ends the load.
    fn loaded(&self, region: &Region, number: usize) {
        self.states[number].store(LOADED, Ordering::Release);
        let left = self.left.fetch_sub(1, Ordering::AcqRel) - 1;
        self.wake();
        if left == 0 {
            tracing::info!(
                name = region.info().name,
                checkpoint = self.manifest.number,
                pages = self.pages_loaded.load(Ordering::Relaxed),
                bytes = self.bytes_read.load(Ordering::Relaxed),
                millis = self.began.elapsed().as_millis() as u64,
                "region's baseline loaded"
            );
            region.loading().finish();
        }
    }

    fn fail(&self, region: &Region, error: &NodeError) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(name = region.info().name, %error, "region's baseline failed to load");
            region.set_state(
                RegionState::Damaged,
                format!("its baseline failed to load: {error}"),
            );
        }
        self.wake();
    }
}

/// Puts `region` into the loading state for `manifest` (already checked to
/// fit it): every segment a run covers is unloaded, and looks paged out to
/// co-located clients until it is loaded. Returns the segments to load (0:
/// the baseline holds no page, and there is nothing to do).
pub(crate) fn begin(
    storage: &Arc<Storage>,
    region: &Region,
    manifest: Arc<Manifest>,
) -> Result<u64, NodeError> {
    let pages_per_segment = region.pages_per_segment();
    let segment_count = region.segment_count();
    let mut runs: Vec<Piece> = Vec::new();
    for (object, entry) in manifest.objects.iter().enumerate() {
        for &[first, index, count] in &entry.runs {
            runs.push(Piece {
                object: object as u32,
                first,
                index,
                count,
            });
        }
    }
    runs.sort_unstable_by_key(|run| run.first);
    let mut pieces = Vec::with_capacity(runs.len());
    for run in runs {
        let mut done = 0;
        while done < run.count {
            let start = run.first + done;
            let segment_end = (start / pages_per_segment + 1) * pages_per_segment;
            let count = (segment_end - start).min(run.count - done);
            pieces.push(Piece {
                object: run.object,
                first: start,
                index: run.index + done,
                count,
            });
            done += count;
        }
    }
    let mut starts = vec![0usize; segment_count + 1];
    for piece in &pieces {
        let segment = (piece.first / pages_per_segment) as usize;
        if segment >= segment_count {
            return Err(NodeError::InvalidArgument(format!(
                "baseline of {:?} has page {} beyond the region",
                manifest.name, piece.first
            )));
        }
        starts[segment + 1] += 1;
    }
    for number in 0..segment_count {
        starts[number + 1] += starts[number];
    }
    let states: Box<[AtomicU8]> = (0..segment_count)
        .map(|number| {
            AtomicU8::new(if starts[number] == starts[number + 1] {
                LOADED
            } else {
                UNLOADED
            })
        })
        .collect();
    let left = states
        .iter()
        .filter(|state| state.load(Ordering::Relaxed) == UNLOADED)
        .count() as u64;
    if left == 0 {
        return Ok(0);
    }
    for (number, state) in states.iter().enumerate() {
        if state.load(Ordering::Relaxed) == UNLOADED {
            region.memory().mark_paged_out(number);
        }
    }
    region.loading().start(Arc::new(LazyLoad {
        storage: storage.clone(),
        manifest,
        pages_per_segment,
        states,
        starts: starts.into_boxed_slice(),
        pieces: pieces.into_boxed_slice(),
        left: AtomicU64::new(left),
        failed: AtomicBool::new(false),
        lock: Mutex::new(()),
        changed: Condvar::new(),
        next: AtomicUsize::new(0),
        began: Instant::now(),
        pages_loaded: AtomicU64::new(0),
        bytes_read: AtomicU64::new(0),
    }));
    Ok(left)
}

/// The background loader: [`STORAGE_PARALLELISM`] threads that load the
/// loading regions' segments batch by batch, region after region, until
/// every one is loaded (or has failed, or the region is gone) or the node
/// stops.
pub(crate) struct Loader {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Starts loading `regions` (those not loading are skipped); `pause` is
    /// the test-only pause before each batch (see [`Reload::LazyPaced`]).
    pub(crate) fn start(
        regions: &[Arc<Region>],
        pause: Option<Duration>,
    ) -> Result<Loader, NodeError> {
        let regions: Arc<Vec<Weak<Region>>> = Arc::new(
            regions
                .iter()
                .filter(|region| region.loading().current().is_some())
                .map(Arc::downgrade)
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if regions.is_empty() {
            return Ok(Loader { stop, threads });
        }
        let workers = if pause.is_some() {
            1
        } else {
            STORAGE_PARALLELISM
        };
        for worker in 0..workers {
            let regions = regions.clone();
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pagoda-load-{worker}"))
                .spawn(move || run(&regions, &stop, pause))
                .map_err(|e| NodeError::io("spawning the baseline loader", e))?;
            threads.push(thread);
        }
        Ok(Loader { stop, threads })
    }

    /// Stops the threads after the batch in hand and waits for them. The
    /// loads left unfinished go on on demand.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(regions: &[Weak<Region>], stop: &AtomicBool, pause: Option<Duration>) {
    for region in regions {
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            // A region deleted meanwhile is not loaded further.
            let Some(region) = region.upgrade() else {
                break;
            };
            let Some(load) = region.loading().current() else {
                break;
            };
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
            let start = load.next.fetch_add(BATCH_SEGMENTS, Ordering::Relaxed);
            if start >= load.states.len() || load.failed.load(Ordering::Acquire) {
                break;
            }
            let end = (start + BATCH_SEGMENTS).min(load.states.len());
            // A failure has damaged the region and is logged.
            if load.claim_and_load(&region, start..end).is_err() {
                break;
            }
        }
    }
}

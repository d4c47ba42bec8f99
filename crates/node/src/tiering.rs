//! The pager: which segments stay in RAM and which go to the bulk tier.
//!
//! **Warmth.** Every read or write of a segment counts one access in its
//! table entry; every pass ([`PASS_MS`]) the pager halves every count, so a
//! count is a decayed measure of recent accesses (about twice the accesses
//! per pass, for a steady rate).
//!
//! **Watermarks.** RAM is kept below a high watermark: a pass that finds more
//! segments in use than [`high_watermark`] pages the coldest unpinned ones
//! out until use falls to [`low_watermark`], so that allocations find room
//! without waiting. An allocation that finds RAM full anyway makes room
//! itself, through [`Pager::reclaim_one`] (installed as the arena's
//! reclaimer): the coldest segment of the last pass's ranking is paged out.
//!
//! **Promotion.** A paged-out segment is read from the bulk tier in place;
//! it comes back into RAM when a pass finds it warm: into free RAM below the
//! low watermark, or in exchange for a resident segment that is markedly
//! colder (its warmth below a quarter of the paged-out one's), at most
//! [`EXCHANGES_PER_PASS`] per pass so a shifting workload cannot keep the
//! disk busy with moves alone. Byte-range writes page a segment in at once;
//! whole-page writes go to the bulk tier in place (see `region`).
//!
//! **Restart.** A graceful stop with a bulk tier pages every region whose
//! pages are exactly its last checkpoint out to the bulk tier and saves the
//! tier's index ([`save_for_restart`]); the next start takes the blocks over
//! and serves those regions at once, from the bulk tier, while the pager
//! *loads* them back into RAM as fast as the disk allows ([`Pager::start_loading`]),
//! until RAM reaches the low watermark. A region still loading its baseline
//! lazily (see `lazy_load`) is not saved: part of it is in storage only, and
//! the next start loads it from there again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::arena::Arena;
use crate::bulk::AlignedBuf;
use crate::error::NodeError;
use crate::region::Region;

/// Milliseconds between passes.
pub const PASS_MS: u64 = 200;
/// Most exchanges of a cold resident segment for a warm paged-out one per
/// pass (8 segments of 2 MiB: 16 MiB each way, 80 MiB/s at most).
pub const EXCHANGES_PER_PASS: usize = 8;
/// The least warmth at which a paged-out segment is brought back.
const PROMOTE_MIN: u32 = 8;
/// How much warmer than the resident segment it replaces a paged-out one
/// must be: exchanges between segments of about the same warmth would only
/// move bytes.
const EXCHANGE_FACTOR: u32 = 4;
/// Segments a step of the restart's load brings in, and the threads it
/// uses.
const LOAD_BATCH: usize = 64;
const LOAD_THREADS: usize = 4;
/// Rankings a reclaim tries before it reports that nothing can go.
const RANKS_PER_RECLAIM: usize = 4;

/// RAM segments in use above which a pass pages out: all but 1/32 (with
/// fewer than 32 segments, passes never page out; allocations make room).
pub fn high_watermark(segments: u64) -> u64 {
    segments - segments / 32
}

/// What a pass that pages out brings RAM use down to (all but 1/16), and
/// the use below which it promotes warm segments into free RAM.
pub fn low_watermark(segments: u64) -> u64 {
    segments - segments / 16
}

/// The pager; see the module documentation.
pub struct Pager {
    arena: Arc<Arena>,
    /// A segment's worth of scratch: one page-out at a time.
    buffer: Mutex<AlignedBuf>,
    /// Resident segments of the last ranking with their warmth then,
    /// warmest first (taken from the end).
    victims: Mutex<Vec<(Weak<Region>, usize, u32)>>,
    /// Loading regions restored from the bulk tier at start.
    loading: AtomicBool,
    /// Held for each pass and each step of a load, and by
    /// [`save_for_restart`], which must see no segment move under it.
    moving: Mutex<()>,
    stop: AtomicBool,
}

impl Pager {
    /// A pager for `arena` (which has a bulk tier), installed as its
    /// reclaimer.
    pub fn install(arena: Arc<Arena>) -> Result<Arc<Pager>, NodeError> {
        let pager = Arc::new(Pager {
            buffer: Mutex::new(AlignedBuf::new(arena.segment_bytes())?),
            arena: arena.clone(),
            victims: Mutex::new(Vec::new()),
            loading: AtomicBool::new(false),
            moving: Mutex::new(()),
            stop: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&pager);
        arena.set_reclaimer(Box::new(move || match weak.upgrade() {
            Some(pager) => pager.reclaim_one(),
            None => Ok(false),
        }));
        Ok(pager)
    }

    /// Runs a pass every [`PASS_MS`] on a thread of its own until
    /// [`Pager::stop`].
    pub fn spawn(self: &Arc<Self>) -> Result<JoinHandle<()>, NodeError> {
        let pager = self.clone();
        std::thread::Builder::new()
            .name("pagoda-pager".into())
            .spawn(move || {
                while !pager.stop.load(Ordering::Acquire) {
                    if pager.loading.load(Ordering::Acquire) {
                        let _moving = pager.moving.lock();
                        pager.load_some();
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(PASS_MS));
                    let _moving = pager.moving.lock();
                    if let Err(error) = pager.pass() {
                        tracing::warn!(%error, "the pager's pass failed");
                    }
                }
            })
            .map_err(|e| NodeError::io("spawning the pager", e))
    }

    /// Starts loading every paged-out segment into RAM, as fast as the disk
    /// allows, until RAM reaches the low watermark (regions restored from
    /// the bulk tier at start).
    pub fn start_loading(&self) {
        self.loading.store(true, Ordering::Release);
    }

    /// Pages in a few paged-out segments (warmest first); ends the loading
    /// when none is left or RAM is at the low watermark.
    fn load_some(&self) {
        let low = low_watermark(self.arena.segments());
        let room = low.saturating_sub(self.arena.used_segments()) as usize;
        let batch: Vec<(Arc<Region>, usize, u32)> = self
            .rank(false)
            .into_iter()
            .take(room.min(LOAD_BATCH))
            .collect();
        // A few at once: the disk serves several reads in parallel.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let moved = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..LOAD_THREADS.min(batch.len()) {
                scope.spawn(|| {
                    while let Some((region, number, _)) =
                        batch.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        if self.arena.used_segments() >= low {
                            return;
                        }
                        match region.page_in(*number) {
                            Ok(true) => {
                                moved.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(false) => {}
                            Err(error) => {
                                tracing::warn!(%error, region = region.info().name, "loading a segment failed");
                                return;
                            }
                        }
                    }
                });
            }
        });
        if moved.into_inner() == 0 {
            self.loading.store(false, Ordering::Release);
            tracing::info!("regions restored from the bulk tier are loaded");
        }
    }

    /// Ends the thread [`Pager::spawn`] started (at its next pass).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn page_out(&self, region: &Region, number: usize) -> Result<bool, NodeError> {
        region.page_out(number, &mut self.buffer.lock())
    }

    /// Pages out one cold segment for an allocation that found RAM full;
    /// `Ok(false)` when none could go (all pinned, or the bulk tier full).
    pub fn reclaim_one(&self) -> Result<bool, NodeError> {
        let mut ranked = 0;
        loop {
            let victim = self.victims.lock().pop();
            let Some((region, number, _)) = victim else {
                // Victims of a ranking may be gone, or pinned for a moment
                // (a page-in in progress pins its segment): rank again a few
                // times before giving up.
                if ranked == RANKS_PER_RECLAIM {
                    return Ok(false);
                }
                if ranked > 0 {
                    std::thread::yield_now();
                }
                self.rank(false);
                ranked += 1;
                continue;
            };
            let Some(region) = region.upgrade() else {
                continue;
            };
            if self.page_out(&region, number)? {
                return Ok(true);
            }
        }
    }

    /// Ranks every stored segment of every region; keeps the resident,
    /// unpinned ones as victims (coldest last) and returns the paged-out
    /// ones, warmest first.
    fn rank(&self, decay: bool) -> Vec<(Arc<Region>, usize, u32)> {
        let mut resident = Vec::new();
        let mut paged_out = Vec::new();
        for region in self.arena.regions() {
            for usage in region.segment_usage(decay) {
                if usage.resident {
                    if !usage.pinned {
                        resident.push((Arc::downgrade(&region), usage.number, usage.usage));
                    }
                } else {
                    paged_out.push((region.clone(), usage.number, usage.usage));
                }
            }
        }
        resident.sort_by_key(|&(_, _, usage)| std::cmp::Reverse(usage));
        *self.victims.lock() = resident;
        paged_out.sort_by_key(|&(_, _, usage)| std::cmp::Reverse(usage));
        paged_out
    }

    /// One pass: decay, page out down to the low watermark if above the high
    /// one, promote warm paged-out segments; see the module documentation.
    pub fn pass(&self) -> Result<(), NodeError> {
        // Warmth as it was before this pass's decay.
        let warm = self.rank(true);
        let segments = self.arena.segments();
        let (high, low) = (high_watermark(segments), low_watermark(segments));
        if self.arena.used_segments() > high {
            while self.arena.used_segments() > low {
                if !self.reclaim_one()? {
                    break;
                }
            }
            return Ok(());
        }
        let mut exchanges = 0;
        for (region, number, usage) in warm {
            if usage < PROMOTE_MIN {
                break;
            }
            if self.arena.used_segments() >= low {
                // Only in exchange for a markedly colder resident segment.
                if exchanges == EXCHANGES_PER_PASS {
                    break;
                }
                let Some(colder) = self.coldest_below(usage / EXCHANGE_FACTOR) else {
                    break;
                };
                let (victim, victim_number) = colder;
                if !self.page_out(&victim, victim_number)? {
                    continue;
                }
                exchanges += 1;
            }
            match region.page_in(number) {
                Ok(_) => {}
                // Both tiers full, or the pages are being moved: next pass.
                Err(NodeError::TiersFull { .. } | NodeError::Contended(_)) => break,
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// The coldest victim of the ranking, if its warmth is below `below`.
    fn coldest_below(&self, below: u32) -> Option<(Arc<Region>, usize)> {
        let mut victims = self.victims.lock();
        while let Some(&(ref region, number, usage)) = victims.last() {
            if usage >= below {
                // Warmer than asked: so is every victim before it.
                return None;
            }
            let region = region.upgrade();
            victims.pop();
            if let Some(region) = region {
                return Some((region, number));
            }
        }
        None
    }
}

/// At a graceful stop: pages out every region whose pages are exactly its
/// last checkpoint (complete in storage, nothing written since) and saves
/// the bulk tier's index of them, so the next start serves them at once.
/// Returns how many regions were saved.
pub fn save_for_restart(arena: &Arena, pager: Option<&Pager>) -> Result<usize, NodeError> {
    let Some(bulk) = arena.bulk() else {
        return Ok(0);
    };
    // No pass may bring a segment back in while the regions are saved.
    let _moving = pager.map(|pager| pager.moving.lock());
    let mut buffer = AlignedBuf::new(arena.segment_bytes())?;
    let mut saved = Vec::new();
    'regions: for region in arena.regions() {
        let Some(mark) = region.last_checkpoint() else {
            continue;
        };
        // A region still loading its baseline lazily holds only part of it
        // in RAM: the next start loads it from storage again.
        if region.state() != pagoda_wire::RegionState::Active
            || mark.number != region.durable_checkpoint()
            || region.segments_loading() > 0
            || region.dirty_count(mark.start_seq) > 0
        {
            continue;
        }
        for usage in region.segment_usage(false) {
            if usage.resident && !region.page_out(usage.number, &mut buffer)? {
                // Pinned or changing: not a stopped region after all.
                continue 'regions;
            }
        }
        if region
            .segment_usage(false)
            .iter()
            .any(|usage| usage.resident)
        {
            continue;
        }
        let info = region.info();
        saved.push(crate::bulk::SavedRegion {
            uid: region.uid(),
            checkpoint: mark.number,
            size: info.size,
            page_size: info.page_size,
            segments: region.paged_out_segments(),
        });
    }
    bulk.save_index(&saved)?;
    Ok(saved.len())
}

//! Eviction policies for the local tier.
//!
//! A policy decides which resident frame gives up its page when the cache needs
//! room. It knows nothing of page contents, pins or I/O: the cache tells it when
//! a page is admitted into a frame, when a frame is hit, and asks it for victims,
//! passing a claim function that says whether a candidate frame may be evicted
//! right now (a pinned frame may not). The same policy code runs inside the
//! client's cache and inside the trace simulator (`pagoda sim`).

mod clock;
mod two_phase;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use clock::Clock;
pub use two_phase::{TwoPhase, TwoPhaseConfig};

use crate::frame::{Frame, REFERENCED};
use crate::huge::HugeArray;

/// Where a policy keeps its per-frame access bits.
pub(crate) enum AccessBits {
    /// An array of its own (the simulator, tests, a policy built alone).
    Own(HugeArray<AtomicBool>),
    /// The REFERENCED bit of the cache's frame state words. A hit sets it
    /// with the compare-and-swap that pins the frame, so a hit touches no
    /// cache line for the policy.
    Frames(Arc<HugeArray<Frame>>),
}

impl AccessBits {
    pub(crate) fn own(frames: usize) -> AccessBits {
        AccessBits::Own(HugeArray::zeroed(frames))
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            AccessBits::Own(bits) => bits.len(),
            AccessBits::Frames(frames) => frames.len(),
        }
    }

    #[inline]
    pub(crate) fn get(&self, frame: FrameId) -> bool {
        match self {
            AccessBits::Own(bits) => bits[frame as usize].load(Ordering::Relaxed),
            AccessBits::Frames(frames) => {
                frames[frame as usize].state.load(Ordering::Relaxed) & REFERENCED != 0
            }
        }
    }

    /// Sets the bit; reads first, so that a hot frame's cache line is not
    /// written (and bounced between cores) on every hit.
    #[inline]
    pub(crate) fn set(&self, frame: FrameId) {
        if self.get(frame) {
            return;
        }
        match self {
            AccessBits::Own(bits) => bits[frame as usize].store(true, Ordering::Relaxed),
            AccessBits::Frames(frames) => {
                frames[frame as usize]
                    .state
                    .fetch_or(REFERENCED, Ordering::Relaxed);
            }
        }
    }

    #[inline]
    pub(crate) fn clear(&self, frame: FrameId) {
        if !self.get(frame) {
            return;
        }
        match self {
            AccessBits::Own(bits) => bits[frame as usize].store(false, Ordering::Relaxed),
            AccessBits::Frames(frames) => {
                frames[frame as usize]
                    .state
                    .fetch_and(!REFERENCED, Ordering::Relaxed);
            }
        }
    }
}

/// Index of a frame (a page-sized slot) in the local tier. Frames are numbered
/// `0..frames` where `frames` is the capacity the policy was built with.
pub type FrameId = u32;

/// An eviction policy: the bookkeeping behind "which page leaves next".
///
/// Contract between the cache and the policy:
/// - `admit(frame, key)` is called once a page (identified by `key`, the page
///   number) occupies `frame`. The frame is not resident in the policy before.
/// - `touch(frame)` is called on every hit of a resident frame. It must be
///   lock-free and cheap: it runs on the hit path of every access.
/// - `victim(claim)` picks a resident frame to evict. For each candidate the
///   policy calls `claim(frame)`; `true` means the cache has taken the frame for
///   eviction and the policy must forget it (as if `remove` had been called,
///   but remembering the key where the policy keeps a history of evicted keys).
///   `false` means the frame is busy (pinned) and must stay resident. The policy
///   returns `None` when a bounded scan found no claimable frame.
/// - `remove(frame)` forgets a resident frame without it counting as an
///   eviction (the page was dropped for another reason).
pub trait EvictionPolicy: Send + Sync {
    /// Records that the page `key` now occupies `frame`.
    fn admit(&self, frame: FrameId, key: u64);
    /// Records that the page `key`, read ahead and not yet used, now
    /// occupies `frame`. It has not been referenced, so a policy with a
    /// probationary queue keeps it there whatever its history (a scan read
    /// ahead must not displace the frequently used set); its first use is
    /// not reported as a hit.
    fn admit_prefetched(&self, frame: FrameId, key: u64) {
        self.admit(frame, key);
    }
    /// Records a hit on a resident frame. Lock-free.
    fn touch(&self, frame: FrameId);
    /// Chooses and forgets a victim frame; see the trait documentation.
    fn victim(&self, claim: &mut dyn FnMut(FrameId) -> bool) -> Option<FrameId>;
    /// Forgets a resident frame without recording an eviction.
    fn remove(&self, frame: FrameId);
    /// A short name for reports ("clock", "two-phase", ...).
    fn name(&self) -> &'static str;
}

/// The policies the product's cache can be built with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PolicyKind {
    /// CLOCK (second chance): one reference bit per frame and a sweeping hand.
    Clock,
    /// Two-phase eviction (cold FIFO, ghost, hot CLOCK, adaptive split).
    #[default]
    TwoPhase,
}

impl PolicyKind {
    /// Builds a policy of this kind for a cache of `frames` frames.
    pub fn build(self, frames: usize) -> Box<dyn EvictionPolicy> {
        self.build_with(AccessBits::own(frames))
    }

    /// Builds a policy of this kind whose access bits are `bits`.
    pub(crate) fn build_with(self, bits: AccessBits) -> Box<dyn EvictionPolicy> {
        match self {
            PolicyKind::Clock => Box::new(Clock::with_bits(bits)),
            PolicyKind::TwoPhase => Box::new(TwoPhase::with_bits(
                TwoPhaseConfig::for_frames(bits.len()),
                bits,
            )),
        }
    }

    /// Parses a policy name as used on the command line.
    pub fn from_name(name: &str) -> Option<PolicyKind> {
        match name {
            "clock" => Some(PolicyKind::Clock),
            "two-phase" => Some(PolicyKind::TwoPhase),
            _ => None,
        }
    }
}

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

pub use clock::Clock;
pub use two_phase::{TwoPhase, TwoPhaseConfig};

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
        match self {
            PolicyKind::Clock => Box::new(Clock::new(frames)),
            PolicyKind::TwoPhase => Box::new(TwoPhase::new(frames)),
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

//! The policies the simulator can run: the product's two-phase policy, driven
//! through the very `EvictionPolicy` code the cache uses, and reference
//! policies written here so the product's build never carries them.

mod arc;
mod clock;
mod key_list;
mod lru;
mod s3fifo;

use std::collections::HashMap;

use pagoda_cache::policy::{EvictionPolicy, FrameId, TwoPhase};
use serde::Serialize;

pub use arc::Arc;
pub use clock::Clock;
pub use lru::Lru;
pub use s3fifo::S3Fifo;

/// A cache simulated one request at a time: it only tracks which keys are
/// resident, never page contents.
pub trait Simulated {
    /// Requests `key`; returns `true` on a hit. On a miss the key is admitted,
    /// evicting another if the cache is full.
    fn access(&mut self, key: u64) -> bool;
    /// The policy's name as used on the command line.
    fn name(&self) -> &'static str;
}

/// The policies `pagoda sim` can run, by command-line name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
pub enum PolicyName {
    /// The product's two-phase policy (pagoda-cache).
    #[value(name = "two-phase")]
    #[serde(rename = "two-phase")]
    TwoPhase,
    /// Exact LRU.
    #[value(name = "lru")]
    #[serde(rename = "lru")]
    Lru,
    /// CLOCK (second chance).
    #[value(name = "clock")]
    #[serde(rename = "clock")]
    Clock,
    /// ARC.
    #[value(name = "arc")]
    #[serde(rename = "arc")]
    Arc,
    /// S3-FIFO.
    #[value(name = "s3fifo", alias = "s3-fifo")]
    #[serde(rename = "s3fifo")]
    S3Fifo,
}

impl PolicyName {
    /// Every policy, in the order reports list them.
    pub const ALL: [PolicyName; 5] = [
        PolicyName::TwoPhase,
        PolicyName::Lru,
        PolicyName::Clock,
        PolicyName::Arc,
        PolicyName::S3Fifo,
    ];

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::TwoPhase => "two-phase",
            PolicyName::Lru => "lru",
            PolicyName::Clock => "clock",
            PolicyName::Arc => "arc",
            PolicyName::S3Fifo => "s3fifo",
        }
    }

    /// Builds an empty simulated cache of `pages` pages (at least one).
    pub fn build(self, pages: usize) -> Box<dyn Simulated> {
        match self {
            PolicyName::TwoPhase => {
                Box::new(ProductCache::new(Box::new(TwoPhase::new(pages)), pages))
            }
            PolicyName::Lru => Box::new(Lru::new(pages)),
            PolicyName::Clock => Box::new(Clock::new(pages)),
            PolicyName::Arc => Box::new(Arc::new(pages)),
            PolicyName::S3Fifo => Box::new(S3Fifo::new(pages)),
        }
    }
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Drives a product `EvictionPolicy` the way the page cache does: a map from
/// key to frame, a list of free frames, `touch` on hits, and `victim` then
/// `admit` on misses once the frames run out. Nothing is pinned, so every
/// claim succeeds.
pub struct ProductCache {
    policy: Box<dyn EvictionPolicy>,
    frame_of: HashMap<u64, FrameId>,
    key_of: Vec<Option<u64>>,
    free: Vec<FrameId>,
}

impl ProductCache {
    /// Wraps `policy`, which must have been built for `frames` frames.
    pub fn new(policy: Box<dyn EvictionPolicy>, frames: usize) -> ProductCache {
        assert!(frames > 0, "a cache needs at least one frame");
        ProductCache {
            policy,
            frame_of: HashMap::with_capacity(frames),
            key_of: vec![None; frames],
            // Popped from the back, so frames are handed out from 0 upwards.
            free: (0..frames as FrameId).rev().collect(),
        }
    }
}

impl Simulated for ProductCache {
    fn access(&mut self, key: u64) -> bool {
        if let Some(&frame) = self.frame_of.get(&key) {
            self.policy.touch(frame);
            return true;
        }
        let frame = match self.free.pop() {
            Some(frame) => frame,
            None => {
                let frame = self
                    .policy
                    .victim(&mut |_| true)
                    .expect("with nothing pinned, a full cache always has a victim");
                let old = self.key_of[frame as usize]
                    .take()
                    .expect("the policy returned a frame that holds no page");
                self.frame_of.remove(&old);
                frame
            }
        };
        self.key_of[frame as usize] = Some(key);
        self.frame_of.insert(key, frame);
        self.policy.admit(frame, key);
        false
    }

    fn name(&self) -> &'static str {
        self.policy.name()
    }
}

/// Runs `trace` through `cache` and renders each access as `h` (hit) or `m`
/// (miss), for compact hand-computed expectations in tests.
#[cfg(test)]
pub(crate) fn hits(cache: &mut dyn Simulated, trace: &[u64]) -> String {
    trace
        .iter()
        .map(|&key| if cache.access(key) { 'h' } else { 'm' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the product adapter: it fills free frames first, then evicts
    // through the policy, and never holds more keys than frames.
    #[test]
    fn product_cache_fills_then_evicts() {
        let mut cache = PolicyName::TwoPhase.build(3);
        assert_eq!(cache.name(), "two-phase");
        assert_eq!(hits(cache.as_mut(), &[1, 2, 3, 1, 2, 3]), "mmmhhh");
        // A scan of new keys misses, and the adapter stays consistent.
        assert_eq!(hits(cache.as_mut(), &[4, 5, 6, 7]), "mmmm");
    }

    // Guards that every policy honours its capacity: with N pages, a loop over
    // N keys hits from its second round on.
    #[test]
    fn every_policy_holds_its_capacity() {
        for policy in PolicyName::ALL {
            let mut cache = policy.build(8);
            let trace: Vec<u64> = (0..3).flat_map(|_| 100..108).collect();
            let pattern = hits(cache.as_mut(), &trace);
            assert_eq!(&pattern[..8], "mmmmmmmm", "{policy}");
            assert_eq!(&pattern[8..], "h".repeat(16), "{policy}");
        }
    }
}

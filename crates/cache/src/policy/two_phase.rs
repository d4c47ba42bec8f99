//! Two-phase eviction (capability C2): a cold FIFO, a ghost of evicted ids and a
//! hot CLOCK, with the split between cold and hot adapted to the workload.
//!
//! # The mechanism
//!
//! - A newly admitted page enters the *cold* FIFO with its access bit clear.
//! - A hit only sets the frame's access bit ([`EvictionPolicy::touch`]): no lock
//!   and no list move, so hits scale across cores.
//! - Eviction works in two phases. Phase one drains the head of cold: a page
//!   whose bit is set was accessed again while cold and is promoted to *hot*;
//!   one whose bit is clear is evicted and its key remembered in the *ghost*.
//!   Phase two, when cold is within its target size, reclaims hot with a CLOCK
//!   second chance: a set bit is cleared and the page goes round again, a clear
//!   bit means the page is evicted. A hot page found referenced on several
//!   sweeps earns credits (at most `HOT_CREDITS_MAX`) that carry it through as
//!   many sweeps without a reference, so frequently used pages outlast bursts
//!   of newly promoted ones. Credits are counted by the sweep, under the
//!   shard lock; a hit still only sets a bit.
//! - A miss whose key is found in the ghost was evicted from cold too early; it
//!   is admitted straight to hot. A sequential scan therefore only ever passes
//!   through cold and ghost and cannot flush hot.
//!
//! # Adaptation
//!
//! No fixed cold size suits every workload: a small cold filters scans and
//! loops larger than the cache (S3-FIFO's strength), a large cold keeps pages
//! long enough for their second access in recency-friendly workloads (LRU's
//! strength). The cold target moves as in ARC and CAR, from two kinds of
//! regret:
//!
//! - a hit in the ghost of cold evictions says "cold was too small for this
//!   page": the target grows;
//! - a hit in a second, equally bounded ghost of *hot reclaims* (keys of pages
//!   that CLOCK evicted from hot, other than warm-up fillers never referenced
//!   in hot, which count as cold evictions) says "hot was too small": the
//!   target shrinks.
//!   The page itself re-enters cold, not hot, so that pages reclaimed from hot
//!   cannot cycle straight back into it; it enters with its access bit set,
//!   so it is promoted when it reaches the head of cold without needing a new
//!   hit inside cold's short window.
//!
//! Each step is weighted by the ratio of the two ghosts' sizes, so the rarer
//! signal moves the target as much as the frequent one (ARC's rule). Both
//! ghosts hold keys only, never page contents.
//!
//! Only a ghost hit on one of the newest keys of its ghost moves the target:
//! within the newest half of a cache's worth (the *adaptation window*), the
//! same depth in both ghosts. A ghost hit says "this page would have hit had
//! its queue been larger by about its depth in the ghost"; a hit deeper than
//! the split can move is no evidence for either side, only that a cache twice
//! as large would have hit. ARC bounds this by its directory (the two ghosts
//! together hold at most a cache's worth of keys, `|B1| + |B2| <= c`);
//! here each ghost remembers a full cache's worth, for admission, and the
//! window gives each half of that bound for adaptation, so a hit in either
//! ghost stands for the same amount of extra space (the marginal-utility
//! comparison of utility-based cache partitioning, Qureshi and Patt, MICRO
//! 2006). Without the window, at large caches (a quarter of the distinct
//! pages) deep returns flood in: pages of a long tail coming back after more
//! than half a cache's worth of evictions. On a multi-program trace they
//! drove cold to a single frame (S3-FIFO, with its small queue fixed at a
//! tenth, missed 3 points less), on a database mix of point lookups and
//! re-read range scans they kept cold too small for the re-reads (1.7 points
//! behind LRU). A hit beyond the window still admits its page (hot-ghost hits
//! to cold with the bit set, cold-ghost hits to hot under the rule below);
//! only the split ignores it.
//!
//! One more rule covers what no proportion can: while a shard warms up (until
//! its hot queue is reclaimed for the first time), cold pages beyond the
//! target move to hot instead of being evicted. Hot is empty then, so they
//! displace nothing; if the workload is a loop larger than the cache they
//! stay and hit on every round (where LRU, ARC and S3-FIFO miss every time),
//! and otherwise they carry no access bit and are the first pages the first
//! hot reclaims take.
//!
//! # Admission from far back: the test period
//!
//! A cold-ghost hit admits its page straight to hot, which pays only if hot
//! keeps the page until its next use. A page of a loop longer than the cache
//! returns after the same reuse distance every round; if that is longer than
//! hot keeps an unused page, admitting it only churns hot (each such page is
//! reclaimed before its next use, after pushing out one that would have hit).
//! Whether a loop's pages fall inside the ghost depends on the ghost's length
//! against the loop's period, so without a guard the policy was fragile: on a
//! mix of Zipf and two loops at a quarter of the distinct pages, a ghost of
//! half, one and two caches' worth gave 4 points behind S3-FIFO, 3 ahead, and
//! 12 behind. The guard is CLOCK-Pro's test period (Jiang, Chen and Zhang,
//! USENIX ATC 2005): a page is promoted to hot only if its reuse distance is
//! shorter than the recency of what hot holds. Here a page's reuse distance
//! is the number of evictions since it was last known used (kept with its key
//! in the ghost), and what hot holds is the *hot horizon*, a running average
//! of how many evictions a hot page that is reclaimed had gone unused. A
//! cold-ghost hit beyond the adaptation window whose reuse distance exceeds
//! the horizon is admitted as a new page, to cold; within the window (recent
//! evictions, the LRU-friendly case, where the ARC rule does well) the page
//! goes to hot as before. The clock is the count of victim searches, which
//! `victim` already kept to spread its searches over the shards; the horizon
//! and each page's last-use stamp live under the shard lock, set by the
//! sweep; a hit still only sets a bit.
//!
//! # Concurrency
//!
//! Frames are split into shards by frame id (`frame % shards`); each shard is
//! an independent two-phase policy under its own lock, so several threads can
//! select victims at once, each in a different shard. The ghosts are sharded
//! by a hash of the key, because a key evicted from one shard may come back in
//! a frame of another. Small caches use a single shard: splitting a few
//! thousand frames would cost hit ratio and there is no contention to remove.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{AccessBits, EvictionPolicy, FrameId};

/// Below this many frames per shard, sharding costs more hit ratio than the
/// contention it removes, so the default configuration uses fewer shards.
const SHARD_FRAMES_MIN: usize = 4096;

/// Upper bound on the default number of shards: enough to keep victim
/// selection off a single lock on large machines.
const SHARDS_MAX: usize = 16;

/// Most sweeps a hot page can ride out with its access bit clear, having
/// earned one per sweep that found the bit set. Two lets frequently used
/// pages outlast bursts of newly promoted ones; three (S3-FIFO's two-bit
/// counter) kept pages whose popularity had passed too long on drifting
/// working sets and LRU-friendly (short stack distance) workloads.
const HOT_CREDITS_MAX: u8 = 2;

/// A ghost hit moves the cold target only if at most this fraction of a
/// shard's frames were remembered in its ghost after the key: one half, so
/// that the two ghosts' windows together span one cache's worth of keys, as
/// ARC's directory bound `|B1| + |B2| <= c` does. See the module docs.
const ADAPT_WINDOW_DIVISOR: usize = 2;

/// The hot horizon is a running average over this many hot reclaims (each
/// reclaim moves it by 1/16 of its distance to the new sample): long enough
/// to smooth one reclaim's luck, short enough to follow a change of phase
/// within a small fraction of a cache's worth of evictions.
const HOT_HORIZON_SAMPLES: u64 = 16;

/// Marks the end of an intrusive list.
const NIL: u32 = u32::MAX;

/// How a [`TwoPhase`] is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwoPhaseConfig {
    /// Number of frames the cache has.
    pub frames: usize,
    /// Number of independent shards (each with its own lock). At least 1 and
    /// at most `frames`.
    pub shards: usize,
    /// Number of keys each of the two ghosts remembers, over all shards.
    pub ghost_entries: usize,
}

impl TwoPhaseConfig {
    /// The default layout for `frames` frames: one shard per
    /// `SHARD_FRAMES_MIN` frames (at most `SHARDS_MAX`), and ghosts as large
    /// as the cache, which is how far back ARC's directory remembers.
    pub fn for_frames(frames: usize) -> TwoPhaseConfig {
        TwoPhaseConfig {
            frames,
            shards: (frames / SHARD_FRAMES_MIN).clamp(1, SHARDS_MAX),
            ghost_entries: frames,
        }
    }
}

/// Which queue a frame is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Absent,
    Cold,
    Hot,
}

/// A frame's place in its shard's lists, plus the key it holds so that an
/// eviction can remember the key in a ghost.
#[derive(Clone, Copy, Debug)]
struct Node {
    prev: u32,
    next: u32,
    queue: Queue,
    key: u64,
    /// Extra rounds a hot page survives with its bit clear; earned one per
    /// sweep that found its bit set, at most `HOT_CREDITS_MAX`.
    credit: u8,
    /// Moved to hot by the warm-up rule, and not referenced there since: a
    /// page seen once, which hot only keeps because it had room.
    filler: bool,
    /// The eviction clock when the page was last known used: its admission,
    /// or the last sweep that found its access bit set.
    used_at: u64,
}

/// Head, tail and length of an intrusive doubly linked list over a shard's
/// nodes. Intrusive lists make `remove` O(1) without leaving stale entries.
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// One independent two-phase policy over the frames `f` with
/// `f % shards == index`. Local slot `l` is frame `l * shards + index`.
struct Shard {
    index: usize,
    shards: usize,
    nodes: Box<[Node]>,
    cold: List,
    hot: List,
    /// Target size of cold, in frames. Eviction takes from cold while cold is
    /// above it and from hot otherwise.
    cold_target: usize,
    /// Whether hot has ever been reclaimed. Until then the shard is warming
    /// up, and cold pages beyond the target fill hot instead of leaving.
    hot_reclaimed: bool,
    /// Running average of how many evictions a page reclaimed from hot had
    /// gone unused (warm-up fillers excepted): how long hot keeps a page that
    /// is not used again. `None` until the first such reclaim.
    hot_horizon: Option<u64>,
}

impl Shard {
    fn new(index: usize, shards: usize, frames: usize) -> Shard {
        // Frames index, index + shards, index + 2 * shards, ... below frames.
        let slots = (frames - index).div_ceil(shards);
        let node = Node {
            prev: NIL,
            next: NIL,
            queue: Queue::Absent,
            key: 0,
            credit: 0,
            filler: false,
            used_at: 0,
        };
        Shard {
            index,
            shards,
            nodes: vec![node; slots].into_boxed_slice(),
            cold: List::EMPTY,
            hot: List::EMPTY,
            hot_reclaimed: false,
            hot_horizon: None,
            // Start with cold at a tenth of the shard, S3-FIFO's fixed
            // choice, which filters one-hit pages from the first eviction on;
            // adaptation moves it from there.
            cold_target: (slots / 10).max(1),
        }
    }

    fn capacity(&self) -> usize {
        self.nodes.len()
    }

    fn slot(&self, frame: FrameId) -> u32 {
        debug_assert_eq!(frame as usize % self.shards, self.index);
        (frame as usize / self.shards) as u32
    }

    fn frame(&self, slot: u32) -> FrameId {
        (slot as usize * self.shards + self.index) as FrameId
    }

    fn list_mut(&mut self, queue: Queue) -> &mut List {
        match queue {
            Queue::Cold => &mut self.cold,
            Queue::Hot => &mut self.hot,
            Queue::Absent => unreachable!("absent frames are on no list"),
        }
    }

    fn push_back(&mut self, queue: Queue, slot: u32) {
        let tail = self.list_mut(queue).tail;
        {
            let node = &mut self.nodes[slot as usize];
            assert_eq!(node.queue, Queue::Absent, "frame is already on a queue");
            node.queue = queue;
            node.prev = tail;
            node.next = NIL;
        }
        if tail == NIL {
            self.list_mut(queue).head = slot;
        } else {
            self.nodes[tail as usize].next = slot;
        }
        let list = self.list_mut(queue);
        list.tail = slot;
        list.len += 1;
    }

    fn push_front(&mut self, queue: Queue, slot: u32) {
        let head = self.list_mut(queue).head;
        {
            let node = &mut self.nodes[slot as usize];
            assert_eq!(node.queue, Queue::Absent, "frame is already on a queue");
            node.queue = queue;
            node.prev = NIL;
            node.next = head;
        }
        if head == NIL {
            self.list_mut(queue).tail = slot;
        } else {
            self.nodes[head as usize].prev = slot;
        }
        let list = self.list_mut(queue);
        list.head = slot;
        list.len += 1;
    }

    fn unlink(&mut self, slot: u32) {
        let Node {
            prev, next, queue, ..
        } = self.nodes[slot as usize];
        assert_ne!(queue, Queue::Absent, "frame is on no queue");
        if prev == NIL {
            self.list_mut(queue).head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.list_mut(queue).tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.list_mut(queue).len -= 1;
        let node = &mut self.nodes[slot as usize];
        node.queue = Queue::Absent;
        node.prev = NIL;
        node.next = NIL;
    }

    fn resident(&self) -> usize {
        self.cold.len + self.hot.len
    }

    /// Moves the cold target by `step` frames (positive: grow cold), keeping
    /// at least one frame for each queue so that neither is starved outright.
    /// No step (a ghost hit beyond the adaptation window) leaves it.
    fn adapt(&mut self, step: Option<isize>) {
        let Some(step) = step else {
            return;
        };
        let max = self.capacity().saturating_sub(1).max(1);
        let target = self.cold_target as isize + step;
        self.cold_target = target.clamp(1, max as isize) as usize;
    }

    /// Whether a page unused for `reuse_distance` evictions would have been
    /// reclaimed from hot before it was used again: it was unused for longer
    /// than the hot horizon. Before the first hot reclaim nothing is known,
    /// and the answer is no.
    fn outlives_hot(&self, reuse_distance: u64) -> bool {
        self.hot_horizon
            .is_some_and(|horizon| reuse_distance > horizon)
    }

    /// Folds the idle time of a page reclaimed from hot into the hot horizon.
    fn observe_hot_idle(&mut self, idle: u64) {
        self.hot_horizon = Some(match self.hot_horizon {
            None => idle,
            Some(horizon) => horizon - horizon / HOT_HORIZON_SAMPLES + idle / HOT_HORIZON_SAMPLES,
        });
    }

    /// Runs the two phases until one frame is claimed, or until a bounded
    /// number of steps found nothing claimable. `now` is the eviction clock.
    fn evict(
        &mut self,
        accessed: &AccessBits,
        claim: &mut dyn FnMut(FrameId) -> bool,
        now: u64,
    ) -> Option<Evicted> {
        // Every step either clears an access bit, promotes a page, or rotates
        // a pinned frame; three passes over the residents clear every bit
        // and visit every frame at least once more, as in CLOCK.
        let mut budget = 3 * self.resident() + 2;
        // Refusals per queue since the last successful move, so that a queue
        // full of pinned frames makes eviction turn to the other one.
        let mut cold_refused = 0;
        let mut hot_refused = 0;
        while budget > 0 {
            budget -= 1;
            let cold_open = self.cold.len > 0 && cold_refused < self.cold.len;
            let hot_open = self.hot.len > 0 && hot_refused < self.hot.len;
            let queue = if cold_open && (self.cold.len > self.cold_target || !hot_open) {
                Queue::Cold
            } else if hot_open {
                Queue::Hot
            } else {
                return None;
            };
            let slot = self.list_mut(queue).head;
            let frame = self.frame(slot);
            if accessed.get(frame) {
                // Second chance. A cold page accessed again is promoted; a hot
                // one goes round the clock again. Either way the bit is spent.
                accessed.clear(frame);
                if queue == Queue::Hot {
                    // A page found referenced sweep after sweep is frequently
                    // used; let it ride out a few quiet sweeps (GCLOCK-style
                    // aging). Counted here, under the lock, so that `touch`
                    // stays a single bit store.
                    let node = &mut self.nodes[slot as usize];
                    node.credit = (node.credit + 1).min(HOT_CREDITS_MAX);
                    node.filler = false;
                }
                self.nodes[slot as usize].used_at = now;
                self.unlink(slot);
                self.push_back(Queue::Hot, slot);
                continue;
            }
            if queue == Queue::Hot && self.nodes[slot as usize].credit > 0 {
                self.nodes[slot as usize].credit -= 1;
                self.unlink(slot);
                self.push_back(Queue::Hot, slot);
                continue;
            }
            if queue == Queue::Cold && !self.hot_reclaimed && self.cold.len > self.cold_target + 1 {
                // Warm-up: hot is still below its share and nothing competes
                // for it, so a cold page is kept rather than evicted. Where
                // nothing is ever reused this costs nothing; where the
                // workload loops over more pages than the cache holds, the
                // pages kept this way stay and hit on every round, which no
                // FIFO or LRU order achieves. They carry no access bit and no
                // credit, and go to the head of hot, so the first hot
                // reclaims take them before any page that earned its place.
                self.nodes[slot as usize].filler = true;
                self.unlink(slot);
                self.push_front(Queue::Hot, slot);
                continue;
            }
            if claim(frame) {
                let Node {
                    key,
                    used_at,
                    filler,
                    ..
                } = self.nodes[slot as usize];
                if queue == Queue::Hot {
                    self.hot_reclaimed = true;
                    if !filler {
                        self.observe_hot_idle(now.saturating_sub(used_at));
                    }
                }
                // A filler leaves as what it is, a page seen once: remembered
                // in the ghost of cold evictions. In the ghost of hot
                // reclaims its return would read as "hot was too small" and
                // shrink cold; after the warm-up of a large cache that ghost
                // is full of such pages, and on a mix of loops and Zipf
                // accesses their returns drove cold to its minimum.
                let left = if std::mem::take(&mut self.nodes[slot as usize].filler) {
                    Queue::Cold
                } else {
                    queue
                };
                self.unlink(slot);
                return Some(Evicted {
                    frame,
                    key,
                    left,
                    used_at,
                });
            }
            // Pinned: the frame stays resident; move it out of the way.
            self.unlink(slot);
            self.push_back(queue, slot);
            match queue {
                Queue::Cold => cold_refused += 1,
                _ => hot_refused += 1,
            }
        }
        None
    }
}

/// A frame that [`Shard::evict`] claimed, and what the ghosts need of it.
struct Evicted {
    frame: FrameId,
    key: u64,
    /// The ghost it is remembered in: cold for pages seen once (warm-up
    /// fillers included), hot for pages reclaimed from hot.
    left: Queue,
    /// The eviction clock when the page was last known used.
    used_at: u64,
}

/// A bounded FIFO set of keys, each with the eviction clock at its page's
/// last known use. Lookups go through a map from key to the sequence number
/// of its newest entry; queue entries whose sequence number no longer matches
/// are stale (the key was taken or re-inserted) and skipped.
struct GhostQueue {
    order: VecDeque<(u64, u64)>,
    /// Key to (sequence number, last known use).
    members: HashMap<u64, (u64, u64), KeyHasher>,
    capacity: usize,
    sequence: u64,
}

impl GhostQueue {
    fn new(capacity: usize) -> GhostQueue {
        GhostQueue {
            order: VecDeque::new(),
            members: HashMap::default(),
            capacity,
            sequence: 0,
        }
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    fn insert(&mut self, key: u64, used_at: u64) {
        if self.capacity == 0 {
            return;
        }
        self.sequence += 1;
        self.members.insert(key, (self.sequence, used_at));
        self.order.push_back((key, self.sequence));
        // Stale entries count against the queue too, so the memory stays
        // bounded by twice the capacity whatever the pattern of hits.
        while self.members.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let (old_key, old_sequence) = self.order.pop_front().expect("members are queued");
            if self.members.get(&old_key).map(|&(sequence, _)| sequence) == Some(old_sequence) {
                self.members.remove(&old_key);
            }
        }
    }

    /// Forgets `key`. If it was remembered, returns its depth (how many keys
    /// were inserted after it, 0 for the newest, stale entries included) and
    /// the eviction clock at its page's last known use.
    fn take(&mut self, key: u64) -> Option<GhostEntry> {
        let (sequence, used_at) = self.members.remove(&key)?;
        Some(GhostEntry {
            depth: self.sequence - sequence,
            used_at,
        })
    }
}

/// What a ghost remembered of a key it gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GhostEntry {
    /// Keys inserted into the same ghost after it.
    depth: u64,
    /// The eviction clock at its page's last known use.
    used_at: u64,
}

/// Where a key was found in the ghosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GhostHit {
    /// Evicted from cold without a second access.
    Cold,
    /// Reclaimed from hot.
    Hot,
}

/// One key-hash shard of the two ghosts.
struct GhostShard {
    cold: GhostQueue,
    hot: GhostQueue,
    /// Deepest hit that moves the cold target, counted in keys inserted
    /// after it into the same ghost of this shard: half a policy shard's
    /// frames.
    /// Each ghost shard receives about 1/shards of all evictions, as each
    /// policy shard makes about 1/shards of them, so depths here and frames
    /// of a policy shard are on the same scale.
    adapt_depth_max: u64,
}

/// A multiplicative hash for keys (page numbers). The default SipHash
/// defends against adversarial keys, which page numbers chosen by the cache
/// are not, and costs several times more per lookup.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = mix(value);
    }
}

type KeyHasher = BuildHasherDefault<KeyHash>;

/// Spreads a key's bits (the finalizer of SplitMix64), so that sequential page
/// numbers land in different hash buckets and ghost shards.
fn mix(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pads a lock to its own cache line, so that threads working on different
/// shards do not invalidate each other's line.
#[repr(align(64))]
struct Padded<T>(T);

/// The two-phase eviction policy; see the module documentation.
pub struct TwoPhase {
    /// One access bit per frame, set by hits without any lock.
    /// In the cache, the frames' own state words (a hit's pin sets the
    /// bit); alone, an array in huge pages.
    accessed: AccessBits,
    shards: Box<[Padded<Mutex<Shard>>]>,
    ghosts: Box<[Padded<Mutex<GhostShard>>]>,
    /// Victim searches so far. It is the eviction clock that reuse distances
    /// and the hot horizon are counted in, and it says where the next search
    /// starts, so that concurrent evictions spread over the shards and the
    /// shards drain evenly.
    evictions: AtomicU64,
}

impl TwoPhase {
    /// Builds a two-phase policy over `frames` frames with the default layout
    /// ([`TwoPhaseConfig::for_frames`]).
    pub fn new(frames: usize) -> TwoPhase {
        TwoPhase::with_config(TwoPhaseConfig::for_frames(frames))
    }

    /// Builds a two-phase policy with an explicit layout.
    ///
    /// # Panics
    ///
    /// If there are no frames, more frames than 32-bit frame ids can number,
    /// or a shard count outside `1..=frames`. These are configuration bugs.
    pub fn with_config(config: TwoPhaseConfig) -> TwoPhase {
        let bits = AccessBits::own(config.frames);
        TwoPhase::with_bits(config, bits)
    }

    /// Builds a two-phase policy whose access bits are `accessed`, one per
    /// frame of `config`.
    pub(crate) fn with_bits(config: TwoPhaseConfig, accessed: AccessBits) -> TwoPhase {
        assert_eq!(accessed.len(), config.frames, "an access bit per frame");
        let TwoPhaseConfig {
            frames,
            shards,
            ghost_entries,
        } = config;
        assert!(frames > 0, "a cache needs at least one frame");
        assert!(frames < NIL as usize, "frame ids are 32-bit");
        assert!(
            (1..=frames).contains(&shards),
            "shards must be between 1 and the number of frames"
        );
        let ghost_per_shard = ghost_entries.div_ceil(shards);
        let adapt_depth_max = (frames.div_ceil(shards) / ADAPT_WINDOW_DIVISOR) as u64;
        TwoPhase {
            accessed,
            shards: (0..shards)
                .map(|index| Padded(Mutex::new(Shard::new(index, shards, frames))))
                .collect(),
            ghosts: (0..shards)
                .map(|_| {
                    Padded(Mutex::new(GhostShard {
                        cold: GhostQueue::new(ghost_per_shard),
                        hot: GhostQueue::new(ghost_per_shard),
                        adapt_depth_max,
                    }))
                })
                .collect(),
            evictions: AtomicU64::new(0),
        }
    }

    /// Number of frames currently resident (on the cold or the hot queue).
    /// Takes every shard lock in turn, so it is for tests and statistics.
    pub fn resident(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.lock().resident())
            .sum()
    }

    /// Sum over the shards of the cold target, in frames. For tests and
    /// statistics: it shows where adaptation has moved the split.
    pub fn cold_target(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.lock().cold_target)
            .sum()
    }

    fn shard_of(&self, frame: FrameId) -> &Mutex<Shard> {
        assert!(
            (frame as usize) < self.accessed.len(),
            "frame {frame} is out of range"
        );
        &self.shards[frame as usize % self.shards.len()].0
    }

    fn ghost_of(&self, key: u64) -> &Mutex<GhostShard> {
        &self.ghosts[(mix(key) % self.ghosts.len() as u64) as usize].0
    }

    /// Readies `frame`'s node for page `key` (not yet queued): its access
    /// bit cleared under the shard lock, before the frame is queued, so a
    /// hit on the frame's previous page cannot count for the new one; no
    /// credit; stamped used now. Returns its slot and the clock.
    fn place(&self, shard: &mut Shard, frame: FrameId, key: u64) -> (u32, u64) {
        self.accessed.clear(frame);
        let slot = shard.slot(frame);
        let now = self.evictions.load(Ordering::Relaxed);
        let node = &mut shard.nodes[slot as usize];
        node.key = key;
        node.credit = 0;
        node.filler = false;
        node.used_at = now;
        (slot, now)
    }

    /// Looks `key` up in the ghosts and forgets it there. Returns where it was
    /// found, the step by which the cold target should move (ARC's rule:
    /// one frame, or more when the other ghost is the larger one) or no step
    /// when the key lay deeper in its ghost than the adaptation window, and
    /// the eviction clock at the page's last known use.
    fn take_ghost(&self, key: u64) -> Option<(GhostHit, Option<isize>, u64)> {
        let mut ghost = self.ghost_of(key).lock();
        let (cold, hot) = (ghost.cold.len().max(1), ghost.hot.len().max(1));
        let window = ghost.adapt_depth_max;
        if let Some(entry) = ghost.cold.take(key) {
            let step = (hot / cold).max(1) as isize;
            let step = (entry.depth <= window).then_some(step);
            Some((GhostHit::Cold, step, entry.used_at))
        } else if let Some(entry) = ghost.hot.take(key) {
            let step = -((cold / hot).max(1) as isize);
            let step = (entry.depth <= window).then_some(step);
            Some((GhostHit::Hot, step, entry.used_at))
        } else {
            None
        }
    }
}

impl EvictionPolicy for TwoPhase {
    fn admit(&self, frame: FrameId, key: u64) {
        let ghost_hit = self.take_ghost(key);
        let mut shard = self.shard_of(frame).lock();
        let (slot, now) = self.place(&mut shard, frame, key);
        // Each shard sees a 1/shards share of the ghost hits and moves its own
        // target by the full step. Relative to its size that is shards times
        // a single policy's step at 1/shards the rate, so the split adapts
        // as fast as an unsharded policy's would.
        let queue = match ghost_hit {
            Some((GhostHit::Cold, None, used_at)) if shard.outlives_hot(now - used_at.min(now)) => {
                // The test period: the page comes back from far back in the
                // ghost after longer unused than hot keeps a page. In hot it
                // would be reclaimed before its next use (a loop longer than
                // the cache), so it starts over as a new page.
                Queue::Cold
            }
            Some((GhostHit::Cold, step, _)) => {
                shard.adapt(step);
                Queue::Hot
            }
            Some((GhostHit::Hot, step, _)) => {
                // The page re-enters cold, not hot: sending it straight back
                // to hot would let pages reclaimed from hot cycle back into
                // it, and with loops larger than hot, hot would churn like
                // LRU instead of holding a stable set. But it enters with its
                // access bit already set: it has proved itself once, so when
                // it reaches the head of cold it is promoted rather than
                // evicted, unless hot has reclaimed room for nothing else by
                // then. Cold thus delays its return to hot by one pass
                // through cold (which breaks the cycle on loops) instead of
                // demanding a fresh hit within cold's short window (which
                // lost pages of a frequently used set that hot had just
                // reclaimed: zipf with a shifting hot set, a hot set under a
                // zigzag sweep).
                shard.adapt(step);
                self.accessed.set(frame);
                Queue::Cold
            }
            None => Queue::Cold,
        };
        shard.push_back(queue, slot);
    }

    fn admit_prefetched(&self, frame: FrameId, key: u64) {
        // Read ahead and not used yet: nothing says it will be used twice,
        // whatever the ghost remembers of it (a scan that is read ahead
        // would otherwise pass straight into hot on its second round). It
        // starts in cold as a new page, its access bit clear; its first use
        // is its admission's access (the cache does not report it), so only
        // a second use promotes it. Its ghost entry goes, unused for
        // adaptation.
        let _ = self.take_ghost(key);
        let mut shard = self.shard_of(frame).lock();
        let (slot, _) = self.place(&mut shard, frame, key);
        shard.push_back(Queue::Cold, slot);
    }

    #[inline]
    fn touch(&self, frame: FrameId) {
        self.accessed.set(frame);
    }

    fn victim(&self, claim: &mut dyn FnMut(FrameId) -> bool) -> Option<FrameId> {
        let shards = self.shards.len();
        let before = self.evictions.fetch_add(1, Ordering::Relaxed);
        let start = (before % shards as u64) as usize;
        let now = before + 1;
        // First pass: skip shards another thread is evicting from, so that
        // concurrent evictions proceed in parallel. Second pass: wait for
        // them, because a busy shard may hold the only claimable frames.
        for pass in 0..2 {
            for offset in 0..shards {
                let index = (start + offset) % shards;
                let lock = &self.shards[index].0;
                let mut shard = if pass == 0 {
                    match lock.try_lock() {
                        Some(shard) => shard,
                        None => continue,
                    }
                } else {
                    lock.lock()
                };
                let Some(evicted) = shard.evict(&self.accessed, claim, now) else {
                    continue;
                };
                drop(shard);
                let mut ghost = self.ghost_of(evicted.key).lock();
                match evicted.left {
                    Queue::Cold => ghost.cold.insert(evicted.key, evicted.used_at),
                    _ => ghost.hot.insert(evicted.key, evicted.used_at),
                }
                return Some(evicted.frame);
            }
        }
        None
    }

    fn remove(&self, frame: FrameId) {
        let mut shard = self.shard_of(frame).lock();
        let slot = shard.slot(frame);
        if shard.nodes[slot as usize].queue != Queue::Absent {
            shard.unlink(slot);
        }
    }

    fn name(&self) -> &'static str {
        "two-phase"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(frames: usize) -> TwoPhase {
        TwoPhase::with_config(TwoPhaseConfig {
            frames,
            shards: 1,
            ghost_entries: frames,
        })
    }

    // Guards warm-up and phase one: while hot has never been reclaimed, cold
    // pages beyond the target fill hot instead of leaving; an accessed cold
    // page is promoted behind them, so the filler pages leave first.
    #[test]
    fn warm_up_fills_hot_before_the_promoted_page() {
        let policy = single(10);
        for frame in 0..10 {
            policy.admit(frame, 100 + frame as u64);
        }
        policy.touch(0);
        // Frame 0 is promoted; 1..=7 fill hot (at its head); cold keeps
        // 8 and 9, one above its target of one frame, and gives up 8.
        assert_eq!(policy.victim(&mut |_| true), Some(8));
        // Cold is at its target: hot is reclaimed, filler first, then the
        // promoted frame 0 (its bit was spent by the promotion), then cold.
        for expected in [7, 6, 5, 4, 3, 2, 1, 0, 9] {
            assert_eq!(policy.victim(&mut |_| true), Some(expected));
        }
        assert_eq!(policy.victim(&mut |_| true), None);
        assert_eq!(policy.resident(), 0);
    }

    // Guards the two ghosts: a key evicted from cold comes back straight into
    // hot and grows the cold target; a key reclaimed from hot comes back into
    // cold and shrinks it.
    #[test]
    fn ghost_hits_steer_the_split() {
        let policy = single(4);
        for frame in 0..4 {
            policy.admit(frame, frame as u64);
        }
        // Warm-up moves keys 0 and 1 to hot; key 2 leaves cold for the ghost.
        assert_eq!(policy.victim(&mut |_| true), Some(2));
        assert_eq!(policy.cold_target(), 1);
        policy.admit(2, 2);
        assert_eq!(policy.cold_target(), 2);
        // Cold ([3]) is within its target, so hot is reclaimed: 1, 0, then
        // key 2, which had it gone to cold would have left after key 3.
        assert_eq!(policy.victim(&mut |_| true), Some(1));
        assert_eq!(policy.victim(&mut |_| true), Some(0));
        assert_eq!(policy.victim(&mut |_| true), Some(2));
        // Key 2 had earned hot (a ghost hit) and was reclaimed from it; its
        // return shrinks the cold target and enters cold, behind key 3, with
        // its access bit set: key 3 leaves first, then key 2 is promoted to
        // hot instead of being evicted from cold, and is reclaimed from there.
        policy.admit(2, 2);
        assert_eq!(policy.cold_target(), 1);
        assert_eq!(policy.victim(&mut |_| true), Some(3));
        assert_eq!(policy.victim(&mut |_| true), Some(2));
        assert_eq!(policy.resident(), 0);
        // Keys 1 and 0 were warm-up fillers, never referenced in hot: they
        // left as pages seen once, for the ghost of cold evictions. Their
        // return grows the cold target and enters hot, as any cold ghost hit.
        policy.admit(1, 1);
        assert_eq!(policy.cold_target(), 2);
        assert_eq!(policy.victim(&mut |_| true), Some(1));
    }

    // Guards the adaptation window: a key found deeper in its ghost than half
    // a cache's worth of keys is admitted as any ghost hit but leaves the cold
    // target where it is; a key within the window moves it.
    #[test]
    fn deep_ghost_hits_leave_the_split() {
        let policy = single(4);
        for frame in 0..4 {
            policy.admit(frame, frame as u64);
        }
        // Warm-up moves keys 0 and 1 to hot; cold then evicts key 2, and each
        // new key in turn: the cold ghost holds 2, 3, 10, 11 (newest last).
        assert_eq!(policy.victim(&mut |_| true), Some(2));
        policy.admit(2, 10);
        assert_eq!(policy.victim(&mut |_| true), Some(3));
        policy.admit(3, 11);
        assert_eq!(policy.victim(&mut |_| true), Some(2));
        policy.admit(2, 12);
        assert_eq!(policy.victim(&mut |_| true), Some(3));
        assert_eq!(policy.cold_target(), 1);
        // Three keys were remembered after key 2, more than the window of
        // 4 / 2: its return enters hot (behind fillers 1 and 0) but does not
        // grow cold.
        policy.admit(3, 2);
        assert_eq!(policy.cold_target(), 1);
        // Cold (key 12) is within its target, so hot gives up filler key 1,
        // which the cold ghost remembers after 11. Key 11, one key deep,
        // is within the window and grows cold by one step.
        assert_eq!(policy.victim(&mut |_| true), Some(1));
        policy.admit(1, 11);
        assert_eq!(policy.cold_target(), 2);
    }

    /// Drives `policy` as the page cache does (a map from key to frame, free
    /// frames first, `victim` then `admit` once they run out) and returns,
    /// per request, whether it hit.
    fn replay(policy: &TwoPhase, frames: usize, trace: &[u64]) -> Vec<bool> {
        let mut frame_of: HashMap<u64, FrameId> = HashMap::new();
        let mut key_of: Vec<Option<u64>> = vec![None; frames];
        let mut free: Vec<FrameId> = (0..frames as FrameId).rev().collect();
        let mut hits = Vec::with_capacity(trace.len());
        for &key in trace {
            if let Some(&frame) = frame_of.get(&key) {
                policy.touch(frame);
                hits.push(true);
                continue;
            }
            let frame = free.pop().unwrap_or_else(|| {
                let frame = policy.victim(&mut |_| true).expect("nothing is pinned");
                frame_of.remove(&key_of[frame as usize].take().expect("resident"));
                frame
            });
            key_of[frame as usize] = Some(key);
            frame_of.insert(key, frame);
            policy.admit(frame, key);
            hits.push(false);
        }
        hits
    }

    /// A small linear congruential generator (Knuth's MMIX constants), so
    /// that the workloads below are the same on every run.
    struct Lcg(u64);

    impl Lcg {
        /// Uniform in `[0, 1)`.
        fn unit(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Half the requests Zipf (exponent 0.8) over 1,500 keys, the rest two
    /// loops of 400 and 900 keys (30 % and 20 % of the requests): the shape
    /// of the large `loopzipf` trace, at a tenth of its scale.
    fn loops_and_zipf(requests: usize) -> Vec<u64> {
        let mut random = Lcg(14);
        let mut total = 0.0;
        let cumulative: Vec<f64> = (1..=1500)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(0.8);
                total
            })
            .collect();
        let mut positions = [0u64; 2];
        (0..requests)
            .map(|_| {
                let choice = random.unit();
                if choice < 0.5 {
                    let target = random.unit() * total;
                    cumulative.partition_point(|&sum| sum < target) as u64
                } else {
                    let (loop_index, length) = if choice < 0.8 { (0, 400) } else { (1, 900) };
                    let key = 10_000 * (loop_index as u64 + 1) + positions[loop_index];
                    positions[loop_index] = (positions[loop_index] + 1) % length;
                    key
                }
            })
            .collect()
    }

    // Guards the test period: a ghost long enough to remember a loop longer
    // than hot keeps its pages must cost no hit ratio. Without the test
    // period each return of such a loop's page entered hot, was reclaimed
    // before its next use and pushed out a Zipf page that would have hit, so
    // the longer ghost (more information) lost points to the shorter one.
    #[test]
    fn a_longer_ghost_costs_no_hits_on_loops_and_zipf() {
        let trace = loops_and_zipf(150_000);
        // A quarter of the about 2,800 distinct keys.
        let frames = 700;
        let hit_ratio = |ghost_entries| {
            let policy = TwoPhase::with_config(TwoPhaseConfig {
                frames,
                shards: 1,
                ghost_entries,
            });
            let hits = replay(&policy, frames, &trace);
            hits.iter().filter(|&&hit| hit).count() as f64 / hits.len() as f64
        };
        let (short, long) = (hit_ratio(frames), hit_ratio(2 * frames));
        assert!(
            long >= short - 0.01,
            "ghost of 2 caches: hit ratio {long:.4}; of 1 cache: {short:.4}"
        );
    }

    // Guards the hot horizon's arithmetic and the test it feeds: unknown
    // until the first hot reclaim (no page is turned away), then a running
    // average that moves by a sixteenth of each sample's distance.
    #[test]
    fn hot_horizon_averages_idle_reclaims() {
        let mut shard = Shard::new(0, 1, 10);
        assert!(!shard.outlives_hot(u64::MAX));
        shard.observe_hot_idle(160);
        assert_eq!(shard.hot_horizon, Some(160));
        shard.observe_hot_idle(0);
        assert_eq!(shard.hot_horizon, Some(150));
        shard.observe_hot_idle(1_750);
        assert_eq!(shard.hot_horizon, Some(150 - 9 + 109));
        assert!(shard.outlives_hot(251));
        assert!(!shard.outlives_hot(250));
    }

    // Guards that pinned frames are skipped, stay resident, and are evicted
    // once they can be claimed.
    #[test]
    fn unclaimable_frames_are_skipped() {
        let policy = single(3);
        for frame in 0..3 {
            policy.admit(frame, frame as u64);
        }
        assert_eq!(policy.victim(&mut |frame| frame == 2), Some(2));
        assert_eq!(policy.victim(&mut |_| false), None);
        assert_eq!(policy.resident(), 2);
        let mut evicted = vec![
            policy.victim(&mut |_| true).unwrap(),
            policy.victim(&mut |_| true).unwrap(),
        ];
        evicted.sort();
        assert_eq!(evicted, vec![0, 1]);
    }

    // Guards `remove`: a removed frame is never offered as a victim.
    #[test]
    fn removed_frame_is_never_a_victim() {
        let policy = single(3);
        for frame in 0..3 {
            policy.admit(frame, frame as u64);
        }
        policy.remove(1);
        policy.remove(1);
        assert_eq!(policy.victim(&mut |_| true), Some(0));
        assert_eq!(policy.victim(&mut |_| true), Some(2));
        assert_eq!(policy.victim(&mut |_| true), None);
    }

    // Guards scan resistance: a long scan of new keys never evicts a page that
    // was promoted to hot and keeps being hit.
    #[test]
    fn scan_does_not_flush_hot() {
        let frames = 20;
        let policy = single(frames);
        let mut frame_of_key = HashMap::new();
        for frame in 0..frames as FrameId {
            policy.admit(frame, frame as u64);
            frame_of_key.insert(frame as u64, frame);
        }
        // Keys 0..5 are hot: hit them, then let eviction promote them.
        for key in 0..5 {
            policy.touch(frame_of_key[&key]);
        }
        for key in 1000..3000u64 {
            let frame = policy.victim(&mut |_| true).unwrap();
            assert!(frame >= 5, "scan evicted hot frame {frame}");
            policy.admit(frame, key);
            for hot in 0..5 {
                policy.touch(hot);
            }
        }
    }

    // Guards sharding: every frame of every shard can be evicted, each once.
    #[test]
    fn sharded_policy_evicts_each_frame_once() {
        let frames = 10;
        let policy = TwoPhase::with_config(TwoPhaseConfig {
            frames,
            shards: 3,
            ghost_entries: frames,
        });
        for frame in 0..frames as FrameId {
            policy.admit(frame, frame as u64 * 7);
        }
        let mut seen = vec![false; frames];
        for _ in 0..frames {
            let frame = policy.victim(&mut |_| true).unwrap() as usize;
            assert!(!seen[frame], "frame {frame} evicted twice");
            seen[frame] = true;
        }
        assert_eq!(policy.victim(&mut |_| true), None);
    }

    // Guards the ghost bound: it never remembers more keys than its capacity;
    // and the depth a hit reports, which decides whether it adapts the split:
    // keys inserted after it, taken ones included.
    #[test]
    fn ghost_queue_is_bounded() {
        let mut ghost = GhostQueue::new(4);
        let entry = |depth, key: u64| GhostEntry {
            depth,
            used_at: key * 10,
        };
        for key in 0..100 {
            ghost.insert(key, key * 10);
            if key.is_multiple_of(3) {
                assert_eq!(ghost.take(key), Some(entry(0, key)));
            }
            assert!(ghost.len() <= 4);
            assert!(ghost.order.len() <= 8);
        }
        // 99 was inserted after 98 (and taken at once).
        assert_eq!(ghost.take(98), Some(entry(1, 98)));
        assert_eq!(ghost.take(98), None);
        assert_eq!(ghost.take(10), None);
    }
}

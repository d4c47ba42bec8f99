//! Concurrency tests of the two-phase policy's protocol with the cache:
//! several threads admitting, hitting (touch), pinning, evicting (victim with a
//! claim function) and dropping (remove) pages at once, against a model of
//! which key occupies which frame.
//!
//! Under shuttle, the threads are interleaved at every `yield_now` between
//! policy calls, with randomized and PCT schedules, so orderings that real
//! threads rarely produce are explored and replayable. Each policy call runs
//! without a yield inside it (its locks are parking_lot's and its bits are
//! std atomics, which shuttle does not instrument), so shuttle checks the
//! interleavings of calls, not of instructions within a call. The same
//! scenario also runs on real OS threads to exercise those.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use pagoda_cache::policy::{EvictionPolicy, FrameId, TwoPhase, TwoPhaseConfig};

/// A frame whose state is `TAKEN` has been claimed for eviction or removal.
const TAKEN: u32 = u32::MAX;

/// The cache side of the protocol, kept as simple as can be checked.
struct Model {
    /// Which key each frame holds, or `None` if free or being refilled.
    key_of: Vec<Option<u64>>,
    frame_of: HashMap<u64, FrameId>,
    free: Vec<FrameId>,
    /// Admissions minus evictions and removals, per frame: 0 or 1.
    resident: Vec<u32>,
}

struct Shared {
    policy: TwoPhase,
    model: Mutex<Model>,
    /// Pin count per frame, or `TAKEN`. Claim turns 0 into `TAKEN`; a pinned
    /// frame (count above 0) cannot be claimed.
    pins: Vec<AtomicU32>,
}

impl Shared {
    fn new(frames: usize, shards: usize) -> Shared {
        Shared {
            policy: TwoPhase::with_config(TwoPhaseConfig {
                frames,
                shards,
                ghost_entries: frames,
            }),
            model: Mutex::new(Model {
                key_of: vec![None; frames],
                frame_of: HashMap::new(),
                free: (0..frames as FrameId).rev().collect(),
                resident: vec![0; frames],
            }),
            pins: (0..frames).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn claim(&self, frame: FrameId) -> bool {
        self.pins[frame as usize]
            .compare_exchange(0, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Installs `key` in `frame`, which the caller owns (taken or free).
    fn install(&self, model: &mut Model, frame: FrameId, key: u64) {
        assert_eq!(
            model.resident[frame as usize], 0,
            "frame {frame} installed twice"
        );
        model.resident[frame as usize] = 1;
        model.key_of[frame as usize] = Some(key);
        model.frame_of.insert(key, frame);
        self.pins[frame as usize].store(0, Ordering::Release);
        self.policy.admit(frame, key);
    }

    /// One access to `key`, as the page cache makes it.
    fn access(&self, key: u64, yield_now: fn()) {
        let hit = {
            let model = self.model.lock().unwrap();
            match model.frame_of.get(&key) {
                Some(&frame) => {
                    // Pin unless an evictor has already claimed the frame.
                    let pins = &self.pins[frame as usize];
                    let mut current = pins.load(Ordering::Acquire);
                    loop {
                        if current == TAKEN {
                            break None;
                        }
                        match pins.compare_exchange(
                            current,
                            current + 1,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => break Some(frame),
                            Err(actual) => current = actual,
                        }
                    }
                }
                None => None,
            }
        };
        if let Some(frame) = hit {
            self.policy.touch(frame);
            yield_now();
            self.pins[frame as usize].fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let free = self.model.lock().unwrap().free.pop();
        let frame = match free {
            Some(frame) => frame,
            None => {
                yield_now();
                let mut claimed = Vec::new();
                let victim = self.policy.victim(&mut |frame| {
                    let taken = self.claim(frame);
                    if taken {
                        claimed.push(frame);
                    }
                    taken
                });
                // The policy returns exactly the frame its claim took, and
                // takes no other.
                match victim {
                    Some(frame) => assert_eq!(claimed, vec![frame]),
                    None => {
                        assert!(claimed.is_empty());
                        return;
                    }
                }
                let frame = victim.unwrap();
                yield_now();
                let mut model = self.model.lock().unwrap();
                // A victim must be resident: never a free frame, never one
                // returned before without being admitted again.
                assert_eq!(
                    model.resident[frame as usize], 1,
                    "victim {frame} not resident"
                );
                model.resident[frame as usize] = 0;
                let old = model.key_of[frame as usize]
                    .take()
                    .expect("victim holds a key");
                model.frame_of.remove(&old);
                frame
            }
        };
        let mut model = self.model.lock().unwrap();
        if model.frame_of.contains_key(&key) {
            // Another thread installed the key meanwhile; give the frame back.
            self.pins[frame as usize].store(0, Ordering::Release);
            model.free.push(frame);
            return;
        }
        self.install(&mut model, frame, key);
    }

    /// Drops `key` without an eviction, as invalidation does.
    fn drop_key(&self, key: u64) {
        let mut model = self.model.lock().unwrap();
        let Some(&frame) = model.frame_of.get(&key) else {
            return;
        };
        if !self.claim(frame) {
            return;
        }
        self.policy.remove(frame);
        model.resident[frame as usize] = 0;
        model.key_of[frame as usize] = None;
        model.frame_of.remove(&key);
        self.pins[frame as usize].store(0, Ordering::Release);
        model.free.push(frame);
    }

    /// Checks that the policy and the model agree once every thread is done.
    fn check_quiescent(&self) {
        let model = self.model.lock().unwrap();
        let resident: u32 = model.resident.iter().sum();
        assert_eq!(self.policy.resident(), resident as usize);
        assert_eq!(model.frame_of.len(), resident as usize);
        for (&key, &frame) in &model.frame_of {
            assert_eq!(model.key_of[frame as usize], Some(key));
        }
        assert!(
            self.pins
                .iter()
                .all(|pins| pins.load(Ordering::Acquire) == 0)
        );
        drop(model);
        // Every resident frame can be evicted exactly once, and then none.
        let mut seen = vec![false; self.pins.len()];
        for _ in 0..resident {
            let frame = self.policy.victim(&mut |_| true).expect("a resident frame") as usize;
            assert!(!seen[frame], "frame {frame} evicted twice");
            seen[frame] = true;
        }
        assert_eq!(self.policy.victim(&mut |_| true), None);
    }
}

/// A small deterministic generator, so shuttle can replay a schedule.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

fn worker(shared: &Shared, seed: u64, operations: usize, keys: u64, yield_now: fn()) {
    let mut state = seed;
    for _ in 0..operations {
        let key = next(&mut state) % keys;
        if next(&mut state).is_multiple_of(8) {
            shared.drop_key(key);
        } else {
            shared.access(key, yield_now);
        }
        yield_now();
    }
}

fn shuttle_scenario() {
    let shared = Arc::new(Shared::new(4, 2));
    let threads: Vec<_> = (0..3)
        .map(|thread| {
            let shared = shared.clone();
            shuttle::thread::spawn(move || {
                worker(&shared, thread + 1, 8, 7, shuttle::thread::yield_now)
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    shared.check_quiescent();
}

// Guards the claim protocol under adversarial interleavings: no victim is
// returned twice while resident once, pinned frames are never returned,
// removed frames are never returned, and the resident count matches.
#[test]
fn shuttle_random_schedules() {
    shuttle::check_random(shuttle_scenario, 2000);
}

// The same, with PCT schedules, which find ordering bugs of small depth with
// known probability.
#[test]
fn shuttle_pct_schedules() {
    shuttle::check_pct(shuttle_scenario, 2000, 3);
}

// Guards the same invariants with real parallelism: OS threads, many shards,
// contention on every lock and access bit.
#[test]
fn os_threads_keep_invariants() {
    let shared = Arc::new(Shared::new(64, 4));
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                worker(&shared, thread + 11, 20_000, 200, std::thread::yield_now)
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    shared.check_quiescent();
}

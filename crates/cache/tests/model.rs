//! Model-based tests of the page cache over an in-memory backing store: random
//! reads, writes and flushes against a `Vec<u8>`, compared after every step.

use std::sync::Arc;

use pagoda_cache::memory::MemoryBacking;
use pagoda_cache::policy::PolicyKind;
use pagoda_cache::{CacheConfig, PageCache, PrefetchConfig};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const PAGE: usize = 4096;

fn cache(region_pages: usize, frames: usize, batch: usize) -> PageCache<MemoryBacking> {
    PageCache::new(
        CacheConfig {
            capacity_bytes: (frames * PAGE) as u64,
            page_size: PAGE,
            region_bytes: (region_pages * PAGE) as u64,
            policy: PolicyKind::default(),
            batch_pages_max: batch,
            prefetch: PrefetchConfig::default(),
        },
        MemoryBacking::new(region_pages * PAGE, PAGE),
    )
}

#[derive(Clone, Debug)]
enum Op {
    Read { offset: usize, len: usize },
    Write { offset: usize, len: usize, seed: u8 },
    Flush,
}

fn op(region: usize) -> impl Strategy<Value = Op> {
    let span = (0..region, 1..3 * PAGE).prop_map(move |(offset, len)| {
        let len = len.min(region - offset);
        (offset, len.max(1).min(region - offset))
    });
    prop_oneof![
        4 => span.clone().prop_map(|(offset, len)| Op::Read { offset, len }),
        4 => (span, any::<u8>()).prop_map(|((offset, len), seed)| Op::Write { offset, len, seed }),
        1 => Just(Op::Flush),
    ]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add(i as u8).wrapping_mul(31))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    // Guards single-threaded correctness of every path (hit, miss, eviction
    // with write-back, partial-page writes, flush) at cache sizes from one
    // frame to most of the region; proptest shrinks a failing sequence.
    #[test]
    fn cache_matches_model(frames in 1usize..12, batch in 1usize..6, ops in prop::collection::vec(op(16 * PAGE), 1..80)) {
        let region = 16 * PAGE;
        let cache = cache(16, frames, batch);
        let mut model = vec![0u8; region];
        for op in ops {
            match op {
                Op::Read { offset, len } => {
                    let mut buf = vec![0u8; len];
                    cache.read_at(offset as u64, &mut buf).unwrap();
                    prop_assert_eq!(&buf[..], &model[offset..offset + len]);
                }
                Op::Write { offset, len, seed } => {
                    let data = pattern(len, seed);
                    cache.write_at(offset as u64, &data).unwrap();
                    model[offset..offset + len].copy_from_slice(&data);
                }
                Op::Flush => {
                    cache.flush().unwrap();
                    prop_assert_eq!(cache.dirty_pages(), 0);
                    prop_assert_eq!(cache.backing().snapshot(), model.clone());
                }
            }
        }
        cache.flush().unwrap();
        prop_assert_eq!(cache.backing().snapshot(), model);
    }
}

#[derive(Clone, Debug)]
enum AheadOp {
    Read {
        offset: usize,
        len: usize,
    },
    Write {
        offset: usize,
        len: usize,
        seed: u8,
    },
    /// Reads `count` pages one at a time from `page` (a stream).
    Run {
        page: usize,
        count: usize,
    },
    Hint {
        page: usize,
    },
    Flush,
    /// Lets read-aheads in flight arrive.
    Sleep,
}

fn ahead_op(pages: usize) -> impl Strategy<Value = AheadOp> {
    let region = pages * PAGE;
    let span = (0..region, 1..3 * PAGE)
        .prop_map(move |(offset, len)| (offset, len.max(1).min(region - offset)));
    prop_oneof![
        3 => span.clone().prop_map(|(offset, len)| AheadOp::Read { offset, len }),
        3 => (span, any::<u8>()).prop_map(|((offset, len), seed)| AheadOp::Write { offset, len, seed }),
        2 => (0..pages, 1..12usize).prop_map(|(page, count)| AheadOp::Run { page, count }),
        2 => (0..pages).prop_map(|page| AheadOp::Hint { page }),
        1 => Just(AheadOp::Flush),
        1 => Just(AheadOp::Sleep),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    // Guards read-ahead against the model: streams, hints and writes mixed,
    // with read-aheads that arrive a millisecond after they are sent (so
    // writes, write-backs and evictions happen while they are in flight),
    // at cache sizes from one frame up. A read-ahead that installed stale
    // contents, or lost a write, shows as a read that differs.
    #[test]
    fn cache_with_read_ahead_matches_model(frames in 1usize..12, ops in prop::collection::vec(ahead_op(24), 1..60)) {
        let pages = 24;
        let region = pages * PAGE;
        let cache = cache(pages, frames, 4);
        cache.backing().set_read_ahead_delay(Some(std::time::Duration::from_millis(1)));
        let mut model = vec![0u8; region];
        for op in ops {
            match op {
                AheadOp::Read { offset, len } => {
                    let mut buf = vec![0u8; len];
                    cache.read_at(offset as u64, &mut buf).unwrap();
                    prop_assert_eq!(&buf[..], &model[offset..offset + len]);
                }
                AheadOp::Write { offset, len, seed } => {
                    let data = pattern(len, seed);
                    cache.write_at(offset as u64, &data).unwrap();
                    model[offset..offset + len].copy_from_slice(&data);
                }
                AheadOp::Run { page, count } => {
                    for page in page..(page + count).min(pages) {
                        let mut buf = vec![0u8; PAGE];
                        cache.read_at((page * PAGE) as u64, &mut buf).unwrap();
                        prop_assert_eq!(&buf[..], &model[page * PAGE..(page + 1) * PAGE]);
                    }
                }
                AheadOp::Hint { page } => {
                    cache.prefetch(&[(page * PAGE) as u64], std::time::Duration::from_millis(50)).unwrap();
                }
                AheadOp::Flush => {
                    cache.flush().unwrap();
                    prop_assert_eq!(cache.backing().snapshot(), model.clone());
                }
                AheadOp::Sleep => std::thread::sleep(std::time::Duration::from_millis(2)),
            }
        }
        cache.flush().unwrap();
        prop_assert_eq!(cache.backing().snapshot(), model.clone());
        let mut whole = vec![0u8; region];
        cache.read_at(0, &mut whole).unwrap();
        prop_assert_eq!(whole, model);
    }
}

// Guards concurrency: several threads read, write and flush at once through
// one cache. Each thread owns interleaved stripes of 3,000 bytes (which
// straddle pages, so threads share pages) and checks every read of its own
// stripes against its own model; at the end the backing store must equal the
// union of the models.
#[test]
fn threads_sharing_pages_match_their_models() {
    const THREADS: usize = 4;
    const STRIPE: usize = 3000;
    const REGION_PAGES: usize = 64;
    let region = REGION_PAGES * PAGE;
    let stripes = region / STRIPE;
    for frames in [1usize, 2, 3, 8, 40] {
        let cache = Arc::new(cache(REGION_PAGES, frames, 4));
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let mut rng =
                        rand::rngs::StdRng::seed_from_u64(thread as u64 * 7 + frames as u64);
                    let mut model = vec![0u8; region];
                    let owned: Vec<usize> =
                        (0..stripes).filter(|s| s % THREADS == thread).collect();
                    for step in 0..1500 {
                        let stripe = owned[rng.gen_range(0..owned.len())];
                        let start = stripe * STRIPE + rng.gen_range(0..STRIPE);
                        let len = rng.gen_range(1..=stripe * STRIPE + STRIPE - start);
                        match rng.gen_range(0..10) {
                            0..=4 => {
                                let data = pattern(len, rng.r#gen());
                                cache.write_at(start as u64, &data).unwrap();
                                model[start..start + len].copy_from_slice(&data);
                            }
                            5..=8 => {
                                let mut buf = vec![0u8; len];
                                cache.read_at(start as u64, &mut buf).unwrap();
                                assert_eq!(
                                    buf,
                                    model[start..start + len],
                                    "thread {thread} step {step} frames {frames}"
                                );
                            }
                            _ => cache.flush().unwrap(),
                        }
                    }
                    (owned, model)
                })
            })
            .collect();
        let mut expected = vec![0u8; region];
        for handle in handles {
            let (owned, model) = handle.join().unwrap();
            for stripe in owned {
                let range = stripe * STRIPE..(stripe + 1) * STRIPE;
                expected[range.clone()].copy_from_slice(&model[range]);
            }
        }
        cache.flush().unwrap();
        assert_eq!(cache.backing().snapshot(), expected, "frames {frames}");
        let mut whole = vec![0u8; region];
        cache.read_at(0, &mut whole).unwrap();
        assert_eq!(whole, expected);
    }
}

// Guards the write-back failure path: a failed write-back during flush keeps
// the pages dirty (nothing is pretended safe), and a later flush stores them.
#[test]
fn failed_write_back_keeps_pages_dirty() {
    let cache = cache(8, 4, 2);
    cache.write_at(0, &[7u8; 3 * PAGE]).unwrap();
    cache.backing().fail_writes(true);
    assert!(cache.flush().is_err());
    assert_eq!(cache.dirty_pages(), 3);
    // Eviction needs a write-back too, and fails the same way.
    let mut buf = vec![0u8; 2 * PAGE];
    assert!(cache.read_at(4 * PAGE as u64, &mut buf).is_err());
    cache.backing().fail_writes(false);
    cache.flush().unwrap();
    assert_eq!(cache.dirty_pages(), 0);
    assert!(
        cache.backing().snapshot()[..3 * PAGE]
            .iter()
            .all(|&b| b == 7)
    );
}

// Guards the failed-fetch path: the error is reported, the frames are freed,
// and the cache serves correctly once the backing store recovers.
#[test]
fn failed_fetch_is_reported_and_recovers() {
    let cache = cache(8, 2, 2);
    cache.write_at(PAGE as u64, &[3u8; PAGE]).unwrap();
    cache.flush().unwrap();
    cache.backing().fail_reads(true);
    let mut buf = vec![0u8; PAGE];
    assert!(cache.read_at(5 * PAGE as u64, &mut buf).is_err());
    cache.backing().fail_reads(false);
    for page in [5u64, 6, 7, 1] {
        cache.read_at(page * PAGE as u64, &mut buf).unwrap();
    }
    assert!(buf.iter().all(|&b| b == 3));
}

// Guards range checks: out-of-range accesses are errors, not panics.
#[test]
fn out_of_range_is_an_error() {
    let cache = cache(4, 2, 2);
    let mut buf = vec![0u8; 10];
    assert!(cache.read_at(4 * PAGE as u64 - 5, &mut buf).is_err());
    assert!(cache.write_at(u64::MAX - 3, &buf).is_err());
    assert!(cache.read_at(4 * PAGE as u64 - 10, &mut buf).is_ok());
}

// Guards batching: a multi-page miss is fetched in one backing call, and a
// full-page write miss needs no fetch at all.
#[test]
fn adjacent_misses_are_batched() {
    let cache = cache(64, 32, 16);
    let mut buf = vec![0u8; 8 * PAGE];
    cache.read_at(0, &mut buf).unwrap();
    assert_eq!(
        cache
            .backing()
            .read_calls
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    cache.write_at(16 * PAGE as u64, &[1u8; 4 * PAGE]).unwrap();
    assert_eq!(
        cache
            .backing()
            .read_calls
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(cache.stats().misses, 12);
}

// Guards the hit path's reference: a hit served without any lock (one page,
// resident) sets the policy's access bit through the pin itself, so under
// CLOCK the page hit survives the next eviction and an unreferenced one
// goes; and a read-ahead page's first use is not a reference.
#[test]
fn hits_are_references_for_the_policy() {
    for policy in [PolicyKind::Clock, PolicyKind::TwoPhase] {
        let cache = PageCache::new(
            CacheConfig {
                capacity_bytes: (4 * PAGE) as u64,
                page_size: PAGE,
                region_bytes: (64 * PAGE) as u64,
                policy,
                batch_pages_max: 1,
                prefetch: PrefetchConfig::off(),
            },
            MemoryBacking::new(64 * PAGE, PAGE),
        );
        let mut byte = [0u8; 1];
        let read = |page: u64, byte: &mut [u8; 1]| {
            cache.read_at(page * PAGE as u64, byte).unwrap();
        };
        for page in [10, 20, 30, 40] {
            read(page, &mut byte);
        }
        let misses = cache.stats().misses;
        // Hit 10 and 30 (lock-free hits), then bring in two new pages.
        read(10, &mut byte);
        read(30, &mut byte);
        assert_eq!(cache.stats().misses, misses, "{policy:?}: those were hits");
        read(50, &mut byte);
        read(60, &mut byte);
        assert_eq!(cache.stats().misses, misses + 2);
        // The pages hit are still resident; the others went.
        read(10, &mut byte);
        read(30, &mut byte);
        assert_eq!(
            cache.stats().misses,
            misses + 2,
            "{policy:?}: a page hit was evicted before pages never hit"
        );
        read(20, &mut byte);
        read(40, &mut byte);
        assert_eq!(cache.stats().misses, misses + 4, "{policy:?}");
    }
}

// Guards read_many: scattered, overlapping and page-crossing ranges read
// back what was written (against a model, through a cache far smaller than
// the region so that some pages are resident and some are fetched); the
// misses of one call are fetched together; a bad range fails the whole call.
#[test]
fn read_many_matches_the_model_and_batches_misses() {
    let pages = 64;
    let cache = cache(pages, 8, 16);
    let mut model = vec![0u8; pages * PAGE];
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for round in 0..200 {
        let offset = rng.gen_range(0..model.len() - 1);
        let len = rng.gen_range(1..(model.len() - offset).min(3 * PAGE));
        let data = pattern(len, round as u8);
        cache.write_at(offset as u64, &data).unwrap();
        model[offset..offset + len].copy_from_slice(&data);
        let count = rng.gen_range(1..12);
        let mut ranges: Vec<(u64, Vec<u8>)> = (0..count)
            .map(|_| {
                let offset = rng.gen_range(0..model.len() - 1);
                let len = rng.gen_range(0..(model.len() - offset).min(2 * PAGE));
                (offset as u64, vec![0xAAu8; len])
            })
            .collect();
        let mut reads: Vec<(u64, &mut [u8])> = ranges
            .iter_mut()
            .map(|(offset, buf)| (*offset, buf.as_mut_slice()))
            .collect();
        cache.read_many(&mut reads).unwrap();
        for (offset, buf) in &ranges {
            let offset = *offset as usize;
            assert!(
                buf[..] == model[offset..offset + buf.len()],
                "round {round}: {} bytes at {offset}",
                buf.len()
            );
        }
    }

    let cache = self::cache(64, 32, 16);
    let calls = |cache: &PageCache<MemoryBacking>| {
        cache
            .backing()
            .read_calls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut bufs = [[0u8; 8]; 8];
    let mut reads: Vec<(u64, &mut [u8])> = bufs
        .iter_mut()
        .enumerate()
        .map(|(index, buf)| ((index as u64 * 7 + 3) * PAGE as u64 + 100, &mut buf[..]))
        .collect();
    cache.read_many(&mut reads).unwrap();
    assert_eq!(calls(&cache), 1, "eight scattered misses, one fetch");
    assert_eq!(cache.stats().misses, 8);
    // Resident now: no fetch at all.
    cache.read_many(&mut reads).unwrap();
    assert_eq!(calls(&cache), 1);
    assert_eq!(cache.stats().hits, 8);
    // One range out of bounds: an error, and nothing fetched for the rest.
    let mut far = [0u8; 2];
    let mut near = [0u8; 2];
    let mut bad: Vec<(u64, &mut [u8])> = vec![
        (60 * PAGE as u64, &mut near[..]),
        (64 * PAGE as u64 - 1, &mut far[..]),
    ];
    assert!(cache.read_many(&mut bad).is_err());
    assert_eq!(calls(&cache), 1);
}

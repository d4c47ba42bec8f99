//! Model-based tests of the client against a real node on loopback: random
//! reads, writes and flushes through a region's cache, checked against a
//! `Vec<u8>` after every read; proptest shrinks a failure.

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use pagoda::{Client, ClientOptions, Region, RegionOptions};
use pagoda_node::Node;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;
/// Pages per region in every case: more than the largest cache, so caches of
/// every size evict.
const REGION_PAGES: usize = 24;
const THREADS: usize = 4;
/// Each thread owns every `THREADS`-th stripe of this many bytes. The size
/// divides no page size, so stripes straddle pages and threads share pages.
const STRIPE_BYTES: usize = 3000;
const OPS_PER_THREAD: usize = 300;

/// One node for every case in this file; each case works on a fresh region.
fn node_addr() -> SocketAddr {
    static NODE: OnceLock<(TempDir, Node)> = OnceLock::new();
    let (_, node) = NODE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let node = common::node(dir.path(), 256 * MIB, None);
        (dir, node)
    });
    node.local_addr()
}

fn connect() -> Client {
    Client::connect(node_addr(), ClientOptions::default()).expect("client connects")
}

/// A region with a name no other case uses, and the client that created it.
/// Dropping it deletes the region, so that failing cases (and proptest's
/// shrinking runs many) do not fill the node.
struct TestRegion {
    client: Client,
    name: String,
}

impl TestRegion {
    fn new(prefix: &str, page_size: usize) -> TestRegion {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let client = connect();
        client
            .create_region(&name, (REGION_PAGES * page_size) as u64, page_size as u32)
            .unwrap();
        TestRegion { client, name }
    }
}

impl Drop for TestRegion {
    fn drop(&mut self) {
        let _ = self.client.delete_region(&self.name);
    }
}

fn cache(pages: usize, page_size: usize) -> RegionOptions {
    RegionOptions::with_cache_bytes((pages * page_size) as u64)
}

/// The region's whole contents, read through `region` in chunks of random
/// sizes.
fn read_all(region: &Region, rng: &mut StdRng) -> Vec<u8> {
    let mut contents = vec![0u8; region.len() as usize];
    let mut offset = 0;
    while offset < contents.len() {
        let len = rng.gen_range(1..=20_000).min(contents.len() - offset);
        region
            .read_at(offset as u64, &mut contents[offset..offset + len])
            .unwrap();
        offset += len;
    }
    contents
}

fn first_difference(actual: &[u8], expected: &[u8]) -> Option<usize> {
    actual.iter().zip(expected).position(|(a, b)| a != b)
}

/// One thread's work: random operations on its own stripes, each read checked
/// against its own model. Returns the model, or what went wrong.
fn worker(region: &Region, thread: usize, seed: u64) -> Result<Vec<u8>, String> {
    let mut rng = StdRng::seed_from_u64(seed ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut model = vec![0u8; region.len() as usize];
    let stripes: Vec<usize> = (0..model.len() / STRIPE_BYTES)
        .filter(|stripe| stripe % THREADS == thread)
        .collect();
    let mut buf = vec![0u8; STRIPE_BYTES];
    for op in 0..OPS_PER_THREAD {
        let stripe = stripes[rng.gen_range(0..stripes.len())];
        let start = rng.gen_range(0..STRIPE_BYTES);
        let len = rng.gen_range(1..=STRIPE_BYTES - start);
        let offset = stripe * STRIPE_BYTES + start;
        let range = offset..offset + len;
        let roll = rng.gen_range(0..100);
        if roll < 60 {
            rng.fill(&mut buf[..len]);
            region
                .write_at(offset as u64, &buf[..len])
                .map_err(|e| format!("thread {thread} op {op}: write {range:?}: {e}"))?;
            model[range].copy_from_slice(&buf[..len]);
        } else if roll < 95 {
            region
                .read_at(offset as u64, &mut buf[..len])
                .map_err(|e| format!("thread {thread} op {op}: read {range:?}: {e}"))?;
            if let Some(at) = first_difference(&buf[..len], &model[range.clone()]) {
                return Err(format!(
                    "thread {thread} op {op}: read {range:?}: byte {} is {}, the model says {}",
                    offset + at,
                    buf[at],
                    model[offset + at]
                ));
            }
        } else {
            region
                .flush()
                .map_err(|e| format!("thread {thread} op {op}: flush: {e}"))?;
        }
    }
    Ok(model)
}

fn concurrent_case(cache_pages: usize, page_size: usize, seed: u64) -> Result<(), String> {
    let test_region = TestRegion::new("concurrent", page_size);
    let (client, name) = (&test_region.client, &test_region.name);
    let region = client
        .open_region(name, cache(cache_pages, page_size))
        .unwrap();
    let results: Vec<Result<Vec<u8>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let region = &region;
                scope.spawn(move || worker(region, thread, seed))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| Err(format!("a worker panicked: {panic:?}")))
            })
            .collect()
    });
    let models = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    region.flush().map_err(|e| format!("final flush: {e}"))?;

    // The union of the models: each stripe from its owner; the tail beyond
    // the last whole stripe was never written.
    let mut expected = vec![0u8; region.len() as usize];
    for stripe in 0..expected.len() / STRIPE_BYTES {
        let range = stripe * STRIPE_BYTES..(stripe + 1) * STRIPE_BYTES;
        expected[range.clone()].copy_from_slice(&models[stripe % THREADS][range]);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    // The writer's own view, then a second client's, through a cache of
    // another size.
    let own = read_all(&region, &mut rng);
    if let Some(at) = first_difference(&own, &expected) {
        return Err(format!(
            "the writer reads byte {at} as {}, the models say {}",
            own[at], expected[at]
        ));
    }
    drop(region);
    let other = connect();
    let reader = other
        .open_region(name, cache(cache_pages % 5 + 2, page_size))
        .unwrap();
    let seen = read_all(&reader, &mut rng);
    if let Some(at) = first_difference(&seen, &expected) {
        return Err(format!(
            "a second client reads byte {at} as {}, the models say {}",
            seen[at], expected[at]
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    // Guards the cache's concurrency against lost or torn writes and stale
    // reads: four threads, with stripes that share pages, read, write and
    // flush through one region with caches from one page to sixteen; each
    // read matches the thread's model, and after a flush a second client
    // sees the union of the models.
    #[test]
    fn concurrent_operations_match_the_model(
        cache_pages in 1usize..=16,
        page_size in prop::sample::select(vec![4096usize, 8192, 65536]),
        seed in any::<u64>(),
    ) {
        concurrent_case(cache_pages, page_size, seed).map_err(TestCaseError::fail)?;
    }
}

#[derive(Clone, Debug)]
enum Op {
    Read {
        offset: usize,
        len: usize,
    },
    Write {
        offset: usize,
        len: usize,
        seed: u8,
    },
    /// Flush, then compare the node's contents (bypassing every cache) with
    /// the model.
    Flush,
}

fn op(page_size: usize) -> impl Strategy<Value = Op> {
    let region = REGION_PAGES * page_size;
    // Up to three pages from anywhere, clipped to the region.
    let span = (0..region, 1..=3 * page_size)
        .prop_map(move |(offset, len)| (offset, len.min(region - offset)));
    prop_oneof![
        4 => span.clone().prop_map(|(offset, len)| Op::Read { offset, len }),
        5 => (span, any::<u8>()).prop_map(|((offset, len), seed)| Op::Write { offset, len, seed }),
        1 => Just(Op::Flush),
    ]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn sequential_case(page_size: usize, cache_pages: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let test_region = TestRegion::new("sequential", page_size);
    let (client, name) = (&test_region.client, &test_region.name);
    let region = client
        .open_region(name, cache(cache_pages, page_size))
        .unwrap();
    let info = region.info().clone();
    let all_pages: Vec<u64> = (0..REGION_PAGES as u64).collect();
    let mut model = vec![0u8; REGION_PAGES * page_size];
    for (index, op) in ops.iter().enumerate() {
        match *op {
            Op::Read { offset, len } => {
                let mut buf = vec![0u8; len];
                region.read_at(offset as u64, &mut buf).unwrap();
                prop_assert!(
                    buf[..] == model[offset..offset + len],
                    "op {}: read of {} bytes at {} differs from the model",
                    index,
                    len,
                    offset
                );
            }
            Op::Write { offset, len, seed } => {
                let data = pattern(len, seed);
                region.write_at(offset as u64, &data).unwrap();
                model[offset..offset + len].copy_from_slice(&data);
            }
            Op::Flush => {
                region.flush().unwrap();
                let mut on_node = vec![0u8; model.len()];
                client
                    .raw()
                    .read_pages(&info, &all_pages, &mut on_node)
                    .unwrap();
                let difference = first_difference(&on_node, &model);
                prop_assert!(
                    difference.is_none(),
                    "op {}: after flush the node's byte {:?} differs from the model",
                    index,
                    difference
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    // Guards every single-threaded path of the client (hits, misses,
    // evictions with write-back, partial-page writes, ranges spanning pages,
    // flush) against a real node; after each flush the node itself must hold
    // the model. Shrinks to a short sequence of operations.
    #[test]
    fn sequential_operations_match_the_model(
        (page_size, cache_pages, ops) in prop::sample::select(vec![4096usize, 8192, 65536])
            .prop_flat_map(|page_size| (
                Just(page_size),
                1usize..=8,
                prop::collection::vec(op(page_size), 1..60),
            )),
    ) {
        sequential_case(page_size, cache_pages, &ops)?;
    }
}

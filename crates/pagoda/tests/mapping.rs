//! Mapped regions (issue 12): loads and stores through a userfaultfd
//! mapping, checked against models and against what a second client reads
//! from the node; write-back of written pages only; zero-fill of pages the
//! node never stored; protection violations and their verdicts; a fault
//! that cannot be served; faults taken in kernel mode; the flush on drop.
//!
//! Outcomes that end a process (a verdict's `SIGSEGV`, the default
//! handler's abort, the `SIGBUS` of a fault the node cannot serve) are
//! checked on this test binary run again as a child process: the `child`
//! test, ignored in a normal run, which the tests below run with
//! `--ignored` and `PAGODA_MAPPING_CHILD` naming the scenario.
//!
//! The random tests print their seed; `PAGODA_MAPPING_SEED` replays one.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagoda::{
    Access, Client, ClientError, ClientOptions, Colocated, DirtyTracking, FaultMode,
    LOCAL_PAGES_MIN, MapOptions, Mapping, Protection, Region, RegionOptions, Verdict, Violation,
    ZAPS_PER_EVICTION_MAX,
};
use pagoda_node::Node;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PAGE: usize = 4096;
const PAGE_U64: u64 = PAGE as u64;
/// The node's page RAM in every test.
const NODE_BYTES: u64 = 64 << 20;
/// The node's unit of allocation: a segment the node never stored is what
/// a mapping may fill with zeros without asking.
const SEGMENT_PAGES: u64 = pagoda_wire::limits::SEGMENT_BYTES / PAGE_U64;
/// The longest a random workload runs, whatever its operation count.
const WORKLOAD_MAX: Duration = Duration::from_secs(30);
/// The longest a child process may take before it is killed.
const CHILD_MAX: Duration = Duration::from_secs(60);
/// The longest an access that calls a violation handler may take.
const VIOLATION_ACCESS_MAX: Duration = Duration::from_secs(10);

const CHILD_SCENARIO: &str = "PAGODA_MAPPING_CHILD";
const CHILD_NODE: &str = "PAGODA_MAPPING_CHILD_NODE";
const CHILD_REGION: &str = "PAGODA_MAPPING_CHILD_REGION";
const CHILD_DIR: &str = "PAGODA_MAPPING_CHILD_DIR";

// ---------------------------------------------------------------------------
// Helpers

fn seed() -> u64 {
    let seed = std::env::var("PAGODA_MAPPING_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (PAGODA_MAPPING_SEED={seed} replays it)");
    seed
}

/// A node of its own in a fresh directory, and a client of it.
struct Setup {
    node: Node,
    client: Client,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_with(ClientOptions::default())
}

/// A node of its own in a fresh directory, and a client of it with
/// `options`.
fn setup_with(options: ClientOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), NODE_BYTES, None);
    let client = Client::connect(node.local_addr(), options).unwrap();
    Setup {
        node,
        client,
        _dir: dir,
    }
}

impl Setup {
    /// Creates region `name` of `pages` pages and opens it for writing.
    fn region(&self, name: &str, pages: u64) -> Region {
        self.client
            .create_region(name, pages * PAGE_U64, PAGE as u32)
            .unwrap();
        self.client
            .open_region(name, RegionOptions::with_cache_bytes(1 << 20))
            .unwrap()
    }

    /// Everything the node holds for region `name`, read by a second
    /// client of its own (a new connection, an empty cache).
    fn read_back(&self, name: &str) -> Vec<u8> {
        let second = common::client(&self.node);
        let region = second
            .open_region_read_only(name, RegionOptions::with_cache_bytes(1 << 20))
            .unwrap();
        let mut bytes = vec![0u8; region.len() as usize];
        for (index, chunk) in bytes.chunks_mut(256 << 10).enumerate() {
            region.read_at(index as u64 * (256 << 10), chunk).unwrap();
        }
        bytes
    }
}

/// Maps `region` with a local budget of `local_pages` pages.
fn map(region: Region, local_pages: u64) -> Mapping {
    region
        .map(MapOptions::with_local_bytes(local_pages * PAGE_U64))
        .unwrap()
}

/// Maps `region` as `map`, with stores found by write-protect faults
/// (what read-only protection needs).
fn map_faulting(region: Region, local_pages: u64) -> Mapping {
    region
        .map(MapOptions {
            dirty_tracking: DirtyTracking::Faults,
            ..MapOptions::with_local_bytes(local_pages * PAGE_U64)
        })
        .unwrap()
}

/// A word of a page's known contents, different for every page, word and
/// `salt`, and never zero.
fn pattern(page: u64, word: u64, salt: u64) -> u64 {
    (page << 32 | word << 8 | salt).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Page `page` filled with `pattern(page, _, salt)`.
fn pattern_page(page: u64, salt: u64) -> Vec<u8> {
    (0..(PAGE / 8) as u64)
        .flat_map(|word| pattern(page, word, salt).to_le_bytes())
        .collect()
}

/// Asserts `got == want`, naming the first differing byte and page and how
/// many pages differ.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
    let pages = got
        .chunks(PAGE)
        .zip(want.chunks(PAGE))
        .filter(|(a, b)| a != b)
        .count();
    panic!(
        "{what}: byte {first} (page {}) is {:#04x}, the model says {:#04x}; {pages} pages differ",
        first / PAGE,
        got[first],
        want[first]
    );
}

fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|word| word.to_le_bytes()).collect()
}

fn load(mapping: &Mapping, offset: u64) -> u64 {
    mapping.as_atomic_u64s()[(offset / 8) as usize].load(Ordering::SeqCst)
}

fn store(mapping: &Mapping, offset: u64, value: u64) {
    mapping.as_atomic_u64s()[(offset / 8) as usize].store(value, Ordering::SeqCst);
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

// ---------------------------------------------------------------------------
// 1. Random loads and stores against a model

/// `threads` threads load and store random words of a region of
/// `region_pages` pages mapped with `local_pages` of budget, each owning
/// the words whose index modulo `threads` is its own (so its model of them
/// is exact), while another thread flushes now and then; every load is
/// checked against the model, and after a last flush a second client
/// reads the whole region back.
fn random_words(local_pages: u64, region_pages: u64, threads: usize, ops_per_thread: u64) {
    random_words_served(
        FaultMode::default(),
        Colocated::Auto,
        local_pages,
        region_pages,
        threads,
        ops_per_thread,
    );
}

/// [`random_words`] with faults served as `fault_mode` says, and pages read
/// from the node's memory (`Colocated::Auto`: the node is in this process)
/// or over the connection (`Colocated::Off`).
fn random_words_served(
    fault_mode: FaultMode,
    colocated: Colocated,
    local_pages: u64,
    region_pages: u64,
    threads: usize,
    ops_per_thread: u64,
) {
    let seed = seed();
    let over_connection = colocated == Colocated::Off;
    let setup = setup_with(ClientOptions {
        colocated,
        ..ClientOptions::default()
    });
    let name = "words";
    let mapping = setup
        .region(name, region_pages)
        .map(MapOptions {
            fault_mode,
            ..MapOptions::with_local_bytes(local_pages * PAGE_U64)
        })
        .unwrap();
    let words = mapping.as_atomic_u64s().len();
    let words_per_thread = words / threads;
    let words_per_page = PAGE / 8;
    let done = AtomicBool::new(false);
    let deadline = Instant::now() + WORKLOAD_MAX;

    let (models, flushes) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let mapping = &mapping;
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed ^ ((thread as u64 + 1) * 0x5851_f42d));
                    let atomics = mapping.as_atomic_u64s();
                    // model[k] is word k * threads + thread.
                    let mut model = vec![0u64; words_per_thread];
                    let mut k = 0usize;
                    let mut ops = 0u64;
                    while ops < ops_per_thread && Instant::now() < deadline {
                        // Half the operations stay on the page of the
                        // previous one (hits, first writes to clean
                        // pages), half go anywhere (misses, evictions).
                        if rng.gen_bool(0.5) {
                            let page = k * threads / words_per_page;
                            k = page * words_per_page / threads
                                + rng.gen_range(0..words_per_page / threads);
                        } else {
                            k = rng.gen_range(0..words_per_thread);
                        }
                        let word = &atomics[k * threads + thread];
                        if rng.gen_bool(0.5) {
                            let value = rng.r#gen::<u64>();
                            word.store(value, Ordering::Relaxed);
                            model[k] = value;
                        } else {
                            let got = word.load(Ordering::Relaxed);
                            assert_eq!(
                                got,
                                model[k],
                                "thread {thread}, op {ops}: word {} (page {}) loaded a value \
                                 its only writer never left there",
                                k * threads + thread,
                                (k * threads + thread) / words_per_page
                            );
                        }
                        ops += 1;
                    }
                    (model, ops)
                })
            })
            .collect();
        // Flushes race with the stores: a page written during a flush must
        // be marked dirty again and sent by a later flush.
        let flusher = scope.spawn(|| {
            let mut flushes = 0u32;
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Err(error) = mapping.flush() {
                    panic!("flush {flushes}, during the workload, failed: {error}");
                }
                flushes += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            flushes
        });
        let models: Vec<(Vec<u64>, u64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        (models, flusher.join().unwrap())
    });

    let mut model = vec![0u64; words];
    for (thread, (thread_model, ops)) in models.iter().enumerate() {
        assert!(
            *ops >= ops_per_thread.min(1_000),
            "thread {thread} did only {ops} operations within {WORKLOAD_MAX:?}"
        );
        for (k, &value) in thread_model.iter().enumerate() {
            model[k * threads + thread] = value;
        }
    }
    // Every load through the mapping after the workload, from this thread.
    for (index, &value) in model.iter().enumerate() {
        assert_eq!(
            mapping.as_atomic_u64s()[index].load(Ordering::Relaxed),
            value,
            "word {index} after the workload"
        );
    }
    mapping.flush().unwrap();
    let stats = mapping.stats();
    println!(
        "{threads} threads, {} operations, {flushes} concurrent flushes, {local_pages} of \
         {region_pages} pages local: {stats:?}",
        models.iter().map(|(_, ops)| ops).sum::<u64>()
    );
    assert!(stats.resident_pages <= local_pages);
    if local_pages < region_pages {
        assert!(stats.evictions > 0, "the workload never evicted: {stats:?}");
    }
    // Evictions run ahead of need only while a read is on the network,
    // from 256 pages of budget on.
    if over_connection && local_pages >= 256 {
        assert!(
            stats.evictions_ahead > 0,
            "no eviction ran while a read was in flight: {stats:?}"
        );
    } else {
        assert_eq!(stats.evictions_ahead, 0, "{stats:?}");
    }
    assert_eq!(stats.dirty_pages, 0, "dirty pages after a flush: {stats:?}");
    assert_eq!(stats.failed_faults, 0);
    // What the node holds, while the mapping is still there.
    assert_same_bytes(
        &setup.read_back(name),
        &words_to_bytes(&model),
        "the node's copy after flush",
    );
}

// Guards the mapping at its smallest budget: four threads faulting at once
// on four frames (every fault evicts, dirty victims are written back while
// other threads fault) must neither lose a store, nor show a load a stale
// or foreign value, nor deadlock; and flush must leave the node with
// exactly the model.
#[test]
fn threads_load_and_store_at_the_minimum_budget() {
    random_words(LOCAL_PAGES_MIN, 64, 4, 10_000);
}

// Guards the same at 16 pages of budget (evictions in batches, zapped
// candidates taking minor faults).
#[test]
fn threads_load_and_store_with_16_local_pages() {
    random_words(16, 128, 4, 10_000);
}

// Guards the same at a larger budget over a region of two segments.
#[test]
fn threads_load_and_store_with_256_local_pages() {
    random_words(256, 1024, 4, 20_000);
}

// Guards the same with faults served by fault threads (the mode where the
// kernel queues faults for them), at the smallest budget and at 16 pages.
#[test]
fn threads_load_and_store_served_by_fault_threads() {
    random_words_served(
        FaultMode::Auto,
        Colocated::Auto,
        LOCAL_PAGES_MIN,
        64,
        4,
        5_000,
    );
    random_words_served(FaultMode::Auto, Colocated::Auto, 16, 128, 4, 5_000);
}

// Guards the same with every page read over the connection, at budgets
// large enough that evictions run ahead of need while a fault's read is in
// flight (and a smaller one where they do not), served on the faulting
// thread and by fault threads.
#[test]
fn threads_load_and_store_over_the_connection() {
    random_words_served(FaultMode::default(), Colocated::Off, 16, 128, 4, 5_000);
    random_words_served(FaultMode::default(), Colocated::Off, 256, 1024, 4, 10_000);
    random_words_served(FaultMode::default(), Colocated::Off, 512, 2048, 4, 10_000);
    random_words_served(FaultMode::Auto, Colocated::Off, 512, 2048, 4, 10_000);
}

// Guards byte-level correctness of the mapping through `as_mut_slice`:
// unaligned copies of up to three pages crossing page boundaries, at the
// smallest budget (so a copy's pages are evicted and brought back between
// and during operations), and flushes between them, must match a
// `Vec<u8>` model at every read and on the node at the end.
#[test]
fn unaligned_copies_across_pages_match_a_byte_model() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let setup = setup();
    let name = "bytes";
    let region_pages = 48u64;
    let mut mapping = map(setup.region(name, region_pages), LOCAL_PAGES_MIN);
    let len = mapping.len();
    let mut model = vec![0u8; len];
    let mut buffer = vec![0u8; 3 * PAGE + 64];
    let deadline = Instant::now() + WORKLOAD_MAX;
    let mut ops = 0u32;
    while ops < 4_000 && Instant::now() < deadline {
        // Half the ranges start just before a page boundary, so that they
        // cross it.
        let start = if rng.gen_bool(0.5) {
            let boundary = rng.gen_range(1..region_pages as usize) * PAGE;
            boundary - rng.gen_range(1..64)
        } else {
            rng.gen_range(0..len)
        };
        let count = rng.gen_range(1..=3 * PAGE + 64).min(len - start);
        let range = start..start + count;
        if rng.gen_bool(0.5) {
            rng.fill(&mut buffer[..count]);
            mapping.as_mut_slice()[range.clone()].copy_from_slice(&buffer[..count]);
            model[range].copy_from_slice(&buffer[..count]);
        } else {
            let got = &mapping.as_slice()[range.clone()];
            if got != &model[range.clone()] {
                let first = got
                    .iter()
                    .zip(&model[range.clone()])
                    .position(|(a, b)| a != b);
                panic!(
                    "op {ops}: reading {range:?} differs from the model first at byte {}",
                    start + first.unwrap()
                );
            }
        }
        if ops % 500 == 499 {
            mapping.flush().unwrap();
        }
        ops += 1;
    }
    assert_same_bytes(mapping.as_slice(), &model, "the mapping after the workload");
    mapping.flush().unwrap();
    let stats = mapping.stats();
    println!("{ops} operations: {stats:?}");
    assert!(stats.evictions > 0, "the workload never evicted: {stats:?}");
    assert_same_bytes(
        &setup.read_back(name),
        &model,
        "the node's copy after flush",
    );
}

// ---------------------------------------------------------------------------
// 2. Only written pages are written back

// Guards the bound on an eviction round's work: with every page of a full
// budget mapped (all touched since they came in), the first eviction zaps
// at most `ZAPS_PER_EVICTION_MAX` pages and then takes mapped candidates as
// they come, rather than having the policy walk its whole queue refusing
// them; and a page taken so, written since it came in, is written back.
#[test]
fn an_eviction_round_zaps_a_bounded_number_of_pages() {
    let setup = setup();
    let name = "zaps";
    let budget = 4 * ZAPS_PER_EVICTION_MAX as u64;
    let region = setup.region(name, budget + SEGMENT_PAGES);
    let mapping = map(region, budget);
    for page in 0..budget {
        store(&mapping, page * PAGE_U64, pattern(page, 0, 7));
    }
    let before = mapping.stats();
    assert_eq!(before.resident_pages, budget, "{before:?}");
    assert_eq!(before.pages_zapped, 0, "{before:?}");
    // One page beyond the budget: one eviction round.
    assert_eq!(load(&mapping, budget * PAGE_U64), 0);
    let after = mapping.stats();
    println!("after one page beyond a full budget: {after:?}");
    assert!(after.evictions > 0, "{after:?}");
    // The round's victims (at most 16) are zapped as they are taken, and
    // the policy offered no more candidates than were zapped or taken (an
    // earlier version was offered every page of the budget twice over).
    let bound = ZAPS_PER_EVICTION_MAX as u64 + 16;
    assert!(
        after.pages_zapped <= bound && after.eviction_candidates <= bound,
        "one eviction round zapped {} pages of {} offered: {after:?}",
        after.pages_zapped,
        after.eviction_candidates
    );
    // Every victim had been written: each was written back.
    assert_eq!(after.pages_written_back, after.evictions, "{after:?}");
    // Every page reads what was stored, zapped ones by a minor fault,
    // evicted ones fetched back; and so does a second client.
    for page in 0..budget {
        assert_eq!(
            load(&mapping, page * PAGE_U64),
            pattern(page, 0, 7),
            "page {page}"
        );
    }
    mapping.flush().unwrap();
    mapping.unmap().unwrap();
    let stored = setup.read_back(name);
    for page in 0..budget {
        let at = (page * PAGE_U64) as usize;
        let word = u64::from_le_bytes(stored[at..at + 8].try_into().unwrap());
        assert_eq!(word, pattern(page, 0, 7), "page {page} read back");
    }
}

// Guards dirty tracking: pages only read (even when evicted and brought
// back) are never written back; a flush writes back exactly the distinct
// pages written since the last one (a page written many times once), a
// flush after no write writes nothing, and a page written again after a
// flush is written back again.
#[test]
fn only_written_pages_are_written_back() {
    let setup = setup();
    let name = "dirty";
    let region_pages = 256u64;
    let region = setup.region(name, region_pages);
    for page in 0..region_pages {
        region
            .write_at(page * PAGE_U64, &pattern_page(page, 1))
            .unwrap();
    }
    region.flush().unwrap();

    // Reads only, through a budget far smaller than the region, twice
    // over: evictions, minor faults, nothing dirty.
    let mapping = map(region, 16);
    for round in 0..2 {
        for page in 0..region_pages {
            for word in [0u64, 17, 511] {
                assert_eq!(
                    load(&mapping, page * PAGE_U64 + word * 8),
                    pattern(page, word, 1),
                    "round {round}, page {page}, word {word}"
                );
            }
        }
    }
    mapping.flush().unwrap();
    let stats = mapping.stats();
    println!("reads only: {stats:?}");
    assert!(
        stats.evictions > 0,
        "reading the region never evicted: {stats:?}"
    );
    assert_eq!(
        stats.pages_written_back, 0,
        "pages only read were written back: {stats:?}"
    );
    assert_eq!(stats.write_faults, 0);
    assert_eq!(stats.dirty_pages, 0);
    mapping.unmap().unwrap();

    // A budget that holds every page touched: no eviction writes back.
    let region = setup
        .client
        .open_region(name, RegionOptions::with_cache_bytes(1 << 20))
        .unwrap();
    let mapping = map(region, 64);
    let written: Vec<u64> = (0..40).map(|i| 3 + i * 6).collect();
    let read_only: Vec<u64> = (0..10).map(|i| 4 + i * 6).collect();
    // Each written page is stored to several times, in rounds over all of
    // them, and some other pages are only read.
    for round in 0..4u64 {
        for &page in &written {
            store(
                &mapping,
                page * PAGE_U64 + round * 64,
                pattern(page, round, 2),
            );
        }
        for &page in &read_only {
            assert_eq!(load(&mapping, page * PAGE_U64), pattern(page, 0, 1));
        }
    }
    assert_eq!(mapping.stats().dirty_pages, written.len() as u64);
    mapping.flush().unwrap();
    let stats = mapping.stats();
    println!("{} pages written: {stats:?}", written.len());
    assert_eq!(
        stats.evictions, 0,
        "the budget was meant to hold every page: {stats:?}"
    );
    assert_eq!(
        stats.pages_written_back,
        written.len() as u64,
        "a flush must write back exactly the pages written: {stats:?}"
    );
    assert_eq!(stats.dirty_pages, 0);

    // Nothing written since: nothing written back.
    mapping.flush().unwrap();
    assert_eq!(mapping.stats().pages_written_back, written.len() as u64);

    // Written again after the flush: written back again, once each.
    let again = [written[0], written[7], written[39]];
    for &page in &again {
        store(&mapping, page * PAGE_U64 + 8, pattern(page, 99, 3));
        store(&mapping, page * PAGE_U64 + 16, pattern(page, 98, 3));
    }
    mapping.flush().unwrap();
    let stats = mapping.stats();
    assert_eq!(
        stats.pages_written_back,
        (written.len() + again.len()) as u64,
        "pages written after a flush must be written back by the next: {stats:?}"
    );

    let mut model: Vec<u8> = (0..region_pages)
        .flat_map(|page| pattern_page(page, 1))
        .collect();
    for &page in &written {
        for round in 0..4u64 {
            let at = (page * PAGE_U64 + round * 64) as usize;
            model[at..at + 8].copy_from_slice(&pattern(page, round, 2).to_le_bytes());
        }
    }
    for &page in &again {
        let at = (page * PAGE_U64) as usize;
        model[at + 8..at + 16].copy_from_slice(&pattern(page, 99, 3).to_le_bytes());
        model[at + 16..at + 24].copy_from_slice(&pattern(page, 98, 3).to_le_bytes());
    }
    assert_same_bytes(&setup.read_back(name), &model, "the node's copy");
}

// ---------------------------------------------------------------------------
// 3. A page the node never stored costs no fetch

// Guards the zero-fill path: on a fresh region, touching pages (loads and
// stores) fetches nothing from the node (the client knows no segment is
// stored) and reads zeros; once data is flushed, a new mapping fetches the
// pages of the segments now stored and reads them correctly, while a
// segment still never written is still filled with zeros.
#[test]
fn never_stored_pages_are_zero_filled_without_a_fetch() {
    let setup = setup();
    let name = "fresh";
    // Three segments: 0 and 1 get written, 2 is only ever read.
    let region_pages = 3 * SEGMENT_PAGES;
    let mapping = map(setup.region(name, region_pages), 64);
    let read_first: Vec<u64> = (0..8).collect();
    let written: Vec<u64> = (8..16).chain(SEGMENT_PAGES..SEGMENT_PAGES + 8).collect();
    let read_unstored: Vec<u64> = (2 * SEGMENT_PAGES..2 * SEGMENT_PAGES + 8).collect();
    for &page in read_first.iter().chain(&read_unstored) {
        assert_eq!(load(&mapping, page * PAGE_U64 + 24), 0, "page {page}");
    }
    for &page in &written {
        assert_eq!(
            load(&mapping, page * PAGE_U64),
            0,
            "page {page} before its write"
        );
        store(&mapping, page * PAGE_U64 + 8, pattern(page, 1, 4));
    }
    let stats = mapping.stats();
    println!("fresh region: {stats:?}");
    assert_eq!(
        stats.pages_fetched, 0,
        "pages of a region the node never stored were fetched: {stats:?}"
    );
    let touched = (read_first.len() + written.len() + read_unstored.len()) as u64;
    assert_eq!(stats.pages_zero_filled, touched, "{stats:?}");
    mapping.flush().unwrap();
    drop(mapping);

    let region = setup
        .client
        .open_region(name, RegionOptions::with_cache_bytes(1 << 20))
        .unwrap();
    let mapping = map(region, 64);
    for &page in &written {
        assert_eq!(load(&mapping, page * PAGE_U64), 0, "page {page}");
        assert_eq!(
            load(&mapping, page * PAGE_U64 + 8),
            pattern(page, 1, 4),
            "page {page} lost its write"
        );
    }
    for &page in read_first.iter().chain(&read_unstored) {
        assert_eq!(load(&mapping, page * PAGE_U64 + 24), 0, "page {page}");
    }
    let stats = mapping.stats();
    println!("after the flush: {stats:?}");
    assert_eq!(
        stats.pages_fetched,
        (written.len() + read_first.len()) as u64,
        "the pages of the stored segments must be fetched: {stats:?}"
    );
    assert_eq!(
        stats.pages_zero_filled,
        read_unstored.len() as u64,
        "the segment still never written must be zero-filled: {stats:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. Violations

/// A handler that records every violation and lets the access go on.
fn recorder(mapping: &Mapping) -> Arc<Mutex<Vec<Violation>>> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    mapping.on_violation(move |violation| {
        let mut calls = recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        calls.push(violation.clone());
        // A handler called again and again for one access (the access
        // never going on) is slowed down, not spun: the test reports it.
        if calls.len() > 100 {
            drop(calls);
            std::thread::sleep(Duration::from_millis(10));
        }
        Verdict::Allow
    });
    calls
}

/// Runs `access` on a thread of its own with the mapping, waiting for it
/// at most `VIOLATION_ACCESS_MAX`: an access whose violation is never
/// settled fails the test rather than hanging it (the mapping then stays
/// with the stuck thread, never dropped).
fn access_on_thread<T: Send + 'static>(
    mapping: &Arc<Mapping>,
    calls: &Arc<Mutex<Vec<Violation>>>,
    access: impl FnOnce(&Mapping) -> T + Send + 'static,
) -> (T, u32) {
    let mapping = mapping.clone();
    let thread = std::thread::spawn(move || {
        let result = access(&mapping);
        (result, gettid())
    });
    let deadline = Instant::now() + VIOLATION_ACCESS_MAX;
    while !thread.is_finished() {
        if Instant::now() > deadline {
            let (count, first) = {
                let calls = calls.lock().unwrap();
                (calls.len(), calls.first().cloned())
            };
            panic!(
                "the access did not complete within {VIOLATION_ACCESS_MAX:?}; the violation \
                 handler was called {count} times, first with {first:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    thread.join().unwrap()
}

/// Asserts that `calls` holds exactly one violation, as described, and
/// empties it.
fn assert_one_violation(
    calls: &Mutex<Vec<Violation>>,
    mapping: &Mapping,
    offset: u64,
    access: Access,
    protection: Protection,
    thread: u32,
) {
    let calls: Vec<Violation> = std::mem::take(&mut *calls.lock().unwrap());
    assert_eq!(
        calls.len(),
        1,
        "the handler must be called once: {calls:#?}"
    );
    let violation = &calls[0];
    let page_offset = offset / PAGE_U64 * PAGE_U64;
    assert_eq!(violation.region, mapping.name());
    assert_eq!(violation.offset, page_offset, "{violation:?}");
    assert_eq!(
        violation.address,
        mapping.as_ptr() as usize + page_offset as usize,
        "{violation:?}"
    );
    assert_eq!(violation.access, access, "{violation:?}");
    assert_eq!(violation.protection, protection, "{violation:?}");
    assert_eq!(violation.thread, thread, "{violation:?}");
}

// Guards `ReadOnly`: loads of a read-only page go on without a violation;
// a store (to a page held locally, and to one not held) calls the handler
// once with the region, the page's offset, the address, `Write` and
// `ReadOnly`; `Allow` lets the store through and makes that page (only)
// read-write, and the store reaches the node.
#[test]
fn store_to_a_read_only_page_calls_the_handler() {
    let setup = setup();
    let name = "readonly-pages";
    let mapping = Arc::new(map_faulting(setup.region(name, 64), 16));
    let calls = recorder(&mapping);
    store(&mapping, 3 * PAGE_U64, 0xaaaa);
    mapping
        .protect(3 * PAGE_U64..4 * PAGE_U64, Protection::ReadOnly)
        .unwrap();
    mapping
        .protect(10 * PAGE_U64..12 * PAGE_U64, Protection::ReadOnly)
        .unwrap();
    for (offset, protection) in [
        (2 * PAGE_U64, Protection::ReadWrite),
        (3 * PAGE_U64 + 5, Protection::ReadOnly),
        (4 * PAGE_U64, Protection::ReadWrite),
        (10 * PAGE_U64, Protection::ReadOnly),
        (11 * PAGE_U64 + 4095, Protection::ReadOnly),
        (12 * PAGE_U64, Protection::ReadWrite),
    ] {
        assert_eq!(mapping.protection_at(offset), protection, "offset {offset}");
    }
    assert_eq!(load(&mapping, 3 * PAGE_U64), 0xaaaa);
    assert_eq!(load(&mapping, 11 * PAGE_U64 + 8), 0);
    assert!(
        calls.lock().unwrap().is_empty(),
        "a load of a read-only page violated"
    );

    // A page held locally (and dirty).
    let offset = 3 * PAGE_U64 + 40;
    let ((), thread) = access_on_thread(&mapping, &calls, move |mapping| {
        store(mapping, offset, 0xbbbb)
    });
    assert_one_violation(
        &calls,
        &mapping,
        offset,
        Access::Write,
        Protection::ReadOnly,
        thread,
    );
    assert_eq!(load(&mapping, offset), 0xbbbb);
    assert_eq!(mapping.protection_at(offset), Protection::ReadWrite);

    // A page not held locally.
    let offset = 11 * PAGE_U64 + 16;
    let ((), thread) = access_on_thread(&mapping, &calls, move |mapping| {
        store(mapping, offset, 0xcccc)
    });
    assert_one_violation(
        &calls,
        &mapping,
        offset,
        Access::Write,
        Protection::ReadOnly,
        thread,
    );
    assert_eq!(load(&mapping, offset), 0xcccc);
    assert_eq!(mapping.protection_at(offset), Protection::ReadWrite);
    assert_eq!(mapping.protection_at(10 * PAGE_U64), Protection::ReadOnly);
    assert_eq!(mapping.stats().violations, 2);

    mapping.flush().unwrap();
    let back = setup.read_back(name);
    let word = |offset: u64| u64::from_le_bytes(back[offset as usize..][..8].try_into().unwrap());
    assert_eq!(word(3 * PAGE_U64), 0xaaaa);
    assert_eq!(word(3 * PAGE_U64 + 40), 0xbbbb);
    assert_eq!(word(11 * PAGE_U64 + 16), 0xcccc);
}

// Guards `Guard`: a load of a guard page (held locally, and not) and a
// store to one each call the handler once with `Read` or `Write` and
// `Guard`; `Allow` brings the page in, makes it read-write, and the access
// sees (or leaves) the right data.
#[test]
fn access_to_a_guard_page_calls_the_handler() {
    let setup = setup();
    let name = "guard-pages";
    let region = setup.region(name, 64);
    region
        .write_at(20 * PAGE_U64, &pattern_page(20, 5))
        .unwrap();
    let mapping = Arc::new(map(region, 16));
    let calls = recorder(&mapping);
    store(&mapping, 5 * PAGE_U64 + 8, 0x5555);
    store(&mapping, 7 * PAGE_U64 + 8, 0x7777);
    for page in [5u64, 7, 20] {
        mapping
            .protect(page * PAGE_U64..(page + 1) * PAGE_U64, Protection::Guard)
            .unwrap();
        assert_eq!(
            mapping.protection_at(page * PAGE_U64 + 1),
            Protection::Guard
        );
    }
    assert!(calls.lock().unwrap().is_empty());

    // A load of a guard page held locally.
    let offset = 5 * PAGE_U64 + 8;
    let (value, thread) = access_on_thread(&mapping, &calls, move |mapping| load(mapping, offset));
    assert_one_violation(
        &calls,
        &mapping,
        offset,
        Access::Read,
        Protection::Guard,
        thread,
    );
    assert_eq!(value, 0x5555);
    assert_eq!(mapping.protection_at(offset), Protection::ReadWrite);

    // A store to a guard page held locally.
    let offset = 7 * PAGE_U64 + 16;
    let ((), thread) = access_on_thread(&mapping, &calls, move |mapping| {
        store(mapping, offset, 0x7878)
    });
    assert_one_violation(
        &calls,
        &mapping,
        offset,
        Access::Write,
        Protection::Guard,
        thread,
    );
    assert_eq!(load(&mapping, 7 * PAGE_U64 + 8), 0x7777);
    assert_eq!(load(&mapping, offset), 0x7878);
    assert_eq!(mapping.protection_at(offset), Protection::ReadWrite);

    // A load of a guard page not held locally, whose data is on the node.
    let offset = 20 * PAGE_U64 + 800;
    let (value, thread) = access_on_thread(&mapping, &calls, move |mapping| load(mapping, offset));
    assert_one_violation(
        &calls,
        &mapping,
        offset,
        Access::Read,
        Protection::Guard,
        thread,
    );
    assert_eq!(value, pattern(20, 100, 5));
    assert_eq!(mapping.protection_at(offset), Protection::ReadWrite);

    mapping.flush().unwrap();
    let back = setup.read_back(name);
    let word = |offset: u64| u64::from_le_bytes(back[offset as usize..][..8].try_into().unwrap());
    assert_eq!(word(7 * PAGE_U64 + 8), 0x7777);
    assert_eq!(word(7 * PAGE_U64 + 16), 0x7878);
}

// Guards the checks of `protect`: a range that is not whole pages within
// the region is refused with InvalidArgument and changes nothing.
#[test]
fn protect_refuses_ranges_that_are_not_whole_pages_of_the_region() {
    let setup = setup();
    let mapping = map(setup.region("protect-ranges", 16), 16);
    for range in [
        1..PAGE_U64,
        0..PAGE_U64 + 1,
        PAGE_U64 + 512..2 * PAGE_U64 + 512,
        15 * PAGE_U64..17 * PAGE_U64,
        // Reversed, on purpose.
        std::ops::Range {
            start: 2 * PAGE_U64,
            end: PAGE_U64,
        },
    ] {
        match mapping.protect(range.clone(), Protection::Guard) {
            Err(ClientError::InvalidArgument(_)) => {}
            other => panic!("protect({range:?}) answered {other:?}, not InvalidArgument"),
        }
    }
    for page in 0..16 {
        assert_eq!(
            mapping.protection_at(page * PAGE_U64),
            Protection::ReadWrite
        );
    }
    // The checks refuse only what they should.
    mapping
        .protect(15 * PAGE_U64..16 * PAGE_U64, Protection::Guard)
        .unwrap();
    assert_eq!(mapping.protection_at(15 * PAGE_U64), Protection::Guard);
}

// ---------------------------------------------------------------------------
// Child processes

struct ChildOutcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs this test binary's `child` test with `scenario` and `environment`,
/// killing it after `CHILD_MAX`.
fn run_child(scenario: &str, environment: &[(&str, String)]) -> ChildOutcome {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SCENARIO, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in environment {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stdout.read_to_string(&mut all);
        all
    });
    let err = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if began.elapsed() > CHILD_MAX {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the {scenario} child did not end within {CHILD_MAX:?}; its output:\n{}\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let outcome = ChildOutcome {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    println!(
        "{scenario} child: {:?}\nstdout:\n{}\nstderr:\n{}",
        outcome.status, outcome.stdout, outcome.stderr
    );
    outcome
}

/// Runs the `scenario` child on region `name` of `setup`'s node.
fn run_child_on(setup: &Setup, scenario: &str, name: &str) -> ChildOutcome {
    run_child(
        scenario,
        &[
            (CHILD_NODE, setup.node.local_addr().to_string()),
            (CHILD_REGION, name.to_string()),
        ],
    )
}

/// `@@ key value` lines a child prints.
fn said<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .filter_map(|line| line.find("@@ ").map(|at| &line[at + 3..]))
        .find_map(|line| line.strip_prefix(key))
        .map(str::trim)
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "@@ {line}").unwrap();
    stdout.flush().unwrap();
}

/// The processes the tests below run: see the module documentation. Not a
/// test on its own: ignored in a normal run.
#[test]
#[ignore = "the child process of the mapping tests that end a process, which run it themselves"]
fn child() {
    let scenario = std::env::var(CHILD_SCENARIO)
        .expect("run by the mapping tests, which set PAGODA_MAPPING_CHILD");
    // No core files from the deaths these scenarios end in.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter("info")
        .init();
    match scenario.as_str() {
        "signal" | "stop" => child_violation(&scenario),
        "read-only-region" => child_read_only_region(),
        "node-stopped" => child_node_stopped(),
        "foreign-sigbus" => child_foreign_sigbus(),
        other => panic!("no child scenario {other:?}"),
    }
}

/// The region the parent named, on the parent's node, open for writing.
fn parent_region() -> Region {
    let node = std::env::var(CHILD_NODE).unwrap();
    let name = std::env::var(CHILD_REGION).unwrap();
    let client = Client::connect(node.as_str(), ClientOptions::default()).unwrap();
    client
        .open_region(&name, RegionOptions::with_cache_bytes(1 << 20))
        .unwrap()
}

/// Maps the parent's region, protects page 3 and accesses it: with a
/// handler answering `Signal` it loads from a guard page; with the default
/// handler it stores to a read-only page.
fn child_violation(scenario: &str) {
    let region = parent_region();
    let mapping = map_faulting(region, 16);
    store(&mapping, 3 * PAGE_U64, 0x3333);
    say(&format!("base {}", mapping.as_ptr() as usize));
    if scenario == "signal" {
        mapping.on_violation(|_| Verdict::Signal);
        mapping
            .protect(3 * PAGE_U64..4 * PAGE_U64, Protection::Guard)
            .unwrap();
        say("accessing");
        let value = load(&mapping, 3 * PAGE_U64 + 200);
        say(&format!("survived {value}"));
    } else {
        mapping
            .protect(3 * PAGE_U64..4 * PAGE_U64, Protection::ReadOnly)
            .unwrap();
        say("accessing");
        store(&mapping, 3 * PAGE_U64 + 200, 7);
        say("survived");
    }
}

/// Maps the parent's region opened for reading only, with a handler that
/// prints each violation and answers `Allow`, loads from page 2 and stores
/// to it.
fn child_read_only_region() {
    let node = std::env::var(CHILD_NODE).unwrap();
    let name = std::env::var(CHILD_REGION).unwrap();
    let client = Client::connect(node.as_str(), ClientOptions::default()).unwrap();
    let region = client
        .open_region_read_only(&name, RegionOptions::with_cache_bytes(1 << 20))
        .unwrap();
    let mapping = map(region, 16);
    mapping.on_violation(|violation| {
        say(&format!(
            "violation {} {} {:#x} {} {} {}",
            violation.region,
            violation.offset,
            violation.address,
            violation.access,
            violation.protection,
            violation.thread
        ));
        Verdict::Allow
    });
    say(&format!("base {}", mapping.as_ptr() as usize));
    say(&format!("loaded {}", load(&mapping, 2 * PAGE_U64 + 8)));
    say(&format!("storing {}", gettid()));
    store(&mapping, 2 * PAGE_U64 + 8, 0x1234);
    say("survived");
}

/// Starts a node of its own, maps a region, writes and flushes pages,
/// stops the node and loads from a page the node holds data for and this
/// mapping never held.
fn child_node_stopped() {
    let dir = std::env::var(CHILD_DIR).unwrap();
    let node = common::node(std::path::Path::new(&dir), NODE_BYTES, None);
    let client = Client::connect(
        node.local_addr(),
        ClientOptions {
            reconnect_for: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let name = "node-stopped";
    client
        .create_region(name, 256 * PAGE_U64, PAGE as u32)
        .unwrap();
    let region = client
        .open_region(name, RegionOptions::with_cache_bytes(1 << 20))
        .unwrap();
    // Page 100 holds data on the node (in a segment it stores, so the
    // mapping cannot fill it with zeros) and is never touched below.
    region
        .write_at(100 * PAGE_U64, &pattern_page(100, 7))
        .unwrap();
    let mapping = map(region, LOCAL_PAGES_MIN);
    for page in 0..16u64 {
        store(&mapping, page * PAGE_U64, pattern(page, 0, 7));
    }
    mapping.flush().unwrap();
    say(&format!("flushed {:?}", mapping.stats()));
    node.shutdown();
    say("node stopped");
    let value = load(&mapping, 100 * PAGE_U64 + 8);
    say(&format!(
        "survived: loaded {value:#x} (the node held {:#x})",
        pattern(100, 1, 7)
    ));
}

// Guards `Verdict::Signal`: the faulting thread gets SIGSEGV, and with no
// handler of its own the process dies of it (not of an abort, and the
// access never completes).
#[test]
fn signal_verdict_delivers_sigsegv_to_the_faulting_thread() {
    let setup = setup();
    let name = "signal";
    drop(setup.region(name, 16));
    let outcome = run_child_on(&setup, "signal", name);
    assert!(
        said(&outcome.stdout, "accessing").is_some(),
        "the child never got to the access"
    );
    assert!(
        said(&outcome.stdout, "survived").is_none(),
        "the access completed"
    );
    assert_eq!(
        outcome.status.signal(),
        Some(libc::SIGSEGV),
        "the child's end: {:?}",
        outcome.status
    );
    assert!(!outcome.stderr.contains("stopping the process"));
}

// Guards the mapping of a region opened for reading only: loads go on
// without a violation; a store calls the handler with `Write` and
// `ReadOnly` at the page's offset and address, and since nothing can make
// that store reach the node, `Allow` acts as `Signal`: the storing thread
// gets SIGSEGV and the store never completes.
#[test]
fn store_to_a_mapping_of_a_read_only_region_calls_the_handler_then_signals() {
    let setup = setup();
    let name = "readonly-region";
    let writer = setup.region(name, 32);
    writer.write_at(2 * PAGE_U64, &pattern_page(2, 6)).unwrap();
    drop(writer);
    let outcome = run_child_on(&setup, "read-only-region", name);
    let loaded: u64 = said(&outcome.stdout, "loaded")
        .expect("the child's load never completed")
        .parse()
        .unwrap();
    assert_eq!(loaded, pattern(2, 1, 6));
    let base: usize = said(&outcome.stdout, "base").unwrap().parse().unwrap();
    let thread = said(&outcome.stdout, "storing").expect("the child never stored");
    let expected = format!(
        "violation {name} {} {:#x} write read-only {thread}",
        2 * PAGE,
        base + 2 * PAGE
    );
    let violations: Vec<&str> = outcome
        .stdout
        .lines()
        .filter_map(|line| line.find("@@ violation").map(|at| &line[at + 3..]))
        .collect();
    assert!(!violations.is_empty(), "the handler was never called");
    for violation in &violations {
        assert_eq!(*violation, expected, "the handler's violation");
    }
    assert!(
        said(&outcome.stdout, "survived").is_none(),
        "the store completed"
    );
    assert_eq!(
        outcome.status.signal(),
        Some(libc::SIGSEGV),
        "the child's end: {:?}",
        outcome.status
    );
}

// Guards the default handler: a store to a read-only page stops the
// process with SIGABRT after printing exactly what was violated, where.
#[test]
fn default_handler_stops_the_process_with_an_exact_message() {
    let setup = setup();
    let name = "stop";
    drop(setup.region(name, 16));
    let outcome = run_child_on(&setup, "stop", name);
    assert!(
        said(&outcome.stdout, "survived").is_none(),
        "the store completed"
    );
    let base: usize = said(&outcome.stdout, "base")
        .expect("the child never mapped the region")
        .parse()
        .unwrap();
    // The store was at 3 * PAGE + 200; the violation names its page.
    let offset = 3 * PAGE;
    let expected = format!(
        "pagoda: stopping the process: write access to region \"{name}\" at offset {offset} \
         (address {:#x}) violates its read-only protection",
        base + offset
    );
    assert!(
        outcome.stderr.lines().any(|line| line == expected),
        "the child's standard error lacks the line\n{expected}"
    );
    assert_eq!(
        outcome.status.signal(),
        Some(libc::SIGABRT),
        "the child's end: {:?}",
        outcome.status
    );
}

// ---------------------------------------------------------------------------
// 5. The node stopped mid-workload

// Guards the outcome of a fault that cannot be served: once the node is
// gone (and the reconnect window has passed), a load of a page not held
// locally ends the process by SIGBUS, never completing with a wrong value,
// and the log says which page could not be brought in.
#[test]
fn a_page_that_cannot_be_fetched_ends_the_process_by_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_child(
        "node-stopped",
        &[(CHILD_DIR, dir.path().display().to_string())],
    );
    assert!(
        said(&outcome.stdout, "node stopped").is_some(),
        "the child never got to stop its node"
    );
    assert!(
        said(&outcome.stdout, "survived").is_none(),
        "the load completed without the node"
    );
    assert_eq!(
        outcome.status.signal(),
        Some(libc::SIGBUS),
        "the child's end: {:?}",
        outcome.status
    );
    let logged = outcome
        .stderr
        .lines()
        .find(|line| line.contains("could not be brought in"))
        .expect("the child's log does not name the failed fault");
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(
        logged.contains("node-stopped"),
        "the log line lacks the region: {logged}"
    );
    assert!(
        logged.contains(&format!("offset={}", 100 * PAGE)),
        "the log line lacks the offset: {logged}"
    );
}

// ---------------------------------------------------------------------------
// 6. Faults taken in kernel mode

/// A file of `bytes` in a fresh directory.
fn file_of(dir: &tempfile::TempDir, bytes: &[u8]) -> std::fs::File {
    let path = dir.path().join("source");
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::open(&path).unwrap()
}

// Guards `FaultMode::UserModeOnly`: the mapping says it does not serve
// kernel-mode faults, and `read(2)` into a page not held locally fails
// with EFAULT, leaving the page's data as it was.
#[test]
fn user_mode_only_mapping_fails_a_read_into_a_missing_page() {
    read_into_a_missing_page_fails(FaultMode::UserModeOnly, "user-mode");
}

/// Maps a region as `fault_mode` says, and checks that `read(2)` into a
/// page not held locally fails with EFAULT and leaves the page as it was.
fn read_into_a_missing_page_fails(fault_mode: FaultMode, name: &str) {
    let setup = setup();
    let region = setup.region(name, 32);
    region.write_at(5 * PAGE_U64, &pattern_page(5, 8)).unwrap();
    let mut mapping = region
        .map(MapOptions {
            fault_mode,
            ..MapOptions::with_local_bytes(16 * PAGE_U64)
        })
        .unwrap();
    assert!(!mapping.serves_kernel_faults());
    let dir = tempfile::tempdir().unwrap();
    let mut file = file_of(&dir, &pattern_page(1000, 9));
    let page = &mut mapping.as_mut_slice()[5 * PAGE..6 * PAGE];
    match file.read(page) {
        Err(error) => assert_eq!(error.raw_os_error(), Some(libc::EFAULT), "{error}"),
        Ok(count) => panic!("read(2) into a page not held locally read {count} bytes"),
    }
    assert_same_bytes(
        &mapping.as_slice()[5 * PAGE..6 * PAGE],
        &pattern_page(5, 8),
        "the page after the failed read",
    );
    assert_eq!(mapping.stats().dirty_pages, 0);
}

// Guards `FaultMode::Auto` as root: kernel-mode faults are served, so
// `read(2)` into a page not held locally brings it in and fills it, and
// the data reaches the node.
#[test]
fn auto_mapping_serves_a_read_into_a_missing_page() {
    let setup = setup();
    let name = "kernel-mode";
    let region = setup.region(name, 32);
    region.write_at(5 * PAGE_U64, &pattern_page(5, 8)).unwrap();
    let mut mapping = region
        .map(MapOptions {
            fault_mode: FaultMode::Auto,
            ..MapOptions::with_local_bytes(16 * PAGE_U64)
        })
        .unwrap();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test expects to run as root"
    );
    assert!(mapping.serves_kernel_faults());
    let dir = tempfile::tempdir().unwrap();
    let contents = pattern_page(1000, 9);
    let mut file = file_of(&dir, &contents);
    let page = &mut mapping.as_mut_slice()[5 * PAGE..6 * PAGE];
    assert_eq!(file.read(page).unwrap(), PAGE);
    assert_same_bytes(
        &mapping.as_slice()[5 * PAGE..6 * PAGE],
        &contents,
        "the page after the read",
    );
    mapping.flush().unwrap();
    let back = setup.read_back(name);
    assert_same_bytes(&back[5 * PAGE..6 * PAGE], &contents, "the node's copy");
}

// ---------------------------------------------------------------------------
// 7. Dropping a mapping flushes it

// Guards the flush on drop: pages still dirty in the local tier when the
// mapping is dropped (without a flush) reach the node.
#[test]
fn dropping_a_mapping_flushes_it() {
    let setup = setup();
    let name = "drop";
    let region_pages = 64u64;
    let mapping = map(setup.region(name, region_pages), 16);
    let mut model = vec![0u8; (region_pages * PAGE_U64) as usize];
    for page in 0..32u64 {
        let offset = page * PAGE_U64 + 8 * (page % 7);
        let value = pattern(page, 0, 10);
        store(&mapping, offset, value);
        model[offset as usize..][..8].copy_from_slice(&value.to_le_bytes());
    }
    let stats = mapping.stats();
    assert!(
        stats.dirty_pages > 0,
        "nothing was left for the drop to flush: {stats:?}"
    );
    drop(mapping);
    assert_same_bytes(
        &setup.read_back(name),
        &model,
        "the node's copy after the drop",
    );
}

// Guards the local tier of a mapping against scans: a page read between
// every two pages of a long scan stays held (fetched once) while the scan
// pushes 1,500 pages through a budget of 32, and the pages the policy
// zapped and the application touched again come back by minor faults (no
// fetch).
#[test]
fn a_page_in_use_outlives_a_scan() {
    let setup = setup();
    let region = setup.region("hot", 512);
    let mut mapping = map(region, 32);
    // Data on the node for every page, so that each miss is a fetch.
    mapping.as_mut_slice().fill(7);
    mapping.flush().unwrap();
    drop(mapping);
    let region = setup
        .client
        .open_region("hot", RegionOptions::with_cache_bytes(1 << 20))
        .unwrap();
    let mapping = map(region, 32);
    let hot = 3 * PAGE;
    let mut sum = 0u64;
    for round in 0..3 {
        for page in 8..512usize {
            sum += mapping.as_slice()[page * PAGE + round] as u64;
            sum += mapping.as_slice()[hot + page % PAGE] as u64;
        }
    }
    assert_eq!(sum, 2 * 3 * 504 * 7);
    let stats = mapping.stats();
    // 504 pages scanned 3 times, each a miss; the hot page fetched once.
    assert!(
        stats.pages_fetched <= 3 * 504 + 1,
        "the hot page was evicted and fetched again: {stats:?}"
    );
    assert!(
        stats.minor_faults > 0,
        "no zapped page was mapped back: {stats:?}"
    );
}

// ---------------------------------------------------------------------------
// 8. Faults served on the faulting thread

// Guards the mode's defaults and that it serves faults itself: the default
// mapping on x86-64 serves its faults on the faulting thread, and the
// model test above ran that way.
#[test]
fn the_default_mapping_serves_faults_on_the_faulting_thread() {
    let setup = setup();
    let mapping = map(setup.region("default-mode", 16), 8);
    assert_eq!(
        mapping.serves_faults_on_faulting_thread(),
        cfg!(target_arch = "x86_64")
    );
    let threads = MapOptions {
        fault_mode: FaultMode::Auto,
        ..MapOptions::with_local_bytes(8 * PAGE_U64)
    };
    let by_threads = setup.region("threads-mode", 16).map(threads).unwrap();
    assert!(!by_threads.serves_faults_on_faulting_thread());
}

// Guards the handler's promise to the code it interrupts: errno as it was
// before the access that faulted, after a missing fault that fetched, a
// write-protect fault and a minor fault.
#[test]
fn a_fault_served_on_the_faulting_thread_keeps_errno() {
    let setup = setup();
    let name = "errno";
    let region = setup.region(name, 64);
    region.write_at(0, &pattern_page(0, 3)).unwrap();
    let mapping = map_faulting(region, LOCAL_PAGES_MIN);
    assert!(mapping.serves_faults_on_faulting_thread());
    let set_errno = |value: i32| {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() = value };
    };
    // SAFETY: this thread's errno.
    let errno = || unsafe { *libc::__errno_location() };
    let before = mapping.stats();
    set_errno(4242);
    let value = load(&mapping, 8);
    assert_eq!(errno(), 4242, "errno after a missing fault");
    assert_eq!(value, pattern(0, 1, 3));
    set_errno(4343);
    store(&mapping, 8, 5);
    assert_eq!(errno(), 4343, "errno after a write-protect fault");
    // Pages 1..=8 push page 0 out of the four frames or past a zap.
    for page in 1..=8u64 {
        load(&mapping, page * PAGE_U64);
    }
    set_errno(4444);
    assert_eq!(load(&mapping, 8), 5);
    assert_eq!(errno(), 4444, "errno after the page came back");
    let after = mapping.stats();
    assert!(after.pages_fetched > before.pages_fetched, "{after:?}");
    assert!(after.write_faults > before.write_faults, "{after:?}");
}

// Guards `FaultMode::Signal` against kernel-mode faults: like
// `UserModeOnly`, `read(2)` into a page not held locally fails with
// EFAULT, and the page keeps its data.
#[test]
fn signal_mapping_fails_a_read_into_a_missing_page() {
    read_into_a_missing_page_fails(FaultMode::Signal, "signal-syscall");
}

/// Calls of the child's own `SIGBUS` handler.
static FOREIGN_SIGBUS_CALLS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The child's own `SIGBUS` handler: counts, and for a fault puts an
/// anonymous page of zeros where the access faulted, so that it is retried
/// and succeeds.
extern "C" fn foreign_sigbus(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    FOREIGN_SIGBUS_CALLS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the kernel's siginfo; mmap over the faulting page of a
    // mapping this child made for the purpose.
    unsafe {
        if (*info).si_code > 0 {
            let page = (*info).si_addr() as usize & !(PAGE - 1);
            libc::mmap(
                page as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
        }
    }
}

/// Installs a `SIGBUS` handler of its own, then maps a region (faults
/// served on this thread) and touches its pages, raises `SIGBUS` and reads
/// past the end of a file mapping: the mapping's faults must not reach the
/// child's handler, and both other `SIGBUS` must.
fn child_foreign_sigbus() {
    // SAFETY: installs the handler above, with a zeroed sigaction filled.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = foreign_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        assert_eq!(
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()),
            0
        );
    }
    let region = parent_region();
    let mapping = map_faulting(region, LOCAL_PAGES_MIN);
    say(&format!(
        "on thread {}",
        mapping.serves_faults_on_faulting_thread()
    ));
    let mut sum = 0u64;
    for page in 0..16u64 {
        store(&mapping, page * PAGE_U64, page + 1);
    }
    for page in 0..16u64 {
        sum += load(&mapping, page * PAGE_U64);
    }
    say(&format!("sum {sum}"));
    say(&format!(
        "after the mapping's faults {}",
        FOREIGN_SIGBUS_CALLS.load(Ordering::SeqCst)
    ));
    // SAFETY: raises a signal this child handles.
    unsafe { libc::raise(libc::SIGBUS) };
    say(&format!(
        "after raise {}",
        FOREIGN_SIGBUS_CALLS.load(Ordering::SeqCst)
    ));
    // A file of one page mapped as two: the second page is past its end.
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(&dir, &[7u8; PAGE]);
    // SAFETY: a new shared mapping of the file, two pages long.
    let past_end = unsafe {
        let address = libc::mmap(
            std::ptr::null_mut(),
            2 * PAGE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        );
        assert_ne!(address, libc::MAP_FAILED);
        std::ptr::read_volatile((address as *const u8).add(PAGE + 10))
    };
    say(&format!(
        "after the file's fault {} read {past_end}",
        FOREIGN_SIGBUS_CALLS.load(Ordering::SeqCst)
    ));
    mapping.flush().unwrap();
    say("done");
}

// Guards the handler a mapping installs for `SIGBUS`: it serves the
// mapping's faults without calling the handler the application had, and
// passes every other `SIGBUS` (one sent by `raise`, one of a file mapping
// read past its end) to that handler.
#[test]
fn a_sigbus_not_of_a_mapping_reaches_the_handler_it_replaced() {
    let setup = setup();
    let name = "foreign";
    drop(setup.region(name, 32));
    let outcome = run_child_on(&setup, "foreign-sigbus", name);
    assert!(outcome.status.success(), "{:?}", outcome.status);
    assert_eq!(
        said(&outcome.stdout, "on thread"),
        Some(if cfg!(target_arch = "x86_64") {
            "true"
        } else {
            "false"
        })
    );
    assert_eq!(said(&outcome.stdout, "sum"), Some("136"));
    assert_eq!(
        said(&outcome.stdout, "after the mapping's faults"),
        Some("0")
    );
    assert_eq!(said(&outcome.stdout, "after raise"), Some("1"));
    assert_eq!(
        said(&outcome.stdout, "after the file's fault"),
        Some("2 read 0")
    );
    assert!(said(&outcome.stdout, "done").is_some());
}

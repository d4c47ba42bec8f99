//! The local tier's hit path: a cached read, beside a plain `memcpy` of the
//! same bytes from the same working set (the floor no cache can beat).
//!
//! Two working sets: 64 pages (256 KiB, stays in the CPU caches) and 16,384
//! pages (64 MiB, comes from DRAM). Reads pick a random page of the set from a
//! precomputed list, so every variant pays the same for choosing. The caches
//! are larger than the working set and warm: every read is a hit.

mod common;

use std::hint::black_box;

use criterion::Criterion;
use pagoda::RegionOptions;
use pagoda_bench::fixture::{LocalNode, create_written_region};
use pagoda_bench::peers::{Pagoda, Source};
use pagoda_bench::report::{Table, emit};
use pagoda_bench::{FastRng, PAGE_BYTES};
use pagoda_cache::policy::PolicyKind;

use common::{StdoutToStderr, median_ns, timed};

/// Pages of the large working set (64 MiB).
const LARGE_SET_PAGES: u64 = 16_384;
/// Pages of the small working set (256 KiB).
const SMALL_SET_PAGES: u64 = 64;
/// Length of the precomputed random page list (a power of two).
const SEQUENCE_LENGTH: usize = 1 << 16;

/// A cycle of random pages of `0..pages`.
struct Sequence {
    pages: Vec<u64>,
    next: usize,
}

impl Sequence {
    fn new(pages: u64, seed: u64) -> Sequence {
        let mut rng = FastRng::new(seed);
        Sequence {
            pages: (0..SEQUENCE_LENGTH).map(|_| rng.below(pages)).collect(),
            next: 0,
        }
    }

    #[inline]
    fn next(&mut self) -> u64 {
        let page = self.pages[self.next];
        self.next = (self.next + 1) & (SEQUENCE_LENGTH - 1);
        page
    }
}

/// (id, read bytes, working set pages, what it is).
const CASES: [(&str, usize, u64, &str); 11] = [
    (
        "memcpy/4KiB/256KiB-set",
        PAGE_BYTES,
        SMALL_SET_PAGES,
        "memcpy floor",
    ),
    (
        "pagecache/4KiB/256KiB-set",
        PAGE_BYTES,
        SMALL_SET_PAGES,
        "PageCache<MemoryBacking>::read_at",
    ),
    (
        "region/4KiB/256KiB-set",
        PAGE_BYTES,
        SMALL_SET_PAGES,
        "Region::read_at (node on loopback)",
    ),
    (
        "memcpy/4KiB/64MiB-set",
        PAGE_BYTES,
        LARGE_SET_PAGES,
        "memcpy floor",
    ),
    (
        "pagecache/4KiB/64MiB-set",
        PAGE_BYTES,
        LARGE_SET_PAGES,
        "PageCache<MemoryBacking>::read_at",
    ),
    (
        "region/4KiB/64MiB-set",
        PAGE_BYTES,
        LARGE_SET_PAGES,
        "Region::read_at (node on loopback)",
    ),
    ("memcpy/64B/64MiB-set", 64, LARGE_SET_PAGES, "memcpy floor"),
    (
        "pagecache/64B/64MiB-set",
        64,
        LARGE_SET_PAGES,
        "PageCache<MemoryBacking>::read_at",
    ),
    (
        "region/64B/64MiB-set",
        64,
        LARGE_SET_PAGES,
        "Region::read_at (node on loopback)",
    ),
    ("memcpy/64B/256KiB-set", 64, SMALL_SET_PAGES, "memcpy floor"),
    (
        "pagecache/64B/256KiB-set",
        64,
        SMALL_SET_PAGES,
        "PageCache<MemoryBacking>::read_at",
    ),
];

fn bench(criterion: &mut Criterion) {
    // The memcpy floor reads from a plain array of the large set's size.
    let floor = Source::new(LARGE_SET_PAGES);
    // Pagoda's cache over an in-memory backing store, every page resident.
    let cache = Pagoda::new(LARGE_SET_PAGES * 2, &floor, PolicyKind::default());
    // A real region on an in-process node, through a warm cache twice its size.
    let node = LocalNode::start(
        LARGE_SET_PAGES * PAGE_BYTES as u64 * 2,
        std::time::Duration::from_micros(50),
    );
    let client = node.client(std::time::Duration::from_micros(50));
    create_written_region(&client, "hit-path", LARGE_SET_PAGES * PAGE_BYTES as u64);
    let region = client
        .open_region(
            "hit-path",
            RegionOptions::with_cache_bytes(LARGE_SET_PAGES * PAGE_BYTES as u64 * 2),
        )
        .expect("opening the region");
    let mut warm = vec![0u8; PAGE_BYTES];
    for page in 0..LARGE_SET_PAGES {
        cache
            .cache()
            .read_at(page * PAGE_BYTES as u64, &mut warm)
            .expect("warming the cache");
        region
            .read_at(page * PAGE_BYTES as u64, &mut warm)
            .expect("warming the region");
    }
    let misses_before = (cache.cache().stats().misses, region.cache_stats().misses);

    let mut group = criterion.benchmark_group("hit_path");
    for (index, &(id, bytes, set, _)) in CASES.iter().enumerate() {
        let mut sequence = Sequence::new(set, 0x41_7000 + index as u64);
        let mut buf = vec![0u8; bytes];
        // Read at a page's start plus an offset that keeps 64 B reads inside it.
        let within = (PAGE_BYTES - bytes) as u64 / 2;
        group.bench_function(id, |bencher| {
            bencher.iter_custom(|iterations| {
                if id.starts_with("memcpy") {
                    timed(id, iterations, || {
                        let page = sequence.next();
                        let start = within as usize;
                        buf.copy_from_slice(&floor.page(page)[start..start + bytes]);
                        black_box(&mut buf);
                    })
                } else if id.starts_with("pagecache") {
                    timed(id, iterations, || {
                        let page = sequence.next();
                        cache
                            .cache()
                            .read_at(black_box(page * PAGE_BYTES as u64 + within), &mut buf)
                            .expect("a hit");
                        black_box(&mut buf);
                    })
                } else {
                    timed(id, iterations, || {
                        let page = sequence.next();
                        region
                            .read_at(black_box(page * PAGE_BYTES as u64 + within), &mut buf)
                            .expect("a hit");
                        black_box(&mut buf);
                    })
                }
            })
        });
    }
    group.finish();
    let misses_after = (cache.cache().stats().misses, region.cache_stats().misses);
    assert_eq!(
        misses_before, misses_after,
        "every measured read must be a hit (misses before and after)"
    );
}

fn main() {
    let json = common::json_requested();
    let redirect = StdoutToStderr::new(json);
    let mut criterion = common::criterion();
    bench(&mut criterion);
    criterion.final_summary();
    drop(redirect);

    let mut table = Table::new(&[
        "read",
        "working set",
        "path",
        "median ns",
        "÷ memcpy floor",
        "goal < 200 ns",
    ]);
    let mut rows = Vec::new();
    for &(id, bytes, set, what) in &CASES {
        let Some(ns) = median_ns(id) else { continue };
        let parts: Vec<&str> = id.split('/').collect();
        let floor_id = format!("memcpy/{}/{}", parts[1], parts[2]);
        let floor = median_ns(&floor_id);
        let ratio = floor.map(|f| ns / f);
        table.row(vec![
            format!("{bytes} B"),
            format!("{} pages ({} KiB)", set, set * PAGE_BYTES as u64 / 1024),
            what.into(),
            format!("{ns:.1}"),
            ratio.map_or("—".into(), |r| format!("{r:.2}×")),
            if what.starts_with("memcpy") {
                "—".into()
            } else if ns < 200.0 {
                "met".into()
            } else {
                "missed".into()
            },
        ]);
        rows.push(serde_json::json!({
            "id": id, "read_bytes": bytes, "working_set_pages": set, "path": what,
            "median_ns": ns, "floor_median_ns": floor,
        }));
    }
    let markdown = format!(
        "{}\nAll reads are hits (asserted from the caches' miss counters). Medians of criterion's samples, ns per read.\n",
        table.markdown()
    );
    emit(
        json,
        &serde_json::json!({"benchmark": "hit_path", "cases": rows}),
        &markdown,
    );
}

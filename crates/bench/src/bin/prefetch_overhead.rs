//! What stream detection costs an access pattern it cannot help: random
//! misses and Zipf hits through the local tier over an in-memory backing
//! store (no network, so the difference is the cache's own work), with
//! trend read-ahead off and on, alternating, several rounds; medians.
//!
//! `cargo run --release -p pagoda-bench --bin prefetch_overhead [-- --rounds N --ops N]`

use std::time::Instant;

use pagoda_cache::memory::MemoryBacking;
use pagoda_cache::policy::PolicyKind;
use pagoda_cache::{CacheConfig, PageCache, PrefetchConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

const PAGE: usize = 4096;
const REGION_PAGES: u64 = 65_536;
const FRAMES: usize = 16_384;

fn cache(trend: bool) -> PageCache<MemoryBacking> {
    PageCache::new(
        CacheConfig {
            capacity_bytes: (FRAMES * PAGE) as u64,
            page_size: PAGE,
            region_bytes: REGION_PAGES * PAGE as u64,
            policy: PolicyKind::default(),
            batch_pages_max: 256,
            prefetch: PrefetchConfig {
                trend,
                ..PrefetchConfig::default()
            },
        },
        MemoryBacking::new(REGION_PAGES as usize * PAGE, PAGE),
    )
}

/// Nanoseconds per access of `ops` accesses picked by `pick`.
fn run(trend: bool, ops: u64, pick: &mut dyn FnMut() -> u64) -> (f64, u64) {
    let cache = cache(trend);
    let mut buf = vec![0u8; PAGE];
    // Warm: fill the cache.
    for _ in 0..FRAMES as u64 * 2 {
        cache.read_at(pick() * PAGE as u64, &mut buf).unwrap();
    }
    let began = Instant::now();
    for _ in 0..ops {
        cache.read_at(pick() * PAGE as u64, &mut buf).unwrap();
    }
    let ns = began.elapsed().as_nanos() as f64 / ops as f64;
    (ns, cache.stats().prefetch_issued)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let mut rounds = 7;
    let mut ops = 1_000_000u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1).and_then(|v| v.parse().ok())) {
            ("--rounds", Some(n)) => rounds = n as usize,
            ("--ops", Some(n)) => ops = n,
            _ => {
                eprintln!("usage: prefetch_overhead [--rounds N] [--ops N]");
                std::process::exit(2);
            }
        }
    }
    println!("| pattern | off ns/access | on ns/access | on / off | read ahead (on) |");
    println!("| --- | --- | --- | --- | --- |");
    for pattern in ["uniform", "zipf"] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let mut issued = 0;
        for round in 0..rounds {
            for trend in if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                let mut rng = StdRng::seed_from_u64(round as u64);
                let zipf = Zipf::new(REGION_PAGES, 0.99).unwrap();
                let mut pick = || match pattern {
                    "uniform" => rng.gen_range(0..REGION_PAGES),
                    _ => {
                        (zipf.sample(&mut rng) as u64 - 1).wrapping_mul(0x9e37_79b9) % REGION_PAGES
                    }
                };
                let (ns, sent) = run(trend, ops, &mut pick);
                if trend {
                    on.push(ns);
                    issued += sent;
                } else {
                    off.push(ns);
                }
            }
        }
        let (off, on) = (median(&mut off), median(&mut on));
        println!(
            "| {pattern} | {off:.0} | {on:.0} | {:.3}× | {issued} pages |",
            on / off
        );
    }
}

//! Time per read, one thread, of Pagoda's page cache beside quick_cache, moka
//! and foyer: 16,384 values of 4 KiB, every read copying its value into the
//! caller's buffer. Workloads: hit-only (all keys warm) and mixed hit/miss
//! with uniform keys over twice the capacity (a miss loads and inserts).
//! The 2-thread comparison is the `cache_compare` binary's timed loop.

mod common;

use std::hint::black_box;

use criterion::Criterion;
use pagoda_bench::PAGE_BYTES;
use pagoda_bench::peers::{Keys, build_all, key_sequence};
use pagoda_bench::report::{Table, emit};

use common::{StdoutToStderr, median_ns, timed};

const CAPACITY: u64 = 16_384;
const SEQUENCE_LENGTH: usize = 1 << 20;

/// (workload id, keys per capacity).
const WORKLOADS: [(&str, u64); 2] = [("hit-only", 1), ("mixed-uniform", 2)];

fn bench(criterion: &mut Criterion) -> Vec<(String, String, &'static str)> {
    let mut ids = Vec::new();
    let mut group = criterion.benchmark_group("cache_compare");
    for (workload, keys_per_capacity) in WORKLOADS {
        let keys = CAPACITY * keys_per_capacity;
        let caches = build_all(CAPACITY, keys, keys.min(CAPACITY));
        let sequence = key_sequence(Keys::Uniform, keys, SEQUENCE_LENGTH, 0x5eed);
        for cache in &caches {
            let id = format!("{workload}/{}", cache.name());
            let mut buf = vec![0u8; PAGE_BYTES];
            let mut index = 0usize;
            group.bench_function(&id, |bencher| {
                bencher.iter_custom(|iterations| {
                    timed(&id, iterations, || {
                        let key = sequence[index];
                        index = (index + 1) & (SEQUENCE_LENGTH - 1);
                        cache.read(black_box(key), &mut buf);
                        black_box(&mut buf);
                    })
                })
            });
            ids.push((id, workload.to_owned(), cache.name()));
        }
    }
    group.finish();
    ids
}

fn main() {
    let json = common::json_requested();
    let redirect = StdoutToStderr::new(json);
    let mut criterion = common::criterion();
    let ids = bench(&mut criterion);
    criterion.final_summary();
    drop(redirect);

    let mut table = Table::new(&[
        "workload",
        "cache",
        "median ns/read",
        "Mreads/s",
        "÷ fastest peer (throughput)",
    ]);
    let mut rows = Vec::new();
    for (workload, _) in WORKLOADS {
        let cells: Vec<(&str, f64)> = ids
            .iter()
            .filter(|(_, w, _)| w == workload)
            .filter_map(|(id, _, name)| median_ns(id).map(|ns| (*name, ns)))
            .collect();
        let fastest_peer_ns = cells
            .iter()
            .filter(|(name, _)| *name != "pagoda")
            .map(|(_, ns)| *ns)
            .fold(f64::INFINITY, f64::min);
        for (name, ns) in &cells {
            table.row(vec![
                workload.into(),
                name.to_string(),
                format!("{ns:.1}"),
                format!("{:.2}", 1e3 / ns),
                format!("{:.2}×", fastest_peer_ns / ns),
            ]);
            rows.push(serde_json::json!({"workload": workload, "cache": name, "median_ns": ns}));
        }
    }
    let markdown = format!(
        "{}\nOne thread; {CAPACITY} entries of 4 KiB per cache; medians of criterion's samples. For 2 threads run the `cache_compare` binary.\n",
        table.markdown()
    );
    emit(
        json,
        &serde_json::json!({"benchmark": "cache_compare", "rows": rows}),
        &markdown,
    );
}

//! Hit-path throughput of Pagoda's page cache beside quick_cache, moka and
//! foyer, at 1 and 2 threads, in a timed loop.
//!
//! Every cache holds 16,384 values of 4 KiB and every read copies the value
//! into the caller's buffer. Workloads: hit-only (key space = capacity, all
//! warm), and mixed hit/miss over a key space twice the capacity with uniform
//! or Zipf(0.99) keys, where a miss loads the value (a 4 KiB copy from a
//! backing array) and inserts it. Cells run in rounds, the caches' order
//! rotating each round, and the table gives each cell's median over rounds.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use pagoda_bench::PAGE_BYTES;
use pagoda_bench::peers::{Keys, ReadCache, build_all, key_sequence};
use pagoda_bench::report::{Flags, Table, emit, progress};

const USAGE: &str = "\
cache_compare: hit-path throughput of Pagoda's cache and peer caches

  --seconds S        seconds per cell per round (default 0.5)
  --rounds N         rounds (default 3)
  --threads LIST     thread counts (default 1,2)
  --capacity N       entries per cache (default 16384)
  --json             print JSON instead of the markdown table";

/// Keys each thread cycles through (precomputed so that choosing a key costs
/// the same for every cache).
const SEQUENCE_LENGTH: usize = 1 << 20;
/// Most reads one thread makes in one cell, whatever the time.
const READS_PER_THREAD_MAX: u64 = 1 << 32;

struct Workload {
    name: &'static str,
    keys_per_capacity: u64,
    distribution: Keys,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "hit-only (keys = capacity, warm)",
        keys_per_capacity: 1,
        distribution: Keys::Uniform,
    },
    Workload {
        name: "mixed, uniform keys (keys = 2× capacity)",
        keys_per_capacity: 2,
        distribution: Keys::Uniform,
    },
    Workload {
        name: "mixed, Zipf 0.99 keys (keys = 2× capacity)",
        keys_per_capacity: 2,
        distribution: Keys::Zipf,
    },
];

/// Runs `cache` with one thread per sequence for `duration`; returns reads
/// per second and the misses its read calls reported.
fn run(cache: &dyn ReadCache, sequences: &[Vec<u64>], duration: Duration) -> (f64, u64, u64) {
    let barrier = Barrier::new(sequences.len());
    let results: Vec<(u64, u64, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sequences
            .iter()
            .map(|sequence| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut buf = vec![0u8; PAGE_BYTES];
                    let mut reads = 0u64;
                    let mut misses = 0u64;
                    let mut index = 0usize;
                    barrier.wait();
                    let began = Instant::now();
                    // Check the clock every 256 reads, so the loop is bounded
                    // in time without timing every read.
                    'outer: while reads < READS_PER_THREAD_MAX {
                        for _ in 0..256 {
                            let key = sequence[index];
                            index = (index + 1) & (SEQUENCE_LENGTH - 1);
                            if !cache.read(key, &mut buf) {
                                misses += 1;
                            }
                            debug_assert_eq!(buf[0], key as u8);
                        }
                        reads += 256;
                        if began.elapsed() >= duration {
                            break 'outer;
                        }
                    }
                    assert_eq!(
                        buf[PAGE_BYTES - 1],
                        sequence[(index + SEQUENCE_LENGTH - 1) & (SEQUENCE_LENGTH - 1)] as u8
                    );
                    (reads, misses, began.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a reader thread"))
            .collect()
    });
    let reads: u64 = results.iter().map(|r| r.0).sum();
    let misses: u64 = results.iter().map(|r| r.1).sum();
    let seconds = results.iter().map(|r| r.2).fold(0.0, f64::max);
    (reads as f64 / seconds, reads, misses)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let flags = Flags::parse(
        &["json"],
        &["seconds", "rounds", "threads", "capacity"],
        USAGE,
    );
    let json = flags.switch("json");
    let duration = Duration::from_secs_f64(flags.number("seconds", 0.5));
    let rounds: usize = flags.number::<usize>("rounds", 3).max(1);
    let thread_counts: Vec<usize> = flags.numbers("threads", &[1, 2]);
    let capacity: u64 = flags.number("capacity", 16_384);

    let mut table = Table::new(&[
        "workload",
        "threads",
        "cache",
        "Mreads/s (median of rounds)",
        "hit ratio",
        "÷ fastest peer",
    ]);
    let mut document_rows = Vec::new();
    let mut goal_lines = Vec::new();
    for workload in &WORKLOADS {
        let keys = capacity * workload.keys_per_capacity;
        progress(&format!(
            "{}: building and warming the caches",
            workload.name
        ));
        let caches = build_all(capacity, keys, keys.min(capacity));
        for &threads in &thread_counts {
            let sequences: Vec<Vec<u64>> = (0..threads)
                .map(|t| {
                    key_sequence(
                        workload.distribution,
                        keys,
                        SEQUENCE_LENGTH,
                        0xc0de + t as u64,
                    )
                })
                .collect();
            let mut rates: Vec<Vec<f64>> = vec![Vec::new(); caches.len()];
            let mut reads = vec![0u64; caches.len()];
            let mut misses = vec![0u64; caches.len()];
            for round in 0..rounds {
                for step in 0..caches.len() {
                    let index = (round + step) % caches.len();
                    let cache = caches[index].as_ref();
                    let counted_before = cache.misses_counted();
                    let (rate, cell_reads, cell_misses) = run(cache, &sequences, duration);
                    let cell_misses = match (counted_before, cache.misses_counted()) {
                        (Some(before), Some(after)) => after - before,
                        _ => cell_misses,
                    };
                    rates[index].push(rate);
                    reads[index] += cell_reads;
                    misses[index] += cell_misses;
                }
            }
            let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
            let fastest_peer = caches
                .iter()
                .zip(&medians)
                .filter(|(cache, _)| cache.name() != "pagoda")
                .map(|(_, &rate)| rate)
                .fold(0.0, f64::max);
            for (index, cache) in caches.iter().enumerate() {
                let hit_ratio = 1.0 - misses[index] as f64 / reads[index].max(1) as f64;
                table.row(vec![
                    workload.name.into(),
                    threads.to_string(),
                    cache.name().into(),
                    format!("{:.2}", medians[index] / 1e6),
                    format!("{:.3}", hit_ratio),
                    format!("{:.2}×", medians[index] / fastest_peer),
                ]);
                document_rows.push(serde_json::json!({
                    "workload": workload.name, "threads": threads, "cache": cache.name(),
                    "reads_per_second_median": medians[index], "rounds": rates[index],
                    "hit_ratio": hit_ratio,
                }));
                if cache.name() == "pagoda" && threads == 2 {
                    goal_lines.push(format!(
                        "{} at 2 threads: Pagoda {:.2}× the fastest peer ({}).",
                        workload.name,
                        medians[index] / fastest_peer,
                        if medians[index] >= fastest_peer {
                            "met"
                        } else {
                            "missed"
                        }
                    ));
                }
            }
        }
    }
    let markdown = format!(
        "{}\nGoal: hit-path throughput at 2 threads ≥ the fastest of quick_cache, moka, foyer.\n{}\n\
         Settings: {} entries of 4 KiB per cache, {:.2} s per cell, {} rounds, caches' order rotated each round.\n",
        table.markdown(),
        goal_lines.join("\n"),
        capacity,
        duration.as_secs_f64(),
        rounds,
    );
    emit(
        json,
        &serde_json::json!({"benchmark": "cache_compare", "capacity": capacity, "rows": document_rows}),
        &markdown,
    );
}

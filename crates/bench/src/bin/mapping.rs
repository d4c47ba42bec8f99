//! Mapped regions (C13): the cost of a fault beside the remote reads it
//! replaces, and the cost of a hit beside a plain load.
//!
//! In one run, against one in-process node on loopback:
//!
//! - **Misses**, interleaved in rounds (the order rotating each round, and a
//!   pause longer than every spin before each) so that every path sees the
//!   same noise: a raw TCP busy-polling ping-pong
//!   with the byte sizes of a 4 KiB page read (as the `latency` benchmark);
//!   `Raw::read_pages` of one random page; `Region::read_at` of a random
//!   4 KiB page through a one-page cache (every read a miss); the first load
//!   of a page of a mapping whose local tier has room (a missing fault: the
//!   page is fetched from the node, nothing is evicted); and random loads
//!   over a mapping whose working set is larger than its local budget, each
//!   classified by the mapping's counters as a hit, a missing fault (with
//!   the eviction it forces) or a minor fault (a page the policy zapped and
//!   the load mapped back, with no round trip).
//! - **Hits**: with every page of a mapping local (budget ≥ region, every
//!   page touched once), loops of 64-bit loads over the mapping and the same
//!   loops over a plain `Vec<u64>` of the same size and contents,
//!   sequential and random, alternating which goes first each round; ns per
//!   load, median over rounds, and their ratio.
//!
//! Every loop is bounded in count and in time.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pagoda::{MapOptions, Mapping, MappingStats, RegionOptions};
use pagoda_bench::fixture::{LocalNode, create_written_region};
use pagoda_bench::raw::{RawPair, Wait};
use pagoda_bench::report::{Flags, Percentiles, Table, emit, micros, progress};
use pagoda_bench::{FastRng, PAGE_BYTES};

const USAGE: &str = "\
mapping: mapped-region faults beside remote reads, mapped hits beside plain loads

  --samples N            samples per miss path after warm-up (default 10000)
  --warmup N             warm-up operations per miss path (default 1000)
  --round N              samples per path per round (default 500)
  --region-mib N         at least this size for the fault and read_at region (default 64;
                         grown to one fresh page per mapped-miss sample)
  --evict-mib N          working set of the evicting mapping (default 8)
  --evict-local-mib N    local budget of the evicting mapping (default 4)
  --hit-mib N            size of the all-local mapping and of the Vec (default 64)
  --hit-rounds N         rounds of the hit loops (default 15)
  --random-loads N       loads per random hit loop (default 4000000)
  --fault-mode M         signal (faults served on the faulting thread) or threads (by fault
                         threads; FaultMode::Auto) (default: the product's)
  --fault-threads N      fault threads per mapping with --fault-mode threads (default: the
                         product's, 4)
  --fault-spin-us N      the first fault thread's spin after a fault (default: the product's)
  --client-spin-us N     client spin ceiling (default: the product's, 1000)
  --node-spin-us N       node connection spin ceiling (default: the product's, 1000)
  --raw-spin-us N        raw polling ends spin this long before blocking (default 2000)
  --seconds-max N        stop taking miss rounds after this long (default 40)
  --json                 print JSON instead of the markdown tables";

/// The latency rows, in table order.
const ROWS: [&str; 6] = [
    "raw TCP, busy-polling reads (64 B / 4 KiB + 32 B)",
    "Raw::read_pages, 1 random page",
    "Region::read_at, 4 KiB miss (1-page cache)",
    "mapped miss: first load, local tier has room",
    "mapped miss: random load, local tier full (evicts)",
    "mapped minor fault: page zapped by the policy",
];
const RAW_POLL: usize = 0;
const READ_PAGES: usize = 1;
const REGION_MISS: usize = 2;
const MAPPED_MISS: usize = 3;
const MAPPED_MISS_EVICTING: usize = 4;
const MINOR_FAULT: usize = 5;

/// The paths taken in each round. The evicting mapping's loads feed two
/// rows (and a hit count), so there is one path fewer than rows.
const PATHS: usize = 5;
const EVICTING_PATH: usize = 4;

/// Request and reply sizes of the raw ping-pong, as in the `latency`
/// benchmark: a ReadPages request of one page and its reply.
const RAW_REQUEST_BYTES: usize = 64;
const RAW_REPLY_BYTES: usize = PAGE_BYTES + 32;

/// The 64-bit word every page `page` of a pre-written region holds (the
/// fixture fills page `p` with the byte `p as u8`).
fn word_of_page(page: u64) -> u64 {
    (page as u8) as u64 * 0x0101_0101_0101_0101
}

/// A page-aligned 2 MiB multiple of at least `bytes`.
fn whole_segments(bytes: u64) -> u64 {
    bytes.div_ceil(2 << 20).max(1) * (2 << 20)
}

/// Loads the first word of `page` of `mapping`, timed; checks its value
/// outside the timed span.
fn timed_load(mapping: &Mapping, page: u64) -> u64 {
    // SAFETY: `page` is a page of the region, so the word lies inside the
    // mapping, which is readable and page-aligned (so the word is aligned).
    let address = unsafe { mapping.as_ptr().add(page as usize * PAGE_BYTES) }.cast::<u64>();
    let began = Instant::now();
    // SAFETY: see above; a volatile read so that the load is not elided.
    let value = unsafe { std::ptr::read_volatile(address) };
    let elapsed = began.elapsed().as_nanos() as u64;
    assert_eq!(
        value,
        word_of_page(page),
        "page {page} of the mapping read back wrong"
    );
    elapsed
}

/// Sums the words in order: a sequential load loop.
#[inline(never)]
fn sum_sequential(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |sum, &word| sum.wrapping_add(word))
}

/// Sums `loads` words at random indices: a random load loop (the index
/// costs a few ns, the same on both sides).
#[inline(never)]
fn sum_random(words: &[u64], loads: usize, seed: u64) -> u64 {
    let mut rng = FastRng::new(seed);
    let count = words.len() as u64;
    let mut sum = 0u64;
    for _ in 0..loads {
        sum = sum.wrapping_add(words[rng.below(count) as usize]);
    }
    sum
}

/// ns per load of one pass of a loop, and the pass's sum.
fn time_pass(words: &[u64], random_loads: Option<usize>, seed: u64) -> (f64, u64) {
    let words = black_box(words);
    let began = Instant::now();
    let (sum, loads) = match random_loads {
        None => (sum_sequential(words), words.len()),
        Some(loads) => (sum_random(words, loads, seed), loads),
    };
    let elapsed = began.elapsed().as_nanos() as f64;
    (elapsed / loads as f64, black_box(sum))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn stats_delta(after: MappingStats, before: MappingStats) -> serde_json::Value {
    serde_json::json!({
        "pages_fetched": after.pages_fetched - before.pages_fetched,
        "pages_zero_filled": after.pages_zero_filled - before.pages_zero_filled,
        "minor_faults": after.minor_faults - before.minor_faults,
        "write_faults": after.write_faults - before.write_faults,
        "pages_written_back": after.pages_written_back - before.pages_written_back,
        "evictions": after.evictions - before.evictions,
        "failed_faults": after.failed_faults - before.failed_faults,
    })
}

fn main() {
    let flags = Flags::parse(
        &["json"],
        &[
            "samples",
            "warmup",
            "round",
            "region-mib",
            "evict-mib",
            "evict-local-mib",
            "hit-mib",
            "hit-rounds",
            "random-loads",
            "fault-threads",
            "fault-spin-us",
            "client-spin-us",
            "node-spin-us",
            "raw-spin-us",
            "seconds-max",
            "fault-mode",
        ],
        USAGE,
    );
    let json = flags.switch("json");
    let samples: usize = flags.number("samples", 10_000);
    let warmup: usize = flags.number("warmup", 1_000);
    let round: usize = flags.number::<usize>("round", 500).max(1);
    // One fresh page per mapped-miss operation, so that every one is a
    // miss whatever the counts asked for.
    let fault_pages_needed = (samples + warmup) as u64;
    let region_bytes = whole_segments(
        (flags.number::<u64>("region-mib", 64) << 20).max(fault_pages_needed * PAGE_BYTES as u64),
    );
    let evict_bytes = whole_segments(flags.number::<u64>("evict-mib", 8) << 20);
    let evict_local_bytes = (flags.number::<u64>("evict-local-mib", 4) << 20)
        .max(pagoda::LOCAL_PAGES_MIN * PAGE_BYTES as u64);
    let hit_bytes = whole_segments(flags.number::<u64>("hit-mib", 64) << 20);
    let hit_rounds: usize = flags.number::<usize>("hit-rounds", 15).max(1);
    let random_loads: usize = flags.number::<usize>("random-loads", 4_000_000).max(1);
    let fault_threads: usize = flags
        .number("fault-threads", pagoda::FAULT_THREADS_DEFAULT)
        .max(1);
    let client_spin =
        Duration::from_micros(flags.number("client-spin-us", pagoda::SPIN_US_DEFAULT));
    let node_spin =
        Duration::from_micros(flags.number("node-spin-us", pagoda_node::server::SPIN_US_DEFAULT));
    let raw_spin = Duration::from_micros(flags.number("raw-spin-us", 2_000));
    let seconds_max = Duration::from_secs(flags.number("seconds-max", 40));
    // Slept before each path's round, longer than every end's spin, so that
    // no thread left spinning by one path (the raw polling server spins
    // 2 ms) takes a core from the next path's round.
    let settle = client_spin.max(node_spin).max(raw_spin) + Duration::from_millis(1);
    let fault_spin = Duration::from_micros(flags.number(
        "fault-spin-us",
        MapOptions::default().spin.as_micros() as u64,
    ));
    let fault_mode = match flags.values_get("fault-mode") {
        None => pagoda::FaultMode::default(),
        Some("signal") => pagoda::FaultMode::Signal,
        Some("threads") => pagoda::FaultMode::Auto,
        Some(other) => {
            eprintln!("mapping: --fault-mode is signal or threads, not {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let map_options = |local_bytes: u64| MapOptions {
        local_bytes,
        fault_threads,
        fault_mode,
        spin: fault_spin,
        ..MapOptions::default()
    };

    let node = LocalNode::start((region_bytes + evict_bytes + hit_bytes) * 3 / 2, node_spin);
    let client = node.client(client_spin);
    let info = create_written_region(&client, "mapping-misses", region_bytes);
    create_written_region(&client, "mapping-evicting", evict_bytes);
    create_written_region(&client, "mapping-hits", hit_bytes);

    // The mapped-miss mapping holds the whole region, so that no fault
    // evicts; its loads take fresh pages in a random order.
    let misses = client
        .open_region("mapping-misses", RegionOptions::default())
        .expect("opening the misses region")
        .map(map_options(region_bytes))
        .expect("mapping the misses region");
    // The same pages through the product's read path, as a reader.
    let reader = client
        .open_region_read_only(
            "mapping-misses",
            RegionOptions::with_cache_bytes(PAGE_BYTES as u64),
        )
        .expect("opening the misses region for reading");
    let evicting = client
        .open_region("mapping-evicting", RegionOptions::default())
        .expect("opening the evicting region")
        .map(map_options(evict_local_bytes))
        .expect("mapping the evicting region");
    let pages = region_bytes / PAGE_BYTES as u64;
    let evict_pages = evict_bytes / PAGE_BYTES as u64;
    let mut fresh_pages: Vec<u64> = (0..pages).collect();
    let mut shuffle = FastRng::new(0x05ee_d0ff_a170);
    for index in (1..fresh_pages.len()).rev() {
        let other = shuffle.below(index as u64 + 1) as usize;
        fresh_pages.swap(index, other);
    }
    let mut fresh_pages = fresh_pages.into_iter();
    let mut raw_poll = RawPair::new(RAW_REQUEST_BYTES, RAW_REPLY_BYTES, Wait::Poll(raw_spin));

    let mut rng = FastRng::new(0x03a9_7e11);
    let mut page_buf = vec![0u8; PAGE_BYTES];
    // One operation of `path`; returns the row it measured and its latency
    // in ns, or `None` for a hit of the evicting mapping.
    let mut operation = |path: usize| -> Option<(usize, u64)> {
        match path {
            RAW_POLL => {
                let began = Instant::now();
                raw_poll.round_trip();
                Some((RAW_POLL, began.elapsed().as_nanos() as u64))
            }
            READ_PAGES | REGION_MISS => {
                let page = rng.below(pages);
                let began = Instant::now();
                if path == READ_PAGES {
                    client
                        .raw()
                        .read_pages(&info, &[page], &mut page_buf)
                        .expect("reading a page");
                } else {
                    reader
                        .read_at(page * PAGE_BYTES as u64, &mut page_buf)
                        .expect("reading through the region");
                }
                let elapsed = began.elapsed().as_nanos() as u64;
                assert!(
                    page_buf[0] == page as u8 && page_buf[PAGE_BYTES - 1] == page as u8,
                    "page {page} came back with the wrong contents"
                );
                Some((path, elapsed))
            }
            MAPPED_MISS => {
                let page = fresh_pages
                    .next()
                    .expect("the region has a fresh page for every sample");
                Some((MAPPED_MISS, timed_load(&misses, page)))
            }
            _ => {
                // The counters, read outside the timed span, say what the
                // load was: only this thread touches the mapping, and a
                // fault thread counts a fault under the lock `stats` takes
                // before it lets the load go on.
                let page = rng.below(evict_pages);
                let before = evicting.stats();
                let elapsed = timed_load(&evicting, page);
                let after = evicting.stats();
                if after.pages_fetched + after.pages_zero_filled
                    > before.pages_fetched + before.pages_zero_filled
                {
                    Some((MAPPED_MISS_EVICTING, elapsed))
                } else if after.minor_faults > before.minor_faults {
                    Some((MINOR_FAULT, elapsed))
                } else {
                    None
                }
            }
        }
    };

    progress(&format!("warming up: {warmup} operations per path"));
    for path in 0..PATHS {
        // The evicting mapping warms until its local tier is full.
        let count = if path == EVICTING_PATH {
            warmup.max(2 * (evict_local_bytes / PAGE_BYTES as u64) as usize)
        } else {
            warmup
        };
        for _ in 0..count {
            operation(path);
        }
    }
    let misses_stats_before = misses.stats();
    let evicting_stats_before = evicting.stats();
    let reader_misses_before = reader.cache_stats().misses;
    let mut results: Vec<Vec<u64>> = ROWS.iter().map(|_| Vec::with_capacity(samples)).collect();
    let began = Instant::now();
    let mut round_index = 0;
    let mut evicting_loads = 0u64;
    let mut evicting_hits = 0u64;
    progress(&format!(
        "measuring misses: {samples} samples per path in rounds of {round}"
    ));
    while results[RAW_POLL].len() < samples && began.elapsed() < seconds_max {
        let take = round.min(samples - results[RAW_POLL].len());
        // Rotate the order each round so that no path always follows another.
        for step in 0..PATHS {
            let path = (round_index + step) % PATHS;
            std::thread::sleep(settle);
            for _ in 0..take {
                let measured = operation(path);
                if path == EVICTING_PATH {
                    evicting_loads += 1;
                }
                match measured {
                    Some((row, latency)) => results[row].push(latency),
                    None => evicting_hits += 1,
                }
            }
        }
        round_index += 1;
    }
    let miss_seconds = began.elapsed().as_secs_f64();
    let misses_stats = misses.stats();
    let evicting_stats = evicting.stats();
    let reader_misses = reader.cache_stats().misses - reader_misses_before;
    let mapped_misses_measured = results[MAPPED_MISS].len() as u64;
    drop(reader);
    drop(misses);
    drop(evicting);

    // Hits: a mapping holding every page, each touched once before timing.
    progress("measuring hits: every page of the mapping local");
    let hits = client
        .open_region("mapping-hits", RegionOptions::default())
        .expect("opening the hits region")
        .map(map_options(hit_bytes))
        .expect("mapping the hits region");
    let hit_pages = hit_bytes / PAGE_BYTES as u64;
    for page in 0..hit_pages {
        timed_load(&hits, page);
    }
    let hits_stats_before = hits.stats();
    let mapped_words: &[u64] = pagoda::bytemuck::cast_slice(hits.as_slice());
    // The same contents in plain memory, every page written (so no page is
    // the shared zero page).
    let plain_words: Vec<u64> = (0..mapped_words.len() as u64)
        .map(|index| word_of_page(index * 8 / PAGE_BYTES as u64))
        .collect();
    let hit_began = Instant::now();
    // [sequential, random] × [mapping, plain], ns per load per round.
    let mut per_round: [[Vec<f64>; 2]; 2] = Default::default();
    let mut hit_rounds_taken = 0;
    for hit_round in 0..hit_rounds {
        if hit_began.elapsed() > seconds_max {
            break;
        }
        for (kind, loads) in [None, Some(random_loads)].into_iter().enumerate() {
            let seed = 0x41 + hit_round as u64;
            let order = if hit_round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut sums = [0u64; 2];
            for side in order {
                let words = if side == 0 {
                    mapped_words
                } else {
                    &plain_words[..]
                };
                let (ns_per_load, sum) = time_pass(words, loads, seed);
                per_round[kind][side].push(ns_per_load);
                sums[side] = sum;
            }
            assert_eq!(
                sums[0], sums[1],
                "the mapping and the Vec hold the same words, so their sums agree"
            );
        }
        hit_rounds_taken += 1;
    }
    let hits_stats = hits.stats();
    drop(hits);

    let summaries: Vec<Percentiles> = results.iter_mut().map(|s| Percentiles::of(s)).collect();
    let poll_p50 = summaries[RAW_POLL].p50_ns.max(1) as f64;
    let read_pages_p50 = summaries[READ_PAGES].p50_ns.max(1) as f64;
    let mut latency_table = Table::new(&[
        "path",
        "samples",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "mean µs",
        "p50 / raw polling p50",
        "p50 / read_pages p50",
    ]);
    for (name, summary) in ROWS.iter().zip(&summaries) {
        latency_table.row(vec![
            name.to_string(),
            summary.samples.to_string(),
            micros(summary.p50_ns),
            micros(summary.p99_ns),
            micros(summary.p999_ns),
            micros(summary.mean_ns),
            format!("{:.2}×", summary.p50_ns as f64 / poll_p50),
            format!("{:.2}×", summary.p50_ns as f64 / read_pages_p50),
        ]);
    }
    let hit_kinds = ["sequential u64 loads", "random u64 loads"];
    let mut hit_table = Table::new(&[
        "loop",
        "rounds",
        "mapping ns/load (median)",
        "Vec ns/load (median)",
        "mapping / Vec",
    ]);
    let mut hit_json = Vec::new();
    for (kind, name) in hit_kinds.iter().enumerate() {
        let mapped = median(&mut per_round[kind][0]);
        let plain = median(&mut per_round[kind][1]);
        let ratio = mapped / plain.max(f64::MIN_POSITIVE);
        hit_table.row(vec![
            name.to_string(),
            hit_rounds_taken.to_string(),
            format!("{mapped:.3}"),
            format!("{plain:.3}"),
            format!("{ratio:.3}×"),
        ]);
        hit_json.push(serde_json::json!({
            "loop": name, "rounds": hit_rounds_taken,
            "mapping_ns_per_load": mapped, "plain_ns_per_load": plain, "ratio": ratio,
        }));
    }
    let evicting_faults = evicting_stats.pages_fetched - evicting_stats_before.pages_fetched;
    let evicting_minor = evicting_stats.minor_faults - evicting_stats_before.minor_faults;
    let hit_faults = (hits_stats.pages_fetched - hits_stats_before.pages_fetched)
        + (hits_stats.minor_faults - hits_stats_before.minor_faults);
    let markdown = format!(
        "Fault and read latency (rounds interleaved, one node on loopback):\n\n{}\n\
         Region::read_at misses counted by its cache: {} of {} measured reads. \
         Mapped-miss mapping during measurement: {} fetched, {} evicted ({} measured loads).\n\
         Evicting mapping ({} MiB working set, {} MiB local): {} loads, {} hits, {} missing faults, \
         {} minor faults, {} evictions, {} pages written back.\n\n\
         Hits with every page local ({} MiB mapping, local budget = region; same loops over a Vec<u64> \
         of the same size and contents):\n\n{}\n\
         Faults during the hit loops: {} (expected 0).\n\
         Settings: client spin {} µs, node spin {} µs, raw polling spin {} µs, {} fault threads, \
         {} miss rounds of {} per path in {:.1} s, misses region {} MiB, {} random loads per random hit loop.\n",
        latency_table.markdown(),
        reader_misses,
        results[REGION_MISS].len(),
        misses_stats.pages_fetched - misses_stats_before.pages_fetched,
        misses_stats.evictions - misses_stats_before.evictions,
        mapped_misses_measured,
        evict_bytes >> 20,
        evict_local_bytes >> 20,
        evicting_loads,
        evicting_hits,
        evicting_faults,
        evicting_minor,
        evicting_stats.evictions - evicting_stats_before.evictions,
        evicting_stats.pages_written_back - evicting_stats_before.pages_written_back,
        hit_bytes >> 20,
        hit_table.markdown(),
        hit_faults,
        client_spin.as_micros(),
        node_spin.as_micros(),
        raw_spin.as_micros(),
        fault_threads,
        round_index,
        round,
        miss_seconds,
        region_bytes >> 20,
        random_loads,
    );
    let document = serde_json::json!({
        "benchmark": "mapping",
        "settings": {
            "samples": samples, "warmup": warmup, "round": round,
            "region_bytes": region_bytes,
            "evict_bytes": evict_bytes, "evict_local_bytes": evict_local_bytes,
            "hit_bytes": hit_bytes, "hit_rounds": hit_rounds, "random_loads": random_loads,
            "fault_threads": fault_threads,
            "fault_spin_us": fault_spin.as_micros() as u64,
            "client_spin_us": client_spin.as_micros() as u64,
            "node_spin_us": node_spin.as_micros() as u64,
            "raw_spin_us": raw_spin.as_micros() as u64,
        },
        "latency": ROWS.iter().zip(&summaries).map(|(name, summary)| serde_json::json!({
            "path": name, "latency": summary,
            "p50_over_raw_polling_p50": summary.p50_ns as f64 / poll_p50,
            "p50_over_read_pages_p50": summary.p50_ns as f64 / read_pages_p50,
        })).collect::<Vec<_>>(),
        "region_read_at_misses": reader_misses,
        "mapped_misses_stats": stats_delta(misses_stats, misses_stats_before),
        "evicting": {
            "loads": evicting_loads, "hits": evicting_hits,
            "stats": stats_delta(evicting_stats, evicting_stats_before),
        },
        "hits": hit_json,
        "hit_loop_faults": hit_faults,
        "miss_seconds": miss_seconds,
    });
    emit(json, &document, &markdown);
}

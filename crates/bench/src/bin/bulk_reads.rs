//! Reads of the bulk tier on the node's reading threads against reads done
//! on the connection's own thread (`--bulk-read-threads 0`), on one client
//! connection shared by several threads. Two nodes, one of each, hold the
//! same region (RAM for a sixteenth of it, the rest in the bulk tier on the
//! same disk); measurements alternate between them round by round:
//!
//! 1. **Head of line**: one thread reads a page of a hot (resident) segment
//!    in a loop while another reads random paged-out pages on the same
//!    connection; the hot reads' latency. In place, a hot read waits behind
//!    whatever disk read is ahead of it on the connection.
//! 2. **Misses from one connection**: `--threads` threads read random
//!    paged-out pages on the one connection; reads per second. In place the
//!    connection reads the disk one page at a time; the pool overlaps them.
//! 3. **A lone miss**: one thread reads random paged-out pages one at a
//!    time; the latency, which with the pool includes the hand-off to a
//!    reading thread and back.
//!
//! `cargo run --release -p pagoda-bench --bin bulk_reads [-- --region-mib N (256) --seconds S (3) --rounds N (3) --threads N (8) --dir DIR (/work/bulk-bench) --json]`

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, Colocated, RegionInfo};
use pagoda_bench::report::{self, Flags, Percentiles, Table};
use pagoda_node::bulk::BulkConfig;
use pagoda_node::{Node, NodeConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const USAGE: &str = "usage: bulk_reads [--region-mib N (256)] [--seconds S (3)] [--rounds N (3)] \
                     [--threads N (8)] [--dir DIR (/work/bulk-bench)] [--json]";
const PAGE: usize = 4096;
const MIB: u64 = 1 << 20;
const SEGMENT_PAGES: u64 = 512;

struct Setup {
    _node: Node,
    client: Arc<Client>,
    info: RegionInfo,
    pages: u64,
    label: &'static str,
}

fn setup(root: &Path, label: &'static str, read_threads: usize, region_mib: u64) -> Setup {
    let dir = root.join(label);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut config = NodeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        (region_mib / 16).max(8) * MIB,
        dir.join("data"),
    );
    config.bulk = Some(BulkConfig {
        dir: dir.join("bulk"),
        capacity_bytes: 2 * region_mib * MIB,
    });
    config.bulk_read_threads = read_threads;
    // Every cold read goes to the disk: the hand-off is measured, not the
    // cache of hot blocks.
    config.bulk_cache_bytes = Some(0);
    let node = Node::start(config).expect("node");
    let options = ClientOptions {
        timeout: Duration::from_secs(120),
        colocated: Colocated::Off,
        ..ClientOptions::default()
    };
    let client = Arc::new(Client::connect(node.local_addr(), options).expect("connect"));
    let pages = region_mib * MIB / PAGE as u64;
    let info = client
        .create_region("reads", pages * PAGE as u64, PAGE as u32)
        .expect("region");
    for first in (0..pages).step_by(256) {
        let list: Vec<u64> = (first..(first + 256).min(pages)).collect();
        let data: Vec<u8> = list
            .iter()
            .flat_map(|&p| {
                let mut bytes = vec![(p % 251) as u8; PAGE];
                bytes[..8].copy_from_slice(&p.to_le_bytes());
                bytes
            })
            .collect();
        client.raw().write_pages(&info, &list, &data).expect("fill");
    }
    Setup {
        _node: node,
        client,
        info,
        pages,
        label,
    }
}

/// A random page outside the hot segment (the last one).
fn cold_page(rng: &mut StdRng, pages: u64) -> u64 {
    rng.gen_range(0..pages - SEGMENT_PAGES)
}

fn read_one(setup: &Setup, page: u64, buffer: &mut [u8]) {
    setup
        .client
        .raw()
        .read_pages(&setup.info, &[page], buffer)
        .expect("read");
    assert_eq!(
        u64::from_le_bytes(buffer[..8].try_into().unwrap()),
        page,
        "page {page} read back wrong"
    );
}

/// The hot reads' latencies while a cold reader shares the connection.
fn head_of_line(setup: &Setup, seconds: f64) -> (Percentiles, u64) {
    let stop = AtomicBool::new(false);
    let cold_reads = AtomicU64::new(0);
    let hot = setup.pages - SEGMENT_PAGES / 2;
    let mut samples = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut rng = StdRng::seed_from_u64(7);
            let mut buffer = vec![0u8; PAGE];
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) && count < 10_000_000 {
                read_one(setup, cold_page(&mut rng, setup.pages), &mut buffer);
                count += 1;
            }
            cold_reads.store(count, Ordering::Relaxed);
        });
        let mut buffer = vec![0u8; PAGE];
        // Warm: the pager keeps the hot segment resident.
        let warm_until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < warm_until {
            read_one(setup, hot, &mut buffer);
        }
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end && samples.len() < 10_000_000 {
            let began = Instant::now();
            read_one(setup, hot, &mut buffer);
            samples.push(began.elapsed().as_nanos() as u64);
        }
        stop.store(true, Ordering::Relaxed);
    });
    (
        Percentiles::of(&mut samples),
        cold_reads.load(Ordering::Relaxed),
    )
}

/// Latencies of random cold pages read one at a time by one thread (what
/// the hand-off to a reading thread costs a lone miss).
fn lone_misses(setup: &Setup, seconds: f64) -> Percentiles {
    let mut rng = StdRng::seed_from_u64(11);
    let mut buffer = vec![0u8; PAGE];
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end && samples.len() < 10_000_000 {
        let page = cold_page(&mut rng, setup.pages);
        let began = Instant::now();
        read_one(setup, page, &mut buffer);
        samples.push(began.elapsed().as_nanos() as u64);
    }
    Percentiles::of(&mut samples)
}

/// Reads per second of random cold pages from `threads` threads on the
/// one connection.
fn misses(setup: &Setup, threads: usize, seconds: f64) -> f64 {
    let total = AtomicU64::new(0);
    let began = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let total = &total;
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(thread as u64 + 100);
                let mut buffer = vec![0u8; PAGE];
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                let mut count = 0u64;
                while Instant::now() < end && count < 10_000_000 {
                    read_one(setup, cold_page(&mut rng, setup.pages), &mut buffer);
                    count += 1;
                }
                total.fetch_add(count, Ordering::Relaxed);
            });
        }
    });
    total.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let flags = Flags::parse(
        &["json"],
        &["region-mib", "seconds", "rounds", "threads", "dir"],
        USAGE,
    );
    let region_mib: u64 = flags.number("region-mib", 256);
    let seconds: f64 = flags.number("seconds", 3.0);
    let rounds: usize = flags.number("rounds", 3);
    let threads: usize = flags.number("threads", 8);
    let root = Path::new(flags.values_get("dir").unwrap_or("/work/bulk-bench")).join("reads");
    report::progress(&format!("filling two nodes with {region_mib} MiB each"));
    let setups = [
        setup(&root, "pool", pagoda_node::bulk::READ_THREADS, region_mib),
        setup(&root, "in place", 0, region_mib),
    ];
    // Per setup: hot p50s, hot p99s, cold reads per second.
    let mut hot_p50 = [Vec::new(), Vec::new()];
    let mut hot_p99 = [Vec::new(), Vec::new()];
    let mut rates = [Vec::new(), Vec::new()];
    let mut lone = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for &at in &order {
            let setup = &setups[at];
            report::progress(&format!("round {}: {}", round + 1, setup.label));
            let (hot, _) = head_of_line(setup, seconds);
            hot_p50[at].push(hot.p50_ns as f64);
            hot_p99[at].push(hot.p99_ns as f64);
            rates[at].push(misses(setup, threads, seconds));
            lone[at].push(lone_misses(setup, seconds).p50_ns as f64);
        }
    }
    let summary: Vec<(f64, f64, f64, f64)> = (0..2)
        .map(|at| {
            (
                median(&mut hot_p50[at]),
                median(&mut hot_p99[at]),
                median(&mut rates[at]),
                median(&mut lone[at]),
            )
        })
        .collect();
    let mut table = Table::new(&[
        "bulk-tier reads",
        "hot read p50 µs (cold reader on the connection)",
        "hot read p99 µs",
        &format!("cold reads/s, {threads} threads, one connection"),
        "lone cold read p50 µs",
    ]);
    for (at, setup) in setups.iter().enumerate() {
        let (p50, p99, rate, lone) = summary[at];
        table.row(vec![
            setup.label.to_owned(),
            report::micros(p50 as u64),
            report::micros(p99 as u64),
            format!("{rate:.0}"),
            report::micros(lone as u64),
        ]);
    }
    table.row(vec![
        "pool ÷ in place".to_owned(),
        format!("{:.2}×", summary[0].0 / summary[1].0),
        format!("{:.2}×", summary[0].1 / summary[1].1),
        format!("{:.2}×", summary[0].2 / summary[1].2),
        format!("{:.2}×", summary[0].3 / summary[1].3),
    ]);
    let markdown = format!(
        "{}\nMedians of {rounds} rounds of {seconds} s each, alternating; region {region_mib} MiB, \
         RAM a sixteenth of it.\n",
        table.markdown()
    );
    let document = serde_json::json!({
        "region_mib": region_mib,
        "rounds": rounds,
        "seconds": seconds,
        "threads": threads,
        "pool": {"hot_p50_ns": summary[0].0, "hot_p99_ns": summary[0].1, "cold_reads_per_s": summary[0].2, "lone_cold_p50_ns": summary[0].3},
        "in_place": {"hot_p50_ns": summary[1].0, "hot_p99_ns": summary[1].1, "cold_reads_per_s": summary[1].2, "lone_cold_p50_ns": summary[1].3},
    });
    report::emit(flags.switch("json"), &document, &markdown);
    drop(setups);
    let _ = std::fs::remove_dir_all(&root);
}

//! Queue-depth-one remote read latency beside the raw loopback round trip.
//!
//! In one run, interleaved in rounds so that every path sees the same noise:
//! a raw TCP ping-pong with the byte sizes of a 4 KiB page read (64 B request,
//! 4 KiB + 32 B reply), blocking and busy-polling; `Raw::read_pages` of one
//! random page; `Region::read_at` of a random page through a one-page cache
//! (every read a miss: the product's path), over TCP and co-located (the
//! miss copied from the node's shared memory); and `Raw::ping(4096)`.
//!
//! Between two paths' rounds the program sleeps longer than any end's spin
//! budget, so that no thread left spinning by one path (the raw polling
//! server spins 2 ms) takes a core from the next path's round, and each round
//! starts with a few unrecorded operations, so that no sample pays the wake-up
//! of a thread that went to sleep while other paths ran. `--hog` runs the
//! whole measurement beside one CPU-bound process per core.

use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, Colocated, RegionOptions, Transport};
use pagoda_bench::fixture::{LocalNode, create_written_region};
use pagoda_bench::hog::{Hog, cores};
use pagoda_bench::raw::{RawPair, Wait};
use pagoda_bench::report::{Flags, Percentiles, Table, emit, micros, progress};
use pagoda_bench::{FastRng, PAGE_BYTES};

const USAGE: &str = "\
latency: QD1 remote 4 KiB read latency beside raw loopback round trips

  --samples N           samples per path after warm-up (default 20000)
  --warmup N            warm-up operations per path (default 2000)
  --round N             samples per path per round (default 500)
  --region-mib N        region size in MiB (default 256)
  --client-spin-us N    client spin ceiling (default: the product's, 1000)
  --node-spin-us N      node connection spin ceiling (default: the product's, 1000)
  --raw-spin-us N       raw polling ends spin this long before blocking (default 2000)
  --seconds-max N       stop taking rounds after this long (default 50)
  --round-warmup N      unrecorded operations at the start of each round (default 16)
  --hog                 one CPU-bound process per core for the whole run
  --json                print JSON instead of the markdown table";

/// The paths measured, in table order.
const PATHS: [&str; 6] = [
    "raw TCP, blocking reads",
    "raw TCP, busy-polling reads",
    "Raw::read_pages, 1 random page",
    "Region::read_at, 4 KiB miss over TCP (1-page cache)",
    "Region::read_at, 4 KiB miss co-located (1-page cache)",
    "Raw::ping(4096)",
];
const RAW_BLOCK: usize = 0;
const RAW_POLL: usize = 1;
const READ_PAGES: usize = 2;
const REGION_MISS: usize = 3;
const COLOCATED_MISS: usize = 4;
/// The co-located miss's p50 goal, in nanoseconds.
const COLOCATED_P50_NS_GOAL: u64 = 2_000;

/// Request and reply sizes of the raw ping-pong: a ReadPages request is a
/// 32-byte header plus region id, count and one page number (52 bytes), and
/// its reply a header plus one page.
const RAW_REQUEST_BYTES: usize = 64;
const RAW_REPLY_BYTES: usize = PAGE_BYTES + 32;

fn main() {
    let flags = Flags::parse(
        &["json", "hog"],
        &[
            "samples",
            "warmup",
            "round",
            "region-mib",
            "client-spin-us",
            "node-spin-us",
            "raw-spin-us",
            "seconds-max",
            "round-warmup",
        ],
        USAGE,
    );
    let json = flags.switch("json");
    let samples: usize = flags.number("samples", 20_000);
    let warmup: usize = flags.number("warmup", 2_000);
    let round: usize = flags.number::<usize>("round", 500).max(1);
    let region_bytes = flags.number::<u64>("region-mib", 256).max(1) << 20;
    let client_spin =
        Duration::from_micros(flags.number("client-spin-us", pagoda::SPIN_US_DEFAULT));
    let node_spin =
        Duration::from_micros(flags.number("node-spin-us", pagoda_node::server::SPIN_US_DEFAULT));
    let raw_spin = Duration::from_micros(flags.number("raw-spin-us", 2_000));
    let seconds_max = Duration::from_secs(flags.number("seconds-max", 50));
    let round_warmup: usize = flags.number("round-warmup", 16);
    // Longer than every end's spin, so each round starts with no spinner left.
    let settle = client_spin.max(node_spin).max(raw_spin) + Duration::from_millis(1);

    let node = LocalNode::start(region_bytes * 2, node_spin);
    let connect = |colocated| {
        let options = ClientOptions {
            spin: client_spin,
            client_name: "pagoda-bench".into(),
            colocated,
            ..ClientOptions::default()
        };
        Client::connect(node.addr(), options).expect("the client connects over loopback")
    };
    let client = connect(Colocated::Off);
    let info = create_written_region(&client, "latency", region_bytes);
    let region = client
        .open_region(
            "latency",
            RegionOptions::with_cache_bytes(PAGE_BYTES as u64),
        )
        .expect("opening the region");
    let colocated_client = connect(Colocated::Auto);
    let colocated_region = colocated_client
        .open_region_read_only(
            "latency",
            RegionOptions::with_cache_bytes(PAGE_BYTES as u64),
        )
        .expect("opening the region co-located");
    let transports = [client.transport(), colocated_client.transport()];
    assert_eq!(transports[0], Transport::Tcp);
    assert_eq!(
        transports[1],
        Transport::Colocated,
        "the node's local socket was not used"
    );
    let pages = region_bytes / PAGE_BYTES as u64;
    let mut raw_block = RawPair::new(RAW_REQUEST_BYTES, RAW_REPLY_BYTES, Wait::Block);
    let mut raw_poll = RawPair::new(RAW_REQUEST_BYTES, RAW_REPLY_BYTES, Wait::Poll(raw_spin));

    let mut rng = FastRng::new(0x1a7e_2c41);
    let mut page_buf = vec![0u8; PAGE_BYTES];
    // One operation of path `path`; returns its latency in nanoseconds.
    let mut operation = |path: usize| -> u64 {
        let page = rng.below(pages);
        let began = Instant::now();
        match path {
            RAW_BLOCK => raw_block.round_trip(),
            RAW_POLL => raw_poll.round_trip(),
            READ_PAGES => client
                .raw()
                .read_pages(&info, &[page], &mut page_buf)
                .expect("reading a page"),
            REGION_MISS => region
                .read_at(page * PAGE_BYTES as u64, &mut page_buf)
                .expect("reading through the region"),
            COLOCATED_MISS => colocated_region
                .read_at(page * PAGE_BYTES as u64, &mut page_buf)
                .expect("reading through the co-located region"),
            _ => client.raw().ping(PAGE_BYTES as u32).expect("a ping"),
        }
        let elapsed = began.elapsed().as_nanos() as u64;
        if path == READ_PAGES || path == REGION_MISS || path == COLOCATED_MISS {
            // Cheap check, outside the timed span, that the right page came.
            assert!(
                page_buf[0] == page as u8 && page_buf[PAGE_BYTES - 1] == page as u8,
                "page {page} came back with the wrong contents"
            );
        }
        elapsed
    };

    // Started before the warm-up, so that the spin budgets see the hog too.
    let hog = flags
        .switch("hog")
        .then(|| Hog::start(cores(), seconds_max * 3 + Duration::from_secs(60)));
    progress(&format!("warming up: {warmup} operations per path"));
    for path in 0..PATHS.len() {
        for _ in 0..warmup {
            operation(path);
        }
    }
    let misses_before = region.cache_stats().misses;
    let colocated_misses_before = colocated_region.cache_stats().misses;
    let mut results: Vec<Vec<u64>> = PATHS.iter().map(|_| Vec::with_capacity(samples)).collect();
    let began = Instant::now();
    let mut round_index = 0;
    progress(&format!(
        "measuring: {samples} samples per path in rounds of {round}"
    ));
    while results[0].len() < samples && began.elapsed() < seconds_max {
        let take = round.min(samples - results[0].len());
        // Rotate the order each round so that no path always follows another.
        for step in 0..PATHS.len() {
            let path = (round_index + step) % PATHS.len();
            std::thread::sleep(settle);
            for _ in 0..round_warmup {
                operation(path);
            }
            for _ in 0..take {
                let latency = operation(path);
                results[path].push(latency);
            }
        }
        round_index += 1;
    }
    let region_misses = region.cache_stats().misses - misses_before;
    let colocated_misses = colocated_region.cache_stats().misses - colocated_misses_before;
    let measured = results[REGION_MISS].len() as u64;
    let seconds = began.elapsed().as_secs_f64();
    let hog_processes = hog.as_ref().map_or(0, Hog::processes);
    drop(hog);
    // Still co-located at the end: no sample fell back for good.
    let transports = [transports[0], colocated_client.transport()];
    drop(region);
    drop(colocated_region);

    let summaries: Vec<Percentiles> = results.iter_mut().map(|s| Percentiles::of(s)).collect();
    let poll_p50 = summaries[RAW_POLL].p50_ns.max(1) as f64;
    let mut table = Table::new(&[
        "path",
        "samples",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "mean µs",
        "p50 / raw polling p50",
    ]);
    for (name, summary) in PATHS.iter().zip(&summaries) {
        table.row(vec![
            name.to_string(),
            summary.samples.to_string(),
            micros(summary.p50_ns),
            micros(summary.p99_ns),
            micros(summary.p999_ns),
            micros(summary.mean_ns),
            format!("{:.2}×", summary.p50_ns as f64 / poll_p50),
        ]);
    }
    let ratio_read_pages = summaries[READ_PAGES].p50_ns as f64 / poll_p50;
    let ratio_region = summaries[REGION_MISS].p50_ns as f64 / poll_p50;
    let verdict = |ratio: f64| if ratio <= 1.5 { "met" } else { "missed" };
    let colocated_p50 = summaries[COLOCATED_MISS].p50_ns;
    let colocated_over_tcp = colocated_p50 as f64 / summaries[REGION_MISS].p50_ns.max(1) as f64;
    let colocated_verdict = if colocated_p50 <= COLOCATED_P50_NS_GOAL {
        "met"
    } else {
        "missed"
    };
    let markdown = format!(
        "{}\n\
         Goal: QD1 4 KiB read p50 ≤ 1.5× raw polling p50. read_pages: {:.2}× ({}); Region::read_at miss: {:.2}× ({}).\n\
         Goal: co-located miss p50 ≤ 2 µs: {} µs ({}); {:.3}× the TCP miss's p50. Transports: {} and {}.\n\
         Region::read_at misses counted by the caches: {} and {} (co-located) of {} measured reads each.\n\
         Settings: client spin {} µs, node spin {} µs, raw polling spin {} µs, {} rounds of {} per path ({} unrecorded first, {} µs of quiet before each), {:.1} s measured, region {} MiB, {} CPU hog processes.\n",
        table.markdown(),
        ratio_read_pages,
        verdict(ratio_read_pages),
        ratio_region,
        verdict(ratio_region),
        micros(colocated_p50),
        colocated_verdict,
        colocated_over_tcp,
        transports[0],
        transports[1],
        region_misses,
        colocated_misses,
        measured,
        client_spin.as_micros(),
        node_spin.as_micros(),
        raw_spin.as_micros(),
        round_index,
        round,
        round_warmup,
        settle.as_micros(),
        seconds,
        region_bytes >> 20,
        hog_processes,
    );
    let document = serde_json::json!({
        "benchmark": "latency",
        "settings": {
            "samples": samples, "warmup": warmup, "round": round,
            "client_spin_us": client_spin.as_micros() as u64,
            "node_spin_us": node_spin.as_micros() as u64,
            "raw_spin_us": raw_spin.as_micros() as u64,
            "region_bytes": region_bytes,
            "round_warmup": round_warmup, "settle_us": settle.as_micros() as u64,
            "hog_processes": hog_processes,
        },
        "paths": PATHS.iter().zip(&summaries).map(|(name, summary)| serde_json::json!({
            "path": name, "latency": summary,
            "p50_over_raw_polling_p50": summary.p50_ns as f64 / poll_p50,
        })).collect::<Vec<_>>(),
        "region_misses": region_misses,
        "colocated_misses": colocated_misses,
        "region_reads": measured,
        "transports": { "tcp_region": transports[0].name(), "colocated_region": transports[1].name() },
        "colocated_p50_over_tcp_miss_p50": colocated_over_tcp,
        "seconds": seconds,
    });
    emit(json, &document, &markdown);
}

//! Replicated regions: what a second copy costs a writer, and how a replica
//! that was cut off catches up.
//!
//! **Writes.** The same bounded write workload runs against a region kept on
//! one node (R = 1) and against regions kept on two nodes in `sync` and in
//! `async` mode (R = 2), in rounds: each round measures every configuration
//! once, in an order that rotates from round to round, so that the noise of
//! the machine hits all of them alike. Each cell is batched writes of
//! consecutive 4 KiB pages at random places, from threads sharing one
//! `Client` (their requests pipeline on its connection), for a bounded time
//! and count; then single-page writes one at a time, for their latency.
//! After each cell of a replicated region the program waits until the
//! replica has acknowledged everything, so that an `async` replica's backlog
//! is not left for the next configuration to pay.
//!
//! **Catch-up.** A primary and its replica, the replica reached through a
//! TCP proxy on loopback that this program can cut (it closes every
//! connection and refuses new ones) and restore. A writer writes at a fixed
//! rate into a hot part of the region. The link is cut for a short while
//! (repeatedly) and for a long while; after each restore the program polls
//! the primary's view of the replica (`Client::replicas`) until it is in sync
//! again, and reports the bytes written during the outage, the bytes the
//! primary sent to catch up (log entries and rebuilt segments), whether it
//! rebuilt by digests, and the time it took. Before the long outage ends, the
//! segment digests of both copies are compared, which counts the segments
//! that differ.
//!
//! All nodes run in this process on 127.0.0.1 (port 0): every byte between
//! client, primary and replica crosses real loopback TCP, as between
//! processes on one host.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use pagoda::{Client, RegionInfo, ReplicaInfo, ReplicationMode};
use pagoda_bench::fixture::{LocalNode, write_whole_region};
use pagoda_bench::report::{Flags, Percentiles, Table, emit, micros, progress};
use pagoda_bench::{FastRng, PAGE_BYTES};
use pagoda_wire::limits::SEGMENT_BYTES;

const USAGE: &str = "\
replication: write throughput and latency with R = 1, R = 2 sync and R = 2 async,
and catch-up after link outages under load

  --rounds N             rounds of the write comparison (default 5)
  --seconds S            seconds per batched-write cell (default 1)
  --in-flight LIST       threads sharing one client, per batched cell (default 1,4)
  --batch-pages N        pages per batched write (default 16)
  --single-writes N      single-page writes per latency cell (default 1000)
  --region-mib N         size of each write-comparison region (default 256)
  --setups LIST          configurations compared (default r1,sync,async; ratios need r1)
  --short-outage-s S     length of each short outage (default 1)
  --short-outages N      short outages, one after another (default 3)
  --long-outage-s S      length of the long outage (default 60; 0 skips it)
  --load-mib-s R         the write load during outages, MiB/s (default 8)
  --catchup-region-mib N size of the catch-up region (default 1024)
  --hot-mib N            the part of it the load writes (default 256)
  --client-spin-us N     client spin ceiling (default: the product's, 1000)
  --node-spin-us N       node connection spin ceiling (default: the product's, 1000)
  --no-writes            skip the write comparison
  --no-catchup           skip the outages
  --json                 print JSON instead of the markdown tables";

/// Requests one thread makes in one batched cell at most, whatever the time.
const REQUESTS_PER_THREAD_MAX: usize = 1_000_000;
/// The longest a latency cell runs, whatever its count.
const SINGLE_CELL_TIME_MAX: Duration = Duration::from_secs(3);
/// How long to wait for a replica to acknowledge everything.
const CAUGHT_UP_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long to wait for the primary to notice a cut link.
const NOTICE_WAIT_MAX: Duration = Duration::from_secs(15);
/// How long to wait, after a restore, for the replica to be in sync.
const IN_SYNC_WAIT_MAX: Duration = Duration::from_secs(180);
/// How often the primary's view of its replica is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Pages per write of the load during outages (64 KiB, inside one segment).
const LOAD_BATCH_PAGES: u64 = 16;
/// Steady load before each outage, after the replica is in sync.
const SETTLE: Duration = Duration::from_secs(1);
/// A load writer that falls this far behind its schedule skips ahead
/// rather than bursting.
const LOAD_BEHIND_MAX: Duration = Duration::from_millis(500);

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let flags = Flags::parse(
        &["json", "no-writes", "no-catchup"],
        &[
            "rounds",
            "seconds",
            "in-flight",
            "batch-pages",
            "single-writes",
            "region-mib",
            "setups",
            "short-outage-s",
            "short-outages",
            "long-outage-s",
            "load-mib-s",
            "catchup-region-mib",
            "hot-mib",
            "client-spin-us",
            "node-spin-us",
        ],
        USAGE,
    );
    let json = flags.switch("json");
    let client_spin =
        Duration::from_micros(flags.number("client-spin-us", pagoda::SPIN_US_DEFAULT));
    let node_spin =
        Duration::from_micros(flags.number("node-spin-us", pagoda_node::server::SPIN_US_DEFAULT));
    let began = Instant::now();

    let mut markdown = String::new();
    let mut document = serde_json::json!({
        "benchmark": "replication",
        "settings": {
            "client_spin_us": client_spin.as_micros() as u64,
            "node_spin_us": node_spin.as_micros() as u64,
            "segment_bytes": SEGMENT_BYTES,
        },
    });
    if !flags.switch("no-writes") {
        let settings = WriteSettings {
            rounds: flags.number::<usize>("rounds", 5).max(1),
            cell: Duration::from_secs_f64(flags.number("seconds", 1.0)),
            in_flights: flags.numbers("in-flight", &[1usize, 4]),
            batch_pages: flags.number::<usize>("batch-pages", 16).max(1),
            single_writes: flags.number::<usize>("single-writes", 1000).max(1),
            region_bytes: flags.number::<u64>("region-mib", 256).max(4) << 20,
            setups: match flags.values_get("setups") {
                None => SETUPS.to_vec(),
                Some(list) => list
                    .split(',')
                    .map(|key| {
                        SETUPS
                            .into_iter()
                            .find(|setup| setup.key() == key.trim())
                            .unwrap_or_else(|| panic!("--setups: unknown {key:?}"))
                    })
                    .collect(),
            },
        };
        assert!(
            settings.in_flights.iter().all(|&n| (1..=64).contains(&n)),
            "--in-flight takes 1 to 64 threads"
        );
        let (text, value) = compare_writes(&settings, client_spin, node_spin);
        markdown.push_str(&text);
        document["writes"] = value;
    }
    if !flags.switch("no-catchup") {
        let settings = CatchUpSettings {
            short_outage: Duration::from_secs_f64(flags.number("short-outage-s", 1.0)),
            short_outages: flags.number("short-outages", 3),
            long_outage: Duration::from_secs_f64(flags.number("long-outage-s", 60.0)),
            load_bytes_per_second: flags.number::<f64>("load-mib-s", 8.0).max(0.1) * MIB,
            region_bytes: flags.number::<u64>("catchup-region-mib", 1024).max(4) << 20,
            hot_bytes: flags.number::<u64>("hot-mib", 256).max(1) << 20,
        };
        assert!(
            settings.hot_bytes <= settings.region_bytes,
            "--hot-mib must fit in --catchup-region-mib"
        );
        let (text, value) = catch_up(&settings, client_spin, node_spin);
        markdown.push_str(&text);
        document["catch_up"] = value;
    }
    let seconds = began.elapsed().as_secs_f64();
    markdown.push_str(&format!("Whole run: {seconds:.0} s.\n"));
    document["seconds"] = serde_json::json!(seconds);
    emit(json, &document, &markdown);
}

// ---------------------------------------------------------------------------
// Shared pieces.

/// A client of a node, with a reply timeout long enough for a checksum of a
/// large region.
fn client_of(node: &LocalNode, spin: Duration) -> Client {
    let options = pagoda::ClientOptions {
        spin,
        timeout: Duration::from_secs(60),
        client_name: "pagoda-bench replication".into(),
        ..pagoda::ClientOptions::default()
    };
    Client::connect(node.addr(), options).expect("the client connects over loopback")
}

/// The primary's view of the region's one replica.
fn link_of(client: &Client, name: &str) -> ReplicaInfo {
    let mut set = client
        .replicas(name)
        .expect("the primary describes its replica");
    assert_eq!(set.replicas.len(), 1, "one replica per region here");
    set.replicas.remove(0)
}

/// Whether every replica of `name` is in sync and has acknowledged the
/// primary's whole log.
fn caught_up(client: &Client, name: &str) -> bool {
    let set = client
        .replicas(name)
        .expect("the primary describes its replicas");
    set.replicas
        .iter()
        .all(|replica| replica.in_sync && replica.acked >= set.lsn)
}

/// Waits (bounded) until `name`'s replicas have everything; returns how
/// long that took.
fn wait_caught_up(client: &Client, name: &str) -> Duration {
    let began = Instant::now();
    while !caught_up(client, name) {
        assert!(
            began.elapsed() < CAUGHT_UP_WAIT_MAX,
            "the replica of {name:?} did not catch up within {CAUGHT_UP_WAIT_MAX:?}: {:?}",
            client.replicas(name)
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    began.elapsed()
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// CPU time this process has used so far (every thread: client, both
/// nodes, the proxy), user and system, and its threads' voluntary context
/// switches (each one a thread that blocked and was woken again).
fn cpu_time() -> (Duration, u64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let of = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (
        of(usage.ru_utime) + of(usage.ru_stime),
        usage.ru_nvcsw as u64,
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

// ---------------------------------------------------------------------------
// Part 1: writes with R = 1, R = 2 sync, R = 2 async.

struct WriteSettings {
    rounds: usize,
    cell: Duration,
    in_flights: Vec<usize>,
    batch_pages: usize,
    single_writes: usize,
    region_bytes: u64,
    setups: Vec<Setup>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    Solo,
    Sync,
    Async,
}

const SETUPS: [Setup; 3] = [Setup::Solo, Setup::Sync, Setup::Async];

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Solo => "R = 1",
            Setup::Sync => "R = 2 sync",
            Setup::Async => "R = 2 async",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Setup::Solo => "r1",
            Setup::Sync => "sync",
            Setup::Async => "async",
        }
    }

    fn replicated(self) -> bool {
        self != Setup::Solo
    }
}

/// One configuration's region and the client that writes it.
struct Target {
    setup: Setup,
    client: Client,
    info: RegionInfo,
}

/// What one batched cell measured.
#[derive(Clone, Debug)]
struct BatchedCell {
    bytes_per_second: f64,
    writes_per_second: f64,
    latency: Percentiles,
    /// CPU time of the whole process during the cell, per MB written and
    /// as cores busy (on this 2-core VM, 2.0 is everything).
    cpu_us_per_mb: f64,
    cpu_cores: f64,
    /// Voluntary context switches of all threads, per write.
    switches_per_write: f64,
    /// The replica was in sync when the cell ended (for `sync`, it counted
    /// for every acknowledgement; one dropped would make the cell R = 1).
    in_sync_at_end: bool,
    /// Bytes the replica had not acknowledged when the cell ended.
    lag_bytes_at_end: u64,
    /// How long after the cell the replica had everything.
    drain_ms: f64,
}

/// What one latency cell measured.
#[derive(Clone, Debug)]
struct SingleCell {
    latency: Percentiles,
    cpu_cores: f64,
    switches_per_write: f64,
    drain_ms: f64,
}

/// Batched writes from `threads` threads sharing the target's client.
fn batched_cell(
    target: &Target,
    threads: usize,
    batch: usize,
    duration: Duration,
    seed: u64,
) -> BatchedCell {
    let pages = target.info.size / PAGE_BYTES as u64;
    let barrier = Barrier::new(threads);
    let cpu_before = cpu_time();
    let results: Vec<(usize, f64, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut rng = FastRng::new(seed + index as u64);
                    let buffer = vec![0x5a ^ index as u8; batch * PAGE_BYTES];
                    let mut list = vec![0u64; batch];
                    let mut latencies = Vec::with_capacity(64 * 1024);
                    barrier.wait();
                    let began = Instant::now();
                    while latencies.len() < REQUESTS_PER_THREAD_MAX && began.elapsed() < duration {
                        let first = rng.below(pages - batch as u64);
                        for (offset, page) in list.iter_mut().enumerate() {
                            *page = first + offset as u64;
                        }
                        let sent = Instant::now();
                        target
                            .client
                            .raw()
                            .write_pages(&target.info, &list, &buffer)
                            .expect("a batched write");
                        latencies.push(sent.elapsed().as_nanos() as u64);
                    }
                    (latencies.len(), began.elapsed().as_secs_f64(), latencies)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a writer thread"))
            .collect()
    });
    let cpu_after = cpu_time();
    let cpu = (cpu_after.0 - cpu_before.0).as_secs_f64();
    let switches = cpu_after.1 - cpu_before.1;
    let writes: usize = results.iter().map(|r| r.0).sum();
    let seconds = results.iter().map(|r| r.1).fold(0.0, f64::max);
    let megabytes = (writes * batch * PAGE_BYTES) as f64 / 1e6;
    let mut latencies: Vec<u64> = results.into_iter().flat_map(|r| r.2).collect();
    let (in_sync_at_end, lag_bytes_at_end, drain_ms) = settle(target);
    BatchedCell {
        bytes_per_second: (writes * batch * PAGE_BYTES) as f64 / seconds,
        writes_per_second: writes as f64 / seconds,
        latency: Percentiles::of(&mut latencies),
        cpu_us_per_mb: cpu * 1e6 / megabytes.max(1e-9),
        cpu_cores: cpu / seconds,
        switches_per_write: switches as f64 / writes.max(1) as f64,
        in_sync_at_end,
        lag_bytes_at_end,
        drain_ms,
    }
}

/// Single-page writes one at a time, for their latency.
fn single_cell(target: &Target, count: usize, seed: u64) -> SingleCell {
    let pages = target.info.size / PAGE_BYTES as u64;
    let mut rng = FastRng::new(seed);
    let buffer = vec![0xa5u8; PAGE_BYTES];
    let mut latencies = Vec::with_capacity(count);
    let cpu_before = cpu_time();
    let began = Instant::now();
    while latencies.len() < count && began.elapsed() < SINGLE_CELL_TIME_MAX {
        let page = [rng.below(pages)];
        let sent = Instant::now();
        target
            .client
            .raw()
            .write_pages(&target.info, &page, &buffer)
            .expect("a single-page write");
        latencies.push(sent.elapsed().as_nanos() as u64);
    }
    let cpu_after = cpu_time();
    let cpu_cores = (cpu_after.0 - cpu_before.0).as_secs_f64() / began.elapsed().as_secs_f64();
    let switches_per_write = (cpu_after.1 - cpu_before.1) as f64 / latencies.len().max(1) as f64;
    let (_, _, drain_ms) = settle(target);
    SingleCell {
        cpu_cores,
        switches_per_write,
        latency: Percentiles::of(&mut latencies),
        drain_ms,
    }
}

/// After a cell: whether the replica is in sync and how far behind it is
/// now, then how long it takes to have everything (zero for R = 1).
fn settle(target: &Target) -> (bool, u64, f64) {
    if !target.setup.replicated() {
        return (true, 0, 0.0);
    }
    let link = link_of(&target.client, &target.info.name);
    let drain = wait_caught_up(&target.client, &target.info.name);
    (link.in_sync, link.lag_bytes, drain.as_secs_f64() * 1e3)
}

fn compare_writes(
    settings: &WriteSettings,
    client_spin: Duration,
    node_spin: Duration,
) -> (String, serde_json::Value) {
    // The primary holds three regions, the replica node two.
    let primary = LocalNode::start(4 * settings.region_bytes, node_spin);
    let replica = LocalNode::start(4 * settings.region_bytes, node_spin);
    let replica_addr = replica.addr().to_string();
    let setups = &settings.setups;
    let solo = setups.iter().position(|&setup| setup == Setup::Solo);
    let targets: Vec<Target> = setups
        .iter()
        .map(|&setup| {
            let client = client_of(&primary, client_spin);
            let name = format!("writes-{}", setup.key());
            let size = settings.region_bytes;
            let info = match setup {
                Setup::Solo => client.create_region(&name, size, PAGE_BYTES as u32),
                Setup::Sync | Setup::Async => client.create_replicated_region(
                    &name,
                    size,
                    PAGE_BYTES as u32,
                    &[replica_addr.as_str()],
                    if setup == Setup::Sync {
                        ReplicationMode::Sync
                    } else {
                        ReplicationMode::Async
                    },
                ),
            }
            .expect("the region is created");
            write_whole_region(&client, &info);
            if setup.replicated() {
                wait_caught_up(&client, &name);
            }
            Target {
                setup,
                client,
                info,
            }
        })
        .collect();
    let batch = settings
        .batch_pages
        .min(targets[0].client.raw().batch_pages_max(PAGE_BYTES));

    // batched[in-flight index][setup index] = one cell per round.
    let mut batched: Vec<Vec<Vec<BatchedCell>>> =
        vec![vec![Vec::new(); setups.len()]; settings.in_flights.len()];
    let mut single: Vec<Vec<SingleCell>> = vec![Vec::new(); setups.len()];
    for round in 0..settings.rounds {
        // Each round starts with another configuration.
        let order: Vec<usize> = (0..setups.len())
            .map(|i| (round + i) % setups.len())
            .collect();
        for (flight_index, &threads) in settings.in_flights.iter().enumerate() {
            for &index in &order {
                let target = &targets[index];
                progress(&format!(
                    "round {}: {} batched, {threads} in flight",
                    round + 1,
                    target.setup.label()
                ));
                let seed = 0x51_0000 + (round * 64 + flight_index) as u64 * 128;
                batched[flight_index][index].push(batched_cell(
                    target,
                    threads,
                    batch,
                    settings.cell,
                    seed,
                ));
            }
        }
        for &index in &order {
            progress(&format!(
                "round {}: {} single-page",
                round + 1,
                targets[index].setup.label()
            ));
            single[index].push(single_cell(
                &targets[index],
                settings.single_writes,
                0x52_0000 + round as u64,
            ));
        }
    }

    // Medians, and ratios to R = 1 both of the medians and per round.
    let mut text = String::from("### Writes: R = 1, R = 2 sync, R = 2 async\n\n");
    let mut table = Table::new(&[
        "writes",
        "configuration",
        "MB/s",
        "writes/s",
        "÷ R = 1 (medians)",
        "÷ R = 1 (median of rounds)",
        "p50 µs",
        "p99 µs",
        "CPU cores busy",
        "CPU ms per MB",
        "context switches per write",
        "replica in sync after every cell",
        "drain ms",
    ]);
    let mut flights_json = Vec::new();
    let mut ratios = Vec::new();
    for (flight_index, &threads) in settings.in_flights.iter().enumerate() {
        let cells = &batched[flight_index];
        let solo_cells: &[BatchedCell] = solo.map_or(&[], |index| &cells[index]);
        let solo_median = median(solo_cells.iter().map(|c| c.bytes_per_second));
        let mut setups_json = Vec::new();
        for (index, setup) in setups.iter().enumerate() {
            let own = &cells[index];
            let bytes = median(own.iter().map(|c| c.bytes_per_second));
            let paired = median(
                own.iter()
                    .zip(solo_cells)
                    .map(|(c, solo)| c.bytes_per_second / solo.bytes_per_second),
            );
            let in_sync = own.iter().all(|c| c.in_sync_at_end);
            table.row(vec![
                format!("{batch} pages, {threads} in flight"),
                setup.label().into(),
                format!("{:.0}", bytes / 1e6),
                format!("{:.0}", median(own.iter().map(|c| c.writes_per_second))),
                format!("{:.2}", bytes / solo_median),
                format!("{paired:.2}"),
                format!(
                    "{:.0}",
                    median(own.iter().map(|c| c.latency.p50_ns as f64)) / 1e3
                ),
                format!(
                    "{:.0}",
                    median(own.iter().map(|c| c.latency.p99_ns as f64)) / 1e3
                ),
                format!("{:.2}", median(own.iter().map(|c| c.cpu_cores))),
                format!("{:.2}", median(own.iter().map(|c| c.cpu_us_per_mb)) / 1e3),
                format!("{:.1}", median(own.iter().map(|c| c.switches_per_write))),
                if setup.replicated() {
                    if in_sync { "yes" } else { "no" }
                } else {
                    "-"
                }
                .into(),
                format!("{:.0}", median(own.iter().map(|c| c.drain_ms))),
            ]);
            if setup.replicated() {
                ratios.push((
                    format!("{batch} pages, {threads} in flight"),
                    *setup,
                    bytes / solo_median,
                    paired,
                ));
            }
            setups_json.push(serde_json::json!({
                "setup": setup.key(),
                "bytes_per_second_median": bytes,
                "writes_per_second_median": median(own.iter().map(|c| c.writes_per_second)),
                "ratio_to_r1_of_medians": bytes / solo_median,
                "ratio_to_r1_median_of_rounds": paired,
                "rounds": own.iter().map(|c| serde_json::json!({
                    "bytes_per_second": c.bytes_per_second,
                    "writes_per_second": c.writes_per_second,
                    "latency": c.latency,
                    "cpu_cores": c.cpu_cores,
                    "cpu_us_per_mb": c.cpu_us_per_mb,
                    "switches_per_write": c.switches_per_write,
                    "in_sync_at_end": c.in_sync_at_end,
                    "lag_bytes_at_end": c.lag_bytes_at_end,
                    "drain_ms": c.drain_ms,
                })).collect::<Vec<_>>(),
            }));
        }
        flights_json.push(serde_json::json!({
            "batch_pages": batch,
            "in_flight": threads,
            "setups": setups_json,
        }));
    }
    let solo_single = median(
        solo.map_or(&[][..], |index| &single[index][..])
            .iter()
            .map(|c| c.latency.p50_ns as f64),
    );
    for (index, setup) in setups.iter().enumerate() {
        let own = &single[index];
        let p50 = median(own.iter().map(|c| c.latency.p50_ns as f64));
        table.row(vec![
            "1 page, 1 in flight".into(),
            setup.label().into(),
            format!(
                "{:.1}",
                median(
                    own.iter()
                        .map(|c| PAGE_BYTES as f64 * 1e9 / c.latency.mean_ns as f64)
                ) / 1e6
            ),
            format!(
                "{:.0}",
                median(own.iter().map(|c| 1e9 / c.latency.mean_ns as f64))
            ),
            format!("p50 × {:.2}", p50 / solo_single),
            "".into(),
            micros(p50 as u64),
            micros(median(own.iter().map(|c| c.latency.p99_ns as f64)) as u64),
            format!("{:.2}", median(own.iter().map(|c| c.cpu_cores))),
            format!(
                "{:.2}",
                median(
                    own.iter()
                        .map(|c| c.cpu_cores * c.latency.mean_ns as f64 / PAGE_BYTES as f64)
                )
            ),
            format!("{:.1}", median(own.iter().map(|c| c.switches_per_write))),
            if setup.replicated() { "yes" } else { "-" }.into(),
            format!("{:.0}", median(own.iter().map(|c| c.drain_ms))),
        ]);
    }
    text.push_str(&table.markdown());
    text.push('\n');
    let mut headers = vec!["writes".to_owned(), "round".to_owned()];
    headers.extend(setups.iter().map(|setup| format!("{} MB/s", setup.label())));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut rounds_table = Table::new(&headers);
    for (flight_index, &threads) in settings.in_flights.iter().enumerate() {
        for round in 0..settings.rounds {
            let mut row = vec![
                format!("{batch} pages, {threads} in flight"),
                (round + 1).to_string(),
            ];
            for cells in &batched[flight_index] {
                row.push(format!("{:.0}", cells[round].bytes_per_second / 1e6));
            }
            rounds_table.row(row);
        }
    }
    text.push_str(&rounds_table.markdown());
    text.push('\n');
    for (load, setup, of_medians, paired) in &ratios {
        let goal = if *setup == Setup::Sync { 0.60 } else { 0.90 };
        text.push_str(&format!(
            "Goal: {} ≥ {:.0} % of R = 1, {load}: {:.0} % of the medians, {:.0} % median of rounds: {}.\n",
            setup.label(),
            goal * 100.0,
            of_medians * 100.0,
            paired * 100.0,
            if of_medians.min(*paired) >= goal {
                "met"
            } else {
                "missed"
            }
        ));
    }
    text.push_str(&format!(
        "Settings: {} rounds, {:.1} s per batched cell, {} single-page writes per latency cell, \
         regions of {} MiB pre-written, MB = 10^6 bytes of page data; drain: time after a cell \
         until the replica had acknowledged everything.\n\n",
        settings.rounds,
        settings.cell.as_secs_f64(),
        settings.single_writes,
        settings.region_bytes >> 20
    ));
    let value = serde_json::json!({
        "rounds": settings.rounds,
        "cell_seconds": settings.cell.as_secs_f64(),
        "region_bytes": settings.region_bytes,
        "batched": flights_json,
        "single_page": setups.iter().enumerate().map(|(index, setup)| serde_json::json!({
            "setup": setup.key(),
            "rounds": single[index].iter().map(|c| serde_json::json!({
                "latency": c.latency, "cpu_cores": c.cpu_cores,
                "switches_per_write": c.switches_per_write, "drain_ms": c.drain_ms,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    drop(targets);
    drop(replica);
    drop(primary);
    (text, value)
}

// ---------------------------------------------------------------------------
// Part 2: catch-up after outages.

struct CatchUpSettings {
    short_outage: Duration,
    short_outages: usize,
    long_outage: Duration,
    load_bytes_per_second: f64,
    region_bytes: u64,
    hot_bytes: u64,
}

/// A TCP proxy on loopback in front of a node, whose connections can be
/// cut (a network outage between two live nodes) and restored.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    /// Both ends of every connection made, so that a cut can close them.
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds");
        let addr = listener.local_addr().expect("the proxy's address");
        let down = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (down_seen, closed_seen, held) = (down.clone(), closed.clone(), streams.clone());
        std::thread::Builder::new()
            .name("bench-proxy".into())
            .spawn(move || {
                for incoming in listener.incoming() {
                    if closed_seen.load(Ordering::SeqCst) {
                        return;
                    }
                    // While down, a connection is closed as soon as it comes.
                    let Ok(near) = incoming else { continue };
                    if down_seen.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(far) = TcpStream::connect(target) else {
                        continue;
                    };
                    let _ = near.set_nodelay(true);
                    let _ = far.set_nodelay(true);
                    let (Ok(near_copy), Ok(far_copy)) = (near.try_clone(), far.try_clone()) else {
                        continue;
                    };
                    {
                        let mut held = held.lock().expect("the proxy's streams");
                        // Connections already closed need not be held.
                        held.retain(|stream| stream.peer_addr().is_ok());
                        held.push(near_copy);
                        held.push(far_copy);
                    }
                    let (Ok(near_in), Ok(far_in)) = (near.try_clone(), far.try_clone()) else {
                        continue;
                    };
                    spawn_pump(near_in, far);
                    spawn_pump(far_in, near);
                }
            })
            .expect("the proxy's thread starts");
        Proxy {
            addr,
            down,
            closed,
            streams,
        }
    }

    /// Closes every connection and refuses new ones until `restore`.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for stream in self.streams.lock().expect("the proxy's streams").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accepting thread so that it sees `closed`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies bytes from `from` to `to` until either end closes, then closes
/// both.
fn spawn_pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::thread::Builder::new()
        .name("bench-proxy-pump".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(count) => {
                        if to.write_all(&buffer[..count]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
}

/// One write of the load.
#[derive(Clone, Copy, Debug)]
struct LoadWrite {
    /// When it was sent and when it was answered, since the load began.
    sent: Duration,
    answered: Duration,
    segment: u64,
}

/// The load's writes, and how many failed.
struct LoadLog {
    writes: Vec<LoadWrite>,
    failures: u64,
}

/// Writes `LOAD_BATCH_PAGES` pages at a time at random aligned places in
/// the region's first `hot_pages` pages, at `bytes_per_second`, each write
/// with new contents, until `stop` (or the deadline, or the count bound).
fn run_load(
    client: &Client,
    info: &RegionInfo,
    hot_pages: u64,
    bytes_per_second: f64,
    base: Instant,
    stop: &AtomicBool,
    deadline: Instant,
) -> LoadLog {
    let write_bytes = LOAD_BATCH_PAGES as usize * PAGE_BYTES;
    let interval = Duration::from_secs_f64(write_bytes as f64 / bytes_per_second);
    let writes_max = ((deadline - base).as_secs_f64() / interval.as_secs_f64()) as usize + 1;
    let slots = (hot_pages / LOAD_BATCH_PAGES).max(1);
    let pages_per_segment = SEGMENT_BYTES / PAGE_BYTES as u64;
    let mut rng = FastRng::new(0x10ad);
    let mut buffer = vec![0u8; write_bytes];
    let mut list = vec![0u64; LOAD_BATCH_PAGES as usize];
    let mut log = LoadLog {
        writes: Vec::with_capacity(writes_max.min(4 << 20)),
        failures: 0,
    };
    let mut due = Instant::now();
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && log.writes.len() < writes_max
    {
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        } else if now - due > LOAD_BEHIND_MAX {
            due = now;
        }
        due += interval;
        sequence += 1;
        let first = rng.below(slots) * LOAD_BATCH_PAGES;
        for (offset, page) in list.iter_mut().enumerate() {
            *page = first + offset as u64;
        }
        for (index, word) in buffer.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(
                &(sequence.wrapping_mul(0x9e37_79b9) ^ index as u64).to_le_bytes(),
            );
        }
        let sent = base.elapsed();
        match client.raw().write_pages(info, &list, &buffer) {
            Ok(()) => log.writes.push(LoadWrite {
                sent,
                answered: base.elapsed(),
                segment: first / pages_per_segment,
            }),
            Err(error) => {
                log.failures += 1;
                progress(&format!("a load write failed: {error}"));
            }
        }
    }
    log
}

/// One outage and the catch-up after it.
#[derive(Clone, Debug)]
struct Outage {
    kind: &'static str,
    planned: Duration,
    /// Since the load began.
    cut: Duration,
    restored: Duration,
    in_sync: Duration,
    /// From the cut until the primary reported the replica out of sync.
    noticed: Duration,
    /// From the restore until the primary was connected again, if seen.
    reconnected: Option<Duration>,
    /// The primary's view of the replica just before the restore and once
    /// it was in sync again.
    before: ReplicaInfo,
    after: ReplicaInfo,
    /// Segments whose digests differed between the copies just before the
    /// restore (measured for the long outage).
    differing_segments: Option<u64>,
    /// Filled in from the load's log once it has stopped.
    written_during_bytes: u64,
    written_until_in_sync_bytes: u64,
    segments_touched_during: u64,
    longest_write_during: Duration,
}

impl Outage {
    fn catch_up_bytes(&self) -> u64 {
        (self.after.sent_bytes + self.after.rebuilt_bytes)
            - (self.before.sent_bytes + self.before.rebuilt_bytes)
    }

    fn sent_bytes(&self) -> u64 {
        self.after.sent_bytes - self.before.sent_bytes
    }

    fn rebuilt_bytes(&self) -> u64 {
        self.after.rebuilt_bytes - self.before.rebuilt_bytes
    }

    fn rebuilds(&self) -> u64 {
        self.after.rebuilds - self.before.rebuilds
    }
}

/// Cuts the link for `planned`, restores it, and waits for the replica to
/// be in sync again. With `compare`, compares both copies' segment digests
/// before the restore (the outage lasts that much longer).
#[allow(clippy::too_many_arguments)]
fn outage(
    kind: &'static str,
    planned: Duration,
    compare: bool,
    proxy: &Proxy,
    primary: &Client,
    replica: &Client,
    name: &str,
    base: Instant,
) -> Outage {
    wait_caught_up(primary, name);
    std::thread::sleep(SETTLE);
    progress(&format!("{kind} outage of {:.1} s", planned.as_secs_f64()));
    let cut_at = Instant::now();
    proxy.cut();
    while link_of(primary, name).in_sync {
        assert!(
            cut_at.elapsed() < NOTICE_WAIT_MAX,
            "the primary did not notice the cut link within {NOTICE_WAIT_MAX:?}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    let noticed = cut_at.elapsed();
    if let Some(rest) = planned.checked_sub(cut_at.elapsed()) {
        std::thread::sleep(rest);
    }
    let differing_segments = compare.then(|| {
        let ours = primary.checksum(name, true).expect("the primary's digests");
        let theirs = replica.checksum(name, true).expect("the replica's digests");
        assert_eq!(ours.segments.len(), theirs.segments.len());
        ours.segments
            .iter()
            .zip(&theirs.segments)
            .filter(|(a, b)| a != b)
            .count() as u64
    });
    let before = link_of(primary, name);
    assert!(!before.in_sync, "the replica counted in sync while cut off");
    let restored_at = Instant::now();
    proxy.restore();
    let mut reconnected = None;
    let after = loop {
        let link = link_of(primary, name);
        if link.connected && reconnected.is_none() {
            reconnected = Some(restored_at.elapsed());
        }
        if link.in_sync {
            break link;
        }
        assert!(
            restored_at.elapsed() < IN_SYNC_WAIT_MAX,
            "the replica was not in sync {IN_SYNC_WAIT_MAX:?} after the restore: {link:?}"
        );
        std::thread::sleep(POLL_INTERVAL);
    };
    let in_sync_at = Instant::now();
    progress(&format!(
        "{kind} outage: in sync {:.0} ms after the restore",
        (in_sync_at - restored_at).as_secs_f64() * 1e3
    ));
    Outage {
        kind,
        planned,
        cut: cut_at - base,
        restored: restored_at - base,
        in_sync: in_sync_at - base,
        noticed,
        reconnected,
        before,
        after,
        differing_segments,
        written_during_bytes: 0,
        written_until_in_sync_bytes: 0,
        segments_touched_during: 0,
        longest_write_during: Duration::ZERO,
    }
}

/// Fills in what the load wrote during each outage. A write counts for the
/// outage if it was sent after the cut (or was still unanswered at the
/// cut) and before the restore.
fn account(outages: &mut [Outage], load: &LoadLog) {
    let write_bytes = LOAD_BATCH_PAGES * PAGE_BYTES as u64;
    for outage in outages {
        let during: Vec<&LoadWrite> = load
            .writes
            .iter()
            .filter(|w| w.answered >= outage.cut && w.sent < outage.restored)
            .collect();
        outage.written_during_bytes = during.len() as u64 * write_bytes;
        outage.segments_touched_during = during
            .iter()
            .map(|w| w.segment)
            .collect::<BTreeSet<_>>()
            .len() as u64;
        outage.longest_write_during = during
            .iter()
            .map(|w| w.answered - w.sent)
            .max()
            .unwrap_or_default();
        outage.written_until_in_sync_bytes = load
            .writes
            .iter()
            .filter(|w| w.sent >= outage.restored && w.sent < outage.in_sync)
            .count() as u64
            * write_bytes;
    }
}

/// The primary's view of a replica, as JSON.
fn replica_json(replica: &ReplicaInfo) -> serde_json::Value {
    serde_json::json!({
        "acked": replica.acked,
        "in_sync": replica.in_sync,
        "connected": replica.connected,
        "lag_bytes": replica.lag_bytes,
        "lag_ms": replica.lag_ms,
        "sent_bytes": replica.sent_bytes,
        "rebuilt_bytes": replica.rebuilt_bytes,
        "rebuilds": replica.rebuilds,
        "message": replica.message,
    })
}

fn catch_up(
    settings: &CatchUpSettings,
    client_spin: Duration,
    node_spin: Duration,
) -> (String, serde_json::Value) {
    let primary_node = LocalNode::start(2 * settings.region_bytes, node_spin);
    let replica_node = LocalNode::start(2 * settings.region_bytes, node_spin);
    let proxy = Proxy::start(replica_node.addr());
    let primary = client_of(&primary_node, client_spin);
    let replica = client_of(&replica_node, client_spin);
    let name = "catch-up";
    let info = primary
        .create_replicated_region(
            name,
            settings.region_bytes,
            PAGE_BYTES as u32,
            &[proxy.addr.to_string().as_str()],
            ReplicationMode::Sync,
        )
        .expect("the replicated region is created");
    // The writer role is one connection's: the load's client writes
    // everything, and `primary` only asks for the replica's state (on a
    // connection of its own, so that its questions never queue behind a
    // write waiting for the replica).
    let load_client = client_of(&primary_node, client_spin);
    write_whole_region(&load_client, &info);
    wait_caught_up(&primary, name);

    let hot_pages = settings.hot_bytes / PAGE_BYTES as u64;
    let planned_total = settings.short_outage * settings.short_outages as u32
        + settings.long_outage
        + Duration::from_secs(600);
    let base = Instant::now();
    let stop = AtomicBool::new(false);
    let (mut outages, load) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            run_load(
                &load_client,
                &info,
                hot_pages,
                settings.load_bytes_per_second,
                base,
                &stop,
                base + planned_total,
            )
        });
        let mut outages = Vec::new();
        for _ in 0..settings.short_outages {
            outages.push(outage(
                "short",
                settings.short_outage,
                false,
                &proxy,
                &primary,
                &replica,
                name,
                base,
            ));
        }
        if !settings.long_outage.is_zero() {
            outages.push(outage(
                "long",
                settings.long_outage,
                true,
                &proxy,
                &primary,
                &replica,
                name,
                base,
            ));
        }
        stop.store(true, Ordering::SeqCst);
        (outages, load.join().expect("the load thread"))
    });
    account(&mut outages, &load);
    wait_caught_up(&primary, name);
    let equal = primary
        .checksum(name, false)
        .expect("the primary's digest")
        .digest
        == replica
            .checksum(name, false)
            .expect("the replica's digest")
            .digest;

    let mut text = String::from("### Catch-up after outages under load\n\n");
    let mut table = Table::new(&[
        "outage",
        "planned s",
        "actual s",
        "written during MiB",
        "written restore → in sync MiB",
        "sent from log MiB",
        "rebuilt MiB (rebuilds)",
        "segments written during",
        "differing segments (MiB)",
        "catch-up ÷ written during",
        "catch-up ÷ differing segments",
        "restore → connected ms",
        "restore → in sync ms",
        "cut → noticed ms",
        "longest write during outage ms",
    ]);
    for outage in &outages {
        let catch_up = outage.catch_up_bytes() as f64;
        table.row(vec![
            outage.kind.into(),
            format!("{:.0}", outage.planned.as_secs_f64()),
            format!("{:.2}", (outage.restored - outage.cut).as_secs_f64()),
            mib(outage.written_during_bytes),
            mib(outage.written_until_in_sync_bytes),
            mib(outage.sent_bytes()),
            format!("{} ({})", mib(outage.rebuilt_bytes()), outage.rebuilds()),
            outage.segments_touched_during.to_string(),
            outage.differing_segments.map_or("-".into(), |count| {
                format!("{count} ({})", mib(count * SEGMENT_BYTES))
            }),
            format!(
                "{:.2}",
                catch_up / outage.written_during_bytes.max(1) as f64
            ),
            outage.differing_segments.map_or("-".into(), |count| {
                format!("{:.2}", catch_up / (count * SEGMENT_BYTES).max(1) as f64)
            }),
            outage
                .reconnected
                .map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3)),
            format!(
                "{:.0}",
                (outage.in_sync - outage.restored).as_secs_f64() * 1e3
            ),
            format!("{:.0}", outage.noticed.as_secs_f64() * 1e3),
            format!("{:.1}", outage.longest_write_during.as_secs_f64() * 1e3),
        ]);
    }
    text.push_str(&table.markdown());
    text.push('\n');
    let shorts: Vec<&Outage> = outages.iter().filter(|o| o.kind == "short").collect();
    if !shorts.is_empty() {
        let worst = shorts
            .iter()
            .map(|o| o.catch_up_bytes() as f64 / o.written_during_bytes.max(1) as f64)
            .fold(0.0, f64::max);
        text.push_str(&format!(
            "Goal: after a short outage, catch-up < 2 × the bytes written during it: worst {worst:.2} × \
             (median {:.2} ×), rebuilds {}: {}.\n",
            median(
                shorts
                    .iter()
                    .map(|o| o.catch_up_bytes() as f64 / o.written_during_bytes.max(1) as f64)
            ),
            shorts.iter().map(|o| o.rebuilds()).sum::<u64>(),
            if worst < 2.0 && shorts.iter().all(|o| o.written_during_bytes > 0) {
                "met"
            } else {
                "missed"
            }
        ));
    }
    for long in outages.iter().filter(|o| o.kind == "long") {
        let differing = long.differing_segments.unwrap_or(0) * SEGMENT_BYTES;
        let ratio = long.catch_up_bytes() as f64 / differing.max(1) as f64;
        text.push_str(&format!(
            "Goal: after a long outage, catch-up < 2 × the bytes of the differing segments: {ratio:.2} × \
             ({} rebuild(s)): {}.\n",
            long.rebuilds(),
            if ratio < 2.0 && long.rebuilds() > 0 && differing > 0 {
                "met"
            } else {
                "missed"
            }
        ));
    }
    text.push_str(&format!(
        "Settings: region {} MiB pre-written, load {:.1} MiB/s of {}-page writes at random aligned \
         places in its first {} MiB ({} segments of {} MiB), `sync` mode, the node's default \
         retained log and replica timeout. Load writes failed: {}. Copies equal at the end: {}.\n\n",
        settings.region_bytes >> 20,
        settings.load_bytes_per_second / MIB,
        LOAD_BATCH_PAGES,
        settings.hot_bytes >> 20,
        settings.hot_bytes.div_ceil(SEGMENT_BYTES),
        SEGMENT_BYTES >> 20,
        load.failures,
        if equal { "yes" } else { "NO" },
    ));
    let value = serde_json::json!({
        "region_bytes": settings.region_bytes,
        "hot_bytes": settings.hot_bytes,
        "load_bytes_per_second": settings.load_bytes_per_second,
        "load_write_bytes": LOAD_BATCH_PAGES * PAGE_BYTES as u64,
        "load_writes": load.writes.len(),
        "load_failures": load.failures,
        "copies_equal_at_end": equal,
        "outages": outages.iter().map(|o| serde_json::json!({
            "kind": o.kind,
            "planned_s": o.planned.as_secs_f64(),
            "actual_s": (o.restored - o.cut).as_secs_f64(),
            "written_during_bytes": o.written_during_bytes,
            "written_restore_to_in_sync_bytes": o.written_until_in_sync_bytes,
            "segments_touched_during": o.segments_touched_during,
            "differing_segments": o.differing_segments,
            "catch_up_bytes": o.catch_up_bytes(),
            "sent_bytes": o.sent_bytes(),
            "rebuilt_bytes": o.rebuilt_bytes(),
            "rebuilds": o.rebuilds(),
            "noticed_ms": o.noticed.as_secs_f64() * 1e3,
            "reconnected_ms": o.reconnected.map(|d| d.as_secs_f64() * 1e3),
            "in_sync_ms": (o.in_sync - o.restored).as_secs_f64() * 1e3,
            "longest_write_during_ms": o.longest_write_during.as_secs_f64() * 1e3,
            "replica_before": replica_json(&o.before),
            "replica_after": replica_json(&o.after),
        })).collect::<Vec<_>>(),
    });
    drop(proxy);
    (text, value)
}

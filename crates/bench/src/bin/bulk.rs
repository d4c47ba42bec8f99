//! The node's bulk tier, three measurements in one run:
//!
//! 1. **Zipf 0.99 over a region four times the node's RAM**: single-page
//!    reads (90 %) and writes (10 %) from two client threads over TCP, on a
//!    node with RAM for a quarter of the region plus a bulk tier, against the
//!    same workload on a node with RAM for all of it; the two alternate round
//!    by round. Hot pages either *clustered* (rank r is page r: the hot pages
//!    share segments) or *scattered* (ranks mapped to pages by a fixed random
//!    permutation: every segment holds hot pages).
//! 2. **The bulk-tier miss**: a read of one 4 KiB page of a paged-out segment,
//!    in process (`Region::read_pages`, no network), against a raw direct
//!    (`O_DIRECT`) 4 KiB `pread` of a file on the same disk, alternating.
//! 3. **Space**: regions of zero pages and of identical contents paged out.
//! 4. **Restart**: a region checkpointed in a storage directory, the node
//!    stopped gracefully and started again; the time from the start call to
//!    its return, to the first read served (of the last page, which the
//!    background loaders reach last) and to every segment in RAM, in four
//!    cases that alternate round by round: the start finds the bulk tier's
//!    index (a graceful restart: served at once, loaded in the background);
//!    it does not (a crash) and loads the baseline from the checkpoint lazily
//!    (served at once, each segment on first access, the rest in the
//!    background) or eagerly (`Reload::Eager`: every page in before the node
//!    serves); and the lazy load on a node without a bulk tier (no bulk file
//!    to recreate at start).
//!
//! With `--cold` (as root) the page cache is emptied before each restart,
//! so that every case reads from the disk.
//!
//! `cargo run --release -p pagoda-bench --bin bulk [-- --region-mib N --seconds S --rounds N --dir DIR --json]`

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, Colocated, RegionInfo};
use pagoda_bench::report::{self, Flags, Percentiles, Table};
use pagoda_node::arena::Arena;
use pagoda_node::bulk::{AlignedBuf, BulkConfig, BulkStore};
use pagoda_node::region::Region;
use pagoda_node::{Node, NodeConfig, Reload};
use pagoda_wire::RegionInfo as WireInfo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;

const USAGE: &str = "usage: bulk [--region-mib N (1024)] [--seconds S (10)] [--rounds N (3)] \
                     [--threads N (2)] [--write-percent P (10)] [--misses N (2000)] \
                     [--restart-mib N (1024)] [--only restart|zipf] [--cold] \
                     [--bulk-read-threads N (8)] [--bulk-cache-mib N (a quarter of RAM)] \
                     [--dir DIR (/work/bulk-bench)] [--json]";
const PAGE: usize = 4096;
const MIB: u64 = 1 << 20;
const SEGMENT: u64 = 2 * MIB;

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(120),
        colocated: Colocated::Off,
        ..ClientOptions::default()
    }
}

fn page_bytes(page: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PAGE);
    while bytes.len() < PAGE {
        bytes.extend_from_slice(&page.to_le_bytes());
        bytes.extend_from_slice(&0x5eedu64.to_le_bytes());
    }
    bytes
}

fn fill(client: &Client, info: &RegionInfo, pages: u64) {
    for first in (0..pages).step_by(256) {
        let list: Vec<u64> = (first..(first + 256).min(pages)).collect();
        let data: Vec<u8> = list.iter().flat_map(|&p| page_bytes(p)).collect();
        client.raw().write_pages(info, &list, &data).expect("fill");
    }
}

struct Workload {
    /// Page of each Zipf rank (rank 0 hottest).
    pages_by_rank: Vec<u64>,
    /// Share of operations that write, in percent.
    write_percent: u32,
}

impl Workload {
    fn new(pages: u64, scattered: bool, write_percent: u32) -> Workload {
        let mut pages_by_rank: Vec<u64> = (0..pages).collect();
        if scattered {
            use rand::seq::SliceRandom;
            pages_by_rank.shuffle(&mut StdRng::seed_from_u64(0x5ca7));
        }
        Workload {
            pages_by_rank,
            write_percent,
        }
    }
}

/// Operations per second over `seconds`, `threads` threads sharing one
/// client (a region takes one writing connection at a time).
fn run(client: &Arc<Client>, workload: &Arc<Workload>, threads: usize, seconds: u64) -> f64 {
    let write_percent = workload.write_percent;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let (stop, done, workload) = (stop.clone(), done.clone(), workload.clone());
            let client = client.clone();
            std::thread::spawn(move || {
                let info = client.stat_region("z").expect("stat").info;
                let pages = workload.pages_by_rank.len() as u64;
                let zipf = rand_distr::Zipf::new(pages, 0.99).expect("zipf");
                let mut rng = StdRng::seed_from_u64(thread as u64 * 7919 + 1);
                let mut buffer = vec![0u8; PAGE];
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let rank = (zipf.sample(&mut rng) as u64 - 1).min(pages - 1);
                    let page = workload.pages_by_rank[rank as usize];
                    if rng.gen_range(0..100) < write_percent {
                        client
                            .raw()
                            .write_pages(&info, &[page], &page_bytes(page))
                            .expect("write");
                    } else {
                        client
                            .raw()
                            .read_pages(&info, &[page], &mut buffer)
                            .expect("read");
                    }
                    count += 1;
                }
                done.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().expect("client thread");
    }
    done.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64()
}

fn node(dir: &Path, ram: u64, bulk: Option<u64>, flags: &Flags) -> Node {
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap(), ram, dir.join("data"));
    config.storage = None;
    config.bulk_read_threads = flags.number("bulk-read-threads", config.bulk_read_threads);
    config.bulk_cache_bytes = flags
        .values_get("bulk-cache-mib")
        .map(|mib| mib.parse::<u64>().expect("--bulk-cache-mib N") * MIB);
    config.bulk = bulk.map(|capacity_bytes| BulkConfig {
        dir: dir.join("bulk"),
        capacity_bytes,
    });
    Node::start(config).expect("node starts")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The Zipf workload's table (markdown) and rows (JSON).
fn zipf_section(flags: &Flags, root: &Path) -> (String, Vec<serde_json::Value>) {
    report::progress("Zipf 0.99 over four times the RAM");
    let mut table = Table::new(&[
        "hot pages",
        "region",
        "¼ RAM + bulk, ops/s",
        "all RAM, ops/s",
        "ratio",
        "segments out / in",
    ]);
    let mut zipf = Vec::new();
    zipf_matrix(flags, root, &mut table, &mut zipf);
    (table.markdown(), zipf)
}

fn zipf_matrix(flags: &Flags, root: &Path, table: &mut Table, json: &mut Vec<serde_json::Value>) {
    let region = flags.number("region-mib", 1024u64) * MIB;
    let seconds = flags.number("seconds", 10u64);
    let rounds = flags.number("rounds", 3usize);
    let threads = flags.number("threads", 2usize);
    let pages = region / PAGE as u64;
    for scattered in [false, true] {
        let name = if scattered { "scattered" } else { "clustered" };
        let bulk_dir = root.join(format!("tiered-{name}"));
        let ram_dir = root.join(format!("ram-{name}"));
        let _ = std::fs::remove_dir_all(&bulk_dir);
        let _ = std::fs::remove_dir_all(&ram_dir);
        let tiered = node(&bulk_dir, region / 4, Some(region * 2), flags);
        let all_ram = node(&ram_dir, region + 64 * MIB, None, flags);
        let clients: Vec<Arc<Client>> = [&tiered, &all_ram]
            .iter()
            .map(|node| Arc::new(Client::connect(node.local_addr(), options()).expect("connect")))
            .collect();
        for client in &clients {
            let info = client
                .create_region("z", region, PAGE as u32)
                .expect("create");
            report::progress(&format!("filling {} MiB", region / MIB));
            fill(client, &info, pages);
        }
        let (tiered_client, ram_client) = (&clients[0], &clients[1]);
        let workload = Arc::new(Workload::new(
            pages,
            scattered,
            flags.number("write-percent", 10u32),
        ));
        // Warm-up: the tiered node's pager learns the hot segments.
        report::progress(&format!("{name}: warming up"));
        run(tiered_client, &workload, threads, seconds);
        run(ram_client, &workload, threads, seconds.min(3));
        let (mut with_bulk, mut with_ram) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            report::progress(&format!("{name}: round {}", round + 1));
            with_bulk.push(run(tiered_client, &workload, threads, seconds));
            with_ram.push(run(ram_client, &workload, threads, seconds));
        }
        let stat = tiered_client.node_stat().expect("node stat");
        let (bulk, ram) = (median(&mut with_bulk), median(&mut with_ram));
        table.row(vec![
            name.into(),
            format!("{} MiB", region / MIB),
            format!("{bulk:.0}"),
            format!("{ram:.0}"),
            format!("{:.2}", bulk / ram),
            format!("{} / {}", stat.segments_paged_out, stat.segments_paged_in),
        ]);
        json.push(serde_json::json!({
            "placement": name, "region_bytes": region, "tiered_ops": bulk, "all_ram_ops": ram,
            "ratio": bulk / ram, "segments_paged_out": stat.segments_paged_out,
            "segments_paged_in": stat.segments_paged_in,
        }));
        drop(clients);
        drop(tiered);
        drop(all_ram);
        let _ = std::fs::remove_dir_all(&bulk_dir);
        let _ = std::fs::remove_dir_all(&ram_dir);
    }
}

/// Microseconds of bulk-tier page reads and raw direct reads, alternating.
fn misses(flags: &Flags, root: &Path) -> (Percentiles, Percentiles) {
    let count = flags.number("misses", 2000usize);
    let dir = root.join("misses");
    let _ = std::fs::remove_dir_all(&dir);
    let region_bytes = 256 * MIB;
    let (store, _) = BulkStore::open(&BulkConfig {
        dir: dir.join("bulk"),
        capacity_bytes: region_bytes * 2,
    })
    .expect("bulk tier");
    let arena = Arc::new(
        Arena::new(region_bytes, SEGMENT)
            .expect("arena")
            .with_bulk(store, 0, 0),
    );
    let info = WireInfo {
        id: 1,
        size: region_bytes,
        page_size: PAGE as u32,
        name: "m".into(),
    };
    let region = Region::new(info, 1, arena.clone()).expect("region");
    let pages = region_bytes / PAGE as u64;
    let list = |pages: &[u64]| {
        let mut payload = 0u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        for page in pages {
            payload.extend_from_slice(&page.to_le_bytes());
        }
        payload
    };
    let mut buffer = AlignedBuf::new(SEGMENT as usize).expect("buffer");
    for first in (0..pages).step_by(256) {
        let batch: Vec<u64> = (first..first + 256).collect();
        let data: Vec<u8> = batch.iter().flat_map(|&p| page_bytes(p)).collect();
        region.restore_pages(&batch, &data, false).expect("write");
    }
    for segment in 0..(region_bytes / SEGMENT) as usize {
        assert!(region.page_out(segment, &mut buffer).expect("page out"));
    }
    // The raw file: as large as the bulk file's data, on the same disk.
    let raw_path = dir.join("raw.data");
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&raw_path)
        .expect("raw file");
    let chunk = AlignedBuf::new(SEGMENT as usize).expect("chunk");
    for at in (0..region_bytes).step_by(SEGMENT as usize) {
        raw.write_all_at(&chunk, at).expect("raw fill");
    }
    let mut rng = StdRng::seed_from_u64(3);
    let mut raw_buffer = AlignedBuf::new(PAGE).expect("raw buffer");
    let (mut tier, mut direct) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let mut out = Vec::with_capacity(PAGE);
    for _ in 0..count {
        let page = rng.gen_range(0..pages);
        let payload = list(&[page]);
        let request = pagoda_wire::Request::decode(0x20, &payload).expect("a page list");
        let pagoda_wire::Request::ReadPages {
            pages: page_list, ..
        } = request
        else {
            unreachable!("decoded as ReadPages")
        };
        out.clear();
        let began = Instant::now();
        region.read_pages(page_list, &mut out).expect("bulk read");
        tier.push(began.elapsed().as_nanos() as u64);
        assert!(out == page_bytes(page), "page {page} read back wrong");
        let at = rng.gen_range(0..pages) * PAGE as u64;
        let began = Instant::now();
        raw.read_exact_at(&mut raw_buffer, at).expect("raw read");
        direct.push(began.elapsed().as_nanos() as u64);
    }
    assert_eq!(region.segments_paged_out(), region_bytes / SEGMENT);
    drop(region);
    let _ = std::fs::remove_dir_all(&dir);
    (Percentiles::of(&mut tier), Percentiles::of(&mut direct))
}

/// Bytes used in the bulk tier for zero-heavy and duplicate-heavy data.
fn space(flags: &Flags, root: &Path) -> Vec<(String, u64, u64, u64)> {
    let dir = root.join("space");
    let _ = std::fs::remove_dir_all(&dir);
    let tiered = node(&dir, 8 * MIB, Some(1024 * MIB), flags);
    let client = Client::connect(tiered.local_addr(), options()).expect("connect");
    let size = 64 * MIB;
    let pages = size / PAGE as u64;
    let mut rows = Vec::new();
    // Bytes paged out and bulk bytes used since `before` (the same pair).
    let mut measure = |label: &str, client: &Client, before: (u64, u64)| {
        let stat = client.node_stat().expect("stat");
        let out = stat.bulk_referenced_bytes + stat.bulk_zero_bytes;
        rows.push((
            label.to_owned(),
            out - before.0,
            stat.bulk_used_bytes - before.1,
            stat.used_bytes,
        ));
        (out, stat.bulk_used_bytes)
    };
    // Half the pages zero, half distinct.
    let info = client
        .create_region("half-zero", size, PAGE as u32)
        .expect("create");
    for first in (0..pages).step_by(256) {
        let list: Vec<u64> = (first..first + 256).collect();
        let data: Vec<u8> = list
            .iter()
            .flat_map(|&p| {
                if p % 2 == 0 {
                    vec![0; PAGE]
                } else {
                    page_bytes(p)
                }
            })
            .collect();
        client
            .raw()
            .write_pages(&info, &list, &data)
            .expect("write");
    }
    // Push it out: another region as large.
    let filler = client
        .create_region("filler", size, PAGE as u32)
        .expect("create");
    fill(&client, &filler, pages);
    let before = measure(
        "half zero pages (64 MiB) + a 64 MiB filler",
        &client,
        (0, 0),
    );
    // Four identical regions.
    for copy in 0..4 {
        let info = client
            .create_region(&format!("copy-{copy}"), size, PAGE as u32)
            .expect("create");
        fill(&client, &info, pages);
    }
    measure(
        "four identical 64 MiB regions (of the filler's contents)",
        &client,
        before,
    );
    drop(tiered);
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// Empties the kernel's page cache (`--cold`, as root), so that a reload
/// reads the checkpoint's files from the disk as the bulk tier's load does.
fn drop_page_cache() {
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .expect("--cold drops the page cache: run as root");
}

/// Milliseconds from the `Node::start` call to its return, to the first
/// read served, and to the region wholly in RAM, restarting from the bulk
/// tier's index or without it (lazily or eagerly), alternating round by
/// round: per case, the medians.
fn restarts(flags: &Flags, root: &Path) -> Vec<(String, f64, f64, f64)> {
    let size = flags.number("restart-mib", 1024u64) * MIB;
    let rounds = flags.number("rounds", 3usize);
    let dir = root.join("restart");
    let _ = std::fs::remove_dir_all(&dir);
    let config = |reload: Reload, bulk: bool| {
        let mut config = NodeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            // The pager loads up to 15/16 of RAM: room for all of it.
            size / 16 * 17 + 64 * MIB,
            dir.join("data"),
        );
        config.storage = Some(pagoda_node::StorageConfig::Dir(dir.join("storage")));
        config.checkpoint_interval = None;
        config.bulk = bulk.then(|| BulkConfig {
            dir: dir.join("bulk"),
            capacity_bytes: size + size / 2,
        });
        config.reload = reload;
        // All of the RAM for segments: the load is measured, not the cache.
        config.bulk_cache_bytes = Some(0);
        config
    };
    let pages = size / PAGE as u64;
    {
        let node = Node::start(config(Reload::Lazy, true)).expect("node");
        let client = Client::connect(node.local_addr(), options()).expect("connect");
        let info = client
            .create_region("r", size, PAGE as u32)
            .expect("create");
        report::progress(&format!("restart: filling {} MiB", size / MIB));
        fill(&client, &info, pages);
        report::progress("restart: the first graceful stop (checkpoint, then the bulk index)");
    }
    let index = dir.join("bulk").join(pagoda_node::bulk::INDEX_FILE_NAME);
    // Per case: its label, whether the node has a bulk tier and the start
    // finds its index, how it reloads without one, and the started,
    // first-read and loaded times of each round. A node with a bulk tier
    // recreates its bulk file after a crash (the file's old blocks freed,
    // its capacity allocated again), which the node without one does not:
    // that case shows the lazy load's own start.
    let mut cases = [
        (
            "from the bulk tier's index (graceful)",
            Some(true),
            Reload::Lazy,
        ),
        (
            "crash: lazy load from the checkpoint",
            Some(false),
            Reload::Lazy,
        ),
        (
            "crash: eager reload from the checkpoint",
            Some(false),
            Reload::Eager,
        ),
        ("crash, no bulk tier: lazy load", None, Reload::Lazy),
    ]
    .map(|(label, index_kept, reload)| (label, index_kept, reload, [(); 3].map(|_| Vec::new())));
    for round in 0..rounds {
        for (label, index_kept, reload, times) in cases.iter_mut() {
            if *index_kept == Some(false) {
                let _ = std::fs::remove_file(&index);
            }
            if let Some(kept) = *index_kept {
                assert_eq!(index.exists(), kept, "round {round}: the index");
            }
            if flags.switch("cold") {
                drop_page_cache();
            }
            let began = Instant::now();
            let node = Node::start(config(*reload, index_kept.is_some())).expect("node restarts");
            let started = began.elapsed().as_secs_f64() * 1000.0;
            let client = Client::connect(node.local_addr(), options()).expect("connect");
            let info = client.stat_region("r").expect("stat").info;
            let mut page = vec![0u8; PAGE];
            client
                .raw()
                .read_pages(&info, &[pages - 1], &mut page)
                .expect("first read");
            let first = began.elapsed().as_secs_f64() * 1000.0;
            assert!(page == page_bytes(pages - 1), "the first read is right");
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let stat = client.stat_region("r").expect("stat");
                if stat.segments_paged_out == 0 && stat.segments_loading == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "the background load never ends");
                std::thread::sleep(Duration::from_millis(5));
            }
            let loaded = began.elapsed().as_secs_f64() * 1000.0;
            report::progress(&format!(
                "restart round {} {label}: started {started:.0} ms, first read {first:.0} ms, \
                 loaded {loaded:.0} ms",
                round + 1,
            ));
            for (values, value) in times.iter_mut().zip([started, first, loaded]) {
                values.push(value);
            }
            drop(client);
            // Stopped gracefully: a checkpoint (nothing is dirty) and, with
            // a bulk tier, its index, which the next crash case removes (the
            // node without one leaves the last index as it was: it still
            // holds the newest checkpoint).
            drop(node);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    cases
        .into_iter()
        .map(|(label, _, _, mut times)| {
            let [started, first, loaded] = &mut times;
            (
                format!("{label} ({} MiB)", size / MIB),
                median(started),
                median(first),
                median(loaded),
            )
        })
        .collect()
}

fn main() {
    let flags = Flags::parse(
        &["json", "cold"],
        &[
            "region-mib",
            "seconds",
            "rounds",
            "threads",
            "misses",
            "dir",
            "write-percent",
            "restart-mib",
            "only",
            "bulk-read-threads",
            "bulk-cache-mib",
        ],
        USAGE,
    );
    let root = PathBuf::from(flags.values_get("dir").unwrap_or("/work/bulk-bench"));
    std::fs::create_dir_all(&root).expect("bench dir");
    let mut markdown = String::new();

    // `--only restart`: the restart alone (it needs the most time and disk).
    let only_restart = flags.values_get("only") == Some("restart");
    let mut document = serde_json::Map::new();
    // `--only zipf`: the Zipf workload alone.
    if flags.values_get("only") == Some("zipf") {
        let (markdown, zipf) = zipf_section(&flags, &root);
        document.insert("zipf".into(), zipf.into());
        report::emit(
            flags.switch("json"),
            &serde_json::Value::Object(document),
            &markdown,
        );
        return;
    }
    {
        report::progress("restart");
        let rows = restarts(&flags, &root);
        let mut table = Table::new(&[
            "restart",
            "node started, ms",
            "first read served, ms",
            "all in RAM, ms",
        ]);
        for (label, started, first, loaded) in &rows {
            table.row(vec![
                label.clone(),
                format!("{started:.0}"),
                format!("{first:.0}"),
                format!("{loaded:.0}"),
            ]);
        }
        markdown.push_str(&table.markdown());
        markdown.push('\n');
        document.insert(
            "restart".into(),
            rows.iter()
                .map(|(label, started, first, loaded)| serde_json::json!({"restart": label, "started_ms": started, "first_read_ms": first, "loaded_ms": loaded}))
                .collect(),
        );
    }
    if only_restart {
        report::emit(
            flags.switch("json"),
            &serde_json::Value::Object(document),
            &markdown,
        );
        return;
    }
    report::progress("bulk-tier misses against raw direct reads");
    let (tier, direct) = misses(&flags, &root);
    let mut table = Table::new(&["read", "samples", "p50 µs", "p99 µs", "mean µs"]);
    for (name, p) in [
        ("bulk tier page (in process)", tier),
        ("raw O_DIRECT 4 KiB pread", direct),
    ] {
        table.row(vec![
            name.into(),
            p.samples.to_string(),
            report::micros(p.p50_ns),
            report::micros(p.p99_ns),
            report::micros(p.mean_ns),
        ]);
    }
    markdown.push_str(&table.markdown());
    markdown.push_str(&format!(
        "\nbulk miss p50 / raw p50: {:.2}\n\n",
        tier.p50_ns as f64 / direct.p50_ns as f64
    ));

    report::progress("space");
    let rows = space(&flags, &root);
    let mut table = Table::new(&["data", "paged out", "bulk tier used", "RAM used"]);
    for (label, written, used, ram) in &rows {
        table.row(vec![
            label.clone(),
            format!("{} MiB", written / MIB),
            format!("{:.1} MiB", *used as f64 / MIB as f64),
            format!("{} MiB", ram / MIB),
        ]);
    }
    markdown.push_str(&table.markdown());
    markdown.push('\n');

    let (zipf_markdown, zipf) = zipf_section(&flags, &root);
    markdown.push_str(&zipf_markdown);

    document.insert(
        "misses".into(),
        serde_json::json!({"bulk": tier, "raw_direct": direct}),
    );
    document.insert(
        "space".into(),
        rows.iter()
            .map(|(label, written, used, ram)| {
                serde_json::json!({
                    "data": label, "paged_out_bytes": written, "bulk_used_bytes": used,
                    "ram_used_bytes": ram
                })
            })
            .collect(),
    );
    document.insert("zipf".into(), zipf.into());
    report::emit(
        flags.switch("json"),
        &serde_json::Value::Object(document),
        &markdown,
    );
}

//! Recovery of a region from its baseline plus the dirty pages, beside a full
//! copy of the region from the source node and beside a plain read of the
//! baseline's objects; full and incremental checkpoint throughput to a local
//! directory.
//!
//! For each dirty fraction, in one run: a source node gets a region with
//! every page written, takes a full checkpoint to a storage directory on
//! disk, and then has that fraction of its pages (distinct, random)
//! rewritten. Then, in turn:
//!
//! - *full copy*: every page read from the source and written to a region on
//!   the target, four requests of 256 pages in flight (what moving the
//!   region without a baseline costs);
//! - *baseline read*: every data object the manifest names read from storage
//!   with four reads in flight, and nothing else done with the bytes (the
//!   floor for any recovery that reads the baseline);
//! - *recovery*: `recover --from source --to target`, baseline plus delta;
//! - *incremental checkpoint* of the recovered region on the target, whose
//!   dirty pages are exactly those copied from the source.
//!
//! The page cache is dropped (`/proc/sys/vm/drop_caches`, needs root) before
//! the baseline read and the recovery, so both read the disk.
//!
//! With `--repeat N` the baseline read and the recovery run N times each,
//! alternating (read, recovery, read, recovery, ...), and the table shows
//! their medians; `--recovery-only` skips the full copy, the raw writes and
//! the incremental checkpoint, for quick comparisons of the load path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, RegionInfo};
use pagoda_bench::report::{Flags, Table, emit, progress};
use pagoda_bench::{FastRng, PAGE_BYTES};
use pagoda_node::storage::Storage;
use pagoda_node::{Node, NodeConfig, StorageConfig};

const USAGE: &str = "\
recovery: recovery from baseline plus dirty pages, beside a full copy and a baseline read;
checkpoint throughput

  --region-mib N     region size in MiB (default 4096)
  --dirty LIST       dirty percentages (default 1,10,50)
  --dir PATH         where storage and data dirs go (default: a temporary dir under /work)
  --no-drop-caches   do not drop the page cache before reads from storage
  --repeat N         baseline reads and recoveries per fraction, alternating;
                     medians are shown (default 1)
  --recovery-only    skip the full copy, raw writes and incremental checkpoint
  --json             print JSON instead of the markdown table";

/// Pages per request when filling or copying a region.
const BATCH_PAGES: usize = 256;
/// Requests in flight when copying.
const COPY_THREADS: usize = 4;

/// How one run measures.
struct Settings {
    region_bytes: u64,
    drop_caches: bool,
    /// Baseline reads and recoveries per dirty fraction.
    repeat: usize,
    /// Skip the full copy, the raw writes and the incremental checkpoint.
    recovery_only: bool,
}

struct Row {
    dirty_percent: u64,
    dirty_pages: u64,
    full_checkpoint_s: f64,
    full_checkpoint_bytes: u64,
    /// `None` with `--recovery-only` (as are the full copy and the
    /// incremental checkpoint).
    raw_writes_s: Option<f64>,
    full_copy_s: Option<f64>,
    /// Each baseline read, in the order run.
    baseline_read_s: Vec<f64>,
    baseline_read_bytes: u64,
    /// Each recovery, in the order run (each after the read of the same
    /// index).
    recovery_s: Vec<f64>,
    recovery_baseline_s: Vec<f64>,
    recovery_storage_bytes: u64,
    recovery_source_bytes: u64,
    incremental: Option<(f64, u64, u64)>,
}

/// The median of some seconds (the mean of the middle two for an even
/// count).
fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

fn start_node(dir: &std::path::Path, name: &str, storage: &std::path::Path, capacity: u64) -> Node {
    let mut config = NodeConfig::new(
        "127.0.0.1:0".parse().expect("an address"),
        capacity,
        dir.join(name),
    );
    config.storage = Some(StorageConfig::Dir(storage.to_path_buf()));
    Node::start(config).expect("the node starts")
}

fn client(node: &Node) -> Client {
    let options = ClientOptions {
        timeout: Duration::from_secs(3600),
        client_name: "pagoda-bench recovery".into(),
        ..ClientOptions::default()
    };
    Client::connect(node.local_addr(), options).expect("the client connects")
}

fn fill_page(page: &mut [u8], number: u64, version: u64) {
    let word = number.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
    for chunk in page.chunks_exact_mut(8) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

fn write_pages(client: &Client, info: &RegionInfo, pages: &[u64], version: u64) {
    let mut data = vec![0u8; BATCH_PAGES * PAGE_BYTES];
    for batch in pages.chunks(BATCH_PAGES) {
        for (page, buffer) in batch.iter().zip(data.chunks_exact_mut(PAGE_BYTES)) {
            fill_page(buffer, *page, version);
        }
        client
            .raw()
            .write_pages(info, batch, &data[..batch.len() * PAGE_BYTES])
            .expect("writing pages");
    }
}

fn drop_caches(enabled: bool) {
    if !enabled {
        return;
    }
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if let Err(error) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("error: dropping the page cache: {error} (run as root or pass --no-drop-caches)");
        std::process::exit(1);
    }
}

/// Copies every page of `name` from `source` into a new region on `target`,
/// several requests in flight, and returns the seconds it took.
fn full_copy(source: &Node, target: &Node, name: &str, pages: u64) -> f64 {
    let from = client(source);
    let to = client(target);
    let info = from.stat_region(name).expect("the source region").info;
    let copy = to
        .create_region("full-copy", info.size, info.page_size)
        .expect("the copy region");
    let next = AtomicUsize::new(0);
    let batches = pages.div_ceil(BATCH_PAGES as u64) as usize;
    let began = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..COPY_THREADS {
            scope.spawn(|| {
                let mut buffer = vec![0u8; BATCH_PAGES * PAGE_BYTES];
                loop {
                    let batch = next.fetch_add(1, Ordering::Relaxed);
                    if batch >= batches {
                        return;
                    }
                    let first = batch as u64 * BATCH_PAGES as u64;
                    let list: Vec<u64> = (first..(first + BATCH_PAGES as u64).min(pages)).collect();
                    let bytes = list.len() * PAGE_BYTES;
                    from.raw()
                        .read_pages(&info, &list, &mut buffer[..bytes])
                        .expect("reading from the source");
                    to.raw()
                        .write_pages(&copy, &list, &buffer[..bytes])
                        .expect("writing to the target");
                }
            });
        }
    });
    let seconds = began.elapsed().as_secs_f64();
    to.delete_region("full-copy").expect("deleting the copy");
    seconds
}

/// Reads every object the region's latest manifest names, four at a time,
/// and returns (seconds, bytes).
fn baseline_read(storage_dir: &std::path::Path, name: &str) -> (f64, u64) {
    let storage =
        Storage::open(&StorageConfig::Dir(storage_dir.to_path_buf())).expect("the storage opens");
    let began = Instant::now();
    let manifest = pagoda_node::checkpoint::latest_manifest(&storage, name, None)
        .expect("the manifest reads")
        .expect("a manifest exists");
    let next = AtomicUsize::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..pagoda_node::storage::STORAGE_PARALLELISM {
            scope.spawn(|| {
                loop {
                    let Some(object) = manifest.objects.get(next.fetch_add(1, Ordering::Relaxed))
                    else {
                        return;
                    };
                    let key = object_store::path::Path::from(object.key.as_str());
                    let data = storage
                        .block_on(storage.get(&key))
                        .expect("the object reads");
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (began.elapsed().as_secs_f64(), bytes.into_inner())
}

/// Writes `bytes` as 16 MiB files, each fsynced, four at a time (the
/// pattern a checkpoint's uploads follow), and returns the seconds: the
/// disk's floor for a checkpoint, measured in the same run.
fn raw_file_writes(dir: &std::path::Path, bytes: u64) -> f64 {
    const FILE_BYTES: usize = 16 << 20;
    let files = bytes.div_ceil(FILE_BYTES as u64) as usize;
    let next = AtomicUsize::new(0);
    let raw = dir.join("raw-writes");
    std::fs::create_dir_all(&raw).expect("a directory for raw writes");
    let began = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..pagoda_node::storage::STORAGE_PARALLELISM {
            scope.spawn(|| {
                use std::io::Write;
                let data = vec![0x5au8; FILE_BYTES];
                loop {
                    let number = next.fetch_add(1, Ordering::Relaxed);
                    if number >= files {
                        return;
                    }
                    let path = raw.join(format!("{number}"));
                    let mut file = std::fs::File::create(&path).expect("a raw file");
                    file.write_all(&data).expect("raw write");
                    file.sync_all().expect("raw fsync");
                }
            });
        }
    });
    let seconds = began.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&raw).expect("removing raw writes");
    seconds
}

fn measure(
    dir: &std::path::Path,
    storage_dir: &std::path::Path,
    settings: &Settings,
    percent: u64,
) -> Row {
    let region_bytes = settings.region_bytes;
    let drop = settings.drop_caches;
    let pages = region_bytes / PAGE_BYTES as u64;
    let capacity = region_bytes + (64 << 20);
    let source = start_node(dir, &format!("source-{percent}"), storage_dir, capacity);
    let target = start_node(dir, &format!("target-{percent}"), storage_dir, capacity);
    let name = format!("recovery-{percent}");
    let source_client = client(&source);
    let info = source_client
        .create_region(&name, region_bytes, PAGE_BYTES as u32)
        .expect("the region is created");
    let all: Vec<u64> = (0..pages).collect();
    let began = Instant::now();
    write_pages(&source_client, &info, &all, 1);
    progress(&format!(
        "{percent}%: wrote {} MiB in {:.2} s",
        region_bytes >> 20,
        began.elapsed().as_secs_f64()
    ));
    let raw_writes_s = (!settings.recovery_only).then(|| {
        drop_caches(drop);
        raw_file_writes(dir, region_bytes)
    });
    drop_caches(drop);
    let full = source_client
        .checkpoint(&name, true)
        .expect("full checkpoint");
    progress(&format!(
        "{percent}%: full checkpoint {} MiB in {:.2} s",
        full.bytes >> 20,
        full.micros as f64 / 1e6
    ));
    // Distinct random pages: a partial Fisher-Yates shuffle.
    let dirty_pages = pages * percent / 100;
    let mut order = all;
    let mut rng = FastRng::new(percent + 1);
    for index in 0..dirty_pages as usize {
        let pick = index + (rng.next_u64() % (pages - index as u64)) as usize;
        order.swap(index, pick);
    }
    let mut dirty: Vec<u64> = order[..dirty_pages as usize].to_vec();
    dirty.sort_unstable();
    write_pages(&source_client, &info, &dirty, 2);

    let full_copy_s = (!settings.recovery_only).then(|| {
        let seconds = full_copy(&source, &target, &name, pages);
        progress(&format!("{percent}%: full copy in {seconds:.2} s"));
        seconds
    });
    let target_client = client(&target);
    let mut baseline_read_s = Vec::with_capacity(settings.repeat);
    let mut baseline_read_bytes = 0;
    let mut recovery_s = Vec::with_capacity(settings.repeat);
    let mut recovery_baseline_s = Vec::with_capacity(settings.repeat);
    let mut done = None;
    for round in 0..settings.repeat {
        if round > 0 {
            // Frozen first: deleting an active region would purge the
            // baseline the next round loads.
            let previous = target_client.stat_region(&name).expect("stat").info;
            target_client
                .raw()
                .freeze_region(previous.id)
                .expect("freezing the recovered region");
            target_client
                .delete_region(&name)
                .expect("deleting the recovered region before the next round");
        }
        drop_caches(drop);
        let (read_s, read_bytes) = baseline_read(storage_dir, &name);
        progress(&format!(
            "{percent}%: baseline read {} MiB in {read_s:.2} s",
            read_bytes >> 20
        ));
        baseline_read_s.push(read_s);
        baseline_read_bytes = read_bytes;
        drop_caches(drop);
        let recover_began = Instant::now();
        let mut baseline_loaded_s = None;
        let recovered = target_client
            .recover(
                &name,
                Some(&source.local_addr().to_string()),
                None,
                false,
                Duration::from_millis(10),
                |progress| {
                    if progress.phase != pagoda::RecoveryPhase::Baseline
                        && baseline_loaded_s.is_none()
                    {
                        baseline_loaded_s = Some(recover_began.elapsed().as_secs_f64());
                    }
                },
            )
            .expect("recovery");
        let seconds = recovered.elapsed_ms as f64 / 1000.0;
        progress(&format!(
            "{percent}%: recovery in {seconds:.2} s ({} MiB from storage, {} MiB from the source)",
            recovered.storage_bytes >> 20,
            recovered.source_bytes >> 20
        ));
        recovery_s.push(seconds);
        recovery_baseline_s.push(baseline_loaded_s.unwrap_or(seconds));
        done = Some(recovered);
    }
    let done = done.expect("--repeat is at least 1");
    // Spot-check the recovered contents against what was written.
    let mut expected = vec![0u8; PAGE_BYTES];
    let mut got = vec![0u8; PAGE_BYTES];
    let recovered = target_client.stat_region(&name).expect("stat").info;
    for &page in [0, pages / 2, pages - 1]
        .iter()
        .chain(dirty.iter().take(16))
    {
        let version = if dirty.binary_search(&page).is_ok() {
            2
        } else {
            1
        };
        fill_page(&mut expected, page, version);
        target_client
            .raw()
            .read_pages(&recovered, &[page], &mut got)
            .expect("reading the recovered region");
        assert!(got == expected, "recovered page {page} differs");
    }
    let incremental = (!settings.recovery_only).then(|| {
        let incremental = target_client
            .checkpoint(&name, false)
            .expect("incremental checkpoint");
        progress(&format!(
            "{percent}%: incremental checkpoint of {} pages in {:.2} s",
            incremental.pages,
            incremental.micros as f64 / 1e6
        ));
        (
            incremental.micros as f64 / 1e6,
            incremental.pages,
            incremental.bytes,
        )
    });
    target_client
        .delete_region(&name)
        .expect("delete on the target");
    source_client
        .delete_region(&name)
        .expect("delete on the source");
    Row {
        dirty_percent: percent,
        dirty_pages,
        full_checkpoint_s: full.micros as f64 / 1e6,
        full_checkpoint_bytes: full.bytes,
        raw_writes_s,
        full_copy_s,
        baseline_read_s,
        baseline_read_bytes,
        recovery_s,
        recovery_baseline_s,
        recovery_storage_bytes: done.storage_bytes,
        recovery_source_bytes: done.source_bytes,
        incremental,
    }
}

/// Seconds with two decimals, or `-` for a step not run.
fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |value| format!("{value:.2}"))
}

fn gbps(bytes: u64, seconds: f64) -> String {
    format!("{:.2}", bytes as f64 / seconds / 1e9)
}

fn main() {
    let flags = Flags::parse(
        &["json", "no-drop-caches", "recovery-only"],
        &["region-mib", "dirty", "dir", "repeat"],
        USAGE,
    );
    let settings = Settings {
        region_bytes: flags.number::<u64>("region-mib", 4096) << 20,
        drop_caches: !flags.switch("no-drop-caches"),
        repeat: flags.number::<usize>("repeat", 1),
        recovery_only: flags.switch("recovery-only"),
    };
    let region_bytes = settings.region_bytes;
    let drop = settings.drop_caches;
    let percents = flags.numbers::<u64>("dirty", &[1, 10, 50]);
    if percents.iter().any(|&p| p == 0 || p > 100) {
        eprintln!("error: --dirty percentages must be 1 to 100");
        std::process::exit(2);
    }
    if !(1..=100).contains(&settings.repeat) {
        eprintln!("error: --repeat must be 1 to 100");
        std::process::exit(2);
    }
    let temporary = match flags.values_get("dir") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir_in("/work"),
    }
    .expect("a working directory");
    let storage_dir = temporary.path().join("storage");
    let rows: Vec<Row> = percents
        .iter()
        .map(|&percent| measure(temporary.path(), &storage_dir, &settings, percent))
        .collect();

    let mut table = Table::new(&[
        "dirty",
        "full copy s",
        "baseline read s",
        "recovery s",
        "of which baseline s",
        "recovery / baseline read",
        "recovery / full copy",
        "from source MiB",
        "source / region",
        "incremental ckpt s",
        "incremental GB/s",
    ]);
    for row in &rows {
        let recovery_s = median(&row.recovery_s);
        table.row(vec![
            format!("{}%", row.dirty_percent),
            seconds(row.full_copy_s),
            format!("{:.2}", median(&row.baseline_read_s)),
            format!("{recovery_s:.2}"),
            format!("{:.2}", median(&row.recovery_baseline_s)),
            format!("{:.2}", recovery_s / median(&row.baseline_read_s)),
            seconds(row.full_copy_s.map(|full| recovery_s / full)),
            format!("{}", row.recovery_source_bytes >> 20),
            format!(
                "{:.3}",
                row.recovery_source_bytes as f64 / region_bytes as f64
            ),
            row.incremental
                .map_or_else(|| "-".into(), |(s, _, _)| format!("{s:.3}")),
            row.incremental
                .map_or_else(|| "-".into(), |(s, _, bytes)| gbps(bytes, s)),
        ]);
    }
    let mut checkpoints = Table::new(&[
        "run",
        "full checkpoint s",
        "GB/s",
        "raw 16 MiB fsynced writes s",
        "raw GB/s",
        "checkpoint / raw throughput",
    ]);
    for row in &rows {
        checkpoints.row(vec![
            format!("before {}%", row.dirty_percent),
            format!("{:.2}", row.full_checkpoint_s),
            gbps(row.full_checkpoint_bytes, row.full_checkpoint_s),
            seconds(row.raw_writes_s),
            row.raw_writes_s
                .map_or_else(|| "-".into(), |raw| gbps(region_bytes, raw)),
            seconds(row.raw_writes_s.map(|raw| {
                (row.full_checkpoint_bytes as f64 / row.full_checkpoint_s)
                    / (region_bytes as f64 / raw)
            })),
        ]);
    }
    let markdown = format!(
        "Region {} MiB, 4 KiB pages; page cache dropped before reads from storage: {drop}; \
         baseline reads and recoveries per fraction: {} (medians shown).\n\n{}\n{}",
        region_bytes >> 20,
        settings.repeat,
        table.markdown(),
        checkpoints.markdown()
    );
    let document = serde_json::json!({
        "region_bytes": region_bytes,
        "drop_caches": drop,
        "repeat": settings.repeat,
        "rows": rows.iter().map(|row| serde_json::json!({
            "dirty_percent": row.dirty_percent,
            "dirty_pages": row.dirty_pages,
            "full_checkpoint_s": row.full_checkpoint_s,
            "full_checkpoint_bytes": row.full_checkpoint_bytes,
            "raw_file_writes_s": row.raw_writes_s,
            "full_copy_s": row.full_copy_s,
            "baseline_read_s": median(&row.baseline_read_s),
            "baseline_read_samples_s": row.baseline_read_s,
            "baseline_read_bytes": row.baseline_read_bytes,
            "recovery_s": median(&row.recovery_s),
            "recovery_samples_s": row.recovery_s,
            "recovery_baseline_phase_s": median(&row.recovery_baseline_s),
            "recovery_storage_bytes": row.recovery_storage_bytes,
            "recovery_source_bytes": row.recovery_source_bytes,
            "incremental_checkpoint_s": row.incremental.map(|(s, _, _)| s),
            "incremental_checkpoint_pages": row.incremental.map(|(_, pages, _)| pages),
            "incremental_checkpoint_bytes": row.incremental.map(|(_, _, bytes)| bytes),
        })).collect::<Vec<_>>(),
    });
    emit(flags.switch("json"), &document, &markdown);
}

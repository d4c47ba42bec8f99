//! `pagoda quickstart`: the embedded default. Starts a local node with a
//! temporary data dir, creates a region four times larger than the local
//! cache, runs a short mixed workload from two threads with a progress bar,
//! checks every read and finally every byte of the region (through a second
//! client with a cold cache) against an in-memory model, takes a checkpoint to
//! a directory, restarts the node and checks the region it reloaded from that
//! checkpoint against the model too, and prints what it measured. Exits
//! non-zero if any check failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, RegionOptions};
use pagoda_node::{Node, NodeConfig, StorageConfig};
use rand::{Rng, SeedableRng};

use crate::size::{format_bytes, parse_size};

/// Arguments of `pagoda quickstart`.
#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Size of the local cache; the region is four times larger.
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    cache: u64,
    /// How long to run the workload, in seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seed for the workload's random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const THREADS: usize = 2;
const OP_BYTES_MAX: usize = 3 * 4096;
const OPS_PER_THREAD_MAX: u64 = 5_000_000;

pub fn run(args: QuickstartArgs) -> Result<(), String> {
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        return Err("--duration must be more than 0 and at most an hour".into());
    }
    let page = 4096u64;
    let cache = (args.cache / page).max(4) * page;
    let region_bytes = cache * 4;
    let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary data dir: {e}"))?;
    let mut config = NodeConfig::new(
        ([127, 0, 0, 1], 0).into(),
        region_bytes + (8 << 20),
        dir.path().to_path_buf(),
    );
    let storage_dir = dir.path().join("checkpoints");
    config.storage = Some(StorageConfig::Dir(storage_dir.clone()));
    let node = Node::start(config.clone()).map_err(|e| e.to_string())?;
    println!(
        "1. started a memory node on {} (data dir {}, checkpoints in {})",
        node.local_addr(),
        dir.path().display(),
        storage_dir.display()
    );

    let client =
        Client::connect(node.local_addr(), ClientOptions::default()).map_err(|e| e.to_string())?;
    client
        .create_region("quickstart", region_bytes, page as u32)
        .map_err(|e| e.to_string())?;
    let region = Arc::new(
        client
            .open_region("quickstart", RegionOptions::with_cache_bytes(cache))
            .map_err(|e| e.to_string())?,
    );
    println!(
        "2. created region \"quickstart\" of {} with a local cache of {} (a quarter of it)",
        format_bytes(region_bytes),
        format_bytes(cache)
    );

    println!(
        "3. running a mixed workload (60% writes, 40% reads) from {THREADS} threads for {:.0} s",
        args.duration
    );
    let duration = Duration::from_secs_f64(args.duration);
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("   {bar:40} {elapsed_precise} {msg}")
            .expect("template"),
    );
    let started = Instant::now();
    let half = region_bytes / THREADS as u64;
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let region = region.clone();
            let seed = args.seed + thread as u64;
            std::thread::spawn(move || -> Result<(Vec<u8>, u64, u64, u64), String> {
                // Each thread owns one half of the region and models it.
                let base = half * thread as u64;
                let mut model = vec![0u8; half as usize];
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut buffer = vec![0u8; OP_BYTES_MAX];
                let (mut ops, mut mismatches, mut latency_ns) = (0u64, 0u64, 0u64);
                let deadline = Instant::now() + duration;
                while ops < OPS_PER_THREAD_MAX && Instant::now() < deadline {
                    let len = rng.gen_range(1..=OP_BYTES_MAX);
                    let start = rng.gen_range(0..=half as usize - len);
                    let began = Instant::now();
                    if rng.gen_bool(0.6) {
                        rng.fill(&mut buffer[..len]);
                        region
                            .write_at(base + start as u64, &buffer[..len])
                            .map_err(|e| e.to_string())?;
                        model[start..start + len].copy_from_slice(&buffer[..len]);
                    } else {
                        region
                            .read_at(base + start as u64, &mut buffer[..len])
                            .map_err(|e| e.to_string())?;
                        if buffer[..len] != model[start..start + len] {
                            mismatches += 1;
                        }
                    }
                    latency_ns += began.elapsed().as_nanos() as u64;
                    ops += 1;
                }
                Ok((model, ops, mismatches, latency_ns))
            })
        })
        .collect();
    while !handles.iter().all(|h| h.is_finished()) {
        bar.set_position(started.elapsed().as_millis().min(duration.as_millis()) as u64);
        let stats = region.cache_stats();
        bar.set_message(format!(
            "{} page accesses, hit ratio {:.2}",
            stats.hits + stats.misses,
            stats.hit_ratio()
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    let mut model = Vec::with_capacity(region_bytes as usize);
    let (mut ops, mut mismatches, mut latency_ns) = (0, 0, 0);
    for handle in handles {
        let (part, part_ops, part_mismatches, part_latency) = handle
            .join()
            .map_err(|_| "a workload thread panicked".to_string())??;
        model.extend_from_slice(&part);
        ops += part_ops;
        mismatches += part_mismatches;
        latency_ns += part_latency;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = region.cache_stats();

    println!(
        "4. flushing dirty pages to the node and verifying every byte through a second client"
    );
    let flush_started = Instant::now();
    region.flush().map_err(|e| e.to_string())?;
    let flush_ms = flush_started.elapsed().as_secs_f64() * 1000.0;
    let checker =
        Client::connect(node.local_addr(), ClientOptions::default()).map_err(|e| e.to_string())?;
    // A reader beside the writer (one writer per region).
    let fresh = checker
        .open_region_read_only("quickstart", RegionOptions::with_cache_bytes(1 << 20))
        .map_err(|e| e.to_string())?;
    let differing = count_differing(&fresh, &model)?;
    let node_stat = checker.node_stat().map_err(|e| e.to_string())?;
    drop(fresh);
    drop(region);

    println!(
        "5. taking a checkpoint of the region to {}",
        storage_dir.display()
    );
    let checkpoint = checker
        .checkpoint("quickstart", false)
        .map_err(|e| e.to_string())?;
    drop(checker);
    drop(client);
    println!(
        "   checkpoint {}: {} pages, {} in {:.1} ms",
        checkpoint.number,
        checkpoint.pages,
        format_bytes(checkpoint.bytes),
        checkpoint.micros as f64 / 1000.0
    );
    println!(
        "6. restarting the node on the same data dir: it reloads the region from the checkpoint"
    );
    node.shutdown();
    let restart_began = Instant::now();
    let node = Node::start(config).map_err(|e| e.to_string())?;
    let restart_ms = restart_began.elapsed().as_secs_f64() * 1000.0;
    let after_restart =
        Client::connect(node.local_addr(), ClientOptions::default()).map_err(|e| e.to_string())?;
    let reloaded = after_restart
        .open_region("quickstart", RegionOptions::with_cache_bytes(1 << 20))
        .map_err(|e| e.to_string())?;
    let differing_after_restart = count_differing(&reloaded, &model)?;

    println!();
    println!(
        "   operations          {ops} in {elapsed:.1} s ({:.0}/s)",
        ops as f64 / elapsed
    );
    println!(
        "   mean latency        {:.1} µs",
        latency_ns as f64 / ops.max(1) as f64 / 1000.0
    );
    println!(
        "   cache hit ratio     {:.3} ({} hits, {} misses)",
        stats.hit_ratio(),
        stats.hits,
        stats.misses
    );
    println!(
        "   bytes moved         {} fetched, {} written back",
        format_bytes(stats.pages_fetched * page),
        format_bytes(stats.pages_written_back * page)
    );
    println!("   flush               {flush_ms:.1} ms");
    println!(
        "   node RAM in use     {} of {}",
        format_bytes(node_stat.used_bytes),
        format_bytes(node_stat.capacity_bytes)
    );
    println!("   reads that differed from the model during the run: {mismatches}");
    println!("   pages that differ from the model after flush:      {differing}");
    println!(
        "   restart with reload {restart_ms:.1} ms; pages that differ after it: {differing_after_restart}"
    );
    drop(reloaded);
    drop(after_restart);
    node.shutdown();
    if mismatches > 0 || differing > 0 || differing_after_restart > 0 {
        return Err("verification FAILED: the region does not match the model".into());
    }
    println!();
    println!("verification passed: every byte of the region matches the model.");
    println!();
    println!("next:");
    println!("   pagoda node --listen 127.0.0.1:7070 --capacity 4GiB --data-dir /var/lib/pagoda");
    println!("   pagoda region create demo --size 1GiB --node 127.0.0.1:7070");
    println!("   pagoda region checkpoint demo --node 127.0.0.1:7070");
    println!(
        "   pagoda bench --node 127.0.0.1:7070 --region-size 1GiB --cache 256MiB --workload zipf"
    );
    println!("   use the `pagoda` crate from Rust: see README.md");
    Ok(())
}

/// Reads the whole region through `region` (with a progress bar) and counts
/// the pages that differ from `model`.
fn count_differing(region: &pagoda::Region, model: &[u8]) -> Result<usize, String> {
    let mut whole = vec![0u8; model.len()];
    let verify_bar = indicatif::ProgressBar::new(model.len() as u64);
    verify_bar.set_style(
        indicatif::ProgressStyle::with_template("   verify {bar:40} {bytes}/{total_bytes}")
            .expect("template"),
    );
    let chunk = 1 << 20;
    for (index, part) in whole.chunks_mut(chunk).enumerate() {
        region
            .read_at((index * chunk) as u64, part)
            .map_err(|e| e.to_string())?;
        verify_bar.inc(part.len() as u64);
    }
    verify_bar.finish_and_clear();
    Ok(whole
        .chunks(4096)
        .zip(model.chunks(4096))
        .filter(|(a, b)| a != b)
        .count())
}

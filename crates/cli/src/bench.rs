//! `pagoda bench`: a page-sized read/write workload against a region, through
//! the local cache, reporting throughput, latency percentiles, hit ratio and
//! bytes moved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pagoda::{Client, ClientOptions, Region, RegionOptions};
use pagoda_node::{Node, NodeConfig};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::NodeAddress;
use crate::size::{format_bytes, parse_size};

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Every page equally likely.
    Uniform,
    /// Zipf-distributed page popularity, hot pages scattered over the region.
    Zipf,
    /// Each thread walks its share of the region in order, wrapping around.
    Seq,
}

/// Arguments of `pagoda bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Start a node in this process on a loopback port instead of using
    /// --node (a PAGODA_NODE in the environment is then ignored).
    #[arg(long)]
    embedded: bool,
    /// The node's address.
    #[arg(long, env = "PAGODA_NODE")]
    node: Option<String>,
    /// A file holding the token of the credential to authenticate as.
    #[arg(long, env = "PAGODA_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The credential the token belongs to; `default` is the node's own
    /// --token-file token.
    #[arg(long, env = "PAGODA_CREDENTIAL", value_name = "NAME", default_value = pagoda::DEFAULT_CREDENTIAL)]
    credential: String,
    /// How to speak TLS to --node.
    #[command(flatten)]
    tls: crate::TlsArgs,
    /// Replicate the benchmark region: a replica on each of these nodes
    /// (HOST:PORT, comma separated), with the node benchmarked as primary.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    replicas: Vec<String>,
    /// With --replicas: when a write is acknowledged, `sync` (once every
    /// in-sync replica has it) or `async` (by the primary alone).
    #[arg(long, value_enum, default_value_t = crate::region::Mode::Sync, requires = "replicas")]
    mode: crate::region::Mode,
    /// Size of the benchmark region.
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    region_size: u64,
    /// Size of the local cache.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    cache: u64,
    /// Page size of the region (and the size of each operation).
    #[arg(long, value_parser = parse_size, default_value = "4KiB")]
    page_size: u64,
    /// The access pattern.
    #[arg(long, value_enum, default_value_t = Workload::Uniform)]
    workload: Workload,
    /// Zipf skew (theta) for --workload zipf.
    #[arg(long, default_value_t = 0.99)]
    zipf_theta: f64,
    /// Fraction of operations that are reads.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Threads issuing operations.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// How long to run, in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// How long to run the workload unmeasured first, so that the cache is
    /// warm when measuring starts, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Most operations per thread (a bound in case the duration is huge).
    #[arg(long, default_value_t = 100_000_000)]
    ops_max: u64,
    /// Skip writing every page before the run (unwritten pages read as zeros
    /// without the node touching RAM, which flatters reads).
    #[arg(long)]
    no_prefill: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed for the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Turn off the region's read-ahead of sequential and strided streams.
    #[arg(long)]
    no_prefetch: bool,
    /// Read pages over TCP even from a node on this machine, instead of
    /// copying them from its shared memory (the co-located path).
    #[arg(long)]
    no_colocated: bool,
}

/// The figures `pagoda bench` reports; the JSON field names are documented in
/// docs/benchmarks.md.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub workload: Workload,
    pub threads: usize,
    pub region_bytes: u64,
    pub cache_bytes: u64,
    pub page_bytes: u64,
    /// Replicas of the benchmark region (0: not replicated).
    pub replicas: usize,
    /// `sync` or `async` with replicas; `None` without.
    pub replication_mode: Option<&'static str>,
    pub policy: String,
    /// How misses reached the node's pages: `tcp`, `tls` or `colocated`
    /// (from the node's shared memory, the node being on this host).
    pub transport: &'static str,
    pub duration_s: f64,
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub ops_per_s: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub hit_ratio: f64,
    pub bytes_fetched: u64,
    pub bytes_written_back: u64,
    /// Pages read ahead, used after arriving, arrived too late (or were
    /// fetched on demand first), and evicted unused.
    pub prefetch_issued: u64,
    pub prefetch_used: u64,
    pub prefetch_late: u64,
    pub prefetch_wasted: u64,
}

/// Picks pages for one thread.
pub struct PagePicker {
    workload: Workload,
    pages: u64,
    zipf: Option<Zipf<f64>>,
    cursor: u64,
}

impl PagePicker {
    pub fn new(
        workload: Workload,
        pages: u64,
        theta: f64,
        thread: usize,
        threads: usize,
    ) -> Result<PagePicker, String> {
        let zipf = match workload {
            Workload::Zipf => Some(
                Zipf::new(pages, theta).map_err(|e| format!("zipf with theta {theta}: {e:?}"))?,
            ),
            _ => None,
        };
        Ok(PagePicker {
            workload,
            pages,
            zipf,
            cursor: pages / threads as u64 * thread as u64,
        })
    }

    pub fn next(&mut self, rng: &mut impl Rng) -> u64 {
        match self.workload {
            Workload::Uniform => rng.gen_range(0..self.pages),
            Workload::Zipf => {
                let rank = self.zipf.as_ref().expect("zipf").sample(rng) as u64 - 1;
                // Scatter ranks over the region so that hot pages are not
                // neighbours (as YCSB's scrambled Zipfian does).
                scramble(rank) % self.pages
            }
            Workload::Seq => {
                let page = self.cursor;
                self.cursor = (self.cursor + 1) % self.pages;
                page
            }
        }
    }
}

/// A bijective 64-bit mix (splitmix64's finalizer).
fn scramble(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn check(args: &BenchArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err(format!(
            "--read-ratio {} must be between 0 and 1",
            args.read_ratio
        ));
    }
    if args.threads == 0 || args.threads > 1024 {
        return Err("--threads must be from 1 to 1024".into());
    }
    if !(args.duration > 0.0 && args.duration <= 86_400.0) {
        return Err("--duration must be more than 0 and at most a day".into());
    }
    if !(args.warmup >= 0.0 && args.warmup <= 86_400.0) {
        return Err("--warmup must be from 0 to a day".into());
    }
    if args.workload == Workload::Zipf && !(args.zipf_theta > 0.0 && args.zipf_theta.is_finite()) {
        return Err("--zipf-theta must be positive".into());
    }
    if !args.embedded && args.node.is_none() {
        return Err("give --node ADDR or --embedded".into());
    }
    // --embedded wins over a node from the environment, not over one given
    // on the command line (clap cannot tell the two apart).
    if args.embedded
        && let Some(node) = &args.node
        && std::env::var("PAGODA_NODE").ok().as_ref() != Some(node)
    {
        return Err(format!(
            "--embedded starts a node of its own: give it or --node {node}, not both"
        ));
    }
    crate::region::check_replicas(&args.replicas)?;
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    check(&args)?;
    let report = execute(&args)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Runs the benchmark and returns its figures.
pub fn execute(args: &BenchArgs) -> Result<BenchReport, String> {
    let colocated = if args.no_colocated {
        pagoda::Colocated::Off
    } else {
        pagoda::Colocated::Auto
    };
    let mut _embedded: Option<(Node, tempfile::TempDir)> = None;
    let client = if args.embedded {
        let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary data dir: {e}"))?;
        // Room for the region plus slack, rounded up to whole segments.
        let capacity = args.region_size + 64 * 1024 * 1024;
        let config = NodeConfig::new(
            ([127, 0, 0, 1], 0).into(),
            capacity,
            dir.path().to_path_buf(),
        );
        let node = Node::start(config).map_err(|e| e.to_string())?;
        let options = ClientOptions {
            colocated,
            ..ClientOptions::default()
        };
        let client = Client::connect(node.local_addr(), options).map_err(crate::client_error)?;
        _embedded = Some((node, dir));
        client
    } else {
        let address = NodeAddress {
            node: args.node.clone().expect("checked"),
            token_file: args.token_file.clone(),
            credential: args.credential.clone(),
            tls: args.tls.clone(),
        };
        let mut options = address.client_options(
            std::time::Duration::from_secs(pagoda::TIMEOUT_S_DEFAULT),
            std::time::Duration::from_secs(pagoda::RECONNECT_FOR_S_DEFAULT),
        )?;
        options.colocated = colocated;
        address.connect_options(options)?
    };
    let name = format!("bench-{}-{}", std::process::id(), args.seed);
    let page_size = u32::try_from(args.page_size).map_err(|_| "page size too large".to_string())?;
    let info = if args.replicas.is_empty() {
        client.create_region(&name, args.region_size, page_size)
    } else {
        let replicas: Vec<&str> = args.replicas.iter().map(String::as_str).collect();
        client.create_replicated_region(
            &name,
            args.region_size,
            page_size,
            &replicas,
            args.mode.into(),
        )
    }
    .map_err(|e| format!("creating the benchmark region: {e}"))?;
    let result = (|| {
        if !args.no_prefill {
            prefill(&client, &info, !args.json)?;
        }
        let region = client
            .open_region(
                &name,
                RegionOptions {
                    prefetch: if args.no_prefetch {
                        pagoda::PrefetchConfig::off()
                    } else {
                        pagoda::PrefetchConfig::default()
                    },
                    ..RegionOptions::with_cache_bytes(args.cache)
                },
            )
            .map_err(crate::client_error)?;
        measure(args, Arc::new(region), &client)
    })();
    if let Err(error) = client.delete_region(&name) {
        eprintln!("warning: could not delete benchmark region {name:?}: {error}");
    }
    result
}

/// Writes every page once, in large batches, with a progress bar.
pub fn prefill(client: &Client, info: &pagoda::RegionInfo, show: bool) -> Result<(), String> {
    let page_size = info.page_size as usize;
    let pages = info.size / page_size as u64;
    let batch = client.raw().batch_pages_max(page_size).min(256) as u64;
    let bar = if show {
        indicatif::ProgressBar::new(info.size)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "prefill {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("template"),
    );
    let mut data = vec![0u8; batch as usize * page_size];
    let mut first = 0;
    while first < pages {
        let count = batch.min(pages - first);
        let list: Vec<u64> = (first..first + count).collect();
        for (index, page) in data
            .chunks_exact_mut(page_size)
            .take(count as usize)
            .enumerate()
        {
            page.fill(((first + index as u64) % 251) as u8 + 1);
        }
        client
            .raw()
            .write_pages(info, &list, &data[..count as usize * page_size])
            .map_err(|e| format!("prefilling the region: {e}"))?;
        bar.inc(count * page_size as u64);
        first += count;
    }
    bar.finish_and_clear();
    Ok(())
}

fn measure(args: &BenchArgs, region: Arc<Region>, client: &Client) -> Result<BenchReport, String> {
    let pages = region.len() / region.page_size() as u64;
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64(args.warmup);
    // Threads warm up, meet here, wait while the counters are read, then
    // measure together.
    let warmed = Arc::new(std::sync::Barrier::new(args.threads + 1));
    let start = Arc::new(std::sync::Barrier::new(args.threads + 1));
    let handles: Vec<_> = (0..args.threads)
        .map(|thread| {
            let region = region.clone();
            let args = args.clone();
            let (warmed, start) = (warmed.clone(), start.clone());
            std::thread::spawn(move || -> Result<(Histogram<u64>, u64, u64), String> {
                let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed * 1_000 + thread as u64);
                let picker =
                    PagePicker::new(args.workload, pages, args.zipf_theta, thread, args.threads);
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
                let page_size = region.page_size();
                let mut buffer = vec![0u8; page_size];
                let (mut reads, mut writes) = (0u64, 0u64);
                let mut run = |picker: &mut PagePicker,
                               phase: Duration,
                               record: bool|
                 -> Result<(), String> {
                    let deadline = Instant::now() + phase;
                    for op in 0..args.ops_max {
                        if op.is_multiple_of(64) && Instant::now() >= deadline {
                            break;
                        }
                        let page = picker.next(&mut rng);
                        let offset = page * page_size as u64;
                        let began = Instant::now();
                        if rng.r#gen::<f64>() < args.read_ratio {
                            region
                                .read_at(offset, &mut buffer)
                                .map_err(crate::client_error)?;
                            reads += u64::from(record);
                        } else {
                            buffer[0] = buffer[0].wrapping_add(1);
                            region
                                .write_at(offset, &buffer)
                                .map_err(crate::client_error)?;
                            writes += u64::from(record);
                        }
                        if record {
                            let _ = histogram.record(began.elapsed().as_nanos().max(1) as u64);
                        }
                    }
                    Ok(())
                };
                // Errors are reported only after the barriers, so that the
                // other threads are never left waiting.
                let warm_result =
                    picker.and_then(|mut picker| run(&mut picker, warmup, false).map(|_| picker));
                warmed.wait();
                start.wait();
                let mut picker = warm_result?;
                run(&mut picker, duration, true)?;
                Ok((histogram, reads, writes))
            })
        })
        .collect();
    warmed.wait();
    let before = region.cache_stats();
    let started = Instant::now();
    start.wait();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let (mut reads, mut writes) = (0, 0);
    for handle in handles {
        let (thread_histogram, thread_reads, thread_writes) = handle
            .join()
            .map_err(|_| "a benchmark thread panicked".to_string())??;
        histogram.add(thread_histogram).expect("same bounds");
        reads += thread_reads;
        writes += thread_writes;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = region.cache_stats();
    let page_bytes = region.page_size() as u64;
    let ops = reads + writes;
    let hits = after.hits - before.hits;
    let misses = after.misses - before.misses;
    Ok(BenchReport {
        workload: args.workload,
        threads: args.threads,
        region_bytes: region.len(),
        cache_bytes: args.cache,
        page_bytes,
        replicas: args.replicas.len(),
        replication_mode: (!args.replicas.is_empty())
            .then(|| pagoda::ReplicationMode::from(args.mode).name()),
        policy: region.policy_name().to_string(),
        transport: client.transport().name(),
        duration_s: elapsed,
        ops,
        reads,
        writes,
        ops_per_s: ops as f64 / elapsed,
        latency_us_p50: histogram.value_at_quantile(0.50) as f64 / 1_000.0,
        latency_us_p99: histogram.value_at_quantile(0.99) as f64 / 1_000.0,
        latency_us_p999: histogram.value_at_quantile(0.999) as f64 / 1_000.0,
        hit_ratio: if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        },
        bytes_fetched: (after.pages_fetched - before.pages_fetched) * page_bytes,
        bytes_written_back: (after.pages_written_back - before.pages_written_back) * page_bytes,
        prefetch_issued: after.prefetch_issued - before.prefetch_issued,
        prefetch_used: after.prefetch_used - before.prefetch_used,
        prefetch_late: after.prefetch_late - before.prefetch_late,
        prefetch_wasted: after.prefetch_wasted - before.prefetch_wasted,
    })
}

fn print_report(report: &BenchReport) {
    println!(
        "workload {:?}, {} thread(s), region {}, cache {}, pages of {}, policy {}, transport {}",
        report.workload,
        report.threads,
        format_bytes(report.region_bytes),
        format_bytes(report.cache_bytes),
        format_bytes(report.page_bytes),
        report.policy,
        report.transport
    );
    if let Some(mode) = report.replication_mode {
        println!("replicated: {} replica(s), {mode}", report.replicas);
    }
    println!("{:<22} {:>14}", "operations", report.ops);
    println!("{:<22} {:>14.0}", "operations/s", report.ops_per_s);
    println!("{:<22} {:>14.2}", "latency p50 (µs)", report.latency_us_p50);
    println!("{:<22} {:>14.2}", "latency p99 (µs)", report.latency_us_p99);
    println!(
        "{:<22} {:>14.2}",
        "latency p999 (µs)", report.latency_us_p999
    );
    println!("{:<22} {:>14.4}", "hit ratio", report.hit_ratio);
    println!(
        "{:<22} {:>14}",
        "fetched",
        format_bytes(report.bytes_fetched)
    );
    println!(
        "{:<22} {:>14}",
        "written back",
        format_bytes(report.bytes_written_back)
    );
    println!(
        "{:<22} {:>14}",
        "read ahead (pages)",
        format!(
            "{} ({} used, {} late, {} wasted)",
            report.prefetch_issued,
            report.prefetch_used,
            report.prefetch_late,
            report.prefetch_wasted
        )
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the pickers: every page they produce is inside the region, and
    // the sequential one walks in order from its thread's share.
    #[test]
    fn pickers_stay_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for workload in [Workload::Uniform, Workload::Zipf, Workload::Seq] {
            let mut picker = PagePicker::new(workload, 1000, 0.99, 1, 4).unwrap();
            for _ in 0..10_000 {
                assert!(picker.next(&mut rng) < 1000);
            }
        }
        let mut picker = PagePicker::new(Workload::Seq, 100, 0.99, 1, 2).unwrap();
        assert_eq!((picker.next(&mut rng), picker.next(&mut rng)), (50, 51));
    }
}

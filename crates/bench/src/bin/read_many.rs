//! Independent misses of one thread: a batch of scattered 4 KiB reads, each
//! a miss, read with one `read_at` after another or with one `read_many`,
//! over a node on loopback (TCP, and the co-located path), alternating the
//! two ways batch by batch; medians per batch and their ratio.
//!
//! `cargo run --release -p pagoda-bench --bin read_many [-- --batch N --batches N --rounds N]`

use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, Colocated, Region, RegionOptions};
use pagoda_bench::PAGE_BYTES;
use pagoda_bench::fixture::{LocalNode, write_whole_region};
use pagoda_cache::PrefetchConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The region: large against the cache, so nearly every read misses.
const REGION_BYTES: u64 = 256 << 20;
/// The cache: small, so that pages read in one batch are gone by the next.
const CACHE_BYTES: u64 = 1 << 20;
/// Client and node threads spin this long before they block.
const SPIN: Duration = Duration::from_micros(50);

struct Args {
    batch: usize,
    batches: usize,
    rounds: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        batch: 16,
        batches: 2_000,
        rounds: 5,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let number: usize = value
            .parse()
            .map_err(|_| format!("{flag} {value}: not a number"))?;
        if number == 0 {
            return Err(format!("{flag} must be at least 1"));
        }
        match flag.as_str() {
            "--batch" => args.batch = number.min(1024),
            "--batches" => args.batches = number,
            "--rounds" => args.rounds = number,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Microseconds per batch for each way, `batches` batches alternating.
fn round(region: &Region, args: &Args, rng: &mut StdRng) -> (f64, f64) {
    let pages = REGION_BYTES / PAGE_BYTES as u64;
    let mut buffers = vec![vec![0u8; PAGE_BYTES]; args.batch];
    let (mut one_by_one, mut together) = (Duration::ZERO, Duration::ZERO);
    for batch in 0..args.batches {
        let offsets: Vec<u64> = (0..args.batch)
            .map(|_| rng.gen_range(0..pages) * PAGE_BYTES as u64)
            .collect();
        let began = Instant::now();
        if batch % 2 == 0 {
            for (offset, buffer) in offsets.iter().zip(buffers.iter_mut()) {
                region.read_at(*offset, buffer).expect("read_at");
            }
            one_by_one += began.elapsed();
        } else {
            let mut reads: Vec<(u64, &mut [u8])> = offsets
                .iter()
                .zip(buffers.iter_mut())
                .map(|(offset, buffer)| (*offset, buffer.as_mut_slice()))
                .collect();
            region.read_many(&mut reads).expect("read_many");
            together += began.elapsed();
        }
        // Every page holds its number's low byte (write_whole_region).
        for (offset, buffer) in offsets.iter().zip(&buffers) {
            let page = offset / PAGE_BYTES as u64;
            assert!(buffer.iter().all(|&byte| byte == page as u8), "page {page}");
        }
    }
    let per = |total: Duration| total.as_secs_f64() * 1e6 / (args.batches / 2) as f64;
    (per(one_by_one), per(together))
}

fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("read_many: {message}");
            std::process::exit(2);
        }
    };
    let node = LocalNode::start(REGION_BYTES * 2, SPIN);
    let setup = node.client(SPIN);
    let info = setup
        .create_region("read-many", REGION_BYTES, PAGE_BYTES as u32)
        .expect("the region is created");
    write_whole_region(&setup, &info);
    println!(
        "{} scattered 4 KiB misses per batch, {} batches per round, {} rounds; µs per batch (median of rounds)",
        args.batch, args.batches, args.rounds
    );
    println!(
        "{:<10} {:>14} {:>14} {:>8}",
        "path", "read_at each", "read_many", "ratio"
    );
    let mut rng = StdRng::seed_from_u64(7);
    for (name, colocated) in [("tcp", Colocated::Off), ("colocated", Colocated::Auto)] {
        let client = Client::connect(
            node.addr(),
            ClientOptions {
                spin: SPIN,
                colocated,
                ..ClientOptions::default()
            },
        )
        .expect("the client connects");
        let options = RegionOptions {
            cache_bytes: CACHE_BYTES,
            prefetch: PrefetchConfig::off(),
            ..RegionOptions::default()
        };
        let region = client
            .open_region_read_only("read-many", options)
            .expect("open");
        let transport = client.transport();
        let (mut each, mut many) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            let (a, b) = round(&region, &args, &mut rng);
            each.push(a);
            many.push(b);
        }
        let (each, many) = (median(&mut each), median(&mut many));
        println!(
            "{:<10} {:>14.1} {:>14.1} {:>7.2}x   (transport {transport})",
            name,
            each,
            many,
            each / many
        );
    }
}

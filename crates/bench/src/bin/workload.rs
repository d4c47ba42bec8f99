//! The headline comparison's workload: one program, four backends.
//!
//! A dataset of N records of 4 KiB each is held in one of:
//!
//! - a plain anonymous mapping (`--backend local`, or `--backend swap` when
//!   the driver has put this process in a memory cgroup so that the kernel
//!   swaps the rest);
//! - a Pagoda region on a memory node, read and written through its local
//!   cache with `read_at` and `write_at` (`--backend pagoda`; the cache is
//!   the size of that limit), its misses over the connection, or copied
//!   from the node's shared memory (`--backend pagoda-colocated`, the node
//!   on this host);
//! - the same kind of region *mapped* into the process (`--backend mapped`:
//!   `Region::map` with a local budget of that size), reached by plain loads
//!   and stores that fault its pages in, over the connection or copied from
//!   the node's shared memory (`--backend mapped-colocated`).
//!
//! Everything above the three-method [`Records`] trait is one code path: the
//! operation sequence, the timing, the checksums. And `local`, `swap` and
//! `mapped` share one implementation of the trait ([`Memory`]), which copies
//! records in and out of a `&mut [u8]`: only where that slice comes from
//! differs ([`Owner`]). So a `mapped` run executes exactly the instructions
//! of a `local` run, and the difference between them is what the page
//! faults cost: transparency shown, not claimed.
//!
//! Workloads, run one after another in the same process over the same dataset:
//!
//! - `kv90`, `kv50`: key-value, scrambled Zipf (theta 0.99) record picks,
//!   90 % / 50 % reads, the rest whole-record updates;
//! - `uniform90`: uniform random picks, 90 % reads;
//! - `scan`: a sequential scan, wrapping around;
//! - `chase`: pointer chasing: every record's first word holds the index of
//!   the next record of one random cycle through all records, and each read's
//!   successor is taken from the bytes just read.
//! - `indirect`: index pages read in order, each followed by the records it
//!   lists (an inverted list, or the probe side of a hash join). Every
//!   [`INDEX_EVERY`]th record is an index page: its words 2.., taken modulo
//!   the number of records (and moved off index pages), are
//!   [`INDIRECT_FANOUT`] record ids in random order. With `--references`, a
//!   Pagoda region is given a reference extractor that knows this layout (an
//!   index page is one whose own id, word 1, is a multiple of
//!   `INDEX_EVERY`), so touching an index page reads its records ahead.
//!
//! Record contents never change: an update writes the record's own contents
//! again (a whole 4 KiB store that dirties the page like any other update). So
//! what a read returns depends only on the record index, every read can be
//! checked, and the workloads can share one loaded dataset whatever number of
//! operations each backend managed before. Half of each record is
//! pseudo-random, half a fixed text, so that it compresses about 2:1 as real
//! records do (zswap would store purely random pages uncompressed or not at
//! all).
//!
//! Each workload runs three phases from one seeded operation sequence:
//! a *check* phase of a fixed number of operations, in which every read is
//! compared byte for byte with the record's expected contents and folded
//! into a checksum that must be equal across backends (the driver asserts
//! it); a *warm-up* bounded by operations and by time; and the *measured*
//! phase, bounded by time and by operations, which gives throughput and
//! latency percentiles.
//!
//! Output: one JSON object per workload on stdout with `--json`, a line of
//! text per workload otherwise; progress goes to stderr.

use std::io::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pagoda::{Client, ClientOptions, MapOptions, Mapping, PrefetchConfig, Region, RegionOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

const USAGE: &str = "\
workload: the headline comparison's workload (local memory, kernel swap, Pagoda)

  --backend local|swap|pagoda|pagoda-colocated|mapped|mapped-colocated
                                where the records live (required): local memory,
                                local memory the kernel may swap, a Pagoda region
                                read through its cache, or a Pagoda region mapped
                                into the process (loads and stores, page faults)
  --dataset SIZE                dataset size, e.g. 4GiB (default 4GiB); or
  --records N                   number of 4 KiB records
  --workloads LIST              comma-separated, from kv90,kv50,uniform90,scan,chase,
                                indirect (default: all, in that order)
  --cache SIZE                  pagoda: the region's local cache; mapped: the
                                mapping's local budget (required for both)
  --prefetch on|off             pagoda: the region's trend read-ahead (default on)
  --prefetch-depth N            pagoda: most pages a stream reads ahead (default:
                                the product's, PrefetchConfig::default)
  --references                  pagoda: while `indirect` runs, give the region a
                                reference extractor that reads an index page's
                                record ids
  --loopback                    measure one loopback stream's bandwidth first and
                                report it with every workload (bytes/s)
  --fault-spin-us N             mapped: the first fault thread's spin after a fault
                                (default: the product's, MapOptions::spin)
  --fault-mode M                mapped: signal (faults served on the faulting thread)
                                or threads (by fault threads) (default: the product's)
  --fraction F                  local memory as a fraction of the dataset (a label,
                                and the warm-up's operation bound; default 1)
  --node ADDR                   pagoda, mapped: the memory node (default 127.0.0.1:7070)
  --duration S                  seconds of the measured phase per workload (default 10)
  --ops-max N                   most operations of the measured phase (default 2e9)
  --warmup S                    most seconds of warm-up per workload (default 5)
  --check-ops N                 operations of the checked phase (default 20000)
  --seed N                      operation sequence seed (default 42)
  --label NAME                  the backend's name in the output (default: the backend)
  --json                        one JSON object per workload on stdout";

/// Bytes per record: one page.
const RECORD_BYTES: usize = 4096;
/// 64-bit words per record.
const RECORD_WORDS: usize = RECORD_BYTES / 8;
/// Words of a record that are pseudo-random; the rest is a fixed text.
const RANDOM_WORDS: usize = RECORD_WORDS / 2;
/// Zipf skew of the key-value workloads (YCSB's default).
const ZIPF_THETA: f64 = 0.99;
/// Most records a dataset may have (16 TiB of records).
const RECORDS_MAX: u64 = 1 << 32;
/// Records loaded into a Pagoda region per request.
const LOAD_BATCH_RECORDS: usize = 256;
/// The checked phase must finish within this time, or the run fails.
const CHECK_PHASE_S_MAX: u64 = 900;
/// Seed of the dataset's contents and its pointer-chasing cycle; fixed so
/// that every run sees the same data.
const DATA_SEED: u64 = 0x5eed_da7a;
/// Records read per call while priming the starting state.
const PRIME_CHUNK_RECORDS: usize = 64;
/// Highest latency the histogram records, in nanoseconds (60 s).
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Record ids an index page lists in the `indirect` workload (words 2..).
const INDIRECT_FANOUT: usize = 128;
/// Every this many records, one is an index page of the `indirect` workload.
const INDEX_EVERY: u64 = 64;
/// How long a read-ahead of the records an index page lists may take.
const REFERENCES_DEADLINE: Duration = Duration::from_millis(20);

fn main() {
    let args = match Args::parse(std::env::args().skip(1).collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("workload: {message}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(message) = run(&args) {
        eprintln!("workload: FAILED: {message}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- arguments

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Local,
    Swap,
    Pagoda,
    /// The pagoda backend with co-located access: misses copied from the
    /// node's shared memory (the node runs on this host).
    PagodaColocated,
    Mapped,
    /// The mapped backend with co-located access.
    MappedColocated,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Kv90,
    Kv50,
    Uniform90,
    Scan,
    Chase,
    Indirect,
}

impl Workload {
    const ALL: [Workload; 6] = [
        Workload::Kv90,
        Workload::Kv50,
        Workload::Uniform90,
        Workload::Scan,
        Workload::Chase,
        Workload::Indirect,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Kv90 => "kv90",
            Workload::Kv50 => "kv50",
            Workload::Uniform90 => "uniform90",
            Workload::Scan => "scan",
            Workload::Chase => "chase",
            Workload::Indirect => "indirect",
        }
    }

    fn read_ratio(self) -> f64 {
        match self {
            Workload::Kv90 | Workload::Uniform90 => 0.9,
            Workload::Kv50 => 0.5,
            Workload::Scan | Workload::Chase | Workload::Indirect => 1.0,
        }
    }
}

struct Args {
    backend: Backend,
    label: String,
    records: u64,
    workloads: Vec<Workload>,
    cache_bytes: u64,
    /// mapped: the first fault thread's spin (`MapOptions::spin`).
    fault_spin_us: Option<u64>,
    /// mapped: `MapOptions::fault_mode`.
    fault_mode: pagoda::FaultMode,
    fraction: f64,
    node: String,
    duration: Duration,
    ops_max: u64,
    warmup: Duration,
    check_ops: u64,
    seed: u64,
    json: bool,
    /// pagoda: trend read-ahead on.
    prefetch: bool,
    /// pagoda: `PrefetchConfig::depth_max`, if given.
    prefetch_depth: Option<usize>,
    /// pagoda: the `indirect` reference extractor.
    references: bool,
    loopback: bool,
}

/// Parses `4096`, `64MiB`, `4GiB`, `1.5GiB`, `2G`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}")),
    };
    Ok((number * scale as f64) as u64)
}

impl Args {
    fn parse(argv: Vec<String>) -> Result<Args, String> {
        let mut backend = None;
        let mut label = None;
        let mut records = None;
        let mut dataset = 4u64 << 30;
        let mut workloads = Workload::ALL.to_vec();
        let mut cache_bytes = None;
        let mut fault_spin_us = None;
        let mut fault_mode = pagoda::FaultMode::default();
        let mut fraction = 1.0f64;
        let mut node = "127.0.0.1:7070".to_string();
        let mut duration = 10.0f64;
        let mut ops_max = 2_000_000_000u64;
        let mut warmup = 5.0f64;
        let mut check_ops = 20_000u64;
        let mut seed = 42u64;
        let mut json = false;
        let mut prefetch = true;
        let mut prefetch_depth = None;
        let mut references = false;
        let mut loopback = false;
        let mut iter = argv.into_iter();
        while let Some(flag) = iter.next() {
            if flag == "--json" {
                json = true;
                continue;
            }
            if flag == "--references" {
                references = true;
                continue;
            }
            if flag == "--loopback" {
                loopback = true;
                continue;
            }
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = |v: &str| -> Result<f64, String> {
                v.parse::<f64>()
                    .map_err(|_| format!("{flag}: {v:?} is not a number"))
            };
            match flag.as_str() {
                "--backend" => {
                    backend = Some(match value.as_str() {
                        "local" => Backend::Local,
                        "swap" => Backend::Swap,
                        "pagoda" => Backend::Pagoda,
                        "pagoda-colocated" => Backend::PagodaColocated,
                        "mapped" => Backend::Mapped,
                        "mapped-colocated" => Backend::MappedColocated,
                        other => return Err(format!("unknown backend {other:?}")),
                    })
                }
                "--label" => label = Some(value),
                "--prefetch-depth" => prefetch_depth = Some(number(&value)? as usize),
                "--prefetch" => {
                    prefetch = match value.as_str() {
                        "on" => true,
                        "off" => false,
                        other => return Err(format!("--prefetch {other:?}: on or off")),
                    }
                }
                "--fault-spin-us" => fault_spin_us = Some(number(&value)? as u64),
                "--fault-mode" => {
                    fault_mode = match value.as_str() {
                        "signal" => pagoda::FaultMode::Signal,
                        "threads" => pagoda::FaultMode::Auto,
                        other => {
                            return Err(format!("--fault-mode {other:?}: signal or threads"));
                        }
                    }
                }
                "--records" => records = Some(number(&value)? as u64),
                "--dataset" => dataset = parse_size(&value)?,
                "--workloads" => {
                    workloads = value
                        .split(',')
                        .map(|name| {
                            Workload::ALL
                                .into_iter()
                                .find(|w| w.name() == name.trim())
                                .ok_or_else(|| format!("unknown workload {name:?}"))
                        })
                        .collect::<Result<_, _>>()?
                }
                "--cache" => cache_bytes = Some(parse_size(&value)?),
                "--fraction" => fraction = number(&value)?,
                "--node" => node = value,
                "--duration" => duration = number(&value)?,
                "--ops-max" => ops_max = number(&value)? as u64,
                "--warmup" => warmup = number(&value)?,
                "--check-ops" => check_ops = number(&value)? as u64,
                "--seed" => seed = number(&value)? as u64,
                other => return Err(format!("unknown flag {other:?}")),
            }
        }
        let backend = backend.ok_or("--backend is required")?;
        let records = records.unwrap_or(dataset / RECORD_BYTES as u64);
        if !(2..=RECORDS_MAX).contains(&records) {
            return Err(format!("{records} records: from 2 to {RECORDS_MAX}"));
        }
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err("--fraction must be in (0, 1]".into());
        }
        if !(duration > 0.0 && duration <= 3600.0 && (0.0..=3600.0).contains(&warmup)) {
            return Err("--duration and --warmup must be from 0 to 3600 s".into());
        }
        if workloads.is_empty() {
            return Err("no workloads".into());
        }
        let cache_bytes = match backend {
            Backend::Pagoda
            | Backend::PagodaColocated
            | Backend::Mapped
            | Backend::MappedColocated => {
                cache_bytes.ok_or("--cache is required for pagoda and mapped")?
            }
            Backend::Local | Backend::Swap => 0,
        };
        Ok(Args {
            backend,
            label: label.unwrap_or_else(|| {
                match backend {
                    Backend::Local => "local",
                    Backend::Swap => "swap",
                    Backend::Pagoda => "pagoda",
                    Backend::PagodaColocated => "pagoda-colocated",
                    Backend::Mapped => "mapped",
                    Backend::MappedColocated => "mapped-colocated",
                }
                .into()
            }),
            records,
            workloads,
            cache_bytes,
            fault_spin_us,
            fault_mode,
            fraction,
            node,
            duration: Duration::from_secs_f64(duration),
            ops_max,
            warmup: Duration::from_secs_f64(warmup),
            check_ops,
            seed,
            json,
            prefetch,
            prefetch_depth,
            references,
            loopback,
        })
    }
}

// ------------------------------------------------------------------ the data

/// A splitmix64 step: a cheap, well-mixed hash of a 64-bit value.
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random bijection of `0..n` (a 4-round Feistel network on the smallest
/// even number of bits that covers `n`, with cycle walking).
struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    fn new(n: u64, seed: u64) -> Permutation {
        let bits = 64 - (n - 1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let keys = [mix(seed), mix(seed ^ 1), mix(seed ^ 2), mix(seed ^ 3)];
        Permutation { n, half_bits, keys }
    }

    fn round(&self, value: u64, key: u64) -> u64 {
        mix(value ^ key) & ((1 << self.half_bits) - 1)
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.keys {
            (left, right) = (right, left ^ self.round(right, key));
        }
        (left << self.half_bits) | right
    }

    fn feistel_inverse(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.keys.into_iter().rev() {
            (left, right) = (right ^ self.round(left, key), left);
        }
        (left << self.half_bits) | right
    }

    fn apply(&self, mut x: u64) -> u64 {
        debug_assert!(x < self.n);
        // The domain is at most 4n, so the walk takes few steps on average.
        loop {
            x = self.feistel(x);
            if x < self.n {
                return x;
            }
        }
    }

    fn invert(&self, mut x: u64) -> u64 {
        loop {
            x = self.feistel_inverse(x);
            if x < self.n {
                return x;
            }
        }
    }
}

/// A page-aligned record buffer.
#[repr(C, align(4096))]
struct Page([u8; RECORD_BYTES]);

impl Page {
    fn zeroed() -> Box<Page> {
        Box::new(Page([0; RECORD_BYTES]))
    }

    fn word(&self, index: usize) -> u64 {
        u64::from_le_bytes(
            self.0[index * 8..index * 8 + 8]
                .try_into()
                .expect("8 bytes"),
        )
    }
}

/// What every record is made of: the pointer-chasing cycle and the random
/// and fixed halves.
struct Contents {
    records: u64,
    /// The pointer-chasing cycle visits records in the order
    /// `cycle.apply(0), cycle.apply(1), ...`.
    cycle: Permutation,
    /// The pseudo-random half's base words; a record xors its own key in.
    random: Vec<u64>,
    /// The fixed, compressible half.
    text: Vec<u8>,
}

impl Contents {
    fn new(records: u64) -> Contents {
        let random = (0..RANDOM_WORDS as u64)
            .map(|w| mix(DATA_SEED ^ (w << 32)))
            .collect();
        let line = b"user=%08x status=active plan=standard region=eu-west note=lorem ipsum\n";
        let text = line
            .iter()
            .copied()
            .cycle()
            .take(RECORD_BYTES - RANDOM_WORDS * 8)
            .collect();
        Contents {
            records,
            cycle: Permutation::new(records, DATA_SEED),
            random,
            text,
        }
    }

    /// The records a page lists if it is an index page of the `indirect`
    /// workload (its id, word 1, a multiple of [`INDEX_EVERY`]): its words
    /// 2.. modulo the number of records, each moved off index pages.
    fn listed(page: &[u8], records: u64, out: &mut Vec<u64>) {
        let word = |index: usize| {
            u64::from_le_bytes(page[index * 8..index * 8 + 8].try_into().expect("8 bytes"))
        };
        if !word(1).is_multiple_of(INDEX_EVERY) {
            return;
        }
        out.extend((2..2 + INDIRECT_FANOUT).map(|index| {
            let record = word(index) % records;
            if record.is_multiple_of(INDEX_EVERY) {
                (record + 1) % records
            } else {
                record
            }
        }));
    }

    /// The record after `record` on the pointer-chasing cycle.
    fn next(&self, record: u64) -> u64 {
        let position = self.cycle.invert(record);
        self.cycle.apply((position + 1) % self.records)
    }

    /// Writes record `record`'s contents into `out`: word 0 the next record
    /// on the cycle, word 1 the record's own index, words 2.. of the first
    /// half random, the second half the fixed text.
    fn fill(&self, record: u64, out: &mut [u8]) {
        assert_eq!(out.len(), RECORD_BYTES);
        let key = mix(record ^ DATA_SEED);
        let (random, text) = out.split_at_mut(RANDOM_WORDS * 8);
        for (w, chunk) in random.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&(self.random[w] ^ key).to_le_bytes());
        }
        random[0..8].copy_from_slice(&self.next(record).to_le_bytes());
        random[8..16].copy_from_slice(&record.to_le_bytes());
        text.copy_from_slice(&self.text);
    }
}

/// A 64-bit digest of one record's bytes: four lanes of wrapping sums (cheap
/// enough to vectorize), folded and mixed.
fn digest(page: &Page) -> u64 {
    let mut lanes = [0u64; 4];
    for chunk in page.0.chunks_exact(32) {
        for (lane, word) in lanes.iter_mut().zip(chunk.chunks_exact(8)) {
            *lane = lane.wrapping_add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
    }
    mix(lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48))
}

/// Folds one read's digest into a running, order-sensitive checksum.
fn fold(checksum: u64, digest: u64) -> u64 {
    (checksum ^ digest).wrapping_mul(0x0000_0100_0000_01b3)
}

// -------------------------------------------------------------- the backends

/// Where the records live. Both methods move one whole record.
trait Records {
    fn read(&mut self, record: u64, out: &mut Page) -> Result<(), String>;
    fn write(&mut self, record: u64, data: &Page) -> Result<(), String>;
    /// Reads records `first..first + count` into `scratch` (room for
    /// [`PRIME_CHUNK_RECORDS`] records): untimed, to set the starting state.
    fn prime(&mut self, first: u64, count: usize, scratch: &mut [u8]) -> Result<(), String>;
    /// Backend counters to report, as JSON.
    fn counters(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Turns the `indirect` workload's reference extractor on or off (only
    /// a Pagoda region has one; it is on only while `indirect` runs).
    fn references(&mut self, _on: bool) {}
}

/// Records in memory this process reaches by plain loads and stores: the
/// `local`, `swap` and `mapped` backends. They differ only in where the
/// bytes come from (the [`Owner`]); every record is copied in and out of
/// the same slice by the same code.
struct Memory {
    /// The first byte of the dataset, `bytes` long; valid as long as
    /// `owner` lives.
    base: *mut u8,
    bytes: usize,
    owner: Owner,
}

/// What provides a [`Memory`]'s bytes, and frees them when dropped.
enum Owner {
    /// An anonymous private mapping of this process: `local` and `swap`
    /// (the difference is only whether the driver confines the process).
    /// Held only to be unmapped when dropped.
    Anonymous(#[allow(dead_code)] AnonymousMapping),
    /// A Pagoda region mapped into the process: `mapped`. A page not held
    /// locally faults, and the mapping fetches it from the memory node.
    Mapped(MappedRegion),
}

/// An anonymous private mapping, unmapped when dropped.
struct AnonymousMapping {
    base: *mut u8,
    bytes: usize,
}

impl AnonymousMapping {
    fn new(bytes: usize) -> Result<AnonymousMapping, String> {
        // SAFETY: a fresh anonymous mapping; no address is given.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {bytes} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(AnonymousMapping {
            base: base.cast(),
            bytes,
        })
    }
}

impl Drop for AnonymousMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}

/// A region mapped into the process. Fields drop in order: the mapping
/// first (it writes back its dirty pages and stops its fault threads),
/// then the region is deleted from the node.
struct MappedRegion {
    mapping: Mapping,
    _node: NodeRegion,
}

impl Memory {
    /// `records` records in a fresh anonymous mapping, all zeros.
    fn anonymous(records: u64) -> Result<Memory, String> {
        let bytes = (records as usize)
            .checked_mul(RECORD_BYTES)
            .ok_or("dataset too large")?;
        let anonymous = AnonymousMapping::new(bytes)?;
        Ok(Memory {
            base: anonymous.base,
            bytes,
            owner: Owner::Anonymous(anonymous),
        })
    }

    /// The records of a mapped region.
    fn mapped(mut mapping: Mapping, node: NodeRegion) -> Memory {
        let slice = mapping.as_mut_slice();
        let (base, bytes) = (slice.as_mut_ptr(), slice.len());
        // Moving the `Mapping` does not move the memory it maps: `base`
        // stays valid until the mapping is dropped with `owner`.
        Memory {
            base,
            bytes,
            owner: Owner::Mapped(MappedRegion {
                mapping,
                _node: node,
            }),
        }
    }

    fn record_mut(&mut self, record: u64) -> &mut [u8] {
        let start = record as usize * RECORD_BYTES;
        assert!(start + RECORD_BYTES <= self.bytes);
        // SAFETY: in bounds of the owner's memory, which lives as long as
        // `self`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(start), RECORD_BYTES) }
    }
}

impl Records for Memory {
    #[inline]
    fn read(&mut self, record: u64, out: &mut Page) -> Result<(), String> {
        out.0.copy_from_slice(self.record_mut(record));
        Ok(())
    }

    #[inline]
    fn write(&mut self, record: u64, data: &Page) -> Result<(), String> {
        self.record_mut(record).copy_from_slice(&data.0);
        Ok(())
    }

    fn prime(&mut self, first: u64, count: usize, scratch: &mut [u8]) -> Result<(), String> {
        for (index, out) in scratch
            .chunks_exact_mut(RECORD_BYTES)
            .take(count)
            .enumerate()
        {
            out.copy_from_slice(self.record_mut(first + index as u64));
        }
        Ok(())
    }

    fn counters(&self) -> serde_json::Value {
        match &self.owner {
            Owner::Anonymous(_) => serde_json::Value::Null,
            Owner::Mapped(mapped) => {
                let stats = mapped.mapping.stats();
                serde_json::json!({
                    "pages_fetched": stats.pages_fetched,
                    "pages_zero_filled": stats.pages_zero_filled,
                    "minor_faults": stats.minor_faults,
                    "pages_zapped": stats.pages_zapped,
                    "eviction_candidates": stats.eviction_candidates,
                    "write_faults": stats.write_faults,
                    "pages_written_back": stats.pages_written_back,
                    "evictions": stats.evictions,
                    "evictions_ahead": stats.evictions_ahead,
                    "violations": stats.violations,
                    "failed_faults": stats.failed_faults,
                    "resident_pages": stats.resident_pages,
                    "dirty_pages": stats.dirty_pages,
                })
            }
        }
    }
}

/// Counters that are levels, not counts: reported as they are at the end
/// of the measured phase rather than as its difference.
const LEVEL_COUNTERS: [&str; 3] = ["frames", "resident_pages", "dirty_pages"];

/// A region this program created on the node, deleted when dropped.
struct NodeRegion {
    client: Client,
    name: String,
}

impl Drop for NodeRegion {
    fn drop(&mut self) {
        if let Err(error) = self.client.delete_region(&self.name) {
            eprintln!("workload: could not delete region {:?}: {error}", self.name);
        }
    }
}

/// Records in a Pagoda region, through its local cache. Fields drop in
/// order: the handle is closed, then the region deleted.
struct Remote {
    region: Region,
    _node: NodeRegion,
    records: u64,
}

impl Records for Remote {
    #[inline]
    fn read(&mut self, record: u64, out: &mut Page) -> Result<(), String> {
        self.region
            .read_at(record * RECORD_BYTES as u64, &mut out.0)
            .map_err(|e| format!("read of record {record}: {e}"))
    }

    #[inline]
    fn write(&mut self, record: u64, data: &Page) -> Result<(), String> {
        self.region
            .write_at(record * RECORD_BYTES as u64, &data.0)
            .map_err(|e| format!("write of record {record}: {e}"))
    }

    fn prime(&mut self, first: u64, count: usize, scratch: &mut [u8]) -> Result<(), String> {
        // One call over adjacent records: the region fetches its misses in
        // one request.
        self.region
            .read_at(
                first * RECORD_BYTES as u64,
                &mut scratch[..count * RECORD_BYTES],
            )
            .map_err(|e| format!("read of records {first}..: {e}"))
    }

    fn references(&mut self, on: bool) {
        if !on {
            self.region.clear_reference_extractor();
            return;
        }
        let records = self.records;
        self.region.set_reference_extractor(
            move |page, out| {
                let start = out.len();
                Contents::listed(page, records, out);
                for offset in &mut out[start..] {
                    *offset *= RECORD_BYTES as u64;
                }
            },
            REFERENCES_DEADLINE,
        );
    }

    fn counters(&self) -> serde_json::Value {
        let stats = self.region.cache_stats();
        serde_json::json!({
            "frames": stats.frames,
            "hits": stats.hits,
            "misses": stats.misses,
            "evictions": stats.evictions,
            "pages_fetched": stats.pages_fetched,
            "pages_written_back": stats.pages_written_back,
            "prefetch_issued": stats.prefetch_issued,
            "prefetch_used": stats.prefetch_used,
            "prefetch_late": stats.prefetch_late,
            "prefetch_wasted": stats.prefetch_wasted,
            "prefetch_failed": stats.prefetch_failed,
            "references_invalid": stats.references_invalid,
        })
    }
}

fn load_memory(contents: &Contents) -> Result<Memory, String> {
    let mut memory = Memory::anonymous(contents.records)?;
    for record in 0..contents.records {
        contents.fill(record, memory.record_mut(record));
    }
    Ok(memory)
}

/// Creates a region on the node and writes every record into it in
/// batches, bypassing any local cache.
fn load_region(contents: &Contents, args: &Args) -> Result<NodeRegion, String> {
    let options = ClientOptions {
        client_name: "pagoda-bench-workload".into(),
        // The pagoda and mapped backends read over the connection, as they
        // always did; the co-located ones read misses from shared memory.
        colocated: if matches!(
            args.backend,
            Backend::PagodaColocated | Backend::MappedColocated
        ) {
            pagoda::Colocated::Auto
        } else {
            pagoda::Colocated::Off
        },
        ..ClientOptions::default()
    };
    let client = Client::connect(args.node.as_str(), options)
        .map_err(|e| format!("connecting to {}: {e}", args.node))?;
    let name = format!("compare-{}", std::process::id());
    let bytes = contents.records * RECORD_BYTES as u64;
    // A region left over by a killed run of the same pid would be stale.
    let _ = client.delete_region(&name);
    let info = client
        .create_region(&name, bytes, RECORD_BYTES as u32)
        .map_err(|e| format!("creating region {name:?}: {e}"))?;
    let node = NodeRegion { client, name };
    let batch = LOAD_BATCH_RECORDS.min(node.client.raw().batch_pages_max(RECORD_BYTES));
    let mut data = vec![0u8; batch * RECORD_BYTES];
    let mut list = Vec::with_capacity(batch);
    let mut first = 0u64;
    while first < contents.records {
        let count = (batch as u64).min(contents.records - first) as usize;
        list.clear();
        list.extend(first..first + count as u64);
        for (record, chunk) in list.iter().zip(data.chunks_exact_mut(RECORD_BYTES)) {
            contents.fill(*record, chunk);
        }
        node.client
            .raw()
            .write_pages(&info, &list, &data[..count * RECORD_BYTES])
            .map_err(|e| format!("loading records {first}..: {e}"))?;
        first += count as u64;
    }
    Ok(node)
}

fn load_pagoda(contents: &Contents, args: &Args) -> Result<Remote, String> {
    let node = load_region(contents, args)?;
    let region = node
        .client
        .open_region(
            &node.name,
            RegionOptions {
                prefetch: PrefetchConfig {
                    trend: args.prefetch,
                    depth_max: args
                        .prefetch_depth
                        .unwrap_or(PrefetchConfig::default().depth_max),
                    ..PrefetchConfig::default()
                },
                ..RegionOptions::with_cache_bytes(args.cache_bytes)
            },
        )
        .map_err(|e| format!("opening region {:?}: {e}", node.name))?;
    Ok(Remote {
        region,
        _node: node,
        records: contents.records,
    })
}

/// Loads the records like [`load_pagoda`] and maps the region with a local
/// budget of `--cache`.
fn load_mapped(contents: &Contents, args: &Args) -> Result<Memory, String> {
    let node = load_region(contents, args)?;
    // The handle's own page cache goes unused once the region is mapped
    // (the mapping holds its pages in a tier of its own), so it gets one
    // page rather than memory the cgroup would count against the mapping.
    let region = node
        .client
        .open_region(
            &node.name,
            RegionOptions::with_cache_bytes(RECORD_BYTES as u64),
        )
        .map_err(|e| format!("opening region {:?}: {e}", node.name))?;
    let mapping = region
        .map(MapOptions {
            spin: args.fault_spin_us.map_or(MapOptions::default().spin, |us| {
                std::time::Duration::from_micros(us)
            }),
            fault_mode: args.fault_mode,
            ..MapOptions::with_local_bytes(args.cache_bytes)
        })
        .map_err(|e| format!("mapping region {:?}: {e}", node.name))?;
    Ok(Memory::mapped(mapping, node))
}

// ------------------------------------------------------- the operation loop

/// Generates one workload's operation sequence.
struct Ops {
    workload: Workload,
    records: u64,
    rng: StdRng,
    zipf: Option<Zipf<f64>>,
    /// Scatters Zipf ranks over the dataset so hot records are not neighbours.
    scatter: Permutation,
    /// The scan's next record, or the walk's next record, or the
    /// `indirect` workload's index page.
    cursor: u64,
    /// `indirect`: the records the current index page lists, and the next
    /// one to read (`listed.len()`: read the next index page).
    listed: Vec<u64>,
    position: usize,
}

impl Ops {
    fn new(workload: Workload, contents: &Contents, seed: u64) -> Result<Ops, String> {
        let records = contents.records;
        let zipf = match workload {
            Workload::Kv90 | Workload::Kv50 => Some(
                Zipf::new(records, ZIPF_THETA).map_err(|e| format!("zipf over {records}: {e}"))?,
            ),
            _ => None,
        };
        let cursor = match workload {
            Workload::Chase => contents.cycle.apply(mix(seed) % records),
            _ => 0,
        };
        Ok(Ops {
            workload,
            records,
            rng: StdRng::seed_from_u64(seed ^ mix(workload as u64)),
            zipf,
            scatter: Permutation::new(records, seed ^ 0x5ca7),
            cursor,
            listed: Vec::with_capacity(INDIRECT_FANOUT),
            position: 0,
        })
    }

    /// The next operation: a record, and whether it is an update.
    #[inline]
    fn next(&mut self) -> (u64, bool) {
        match self.workload {
            Workload::Kv90 | Workload::Kv50 | Workload::Uniform90 => {
                let record = match &self.zipf {
                    Some(zipf) => {
                        let rank = zipf.sample(&mut self.rng) as u64 - 1;
                        self.scatter.apply(rank.min(self.records - 1))
                    }
                    None => self.rng.gen_range(0..self.records),
                };
                let update = !self.rng.gen_bool(self.workload.read_ratio());
                (record, update)
            }
            Workload::Scan => {
                let record = self.cursor;
                self.cursor = (self.cursor + 1) % self.records;
                (record, false)
            }
            Workload::Chase => (self.cursor, false),
            Workload::Indirect => {
                if self.position < self.listed.len() {
                    self.position += 1;
                    return (self.listed[self.position - 1], false);
                }
                // The next index page; `after_read` takes its list.
                let record = self.cursor;
                self.cursor = (self.cursor + INDEX_EVERY) % self.records;
                self.cursor -= self.cursor % INDEX_EVERY;
                self.listed.clear();
                self.position = 0;
                (record, false)
            }
        }
    }

    /// Told what a read returned: the walk's next step comes from the data.
    #[inline]
    fn after_read(&mut self, page: &Page) {
        if self.workload == Workload::Chase {
            self.cursor = page.word(0);
        }
        if self.workload == Workload::Indirect && self.listed.is_empty() {
            Contents::listed(&page.0, self.records, &mut self.listed);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Check,
    Warmup,
    Measure,
}

#[derive(Default)]
struct PhaseResult {
    ops: u64,
    reads: u64,
    updates: u64,
    seconds: f64,
    checksum: u64,
}

/// Runs `ops` through `records` until `ops_max` operations or `time_max`.
#[allow(clippy::too_many_arguments)]
fn run_phase(
    phase: Phase,
    records: &mut dyn Records,
    contents: &Contents,
    ops: &mut Ops,
    ops_max: u64,
    time_max: Duration,
    histogram: &mut Histogram<u64>,
) -> Result<PhaseResult, String> {
    let mut page = Page::zeroed();
    let mut expected = Page::zeroed();
    let mut update = Page::zeroed();
    let mut result = PhaseResult::default();
    let began = Instant::now();
    let deadline = began + time_max;
    while result.ops < ops_max {
        let (record, is_update) = ops.next();
        if is_update {
            // Built outside the timed part: the store is the operation.
            contents.fill(record, &mut update.0);
            let start = Instant::now();
            records.write(record, &update)?;
            let end = Instant::now();
            if phase == Phase::Measure {
                histogram.saturating_record((end - start).as_nanos() as u64);
            }
            result.updates += 1;
            if end >= deadline {
                result.ops += 1;
                break;
            }
        } else {
            let start = Instant::now();
            records.read(record, &mut page)?;
            let end = Instant::now();
            if phase == Phase::Measure {
                histogram.saturating_record((end - start).as_nanos() as u64);
            }
            // A cheap check on every read; a full one in the checked phase.
            if page.word(1) != record {
                return Err(format!(
                    "record {record} read back as record {}: wrong data",
                    page.word(1)
                ));
            }
            if phase == Phase::Check {
                contents.fill(record, &mut expected.0);
                if page.0 != expected.0 {
                    return Err(format!(
                        "record {record}: contents differ from what was written"
                    ));
                }
            }
            result.checksum = fold(result.checksum, digest(&page));
            ops.after_read(&page);
            result.reads += 1;
            if end >= deadline {
                result.ops += 1;
                break;
            }
        }
        result.ops += 1;
    }
    result.seconds = began.elapsed().as_secs_f64();
    Ok(result)
}

// ------------------------------------------------------------ measurements

/// Major and minor page faults of this process so far.
fn faults() -> (u64, u64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (usage.ru_majflt as u64, usage.ru_minflt as u64)
}

/// The kernel's swap counters (pages), system-wide.
fn vmstat() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(key, _)| matches!(*key, "pswpin" | "pswpout" | "zswpin" | "zswpout"))
        .filter_map(|(key, value)| {
            Some((key.to_string(), value.trim().parse::<u64>().ok()?.into()))
        })
        .collect()
}

fn delta(
    after: &serde_json::Map<String, serde_json::Value>,
    before: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (key, value) in after {
        let a = value.as_u64().unwrap_or(0);
        let b = before.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        out.insert(key.clone(), a.saturating_sub(b).into());
    }
    out.into()
}

/// This process's memory cgroup directory, v1 or v2, if it is not the root.
fn memory_cgroup() -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if path == "/" {
            continue;
        }
        if controllers.split(',').any(|c| c == "memory") {
            return Some(format!("/sys/fs/cgroup/memory{path}").into());
        }
        if controllers.is_empty()
            && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            return Some(format!("/sys/fs/cgroup{path}").into());
        }
    }
    None
}

fn read_number(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The cgroup's limit, peak usage and swap use, where the files exist.
fn cgroup_report() -> serde_json::Value {
    let Some(dir) = memory_cgroup() else {
        return serde_json::Value::Null;
    };
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let stat_value = |name: &str| {
        stat.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    serde_json::json!({
        "path": dir.display().to_string(),
        "limit_bytes": read_number(&dir.join("memory.limit_in_bytes"))
            .or_else(|| read_number(&dir.join("memory.max"))),
        "peak_bytes": read_number(&dir.join("memory.max_usage_in_bytes"))
            .or_else(|| read_number(&dir.join("memory.peak"))),
        "swap_bytes": stat_value("swap").or_else(|| read_number(&dir.join("memory.swap.current"))),
        "rss_bytes": stat_value("rss").or_else(|| stat_value("anon")),
    })
}

/// The share of the measured operations whose page was local, from a
/// backend's counters over the phase: the cache's hits and misses, or for a
/// mapping (whose hits no code sees) one less the pages it brought in per
/// operation, since every operation touches exactly one page.
fn hit_ratio(counters: &serde_json::Value, ops: u64) -> Option<f64> {
    let count = |name: &str| counters.get(name).and_then(serde_json::Value::as_u64);
    if let (Some(hits), Some(misses)) = (count("hits"), count("misses")) {
        return Some(hits as f64 / ((hits + misses) as f64).max(1.0));
    }
    let fetched = count("pages_fetched")? + count("pages_zero_filled")?;
    Some(1.0 - (fetched as f64 / (ops as f64).max(1.0)).min(1.0))
}

fn percentile(histogram: &Histogram<u64>, quantile: f64) -> u64 {
    if histogram.is_empty() {
        0
    } else {
        histogram.value_at_quantile(quantile)
    }
}

fn run(args: &Args) -> Result<(), String> {
    let contents = Contents::new(args.records);
    let dataset_bytes = args.records * RECORD_BYTES as u64;
    eprintln!(
        "workload: {} ({:?}), {} records ({} MiB), fraction {}",
        args.label,
        args.backend,
        args.records,
        dataset_bytes >> 20,
        args.fraction
    );
    let load_began = Instant::now();
    let mut backend: Box<dyn Records> = match args.backend {
        Backend::Local | Backend::Swap => Box::new(load_memory(&contents)?),
        Backend::Pagoda | Backend::PagodaColocated => Box::new(load_pagoda(&contents, args)?),
        Backend::Mapped | Backend::MappedColocated => Box::new(load_mapped(&contents, args)?),
    };
    let load_seconds = load_began.elapsed().as_secs_f64();
    // Every backend starts with the same records local: the last `fraction`
    // of the dataset, which is what the kernel keeps resident after the swap
    // backend's sequential load, and what Pagoda's cache or a mapping's
    // local tier holds after reading them (the bulk load bypasses both).
    let prime_began = Instant::now();
    let resident = ((args.records as f64 * args.fraction) as u64).min(args.records);
    let mut scratch = vec![0u8; PRIME_CHUNK_RECORDS * RECORD_BYTES];
    let mut first = args.records - resident;
    while first < args.records {
        let count = (PRIME_CHUNK_RECORDS as u64).min(args.records - first) as usize;
        backend.prime(first, count, &mut scratch)?;
        first += count as u64;
    }
    drop(scratch);
    let prime_seconds = prime_began.elapsed().as_secs_f64();
    eprintln!(
        "workload: loaded in {load_seconds:.1} s, primed {resident} records in {prime_seconds:.1} s"
    );
    let warmup_ops = ((args.records as f64 * args.fraction) as u64).max(1);
    // One stream in 1 MiB writes for a second (at most 16 GiB): the
    // bandwidth the scan is measured against.
    let loopback = args
        .loopback
        .then(|| pagoda_bench::raw::stream_bandwidth(Duration::from_secs(1), 1 << 20, 16 << 30));
    if let Some(bytes_per_s) = loopback {
        eprintln!(
            "workload: one loopback stream: {:.2} GB/s",
            bytes_per_s / 1e9
        );
    }
    let stdout = std::io::stdout();
    for &workload in &args.workloads {
        backend.references(args.references && workload == Workload::Indirect);
        let mut ops = Ops::new(workload, &contents, args.seed)?;
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, LATENCY_NS_MAX, 3).map_err(|e| e.to_string())?;
        let check = run_phase(
            Phase::Check,
            backend.as_mut(),
            &contents,
            &mut ops,
            args.check_ops,
            Duration::from_secs(CHECK_PHASE_S_MAX),
            &mut histogram,
        )?;
        if check.ops < args.check_ops {
            return Err(format!(
                "{}: the checked phase did only {} of {} operations in {CHECK_PHASE_S_MAX} s",
                workload.name(),
                check.ops,
                args.check_ops
            ));
        }
        let warm = run_phase(
            Phase::Warmup,
            backend.as_mut(),
            &contents,
            &mut ops,
            warmup_ops,
            args.warmup,
            &mut histogram,
        )?;
        let counters_before = backend.counters();
        let (majflt_before, minflt_before) = faults();
        let vm_before = vmstat();
        let measured = run_phase(
            Phase::Measure,
            backend.as_mut(),
            &contents,
            &mut ops,
            args.ops_max,
            args.duration,
            &mut histogram,
        )?;
        let (majflt_after, minflt_after) = faults();
        let vm_after = vmstat();
        let counters_after = backend.counters();
        let counters = match (&counters_before, &counters_after) {
            (serde_json::Value::Object(b), serde_json::Value::Object(a)) => {
                let mut d = delta(a, b);
                for level in LEVEL_COUNTERS {
                    if let Some(value) = a.get(level) {
                        d[level] = value.clone();
                    }
                }
                if let Some(ratio) = hit_ratio(&d, measured.ops) {
                    d["hit_ratio"] = ratio.into();
                }
                d
            }
            _ => serde_json::Value::Null,
        };
        let throughput = measured.ops as f64 / measured.seconds.max(1e-9);
        let document = serde_json::json!({
            "backend": args.label,
            "kind": format!("{:?}", args.backend).to_lowercase(),
            "workload": workload.name(),
            "fraction": args.fraction,
            "records": args.records,
            "dataset_bytes": dataset_bytes,
            "cache_bytes": args.cache_bytes,
            "seed": args.seed,
            "check_ops": check.ops,
            "checksum": format!("{:016x}", check.checksum),
            "check_seconds": check.seconds,
            "warmup_ops": warm.ops,
            "warmup_seconds": warm.seconds,
            "ops": measured.ops,
            "reads": measured.reads,
            "updates": measured.updates,
            "seconds": measured.seconds,
            "ops_per_sec": throughput,
            "p50_ns": percentile(&histogram, 0.50),
            "p99_ns": percentile(&histogram, 0.99),
            "p999_ns": percentile(&histogram, 0.999),
            "mean_ns": histogram.mean(),
            "measured_checksum": format!("{:016x}", measured.checksum),
            "major_faults": majflt_after - majflt_before,
            "minor_faults": minflt_after - minflt_before,
            "vmstat": delta(&vm_after, &vm_before),
            "cache": counters,
            "load_seconds": load_seconds,
            "prime_seconds": prime_seconds,
            "cgroup": cgroup_report(),
            "loopback_bytes_per_s": loopback,
            "bytes_per_s": throughput * RECORD_BYTES as f64,
        });
        let mut out = stdout.lock();
        if args.json {
            writeln!(out, "{document}").map_err(|e| e.to_string())?;
        } else {
            writeln!(
                out,
                "{:<10} {:<10} {:>6.3} {:>12.0} ops/s  p50 {:>9.2} us  p99 {:>9.2} us  checksum {}",
                args.label,
                workload.name(),
                args.fraction,
                throughput,
                percentile(&histogram, 0.50) as f64 / 1000.0,
                percentile(&histogram, 0.99) as f64 / 1000.0,
                document["checksum"].as_str().unwrap_or("")
            )
            .map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())?;
        eprintln!(
            "workload: {} done: {:.0} ops/s ({} ops in {:.1} s; warm-up {} ops in {:.1} s)",
            workload.name(),
            throughput,
            measured.ops,
            measured.seconds,
            warm.ops,
            warm.seconds
        );
    }
    Ok(())
}

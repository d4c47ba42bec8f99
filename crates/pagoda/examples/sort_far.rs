//! Sorting an array four times larger than local memory, in place, through a
//! mapped region.
//!
//! Creates a region of `--size` MiB of u64s, maps it with a local budget of
//! `--local` MiB (a quarter of it by default), fills it with pseudo-random
//! numbers through the mapping as an ordinary `&mut [u64]`, sorts it with
//! `sort_unstable`, checks that the result is sorted and a permutation of
//! what was written (the same count, wrapping sum and xor), flushes, and says
//! how many bytes each phase moved between the process and the node, as a
//! multiple of the region's size. Finally a second handle reads the first and
//! last numbers back from the node.
//!
//! ```text
//! cargo run --release -p pagoda --example sort_far
//! cargo run --release -p pagoda --example sort_far -- --size 1024 --local 128
//! ```

mod common;

use std::time::Instant;

use pagoda::{MapOptions, MappingStats, RegionOptions};

const USAGE: &str = "sort_far [--node ADDR] [--token-file PATH] [--size MIB] [--local MIB]";

/// The region's page size: the system's, so that the mapping's pages are
/// the kernel's.
const PAGE_BYTES: u64 = 4096;

/// A small pseudo-random generator (splitmix64): the numbers to sort.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// What a phase moved over the network, from the mapping's counters before
/// and after it.
struct Moved {
    fetched: u64,
    zero_filled: u64,
    written_back: u64,
    minor_faults: u64,
    evictions: u64,
}

impl Moved {
    fn between(before: MappingStats, after: MappingStats) -> Moved {
        Moved {
            fetched: after.pages_fetched - before.pages_fetched,
            zero_filled: after.pages_zero_filled - before.pages_zero_filled,
            written_back: after.pages_written_back - before.pages_written_back,
            minor_faults: after.minor_faults - before.minor_faults,
            evictions: after.evictions - before.evictions,
        }
    }

    /// Prints one line: pages fetched and written back (and zero-filled,
    /// which cost no transfer) in bytes and as a multiple of the region.
    fn print(&self, phase: &str, seconds: f64, region_bytes: u64) {
        let multiple = |pages: u64| (pages * PAGE_BYTES) as f64 / region_bytes as f64;
        println!(
            "{phase:<8} {seconds:>7.2} s  fetched {:>7} MiB ({:.2}×)  written back {:>7} MiB ({:.2}×)  \
             zero-filled {} MiB ({:.2}×)  minor faults {}  evictions {}",
            (self.fetched * PAGE_BYTES) >> 20,
            multiple(self.fetched),
            (self.written_back * PAGE_BYTES) >> 20,
            multiple(self.written_back),
            (self.zero_filled * PAGE_BYTES) >> 20,
            multiple(self.zero_filled),
            self.minor_faults,
            self.evictions,
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(&common::Args::parse(USAGE, &["size", "local"]))
}

fn run(args: &common::Args) -> Result<(), Box<dyn std::error::Error>> {
    let size_mib = args.number("size", 256).max(1);
    let local_mib = args.number("local", size_mib.div_ceil(4)).max(1);
    let region_bytes = size_mib << 20;
    let local_bytes = local_mib << 20;
    let (client, embedded) = args.connect()?;

    let name = format!("sort-far-{}", std::process::id());
    client.create_region(&name, region_bytes, PAGE_BYTES as u32)?;
    let region = client.open_region(&name, RegionOptions::default())?;
    let mut mapping = region.map(MapOptions::with_local_bytes(local_bytes))?;
    println!(
        "region {name:?}: {size_mib} MiB ({} u64s), mapped with {local_mib} MiB local",
        region_bytes / 8
    );

    // Fill, keeping what a permutation preserves: the wrapping sum and the
    // xor of the numbers.
    let phases_began = Instant::now();
    let initial = mapping.stats();
    let mut stats = initial;
    let words: &mut [u64] = pagoda::bytemuck::cast_slice_mut(mapping.as_mut_slice());
    let mut rng = SplitMix(0x5eed);
    let (mut sum, mut xor) = (0u64, 0u64);
    for word in words.iter_mut() {
        let value = rng.next();
        *word = value;
        sum = sum.wrapping_add(value);
        xor ^= value;
    }
    let after = mapping.stats();
    Moved::between(stats, after).print("fill", phases_began.elapsed().as_secs_f64(), region_bytes);
    stats = after;

    let started = Instant::now();
    let words: &mut [u64] = pagoda::bytemuck::cast_slice_mut(mapping.as_mut_slice());
    words.sort_unstable();
    let after = mapping.stats();
    Moved::between(stats, after).print("sort", started.elapsed().as_secs_f64(), region_bytes);
    stats = after;

    let started = Instant::now();
    let words: &[u64] = pagoda::bytemuck::cast_slice(mapping.as_slice());
    // One pass, so that the check reads the far array once.
    let (mut sorted_sum, mut sorted_xor, mut previous) = (0u64, 0u64, 0u64);
    for (index, &word) in words.iter().enumerate() {
        if word < previous {
            return Err(format!("not sorted at index {index}").into());
        }
        previous = word;
        sorted_sum = sorted_sum.wrapping_add(word);
        sorted_xor ^= word;
    }
    if (sorted_sum, sorted_xor) != (sum, xor) {
        return Err("the sorted array is not a permutation of what was written".into());
    }
    let (first, last) = (words[0], words[words.len() - 1]);
    let after = mapping.stats();
    Moved::between(stats, after).print("check", started.elapsed().as_secs_f64(), region_bytes);
    stats = after;

    let started = Instant::now();
    mapping.flush()?;
    let after = mapping.stats();
    Moved::between(stats, after).print("flush", started.elapsed().as_secs_f64(), region_bytes);

    let total = Moved::between(initial, after);
    let seconds = phases_began.elapsed().as_secs_f64();
    let moved_pages = total.fetched + total.written_back;
    println!(
        "sorted {} u64s ({size_mib} MiB, {local_mib} MiB local) in {seconds:.2} s: \
         {} MiB fetched + {} MiB written back = {} MiB over the network, {:.2}× the region \
         ({} MiB zero-filled locally, {:.2}×)",
        region_bytes / 8,
        (total.fetched * PAGE_BYTES) >> 20,
        (total.written_back * PAGE_BYTES) >> 20,
        (moved_pages * PAGE_BYTES) >> 20,
        (moved_pages * PAGE_BYTES) as f64 / region_bytes as f64,
        (total.zero_filled * PAGE_BYTES) >> 20,
        (total.zero_filled * PAGE_BYTES) as f64 / region_bytes as f64,
    );
    mapping.unmap()?;

    // What the node holds now, through a handle of its own.
    let reader = client.open_region_read_only(&name, RegionOptions::with_cache_bytes(1 << 20))?;
    let (node_first, node_last) = (
        reader.read_value::<u64>(0)?,
        reader.read_value::<u64>(region_bytes - 8)?,
    );
    if (node_first, node_last) != (first, last) {
        return Err("the node holds other first and last numbers than the mapping had".into());
    }
    println!("the node holds the sorted array: first {first:#018x}, last {last:#018x}");
    drop(reader);
    client.delete_region(&name)?;
    drop(client);
    drop(embedded);
    Ok(())
}

#[cfg(test)]
mod tests {
    // Guards the example itself (`cargo test` runs it, small): an array four
    // times its local budget sorts in place through the mapping, and the node
    // ends up holding the sorted numbers.
    #[test]
    fn sorts_an_array_four_times_its_local_budget() {
        let args = super::common::Args::from_pairs(&[("size", "4"), ("local", "1")]);
        super::run(&args).unwrap();
    }
}

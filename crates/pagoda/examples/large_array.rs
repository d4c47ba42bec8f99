//! A large array of f32 embeddings in far memory, with typed access.
//!
//! Writes `--rows` embeddings of `--dimensions` f32 each into a region (the
//! array is larger than the local cache, so most of it lives only on the
//! node), reads every row back through a second client with a cold cache and
//! checks it, then answers a nearest-neighbour query by scanning the array.
//!
//! ```text
//! cargo run -p pagoda --example large_array
//! cargo run -p pagoda --example large_array -- --node 127.0.0.1:7070 --rows 100000
//! ```

mod common;

use std::time::Instant;

use pagoda::RegionOptions;

const USAGE: &str = "large_array [--node ADDR] [--token-file PATH] [--rows N] [--dimensions N]";

/// The value stored at `dimension` of embedding `row`: made up, but checkable.
fn component(row: u64, dimension: u64) -> f32 {
    let mixed = (row.wrapping_mul(2_654_435_761) ^ dimension.wrapping_mul(40_503)) % 10_007;
    mixed as f32 / 10_007.0 - 0.5
}

fn embedding(row: u64, dimensions: u64) -> Vec<f32> {
    (0..dimensions).map(|d| component(row, d)).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(&common::Args::parse(USAGE, &["rows", "dimensions"]))
}

fn run(args: &common::Args) -> Result<(), Box<dyn std::error::Error>> {
    let rows = args.number("rows", 20_000);
    let dimensions = args.number("dimensions", 256);
    let (client, embedded) = args.connect()?;

    // One row is `dimensions` f32 values; rows sit one after another.
    let row_bytes = dimensions * size_of::<f32>() as u64;
    let page_size = 64 * 1024;
    let region_bytes = (rows * row_bytes).div_ceil(page_size) * page_size;
    let name = format!("embeddings-{rows}x{dimensions}");
    // A cache of 4 MiB, a fraction of the array: pages go to the node as
    // they are evicted.
    let options = RegionOptions::with_cache_bytes(4 << 20);
    let region = client.open_or_create_region(&name, region_bytes, page_size as u32, options)?;
    println!(
        "region {name:?}: {rows} embeddings of {dimensions} f32, {} MiB",
        region_bytes >> 20
    );

    let started = Instant::now();
    for row in 0..rows {
        region.write_slice(row * row_bytes, &embedding(row, dimensions))?;
    }
    region.flush()?; // every row is now on the node
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "wrote {} MiB in {seconds:.2} s ({:.0} MiB/s)",
        (rows * row_bytes) >> 20,
        (rows * row_bytes) as f64 / (1 << 20) as f64 / seconds
    );
    drop(region);

    // A second client, as another process would, reading with a cold cache.
    let reader_client = pagoda::Client::connect(client.peer(), args.client_options()?)?;
    let reader =
        reader_client.open_region_read_only(&name, RegionOptions::with_cache_bytes(4 << 20))?;
    let started = Instant::now();
    let mut row_values = vec![0f32; dimensions as usize];
    for row in 0..rows {
        reader.read_slice(row * row_bytes, &mut row_values)?;
        if row_values != embedding(row, dimensions) {
            return Err(format!("embedding {row} read back differently").into());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("read back and checked every embedding in {seconds:.2} s");

    // Nearest neighbour of a query by inner product, scanning the array a
    // block of rows at a time.
    let query = embedding(rows / 2, dimensions);
    let block_rows = 256;
    let mut block = vec![0f32; (block_rows * dimensions) as usize];
    let (mut best_row, mut best_score) = (0, f32::MIN);
    for first in (0..rows).step_by(block_rows as usize) {
        let count = block_rows.min(rows - first);
        let block = &mut block[..(count * dimensions) as usize];
        reader.read_slice(first * row_bytes, block)?;
        for (offset, values) in block.chunks_exact(dimensions as usize).enumerate() {
            let score: f32 = values.iter().zip(&query).map(|(a, b)| a * b).sum();
            if score > best_score {
                (best_row, best_score) = (first + offset as u64, score);
            }
        }
    }
    println!(
        "nearest to embedding {}: embedding {best_row} (score {best_score:.3})",
        rows / 2
    );
    let stats = reader.cache_stats();
    println!("reader's cache: {stats:?}");

    drop(reader);
    drop(reader_client);
    drop(client);
    drop(embedded);
    Ok(())
}

#[cfg(test)]
mod tests {
    // Guards the example itself (`cargo test` runs it, small): every embedding
    // reads back as written, against a node it starts itself.
    #[test]
    fn writes_reads_back_and_scans_a_small_array() {
        let args = super::common::Args::from_pairs(&[("rows", "3000"), ("dimensions", "100")]);
        super::run(&args).unwrap();
    }
}

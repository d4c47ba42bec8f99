//! Checkpoint a region, lose its node, and recover the region on a fresh
//! node from storage alone.
//!
//! A node keeps its regions in RAM; a checkpoint copies a region's pages to
//! the node's storage (a directory here, an S3 bucket in production), and
//! another node sharing that storage can rebuild the region from it. This
//! example writes `--orders` order records into a region, checkpoints it,
//! and then loses the node: it stops and its data directory is deleted, as
//! when its machine is gone. A fresh node with an empty data directory and
//! the same storage recovers the region from the checkpoint (the baseline
//! alone, as there is no surviving node to copy later writes from), and the
//! example checks every record.
//!
//! It starts both nodes itself, in this process, as it must be able to
//! lose one: it takes no `--node`.
//!
//! ```text
//! cargo run -p pagoda --example checkpoint_recovery
//! cargo run -p pagoda --example checkpoint_recovery -- --orders 1000000
//! ```

// Only the argument parsing: this example starts its nodes itself.
#[allow(dead_code)]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use pagoda::{Client, RecoveryPhase, RegionOptions};
use pagoda_node::{Node, NodeConfig, StorageConfig};

const USAGE: &str = "checkpoint_recovery [--orders N]";

/// RAM for pages of each node the example starts, in bytes.
const NODE_CAPACITY_BYTES: u64 = 256 << 20;
/// How often the recovery's progress is asked for and printed.
const RECOVERY_POLL: Duration = Duration::from_millis(20);

/// One order as stored in the region: `repr(C)` without padding, so it is
/// `Pod` and its 32 stored bytes are its fields, little-endian, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Order {
    id: u64,
    customer: u64,
    quantity: u32,
    price_cents: u32,
    placed_at_s: u64,
}

const ORDER_BYTES: u64 = size_of::<Order>() as u64;

/// Order `id`: made up, but checkable.
fn order(id: u64) -> Order {
    Order {
        id,
        customer: id.wrapping_mul(2_654_435_761) % 100_000,
        quantity: (id % 17) as u32 + 1,
        price_cents: (id.wrapping_mul(40_503) % 50_000) as u32 + 99,
        placed_at_s: 1_700_000_000 + id * 7,
    }
}

/// A node on a free loopback port whose checkpoints go to `storage`.
fn start_node(data_dir: &Path, storage: &Path) -> Result<Node, Box<dyn std::error::Error>> {
    let mut config = NodeConfig::new(
        ([127, 0, 0, 1], 0).into(),
        NODE_CAPACITY_BYTES,
        data_dir.to_path_buf(),
    );
    config.storage = Some(StorageConfig::Dir(storage.to_path_buf()));
    Ok(Node::start(config)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(&common::Args::parse(USAGE, &["orders"]))
}

fn run(args: &common::Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.get("node").is_some() || args.get("token-file").is_some() {
        return Err(format!(
            "this example starts its own nodes (it loses one): no --node\nusage: {USAGE}"
        )
        .into());
    }
    let orders = args.number("orders", 100_000).max(1);
    let base = std::env::temp_dir().join(format!("pagoda-checkpoint-{}", std::process::id()));
    let storage = base.join("storage");
    let (data_lost, data_fresh) = (base.join("node-lost"), base.join("node-fresh"));
    for dir in [&storage, &data_lost, &data_fresh] {
        std::fs::create_dir_all(dir)?;
    }
    let result = recover_orders(orders, &storage, &data_lost, &data_fresh);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn recover_orders(
    orders: u64,
    storage: &Path,
    data_lost: &Path,
    data_fresh: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let name = "orders";
    let page_size = 64 * 1024;
    let region_bytes = (orders * ORDER_BYTES).div_ceil(page_size) * page_size;

    // The first node: write every order, then checkpoint the region.
    let node = start_node(data_lost, storage)?;
    println!(
        "node at {}, checkpointing to {}",
        node.local_addr(),
        storage.display()
    );
    let client = Client::connect(node.local_addr(), Default::default())?;
    client.create_region(name, region_bytes, page_size as u32)?;
    let region = client.open_region(name, RegionOptions::with_cache_bytes(4 << 20))?;
    let all: Vec<Order> = (0..orders).map(order).collect();
    region.write_slice(0, &all)?;
    region.flush()?; // every order is on the node: a checkpoint copies the node's pages
    let started = Instant::now();
    let checkpoint = client.checkpoint(name, false)?;
    println!(
        "wrote {orders} orders ({} KiB) and took checkpoint {}: {} pages, {} KiB stored, in {:.2} s",
        (orders * ORDER_BYTES) >> 10,
        checkpoint.number,
        checkpoint.pages,
        checkpoint.bytes >> 10,
        started.elapsed().as_secs_f64()
    );

    // Lose the node: it stops, and its data directory (its catalog) goes
    // with its machine. Only the storage is left.
    drop(region);
    drop(client);
    node.shutdown();
    std::fs::remove_dir_all(data_lost)?;
    println!("lost the node and its data directory");

    // A fresh node sharing the storage rebuilds the region from it.
    let node = start_node(data_fresh, storage)?;
    let client = Client::connect(node.local_addr(), Default::default())?;
    let started = Instant::now();
    let done = client.recover(name, None, None, true, RECOVERY_POLL, |progress| {
        println!(
            "  recovering: {:?}, {} of {} pages from the checkpoint",
            progress.phase, progress.baseline_pages_done, progress.baseline_pages
        );
    })?;
    assert_eq!(
        done.phase,
        RecoveryPhase::Done,
        "recover returns at the end"
    );
    println!(
        "recovered on the fresh node at {} in {:.2} s: {}",
        node.local_addr(),
        started.elapsed().as_secs_f64(),
        done.message
    );

    let region = client.open_region_read_only(name, RegionOptions::with_cache_bytes(4 << 20))?;
    let mut back = vec![Order::zeroed(); orders as usize];
    region.read_slice(0, &mut back)?;
    if let Some(id) = (0..orders).find(|&id| back[id as usize] != order(id)) {
        return Err(format!("order {id} came back as {:?}", back[id as usize]).into());
    }
    println!("every one of the {orders} orders came back");
    drop(region);
    drop(client);
    node.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    // Guards the example itself (`cargo test` runs it, small): a region
    // checkpointed on one node comes back whole on a fresh node from
    // storage alone.
    #[test]
    fn orders_survive_the_loss_of_their_node() {
        let args = super::common::Args::from_pairs(&[("orders", "5000")]);
        super::run(&args).unwrap();
    }

    // Guards the refusal of `--node`: the example cannot lose a node it
    // did not start.
    #[test]
    fn a_running_node_is_refused() {
        let args = super::common::Args::from_pairs(&[("node", "127.0.0.1:7070")]);
        let error = super::run(&args).unwrap_err().to_string();
        assert!(error.contains("starts its own nodes"), "{error}");
    }
}

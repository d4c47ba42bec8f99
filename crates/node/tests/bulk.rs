//! The bulk tier against real nodes on loopback: RAM far smaller than the
//! data, checked against models byte for byte; checkpoints, recovery and
//! replication with pages in either tier; zero and duplicate pages; a full
//! bulk tier.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use pagoda::{Client, ClientOptions, ErrorCode, RegionInfo, RegionOptions, ReplicationMode};
use pagoda_node::bulk::BulkConfig;
use pagoda_node::{Node, NodeConfig, StorageConfig};
use rand::{Rng, SeedableRng};

const PAGE: usize = 4096;
const MIB: u64 = 1 << 20;
/// Pages per 2 MiB segment.
const SEGMENT_PAGES: u64 = 512;

/// A node with `ram` bytes of RAM and `bulk` bytes of bulk tier in `dir`.
fn config(dir: &Path, ram: u64, bulk: u64) -> NodeConfig {
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap(), ram, dir.join("data"));
    config.bulk = Some(BulkConfig {
        dir: dir.join("bulk"),
        capacity_bytes: bulk,
    });
    config
}

fn connect(addr: SocketAddr) -> Client {
    let options = ClientOptions {
        timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    };
    Client::connect(addr, options).unwrap()
}

/// What a page holds in the models: never written (zeros), all zeros
/// written, one of a few shared patterns, or its own bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Zero,
    Shared(u8),
    Own(u64, u32),
}

impl Content {
    fn bytes(self) -> Vec<u8> {
        match self {
            Content::Zero => vec![0; PAGE],
            Content::Shared(pattern) => vec![pattern + 1; PAGE],
            Content::Own(page, version) => {
                let mut bytes = Vec::with_capacity(PAGE);
                while bytes.len() < PAGE {
                    bytes.extend_from_slice(&page.to_le_bytes());
                    bytes.extend_from_slice(&(version as u64).to_le_bytes());
                }
                bytes
            }
        }
    }

    fn random(rng: &mut impl Rng, page: u64, version: u32) -> Content {
        match rng.gen_range(0..10) {
            0..=1 => Content::Zero,
            2..=4 => Content::Shared(rng.gen_range(0..8)),
            _ => Content::Own(page, version),
        }
    }
}

fn write(client: &Client, info: &RegionInfo, pages: &[u64], contents: &[Content]) {
    let data: Vec<u8> = contents.iter().flat_map(|c| c.bytes()).collect();
    client.raw().write_pages(info, pages, &data).unwrap();
}

fn read(client: &Client, info: &RegionInfo, pages: &[u64]) -> Vec<u8> {
    let mut out = vec![0u8; pages.len() * PAGE];
    client.raw().read_pages(info, pages, &mut out).unwrap();
    out
}

/// Every page of the region against `model`, a batch at a time.
fn assert_region(client: &Client, info: &RegionInfo, model: &[Content], what: &str) {
    for (chunk, expected) in model.chunks(256).enumerate() {
        let pages: Vec<u64> = (0..expected.len() as u64)
            .map(|i| chunk as u64 * 256 + i)
            .collect();
        let bytes = read(client, info, &pages);
        for (index, content) in expected.iter().enumerate() {
            assert!(
                bytes[index * PAGE..(index + 1) * PAGE] == content.bytes()[..],
                "{what}: page {} differs from {content:?}",
                pages[index]
            );
        }
    }
}

// Guards the bulk tier's data path: random writes and reads from two
// threads over a region four times the node's RAM, checked against a model
// at every read and in full at the end, over the connection and through a
// co-located client's cache (whose misses on paged-out segments go to the
// node); the node reports the paging and the space zero and shared pages
// saved.
#[test]
fn random_io_against_a_model_with_ram_far_smaller_than_the_data() {
    const PAGES: u64 = 24 * SEGMENT_PAGES; // 48 MiB
    let dir = tempfile::tempdir().unwrap();
    // Six segments of RAM: each thread's batch pins at most three.
    let node = Node::start(config(dir.path(), 12 * MIB, 256 * MIB)).unwrap();
    let client = Arc::new(connect(node.local_addr()));
    let info = client
        .create_region("r", PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    let threads: Vec<_> = (0..2u64)
        .map(|thread| {
            let client = client.clone();
            let info = info.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(thread + 11);
                // Thread `t` owns the pages with `page % 2 == t`: both
                // threads work in every segment.
                let mut model = vec![Content::Zero; PAGES as usize];
                for step in 0..1_200u32 {
                    let count = rng.gen_range(1..=3);
                    let pages: Vec<u64> = (0..count)
                        .map(|_| rng.gen_range(0..PAGES / 2) * 2 + thread)
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    if rng.gen_bool(0.5) {
                        let contents: Vec<Content> = pages
                            .iter()
                            .map(|&page| Content::random(&mut rng, page, step))
                            .collect();
                        write(&client, &info, &pages, &contents);
                        for (&page, &content) in pages.iter().zip(&contents) {
                            model[page as usize] = content;
                        }
                    } else {
                        let bytes = read(&client, &info, &pages);
                        for (index, &page) in pages.iter().enumerate() {
                            assert!(
                                bytes[index * PAGE..(index + 1) * PAGE]
                                    == model[page as usize].bytes()[..],
                                "thread {thread} step {step}: page {page}"
                            );
                        }
                    }
                }
                model
            })
        })
        .collect();
    let models: Vec<Vec<Content>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let model: Vec<Content> = (0..PAGES as usize)
        .map(|page| models[page % 2][page])
        .collect();
    assert_region(&client, &info, &model, "over the connection");

    // Through a co-located client's cache, cold.
    let colocated = connect(node.local_addr());
    let region = colocated
        .open_region_read_only(
            "r",
            RegionOptions {
                cache_bytes: 64 * PAGE as u64,
                ..RegionOptions::default()
            },
        )
        .unwrap();
    assert_eq!(colocated.transport(), pagoda::Transport::Colocated);
    let mut page_bytes = vec![0u8; PAGE];
    for (page, content) in model.iter().enumerate() {
        region
            .read_at(page as u64 * PAGE as u64, &mut page_bytes)
            .unwrap();
        assert!(page_bytes == content.bytes(), "co-located: page {page}");
    }

    let stat = client.node_stat().unwrap();
    assert!(stat.used_bytes <= 12 * MIB);
    assert!(stat.segments_paged_out > 0, "{stat:?}");
    assert!(stat.bulk_zero_bytes > 0, "zero pages paged out: {stat:?}");
    assert!(
        stat.bulk_used_bytes < stat.bulk_referenced_bytes,
        "shared pages stored once: {stat:?}"
    );
    let region_stat = client.stat_region("r").unwrap();
    assert!(region_stat.segments_paged_out > 0, "{region_stat:?}");
    assert_eq!(
        region_stat.bulk_bytes,
        region_stat.segments_paged_out * SEGMENT_PAGES * PAGE as u64
    );
}

// Guards checkpoints and recovery across tiers: a full and an incremental
// checkpoint taken while most pages are paged out hold every page, and a
// fresh node with as little RAM recovers the region from them exactly.
#[test]
fn checkpoints_and_recovery_see_paged_out_pages() {
    const PAGES: u64 = 12 * SEGMENT_PAGES; // 24 MiB
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let with_storage = |root: &Path| {
        let mut config = config(root, 8 * MIB, 128 * MIB);
        config.storage = Some(StorageConfig::Dir(storage.clone()));
        config
    };
    let first = tempfile::tempdir().unwrap();
    let node = Node::start(with_storage(first.path())).unwrap();
    let client = connect(node.local_addr());
    let info = client
        .create_region("c", PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut model = vec![Content::Zero; PAGES as usize];
    for chunk in (0..PAGES).collect::<Vec<_>>().chunks(128) {
        let contents: Vec<Content> = chunk
            .iter()
            .map(|&page| Content::random(&mut rng, page, 1))
            .collect();
        write(&client, &info, chunk, &contents);
        for (&page, &content) in chunk.iter().zip(&contents) {
            model[page as usize] = content;
        }
    }
    assert!(client.stat_region("c").unwrap().segments_paged_out > 0);
    let full = client.checkpoint("c", true).unwrap();
    assert_eq!(full.pages, PAGES);
    // Rewrite a scattered tenth, a batch per segment: pages in both tiers
    // become dirty.
    let scattered: std::collections::BTreeSet<u64> =
        (0..PAGES / 10).map(|_| rng.gen_range(0..PAGES)).collect();
    for segment in 0..PAGES / SEGMENT_PAGES {
        let pages: Vec<u64> = scattered
            .range(segment * SEGMENT_PAGES..(segment + 1) * SEGMENT_PAGES)
            .copied()
            .collect();
        let contents: Vec<Content> = pages.iter().map(|&page| Content::Own(page, 2)).collect();
        write(&client, &info, &pages, &contents);
        for (&page, &content) in pages.iter().zip(&contents) {
            model[page as usize] = content;
        }
    }
    let dirty = client.stat_region("c").unwrap().dirty_pages;
    let incremental = client.checkpoint("c", false).unwrap();
    assert_eq!(incremental.pages, dirty);
    drop(node);

    let second = tempfile::tempdir().unwrap();
    let node = Node::start(with_storage(second.path())).unwrap();
    let client = connect(node.local_addr());
    client
        .recover("c", None, None, true, Duration::from_millis(10), |_| {})
        .unwrap();
    let stat = client.stat_region("c").unwrap();
    assert!(stat.segments_paged_out > 0, "the load paged out: {stat:?}");
    assert_region(&client, &stat.info, &model, "recovered");
}

// Guards replication across tiers: a sync replica on a node with little RAM
// holds what its primary holds (digests over paged-out segments included),
// and a replica rebuilt after a restart gets the segments it lacks, read
// from the primary's bulk tier.
#[test]
fn replicas_hold_paged_out_pages() {
    const PAGES: u64 = 12 * SEGMENT_PAGES;
    let roots: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = roots
        .iter()
        .map(|root| {
            let mut config = config(root.path(), 8 * MIB, 128 * MIB);
            config.replica_timeout = Duration::from_millis(1000);
            Node::start(config).unwrap()
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.local_addr()).collect();
    let primary = connect(addrs[0]);
    let info = primary
        .create_replicated_region(
            "p",
            PAGES * PAGE as u64,
            PAGE as u32,
            &[&addrs[1].to_string()],
            ReplicationMode::Sync,
        )
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for chunk in (0..PAGES).collect::<Vec<_>>().chunks(64) {
        let contents: Vec<Content> = chunk
            .iter()
            .map(|&page| Content::random(&mut rng, page, 1))
            .collect();
        write(&primary, &info, chunk, &contents);
    }
    let digest = |client: &Client| client.checksum("p", false).unwrap().digest;
    let expected = digest(&primary);
    assert_eq!(digest(&connect(addrs[1])), expected);
    assert!(primary.stat_region("p").unwrap().segments_paged_out > 0);
    assert!(
        connect(addrs[1])
            .stat_region("p")
            .unwrap()
            .segments_paged_out
            > 0
    );

    // The replica's node restarts empty; the primary rebuilds it.
    let root = roots[1].path();
    drop(nodes.pop());
    let mut config = config(root, 8 * MIB, 128 * MIB);
    config.listen = addrs[1];
    config.replica_timeout = Duration::from_millis(1000);
    nodes.push(Node::start(config).unwrap());
    let replica = connect(addrs[1]);
    eventually("the restarted replica is rebuilt", || {
        digest(&replica) == expected
    });
}

// Guards the space rules end to end: regions of all-zero pages take no space
// in the bulk tier, and identical regions take about the space of one.
#[test]
fn zero_and_duplicate_pages_are_stored_once() {
    const PAGES: u64 = 4 * SEGMENT_PAGES; // 8 MiB each
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path(), 4 * MIB, 256 * MIB)).unwrap();
    let client = connect(node.local_addr());
    let own: Vec<Content> = (0..PAGES).map(|page| Content::Own(page, 1)).collect();
    for name in ["zeros", "a", "b", "c"] {
        let info = client
            .create_region(name, PAGES * PAGE as u64, PAGE as u32)
            .unwrap();
        for chunk in (0..PAGES).collect::<Vec<_>>().chunks(256) {
            let contents: Vec<Content> = if name == "zeros" {
                vec![Content::Zero; chunk.len()]
            } else {
                chunk.iter().map(|&page| own[page as usize]).collect()
            };
            write(&client, &info, chunk, &contents);
        }
    }
    // 32 MiB written into 4 MiB of RAM: at least 28 MiB went out.
    let stat = client.node_stat().unwrap();
    let out = stat.bulk_referenced_bytes + stat.bulk_zero_bytes;
    assert!(out >= 28 * MIB, "{stat:?}");
    assert!(
        stat.bulk_used_bytes <= PAGES * PAGE as u64,
        "three identical regions and a zero one take at most one region's space: {stat:?}"
    );
    let zeros = client.stat_region("zeros").unwrap();
    if zeros.segments_paged_out > 0 {
        assert_eq!(zeros.bulk_zero_bytes, zeros.bulk_bytes, "{zeros:?}");
    }
    // Everything reads back.
    for name in ["zeros", "a", "b", "c"] {
        let info = client.stat_region(name).unwrap().info;
        let model: Vec<Content> = if name == "zeros" {
            vec![Content::Zero; PAGES as usize]
        } else {
            own.clone()
        };
        assert_region(&client, &info, &model, name);
    }
    // Deleting every region gives all the space back.
    for name in ["zeros", "a", "b", "c"] {
        client.delete_region(name).unwrap();
    }
    let stat = client.node_stat().unwrap();
    assert_eq!(
        (
            stat.used_bytes,
            stat.bulk_used_bytes,
            stat.bulk_referenced_bytes
        ),
        (0, 0, 0)
    );
}

// Guards the full tiers: with RAM and the bulk tier both used up, a write
// that needs a new segment fails with an out-of-memory error naming both
// tiers, and the node keeps serving every page it acknowledged.
#[test]
fn full_tiers_refuse_writes_and_the_node_keeps_serving() {
    const PAGES: u64 = 16 * SEGMENT_PAGES;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path(), 4 * MIB, 6 * MIB)).unwrap();
    let client = connect(node.local_addr());
    let info = client
        .create_region("f", PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut model = vec![Content::Zero; PAGES as usize];
    let mut refused = None;
    'fill: for segment in 0..16 {
        for chunk in (segment * SEGMENT_PAGES..(segment + 1) * SEGMENT_PAGES)
            .collect::<Vec<_>>()
            .chunks(128)
        {
            let contents: Vec<Content> = chunk.iter().map(|&page| Content::Own(page, 1)).collect();
            let data: Vec<u8> = contents.iter().flat_map(|c| c.bytes()).collect();
            match client.raw().write_pages(&info, chunk, &data) {
                Ok(()) => {
                    for (&page, &content) in chunk.iter().zip(&contents) {
                        model[page as usize] = content;
                    }
                }
                Err(error) => {
                    refused = Some(error);
                    break 'fill;
                }
            }
        }
    }
    let error = refused.expect("10 MiB of tiers cannot hold 32 MiB");
    assert_eq!(error.code(), Some(ErrorCode::OutOfMemory), "{error}");
    assert!(error.to_string().contains("bulk tier"), "{error}");
    assert_region(&client, &info, &model, "after the refusal");
    // Rewriting a page of a segment still in RAM still works (one paged out
    // would need room in a tier to come back).
    let stored = model.iter().rposition(|c| *c != Content::Zero).unwrap() as u64;
    write(&client, &info, &[stored], &[Content::Own(stored, 2)]);
    model[stored as usize] = Content::Own(stored, 2);
    assert_region(&client, &info, &model, "after a rewrite");
    assert!(client.node_stat().unwrap().bulk_used_bytes <= 6 * MIB);
}

/// Every data object of region `name` under `storage`, with one byte past
/// its header flipped: a baseline load of it would fail its checksums.
fn damage_data_objects(storage: &Path, name: &str) -> usize {
    let dir = storage.join("regions").join(name).join("data");
    let mut damaged = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 1;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        damaged += 1;
    }
    damaged
}

// Guards the restart from the bulk tier: a graceful stop leaves the regions
// in the bulk tier with an index, and the next start serves them at once
// from there (shown by damaging the baseline in storage, which a reload
// would have refused) and loads them into RAM in the background; a damaged
// index is ignored (the regions reload from storage), and the index is
// consumed by the start, so it never describes a later state.
#[test]
fn a_graceful_restart_serves_from_the_bulk_tier() {
    const PAGES: u64 = 12 * SEGMENT_PAGES; // 24 MiB: three times the RAM
    let root = tempfile::tempdir().unwrap();
    let storage = root.path().join("storage");
    let start = || {
        let mut config = config(root.path(), 8 * MIB, 128 * MIB);
        config.storage = Some(StorageConfig::Dir(storage.clone()));
        Node::start(config).unwrap()
    };
    let index = root
        .path()
        .join("bulk")
        .join(pagoda_node::bulk::INDEX_FILE_NAME);
    let node = start();
    let client = connect(node.local_addr());
    let info = client
        .create_region("g", PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let mut model = vec![Content::Zero; PAGES as usize];
    for chunk in (0..PAGES).collect::<Vec<_>>().chunks(128) {
        let contents: Vec<Content> = chunk
            .iter()
            .map(|&page| Content::random(&mut rng, page, 1))
            .collect();
        write(&client, &info, chunk, &contents);
        for (&page, &content) in chunk.iter().zip(&contents) {
            model[page as usize] = content;
        }
    }
    drop(client);
    drop(node);
    assert!(index.exists(), "a graceful stop saves the index");

    // A damaged index: ignored, the region reloads from storage.
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&index, bytes).unwrap();
    let node = start();
    assert!(!index.exists(), "the start consumes the index");
    let client = connect(node.local_addr());
    assert_region(&client, &info, &model, "reloaded from storage");
    drop(client);
    drop(node);

    // An intact index, and a baseline a reload could not use.
    assert!(damage_data_objects(&storage, "g") > 0);
    let started = std::time::Instant::now();
    let node = start();
    let client = connect(node.local_addr());
    let mut first = vec![0u8; PAGE];
    client
        .raw()
        .read_pages(&info, &[PAGES - 1], &mut first)
        .unwrap();
    let first_read = started.elapsed();
    assert_eq!(first, model[PAGES as usize - 1].bytes());
    let stat = client.stat_region("g").unwrap();
    assert_eq!(stat.state.name(), "active", "{stat:?}");
    assert!(stat.segments_paged_out > 0, "{stat:?}");
    assert_region(&client, &info, &model, "restored from the bulk tier");
    eventually("the background load fills RAM", || {
        client.node_stat().unwrap().used_bytes >= 6 * MIB
    });
    println!("restart to first read: {first_read:?}");
    // Written after the restart: the next graceful stop checkpoints it (new
    // objects), and the start after serves it.
    write(&client, &info, &[3], &[Content::Own(3, 9)]);
    model[3] = Content::Own(3, 9);
    drop(client);
    drop(node);
    let node = start();
    let client = connect(node.local_addr());
    assert_region(&client, &info, &model, "after a write and another restart");
}

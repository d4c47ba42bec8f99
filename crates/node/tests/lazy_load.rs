//! The lazy load of a region's baseline at start, against real nodes on
//! loopback: a restarted node serves at once, each segment loading from the
//! baseline on first access while a background loader (paced here, so the
//! load can be watched while it runs) brings in the rest; reads, writes and
//! checkpoints during the load are checked against a model byte for byte,
//! and a damaged baseline damages only its region.

mod common;

use std::path::Path;
use std::time::Duration;

use common::eventually;
use pagoda::{Client, ClientOptions, ErrorCode, RegionInfo, RegionOptions};
use pagoda_node::{Node, NodeConfig, Reload, StorageConfig};
use rand::{RngCore, SeedableRng};

const PAGE: usize = 4096;
const MIB: u64 = 1 << 20;
/// Pages per 2 MiB segment.
const SEGMENT_PAGES: u64 = 512;
/// 64 MiB: 32 segments.
const PAGES: u64 = 32 * SEGMENT_PAGES;
/// A segment no page was ever written to: no run covers it.
const UNWRITTEN_SEGMENT: u64 = 29;
/// The background loader's pause before each batch of 8 segments: the 31
/// segments to load take about four of them, so a load lasts seconds.
const PACED: Reload = Reload::LazyPaced(Duration::from_millis(700));

fn config(root: &Path, data: &str, reload: Reload) -> NodeConfig {
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap(), 256 * MIB, root.join(data));
    config.storage = Some(StorageConfig::Dir(root.join("storage")));
    config.reload = reload;
    config
}

fn connect(node: &Node) -> Client {
    let options = ClientOptions {
        timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    };
    Client::connect(node.local_addr(), options).unwrap()
}

/// Page `page`'s random bytes at `version` (0: never written, zeros).
fn page_bytes(page: u64, version: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; PAGE];
    if version > 0 {
        rand::rngs::StdRng::seed_from_u64(page << 16 | version).fill_bytes(&mut bytes);
    }
    bytes
}

fn write(client: &Client, info: &RegionInfo, model: &mut [Vec<u8>], pages: &[u64], version: u64) {
    let mut data = Vec::with_capacity(pages.len() * PAGE);
    for &page in pages {
        let bytes = page_bytes(page, version);
        data.extend_from_slice(&bytes);
        model[page as usize] = bytes;
    }
    client.raw().write_pages(info, pages, &data).unwrap();
}

fn read(client: &Client, info: &RegionInfo, page: u64) -> Vec<u8> {
    let mut out = vec![0u8; PAGE];
    client.raw().read_pages(info, &[page], &mut out).unwrap();
    out
}

fn assert_all(client: &Client, info: &RegionInfo, model: &[Vec<u8>], what: &str) {
    let mut out = vec![0u8; 256 * PAGE];
    for first in (0..info.size / PAGE as u64).step_by(256) {
        let pages: Vec<u64> = (first..first + 256).collect();
        client.raw().read_pages(info, &pages, &mut out).unwrap();
        for (at, &page) in pages.iter().enumerate() {
            assert!(
                out[at * PAGE..(at + 1) * PAGE] == model[page as usize][..],
                "{what}: page {page} differs"
            );
        }
    }
}

/// A region `name` of [`PAGES`] random pages (but [`UNWRITTEN_SEGMENT`]),
/// checkpointed fully, then partly rewritten and checkpointed
/// incrementally, so that some segments load from two objects. Returns its
/// model.
fn fill(client: &Client, name: &str) -> (RegionInfo, Vec<Vec<u8>>) {
    let info = client
        .create_region(name, PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut model = vec![vec![0u8; PAGE]; PAGES as usize];
    let written: Vec<u64> = (0..PAGES)
        .filter(|page| page / SEGMENT_PAGES != UNWRITTEN_SEGMENT)
        .collect();
    for chunk in written.chunks(256) {
        write(client, &info, &mut model, chunk, 1);
    }
    client.checkpoint(name, true).unwrap();
    let rewritten: Vec<u64> = (700..1300).chain((0..PAGES).step_by(97)).collect();
    let mut rewritten: Vec<u64> = rewritten
        .into_iter()
        .filter(|page| page / SEGMENT_PAGES != UNWRITTEN_SEGMENT)
        .collect();
    rewritten.sort_unstable();
    rewritten.dedup();
    for chunk in rewritten.chunks(256) {
        write(client, &info, &mut model, chunk, 2);
    }
    let incremental = client.checkpoint(name, false).unwrap();
    assert!(!incremental.full);
    (info, model)
}

/// The `pagoda_node_region_segments_loading` gauge of region `name`, read
/// from the node's metrics endpoint.
fn loading_gauge(metrics: std::net::SocketAddr, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    let prefix = format!("pagoda_node_region_segments_loading{{region=\"{name}\"}} ");
    let line = body
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in the scrape: {body}"));
    line[prefix.len()..].trim().parse::<f64>().unwrap() as u64
}

fn segments_loading(client: &Client, name: &str) -> u64 {
    client.stat_region(name).unwrap().segments_loading
}

// Guards the lazy restart: the node serves a read at once, before the
// background load has finished, with the right bytes (over the connection
// and through a co-located client, whose not-yet-loaded segments must not
// read as zeros); whole-page and byte-range writes during the load survive
// it (the baseline never overwrites them); a full checkpoint taken during
// the load holds every page (recovered onto a fresh node and compared);
// and after the load every page is right and `region stat` shows nothing
// left to load.
#[test]
fn a_restarted_node_serves_during_the_lazy_load_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (info, mut model) = {
        let node = Node::start(config(root.path(), "data", Reload::Lazy)).unwrap();
        let client = connect(&node);
        let filled = fill(&client, "r");
        drop(client);
        node.shutdown();
        filled
    };

    let mut paced = config(root.path(), "data", PACED);
    paced.metrics = Some("127.0.0.1:0".parse().unwrap());
    let node = Node::start(paced).unwrap();
    let client = connect(&node);
    assert_eq!(
        segments_loading(&client, "r"),
        31,
        "every written segment waits to load"
    );
    let gauge = loading_gauge(node.metrics_addr().unwrap(), "r");
    assert!(
        (1..=31).contains(&gauge),
        "the metric counts the load: {gauge}"
    );
    // A read in a segment the background loader reaches last: loaded on
    // demand, right away.
    let page = 20 * SEGMENT_PAGES + 5;
    assert!(read(&client, &info, page) == model[page as usize]);
    let page = 1000;
    assert!(
        read(&client, &info, page) == model[page as usize],
        "two objects"
    );
    assert!(
        read(&client, &info, UNWRITTEN_SEGMENT * SEGMENT_PAGES) == vec![0u8; PAGE],
        "a segment no run covers reads as zeros"
    );
    let left = segments_loading(&client, "r");
    assert!(
        (1..=29).contains(&left),
        "the reads loaded their segments, and the load is not done: {left} left"
    );

    // Through a co-located client, in segments not loaded yet.
    let colocated = connect(&node);
    let shared = colocated
        .open_region_read_only("r", RegionOptions::with_cache_bytes(16 * PAGE as u64))
        .unwrap();
    assert_eq!(colocated.transport(), pagoda::Transport::Colocated);
    let mut bytes = vec![0u8; PAGE];
    for page in [27 * SEGMENT_PAGES + 3, 31 * SEGMENT_PAGES + 511] {
        shared.read_at(page * PAGE as u64, &mut bytes).unwrap();
        assert!(bytes == model[page as usize], "co-located: page {page}");
    }

    // Whole pages into segments not loaded yet, and read back.
    let pages: Vec<u64> = (25 * SEGMENT_PAGES + 10..25 * SEGMENT_PAGES + 20)
        .chain([26 * SEGMENT_PAGES, UNWRITTEN_SEGMENT * SEGMENT_PAGES + 1])
        .collect();
    write(&client, &info, &mut model, &pages, 3);
    for &page in &pages {
        assert!(
            read(&client, &info, page) == model[page as usize],
            "page {page}"
        );
    }
    // A byte range across a page boundary in another one (a journal record).
    let journaled = client
        .open_region(
            "r",
            RegionOptions {
                durability: pagoda::Durability::Remote,
                ..RegionOptions::with_cache_bytes(16 * PAGE as u64)
            },
        )
        .unwrap();
    let offset = (24 * SEGMENT_PAGES + 7) * PAGE as u64 - 50;
    let range = [0xa5u8; 100];
    journaled.write_at(offset, &range).unwrap();
    let first = (offset / PAGE as u64) as usize;
    model[first][PAGE - 50..].copy_from_slice(&range[..50]);
    model[first + 1][..50].copy_from_slice(&range[50..]);
    assert!(read(&client, &info, first as u64) == model[first]);
    assert!(read(&client, &info, first as u64 + 1) == model[first + 1]);
    assert!(segments_loading(&client, "r") > 0, "still loading");

    // A full checkpoint now: it waits for the rest of the load.
    let full = client.checkpoint("r", true).unwrap();
    assert!(full.full);
    assert_eq!(
        segments_loading(&client, "r"),
        0,
        "loaded for the checkpoint"
    );
    assert_all(&client, &info, &model, "after the load");
    let stat = client.stat_region("r").unwrap();
    assert_eq!(stat.state.name(), "active", "{stat:?}");
    assert_eq!(stat.dirty_pages, 0, "{stat:?}");
    drop((shared, colocated, journaled, client));
    drop(node);

    // The full checkpoint alone, recovered onto a fresh node.
    let fresh = Node::start(config(root.path(), "fresh", Reload::Lazy)).unwrap();
    let client = connect(&fresh);
    client
        .recover("r", None, None, true, Duration::from_millis(10), |_| {})
        .unwrap();
    assert_all(&client, &info, &model, "recovered from the full checkpoint");
}

// Guards the background loader alone: with no access at all, a restarted
// node loads every segment (the count in `region stat` falls to 0) and
// every page is right.
#[test]
fn the_background_loader_loads_everything() {
    let root = tempfile::tempdir().unwrap();
    let (info, model) = {
        let node = Node::start(config(root.path(), "data", Reload::Lazy)).unwrap();
        let client = connect(&node);
        let filled = fill(&client, "b");
        drop(client);
        node.shutdown();
        filled
    };
    let node = Node::start(config(root.path(), "data", Reload::Lazy)).unwrap();
    let client = connect(&node);
    eventually("the background load ends", || {
        segments_loading(&client, "b") == 0
    });
    assert_eq!(
        client.stat_region("b").unwrap().segments_allocated,
        31,
        "the unwritten segment holds no RAM"
    );
    assert_all(&client, &info, &model, "loaded in the background");
}

// Guards the claims on segments: readers on four connections, started with
// the node, race the four background loaders (and each other) for the same
// segments; every page they read is right, each segment is loaded once (a
// second load of one would fail its assertion and the read with it), and
// the load ends with exactly the written segments in RAM.
#[test]
fn readers_racing_the_background_loader_read_right() {
    let root = tempfile::tempdir().unwrap();
    let (info, model) = {
        let node = Node::start(config(root.path(), "data", Reload::Lazy)).unwrap();
        let client = connect(&node);
        let filled = fill(&client, "c");
        drop(client);
        node.shutdown();
        filled
    };
    let node = Node::start(config(root.path(), "data", Reload::Lazy)).unwrap();
    let model = std::sync::Arc::new(model);
    let readers: Vec<_> = (0..4u64)
        .map(|reader| {
            let client = connect(&node);
            let (info, model) = (info.clone(), model.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(reader);
                let mut out = vec![0u8; 4 * PAGE];
                for _ in 0..200 {
                    // Four pages of one segment, from the end backwards for
                    // some readers, so they meet the loaders part-way.
                    let segment = rand::Rng::gen_range(&mut rng, 0..32u64);
                    let segment = if reader % 2 == 0 {
                        31 - segment
                    } else {
                        segment
                    };
                    let first = segment * SEGMENT_PAGES + rand::Rng::gen_range(&mut rng, 0..508);
                    let pages: Vec<u64> = (first..first + 4).collect();
                    client.raw().read_pages(&info, &pages, &mut out).unwrap();
                    for (at, &page) in pages.iter().enumerate() {
                        assert!(
                            out[at * PAGE..(at + 1) * PAGE] == model[page as usize][..],
                            "reader {reader}: page {page} differs"
                        );
                    }
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().unwrap();
    }
    let client = connect(&node);
    eventually("the load ends", || segments_loading(&client, "c") == 0);
    let stat = client.stat_region("c").unwrap();
    assert_eq!(stat.segments_allocated, 31, "{stat:?}");
    assert_eq!(stat.state.name(), "active", "{stat:?}");
    assert_all(&client, &info, &model, "after the race");
}

// Guards damage during a lazy load: a flipped byte in a data object of one
// region's baseline marks that region damaged, with the reason, when the
// damaged page is loaded (here by a read, which gets the region-unavailable
// error rather than unverified bytes); another region still serves every
// page right.
#[test]
fn a_damaged_baseline_damages_only_its_region() {
    let root = tempfile::tempdir().unwrap();
    let (good, good_model, bad) = {
        let node = Node::start(config(root.path(), "data", Reload::Lazy)).unwrap();
        let client = connect(&node);
        let (good, good_model) = fill(&client, "good");
        let (bad, _) = fill(&client, "bad");
        drop(client);
        node.shutdown();
        (good, good_model, bad)
    };
    // The full checkpoint's object of `bad` that holds page 3 of segment 0:
    // the first object written (its key ends in 000000).
    let data = root.path().join("storage/regions/bad/data");
    let mut objects: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    objects.sort();
    let first = objects
        .iter()
        .find(|path| path.to_string_lossy().ends_with("-000000.obj"))
        .expect("the full checkpoint's first object");
    let mut bytes = std::fs::read(first).unwrap();
    let pages = u32::from_le_bytes(bytes[32..36].try_into().unwrap()) as usize;
    let page_three = 48 + pages * 16 + 3 * PAGE;
    bytes[page_three + 17] ^= 0x40;
    std::fs::write(first, bytes).unwrap();

    let node = Node::start(config(root.path(), "data", PACED)).unwrap();
    let client = connect(&node);
    let mut out = vec![0u8; PAGE];
    let error = client
        .raw()
        .read_pages(&bad, &[3], &mut out)
        .expect_err("a page that fails its checksum is never served");
    assert_eq!(error.code(), Some(ErrorCode::RegionUnavailable), "{error}");
    let stat = client.stat_region("bad").unwrap();
    assert_eq!(stat.state.name(), "damaged", "{stat:?}");
    assert!(
        stat.state_reason.contains("its baseline failed to load")
            && stat.state_reason.contains("page 3 checksum mismatch"),
        "region stat names the damage: {stat:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("its baseline failed to load") && message.contains("checksum mismatch"),
        "{message}"
    );
    // Later reads get the same error, and the good region serves.
    assert!(client.raw().read_pages(&bad, &[600], &mut out).is_err());
    assert_all(&client, &good, &good_model, "the undamaged region");
}

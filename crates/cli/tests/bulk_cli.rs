//! The bulk tier with real node processes: `kill -9` while segments move
//! between RAM and disk, then a restart that reloads a region larger than
//! RAM from its checkpoint.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{NodeProcess, free_port, run_json};
use pagoda::{Client, ClientOptions, RegionInfo};
use pagoda_node::tiering::PASS_MS;
use rand::{Rng, SeedableRng};

const PAGE: usize = 4096;
/// 32 MiB: four times the node's RAM.
const PAGES: u64 = 8192;
const RAM: &str = "8MiB";

/// A page's bytes: its number and version, repeated; version 0 is zeros
/// and odd versions of some pages repeat a shared pattern (so duplicate
/// blocks are exercised).
fn bytes(page: u64, version: u32) -> Vec<u8> {
    if version == 0 {
        return vec![0; PAGE];
    }
    if page.is_multiple_of(5) && version % 2 == 1 {
        return vec![version as u8; PAGE];
    }
    let mut out = Vec::with_capacity(PAGE);
    while out.len() < PAGE {
        out.extend_from_slice(&page.to_le_bytes());
        out.extend_from_slice(&(version as u64).to_le_bytes());
    }
    out
}

fn start(addr: &str, root: &Path) -> NodeProcess {
    let bulk = root.join("bulk");
    let storage = root.join("storage");
    NodeProcess::start_sized(
        addr,
        RAM,
        &root.join("data"),
        &[
            "--bulk-dir",
            bulk.to_str().unwrap(),
            "--bulk-capacity",
            "256MiB",
            "--storage",
            storage.to_str().unwrap(),
            "--checkpoint-interval",
            "0",
        ],
    )
}

fn connect(addr: &str) -> Client {
    let options = ClientOptions {
        timeout: Duration::from_secs(30),
        reconnect_for: Duration::ZERO,
        ..ClientOptions::default()
    };
    Client::connect(addr, options).unwrap()
}

fn write(client: &Client, info: &RegionInfo, pages: &[u64], version: u32) -> bool {
    let data: Vec<u8> = pages.iter().flat_map(|&p| bytes(p, version)).collect();
    client.raw().write_pages(info, pages, &data).is_ok()
}

/// Every page against `model` (a version per page).
fn assert_region(client: &Client, info: &RegionInfo, model: &[u32], what: &str) {
    for first in (0..PAGES).step_by(256) {
        let pages: Vec<u64> = (first..first + 256).collect();
        let mut out = vec![0u8; pages.len() * PAGE];
        client.raw().read_pages(info, &pages, &mut out).unwrap();
        for (index, &page) in pages.iter().enumerate() {
            assert!(
                out[index * PAGE..(index + 1) * PAGE] == bytes(page, model[page as usize])[..],
                "{what}: page {page} is not version {}",
                model[page as usize]
            );
        }
    }
}

// Guards the bulk tier across a crash: a node killed with SIGKILL at a
// random moment while a writer forces segments out and back in comes back
// with exactly its last checkpoint (what a node crash may lose is the writes
// since, as the README says; nothing torn, stale or mixed), reloading a
// region four times its RAM (the load itself pages out). Until the kill,
// every read returned the last acknowledged write.
#[test]
fn kill_9_while_paging_keeps_the_checkpoint_exactly() {
    let root = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = start(&addr, root.path());
    let client = connect(&addr);
    let info = client
        .create_region("r", PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    let mut checkpointed = vec![0u32; PAGES as usize];
    let all: Vec<u64> = (0..PAGES).collect();
    for chunk in all.chunks(256) {
        assert!(write(&client, &info, chunk, 1));
        for &page in chunk {
            checkpointed[page as usize] = 1;
        }
    }
    client.checkpoint("r", true).unwrap();
    drop(client);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xb01c);
    for iteration in 0..3u32 {
        let version = 10 + iteration * 10;
        // A writer rewrites random batches (each within a segment) and reads
        // each back, until the node dies.
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let writer = {
            let (addr, info, stop) = (addr.clone(), info.clone(), stop.clone());
            let acknowledged = acknowledged.clone();
            let mut model = checkpointed.clone();
            let seed = rng.r#gen::<u64>();
            std::thread::spawn(move || {
                let client = connect(&addr);
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let began_writing = Instant::now();
                for step in 0..100_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A hot pair of segments that moves on every three
                    // of the pager's passes: the pager brings each new pair
                    // in (they are paged out, written in place, and warm)
                    // in exchange for a pair gone cold. (Moved by a step
                    // count instead, a fast machine cycled through every
                    // segment within a pass or two, all of them equally
                    // warm, and nothing was exchanged.)
                    let pair = began_writing.elapsed().as_millis() / (3 * PASS_MS) as u128;
                    let segment = (pair as u64 * 2 + rng.gen_range(0..2)) % (PAGES / 512);
                    let pages: Vec<u64> = (0..8)
                        .map(|_| segment * 512 + rng.gen_range(0..512))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let this = version + step % 7;
                    let data: Vec<u8> = pages.iter().flat_map(|&p| bytes(p, this)).collect();
                    let began = Instant::now();
                    let written = loop {
                        match client.raw().write_pages(&info, &pages, &data) {
                            // The previous client's writer role lasts until
                            // the node sees it gone.
                            Err(error)
                                if error.code() == Some(pagoda::ErrorCode::WriterBusy)
                                    && began.elapsed() < Duration::from_secs(10) =>
                            {
                                std::thread::sleep(Duration::from_millis(20))
                            }
                            result => break result.is_ok(),
                        }
                    };
                    if !written {
                        break;
                    }
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    for &page in &pages {
                        model[page as usize] = this;
                    }
                    let mut out = vec![0u8; pages.len() * PAGE];
                    if client.raw().read_pages(&info, &pages, &mut out).is_err() {
                        break;
                    }
                    for (index, &page) in pages.iter().enumerate() {
                        assert!(
                            out[index * PAGE..(index + 1) * PAGE] == bytes(page, this)[..],
                            "page {page} read back wrong before the kill"
                        );
                    }
                }
            })
        };
        // Once segments are moving both ways, at a random moment.
        let started = Instant::now();
        let moving = || {
            let stat = run_json(&["node", "stat", "--json"], &addr);
            stat["segments_paged_in"].as_u64().unwrap() > 0
        };
        while (acknowledged.load(Ordering::Relaxed) < 3 || !moving()) && !writer.is_finished() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no segment came back in within a minute"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
        let stat = run_json(&["node", "stat", "--json"], &addr);
        let paged_out = stat["segments_paged_out"].as_u64().unwrap();
        let paged_in = stat["segments_paged_in"].as_u64().unwrap();
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let acknowledged = acknowledged.load(Ordering::Relaxed);
        assert!(
            acknowledged >= 3 && paged_out > 0 && paged_in > 0,
            "iteration {iteration}: the kill must land while pages move \
             ({acknowledged} writes, {paged_out} segments out, {paged_in} in)"
        );

        node = start(&addr, root.path());
        let client = connect(&addr);
        let stat = client.stat_region("r").unwrap();
        assert_eq!(stat.state.name(), "active", "iteration {iteration}");
        // The reload is lazy: reading every page loads the whole baseline,
        // which RAM cannot hold, so it pages out as it loads.
        assert_region(&client, &info, &checkpointed, "after the restart");
        let stat = client.stat_region("r").unwrap();
        assert!(
            stat.segments_loading == 0 && stat.segments_paged_out > 0,
            "the reload paged out: {stat:?}"
        );
        // A new checkpoint to come back to, partly over paged-out pages.
        for first in (0..PAGES).step_by(3 * 512) {
            let pages: Vec<u64> = (first..(first + 64).min(PAGES)).collect();
            assert!(write(&client, &info, &pages, version + 9));
            for &page in &pages {
                checkpointed[page as usize] = version + 9;
            }
        }
        client.checkpoint("r", false).unwrap();
    }
}

//! Checkpoints, reloads and recovery against real nodes on loopback, with
//! writers running throughout, compared against models byte for byte.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pagoda::{Client, ClientOptions, RecoveryPhase, RegionInfo, RegionState};
use pagoda_node::{Node, NodeConfig, StorageConfig};
use rand::{Rng, SeedableRng};

const PAGE: usize = 4096;
const PAGES: u64 = 4096; // 16 MiB

fn start(data_dir: &Path, storage: &Path) -> Node {
    let mut config = NodeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        256 << 20,
        data_dir.to_path_buf(),
    );
    config.storage = Some(StorageConfig::Dir(storage.to_path_buf()));
    // Small objects: many uploads, so writers interleave with a checkpoint.
    config.checkpoint_object_bytes = 64 * 1024;
    Node::start(config).unwrap()
}

fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr, ClientOptions::default()).unwrap()
}

/// A page's contents: its number and a version, repeated.
fn page_bytes(page: u64, version: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PAGE);
    while bytes.len() < PAGE {
        bytes.extend_from_slice(&page.to_le_bytes());
        bytes.extend_from_slice(&version.to_le_bytes());
    }
    bytes
}

fn version_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[8..16].try_into().unwrap())
}

fn read_all(client: &Client, info: &RegionInfo) -> Vec<u8> {
    let mut out = vec![0u8; PAGES as usize * PAGE];
    for (chunk, buffer) in out.chunks_mut(256 * PAGE).enumerate() {
        let pages: Vec<u64> = (chunk as u64 * 256..chunk as u64 * 256 + 256).collect();
        client.raw().read_pages(info, &pages, buffer).unwrap();
    }
    out
}

/// Recovers `name` from the baseline alone onto a fresh node and returns
/// the pages it holds.
fn baseline_contents(storage: &Path, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), storage);
    let client = connect(node.local_addr());
    let done = client
        .recover(name, None, None, true, Duration::from_millis(10), |_| {})
        .unwrap();
    assert_eq!(done.phase, RecoveryPhase::Done);
    assert!(done.message.contains("baseline alone"), "{}", done.message);
    let info = client.stat_region(name).unwrap().info;
    read_all(&client, &info)
}

// Guards copy-on-write: a checkpoint taken while one writer rewrites pages
// is exactly the region after some prefix of that writer's writes, never a
// mix; the next (incremental) checkpoint likewise; and only dirty pages are
// written by an incremental checkpoint.
#[test]
fn checkpoints_are_points_in_time_while_a_writer_runs() {
    let storage = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let node = start(data.path(), storage.path());
    let client = Arc::new(connect(node.local_addr()));
    let info = client
        .create_region("r", PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    // The one writer (one writer per region): its own connection, used by
    // every round's writer thread, while `client` takes the checkpoints.
    let writer_client = connect(node.local_addr());
    // Every page written once (version = page + 1) so the first snapshot
    // covers the whole region.
    let mut version = 0u64;
    let mut history: Vec<(u64, u64)> = Vec::new(); // (page, version) in order
    for page in 0..PAGES {
        version += 1;
        writer_client
            .raw()
            .write_pages(&info, &[page], &page_bytes(page, version))
            .unwrap();
        history.push((page, version));
    }
    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            // Not `client`'s connection: a node serves one connection's
            // requests in order, so a shared one would queue the writes
            // behind the checkpoint.
            let client = writer_client.clone();
            let info = info.clone();
            let stop = stop.clone();
            let mut version = version;
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(round);
                let mut written = Vec::new();
                while !stop.load(Ordering::Relaxed) && written.len() < 200_000 {
                    // Only the first half of the pages: however long a
                    // checkpoint takes on a loaded machine, the second half
                    // stays clean, so an incremental checkpoint that wrote
                    // clean pages shows.
                    let page = rng.gen_range(0..PAGES / 2);
                    version += 1;
                    client
                        .raw()
                        .write_pages(&info, &[page], &page_bytes(page, version))
                        .unwrap();
                    written.push((page, version));
                }
                written
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        let checkpoint = client.checkpoint("r", false).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(
            written.len() > 100,
            "the writer wrote during the checkpoint ({} writes)",
            written.len()
        );
        version = written.last().unwrap().1;
        history.extend(written);
        assert_eq!(checkpoint.number, round + 1);
        if round == 0 {
            assert!(checkpoint.full);
        } else {
            assert!(!checkpoint.full);
            assert!(
                checkpoint.pages <= PAGES / 2,
                "an incremental checkpoint writes only dirty pages ({} of {PAGES}, of which only the first half were written)",
                checkpoint.pages
            );
        }
        // The baseline must equal the region after exactly the writes up to
        // the newest version it holds.
        let baseline = baseline_contents(storage.path(), "r");
        let newest = baseline.chunks(PAGE).map(version_of).max().unwrap();
        let mut model = vec![0u8; PAGES as usize * PAGE];
        for &(page, v) in history.iter().take_while(|&&(_, v)| v <= newest) {
            model[page as usize * PAGE..(page as usize + 1) * PAGE]
                .copy_from_slice(&page_bytes(page, v));
        }
        for page in 0..PAGES as usize {
            let range = page * PAGE..(page + 1) * PAGE;
            assert!(
                baseline[range.clone()] == model[range.clone()],
                "round {round}: page {page} holds version {} in the baseline, the cut at {newest} says {}",
                version_of(&baseline[range.clone()]),
                version_of(&model[range]),
            );
        }
    }
}

// Guards recovery with writers running at the source throughout: the target
// ends equal to every acknowledged write, the source only served pages dirty
// since the baseline, and the source's copy became read-only.
#[test]
fn recovery_with_writers_matches_the_model() {
    let storage = tempfile::tempdir().unwrap();
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let source = start(source_dir.path(), storage.path());
    let target = start(target_dir.path(), storage.path());
    let client = Arc::new(connect(source.local_addr()));
    let info = client
        .create_region("m", PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    for chunk in 0..PAGES / 256 {
        let pages: Vec<u64> = (chunk * 256..chunk * 256 + 256).collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| page_bytes(p, 1)).collect();
        client.raw().write_pages(&info, &pages, &data).unwrap();
    }
    client.checkpoint("m", false).unwrap();
    // 10% of the pages change after the baseline.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model: Vec<u64> = vec![1; PAGES as usize];
    for _ in 0..PAGES / 10 {
        let page = rng.gen_range(0..PAGES);
        model[page as usize] += 1;
        client
            .raw()
            .write_pages(&info, &[page], &page_bytes(page, model[page as usize]))
            .unwrap();
    }
    let writers: Vec<_> = (0..2u64)
        .map(|writer| {
            let client = client.clone();
            let info = info.clone();
            std::thread::spawn(move || {
                // Each writer owns the pages congruent to it mod 2.
                let mut rng = rand::rngs::StdRng::seed_from_u64(100 + writer);
                let mut acknowledged: Vec<(u64, u64)> = Vec::new();
                for n in 0..1_000_000u64 {
                    let page = rng.gen_range(0..PAGES / 2) * 2 + writer;
                    let version = 1_000_000 * (writer + 1) + n;
                    match client
                        .raw()
                        .write_pages(&info, &[page], &page_bytes(page, version))
                    {
                        Ok(()) => acknowledged.push((page, version)),
                        Err(pagoda::ClientError::Remote {
                            code: pagoda::ErrorCode::ReadOnly,
                            ..
                        }) => return acknowledged,
                        Err(error) => panic!("writer {writer}: {error}"),
                    }
                }
                panic!("writer {writer} was never stopped by the freeze");
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    let target_client = connect(target.local_addr());
    let done = target_client
        .recover(
            "m",
            Some(&source.local_addr().to_string()),
            None,
            false,
            Duration::from_millis(5),
            |_| {},
        )
        .unwrap();
    for writer in writers {
        for (page, version) in writer.join().unwrap() {
            model[page as usize] = version;
        }
    }
    let recovered_info = target_client.stat_region("m").unwrap().info;
    let recovered = read_all(&target_client, &recovered_info);
    for page in 0..PAGES as usize {
        let bytes = &recovered[page * PAGE..(page + 1) * PAGE];
        assert!(
            bytes == page_bytes(page as u64, model[page]).as_slice(),
            "page {page}: version {} recovered, {} acknowledged",
            version_of(bytes),
            model[page]
        );
    }
    assert_eq!(done.baseline_pages, PAGES);
    assert!(
        done.source_pages_done < PAGES,
        "the source served {} pages, not only the dirty ones",
        done.source_pages_done
    );
    let source_stat = client.stat_region("m").unwrap();
    assert_eq!(source_stat.state, RegionState::ReadOnly);
    let target_stat = target_client.stat_region("m").unwrap();
    assert_eq!(target_stat.state, RegionState::Active);
    // The target can checkpoint the moved region, incrementally.
    let next = target_client.checkpoint("m", false).unwrap();
    assert!(!next.full);
    assert_eq!(next.number, 2);
}

// Guards reload on restart: a graceful stop checkpoints the pages written
// since the last checkpoint, a node restarted on its data dir serves each
// region's latest baseline exactly, and a region never written starts empty
// with no checkpoint.
#[test]
fn restart_reloads_the_latest_baseline() {
    let storage = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let expected;
    {
        let node = start(data.path(), storage.path());
        let client = connect(node.local_addr());
        let info = client
            .create_region("k", PAGES * PAGE as u64, PAGE as u32)
            .unwrap();
        client.create_region("never", 1 << 20, PAGE as u32).unwrap();
        for page in (0..PAGES).step_by(3) {
            client
                .raw()
                .write_pages(&info, &[page], &page_bytes(page, 5))
                .unwrap();
        }
        client.checkpoint("k", false).unwrap();
        for page in (0..PAGES).step_by(7) {
            client
                .raw()
                .write_pages(&info, &[page], &page_bytes(page, 6))
                .unwrap();
        }
        let second = client.checkpoint("k", false).unwrap();
        assert_eq!(second.number, 2);
        client
            .raw()
            .write_pages(&info, &[1], &page_bytes(1, 99))
            .unwrap();
        expected = read_all(&client, &info);
        node.shutdown();
    }
    let node = start(data.path(), storage.path());
    let client = connect(node.local_addr());
    let info = client.stat_region("k").unwrap().info;
    let reloaded = read_all(&client, &info);
    assert!(
        reloaded == expected,
        "the reload differs from the region at shutdown"
    );
    let stat = client.stat_region("k").unwrap();
    assert_eq!(
        (stat.checkpoint, stat.dirty_pages),
        (3, 0),
        "the stop took checkpoint 3"
    );
    let fourth = client.checkpoint("k", false).unwrap();
    assert_eq!(fourth.number, 4);
    assert_eq!(fourth.pages, 0);
    // A full checkpoint after a reload includes the pages that came from the
    // baseline (which no write has touched since), and older objects are
    // collected: the region survives another restart from it alone.
    let full = client.checkpoint("k", true).unwrap();
    assert!(full.full);
    assert_eq!(full.pages, full.baseline_pages);
    assert!(full.pages >= PAGES / 3, "{} pages", full.pages);
    drop(client);
    node.shutdown();
    let node = start(data.path(), storage.path());
    let client = connect(node.local_addr());
    let info = client.stat_region("k").unwrap().info;
    assert!(
        read_all(&client, &info) == expected,
        "the full checkpoint lost pages"
    );
    assert_eq!(client.stat_region("never").unwrap().checkpoint, 0);
}

//! Read-ahead through a real node: streams, references, journaled writes and
//! several threads, each checked against the data written.

mod common;

use std::sync::Arc;
use std::time::Duration;

use pagoda::{Durability, PrefetchConfig, RegionOptions};

const PAGE: usize = 4096;
/// Ends an index page.
const INDEX_MAGIC: &[u8; 8] = b"INDEXPG!";

fn page_of(page: u64, version: u64) -> Vec<u8> {
    let mut bytes = vec![(page % 251) as u8; PAGE];
    bytes[..8].copy_from_slice(&page.to_le_bytes());
    bytes[8..16].copy_from_slice(&version.to_le_bytes());
    bytes
}

fn fill(region: &pagoda::Region, pages: u64, version: u64) {
    let mut data = Vec::with_capacity(64 * PAGE);
    for first in (0..pages).step_by(64) {
        data.clear();
        for page in first..(first + 64).min(pages) {
            data.extend(page_of(page, version));
        }
        region.write_at(first * PAGE as u64, &data).unwrap();
    }
    region.flush().unwrap();
}

// Guards the trend prefetcher over the wire: a scan of 2,048 pages through a
// 128-page cache is served almost entirely by read-ahead (replies collected
// without waiting, landing straight in their buffers), forwards and
// backwards, with every page right.
#[test]
fn a_scan_over_the_network_is_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client
        .create_region("scan", 2048 * PAGE as u64, PAGE as u32)
        .unwrap();
    {
        let writer = client
            .open_region("scan", RegionOptions::with_cache_bytes(1 << 20))
            .unwrap();
        fill(&writer, 2048, 1);
    }
    let region = client
        .open_region_read_only("scan", RegionOptions::with_cache_bytes(128 * PAGE as u64))
        .unwrap();
    let mut buf = vec![0u8; PAGE];
    for page in (0..2048).chain((0..2048).rev()) {
        region.read_at(page * PAGE as u64, &mut buf).unwrap();
        assert_eq!(buf, page_of(page, 1), "page {page}");
    }
    let stats = region.cache_stats();
    assert!(
        stats.prefetch_used > 3500,
        "read-ahead used for too few of 4,096 reads: {stats:?}"
    );
    assert!(stats.misses < 500, "{stats:?}");
    assert_eq!(stats.prefetch_failed, 0);
}

// Guards reference-aware read-ahead over the wire: an index page lists 100
// records in random order; with the extractor (and its read-ahead given time
// to arrive), reading them all after the index costs one demand miss (the
// index), and the records are right. Without it, every record misses.
#[test]
fn an_index_pages_records_are_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client
        .create_region("index", 4096 * PAGE as u64, PAGE as u32)
        .unwrap();
    let records: Vec<u64> = (0..100u64).map(|i| 1 + (i * 2654435761) % 4095).collect();
    {
        let writer = client
            .open_region("index", RegionOptions::with_cache_bytes(1 << 20))
            .unwrap();
        fill(&writer, 4096, 2);
        let mut index = vec![0u8; PAGE];
        for (slot, record) in records.iter().enumerate() {
            index[slot * 8..slot * 8 + 8].copy_from_slice(&record.to_le_bytes());
        }
        index[PAGE - 8..].copy_from_slice(INDEX_MAGIC);
        writer.write_at(0, &index).unwrap();
        writer.flush().unwrap();
    }
    for with_extractor in [true, false] {
        let region = client
            .open_region_read_only(
                "index",
                RegionOptions {
                    prefetch: PrefetchConfig::off(),
                    ..RegionOptions::with_cache_bytes(512 * PAGE as u64)
                },
            )
            .unwrap();
        if with_extractor {
            region.set_reference_extractor(
                |bytes, out| {
                    // Only index pages refer to records.
                    if &bytes[PAGE - 8..] != INDEX_MAGIC {
                        return;
                    }
                    for word in bytes[..PAGE - 8].chunks_exact(8) {
                        let record = u64::from_le_bytes(word.try_into().unwrap());
                        if record != 0 {
                            out.push(record.saturating_mul(PAGE as u64));
                        }
                    }
                },
                Duration::from_secs(10),
            );
        }
        let mut index = vec![0u8; PAGE];
        region.read_at(0, &mut index).unwrap();
        if with_extractor {
            // A demand access never waits for a read-ahead: let the records
            // arrive (an empty hint takes in what has), so that the count
            // below does not depend on the machine's speed.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while region.cache_stats().pages_fetched < 101 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "read-ahead never arrived"
                );
                region.prefetch(&[], Duration::ZERO).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut buf = vec![0u8; PAGE];
        for &record in &records {
            region.read_at(record * PAGE as u64, &mut buf).unwrap();
            assert_eq!(buf, page_of(record, 2));
        }
        let stats = region.cache_stats();
        if with_extractor {
            assert_eq!(stats.misses, 1, "{stats:?}");
            assert_eq!(stats.prefetch_used, 100);
        } else {
            assert_eq!(stats.misses, 101, "{stats:?}");
            assert_eq!(stats.prefetch_issued, 0);
        }
    }
}

// Guards read-ahead with journaled writes: committed records go to the node
// before a read-ahead is sent, so a scan after transactions (whose pages are
// not resident) reads what was committed, never older contents.
#[test]
fn read_ahead_sees_committed_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client
        .create_region("tx", 512 * PAGE as u64, PAGE as u32)
        .unwrap();
    let region = client
        .open_region(
            "tx",
            RegionOptions {
                durability: Durability::Local {
                    journal_dir: journal.path().to_path_buf(),
                },
                ..RegionOptions::with_cache_bytes(32 * PAGE as u64)
            },
        )
        .unwrap();
    let mut buf = vec![0u8; PAGE];
    for round in 1..=3u64 {
        for page in (0..512u64).step_by(3) {
            region
                .transaction(|tx| tx.write_at(page * PAGE as u64 + 100, &round.to_le_bytes()))
                .unwrap();
        }
        for page in 0..512u64 {
            region.read_at(page * PAGE as u64, &mut buf).unwrap();
            let expected = if page % 3 == 0 { round } else { 0 };
            assert_eq!(
                u64::from_le_bytes(buf[100..108].try_into().unwrap()),
                expected,
                "round {round} page {page}"
            );
        }
    }
    assert!(region.cache_stats().prefetch_used > 1000);
}

// Guards read-ahead with several threads on one connection: each thread
// scans and rewrites its own quarter of the region through a small cache,
// so read-aheads, write-backs and demand misses of all four interleave;
// every read sees its thread's last write.
#[test]
fn threads_scanning_and_writing_see_their_writes() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client
        .create_region("threads", 1024 * PAGE as u64, PAGE as u32)
        .unwrap();
    let region = Arc::new(
        client
            .open_region("threads", RegionOptions::with_cache_bytes(64 * PAGE as u64))
            .unwrap(),
    );
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let region = region.clone();
            std::thread::spawn(move || {
                let pages = thread * 256..thread * 256 + 256;
                let mut buf = vec![0u8; PAGE];
                for round in 1..=4u64 {
                    for page in pages.clone() {
                        region
                            .write_at(page * PAGE as u64, &page_of(page, round))
                            .unwrap();
                    }
                    for page in pages.clone() {
                        region.read_at(page * PAGE as u64, &mut buf).unwrap();
                        assert_eq!(buf, page_of(page, round), "thread {thread} page {page}");
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    region.flush().unwrap();
    let reader = client
        .open_region_read_only("threads", RegionOptions::with_cache_bytes(1 << 20))
        .unwrap();
    let mut buf = vec![0u8; PAGE];
    for page in 0..1024 {
        reader.read_at(page * PAGE as u64, &mut buf).unwrap();
        assert_eq!(buf, page_of(page, 4));
    }
}

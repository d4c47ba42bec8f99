//! What one client flushes, another reads: across page sizes, cache sizes and
//! unaligned ranges, against a real node on loopback.

mod common;

use pagoda::{Client, RegionOptions};
use pagoda_wire::limits::SEGMENT_BYTES;

const MIB: u64 = 1024 * 1024;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Unaligned ranges: single bytes, page boundaries, multi-page spans, a
/// segment boundary and the region's last bytes. Some overlap, so later
/// writes must win.
fn ranges(page_size: u64, region_bytes: u64) -> Vec<(u64, usize)> {
    let ranges = vec![
        (1, 1),
        (page_size - 1, 2),
        (3 * page_size + 17, 2 * page_size as usize + 5),
        (page_size + 100, 7),
        (SEGMENT_BYTES - 3, 7),
        (SEGMENT_BYTES + page_size / 2, page_size as usize),
        (12_345, 300_000),
        (region_bytes - 5, 5),
    ];
    for &(offset, len) in &ranges {
        assert!(offset + len as u64 <= region_bytes);
    }
    ranges
}

/// Checks the whole region through `client` against `model`, twice: straight
/// from the node, and through a cold cache of two pages, range by range.
fn assert_node_holds(
    client: &Client,
    name: &str,
    model: &[u8],
    ranges: &[(u64, usize)],
    context: &str,
) {
    let info = client
        .open_region_read_only(name, RegionOptions::default())
        .unwrap()
        .info()
        .clone();
    let page_size = info.page_size as usize;
    let pages: Vec<u64> = (0..info.size / page_size as u64).collect();
    let mut raw = vec![0u8; model.len()];
    client.raw().read_pages(&info, &pages, &mut raw).unwrap();
    if let Some(at) = raw.iter().zip(model).position(|(a, b)| a != b) {
        panic!(
            "{context}: the node's byte {at} is {}, expected {}",
            raw[at], model[at]
        );
    }
    let reader = client
        .open_region_read_only(name, RegionOptions::with_cache_bytes(2 * page_size as u64))
        .unwrap();
    for &(offset, len) in ranges {
        // The range with a margin on both sides, clipped to the region.
        let start = offset.saturating_sub(3);
        let end = (offset + len as u64 + 3).min(model.len() as u64);
        let mut buf = vec![0u8; (end - start) as usize];
        reader.read_at(start, &mut buf).unwrap();
        assert!(
            buf[..] == model[start as usize..end as usize],
            "{context}: range {start}..{end} differs through a cold cache"
        );
    }
}

// Guards flush's promise: once `flush` returns, everything written before it
// is on the node, whatever the page size, however small the writer's cache
// (pages evicted early and pages still cached alike), and for ranges that
// start and end anywhere. A second client, with its own connection and a
// cold cache, must read it back exactly, and overwrites must win.
#[test]
fn flushed_writes_are_read_back_by_a_second_client() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 256 * MIB, None);
    let writer_client = common::client(&node);
    let reader_client = common::client(&node);
    for page_size in [4096u64, 16 * 1024, 64 * 1024, 2 * MIB] {
        let region_bytes = (4 * MIB).max(8 * page_size);
        let ranges = ranges(page_size, region_bytes);
        for cache_pages in [1u64, 3, 64] {
            let name = format!("r-{page_size}-{cache_pages}");
            let context = format!("page size {page_size}, writer cache {cache_pages} pages");
            writer_client
                .create_region(&name, region_bytes, page_size as u32)
                .unwrap();
            let writer = writer_client
                .open_region(
                    &name,
                    RegionOptions::with_cache_bytes(cache_pages * page_size),
                )
                .unwrap();
            let mut model = vec![0u8; region_bytes as usize];
            for (round, seed_base) in [(0, 0u32), (1, 1000)] {
                for (index, &(offset, len)) in ranges.iter().enumerate() {
                    // The second round rewrites every other range only.
                    if round == 1 && index % 2 == 0 {
                        continue;
                    }
                    let data = pattern(len, seed_base + index as u32);
                    writer.write_at(offset, &data).unwrap();
                    model[offset as usize..offset as usize + len].copy_from_slice(&data);
                }
                writer.flush().unwrap();
                assert_node_holds(
                    &reader_client,
                    &name,
                    &model,
                    &ranges,
                    &format!("{context}, round {round}"),
                );
            }
            // The writer still reads its own writes after flushing.
            let (offset, len) = ranges[2];
            let mut buf = vec![0u8; len];
            writer.read_at(offset, &mut buf).unwrap();
            assert!(
                buf[..] == model[offset as usize..offset as usize + len],
                "{context}"
            );
            drop(writer);
            writer_client.delete_region(&name).unwrap();
        }
    }
}

// Guards against flush forgetting pages written concurrently with an earlier
// flush, or dropping writes made from several threads: four threads write
// disjoint unaligned ranges while a fifth flushes repeatedly; after a final
// flush a second client sees every write.
#[test]
fn flush_covers_writes_from_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 * MIB, None);
    let writer_client = common::client(&node);
    let page_size = 4096u64;
    let region_bytes = 2 * MIB;
    writer_client
        .create_region("threads", region_bytes, page_size as u32)
        .unwrap();
    let writer = writer_client
        .open_region("threads", RegionOptions::with_cache_bytes(4 * page_size))
        .unwrap();
    const THREADS: u64 = 4;
    const WRITES: u64 = 200;
    const CHUNK_BYTES: u64 = 1000;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let flusher = scope.spawn(|| {
            let mut flushes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && flushes < 10_000 {
                writer.flush().unwrap();
                flushes += 1;
            }
        });
        let writers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let writer = &writer;
                scope.spawn(move || {
                    for write in 0..WRITES {
                        let chunk = write * THREADS + thread;
                        let data = pattern(CHUNK_BYTES as usize, chunk as u32);
                        writer.write_at(7 + chunk * CHUNK_BYTES, &data).unwrap();
                    }
                })
            })
            .collect();
        for handle in writers {
            handle.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flusher.join().unwrap();
    });
    writer.flush().unwrap();
    let mut model = vec![0u8; region_bytes as usize];
    for chunk in 0..THREADS * WRITES {
        let start = (7 + chunk * CHUNK_BYTES) as usize;
        model[start..start + CHUNK_BYTES as usize]
            .copy_from_slice(&pattern(CHUNK_BYTES as usize, chunk as u32));
    }
    let reader_client = common::client(&node);
    assert_node_holds(
        &reader_client,
        "threads",
        &model,
        &[(7, 800_000)],
        "four writers",
    );
}

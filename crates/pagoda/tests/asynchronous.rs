//! The async API under tokio: every call works as its blocking twin does,
//! and none blocks the runtime's thread.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda::asynchronous::AsyncClient;
use pagoda::{ClientOptions, RegionOptions};

// Guards the API end to end: create, open, write, read (a miss through the
// blocking pool, then a hit in place), typed values, a transaction, flush,
// list and delete; a second client reads what the first flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_calls_work_as_their_blocking_twins() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let addr = node.local_addr().to_string();
    let client = AsyncClient::connect(addr.clone(), ClientOptions::default())
        .await
        .unwrap();
    client.create_region("a", 4 << 20, 4096).await.unwrap();
    let region = client
        .open_region("a", RegionOptions::with_cache_bytes(64 * 4096))
        .await
        .unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    region.write_at(5_000, data.clone()).await.unwrap();
    assert_eq!(region.read_at(5_000, data.len()).await.unwrap(), data);
    region.write_value(1 << 20, 0xfeed_u64).await.unwrap();
    assert_eq!(region.read_value::<u64>(1 << 20).await.unwrap(), 0xfeed);
    let committed = region
        .transaction(|tx| {
            tx.write_at(2 << 20, b"tx")?;
            Ok(7)
        })
        .await
        .unwrap();
    assert_eq!(committed, 7);
    region.flush().await.unwrap();
    let hits_before = region.cache_stats().hits;
    assert_eq!(region.read_at(5_000, 100).await.unwrap(), data[..100]);
    assert!(
        region.cache_stats().hits > hits_before,
        "a resident read is a hit"
    );
    let other = AsyncClient::connect(addr, ClientOptions::default())
        .await
        .unwrap();
    let reader = other
        .open_region_read_only("a", RegionOptions::with_cache_bytes(16 * 4096))
        .await
        .unwrap();
    assert_eq!(reader.read_at(5_000, data.len()).await.unwrap(), data);
    assert_eq!(reader.read_at(2 << 20, 2).await.unwrap(), b"tx");
    assert_eq!(client.list_regions().await.unwrap().len(), 1);
    assert!(
        client
            .open_region("missing", RegionOptions::default())
            .await
            .is_err()
    );
    drop(reader);
    drop(region);
    client.delete_region("a").await.unwrap();
    assert!(client.list_regions().await.unwrap().is_empty());
}

// Guards "never blocks the runtime": on a single-threaded runtime, a ticker
// task keeps ticking while the only other task fetches thousands of pages
// and flushes megabytes (which take milliseconds of network waits).
#[tokio::test(flavor = "current_thread")]
async fn calls_leave_the_runtime_thread_free() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 256 << 20, None);
    let client = AsyncClient::connect(node.local_addr().to_string(), ClientOptions::default())
        .await
        .unwrap();
    client.create_region("b", 64 << 20, 4096).await.unwrap();
    let region = client
        .open_region("b", RegionOptions::with_cache_bytes(32 << 20))
        .await
        .unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let counter = ticks.clone();
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(1));
        loop {
            interval.tick().await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    tokio::task::yield_now().await;
    let began = Instant::now();
    let ticks_before = ticks.load(Ordering::Relaxed);
    for chunk in 0..32u64 {
        region
            .write_at(chunk << 20, vec![chunk as u8; 1 << 20])
            .await
            .unwrap();
    }
    region.flush().await.unwrap();
    for page in (0..16_384u64).step_by(7) {
        let back = region.read_at(page * 4096, 8).await.unwrap();
        // 32 chunks of 1 MiB written; the rest of the region reads as zeros.
        let expected = if page < 32 * 256 { page / 256 } else { 0 };
        assert_eq!(back, vec![expected as u8; 8], "page {page}");
    }
    let elapsed = began.elapsed();
    let ticked = ticks.load(Ordering::Relaxed) - ticks_before;
    ticker.abort();
    // A blocked thread would tick at most once at the end; a free one ticks
    // about once a millisecond (allow for a slow, shared machine).
    let expected = elapsed.as_millis() as u64 / 4;
    assert!(
        elapsed < Duration::from_millis(20) || ticked >= expected.max(2),
        "{ticked} ticks in {elapsed:?}: the runtime's thread was blocked"
    );
}

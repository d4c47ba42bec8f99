//! Read-ahead in the cache: streams, hints, references, deadlines, and the
//! guards that keep a read-ahead from installing stale contents or waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pagoda_cache::memory::MemoryBacking;
use pagoda_cache::policy::PolicyKind;
use pagoda_cache::{CacheConfig, PageCache, PrefetchConfig};

const PAGE: usize = 4096;

fn cache(region_pages: usize, frames: usize, prefetch: PrefetchConfig) -> PageCache<MemoryBacking> {
    cache_with(region_pages, frames, prefetch, PolicyKind::default())
}

fn cache_with(
    region_pages: usize,
    frames: usize,
    prefetch: PrefetchConfig,
    policy: PolicyKind,
) -> PageCache<MemoryBacking> {
    let cache = PageCache::new(
        CacheConfig {
            capacity_bytes: (frames * PAGE) as u64,
            page_size: PAGE,
            region_bytes: (region_pages * PAGE) as u64,
            policy,
            batch_pages_max: 64,
            prefetch,
        },
        MemoryBacking::new(region_pages * PAGE, PAGE),
    );
    // Every page starts with its own number, so a wrong page is seen.
    let pages: Vec<u64> = (0..region_pages as u64).collect();
    let contents: Vec<Vec<u8>> = pages.iter().map(|&p| page_of(p, 0)).collect();
    let buffers: Vec<&[u8]> = contents.iter().map(|c| &c[..]).collect();
    pagoda_cache::Backing::write_pages(cache.backing(), &pages, &buffers).unwrap();
    cache
}

fn page_of(page: u64, version: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; PAGE];
    bytes[..8].copy_from_slice(&page.to_le_bytes());
    bytes[8..16].copy_from_slice(&version.to_le_bytes());
    bytes
}

fn read_page(cache: &PageCache<MemoryBacking>, page: u64) -> (u64, u64) {
    let mut buf = vec![0u8; 16];
    cache.read_at(page * PAGE as u64, &mut buf).unwrap();
    (
        u64::from_le_bytes(buf[..8].try_into().unwrap()),
        u64::from_le_bytes(buf[8..16].try_into().unwrap()),
    )
}

// Guards the trend prefetcher end to end: a forward scan of 1000 pages with
// a 256-page cache reads almost everything ahead (demand misses only while
// the stream is confirmed and its window grows), every page is right, and
// the counters add up.
#[test]
fn a_scan_is_read_ahead() {
    let cache = cache(1000, 256, PrefetchConfig::default());
    for page in 0..1000 {
        assert_eq!(read_page(&cache, page), (page, 0));
    }
    let stats = cache.stats();
    assert!(stats.misses < 20, "demand misses: {stats:?}");
    assert!(stats.prefetch_used >= 980, "{stats:?}");
    assert!(stats.prefetch_issued >= stats.prefetch_used);
    assert_eq!(stats.hits + stats.misses, 1000);
    // And backwards, from the end.
    let cache2 = self::cache(1000, 256, PrefetchConfig::default());
    for page in (0..1000).rev() {
        assert_eq!(read_page(&cache2, page), (page, 0));
    }
    assert!(cache2.stats().misses < 20, "{:?}", cache2.stats());
}

// Guards that trend read-ahead can be turned off and that random access
// starts none.
#[test]
fn no_read_ahead_when_off_or_random() {
    let cache = cache(1000, 256, PrefetchConfig::off());
    for page in 0..300 {
        read_page(&cache, page);
    }
    assert_eq!(cache.stats().prefetch_issued, 0);
    assert_eq!(cache.stats().misses, 300);
    let cache = self::cache(4096, 256, PrefetchConfig::default());
    let mut x = 7u64;
    for _ in 0..3000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        read_page(&cache, (x >> 33) % 4096);
    }
    assert!(
        cache.stats().prefetch_issued < 30,
        "random access read ahead: {:?}",
        cache.stats()
    );
}

// Guards deadlines: a hint whose reply comes after its deadline is not
// waited for (the access that wants the page fetches it at once) and is not
// installed when it arrives later; it is counted late.
#[test]
fn a_late_read_ahead_is_neither_waited_for_nor_installed() {
    let cache = cache(64, 32, PrefetchConfig::off());
    cache
        .backing()
        .set_read_ahead_delay(Some(Duration::from_millis(200)));
    assert_eq!(
        cache
            .prefetch(&[5 * PAGE as u64], Duration::from_millis(20))
            .unwrap(),
        1
    );
    let began = Instant::now();
    assert_eq!(read_page(&cache, 5), (5, 0));
    assert!(
        began.elapsed() < Duration::from_millis(100),
        "the access waited for the read-ahead"
    );
    assert_eq!(cache.stats().misses, 1);
    std::thread::sleep(Duration::from_millis(250));
    // A miss elsewhere collects the late reply: dropped, counted late.
    read_page(&cache, 9);
    let stats = cache.stats();
    assert_eq!(stats.prefetch_late, 1, "{stats:?}");
    assert_eq!(stats.prefetch_used, 0);
    // One that arrives in time is installed and used.
    cache.backing().set_read_ahead_delay(None);
    cache
        .prefetch(
            &[20 * PAGE as u64, 21 * PAGE as u64],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(read_page(&cache, 20), (20, 0));
    assert_eq!(read_page(&cache, 21), (21, 0));
    assert_eq!(cache.stats().prefetch_used, 2);
    assert_eq!(cache.stats().misses, 2);
    // A hint outside the region is an error.
    assert!(
        cache
            .prefetch(&[64 * PAGE as u64], Duration::from_secs(1))
            .is_err()
    );
}

// Guards the write guard: a read-ahead sent before a page was written back
// (its contents are older) is never installed, even though the page is
// absent when it arrives.
#[test]
fn a_read_ahead_older_than_a_write_back_is_dropped() {
    // CLOCK, so that a scan evicts the written page (two-phase would keep
    // it, scan-resistant).
    let cache = cache_with(64, 4, PrefetchConfig::off(), PolicyKind::Clock);
    cache
        .backing()
        .set_read_ahead_delay(Some(Duration::from_millis(50)));
    // Sent now: holds version 0 of page 3.
    cache
        .prefetch(&[3 * PAGE as u64], Duration::from_secs(5))
        .unwrap();
    // Version 1 written through the cache, then evicted (written back) by
    // reading other pages through the four-frame cache.
    cache.write_at(3 * PAGE as u64, &page_of(3, 1)).unwrap();
    for page in 10..60 {
        read_page(&cache, page);
    }
    assert_eq!(
        &cache.backing().snapshot()[3 * PAGE + 8..3 * PAGE + 16],
        &1u64.to_le_bytes(),
        "{:?}",
        cache.stats()
    );
    std::thread::sleep(Duration::from_millis(80));
    read_page(&cache, 61); // collects the read-ahead
    assert_eq!(read_page(&cache, 3), (3, 1), "stale read-ahead installed");
    assert!(cache.stats().prefetch_late >= 1);
}

// Guards reference-aware read-ahead: an index page's extractor output is
// read ahead (so reading the records it lists misses nothing), offsets
// outside the region are ignored and counted, and the extractor is not
// run again on a hit.
#[test]
fn references_are_read_ahead_and_bad_ones_counted() {
    let cache = cache(256, 128, PrefetchConfig::off());
    let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = runs.clone();
    cache.set_reference_extractor(
        Some(Arc::new(move |bytes: &[u8], out: &mut Vec<u64>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let page = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            if page == 0 {
                out.extend([100, 37, 250, 3].map(|p| p * PAGE as u64));
                out.push(10_000 * PAGE as u64);
                out.push(u64::MAX);
            }
        })),
        Duration::from_secs(5),
    );
    read_page(&cache, 0);
    read_page(&cache, 0);
    assert_eq!(runs.load(std::sync::atomic::Ordering::Relaxed), 1);
    for page in [100, 37, 250, 3] {
        assert_eq!(read_page(&cache, page), (page, 0));
    }
    let stats = cache.stats();
    assert_eq!(stats.misses, 1, "{stats:?}");
    assert_eq!(stats.prefetch_used, 4);
    assert_eq!(stats.references_invalid, 2);
}

// Guards against deadlock and loss under the smallest budget: four threads
// scanning and writing through a one-frame cache with read-ahead of every
// kind on, bounded in time; every read sees its own thread's last write.
#[test]
fn read_ahead_under_a_one_page_budget_cannot_deadlock() {
    let cache = Arc::new(cache(64, 1, PrefetchConfig::default()));
    cache.set_reference_extractor(
        Some(Arc::new(|bytes: &[u8], out: &mut Vec<u64>| {
            let page = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            out.push(((page * 7 + 3) % 64) * PAGE as u64);
        })),
        Duration::from_millis(50),
    );
    cache
        .backing()
        .set_read_ahead_delay(Some(Duration::from_micros(200)));
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                // Each thread owns pages thread*16..thread*16+16.
                for round in 1..=40u64 {
                    for page in thread * 16..thread * 16 + 16 {
                        let bytes = page_of(page, round);
                        cache.write_at(page * PAGE as u64, &bytes).unwrap();
                    }
                    for page in thread * 16..thread * 16 + 16 {
                        assert_eq!(read_page(&cache, page), (page, round));
                        let _ = cache
                            .prefetch(&[((page + 1) % 64) * PAGE as u64], Duration::from_millis(5));
                    }
                    assert!(Instant::now() < deadline, "no progress within a minute");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    cache.flush().unwrap();
    for page in 0..64 {
        assert_eq!(read_page(&cache, page), (page, 40));
    }
}

// Guards that read-ahead cannot flush the frequently used set: a hot set of
// 40 pages used over and over, then a loop of 400 pages (more than the
// 256-page cache, less than cache plus ghost, so its pages come back from
// the ghost) scanned four times; afterwards the hot set hits as well with
// read-ahead as without it.
#[test]
fn a_scan_read_ahead_does_not_flush_the_hot_set() {
    let mut missed = Vec::new();
    for config in [PrefetchConfig::off(), PrefetchConfig::default()] {
        let cache = cache(4000, 256, config);
        let hot: Vec<u64> = (0..40).map(|i| 3500 + i * 11).collect();
        for _ in 0..20 {
            for &page in &hot {
                read_page(&cache, page);
            }
        }
        for _ in 0..4 {
            for page in 0..400 {
                read_page(&cache, page);
            }
        }
        let before = cache.stats().misses;
        for &page in &hot {
            assert_eq!(read_page(&cache, page), (page, 0));
        }
        missed.push(cache.stats().misses - before);
    }
    let (off, on) = (missed[0], missed[1]);
    assert!(
        on <= off + 2 && on <= 10,
        "the scan read ahead pushed out {on} of 40 hot pages ({off} without read-ahead)"
    );
}

//! The client's own metrics reach the application's recorder: cache counters
//! per region (published every second) and fetch and write-back latency.
//! One test in this binary: it installs the process's global recorder.

mod common;

use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pagoda::RegionOptions;

fn value<'a>(
    snapshot: &'a [(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    region: &str,
) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let key = key.key();
        let labelled = key
            .labels()
            .any(|label| label.key() == "region" && label.value() == region);
        (key.name() == name && labelled).then_some(value)
    })
}

// Guards that an application exporting metrics sees Pagoda's: after misses,
// read-ahead and write-backs, the counters published for the region equal
// its cache's own, and the latency histograms hold one sample per fetch
// and per write-back.
#[test]
fn cache_counters_and_latencies_reach_the_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client.create_region("observed", 4 << 20, 4096).unwrap();
    let region = client
        .open_region("observed", RegionOptions::with_cache_bytes(64 * 4096))
        .unwrap();
    let data = vec![7u8; 4096];
    for page in (0..1024u64).step_by(7) {
        region.write_at(page * 4096, &data).unwrap();
    }
    let mut buf = vec![0u8; 4096];
    for page in 0..1024u64 {
        region.read_at(page * 4096, &mut buf).unwrap();
    }
    region.flush().unwrap();
    let stats = region.cache_stats();
    assert!(stats.misses > 0 && stats.pages_written_back > 0 && stats.prefetch_used > 0);
    // Published within a second or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = snapshotter.snapshot().into_vec();
        if value(&snapshot, "pagoda_client_cache_misses_total", "observed")
            == Some(&DebugValue::Counter(stats.misses))
        {
            break snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "the counters were not published within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for (name, expected) in [
        ("pagoda_client_cache_hits_total", stats.hits),
        ("pagoda_client_pages_fetched_total", stats.pages_fetched),
        (
            "pagoda_client_pages_written_back_total",
            stats.pages_written_back,
        ),
        ("pagoda_client_prefetch_used_total", stats.prefetch_used),
        ("pagoda_client_prefetch_issued_total", stats.prefetch_issued),
    ] {
        assert_eq!(
            value(&snapshot, name, "observed"),
            Some(&DebugValue::Counter(expected)),
            "{name}"
        );
    }
    assert_eq!(
        value(&snapshot, "pagoda_client_dirty_pages", "observed"),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    // Latency samples are drained by each snapshot: make one of each anew.
    region.read_at(0, &mut buf).unwrap();
    region.write_at(0, &data).unwrap();
    region.flush().unwrap();
    for page in (512..1024u64).rev().step_by(17) {
        region.read_at(page * 4096, &mut buf).unwrap();
    }
    let snapshot = snapshotter.snapshot().into_vec();
    match value(&snapshot, "pagoda_client_fetch_seconds", "observed") {
        Some(DebugValue::Histogram(samples)) => {
            assert!(!samples.is_empty());
            assert!(samples.iter().all(|s| s.0 > 0.0 && s.0 < 10.0));
        }
        other => panic!("no fetch latencies: {other:?}"),
    }
    match value(&snapshot, "pagoda_client_write_back_seconds", "observed") {
        Some(DebugValue::Histogram(samples)) => assert!(!samples.is_empty()),
        other => panic!("no write-back latencies: {other:?}"),
    }
}

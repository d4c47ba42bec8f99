//! The client's own metrics, through the [`metrics`] facade: an application
//! that installs a recorder (a Prometheus exporter, say) exports them with
//! the rest of its metrics; without one they cost nothing but a thread that
//! wakes once a second.
//!
//! Every [`PUBLISH_INTERVAL`] a thread per client publishes, for each region
//! open through it (handles of one region summed, labelled `region`):
//!
//! | metric | kind | meaning |
//! | --- | --- | --- |
//! | `pagoda_client_cache_hits_total` | counter | page accesses served by the local cache |
//! | `pagoda_client_cache_misses_total` | counter | page accesses that took a frame (and usually a fetch) |
//! | `pagoda_client_cache_evictions_total` | counter | pages evicted |
//! | `pagoda_client_pages_fetched_total` | counter | pages fetched from the node (demand and read-ahead) |
//! | `pagoda_client_pages_written_back_total` | counter | dirty pages written back |
//! | `pagoda_client_prefetch_issued_total` | counter | pages read ahead |
//! | `pagoda_client_prefetch_used_total` | counter | read-ahead pages used |
//! | `pagoda_client_prefetch_late_total` | counter | read-ahead pages not installed (late, or overtaken) |
//! | `pagoda_client_prefetch_wasted_total` | counter | read-ahead pages evicted unused |
//! | `pagoda_client_cache_hit_ratio` | gauge | hits over accesses since the handles were opened |
//! | `pagoda_client_dirty_pages` | gauge | pages dirty in the cache now |
//! | `pagoda_client_cache_frames` | gauge | the cache's size in pages |
//!
//! and, as they happen, per region:
//!
//! | metric | kind | meaning |
//! | --- | --- | --- |
//! | `pagoda_client_fetch_seconds` | histogram | one demand fetch from the node (a miss's wait) |
//! | `pagoda_client_write_back_seconds` | histogram | one write-back of dirty pages |

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

use pagoda_cache::CacheStats;

use crate::region::name_of;
use crate::signals::OpenRegions;

/// How often the cache counters are published.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the publishing thread of a client whose open regions are
/// `regions`; it ends once the client and its clones are gone.
pub(crate) fn start(regions: Weak<OpenRegions>) {
    let spawned = std::thread::Builder::new()
        .name("pagoda-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PUBLISH_INTERVAL);
                let Some(regions) = regions.upgrade() else {
                    return;
                };
                publish(&regions);
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "the client's metrics thread did not start; its cache metrics are not published");
    }
}

/// Publishes the open regions' cache counters once.
pub(crate) fn publish(regions: &OpenRegions) {
    let mut by_name: BTreeMap<String, (CacheStats, u64)> = BTreeMap::new();
    for cache in regions.live() {
        let stats = cache.stats();
        let entry = by_name.entry(name_of(&cache).to_owned()).or_default();
        let sum = &mut entry.0;
        sum.frames += stats.frames;
        sum.hits += stats.hits;
        sum.misses += stats.misses;
        sum.evictions += stats.evictions;
        sum.pages_fetched += stats.pages_fetched;
        sum.pages_written_back += stats.pages_written_back;
        sum.prefetch_issued += stats.prefetch_issued;
        sum.prefetch_used += stats.prefetch_used;
        sum.prefetch_late += stats.prefetch_late;
        sum.prefetch_wasted += stats.prefetch_wasted;
        entry.1 += cache.dirty_pages() as u64;
    }
    for (region, (stats, dirty)) in by_name {
        let counters = [
            ("pagoda_client_cache_hits_total", stats.hits),
            ("pagoda_client_cache_misses_total", stats.misses),
            ("pagoda_client_cache_evictions_total", stats.evictions),
            ("pagoda_client_pages_fetched_total", stats.pages_fetched),
            (
                "pagoda_client_pages_written_back_total",
                stats.pages_written_back,
            ),
            ("pagoda_client_prefetch_issued_total", stats.prefetch_issued),
            ("pagoda_client_prefetch_used_total", stats.prefetch_used),
            ("pagoda_client_prefetch_late_total", stats.prefetch_late),
            ("pagoda_client_prefetch_wasted_total", stats.prefetch_wasted),
        ];
        for (name, value) in counters {
            metrics::counter!(name, "region" => region.clone()).absolute(value);
        }
        metrics::gauge!("pagoda_client_cache_hit_ratio", "region" => region.clone())
            .set(stats.hit_ratio());
        metrics::gauge!("pagoda_client_dirty_pages", "region" => region.clone()).set(dirty as f64);
        metrics::gauge!("pagoda_client_cache_frames", "region" => region).set(stats.frames as f64);
    }
}

/// A region's latency histograms, registered once per handle.
pub(crate) struct RegionHistograms {
    pub(crate) fetch: metrics::Histogram,
    pub(crate) write_back: metrics::Histogram,
}

impl RegionHistograms {
    pub(crate) fn new(region: &str) -> RegionHistograms {
        RegionHistograms {
            fetch: metrics::histogram!("pagoda_client_fetch_seconds", "region" => region.to_owned()),
            write_back: metrics::histogram!(
                "pagoda_client_write_back_seconds",
                "region" => region.to_owned()
            ),
        }
    }
}

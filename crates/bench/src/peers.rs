//! Pagoda's page cache and three peer caches behind one trait, doing equal
//! work per read: find the 4 KiB value of a key and copy it into the
//! caller's buffer; on a miss, copy the value out of a backing array, insert
//! it, and copy it to the caller.
//!
//! The peers hold `Bytes` values (a clone is a reference-count increment) and
//! use their default hashers and policies: quick_cache's sync cache, moka's
//! sync cache and foyer's in-memory cache (LRU by default, 8 shards). Pagoda's
//! cache is a `PageCache` over a `MemoryBacking` with the default policy.

use std::sync::Arc;

use bytes::Bytes;
use pagoda_cache::memory::MemoryBacking;
use pagoda_cache::policy::PolicyKind;
use pagoda_cache::{CacheConfig, PageCache};

use crate::PAGE_BYTES;

/// A cache under comparison.
pub trait ReadCache: Send + Sync {
    /// The name in tables.
    fn name(&self) -> &'static str;
    /// Copies the value of `key` into `buf` (a 4 KiB buffer), loading and
    /// inserting it on a miss. Returns false on a miss the adapter saw.
    fn read(&self, key: u64, buf: &mut [u8]) -> bool;
    /// Misses counted by the cache itself, for caches whose read cannot tell.
    fn misses_counted(&self) -> Option<u64> {
        None
    }
}

/// The values every cache loads on a miss: `keys` pages of 4 KiB.
pub struct Source {
    bytes: Vec<u8>,
}

impl Source {
    /// `keys` pages, page `k` filled with `k as u8`.
    pub fn new(keys: u64) -> Arc<Source> {
        let mut bytes = vec![0u8; keys as usize * PAGE_BYTES];
        for (key, page) in bytes.chunks_exact_mut(PAGE_BYTES).enumerate() {
            page.fill(key as u8);
        }
        Arc::new(Source { bytes })
    }

    /// The value of `key`.
    pub fn page(&self, key: u64) -> &[u8] {
        let start = key as usize * PAGE_BYTES;
        &self.bytes[start..start + PAGE_BYTES]
    }

    /// How many keys there are.
    pub fn keys(&self) -> u64 {
        (self.bytes.len() / PAGE_BYTES) as u64
    }
}

/// Pagoda's local tier over an in-memory backing store.
pub struct Pagoda {
    cache: PageCache<MemoryBacking>,
}

impl Pagoda {
    /// A cache of `capacity` pages over `source`'s pages.
    pub fn new(capacity: u64, source: &Source, policy: PolicyKind) -> Pagoda {
        let region_bytes = source.keys() * PAGE_BYTES as u64;
        let backing = MemoryBacking::new(region_bytes as usize, PAGE_BYTES);
        // Give the backing store the same contents the peers load.
        let pages: Vec<u64> = (0..source.keys()).collect();
        let buffers: Vec<&[u8]> = pages.iter().map(|&page| source.page(page)).collect();
        pagoda_cache::Backing::write_pages(&backing, &pages, &buffers)
            .expect("filling the memory backing");
        let config = CacheConfig {
            capacity_bytes: capacity * PAGE_BYTES as u64,
            page_size: PAGE_BYTES,
            region_bytes,
            policy,
            batch_pages_max: pagoda_wire::limits::BATCH_PAGES_MAX,
            // The peers read nothing ahead: compare eviction alone.
            prefetch: pagoda_cache::PrefetchConfig::off(),
        };
        Pagoda {
            cache: PageCache::new(config, backing),
        }
    }

    /// The cache itself.
    pub fn cache(&self) -> &PageCache<MemoryBacking> {
        &self.cache
    }
}

impl ReadCache for Pagoda {
    fn name(&self) -> &'static str {
        "pagoda"
    }

    #[inline]
    fn read(&self, key: u64, buf: &mut [u8]) -> bool {
        self.cache
            .read_at(key * PAGE_BYTES as u64, buf)
            .expect("reading from the memory backing");
        true
    }

    fn misses_counted(&self) -> Option<u64> {
        Some(self.cache.stats().misses)
    }
}

/// quick_cache's sync cache.
pub struct QuickCache {
    cache: quick_cache::sync::Cache<u64, Bytes>,
    source: Arc<Source>,
}

impl QuickCache {
    /// A cache of `capacity` entries over `source`.
    pub fn new(capacity: u64, source: Arc<Source>) -> QuickCache {
        QuickCache {
            cache: quick_cache::sync::Cache::new(capacity as usize),
            source,
        }
    }
}

impl ReadCache for QuickCache {
    fn name(&self) -> &'static str {
        "quick_cache"
    }

    #[inline]
    fn read(&self, key: u64, buf: &mut [u8]) -> bool {
        if let Some(value) = self.cache.get(&key) {
            buf.copy_from_slice(&value);
            return true;
        }
        self.cache.insert(key, load(&self.source, key, buf));
        false
    }
}

/// The peers' miss path: copies the page from the source into the caller's
/// buffer and returns it as the value to insert.
fn load(source: &Source, key: u64, buf: &mut [u8]) -> Bytes {
    let value = Bytes::copy_from_slice(source.page(key));
    buf.copy_from_slice(&value);
    value
}

/// moka's sync cache.
pub struct Moka {
    cache: moka::sync::Cache<u64, Bytes>,
    source: Arc<Source>,
}

impl Moka {
    /// A cache of `capacity` entries over `source`.
    pub fn new(capacity: u64, source: Arc<Source>) -> Moka {
        Moka {
            cache: moka::sync::Cache::new(capacity),
            source,
        }
    }

    /// Applies moka's pending maintenance (admissions, evictions), so that a
    /// warmed cache is really warm.
    pub fn settle(&self) {
        self.cache.run_pending_tasks();
    }
}

impl ReadCache for Moka {
    fn name(&self) -> &'static str {
        "moka"
    }

    #[inline]
    fn read(&self, key: u64, buf: &mut [u8]) -> bool {
        if let Some(value) = self.cache.get(&key) {
            buf.copy_from_slice(&value);
            return true;
        }
        self.cache.insert(key, load(&self.source, key, buf));
        false
    }
}

/// foyer's in-memory cache.
pub struct Foyer {
    cache: foyer::Cache<u64, Bytes>,
    source: Arc<Source>,
}

impl Foyer {
    /// A cache of `capacity` entries (each of weight one) over `source`.
    pub fn new(capacity: u64, source: Arc<Source>) -> Foyer {
        Foyer {
            cache: foyer::CacheBuilder::new(capacity as usize).build(),
            source,
        }
    }
}

impl ReadCache for Foyer {
    fn name(&self) -> &'static str {
        "foyer"
    }

    #[inline]
    fn read(&self, key: u64, buf: &mut [u8]) -> bool {
        if let Some(entry) = self.cache.get(&key) {
            buf.copy_from_slice(entry.value());
            return true;
        }
        self.cache.insert(key, load(&self.source, key, buf));
        false
    }
}

/// Builds the caches under comparison, each of `capacity` entries, over a
/// key space of `keys`, and warms each by reading keys `0..warm_keys` twice
/// (twice, so that admission filters such as moka's TinyLFU see each key
/// again).
pub fn build_all(capacity: u64, keys: u64, warm_keys: u64) -> Vec<Box<dyn ReadCache>> {
    let source = Source::new(keys);
    let moka = Moka::new(capacity, source.clone());
    let mut caches: Vec<Box<dyn ReadCache>> = vec![
        Box::new(Pagoda::new(capacity, &source, PolicyKind::default())),
        Box::new(QuickCache::new(capacity, source.clone())),
        Box::new(Foyer::new(capacity, source.clone())),
    ];
    let mut buf = vec![0u8; PAGE_BYTES];
    for _ in 0..2 {
        for key in 0..warm_keys {
            moka.read(key, &mut buf);
        }
        moka.settle();
    }
    caches.insert(2, Box::new(moka));
    for cache in &caches {
        for _ in 0..2 {
            for key in 0..warm_keys {
                cache.read(key, &mut buf);
            }
        }
    }
    caches
}

/// Which keys a workload reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Uniform over the key space.
    Uniform,
    /// Zipf-distributed with exponent 0.99, ranks mapped to keys by a fixed
    /// random permutation (so that hot keys are not neighbours in memory).
    Zipf,
}

/// `length` keys of `0..keys` drawn as `distribution` says, from `seed`.
pub fn key_sequence(distribution: Keys, keys: u64, length: usize, seed: u64) -> Vec<u64> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    match distribution {
        Keys::Uniform => {
            let mut fast = crate::FastRng::new(seed);
            (0..length).map(|_| fast.below(keys)).collect()
        }
        Keys::Zipf => {
            let mut permutation: Vec<u64> = (0..keys).collect();
            // The same permutation for every seed: one popularity order.
            permutation.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0x21bf));
            let zipf = rand_distr::Zipf::new(keys, 0.99).expect("a valid Zipf distribution");
            (0..length)
                .map(|_| permutation[(zipf.sample(&mut rng) as u64 - 1).min(keys - 1) as usize])
                .collect()
        }
    }
}

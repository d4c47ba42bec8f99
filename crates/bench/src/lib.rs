//! Pagoda's benchmarks: programs, not tests.
//!
//! Every figure is measured next to the limit or the peer it should be judged
//! against, in the same run, so that the noise of a shared VM hits both sides:
//! a remote read beside a raw loopback round trip of the same message sizes, a
//! batched transfer beside a raw loopback stream, a cache hit beside a plain
//! `memcpy` and beside other caches.
//!
//! The binaries (`latency`, `throughput`, `cache_compare`) and the criterion
//! benches (`hit_path`, `cache_compare`) share the pieces in this library:
//! an in-process memory node on loopback ([`fixture`]), raw TCP baselines
//! ([`raw`]), adapters that put the peer caches behind one trait ([`peers`]),
//! and percentile and table helpers ([`report`]). All traffic stays on
//! 127.0.0.1, and every load loop is bounded both in count and in time.

pub mod fixture;
pub mod hog;
pub mod peers;
pub mod raw;
pub mod report;

/// The page size every benchmark uses.
pub const PAGE_BYTES: usize = 4096;

/// A small, fast pseudo-random generator (xorshift64*), so that choosing a
/// random page costs a few nanoseconds inside a timed loop.
#[derive(Clone, Debug)]
pub struct FastRng(u64);

impl FastRng {
    /// A generator from a seed (any value; zero is remapped).
    pub fn new(seed: u64) -> FastRng {
        FastRng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..bound`.
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }
}

//! Read-ahead for the local tier: the parts that know nothing of frames.
//!
//! - [`Detector`] finds streams: per thread, sequential or strided runs of
//!   accesses, forward or backward, several at once, and says which pages to
//!   read ahead of each.
//! - [`Written`] remembers, per bucket of pages, when a page was last written
//!   to the backing store, so that a read-ahead that was sent before such a
//!   write is never installed over it.
//!
//! The cache ([`crate::PageCache`]) drives both: it tells the detector of
//! every demand miss and every first use of a read-ahead page (not of plain
//! hits, which stay free of locks), sends the reads without waiting, and
//! installs the replies that arrive before their deadline.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// How a cache reads ahead.
#[derive(Clone, Debug)]
pub struct PrefetchConfig {
    /// Detect sequential and strided streams and read ahead of them.
    pub trend: bool,
    /// Most pages a stream reads ahead; its window starts smaller and grows
    /// to this while the stream's pages are used.
    pub depth_max: usize,
    /// A trend read-ahead that has not arrived within this is dropped (the
    /// page is then fetched on demand, as without read-ahead).
    pub deadline: Duration,
}

/// Default most pages a stream reads ahead.
pub const PREFETCH_DEPTH_DEFAULT: usize = 1024;
/// Default deadline of a trend read-ahead.
pub const PREFETCH_DEADLINE_DEFAULT: Duration = Duration::from_millis(50);

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            trend: true,
            depth_max: PREFETCH_DEPTH_DEFAULT,
            deadline: PREFETCH_DEADLINE_DEFAULT,
        }
    }
}

impl PrefetchConfig {
    /// No trend read-ahead (explicit hints and a reference extractor still
    /// read ahead).
    pub fn off() -> PrefetchConfig {
        PrefetchConfig {
            trend: false,
            ..PrefetchConfig::default()
        }
    }
}

/// A stream's first window, in pages.
const DEPTH_START: u64 = 8;
/// Largest stride, in pages, still taken for a stream.
const STRIDE_MAX: i64 = 64;
/// Streams remembered per shard (threads are spread over the shards).
const STREAMS_PER_SHARD: usize = 8;
const SHARDS: usize = 16;

static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static TAG: Cell<u64> = const { Cell::new(0) };
}

/// A small number naming the calling thread, for telling streams apart.
pub(crate) fn thread_tag() -> u64 {
    TAG.with(|tag| {
        if tag.get() == 0 {
            tag.set(NEXT_TAG.fetch_add(1, Ordering::Relaxed));
        }
        tag.get()
    })
}

/// Pages to read ahead: `count` pages from `from`, `stride` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub from: u64,
    pub count: u64,
    pub stride: i64,
}

impl Window {
    pub fn pages(self) -> impl Iterator<Item = u64> {
        (0..self.count).map(move |k| (self.from as i64 + k as i64 * self.stride) as u64)
    }
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    tag: u64,
    /// The previous access's first and last pages.
    first: u64,
    last: u64,
    /// Pages from one access to the next; 0 until the second access.
    stride: i64,
    /// Accesses that followed the stride in a row (1 when it was first seen).
    run: u32,
    /// The furthest page read ahead so far.
    ahead: i64,
    /// Pages the window reaches beyond the access.
    depth: u64,
    /// When the stream was last used, for replacement.
    tick: u64,
}

impl Stream {
    /// The distance from this stream's previous access to `first..=last`,
    /// in its direction; `None` if they overlap.
    fn delta(&self, first: u64, last: u64) -> Option<i64> {
        if first > self.last {
            Some(first as i64 - self.last as i64)
        } else if last < self.first {
            Some(last as i64 - self.first as i64)
        } else {
            None
        }
    }

    /// Whether an access `delta` away continues the stream: its stride, or
    /// (once confirmed) a whole number of strides in its direction within
    /// the window, which is where an access lands after skipping pages that
    /// were already resident and so never reported.
    fn continued_by(&self, delta: i64) -> bool {
        if self.stride == 0 {
            return delta.abs() <= STRIDE_MAX;
        }
        if delta == self.stride {
            return true;
        }
        self.run >= 2
            && delta.signum() == self.stride.signum()
            && delta % self.stride == 0
            && (delta / self.stride) as u64 <= self.depth.max(DEPTH_START)
    }
}

struct Shard {
    streams: Vec<Stream>,
    tick: u64,
}

/// Finds streams and chooses read-ahead windows; see the module docs.
pub(crate) struct Detector {
    shards: Box<[Mutex<Shard>]>,
    pages: u64,
}

impl Detector {
    /// A detector for a region of `pages` pages.
    pub fn new(pages: u64) -> Detector {
        Detector {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        streams: Vec::with_capacity(STREAMS_PER_SHARD),
                        tick: 0,
                    })
                })
                .collect(),
            pages,
        }
    }

    /// Told that thread `tag` accessed pages `first..=last`, which missed
    /// (`missed`) or used a read-ahead page; returns the pages to read ahead,
    /// if any. A stream is confirmed by its third access at one stride; a
    /// demand miss inside a confirmed stream doubles its window (up to
    /// `depth_cap` pages), since the window was too short to hide the fetch.
    /// A window is sent once a quarter of it is free, so read-ahead goes out
    /// in batches rather than a page at a time.
    pub fn observe(
        &self,
        tag: u64,
        first: u64,
        last: u64,
        missed: bool,
        depth_cap: u64,
    ) -> Option<Window> {
        let depth_cap = depth_cap.max(1);
        let mut shard = self.shards[tag as usize % SHARDS].lock();
        shard.tick += 1;
        let tick = shard.tick;
        let mut best: Option<(usize, i64)> = None;
        for (index, stream) in shard.streams.iter().enumerate() {
            if stream.tag != tag {
                continue;
            }
            match stream.delta(first, last) {
                // Another access within the previous one's pages.
                None => {
                    shard.streams[index].tick = tick;
                    return None;
                }
                Some(delta) if stream.continued_by(delta) => {
                    if best.is_none_or(|(_, d)| delta.abs() < d.abs()) {
                        best = Some((index, delta));
                    }
                }
                Some(_) => {}
            }
        }
        let Some((index, delta)) = best else {
            let stream = Stream {
                tag,
                first,
                last,
                stride: 0,
                run: 0,
                ahead: 0,
                depth: DEPTH_START.min(depth_cap),
                tick,
            };
            if shard.streams.len() < STREAMS_PER_SHARD {
                shard.streams.push(stream);
            } else if let Some(oldest) = shard.streams.iter_mut().min_by_key(|s| s.tick) {
                *oldest = stream;
            }
            return None;
        };
        let pages = self.pages;
        let stream = &mut shard.streams[index];
        if stream.stride == 0 {
            stream.stride = delta;
            stream.run = 1;
        } else {
            stream.run = stream.run.saturating_add(1);
        }
        stream.first = first;
        stream.last = last;
        stream.tick = tick;
        let stride = stream.stride;
        // The access's leading edge in the stream's direction.
        let edge = if stride > 0 {
            last as i64
        } else {
            first as i64
        };
        if stream.run < 2 {
            stream.ahead = edge;
            return None;
        }
        if missed {
            stream.depth = (stream.depth * 2).min(depth_cap);
        }
        stream.depth = stream.depth.min(depth_cap);
        let behind = (stream.ahead - edge) * stride.signum() <= 0;
        let ahead = if behind { edge } else { stream.ahead };
        let target = edge + stride * stream.depth as i64;
        let target = target.clamp(0, pages as i64 - 1);
        let count = ((target - ahead) / stride).max(0) as u64;
        if count == 0 || (count < (stream.depth / 4).max(1) && !behind) {
            return None;
        }
        stream.ahead = ahead + stride * count as i64;
        Some(Window {
            from: (ahead + stride) as u64,
            count,
            stride,
        })
    }
}

const WRITTEN_BUCKETS: usize = 4096;

/// When pages were last written to the backing store, by bucket of pages:
/// the guard that keeps a read-ahead from installing contents older than a
/// write-back. See [`Written::since`].
pub(crate) struct Written {
    clock: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Written {
    pub fn new() -> Written {
        Written {
            clock: AtomicU64::new(1),
            buckets: (0..WRITTEN_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The time a read-ahead is sent at.
    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Notes a write of `page` to the backing store. Called when it starts
    /// and again once it is acknowledged (before the page may leave the
    /// cache), so a read-ahead sent at any time between the two is caught.
    pub fn mark(&self, page: u64) {
        let time = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.buckets[page as usize % WRITTEN_BUCKETS].fetch_max(time, Ordering::SeqCst);
    }

    /// Whether `page` may have been written since `sent` (a read-ahead sent
    /// then may hold older contents and must not be installed).
    pub fn since(&self, page: u64, sent: u64) -> bool {
        self.buckets[page as usize % WRITTEN_BUCKETS].load(Ordering::SeqCst) > sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(window: Option<Window>) -> Vec<u64> {
        window.map(|w| w.pages().collect()).unwrap_or_default()
    }

    // Guards detection of a forward sequential stream: nothing before the
    // third access, then the first window (8 pages, doubled to 16 by the
    // miss), then nothing until a quarter of the window is free.
    #[test]
    fn a_forward_scan_is_confirmed_on_its_third_access() {
        let detector = Detector::new(1000);
        assert_eq!(detector.observe(1, 10, 10, true, 256), None);
        assert_eq!(detector.observe(1, 11, 11, true, 256), None);
        assert_eq!(
            pages(detector.observe(1, 12, 12, true, 256)),
            (13..=28).collect::<Vec<_>>()
        );
        // Uses of read-ahead pages (not misses): the window moves on only
        // once a quarter (4 of 16) has been consumed.
        for page in 13..16 {
            assert_eq!(detector.observe(1, page, page, false, 256), None);
        }
        assert_eq!(
            pages(detector.observe(1, 16, 16, false, 256)),
            (29..=32).collect::<Vec<_>>()
        );
    }

    // Guards backward and strided streams: a descending scan reads ahead
    // below, a stride of 3 reads every third page, and windows stop at the
    // region's ends.
    #[test]
    fn backward_and_strided_streams() {
        let detector = Detector::new(1000);
        for page in [100, 99] {
            assert_eq!(detector.observe(1, page, page, true, 4), None);
        }
        assert_eq!(
            pages(detector.observe(1, 98, 98, true, 4)),
            vec![97, 96, 95, 94]
        );
        let detector = Detector::new(1000);
        for page in [0, 3] {
            assert_eq!(detector.observe(2, page, page, true, 4), None);
        }
        assert_eq!(
            pages(detector.observe(2, 6, 6, true, 4)),
            vec![9, 12, 15, 18]
        );
        let detector = Detector::new(20);
        for page in [15, 16] {
            detector.observe(3, page, page, true, 256);
        }
        assert_eq!(pages(detector.observe(3, 17, 17, true, 256)), vec![18, 19]);
    }

    // Guards per-thread streams and multi-page accesses: two threads
    // scanning interleaved do not break each other's stream, and accesses of
    // four pages at a time continue a stream whose next access starts right
    // after the last.
    #[test]
    fn streams_are_per_thread_and_follow_multi_page_accesses() {
        let detector = Detector::new(10_000);
        let mut windows = Vec::new();
        for step in 0..3u64 {
            windows.push(detector.observe(1, 100 + step, 100 + step, true, 4));
            windows.push(detector.observe(2, 5000 - step, 5000 - step, true, 4));
        }
        assert_eq!(pages(windows[4]), vec![103, 104, 105, 106]);
        assert_eq!(pages(windows[5]), vec![4997, 4996, 4995, 4994]);
        let detector = Detector::new(10_000);
        assert_eq!(detector.observe(7, 0, 3, true, 8), None);
        assert_eq!(detector.observe(7, 4, 7, true, 8), None);
        assert_eq!(
            pages(detector.observe(7, 8, 11, true, 8)),
            (12..=19).collect::<Vec<_>>()
        );
    }

    // Guards that random access starts no stream: no window on a scrambled
    // sequence.
    #[test]
    fn random_access_reads_nothing_ahead() {
        let detector = Detector::new(1 << 20);
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let page = (x >> 33) % (1 << 20);
            assert_eq!(detector.observe(1, page, page, true, 256), None);
        }
    }

    // Guards the write guard: a write started or acknowledged after a
    // read-ahead was sent is seen, one before it is not.
    #[test]
    fn writes_after_a_send_are_seen() {
        let written = Written::new();
        written.mark(5);
        written.mark(5);
        let sent = written.now();
        assert!(!written.since(5, sent));
        written.mark(5);
        assert!(written.since(5, sent));
        assert!(!written.since(6, sent));
    }
}

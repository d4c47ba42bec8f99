//! S3-FIFO (Yang et al., SOSP 2023): a small FIFO (10% of the cache) that
//! filters one-hit pages, a main FIFO with reinsertion (90%), and a ghost FIFO
//! of keys evicted from small, as large as main.

use super::Simulated;
use super::key_list::KeyList;

/// Frequencies saturate here (two bits, as in the paper).
const FREQUENCY_MAX: u8 = 3;

/// S3-FIFO with the paper's proportions. A page moves from small to main when
/// it was accessed at least once while in small; a ghost hit is inserted
/// straight into main.
pub struct S3Fifo {
    capacity: usize,
    small_capacity: usize,
    ghost_capacity: usize,
    small: KeyList,
    main: KeyList,
    ghost: KeyList,
}

impl S3Fifo {
    /// An empty S3-FIFO cache of `capacity` pages.
    pub fn new(capacity: usize) -> S3Fifo {
        assert!(capacity > 0, "a cache needs at least one page");
        let small_capacity = (capacity / 10).max(1);
        S3Fifo {
            capacity,
            small_capacity,
            ghost_capacity: capacity - small_capacity,
            small: KeyList::new(),
            main: KeyList::new(),
            ghost: KeyList::new(),
        }
    }

    /// Frees exactly one page.
    fn evict(&mut self) {
        loop {
            if self.small.len() >= self.small_capacity || self.main.is_empty() {
                let (key, frequency) = self.small.pop_front().expect("the cache is full");
                if frequency > 0 {
                    self.main.push_back(key, frequency);
                    continue;
                }
                if self.ghost_capacity > 0 {
                    if self.ghost.len() == self.ghost_capacity {
                        self.ghost.pop_front();
                    }
                    self.ghost.push_back(key, 0);
                }
                return;
            }
            let (key, frequency) = self.main.pop_front().expect("main is not empty");
            if frequency > 0 {
                self.main.push_back(key, frequency - 1);
                continue;
            }
            return;
        }
    }
}

impl Simulated for S3Fifo {
    fn access(&mut self, key: u64) -> bool {
        if let Some(frequency) = self
            .small
            .value_mut(key)
            .or_else(|| self.main.value_mut(key))
        {
            *frequency = (*frequency + 1).min(FREQUENCY_MAX);
            return true;
        }
        if self.small.len() + self.main.len() >= self.capacity {
            self.evict();
        }
        if self.ghost.remove(key).is_some() {
            self.main.push_back(key, 0);
        } else {
            self.small.push_back(key, 0);
        }
        false
    }

    fn name(&self) -> &'static str {
        "s3fifo"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::hits;

    // Guards the small/main/ghost transitions on a hand-computed sequence
    // (capacity 2: small 1, main 1, ghost 1). 1 and 2 fill the cache in
    // small; 1 hits. 3 evicts: 1 (accessed) moves to main, 2 (not accessed)
    // goes to the ghost. 3 hits. 4 evicts: 3 moves to main, which is now over
    // its share, so main's reinsertion spends 1's and 3's frequency and drops
    // 1. 3 hits in main. 1 misses: small's 4 goes to the ghost, pushing 2 out.
    #[test]
    fn hand_computed_sequence() {
        let mut s3 = S3Fifo::new(2);
        assert_eq!(hits(&mut s3, &[1, 2, 1, 3, 3, 4, 3, 1]), "mmhmhmhm");
        assert!(s3.ghost.contains(4));
        assert!(!s3.ghost.contains(2));
        assert!(s3.main.contains(3));
        assert!(s3.small.contains(1));
    }

    // Guards scan resistance: a page in main survives a scan of one-hit keys.
    #[test]
    fn scan_does_not_flush_main() {
        let mut s3 = S3Fifo::new(10);
        // Key 0 enters small, is hit, and is moved to main by the first
        // eviction; after that the scan churns through small and the ghost.
        s3.access(0);
        s3.access(0);
        for key in 1..1000 {
            s3.access(key);
            assert!(s3.access(0), "key 0 was evicted at scan key {key}");
        }
    }
}

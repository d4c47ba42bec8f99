//! LRU: evict the page whose last access is the oldest.

use super::Simulated;
use super::key_list::KeyList;

/// Least recently used, exact (a list moved on every hit).
pub struct Lru {
    capacity: usize,
    list: KeyList,
}

impl Lru {
    /// An empty LRU cache of `capacity` pages.
    pub fn new(capacity: usize) -> Lru {
        assert!(capacity > 0, "a cache needs at least one page");
        Lru {
            capacity,
            list: KeyList::new(),
        }
    }
}

impl Simulated for Lru {
    fn access(&mut self, key: u64) -> bool {
        if self.list.remove(key).is_some() {
            self.list.push_back(key, 0);
            return true;
        }
        if self.list.len() == self.capacity {
            self.list.pop_front();
        }
        self.list.push_back(key, 0);
        false
    }

    fn name(&self) -> &'static str {
        "lru"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::hits;

    // Guards recency order against a hand-computed sequence (capacity 3):
    // 1 2 3 1 4 (evicts 2) 2 (evicts 3) 1 3 (evicts 4).
    #[test]
    fn hand_computed_sequence() {
        let mut lru = Lru::new(3);
        assert_eq!(hits(&mut lru, &[1, 2, 3, 1, 4, 2, 1, 3]), "mmmhmmhm",);
    }

    // Guards the loop pathology LRU is known for: a loop one page larger than
    // the cache misses on every access.
    #[test]
    fn loop_larger_than_cache_always_misses() {
        let mut lru = Lru::new(3);
        let trace: Vec<u64> = (0..5).flat_map(|_| 0..4).collect();
        assert!(!hits(&mut lru, &trace).contains('h'));
    }
}

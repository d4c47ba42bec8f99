//! ARC (Megiddo and Modha, FAST 2003): two LRU lists, T1 for pages seen once
//! recently and T2 for pages seen at least twice, two ghost lists B1 and B2 of
//! their evicted keys, and a target `p` for T1's size that ghost hits move.

use super::Simulated;
use super::key_list::KeyList;

/// Adaptive Replacement Cache, as in the paper's pseudocode. Lists keep their
/// LRU end at the front.
pub struct Arc {
    capacity: usize,
    /// Target size of T1, moved by ghost hits.
    target_recent: f64,
    recent: KeyList,
    frequent: KeyList,
    recent_ghost: KeyList,
    frequent_ghost: KeyList,
}

impl Arc {
    /// An empty ARC cache of `capacity` pages.
    pub fn new(capacity: usize) -> Arc {
        assert!(capacity > 0, "a cache needs at least one page");
        Arc {
            capacity,
            target_recent: 0.0,
            recent: KeyList::new(),
            frequent: KeyList::new(),
            recent_ghost: KeyList::new(),
            frequent_ghost: KeyList::new(),
        }
    }

    /// The paper's REPLACE: evicts from T1 into B1 when T1 exceeds its
    /// target (or meets it while the missed key is in B2), else from T2
    /// into B2.
    fn replace(&mut self, key_in_frequent_ghost: bool) {
        let recent = self.recent.len() as f64;
        if !self.recent.is_empty()
            && (recent > self.target_recent
                || (key_in_frequent_ghost && recent == self.target_recent))
        {
            let (old, _) = self.recent.pop_front().expect("T1 is not empty");
            self.recent_ghost.push_back(old, 0);
        } else if let Some((old, _)) = self.frequent.pop_front() {
            self.frequent_ghost.push_back(old, 0);
        } else if let Some((old, _)) = self.recent.pop_front() {
            // T2 is empty and T1 is within its target: T1 still has to give.
            self.recent_ghost.push_back(old, 0);
        }
    }
}

impl Simulated for Arc {
    fn access(&mut self, key: u64) -> bool {
        let capacity = self.capacity as f64;
        if self.recent.remove(key).is_some() || self.frequent.remove(key).is_some() {
            self.frequent.push_back(key, 0);
            return true;
        }
        if self.recent_ghost.contains(key) {
            let step = (self.frequent_ghost.len() as f64 / self.recent_ghost.len() as f64).max(1.0);
            self.target_recent = (self.target_recent + step).min(capacity);
            self.replace(false);
            self.recent_ghost.remove(key);
            self.frequent.push_back(key, 0);
            return false;
        }
        if self.frequent_ghost.contains(key) {
            let step = (self.recent_ghost.len() as f64 / self.frequent_ghost.len() as f64).max(1.0);
            self.target_recent = (self.target_recent - step).max(0.0);
            self.replace(true);
            self.frequent_ghost.remove(key);
            self.frequent.push_back(key, 0);
            return false;
        }
        let recent_side = self.recent.len() + self.recent_ghost.len();
        let total = recent_side + self.frequent.len() + self.frequent_ghost.len();
        if recent_side == self.capacity {
            if self.recent.len() < self.capacity {
                self.recent_ghost.pop_front();
                self.replace(false);
            } else {
                self.recent.pop_front();
            }
        } else if total >= self.capacity {
            if total == 2 * self.capacity {
                self.frequent_ghost.pop_front();
            }
            self.replace(false);
        }
        self.recent.push_back(key, 0);
        false
    }

    fn name(&self) -> &'static str {
        "arc"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::hits;

    // Guards the paper's transitions on a hand-computed sequence (capacity 2):
    // 1 miss (T1 [1]); 1 hit (T2 [1]); 2 miss (T1 [2]); 3 miss, T1 over its
    // target 0 so 2 goes to B1; 1 hit (LRU would have evicted it); 2 hits
    // B1: p = 1, T1 is at p so T2's LRU page 1 goes to B2, 2 enters T2;
    // 1 hits B2: p = 0, T1's 3 goes to B1; 3 hits B1.
    #[test]
    fn hand_computed_sequence() {
        let mut arc = Arc::new(2);
        assert_eq!(hits(&mut arc, &[1, 1, 2, 3, 1, 2, 1, 3]), "mhmmhmmm");
        assert_eq!(arc.target_recent, 1.0);
        assert!(arc.recent.is_empty());
        assert_eq!(arc.frequent.len(), 2);
    }

    // Guards the cache bound: T1 + T2 never exceed the capacity and the
    // directory never exceeds twice the capacity.
    #[test]
    fn stays_within_bounds() {
        let mut arc = Arc::new(4);
        for step in 0..2000u64 {
            let key = (step * 7919) % 13 + (step % 3) * (step % 5);
            arc.access(key);
            assert!(arc.recent.len() + arc.frequent.len() <= 4);
            let directory = arc.recent.len()
                + arc.frequent.len()
                + arc.recent_ghost.len()
                + arc.frequent_ghost.len();
            assert!(directory <= 8);
        }
    }
}

//! CLOCK (second chance), written independently of the product's CLOCK so the
//! simulator's reference does not share the code it is compared against.

use std::collections::HashMap;

use super::Simulated;

/// CLOCK: a reference bit per slot and a hand that clears set bits and
/// replaces the first page whose bit is clear.
pub struct Clock {
    keys: Vec<u64>,
    referenced: Vec<bool>,
    slot_of: HashMap<u64, usize>,
    capacity: usize,
    hand: usize,
}

impl Clock {
    /// An empty CLOCK cache of `capacity` pages.
    pub fn new(capacity: usize) -> Clock {
        assert!(capacity > 0, "a cache needs at least one page");
        Clock {
            keys: Vec::with_capacity(capacity),
            referenced: Vec::with_capacity(capacity),
            slot_of: HashMap::new(),
            capacity,
            hand: 0,
        }
    }
}

impl Simulated for Clock {
    fn access(&mut self, key: u64) -> bool {
        if let Some(&slot) = self.slot_of.get(&key) {
            self.referenced[slot] = true;
            return true;
        }
        if self.keys.len() < self.capacity {
            self.slot_of.insert(key, self.keys.len());
            self.keys.push(key);
            self.referenced.push(false);
            return false;
        }
        // Terminates within two sweeps: the first clears every set bit.
        loop {
            let slot = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            if self.referenced[slot] {
                self.referenced[slot] = false;
                continue;
            }
            self.slot_of.remove(&self.keys[slot]);
            self.keys[slot] = key;
            self.slot_of.insert(key, slot);
            return false;
        }
    }

    fn name(&self) -> &'static str {
        "clock"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::hits;

    // Guards the sweep against a hand-computed sequence (capacity 3). Slots
    // fill as [1 2 3]; the hit on 1 sets its bit; 4 clears 1's bit and
    // replaces 2; 2 replaces 3; 1 hits; 5 clears 1 again and replaces 4;
    // 4 replaces 2 (the hand is at slot 2); 1 hits: it is still resident.
    #[test]
    fn hand_computed_sequence() {
        let mut clock = Clock::new(3);
        assert_eq!(
            hits(&mut clock, &[1, 2, 3, 1, 4, 2, 1, 5, 4, 1]),
            "mmmhmmhmmh",
        );
        let mut resident: Vec<u64> = clock.keys.clone();
        resident.sort();
        assert_eq!(resident, vec![1, 4, 5]);
    }
}

//! An ordered set of keys with O(1) insertion at either end, removal of any
//! key and removal from the front: the list behind LRU, ARC's four lists and
//! S3-FIFO's queues.

use std::collections::HashMap;

const NIL: usize = usize::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: u64,
    /// Per-key counter for policies that need one (S3-FIFO's frequency).
    value: u8,
    prev: usize,
    next: usize,
}

/// An ordered set of keys. "Front" is the oldest end (the LRU or FIFO head),
/// "back" the newest.
#[derive(Debug)]
pub(crate) struct KeyList {
    entries: Vec<Entry>,
    free: Vec<usize>,
    index: HashMap<u64, usize>,
    head: usize,
    tail: usize,
}

impl KeyList {
    pub(crate) fn new() -> KeyList {
        KeyList {
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            head: NIL,
            tail: NIL,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub(crate) fn contains(&self, key: u64) -> bool {
        self.index.contains_key(&key)
    }

    /// Appends `key` at the back (newest end). The key must not be present.
    pub(crate) fn push_back(&mut self, key: u64, value: u8) {
        let entry = Entry {
            key,
            value,
            prev: self.tail,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        let previous = self.index.insert(key, slot);
        assert!(previous.is_none(), "key {key} is already in the list");
        if self.tail == NIL {
            self.head = slot;
        } else {
            self.entries[self.tail].next = slot;
        }
        self.tail = slot;
    }

    /// Removes `key` and returns its value, or `None` if it was absent.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u8> {
        let slot = self.index.remove(&key)?;
        let Entry {
            prev, next, value, ..
        } = self.entries[slot];
        if prev == NIL {
            self.head = next;
        } else {
            self.entries[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.entries[next].prev = prev;
        }
        self.free.push(slot);
        Some(value)
    }

    /// Removes and returns the front (oldest) key and its value.
    pub(crate) fn pop_front(&mut self) -> Option<(u64, u8)> {
        if self.head == NIL {
            return None;
        }
        let key = self.entries[self.head].key;
        let value = self.remove(key).expect("the head is indexed");
        Some((key, value))
    }

    /// The value stored with `key`, for updating in place.
    pub(crate) fn value_mut(&mut self, key: u64) -> Option<&mut u8> {
        let slot = *self.index.get(&key)?;
        Some(&mut self.entries[slot].value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the list discipline every reference policy relies on: FIFO order
    // from the front, removal from the middle, values kept.
    #[test]
    fn keeps_order_through_removals() {
        let mut list = KeyList::new();
        for key in 1..=4 {
            list.push_back(key, key as u8);
        }
        assert_eq!(list.remove(2), Some(2));
        assert_eq!(list.remove(2), None);
        list.push_back(2, 9);
        *list.value_mut(3).unwrap() = 7;
        assert_eq!(list.pop_front(), Some((1, 1)));
        assert_eq!(list.pop_front(), Some((3, 7)));
        assert_eq!(list.pop_front(), Some((4, 4)));
        assert_eq!(list.pop_front(), Some((2, 9)));
        assert_eq!(list.pop_front(), None);
        assert!(list.is_empty());
    }
}

//! A hash table of fixed-size records in far memory, with typed access.
//!
//! An open-addressing table (linear probing) whose slots are `#[repr(C)]`
//! records in a region: a key, a state word and a value of 48 bytes, 64
//! bytes in all, so a 4 KiB page holds 64 slots and a probe sequence rarely
//! leaves its page. The example inserts `--keys` keys into `--slots` slots
//! through a cache far smaller than the table, updates every third one,
//! looks every key up (and keys that were never inserted), then reads the
//! table back through a second client with a cold cache and checks it.
//!
//! ```text
//! cargo run -p pagoda --example hash_table
//! cargo run -p pagoda --example hash_table -- --node 127.0.0.1:7070 --slots 1000000 --keys 700000
//! ```

mod common;

use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use pagoda::{ClientError, Region, RegionOptions};

const USAGE: &str = "hash_table [--node ADDR] [--token-file PATH] [--slots N] [--keys N]";

/// A slot's `state` when no record was ever stored in it.
const SLOT_EMPTY: u64 = 0;
/// A slot's `state` when it holds a record.
const SLOT_FULL: u64 = 1;

/// One slot as stored in the region: `repr(C)` without padding, so it is
/// `Pod` and its 64 stored bytes are its fields, little-endian, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Slot {
    key: u64,
    /// `SLOT_EMPTY` or `SLOT_FULL`; a fresh region reads as zeros, so every
    /// slot of a new table is empty.
    state: u64,
    value: Value,
}

/// A record's value: 48 bytes of whatever the application keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Value {
    version: u64,
    counters: [u64; 5],
}

const SLOT_BYTES: u64 = size_of::<Slot>() as u64;

/// An open-addressing hash table over a region: `slots` slots of
/// `SLOT_BYTES` bytes from offset 0. No deletes, so a probe ends at the
/// first empty slot.
struct HashTable<'region> {
    region: &'region Region,
    slots: u64,
}

/// Why an insert was refused.
#[derive(Debug)]
enum InsertError {
    /// Every slot holds another key.
    Full,
    /// The region could not be read or written.
    Client(ClientError),
}

impl From<ClientError> for InsertError {
    fn from(error: ClientError) -> Self {
        InsertError::Client(error)
    }
}

impl std::fmt::Display for InsertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InsertError::Full => write!(f, "the table is full"),
            InsertError::Client(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for InsertError {}

impl<'region> HashTable<'region> {
    /// The table filling `region`.
    fn new(region: &'region Region) -> HashTable<'region> {
        HashTable {
            region,
            slots: region.len() / SLOT_BYTES,
        }
    }

    /// The slot a key's probe sequence starts at (Fibonacci hashing: the
    /// key times 2^64 / φ, whose high bits are well mixed).
    fn home(&self, key: u64) -> u64 {
        let mixed = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((u128::from(mixed) * u128::from(self.slots)) >> 64) as u64
    }

    /// The slot holding `key`, or the empty slot where it would go (`None`
    /// when the table is full), and how many slots were looked at.
    fn find(&self, key: u64) -> Result<(Option<(u64, Slot)>, u64), ClientError> {
        let home = self.home(key);
        // At most every slot once: the probe is bounded even when full.
        for probe in 0..self.slots {
            let index = (home + probe) % self.slots;
            let slot: Slot = self.region.read_value(index * SLOT_BYTES)?;
            if slot.state == SLOT_EMPTY || slot.key == key {
                return Ok((Some((index, slot)), probe + 1));
            }
        }
        Ok((None, self.slots))
    }

    /// Stores `value` under `key`; returns the value it replaced, if any,
    /// and the probe length.
    fn insert(&self, key: u64, value: Value) -> Result<(Option<Value>, u64), InsertError> {
        let (found, probes) = self.find(key)?;
        let (index, slot) = found.ok_or(InsertError::Full)?;
        let slot_new = Slot {
            key,
            state: SLOT_FULL,
            value,
        };
        self.region.write_value(index * SLOT_BYTES, &slot_new)?;
        let replaced = (slot.state == SLOT_FULL).then_some(slot.value);
        Ok((replaced, probes))
    }

    /// The value stored under `key`, if any.
    fn get(&self, key: u64) -> Result<Option<Value>, ClientError> {
        let (found, _) = self.find(key)?;
        Ok(found.and_then(|(_, slot)| (slot.state == SLOT_FULL).then_some(slot.value)))
    }
}

/// The `index`th key inserted, spread over the whole `u64` range; distinct
/// for distinct indexes, as each step is a bijection of `u64`.
fn key_of(index: u64) -> u64 {
    index.wrapping_mul(0xd6e8_feb8_6659_fd93).rotate_left(17) ^ 0x5bd1_e995
}

/// The value stored for `key` at `version`: made up, but checkable.
fn value_of(key: u64, version: u64) -> Value {
    let mut counters = [0u64; 5];
    for (position, counter) in counters.iter_mut().enumerate() {
        *counter = key.rotate_left(position as u32 * 7) ^ version;
    }
    Value { version, counters }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(&common::Args::parse(USAGE, &["slots", "keys"]))
}

fn run(args: &common::Args) -> Result<(), Box<dyn std::error::Error>> {
    let slots = args.number("slots", 100_000).max(1);
    let keys = args.number("keys", slots * 7 / 10);
    if keys > slots {
        return Err(format!("--keys {keys} does not fit in --slots {slots}").into());
    }
    let (client, embedded) = args.connect()?;

    let page_size = 4096u64;
    let region_bytes = (slots * SLOT_BYTES).div_ceil(page_size) * page_size;
    let name = format!("hash-table-{slots}");
    // A cache of 1 MiB, a fraction of the table: most probes miss it.
    let options = RegionOptions::with_cache_bytes(1 << 20);
    let region = client.open_or_create_region(&name, region_bytes, page_size as u32, options)?;
    // A table left by an earlier run of the same size starts over: every
    // slot empty (all zeros).
    region.write_slice(
        0,
        &vec![Slot::zeroed(); (region_bytes / SLOT_BYTES) as usize],
    )?;
    let table = HashTable::new(&region);
    println!(
        "region {name:?}: {} slots of {SLOT_BYTES} bytes, {} MiB",
        table.slots,
        region_bytes >> 20
    );

    let started = Instant::now();
    let mut probes_total = 0;
    for index in 0..keys {
        let key = key_of(index);
        let (replaced, probes) = table.insert(key, value_of(key, 1))?;
        if replaced.is_some() {
            return Err(format!("key {key:#x} was inserted twice").into());
        }
        probes_total += probes;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "inserted {keys} keys (load {:.2}) in {seconds:.2} s, {:.2} slots probed per insert",
        keys as f64 / table.slots as f64,
        probes_total as f64 / keys.max(1) as f64
    );

    // Update every third key: its slot is found again and rewritten.
    for index in (0..keys).step_by(3) {
        let key = key_of(index);
        let (replaced, _) = table.insert(key, value_of(key, 2))?;
        if replaced != Some(value_of(key, 1)) {
            return Err(format!("key {key:#x} held {replaced:?} before its update").into());
        }
    }
    let expected =
        |index: u64| value_of(key_of(index), if index.is_multiple_of(3) { 2 } else { 1 });

    let started = Instant::now();
    for index in 0..keys {
        if table.get(key_of(index))? != Some(expected(index)) {
            return Err(format!("key {:#x} reads back wrong", key_of(index)).into());
        }
    }
    // Keys never inserted are absent (unless the table is full, when
    // the probe for an absent key looks at every slot).
    let absent_keys = 1_000.min(slots - keys);
    for index in keys..keys + absent_keys {
        if table.get(key_of(index))?.is_some() {
            return Err(format!("key {:#x} was never inserted", key_of(index)).into());
        }
    }
    println!(
        "looked up every key and {absent_keys} absent ones in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    region.flush()?; // every slot written is now on the node
    drop(region);

    // A second client, as another process would, with a cold cache.
    let reader_client = pagoda::Client::connect(client.peer(), args.client_options()?)?;
    let reader =
        reader_client.open_region_read_only(&name, RegionOptions::with_cache_bytes(1 << 20))?;
    let table = HashTable::new(&reader);
    for index in 0..keys {
        if table.get(key_of(index))? != Some(expected(index)) {
            return Err(format!("key {:#x} reads back wrong from the node", key_of(index)).into());
        }
    }
    let stats = reader.cache_stats();
    println!(
        "a second client found every key on the node ({} pages fetched)",
        stats.pages_fetched
    );

    drop(reader);
    drop(reader_client);
    drop(client);
    drop(embedded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the example itself (`cargo test` runs it, small): every key
    // inserted, updated and found again, through a cache smaller than the
    // table, against a node it starts itself.
    #[test]
    fn every_key_is_found_again() {
        let args = common::Args::from_pairs(&[("slots", "20000"), ("keys", "15000")]);
        run(&args).unwrap();
    }

    // Guards the bound on probing: a full table refuses a new key instead
    // of looping, and still finds and updates the keys it holds.
    #[test]
    fn a_full_table_refuses_new_keys() {
        // A node of its own: the other test's embedded node uses the
        // process's data directory.
        let dir = tempfile::tempdir().unwrap();
        let config = pagoda_node::NodeConfig::new(
            ([127, 0, 0, 1], 0).into(),
            8 << 20,
            dir.path().to_path_buf(),
        );
        let node = pagoda_node::Node::start(config).unwrap();
        let client =
            pagoda::Client::connect(node.local_addr(), pagoda::ClientOptions::default()).unwrap();
        let region = client
            .open_or_create_region("full-table", 4096, 4096, RegionOptions::default())
            .unwrap();
        let table = HashTable::new(&region);
        assert_eq!(table.slots, 64);
        for index in 0..64 {
            table.insert(key_of(index), value_of(index, 1)).unwrap();
        }
        let refused = table.insert(key_of(64), value_of(64, 1));
        assert!(matches!(refused, Err(InsertError::Full)), "{refused:?}");
        assert_eq!(table.get(key_of(64)).unwrap(), None);
        let (replaced, _) = table.insert(key_of(5), value_of(5, 2)).unwrap();
        assert_eq!(replaced, Some(value_of(5, 1)));
        assert_eq!(table.get(key_of(5)).unwrap(), Some(value_of(5, 2)));
    }
}

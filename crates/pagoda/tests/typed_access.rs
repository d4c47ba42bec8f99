//! Typed access (`read_value`, `write_value`, `read_slice`, `write_slice`)
//! against a real node on loopback: values at any offset, across pages, in
//! transactions, and refused outside the region.

mod common;

use bytemuck::{Pod, Zeroable};
use pagoda::{ClientError, Durability, RegionOptions};

const PAGE: u64 = 4096;
const REGION_BYTES: u64 = 4 << 20;

/// A record as an application would store it: `repr(C)`, no padding.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Entry {
    key: u64,
    score: f32,
    hits: u32,
    tags: [u16; 4],
}

impl Entry {
    /// The bytes the entry must be stored as: its fields little-endian, in
    /// declaration order.
    fn expected_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&self.key.to_le_bytes());
        bytes.extend_from_slice(&self.score.to_le_bytes());
        bytes.extend_from_slice(&self.hits.to_le_bytes());
        for tag in self.tags {
            bytes.extend_from_slice(&tag.to_le_bytes());
        }
        bytes
    }
}

fn small_cache() -> RegionOptions {
    // Two pages: most reads miss and fetch from the node.
    RegionOptions::with_cache_bytes(2 * PAGE)
}

// Guards the layout promise: a u64 written at any offset (aligned, odd,
// straddling a page boundary, the region's last bytes; none overlapping)
// reads back, and is stored little-endian, byte for byte.
#[test]
fn u64_round_trips_at_any_offset_stored_little_endian() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client
        .create_region("u64", REGION_BYTES, PAGE as u32)
        .unwrap();
    let region = client.open_region("u64", small_cache()).unwrap();
    let offsets = [0, 9, 24, PAGE - 3, 5 * PAGE - 1, REGION_BYTES - 8];
    for (index, &offset) in offsets.iter().enumerate() {
        let value = 0x0123_4567_89ab_cdefu64.rotate_left(index as u32 * 8);
        region.write_value(offset, &value).unwrap();
        assert_eq!(region.read_value::<u64>(offset).unwrap(), value);
    }
    region.flush().unwrap();
    drop(region);
    // A second client with a cold cache sees the same values and bytes.
    let reader = common::client(&node)
        .open_region_read_only("u64", small_cache())
        .unwrap();
    for (index, &offset) in offsets.iter().enumerate() {
        let value = 0x0123_4567_89ab_cdefu64.rotate_left(index as u32 * 8);
        assert_eq!(reader.read_value::<u64>(offset).unwrap(), value);
        let mut bytes = [0u8; 8];
        reader.read_at(offset, &mut bytes).unwrap();
        assert_eq!(bytes, value.to_le_bytes(), "offset {offset}");
    }
}

// Guards slices across many pages and through evictions: an array of f32
// embeddings at an unaligned offset, larger than the cache, reads back
// exactly from a second client.
#[test]
fn f32_arrays_round_trip_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client
        .create_region("f32", REGION_BYTES, PAGE as u32)
        .unwrap();
    let region = client.open_region("f32", small_cache()).unwrap();
    let dimensions = 384;
    let rows = 200; // 300 KiB, many times the cache
    let start = 3; // unaligned for f32
    let embeddings: Vec<f32> = (0..rows * dimensions)
        .map(|i| (i as f32).sin() * 1e3 + 0.25)
        .collect();
    region.write_slice(start, &embeddings).unwrap();
    // Rows one by one, each at its own offset.
    for row in [0, 1, 17, rows - 1] {
        let mut back = vec![0f32; dimensions];
        region
            .read_slice(start + (row * dimensions * 4) as u64, &mut back)
            .unwrap();
        assert_eq!(back, embeddings[row * dimensions..(row + 1) * dimensions]);
    }
    region.flush().unwrap();
    let reader = common::client(&node)
        .open_region_read_only("f32", small_cache())
        .unwrap();
    let mut back = vec![0f32; embeddings.len()];
    reader.read_slice(start, &mut back).unwrap();
    // Compare bits: a float compared by value would hide a NaN mismatch.
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back), bits(&embeddings));
    // Arrays are values too.
    region.write_value(PAGE - 2, &[1.5f32, -2.0, 3.25]).unwrap();
    assert_eq!(
        region.read_value::<[f32; 3]>(PAGE - 2).unwrap(),
        [1.5, -2.0, 3.25]
    );
}

// Guards structs: a `repr(C)` `Pod` struct straddling a page boundary round
// trips, in the documented layout, and a slice of them does too.
#[test]
fn repr_c_struct_round_trips_straddling_pages() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client
        .create_region("struct", REGION_BYTES, PAGE as u32)
        .unwrap();
    let region = client.open_region("struct", small_cache()).unwrap();
    let entry = Entry {
        key: u64::MAX - 5,
        score: -0.125,
        hits: 77,
        tags: [1, 2, 0xfffe, 4],
    };
    let offset = 2 * PAGE - 11; // 11 bytes in one page, 21 in the next
    region.write_value(offset, &entry).unwrap();
    region.flush().unwrap();
    assert_eq!(region.read_value::<Entry>(offset).unwrap(), entry);
    let mut bytes = vec![0u8; size_of::<Entry>()];
    region.read_at(offset, &mut bytes).unwrap();
    assert_eq!(bytes, entry.expected_bytes());

    let entries: Vec<Entry> = (0..1000u64)
        .map(|i| Entry {
            key: i,
            score: i as f32 / 3.0,
            hits: i as u32 * 7,
            tags: [i as u16; 4],
        })
        .collect();
    region.write_slice(PAGE * 10 + 5, &entries).unwrap();
    let mut back = vec![Entry::zeroed(); entries.len()];
    region.read_slice(PAGE * 10 + 5, &mut back).unwrap();
    assert_eq!(back, entries);
}

// Guards typed access inside transactions: reads see the transaction's own
// typed writes, the commit applies them all, in each durability mode that
// commits differently (the cache, the node's journal).
#[test]
fn typed_values_in_transactions() {
    for durability in [Durability::WriteBack, Durability::Remote] {
        let dir = tempfile::tempdir().unwrap();
        let node = common::node(dir.path(), 64 << 20, None);
        let client = common::client(&node);
        client
            .create_region("tx", REGION_BYTES, PAGE as u32)
            .unwrap();
        let options = RegionOptions {
            durability: durability.clone(),
            ..small_cache()
        };
        let region = client.open_region("tx", options).unwrap();
        region.write_value(PAGE - 4, &100u64).unwrap();
        let entry = Entry {
            key: 9,
            score: 1.0,
            hits: 0,
            tags: [0; 4],
        };
        let seen = region
            .transaction(|tx| {
                let balance: u64 = tx.read_value(PAGE - 4)?;
                tx.write_value(PAGE - 4, &(balance - 30))?;
                tx.write_value(3 * PAGE + 1, &(balance + 30))?;
                tx.write_slice(5 * PAGE - 6, &[entry, entry])?;
                // Own writes are visible before the commit.
                let mut own = [Entry::zeroed(); 2];
                tx.read_slice(5 * PAGE - 6, &mut own)?;
                assert_eq!(own, [entry, entry]);
                tx.read_value::<u64>(PAGE - 4)
            })
            .unwrap();
        assert_eq!(seen, 70, "{durability:?}");
        region.flush().unwrap();
        drop(region);
        let reader = common::client(&node)
            .open_region_read_only("tx", small_cache())
            .unwrap();
        assert_eq!(reader.read_value::<u64>(PAGE - 4).unwrap(), 70);
        assert_eq!(reader.read_value::<u64>(3 * PAGE + 1).unwrap(), 130);
        let mut back = [Entry::zeroed(); 2];
        reader.read_slice(5 * PAGE - 6, &mut back).unwrap();
        assert_eq!(back, [entry, entry], "{durability:?}");
    }
}

fn assert_out_of_range(error: ClientError, offset: u64, len: u64) {
    match error {
        ClientError::OutOfRange {
            offset: at,
            len: length,
            size,
        } => {
            assert_eq!((at, length, size), (offset, len, REGION_BYTES));
        }
        other => panic!("expected OutOfRange at {offset} of {len} bytes, got {other}"),
    }
}

// Guards the bounds: a value or slice reaching past the region's end (also
// by an offset whose end overflows u64) is refused with `OutOfRange`, and
// nothing is written, in or out of a transaction.
#[test]
fn out_of_range_values_and_slices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 << 20, None);
    let client = common::client(&node);
    client
        .create_region("bounds", REGION_BYTES, PAGE as u32)
        .unwrap();
    let region = client.open_region("bounds", small_cache()).unwrap();
    let end = REGION_BYTES;

    assert_out_of_range(region.read_value::<u64>(end - 7).unwrap_err(), end - 7, 8);
    assert_out_of_range(region.read_value::<u8>(end).unwrap_err(), end, 1);
    assert_out_of_range(
        region.read_value::<u32>(u64::MAX - 1).unwrap_err(),
        u64::MAX - 1,
        4,
    );
    assert_out_of_range(
        region.write_value(end - 3, &u32::MAX).unwrap_err(),
        end - 3,
        4,
    );
    assert_out_of_range(
        region.write_slice(end - 8, &[7u16; 5]).unwrap_err(),
        end - 8,
        10,
    );
    let mut values = [0f32; 3];
    assert_out_of_range(
        region.read_slice(end - 8, &mut values).unwrap_err(),
        end - 8,
        12,
    );
    let error = region
        .transaction(|tx| tx.write_value(end - 2, &0u64))
        .unwrap_err();
    assert_out_of_range(error, end - 2, 8);
    let error = region
        .transaction(|tx| tx.read_value::<Entry>(end - 16))
        .unwrap_err();
    assert_out_of_range(error, end - 16, size_of::<Entry>() as u64);
    // Nothing of the refused writes landed: the last page is all zeros.
    let mut last = [0xffu8; PAGE as usize];
    region.read_at(end - PAGE, &mut last).unwrap();
    assert!(last.iter().all(|&b| b == 0));

    // What fits exactly is fine, including nothing at the very end.
    region.write_value(end - 8, &u64::MAX).unwrap();
    assert_eq!(region.read_value::<u64>(end - 8).unwrap(), u64::MAX);
    region.write_slice::<u64>(end, &[]).unwrap();
    region.read_value::<()>(end).unwrap();
}

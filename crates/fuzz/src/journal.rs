//! The `journal` target: recovery of arbitrary segment bytes.
//!
//! Input layout: byte 0 holds flags (bit 0: `OnCorruption::Truncate` instead
//! of `Fail`; bits 1-2: `record_bytes_max`; bit 3: leave a sequence number out
//! before the last segment; bit 4: fix up every checksum the harness can find,
//! so mutations get past the CRCs to the logic behind them), byte 1 the first
//! segment's sequence number (1 + byte % 4), then up to [`SEGMENTS_MAX`]
//! segments, each a little-endian u16 length and that many bytes (the last
//! one takes what is left if it is short).
//!
//! The segments go into a [`CrashStorage`] and [`Journal::open_with`] runs
//! recovery. Oracles: nothing panics; recovered records carry consecutive ids
//! above the released id; a second recovery of what the first left finds no
//! hole, discards nothing and returns the same records; and a commit after
//! recovery is recovered by a third open behind them.

use std::sync::Arc;

use pagoda_journal::format::{
    COMMIT_ID_MAX, RECORD_HEADER_BYTES, RECORD_MAGIC, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
};
use pagoda_journal::testing::CrashStorage;
use pagoda_journal::{Journal, JournalError, JournalOptions, OnCorruption, Record, Storage};

/// Most segments one input describes.
pub const SEGMENTS_MAX: usize = 4;

/// Flag bits of byte 0, for seeding.
pub const FLAG_TRUNCATE: u8 = 1;
/// Leave a sequence number out before the last segment.
pub const FLAG_GAP: u8 = 1 << 3;
/// Fix up checksums.
pub const FLAG_FIX_CHECKSUMS: u8 = 1 << 4;

/// Encodes segments into this target's input layout (for seeding).
pub fn encode_input(flags: u8, first_sequence: u64, segments: &[Vec<u8>]) -> Vec<u8> {
    assert!((1..=4).contains(&first_sequence));
    let mut out = vec![flags, (first_sequence - 1) as u8];
    for segment in segments.iter().take(SEGMENTS_MAX) {
        let length = u16::try_from(segment.len()).expect("seed segment under 64 KiB");
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(segment);
    }
    out
}

fn options(flags: u8) -> JournalOptions {
    JournalOptions {
        coalesce: true,
        segment_bytes: 4096,
        record_bytes_max: match (flags >> 1) & 3 {
            0 => 64 << 20,
            1 => 4096,
            2 => 256,
            _ => RECORD_HEADER_BYTES as u64,
        },
        on_corruption: if flags & FLAG_TRUNCATE != 0 {
            OnCorruption::Truncate
        } else {
            OnCorruption::Fail
        },
        ..JournalOptions::default()
    }
}

/// Recomputes the segment header's CRC and every record CRC along the chain
/// of records that parse far enough to be walked.
fn fix_checksums(segment: &mut [u8]) {
    if segment.len() < SEGMENT_HEADER_BYTES || segment[..8] != SEGMENT_MAGIC {
        return;
    }
    let crc = crc32c::crc32c(&segment[..32]);
    segment[32..36].copy_from_slice(&crc.to_le_bytes());
    let mut offset = SEGMENT_HEADER_BYTES;
    while segment.len() - offset >= RECORD_HEADER_BYTES
        && segment[offset..offset + 4] == RECORD_MAGIC
    {
        let body =
            u32::from_le_bytes(segment[offset + 12..offset + 16].try_into().unwrap()) as usize;
        let end = offset + RECORD_HEADER_BYTES + body;
        if end > segment.len() {
            return;
        }
        let crc = crc32c::crc32c(&segment[offset + 8..end]);
        segment[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset = end;
    }
}

/// Runs one input through the target.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let mut sequence = 1 + u64::from(data[1] % 4);
    let mut rest = &data[2..];
    let storage = CrashStorage::new(0);
    let mut segments = Vec::new();
    while !rest.is_empty() && segments.len() < SEGMENTS_MAX {
        let length = if rest.len() >= 2 {
            u16::from_le_bytes([rest[0], rest[1]]) as usize
        } else {
            0
        };
        rest = &rest[rest.len().min(2)..];
        let length = length.min(rest.len());
        let mut bytes = rest[..length].to_vec();
        rest = &rest[length..];
        if flags & FLAG_FIX_CHECKSUMS != 0 {
            fix_checksums(&mut bytes);
        }
        segments.push(bytes);
    }
    let count = segments.len();
    for (index, bytes) in segments.into_iter().enumerate() {
        if flags & FLAG_GAP != 0 && index + 1 == count && index > 0 {
            sequence += 1;
        }
        let device = storage.create(sequence).expect("in-memory create");
        if !bytes.is_empty() {
            device.write_at(0, &bytes).expect("in-memory write");
        }
        device.sync().expect("in-memory sync");
        sequence += 1;
    }
    storage.sync_directory().expect("in-memory directory sync");

    let options = options(flags);
    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    let Ok((journal, records)) = Journal::open_with(shared.clone(), options.clone()) else {
        return;
    };
    check_records(&journal, &records);
    let released = journal.released_id();
    drop(journal);

    // What recovery left is a clean log: reading it again changes nothing.
    let (journal, again) = Journal::open_with(shared.clone(), options.clone())
        .unwrap_or_else(|error| panic!("a recovered journal fails to reopen: {error}"));
    let report = journal.recovery_report();
    assert_eq!(report.hole, None, "a recovered journal has a hole");
    assert_eq!(report.segments_discarded, 0);
    assert_eq!(ids(&again), ids(&records), "a second recovery differs");
    assert_eq!(journal.released_id(), released);
    check_records(&journal, &again);

    // The log goes on: a commit after recovery comes back behind the others.
    let mut micro = journal.begin();
    micro.push(1, 4096, b"after recovery");
    let committed = journal.commit(micro);
    drop(journal);
    let committed = match committed {
        Ok(record) => record,
        // A record too large for `record_bytes_max`, or a log whose ids are
        // used up, is refused; nothing else may fail on this storage.
        Err(JournalError::RecordTooLarge { .. }) if options.record_bytes_max < 4096 => return,
        Err(JournalError::IdsExhausted { id }) if id > COMMIT_ID_MAX => return,
        Err(error) => panic!("a commit after recovery fails: {error}"),
    };
    let (journal, third) = Journal::open_with(shared, options)
        .unwrap_or_else(|error| panic!("a journal fails to reopen after a commit: {error}"));
    let mut expected = ids(&records);
    expected.push(committed.id);
    assert_eq!(ids(&third), expected, "the commit after recovery is lost");
    assert_eq!(third.last().map(|record| &**record), Some(&*committed));
    check_records(&journal, &third);
}

fn ids(records: &[Arc<Record>]) -> Vec<u64> {
    records.iter().map(|record| record.id).collect()
}

fn check_records(journal: &Journal, records: &[Arc<Record>]) {
    for pair in records.windows(2) {
        assert_eq!(
            pair[0].id + 1,
            pair[1].id,
            "recovered ids are not consecutive"
        );
    }
    if let Some(first) = records.first() {
        assert!(
            first.id > journal.released_id(),
            "a released record came back"
        );
    }
    if let Some(last) = records.last() {
        assert_eq!(journal.next_id(), last.id + 1);
    }
    assert!(journal.released_id() < journal.next_id());
}

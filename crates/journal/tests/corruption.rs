//! Damage to durable bytes in the middle of the log: detected, never returned as a
//! valid record, and never silently traded for a shorter log when acknowledged commits
//! lie beyond it.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::{fill, tag, transaction};
use pagoda_journal::format::{self, RecordHeader};
use pagoda_journal::testing::{CrashStorage, SplitMix64};
use pagoda_journal::{Journal, JournalError, JournalOptions, OnCorruption, Record};
use proptest::prelude::*;

const RECORDS: u64 = 20;

/// A one-segment journal holding `RECORDS` commits, each persisted before the next.
/// Returns the storage, the records, and where each record starts in the segment; the
/// last record ends where the pre-zeroed space begins.
fn durable_log(seed: u64) -> (CrashStorage, Vec<Arc<Record>>, Vec<u64>) {
    let storage = CrashStorage::new(seed);
    let (journal, _) =
        Journal::open_with(Arc::new(storage.clone()), JournalOptions::default()).unwrap();
    let records: Vec<_> = (0..RECORDS)
        .map(|sequence| {
            let entries = transaction(seed, tag(0, sequence), 100);
            journal.commit(fill(&journal, &entries)).unwrap()
        })
        .collect();
    drop(journal);
    let bytes = storage.segment_bytes(1).unwrap();
    let mut starts = Vec::new();
    let mut offset = format::SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let header: [u8; format::RECORD_HEADER_BYTES] = bytes
            [offset..offset + format::RECORD_HEADER_BYTES]
            .try_into()
            .unwrap();
        if header == [0; format::RECORD_HEADER_BYTES] {
            assert!(
                bytes[offset..].iter().all(|&byte| byte == 0),
                "the log is followed by zeros only"
            );
            break;
        }
        starts.push(offset as u64);
        offset += RecordHeader::decode(&header, u64::MAX >> 1, format::FORMAT_VERSION, 1)
            .unwrap()
            .record_bytes() as usize;
    }
    assert_eq!(starts.len() as u64, RECORDS);
    (storage, records, starts)
}

fn salvage() -> JournalOptions {
    JournalOptions {
        on_corruption: OnCorruption::Truncate,
        ..JournalOptions::default()
    }
}

/// Guards against: a damaged record returned as valid; damage in the middle of the log
/// silently truncating acknowledged commits after it; damage to the last record not
/// being handled as a torn tail; salvage mode keeping anything past the damage or
/// losing anything before it. Flips every byte of the log, one at a time.
#[test]
fn every_damaged_byte_is_detected() {
    let (storage, records, starts) = durable_log(7);
    let last = *starts.last().unwrap();
    let len = last + records_bytes(&storage, last);
    let mut rng = SplitMix64::new(7);
    for offset in 0..len {
        let mask = 1 + rng.below(255) as u8;
        // Which record the byte is in (None: the segment header).
        let damaged = starts.iter().rposition(|&start| start <= offset);
        let hole_offset = damaged.map_or(0, |index| starts[index]);
        let kept = damaged.unwrap_or(0);

        let image = storage.fork();
        image.corrupt(1, offset, mask);
        match Journal::open_with(Arc::new(image), JournalOptions::default()) {
            Err(JournalError::Corrupt {
                segment,
                offset: reported,
                ..
            }) => {
                assert_ne!(
                    damaged,
                    Some(RECORDS as usize - 1),
                    "byte {offset}: the last record's damage is a torn tail, not corruption"
                );
                assert_eq!(
                    (segment, reported),
                    (1, hole_offset),
                    "byte {offset}: damage reported at the wrong place"
                );
            }
            Ok((journal, recovered)) => {
                // Only damage to the last record may look like a torn tail: nothing after
                // it proves it was durable.
                assert_eq!(
                    damaged,
                    Some(RECORDS as usize - 1),
                    "byte {offset}: damage before acknowledged commits was not reported"
                );
                assert_eq!(recovered, records[..kept], "byte {offset}");
                assert_eq!(
                    journal
                        .recovery_report()
                        .hole
                        .as_ref()
                        .map(|hole| hole.offset),
                    Some(hole_offset)
                );
            }
            Err(error) => panic!("byte {offset}: unexpected error {error}"),
        }

        let image = storage.fork();
        image.corrupt(1, offset, mask);
        let (journal, recovered) = Journal::open_with(Arc::new(image.clone()), salvage())
            .unwrap_or_else(|error| panic!("byte {offset}: salvage failed: {error}"));
        assert_eq!(
            recovered,
            records[..kept],
            "byte {offset}: salvage kept the wrong records"
        );
        // The log was cut at the damage: new commits continue from there and survive a reopen.
        let entries = transaction(8, tag(1, offset), 50);
        let record = journal.commit(fill(&journal, &entries)).unwrap();
        assert_eq!(
            record.id,
            kept as u64 + 1,
            "byte {offset}: ids do not continue after salvage"
        );
        drop(journal);
        let (_, reopened) = Journal::open_with(Arc::new(image), JournalOptions::default())
            .unwrap_or_else(|error| panic!("byte {offset}: reopen after salvage failed: {error}"));
        let mut expected = records[..kept].to_vec();
        expected.push(record);
        assert_eq!(reopened, expected, "byte {offset}: reopen after salvage");
    }
}

/// The size of the record at `offset` of segment 1.
fn records_bytes(storage: &CrashStorage, offset: u64) -> u64 {
    let bytes = storage.segment_bytes(1).unwrap();
    let at = offset as usize;
    let header: [u8; format::RECORD_HEADER_BYTES] = bytes[at..at + format::RECORD_HEADER_BYTES]
        .try_into()
        .unwrap();
    RecordHeader::decode(&header, u64::MAX >> 1, format::FORMAT_VERSION, 1)
        .unwrap()
        .record_bytes()
}

/// Guards against: a byte that is not zero in the pre-zeroed space after the last record
/// (a torn write of a record never acknowledged) being replayed, refused as corruption,
/// or left in place for a later crash to combine with new records. It is a torn tail:
/// every record is kept, the segment is cut there, and new commits continue after it.
#[test]
fn a_stray_byte_in_the_pre_zeroed_space_is_a_torn_tail() {
    let (storage, records, starts) = durable_log(9);
    let last = *starts.last().unwrap();
    let end = last + records_bytes(&storage, last);
    let len = storage.segment_bytes(1).unwrap().len() as u64;
    assert!(
        len > end + 4096,
        "the segment is pre-zeroed beyond its records"
    );
    for offset in [end, end + 1, end + 39, end + 40, (end + len) / 2, len - 1] {
        let image = storage.fork();
        image.corrupt(1, offset, 0x01);
        let (journal, recovered) =
            Journal::open_with(Arc::new(image.clone()), JournalOptions::default())
                .unwrap_or_else(|error| panic!("byte {offset}: {error}"));
        assert_eq!(recovered, records, "byte {offset}");
        let hole = journal.recovery_report().hole.clone().expect("a torn tail");
        assert_eq!((hole.segment, hole.offset), (1, end), "byte {offset}");
        let record = journal
            .commit(fill(&journal, &transaction(9, tag(2, offset), 50)))
            .unwrap();
        drop(journal);
        let (journal, reopened) =
            Journal::open_with(Arc::new(image), JournalOptions::default()).unwrap();
        assert_eq!(journal.recovery_report().hole, None, "byte {offset}");
        assert_eq!(reopened.len(), records.len() + 1);
        assert_eq!(reopened.last(), Some(&record), "byte {offset}");
    }
}

/// Guards against: the same, on real files: a byte flipped on disk in the middle of a
/// segment file is reported with its place, and salvage truncates the file there.
#[test]
fn damage_in_a_segment_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let records: Vec<_> = (0..10)
        .map(|sequence| {
            let entries = transaction(3, tag(0, sequence), 300);
            journal.commit(fill(&journal, &entries)).unwrap()
        })
        .collect();
    // Where the records end; the pre-zeroed space follows.
    let end = format::SEGMENT_HEADER_BYTES as u64 + journal.stats().bytes_appended;
    drop(journal);
    let path = dir.path().join("segment-00000000000000000001.log");
    let len = fs::metadata(&path).unwrap().len();
    assert!(len > end, "the segment is pre-zeroed");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let middle = end / 2;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, middle).unwrap();
    file.write_all_at(&[byte[0] ^ 0xFF], middle).unwrap();
    drop(file);

    match Journal::open(dir.path(), JournalOptions::default()) {
        Err(JournalError::Corrupt {
            segment: 1, offset, ..
        }) => {
            assert!(offset <= middle, "damage reported after the damaged byte");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len,
        "a refused recovery changed the file"
    );

    let (journal, recovered) = Journal::open(dir.path(), salvage()).unwrap();
    let hole = journal
        .recovery_report()
        .hole
        .clone()
        .expect("salvage found the damage");
    assert!(!recovered.is_empty() && recovered.len() < records.len());
    assert_eq!(recovered, records[..recovered.len()]);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        hole.offset,
        "salvage did not truncate at the damage"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Guards against: a panic, an unbounded allocation or a wrong record on arbitrary
    /// garbage: overwrite a random stretch of a valid log with random bytes (lengths,
    /// magics and all), and recovery either reports corruption or returns a prefix of
    /// what was committed.
    #[test]
    fn garbage_never_becomes_a_record(
        start in 0u64..4000,
        garbage in proptest::collection::vec(any::<u8>(), 1..200),
        salvaging in any::<bool>(),
    ) {
        let (storage, records, _) = durable_log(11);
        let len = storage.segment_bytes(1).unwrap().len() as u64;
        let start = start % len;
        let image = storage.fork();
        for (index, &byte) in garbage.iter().enumerate() {
            let offset = start + index as u64;
            let current = image.segment_bytes(1).unwrap();
            if offset >= current.len() as u64 {
                break;
            }
            let mask = current[offset as usize] ^ byte;
            if mask != 0 {
                image.corrupt(1, offset, mask);
            }
        }
        let options = if salvaging { salvage() } else { JournalOptions::default() };
        match Journal::open_with(Arc::new(image), options) {
            Ok((_, recovered)) => {
                prop_assert!(recovered.len() <= records.len());
                prop_assert_eq!(&recovered[..], &records[..recovered.len()]);
            }
            Err(JournalError::Corrupt { .. }) => prop_assert!(!salvaging, "salvage refused to open"),
            Err(error) => prop_assert!(false, "unexpected error {}", error),
        }
    }
}

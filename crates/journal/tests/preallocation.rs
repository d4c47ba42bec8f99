//! Pre-zeroed segments and the record's `segment` field: where the log ends in a file
//! that is longer than its records, what bytes beyond the tail may and may not do, and
//! journals in the previous format.

mod common;

use std::fs;
use std::sync::Arc;

use common::{fill, tag, transaction};
use pagoda_journal::format::{self, FORMAT_VERSION, FORMAT_VERSION_1, SegmentHeader};
use pagoda_journal::testing::CrashStorage;
use pagoda_journal::{CommitId, Journal, JournalOptions, Record, Storage};

fn commit(journal: &Journal, sequence: u64) -> Arc<Record> {
    let entries = transaction(5, tag(0, sequence), 200);
    journal.commit(fill(journal, &entries)).unwrap()
}

fn ids(records: &[Arc<Record>]) -> Vec<CommitId> {
    records.iter().map(|record| record.id).collect()
}

/// A sealed commit record with one entry, for the segment `sequence`.
fn record_for(sequence: u64, id: CommitId, durable_through: CommitId, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    format::start_frame(&mut frame);
    let crc = format::append_entry(&mut frame, 0, 7, 0, data);
    format::seal_commit(&mut frame, id, durable_through, 1, crc, sequence);
    frame
}

/// Writes `bytes` at `offset` of segment `sequence` and persists them.
fn write_durably(storage: &CrashStorage, sequence: u64, offset: u64, bytes: &[u8]) {
    let device = storage.open(sequence).unwrap();
    device.write_at(offset, bytes).unwrap();
    device.sync().unwrap();
}

/// Where the log ends in the active segment of a journal just closed: the header plus
/// every byte appended since it was opened on an empty storage with one segment.
fn tail(journal: &Journal) -> u64 {
    format::SEGMENT_HEADER_BYTES as u64 + journal.stats().bytes_appended
}

/// Guards against: the pre-zeroed space being taken for a torn tail (so every clean
/// reopen would truncate the file and lose its pre-allocation), or the journal
/// appending past where the records end after a reopen; and against the file being
/// grown by every commit rather than by chunks.
#[test]
fn a_pre_zeroed_segment_reopens_at_its_tail_without_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment-00000000000000000001.log");
    let options = JournalOptions::default();
    let (journal, _) = Journal::open(dir.path(), options.clone()).unwrap();
    let first = commit(&journal, 0);
    let end = tail(&journal);
    let len = fs::metadata(&path).unwrap().len();
    assert!(
        len > end + 4096 && len <= end + options.preallocate_bytes,
        "zeroed ahead by one chunk: {len} bytes for {end} of records"
    );
    assert_eq!(journal.stats().bytes_zeroed, len - end);
    let second = commit(&journal, 1);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len,
        "a commit within the zeroed space does not grow the file"
    );
    let end = tail(&journal);
    drop(journal);

    let (journal, recovered) = Journal::open(dir.path(), options.clone()).unwrap();
    assert_eq!(recovered, [first, second]);
    assert_eq!(journal.recovery_report().hole, None);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len,
        "recovery kept the zeros"
    );
    let third = commit(&journal, 2);
    drop(journal);
    let bytes = fs::read(&path).unwrap();
    assert!(
        bytes[end as usize..].starts_with(&format::RECORD_MAGIC),
        "the commit after reopening went right after the last record"
    );
    let (_, recovered) = Journal::open(dir.path(), options).unwrap();
    assert_eq!(ids(&recovered), [1, 2, 3]);
    assert_eq!(recovered.last(), Some(&third));
}

/// Guards against: replaying stale records left beyond the tail in a segment file whose
/// space held an earlier segment (as a file reused for a later segment holds them), even
/// one that carries exactly the commit id the log expects next, or one that would prove
/// a later hole durable and make recovery refuse to open.
#[test]
fn stale_records_of_an_earlier_segment_beyond_the_tail_are_not_replayed() {
    let storage = CrashStorage::new(1);
    let options = JournalOptions {
        segment_bytes: 2048,
        ..JournalOptions::default()
    };
    let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options.clone()).unwrap();
    let mut committed = Vec::new();
    // Bounded: a 2 KiB segment holds a handful of these records.
    while storage.segments().len() < 3 && committed.len() < 1000 {
        committed.push(commit(&journal, committed.len() as u64));
    }
    let active = *storage.segments().last().unwrap();
    assert!(active >= 3, "the log rotated twice");
    let next_id = journal.next_id();
    drop(journal);
    let bytes = storage.segment_bytes(active).unwrap();
    let header =
        SegmentHeader::decode(&bytes[..format::SEGMENT_HEADER_BYTES].try_into().unwrap()).unwrap();
    let mut end = format::SEGMENT_HEADER_BYTES;
    for id in header.first_id..next_id {
        let record: [u8; format::RECORD_HEADER_BYTES] = bytes
            [end..end + format::RECORD_HEADER_BYTES]
            .try_into()
            .unwrap();
        let record = format::RecordHeader::decode(&record, 1 << 20, FORMAT_VERSION, active)
            .unwrap_or_else(|reason| panic!("record {id}: {reason}"));
        end += record.record_bytes() as usize;
    }
    assert!(bytes[end..].iter().all(|&byte| byte == 0));

    // Records an earlier segment's file held: one with the id the log expects next, one
    // with an older id, and one claiming that a much later commit was durable.
    let mut stale = record_for(active - 2, next_id, next_id - 1, b"stale, next id");
    stale.extend(record_for(active - 1, 2, 1, b"stale, old id"));
    stale.extend(record_for(active - 2, 1000, 999, b"stale proof"));
    write_durably(&storage, active, end as u64, &stale);

    let (journal, recovered) = Journal::open_with(Arc::new(storage.clone()), options.clone())
        .unwrap_or_else(|error| panic!("a stale record was taken as proof: {error}"));
    assert_eq!(recovered, committed, "stale records were replayed");
    let hole = journal
        .recovery_report()
        .hole
        .clone()
        .expect("a hole at the tail");
    assert_eq!((hole.segment, hole.offset), (active, end as u64));
    assert_eq!(hole.reason, "record belongs to another segment");
    assert_eq!(journal.next_id(), next_id);
    let record = commit(&journal, 5000);
    assert_eq!(record.id, next_id);
    drop(journal);

    let (journal, recovered) = Journal::open_with(Arc::new(storage), options).unwrap();
    assert_eq!(journal.recovery_report().hole, None);
    assert_eq!(recovered.len(), committed.len() + 1);
    assert_eq!(recovered.last(), Some(&record));
}

/// Guards against: a torn record in the middle of the pre-zeroed space (a crash after the
/// record's first bytes reached the media and before the rest did) letting replay skip
/// it and continue with a valid record written after it, or leaving that record in
/// place for a later recovery, after new commits, to pick up.
#[test]
fn a_torn_record_in_a_pre_zeroed_segment_ends_replay_there() {
    let storage = CrashStorage::new(2);
    let options = JournalOptions::default();
    let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options.clone()).unwrap();
    let committed: Vec<_> = (0..5).map(|sequence| commit(&journal, sequence)).collect();
    let end = tail(&journal);
    let next_id = journal.next_id();
    drop(journal);
    let len = storage.segment_bytes(1).unwrap().len() as u64;
    assert!(len > end + 8192, "the segment is pre-zeroed");

    // The next record, torn after its header and part of its body; then zeros; then a
    // complete record written after it (never persisted before the crash: its
    // `durable_through` is below the torn one's id).
    let torn = record_for(1, next_id, next_id - 1, &[0xAB; 300]);
    write_durably(&storage, 1, end, &torn[..100]);
    let later = record_for(1, next_id + 1, next_id - 1, b"after the torn one");
    let later_at = end + torn.len() as u64 + 512;
    write_durably(&storage, 1, later_at, &later);

    let (journal, recovered) =
        Journal::open_with(Arc::new(storage.clone()), options.clone()).unwrap();
    assert_eq!(recovered, committed);
    let hole = journal.recovery_report().hole.clone().expect("a torn tail");
    assert_eq!((hole.segment, hole.offset), (1, end));
    assert_eq!(
        storage.segment_bytes(1).unwrap().len() as u64,
        end,
        "the torn tail was cut off"
    );
    let record = commit(&journal, 99);
    assert_eq!(record.id, next_id);
    drop(journal);
    let bytes = storage.segment_bytes(1).unwrap();
    assert!(
        !bytes.windows(later.len()).any(|window| window == later),
        "the record after the torn one is still in the file"
    );
    let (journal, recovered) = Journal::open_with(Arc::new(storage), options).unwrap();
    assert_eq!(journal.recovery_report().hole, None);
    assert_eq!(ids(&recovered), (1..=next_id).collect::<Vec<_>>());
}

/// A version-1 record: the current encoding with version 1 and no `segment` field.
fn version_1_record(id: CommitId, durable_through: CommitId, data: &[u8]) -> Vec<u8> {
    let mut frame = record_for(0, id, durable_through, data);
    frame[8..10].copy_from_slice(&FORMAT_VERSION_1.to_le_bytes());
    frame[36..40].fill(0);
    let crc = crc32c::crc32c(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Guards against: an upgrade losing the records of a journal written in format version 1
/// (they must be replayed), mixing versions in one file (new records must go to a new
/// segment), or keeping version-1 segments forever.
#[test]
fn a_version_1_journal_opens_and_continues_in_a_new_segment() {
    let storage = CrashStorage::new(3);
    let device = storage.create(1).unwrap();
    let header = SegmentHeader {
        version: FORMAT_VERSION_1,
        sequence: 1,
        first_id: 1,
    };
    let mut bytes = header.encode().to_vec();
    for id in 1..=3 {
        bytes.extend(version_1_record(id, id - 1, &[id as u8; 50]));
    }
    device.write_at(0, &bytes).unwrap();
    device.sync().unwrap();
    storage.sync_directory().unwrap();

    let options = JournalOptions::default();
    let (journal, recovered) =
        Journal::open_with(Arc::new(storage.clone()), options.clone()).unwrap();
    assert_eq!(ids(&recovered), [1, 2, 3]);
    assert_eq!(recovered[2].entries[0].data, [3; 50]);
    assert_eq!(journal.recovery_report().hole, None);
    let record = commit(&journal, 0);
    assert_eq!(record.id, 4);
    assert_eq!(
        storage.segments(),
        [1, 2],
        "the new record went to a new segment"
    );
    assert_eq!(
        storage.segment_bytes(1).unwrap(),
        bytes,
        "the version-1 segment was not written to"
    );
    let new_header = storage.segment_bytes(2).unwrap()[..format::SEGMENT_HEADER_BYTES].to_vec();
    let new_header = SegmentHeader::decode(&new_header.try_into().unwrap()).unwrap();
    assert_eq!(new_header, SegmentHeader::new(2, 4));
    drop(journal);

    let (journal, recovered) =
        Journal::open_with(Arc::new(storage.clone()), options.clone()).unwrap();
    assert_eq!(ids(&recovered), [1, 2, 3, 4]);
    assert_eq!(recovered[3], record);
    journal.release_through(4).unwrap();
    assert_eq!(
        storage.segments(),
        [2],
        "the released version-1 segment was removed"
    );
    drop(journal);
    let (_, recovered) = Journal::open_with(Arc::new(storage), options).unwrap();
    assert!(recovered.is_empty());
}

/// Guards against: a busy segment growing (and a persist writing metadata) more often
/// than once per `preallocate_bytes` of records, or a quiet one taking a whole chunk.
#[test]
fn a_segment_grows_in_chunks_that_follow_its_size() {
    let storage = CrashStorage::new(5);
    let options = JournalOptions::default();
    let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options.clone()).unwrap();
    commit(&journal, 0);
    let quiet = storage.segment_bytes(1).unwrap().len() as u64;
    assert!(
        quiet <= 128 << 10,
        "one small commit zeroed {quiet} bytes ahead"
    );
    let mut lengths = vec![quiet];
    // 8 MiB of 64 KiB records.
    for sequence in 1..=128 {
        let mut micro_journal = journal.begin();
        micro_journal.push(sequence, 0, &[7; 64 << 10]);
        journal.commit(micro_journal).unwrap();
        let len = storage.segment_bytes(1).unwrap().len() as u64;
        if len != *lengths.last().unwrap() {
            lengths.push(len);
        }
    }
    let end = tail(&journal);
    let len = *lengths.last().unwrap();
    assert!(len > end && len <= end + options.preallocate_bytes);
    // Doubling up to 1 MiB, then a chunk per MiB: about 7 + 8 growths for 8 MiB.
    assert!(
        lengths.len() <= 20,
        "the file grew {} times for {end} bytes: {lengths:?}",
        lengths.len()
    );
    assert!(journal.stats().bytes_zeroed >= len - end);
}

/// Guards against: pre-zeroing writing past `segment_bytes` (a small segment would
/// take a whole chunk of zeros), or a disabled pre-zeroing writing zeros at all.
#[test]
fn pre_zeroing_stays_within_the_segment_and_can_be_turned_off() {
    for (preallocate_bytes, segment_bytes) in [(1 << 20, 4096), (0, 1 << 20)] {
        let storage = CrashStorage::new(4);
        let options = JournalOptions {
            segment_bytes,
            preallocate_bytes,
            ..JournalOptions::default()
        };
        let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options).unwrap();
        commit(&journal, 0);
        let len = storage.segment_bytes(1).unwrap().len() as u64;
        if preallocate_bytes == 0 {
            assert_eq!(len, tail(&journal));
            assert_eq!(journal.stats().bytes_zeroed, 0);
        } else {
            assert_eq!(len, segment_bytes);
            assert_eq!(journal.stats().bytes_zeroed, segment_bytes - tail(&journal));
        }
    }
}

//! A failed write or persist latches the journal: that commit and every later one
//! fails, and nothing is ever reported durable that is not.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{fill, tag, transaction};
use pagoda_journal::format;
use pagoda_journal::testing::{CrashMode, CrashStorage, SyncDelay};
use pagoda_journal::{CommitId, Journal, JournalError, JournalOptions};

fn commit(journal: &Journal, sequence: u64) -> Result<CommitId, JournalError> {
    let entries = transaction(1, tag(0, sequence), 64);
    journal
        .commit(fill(journal, &entries))
        .map(|record| record.id)
}

fn recovered_ids(storage: &CrashStorage, mode: CrashMode) -> Vec<CommitId> {
    let (_, records) =
        Journal::open_with(Arc::new(storage.crash(mode)), JournalOptions::default()).unwrap();
    records.iter().map(|record| record.id).collect()
}

/// Guards against: a commit reported durable although its persist failed; a journal
/// that goes on accepting commits after a failed persist (even when later fsyncs would
/// "succeed", as Linux reports a writeback error only once).
#[test]
fn a_failed_persist_latches_the_journal() {
    for coalesce in [true, false] {
        let storage = CrashStorage::new(1);
        let options = JournalOptions {
            coalesce,
            ..JournalOptions::default()
        };
        let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options).unwrap();
        // The next two syncs succeed, the third fails, and later ones would succeed.
        storage.fail_syncs(2, 1);
        assert_eq!(commit(&journal, 0).unwrap(), 1);
        assert_eq!(commit(&journal, 1).unwrap(), 2);
        assert!(
            matches!(commit(&journal, 2), Err(JournalError::Io { .. })),
            "the commit whose persist failed must fail with the I/O error"
        );
        assert!(journal.failure().is_some(), "the journal did not latch");
        for sequence in 3..6 {
            assert!(
                matches!(commit(&journal, sequence), Err(JournalError::Failed { .. })),
                "a commit after the failure succeeded"
            );
        }
        assert!(matches!(
            journal.release_through(1),
            Err(JournalError::Failed { .. })
        ));
        assert_eq!(
            journal.durable_id(),
            2,
            "the failed commit was counted durable"
        );
        let shipped: Vec<_> = journal
            .unreleased(0, usize::MAX)
            .iter()
            .map(|record| record.id)
            .collect();
        assert_eq!(
            shipped,
            [1, 2],
            "a shipper was offered a commit that is not durable"
        );
        assert_eq!(journal.stats().commits, 2);
        drop(journal);
        assert_eq!(recovered_ids(&storage, CrashMode::DropUnsynced), [1, 2]);
    }
}

/// Guards against: a failed (short) write leaving a journal that goes on committing, or a
/// half-written record coming back as valid.
#[test]
fn a_failed_write_latches_the_journal() {
    for mode in CrashMode::ALL {
        let storage = CrashStorage::new(2);
        // No pre-zeroing, so each commit is one write.
        let options = JournalOptions {
            preallocate_bytes: 0,
            ..JournalOptions::default()
        };
        let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options).unwrap();
        storage.fail_writes(2, 1);
        assert_eq!(commit(&journal, 0).unwrap(), 1);
        assert_eq!(commit(&journal, 1).unwrap(), 2);
        assert!(matches!(commit(&journal, 2), Err(JournalError::Io { .. })));
        assert!(matches!(
            commit(&journal, 3),
            Err(JournalError::Failed { .. })
        ));
        assert_eq!(journal.durable_id(), 2);
        drop(journal);
        assert_eq!(recovered_ids(&storage, mode), [1, 2], "{mode:?}");
    }
}

/// Guards against: a failed write of the zeros ahead of the tail (pre-zeroing) being
/// ignored, so that the commit it was made for, or a later one, is acknowledged by a
/// journal that no longer knows what its file holds.
#[test]
fn a_failed_zero_write_latches_the_journal() {
    for mode in CrashMode::ALL {
        let storage = CrashStorage::new(2);
        let (journal, _) =
            Journal::open_with(Arc::new(storage.clone()), JournalOptions::default()).unwrap();
        assert_eq!(commit(&journal, 0).unwrap(), 1);
        let zeroed = journal.stats().bytes_zeroed;
        assert!(zeroed > 0, "the first commit zeroed ahead of the tail");
        // Large commits fill the zeroed space with one write each; the first write of the
        // commit that passes it is a write of zeros, and it fails.
        let record_bytes =
            (format::RECORD_HEADER_BYTES + format::ENTRY_HEADER_BYTES) as u64 + LARGE_BYTES as u64;
        let tail = format::SEGMENT_HEADER_BYTES as u64 + journal.stats().bytes_appended;
        let zeroed_end = storage.segment_bytes(1).unwrap().len() as u64;
        let fitting = (zeroed_end - tail) / record_bytes;
        let writes = storage.stats().writes;
        storage.fail_writes(fitting, 1);
        let mut acknowledged = vec![1];
        let failed = (1..u64::MAX)
            .take(100_000)
            .find_map(|sequence| match commit_large(&journal, sequence) {
                Ok(id) => {
                    acknowledged.push(id);
                    None
                }
                Err(error) => Some(error),
            })
            .expect("the tail passed the zeroed space");
        assert!(matches!(failed, JournalError::Io { .. }), "{failed}");
        assert_eq!(storage.stats().writes, writes + fitting + 1);
        assert_eq!(acknowledged.len() as u64, fitting + 1);
        assert_eq!(journal.stats().bytes_zeroed, zeroed, "{mode:?}");
        assert!(matches!(
            commit(&journal, 0),
            Err(JournalError::Failed { .. })
        ));
        drop(journal);
        assert_eq!(recovered_ids(&storage, mode), acknowledged, "{mode:?}");
    }
}

const LARGE_BYTES: usize = 64 << 10;

/// Commits one entry of `LARGE_BYTES` and returns its id.
fn commit_large(journal: &Journal, sequence: u64) -> Result<CommitId, JournalError> {
    let mut micro_journal = journal.begin();
    micro_journal.push(sequence, 0, &[0xC3; LARGE_BYTES]);
    journal.commit(micro_journal).map(|record| record.id)
}

/// Guards against: followers waiting on a leader whose persist fails being told their
/// commits are durable; a committer succeeding after another saw the failure.
#[test]
fn concurrent_committers_all_fail_after_a_failed_persist() {
    let storage = CrashStorage::new(3);
    storage.set_sync_delay(SyncDelay::Sleep(Duration::from_micros(300)));
    let (journal, _) =
        Journal::open_with(Arc::new(storage.clone()), JournalOptions::default()).unwrap();
    storage.fail_syncs(10, 1);
    let outcomes: Vec<Vec<Result<CommitId, JournalError>>> = thread::scope(|scope| {
        let threads: Vec<_> = (0..8u64)
            .map(|thread| {
                let journal = &journal;
                scope.spawn(move || {
                    (0..30u64)
                        .map(|sequence| {
                            let entries = transaction(3, tag(thread, sequence), 64);
                            journal
                                .commit(fill(journal, &entries))
                                .map(|record| record.id)
                        })
                        .collect()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect()
    });
    let durable = journal.durable_id();
    let mut acknowledged = Vec::new();
    let mut failures = 0;
    for outcome in &outcomes {
        let first_failure = outcome
            .iter()
            .position(Result::is_err)
            .expect("every thread saw the failure");
        assert!(
            outcome[first_failure..].iter().all(Result::is_err),
            "a commit succeeded after the same thread saw the failure"
        );
        failures += outcome.len() - first_failure;
        acknowledged.extend(
            outcome[..first_failure]
                .iter()
                .map(|id| *id.as_ref().unwrap()),
        );
    }
    assert!(failures > 0);
    assert!(acknowledged.iter().all(|&id| id <= durable));
    drop(journal);
    let recovered = recovered_ids(&storage, CrashMode::DropUnsynced);
    for id in acknowledged {
        assert!(recovered.contains(&id), "acknowledged commit {id} lost");
    }
}

/// Guards against: an operating error (a record over the limit) latching the journal.
#[test]
fn an_oversized_record_is_refused_without_latching() {
    let storage = CrashStorage::new(4);
    let options = JournalOptions {
        record_bytes_max: 1024,
        ..JournalOptions::default()
    };
    let (journal, _) = Journal::open_with(Arc::new(storage), options).unwrap();
    let mut micro_journal = journal.begin();
    micro_journal.push(1, 0, &[0; 2000]);
    assert!(matches!(
        journal.commit(micro_journal),
        Err(JournalError::RecordTooLarge { max: 1024, .. })
    ));
    assert_eq!(
        commit(&journal, 0).unwrap(),
        1,
        "ids were consumed by a refused record"
    );
    assert!(journal.failure().is_none());
}

/// Guards against losing an acknowledged commit at the end of the id space (found by
/// the `journal` fuzz target): a log whose last commit carries `COMMIT_ID_MAX` used to
/// accept one more commit, whose record recovery then refused as out of range and cut
/// off as a torn tail. The commit is refused instead, and what is in the log stays.
#[test]
fn no_commit_beyond_the_highest_id() {
    use pagoda_journal::Storage;
    use pagoda_journal::format::{self, COMMIT_ID_MAX, SegmentHeader};

    let storage = CrashStorage::new(5);
    let device = storage.create(1).unwrap();
    let header = SegmentHeader::new(1, COMMIT_ID_MAX);
    let mut frame = Vec::new();
    format::start_frame(&mut frame);
    let body_crc = format::append_entry(&mut frame, 0, 1, 0, b"last");
    format::seal_commit(&mut frame, COMMIT_ID_MAX, 0, 1, body_crc, 1);
    device.write_at(0, &header.encode()).unwrap();
    device
        .write_at(format::SEGMENT_HEADER_BYTES as u64, &frame)
        .unwrap();
    device.sync().unwrap();
    storage.sync_directory().unwrap();

    let open = || Journal::open_with(Arc::new(storage.clone()), JournalOptions::default());
    let (journal, records) = open().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(journal.next_id(), COMMIT_ID_MAX + 1);
    assert!(matches!(
        commit(&journal, 0),
        Err(JournalError::IdsExhausted { id }) if id == COMMIT_ID_MAX + 1
    ));
    drop(journal);
    let (journal, records) = open().unwrap();
    assert_eq!(journal.recovery_report().hole, None);
    assert_eq!(
        records.iter().map(|r| r.id).collect::<Vec<_>>(),
        [COMMIT_ID_MAX]
    );
}

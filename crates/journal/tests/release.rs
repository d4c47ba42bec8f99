//! Release and reclamation on real files: released segments are removed, reopening
//! returns only unreleased records, ids keep ascending, and the directory is locked.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::{fill, tag, transaction};
use pagoda_journal::{CommitId, Journal, JournalError, JournalOptions, Record};

fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: 8192,
        ..JournalOptions::default()
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("segment-"))
        .collect();
    names.sort();
    names
}

fn commit_range(journal: &Journal, range: std::ops::Range<u64>) -> Vec<Arc<Record>> {
    range
        .map(|sequence| {
            let mut micro_journal = journal.begin();
            micro_journal.push(tag(0, sequence), sequence * 512, &[sequence as u8; 400]);
            journal.commit(micro_journal).unwrap()
        })
        .collect()
}

fn ids(records: &[Arc<Record>]) -> Vec<CommitId> {
    records.iter().map(|record| record.id).collect()
}

/// Guards against: released segments never reclaimed (the log grows without bound);
/// segments holding unreleased records removed; released records returned again on
/// reopen; ids restarting after everything was released.
#[test]
fn released_segments_are_reclaimed_and_stay_released() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, recovered) = Journal::open(dir.path(), options()).unwrap();
    assert!(recovered.is_empty());
    let committed = commit_range(&journal, 0..100);
    assert_eq!(ids(&committed), (1..=100).collect::<Vec<_>>());
    let segments_before = segment_files(dir.path());
    assert!(
        segments_before.len() >= 5,
        "{segments_before:?}: the log did not rotate"
    );

    journal.release_through(60).unwrap();
    let segments_after = segment_files(dir.path());
    assert!(
        segments_after.len() < segments_before.len(),
        "no segment was reclaimed"
    );
    assert_eq!(
        journal.stats().segments_removed as usize,
        segments_before.len() - segments_after.len()
    );
    // Only the oldest segments went, and the one holding commit 61 stayed.
    assert_eq!(
        segments_after[..],
        segments_before[segments_before.len() - segments_after.len()..]
    );
    assert_eq!(
        ids(&journal.unreleased(0, usize::MAX)),
        (61..=100).collect::<Vec<_>>()
    );
    assert_eq!(ids(&journal.unreleased(70, 5)), [71, 72, 73, 74, 75]);

    // Releasing below the release point does nothing; beyond the durable point is refused.
    journal.release_through(5).unwrap();
    assert!(matches!(
        journal.release_through(101),
        Err(JournalError::ReleaseBeyondDurable {
            id: 101,
            durable: 100
        })
    ));
    drop(journal);

    let (journal, recovered) = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(
        recovered,
        committed[60..],
        "reopen must return exactly the unreleased records"
    );
    assert_eq!(journal.released_id(), 60);
    assert_eq!(journal.next_id(), 101);

    let more = commit_range(&journal, 100..110);
    assert_eq!(ids(&more), (101..=110).collect::<Vec<_>>());
    journal.release_through(110).unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "all closed segments are released"
    );
    assert!(journal.unreleased(0, usize::MAX).is_empty());
    drop(journal);

    let (journal, recovered) = Journal::open(dir.path(), options()).unwrap();
    assert!(recovered.is_empty());
    assert_eq!((journal.released_id(), journal.next_id()), (110, 111));
    assert_eq!(commit_range(&journal, 110..111)[0].id, 111, "ids restarted");
}

/// Guards against: a shipper's clone of a record being recycled under it; a recycled
/// micro-journal keeping old entries; a discarded one taking an id.
#[test]
fn records_held_by_a_shipper_stay_intact_after_release() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), options()).unwrap();
    let committed = commit_range(&journal, 0..10);
    let shipped = journal.unreleased(0, usize::MAX);
    journal.release_through(10).unwrap();
    // New transactions take recycled micro-journals (the records the shipper does not hold).
    let again = commit_range(&journal, 10..20);
    assert_eq!(shipped, committed, "a record held by a shipper changed");
    assert_eq!(ids(&again), (11..=20).collect::<Vec<_>>());
    let mut micro_journal = journal.begin();
    assert!(
        micro_journal.is_empty(),
        "a recycled micro-journal kept old entries"
    );
    micro_journal.push(1, 2, b"x");
    journal.discard(micro_journal);
    assert_eq!(
        journal.next_id(),
        21,
        "a discarded micro-journal took an id"
    );
}

/// Guards against: two journals appending to one directory.
#[test]
fn a_directory_opens_once() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), options()).unwrap();
    assert!(matches!(
        Journal::open(dir.path(), options()),
        Err(JournalError::Locked { .. })
    ));
    drop(journal);
    assert!(Journal::open(dir.path(), options()).is_ok());
}

/// Guards against: options that cannot work being accepted.
#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        JournalOptions {
            segment_bytes: 100,
            ..options()
        },
        JournalOptions {
            record_bytes_max: 10,
            ..options()
        },
        JournalOptions {
            record_bytes_max: 1 << 40,
            ..options()
        },
    ] {
        assert!(matches!(
            Journal::open(dir.path(), bad),
            Err(JournalError::InvalidOptions(_))
        ));
    }
}

/// Guards against: a record larger than a segment being unwritable.
#[test]
fn a_record_larger_than_a_segment_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), options()).unwrap();
    commit_range(&journal, 0..3);
    let entries = transaction(9, tag(1, 0), 0);
    let mut micro_journal = fill(&journal, &entries);
    micro_journal.push(5, 0, &vec![7u8; 20_000]);
    let big = journal.commit(micro_journal).unwrap();
    let after = commit_range(&journal, 3..4);
    drop(journal);
    let (_, recovered) = Journal::open(dir.path(), options()).unwrap();
    assert_eq!(ids(&recovered), [1, 2, 3, 4, 5]);
    assert_eq!(recovered[3], big);
    assert_eq!(recovered[4], after[0]);
}

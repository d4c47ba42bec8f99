//! Group commit: concurrent commits share persists, a lone committer pays exactly one
//! persist per commit, and no commit returns before a persist covering it completed.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{fill, tag, transaction};
use pagoda_journal::testing::{CrashStorage, SyncDelay};
use pagoda_journal::{Journal, JournalOptions};

const THREADS: u64 = 8;
const COMMITS_PER_THREAD: u64 = 40;

fn slow_storage(seed: u64) -> CrashStorage {
    let storage = CrashStorage::new(seed);
    storage.set_sync_delay(SyncDelay::Sleep(Duration::from_millis(1)));
    storage
}

/// Commits from `THREADS` threads; after each commit returns, checks that the record
/// is in what a crash dropping every unpersisted byte would leave.
fn concurrent_commits(journal: &Journal, storage: &CrashStorage, options: &JournalOptions) {
    thread::scope(|scope| {
        for thread in 0..THREADS {
            scope.spawn(move || {
                for sequence in 0..COMMITS_PER_THREAD {
                    let entries = transaction(5, tag(thread, sequence), 64);
                    let record = journal.commit(fill(journal, &entries)).unwrap();
                    if sequence % 4 == 0 {
                        let (_, durable) =
                            Journal::open_with(Arc::new(storage.durable_image()), options.clone())
                                .unwrap();
                        assert!(
                            durable.iter().any(|recovered| **recovered == *record),
                            "commit {} returned before it was durable",
                            record.id
                        );
                    }
                }
            });
        }
    });
}

/// Guards against: group commit not coalescing (one persist per commit under
/// concurrency), and coalescing that acknowledges a commit its persist did not cover.
#[test]
fn concurrent_commits_share_persists() {
    let storage = slow_storage(1);
    let options = JournalOptions::default();
    let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options.clone()).unwrap();
    concurrent_commits(&journal, &storage, &options);
    let stats = journal.stats();
    assert_eq!(stats.commits, THREADS * COMMITS_PER_THREAD);
    assert!(
        stats.persists * 2 <= stats.commits,
        "{} persists for {} commits: commits did not share persists",
        stats.persists,
        stats.commits
    );
    assert_eq!(journal.durable_id(), THREADS * COMMITS_PER_THREAD);
}

/// Guards against: the baseline with coalescing off sharing persists (it would not be a
/// baseline), or skipping one.
#[test]
fn without_coalescing_every_commit_persists_once() {
    let storage = slow_storage(2);
    let options = JournalOptions {
        coalesce: false,
        ..JournalOptions::default()
    };
    let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options.clone()).unwrap();
    let syncs_before = storage.stats().syncs;
    concurrent_commits(&journal, &storage, &options);
    let stats = journal.stats();
    assert_eq!(stats.commits, THREADS * COMMITS_PER_THREAD);
    assert_eq!(stats.persists, stats.commits);
    // The durability checks open copies, which do not count here.
    assert_eq!(storage.stats().syncs - syncs_before, stats.commits);
}

/// Guards against: a lone committer paying more than one persist per commit (an extra
/// sync, or a wait for company), or fewer (a commit acknowledged without a persist).
#[test]
fn a_lone_committer_pays_exactly_one_persist_per_commit() {
    for coalesce in [true, false] {
        let storage = slow_storage(3);
        let options = JournalOptions {
            coalesce,
            ..JournalOptions::default()
        };
        let (journal, _) = Journal::open_with(Arc::new(storage.clone()), options).unwrap();
        let syncs_before = storage.stats().syncs;
        for sequence in 0..50 {
            let entries = transaction(6, tag(0, sequence), 64);
            journal.commit(fill(&journal, &entries)).unwrap();
            assert_eq!(journal.stats().persists, sequence + 1);
        }
        assert_eq!(journal.stats().syncs, 50);
        assert_eq!(storage.stats().syncs - syncs_before, 50, "device syncs");
    }
}

/// Guards against: the same on a real file with `fdatasync`.
#[test]
fn a_lone_committer_on_a_file_pays_one_fdatasync_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    for sequence in 0..20 {
        let entries = transaction(7, tag(0, sequence), 64);
        journal.commit(fill(&journal, &entries)).unwrap();
    }
    let stats = journal.stats();
    assert_eq!((stats.commits, stats.persists, stats.syncs), (20, 20, 20));
}

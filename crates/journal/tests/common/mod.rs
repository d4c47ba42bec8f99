//! Helpers shared by the journal's integration tests: deterministic transactions that
//! carry a unique tag, and the checks every recovery must pass.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use pagoda_journal::testing::SplitMix64;
use pagoda_journal::{CommitId, Entry, Journal, MicroJournal, Record};

/// A transaction's tag: unique per (thread, sequence). It is the region of the first
/// entry, so a recovered record names the transaction it came from.
pub fn tag(thread: u64, sequence: u64) -> u64 {
    ((thread + 1) << 32) | sequence
}

/// A deterministic transaction: one to three entries of up to `data_bytes_max` bytes; the
/// first entry's region is the tag.
pub fn transaction(seed: u64, tag: u64, data_bytes_max: u64) -> Vec<Entry> {
    let mut rng = SplitMix64::new(seed ^ tag.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let count = 1 + rng.below(3);
    (0..count)
        .map(|index| {
            let len = rng.below(data_bytes_max + 1) as usize;
            let data = (0..len).map(|_| rng.next_u64() as u8).collect();
            Entry {
                region: if index == 0 { tag } else { rng.below(8) },
                offset: rng.below(1 << 20),
                data,
            }
        })
        .collect()
}

/// A micro-journal holding `entries`.
pub fn fill(journal: &Journal, entries: &[Entry]) -> MicroJournal {
    let mut micro_journal = journal.begin();
    for entry in entries {
        micro_journal.push(entry.region, entry.offset, &entry.data);
    }
    micro_journal
}

/// What the test knows about what it asked the journal to do.
#[derive(Default)]
pub struct Model {
    /// Every transaction handed to `commit`, by tag.
    pub attempted: HashMap<u64, Vec<Entry>>,
    /// Commits that returned Ok: id to tag.
    pub acknowledged: HashMap<CommitId, u64>,
    /// The highest id a `release_through` returned Ok for.
    pub released_ok: CommitId,
    /// The highest id any `release_through` was called with.
    pub released_attempted: CommitId,
}

impl Model {
    pub fn merge(&mut self, other: Model) {
        for (tag, entries) in other.attempted {
            assert!(
                self.attempted.insert(tag, entries).is_none(),
                "tag {tag} reused"
            );
        }
        for (id, tag) in other.acknowledged {
            assert!(
                self.acknowledged.insert(id, tag).is_none(),
                "commit id {id} acknowledged twice"
            );
        }
        self.released_ok = self.released_ok.max(other.released_ok);
        self.released_attempted = self.released_attempted.max(other.released_attempted);
    }

    /// Checks a recovery against the model:
    /// - the recovered ids are exactly `released + 1 .. next_id`, in order, with no gap;
    /// - nothing released by an acknowledged `release_through` comes back;
    /// - every acknowledged commit above the release point is recovered, with its id;
    /// - every recovered record is exactly a transaction that was attempted (none is
    ///   partly applied or mixed with another), and none appears twice.
    pub fn check_recovery(&self, journal: &Journal, recovered: &[Arc<Record>], context: &str) {
        let released = journal.released_id();
        let next_id = journal.next_id();
        let ids: Vec<CommitId> = recovered.iter().map(|record| record.id).collect();
        let expected: Vec<CommitId> = (released + 1..next_id).collect();
        assert_eq!(
            ids, expected,
            "{context}: recovered ids are not the unreleased prefix"
        );
        assert!(
            released >= self.released_ok,
            "{context}: release through {} was acknowledged but recovery released only {released}",
            self.released_ok
        );
        assert!(
            released <= self.released_attempted,
            "{context}: recovery released {released}, beyond any release asked for"
        );
        for (&id, &tag) in &self.acknowledged {
            assert!(
                id < next_id,
                "{context}: acknowledged commit {id} lost (next id {next_id})"
            );
            if id > released {
                let record = &recovered[(id - released - 1) as usize];
                assert_eq!(record.id, id);
                assert_eq!(
                    record.entries[0].region, tag,
                    "{context}: commit {id} holds another transaction"
                );
            }
        }
        let mut seen = HashMap::new();
        for record in recovered {
            let tag = record.entries.first().map(|entry| entry.region);
            let tag =
                tag.unwrap_or_else(|| panic!("{context}: commit {} has no entries", record.id));
            let attempted = self.attempted.get(&tag).unwrap_or_else(|| {
                panic!("{context}: commit {} has unknown tag {tag:#x}", record.id)
            });
            assert_eq!(
                &record.entries, attempted,
                "{context}: commit {} differs from what was committed",
                record.id
            );
            assert!(
                seen.insert(tag, record.id).is_none(),
                "{context}: transaction {tag:#x} recovered twice"
            );
        }
    }
}

//! The node's journal of each region: shipped transaction records persisted
//! before they are applied (`ApplyJournal`), replayed over the reloaded
//! baseline at start, and released by the checkpoints that cover them. The
//! journal itself is the region's (`Region::journal`); this module opens,
//! appends and replays it.

use std::path::PathBuf;
use std::sync::Arc;

use pagoda_journal::{Journal, JournalOptions};
use pagoda_wire::RegionState;

use crate::catalog::Catalog;
use crate::error::NodeError;
use crate::node::Shared;
use crate::region::Region;

/// Where a region's journal lives.
pub(crate) fn dir(data_dir: &std::path::Path, uid: u64) -> PathBuf {
    data_dir.join("journals").join(format!("{uid:016x}"))
}

/// Persists a shipped transaction record in the region's journal and applies
/// it. Ranges are checked and segments allocated first, so a record that is
/// persisted is also applied.
pub(crate) fn apply(
    shared: &Shared,
    region: &Region,
    commit_id: u64,
    entries: &[(u64, &[u8])],
) -> Result<(), NodeError> {
    let _order = region.journal_lock.lock();
    let pinned = region.prepare_bytes(entries)?;
    // Opened on the first record; the region's journal lock, held, makes
    // this the only opener.
    let journal = match region.journal() {
        Some(journal) => journal,
        None => {
            let path = dir(&shared.config.data_dir, region.uid());
            let (journal, leftover) =
                Journal::open(&path, JournalOptions::default()).map_err(|error| {
                    NodeError::Journal {
                        context: format!("opening {}", path.display()),
                        error,
                    }
                })?;
            if !leftover.is_empty() {
                // Replayed at start; any left now were already applied.
                tracing::debug!(records = leftover.len(), "journal reopened");
            }
            let journal = Arc::new(journal);
            region.set_journal(journal.clone());
            journal
        }
    };
    let mut record = journal.begin();
    for &(offset, bytes) in entries {
        record.push(region.uid(), offset, bytes);
    }
    let committed = journal.commit(record).map_err(|e| NodeError::Journal {
        context: format!(
            "persisting record {commit_id} of region {:?}",
            region.info().name
        ),
        error: e,
    })?;
    region.write_bytes(entries, committed.id, pinned)
}

/// Opens the journal of every region that has one and applies its records
/// (those no checkpoint covered) over the region's reloaded baseline, in
/// order. A journal that fails to open marks its region damaged.
pub(crate) fn replay(data_dir: &std::path::Path, catalog: &Catalog) {
    for region in catalog.regions() {
        let path = dir(data_dir, region.uid());
        if region.state() != RegionState::Active || !path.exists() {
            continue;
        }
        let name = region.info().name.clone();
        let replayed = Journal::open(&path, JournalOptions::default())
            .map_err(|error| NodeError::Journal {
                context: format!("opening {}", path.display()),
                error,
            })
            .and_then(|(journal, records)| {
                for record in &records {
                    let entries: Vec<(u64, &[u8])> = record
                        .entries
                        .iter()
                        .map(|entry| (entry.offset, entry.data.as_slice()))
                        .collect();
                    let pinned = region.prepare_bytes(&entries)?;
                    region.write_bytes(&entries, record.id, pinned)?;
                }
                Ok((journal, records.len()))
            });
        match replayed {
            Ok((journal, count)) => {
                if count > 0 {
                    tracing::info!(name, records = count, "journal replayed over the baseline");
                }
                region.set_journal(Arc::new(journal));
            }
            Err(error) => {
                tracing::error!(name, %error, "region's journal failed to replay");
                region.set_state(
                    RegionState::Damaged,
                    format!("its journal failed to replay: {error}"),
                );
            }
        }
    }
}

//! Checkpoint orchestration: when and of what the node takes checkpoints
//! (on request, periodically, at a graceful stop), what it records when one
//! completes (the region's baseline, the catalog's checkpoint number, the
//! journal records it covers), and the reload of every region's baseline at
//! start (lazily by default: see `lazy_load`). How a checkpoint is written
//! and loaded is `checkpoint`'s business.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pagoda_wire::RegionState;

use crate::catalog::Catalog;
use crate::checkpoint::{self, CheckpointSettings};
use crate::error::NodeError;
use crate::lazy_load::Reload;
use crate::node::{ACCEPT_POLL_MS, Shared};
use crate::region::{CheckpointMark, Region};
use crate::storage::Storage;

/// Takes a checkpoint of `region` (one at a time per region), records it and
/// collects garbage.
pub(crate) fn take(
    shared: &Shared,
    region: &Region,
    full: bool,
) -> Result<pagoda_wire::CheckpointInfo, NodeError> {
    let storage = shared.storage.as_ref().ok_or(NodeError::NoStorage)?;
    crate::replication::check_checkpoints(region)?;
    let _one = region.checkpoint_lock.lock();
    match region.state() {
        RegionState::Active => {}
        RegionState::ReadOnly => return Err(NodeError::ReadOnly(region.info().name.clone())),
        RegionState::Recovering | RegionState::Damaged => {
            return Err(NodeError::RegionUnavailable {
                name: region.info().name.clone(),
                reason: region.state_reason(),
            });
        }
    }
    let previous = region.baseline();
    let settings = CheckpointSettings {
        object_bytes: shared.config.checkpoint_object_bytes,
        retain: shared.config.checkpoint_retain,
    };
    let name = region.info().name.clone();
    let began = std::time::Instant::now();
    let taken = checkpoint::checkpoint(storage, region, full, settings, previous.as_deref());
    if let Some(metrics) = &shared.metrics {
        metrics.checkpoint(began.elapsed(), taken.is_ok());
    }
    let (info, manifest) = match taken {
        Ok(done) => done,
        Err(error) => {
            tracing::warn!(name, %error, "checkpoint failed; the previous one stays the baseline");
            return Err(error);
        }
    };
    tracing::info!(
        name,
        checkpoint = info.number,
        pages = info.pages,
        bytes = info.bytes,
        micros = info.micros,
        "checkpoint complete"
    );
    match checkpoint::collect_garbage(storage, &name, settings.retain, &manifest) {
        Ok(report) if report.objects + report.manifests > 0 => tracing::info!(
            name,
            manifests = report.manifests,
            objects = report.objects,
            bytes = report.bytes,
            "old checkpoints collected"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(name, %error, "garbage collection failed; will retry"),
    }
    crate::replication::checkpoint_taken(region, &manifest);
    region.set_baseline(Arc::new(manifest));
    // The catalog records the newest complete checkpoint, so a restart that
    // finds an older one in storage refuses to roll back silently. Failing to
    // record it loses nothing: the record is only ever behind storage.
    region.set_durable_checkpoint(info.number);
    if let Err(error) = shared.catalog.save_states() {
        tracing::warn!(name, %error, "could not record the checkpoint in the catalog");
    }
    // The checkpoint covers every journal record applied before it began.
    let through = region
        .last_checkpoint()
        .map_or(0, |mark| mark.journal_through);
    let journal = region.journal();
    if let Some(journal) = journal
        && through > journal.released_id()
        && let Err(error) = journal.release_through(through)
    {
        tracing::warn!(name, %error, "could not release journal records the checkpoint covers");
    }
    Ok(info)
}

/// Checkpoints every region with dirty pages, every `interval`, until
/// shutdown.
pub(crate) fn run_periodically(shared: Arc<Shared>, interval: Duration) {
    let mut next = std::time::Instant::now() + interval;
    while !shared.shutting_down.load(Ordering::SeqCst) {
        if std::time::Instant::now() < next {
            std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS as u64));
            continue;
        }
        let _ = checkpoint_dirty(&shared, Some(&shared.shutting_down));
        next = std::time::Instant::now() + interval;
    }
}

/// Checkpoints every active region with pages dirty since its last
/// checkpoint, stopping early if `stop` is set. Returns the error of each
/// region whose checkpoint failed, by name.
pub(crate) fn checkpoint_dirty(
    shared: &Shared,
    stop: Option<&AtomicBool>,
) -> HashMap<String, String> {
    let mut errors = HashMap::new();
    for region in shared.catalog.regions() {
        if stop.is_some_and(|stop| stop.load(Ordering::SeqCst)) {
            break;
        }
        if region.state() != RegionState::Active
            || crate::replication::check_checkpoints(&region).is_err()
        {
            continue;
        }
        let since = region.last_checkpoint().map_or(0, |mark| mark.start_seq);
        if region.dirty_count(since) == 0 {
            continue;
        }
        // Failures are logged by take_checkpoint; the next round retries.
        if let Err(error) = take(shared, &region, false) {
            errors.insert(region.info().name.clone(), error.to_string());
        }
    }
    errors
}

/// Loads each active region's latest baseline (with its uid) at startup:
/// with [`Reload::Eager`] wholly, before returning; otherwise it only checks
/// the manifest and puts the region in the loading state (`lazy_load`), and
/// the node's background loader and the region's first accesses load it.
/// A region whose baseline fails to load is marked damaged with the reason;
/// the others serve. A region whose newest checkpoint in storage is older
/// than the one the catalog recorded (a manifest deleted or lost behind the
/// node's back) fails the start, naming it, unless `accept_mismatch`: then
/// it rolls back to the newest checkpoint left, logged as an error.
pub(crate) fn reload(
    storage: &Arc<Storage>,
    catalog: &Catalog,
    accept_mismatch: bool,
    mode: Reload,
) -> Result<(), NodeError> {
    let mut mismatches = Vec::new();
    for region in catalog.regions() {
        if region.state() != RegionState::Active {
            continue;
        }
        let name = region.info().name.clone();
        let began = std::time::Instant::now();
        let latest = checkpoint::latest_manifest(storage, &name, Some(region.uid()));
        let recorded = region.durable_checkpoint();
        if let Ok(found) = &latest {
            let found_number = found.as_ref().map_or(0, |manifest| manifest.number);
            if found_number < recorded {
                let newest = match found_number {
                    0 => "none".to_owned(),
                    number => number.to_string(),
                };
                let problem = format!(
                    "region {name:?}: the catalog records checkpoint {recorded}, but the newest \
                     in {} is {newest}",
                    storage.description()
                );
                if !accept_mismatch {
                    mismatches.push(problem);
                    continue;
                }
                tracing::error!(
                    "{problem}: rolling back to it as told (--accept-storage-mismatch); \
                     writes after it are lost"
                );
                region.set_durable_checkpoint(found_number);
            }
        }
        let loaded = latest.and_then(|manifest| match manifest {
            // Restored from the bulk tier at exactly this checkpoint: its
            // pages are there already.
            Some(manifest) if region.restored_checkpoint() == manifest.number => {
                Ok(Some((Arc::new(manifest), 0)))
            }
            Some(manifest) => {
                if region.restored_checkpoint() != 0 {
                    region.forget_restored();
                }
                if mode == Reload::Eager {
                    checkpoint::load_baseline(storage, &region, &manifest, &())?;
                    return Ok(Some((Arc::new(manifest), 0)));
                }
                checkpoint::check_fits(&region, &manifest)?;
                let manifest = Arc::new(manifest);
                let segments = crate::lazy_load::begin(storage, &region, manifest.clone())?;
                Ok(Some((manifest, segments)))
            }
            None => {
                if region.restored_checkpoint() != 0 {
                    region.forget_restored();
                }
                Ok(None)
            }
        });
        match loaded {
            Ok(Some((manifest, loading))) => {
                if loading > 0 {
                    tracing::info!(
                        name,
                        checkpoint = manifest.number,
                        pages = manifest.pages,
                        segments = loading,
                        millis = began.elapsed().as_millis() as u64,
                        "region serves; its baseline loads on access and in the background"
                    );
                } else {
                    tracing::info!(
                        name,
                        checkpoint = manifest.number,
                        pages = manifest.pages,
                        millis = began.elapsed().as_millis() as u64,
                        "region reloaded from its baseline"
                    );
                }
                region.checkpoint_completed(CheckpointMark {
                    number: manifest.number,
                    start_seq: crate::region::BASELINE_SEQ,
                    started: manifest.started(),
                    journal_through: 0,
                });
                crate::replication::resume_from_baseline(&region, &manifest);
                region.set_baseline(manifest);
            }
            Ok(None) => tracing::info!(name, "region has no checkpoint; it starts empty"),
            Err(error) => {
                tracing::error!(name, %error, "region's baseline failed to load");
                region.set_state(
                    RegionState::Damaged,
                    format!("its baseline failed to load: {error}"),
                );
            }
        }
    }
    if !mismatches.is_empty() {
        return Err(NodeError::CatalogMismatch(format!(
            "the catalog and storage disagree; starting would roll regions back silently: {}. \
             Restore the missing checkpoints, or start with --accept-storage-mismatch to roll \
             back to the newest checkpoints left",
            mismatches.join("; ")
        )));
    }
    if accept_mismatch {
        catalog.save_states()?;
    }
    Ok(())
}

//! What each request does (`serve_request`): the node's dispatch. Accepting
//! connections and reading their frames is `connection`'s job, checking who
//! may do what is `access`'s, and the node's start and stop are `node`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pagoda_wire::frame::FrameBuilder;
use pagoda_wire::limits::PING_REPLY_BYTES_MAX;
use pagoda_wire::message::{DIRTY_RANGES_MAX, NodeStat};
use pagoda_wire::{
    Opcode, RegionStat, RegionState, ReplicateKind, ReplicationMode, Request, Response, Since,
};

use crate::checkpoint;
use crate::error::NodeError;
use crate::node::Shared;
use crate::recovery::{self, RecoveryRequest};
use crate::region::Region;
use crate::replication::{self, Direct, Replication};
use crate::write_log::{Applied, Order};
use crate::{checkpointing, node_journal};

/// The configuration and its defaults, also reachable under `server` (where
/// they were before the node's start and stop moved to `node`).
pub use crate::config::*;

/// What dispatching a request needs from its connection, and what it may
/// leave for it.
pub(crate) struct Dispatch<'a> {
    /// The frame header's fencing epoch (a writer's).
    pub(crate) epoch: u64,
    /// The request's payload, as it arrived (a primary retains and forwards
    /// a write's payload as is).
    pub(crate) payload: &'a [u8],
    /// The connection's id.
    pub(crate) connection: u64,
    /// Replies that wait for replicas' acknowledgements.
    pub(crate) deferred: &'a mut Vec<Deferred>,
    /// Replies whose bulk-tier pages are read off the connection's thread
    /// (see `bulk_reads`).
    pub(crate) fetches: &'a mut Vec<crate::bulk_reads::PendingRead>,
}

/// A write whose reply waits until every in-sync replica has it.
pub(crate) struct Deferred {
    pub(crate) request_id: u64,
    pub(crate) replication: Arc<Replication>,
    pub(crate) lsn: u64,
    /// The entry as sent to live replicas by this connection's thread,
    /// whose answers it collects itself.
    pub(crate) directs: Vec<Direct>,
}

impl Deferred {
    /// Waits for the replicas and encodes the reply.
    pub(crate) fn answer(self, shared: &Shared, out: &mut Vec<u8>) {
        for direct in self.directs {
            direct.collect(&self.replication);
        }
        match self
            .replication
            .wait_acked(self.lsn)
            .and_then(|()| crate::cluster::record_in_sync(shared, &self.replication))
            .and_then(|()| crate::cluster::check_lease_named(shared, self.replication.name()))
        {
            Ok(()) => Response::Done.encode(out, self.request_id, 0),
            Err(error) => {
                crate::metrics::count_error(shared, error.code());
                Response::Error {
                    code: error.code(),
                    message: &error.to_string(),
                }
                .encode(out, self.request_id, 0)
            }
        }
    }
}

pub(crate) fn serve_request(
    shared: &Arc<Shared>,
    request: Request<'_>,
    request_id: u64,
    ctx: &mut Dispatch<'_>,
    out: &mut Vec<u8>,
) -> Result<(), NodeError> {
    let epoch = ctx.epoch;
    let catalog = &shared.catalog;
    match request {
        Request::Hello { .. } | Request::AuthProof { .. } | Request::CloseRegion { .. } => {
            unreachable!("handled by access::Session")
        }
        Request::Ping { reply_bytes } => {
            if reply_bytes > PING_REPLY_BYTES_MAX {
                return Err(NodeError::InvalidArgument(format!(
                    "ping reply of {reply_bytes} bytes exceeds the limit of {PING_REPLY_BYTES_MAX}"
                )));
            }
            let mut frame = FrameBuilder::begin(out, Opcode::Pong, request_id, 0);
            let payload = frame.payload();
            payload.resize(payload.len() + reply_bytes as usize, 0);
            frame.finish();
        }
        Request::CreateRegion {
            name,
            size,
            page_size,
            replicas,
            mode,
        } => {
            let info = if replicas.is_empty() {
                let info = catalog.create(name, size, page_size)?;
                let region = catalog.by_name(name)?;
                if let Err(error) = crate::cluster::region_created(shared, &region, &[], None, 0) {
                    let _ = catalog.delete(name);
                    return Err(error);
                }
                info
            } else {
                replication::create(shared, name, size, page_size, &replicas, mode)?
                    .info()
                    .clone()
            };
            tracing::info!(name, size, page_size, id = info.id, "region created");
            Response::RegionInfo(info).encode(out, request_id, 0);
        }
        Request::CreateReplica {
            name,
            size,
            page_size,
            uid,
            primary_epoch,
            writer_epoch,
            lsn,
            mode,
            primary,
            replicas,
        } => {
            replication::create_replica(
                shared,
                name,
                size,
                page_size,
                uid,
                primary_epoch,
                writer_epoch,
                lsn,
                mode,
                primary,
                &replicas,
            )?;
            Response::Done.encode(out, request_id, 0);
        }
        Request::Promote { name, force } => {
            let region = catalog.by_name(name)?;
            crate::cluster::promote_request(shared, &region, force)?;
            Response::ReplicaSet(replication::status(shared, &region)).encode(out, request_id, 0);
        }
        Request::ReplicaStatus { name } => {
            let region = catalog.by_name(name)?;
            Response::ReplicaSet(replication::status(shared, &region)).encode(out, request_id, 0);
        }
        Request::Replicate {
            uid,
            primary_epoch,
            writer_epoch,
            lsn,
            in_sync,
            kind,
            body,
        } => {
            let region = catalog.by_uid(uid)?;
            let applied = replication::receive(
                shared,
                &region,
                replication::Incoming {
                    primary_epoch,
                    writer_epoch,
                    lsn,
                    in_sync,
                    kind,
                    body,
                    connection: ctx.connection,
                },
            )?;
            Response::Mark { mark: applied }.encode(out, request_id, 0);
        }
        Request::OpenRegion { name, .. } => {
            // A write open is answered by `access`, which grants the role.
            let region = catalog.by_name(name)?;
            Response::RegionOpened {
                info: region.info().clone(),
                writer_epoch: 0,
                lsn: region.log().applied(),
            }
            .encode(out, request_id, 0);
        }
        Request::StatRegion { name } => {
            let region = catalog.by_name(name)?;
            let segments = region.segments_allocated();
            let last = region.last_checkpoint();
            Response::RegionStat(RegionStat {
                info: region.info().clone(),
                segments_allocated: segments,
                resident_bytes: segments * shared.arena.segment_bytes() as u64,
                pages_read: region.pages_read(),
                pages_written: region.pages_written(),
                state: region.state(),
                checkpoint: last.as_ref().map_or(0, |mark| mark.number),
                checkpoint_age_ms: last.as_ref().map_or(u64::MAX, |mark| {
                    mark.started
                        .elapsed()
                        .map_or(0, |age| age.as_millis() as u64)
                }),
                dirty_pages: region.dirty_count(last.as_ref().map_or(0, |mark| mark.start_seq)),
                uid: region.uid(),
                metadata_bytes: region.metadata_bytes(),
                segments_paged_out: region.segments_paged_out(),
                bulk_bytes: region.bulk_bytes().0,
                bulk_zero_bytes: region.bulk_bytes().1,
                segments_loading: region.segments_loading(),
                state_reason: region.state_reason(),
            })
            .encode(out, request_id, 0);
        }
        Request::ListRegions => Response::RegionList(catalog.list()).encode(out, request_id, 0),
        Request::DeleteRegion { name } => {
            let region = catalog.by_name(name)?;
            if region.state() == RegionState::Recovering {
                return Err(NodeError::RegionUnavailable {
                    name: name.to_owned(),
                    reason: "it is being recovered; wait for the recovery to end".into(),
                });
            }
            // One checkpoint at a time: none may be writing while its
            // objects are purged.
            let _checkpoint = region.checkpoint_lock.lock();
            catalog.delete(name)?;
            crate::cluster::region_deleted(shared, name);
            let replication = match &*region.role().lock() {
                replication::Role::Primary(replication) => Some(replication.clone()),
                _ => None,
            };
            // A primary's replicas go with it; one that cannot be reached
            // is named in the error, to be deleted by hand.
            let mut left = Vec::new();
            if let Some(replication) = replication {
                replication.stop();
                left = replication::delete_replicas(shared, &replication);
            }
            let journal = node_journal::dir(&shared.config.data_dir, region.uid());
            if journal.exists()
                && let Err(error) = std::fs::remove_dir_all(&journal)
            {
                tracing::warn!(name, %error, "could not remove the region's journal");
            }
            tracing::info!(name, "region deleted");
            // A moved or damaged region's checkpoints may belong to the node
            // it moved to, and a replica's to its primary: only those of an
            // active region that this node checkpoints are purged.
            if let Some(storage) = &shared.storage
                && region.state() == RegionState::Active
                && replication::check_checkpoints(&region).is_ok()
                && let Err(error) = checkpoint::purge(storage, name)
            {
                tracing::warn!(name, %error, "could not purge the region's checkpoints");
                return Err(NodeError::storage(
                    format!("purging the checkpoints of deleted region {name:?}"),
                    format!("not all were removed: {error}"),
                ));
            }
            if !left.is_empty() {
                return Err(NodeError::Peer {
                    context: format!(
                        "region {name:?} is deleted here, but not its replicas on {}",
                        left.iter()
                            .map(|(addr, _)| addr.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    error: left.remove(0).1,
                });
            }
            Response::Done.encode(out, request_id, 0);
        }
        Request::Checkpoint { name, full } => {
            let region = catalog.by_name(name)?;
            let info = checkpointing::take(shared, &region, full)?;
            Response::CheckpointDone(info).encode(out, request_id, 0);
        }
        Request::RecoverRegion {
            name,
            source,
            source_token,
            baseline_only,
        } => {
            let request = RecoveryRequest {
                name: name.to_owned(),
                source: (!source.is_empty()).then(|| source.to_owned()),
                source_token: (!source_token.is_empty()).then(|| source_token.to_vec()),
                baseline_only,
            };
            let job = recovery::start(shared, request)?;
            Response::Recovery(job.progress()).encode(out, request_id, 0);
        }
        Request::RecoveryStatus { name } => {
            let job = shared.recoveries.lock().get(name).cloned();
            let job = job.ok_or_else(|| {
                NodeError::RegionNotFound(format!("{name} (no recovery of it on this node)"))
            })?;
            Response::Recovery(job.progress()).encode(out, request_id, 0);
        }
        Request::StoredSegments {
            region,
            start_segment,
        } => {
            let region = catalog.by_id(region)?;
            region.check_readable()?;
            let (bits, count, next_segment) =
                region.stored_segments(start_segment, pagoda_wire::message::SEGMENT_MAP_BITS_MAX);
            Response::SegmentMap {
                segment_bytes: pagoda_wire::limits::SEGMENT_BYTES,
                next_segment,
                count,
                bits: &bits,
            }
            .encode(out, request_id, 0);
        }
        Request::DirtyPages {
            region,
            since,
            start_page,
        } => {
            let region = catalog.by_id(region)?;
            region.check_readable()?;
            let since =
                match since {
                    Since::Mark(mark) => mark,
                    Since::Checkpoint(checkpoint) => region
                        .checkpoint_start(checkpoint)
                        .ok_or_else(|| NodeError::CheckpointUnknown {
                            region: region.info().name.clone(),
                            checkpoint,
                            latest: region.last_checkpoint().map_or(0, |mark| mark.number),
                        })?,
                };
            let mark = region.mark();
            let (ranges, next_page) = region.dirty_ranges(since, start_page, DIRTY_RANGES_MAX);
            Response::DirtyPageList {
                mark,
                next_page,
                ranges,
            }
            .encode(out, request_id, 0);
        }
        Request::ApplyJournal {
            region,
            lsn,
            commit_id,
            entries,
        } => {
            let region = catalog.by_id(region)?;
            numbered_write(
                shared,
                &region,
                ctx,
                ReplicateKind::Journal,
                (epoch, lsn, request_id),
                out,
                || node_journal::apply(shared, &region, commit_id, &entries),
            )?;
        }
        Request::RegionChecksum {
            name,
            start_segment,
            with_segments,
        } => {
            let region = catalog.by_name(name)?;
            crate::checksum::region_checksum(&region, start_segment, with_segments)?
                .encode(out, request_id, 0);
        }
        Request::FreezeRegion { region } => {
            let region = catalog.by_id(region)?;
            // Wait for a running checkpoint: a moved region takes no more.
            let _checkpoint = region.checkpoint_lock.lock();
            let mark = region.freeze()?;
            catalog.save_states()?;
            tracing::info!(name = %region.info().name, mark, "region frozen (moved)");
            Response::Mark { mark }.encode(out, request_id, 0);
        }
        Request::ReadPages { region, pages } => {
            let region = catalog.by_id(region)?;
            region.check_readable()?;
            let start = out.len();
            let mut frame = FrameBuilder::begin(out, Opcode::PagesData, request_id, 0);
            let fetch = region.read_pages_deferred(pages, frame.payload())?;
            frame.finish();
            if let Some(fetch) = fetch {
                // Pages in the bulk tier: finished off the connection's thread.
                ctx.fetches.push(crate::bulk_reads::PendingRead {
                    request_id,
                    frame: out.split_off(start),
                    fetch,
                });
            }
        }
        Request::WritePages {
            region,
            lsn,
            pages,
            data,
        } => {
            let region = catalog.by_id(region)?;
            numbered_write(
                shared,
                &region,
                ctx,
                ReplicateKind::Pages,
                (epoch, lsn, request_id),
                out,
                || region.write_pages(pages, data),
            )?;
        }
        Request::LocalSocket => {
            // A path too long for the reply is not one a client could use.
            let path = shared
                .local_socket
                .as_deref()
                .and_then(|path| path.to_str())
                .filter(|path| path.len() <= pagoda_wire::message::LOCAL_SOCKET_PATH_BYTES_MAX)
                .unwrap_or("");
            Response::LocalSocketPath { path }.encode(out, request_id, 0);
        }
        Request::ShareRegion { .. } => unreachable!("served by connection::share_region"),
        Request::NodeStat => {
            let bulk = shared
                .arena
                .bulk()
                .map(|bulk| bulk.stat())
                .unwrap_or_default();
            let (paged_out, paged_in) = shared.arena.paging();
            Response::NodeStat(NodeStat {
                capacity_bytes: shared.arena.capacity_bytes(),
                used_bytes: shared.arena.used_bytes(),
                segment_bytes: shared.arena.segment_bytes() as u64,
                regions: catalog.len() as u32,
                connections: shared.connection_count.load(Ordering::Relaxed),
                requests: shared.requests.load(Ordering::Relaxed),
                bulk_capacity_bytes: bulk.capacity_bytes,
                bulk_used_bytes: bulk.used_bytes,
                bulk_referenced_bytes: bulk.referenced_bytes,
                bulk_zero_bytes: bulk.zero_bytes,
                segments_paged_out: paged_out,
                segments_paged_in: paged_in,
            })
            .encode(out, request_id, 0)
        }
    }
    Ok(())
}

/// A numbered write (`WritePages`, `ApplyJournal`; `at` is its writer
/// epoch, log position and request id): checked against the region's role
/// and lease, applied in log order (`apply`), forwarded to the replicas as
/// `kind`, and answered (at once, or once the `sync` replicas have it).
fn numbered_write(
    shared: &Shared,
    region: &Region,
    ctx: &mut Dispatch<'_>,
    kind: ReplicateKind,
    at: (u64, u64, u64),
    out: &mut Vec<u8>,
    apply: impl FnOnce() -> Result<(), NodeError>,
) -> Result<(), NodeError> {
    let (epoch, lsn, request_id) = at;
    let replication = crate::cluster::check_writable(shared, region)?;
    let forward = replication.as_deref().map(|r| (r, kind, ctx.payload));
    if let Some(replication) = &replication {
        replication.wait_for_room()?;
    }
    let directs = in_order(region, epoch, lsn, forward, apply)?;
    answer_write(
        shared,
        region,
        ctx,
        replication,
        directs,
        request_id,
        lsn,
        out,
    )
}

/// Applies mutating request `lsn` of a writer at `epoch` with `apply`, in
/// the region's log order: a retried duplicate is answered with its
/// original result without applying it again; a gap or a stale epoch is
/// refused. See `write_log`. On a primary, the request (`forward`: the
/// replication, the entry's kind and the request's payload) enters the
/// retained log in the same order, while the log's lock is held; a request
/// refused after it was numbered enters as a `Skip` carrying the refusal.
fn in_order(
    region: &Region,
    epoch: u64,
    lsn: u64,
    forward: Option<(&Replication, ReplicateKind, &[u8])>,
    apply: impl FnOnce() -> Result<(), NodeError>,
) -> Result<Vec<Direct>, NodeError> {
    let mut directs = Vec::new();
    let result = match region.log().order(&region.info().name, epoch, lsn)? {
        Order::Duplicate(original) => original,
        Order::Apply(slot) => {
            let result = apply();
            if let Some((replication, kind, payload)) = forward {
                directs = match &result {
                    Ok(()) => replication.append(lsn, epoch, kind, payload.to_vec()),
                    Err(error) => replication.append(
                        lsn,
                        epoch,
                        ReplicateKind::Skip,
                        replication::skip_body(error),
                    ),
                };
            }
            let applied = Applied::of(&result);
            slot.record(applied.clone());
            applied
        }
    };
    match result {
        Applied::Done => Ok(directs),
        Applied::Failed(code, message) => {
            // Refused here; the replicas record the same refusal, and the
            // answers are collected without making the client wait on them.
            if let Some((replication, _, _)) = forward {
                for direct in directs {
                    direct.collect(replication);
                }
            }
            Err(NodeError::Recorded(code, message))
        }
    }
}

/// Answers an applied write: at once, unless the region is a `sync`
/// primary's, whose replies wait for every in-sync replica (a retried
/// duplicate's as well: its original may not have reached them yet).
#[allow(clippy::too_many_arguments)]
fn answer_write(
    shared: &Shared,
    region: &Region,
    ctx: &mut Dispatch<'_>,
    replication: Option<Arc<Replication>>,
    directs: Vec<Direct>,
    request_id: u64,
    lsn: u64,
    out: &mut Vec<u8>,
) -> Result<(), NodeError> {
    match replication {
        Some(replication) if replication.mode() == ReplicationMode::Sync => {
            ctx.deferred.push(Deferred {
                request_id,
                replication,
                lsn,
                directs,
            })
        }
        _ => {
            // A node whose lease lapsed while the write waited (for room,
            // for a replica's socket) answers nothing as done: a successor
            // may lead by now.
            crate::cluster::check_lease(shared, region)?;
            Response::Done.encode(out, request_id, 0)
        }
    }
    Ok(())
}

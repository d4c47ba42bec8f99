//! The node's membership in a cluster: its lease, the records of the
//! regions it leads, and failover.
//!
//! A node keeps a lease in the coordinator (`pagoda_cluster`) and its
//! record (`nodes/ADDR`: capacity, free bytes) under it. One thread renews
//! the lease every quarter of its TTL and does nothing else; another, at
//! the same pace, looks at the region records (the *agent*; docs/design.md
//! has the whole argument, and the checks each step makes):
//!
//! - **Failover.** For a region whose primary's node record is gone (its
//!   lease lapsed), each live replica that the record counts *in sync*
//!   asks the other in-sync replicas for their log positions; the one with
//!   the highest (ties: the lowest address) checks that it reaches the
//!   storage backend, then replaces the record (compare-and-swap on its
//!   revision) naming itself primary at the next primary epoch, and
//!   promotes its copy. The others follow when the new primary reaches
//!   them; the old primary is kept in the replica set, to be rebuilt by
//!   catch-up if it comes back.
//! - **In-sync set.** A primary removes a replica from the record's
//!   in-sync set *before* it acknowledges a write that replica lacks
//!   (`record_in_sync`, called before a `sync` write is answered); it adds
//!   caught-up replicas back at the next tick. So every replica the record
//!   counts in sync holds every acknowledged write, and promoting the most
//!   advanced of them loses none.
//! - **Self-fencing.** A node whose lease is not renewed stops taking
//!   writes (`may_lead`) at `sent + ttl − margin`, where `sent` is when the
//!   last successful renewal was *sent*: the store starts the lease's
//!   clock no earlier, so the node stops before the store can declare it
//!   failed. Clock assumption: the two clocks' *rates* differ by less than
//!   the margin over one TTL (10 %, at least 100 ms); their offsets do not
//!   matter.
//!
//! The embedded coordinator the node uses when none is given lives in its
//! own data dir: no other node shares it, so nothing fails over and the
//! node never fences itself; it keeps the records for `pagoda cluster
//! status` on one machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions};
use pagoda_cluster::{ClusterError, Coordinator, LeaseId, NodeRecord, RegionRecord, Versioned};
use pagoda_wire::ReplicationMode;
use parking_lot::{Condvar, Mutex};

use crate::error::NodeError;
use crate::node::Shared;
use crate::region::Region;
use crate::replication::{self, Replication, Role};

/// The least margin by which a node stops leading before its lease could
/// lapse in the store.
const FENCE_MARGIN_MIN: Duration = Duration::from_millis(100);
/// How long a peer has to answer a log-position query during failover.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest node lease.
const LEASE_MAX: Duration = Duration::from_secs(3600);
/// How often the node's record (free bytes) is rewritten, at most.
const RECORD_REFRESH: Duration = Duration::from_secs(2);

/// The node's membership.
pub(crate) struct Membership {
    coordinator: Arc<dyn Coordinator>,
    /// Whether the coordinator was given (shared with other nodes): only
    /// then does the node fence itself and take part in failover.
    shared_store: bool,
    ttl: Duration,
    lease: Mutex<Option<LeaseId>>,
    base: Instant,
    /// Nanoseconds after `base` until which this node may lead; 0: not
    /// now.
    valid_until: AtomicU64,
    /// The live nodes, as of the last tick.
    live: Mutex<Vec<NodeRecord>>,
    stop: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    /// Whether this node has logged the loss of its lease (once per loss).
    lost_logged: AtomicBool,
    /// Set when the lease expired: renewals do not let the node lead again
    /// until the next tick has compared each region it led with its record
    /// (another may lead it by now).
    rechecking: AtomicBool,
    /// When the last successful renewal was sent (nanoseconds after
    /// `base`).
    last_sent: AtomicU64,
    /// When this node first saw each region's primary down: a replica that
    /// is not the most advanced waits for the one that is, but not for
    /// ever (that one may not reach the storage backend).
    down_since: Mutex<std::collections::HashMap<String, Instant>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("coordinator", &self.coordinator.endpoint())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Membership {
    /// Connects to the configured coordinator (or the embedded one in the
    /// data dir).
    pub(crate) fn open(config: &crate::config::NodeConfig) -> Result<Membership, NodeError> {
        let (endpoint, shared_store) = match &config.coordinator {
            Some(endpoint) => (endpoint.clone(), true),
            None => (format!("embedded:{}", config.data_dir.display()), false),
        };
        if config.lease < pagoda_cluster::LEASE_MIN {
            return Err(NodeError::Config(format!(
                "the lease must be at least {} ms",
                pagoda_cluster::LEASE_MIN.as_millis()
            )));
        }
        if shared_store && config.listen.ip().is_unspecified() {
            return Err(NodeError::Config(format!(
                "a node of a cluster is known by the address it listens on, which peers and \
                 clients dial: give --listen a specific address, not {}",
                config.listen
            )));
        }
        if config.lease > LEASE_MAX {
            return Err(NodeError::Config(format!(
                "the lease must be at most {} s",
                LEASE_MAX.as_secs()
            )));
        }
        let coordinator = pagoda_cluster::connect(&endpoint)
            .map_err(|e| NodeError::Config(format!("coordinator: {e}")))?;
        Ok(Membership {
            coordinator,
            shared_store,
            ttl: config.lease,
            lease: Mutex::new(None),
            base: Instant::now(),
            valid_until: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            lost_logged: AtomicBool::new(false),
            rechecking: AtomicBool::new(false),
            last_sent: AtomicU64::new(0),
            down_since: Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn margin(&self) -> Duration {
        (self.ttl / 10).max(FENCE_MARGIN_MIN)
    }

    /// Whether this node may take writes as a primary now.
    pub(crate) fn may_lead(&self) -> bool {
        if !self.shared_store {
            return true;
        }
        let now = self.base.elapsed().as_nanos() as u64;
        now < self.valid_until.load(Ordering::Acquire)
    }

    fn renewed(&self, sent: Instant) {
        let sent = sent.saturating_duration_since(self.base).as_nanos() as u64;
        self.last_sent.fetch_max(sent, Ordering::AcqRel);
        if !self.rechecking.load(Ordering::Acquire) {
            self.extend();
        }
    }

    /// Lets the node lead until the last renewal sent + TTL − margin.
    fn extend(&self) {
        let sent = Duration::from_nanos(self.last_sent.load(Ordering::Acquire));
        let until = (sent + self.ttl).saturating_sub(self.margin()).as_nanos() as u64;
        self.valid_until.fetch_max(until, Ordering::AcqRel);
        if self.lost_logged.swap(false, Ordering::AcqRel) {
            tracing::info!(coordinator = %self.coordinator.endpoint(), "coordinator lease renewed: taking writes again");
        }
    }

    /// A tick compared every region with its record: a node that joined
    /// again may lead again.
    fn rechecked(&self) {
        if self.rechecking.swap(false, Ordering::AcqRel) {
            tracing::info!("every region compared with its record after the lease expired");
            self.extend();
        }
    }

    /// Whether `addr` is a live node of the cluster (an allowed peer): as
    /// of the last tick, or else as the coordinator says now (a node that
    /// joined since).
    pub(crate) fn is_live_node(&self, addr: &str) -> bool {
        if self.live.lock().iter().any(|node| node.addr == addr) {
            return true;
        }
        match self.coordinator.nodes() {
            Ok(nodes) => {
                let live = nodes.iter().any(|node| node.addr == addr);
                *self.live.lock() = nodes;
                live
            }
            Err(_) => false,
        }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }
}

/// Whether this node takes writes for `region` now: its role (solo, or a
/// primary not fenced) and, in a cluster, its lease. Returns the
/// replication a write goes through, if any.
pub(crate) fn check_writable(
    shared: &Shared,
    region: &Region,
) -> Result<Option<Arc<Replication>>, NodeError> {
    let replication = replication::check_primary(region)?;
    check_lease(shared, region)?;
    Ok(replication)
}

/// Refuses a write on a node that may not lead now (its lease lapsed).
pub(crate) fn check_lease(shared: &Shared, region: &Region) -> Result<(), NodeError> {
    check_lease_named(shared, &region.info().name)
}

/// [`check_lease`] by the region's name.
pub(crate) fn check_lease_named(shared: &Shared, name: &str) -> Result<(), NodeError> {
    if shared.membership.may_lead() {
        return Ok(());
    }
    if !shared.membership.lost_logged.swap(true, Ordering::AcqRel) {
        tracing::error!(
            coordinator = %shared.membership.coordinator.endpoint(),
            "coordinator lease not renewed in time: this node takes no writes until it is"
        );
    }
    Err(NodeError::NotPrimary {
        region: name.to_owned(),
        primary: String::new(),
    })
}

fn unavailable(error: ClusterError) -> NodeError {
    NodeError::MetadataFailed(format!("coordinator: {error}"))
}

// ---------------------------------------------------------------------------
// Records the node writes.

fn mode_name(mode: ReplicationMode) -> &'static str {
    match mode {
        ReplicationMode::Sync => pagoda_cluster::MODE_SYNC,
        ReplicationMode::Async => pagoda_cluster::MODE_ASYNC,
    }
}

/// Records a region this node has just created (as its primary, or solo).
/// A name the coordinator already has for a region on another node is
/// refused; the caller deletes what it created.
pub(crate) fn region_created(
    shared: &Shared,
    region: &Region,
    replicas: &[String],
    mode: Option<ReplicationMode>,
    primary_epoch: u64,
) -> Result<(), NodeError> {
    let own = shared.local_addr.to_string();
    let record = RegionRecord {
        name: region.info().name.clone(),
        size: region.info().size,
        mode: mode.map_or("solo", mode_name).to_owned(),
        primary: own.clone(),
        replicas: replicas.to_vec(),
        in_sync: replicas.to_vec(),
        primary_epoch,
    };
    let coordinator = &shared.membership.coordinator;
    match coordinator.create_region(&record) {
        Ok(_) => Ok(()),
        Err(ClusterError::Exists(_)) => {
            // A record this node left (the region was lost with its data
            // dir) is replaced; another node's is not.
            let existing = coordinator.region(&record.name).map_err(unavailable)?;
            match existing {
                Some(old) if old.value.primary == own => coordinator
                    .update_region(&record, old.revision)
                    .map(|_| ())
                    .map_err(unavailable),
                Some(old) => Err(NodeError::RegionExists(format!(
                    "{} (the coordinator places it on {})",
                    record.name, old.value.primary
                ))),
                None => coordinator
                    .create_region(&record)
                    .map(|_| ())
                    .map_err(unavailable),
            }
        }
        Err(error) => Err(unavailable(error)),
    }
}

/// Removes the record of a region this node led and deleted.
pub(crate) fn region_deleted(shared: &Shared, name: &str) {
    let coordinator = &shared.membership.coordinator;
    let own = shared.local_addr.to_string();
    match coordinator.region(name) {
        Ok(Some(record)) if record.value.primary == own => {
            if let Err(error) = coordinator.delete_region(name) {
                tracing::warn!(name, %error, "could not delete the region's coordinator record");
            }
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(name, %error, "could not delete the region's coordinator record")
        }
    }
}

/// Before a `sync` write at `lsn` is acknowledged: makes sure the record's
/// in-sync set holds no replica that lacks it. Fast (no I/O) unless the
/// in-sync set shrank since the record was last written.
pub(crate) fn record_in_sync(shared: &Shared, replication: &Replication) -> Result<(), NodeError> {
    if !shared.membership.shared_store {
        return Ok(());
    }
    if replication.recorded_still_in_sync() {
        return Ok(());
    }
    let current = replication.in_sync_addrs();
    // Shrink the record before answering; retried until the lease would
    // lapse (then the write is not acknowledged: its writer resends it to
    // whoever leads next).
    let name = replication.name().to_owned();
    let deadline = Instant::now() + shared.config.replica_timeout;
    let _serial = replication.record_lock();
    loop {
        if !shared.membership.may_lead() {
            return Err(NodeError::NotPrimary {
                region: name,
                primary: String::new(),
            });
        }
        let error = match write_in_sync(shared, replication, |recorded| {
            recorded.retain(|addr| current.contains(addr));
        }) {
            Ok(()) => return Ok(()),
            Err(error @ NodeError::NotPrimary { .. }) => return Err(error),
            Err(error) => error,
        };
        // Not acknowledged: the writer sends it again (with its number).
        if Instant::now() >= deadline {
            return Err(NodeError::RegionUnavailable {
                name,
                reason: format!(
                    "a replica left the in-sync set and the coordinator's record could not \
                     say so: {error}"
                ),
            });
        }
        tracing::warn!(region = %name, %error, "could not record the in-sync set; retrying");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rewrites the record's in-sync set (compare-and-swap). A record naming
/// another primary or a newer epoch deposes this one.
fn write_in_sync(
    shared: &Shared,
    replication: &Replication,
    change: impl Fn(&mut Vec<String>),
) -> Result<(), NodeError> {
    let coordinator = &shared.membership.coordinator;
    let own = shared.local_addr.to_string();
    let name = replication.name();
    for _ in 0..8 {
        let Some(Versioned {
            mut value,
            revision,
        }) = coordinator.region(name).map_err(unavailable)?
        else {
            return Err(unavailable(ClusterError::NotFound(format!(
                "region {name:?}"
            ))));
        };
        if value.primary != own || value.primary_epoch != replication.primary_epoch() {
            let successor = value.primary.clone();
            replication.depose(
                format!(
                    "the coordinator names {} primary at epoch {}",
                    value.primary, value.primary_epoch
                ),
                (!successor.is_empty()).then_some(successor.clone()),
            );
            return Err(NodeError::NotPrimary {
                region: name.to_owned(),
                primary: successor,
            });
        }
        let mut in_sync = value.in_sync.clone();
        change(&mut in_sync);
        if in_sync == value.in_sync {
            replication.set_recorded_in_sync(in_sync);
            return Ok(());
        }
        value.in_sync = in_sync.clone();
        match coordinator.update_region(&value, revision) {
            Ok(_) => {
                tracing::info!(region = %name, in_sync = ?in_sync, "in-sync set recorded");
                replication.set_recorded_in_sync(in_sync);
                return Ok(());
            }
            Err(ClusterError::Conflict(_)) => continue,
            Err(error) => return Err(unavailable(error)),
        }
    }
    Err(unavailable(ClusterError::Conflict(format!(
        "region {name:?}"
    ))))
}

/// Records caught-up replicas in the in-sync set again; returns whether
/// there were any.
///
/// The cached set is widened *before* the record, then the replicas added
/// are checked to be still in sync: a write answered before the widening
/// did not need them only if they were out of sync then, which the check
/// sees; a write answered after it compares with the wider set and, if one
/// of them dropped, shrinks the record itself first (serialized with this
/// by the record lock). A cache wider than the record is always safe.
fn grow_in_sync(shared: &Shared, replication: &Replication) -> bool {
    let _serial = replication.record_lock();
    let recorded = replication.recorded_in_sync();
    let added: Vec<String> = replication
        .in_sync_addrs()
        .into_iter()
        .filter(|addr| !recorded.contains(addr))
        .collect();
    if added.is_empty() {
        return false;
    }
    let mut widened = recorded.clone();
    widened.extend(added.iter().cloned());
    replication.set_recorded_in_sync(widened);
    let now = replication.in_sync_addrs();
    if !added.iter().all(|addr| now.contains(addr)) {
        replication.set_recorded_in_sync(recorded);
        return true;
    }
    if let Err(error) = write_in_sync(shared, replication, |record| {
        for addr in &added {
            if !record.contains(addr) {
                record.push(addr.clone());
            }
        }
    }) {
        // The record may or may not have changed: the cache stays wide.
        tracing::debug!(region = %replication.name(), %error, "could not record caught-up replicas");
    }
    true
}

// ---------------------------------------------------------------------------
// The agent.

/// Starts the agent thread.
/// The agent's threads: one renews the lease (and nothing else, so that no
/// slow peer or store delays a renewal), one looks at the region records.
pub(crate) struct Agent {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Waits for the threads (after `Membership::stop`).
    pub(crate) fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Joins the cluster and starts the agent.
pub(crate) fn start(shared: Arc<Shared>) -> Result<Agent, NodeError> {
    // The first lease before serving: a node that cannot join its cluster
    // says so at start.
    if let Err(error) = renew(&shared) {
        if shared.membership.shared_store {
            return Err(NodeError::Config(format!(
                "could not join the cluster: {error}"
            )));
        }
        tracing::warn!(%error, "embedded coordinator unavailable");
    }
    adopt_regions(&shared);
    let lease_shared = shared.clone();
    let lease = std::thread::Builder::new()
        .name("pagoda-lease".into())
        .spawn(move || run_lease(lease_shared))
        .map_err(|e| NodeError::io("spawning the lease keeper", e))?;
    let ticks = std::thread::Builder::new()
        .name("pagoda-cluster".into())
        .spawn(move || run_ticks(shared));
    match ticks {
        Ok(ticks) => Ok(Agent {
            threads: vec![lease, ticks],
        }),
        Err(error) => Err(NodeError::io("spawning the cluster agent", error)),
    }
}

/// Sleeps one tick (a quarter of the lease, at most 250 ms); false once
/// the node stops.
fn pause(membership: &Membership) -> bool {
    let tick = (membership.ttl / 4).min(Duration::from_millis(250));
    let mut guard = membership.wake_lock.lock();
    if !membership.stop.load(Ordering::SeqCst) {
        membership.wake.wait_for(&mut guard, tick);
    }
    !membership.stop.load(Ordering::SeqCst)
}

/// Renews the lease every tick, and the node's record every 2 s.
fn run_lease(shared: Arc<Shared>) {
    let membership = &shared.membership;
    let mut last_record = Instant::now();
    while pause(membership) {
        let renewal_due = last_record.elapsed() >= RECORD_REFRESH;
        match renew_or_keep(&shared, renewal_due) {
            Ok(true) => last_record = Instant::now(),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "coordinator lease renewal failed"),
        }
    }
    // A node that stops hands its lease back: its record goes at once.
    if let Some(lease) = membership.lease.lock().take() {
        let _ = membership.coordinator.revoke_lease(lease);
    }
}

/// Looks at the region records every tick.
fn run_ticks(shared: Arc<Shared>) {
    let membership = &shared.membership;
    while pause(membership) {
        refresh_live(&shared);
        match tick_regions(&shared) {
            // A node that joined again after its lease expired leads again
            // only once every region it led was compared with its record.
            Ok(()) => membership.rechecked(),
            Err(error) => tracing::warn!(%error, "cluster tick failed"),
        }
    }
}

fn node_record(shared: &Shared) -> NodeRecord {
    NodeRecord {
        addr: shared.local_addr.to_string(),
        capacity_bytes: shared.arena.capacity_bytes(),
        free_bytes: shared
            .arena
            .capacity_bytes()
            .saturating_sub(shared.arena.used_bytes()),
        lease_ms: shared.membership.ttl.as_millis() as u64,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Grants a lease and registers the node.
fn renew(shared: &Shared) -> Result<(), ClusterError> {
    let membership = &shared.membership;
    let sent = Instant::now();
    let lease = membership.coordinator.grant_lease(membership.ttl)?;
    membership
        .coordinator
        .put_node(&node_record(shared), lease)?;
    *membership.lease.lock() = Some(lease);
    membership.renewed(sent);
    refresh_live(shared);
    tracing::info!(coordinator = %membership.coordinator.endpoint(), lease = format!("{lease:x}"), "joined the cluster");
    Ok(())
}

/// Renews the lease (a new one if it lapsed) and, if `rewrite`, the node's
/// record. Returns whether the record was written.
fn renew_or_keep(shared: &Shared, rewrite: bool) -> Result<bool, ClusterError> {
    let membership = &shared.membership;
    let lease = *membership.lease.lock();
    let Some(lease) = lease else {
        renew(shared)?;
        return Ok(true);
    };
    let sent = Instant::now();
    match membership.coordinator.keep_alive(lease) {
        Ok(_) => {
            membership.renewed(sent);
            if rewrite {
                membership
                    .coordinator
                    .put_node(&node_record(shared), lease)?;
            }
            Ok(rewrite)
        }
        Err(ClusterError::LeaseExpired(_)) => {
            tracing::warn!("coordinator lease expired: joining again");
            membership.rechecking.store(true, Ordering::Release);
            membership.lease.lock().take();
            // Regions this node led may have failed over meanwhile: the
            // next tick checks each against its record before it leads
            // again (`tick_regions`).
            renew(shared)?;
            Ok(true)
        }
        Err(error) => Err(error),
    }
}

fn refresh_live(shared: &Shared) {
    match shared.membership.coordinator.nodes() {
        Ok(nodes) => *shared.membership.live.lock() = nodes,
        Err(error) => tracing::debug!(%error, "could not list the cluster's nodes"),
    }
}

/// At start: records regions this node has that the coordinator lacks, and
/// gives up the lead of regions it comes back fenced for (its copy
/// restarted from storage and may lack acknowledged writes).
fn adopt_regions(shared: &Shared) {
    let coordinator = &shared.membership.coordinator;
    let own = shared.local_addr.to_string();
    for region in shared.catalog.regions() {
        let name = region.info().name.clone();
        let record = match coordinator.region(&name) {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(name, %error, "could not read the region's coordinator record");
                continue;
            }
        };
        let role = region.role().lock().persisted();
        match (record, role) {
            (None, None) => {
                if let Err(error) = region_created(shared, &region, &[], None, 0) {
                    tracing::warn!(name, %error, "could not record the region in the coordinator");
                }
            }
            (Some(record), Some(role))
                if record.value.primary != own
                    && !record.value.primary.is_empty()
                    && !record.value.replicas.contains(&own)
                    && role.role != "primary" =>
            {
                // Replaced while this node was away: its copy is no longer
                // one of the region's; the region lives on without it.
                match shared.catalog.delete(&name) {
                    Ok(()) => tracing::warn!(
                        name,
                        primary = record.value.primary,
                        "this node's copy was replaced while it was away: deleted"
                    ),
                    Err(error) => tracing::warn!(name, %error, "could not delete a replaced copy"),
                }
            }
            (
                Some(Versioned {
                    mut value,
                    revision,
                }),
                Some(role),
            ) if role.role == "fenced" && value.primary == own => {
                // Vacate the lead: the in-sync replicas fail over.
                value.primary = String::new();
                match coordinator.update_region(&value, revision) {
                    Ok(_) => tracing::warn!(
                        name,
                        "came back fenced: the region's lead is vacated for its in-sync replicas"
                    ),
                    Err(error) => {
                        tracing::warn!(name, %error, "could not vacate the region's lead")
                    }
                }
            }
            _ => {}
        }
    }
}

/// One look at the region records: failover, the in-sync sets, and
/// primaries that lost their lead meanwhile.
fn tick_regions(shared: &Arc<Shared>) -> Result<(), ClusterError> {
    let membership = &shared.membership;
    if !membership.shared_store {
        return Ok(());
    }
    let own = shared.local_addr.to_string();
    let live: Vec<String> = membership
        .live
        .lock()
        .iter()
        .map(|n| n.addr.clone())
        .collect();
    for record in membership.coordinator.regions()? {
        let Ok(region) = shared.catalog.by_name(&record.value.name) else {
            continue;
        };
        let (primary_role, solo) = match &*region.role().lock() {
            Role::Primary(replication) => (Some(replication.clone()), false),
            Role::Solo => (None, true),
            _ => (None, false),
        };
        // A solo region has nothing to fail over to.
        if solo {
            continue;
        }
        if let Some(replication) = primary_role {
            // Deposed already: nothing more to do here (its successor
            // rebuilds it as a replica).
            if replication.fenced().is_some() {
                continue;
            }
            if record.value.primary != own
                || record.value.primary_epoch != replication.primary_epoch()
            {
                let successor = record.value.primary.clone();
                replication.depose(
                    format!(
                        "the coordinator names {} primary at epoch {}",
                        if successor.is_empty() {
                            "no node"
                        } else {
                            &successor
                        },
                        record.value.primary_epoch
                    ),
                    (!successor.is_empty()).then_some(successor),
                );
                continue;
            }
            if membership.may_lead() && !grow_in_sync(shared, &replication) {
                replace_lost(shared, &region, &replication, &record);
            }
            continue;
        }
        let primary_alive =
            !record.value.primary.is_empty() && live.contains(&record.value.primary);
        if record.value.primary == own {
            // The record names this node (it won a failover and has not
            // promoted yet, or promotion failed): promote now, or give the
            // lead up if this copy cannot lead.
            if !promote_recorded(shared, &region, &record.value) {
                vacate(shared, &record);
            }
            continue;
        }
        if !primary_alive && record.value.in_sync.contains(&own) {
            let waited = membership
                .down_since
                .lock()
                .entry(record.value.name.clone())
                .or_insert_with(Instant::now)
                .elapsed();
            try_failover(shared, &region, record, &live, waited > membership.ttl * 2);
        } else {
            membership.down_since.lock().remove(&record.value.name);
        }
    }
    Ok(())
}

/// Replaces a replica whose node has been gone from the cluster for
/// `replace_replica_after` with an empty one on the live node with the most
/// free bytes that holds no copy yet: created there (unknown position),
/// recorded in place of the lost one (compare-and-swap), then the lost
/// one's link is pointed at it, and the sender rebuilds it by digests. One
/// replacement per region per tick.
fn replace_lost(
    shared: &Shared,
    region: &Region,
    replication: &Replication,
    record: &Versioned<RegionRecord>,
) {
    let membership = &shared.membership;
    let own = shared.local_addr.to_string();
    let live = membership.live.lock().clone();
    let name = &record.value.name;
    for lost in &record.value.replicas {
        let key = format!("{name}\u{0}{lost}");
        // Gone from the coordinator is not gone: one its primary still
        // reaches is kept.
        if live.iter().any(|node| node.addr == *lost) || replication.reaches(lost) {
            membership.down_since.lock().remove(&key);
            continue;
        }
        let waited = membership
            .down_since
            .lock()
            .entry(key.clone())
            .or_insert_with(Instant::now)
            .elapsed();
        if waited < shared.config.replace_replica_after {
            continue;
        }
        let mut exclude = record.value.replicas.clone();
        exclude.push(own.clone());
        let candidates: Vec<NodeRecord> = live
            .iter()
            .filter(|node| node.free_bytes >= region.info().size)
            .cloned()
            .collect();
        let Some(node) = pagoda_cluster::place(&candidates, 1, &exclude)
            .into_iter()
            .next()
        else {
            tracing::debug!(name, lost, "no live node to replace a lost replica on");
            continue;
        };
        let mut value = record.value.clone();
        for replica in value.replicas.iter_mut() {
            if replica == lost {
                *replica = node.addr.clone();
            }
        }
        value.in_sync.retain(|r| r != lost);
        if let Err(error) = replication::create_replacement(
            shared,
            region,
            replication,
            &node.addr,
            &value.replicas,
        ) {
            tracing::warn!(name, lost, replacement = node.addr, %error, "could not create a replacement replica");
            continue;
        }
        if let Err(error) = membership
            .coordinator
            .update_region(&value, record.revision)
        {
            tracing::warn!(name, lost, replacement = node.addr, %error, "could not record a replacement replica");
            return;
        }
        replication.set_recorded_in_sync(value.in_sync.clone());
        if replication.retarget(lost, &node.addr) {
            if let Err(error) = shared.catalog.save_states() {
                tracing::error!(name, %error, "could not persist the replacement replica");
            }
            tracing::warn!(
                name,
                lost,
                replacement = node.addr,
                waited_ms = waited.as_millis() as u64,
                "lost replica replaced: rebuilding the region's copy there"
            );
        }
        membership.down_since.lock().remove(&key);
        return;
    }
}

/// The log position of a replica of `name` at `addr`, if it answers and
/// counts itself a replica.
/// The log position of a replica of `name` at `addr`: `Err` if the node
/// cannot be reached, `Ok(None)` if it answers but holds no replica of it.
fn peer_position(shared: &Shared, addr: &str, name: &str) -> Result<Option<u64>, String> {
    let mut options: ClientOptions =
        replication::peer_options(shared, format!("failover of {name}"));
    options.timeout = PEER_TIMEOUT;
    options.reconnect_for = Duration::ZERO;
    let client = Client::connect(addr, options).map_err(|e| e.to_string())?;
    match client.replicas(name) {
        Ok(set) => Ok((set.role == pagoda_wire::message::ReplicaRole::Replica).then_some(set.lsn)),
        Err(error) if error.code().is_some() => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// Takes over a region whose primary is gone, if this replica is the most
/// advanced of the in-sync ones that answer.
fn try_failover(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    record: Versioned<RegionRecord>,
    live: &[String],
    any_in_sync: bool,
) {
    let own = shared.local_addr.to_string();
    let name = record.value.name.clone();
    // Only a copy the primary's last message counted in sync, continuous
    // since (not restarted, not diverged), may lead: a copy reloaded from
    // a checkpoint lacks what was written after it.
    if !replication::counted_in_sync(region) {
        return;
    }
    let mine = region.log().applied();
    // The most advanced in-sync replica wins; ties go to the lowest
    // address. A peer that does not answer cannot lead either. Once the
    // primary has been down for two leases without a takeover (the most
    // advanced cannot reach storage, say), any in-sync replica may lead:
    // in `sync` mode each holds every acknowledged write.
    //
    // A replica that cannot reach every other live member of the region
    // (cut off from them, though not from the coordinator) does not lead:
    // it could not replicate, and it may be the one on the wrong side.
    for peer in &record.value.replicas {
        if *peer == own || !live.contains(peer) {
            continue;
        }
        match peer_position(shared, peer, &name) {
            Err(error) => {
                tracing::warn!(name, peer, %error, "not taking over: another member of the region is unreachable");
                return;
            }
            Ok(Some(theirs))
                if !any_in_sync
                    && record.value.in_sync.contains(peer)
                    && (theirs > mine || (theirs == mine && *peer < own)) =>
            {
                return;
            }
            Ok(_) => {}
        }
    }
    // A new primary must reach the region's storage, or it could not take
    // checkpoints: leave the lead to another.
    if let Some(storage) = &shared.storage
        && let Err(error) = storage.probe()
    {
        tracing::warn!(name, %error, "not taking over: the storage backend is unreachable");
        return;
    }
    let (value, old_primary) = taken_over(&record.value, &own, region);
    match shared
        .membership
        .coordinator
        .update_region(&value, record.revision)
    {
        Ok(_) => {
            tracing::warn!(
                name,
                old_primary,
                primary_epoch = value.primary_epoch,
                lsn = mine,
                "primary lost: taking over"
            );
            promote_recorded(shared, region, &value);
        }
        Err(ClusterError::Conflict(_)) => {}
        Err(error) => tracing::warn!(name, %error, "could not record the takeover"),
    }
}

/// The record once `own` takes the lead: primary at the next epoch (above
/// the record's and its copy's), the old primary moved to the replicas and
/// out of the in-sync set. Returns it and the old primary.
fn taken_over(record: &RegionRecord, own: &str, region: &Region) -> (RegionRecord, String) {
    let mut value = record.clone();
    let old_primary = std::mem::replace(&mut value.primary, own.to_owned());
    value.primary_epoch = value
        .primary_epoch
        .max(replication::primary_epoch(region))
        .saturating_add(1);
    value.replicas.retain(|r| r != own);
    if !old_primary.is_empty() && !value.replicas.contains(&old_primary) {
        value.replicas.push(old_primary.clone());
    }
    value.in_sync.retain(|r| r != own && *r != old_primary);
    (value, old_primary)
}

/// Promotes this node's copy to what the record says (it names this node
/// primary at `record.primary_epoch`).
fn promote_recorded(shared: &Arc<Shared>, region: &Arc<Region>, record: &RegionRecord) -> bool {
    let name = &record.name;
    if !shared.membership.may_lead() {
        return true;
    }
    match replication::promote_to(
        shared,
        region,
        record.primary_epoch,
        &record.replicas,
        &record.in_sync,
    ) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(name, %error, "promotion the coordinator recorded failed");
            false
        }
    }
}

/// Gives up the lead the record names this node for, when its copy cannot
/// lead (it restarted, needs a rebuild, is fenced): the primary is left
/// empty and this node leaves the in-sync set, and the in-sync replicas
/// fail over.
fn vacate(shared: &Shared, record: &Versioned<RegionRecord>) {
    let own = shared.local_addr.to_string();
    let mut value = record.value.clone();
    value.primary = String::new();
    value.in_sync.retain(|r| *r != own);
    if !value.replicas.contains(&own) {
        value.replicas.push(own);
    }
    match shared
        .membership
        .coordinator
        .update_region(&value, record.revision)
    {
        Ok(_) => tracing::warn!(
            name = value.name,
            "this node's copy cannot lead: the region's lead is vacated for its in-sync replicas"
        ),
        Err(error) => {
            tracing::warn!(name = value.name, %error, "could not vacate the region's lead")
        }
    }
}

/// Hands the lead of every region this node leads to its most advanced
/// in-sync replica (a node that was told to stop). Waits at most
/// `timeout` per region.
pub(crate) fn hand_off(shared: &Arc<Shared>, timeout: Duration) {
    let membership = &shared.membership;
    if !membership.shared_store {
        return;
    }
    for region in shared.catalog.regions() {
        let replication = match &*region.role().lock() {
            Role::Primary(replication) => replication.clone(),
            _ => continue,
        };
        let name = region.info().name.clone();
        match hand_off_one(shared, &region, &replication, timeout) {
            Ok(successor) => tracing::info!(name, successor, "lead handed off"),
            Err(error) => tracing::warn!(name, %error, "could not hand the lead off"),
        }
    }
}

fn hand_off_one(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    replication: &Arc<Replication>,
    timeout: Duration,
) -> Result<String, NodeError> {
    let name = region.info().name.clone();
    // Stop taking writes, then wait until an in-sync replica has them all.
    // A primary fenced already (deposed, not yet told) has nothing to hand.
    if !replication.pause_writes("handing the lead off") {
        return Err(NodeError::RegionUnavailable {
            name,
            reason: "this node no longer leads it".into(),
        });
    }
    let handed = hand_off_paused(shared, region, replication, timeout);
    if handed.is_err() {
        replication.resume_writes();
    }
    handed
}

fn hand_off_paused(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    replication: &Arc<Replication>,
    timeout: Duration,
) -> Result<String, NodeError> {
    let name = region.info().name.clone();
    let lsn = region.log().applied();
    let successor =
        replication
            .wait_caught_up(lsn, timeout)
            .ok_or_else(|| NodeError::RegionUnavailable {
                name: name.clone(),
                reason: format!("no in-sync replica caught up to LSN {lsn} in time"),
            })?;
    let coordinator = &shared.membership.coordinator;
    let Some(Versioned {
        mut value,
        revision,
    }) = coordinator.region(&name).map_err(unavailable)?
    else {
        return Err(unavailable(ClusterError::NotFound(format!(
            "region {name:?}"
        ))));
    };
    let own = shared.local_addr.to_string();
    // Only the primary the record names, at its epoch, hands anything off:
    // a deposed one that has not heard yet would depose the real one.
    if value.primary != own || value.primary_epoch != replication.primary_epoch() {
        let successor = value.primary.clone();
        replication.depose(
            format!(
                "the coordinator names {} primary at epoch {}",
                value.primary, value.primary_epoch
            ),
            (!successor.is_empty()).then_some(successor),
        );
        return Err(NodeError::RegionUnavailable {
            name,
            reason: "the coordinator names another primary".into(),
        });
    }
    value.primary = successor.clone();
    value.primary_epoch = value
        .primary_epoch
        .max(replication.primary_epoch())
        .saturating_add(1);
    value.replicas.retain(|r| *r != successor);
    if !value.replicas.contains(&own) {
        value.replicas.push(own.clone());
    }
    value.in_sync.retain(|r| *r != successor && *r != own);
    coordinator
        .update_region(&value, revision)
        .map_err(unavailable)?;
    replication.depose(
        format!("handed the lead to {successor}"),
        Some(successor.clone()),
    );
    // The successor promotes itself at its next tick; tell it now.
    let mut options = replication::peer_options(shared, format!("hand-off of {name}"));
    options.reconnect_for = Duration::ZERO;
    if let Ok(client) = Client::connect(successor.as_str(), options) {
        let _ = client.promote(&name, false);
    }
    Ok(successor)
}

/// An operator's promotion (`pagoda region promote`). With a shared
/// coordinator the record changes first (compare-and-swap): a replica the
/// record does not count in sync is promoted only with `force`.
pub(crate) fn promote_request(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    force: bool,
) -> Result<(), NodeError> {
    if !shared.membership.shared_store {
        return replication::promote(shared, region, force);
    }
    let name = region.info().name.clone();
    let own = shared.local_addr.to_string();
    let coordinator = &shared.membership.coordinator;
    let Some(Versioned { value, revision }) = coordinator.region(&name).map_err(unavailable)?
    else {
        return replication::promote(shared, region, force);
    };
    if value.primary == own {
        let leads = matches!(&*region.role().lock(), Role::Primary(_));
        if leads {
            return Err(NodeError::InvalidArgument(format!(
                "region {name:?} is the primary here already"
            )));
        }
        return replication::promote_to(
            shared,
            region,
            value.primary_epoch,
            &value.replicas,
            &value.in_sync,
        );
    }
    if !force && !value.in_sync.contains(&own) {
        return Err(NodeError::InvalidArgument(format!(
            "region {name:?}: the coordinator does not count this replica in sync (in sync: \
             {:?}); promote one that is, or pass --force to lose any write the primary \
             acknowledged after LSN {}",
            value.in_sync,
            region.log().applied()
        )));
    }
    let (value, _) = taken_over(&value, &own, region);
    coordinator
        .update_region(&value, revision)
        .map_err(unavailable)?;
    replication::promote_to(
        shared,
        region,
        value.primary_epoch,
        &value.replicas,
        &value.in_sync,
    )
}

//! Replicated regions: a primary that forwards its write log to replicas,
//! the replicas that apply it, fencing by primary epoch, promotion, and
//! catch-up (from the retained log, or by segment digests).
//!
//! **Roles.** Each region has a role on its node (`Role`): solo (not
//! replicated), primary, replica, or fenced (a primary that learned of a
//! newer one, or restarted without knowing whether it still leads). Only a
//! solo region or a primary takes writes from clients.
//!
//! **The log.** A primary numbers nothing itself: its writer numbers every
//! mutating request (see `write_log`), and the primary applies it in that
//! order, then appends it to its *retained log* (`Replication::append`)
//! while it still holds the write log's lock, so entries enter the retained
//! log in LSN order. One sender thread per replica (`run_link`) streams the
//! entries to its replica, pipelined (up to [`WINDOW`] unanswered), and the
//! replica applies each through its own write log: a duplicate is answered
//! and not applied twice, a gap refused. The retained log keeps the newest
//! entries up to `replication_log_bytes`; a replica that fell behind its
//! start is rebuilt by digest comparison instead.
//!
//! **Acknowledgement.** In `sync` mode a client's write is answered once
//! every *in-sync* replica has acknowledged it (`Replication::wait_acked`,
//! called by the connection before it answers); a replica that does not
//! acknowledge within the replica timeout is dropped from the in-sync set
//! (and said so), and counts again once it has caught up with the log. In
//! `async` mode the primary answers at once, and a write waits only while
//! an in-sync replica lags by more than `replication_lag_bytes`.
//!
//! **Fencing.** Every `Replicate` request carries the sender's primary
//! epoch. A replica refuses one older than the newest it has seen
//! (`StaleEpoch`), and a primary (or fenced node) that receives one newer
//! than its own steps down and becomes a replica of the sender. A primary
//! whose entry is refused as stale fences itself: it takes no more writes
//! and fails the ones waiting for acknowledgement. See docs/design.md,
//! "Replication", for why no write of a deposed primary can be
//! acknowledged once a successor exists.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, PendingCall};
use pagoda_wire::limits::SEGMENT_BYTES;
use pagoda_wire::{
    ErrorCode, Opcode, ReplicaInfo, ReplicaRole, ReplicaSet, ReplicateKind, ReplicationMode,
    Request, Response,
};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::error::NodeError;
use crate::node::Shared;
use crate::region::Region;
use crate::write_log::{Applied, Order};

/// Log entries a sender keeps unanswered at most.
pub const WINDOW: usize = 64;
/// How often an idle sender probes its replica (a heartbeat: a replica that
/// hears nothing for half the replica timeout counts itself out of sync).
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// The pause between attempts to reach a replica, at most.
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// A probe's answer meaning "my log position is unknown: rebuild me".
pub const POSITION_UNKNOWN: u64 = u64::MAX;

/// How a primary replicates, from the node's configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long an in-sync replica may leave a write unacknowledged before
    /// it is dropped from the in-sync set.
    pub timeout: Duration,
    /// Bytes of log entries the primary retains for catching up.
    pub retain_bytes: usize,
    /// In `async` mode, the most bytes an in-sync replica may lag.
    pub lag_bytes_max: usize,
}

// ---------------------------------------------------------------------------
// Roles.

/// A region's role on this node.
pub enum Role {
    /// Not replicated.
    Solo,
    /// The primary.
    Primary(Arc<Replication>),
    /// A replica.
    Replica(Upstream),
    /// A primary that may no longer lead: takes no writes.
    Fenced(Fence),
}

/// What a replica knows of its primary.
pub struct Upstream {
    /// The primary's address.
    pub primary: String,
    /// The newest primary epoch seen.
    pub primary_epoch: u64,
    /// The replication mode.
    pub mode: ReplicationMode,
    /// Every replica of the region (this one included).
    pub replicas: Vec<String>,
    /// Whether the primary's last message counted this replica in sync.
    in_sync: bool,
    /// When the primary's last message arrived.
    last_message: Option<Instant>,
    /// The connection that carried it, and when it closed (if it did).
    connection: u64,
    closed_at: Option<Instant>,
    /// The log position is unknown (restart, divergence): only a rebuild
    /// brings it back.
    needs_rebuild: bool,
    /// The primary's newest checkpoint, as its last probe said, and the
    /// LSN it holds.
    covered: (u64, u64),
}

/// Why a region takes no writes, and who may lead now.
pub struct Fence {
    /// The primary epoch this node held.
    pub primary_epoch: u64,
    /// The replication mode.
    pub mode: ReplicationMode,
    /// The region's replicas when this node led.
    pub replicas: Vec<String>,
    /// Why.
    pub reason: String,
}

/// The role as the catalog persists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PersistedRole {
    /// "primary", "replica" or "fenced".
    pub role: String,
    /// "sync" or "async".
    pub mode: String,
    /// The primary's address (a replica's), or empty.
    #[serde(default)]
    pub primary: String,
    /// The replicas' addresses.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// The newest primary epoch this node has seen.
    pub primary_epoch: u64,
}

fn mode_name(mode: ReplicationMode) -> String {
    mode.name().to_owned()
}

fn parse_mode(name: &str) -> ReplicationMode {
    if name == "async" {
        ReplicationMode::Async
    } else {
        ReplicationMode::Sync
    }
}

impl Role {
    /// The role to persist (`None`: solo).
    pub fn persisted(&self) -> Option<PersistedRole> {
        match self {
            Role::Solo => None,
            Role::Primary(replication) => Some(PersistedRole {
                role: "primary".into(),
                mode: mode_name(replication.mode),
                primary: String::new(),
                replicas: replication.links.iter().map(|l| l.addr()).collect(),
                primary_epoch: replication.primary_epoch,
            }),
            Role::Replica(upstream) => Some(PersistedRole {
                role: "replica".into(),
                mode: mode_name(upstream.mode),
                primary: upstream.primary.clone(),
                replicas: upstream.replicas.clone(),
                primary_epoch: upstream.primary_epoch,
            }),
            Role::Fenced(fence) => Some(PersistedRole {
                role: "fenced".into(),
                mode: mode_name(fence.mode),
                primary: String::new(),
                replicas: fence.replicas.clone(),
                primary_epoch: fence.primary_epoch,
            }),
        }
    }

    /// The role a region comes back with after a restart. A primary does
    /// not know whether a replica was promoted meanwhile, nor whether its
    /// replicas hold writes it lost: it comes back fenced, and an operator
    /// promotes the most current copy. A replica's log position is lost
    /// with its RAM: it comes back needing a rebuild.
    pub fn restored(persisted: &PersistedRole) -> Role {
        let mode = parse_mode(&persisted.mode);
        match persisted.role.as_str() {
            "replica" => Role::Replica(Upstream {
                primary: persisted.primary.clone(),
                primary_epoch: persisted.primary_epoch,
                mode,
                replicas: persisted.replicas.clone(),
                in_sync: false,
                last_message: None,
                connection: 0,
                closed_at: None,
                needs_rebuild: true,
                covered: (0, 0),
            }),
            _ => Role::Fenced(Fence {
                primary_epoch: persisted.primary_epoch,
                mode,
                replicas: persisted.replicas.clone(),
                reason: if persisted.role == "primary" {
                    "this node was the primary when it restarted: a replica may have been \
                     promoted meanwhile, or hold writes this node lost; promote the most current \
                     copy (pagoda region replicas shows each one's position)"
                        .into()
                } else {
                    "this node was fenced before it restarted".into()
                },
            }),
        }
    }

    fn primary_epoch(&self) -> u64 {
        match self {
            Role::Solo => 0,
            Role::Primary(replication) => replication.primary_epoch,
            Role::Replica(upstream) => upstream.primary_epoch,
            Role::Fenced(fence) => fence.primary_epoch,
        }
    }
}

/// Refuses a client's write unless the region takes writes here (solo or
/// primary); returns the replication to forward it through, if any.
pub fn check_primary(region: &Region) -> Result<Option<Arc<Replication>>, NodeError> {
    match &*region.role().lock() {
        Role::Solo => Ok(None),
        Role::Primary(replication) => match replication.fenced() {
            Some(_) => Err(replication.deposed()),
            None => Ok(Some(replication.clone())),
        },
        Role::Replica(upstream) => Err(NodeError::NotPrimary {
            region: region.info().name.clone(),
            primary: upstream.primary.clone(),
        }),
        Role::Fenced(fence) => Err(NodeError::RegionUnavailable {
            name: region.info().name.clone(),
            reason: format!("fenced: {}", fence.reason),
        }),
    }
}

/// The primary epoch a region's copy on this node has seen (0: solo).
pub fn primary_epoch(region: &Region) -> u64 {
    region.role().lock().primary_epoch()
}

/// Tells a primary's replicas (with its next probes) that a checkpoint
/// completed.
pub fn checkpoint_taken(region: &Region, manifest: &crate::checkpoint::Manifest) {
    if let Role::Primary(replication) = &*region.role().lock() {
        replication.checkpoint_taken(manifest.number, manifest.lsn);
    }
}

/// A replica restarted with its primary's checkpoint as its baseline (the
/// nodes share storage): if that checkpoint was taken under the primary
/// epoch this replica follows, the replica holds every write up to the
/// checkpoint's LSN, and its primary can catch it up from its retained
/// log from there instead of rebuilding it. (Under a newer primary, the
/// probe's divergence check decides, as for any replica.)
pub fn resume_from_baseline(region: &Region, manifest: &crate::checkpoint::Manifest) {
    if let Role::Replica(upstream) = &mut *region.role().lock()
        && manifest.lsn > 0
        && manifest.primary_epoch == upstream.primary_epoch
    {
        region.log().reset(manifest.lsn);
        upstream.needs_rebuild = false;
        tracing::info!(
            name = %region.info().name,
            lsn = manifest.lsn,
            "replica resumes from its primary's checkpoint"
        );
    }
}

/// Refuses a checkpoint unless this node checkpoints the region: solo, or
/// its primary. A replica's (or fenced copy's) checkpoints would be written
/// under the same keys as its primary's.
pub fn check_checkpoints(region: &Region) -> Result<(), NodeError> {
    match &*region.role().lock() {
        Role::Solo => Ok(()),
        // A deposed primary's copy may lack what its successor took since:
        // its checkpoint would stand beside (or over) the successor's.
        Role::Primary(replication) => match replication.fenced() {
            Some(reason) => Err(NodeError::RegionUnavailable {
                name: region.info().name.clone(),
                reason: format!("this node no longer leads it ({reason}): no checkpoint"),
            }),
            None => Ok(()),
        },
        Role::Replica(upstream) => Err(NodeError::InvalidArgument(format!(
            "region {:?} is a replica here: its primary {} takes its checkpoints",
            region.info().name,
            upstream.primary
        ))),
        Role::Fenced(fence) => Err(NodeError::RegionUnavailable {
            name: region.info().name.clone(),
            reason: format!("fenced: {}", fence.reason),
        }),
    }
}

// ---------------------------------------------------------------------------
// The primary's side.

/// An entry of the retained log.
#[derive(Clone)]
struct Entry {
    lsn: u64,
    writer_epoch: u64,
    kind: ReplicateKind,
    body: Arc<[u8]>,
    /// Bytes appended to the log up to and including this entry.
    end_bytes: u64,
    appended: Instant,
}

struct Retained {
    entries: VecDeque<Entry>,
    /// Bytes held by `entries`.
    bytes: usize,
    /// Bytes ever appended.
    appended_bytes: u64,
    /// The last LSN appended (or the position the log started at).
    last: u64,
}

/// One replica, as its primary tracks it.
pub struct Link {
    /// The replica's address: changed only when a lost replica is replaced
    /// by another node (`Replication::retarget`).
    addr: Mutex<String>,
    state: Mutex<LinkState>,
    /// While the replica is caught up: the connection the writers' own
    /// threads send new entries on, straight from `append` (in LSN order:
    /// under the retained log's lock). `None` while the sender catches the
    /// replica up. Lock order: the retained log, then this, then `state`.
    live: Mutex<Option<Arc<Client>>>,
    /// In `async` mode, entries sent live whose replies the sender collects.
    pending: Mutex<VecDeque<Direct>>,
    /// Wakes a live sender: an `async` entry to collect, the link going
    /// offline, a stop. (Not every append: a `sync` write is collected by
    /// its own connection, and waking the sender for it would cost a
    /// thread switch per write.)
    wake: Condvar,
}

/// An entry sent on a live link, and the call its reply comes on.
pub struct Direct {
    link: Arc<Link>,
    client: Arc<Client>,
    lsn: u64,
    end_bytes: u64,
    call: PendingCall,
}

impl Direct {
    /// Waits for the replica's answer and records it; a failure takes the
    /// link out of the live path (the sender catches it up again).
    pub fn collect(self, replication: &Replication) {
        match answer_of(self.client.wait_reply(&self.call)) {
            Ok(Answer::Applied(applied)) if applied >= self.lsn => {
                acknowledged(replication, &self.link, self.lsn, self.end_bytes);
            }
            Ok(_) => self
                .link
                .go_offline(replication, "the replica is behind the live stream".into()),
            Err(SendError::Deposed(message)) => {
                replication.fence(format!("a replica has seen a newer primary: {message}"))
            }
            Err(SendError::Link(error)) => self
                .link
                .go_offline(replication, format!("link failed: {error}")),
            Err(SendError::Refused(message)) => self
                .link
                .go_offline(replication, format!("replica refused an entry: {message}")),
            Err(SendError::Behind) => self
                .link
                .go_offline(replication, "the replica is behind".into()),
        }
    }
}

struct LinkState {
    acked: u64,
    /// `Retained::appended_bytes` when `acked` was appended.
    acked_bytes: u64,
    in_sync: bool,
    connected: bool,
    /// When the oldest entry still unanswered was sent.
    waiting_since: Option<Instant>,
    message: String,
    /// The last LSN sent.
    sent: u64,
    /// Bytes of entries sent; of segments sent by rebuilds; rebuilds.
    sent_bytes: u64,
    rebuilt_bytes: u64,
    rebuilds: u64,
}

/// A primary's replication of one region.
pub struct Replication {
    name: String,
    uid: u64,
    mode: ReplicationMode,
    settings: Settings,
    primary_epoch: u64,
    /// The LSN this primary epoch began at: a replica that applied beyond
    /// it under an older primary has diverged.
    epoch_start: u64,
    /// This node's address, as replicas should reach it.
    self_addr: String,
    peer_options: ClientOptions,
    log: Mutex<Retained>,
    /// Signalled on every append, acknowledgement and change of state.
    changed: Condvar,
    links: Vec<Arc<Link>>,
    stop: AtomicBool,
    fenced: Mutex<Option<String>>,
    /// The primary that deposed this one, once known.
    successor: Mutex<Option<String>>,
    /// The newest checkpoint this primary took (or loaded) and the LSN it
    /// holds, told to replicas with every probe.
    covered: Mutex<(u64, u64)>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The in-sync set as the coordinator's record last held it (see
    /// `cluster::record_in_sync`).
    recorded_in_sync: Mutex<Vec<String>>,
    /// Serializes changes of the recorded in-sync set (growing it at a
    /// tick, shrinking it before an acknowledgement).
    record_lock: Mutex<()>,
    /// Set by `pause_writes` (a hand-off), so that a failed hand-off can
    /// take writes again.
    paused: AtomicBool,
}

impl Replication {
    #[allow(clippy::too_many_arguments)]
    fn new(
        region: &Region,
        mode: ReplicationMode,
        settings: Settings,
        primary_epoch: u64,
        replicas: &[String],
        self_addr: String,
        peer_options: ClientOptions,
        in_sync: bool,
    ) -> Replication {
        let applied = region.log().applied();
        Replication {
            name: region.info().name.clone(),
            uid: region.uid(),
            mode,
            settings,
            primary_epoch,
            epoch_start: applied,
            self_addr,
            peer_options,
            log: Mutex::new(Retained {
                entries: VecDeque::new(),
                bytes: 0,
                appended_bytes: 0,
                last: applied,
            }),
            changed: Condvar::new(),
            links: replicas
                .iter()
                .map(|addr| {
                    Arc::new(Link {
                        addr: Mutex::new(addr.clone()),
                        live: Mutex::new(None),
                        pending: Mutex::new(VecDeque::new()),
                        wake: Condvar::new(),
                        state: Mutex::new(LinkState {
                            acked: if in_sync { applied } else { 0 },
                            acked_bytes: 0,
                            in_sync,
                            connected: false,
                            waiting_since: None,
                            sent: 0,
                            sent_bytes: 0,
                            rebuilt_bytes: 0,
                            rebuilds: 0,
                            message: if in_sync {
                                String::new()
                            } else {
                                "not reached yet".into()
                            },
                        }),
                    })
                })
                .collect(),
            stop: AtomicBool::new(false),
            fenced: Mutex::new(None),
            successor: Mutex::new(None),
            covered: Mutex::new(
                region
                    .baseline()
                    .map_or((0, 0), |manifest| (manifest.number, manifest.lsn)),
            ),
            threads: Mutex::new(Vec::new()),
            record_lock: Mutex::new(()),
            paused: AtomicBool::new(false),
            recorded_in_sync: Mutex::new(if in_sync {
                replicas.to_vec()
            } else {
                Vec::new()
            }),
        }
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The primary epoch this primary leads at.
    pub fn primary_epoch(&self) -> u64 {
        self.primary_epoch
    }

    /// The replicas that count for `sync` acknowledgements now.
    pub fn in_sync_addrs(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|link| link.in_sync())
            .map(|link| link.addr())
            .collect()
    }

    /// Whether every replica the record counts in sync still counts in sync
    /// here (no allocation: the check before every `sync` acknowledgement
    /// in a cluster).
    pub fn recorded_still_in_sync(&self) -> bool {
        let recorded = self.recorded_in_sync.lock();
        recorded.iter().all(|addr| {
            self.links
                .iter()
                .any(|link| link.in_sync() && *link.addr.lock() == *addr)
        })
    }

    /// The in-sync set as the coordinator's record last held it.
    pub fn recorded_in_sync(&self) -> Vec<String> {
        self.recorded_in_sync.lock().clone()
    }

    /// Notes the in-sync set the coordinator's record now holds.
    pub fn set_recorded_in_sync(&self, in_sync: Vec<String>) {
        *self.recorded_in_sync.lock() = in_sync;
    }

    /// Held while the recorded in-sync set changes.
    pub fn record_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.record_lock.lock()
    }

    /// Whether replica `addr`'s link is connected or counts in sync (its
    /// node answers this primary, whatever the coordinator says).
    pub fn reaches(&self, addr: &str) -> bool {
        self.links.iter().any(|link| {
            link.addr() == addr && {
                let state = link.state.lock();
                state.connected || state.in_sync
            }
        })
    }

    /// Stops taking writes without stopping the senders (a hand-off waits
    /// for a replica to catch up). False if it took none already (fenced).
    pub fn pause_writes(&self, reason: &str) -> bool {
        let mut fenced = self.fenced.lock();
        if fenced.is_some() {
            return false;
        }
        *fenced = Some(reason.to_owned());
        self.paused.store(true, Ordering::Release);
        drop(fenced);
        self.changed.notify_all();
        true
    }

    /// Takes writes again after a hand-off that did not happen.
    pub fn resume_writes(&self) {
        let mut fenced = self.fenced.lock();
        if self.paused.swap(false, Ordering::AcqRel) && self.successor.lock().is_none() {
            *fenced = None;
        }
        drop(fenced);
        self.changed.notify_all();
    }

    /// This primary may no longer lead: fenced, its writers sent to
    /// `successor` if known.
    pub fn depose(&self, reason: String, successor: Option<String>) {
        if let Some(successor) = successor {
            *self.successor.lock() = Some(successor);
        }
        self.paused.store(false, Ordering::Release);
        self.fence(reason);
    }

    /// Points the link of replica `lost` (out of sync) at `replacement`
    /// instead: its sender's next attempt reaches the new node, which holds
    /// an empty copy of unknown position, and rebuilds it by digests.
    /// Returns whether such a link was found.
    pub fn retarget(&self, lost: &str, replacement: &str) -> bool {
        for link in &self.links {
            if link.addr() != lost {
                continue;
            }
            let mut state = link.state.lock();
            if state.in_sync {
                return false;
            }
            *link.addr.lock() = replacement.to_owned();
            state.acked = 0;
            state.acked_bytes = 0;
            state.sent = 0;
            state.waiting_since = None;
            state.message = format!("replacing {lost}: not reached yet");
            drop(state);
            link.live.lock().take();
            link.pending.lock().clear();
            link.wake.notify_all();
            self.changed.notify_all();
            return true;
        }
        false
    }

    /// Waits until an in-sync replica has acknowledged `lsn`; returns the
    /// most advanced such replica.
    pub fn wait_caught_up(&self, lsn: u64, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut log = self.log.lock();
        loop {
            let best = self
                .links
                .iter()
                .filter_map(|link| {
                    let state = link.state.lock();
                    (state.in_sync && state.acked >= lsn).then(|| (state.acked, link.addr()))
                })
                .max();
            if let Some((_, addr)) = best {
                return Some(addr);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.changed.wait_until(
                &mut log,
                deadline.min(Instant::now() + Duration::from_millis(20)),
            );
        }
    }

    /// Starts one sender thread per replica.
    fn start(self: &Arc<Replication>, region: &Arc<Region>) -> Result<(), NodeError> {
        let mut threads = self.threads.lock();
        for link in &self.links {
            let replication = self.clone();
            let link = link.clone();
            let region = Arc::downgrade(region);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pagoda-replicate-{}", link.addr()))
                    .spawn(move || run_link(&replication, &link, &region))
                    .map_err(|e| NodeError::io("spawning a replication sender", e))?,
            );
        }
        Ok(())
    }

    /// Stops the senders (the region is deleted, fenced, or the node stops)
    /// and waits for them.
    pub fn stop(&self) {
        self.halt();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        let current = std::thread::current().id();
        for thread in threads {
            if thread.thread().id() != current {
                let _ = thread.join();
            }
        }
    }

    /// The replication mode.
    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// Why this primary takes no more writes, if it learned of a newer one.
    pub fn fenced(&self) -> Option<String> {
        self.fenced.lock().clone()
    }

    /// The error a write to a deposed primary gets: `NotPrimary` naming
    /// its successor if known (a client moves there), else unavailable.
    pub fn deposed(&self) -> NodeError {
        let reason = self.fenced().unwrap_or_default();
        match self.successor.lock().clone() {
            Some(primary) => NodeError::NotPrimary {
                region: self.name.clone(),
                primary,
            },
            None => NodeError::RegionUnavailable {
                name: self.name.clone(),
                reason: format!("this node no longer leads it: {reason}"),
            },
        }
    }

    fn fence(&self, reason: String) {
        tracing::warn!(region = %self.name, %reason, "primary fenced");
        let mut fenced = self.fenced.lock();
        if fenced.is_none() {
            *fenced = Some(reason);
        }
        drop(fenced);
        self.halt();
    }

    /// Tells the senders to stop and takes every link out of the live path,
    /// without waiting for them.
    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for link in &self.links {
            link.live.lock().take();
            link.wake.notify_all();
        }
        self.changed.notify_all();
    }

    /// In `async` mode, waits while an in-sync replica lags by more than
    /// the bound (dropping one that stays behind for the replica timeout).
    pub fn wait_for_room(&self) -> Result<(), NodeError> {
        if self.mode != ReplicationMode::Async {
            return Ok(());
        }
        let deadline = Instant::now() + self.settings.timeout;
        let mut log = self.log.lock();
        loop {
            let behind: Vec<&Arc<Link>> = self
                .links
                .iter()
                .filter(|link| {
                    let state = link.state.lock();
                    state.in_sync
                        && log.appended_bytes - state.acked_bytes
                            > self.settings.lag_bytes_max as u64
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                for link in behind {
                    link.drop_from_sync(
                        &self.name,
                        format!(
                            "lagged by more than {} bytes for {:?}",
                            self.settings.lag_bytes_max, self.settings.timeout
                        ),
                    );
                }
                return Ok(());
            }
            self.changed.wait_until(&mut log, deadline);
        }
    }

    /// Appends an applied (or numbered and refused) request to the retained
    /// log. Call with the region's write log slot still held, so entries go
    /// in LSN order.
    ///
    /// Each live link (a replica caught up) gets the entry at once, sent by
    /// this thread: no hand-off to a sender. In `sync` mode the calls are
    /// returned, for the connection to collect the answers before it
    /// answers the write; in `async` mode the sender collects them.
    pub fn append(
        &self,
        lsn: u64,
        writer_epoch: u64,
        kind: ReplicateKind,
        body: Vec<u8>,
    ) -> Vec<Direct> {
        let mut log = self.log.lock();
        let bytes = body.len() + 64;
        log.appended_bytes += bytes as u64;
        let end_bytes = log.appended_bytes;
        let body: Arc<[u8]> = body.into();
        log.entries.push_back(Entry {
            lsn,
            writer_epoch,
            kind,
            body: body.clone(),
            end_bytes,
            appended: Instant::now(),
        });
        log.bytes += bytes;
        log.last = lsn;
        while log.bytes > self.settings.retain_bytes && log.entries.len() > 1 {
            let dropped = log.entries.pop_front().expect("non-empty");
            log.bytes -= dropped.body.len() + 64;
        }
        let mut directs = Vec::new();
        for link in &self.links {
            let Some(client) = link.live.lock().clone() else {
                continue;
            };
            let request = Request::Replicate {
                uid: self.uid,
                primary_epoch: self.primary_epoch,
                writer_epoch,
                lsn,
                in_sync: link.in_sync(),
                kind,
                body: &body,
            };
            match client.send_request(&request, std::thread::current()) {
                Ok(call) => {
                    link.sent(lsn, body.len());
                    let direct = Direct {
                        link: link.clone(),
                        client,
                        lsn,
                        end_bytes,
                        call,
                    };
                    match self.mode {
                        ReplicationMode::Sync => directs.push(direct),
                        ReplicationMode::Async => {
                            link.pending.lock().push_back(direct);
                            link.wake.notify_all();
                        }
                    }
                }
                Err(error) => link.go_offline(self, format!("link failed: {error}")),
            }
        }
        drop(log);
        self.changed.notify_all();
        directs
    }

    /// Records a checkpoint this primary completed, for its replicas.
    pub fn checkpoint_taken(&self, number: u64, lsn: u64) {
        *self.covered.lock() = (number, lsn);
    }

    /// Whether every in-sync replica has acknowledged `lsn`.
    fn acked_by_all(&self, lsn: u64) -> bool {
        self.links.iter().all(|link| {
            let state = link.state.lock();
            !state.in_sync || state.acked >= lsn
        })
    }

    /// In `sync` mode, waits until every in-sync replica has acknowledged
    /// `lsn`. A replica that leaves an entry unanswered for the replica
    /// timeout is dropped from the in-sync set; a fenced primary fails the
    /// wait (the write was applied here but is not acknowledged).
    pub fn wait_acked(&self, lsn: u64) -> Result<(), NodeError> {
        let mut log = self.log.lock();
        loop {
            if self.fenced().is_some() {
                // Applied here, but this node no longer leads: the write is
                // not acknowledged, and its writer sends it to the new
                // primary (with its number: applied there at most once).
                return Err(self.deposed());
            }
            if self.acked_by_all(lsn) {
                return Ok(());
            }
            let now = Instant::now();
            for link in &self.links {
                let overdue = {
                    let state = link.state.lock();
                    state.in_sync
                        && state.acked < lsn
                        && state
                            .waiting_since
                            .is_some_and(|since| now - since > self.settings.timeout)
                };
                if overdue {
                    link.drop_from_sync(
                        &self.name,
                        format!(
                            "left a write unacknowledged for more than {:?}",
                            self.settings.timeout
                        ),
                    );
                }
            }
            self.changed.wait_for(
                &mut log,
                Duration::from_millis(10).min(self.settings.timeout),
            );
        }
    }

    /// The replicas as this primary sees them.
    fn replica_infos(&self) -> Vec<ReplicaInfo> {
        let log = self.log.lock();
        let now = Instant::now();
        self.links
            .iter()
            .map(|link| {
                let state = link.state.lock();
                let oldest_unacked = log.entries.iter().find(|entry| entry.lsn > state.acked);
                ReplicaInfo {
                    addr: link.addr(),
                    acked: state.acked,
                    in_sync: state.in_sync,
                    connected: state.connected,
                    lag_bytes: log.appended_bytes.saturating_sub(state.acked_bytes),
                    lag_ms: oldest_unacked
                        .map_or(0, |entry| (now - entry.appended).as_millis() as u64),
                    sent_bytes: state.sent_bytes,
                    rebuilt_bytes: state.rebuilt_bytes,
                    rebuilds: state.rebuilds,
                    message: state.message.clone(),
                }
            })
            .collect()
    }
}

impl Link {
    /// The replica's address.
    pub fn addr(&self) -> String {
        self.addr.lock().clone()
    }

    /// Records an entry sent.
    fn sent(&self, lsn: u64, bytes: usize) {
        let mut state = self.state.lock();
        state.sent = state.sent.max(lsn);
        state.sent_bytes += bytes as u64;
        if state.waiting_since.is_none() {
            state.waiting_since = Some(Instant::now());
        }
    }

    /// Takes the link out of the live path and the in-sync set; its sender
    /// reconnects and catches the replica up.
    fn go_offline(&self, replication: &Replication, why: String) {
        self.live.lock().take();
        // Answers still owed on the old connection will not come; the
        // sender finds the replica's position by a probe instead.
        self.pending.lock().clear();
        self.drop_from_sync(&replication.name, why);
        replication.changed.notify_all();
        self.wake.notify_all();
    }

    /// Whether it counts for `sync` acknowledgements. (Lock order: the
    /// retained log, then a link's state; never the other way.)
    fn in_sync(&self) -> bool {
        self.state.lock().in_sync
    }

    fn drop_from_sync(&self, region: &str, why: String) {
        let mut state = self.state.lock();
        if state.in_sync {
            tracing::warn!(region, replica = %self.addr(), reason = %why, "replica dropped from the in-sync set");
        }
        state.in_sync = false;
        state.message = why;
    }
}

/// What a sender learned from its replica's answer.
enum Answer {
    /// Applied through this LSN.
    Applied(u64),
    /// The replica's log position is unknown: rebuild it.
    Unknown,
}

fn answer_of(reply: Result<pagoda::Reply, pagoda::ClientError>) -> Result<Answer, SendError> {
    let reply = reply.map_err(SendError::Link)?;
    match reply.decode() {
        Ok(Response::Mark { mark }) if mark == POSITION_UNKNOWN => Ok(Answer::Unknown),
        Ok(Response::Mark { mark }) => Ok(Answer::Applied(mark)),
        Ok(other) => Err(SendError::Refused(format!(
            "unexpected reply {:?}",
            other.opcode()
        ))),
        Err(error) => match error.code() {
            Some(ErrorCode::StaleEpoch) => Err(SendError::Deposed(error.to_string())),
            Some(ErrorCode::LogGap) => Err(SendError::Behind),
            Some(_) => Err(SendError::Refused(error.to_string())),
            None => Err(SendError::Link(error)),
        },
    }
}

enum SendError {
    /// The connection failed.
    Link(pagoda::ClientError),
    /// The replica has seen a newer primary.
    Deposed(String),
    /// The replica is behind what was sent (a gap): probe again.
    Behind,
    /// The replica refused an entry.
    Refused(String),
}

/// The sender of one replica: connects, probes, catches the replica up
/// (from the retained log, or by digests), then streams new entries.
fn run_link(replication: &Arc<Replication>, link: &Arc<Link>, region: &Weak<Region>) {
    let mut pause = Duration::from_millis(50);
    while !replication.stop.load(Ordering::SeqCst) {
        let outcome = serve_link(replication, link, region);
        {
            let mut state = link.state.lock();
            state.connected = false;
            state.waiting_since = None;
            if state.in_sync {
                tracing::warn!(region = %replication.name, replica = %link.addr(), "replica dropped from the in-sync set: link lost");
            }
            state.in_sync = false;
            if let Err(message) = &outcome {
                state.message = message.clone();
            }
        }
        replication.changed.notify_all();
        if replication.stop.load(Ordering::SeqCst) {
            return;
        }
        // Wait before the next attempt, waking for a stop.
        let mut log = replication.log.lock();
        replication.changed.wait_for(&mut log, pause);
        pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
    }
}

fn serve_link(
    replication: &Arc<Replication>,
    link: &Arc<Link>,
    region: &Weak<Region>,
) -> Result<(), String> {
    let options = ClientOptions {
        client_name: format!("primary of {}", replication.name),
        // A reply not back within the replica timeout takes the replica
        // out of the in-sync set.
        timeout: replication.settings.timeout.max(Duration::from_millis(200)),
        // Waiting threads do not spin: on a small machine the threads with
        // the work (the replica's, the sender) need the cores.
        spin: Duration::ZERO,
        ..replication.peer_options.clone()
    };
    let client = Arc::new(
        Client::connect(link.addr().as_str(), options).map_err(|e| format!("connecting: {e}"))?,
    );
    link.state.lock().connected = true;
    loop {
        let in_sync = link.in_sync();
        let applied = match probe(replication, &client, in_sync) {
            Ok(Answer::Applied(applied)) => Some(applied),
            Ok(Answer::Unknown) => None,
            Err(error) => return Err(handle_send_error(replication, error)),
        };
        let start = {
            let log = replication.log.lock();
            let first = log.entries.front().map_or(log.last + 1, |entry| entry.lsn);
            match applied {
                Some(applied) if applied > log.last => {
                    // The replica is ahead of this primary: it applied
                    // writes this primary never had. Only a rebuild makes
                    // it a copy again.
                    None
                }
                Some(applied) if applied + 1 >= first => Some(applied + 1),
                _ => None,
            }
        };
        let cursor = match start {
            Some(cursor) => cursor,
            None => {
                let region = region.upgrade().ok_or("the region was deleted")?;
                link.state.lock().message = "rebuilding by segment digests".into();
                match rebuild(replication, link, &client, &region) {
                    Ok(position) => position + 1,
                    Err(error) => return Err(handle_send_error(replication, error)),
                }
            }
        };
        match stream(replication, link, &client, cursor) {
            Ok(()) => return Ok(()),
            Err(SendError::Behind) => continue,
            Err(error) => return Err(handle_send_error(replication, error)),
        }
    }
}

fn handle_send_error(replication: &Replication, error: SendError) -> String {
    match error {
        SendError::Link(error) => format!("link failed: {error}"),
        SendError::Deposed(message) => {
            replication.fence(format!("a replica has seen a newer primary: {message}"));
            message
        }
        SendError::Behind => "replica behind".into(),
        SendError::Refused(message) => format!("replica refused an entry: {message}"),
    }
}

fn probe(replication: &Replication, client: &Client, in_sync: bool) -> Result<Answer, SendError> {
    let (checkpoint, checkpoint_lsn) = *replication.covered.lock();
    let mut body = checkpoint.to_le_bytes().to_vec();
    body.extend_from_slice(&checkpoint_lsn.to_le_bytes());
    body.extend_from_slice(replication.self_addr.as_bytes());
    let request = Request::Replicate {
        uid: replication.uid,
        primary_epoch: replication.primary_epoch,
        writer_epoch: 0,
        lsn: replication.epoch_start,
        in_sync,
        kind: ReplicateKind::Probe,
        body: &body,
    };
    answer_of(client.request(&request))
}

/// While a link is live: collects `async` answers, probes when idle (the
/// heartbeat), and returns when the link leaves the live path (a writer's
/// thread saw it fail), for the sender to catch the replica up again.
fn live(replication: &Replication, link: &Link, client: &Arc<Client>) -> Result<(), SendError> {
    let mut last_heard = Instant::now();
    let leave = |link: &Link| {
        link.live.lock().take();
        link.pending.lock().clear();
    };
    loop {
        if replication.stop.load(Ordering::SeqCst) {
            leave(link);
            return Ok(());
        }
        if link.live.lock().is_none() {
            return Err(SendError::Behind);
        }
        let next = {
            let mut pending = link.pending.lock();
            if pending.is_empty() {
                link.wake.wait_for(&mut pending, HEARTBEAT);
            }
            pending.pop_front()
        };
        if let Some(direct) = next {
            direct.collect(replication);
            last_heard = Instant::now();
            continue;
        }
        if last_heard.elapsed() >= HEARTBEAT && link.pending.lock().is_empty() {
            let in_sync = link.in_sync();
            match probe(replication, client, in_sync) {
                Ok(Answer::Applied(applied)) => {
                    last_heard = Instant::now();
                    let log = replication.log.lock();
                    let end_bytes = log
                        .entries
                        .iter()
                        .find(|entry| entry.lsn == applied)
                        .map_or(0, |entry| entry.end_bytes);
                    drop(log);
                    acknowledged(replication, link, applied, end_bytes);
                }
                Ok(Answer::Unknown) => {
                    leave(link);
                    return Err(SendError::Behind);
                }
                Err(error) => {
                    leave(link);
                    return Err(error);
                }
            }
        }
    }
}

/// Streams entries from `cursor` on, pipelined, until the replica has them
/// all (then the link goes live), or until stopped or failed.
fn stream(
    replication: &Replication,
    link: &Link,
    client: &Arc<Client>,
    mut cursor: u64,
) -> Result<(), SendError> {
    let waiter = std::thread::current();
    let mut outstanding: VecDeque<(u64, u64, PendingCall)> = VecDeque::new();
    let mut last_heard = Instant::now();
    loop {
        if replication.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Send what the window allows.
        let mut batch = Vec::new();
        {
            let mut log = replication.log.lock();
            if outstanding.is_empty() && log.last < cursor && link.in_sync() {
                // Caught up, every entry answered: from here on the
                // writers' threads send new entries themselves (under this
                // lock, so none slips between).
                *link.live.lock() = Some(client.clone());
                drop(log);
                return live(replication, link, client);
            }
            if outstanding.is_empty() && log.last < cursor {
                replication.changed.wait_for(&mut log, HEARTBEAT);
            }
            let first = log.entries.front().map_or(log.last + 1, |entry| entry.lsn);
            if cursor < first && cursor <= log.last {
                // Dropped from the retained log before it was sent.
                return Err(SendError::Behind);
            }
            for entry in log.entries.iter() {
                if outstanding.len() + batch.len() >= WINDOW {
                    break;
                }
                if entry.lsn >= cursor {
                    batch.push(entry.clone());
                }
            }
        }
        let in_sync = link.in_sync();
        for entry in batch {
            let request = Request::Replicate {
                uid: replication.uid,
                primary_epoch: replication.primary_epoch,
                writer_epoch: entry.writer_epoch,
                lsn: entry.lsn,
                in_sync,
                kind: entry.kind,
                body: &entry.body,
            };
            let call = client
                .send_request(&request, waiter.clone())
                .map_err(SendError::Link)?;
            cursor = entry.lsn + 1;
            link.sent(entry.lsn, entry.body.len());
            outstanding.push_back((entry.lsn, entry.end_bytes, call));
        }
        if let Some((lsn, end_bytes, call)) = outstanding.pop_front() {
            match answer_of(client.wait_reply(&call))? {
                Answer::Applied(applied) if applied >= lsn => {
                    last_heard = Instant::now();
                    acknowledged(replication, link, lsn, end_bytes);
                }
                Answer::Applied(_) | Answer::Unknown => return Err(SendError::Behind),
            }
        } else if last_heard.elapsed() >= HEARTBEAT {
            // Idle: a heartbeat, so the replica knows the primary lives.
            let in_sync = link.in_sync();
            match probe(replication, client, in_sync)? {
                Answer::Applied(applied) if applied + 1 >= cursor => {
                    last_heard = Instant::now();
                    let log = replication.log.lock();
                    if applied >= log.last {
                        let end_bytes = log.appended_bytes;
                        drop(log);
                        acknowledged(replication, link, applied, end_bytes);
                    }
                }
                _ => return Err(SendError::Behind),
            }
        }
    }
}

/// Records an acknowledgement; a replica that has caught up with the whole
/// log counts for `sync` acknowledgements again.
fn acknowledged(replication: &Replication, link: &Link, lsn: u64, end_bytes: u64) {
    // The retained log's lock is held until the link counts in sync, so
    // that no entry is appended (and answered without this replica)
    // between reading the last LSN and counting the replica in sync.
    let log = replication.log.lock();
    let last = log.last;
    let mut state = link.state.lock();
    state.acked = state.acked.max(lsn);
    state.acked_bytes = state.acked_bytes.max(end_bytes);
    // Progress: the wait for what is still unanswered starts again.
    state.waiting_since = (state.acked < state.sent).then(Instant::now);
    if !state.in_sync && state.acked >= last {
        tracing::info!(region = %replication.name, replica = %link.addr(), lsn, "replica in sync");
        state.in_sync = true;
        state.message.clear();
    }
    drop(state);
    replication.changed.notify_all();
}

/// Brings a replica whose log position is unknown (or older than the
/// retained log) back to a copy: compares segment digests and sends only
/// the segments that differ, then moves the replica's log to the position
/// the copy started at; the retained log replays what came after. Returns
/// that position.
fn rebuild(
    replication: &Replication,
    link: &Link,
    client: &Client,
    region: &Region,
) -> Result<u64, SendError> {
    let began = Instant::now();
    // Every write at or below `position` is in the region; later ones are
    // in the retained log, from which the stream replays them.
    let position = region.log().applied();
    let theirs = client
        .checksum(&replication.name, true)
        .map_err(|error| match error.code() {
            Some(_) => SendError::Refused(format!("listing its segment digests: {error}")),
            None => SendError::Link(error),
        })?;
    if theirs.segment_bytes != SEGMENT_BYTES
        || theirs.segment_count != region.segment_count() as u64
    {
        return Err(SendError::Refused(format!(
            "its copy has {} segments of {} bytes, this one {} of {}",
            theirs.segment_count,
            theirs.segment_bytes,
            region.segment_count(),
            SEGMENT_BYTES
        )));
    }
    let waiter = std::thread::current();
    let mut outstanding = VecDeque::new();
    let (mut segments, mut bytes) = (0u64, 0u64);
    for number in 0..region.segment_count() {
        if replication.stop.load(Ordering::SeqCst) {
            return Err(SendError::Refused("stopped".into()));
        }
        let digest = region
            .segment_digest(number as u64)
            .map_err(|error| SendError::Refused(error.to_string()))?;
        if digest == theirs.segments[number] {
            continue;
        }
        let mut body = (number as u64).to_le_bytes().to_vec();
        region
            .copy_segment(number, &mut body)
            .map_err(|error| SendError::Refused(error.to_string()))?;
        segments += 1;
        bytes += body.len() as u64;
        link.state.lock().rebuilt_bytes += body.len() as u64;
        let request = Request::Replicate {
            uid: replication.uid,
            primary_epoch: replication.primary_epoch,
            writer_epoch: 0,
            lsn: 0,
            in_sync: false,
            kind: ReplicateKind::Segment,
            body: &body,
        };
        outstanding.push_back(
            client
                .send_request(&request, waiter.clone())
                .map_err(SendError::Link)?,
        );
        if outstanding.len() >= WINDOW / 8 {
            let call = outstanding.pop_front().expect("non-empty");
            answer_of(client.wait_reply(&call))?;
        }
    }
    for call in outstanding {
        answer_of(client.wait_reply(&call))?;
    }
    // The retained log must still hold what follows the copy's start.
    {
        let log = replication.log.lock();
        let first = log.entries.front().map_or(log.last + 1, |entry| entry.lsn);
        if position + 1 < first {
            return Err(SendError::Behind);
        }
    }
    let request = Request::Replicate {
        uid: replication.uid,
        primary_epoch: replication.primary_epoch,
        writer_epoch: region.log().writer_epoch(),
        lsn: position,
        in_sync: false,
        kind: ReplicateKind::Reset,
        body: &[],
    };
    answer_of(client.request(&request))?;
    link.state.lock().rebuilds += 1;
    tracing::info!(
        region = %replication.name,
        segments,
        bytes,
        position,
        ms = began.elapsed().as_millis() as u64,
        "replica rebuilt by segment digests"
    );
    Ok(position)
}

// ---------------------------------------------------------------------------
// Creating, promoting, describing.

/// The options a node connects to its peers with.
pub(crate) fn peer_options(shared: &Shared, purpose: String) -> ClientOptions {
    ClientOptions {
        token: shared.config.token.clone(),
        credential: shared.config.peer_credential.clone(),
        timeout: Duration::from_secs(30),
        client_name: purpose,
        tls: shared.config.peer_tls.clone(),
        // The node retries (or fails) on its own terms.
        reconnect_for: Duration::ZERO,
        ..ClientOptions::default()
    }
}

fn settings(shared: &Shared) -> Settings {
    Settings {
        timeout: shared.config.replica_timeout,
        retain_bytes: shared.config.replication_log_bytes,
        lag_bytes_max: shared.config.replication_lag_bytes,
    }
}

/// Creates a region as primary with replicas on `replicas`: the region
/// here, then a replica on each node; if one fails, every copy made is
/// deleted again and the error names the node.
pub(crate) fn create(
    shared: &Arc<Shared>,
    name: &str,
    size: u64,
    page_size: u32,
    replicas: &[&str],
    mode: ReplicationMode,
) -> Result<Arc<Region>, NodeError> {
    let mut addresses: Vec<String> = Vec::new();
    for &replica in replicas {
        // The cluster's live nodes are peers; other addresses must be
        // allowed by --peer (or be on this host's loopback).
        if !shared.membership.is_live_node(replica) {
            crate::recovery::check_peer(&shared.config.peers, replica)?;
        }
        let own = shared.local_addr.to_string();
        if replica == own || addresses.iter().any(|a| a == replica) {
            return Err(NodeError::InvalidArgument(format!(
                "replica {replica:?} is named twice or is this node: each copy needs a node of \
                 its own"
            )));
        }
        addresses.push(replica.to_owned());
    }
    let region = shared.catalog.create_region(
        name,
        size,
        page_size,
        crate::catalog::new_uid(),
        pagoda_wire::RegionState::Active,
    )?;
    let primary_epoch = 1;
    if let Err(error) =
        crate::cluster::region_created(shared, &region, &addresses, Some(mode), primary_epoch)
    {
        let _ = shared.catalog.delete(name);
        return Err(error);
    }
    let mut made = Vec::new();
    for address in &addresses {
        let result = Client::connect(
            address.as_str(),
            peer_options(shared, format!("primary of {name}")),
        )
        .and_then(|client| {
            let reply = client.request(&Request::CreateReplica {
                name,
                size,
                page_size,
                uid: region.uid(),
                primary_epoch,
                writer_epoch: region.log().writer_epoch(),
                lsn: region.log().applied(),
                mode,
                primary: &shared.local_addr.to_string(),
                replicas: addresses.iter().map(String::as_str).collect(),
            })?;
            reply.decode().map(|_| client)
        });
        match result {
            Ok(client) => made.push(client),
            Err(error) => {
                for client in made {
                    let _ = client.delete_region(name);
                }
                let _ = shared.catalog.delete(name);
                crate::cluster::region_deleted(shared, name);
                return Err(NodeError::Peer {
                    context: format!("creating the replica of {name:?} on {address}"),
                    error,
                });
            }
        }
    }
    let replication = Arc::new(Replication::new(
        &region,
        mode,
        settings(shared),
        primary_epoch,
        &addresses,
        shared.local_addr.to_string(),
        peer_options(shared, format!("primary of {name}")),
        true,
    ));
    *region.role().lock() = Role::Primary(replication.clone());
    shared.catalog.save_states()?;
    replication.start(&region)?;
    tracing::info!(name, replicas = ?addresses, mode = mode.name(), "replicated region created");
    Ok(region)
}

/// Makes an empty replica of a region this node leads on node `addr`, to
/// replace a lost one: created with an unknown log position, so that the
/// sender rebuilds it by digests once its link points there
/// (`Replication::retarget`). A copy already there (an earlier attempt) is
/// accepted.
pub(crate) fn create_replacement(
    shared: &Shared,
    region: &Region,
    replication: &Replication,
    addr: &str,
    replicas: &[String],
) -> Result<(), NodeError> {
    let name = &region.info().name;
    // Short: the agent's tick waits for it.
    let options = ClientOptions {
        timeout: Duration::from_secs(2),
        reconnect_for: Duration::ZERO,
        ..peer_options(shared, format!("primary of {name}"))
    };
    let reply = Client::connect(addr, options).and_then(|client| {
        client
            .request(&Request::CreateReplica {
                name,
                size: region.info().size,
                page_size: region.info().page_size,
                uid: region.uid(),
                primary_epoch: replication.primary_epoch,
                writer_epoch: region.log().writer_epoch(),
                lsn: POSITION_UNKNOWN,
                mode: replication.mode,
                primary: &shared.local_addr.to_string(),
                replicas: replicas.iter().map(String::as_str).collect(),
            })?
            .decode()
            .map(|_| ())
    });
    match reply {
        Ok(()) => Ok(()),
        Err(error) if error.code() == Some(ErrorCode::RegionExists) => Ok(()),
        Err(error) => Err(NodeError::Peer {
            context: format!("creating a replica of {name:?} on {addr}"),
            error,
        }),
    }
}

/// Deletes a deleted primary's replicas; returns those it could not
/// delete, with why.
pub(crate) fn delete_replicas(
    shared: &Shared,
    replication: &Replication,
) -> Vec<(String, pagoda::ClientError)> {
    let mut failed = Vec::new();
    for link in &replication.links {
        let options = peer_options(shared, format!("primary of {}", replication.name));
        let deleted = Client::connect(link.addr().as_str(), options)
            .and_then(|client| client.delete_region(&replication.name));
        match deleted {
            Ok(()) => {}
            Err(error) if error.code() == Some(ErrorCode::RegionNotFound) => {}
            Err(error) => {
                tracing::warn!(region = %replication.name, replica = %link.addr(), %error, "could not delete a replica");
                failed.push((link.addr(), error));
            }
        }
    }
    failed
}

/// Creates a replica of a region here (asked by its primary).
#[allow(clippy::too_many_arguments)]
pub(crate) fn create_replica(
    shared: &Shared,
    name: &str,
    size: u64,
    page_size: u32,
    uid: u64,
    primary_epoch: u64,
    writer_epoch: u64,
    lsn: u64,
    mode: ReplicationMode,
    primary: &str,
    replicas: &[&str],
) -> Result<(), NodeError> {
    if uid == 0 || primary_epoch == 0 {
        return Err(NodeError::InvalidArgument(
            "a replica needs the region's uid and a primary epoch".into(),
        ));
    }
    let region = shared.catalog.create_region(
        name,
        size,
        page_size,
        uid,
        pagoda_wire::RegionState::Active,
    )?;
    region.log().raise_writer_epoch(writer_epoch);
    // A replica made to replace a lost one (`POSITION_UNKNOWN`) is empty
    // while its region is not: its primary rebuilds it by digests.
    let needs_rebuild = lsn == POSITION_UNKNOWN;
    region.log().reset(if needs_rebuild { 0 } else { lsn });
    *region.role().lock() = Role::Replica(Upstream {
        primary: primary.to_owned(),
        primary_epoch,
        mode,
        replicas: replicas.iter().map(|r| (*r).to_owned()).collect(),
        in_sync: false,
        last_message: None,
        connection: 0,
        closed_at: None,
        needs_rebuild,
        covered: (0, 0),
    });
    if let Err(error) = shared.catalog.save_states() {
        let _ = shared.catalog.delete(name);
        return Err(error);
    }
    tracing::info!(name, primary, primary_epoch, "replica created");
    Ok(())
}

/// Why a replica may not be promoted without `--force`, if it may not.
fn not_promotable(upstream: &Upstream, timeout: Duration) -> Option<String> {
    if upstream.needs_rebuild {
        return Some(
            "its log position is unknown (it restarted, or diverged) and no primary has rebuilt \
             it since"
                .into(),
        );
    }
    let Some(last) = upstream.last_message else {
        return Some("it has never heard from a primary".into());
    };
    if !upstream.in_sync {
        return Some("the primary's last message counted it out of sync".into());
    }
    let quiet = match upstream.closed_at {
        Some(closed) => closed.saturating_duration_since(last),
        None => last.elapsed(),
    };
    if quiet > timeout / 2 {
        return Some(format!(
            "it had heard nothing from the primary for {} ms before the link ended (more than \
             half the replica timeout of {} ms): the primary may have dropped it from the \
             in-sync set and acknowledged writes it lacks",
            quiet.as_millis(),
            timeout.as_millis()
        ));
    }
    None
}

/// Whether a region's copy here is a replica that the primary's last
/// message counted in sync and that has been a copy of the primary's log
/// ever since (not restarted, not diverged): the only kind of copy that may
/// be promoted automatically.
pub(crate) fn counted_in_sync(region: &Region) -> bool {
    matches!(&*region.role().lock(), Role::Replica(upstream) if upstream.in_sync && !upstream.needs_rebuild)
}

/// What the coordinator decided of a promotion: the primary epoch, the
/// replica set and the in-sync set its record now holds.
pub(crate) struct Recorded<'a> {
    pub(crate) primary_epoch: u64,
    pub(crate) replicas: &'a [String],
    pub(crate) in_sync: &'a [String],
}

/// Makes this node's copy of a region its primary at a new primary epoch.
pub(crate) fn promote(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    force: bool,
) -> Result<(), NodeError> {
    promote_with(shared, region, force, None)
}

/// Makes this replica the primary the coordinator's record names (it chose
/// this replica among the in-sync ones: no further check).
pub(crate) fn promote_to(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    primary_epoch: u64,
    replicas: &[String],
    in_sync: &[String],
) -> Result<(), NodeError> {
    promote_with(
        shared,
        region,
        false,
        Some(Recorded {
            primary_epoch,
            replicas,
            in_sync,
        }),
    )
}

fn promote_with(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    force: bool,
    recorded: Option<Recorded<'_>>,
) -> Result<(), NodeError> {
    let name = region.info().name.clone();
    let mut role = region.role().lock();
    let (old_epoch, mode, members, old_primary) = match &*role {
        Role::Replica(upstream) if recorded.is_some() => {
            if upstream.needs_rebuild || !upstream.in_sync {
                return Err(NodeError::InvalidArgument(format!(
                    "region {name:?}: this copy cannot lead (its log position is unknown, or \
                     the primary's last message did not count it in sync)"
                )));
            }
            (
                upstream.primary_epoch,
                upstream.mode,
                upstream.replicas.clone(),
                upstream.primary.clone(),
            )
        }
        Role::Replica(upstream) => {
            if let Some(why) = not_promotable(upstream, shared.config.replica_timeout) {
                if !force {
                    return Err(NodeError::InvalidArgument(format!(
                        "region {name:?}: this replica is not known to be in sync: {why}. \
                         Promote a replica that is, or pass --force to promote this one and \
                         lose any write the old primary acknowledged after LSN {}",
                        region.log().applied()
                    )));
                }
                tracing::warn!(name, reason = %why, "forced promotion of a replica not known to be in sync");
            }
            (
                upstream.primary_epoch,
                upstream.mode,
                upstream.replicas.clone(),
                upstream.primary.clone(),
            )
        }
        Role::Fenced(fence) => {
            if !force {
                return Err(NodeError::InvalidArgument(format!(
                    "region {name:?} is fenced here ({}); promote it only with --force",
                    fence.reason
                )));
            }
            // Its log position did not survive the restart that fenced
            // it: writers from before must open the region again rather
            // than resume numbering it no longer knows.
            region
                .log()
                .raise_writer_epoch(region.log().writer_epoch() + 1);
            (
                fence.primary_epoch,
                fence.mode,
                fence.replicas.clone(),
                String::new(),
            )
        }
        Role::Primary(_) => {
            return Err(NodeError::InvalidArgument(format!(
                "region {name:?} is the primary here already"
            )));
        }
        Role::Solo => {
            return Err(NodeError::InvalidArgument(format!(
                "region {name:?} is not replicated"
            )));
        }
    };
    let own = shared.local_addr.to_string();
    // The new replica set: every other member, the old primary included (it
    // is fenced when this primary reaches it).
    let mut replicas: Vec<String> = members.into_iter().filter(|m| *m != own).collect();
    if !old_primary.is_empty() && !replicas.contains(&old_primary) {
        replicas.push(old_primary);
    }
    let mut primary_epoch = old_epoch + 1;
    if let Some(recorded) = &recorded {
        if recorded.primary_epoch <= old_epoch {
            return Err(NodeError::InvalidArgument(format!(
                "region {name:?}: the coordinator's primary epoch {} is not above the {} this \
                 replica has seen",
                recorded.primary_epoch, old_epoch
            )));
        }
        primary_epoch = recorded.primary_epoch;
        replicas = recorded
            .replicas
            .iter()
            .filter(|m| **m != own)
            .cloned()
            .collect();
    }
    let replication = Arc::new(Replication::new(
        region,
        mode,
        settings(shared),
        primary_epoch,
        &replicas,
        own,
        peer_options(shared, format!("primary of {name}")),
        false,
    ));
    if let Some(recorded) = &recorded {
        replication.set_recorded_in_sync(recorded.in_sync.to_vec());
    }
    let previous = std::mem::replace(&mut *role, Role::Primary(replication.clone()));
    drop(role);
    if let Err(error) = shared.catalog.save_states() {
        *region.role().lock() = previous;
        return Err(error);
    }
    replication.start(region)?;
    tracing::info!(
        name,
        primary_epoch,
        lsn = region.log().applied(),
        "promoted to primary"
    );
    Ok(())
}

/// The replicas of a region this node is the primary of (none otherwise),
/// for the metrics endpoint.
pub(crate) fn replica_infos(region: &Region) -> Vec<pagoda_wire::message::ReplicaInfo> {
    match &*region.role().lock() {
        Role::Primary(replication) => replication.replica_infos(),
        _ => Vec::new(),
    }
}

/// A region's replication as this node sees it.
pub(crate) fn status(shared: &Shared, region: &Region) -> ReplicaSet {
    let own = shared.local_addr.to_string();
    let lsn = region.log().applied();
    let writer_epoch = region.log().writer_epoch();
    // This node's own newest checkpoint, and the LSN it holds.
    let own_checkpoint = region
        .baseline()
        .map_or((0, 0), |manifest| (manifest.number, manifest.lsn));
    match &*region.role().lock() {
        Role::Solo => ReplicaSet {
            role: ReplicaRole::Solo,
            mode: ReplicationMode::Sync,
            primary: own,
            primary_epoch: 0,
            writer_epoch,
            lsn,
            checkpoint: own_checkpoint.0,
            checkpoint_lsn: own_checkpoint.1,
            in_sync: true,
            message: String::new(),
            replicas: Vec::new(),
        },
        Role::Primary(replication) => ReplicaSet {
            role: ReplicaRole::Primary,
            mode: replication.mode,
            primary: own,
            primary_epoch: replication.primary_epoch,
            writer_epoch,
            lsn,
            checkpoint: own_checkpoint.0,
            checkpoint_lsn: own_checkpoint.1,
            in_sync: true,
            message: replication.fenced().unwrap_or_default(),
            replicas: replication.replica_infos(),
        },
        Role::Replica(upstream) => {
            let why = not_promotable(upstream, shared.config.replica_timeout);
            ReplicaSet {
                role: ReplicaRole::Replica,
                mode: upstream.mode,
                primary: upstream.primary.clone(),
                primary_epoch: upstream.primary_epoch,
                writer_epoch,
                lsn,
                checkpoint: upstream.covered.0,
                checkpoint_lsn: upstream.covered.1,
                in_sync: why.is_none(),
                message: why.unwrap_or_default(),
                replicas: Vec::new(),
            }
        }
        Role::Fenced(fence) => ReplicaSet {
            role: ReplicaRole::Fenced,
            mode: fence.mode,
            primary: String::new(),
            primary_epoch: fence.primary_epoch,
            writer_epoch,
            lsn,
            checkpoint: own_checkpoint.0,
            checkpoint_lsn: own_checkpoint.1,
            in_sync: false,
            message: fence.reason.clone(),
            replicas: Vec::new(),
        },
    }
}

// ---------------------------------------------------------------------------
// The replica's side.

/// What a `Replicate` request carries.
pub struct Incoming<'a> {
    /// The sender's primary epoch.
    pub primary_epoch: u64,
    /// The entry's writer epoch.
    pub writer_epoch: u64,
    /// The entry's LSN.
    pub lsn: u64,
    /// Whether the primary counts this replica in sync.
    pub in_sync: bool,
    /// The kind of entry.
    pub kind: ReplicateKind,
    /// Its body.
    pub body: &'a [u8],
    /// The connection it came on.
    pub connection: u64,
}

/// Applies a primary's entry (or answers its probe); returns the log
/// position to answer with.
pub(crate) fn receive(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    incoming: Incoming<'_>,
) -> Result<u64, NodeError> {
    let name = &region.info().name;
    accept_sender(shared, region, &incoming)?;
    let log = region.log();
    match incoming.kind {
        ReplicateKind::Probe => {
            let needs_rebuild = match &*region.role().lock() {
                Role::Replica(upstream) => upstream.needs_rebuild,
                _ => true,
            };
            return Ok(if needs_rebuild {
                POSITION_UNKNOWN
            } else {
                log.applied()
            });
        }
        ReplicateKind::Segment => {
            let Some((number, bytes)) = incoming.body.split_first_chunk::<8>() else {
                return Err(NodeError::InvalidArgument(
                    "a segment entry needs its number".into(),
                ));
            };
            region.restore_segment(u64::from_le_bytes(*number), bytes)?;
            return Ok(log.applied());
        }
        ReplicateKind::Reset => {
            log.raise_writer_epoch(incoming.writer_epoch);
            log.reset(incoming.lsn);
            if let Role::Replica(upstream) = &mut *region.role().lock() {
                upstream.needs_rebuild = false;
            }
            tracing::info!(
                name,
                lsn = incoming.lsn,
                "replica rebuilt; log position reset"
            );
            return Ok(log.applied());
        }
        ReplicateKind::Pages | ReplicateKind::Journal | ReplicateKind::Skip => {}
    }
    if incoming.writer_epoch < log.writer_epoch() {
        // Not a fencing of the primary (that is by primary epoch): this copy
        // has seen a newer writer than its primary's entry carries, so it is
        // not a copy of this primary's log. Refused: the primary counts it
        // out of sync and says why.
        return Err(NodeError::InvalidArgument(format!(
            "region {name:?}: this replica has seen writer epoch {}, newer than the entry's {}",
            log.writer_epoch(),
            incoming.writer_epoch
        )));
    }
    if incoming.writer_epoch > log.writer_epoch() {
        // A new writer took over at the primary: persisted here too before
        // its first write is applied, so a restart cannot forget it.
        log.raise_writer_epoch(incoming.writer_epoch);
        shared.catalog.save_states()?;
    }
    let slot = match log.order(name, incoming.writer_epoch, incoming.lsn)? {
        Order::Duplicate(_) => return Ok(log.applied()),
        Order::Apply(slot) => slot,
    };
    let result = match incoming.kind {
        ReplicateKind::Pages => match Request::decode(Opcode::WritePages as u8, incoming.body) {
            Ok(Request::WritePages { pages, data, .. }) => region.write_pages(pages, data),
            Ok(_) => unreachable!("decoded as WritePages"),
            Err(error) => Err(NodeError::InvalidArgument(format!("page entry: {error}"))),
        },
        ReplicateKind::Journal => {
            match Request::decode(Opcode::ApplyJournal as u8, incoming.body) {
                // Applied to RAM only: a replica's copy lives as long as its
                // RAM (a restarted replica is rebuilt), and only a primary
                // keeps a node journal, which its checkpoints release.
                Ok(Request::ApplyJournal { entries, .. }) => region
                    .prepare_bytes(&entries)
                    .and_then(|pinned| region.write_bytes(&entries, 0, pinned)),
                Ok(_) => unreachable!("decoded as ApplyJournal"),
                Err(error) => Err(NodeError::InvalidArgument(format!(
                    "journal entry: {error}"
                ))),
            }
        }
        _ => {
            // A number the primary used for a request it refused: the same
            // refusal is recorded here, for a retry after a failover.
            let (code, message) = skip_of(incoming.body);
            Err(NodeError::Recorded(code, message))
        }
    };
    let applied = Applied::of(&result);
    slot.record(applied);
    match (incoming.kind, result) {
        (ReplicateKind::Skip, _) | (_, Ok(())) => Ok(log.applied()),
        (_, Err(error)) => {
            // The primary applied what this replica could not (out of
            // memory here, say): this copy is no longer one.
            if let Role::Replica(upstream) = &mut *region.role().lock() {
                upstream.needs_rebuild = true;
            }
            Err(error)
        }
    }
}

/// The body of a `Skip` entry: the code and message of the refusal.
pub fn skip_body(error: &NodeError) -> Vec<u8> {
    let mut body = (error.code() as u16).to_le_bytes().to_vec();
    body.extend_from_slice(error.to_string().as_bytes());
    body
}

fn skip_of(body: &[u8]) -> (ErrorCode, String) {
    match body.split_first_chunk::<2>() {
        Some((code, message)) => (
            ErrorCode::from_u16(u16::from_le_bytes(*code)),
            String::from_utf8_lossy(message).into_owned(),
        ),
        None => (ErrorCode::Internal, "refused on the primary".into()),
    }
}

/// Checks the sender's primary epoch against the newest this node has
/// seen: older is refused; newer makes this node a replica of the sender
/// (a primary or fenced node steps down).
fn accept_sender(
    shared: &Arc<Shared>,
    region: &Arc<Region>,
    incoming: &Incoming<'_>,
) -> Result<(), NodeError> {
    let name = &region.info().name;
    let mut role = region.role().lock();
    let current = role.primary_epoch();
    if matches!(*role, Role::Solo) {
        return Err(NodeError::InvalidArgument(format!(
            "region {name:?} is not replicated on this node"
        )));
    }
    if incoming.primary_epoch < current {
        return Err(NodeError::StaleEpoch {
            region: name.clone(),
            what: "primary",
            epoch: incoming.primary_epoch,
            current,
        });
    }
    let newer = incoming.primary_epoch > current;
    let is_replica = matches!(*role, Role::Replica(_));
    if newer || !is_replica {
        if incoming.kind != ReplicateKind::Probe {
            // A new primary starts with a probe, which carries its address.
            return Err(NodeError::InvalidArgument(format!(
                "region {name:?}: the first message of primary epoch {} must be a probe",
                incoming.primary_epoch
            )));
        }
        if !is_replica && incoming.primary_epoch == current {
            return Err(NodeError::StaleEpoch {
                region: name.clone(),
                what: "primary",
                epoch: incoming.primary_epoch,
                current: current + 1,
            });
        }
        let primary = String::from_utf8_lossy(probe_address(incoming.body)).into_owned();
        let applied = region.log().applied();
        // Writes applied beyond where the new primary's epoch began came
        // from an older primary and may be missing there: diverged.
        let diverged = applied > incoming.lsn;
        let (mode, replicas, was_rebuilding) = match &*role {
            Role::Primary(replication) => {
                *replication.successor.lock() = Some(primary.clone());
                replication.fence(format!(
                    "{primary} leads at primary epoch {}",
                    incoming.primary_epoch
                ));
                (
                    replication.mode,
                    replication.links.iter().map(|l| l.addr()).collect(),
                    false,
                )
            }
            Role::Replica(upstream) => (
                upstream.mode,
                upstream.replicas.clone(),
                upstream.needs_rebuild,
            ),
            Role::Fenced(fence) => (fence.mode, fence.replicas.clone(), false),
            Role::Solo => unreachable!("refused above"),
        };
        let previous = std::mem::replace(
            &mut *role,
            Role::Replica(Upstream {
                primary: primary.clone(),
                primary_epoch: incoming.primary_epoch,
                mode,
                replicas,
                in_sync: false,
                last_message: None,
                connection: 0,
                closed_at: None,
                needs_rebuild: was_rebuilding || diverged || !is_replica,
                covered: (0, 0),
            }),
        );
        if let Role::Primary(replication) = previous {
            // Its senders stop on their own; joining one from here could
            // wait on this very request's connection.
            replication.halt();
        }
        drop(role);
        shared.catalog.save_states()?;
        tracing::info!(
            name,
            %primary,
            primary_epoch = incoming.primary_epoch,
            diverged,
            "following a new primary"
        );
        role = region.role().lock();
    }
    if let Role::Replica(upstream) = &mut *role {
        if incoming.kind == ReplicateKind::Probe
            && let Some((checkpoint, checkpoint_lsn)) = probe_checkpoint(incoming.body)
        {
            upstream.covered = (checkpoint, checkpoint_lsn);
        }
        upstream.in_sync = incoming.in_sync;
        upstream.last_message = Some(Instant::now());
        upstream.connection = incoming.connection;
        upstream.closed_at = None;
    }
    Ok(())
}

/// The checkpoint a probe's body names: number and LSN.
fn probe_checkpoint(body: &[u8]) -> Option<(u64, u64)> {
    let (number, rest) = body.split_first_chunk::<8>()?;
    let (lsn, _) = rest.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*number), u64::from_le_bytes(*lsn)))
}

/// The primary's address a probe's body carries after the checkpoint.
fn probe_address(body: &[u8]) -> &[u8] {
    body.get(16..).unwrap_or_default()
}

/// Records that connection `id` closed, for the replicas it fed: a replica
/// whose link ended soon after the primary's last message may be promoted;
/// one that had heard nothing for long before it ended may not.
pub(crate) fn connection_closed(shared: &Shared, id: u64) {
    for region in shared.catalog.regions() {
        if let Role::Replica(upstream) = &mut *region.role().lock()
            && upstream.connection == id
            && upstream.closed_at.is_none()
        {
            upstream.closed_at = Some(Instant::now());
        }
    }
}

/// Stops every primary's senders (the node stops).
pub(crate) fn stop_all(shared: &Shared) {
    for region in shared.catalog.regions() {
        let replication = match &*region.role().lock() {
            Role::Primary(replication) => Some(replication.clone()),
            _ => None,
        };
        if let Some(replication) = replication {
            replication.stop();
        }
    }
}

/// Restarts the senders of every primary (the node serves again after a
/// refused stop).
pub(crate) fn restart_all(shared: &Shared) {
    for region in shared.catalog.regions() {
        let replication = match &*region.role().lock() {
            Role::Primary(replication) => Some(replication.clone()),
            _ => None,
        };
        if let Some(replication) = replication
            && replication.fenced().is_none()
        {
            replication.stop.store(false, Ordering::SeqCst);
            if let Err(error) = replication.start(&region) {
                tracing::error!(%error, "could not restart replication");
            }
        }
    }
}

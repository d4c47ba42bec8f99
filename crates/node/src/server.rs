//! The node: its configuration, start and stop, and what each request does
//! (`serve_request`). Accepting and reading connections is `connection`'s
//! job; periodic checkpoints run on a thread of their own.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pagoda_wire::frame::FrameBuilder;
use pagoda_wire::limits::{PING_REPLY_BYTES_MAX, SEGMENT_BYTES};
use pagoda_wire::message::{DIRTY_RANGES_MAX, NodeStat};
use pagoda_wire::{Opcode, RegionStat, RegionState, Request, Response, Since};
use parking_lot::Mutex;

use crate::arena::Arena;
use crate::catalog::Catalog;
use crate::checkpoint::{self, CheckpointSettings, Manifest};
use crate::error::NodeError;
use crate::recovery::{self, RecoveryJob, RecoveryRequest};
use crate::region::{CheckpointMark, Region};
use crate::storage::{Storage, StorageConfig};
use pagoda_journal::{Journal, JournalOptions};

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The address to listen on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// RAM for pages, in bytes; regions may add up to more (thin provisioning).
    pub capacity_bytes: u64,
    /// Where the catalog lives.
    pub data_dir: PathBuf,
    /// The shared token clients must present; required on non-loopback
    /// addresses.
    pub token: Option<Vec<u8>>,
    /// How long a connection thread spins on non-blocking reads before it
    /// blocks.
    pub spin: Duration,
    /// Most connections served at once; further ones are refused.
    pub connections_max: usize,
    /// How long a new connection has to send its `Hello` before it is
    /// closed.
    pub handshake_timeout: Duration,
    /// Where checkpoints go; `None` disables checkpoints and recovery.
    pub storage: Option<StorageConfig>,
    /// Checkpoint every region with dirty pages this often; `None`: only
    /// when asked.
    pub checkpoint_interval: Option<Duration>,
    /// Checkpoints (manifests) kept per region.
    pub checkpoint_retain: usize,
    /// Target size of a checkpoint's data objects.
    pub checkpoint_object_bytes: usize,
}

impl NodeConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(listen: SocketAddr, capacity_bytes: u64, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            listen,
            capacity_bytes,
            data_dir,
            token: None,
            spin: Duration::from_micros(SPIN_US_DEFAULT),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS_DEFAULT),
            storage: None,
            checkpoint_interval: None,
            checkpoint_retain: CHECKPOINT_RETAIN_DEFAULT,
            checkpoint_object_bytes: checkpoint::OBJECT_BYTES_DEFAULT,
        }
    }
}

/// Default spin budget before a blocking read, in microseconds.
pub const SPIN_US_DEFAULT: u64 = 50;
/// Default number of checkpoints kept per region.
pub const CHECKPOINT_RETAIN_DEFAULT: usize = 2;
/// Default connection limit.
pub const CONNECTIONS_MAX_DEFAULT: usize = 512;
/// Default time a new connection has to authenticate before it is closed.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// How often the acceptor checks for shutdown while idle.
pub(crate) const ACCEPT_POLL_MS: i32 = 100;
/// How long shutdown lets connections finish the request in hand before it
/// closes their sockets outright (which also wakes a thread blocked writing to
/// a client that stopped reading).
const SHUTDOWN_GRACE_MS: u64 = 1000;

/// A served connection: a handle on its socket (to close it at shutdown) and
/// its thread.
pub(crate) struct ConnectionEntry {
    pub(crate) stream: TcpStream,
    pub(crate) thread: Option<JoinHandle<()>>,
}

pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) catalog: Catalog,
    arena: Arc<Arena>,
    pub(crate) storage: Option<Storage>,
    /// Each region's latest baseline, by region id.
    pub(crate) baselines: Mutex<HashMap<u64, Arc<Manifest>>>,
    /// Recoveries run on this node, by region name.
    recoveries: Mutex<HashMap<String, Arc<RecoveryJob>>>,
    /// Each region's journal of shipped transaction records, by region id.
    journals: Mutex<HashMap<u64, Arc<Journal>>>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) connections: Mutex<HashMap<u64, ConnectionEntry>>,
    pub(crate) connection_count: AtomicU32,
    pub(crate) requests: AtomicU64,
}

/// A running node. Dropping it shuts it down.
pub struct Node {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
}

impl Node {
    /// Opens the data dir, reserves the arena, binds and starts serving.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        if !config.listen.ip().is_loopback() && config.token.is_none() {
            return Err(NodeError::Config(format!(
                "refusing to listen on non-loopback address {} without a token (give --token-file)",
                config.listen
            )));
        }
        if let Some(token) = &config.token
            && (token.is_empty() || token.len() > pagoda_wire::limits::TOKEN_BYTES_MAX)
        {
            return Err(NodeError::Config(format!(
                "the token must be 1 to {} bytes",
                pagoda_wire::limits::TOKEN_BYTES_MAX
            )));
        }
        if config.handshake_timeout.is_zero() {
            return Err(NodeError::Config(
                "the handshake timeout must be positive".into(),
            ));
        }
        if config.connections_max == 0 {
            return Err(NodeError::Config(
                "connections_max must be at least 1".into(),
            ));
        }
        if config.checkpoint_retain == 0 {
            return Err(NodeError::Config(
                "checkpoint_retain must be at least 1".into(),
            ));
        }
        if config.checkpoint_interval.is_some_and(|i| i.is_zero()) {
            return Err(NodeError::Config(
                "the checkpoint interval must be positive".into(),
            ));
        }
        let arena = Arc::new(Arena::new(config.capacity_bytes, SEGMENT_BYTES)?);
        let catalog = Catalog::open(&config.data_dir, arena.clone())?;
        let storage = config.storage.as_ref().map(Storage::open).transpose()?;
        let baselines = match &storage {
            Some(storage) => reload(storage, &catalog),
            None => HashMap::new(),
        };
        let journals = replay_journals(&config.data_dir, &catalog);
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| NodeError::io(format!("binding {}", config.listen), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| NodeError::io("reading the bound address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| NodeError::io("configuring the listener", e))?;
        tracing::info!(
            %local_addr,
            capacity_bytes = config.capacity_bytes,
            regions = catalog.len(),
            data_dir = %config.data_dir.display(),
            storage = storage.as_ref().map_or("none", |s| s.description()),
            "node started"
        );
        let shared = Arc::new(Shared {
            config,
            catalog,
            arena,
            storage,
            baselines: Mutex::new(baselines),
            recoveries: Mutex::new(HashMap::new()),
            journals: Mutex::new(journals),
            shutting_down: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            connection_count: AtomicU32::new(0),
            requests: AtomicU64::new(0),
        });
        let acceptor_shared = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("pagoda-accept".into())
            .spawn(move || crate::connection::accept_loop(acceptor_shared, listener))
            .map_err(|e| NodeError::io("spawning the acceptor", e))?;
        let checkpointer = match shared.config.checkpoint_interval {
            Some(interval) if shared.storage.is_some() => {
                let checkpointer_shared = shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name("pagoda-checkpoint".into())
                        .spawn(move || checkpoint_loop(checkpointer_shared, interval))
                        .map_err(|e| NodeError::io("spawning the checkpointer", e))?,
                )
            }
            _ => None,
        };
        Ok(Node {
            shared,
            local_addr,
            acceptor: Some(acceptor),
            checkpointer,
        })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections currently open.
    pub fn connections(&self) -> u32 {
        self.shared.connection_count.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes every connection once its current request is
    /// answered, and waits for the threads to finish.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = acceptor.join();
        if let Some(checkpointer) = self.checkpointer.take() {
            let _ = checkpointer.join();
        }
        let connections: Vec<_> = self.shared.connections.lock().drain().collect();
        for (_, entry) in &connections {
            let _ = entry.stream.shutdown(Shutdown::Read);
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
        while std::time::Instant::now() < deadline
            && connections
                .iter()
                .any(|(_, entry)| entry.thread.as_ref().is_some_and(|t| !t.is_finished()))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (_, entry) in &connections {
            let _ = entry.stream.shutdown(Shutdown::Both);
        }
        for (_, entry) in connections {
            if let Some(thread) = entry.thread {
                let _ = thread.join();
            }
        }
        if self.shared.storage.is_some() {
            // No client is served any more: a last checkpoint of every region
            // with dirty pages makes a graceful stop lose nothing.
            checkpoint_dirty(&self.shared, None);
        }
        tracing::info!(local_addr = %self.local_addr, "node stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn serve_request(
    shared: &Arc<Shared>,
    request: Request<'_>,
    request_id: u64,
    out: &mut Vec<u8>,
) -> Result<(), NodeError> {
    let catalog = &shared.catalog;
    match request {
        Request::Hello { .. } => unreachable!("handled by the caller"),
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
        } => {
            let info = catalog.create(name, size, page_size)?;
            tracing::info!(name, size, page_size, id = info.id, "region created");
            Response::RegionInfo(info).encode(out, request_id, 0);
        }
        Request::OpenRegion { name } => {
            let region = catalog.by_name(name)?;
            Response::RegionInfo(region.info().clone()).encode(out, request_id, 0);
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
                checkpoint_epoch: last.as_ref().map_or(0, |mark| mark.epoch),
                checkpoint_age_ms: last.as_ref().map_or(u64::MAX, |mark| {
                    mark.started
                        .elapsed()
                        .map_or(0, |age| age.as_millis() as u64)
                }),
                dirty_pages: region.dirty_count(last.as_ref().map_or(0, |mark| mark.start_seq)),
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
            shared.baselines.lock().remove(&region.info().id);
            shared.journals.lock().remove(&region.info().id);
            let journal = journal_dir(&shared.config.data_dir, region.uid());
            if journal.exists()
                && let Err(error) = std::fs::remove_dir_all(&journal)
            {
                tracing::warn!(name, %error, "could not remove the region's journal");
            }
            tracing::info!(name, "region deleted");
            // A moved or damaged region's checkpoints may belong to the node
            // it moved to: only an active region's are purged.
            if let Some(storage) = &shared.storage
                && region.state() == RegionState::Active
                && let Err(error) = checkpoint::purge(storage, name)
            {
                tracing::warn!(name, %error, "could not purge the region's checkpoints");
                return Err(NodeError::Storage(format!(
                    "region {name:?} is deleted but its checkpoints were not all removed: {error}"
                )));
            }
            Response::Done.encode(out, request_id, 0);
        }
        Request::Checkpoint { name, full } => {
            let region = catalog.by_name(name)?;
            let info = take_checkpoint(shared, &region, full)?;
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
            let job = start_recovery(shared, request)?;
            Response::Recovery(job.progress()).encode(out, request_id, 0);
        }
        Request::RecoveryStatus { name } => {
            let job = shared.recoveries.lock().get(name).cloned();
            let job = job.ok_or_else(|| {
                NodeError::RegionNotFound(format!("{name} (no recovery of it on this node)"))
            })?;
            Response::Recovery(job.progress()).encode(out, request_id, 0);
        }
        Request::DirtyPages {
            region,
            since,
            start_page,
        } => {
            let region = catalog.by_id(region)?;
            region.check_readable()?;
            let since = match since {
                Since::Mark(mark) => mark,
                Since::Checkpoint(epoch) => region.checkpoint_start(epoch).ok_or_else(|| {
                    NodeError::StaleEpoch(format!(
                        "region {:?} does not remember checkpoint {epoch} (its latest is {})",
                        region.info().name,
                        region.last_checkpoint().map_or(0, |mark| mark.epoch)
                    ))
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
            commit_id,
            entries,
        } => {
            let region = catalog.by_id(region)?;
            apply_journal(shared, &region, commit_id, &entries)?;
            Response::Done.encode(out, request_id, 0);
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
            let mut frame = FrameBuilder::begin(out, Opcode::PagesData, request_id, 0);
            region.read_pages(pages, frame.payload())?;
            frame.finish();
        }
        Request::WritePages {
            region,
            pages,
            data,
        } => {
            let region = catalog.by_id(region)?;
            region.write_pages(pages, data)?;
            Response::Done.encode(out, request_id, 0);
        }
        Request::NodeStat => Response::NodeStat(NodeStat {
            capacity_bytes: shared.arena.capacity_bytes(),
            used_bytes: shared.arena.used_bytes(),
            segment_bytes: shared.arena.segment_bytes() as u64,
            regions: catalog.len() as u32,
            connections: shared.connection_count.load(Ordering::Relaxed),
            requests: shared.requests.load(Ordering::Relaxed),
        })
        .encode(out, request_id, 0),
    }
    Ok(())
}

/// Takes a checkpoint of `region` (one at a time per region), records it and
/// collects garbage.
fn take_checkpoint(
    shared: &Shared,
    region: &Region,
    full: bool,
) -> Result<pagoda_wire::CheckpointInfo, NodeError> {
    let storage = shared.storage.as_ref().ok_or(NodeError::NoStorage)?;
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
    let previous = shared.baselines.lock().get(&region.info().id).cloned();
    let settings = CheckpointSettings {
        object_bytes: shared.config.checkpoint_object_bytes,
        retain: shared.config.checkpoint_retain,
    };
    let name = region.info().name.clone();
    let (info, manifest) = match checkpoint::checkpoint(
        storage,
        region,
        full,
        settings,
        previous.as_deref(),
    ) {
        Ok(done) => done,
        Err(error) => {
            tracing::warn!(name, %error, "checkpoint failed; the previous one stays the baseline");
            return Err(error);
        }
    };
    tracing::info!(
        name,
        epoch = info.epoch,
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
    shared
        .baselines
        .lock()
        .insert(region.info().id, Arc::new(manifest));
    // The checkpoint covers every journal record applied before it began.
    let through = region
        .last_checkpoint()
        .map_or(0, |mark| mark.journal_through);
    let journal = shared.journals.lock().get(&region.info().id).cloned();
    if let Some(journal) = journal
        && through > journal.released_id()
        && let Err(error) = journal.release_through(through)
    {
        tracing::warn!(name, %error, "could not release journal records the checkpoint covers");
    }
    Ok(info)
}

/// Where a region's journal lives.
fn journal_dir(data_dir: &std::path::Path, uid: u64) -> PathBuf {
    data_dir.join("journals").join(format!("{uid:016x}"))
}

/// Persists a shipped transaction record in the region's journal and applies
/// it. Ranges are checked and segments allocated first, so a record that is
/// persisted is also applied.
fn apply_journal(
    shared: &Shared,
    region: &Region,
    commit_id: u64,
    entries: &[(u64, &[u8])],
) -> Result<(), NodeError> {
    let _order = region.journal_lock.lock();
    region.prepare_bytes(entries)?;
    let journal = {
        let mut journals = shared.journals.lock();
        match journals.get(&region.info().id) {
            Some(journal) => journal.clone(),
            None => {
                let dir = journal_dir(&shared.config.data_dir, region.uid());
                let (journal, leftover) = Journal::open(&dir, JournalOptions::default())
                    .map_err(|e| NodeError::Journal(format!("{}: {e}", dir.display())))?;
                if !leftover.is_empty() {
                    // Replayed at start; any left now were already applied.
                    tracing::debug!(records = leftover.len(), "journal reopened");
                }
                let journal = Arc::new(journal);
                journals.insert(region.info().id, journal.clone());
                journal
            }
        }
    };
    let mut record = journal.begin();
    for &(offset, bytes) in entries {
        record.push(region.uid(), offset, bytes);
    }
    let committed = journal.commit(record).map_err(|e| {
        NodeError::Journal(format!(
            "persisting record {commit_id} of region {:?}: {e}",
            region.info().name
        ))
    })?;
    region.write_bytes(entries, committed.id)
}

/// Opens the journal of every region that has one and applies its records
/// (those no checkpoint covered) over the region's reloaded baseline, in
/// order. A journal that fails to open marks its region damaged.
fn replay_journals(data_dir: &std::path::Path, catalog: &Catalog) -> HashMap<u64, Arc<Journal>> {
    let mut journals = HashMap::new();
    for region in catalog.regions() {
        let dir = journal_dir(data_dir, region.uid());
        if region.state() != RegionState::Active || !dir.exists() {
            continue;
        }
        let name = region.info().name.clone();
        let replayed = Journal::open(&dir, JournalOptions::default())
            .map_err(|e| NodeError::Journal(format!("{}: {e}", dir.display())))
            .and_then(|(journal, records)| {
                for record in &records {
                    let entries: Vec<(u64, &[u8])> = record
                        .entries
                        .iter()
                        .map(|entry| (entry.offset, entry.data.as_slice()))
                        .collect();
                    region.prepare_bytes(&entries)?;
                    region.write_bytes(&entries, record.id)?;
                }
                Ok((journal, records.len()))
            });
        match replayed {
            Ok((journal, count)) => {
                if count > 0 {
                    tracing::info!(name, records = count, "journal replayed over the baseline");
                }
                journals.insert(region.info().id, Arc::new(journal));
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
    journals
}

/// Checkpoints every region with dirty pages, every `interval`, until
/// shutdown.
fn checkpoint_loop(shared: Arc<Shared>, interval: Duration) {
    let mut next = std::time::Instant::now() + interval;
    while !shared.shutting_down.load(Ordering::SeqCst) {
        if std::time::Instant::now() < next {
            std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS as u64));
            continue;
        }
        checkpoint_dirty(&shared, Some(&shared.shutting_down));
        next = std::time::Instant::now() + interval;
    }
}

/// Checkpoints every active region with pages dirty since its last
/// checkpoint, stopping early if `stop` is set.
fn checkpoint_dirty(shared: &Shared, stop: Option<&AtomicBool>) {
    for region in shared.catalog.regions() {
        if stop.is_some_and(|stop| stop.load(Ordering::SeqCst)) {
            return;
        }
        if region.state() != RegionState::Active {
            continue;
        }
        let since = region.last_checkpoint().map_or(0, |mark| mark.start_seq);
        if region.dirty_count(since) == 0 {
            continue;
        }
        // Failures are logged by take_checkpoint; the next round retries.
        let _ = take_checkpoint(shared, &region, false);
    }
}

/// Starts a recovery job on its own thread.
fn start_recovery(
    shared: &Arc<Shared>,
    request: RecoveryRequest,
) -> Result<Arc<RecoveryJob>, NodeError> {
    let mut recoveries = shared.recoveries.lock();
    if recoveries
        .get(&request.name)
        .is_some_and(|job| !job.finished())
    {
        return Err(NodeError::InvalidArgument(format!(
            "region {:?} is being recovered already",
            request.name
        )));
    }
    recovery::validate(shared, &request)?;
    let job = Arc::new(RecoveryJob::new());
    recoveries.insert(request.name.clone(), job.clone());
    drop(recoveries);
    let thread_job = job.clone();
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("pagoda-recover-{}", request.name))
        .spawn(move || recovery::run(&thread_shared, &request, &thread_job))
        .map_err(|e| NodeError::io("spawning a recovery", e))?;
    Ok(job)
}

/// Loads each active region's latest baseline (with its uid) at startup.
/// A region whose baseline fails to load is marked damaged with the reason;
/// the others serve.
fn reload(storage: &Storage, catalog: &Catalog) -> HashMap<u64, Arc<Manifest>> {
    let mut baselines = HashMap::new();
    for region in catalog.regions() {
        if region.state() != RegionState::Active {
            continue;
        }
        let name = region.info().name.clone();
        let began = std::time::Instant::now();
        let loaded =
            checkpoint::latest_manifest(storage, &name, Some(region.uid())).and_then(|manifest| {
                match manifest {
                    Some(manifest) => {
                        checkpoint::load_baseline(storage, &region, &manifest, &())?;
                        Ok(Some(manifest))
                    }
                    None => Ok(None),
                }
            });
        match loaded {
            Ok(Some(manifest)) => {
                tracing::info!(
                    name,
                    epoch = manifest.epoch,
                    pages = manifest.pages,
                    millis = began.elapsed().as_millis() as u64,
                    "region reloaded from its baseline"
                );
                region.checkpoint_completed(CheckpointMark {
                    epoch: manifest.epoch,
                    start_seq: crate::region::BASELINE_SEQ,
                    started: manifest.started(),
                    journal_through: 0,
                });
                baselines.insert(region.info().id, Arc::new(manifest));
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
    baselines
}

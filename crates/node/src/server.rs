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
use pagoda_wire::{
    Opcode, RegionStat, RegionState, ReplicateKind, ReplicationMode, Request, Response, Since,
};
use parking_lot::Mutex;

use crate::arena::Arena;
use crate::catalog::{Catalog, MissingCatalog};
use crate::checkpoint;
use crate::error::NodeError;
use crate::recovery::{self, RecoveryJob, RecoveryRequest};
use crate::region::Region;
use crate::replication::{self, Replication};
use crate::storage::{Storage, StorageConfig};
use crate::write_log::{Applied, Order};
use crate::{checkpointing, node_journal};

/// How a node runs.
#[derive(Clone)]
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
    /// Start even if the catalog and storage disagree (a missing
    /// `regions.meta` in a used data dir; a region whose newest checkpoint is
    /// gone from storage, which then rolls back to the newest one left).
    /// Off by default: the node refuses to start and says why.
    pub accept_storage_mismatch: bool,
    /// The nodes this node may connect to as a recovery's source. Empty:
    /// only addresses on this host's loopback.
    pub peers: Vec<SocketAddr>,
    /// The credential this node authenticates as when it connects to a peer
    /// (a recovery's source), with the token the recovery request carries or
    /// else this node's own `token`.
    pub peer_credential: String,
    /// Most connections that may be authenticating at once. When all are
    /// taken, a new connection takes the place of the oldest one, so a
    /// flood of slow handshakes cannot lock clients out.
    pub handshakes_max: usize,
    /// How long a frame that has begun to arrive (or a reply that has begun
    /// to be written) may take to complete before the connection is closed.
    pub frame_timeout: Duration,
    /// Node-wide budget for connection buffers beyond each connection's
    /// fixed baseline (large frames and replies); see docs/design.md, Limits.
    pub connection_memory_bytes: usize,
    /// How long a request waits for buffer memory from the budget before it
    /// is answered with `Busy`.
    pub connection_memory_wait: Duration,
    /// TLS on the listener; required on a non-loopback address unless
    /// `insecure_no_tls` is set.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Accept plaintext connections on a non-loopback address (the operator
    /// said so explicitly: `--insecure-no-tls`).
    pub insecure_no_tls: bool,
    /// How this node speaks TLS to other nodes it connects to (a recovery's
    /// source); `None`: plain TCP.
    pub peer_tls: Option<pagoda::TlsOptions>,
    /// How long the holder of a region's writer role may stay silent (send
    /// no request) before another connection may take the role over.
    pub writer_lease: Duration,
    /// How long an in-sync replica may leave a write unacknowledged before
    /// its primary drops it from the in-sync set; a replica that hears
    /// nothing from its primary for half of it counts itself out of sync.
    pub replica_timeout: Duration,
    /// Bytes of log entries a primary retains per region, for replicas that
    /// fall behind or reconnect.
    pub replication_log_bytes: usize,
    /// In `async` mode, the most bytes an in-sync replica may lag before
    /// writes wait.
    pub replication_lag_bytes: usize,
}

/// Everything but the token, which a log line must never carry.
impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("listen", &self.listen)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("data_dir", &self.data_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("spin", &self.spin)
            .field("connections_max", &self.connections_max)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("storage", &self.storage)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("checkpoint_retain", &self.checkpoint_retain)
            .field("checkpoint_object_bytes", &self.checkpoint_object_bytes)
            .field("accept_storage_mismatch", &self.accept_storage_mismatch)
            .field("peers", &self.peers)
            .field("peer_credential", &self.peer_credential)
            .field("handshakes_max", &self.handshakes_max)
            .field("frame_timeout", &self.frame_timeout)
            .field("connection_memory_bytes", &self.connection_memory_bytes)
            .field("connection_memory_wait", &self.connection_memory_wait)
            .field("tls", &self.tls)
            .field("insecure_no_tls", &self.insecure_no_tls)
            .field("peer_tls", &self.peer_tls)
            .field("writer_lease", &self.writer_lease)
            .field("replica_timeout", &self.replica_timeout)
            .field("replication_log_bytes", &self.replication_log_bytes)
            .field("replication_lag_bytes", &self.replication_lag_bytes)
            .finish()
    }
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
            accept_storage_mismatch: false,
            peers: Vec::new(),
            peer_credential: pagoda::DEFAULT_CREDENTIAL.to_owned(),
            handshakes_max: HANDSHAKES_MAX_DEFAULT,
            frame_timeout: Duration::from_millis(FRAME_TIMEOUT_MS_DEFAULT),
            connection_memory_bytes: CONNECTION_MEMORY_BYTES_DEFAULT,
            connection_memory_wait: Duration::from_millis(CONNECTION_MEMORY_WAIT_MS_DEFAULT),
            tls: None,
            insecure_no_tls: false,
            peer_tls: None,
            writer_lease: Duration::from_millis(WRITER_LEASE_MS_DEFAULT),
            replica_timeout: Duration::from_millis(REPLICA_TIMEOUT_MS_DEFAULT),
            replication_log_bytes: REPLICATION_LOG_BYTES_DEFAULT,
            replication_lag_bytes: REPLICATION_LAG_BYTES_DEFAULT,
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
/// Default number of connections that may be authenticating at once.
pub const HANDSHAKES_MAX_DEFAULT: usize = 64;
/// Default time a started frame or reply has to complete.
pub const FRAME_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default node-wide budget for connection buffers (256 MiB).
pub const CONNECTION_MEMORY_BYTES_DEFAULT: usize = 256 * 1024 * 1024;
/// Default time a request waits for buffer memory.
pub const CONNECTION_MEMORY_WAIT_MS_DEFAULT: u64 = 1000;
/// Default writer lease: a writer silent this long may be replaced.
pub const WRITER_LEASE_MS_DEFAULT: u64 = 60_000;
/// Default replica timeout.
pub const REPLICA_TIMEOUT_MS_DEFAULT: u64 = 2000;
/// Default bytes of log a primary retains per region (64 MiB).
pub const REPLICATION_LOG_BYTES_DEFAULT: usize = 64 * 1024 * 1024;
/// Default lag bound of an `async` replica (16 MiB).
pub const REPLICATION_LAG_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
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
    /// The address the node listens on.
    pub(crate) local_addr: SocketAddr,
    pub(crate) config: NodeConfig,
    pub(crate) catalog: Catalog,
    arena: Arc<Arena>,
    pub(crate) storage: Option<Storage>,
    /// Recoveries run on this node, by region name.
    pub(crate) recoveries: Mutex<HashMap<String, Arc<RecoveryJob>>>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) connections: Mutex<HashMap<u64, ConnectionEntry>>,
    pub(crate) connection_count: AtomicU32,
    pub(crate) requests: AtomicU64,
    /// Connection buffers beyond each connection's baseline.
    pub(crate) connection_memory: crate::connection::MemoryBudget,
    /// The listener's TLS configuration, if it speaks TLS.
    pub(crate) tls: Option<crate::tls::TlsServer>,
    /// Connections still authenticating, oldest first.
    pub(crate) handshakes: Mutex<std::collections::BTreeMap<u64, TcpStream>>,
    /// Rate limit for warnings about failed handshakes.
    pub(crate) failed_handshakes_log: crate::connection::LogLimiter,
    /// The credentials clients authenticate with, reloaded when they change.
    pub(crate) credentials: crate::access::CredentialStore,
    /// Which connection holds each region's writer role.
    pub(crate) writers: crate::access::WriterRoles,
}

/// A running node. Dropping it shuts it down.
pub struct Node {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Kept so that a stop that could not save everything can serve again.
    listener: TcpListener,
    acceptor: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
}

/// Regions whose changes a graceful stop could not save to storage: the
/// node's RAM holds the only copy of them.
#[derive(Clone, Debug)]
pub struct Unsaved {
    /// Each region: its name, the pages dirty since its last checkpoint, and
    /// why the last attempt failed.
    pub regions: Vec<UnsavedRegion>,
}

/// One region a graceful stop could not save.
#[derive(Clone, Debug)]
pub struct UnsavedRegion {
    /// The region's name.
    pub name: String,
    /// Pages written since its last checkpoint.
    pub dirty_pages: u64,
    /// Their bytes.
    pub dirty_bytes: u64,
    /// Why the last checkpoint attempt failed.
    pub error: String,
}

impl std::fmt::Display for Unsaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} region(s) have changes that no checkpoint holds:",
            self.regions.len()
        )?;
        for region in &self.regions {
            write!(
                f,
                " {:?} ({} dirty pages, {} bytes: {});",
                region.name, region.dirty_pages, region.dirty_bytes, region.error
            )?;
        }
        Ok(())
    }
}

/// How long a graceful stop waits between checkpoint attempts, at first and
/// at most.
const STOP_RETRY_MS_MIN: u64 = 250;
const STOP_RETRY_MS_MAX: u64 = 5_000;

impl Node {
    /// Opens the data dir, reserves the arena, binds and starts serving.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        if !config.listen.ip().is_loopback()
            && config.token.is_none()
            && !config
                .data_dir
                .join(crate::access::CREDENTIALS_FILE_NAME)
                .exists()
        {
            return Err(NodeError::Config(format!(
                "refusing to listen on non-loopback address {} without a token or credentials \
                 (give --token-file, or create one with `pagoda token create`)",
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
        crate::connection::check_config(&config)?;
        if config.connections_max == 0 {
            return Err(NodeError::Config(
                "connections_max must be at least 1".into(),
            ));
        }
        if config.writer_lease.is_zero() {
            return Err(NodeError::Config(
                "the writer lease must be positive".into(),
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
        let missing = if config.accept_storage_mismatch {
            MissingCatalog::StartEmpty
        } else {
            MissingCatalog::Refuse
        };
        let catalog = Catalog::open_with(&config.data_dir, arena.clone(), missing)?;
        let credentials =
            crate::access::CredentialStore::open(&config.data_dir, config.token.as_deref())?;
        let writers = crate::access::WriterRoles::new(config.writer_lease);
        let storage = config
            .storage
            .as_ref()
            .map(Storage::open_checked)
            .transpose()?;
        if let Some(storage) = &storage {
            checkpointing::reload(storage, &catalog, config.accept_storage_mismatch)?;
        }
        node_journal::replay(&config.data_dir, &catalog);
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
        let connection_memory =
            crate::connection::MemoryBudget::new(config.connection_memory_bytes);
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::TlsServer::load)
            .transpose()?;
        let shared = Arc::new(Shared {
            local_addr,
            config,
            catalog,
            arena,
            storage,
            recoveries: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            connection_count: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            connection_memory,
            tls,
            handshakes: Mutex::new(std::collections::BTreeMap::new()),
            failed_handshakes_log: crate::connection::LogLimiter::failed_handshakes(),
            credentials,
            writers,
        });
        let mut node = Node {
            shared,
            local_addr,
            listener,
            acceptor: None,
            checkpointer: None,
        };
        node.serve()?;
        Ok(node)
    }

    /// Starts the acceptor and the periodic checkpointer.
    fn serve(&mut self) -> Result<(), NodeError> {
        let listener = self
            .listener
            .try_clone()
            .map_err(|e| NodeError::io("sharing the listener", e))?;
        self.shared.shutting_down.store(false, Ordering::SeqCst);
        let acceptor_shared = self.shared.clone();
        self.acceptor = Some(
            std::thread::Builder::new()
                .name("pagoda-accept".into())
                .spawn(move || crate::connection::accept_loop(acceptor_shared, listener))
                .map_err(|e| NodeError::io("spawning the acceptor", e))?,
        );
        self.checkpointer = match self.shared.config.checkpoint_interval {
            Some(interval) if self.shared.storage.is_some() => {
                let checkpointer_shared = self.shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name("pagoda-checkpoint".into())
                        .spawn(move || {
                            checkpointing::run_periodically(checkpointer_shared, interval)
                        })
                        .map_err(|e| NodeError::io("spawning the checkpointer", e))?,
                )
            }
            _ => None,
        };
        Ok(())
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
    /// answered, waits for the threads to finish, and takes a last checkpoint
    /// of every region with dirty pages. Whatever it could not save is
    /// logged as an error and lost; [`Node::try_stop`] refuses to lose it.
    pub fn shutdown(mut self) {
        if let Err(unsaved) = self.stop(Duration::ZERO) {
            tracing::error!(%unsaved, "node stopped, losing changes");
        }
    }

    /// A graceful stop that loses nothing acknowledged: stops serving and
    /// checkpoints every region with dirty pages, retrying failed checkpoints
    /// for up to `retry_for`. If some region's changes still are not in
    /// storage (a full disk, an unreachable store), the node serves again,
    /// exactly as before, and the error says which regions and why: the
    /// operator frees space or mends the store and stops it again, or
    /// abandons the changes explicitly (`shutdown`, or killing the process).
    /// A node without storage has nowhere to save to and always stops.
    pub fn try_stop(&mut self, retry_for: Duration) -> Result<(), Unsaved> {
        let result = self.stop(retry_for);
        if result.is_err() {
            replication::restart_all(&self.shared);
            if let Err(error) = self.serve() {
                tracing::error!(%error, "could not resume serving after a refused stop");
            }
        }
        result
    }

    /// Regions with changes no checkpoint holds, and the error of each one's
    /// last attempt.
    fn unsaved(&self, errors: &HashMap<String, String>) -> Unsaved {
        let mut regions = Vec::new();
        for region in self.shared.catalog.regions() {
            // A replica's changes live on its primary, which checkpoints.
            if region.state() != RegionState::Active
                || replication::check_checkpoints(&region).is_err()
            {
                continue;
            }
            let since = region.last_checkpoint().map_or(0, |mark| mark.start_seq);
            let dirty_pages = region.dirty_count(since);
            if dirty_pages == 0 {
                continue;
            }
            let name = region.info().name.clone();
            regions.push(UnsavedRegion {
                dirty_bytes: dirty_pages * region.info().page_size as u64,
                dirty_pages,
                error: errors
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| "written after the last attempt".into()),
                name,
            });
        }
        Unsaved { regions }
    }

    fn stop(&mut self, retry_for: Duration) -> Result<(), Unsaved> {
        let Some(acceptor) = self.acceptor.take() else {
            return Ok(());
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
        // No write comes in any more: the senders to replicas stop (a
        // refused stop starts them again).
        replication::stop_all(&self.shared);
        if self.shared.storage.is_none() {
            tracing::info!(local_addr = %self.local_addr, "node stopped");
            return Ok(());
        }
        // No client is served any more: a last checkpoint of every region
        // with dirty pages makes a graceful stop lose nothing. Failures are
        // retried with backoff until `retry_for` has passed.
        let began = std::time::Instant::now();
        let mut backoff = Duration::from_millis(STOP_RETRY_MS_MIN);
        loop {
            let errors = checkpointing::checkpoint_dirty(&self.shared, None);
            let unsaved = self.unsaved(&errors);
            if unsaved.regions.is_empty() {
                tracing::info!(local_addr = %self.local_addr, "node stopped");
                return Ok(());
            }
            if began.elapsed() + backoff > retry_for {
                tracing::error!(%unsaved, "the last checkpoints failed");
                return Err(unsaved);
            }
            tracing::warn!(%unsaved, retry_ms = backoff.as_millis() as u64, "the last checkpoints failed; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(STOP_RETRY_MS_MAX));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(unsaved) = self.stop(Duration::ZERO) {
            tracing::error!(%unsaved, "node dropped, losing changes");
        }
    }
}

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
}

/// A write whose reply waits until every in-sync replica has it.
pub(crate) struct Deferred {
    pub(crate) request_id: u64,
    pub(crate) replication: Arc<Replication>,
    pub(crate) lsn: u64,
}

impl Deferred {
    /// Waits for the replicas and encodes the reply.
    pub(crate) fn answer(self, out: &mut Vec<u8>) {
        match self.replication.wait_acked(self.lsn) {
            Ok(()) => Response::Done.encode(out, self.request_id, 0),
            Err(error) => Response::Error {
                code: error.code(),
                message: &error.to_string(),
            }
            .encode(out, self.request_id, 0),
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
                catalog.create(name, size, page_size)?
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
            replication::promote(shared, &region, force)?;
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
            let replication = match &*region.role().lock() {
                replication::Role::Primary(replication) => Some(replication.clone()),
                _ => None,
            };
            if let Some(replication) = replication {
                replication.stop();
            }
            let journal = node_journal::dir(&shared.config.data_dir, region.uid());
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
                return Err(NodeError::storage(
                    format!("purging the checkpoints of deleted region {name:?}"),
                    format!("not all were removed: {error}"),
                ));
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
            let replication = replication::check_primary(&region)?;
            let forward = replication
                .as_deref()
                .map(|r| (r, ReplicateKind::Journal, ctx.payload));
            if let Some(replication) = &replication {
                replication.wait_for_room()?;
            }
            in_order(&region, epoch, lsn, forward, || {
                node_journal::apply(shared, &region, commit_id, &entries)
            })?;
            answer_write(ctx, replication, request_id, lsn, out);
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
            let mut frame = FrameBuilder::begin(out, Opcode::PagesData, request_id, 0);
            region.read_pages(pages, frame.payload())?;
            frame.finish();
        }
        Request::WritePages {
            region,
            lsn,
            pages,
            data,
        } => {
            let region = catalog.by_id(region)?;
            let replication = replication::check_primary(&region)?;
            let forward = replication
                .as_deref()
                .map(|r| (r, ReplicateKind::Pages, ctx.payload));
            if let Some(replication) = &replication {
                replication.wait_for_room()?;
            }
            in_order(&region, epoch, lsn, forward, || {
                region.write_pages(pages, data)
            })?;
            answer_write(ctx, replication, request_id, lsn, out);
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
) -> Result<(), NodeError> {
    let result = match region.log().order(&region.info().name, epoch, lsn)? {
        Order::Duplicate(original) => original,
        Order::Apply(slot) => {
            let result = apply();
            if let Some((replication, kind, payload)) = forward {
                match &result {
                    Ok(()) => replication.append(lsn, epoch, kind, payload.to_vec()),
                    Err(error) => replication.append(
                        lsn,
                        epoch,
                        ReplicateKind::Skip,
                        replication::skip_body(error),
                    ),
                }
            }
            let applied = Applied::of(&result);
            slot.record(applied.clone());
            applied
        }
    };
    match result {
        Applied::Done => Ok(()),
        Applied::Failed(code, message) => Err(NodeError::Recorded(code, message)),
    }
}

/// Answers an applied write: at once, unless the region is a `sync`
/// primary's, whose replies wait for every in-sync replica (a retried
/// duplicate's as well: its original may not have reached them yet).
fn answer_write(
    ctx: &mut Dispatch<'_>,
    replication: Option<Arc<Replication>>,
    request_id: u64,
    lsn: u64,
    out: &mut Vec<u8>,
) {
    match replication {
        Some(replication) if replication.mode() == ReplicationMode::Sync => {
            ctx.deferred.push(Deferred {
                request_id,
                replication,
                lsn,
            })
        }
        _ => Response::Done.encode(out, request_id, 0),
    }
}

//! The node: start, serve, and a graceful stop that refuses to lose what a
//! checkpoint could not save. What each request does is `server`'s job;
//! accepting and reading connections is `connection`'s; periodic
//! checkpoints run on a thread of their own.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pagoda_wire::RegionState;
use pagoda_wire::limits::SEGMENT_BYTES;
use parking_lot::Mutex;

use crate::arena::Arena;
use crate::catalog::{Catalog, MissingCatalog};
use crate::config::{LOCAL_SOCKET_FILE, LocalSocket, NodeConfig};
use crate::connection::{Listener, Socket};
use crate::error::NodeError;
use crate::lazy_load::Reload;
use crate::recovery::RecoveryJob;
use crate::storage::Storage;
use crate::{checkpointing, node_journal, replication};

/// How often the acceptor checks for shutdown while idle.
pub(crate) const ACCEPT_POLL_MS: i32 = 100;
/// How long shutdown lets connections finish the request in hand before it
/// closes their sockets outright (which also wakes a thread blocked writing to
/// a client that stopped reading).
const SHUTDOWN_GRACE_MS: u64 = 1000;
/// How long a stopping node waits, per region it leads, for an in-sync
/// replica to catch up before handing it the lead.
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(2);

/// A served connection: a handle on its socket (to close it at shutdown) and
/// its thread.
pub(crate) struct ConnectionEntry {
    pub(crate) stream: Socket,
    pub(crate) thread: Option<JoinHandle<()>>,
}

pub(crate) struct Shared {
    /// The address the node listens on.
    pub(crate) local_addr: SocketAddr,
    /// The node's local socket, if it has one.
    pub(crate) local_socket: Option<PathBuf>,
    pub(crate) config: NodeConfig,
    pub(crate) catalog: Catalog,
    pub(crate) arena: Arc<Arena>,
    /// The pager, when the node has a bulk tier.
    pub(crate) pager: Option<Arc<crate::tiering::Pager>>,
    pub(crate) storage: Option<Arc<Storage>>,
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
    pub(crate) handshakes: Mutex<std::collections::BTreeMap<u64, Socket>>,
    /// Rate limit for warnings about failed handshakes.
    pub(crate) failed_handshakes_log: crate::connection::LogLimiter,
    /// The credentials clients authenticate with, reloaded when they change.
    pub(crate) credentials: crate::access::CredentialStore,
    /// Which connection holds each region's writer role.
    pub(crate) writers: crate::access::WriterRoles,
    /// What the node records for its metrics endpoint; `None` when it has
    /// none, and then the hot paths record nothing.
    pub(crate) metrics: Option<crate::metrics::Metrics>,
    /// The node's lease and records in the cluster coordinator.
    pub(crate) membership: crate::cluster::Membership,
}

/// A running node. Dropping it shuts it down.
pub struct Node {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Kept so that a stop that could not save everything can serve again.
    listener: TcpListener,
    acceptor: Option<JoinHandle<()>>,
    /// The local socket's listener, if the node has one (removed from the
    /// file system when the node is dropped).
    local_listener: Option<UnixListener>,
    local_acceptor: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    pager_thread: Option<JoinHandle<()>>,
    /// The background loader of regions' baselines after a restart.
    loader: Option<crate::lazy_load::Loader>,
    /// The metrics endpoint, if configured; it stops when the node is
    /// dropped (a refused stop keeps it serving).
    metrics: Option<crate::metrics::Endpoint>,
    /// The cluster agent (lease renewal, failover).
    agent: Option<crate::cluster::Agent>,
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
        if let Some(metrics) = config.metrics
            && !metrics.ip().is_loopback()
            && !config.metrics_allow_remote
        {
            return Err(NodeError::Config(format!(
                "refusing to serve metrics on non-loopback address {metrics}: the endpoint has \
                 no authentication (give --metrics-allow-remote to serve it anyway)"
            )));
        }
        if config.checkpoint_interval.is_some_and(|i| i.is_zero()) {
            return Err(NodeError::Config(
                "the checkpoint interval must be positive".into(),
            ));
        }
        // Before anything writes the data dir or the storage: a directory
        // that cannot be written fails here, named, with the fix.
        crate::preflight::check(&config)?;
        let membership = crate::cluster::Membership::open(&config)?;
        let mut arena = Arena::new(config.capacity_bytes, SEGMENT_BYTES)?;
        let mut saved_index = None;
        if let Some(bulk) = &config.bulk {
            let (store, saved) = crate::bulk::BulkStore::open(bulk)?;
            saved_index = saved;
            let (path, direct_io) = (store.path().to_owned(), store.direct());
            let cache_bytes = config.bulk_cache_bytes.unwrap_or(config.capacity_bytes / 4);
            arena = arena.with_bulk(store, config.bulk_read_threads, cache_bytes);
            let cache = arena
                .bulk()
                .map_or(0, |bulk| bulk.cache().capacity_blocks());
            tracing::info!(
                path = %path.display(),
                capacity_bytes = bulk.capacity_bytes,
                direct_io,
                cache_bytes = cache * crate::bulk::BLOCK_BYTES,
                read_threads = config.bulk_read_threads,
                "bulk tier ready"
            );
        }
        let arena = Arc::new(arena);
        // Before the regions load: a baseline larger than RAM pages out as
        // it loads.
        let pager = match arena.bulk() {
            Some(_) => Some(crate::tiering::Pager::install(arena.clone())?),
            None => None,
        };
        let missing = if config.accept_storage_mismatch {
            MissingCatalog::StartEmpty
        } else {
            MissingCatalog::Refuse
        };
        let catalog = Catalog::open_with(&config.data_dir, arena.clone(), missing)?;
        if let Some(saved) = &saved_index
            && config.storage.is_some()
        {
            restore_from_bulk(&arena, &catalog, saved);
            // Sharing the adopted blocks again needs their digests mapped:
            // done while the node serves.
            let publisher = arena.clone();
            let spawned = std::thread::Builder::new()
                .name("pagoda-bulk-publish".into())
                .spawn(move || {
                    let began = std::time::Instant::now();
                    let blocks = publisher.bulk().map_or(0, |bulk| bulk.publish_adopted());
                    tracing::debug!(
                        blocks,
                        millis = began.elapsed().as_millis() as u64,
                        "adopted bulk-tier blocks shared again"
                    );
                });
            if let Err(error) = spawned {
                // Only sharing is lost: identical blocks stored from now on
                // are stored again.
                tracing::warn!(%error, "could not start sharing the adopted bulk-tier blocks");
            }
        }
        let credentials =
            crate::access::CredentialStore::open(&config.data_dir, config.token.as_deref())?;
        let writers = crate::access::WriterRoles::new(config.writer_lease);
        let storage = config
            .storage
            .as_ref()
            .map(Storage::open_checked)
            .transpose()?
            .map(Arc::new);
        if let Some(storage) = &storage {
            checkpointing::reload(
                storage,
                &catalog,
                config.accept_storage_mismatch,
                config.reload,
            )?;
        }
        // Before the journal is replayed: its records load the segments they
        // write on demand, while the loader brings in the rest.
        let pause = match config.reload {
            Reload::LazyPaced(pause) => Some(pause),
            Reload::Lazy | Reload::Eager => None,
        };
        let loader = crate::lazy_load::Loader::start(&catalog.regions(), pause)?;
        if let Some(pager) = &pager
            && catalog
                .regions()
                .iter()
                .any(|region| region.restored_checkpoint() != 0)
        {
            pager.start_loading();
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
        let (local_listener, local_socket) = bind_local_socket(&config)?;
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
        let config_metrics = config.metrics.is_some();
        let shared = Arc::new(Shared {
            local_addr,
            local_socket,
            config,
            catalog,
            arena,
            pager,
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
            metrics: config_metrics.then(crate::metrics::Metrics::new),
            membership,
        });
        let metrics = match shared.config.metrics {
            Some(addr) => Some(crate::metrics::Endpoint::start(shared.clone(), addr)?),
            None => None,
        };
        let agent = Some(crate::cluster::start(shared.clone())?);
        let mut node = Node {
            shared,
            local_addr,
            listener,
            acceptor: None,
            local_listener,
            local_acceptor: None,
            checkpointer: None,
            metrics,
            agent,
            pager_thread: None,
            loader: Some(loader),
        };
        node.pager_thread = node
            .shared
            .pager
            .as_ref()
            .map(|pager| pager.spawn())
            .transpose()?;
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
                .spawn(move || {
                    crate::connection::accept_loop(acceptor_shared, Listener::Tcp(listener))
                })
                .map_err(|e| NodeError::io("spawning the acceptor", e))?,
        );
        if let Some(local) = &self.local_listener {
            let local = local
                .try_clone()
                .map_err(|e| NodeError::io("sharing the local socket", e))?;
            let acceptor_shared = self.shared.clone();
            self.local_acceptor = Some(
                std::thread::Builder::new()
                    .name("pagoda-accept-local".into())
                    .spawn(move || {
                        crate::connection::accept_loop(acceptor_shared, Listener::Unix(local))
                    })
                    .map_err(|e| NodeError::io("spawning the local acceptor", e))?,
            );
        }
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

    /// The path of the node's local socket, if it has one.
    pub fn local_socket(&self) -> Option<&Path> {
        self.shared.local_socket.as_deref()
    }

    /// The address the metrics endpoint listens on, if the node serves
    /// metrics.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|endpoint| endpoint.local_addr)
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
        // In a cluster, the regions this node leads go to in-sync replicas
        // first: their writers move there instead of waiting for a restart.
        crate::cluster::hand_off(&self.shared, HAND_OFF_TIMEOUT);
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = acceptor.join();
        if let Some(local_acceptor) = self.local_acceptor.take() {
            let _ = local_acceptor.join();
        }
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
                // Everything is checkpointed: the regions may wait in the
                // bulk tier for the next start.
                match crate::tiering::save_for_restart(
                    &self.shared.arena,
                    self.shared.pager.as_deref(),
                ) {
                    Ok(0) => {}
                    Ok(regions) => {
                        tracing::info!(regions, "regions saved in the bulk tier for the next start")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not save the regions in the bulk tier; the next start reloads them from storage")
                    }
                }
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
        if let Some(mut loader) = self.loader.take() {
            loader.stop();
        }
        if let Some(mut metrics) = self.metrics.take() {
            metrics.stop();
        }
        self.shared.membership.stop();
        if let Some(agent) = self.agent.take() {
            agent.join();
        }
        if let Some(pager) = &self.shared.pager {
            pager.stop();
        }
        if let Some(thread) = self.pager_thread.take() {
            let _ = thread.join();
        }
        if let (Some(_), Some(path)) = (self.local_listener.take(), &self.shared.local_socket) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Takes over what a graceful stop left in the bulk tier: every saved region
/// still in the catalog with the same shape and its newest checkpoint the
/// saved one is set up paged out (the reload then skips its baseline); the
/// blocks of the others are freed.
fn restore_from_bulk(arena: &Arena, catalog: &Catalog, saved: &crate::bulk::SavedIndex) {
    let bulk = arena.bulk().expect("a saved index, so a bulk tier");
    let mut kept = Vec::new();
    let mut restored = Vec::new();
    for entry in &saved.regions {
        let Ok(region) = catalog.by_uid(entry.uid) else {
            continue;
        };
        let info = region.info();
        if info.size == entry.size
            && info.page_size == entry.page_size
            && region.durable_checkpoint() == entry.checkpoint
            && region.state() == RegionState::Active
        {
            kept.push(&entry.segments[..]);
            restored.push((region, entry));
        }
    }
    let refs: Vec<&[crate::bulk::BlockRef]> = kept
        .iter()
        .flat_map(|segments| segments.iter().map(|(_, refs)| &refs[..]))
        .collect();
    bulk.adopt(saved, &refs);
    for (region, entry) in restored {
        match region.restore_paged_out(&entry.segments, entry.checkpoint) {
            Ok(()) => tracing::info!(
                name = region.info().name,
                checkpoint = entry.checkpoint,
                segments = entry.segments.len(),
                "region restored from the bulk tier; it serves now and loads in the background"
            ),
            Err(error) => {
                tracing::warn!(name = region.info().name, %error, "region not restored from the bulk tier");
                region.forget_restored();
            }
        }
    }
}

/// Binds the node's local socket as configured; returns the listener and its
/// path, or neither when the node has none.
fn bind_local_socket(
    config: &NodeConfig,
) -> Result<(Option<UnixListener>, Option<PathBuf>), NodeError> {
    let (path, required) = match &config.local_socket {
        LocalSocket::Off => return Ok((None, None)),
        LocalSocket::InDataDir => (config.data_dir.join(LOCAL_SOCKET_FILE), false),
        LocalSocket::At(path) => (path.clone(), true),
    };
    let bound = bind_unix(&path);
    match bound {
        Ok(listener) => {
            tracing::info!(path = %path.display(), "local socket bound");
            Ok((Some(listener), Some(path)))
        }
        Err(error) if !required => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "no local socket: co-located clients use TCP (give --local-socket PATH to place it elsewhere)"
            );
            Ok((None, None))
        }
        Err(error) => Err(NodeError::io(
            format!("binding the local socket {}", path.display()),
            error,
        )),
    }
}

fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    let length = path.as_os_str().len();
    if length > pagoda_wire::message::LOCAL_SOCKET_PATH_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the path is {length} bytes, more than a Unix socket's {} allow",
                pagoda_wire::message::LOCAL_SOCKET_PATH_BYTES_MAX
            ),
        ));
    }
    // A socket file left by a node that did not stop cleanly: the data dir's
    // lock (or the operator's choice of path) says it is no longer in use.
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if metadata.file_type().is_socket() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process serves this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

//! The node's configuration: every setting and its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::checkpoint;
use crate::storage::StorageConfig;

/// How a node runs.
#[derive(Clone)]
pub struct NodeConfig {
    /// The address to listen on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// RAM for pages, in bytes; regions may add up to more (thin provisioning).
    pub capacity_bytes: u64,
    /// Where the catalog lives.
    pub data_dir: PathBuf,
    /// The bulk tier on SSD behind RAM, if any: cold segments go there when
    /// RAM runs short (see `bulk`).
    pub bulk: Option<crate::bulk::BulkConfig>,
    /// Threads that read bulk-tier pages into replies while the connections
    /// go on with their next requests; 0 reads them on the connection's
    /// thread (see `bulk_reads`).
    pub bulk_read_threads: usize,
    /// RAM for a cache of hot bulk-tier blocks (pages read often in
    /// segments paged out as a whole), taken from `capacity_bytes` in whole
    /// segments; `None`: a quarter of it.
    pub bulk_cache_bytes: Option<u64>,
    /// The shared token clients must present; required on non-loopback
    /// addresses.
    pub token: Option<Vec<u8>>,
    /// The most a connection thread spins on non-blocking reads before it
    /// blocks; the budget adapts below it (`pagoda_wire::spin`).
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
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: no
    /// metrics are kept. Port 0 picks a free port (`Node::metrics_addr`).
    pub metrics: Option<SocketAddr>,
    /// Serve metrics on a non-loopback address (the operator said so
    /// explicitly: `--metrics-allow-remote`); the endpoint has no
    /// authentication.
    pub metrics_allow_remote: bool,
    /// The cluster coordinator (`etcd://HOST:PORT[,...]` or `embedded:DIR`);
    /// `None`: the embedded one in the data dir (no failover: one machine).
    pub coordinator: Option<String>,
    /// The node's lease in the coordinator: it is declared failed, and its
    /// regions fail over, when it has not renewed the lease for this long;
    /// it stops taking writes itself a margin before then.
    pub lease: Duration,
    /// With a shared coordinator: how long a region's replica may be gone
    /// from the cluster (its node's lease lapsed) before its primary builds
    /// a new replica on another live node to restore the replica count.
    pub replace_replica_after: Duration,
    /// Where the node accepts connections from clients on its host, who may
    /// then read regions' pages from shared memory (`ShareRegion`).
    pub local_socket: LocalSocket,
    /// How a start loads the baselines of regions the bulk tier did not
    /// keep: lazily (serve at once) by default.
    pub reload: crate::lazy_load::Reload,
}

/// Where a node's local (Unix) socket is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalSocket {
    /// `pagoda.sock` in the data dir; if that path is too long for a Unix
    /// socket, or cannot be bound, the node starts without one and says so.
    InDataDir,
    /// No local socket: every client uses TCP.
    Off,
    /// This path; the node refuses to start if it cannot bind it.
    At(PathBuf),
}

/// The local socket's file name in the data dir.
pub const LOCAL_SOCKET_FILE: &str = "pagoda.sock";

/// Everything but the token, which a log line must never carry.
impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("listen", &self.listen)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("data_dir", &self.data_dir)
            .field("bulk", &self.bulk)
            .field("bulk_read_threads", &self.bulk_read_threads)
            .field("bulk_cache_bytes", &self.bulk_cache_bytes)
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
            .field("metrics", &self.metrics)
            .field("metrics_allow_remote", &self.metrics_allow_remote)
            .field("coordinator", &self.coordinator)
            .field("lease", &self.lease)
            .field("replace_replica_after", &self.replace_replica_after)
            .field("local_socket", &self.local_socket)
            .field("reload", &self.reload)
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
            bulk: None,
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
            metrics: None,
            metrics_allow_remote: false,
            coordinator: None,
            lease: Duration::from_millis(LEASE_MS_DEFAULT),
            replace_replica_after: Duration::from_millis(REPLACE_REPLICA_AFTER_MS_DEFAULT),
            local_socket: LocalSocket::InDataDir,
            bulk_read_threads: crate::bulk_reads::READ_THREADS,
            bulk_cache_bytes: None,
            reload: crate::lazy_load::Reload::Lazy,
        }
    }
}

/// Default time a lost replica is waited for before it is replaced, in
/// milliseconds.
pub const REPLACE_REPLICA_AFTER_MS_DEFAULT: u64 = 30_000;
/// Default node lease in the coordinator, in milliseconds.
pub const LEASE_MS_DEFAULT: u64 = 3_000;
/// Default ceiling of the spin before a blocking read, in microseconds.
pub const SPIN_US_DEFAULT: u64 = 1_000;
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

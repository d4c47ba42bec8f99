//! Pagoda's client library.
//!
//! A [`Client`] is a connection to a memory node. It creates, lists and
//! deletes regions, and opens them: a [`Region`] is byte-addressable memory
//! whose pages live on the node, with a local page cache of a chosen size in
//! the application's RAM.
//!
//! ```no_run
//! use pagoda::{Client, ClientOptions, RegionOptions};
//!
//! let client = Client::connect("127.0.0.1:7070", ClientOptions::default())?;
//! client.create_region("embeddings", 1 << 30, 4096)?;
//! let region = client.open_region("embeddings", RegionOptions::with_cache_bytes(64 << 20))?;
//! region.write_at(12_345, b"hello")?;
//! let mut buf = [0u8; 5];
//! region.read_at(12_345, &mut buf)?;
//! region.flush()?; // every dirty page is now on the node
//! # Ok::<(), pagoda::ClientError>(())
//! ```
//!
//! # Clusters
//!
//! With a cluster coordinator (etcd, or the embedded one on one machine),
//! [`Client::connect_cluster`] finds each region's primary through the
//! coordinator, follows it through a failover (a read or write in flight is
//! sent again to the promoted replica), and writes a region only while it
//! holds the region's writer lease ([`ClientOptions::lease`]).
//!
//! ```no_run
//! use pagoda::{Client, ClientOptions, RegionOptions};
//!
//! let client = Client::connect_cluster("etcd://10.0.0.5:2379", ClientOptions::default())?;
//! let region = client.open_region("embeddings", RegionOptions::default())?;
//! region.write_at(0, b"hello")?; // refused with LeaseLost once the lease is lost
//! // On SIGTERM or SIGPWR: flush, release the lease, log, exit(128 + signal).
//! client.flush_on_signal(pagoda::FlushOnSignal::default())?;
//! # Ok::<(), pagoda::ClientError>(())
//! ```
//!
//! # Typed access
//!
//! Plain-old-data values (any [`bytemuck::Pod`] type: integers, floats,
//! arrays of them, `#[repr(C)]` structs deriving `Pod` and `Zeroable`) are
//! read and written at any byte offset with [`Region::read_value`],
//! [`Region::write_value`], [`Region::read_slice`] and
//! [`Region::write_slice`], and the same four methods of [`Transaction`]. The
//! derive macros need `bytemuck` (with its `derive` feature) among the
//! application's own dependencies; this crate re-exports the version it uses
//! as `pagoda::bytemuck`.
//!
//! - **Layout.** A value is stored as the host holds it in memory (the bytes
//!   of `bytemuck::bytes_of(&value)`): numbers in the host's byte order,
//!   `#[repr(C)]` structs with their fields at their `repr(C)` offsets.
//!   Pagoda runs on little-endian hosts only (x86-64 and aarch64 Linux), so
//!   every number is stored little-endian and reads back the same from any
//!   client. A `Pod` type has no padding, so every stored byte is defined.
//! - **Alignment.** Offsets need none: values are copied between the region
//!   and properly aligned memory of the caller, so a `u64` at offset 4093,
//!   straddling two pages, is as good as one at offset 0.
//! - **Bounds.** A value or slice must lie wholly inside the region;
//!   otherwise the call fails with [`ClientError::OutOfRange`] and nothing is
//!   read or written.
//!
//! ```no_run
//! use bytemuck::{Pod, Zeroable};
//! use pagoda::{Client, ClientOptions, RegionOptions};
//!
//! #[derive(Clone, Copy, Pod, Zeroable)]
//! #[repr(C)]
//! struct Entry {
//!     key: u64,
//!     score: f32,
//!     hits: u32,
//! }
//!
//! let client = Client::connect("127.0.0.1:7070", ClientOptions::default())?;
//! let region = client.open_or_create_region("entries", 1 << 30, 4096, RegionOptions::default())?;
//! region.write_value(16 * 1000, &Entry { key: 7, score: 0.5, hits: 1 })?;
//! let entry: Entry = region.read_value(16 * 1000)?;
//! let mut scores = [0f32; 256];
//! region.read_slice(1 << 20, &mut scores)?;
//! # Ok::<(), pagoda::ClientError>(())
//! ```
//!
//! # More
//!
//! Each main type's documentation has a runnable example against a node it
//! starts: [`Client`], [`ClientOptions`], [`Region`], [`RegionOptions`],
//! [`Region::transaction`], [`Region::read_value`], [`Region::map`] and
//! [`asynchronous`]. Whole programs are in the crate's `examples/`
//! (`large_array`, `sort_far`, `transaction`, `hash_table`,
//! `checkpoint_recovery`). Tools, tests and benchmarks that need the node's
//! own view of a region (pages by number with no cache, dirty-page lists)
//! use [`Client::raw`] ([`raw`]); applications use `Region`.

#![warn(missing_docs)]

#[cfg(feature = "tokio")]
pub mod asynchronous;
mod checksum;
pub mod client_metrics;
mod cluster;
mod colocated;
mod connection;
mod error;
mod link;
mod mapping;
pub mod raw;
mod region;
mod replication;
mod signals;
mod tls;
mod transaction;
mod typed;
mod write_log;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The `bytemuck` this crate's typed access is built on (see the crate
/// documentation's *Typed access*).
pub use bytemuck;
pub use checksum::RegionChecksum;
pub use cluster::{LEASE_MARGIN_DIVISOR, LEASE_RENEWALS_PER_TTL, WATCH_INTERVAL};
pub use colocated::{Colocated, Transport};
pub use connection::PendingCall;
pub use connection::Reply;
pub use error::ClientError;
pub use mapping::{
    Access, DirtyTracking, FAULT_SPIN_US_DEFAULT, FAULT_THREADS_DEFAULT, FaultMode,
    LOCAL_PAGES_MIN, MapOptions, Mapping, MappingStats, Protection, Verdict, Violation,
    ViolationHandler, ZAPS_PER_EVICTION_MAX,
};
pub use pagoda_cache::policy::PolicyKind;
pub use pagoda_cache::{
    CacheStats, PREFETCH_DEADLINE_DEFAULT, PREFETCH_DEPTH_DEFAULT, PrefetchConfig,
};
/// The cluster coordinator's crate (its `Coordinator` trait and records),
/// for [`Client::connect_coordinator`].
pub use pagoda_cluster;
pub use pagoda_wire::ErrorCode;
pub use pagoda_wire::message::NodeStat;
pub use pagoda_wire::{
    CheckpointInfo, PageRange, RecoveryPhase, RecoveryProgress, RegionInfo, RegionStat,
    RegionState, ReplicaInfo, ReplicaRole, ReplicaSet, ReplicationMode, Since,
};
pub use region::{Region, RegionOptions};
pub use signals::{FLUSH_ON_SIGNAL_TIMEOUT_S_DEFAULT, FlushOnSignal, flush_on_signal};
pub use tls::TlsOptions;
pub use transaction::{Durability, JournalStats, Transaction};
pub use write_log::WriterLog;

use link::{Link, RegionBinding, retry_of};
use pagoda_wire::{OpenMode, Request, Response};

/// How a client connects: its credential, timeouts, reconnects and TLS.
/// Start from [`ClientOptions::default`] (no token: for a node on loopback
/// without one) or [`ClientOptions::with_token`], and change what differs.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let mut config = pagoda_node::NodeConfig::new(
/// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into());
/// # config.token = Some(b"s3cret".to_vec());
/// # let node = pagoda_node::Node::start(config).unwrap();
/// # let address = node.local_addr();
/// use std::time::Duration;
///
/// use pagoda::{Client, ClientOptions, ErrorCode};
///
/// // This node requires the token `s3cret` (`pagoda node --token-file`).
/// let options = ClientOptions {
///     timeout: Duration::from_secs(5),
///     reconnect_for: Duration::ZERO, // a failed connection fails the call at once
///     client_name: "nightly-report".into(),
///     ..ClientOptions::with_token("s3cret")
/// };
/// let client = Client::connect(address, options)?;
/// assert!(client.list_regions()?.is_empty());
/// // Without the token the node refuses to serve.
/// let error = Client::connect(address, ClientOptions::default())
///     .and_then(|client| client.list_regions())
///     .unwrap_err();
/// assert_eq!(error.code(), Some(ErrorCode::Unauthorized));
/// # Ok::<(), pagoda::ClientError>(())
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    /// The token of the credential to authenticate as, if the node requires
    /// one. It never travels: the client proves it knows it with a proof
    /// bound to this connection (see `pagoda_wire::auth`).
    pub token: Option<Vec<u8>>,
    /// The name of the credential `token` belongs to; `"default"` (the
    /// node's `--token-file` token) unless told otherwise.
    pub credential: String,
    /// The most a waiting caller spins before it sleeps. Spinning turns a
    /// loopback round trip of tens of microseconds into about ten; the
    /// budget adapts below this ceiling (`pagoda_wire::spin`): it grows while
    /// replies come a little after it runs out, shrinks while the node is
    /// idle, and is at most 50 µs on a machine with more runnable threads than
    /// CPUs. Zero never spins, to save CPU where latency matters less.
    pub spin: Duration,
    /// How long to wait for any reply before the connection is declared dead.
    pub timeout: Duration,
    /// A name for this client in the node's logs.
    pub client_name: String,
    /// Speak TLS to the node, with these settings; `None`: plain TCP.
    pub tls: Option<TlsOptions>,
    /// How long the client keeps dialling after its connection failed
    /// before the failed call returns an error; zero: never reconnect (a
    /// failed connection fails every later call). See `Client` for what is
    /// sent again after a reconnect.
    pub reconnect_for: Duration,
    /// Other nodes to dial, in order, when the current one refuses
    /// connections (nodes holding the regions too, e.g. their replicas).
    pub fallback: Vec<SocketAddr>,
    /// The writer lease of a cluster client ([`Client::connect_cluster`]):
    /// the coordinator lets another host claim a region this client writes
    /// once this client has not renewed its lease for this long (3 s by
    /// default; at least `pagoda_cluster::LEASE_MIN`, 1 s). Renewed every
    /// third of it; this client stops writing (`ClientError::LeaseLost`) at
    /// the lease's local deadline: the send time of the last successful
    /// renewal + the lease − a tenth of it, which is before the coordinator
    /// lets the lease go as long as this host's clock runs at most 10%
    /// slower than the coordinator's. Unused by other clients.
    pub lease: Duration,
    /// Whether to read pages from shared memory when the node runs on this
    /// host (co-located access; [`Colocated::Auto`] by default: used when
    /// the node's address is a loopback one and it has a local socket).
    /// Writes and everything else still go over the connection.
    pub colocated: Colocated,
}

/// Everything but the token, which a log line must never carry.
impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("credential", &self.credential)
            .field("spin", &self.spin)
            .field("timeout", &self.timeout)
            .field("client_name", &self.client_name)
            .field("tls", &self.tls)
            .field("reconnect_for", &self.reconnect_for)
            .field("fallback", &self.fallback)
            .field("lease", &self.lease)
            .field("colocated", &self.colocated)
            .finish()
    }
}

/// Default spin ceiling, in microseconds.
pub const SPIN_US_DEFAULT: u64 = 1_000;
/// Default reply timeout, in seconds.
pub const TIMEOUT_S_DEFAULT: u64 = 30;
/// Default time to keep reconnecting, in seconds.
pub const RECONNECT_FOR_S_DEFAULT: u64 = 30;
/// Default writer lease of a cluster client, in milliseconds.
pub const LEASE_MS_DEFAULT: u64 = 3_000;
/// The credential a client authenticates as when given only a token: the
/// node's `--token-file` token.
pub const DEFAULT_CREDENTIAL: &str = "default";

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            credential: DEFAULT_CREDENTIAL.into(),
            spin: Duration::from_micros(SPIN_US_DEFAULT),
            timeout: Duration::from_secs(TIMEOUT_S_DEFAULT),
            client_name: "pagoda-client".into(),
            tls: None,
            reconnect_for: Duration::from_secs(RECONNECT_FOR_S_DEFAULT),
            fallback: Vec::new(),
            lease: Duration::from_millis(LEASE_MS_DEFAULT),
            colocated: Colocated::Auto,
        }
    }
}

impl ClientOptions {
    /// Defaults with a token (of the credential `default`).
    pub fn with_token(token: impl Into<Vec<u8>>) -> ClientOptions {
        ClientOptions {
            token: Some(token.into()),
            ..ClientOptions::default()
        }
    }

    /// Defaults with a named credential and its token.
    pub fn with_credential(
        credential: impl Into<String>,
        token: impl Into<Vec<u8>>,
    ) -> ClientOptions {
        ClientOptions {
            token: Some(token.into()),
            credential: credential.into(),
            ..ClientOptions::default()
        }
    }
}

/// A connection to a memory node; cheap to clone, usable from many threads.
///
/// **Reconnects.** When the connection fails (the socket breaks, the node
/// closes it, no reply within `ClientOptions::timeout`), the client dials
/// again for up to `ClientOptions::reconnect_for` (the same address, then
/// `ClientOptions::fallback` in order), authenticates, opens again every
/// region it holds open (resuming its writer epoch and log position), and
/// sends the failed call again if that is safe: reads, statistics and
/// numbered writes (page writes and journal records, sent again with their
/// original numbers, which the node applies once). Creating, deleting,
/// checkpointing, recovering and freezing a region are not sent again: they
/// fail with [`ClientError::OutcomeUnknown`]. A write refused with
/// `NotPrimary` moves the client to the primary the node names. If a newer
/// writer took a region over meanwhile, that region's handle is fenced:
/// every later write through it fails with `StaleEpoch`.
///
/// A client made with [`Client::connect_cluster`] opens each region on its
/// primary, through a connection of the region's own, and follows it
/// through failovers; see that function.
///
/// Pages by number, dirty-page lists and other protocol-level calls are
/// apart, in [`Client::raw`], for tools and tests.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
/// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
/// # let address = node.local_addr();
/// use pagoda::{Client, ClientOptions, RegionOptions};
///
/// let client = Client::connect(address, ClientOptions::default())?;
/// client.create_region("logs", 4 << 20, 4096)?; // 4 MiB in pages of 4 KiB
/// let region = client.open_region("logs", RegionOptions::default())?;
/// region.write_at(0, b"first line")?;
/// region.flush()?;
/// drop(region);
/// let names: Vec<String> = client.list_regions()?.into_iter().map(|info| info.name).collect();
/// assert_eq!(names, ["logs"]);
/// assert_eq!(client.stat_region("logs")?.info.size, 4 << 20);
/// client.delete_region("logs")?;
/// assert!(client.list_regions()?.is_empty());
/// # Ok::<(), pagoda::ClientError>(())
/// ```
#[derive(Clone)]
pub struct Client {
    /// The link to the node: the current connection, and how to dial again.
    connection: Arc<Link>,
    /// Regions whose writer role this client took for
    /// [`raw::Raw::write_pages`], by the id the caller holds; held (and taken
    /// again at each reconnect) as long as the client lives.
    direct_writes: Arc<Mutex<HashMap<u64, Arc<RegionBinding>>>>,
    /// The regions open through this client and its clones, for
    /// [`Client::flush_on_signal`].
    open_regions: Arc<signals::OpenRegions>,
    /// The coordinator and the state of a cluster client.
    cluster: Option<Arc<cluster::Cluster>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.connection.peer())
            .finish()
    }
}

/// `region`, if it has `size` bytes in pages of `page_size`; otherwise the
/// mismatch (and the handle is dropped, giving back its open).
fn check_shape(region: Region, size: u64, page_size: u32) -> Result<Region, ClientError> {
    let info = region.info();
    if info.size == size && info.page_size == page_size {
        return Ok(region);
    }
    Err(ClientError::RegionShapeMismatch {
        name: info.name.clone(),
        size: info.size,
        page_size: info.page_size,
        size_asked: size,
        page_size_asked: page_size,
    })
}

pub(crate) fn unexpected(reply: &Response<'_>) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {:?}", reply.opcode()))
}

impl Client {
    /// Connects and authenticates.
    pub fn connect(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let token_bytes_max = pagoda_wire::limits::TOKEN_BYTES_MAX;
        if options
            .token
            .as_ref()
            .is_some_and(|t| t.len() > token_bytes_max)
        {
            return Err(ClientError::InvalidArgument(format!(
                "the token is longer than {token_bytes_max} bytes"
            )));
        }
        let credential = match &options.token {
            Some(_) => options.credential.as_str(),
            None => "",
        };
        let credential_bytes_max = pagoda_wire::limits::CREDENTIAL_NAME_BYTES_MAX;
        if credential.len() > credential_bytes_max {
            return Err(ClientError::InvalidArgument(format!(
                "the credential name is longer than {credential_bytes_max} bytes"
            )));
        }
        Ok(Client {
            connection: Arc::new(Link::connect(addr, options)?),
            direct_writes: Arc::new(Mutex::new(HashMap::new())),
            open_regions: Arc::new(signals::OpenRegions::default()),
            cluster: None,
        })
    }

    /// Connects to a cluster through its coordinator: `etcd://HOST:PORT[,…]`
    /// or `embedded:DIR` (see `pagoda_cluster::connect`).
    ///
    /// - **Regions are found through the coordinator.** Opening a region
    ///   connects to the primary its record names, with a connection of the
    ///   region's own (shared by that region's handles in this client), so
    ///   regions on different primaries, or failing over to different
    ///   nodes, are held through one `Client`. A region the coordinator has
    ///   no record of is looked for on the client's own node. The client's
    ///   other requests (creating, listing, describing regions, ...) go to
    ///   its own node ([`Client::peer`]): a live node, the one with the most
    ///   free bytes first (or a region's primary while no node is
    ///   registered), followed the same way.
    /// - **Failover.** When a region's primary fails, a read or write in
    ///   flight is sent again to the primary the record names, once it names
    ///   the promoted replica (writes with their original number, applied at
    ///   most once), without the application noticing. The link keeps asking
    ///   the coordinator and dialling, pausing (10 ms doubling to 1 s), for
    ///   at most [`ClientOptions::reconnect_for`] (30 s by default: a
    ///   failover with a node lease of 5 s takes the lease plus a few
    ///   seconds); a primary that vanishes without closing its connections
    ///   is noticed after [`ClientOptions::timeout`] without a reply first.
    ///   So a call waits at most `timeout` + `reconnect_for` before it fails.
    /// - **Writer leases.** Opening a region for writing claims its writer
    ///   key in the coordinator under this client's lease
    ///   ([`ClientOptions::lease`]), before it asks the node; a key another
    ///   host holds is refused with [`ClientError::WriterBusy`] naming it.
    ///   From the lease's local deadline on (no renewal succeeded in time),
    ///   or once the coordinator says it expired, the region refuses every
    ///   write with [`ClientError::LeaseLost`] and gives its writer role on
    ///   the node back. Dropping the last handle of a region releases its
    ///   key. A host that takes a region over waits, holding the key, for
    ///   the node to let the previous writer's role go (at once if that
    ///   writer noticed its loss or died; after the node's writer lease of
    ///   silence if its host vanished), for at most `reconnect_for`.
    pub fn connect_cluster(endpoint: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let coordinator = pagoda_cluster::connect(endpoint)?;
        Client::connect_coordinator(coordinator, options)
    }

    /// [`Client::connect_cluster`] with a coordinator the application holds
    /// already (or one of its own making, such as a test's).
    pub fn connect_coordinator(
        coordinator: Arc<dyn pagoda_cluster::Coordinator>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let cluster = cluster::Cluster::new(coordinator, &options)?;
        let (home, resolver) = cluster.home()?;
        let mut client = Client::connect(&home[..], options)?;
        client.connection.set_resolver(resolver);
        client.cluster = Some(Arc::new(cluster));
        Ok(client)
    }

    /// The coordinator's endpoint, for a cluster client.
    pub fn coordinator(&self) -> Option<String> {
        self.cluster
            .as_ref()
            .map(|cluster| cluster.coordinator().endpoint())
    }

    /// The coordinator lease this cluster client holds its regions' writer
    /// keys under, while it holds one (a region open for writing).
    pub fn writer_lease(&self) -> Option<pagoda_cluster::LeaseId> {
        self.cluster.as_ref().and_then(|cluster| cluster.lease_id())
    }

    /// Installs the flush on SIGTERM and SIGPWR for the regions open through
    /// this client (see [`flush_on_signal`]: flush within
    /// `settings.timeout`, release the writer lease, log, exit with 128 +
    /// the signal).
    pub fn flush_on_signal(&self, settings: FlushOnSignal) -> Result<(), ClientError> {
        flush_on_signal(&[self], settings)
    }

    pub(crate) fn open_regions(&self) -> &Arc<signals::OpenRegions> {
        &self.open_regions
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// Opens a region in `mode`: on this client's node, or for a cluster
    /// client on the region's primary; listed for `flush_on_signal`.
    fn open_in(
        &self,
        name: &str,
        options: RegionOptions,
        mode: OpenMode,
    ) -> Result<Region, ClientError> {
        let region = match &self.cluster {
            Some(cluster) => cluster.open(&self.connection, name, options, mode)?,
            None => {
                let (info, binding) = self.connection.open(name, mode)?;
                Region::new(self.connection.clone(), info, options, binding, mode)?
            }
        };
        self.open_regions.add(region.cache());
        if self.open_regions.start_metrics_once() {
            client_metrics::start(Arc::downgrade(&self.open_regions));
        }
        Ok(region)
    }

    /// How many times this client connected again after its connection
    /// failed.
    pub fn reconnects(&self) -> u64 {
        self.connection.reconnects()
    }

    /// The address of the node the client is connected to now.
    pub fn peer(&self) -> SocketAddr {
        self.connection.peer()
    }

    /// How the client reaches the node's pages now: over TCP, TLS, or
    /// from shared memory on the node's host (co-located; set up when the
    /// first region is opened, see [`ClientOptions::colocated`]).
    pub fn transport(&self) -> Transport {
        self.connection.transport()
    }

    /// Sends a request and waits for its reply, sending it again after a
    /// reconnect if it is safe to (see `link::retry_of`).
    fn call(&self, request: &Request<'_>) -> Result<Reply, ClientError> {
        self.connection.call_into_with(
            retry_of(request),
            |out, id| request.encode(out, id, 0),
            &mut [],
            &|| Ok(()),
        )
    }

    fn region_info(&self, request: &Request<'_>) -> Result<RegionInfo, ClientError> {
        match self.call(request)?.decode()? {
            Response::RegionInfo(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a region of `size` bytes (a multiple of `page_size`, which is a
    /// power of two from 4 KiB to 2 MiB).
    pub fn create_region(
        &self,
        name: &str,
        size: u64,
        page_size: u32,
    ) -> Result<RegionInfo, ClientError> {
        self.region_info(&Request::CreateRegion {
            name,
            size,
            page_size,
            replicas: Vec::new(),
            mode: ReplicationMode::Sync,
        })
    }

    /// Opens a region for reading and writing, with a local cache. This
    /// takes the region's writer role for this client's connection: the node
    /// refuses a second writer (`ErrorCode::WriterBusy`, naming the holder)
    /// until every region handle opened for writing through this connection
    /// is dropped, or the connection ends.
    ///
    /// A cluster client opens it on its primary and claims its writer key
    /// first (see [`Client::connect_cluster`]).
    pub fn open_region(&self, name: &str, options: RegionOptions) -> Result<Region, ClientError> {
        self.open_in(name, options, OpenMode::Write)
    }

    /// Opens region `name` for reading and writing (as
    /// [`Client::open_region`]), creating it first with `size` bytes in
    /// pages of `page_size` (as [`Client::create_region`]) if it does not
    /// exist. An existing region must have that shape, or this fails with
    /// [`ClientError::RegionShapeMismatch`] (the region is left as it is).
    ///
    /// Safe to race: when several clients call it at once for the same
    /// name, one creates the region and every one opens it (the others'
    /// creates fail with `RegionExists`, and they open it instead). A
    /// client whose credential may write the region but not create regions
    /// can open an existing one, as the open is tried first. Like
    /// [`Client::open_region`] it takes the region's writer role, so while
    /// another connection holds that role it fails with
    /// `ErrorCode::WriterBusy`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let node = pagoda_node::Node::start(pagoda_node::NodeConfig::new(
    /// #     "127.0.0.1:0".parse().unwrap(), 8 << 20, dir.path().into())).unwrap();
    /// # let address = node.local_addr();
    /// use pagoda::{Client, ClientError, ClientOptions, RegionOptions};
    ///
    /// let client = Client::connect(address, ClientOptions::default())?;
    /// let region = client.open_or_create_region("state", 1 << 20, 4096, RegionOptions::default())?;
    /// region.write_value(0, &7u32)?;
    /// drop(region);
    /// // The second call opens what the first created.
    /// let region = client.open_or_create_region("state", 1 << 20, 4096, RegionOptions::default())?;
    /// assert_eq!(region.read_value::<u32>(0)?, 7);
    /// drop(region);
    /// // Another shape is refused, naming the region's own.
    /// let error = client
    ///     .open_or_create_region("state", 2 << 20, 4096, RegionOptions::default())
    ///     .unwrap_err();
    /// assert!(matches!(error, ClientError::RegionShapeMismatch { size: 1048576, .. }));
    /// # Ok::<(), pagoda::ClientError>(())
    /// ```
    pub fn open_or_create_region(
        &self,
        name: &str,
        size: u64,
        page_size: u32,
        options: RegionOptions,
    ) -> Result<Region, ClientError> {
        // Open first, so that a credential allowed to write but not to
        // create regions can still open an existing one; then create, and
        // open again whether this client's create won or another's did.
        match self.open_region(name, options.clone()) {
            Ok(region) => return check_shape(region, size, page_size),
            Err(error) if error.code() == Some(ErrorCode::RegionNotFound) => {}
            Err(error) => return Err(error),
        }
        // The create's outcome, when the connection failed during it.
        let unknown = match self.create_region(name, size, page_size) {
            // Created here, or by another client meanwhile.
            Ok(_) => None,
            Err(error) if error.code() == Some(ErrorCode::RegionExists) => None,
            // It may or may not have happened: the open below tells which.
            Err(error @ ClientError::OutcomeUnknown { .. }) => Some(error),
            Err(error) => return Err(error),
        };
        match self.open_region(name, options) {
            Ok(region) => check_shape(region, size, page_size),
            Err(error) if error.code() == Some(ErrorCode::RegionNotFound) => {
                Err(unknown.unwrap_or(error))
            }
            Err(error) => Err(error),
        }
    }

    /// Opens a region for reading only, with a local cache; any number of
    /// clients may, beside one writer. Its caches are not kept coherent with
    /// the writer's: a reader sees what the writer has flushed by the time it
    /// fetches a page.
    pub fn open_region_read_only(
        &self,
        name: &str,
        options: RegionOptions,
    ) -> Result<Region, ClientError> {
        self.open_in(name, options, OpenMode::Read)
    }

    /// Describes a region and its use of the node's RAM.
    pub fn stat_region(&self, name: &str) -> Result<RegionStat, ClientError> {
        match self.call(&Request::StatRegion { name })?.decode()? {
            Response::RegionStat(stat) => Ok(stat),
            other => Err(unexpected(&other)),
        }
    }

    /// Lists the node's regions, by name.
    pub fn list_regions(&self) -> Result<Vec<RegionInfo>, ClientError> {
        match self.call(&Request::ListRegions)?.decode()? {
            Response::RegionList(list) => Ok(list),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a region and frees its RAM on the node.
    pub fn delete_region(&self, name: &str) -> Result<(), ClientError> {
        match self.call(&Request::DeleteRegion { name })?.decode()? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The node's statistics.
    pub fn node_stat(&self) -> Result<NodeStat, ClientError> {
        match self.call(&Request::NodeStat)?.decode()? {
            Response::NodeStat(stat) => Ok(stat),
            other => Err(unexpected(&other)),
        }
    }

    /// Takes a checkpoint of a region to the node's storage backend and
    /// returns when it is complete. `full` writes every page rather than
    /// only those dirty since the last checkpoint. The reply waits for the
    /// whole checkpoint: give the client a `timeout` to match.
    pub fn checkpoint(&self, name: &str, full: bool) -> Result<CheckpointInfo, ClientError> {
        match self.call(&Request::Checkpoint { name, full })?.decode()? {
            Response::CheckpointDone(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts rebuilding region `name` on this client's node from its latest
    /// baseline plus the pages dirty on `source` (a node address) since;
    /// with `source` `None`, from the baseline alone, which needs
    /// `baseline_only`. Follow it with [`Client::recovery_status`], or use
    /// [`Client::recover`].
    pub fn start_recovery(
        &self,
        name: &str,
        source: Option<&str>,
        source_token: Option<&[u8]>,
        baseline_only: bool,
    ) -> Result<RecoveryProgress, ClientError> {
        let request = Request::RecoverRegion {
            name,
            source: source.unwrap_or(""),
            source_token: source_token.unwrap_or(&[]),
            baseline_only,
        };
        match self.call(&request)?.decode()? {
            Response::Recovery(progress) => Ok(progress),
            other => Err(unexpected(&other)),
        }
    }

    /// The progress of the recovery of `name` on this node.
    pub fn recovery_status(&self, name: &str) -> Result<RecoveryProgress, ClientError> {
        match self.call(&Request::RecoveryStatus { name })?.decode()? {
            Response::Recovery(progress) => Ok(progress),
            other => Err(unexpected(&other)),
        }
    }

    /// Recovers region `name` onto this client's node (see
    /// [`Client::start_recovery`]) and waits for the end, calling `progress`
    /// about every `poll`. Returns the final progress, or the node's reason
    /// if recovery failed.
    pub fn recover(
        &self,
        name: &str,
        source: Option<&str>,
        source_token: Option<&[u8]>,
        baseline_only: bool,
        poll: Duration,
        mut progress: impl FnMut(&RecoveryProgress),
    ) -> Result<RecoveryProgress, ClientError> {
        let mut status = self.start_recovery(name, source, source_token, baseline_only)?;
        loop {
            progress(&status);
            match status.phase {
                RecoveryPhase::Done => return Ok(status),
                RecoveryPhase::Failed => {
                    return Err(ClientError::Remote {
                        code: ErrorCode::Internal,
                        message: format!("recovery of {name:?} failed: {}", status.message),
                    });
                }
                RecoveryPhase::Baseline | RecoveryPhase::Source => {}
            }
            std::thread::sleep(poll);
            status = self.recovery_status(name)?;
        }
    }
}

//! The client's link to its node: the current connection, and what it takes
//! to dial again when that connection fails.
//!
//! A [`Connection`] fails for good at its first I/O error. The link sits
//! between it and everything that sends requests (`Client`, `Region`, the
//! journal shipper): when a call fails at the connection level (the socket
//! broke, the node closed it, no reply in time) the link dials again, for at
//! most `ClientOptions::reconnect_for`, trying the current address, the one
//! the client was given and then `ClientOptions::fallback` in order,
//! authenticates, and opens again every region this client holds open:
//! once per write open held (the node counts them per connection), each
//! claiming the writer epoch the client holds, so that it resumes the same
//! epoch and log position; and once for regions open only for reading, to
//! learn their id on the node (ids are the node's: another node gives
//! another). Then the failed call is sent again if that is safe:
//!
//! - reads and statistics are repeated as they are;
//! - numbered writes (`WritePages`, `ApplyJournal`) are repeated with their
//!   original epoch and log sequence number, which the node applies at most
//!   once (see `write_log`);
//! - anything else (creating, deleting, checkpointing, recovering or
//!   freezing a region) is not repeated: the caller gets
//!   `ClientError::OutcomeUnknown`.
//!
//! A write open whose epoch a newer writer took over meanwhile is refused
//! (`StaleEpoch`): its write log is fenced, and every later write through it
//! fails with that error.
//!
//! **Clusters.** A link may have a [`Resolver`] (a client made with
//! `Client::connect_cluster`: the coordinator's record of where a region's
//! primary is). Every round of dialling asks it first, so the addresses it
//! names come before the old ones; as a round is repeated (pausing) until
//! `ClientOptions::reconnect_for` has passed, a link whose node failed keeps
//! trying until the record names the promoted replica or the old node
//! answers again. A region held under a writer lease ([`LeaseGuard`]) whose
//! lease is lost is re-opened for reading only: its writer role is not
//! claimed again.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pagoda_wire::auth::ClientHandshake;
use pagoda_wire::{ErrorCode, OpenMode, RegionInfo, Request, Response};
use parking_lot::{Mutex, RwLock};

use crate::ClientOptions;
use crate::connection::{Connection, PendingCall, Reply};
use crate::error::ClientError;
use crate::write_log::WriterLog;

/// Reconnects one call may go through before its error is returned.
pub(crate) const CALL_RECONNECTS_MAX: u32 = 8;
/// Times one call or one reconnect follows a `NotPrimary` redirect.
pub(crate) const REDIRECTS_MAX: u32 = 4;
/// The first pause between two rounds of dialling; it doubles up to
/// [`RECONNECT_PAUSE_MAX`].
const RECONNECT_PAUSE_MIN: Duration = Duration::from_millis(10);
/// Short: during a failover the next round may find the new primary, and
/// a refused dial costs little (cluster links ask the coordinator once a
/// round).
const RECONNECT_PAUSE_MAX: Duration = Duration::from_millis(200);
/// Rounds of dialling one reconnect makes at most (besides its deadline).
const RECONNECT_ROUNDS_MAX: u32 = 1_000;
/// The first pause before a link with a resolver moves off a node that
/// does not lead a region (see [`Link::move_off`]); it doubles up to
/// [`RECONNECT_PAUSE_MAX`].
pub(crate) const MOVE_PAUSE_MIN: Duration = Duration::from_millis(10);

/// Whether a failed call may be sent again after a reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Repeating it changes nothing (a read) or the node deduplicates it.
    Safe,
    /// Repeating it could do it twice; the name is for the error.
    Unsafe(&'static str),
}

/// The retry rule of a request sent through `Client::call`.
pub(crate) fn retry_of(request: &Request<'_>) -> Retry {
    match request {
        Request::Ping { .. }
        | Request::StatRegion { .. }
        | Request::ListRegions
        | Request::NodeStat
        | Request::ReadPages { .. }
        | Request::DirtyPages { .. }
        | Request::StoredSegments { .. }
        | Request::RecoveryStatus { .. }
        | Request::RegionChecksum { .. } => Retry::Safe,
        Request::CreateRegion { .. } => Retry::Unsafe("CreateRegion"),
        Request::DeleteRegion { .. } => Retry::Unsafe("DeleteRegion"),
        Request::Checkpoint { .. } => Retry::Unsafe("Checkpoint"),
        Request::RecoverRegion { .. } => Retry::Unsafe("RecoverRegion"),
        Request::FreezeRegion { .. } => Retry::Unsafe("FreezeRegion"),
        _ => Retry::Unsafe("the request"),
    }
}

/// Whether an error means the connection failed (rather than the node
/// answering with an error): then a reconnect may help.
pub(crate) fn connection_failure(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Disconnected(_) | ClientError::Timeout(_)
    )
}

/// The primary a `NotPrimary` refusal names: its message ends with
/// `... write to its primary HOST:PORT`.
pub fn primary_of(message: &str) -> Option<SocketAddr> {
    let word = message
        .split_whitespace()
        .next_back()?
        .trim_end_matches(['.', ',', ')', ';']);
    if let Ok(addr) = word.parse::<SocketAddr>() {
        return Some(addr);
    }
    // A host name: only if it has a port, so that a stray word is no
    // address.
    let (host, port) = word.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    word.to_socket_addrs().ok()?.next()
}

/// The primary a `NotPrimary` error names, if it is one.
pub(crate) fn redirect_of(error: &ClientError) -> Option<SocketAddr> {
    match error {
        ClientError::Remote {
            code: ErrorCode::NotPrimary,
            message,
        } => primary_of(message),
        _ => None,
    }
}

/// Where a link should dial first: asked at the start of every round of
/// dialling, without the link's locks held (it may take a round trip to a
/// coordinator). An empty answer leaves the link to its own addresses.
pub(crate) trait Resolver: Send + Sync {
    /// The addresses to dial first, best first.
    fn resolve(&self) -> Vec<SocketAddr>;
}

/// A right to write that can be lost while a region is held (the writer
/// lease of a cluster client): checked before every write through the
/// region, and at a reconnect, where a lost one is not claimed again.
pub(crate) trait LeaseGuard: Send + Sync {
    /// `Ok` while the right holds; the error to return for every write once
    /// it is lost (lost for good: never `Ok` again after an error).
    fn check(&self) -> Result<(), ClientError>;
}

/// One region this client holds open, shared by its handles: its name, its
/// id on the current node (read at every request's encoding, as a reconnect
/// to another node changes it), its write log, and the opens held.
pub(crate) struct RegionBinding {
    name: String,
    /// The id the region had when first opened (what callers hold in their
    /// `RegionInfo`).
    opened_id: u64,
    id: AtomicU64,
    log: OnceLock<Arc<WriterLog>>,
    /// Changed only under the link's `regions` lock.
    write_opens: AtomicU32,
    read_opens: AtomicU32,
    /// The writer lease its write opens are held under, if any.
    lease: OnceLock<Arc<dyn LeaseGuard>>,
}

impl RegionBinding {
    fn new(name: &str, id: u64) -> RegionBinding {
        RegionBinding {
            name: name.to_owned(),
            opened_id: id,
            id: AtomicU64::new(id),
            log: OnceLock::new(),
            write_opens: AtomicU32::new(0),
            read_opens: AtomicU32::new(0),
            lease: OnceLock::new(),
        }
    }

    /// The region's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Puts the binding's write opens under `lease` (once: later calls are
    /// ignored, as every write open of one binding is held under the lease
    /// it was first opened with).
    pub(crate) fn set_lease(&self, lease: Arc<dyn LeaseGuard>) {
        let _ = self.lease.set(lease);
    }

    /// Fails once the writer lease is lost (see [`LeaseGuard`]).
    pub(crate) fn check_lease(&self) -> Result<(), ClientError> {
        match self.lease.get() {
            Some(lease) => lease.check(),
            None => Ok(()),
        }
    }

    /// Whether the binding's write opens can no longer write: its write log
    /// latched or its writer lease is lost.
    fn cannot_write(&self) -> bool {
        self.log().is_some_and(|log| log.latched()) || self.check_lease().is_err()
    }

    /// The region's id on the node the link is connected to now.
    pub(crate) fn id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }

    /// The region's write log, if it was opened for writing.
    pub(crate) fn log(&self) -> Option<&Arc<WriterLog>> {
        self.log.get()
    }

    fn held(&self) -> bool {
        self.write_opens.load(Ordering::Relaxed) > 0 || self.read_opens.load(Ordering::Relaxed) > 0
    }
}

/// Where the link may dial.
struct Addresses {
    /// The address of the current connection.
    current: SocketAddr,
    /// The addresses `Client::connect` was given (resolved).
    given: Vec<SocketAddr>,
    /// `ClientOptions::fallback`.
    fallback: Vec<SocketAddr>,
    /// A primary a `NotPrimary` refusal named: dialled first.
    redirect: Option<SocketAddr>,
}

impl Addresses {
    /// Every address to try, in order, each once.
    fn candidates(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = Vec::new();
        let ordered = self
            .redirect
            .iter()
            .chain(std::iter::once(&self.current))
            .chain(self.given.iter())
            .chain(self.fallback.iter());
        for addr in ordered {
            if !all.contains(addr) {
                all.push(*addr);
            }
        }
        all
    }
}

/// Why re-opening the held regions on a fresh connection failed.
enum Regrant {
    /// The node holds a region as a replica; its primary is there.
    Redirect(SocketAddr),
    /// Another failure: try the next address.
    Failed(ClientError),
}

/// See the module documentation.
pub(crate) struct Link {
    options: ClientOptions,
    /// Asked for the addresses to dial first at every round of dialling.
    resolver: OnceLock<Arc<dyn Resolver>>,
    /// The current connection and its generation (bumped by each reconnect).
    current: RwLock<(Arc<Connection>, u64)>,
    addresses: Mutex<Addresses>,
    /// Held by the one thread reconnecting; the others wait for it.
    reconnecting: Mutex<()>,
    /// The regions held open. Opens, closes and the re-opening at a
    /// reconnect happen under this lock, so that a reconnect grants exactly
    /// the opens the client holds.
    regions: Mutex<Vec<Arc<RegionBinding>>>,
    reconnects: AtomicU64,
    /// The local channel for co-located access, once set up.
    colocation: crate::colocated::Colocation,
}

impl Link {
    /// Connects to `addr` and authenticates.
    pub(crate) fn connect(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Link, ClientError> {
        let given: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Connect {
                addr: "(unresolved)".into(),
                source,
            })?
            .collect();
        let connection = Connection::open(&given[..], &options)?;
        handshake(&connection, &options)?;
        let current = connection.peer();
        let colocation = crate::colocated::Colocation::new(options.colocated.clone());
        Ok(Link {
            addresses: Mutex::new(Addresses {
                current,
                given,
                fallback: options.fallback.clone(),
                redirect: None,
            }),
            options,
            resolver: OnceLock::new(),
            current: RwLock::new((Arc::new(connection), 0)),
            reconnecting: Mutex::new(()),
            regions: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            colocation,
        })
    }

    /// Makes `resolver` the first source of addresses at every reconnect
    /// (once: later calls are ignored).
    pub(crate) fn set_resolver(&self, resolver: Arc<dyn Resolver>) {
        let _ = self.resolver.set(resolver);
    }

    /// How long this link keeps reconnecting (`ClientOptions::reconnect_for`).
    pub(crate) fn reconnect_for(&self) -> Duration {
        self.options.reconnect_for
    }

    /// Whether `error`, a node's refusal, says that the node this link is
    /// on does not lead the region (it stepped down, or is handing the lead
    /// off: `RegionUnavailable`; a replica that does not know its primary:
    /// `NotPrimary` naming none), for a link with a resolver: it should ask
    /// the resolver again and move ([`Link::move_off`]). A link without one
    /// returns the refusal, as before.
    pub(crate) fn led_elsewhere(&self, error: &ClientError) -> bool {
        self.resolver.get().is_some()
            && match error.code() {
                Some(ErrorCode::RegionUnavailable) => true,
                Some(ErrorCode::NotPrimary) => redirect_of(error).is_none(),
                _ => false,
            }
    }

    /// Whether `error` refused a request sent on connection `generation`
    /// only because the link has replaced that connection since: the new
    /// connection resumed the writer role, so the old one no longer holds
    /// it (`NotWriter`). A numbered write refused so is sent again on the
    /// current connection.
    pub(crate) fn superseded(&self, error: &ClientError, generation: u64) -> bool {
        error.code() == Some(ErrorCode::NotWriter) && self.current.read().1 != generation
    }

    /// Moves off the node of connection `generation` (see
    /// [`Link::led_elsewhere`]): pauses for `pause` (which then doubles, up
    /// to a second), drops that connection and reconnects, asking the
    /// resolver first. A node that does not lead the region refuses the
    /// re-opening of a write open, so the link goes on looking, for at most
    /// `ClientOptions::reconnect_for`.
    pub(crate) fn move_off(
        &self,
        generation: u64,
        pause: &mut Duration,
    ) -> Result<(), ClientError> {
        std::thread::sleep(*pause);
        *pause = (*pause * 2).min(RECONNECT_PAUSE_MAX);
        let (connection, current) = self.current();
        if current == generation {
            tracing::info!(peer = %connection.peer(), "the node does not lead the region; asking where it is led");
            connection.close("the node does not lead the region".into());
        }
        self.reconnect(generation)
    }

    /// The current connection and its generation.
    pub(crate) fn current(&self) -> (Arc<Connection>, u64) {
        let current = self.current.read();
        (current.0.clone(), current.1)
    }

    /// The address of the node the link is connected to.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.current.read().0.peer()
    }

    /// How the link reaches the node's pages now.
    pub(crate) fn transport(&self) -> crate::Transport {
        if self.colocation.is_active() {
            crate::Transport::Colocated
        } else if self.options.tls.is_some() {
            crate::Transport::Tls
        } else {
            crate::Transport::Tcp
        }
    }

    /// Region `id`'s memory, shared by the node over its local socket, if
    /// co-located access is allowed and available (see `colocated`).
    pub(crate) fn share_region(
        &self,
        id: u64,
        page_size: usize,
        size: u64,
    ) -> Option<crate::colocated::SharedRegion> {
        let generation = self.reconnects();
        let channel =
            self.colocation
                .channel(self.peer().ip().is_loopback(), &self.options, || {
                    let reply = self.call(|out, id| Request::LocalSocket.encode(out, id, 0))?;
                    match reply.decode()? {
                        Response::LocalSocketPath { path } => Ok(path.to_owned()),
                        other => Err(crate::unexpected(&other)),
                    }
                })?;
        match channel.share(id, page_size, size, generation) {
            Ok(shared) => Some(shared),
            Err(error) => {
                tracing::debug!(%error, region = id, "the node did not share the region; its reads stay on the connection");
                None
            }
        }
    }

    /// How many times the link connected again.
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The most pages of `page_size` one request may carry.
    pub(crate) fn batch_pages_max(&self, page_size: usize) -> usize {
        self.current.read().0.batch_pages_max(page_size)
    }

    /// Sends one request built by `encode(out, request_id)` and waits for
    /// its reply, reconnecting and sending it again by `retry`. `before`
    /// runs before every attempt (the journal shipper uses it to send its
    /// records ahead of a page fetch).
    pub(crate) fn call_into_with(
        &self,
        retry: Retry,
        encode: impl Fn(&mut Vec<u8>, u64),
        buffers: &mut [&mut [u8]],
        before: &dyn Fn() -> Result<(), ClientError>,
    ) -> Result<Reply, ClientError> {
        let mut reconnects = 0;
        let began = Instant::now();
        let mut move_pause = MOVE_PAUSE_MIN;
        loop {
            let (connection, generation) = self.current();
            if connection.is_failed() {
                // Nothing was sent: reconnecting first is safe for any call.
                reconnects += 1;
                if reconnects > CALL_RECONNECTS_MAX {
                    return Err(ClientError::Disconnected(
                        "the connection kept failing".into(),
                    ));
                }
                self.reconnect(generation)?;
                continue;
            }
            before()?;
            if self.current.read().1 != generation {
                // `before` reconnected: start over on the new connection.
                reconnects += 1;
                continue;
            }
            match connection.call_into(&encode, buffers) {
                Err(error) if connection_failure(&error) => {
                    if let Retry::Unsafe(request) = retry {
                        return Err(ClientError::OutcomeUnknown {
                            request: request.to_owned(),
                            reason: error.to_string(),
                        });
                    }
                    reconnects += 1;
                    if reconnects > CALL_RECONNECTS_MAX {
                        return Err(error);
                    }
                    self.reconnect(generation).map_err(|reconnect| {
                        ClientError::Disconnected(format!("{error}; then {reconnect}"))
                    })?;
                }
                Ok(reply)
                    if retry == Retry::Safe
                        && self.resolver.get().is_some()
                        && !reply.delivered()
                        && began.elapsed() < self.options.reconnect_for =>
                {
                    // A cluster link on a node that no longer leads the
                    // region: sent again where the resolver says it is led.
                    let moved = matches!(reply.decode(), Err(error) if self.led_elsewhere(&error));
                    if !moved {
                        return Ok(reply);
                    }
                    self.move_off(generation, &mut move_pause)?;
                }
                other => return other,
            }
        }
    }

    /// Sends any request (see `Client::request`): repeated only if the
    /// connection had failed before it was sent.
    pub(crate) fn call(&self, encode: impl Fn(&mut Vec<u8>, u64)) -> Result<Reply, ClientError> {
        self.call_into_with(Retry::Unsafe("the request"), encode, &mut [], &|| Ok(()))
    }

    /// Sends a request without waiting, on the current connection
    /// (reconnecting first if it has failed); never repeated.
    pub(crate) fn send(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        waiter: std::thread::Thread,
    ) -> Result<PendingCall, ClientError> {
        let (mut connection, generation) = self.current();
        if connection.is_failed() {
            self.reconnect(generation)?;
            connection = self.current().0;
        }
        let call = connection.send(encode, waiter)?;
        Ok(call.on(connection))
    }

    /// Sends a page read whose reply lands in `buffer`, without waiting, on
    /// the current connection; never repeated and never reconnecting (a
    /// read-ahead is dropped rather than delayed). See
    /// [`Connection::send_into`] for the buffer's contract.
    pub(crate) fn send_into(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        buffer: &mut [u8],
    ) -> Result<PendingCall, ClientError> {
        let (connection, _) = self.current();
        let call = connection.send_into(encode, buffer)?;
        Ok(call.on(connection))
    }

    /// Waits for the reply to a request sent with [`Link::send`].
    pub(crate) fn wait_for(&self, call: &PendingCall) -> Result<Reply, ClientError> {
        match call.connection() {
            Some(connection) => connection.wait_for(call),
            None => self.current().0.wait_for(call),
        }
    }

    /// Opens region `name` (counting one more open of this client's), on the
    /// current connection, reconnecting if it has failed. A write open
    /// records the epoch and log position it was granted in the region's
    /// write log.
    pub(crate) fn open(
        &self,
        name: &str,
        mode: OpenMode,
    ) -> Result<(RegionInfo, Arc<RegionBinding>), ClientError> {
        let mut reconnects = 0;
        let mut redirects = 0;
        loop {
            let mut regions = self.regions.lock();
            let (connection, generation) = self.current();
            let outcome = if connection.is_failed() {
                Err(ClientError::Disconnected("the connection failed".into()))
            } else {
                open_on(&connection, name, mode, 0)
            };
            match outcome {
                Ok((info, epoch, lsn)) => {
                    // A region held under this name with this id (not
                    // fenced, for a write open) is the same one, opened once
                    // more; otherwise (a new region, or one recreated under
                    // the name) it gets a binding of its own.
                    let existing = regions
                        .iter()
                        .find(|binding| {
                            binding.name == name
                                && binding.id() == info.id
                                && binding.held()
                                && !(mode == OpenMode::Write && binding.cannot_write())
                        })
                        .cloned();
                    let binding = match existing {
                        Some(binding) => binding,
                        None => {
                            let binding = Arc::new(RegionBinding::new(name, info.id));
                            regions.push(binding.clone());
                            binding
                        }
                    };
                    match mode {
                        OpenMode::Write => {
                            let log = binding
                                .log
                                .get_or_init(|| Arc::new(WriterLog::new(epoch, lsn)));
                            log.granted(epoch, lsn);
                            binding.write_opens.fetch_add(1, Ordering::Relaxed);
                        }
                        OpenMode::Read => {
                            binding.read_opens.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    return Ok((info, binding));
                }
                Err(error) if connection_failure(&error) => {
                    drop(regions);
                    reconnects += 1;
                    if reconnects > CALL_RECONNECTS_MAX {
                        return Err(error);
                    }
                    self.reconnect(generation)?;
                }
                Err(error) => match redirect_of(&error) {
                    Some(primary) if redirects < REDIRECTS_MAX => {
                        drop(regions);
                        redirects += 1;
                        self.redirect(generation, primary)?;
                    }
                    _ => return Err(error),
                },
            }
        }
    }

    /// Gives back one open of `binding`: for a write open (of a region not
    /// fenced: a fenced one holds no role) the node is told with
    /// `CloseRegion`.
    pub(crate) fn close(&self, binding: &Arc<RegionBinding>, mode: OpenMode) {
        let connection = {
            let mut regions = self.regions.lock();
            let opens = match mode {
                OpenMode::Write => &binding.write_opens,
                OpenMode::Read => &binding.read_opens,
            };
            let before = opens.load(Ordering::Relaxed);
            assert!(before > 0, "a region closed more often than opened");
            opens.store(before - 1, Ordering::Relaxed);
            if !binding.held() {
                regions.retain(|held| !Arc::ptr_eq(held, binding));
            }
            // Taken under the lock: a reconnect after this point grants one
            // open fewer, so the close must go to the connection before it.
            self.current().0
        };
        // A fenced region holds no role; nor does one whose writer lease is
        // lost (its connection was dropped when the loss was noticed, and a
        // reconnect does not claim the role again).
        if mode == OpenMode::Write && !binding.cannot_write() && !connection.is_failed() {
            let region = binding.id();
            let _ = connection.call(|out, id| Request::CloseRegion { region }.encode(out, id, 0));
        }
    }

    /// The binding of a region this client holds open, by the id it was
    /// opened with.
    pub(crate) fn binding_of(&self, info: &RegionInfo) -> Option<Arc<RegionBinding>> {
        self.regions
            .lock()
            .iter()
            .find(|binding| binding.name == info.name && binding.opened_id == info.id)
            .cloned()
    }

    /// Makes `primary` the first address to dial, and moves there if the
    /// link is still on the connection of generation `generation`.
    pub(crate) fn redirect(&self, generation: u64, primary: SocketAddr) -> Result<(), ClientError> {
        tracing::info!(%primary, "the node holds the region as a replica; moving to its primary");
        self.addresses.lock().redirect = Some(primary);
        self.reconnect(generation)
    }

    /// Replaces the connection of generation `failed` by a new one (unless
    /// another thread did already), re-opening every region held; see the
    /// module documentation. Fails if no address answers within
    /// `ClientOptions::reconnect_for`.
    pub(crate) fn reconnect(&self, failed: u64) -> Result<(), ClientError> {
        let _reconnecting = self.reconnecting.lock();
        let (old, generation) = self.current();
        if generation != failed {
            return Ok(());
        }
        let reconnect_for = self.options.reconnect_for;
        if reconnect_for.is_zero() {
            return Err(ClientError::Disconnected(
                "the connection failed, and reconnecting is off (ClientOptions::reconnect_for \
                 is zero)"
                    .into(),
            ));
        }
        // Every request still waiting on the old connection fails now, and
        // is repeated on the new one by its caller where that is safe.
        old.close("the client is reconnecting".into());
        let began = Instant::now();
        let deadline = began + reconnect_for;
        let mut pause = RECONNECT_PAUSE_MIN;
        let mut last_error: Option<ClientError> = None;
        let mut redirects = 0;
        let mut rounds = 0;
        while rounds < RECONNECT_ROUNDS_MAX {
            rounds += 1;
            // The resolver's addresses first (asked at every round: the
            // record may change while this link waits), then the link's own.
            let mut candidates = match self.resolver.get() {
                Some(resolver) => resolver.resolve(),
                None => Vec::new(),
            };
            for addr in self.addresses.lock().candidates() {
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
            let mut redirected = false;
            for addr in candidates {
                let connection = match self.dial(addr) {
                    Ok(connection) => connection,
                    Err(error) if final_dial_error(&error) => return Err(error),
                    Err(error) => {
                        tracing::debug!(%addr, %error, "reconnecting: dialling failed");
                        last_error = Some(error);
                        continue;
                    }
                };
                let mut regions = self.regions.lock();
                match regrant(&connection, &regions) {
                    Ok(ids) => {
                        for (binding, id) in regions.iter_mut().zip(ids) {
                            if let Some(id) = id {
                                binding.id.store(id, Ordering::Release);
                            }
                        }
                        {
                            let mut addresses = self.addresses.lock();
                            addresses.current = addr;
                            if addresses.redirect == Some(addr) {
                                addresses.redirect = None;
                            }
                        }
                        *self.current.write() = (Arc::new(connection), generation + 1);
                        drop(regions);
                        let count = self.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::info!(
                            %addr,
                            reconnects = count,
                            took_ms = began.elapsed().as_millis() as u64,
                            "reconnected"
                        );
                        return Ok(());
                    }
                    Err(Regrant::Redirect(primary)) => {
                        drop(regions);
                        connection.close("moving to the region's primary".into());
                        if redirects < REDIRECTS_MAX {
                            redirects += 1;
                            self.addresses.lock().redirect = Some(primary);
                            redirected = true;
                            break;
                        }
                        last_error = Some(ClientError::Disconnected(format!(
                            "{addr} sent this client to {primary} more than {REDIRECTS_MAX} times"
                        )));
                    }
                    Err(Regrant::Failed(error)) => {
                        drop(regions);
                        connection.close("re-opening the regions failed".into());
                        last_error = Some(error);
                    }
                }
            }
            if redirected {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
        }
        let last = last_error.map_or_else(|| "no address to dial".to_owned(), |e| e.to_string());
        Err(ClientError::Disconnected(format!(
            "reconnecting failed for {reconnect_for:?}: {last}"
        )))
    }

    fn dial(&self, addr: SocketAddr) -> Result<Connection, ClientError> {
        let connection = Connection::open(addr, &self.options)?;
        handshake(&connection, &self.options)?;
        Ok(connection)
    }
}

/// A dialling error that another attempt would only repeat: the node
/// refused the credential, or the client's own settings are wrong.
fn final_dial_error(error: &ClientError) -> bool {
    match error {
        ClientError::Remote { code, .. } => {
            matches!(code, ErrorCode::NotAuthenticated | ErrorCode::Forbidden)
        }
        ClientError::InvalidArgument(_) => true,
        _ => false,
    }
}

/// Opens the held regions again on a fresh connection: each write open
/// claims the epoch held (a region whose epoch a newer writer took is
/// fenced instead), and a region held only for reading is opened once for
/// reading. Returns each binding's id on this node (`None`: unchanged).
fn regrant(
    connection: &Connection,
    regions: &[Arc<RegionBinding>],
) -> Result<Vec<Option<u64>>, Regrant> {
    let mut ids = Vec::with_capacity(regions.len());
    for binding in regions {
        let mut id = None;
        let write_opens = binding.write_opens.load(Ordering::Relaxed);
        // A lost writer lease: no role to claim, as for a fenced log.
        let log = binding
            .log()
            .filter(|log| !log.latched() && binding.check_lease().is_ok());
        let mut read_open = binding.read_opens.load(Ordering::Relaxed) > 0;
        match log {
            Some(log) if write_opens > 0 => {
                for _ in 0..write_opens {
                    match open_on(connection, &binding.name, OpenMode::Write, log.epoch()) {
                        Ok((info, epoch, _)) if epoch == log.epoch() => id = Some(info.id),
                        Ok((_, epoch, _)) => {
                            // A claim is answered with the claimed epoch or
                            // refused; anything else is a broken node.
                            return Err(Regrant::Failed(ClientError::Protocol(format!(
                                "claimed writer epoch {} of region {:?}, granted {epoch}",
                                log.epoch(),
                                binding.name
                            ))));
                        }
                        Err(error) if error.code() == Some(ErrorCode::StaleEpoch) => {
                            tracing::warn!(region = %binding.name, %error, "fenced: a newer writer took the region over");
                            log.fence(error.to_string());
                            read_open = true;
                            break;
                        }
                        Err(error) => {
                            if let Some(primary) = redirect_of(&error) {
                                return Err(Regrant::Redirect(primary));
                            }
                            if connection_failure(&error) {
                                return Err(Regrant::Failed(error));
                            }
                            // The region is gone, or this credential lost
                            // its right: writes through it fail with that.
                            log.break_off(format!(
                                "re-opening region {:?} for writing after a reconnect: {error}",
                                binding.name
                            ));
                            read_open = true;
                            break;
                        }
                    }
                }
            }
            // Fenced or broken: no role to claim; its reads still need the
            // region's id on this node.
            _ if write_opens > 0 => read_open = true,
            _ => {}
        }
        if read_open && id.is_none() {
            match open_on(connection, &binding.name, OpenMode::Read, 0) {
                Ok((info, _, _)) => id = Some(info.id),
                Err(error) if connection_failure(&error) => return Err(Regrant::Failed(error)),
                Err(error) => {
                    // Reads of it will fail with the node's own error.
                    tracing::warn!(region = %binding.name, %error, "re-opening a region after a reconnect failed");
                }
            }
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Sends `OpenRegion` on `connection`: the region, the writer epoch and
/// the log position.
fn open_on(
    connection: &Connection,
    name: &str,
    mode: OpenMode,
    claim_epoch: u64,
) -> Result<(RegionInfo, u64, u64), ClientError> {
    let request = Request::OpenRegion {
        name,
        mode,
        claim_epoch,
    };
    let reply = connection.call(|out, id| request.encode(out, id, 0))?;
    match reply.decode()? {
        Response::RegionOpened {
            info,
            writer_epoch,
            lsn,
        } => Ok((info, writer_epoch, lsn)),
        other => Err(crate::unexpected(&other)),
    }
}

/// The handshake's first half for `options`: the client name (for the
/// node's logs, a long one cut to the limit at a character boundary rather
/// than refused) and the credential, none without a token (only a node with
/// none configured accepts that).
pub(crate) fn client_handshake(options: &ClientOptions) -> ClientHandshake {
    let mut name_end = options
        .client_name
        .len()
        .min(pagoda_wire::limits::CLIENT_NAME_BYTES_MAX);
    while !options.client_name.is_char_boundary(name_end) {
        name_end -= 1;
    }
    let credential = match &options.token {
        Some(_) => options.credential.as_str(),
        None => "",
    };
    ClientHandshake::new(
        &options.client_name[..name_end],
        credential,
        options.token.clone().unwrap_or_default(),
    )
}

/// Authenticates on a fresh connection and records the node's limits.
fn handshake(connection: &Connection, options: &ClientOptions) -> Result<(), ClientError> {
    let handshake = client_handshake(options);
    let hello = handshake.hello();
    let mut reply = connection.call(|out, id| hello.encode(out, id, 0))?;
    let proof = match reply.decode()? {
        Response::AuthChallenge { salt, node_nonce } => Some(handshake.proof(salt, &node_nonce)),
        _ => None,
    };
    if let Some(proof) = proof {
        reply = connection.call(|out, id| proof.encode(out, id, 0))?;
    }
    match reply.decode()? {
        Response::HelloOk {
            batch_bytes_max,
            batch_pages_max,
            ..
        } => {
            connection.set_limits(batch_bytes_max as usize, batch_pages_max as usize);
            Ok(())
        }
        other => Err(crate::unexpected(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the redirect: the primary is the message's last word, an
    // address, with or without trailing punctuation; no address, no
    // redirect.
    #[test]
    fn primary_is_read_from_the_last_word() {
        let addr: SocketAddr = "127.0.0.1:7071".parse().unwrap();
        assert_eq!(
            primary_of("region \"r\" is a replica here: write to its primary 127.0.0.1:7071"),
            Some(addr)
        );
        assert_eq!(
            primary_of("... write to its primary 127.0.0.1:7071."),
            Some(addr)
        );
        assert_eq!(
            primary_of("write to its primary [::1]:7071"),
            Some("[::1]:7071".parse().unwrap())
        );
        assert_eq!(primary_of("region is a replica"), None);
        assert_eq!(primary_of(""), None);
        assert_eq!(primary_of("primary 7071"), None);
    }

    // Guards the retry rules: reads repeat, what creates or destroys does
    // not.
    #[test]
    fn retry_rules_by_request() {
        assert_eq!(retry_of(&Request::ListRegions), Retry::Safe);
        assert_eq!(retry_of(&Request::NodeStat), Retry::Safe);
        assert_eq!(
            retry_of(&Request::DeleteRegion { name: "r" }),
            Retry::Unsafe("DeleteRegion")
        );
        assert_eq!(
            retry_of(&Request::Checkpoint {
                name: "r",
                full: false
            }),
            Retry::Unsafe("Checkpoint")
        );
        assert_eq!(
            retry_of(&Request::FreezeRegion { region: 1 }),
            Retry::Unsafe("FreezeRegion")
        );
    }
}

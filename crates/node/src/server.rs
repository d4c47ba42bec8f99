//! The node's network server: an acceptor thread and one thread per
//! connection.
//!
//! A connection must start with `Hello`. After that it may pipeline any number
//! of requests; they are served in order and each reply carries its request's
//! id. Replies to requests that arrived together are written together. A
//! framing error (bad magic, version, length or checksum, or a stream closed
//! mid-frame) is answered with an error reply carrying request id 0 where the
//! stream is still writable, and the connection is closed; a well-framed
//! request that fails (unknown opcode, malformed payload, out-of-range page,
//! out of memory, ...) gets an error reply and the connection goes on. Nothing
//! one connection sends affects another.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pagoda_wire::frame::FrameBuilder;
use pagoda_wire::io::FrameReader;
use pagoda_wire::limits::{
    BATCH_BYTES_MAX, BATCH_PAGES_MAX, FRAME_PAYLOAD_BYTES_MAX, HELLO_PAYLOAD_BYTES_MAX,
    PING_REPLY_BYTES_MAX, SEGMENT_BYTES,
};
use pagoda_wire::message::NodeStat;
use pagoda_wire::{ErrorCode, Opcode, RegionStat, Request, Response, VERSION, WireError};
use parking_lot::Mutex;

use crate::arena::Arena;
use crate::catalog::Catalog;
use crate::error::NodeError;

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
        }
    }
}

/// Default spin budget before a blocking read, in microseconds.
pub const SPIN_US_DEFAULT: u64 = 50;
/// Default connection limit.
pub const CONNECTIONS_MAX_DEFAULT: usize = 512;
/// Replies are written once this many bytes are pending, even if more
/// requests are buffered.
const REPLY_FLUSH_BYTES: usize = 1024 * 1024;
/// Default time a new connection has to authenticate before it is closed.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// How often the acceptor checks for shutdown while idle.
const ACCEPT_POLL_MS: i32 = 100;
/// How long shutdown lets connections finish the request in hand before it
/// closes their sockets outright (which also wakes a thread blocked writing to
/// a client that stopped reading).
const SHUTDOWN_GRACE_MS: u64 = 1000;

/// A served connection: a handle on its socket (to close it at shutdown) and
/// its thread.
struct ConnectionEntry {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    config: NodeConfig,
    catalog: Catalog,
    arena: Arc<Arena>,
    shutting_down: AtomicBool,
    connections: Mutex<HashMap<u64, ConnectionEntry>>,
    connection_count: AtomicU32,
    requests: AtomicU64,
}

/// A running node. Dropping it shuts it down.
pub struct Node {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
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
        let arena = Arc::new(Arena::new(config.capacity_bytes, SEGMENT_BYTES)?);
        let catalog = Catalog::open(&config.data_dir, arena.clone())?;
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
            "node started"
        );
        let shared = Arc::new(Shared {
            config,
            catalog,
            arena,
            shutting_down: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            connection_count: AtomicU32::new(0),
            requests: AtomicU64::new(0),
        });
        let acceptor_shared = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("pagoda-accept".into())
            .spawn(move || accept_loop(acceptor_shared, listener))
            .map_err(|e| NodeError::io("spawning the acceptor", e))?;
        Ok(Node {
            shared,
            local_addr,
            acceptor: Some(acceptor),
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
        tracing::info!(local_addr = %self.local_addr, "node stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut next_id = 0u64;
    while !shared.shutting_down.load(Ordering::SeqCst) {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                let mut poll = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut poll, 1, ACCEPT_POLL_MS) };
                continue;
            }
            Err(error) => {
                // Typically EMFILE: back off rather than spin.
                tracing::warn!(%error, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        next_id += 1;
        if let Err(error) = admit(&shared, stream, peer, next_id) {
            tracing::warn!(%peer, %error, "could not serve connection");
        }
    }
}

fn admit(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let count = shared.connection_count.fetch_add(1, Ordering::SeqCst) as usize;
    if count >= shared.config.connections_max {
        shared.connection_count.fetch_sub(1, Ordering::SeqCst);
        let mut out = Vec::new();
        let message = format!("the node serves its maximum of {} connections", count);
        Response::Error {
            code: ErrorCode::TooManyConnections,
            message: &message,
        }
        .encode(&mut out, 0, 0);
        let mut stream = stream;
        let _ = stream.write_all(&out);
        return Ok(());
    }
    let registered = stream.try_clone()?;
    shared.connections.lock().insert(
        id,
        ConnectionEntry {
            stream: registered,
            thread: None,
        },
    );
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("pagoda-conn-{id}"))
        .spawn(move || {
            // Unregisters the connection however the thread ends, a panic
            // included, so its socket is closed and its slot freed.
            let _registration = Registration {
                shared: &thread_shared,
                id,
            };
            tracing::debug!(%peer, "connection opened");
            if let Err(error) = serve(&thread_shared, stream) {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            tracing::debug!(%peer, "connection closed");
        });
    match spawned {
        Ok(handle) => {
            if let Some(entry) = shared.connections.lock().get_mut(&id) {
                entry.thread = Some(handle);
            }
            Ok(())
        }
        Err(error) => {
            shared.connections.lock().remove(&id);
            shared.connection_count.fetch_sub(1, Ordering::SeqCst);
            Err(error)
        }
    }
}

struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.shared.connections.lock().remove(&self.id) {
            let _ = entry.stream.shutdown(Shutdown::Both);
        }
        self.shared.connection_count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What to do with the connection after a request.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    Close,
}

fn serve(shared: &Shared, stream: TcpStream) -> Result<(), WireError> {
    let mut writer = stream.try_clone()?;
    // Until the peer authenticates it may only send a small Hello, and must
    // do so promptly: an unauthenticated peer can hold neither much memory
    // nor a connection slot for long.
    stream.set_read_timeout(Some(shared.config.handshake_timeout))?;
    let mut reader = FrameReader::new(stream, shared.config.spin);
    reader.set_payload_limit(HELLO_PAYLOAD_BYTES_MAX);
    let mut out = Vec::with_capacity(256 * 1024);
    let mut authenticated = false;
    loop {
        let frame = match reader.read_frame() {
            Ok(frame) => frame,
            Err(WireError::Closed) => return Ok(()),
            Err(error) => {
                if !matches!(error, WireError::Io(_) | WireError::Truncated { .. }) {
                    out.clear();
                    let message = error.to_string();
                    Response::Error {
                        code: error.code(),
                        message: &message,
                    }
                    .encode(&mut out, 0, 0);
                    let _ = writer.write_all(&out);
                }
                return Err(error);
            }
        };
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let request_id = frame.header.request_id;
        let was_authenticated = authenticated;
        let after = handle(
            shared,
            frame.header.opcode,
            frame.payload,
            request_id,
            &mut authenticated,
            &mut out,
        );
        if after == After::Close || reader.buffered() == 0 || out.len() >= REPLY_FLUSH_BYTES {
            writer.write_all(&out)?;
            out.clear();
        }
        if after == After::Close {
            return Ok(());
        }
        if authenticated && !was_authenticated {
            reader.get_ref().set_read_timeout(None)?;
            reader.set_payload_limit(FRAME_PAYLOAD_BYTES_MAX);
        }
    }
}

fn error_reply(out: &mut Vec<u8>, request_id: u64, code: ErrorCode, message: &str) {
    Response::Error { code, message }.encode(out, request_id, 0);
}

/// Compares tokens in time independent of where they differ.
fn tokens_equal(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn handle(
    shared: &Shared,
    opcode: u8,
    payload: &[u8],
    request_id: u64,
    authenticated: &mut bool,
    out: &mut Vec<u8>,
) -> After {
    let request = match Request::decode(opcode, payload) {
        Ok(request) => request,
        Err(error) => {
            error_reply(out, request_id, error.code(), &error.to_string());
            return if *authenticated {
                After::Continue
            } else {
                After::Close
            };
        }
    };
    if let Request::Hello { token, client_name } = request {
        if let Some(expected) = &shared.config.token
            && !tokens_equal(expected, token)
        {
            let message = if token.is_empty() {
                "this node requires a token and none was given"
            } else {
                "wrong token"
            };
            tracing::warn!(client_name, "authentication failed: {message}");
            error_reply(out, request_id, ErrorCode::Unauthorized, message);
            return After::Close;
        }
        *authenticated = true;
        Response::HelloOk {
            version: VERSION,
            batch_bytes_max: BATCH_BYTES_MAX as u32,
            batch_pages_max: BATCH_PAGES_MAX as u32,
        }
        .encode(out, request_id, 0);
        return After::Continue;
    }
    if !*authenticated {
        error_reply(
            out,
            request_id,
            ErrorCode::NotAuthenticated,
            "the first request on a connection must be Hello",
        );
        return After::Close;
    }
    let start = out.len();
    if let Err(error) = serve_request(shared, request, request_id, out) {
        out.truncate(start);
        error_reply(out, request_id, error.code(), &error.to_string());
    }
    After::Continue
}

fn serve_request(
    shared: &Shared,
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
            Response::RegionStat(RegionStat {
                info: region.info().clone(),
                segments_allocated: segments,
                resident_bytes: segments * shared.arena.segment_bytes() as u64,
                pages_read: region.pages_read(),
                pages_written: region.pages_written(),
            })
            .encode(out, request_id, 0);
        }
        Request::ListRegions => Response::RegionList(catalog.list()).encode(out, request_id, 0),
        Request::DeleteRegion { name } => {
            catalog.delete(name)?;
            tracing::info!(name, "region deleted");
            Response::Done.encode(out, request_id, 0);
        }
        Request::ReadPages { region, pages } => {
            let region = catalog.by_id(region)?;
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

//! Serving one connection: accepting it, the handshake, and the loop that
//! reads framed requests and writes their replies.
//!
//! A connection must start with `Hello`. After that it may pipeline any number
//! of requests; they are served in order and each reply carries its request's
//! id. Replies to requests that arrived together are written together. A
//! framing error (bad magic, version, flags, length or checksum, or a stream
//! closed mid-frame) is answered with an error reply carrying request id 0
//! where the stream is still writable, and the connection is closed; a
//! well-framed request that fails (unknown opcode, malformed payload,
//! out-of-range page, out of memory, ...) gets an error reply and the
//! connection goes on. Nothing one connection sends affects another. What a
//! request does is `server::serve_request`'s business, not this module's.
//!
//! **Memory.** A connection's buffers have a fixed baseline: a few KiB until
//! it has authenticated (`PREAUTH_READ_BYTES`, `PREAUTH_REPLY_BYTES`), then
//! `READ_BYTES_BASE` and `REPLY_BYTES_BASE`. Anything beyond, for a large
//! frame or a large reply, is borrowed from the node-wide [`MemoryBudget`]
//! before it is allocated, and given back once the connection has waited
//! `IDLE_SHRINK_MS` for a request (after its spin, through the frame
//! reader's idle timeout, so a busy connection pays nothing). A request whose buffers cannot be had within
//! `NodeConfig::connection_memory_wait` is answered with `Busy` (its payload
//! is read through the baseline buffer and dropped), and the connection goes
//! on.
//!
//! **Time.** The whole handshake, from accept to authenticated, must finish
//! within `NodeConfig::handshake_timeout`; a frame that has begun to arrive,
//! and a reply that has begun to be written, within
//! `NodeConfig::frame_timeout`. Waiting for the next request is not bounded
//! once authenticated. At most `NodeConfig::handshakes_max` connections may
//! be authenticating at once; a new one beyond that takes the place of the
//! oldest, so slow handshakes cannot keep clients out.
//!
//! **TLS.** With `NodeConfig::tls`, a connection's TLS handshake runs first,
//! within the same handshake deadline, and the frames travel through
//! `pagoda_wire::tls`'s halves; a client that starts with a plain frame is
//! told, in plain, that the node requires TLS. The loop itself is the same.
//!
//! **The local socket.** The node also accepts connections on a Unix socket
//! (`NodeConfig::local_socket`), for clients on its host. They speak the same
//! protocol and handshake, without TLS (the kernel carries the bytes), and
//! only they may send `ShareRegion`, whose reply carries the region's memory
//! files as `SCM_RIGHTS` (see `region_memory` and `docs/design.md`,
//! "Co-located access").

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pagoda_wire::frame::HEADER_BYTES;
use pagoda_wire::io::{FrameReader, SpinRead};
use pagoda_wire::limits::{
    BATCH_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX, FRAME_PAYLOAD_BYTES_MAX, HELLO_PAYLOAD_BYTES_MAX,
    PING_REPLY_BYTES_MAX, REGION_NAME_BYTES_MAX, REGIONS_MAX,
};
use pagoda_wire::message::DIRTY_RANGES_MAX;
use pagoda_wire::tls::{TlsReader, TlsWriter};
use pagoda_wire::{ErrorCode, Opcode, Request, Response, WireError};
use parking_lot::{Condvar, Mutex};

use crate::access::{Outcome, Session};
use crate::bulk_reads::{Completions, IN_FLIGHT_MAX, PendingRead};
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::node::{ACCEPT_POLL_MS, ConnectionEntry, Shared};
use crate::server::{Deferred, Dispatch, serve_request};

/// Replies are written once this many bytes are pending, even if more
/// requests are buffered.
const REPLY_FLUSH_BYTES: usize = 1024 * 1024;
/// The read buffer of a connection that has not authenticated: one frame of
/// the largest handshake message.
pub(crate) const PREAUTH_READ_BYTES: usize = HEADER_BYTES + HELLO_PAYLOAD_BYTES_MAX;
/// The reply buffer of a connection that has not authenticated: one error
/// reply with the longest message, or the handshake's reply.
pub(crate) const PREAUTH_REPLY_BYTES: usize = HEADER_BYTES + 2 + 2 + ERROR_MESSAGE_BYTES_MAX;
// A connection that has not authenticated holds a few KiB of buffers,
// whatever it announces.
const _: () = assert!(PREAUTH_READ_BYTES + PREAUTH_REPLY_BYTES <= 4 * 1024);
/// An authenticated connection's read buffer, always held.
pub(crate) const READ_BYTES_BASE: usize = 64 * 1024;
/// An authenticated connection's reply buffer, always held.
pub(crate) const REPLY_BYTES_BASE: usize = 64 * 1024;
/// A connection that waits this long for its next request (after its spin)
/// gives back what it borrowed from the budget.
const IDLE_SHRINK_MS: u64 = 10;
/// Room reserved for a reply whose size is not computed here: every such
/// reply is small (a region's description or statistics, a recovery's
/// progress, an error with its bounded message).
const SMALL_REPLY_BYTES: usize = 4 * 1024;

/// Checks the connection settings of a node's configuration.
pub(crate) fn check_config(config: &NodeConfig) -> Result<(), NodeError> {
    if config.handshakes_max == 0 {
        return Err(NodeError::Config(
            "handshakes_max must be at least 1".into(),
        ));
    }
    if config.frame_timeout.is_zero() {
        return Err(NodeError::Config(
            "the frame timeout must be positive".into(),
        ));
    }
    if !config.listen.ip().is_loopback() && config.tls.is_none() && !config.insecure_no_tls {
        return Err(NodeError::Config(format!(
            "refusing to listen on non-loopback address {} without TLS: give --tls-cert and \
             --tls-key (or, to accept plaintext connections from the network anyway, \
             --insecure-no-tls)",
            config.listen
        )));
    }
    if config.connection_memory_bytes < 1024 * 1024 {
        return Err(NodeError::Config(
            "the connection memory budget must be at least 1 MiB".into(),
        ));
    }
    let heartbeats = 4 * crate::replication::HEARTBEAT;
    if config.replica_timeout < heartbeats {
        return Err(NodeError::Config(format!(
            "the replica timeout must be at least {} ms (four heartbeats: a replica counts \
             itself out of sync after half of it)",
            heartbeats.as_millis()
        )));
    }
    if config.replication_log_bytes < 1024 * 1024 {
        return Err(NodeError::Config(
            "the retained replication log must be at least 1 MiB".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The node-wide budget for connection buffers.

/// Bytes of connection buffers beyond each connection's baseline, shared by
/// all connections; the sum never exceeds the limit.
pub(crate) struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Waiters for memory sleep here; a release wakes them.
    lock: Mutex<()>,
    released: Condvar,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            lock: Mutex::new(()),
            released: Condvar::new(),
        }
    }

    /// Bytes lent out now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget's size.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Takes `bytes`, waiting up to `wait` for other connections to give
    /// memory back; whether it got them.
    fn take(&self, bytes: usize, wait: Duration) -> bool {
        if self.try_take(bytes) {
            return true;
        }
        if bytes > self.limit {
            return false;
        }
        let deadline = Instant::now() + wait;
        let mut guard = self.lock.lock();
        loop {
            if self.try_take(bytes) {
                return true;
            }
            if self.released.wait_until(&mut guard, deadline).timed_out() {
                return self.try_take(bytes);
            }
        }
    }

    fn give(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        assert!(before >= bytes, "connection memory given back twice");
        let _guard = self.lock.lock();
        self.released.notify_all();
    }
}

/// What one connection has borrowed from the budget; given back on drop.
struct Lease<'a> {
    budget: &'a MemoryBudget,
    bytes: usize,
}

impl Lease<'_> {
    fn take(&mut self, bytes: usize, wait: Duration) -> bool {
        let taken = self.budget.take(bytes, wait);
        if taken {
            self.bytes += bytes;
        }
        taken
    }

    /// Sets the borrowed amount to `bytes`, which must not be more.
    fn shrink_to(&mut self, bytes: usize) {
        assert!(bytes <= self.bytes);
        self.budget.give(self.bytes - bytes);
        self.bytes = bytes;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

// ---------------------------------------------------------------------------
// Rate-limited warnings.

/// A token bucket for log lines that a peer can cause at will, such as
/// failed handshakes: at most `burst` lines at once and `per_second` lines a
/// second after that; the lines in excess are counted, and their number is
/// logged as one line ("N more failed handshakes suppressed") once a line is
/// allowed again.
///
/// Use: `if shared.failed_handshakes_log.allow() { tracing::warn!(...) }`
/// wherever a handshake fails (the node's only instance is
/// `Shared::failed_handshakes_log`; the acceptor calls
/// [`LogLimiter::flush`] so that a count is reported even when the failures
/// stop).
pub(crate) struct LogLimiter {
    what: &'static str,
    per_second: f64,
    burst: f64,
    state: Mutex<LimiterState>,
}

struct LimiterState {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter for lines about `what` (plural, as in the summary line).
    pub(crate) fn new(what: &'static str, per_second: f64, burst: f64) -> LogLimiter {
        LogLimiter {
            what,
            per_second,
            burst,
            state: Mutex::new(LimiterState {
                tokens: burst,
                refilled: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// The node's limiter for failed handshakes: 5 lines at once, then one a
    /// second.
    pub(crate) fn failed_handshakes() -> LogLimiter {
        LogLimiter::new("failed handshakes", 1.0, 5.0)
    }

    fn refill(&self, state: &mut LimiterState) {
        let now = Instant::now();
        let earned = now.duration_since(state.refilled).as_secs_f64() * self.per_second;
        state.tokens = (state.tokens + earned).min(self.burst);
        state.refilled = now;
    }

    fn report(&self, state: &mut LimiterState) {
        if state.suppressed > 0 {
            tracing::warn!("{} more {} suppressed", state.suppressed, self.what);
            state.suppressed = 0;
        }
    }

    /// Whether one more line may be logged now; if not, it is counted.
    pub(crate) fn allow(&self) -> bool {
        let mut state = self.state.lock();
        self.refill(&mut state);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            self.report(&mut state);
            true
        } else {
            state.suppressed += 1;
            false
        }
    }

    /// Logs the number of suppressed lines, if any, once a line is allowed
    /// again.
    pub(crate) fn flush(&self) {
        let mut state = self.state.lock();
        if state.suppressed == 0 {
            return;
        }
        self.refill(&mut state);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            self.report(&mut state);
        }
    }

    /// Lines suppressed and not yet reported.
    #[cfg(test)]
    fn suppressed(&self) -> u64 {
        self.state.lock().suppressed
    }
}

// ---------------------------------------------------------------------------
// Accepting.

/// A connection's socket: TCP (perhaps with TLS over it), or the node's
/// local Unix socket.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    pub(crate) fn try_clone(&self) -> std::io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(stream) => Socket::Tcp(stream.try_clone()?),
            Socket::Unix(stream) => Socket::Unix(stream.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.shutdown(how),
            Socket::Unix(stream) => stream.shutdown(how),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.set_write_timeout(timeout),
            Socket::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }

    fn set_nonblocking(&self, nonblocking: bool) -> std::io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.set_nonblocking(nonblocking),
            Socket::Unix(stream) => stream.set_nonblocking(nonblocking),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(stream) => stream.read(buf),
            Socket::Unix(stream) => stream.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(stream) => stream.write(buf),
            Socket::Unix(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SpinRead for Socket {
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self {
            Socket::Tcp(stream) => stream.read_nonblocking(buf),
            Socket::Unix(stream) => stream.read_nonblocking(buf),
        }
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.set_read_timeout(timeout),
            Socket::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(match self {
            Socket::Tcp(stream) => stream.as_raw_fd(),
            Socket::Unix(stream) => stream.as_raw_fd(),
        })
    }
}

/// What the node accepts connections on.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> std::io::Result<(Socket, String)> {
        match self {
            Listener::Tcp(listener) => listener
                .accept()
                .map(|(stream, peer)| (Socket::Tcp(stream), peer.to_string())),
            Listener::Unix(listener) => listener
                .accept()
                .map(|(stream, _)| (Socket::Unix(stream), "local socket".to_owned())),
        }
    }

    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(listener) => listener.as_raw_fd(),
            Listener::Unix(listener) => listener.as_raw_fd(),
        }
    }
}

/// Connection ids, unique in the process across listeners (and nodes).
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn accept_loop(shared: Arc<Shared>, listener: Listener) {
    while !shared.shutting_down.load(Ordering::SeqCst) {
        shared.failed_handshakes_log.flush();
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
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = admit(&shared, stream, &peer, id) {
            tracing::warn!(%peer, %error, "could not serve connection");
        }
    }
}

fn refuse(shared: &Shared, stream: Socket, message: &str) {
    crate::metrics::count_error(shared, ErrorCode::TooManyConnections);
    let mut out = Vec::new();
    Response::Error {
        code: ErrorCode::TooManyConnections,
        message,
    }
    .encode(&mut out, 0, 0);
    let mut stream = stream;
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(&out);
}

fn admit(shared: &Arc<Shared>, stream: Socket, peer: &str, id: u64) -> std::io::Result<()> {
    let accepted = Instant::now();
    stream.set_nonblocking(false)?;
    if let Socket::Tcp(tcp) = &stream {
        tcp.set_nodelay(true)?;
    }
    // A reply that has begun to be written must be taken by the peer in
    // time; see `write_reply`.
    stream.set_write_timeout(Some(shared.config.frame_timeout))?;
    let handshake_slot = stream.try_clone()?;
    {
        // Decide under the handshakes lock, so that two admissions cannot
        // both take the last slot.
        let mut handshakes = shared.handshakes.lock();
        let count = shared.connection_count.load(Ordering::SeqCst) as usize;
        let handshakes_max = shared
            .config
            .handshakes_max
            .min(shared.config.connections_max);
        if handshakes.len() >= handshakes_max || count >= shared.config.connections_max {
            // Make room by closing the connection that has been
            // authenticating longest; refuse only if every slot is held by
            // an authenticated connection.
            match handshakes.pop_first() {
                Some((_, oldest)) => {
                    // Its thread wakes, sees it was evicted, and says why.
                    let _ = oldest.shutdown(Shutdown::Read);
                }
                None => {
                    drop(handshakes);
                    let message = format!(
                        "the node serves its maximum of {} connections",
                        shared.config.connections_max
                    );
                    refuse(shared, stream, &message);
                    return Ok(());
                }
            }
        }
        handshakes.insert(id, handshake_slot);
        shared.connection_count.fetch_add(1, Ordering::SeqCst);
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
    let peer = peer.to_owned();
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
            if let Err(error) = serve(&thread_shared, id, stream, accepted) {
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
            shared.handshakes.lock().remove(&id);
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
        self.shared.handshakes.lock().remove(&self.id);
        if let Some(entry) = self.shared.connections.lock().remove(&self.id) {
            let _ = entry.stream.shutdown(Shutdown::Both);
        }
        self.shared.connection_count.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Serving.

/// What to do with the connection after a request.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    Close,
}

/// Where replies go: a stream written whole, with a deadline.
pub(crate) trait ReplyWrite {
    /// Writes all of `bytes`, failing if the peer has not taken them by
    /// `deadline`.
    fn write_reply(&mut self, bytes: &[u8], deadline: Instant) -> std::io::Result<()>;

    /// Writes `bytes` with `files` attached (`SCM_RIGHTS`); only a Unix
    /// socket can.
    fn write_reply_with_files(
        &mut self,
        bytes: &[u8],
        files: &[RawFd],
        deadline: Instant,
    ) -> std::io::Result<()> {
        let _ = (bytes, files, deadline);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "files travel only over a Unix socket",
        ))
    }
}

/// A socket whose writes can time out.
trait WriteTimeout: Write {
    fn write_timeout(&self) -> std::io::Result<Option<Duration>>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl WriteTimeout for TcpStream {
    fn write_timeout(&self) -> std::io::Result<Option<Duration>> {
        TcpStream::write_timeout(self)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
}

impl WriteTimeout for UnixStream {
    fn write_timeout(&self) -> std::io::Result<Option<Duration>> {
        UnixStream::write_timeout(self)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
}

impl ReplyWrite for TcpStream {
    fn write_reply(&mut self, bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
        write_with_deadline(self, bytes, deadline)
    }
}

impl ReplyWrite for Socket {
    fn write_reply(&mut self, bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
        match self {
            Socket::Tcp(stream) => write_with_deadline(stream, bytes, deadline),
            Socket::Unix(stream) => write_with_deadline(stream, bytes, deadline),
        }
    }

    fn write_reply_with_files(
        &mut self,
        bytes: &[u8],
        files: &[RawFd],
        deadline: Instant,
    ) -> std::io::Result<()> {
        let Socket::Unix(stream) = self else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "files travel only over a Unix socket",
            ));
        };
        // The files go with the first byte; the rest follows as usual.
        let sent = send_with_files(stream, bytes, files)?;
        write_with_deadline(stream, &bytes[sent..], deadline)
    }
}

/// Most files one reply carries.
const FILES_PER_REPLY_MAX: usize = 4;

/// Sends `bytes` (at least their first byte) with `files` attached as
/// `SCM_RIGHTS`; returns how many bytes went.
fn send_with_files(stream: &UnixStream, bytes: &[u8], files: &[RawFd]) -> std::io::Result<usize> {
    assert!(!bytes.is_empty() && files.len() <= FILES_PER_REPLY_MAX);
    let files_bytes = std::mem::size_of_val(files);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(files_bytes as u32) } as usize;
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    assert!(space <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the fields set below point at live
    // buffers for the duration of the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: the control buffer holds one header of `space` bytes, so
    // CMSG_FIRSTHDR is non-null and its data has room for the files.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(files_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(
            files.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(header),
            files_bytes,
        );
    }
    loop {
        // SAFETY: a valid socket and a message built above.
        let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &message, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Writes all of `bytes` to `socket` by `deadline`.
fn write_with_deadline<S: WriteTimeout>(
    socket: &mut S,
    bytes: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    // The socket's write timeout is the frame timeout (set at accept),
    // so a first write that does not complete at once is bounded; later
    // ones get what is left of the deadline. A peer that stops reading
    // therefore holds its reply's memory for at most the frame timeout.
    let mut rest = bytes;
    let mut first = true;
    // The socket's timeout before this call changed it, to restore.
    let mut preset = None;
    let result = loop {
        if rest.is_empty() {
            break Ok(());
        }
        if !first {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(std::io::ErrorKind::TimedOut.into());
            }
            if preset.is_none() {
                preset = Some(socket.write_timeout()?);
            }
            socket.set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
        }
        first = false;
        match socket.write(rest) {
            Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
            Ok(count) => rest = &rest[count..],
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => break Err(error),
        }
    };
    if let Some(preset) = preset {
        socket.set_write_timeout(preset)?;
    }
    result
}

/// A connection's reply buffer: replies are encoded into it (it derefs to
/// the `Vec`), and it is written out when full, when no request is waiting,
/// or before the connection closes.
pub(crate) struct Out<'a, 'b> {
    buffer: Vec<u8>,
    /// The capacity held without borrowing from the budget.
    base: usize,
    /// What `buffer` borrows from the budget.
    leased: usize,
    writer: &'b mut dyn ReplyWrite,
    lease: &'b mut Lease<'a>,
    frame_timeout: Duration,
    wait: Duration,
    /// The error of a failed write; the connection is closed.
    failed: Option<std::io::Error>,
    /// The last region read and its page size, so that sizing a read's
    /// reply needs no catalog lookup in the steady state (a region id is
    /// never reused, so the pair never goes stale).
    page_size_seen: (u64, usize),
    /// Where written reply bytes are counted, if the node keeps metrics.
    metrics: Option<&'a crate::metrics::Metrics>,
    /// Whether the connection came in on the node's local socket.
    local: bool,
}

impl std::ops::Deref for Out<'_, '_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buffer
    }
}

impl std::ops::DerefMut for Out<'_, '_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }
}

impl Out<'_, '_> {
    /// Writes what is buffered.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.frame_timeout;
        let written = self.writer.write_reply(&self.buffer, deadline);
        if let Some(metrics) = self.metrics {
            metrics.sent(self.buffer.len());
        }
        self.buffer.clear();
        if let Err(error) = &written {
            self.failed = Some(std::io::Error::new(error.kind(), error.to_string()));
        }
        written
    }

    /// Writes one whole reply frame built elsewhere, after what is buffered
    /// (a failure is latched in `failed`, as for every write).
    fn send_frame(&mut self, frame: &[u8]) {
        if self.failed.is_some() || self.flush().is_err() {
            return;
        }
        let deadline = Instant::now() + self.frame_timeout;
        let written = self.writer.write_reply(frame, deadline);
        if let Some(metrics) = self.metrics {
            metrics.sent(frame.len());
        }
        if let Err(error) = written {
            self.failed = Some(error);
        }
    }

    /// Makes room for a reply of up to `bytes`: writes what is buffered if
    /// it would not fit, and borrows from the budget if the reply alone is
    /// larger than the buffer. `Err` carries the reason to reply `Busy`.
    fn make_room(&mut self, bytes: usize) -> Result<(), String> {
        if self.buffer.len() + bytes <= self.buffer.capacity() {
            return Ok(());
        }
        if self.flush().is_err() {
            // The connection is closing; the reply will not be sent.
            return Ok(());
        }
        let capacity = self.buffer.capacity();
        if bytes <= capacity {
            return Ok(());
        }
        let more = bytes - capacity;
        if !self.lease.take(more, self.wait) {
            return Err(busy_message(bytes, self.lease.budget, self.wait));
        }
        self.leased += more;
        self.buffer.reserve_exact(bytes);
        self.settle();
        Ok(())
    }

    /// Accounts for capacity the buffer has beyond what it borrowed (the
    /// allocator may round up; a reply larger than its computed bound grows
    /// the buffer).
    fn settle(&mut self) {
        let held = self.buffer.capacity().saturating_sub(self.base);
        if held > self.leased {
            let extra = held - self.leased;
            if !self.lease.take(extra, Duration::ZERO) {
                // Counted anyway: the memory is allocated.
                self.lease.budget.used.fetch_add(extra, Ordering::AcqRel);
                self.lease.bytes += extra;
            }
            self.leased = held;
        }
    }

    /// Gives back what the buffer borrowed, once it is empty.
    fn shrink(&mut self) {
        if self.leased > 0 && self.buffer.is_empty() {
            self.buffer = Vec::with_capacity(self.base);
            let keep = self.lease.bytes - self.leased;
            self.lease.shrink_to(keep);
            self.leased = 0;
        }
    }

    /// Raises the baseline once the peer has authenticated.
    fn set_base(&mut self, base: usize) {
        if self.buffer.capacity() < base {
            self.buffer.reserve_exact(base - self.buffer.len());
        }
        self.base = base;
    }
}

fn busy_message(bytes: usize, budget: &MemoryBudget, wait: Duration) -> String {
    if bytes > budget.limit() {
        format!(
            "this request needs {bytes} bytes of buffers, more than the node's whole connection \
             memory budget of {} bytes",
            budget.limit()
        )
    } else {
        format!(
            "the node's connection memory budget ({} of {} bytes in use) could not spare {bytes} \
             bytes for this request within {wait:?}; retry later",
            budget.used(),
            budget.limit()
        )
    }
}

/// The most bytes the reply to `request` can take, header included.
/// `seen` remembers the last region read and its page size.
fn reply_bound(shared: &Shared, request: &Request<'_>, seen: &mut (u64, usize)) -> usize {
    let payload = match request {
        Request::ReadPages { region, pages } => {
            if seen.0 != *region {
                let page_bytes = shared
                    .catalog
                    .by_id(*region)
                    .map_or(0, |region| region.info().page_size as usize);
                // An unknown region is answered with a small error; it is
                // not remembered, so that a region created under that id
                // later is looked up.
                if page_bytes > 0 {
                    *seen = (*region, page_bytes);
                }
                (pages.len() * page_bytes).min(BATCH_BYTES_MAX)
            } else {
                (pages.len() * seen.1).min(BATCH_BYTES_MAX)
            }
        }
        Request::Ping { reply_bytes } => (*reply_bytes).min(PING_REPLY_BYTES_MAX) as usize,
        Request::ListRegions => {
            4 + shared.catalog.len().min(REGIONS_MAX) * (8 + 8 + 4 + 2 + REGION_NAME_BYTES_MAX)
        }
        Request::DirtyPages { .. } => 8 + 8 + 4 + DIRTY_RANGES_MAX * 12,
        Request::StoredSegments { .. } => {
            8 + 8 + 4 + pagoda_wire::message::SEGMENT_MAP_BITS_MAX.div_ceil(8) as usize
        }
        Request::RegionChecksum { .. } => pagoda_wire::checksum::CHECKSUM_REPLY_PAYLOAD_BYTES_MAX,
        _ => 0,
    };
    HEADER_BYTES + payload.max(SMALL_REPLY_BYTES)
}

/// Whether `error` ended the stream without a need to answer it.
fn is_silent(error: &WireError) -> bool {
    matches!(error, WireError::Io(_) | WireError::Truncated { .. })
}

fn serve(
    shared: &Arc<Shared>,
    id: u64,
    stream: Socket,
    accepted: Instant,
) -> Result<(), WireError> {
    let local = matches!(stream, Socket::Unix(_));
    let tls = match (&shared.tls, &stream) {
        (Some(tls), Socket::Tcp(_)) => tls,
        _ => {
            // Plain TCP, or the local socket, where the kernel carries the
            // bytes and TLS would add nothing.
            let mut writer = stream.try_clone()?;
            return serve_stream(shared, id, stream, &mut writer, accepted, local);
        }
    };
    let Socket::Tcp(mut socket) = stream else {
        unreachable!("matched above")
    };
    let deadline = accepted + shared.config.handshake_timeout;
    if speaks_plain_pagoda(&socket, deadline)? {
        // A client without TLS: tell it so in its own protocol, rather than
        // with a TLS alert it cannot read.
        let mut out = Vec::new();
        error_reply(
            shared,
            &mut out,
            0,
            ErrorCode::NotAuthenticated,
            "this node requires TLS; connect with TLS (pagoda: --tls-ca FILE or PAGODA_TLS_CA)",
        );
        let _ = socket.write_all(&out);
        return Ok(());
    }
    let state = rustls::ServerConnection::new(tls.current())
        .map_err(|e| std::io::Error::other(format!("starting TLS: {e}")))?;
    let session = match pagoda_wire::tls::handshake(state.into(), &mut socket, deadline) {
        Ok(session) => session,
        Err(error) => {
            if shared.failed_handshakes_log.allow() {
                let peer = socket.peer_addr().map(|peer| peer.to_string());
                tracing::warn!(peer = peer.unwrap_or_default(), %error, "TLS handshake failed");
            }
            return Err(error.into());
        }
    };
    let reader = TlsReader::new(session.clone(), socket.try_clone()?);
    let mut writer = TlsWriter::new(session, socket);
    serve_stream(shared, id, reader, &mut writer, accepted, false)
}

/// Whether the peer's first byte is that of a plain Pagoda frame (a TLS
/// handshake starts with 0x16), waiting for it until `deadline`.
fn speaks_plain_pagoda(socket: &TcpStream, deadline: Instant) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match socket.peek(&mut first) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(first[0] == pagoda_wire::MAGIC.to_le_bytes()[0]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(error) => return Err(error),
        }
    }
}

impl ReplyWrite for TlsWriter {
    fn write_reply(&mut self, bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
        self.write_all_with(bytes, |socket, sealed| socket.write_reply(sealed, deadline))
    }
}

/// Tells the replicas a connection fed that it ended, however the serving
/// loop ends.
struct ClosedHook<'a> {
    shared: &'a Shared,
    id: u64,
    replicated: &'a std::cell::Cell<bool>,
}

impl Drop for ClosedHook<'_> {
    fn drop(&mut self) {
        if self.replicated.get() {
            crate::replication::connection_closed(self.shared, self.id);
        }
    }
}

fn serve_stream<R: SpinRead>(
    shared: &Arc<Shared>,
    id: u64,
    stream: R,
    writer: &mut dyn ReplyWrite,
    accepted: Instant,
    local: bool,
) -> Result<(), WireError> {
    let config = &shared.config;
    let mut lease = Lease {
        budget: &shared.connection_memory,
        bytes: 0,
    };
    // Until the peer authenticates it may only send small handshake frames,
    // and must finish the whole handshake by the deadline: an
    // unauthenticated peer can hold neither much memory nor a connection
    // slot for long.
    let mut reader = FrameReader::with_capacity(stream, config.spin, PREAUTH_READ_BYTES);
    reader.set_payload_limit(HELLO_PAYLOAD_BYTES_MAX);
    reader.set_deadline(
        Some(accepted + config.handshake_timeout),
        "the handshake",
        config.handshake_timeout,
    );
    reader.set_frame_timeout(Some(config.frame_timeout));
    let mut read_base = PREAUTH_READ_BYTES;
    let mut out = Out {
        buffer: Vec::with_capacity(PREAUTH_REPLY_BYTES),
        base: PREAUTH_REPLY_BYTES,
        leased: 0,
        writer,
        lease: &mut lease,
        frame_timeout: config.frame_timeout,
        wait: config.connection_memory_wait,
        failed: None,
        page_size_seen: (u64::MAX, 0),
        metrics: shared.metrics.as_ref(),
        local,
    };
    let mut authenticated = false;
    let mut session = Session::new(shared);
    let mut deferred = Vec::new();
    let mut fetches = Fetches::default();
    // Whether a primary fed replicas over this connection; its end is
    // recorded for them (see `replication::connection_closed`).
    let replicated = std::cell::Cell::new(false);
    let _closed = ClosedHook {
        shared,
        id,
        replicated: &replicated,
    };
    loop {
        // Replies whose pages are being read from the bulk tier go out as
        // they come in, also while the connection waits for its next request.
        if fetches.in_flight > 0
            && let Err(error) = fetches.wait_for_request(shared, &mut reader, &mut out)
        {
            return fail(shared, id, authenticated, &mut out, error);
        }
        if out.failed.is_some() {
            return Err(out.failed.take().unwrap().into());
        }
        // While the connection holds borrowed memory, a wait for the next
        // request longer than the idle time (after the usual spin) gives it
        // back; a busy connection keeps it and pays nothing for the check.
        reader.set_idle_timeout(
            (out.lease.bytes > 0).then_some(Duration::from_millis(IDLE_SHRINK_MS)),
        );
        let header = reader.next_header().and_then(|header| {
            let total = HEADER_BYTES + header.payload_len as usize;
            let capacity = reader.capacity();
            if total <= capacity {
                return Ok(None);
            }
            if out
                .lease
                .take(total - capacity, config.connection_memory_wait)
            {
                reader.reserve_frame(total);
                return Ok(None);
            }
            // No memory for this frame: drop it and say why.
            let header = reader.skip_frame()?;
            Ok(Some((header, total)))
        });
        match header {
            Ok(None) => {}
            Ok(Some((header, total))) => {
                let message = busy_message(total, out.lease.budget, config.connection_memory_wait);
                error_reply(
                    shared,
                    &mut out,
                    header.request_id,
                    ErrorCode::Busy,
                    &message,
                );
                if reader.buffered() == 0 {
                    out.flush()?;
                }
                continue;
            }
            Err(WireError::Idle { .. }) => {
                out.shrink();
                let capacity = reader.shrink_to(read_base);
                let keep = out.leased + capacity.saturating_sub(read_base) + fetches.bytes;
                out.lease.shrink_to(keep.min(out.lease.bytes));
                continue;
            }
            Err(error) => return fail(shared, id, authenticated, &mut out, error),
        }
        let frame = match reader.read_frame() {
            Ok(frame) => frame,
            Err(error) => return fail(shared, id, authenticated, &mut out, error),
        };
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if frame.header.opcode == Opcode::Replicate as u8 {
            replicated.set(true);
        }
        let request_id = frame.header.request_id;
        let was_authenticated = authenticated;
        let began = shared.metrics.as_ref().map(|_| Instant::now());
        let opcode = frame.header.opcode;
        let frame_bytes = HEADER_BYTES + frame.payload.len();
        let after = handle(
            shared,
            frame.header.opcode,
            frame.payload,
            request_id,
            frame.header.epoch,
            id,
            &mut deferred,
            &mut fetches.started,
            &mut session,
            &mut out,
        );
        fetches.submit(shared, &mut out);
        if let (Some(metrics), Some(began)) = (&shared.metrics, began) {
            metrics.request(opcode, frame_bytes, began.elapsed());
        }
        authenticated = session.is_authenticated();
        out.settle();
        if out.failed.is_some() {
            return Err(out.failed.take().unwrap().into());
        }
        if authenticated && !was_authenticated {
            // Give up the handshake slot before the peer learns it is in,
            // so that the next connection it opens cannot evict this one;
            // if the acceptor evicted it meanwhile, it is closed after all.
            if shared.handshakes.lock().remove(&id).is_none() {
                out.clear();
                return fail(shared, id, false, &mut out, WireError::Closed);
            }
            reader.set_deadline(None, "", Duration::ZERO);
            reader.set_payload_limit(FRAME_PAYLOAD_BYTES_MAX);
            read_base = READ_BYTES_BASE;
            reader.reserve_frame(read_base);
            out.set_base(REPLY_BYTES_BASE);
        }
        if !deferred.is_empty() && (after == After::Close || reader.buffered() == 0) {
            // Writes waiting for replicas: answered once every request that
            // had arrived was served, so their waits overlap.
            for write in deferred.drain(..) {
                write.answer(shared, &mut out);
            }
            out.settle();
        }
        if after == After::Close || reader.buffered() == 0 || out.len() >= REPLY_FLUSH_BYTES {
            out.flush()?;
        }
        if after == After::Close {
            fetches.finish(shared, &mut out);
            let _ = out.flush();
            return Ok(());
        }
    }
}

/// A connection's replies whose bulk-tier pages are being read by the
/// node's pool (see `bulk_reads`).
#[derive(Default)]
struct Fetches {
    /// Made by the request just served, to hand to the pool.
    started: Vec<PendingRead>,
    /// Where the pool puts them back; made at the first.
    completions: Option<Arc<Completions>>,
    /// Replies in the pool.
    in_flight: usize,
    /// Their bytes, borrowed from the connections' memory budget.
    bytes: usize,
}

/// The longest a connection with replies in the pool sleeps before it looks
/// again (it is woken by either event; this only bounds a missed wake-up).
const FETCH_WAIT_MS: i32 = 100;

impl Fetches {
    /// Hands the replies the last request made to the pool; each one that
    /// cannot go (no pool, a full queue, no memory to borrow for it) is read
    /// here and now.
    fn submit(&mut self, shared: &Shared, out: &mut Out<'_, '_>) {
        for read in std::mem::take(&mut self.started) {
            let read = match self.try_submit(shared, read, out) {
                Ok(()) => continue,
                Err(read) => read,
            };
            let done = read.complete();
            self.send(shared, done, out);
        }
    }

    fn try_submit(
        &mut self,
        shared: &Shared,
        read: PendingRead,
        out: &mut Out<'_, '_>,
    ) -> Result<(), PendingRead> {
        let Some(pool) = shared.arena.reads() else {
            return Err(read);
        };
        if self.completions.is_none() {
            match Completions::new() {
                Ok(completions) => self.completions = Some(completions),
                Err(error) => {
                    tracing::warn!(%error, "no event for bulk-tier reads; reading in place");
                    return Err(read);
                }
            }
        }
        while self.in_flight >= IN_FLIGHT_MAX {
            self.wait(None, out, shared);
        }
        let bytes = read.frame.len();
        if !out.lease.take(bytes, Duration::ZERO) {
            return Err(read);
        }
        let completions = self.completions.as_ref().expect("made above");
        match pool.submit(read, completions) {
            Ok(()) => {
                self.in_flight += 1;
                self.bytes += bytes;
                Ok(())
            }
            Err(read) => {
                out.lease.shrink_to(out.lease.bytes - bytes);
                Err(read)
            }
        }
    }

    /// Sends the replies read in so far.
    fn deliver(&mut self, shared: &Shared, out: &mut Out<'_, '_>) {
        let Some(completions) = &self.completions else {
            return;
        };
        for done in completions.take() {
            self.in_flight -= 1;
            self.bytes -= done.bytes;
            out.lease.shrink_to(out.lease.bytes - done.bytes);
            self.send(shared, done, out);
        }
    }

    fn send(&self, shared: &Shared, done: crate::bulk_reads::Done, out: &mut Out<'_, '_>) {
        match done.result {
            Ok(frame) => out.send_frame(&frame),
            Err(error) => {
                error_reply(
                    shared,
                    out,
                    done.request_id,
                    error.code(),
                    &error.to_string(),
                );
            }
        }
    }

    /// Sleeps until a reply is read in (or `stream` is readable), then sends
    /// what came in.
    fn wait(&mut self, stream: Option<RawFd>, out: &mut Out<'_, '_>, shared: &Shared) {
        if let Some(completions) = &self.completions {
            completions.wait(stream, FETCH_WAIT_MS);
        }
        self.deliver(shared, out);
    }

    /// Sends replies as they are read in until the next request begins to
    /// arrive (or the stream ends) or none is left in the pool.
    fn wait_for_request<R: SpinRead>(
        &mut self,
        shared: &Shared,
        reader: &mut FrameReader<R>,
        out: &mut Out<'_, '_>,
    ) -> Result<(), WireError> {
        self.deliver(shared, out);
        // Like a read of the socket, the wait spins first, as long as the
        // socket's reads do now (a sleeping thread's wake-up costs more than
        // a disk read's wait here).
        let spin_until = Instant::now() + reader.spin_budget();
        while self.in_flight > 0 && reader.buffered() == 0 && out.failed.is_none() {
            out.flush()?;
            if reader.try_fill()? {
                break;
            }
            match &self.completions {
                Some(completions) if Instant::now() < spin_until => {
                    if completions.has_ready() {
                        self.deliver(shared, out);
                    } else {
                        std::hint::spin_loop();
                    }
                }
                _ => self.wait(reader.get_ref().readiness_fd(), out, shared),
            }
        }
        // Error replies for reads that failed were only buffered: out they
        // go before the thread waits for the next request.
        if reader.buffered() == 0 {
            out.flush()?;
        }
        Ok(())
    }

    /// Waits for every reply in the pool and sends it (the connection is
    /// closing after a request that asked for it).
    fn finish(&mut self, shared: &Shared, out: &mut Out<'_, '_>) {
        while self.in_flight > 0 && out.failed.is_none() {
            self.wait(None, out, shared);
        }
    }
}

/// Ends a connection on a read error: answers it if the stream can still
/// carry an answer, and says why an evicted connection was closed.
fn fail(
    shared: &Shared,
    id: u64,
    authenticated: bool,
    out: &mut Out<'_, '_>,
    error: WireError,
) -> Result<(), WireError> {
    out.clear();
    if !authenticated && !shared.handshakes.lock().contains_key(&id) {
        // The acceptor closed our reading side to make room.
        let message = format!(
            "closed to make room for a new connection: {} connections were authenticating at once",
            shared
                .config
                .handshakes_max
                .min(shared.config.connections_max)
        );
        error_reply(shared, out, 0, ErrorCode::TooManyConnections, &message);
        let _ = out.flush();
        return Ok(());
    }
    if matches!(error, WireError::Closed) {
        return Ok(());
    }
    if !is_silent(&error) {
        if !authenticated && shared.failed_handshakes_log.allow() {
            tracing::warn!(%error, "handshake failed");
        }
        let message = error.to_string();
        error_reply(shared, out, 0, error.code(), &message);
        let _ = out.flush();
    }
    Err(error)
}

fn error_reply(
    shared: &Shared,
    out: &mut Vec<u8>,
    request_id: u64,
    code: ErrorCode,
    message: &str,
) {
    crate::metrics::count_error(shared, code);
    Response::Error { code, message }.encode(out, request_id, 0);
}

#[allow(clippy::too_many_arguments)]
fn handle(
    shared: &Arc<Shared>,
    opcode: u8,
    payload: &[u8],
    request_id: u64,
    epoch: u64,
    connection: u64,
    deferred: &mut Vec<Deferred>,
    fetches: &mut Vec<PendingRead>,
    session: &mut Session,
    out: &mut Out<'_, '_>,
) -> After {
    let request = match Request::decode(opcode, payload) {
        Ok(request) => request,
        Err(error) => {
            error_reply(shared, out, request_id, error.code(), &error.to_string());
            return if session.is_authenticated() {
                After::Continue
            } else {
                After::Close
            };
        }
    };
    if session.is_authenticated()
        && let Err(message) = {
            let bound = reply_bound(shared, &request, &mut out.page_size_seen);
            out.make_room(bound)
        }
    {
        error_reply(shared, out, request_id, ErrorCode::Busy, &message);
        return After::Continue;
    }
    // The handshake, and the rights and writer-role checks: `access`'s job.
    match session.admit(&request, request_id, out) {
        Outcome::Dispatch => {}
        Outcome::Replied => return After::Continue,
        Outcome::Close => return After::Close,
    }
    if let Request::ShareRegion { region } = request {
        share_region(shared, region, request_id, out);
        return After::Continue;
    }
    let start = out.len();
    let mut ctx = Dispatch {
        epoch,
        payload,
        connection,
        deferred,
        fetches,
    };
    let served = serve_request(shared, request, request_id, &mut ctx, out);
    if let Err(error) = served {
        out.truncate(start);
        error_reply(shared, out, request_id, error.code(), &error.to_string());
    }
    After::Continue
}

/// Answers `ShareRegion` (its right was checked by `access`): the reply,
/// with the region's memory files attached, goes out at once, after what is
/// buffered, so that the files travel with the reply's first byte.
fn share_region(shared: &Shared, id: u64, request_id: u64, out: &mut Out<'_, '_>) {
    if !out.local {
        error_reply(
            shared,
            out,
            request_id,
            ErrorCode::NotLocal,
            "ShareRegion is served only on the node's local socket (a client on the node's host)",
        );
        return;
    }
    let files = shared.catalog.by_id(id).and_then(|region| {
        region.check_readable()?;
        let memory = region.memory();
        let (data, metadata) = memory.read_only_files()?;
        Ok((region, data, metadata))
    });
    let (region, data, metadata) = match files {
        Ok(files) => files,
        Err(error) => {
            error_reply(shared, out, request_id, error.code(), &error.to_string());
            return;
        }
    };
    let mut reply = Vec::new();
    Response::RegionShared {
        segment_bytes: region.segment_bytes(),
        data_bytes: region.memory().data_bytes(),
        metadata_bytes: region.memory().metadata_bytes(),
    }
    .encode(&mut reply, request_id, 0);
    if out.flush().is_err() {
        return;
    }
    let deadline = Instant::now() + out.frame_timeout;
    let sent = out.writer.write_reply_with_files(
        &reply,
        &[data.as_raw_fd(), metadata.as_raw_fd()],
        deadline,
    );
    if let Some(metrics) = out.metrics {
        metrics.sent(reply.len());
    }
    if let Err(error) = sent {
        out.failed = Some(error);
    }
    tracing::debug!(
        region = region.info().name,
        "region shared with a local client"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the log against a flood of failed handshakes: a burst is
    // logged, the rest only counted, and the count is reported (and reset)
    // once a line is allowed again.
    #[test]
    fn log_limiter_allows_a_burst_then_counts() {
        let limiter = LogLimiter::new("failed handshakes", 20.0, 3.0);
        let allowed = (0..1000).filter(|_| limiter.allow()).count();
        assert!((3..=4).contains(&allowed), "{allowed} lines allowed");
        assert!(limiter.suppressed() >= 996);
        std::thread::sleep(Duration::from_millis(120));
        limiter.flush();
        assert_eq!(limiter.suppressed(), 0, "the summary line was not written");
        assert!(limiter.allow(), "a line is allowed again after the refill");
    }

    // Guards the budget's bound: takes beyond the limit fail (after the
    // wait), and memory given back can be taken again.
    #[test]
    fn memory_budget_never_lends_beyond_its_limit() {
        let budget = MemoryBudget::new(10);
        assert!(budget.take(6, Duration::ZERO));
        assert!(!budget.take(5, Duration::from_millis(20)));
        assert!(
            !budget.take(11, Duration::from_secs(10)),
            "waited for the impossible"
        );
        let budget = Arc::new(budget);
        let giver = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                budget.give(6);
            })
        };
        assert!(
            budget.take(8, Duration::from_secs(5)),
            "a release did not wake the waiter"
        );
        giver.join().unwrap();
        assert_eq!(budget.used(), 8);
    }
}

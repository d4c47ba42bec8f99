//! One TCP connection to a node, shared by many threads, with many requests in
//! flight, matched to replies by request id.
//!
//! There is no dedicated reader thread. A caller that has sent its request
//! tries to become the reader (a try-lock); the reader reads frames and hands
//! each reply to the caller waiting for it, until its own reply arrives, then
//! passes the role on by waking another waiting caller. A lone caller thus
//! reads its own reply with no thread handoff, which is what keeps a queue-
//! depth-one round trip close to the raw socket's. Waiting callers spin for
//! the configured budget, then park.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use pagoda_wire::io::{FrameReader, SpinRead};
use pagoda_wire::limits::{BATCH_BYTES_MAX, BATCH_PAGES_MAX};
use pagoda_wire::tls::{TlsFailure, TlsReader, TlsWriter};
use pagoda_wire::{ErrorCode, Opcode, Response, WireError};
use parking_lot::Mutex;

use crate::ClientOptions;
use crate::error::ClientError;

/// A reply's opcode and payload, owned.
pub struct Reply {
    opcode: u8,
    payload: Vec<u8>,
    /// The page data went straight into the caller's buffers.
    delivered: bool,
}

impl Reply {
    /// Decodes the reply; an error reply becomes `ClientError::Remote`.
    pub fn decode(&self) -> Result<Response<'_>, ClientError> {
        match Response::decode(self.opcode, &self.payload)? {
            Response::Error { code, message } => Err(ClientError::Remote {
                code,
                message: message.to_owned(),
            }),
            response => Ok(response),
        }
    }

    /// Whether the reply's page data was copied into the caller's buffers.
    pub fn delivered(&self) -> bool {
        self.delivered
    }

    /// The payload of a `PagesData` reply, or the error the reply carries.
    pub fn pages_data(&self) -> Result<&[u8], ClientError> {
        if self.opcode == Opcode::PagesData as u8 {
            return Ok(&self.payload);
        }
        let other = self.decode()?;
        Err(ClientError::Protocol(format!(
            "expected page data, got {:?}",
            other.opcode()
        )))
    }
}

struct Slot {
    done: AtomicBool,
    reply: Mutex<Option<Result<Reply, ClientError>>>,
    thread: Thread,
    /// Whether `thread` waits for the reply (a read-ahead's issuer does not),
    /// and so may be handed the reader role.
    waits: bool,
    /// Where page data in the reply should land, so that the reader copies it
    /// once, straight into the caller's buffers, instead of into a `Vec` first.
    sink: Mutex<Option<Sink>>,
}

/// The caller's buffers for a `PagesData` reply, as raw parts.
///
/// The caller that owns them is blocked in `Connection::wait` until its slot
/// is completed, and a slot is completed only after the copy, so the buffers
/// outlive every write through these pointers and nobody else touches them
/// meanwhile. A caller that gives up on a slot first removes it from the
/// pending map, after which no reader can reach the sink.
struct Sink {
    parts: Vec<(*mut u8, usize)>,
}

// SAFETY: see the type's documentation: the pointers are written by exactly
// one thread (the reader that took the slot out of the pending map) while
// their owner waits.
unsafe impl Send for Sink {}

/// The read half of the connection: the socket, or TLS over it.
enum ReadHalf {
    Plain(TcpStream),
    Tls(TlsReader),
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ReadHalf::Plain(stream) => stream.read(buf),
            ReadHalf::Tls(stream) => stream.read(buf),
        }
    }
}

impl SpinRead for ReadHalf {
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self {
            ReadHalf::Plain(stream) => stream.read_nonblocking(buf),
            ReadHalf::Tls(stream) => stream.read_nonblocking(buf),
        }
    }
}

/// The write half of the connection.
enum WriteHalf {
    Plain(TcpStream),
    Tls(TlsWriter),
}

impl WriteHalf {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            WriteHalf::Plain(stream) => stream.write_all(bytes),
            WriteHalf::Tls(stream) => stream.write_all(bytes),
        }
    }
}

struct Writer {
    stream: WriteHalf,
    buffer: Vec<u8>,
}

/// See the module documentation.
pub struct Connection {
    peer: SocketAddr,
    /// A handle on the socket, to shut it down when the connection fails.
    socket: TcpStream,
    writer: Mutex<Writer>,
    reader: Mutex<FrameReader<ReadHalf>>,
    pending: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    failed: Mutex<Option<String>>,
    /// How long a waiter other than the reader spins (the reader's own spin
    /// adapts in its `FrameReader`): the spin ceiling, at most
    /// `SPIN_START`.
    spin: Duration,
    /// Waiters other than the reader that are spinning. At most one spins;
    /// the rest park at once, so that on a small machine spinning waiters do
    /// not take the cores the reader and the node need.
    spinners: AtomicUsize,
    timeout: Duration,
    batch_bytes_max: AtomicUsize,
    batch_pages_max: AtomicUsize,
}

impl Connection {
    /// Connects (without authenticating).
    pub fn open(
        addr: impl ToSocketAddrs,
        options: &ClientOptions,
    ) -> Result<Connection, ClientError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Connect {
                addr: "(unresolved)".into(),
                source,
            })?
            .collect();
        let mut last_error = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, options.timeout) {
                Ok(stream) => return Connection::from_stream(stream, addr, options),
                Err(error) => last_error = Some((addr, error)),
            }
        }
        let (addr, source) = last_error.unwrap_or_else(|| {
            (
                SocketAddr::from(([0, 0, 0, 0], 0)),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to"),
            )
        });
        Err(ClientError::Connect {
            addr: addr.to_string(),
            source,
        })
    }

    fn from_stream(
        stream: TcpStream,
        peer: SocketAddr,
        options: &ClientOptions,
    ) -> Result<Connection, ClientError> {
        let io = |source| ClientError::Connect {
            addr: peer.to_string(),
            source,
        };
        stream.set_nodelay(true).map_err(io)?;
        // A reader blocked this long with requests outstanding means the node
        // is gone or stuck.
        stream.set_read_timeout(Some(options.timeout)).map_err(io)?;
        stream
            .set_write_timeout(Some(options.timeout))
            .map_err(io)?;
        let socket = stream.try_clone().map_err(io)?;
        let (read_half, write_half) = match &options.tls {
            None => (
                ReadHalf::Plain(stream.try_clone().map_err(io)?),
                WriteHalf::Plain(stream),
            ),
            Some(tls) => {
                let config = crate::tls::client_config(tls)?;
                let name = crate::tls::server_name(tls, peer)?;
                let state = rustls::ClientConnection::new(config, name).map_err(|e| {
                    ClientError::InvalidArgument(format!("starting TLS with {peer}: {e}"))
                })?;
                let mut stream = stream;
                let deadline = Instant::now() + options.timeout;
                let session = pagoda_wire::tls::handshake(state.into(), &mut stream, deadline)
                    .map_err(|error| {
                        // Bytes that are not TLS at all: most likely a node
                        // without TLS.
                        let garbled = error
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<TlsFailure>())
                            .is_some_and(|failure| {
                                matches!(failure.0, rustls::Error::InvalidMessage(_))
                            });
                        let hint = if garbled {
                            " (the node does not seem to speak TLS)"
                        } else {
                            ""
                        };
                        ClientError::Connect {
                            addr: peer.to_string(),
                            source: std::io::Error::new(
                                error.kind(),
                                format!("TLS handshake failed: {error}{hint}"),
                            ),
                        }
                    })?;
                // The handshake cleared the read timeout; replies need it.
                stream.set_read_timeout(Some(options.timeout)).map_err(io)?;
                (
                    ReadHalf::Tls(TlsReader::new(
                        session.clone(),
                        stream.try_clone().map_err(io)?,
                    )),
                    WriteHalf::Tls(TlsWriter::new(session, stream)),
                )
            }
        };
        Ok(Connection {
            peer,
            socket,
            writer: Mutex::new(Writer {
                stream: write_half,
                buffer: Vec::with_capacity(64 * 1024),
            }),
            reader: Mutex::new(FrameReader::new(read_half, options.spin)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            failed: Mutex::new(None),
            spin: options.spin.min(pagoda_wire::spin::SPIN_START),
            spinners: AtomicUsize::new(0),
            timeout: options.timeout,
            batch_bytes_max: AtomicUsize::new(BATCH_BYTES_MAX),
            batch_pages_max: AtomicUsize::new(BATCH_PAGES_MAX),
        })
    }

    /// The node's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Records the node's batch limits (from `HelloOk`), never above ours.
    pub fn set_limits(&self, batch_bytes_max: usize, batch_pages_max: usize) {
        self.batch_bytes_max
            .store(batch_bytes_max.clamp(1, BATCH_BYTES_MAX), Ordering::Relaxed);
        self.batch_pages_max
            .store(batch_pages_max.clamp(1, BATCH_PAGES_MAX), Ordering::Relaxed);
    }

    /// The most pages of `page_size` one request may carry.
    pub fn batch_pages_max(&self, page_size: usize) -> usize {
        let by_bytes = self.batch_bytes_max.load(Ordering::Relaxed) / page_size;
        by_bytes
            .min(self.batch_pages_max.load(Ordering::Relaxed))
            .max(1)
    }

    fn fail(&self, reason: String) {
        let mut failed = self.failed.lock();
        if failed.is_none() {
            tracing::warn!(peer = %self.peer, %reason, "connection failed");
            *failed = Some(reason.clone());
        }
        drop(failed);
        let slots: Vec<_> = self.pending.lock().drain().collect();
        for (_, slot) in slots {
            complete(&slot, Err(ClientError::Disconnected(reason.clone())));
        }
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Whether the connection has failed (every call on it fails at once).
    pub fn is_failed(&self) -> bool {
        self.failed.lock().is_some()
    }

    /// Closes the connection on purpose (the client moved to another node):
    /// every request still waiting fails with `Disconnected` and is retried
    /// by its caller where that is safe.
    pub fn close(&self, reason: String) {
        self.fail(reason);
    }

    fn check_failed(&self) -> Result<(), ClientError> {
        match &*self.failed.lock() {
            Some(reason) => Err(ClientError::Disconnected(reason.clone())),
            None => Ok(()),
        }
    }

    /// Sends one request, built by `encode(out, request_id)`, and waits for
    /// its reply.
    pub fn call(&self, encode: impl FnOnce(&mut Vec<u8>, u64)) -> Result<Reply, ClientError> {
        self.call_into(encode, &mut [])
    }

    /// Like [`Connection::call`], but a `PagesData` reply whose size equals
    /// the buffers' total is copied straight into `buffers`, in order, and the
    /// returned reply says so with [`Reply::delivered`].
    pub fn call_into(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        buffers: &mut [&mut [u8]],
    ) -> Result<Reply, ClientError> {
        let sink = (!buffers.is_empty()).then(|| Sink {
            parts: buffers
                .iter_mut()
                .map(|buffer| (buffer.as_mut_ptr(), buffer.len()))
                .collect(),
        });
        let (_, slot) = self.issue(encode, std::thread::current(), true, sink)?;
        self.wait(&slot)
    }

    /// Registers a slot for a new request (woken on `thread`; `waits`: its
    /// thread waits for the reply and may be handed the reader role; `sink`:
    /// where page data goes) and sends the request. If sending fails the
    /// connection fails, and the slot is out of every reader's reach before
    /// this returns (so the sink's buffers may go).
    fn issue(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        thread: Thread,
        waits: bool,
        sink: Option<Sink>,
    ) -> Result<(u64, Arc<Slot>), ClientError> {
        self.check_failed()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            done: AtomicBool::new(false),
            reply: Mutex::new(None),
            thread,
            waits,
            sink: Mutex::new(sink),
        });
        self.pending.lock().insert(id, slot.clone());
        if let Err(error) = self.write_request(encode, id) {
            let reason = format!("sending a request: {error}");
            if self.pending.lock().remove(&id).is_none() {
                // A reader took the slot and may be writing into the sink:
                // wait for it to finish before the buffers go away.
                let _ = self.wait(&slot);
            }
            self.fail(reason.clone());
            return Err(ClientError::Disconnected(reason));
        }
        Ok((id, slot))
    }

    /// Encodes a request and writes it, whole, under the writer lock: what
    /// is encoded and when it is sent are one step, in the connection's order.
    fn write_request(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        id: u64,
    ) -> std::io::Result<()> {
        let mut guard = self.writer.lock();
        let writer = &mut *guard;
        writer.buffer.clear();
        encode(&mut writer.buffer, id);
        let sent = writer.stream.write_all(&writer.buffer);
        // Keep large request buffers from pinning memory forever.
        if writer.buffer.capacity() > 4 * 1024 * 1024 {
            writer.buffer = Vec::with_capacity(64 * 1024);
        }
        sent
    }

    /// Sends one request and returns without waiting; the reply is collected
    /// with [`Connection::wait_for`], by `waiter` (the thread woken when it
    /// arrives). Requests sent on one connection are served in order.
    pub fn send(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        waiter: std::thread::Thread,
    ) -> Result<PendingCall, ClientError> {
        let (id, slot) = self.issue(encode, waiter, true, None)?;
        Ok(PendingCall {
            slot,
            connection: None,
            id,
        })
    }

    /// Waits for the reply to a request sent with [`Connection::send`].
    pub fn wait_for(&self, call: &PendingCall) -> Result<Reply, ClientError> {
        self.wait(&call.slot)
    }

    fn wait(&self, slot: &Arc<Slot>) -> Result<Reply, ClientError> {
        let began = Instant::now();
        // Held while this waiter is the one allowed to spin; dropping it
        // (also on return) gives the permission back.
        let mut permit: Option<SpinPermit<'_>> = None;
        loop {
            if slot.done.load(Ordering::Acquire) {
                return slot
                    .reply
                    .lock()
                    .take()
                    .expect("a completed slot holds its reply");
            }
            if let Some(mut reader) = self.reader.try_lock() {
                // The reader spins in its own reads.
                permit = None;
                while !slot.done.load(Ordering::Acquire) {
                    match reader.read_frame() {
                        Ok(frame) => self.dispatch(
                            frame.header.request_id,
                            frame.header.opcode,
                            frame.payload,
                        ),
                        Err(error) => {
                            // Fail the connection while still holding the
                            // reader role: no other thread may take a slot
                            // (and write into its buffers) between the error
                            // and the draining of the pending map.
                            if self.read_failed(error) {
                                return Err(ClientError::Timeout(self.timeout));
                            }
                            break;
                        }
                    }
                }
                // Pass the reader role on to someone still waiting.
                drop(reader);
                if let Some(next) = self.pending.lock().values().find(|slot| slot.waits) {
                    next.thread.unpark();
                }
                continue;
            }
            if began.elapsed() < self.spin && permit.is_none() {
                permit = SpinPermit::try_take(&self.spinners);
            }
            if began.elapsed() < self.spin && permit.is_some() {
                std::hint::spin_loop();
            } else {
                permit = None;
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }
    }

    /// Fails the connection after a failed read; returns whether the read
    /// timed out. Called by the reader, still holding the role.
    fn read_failed(&self, error: WireError) -> bool {
        let timed_out = matches!(
            &error,
            WireError::Io(io) if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        );
        let reason = match error {
            _ if timed_out => format!("no reply within {:?}", self.timeout),
            WireError::Closed => "the node closed the connection".to_owned(),
            // A TLS record (an alert or a handshake) where a frame should be.
            WireError::BadMagic { found }
                if matches!(found & 0xff, 0x15 | 0x16) && (found >> 8) & 0xff == 0x03 =>
            {
                "the node speaks TLS and this client connected without it: \
                 give the node's CA (TlsOptions; pagoda --tls-ca or PAGODA_TLS_CA)"
                    .to_owned()
            }
            other => other.to_string(),
        };
        self.fail(reason);
        timed_out
    }

    /// Sends one request whose `PagesData` reply is copied straight into
    /// `buffer` (when its size matches), and returns without waiting. The
    /// reply is collected with [`Connection::poll`]; until then, or until
    /// [`Connection::abandon`], `buffer` must stay where it is and untouched:
    /// the caller keeps it, and the `ReadAhead` that owns both drops the
    /// call before the buffer.
    pub fn send_into(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
        buffer: &mut [u8],
    ) -> Result<PendingCall, ClientError> {
        let sink = Sink {
            parts: vec![(buffer.as_mut_ptr(), buffer.len())],
        };
        let (id, slot) = self.issue(encode, std::thread::current(), false, Some(sink))?;
        Ok(PendingCall {
            slot,
            connection: None,
            id,
        })
    }

    /// The reply to `call` if it has arrived; `None` while it is still in
    /// flight. With `receive`, it first reads (without waiting) whatever the
    /// socket holds, when no other thread is reading it, and hands every
    /// reply to its caller.
    pub fn poll(&self, call: &PendingCall, receive: bool) -> Option<Result<Reply, ClientError>> {
        let slot = &call.slot;
        if receive
            && !slot.done.load(Ordering::Acquire)
            && let Some(mut reader) = self.reader.try_lock()
        {
            while !slot.done.load(Ordering::Acquire) {
                match reader.poll_frame() {
                    Ok(Some(frame)) => {
                        self.dispatch(frame.header.request_id, frame.header.opcode, frame.payload)
                    }
                    Ok(None) => break,
                    Err(error) => {
                        self.read_failed(error);
                        break;
                    }
                }
            }
            drop(reader);
            // A waiter may have found the role taken meanwhile and parked.
            if let Some(next) = self.pending.lock().values().find(|slot| slot.waits) {
                next.thread.unpark();
            }
        }
        if slot.done.load(Ordering::Acquire) {
            return slot.reply.lock().take();
        }
        None
    }

    /// Gives up on `call`: its reply, if it comes, is dropped. Returns once
    /// no reader can write into the call's buffer any more.
    pub fn abandon(&self, call: &PendingCall) {
        if self.pending.lock().remove(&call.id).is_some() {
            return;
        }
        // A reader took the slot and may be copying into the buffer; it
        // completes the slot right after. Spinning is bounded by one copy.
        let mut spins = 0u32;
        while !call.slot.done.load(Ordering::Acquire) {
            spins += 1;
            if spins < 1024 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn dispatch(&self, id: u64, opcode: u8, payload: &[u8]) {
        if id == 0 && opcode == Opcode::Error as u8 {
            // A connection-level error: the node is closing the connection.
            let reason = match Response::decode(opcode, payload) {
                Ok(Response::Error { code, message }) => format!("{code}: {message}"),
                _ => "the node reported a connection error".to_owned(),
            };
            let code = match Response::decode(opcode, payload) {
                Ok(Response::Error { code, .. }) => code,
                _ => ErrorCode::Unknown,
            };
            tracing::warn!(peer = %self.peer, %code, "node closed the connection");
            self.fail(reason);
            return;
        }
        let Some(slot) = self.pending.lock().remove(&id) else {
            tracing::warn!(peer = %self.peer, id, "reply to no pending request; ignored");
            return;
        };
        let sink = slot.sink.lock().take();
        if let Some(sink) = sink
            && opcode == Opcode::PagesData as u8
            && sink.parts.iter().map(|part| part.1).sum::<usize>() == payload.len()
        {
            let mut rest = payload;
            for (pointer, len) in sink.parts {
                let (head, tail) = rest.split_at(len);
                // SAFETY: see `Sink`: the buffer is live, `len` bytes long,
                // and written by no one else until the slot completes.
                unsafe { std::ptr::copy_nonoverlapping(head.as_ptr(), pointer, len) };
                rest = tail;
            }
            complete(
                &slot,
                Ok(Reply {
                    opcode,
                    payload: Vec::new(),
                    delivered: true,
                }),
            );
            return;
        }
        complete(
            &slot,
            Ok(Reply {
                opcode,
                payload: payload.to_vec(),
                delivered: false,
            }),
        );
    }
}

/// A request sent and not yet answered; see [`Connection::send`].
#[derive(Clone)]
pub struct PendingCall {
    slot: Arc<Slot>,
    /// Its request id, to take it out of the pending map.
    id: u64,
    /// The connection it was sent on, when sent through the client's link
    /// (which may have moved to another connection since).
    connection: Option<Arc<Connection>>,
}

impl PendingCall {
    /// The same call, remembering the connection it was sent on.
    pub(crate) fn on(self, connection: Arc<Connection>) -> PendingCall {
        PendingCall {
            connection: Some(connection),
            ..self
        }
    }

    /// The connection it was sent on, if recorded.
    pub(crate) fn connection(&self) -> Option<&Arc<Connection>> {
        self.connection.as_ref()
    }
}

/// Permission for one waiter (other than the reader) to spin; see
/// `Connection::spinners`.
struct SpinPermit<'a> {
    spinners: &'a AtomicUsize,
}

impl<'a> SpinPermit<'a> {
    fn try_take(spinners: &'a AtomicUsize) -> Option<SpinPermit<'a>> {
        if spinners.fetch_add(1, Ordering::Relaxed) == 0 {
            Some(SpinPermit { spinners })
        } else {
            spinners.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for SpinPermit<'_> {
    fn drop(&mut self) {
        self.spinners.fetch_sub(1, Ordering::Relaxed);
    }
}

fn complete(slot: &Slot, reply: Result<Reply, ClientError>) {
    *slot.reply.lock() = Some(reply);
    slot.done.store(true, Ordering::Release);
    slot.thread.unpark();
}

//! Serving one connection: accepting it, the handshake, and the loop that
//! reads framed requests and writes their replies.
//!
//! A connection must start with `Hello`. After that it may pipeline any number
//! of requests; they are served in order and each reply carries its request's
//! id. Replies to requests that arrived together are written together. A
//! framing error (bad magic, version, length or checksum, or a stream closed
//! mid-frame) is answered with an error reply carrying request id 0 where the
//! stream is still writable, and the connection is closed; a well-framed
//! request that fails (unknown opcode, malformed payload, out-of-range page,
//! out of memory, ...) gets an error reply and the connection goes on. Nothing
//! one connection sends affects another. What a request does is
//! `server::serve_request`'s business, not this module's.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pagoda_wire::io::FrameReader;
use pagoda_wire::limits::{
    BATCH_BYTES_MAX, BATCH_PAGES_MAX, FRAME_PAYLOAD_BYTES_MAX, HELLO_PAYLOAD_BYTES_MAX,
};
use pagoda_wire::{ErrorCode, Request, Response, VERSION, WireError};

use crate::server::{ACCEPT_POLL_MS, ConnectionEntry, Shared, serve_request};

/// Replies are written once this many bytes are pending, even if more
/// requests are buffered.
const REPLY_FLUSH_BYTES: usize = 1024 * 1024;

pub(crate) fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
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

fn serve(shared: &Arc<Shared>, stream: TcpStream) -> Result<(), WireError> {
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
    shared: &Arc<Shared>,
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

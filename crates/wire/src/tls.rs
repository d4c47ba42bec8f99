//! Frames over TLS: a rustls session over a TCP socket, split into a read
//! half (a [`SpinRead`], for a [`FrameReader`](crate::io::FrameReader)) and
//! a write half that can be used from other threads at the same time.
//!
//! The halves share the rustls state under a mutex, but neither holds it
//! while it waits on the socket: the reader receives ciphertext without the
//! lock and takes it only to decrypt; the writer encrypts under the lock and
//! sends without it. A reader blocked on the socket therefore never stalls a
//! writer, and the reader keeps the spin-then-block behaviour of the plain
//! socket. Records leave in the order they were encrypted because the caller
//! serializes its writes (one writer at a time), as it does for a plain
//! socket.
//!
//! The crate knows nothing of certificates: the caller builds the rustls
//! configuration and runs [`handshake`].

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::io::{SpinRead, recv_dontwait};

/// Ciphertext received per socket read at first: one full record, so that a
/// connection that only exchanges small messages (one still authenticating)
/// holds little.
const RECEIVE_BYTES_MIN: usize = 18 * 1024;
/// Ciphertext received per socket read at most: a few full records. The
/// buffer grows to it when reads fill it.
const RECEIVE_BYTES_MAX: usize = 64 * 1024;
/// Plaintext encrypted per socket write: four full records.
const SEND_CHUNK_BYTES: usize = 64 * 1024;

/// The cryptography both ends use: rustls' `ring` provider (it builds with
/// the stable toolchain and a C compiler alone), with AES-128-GCM preferred:
/// as strong as the session keys it protects here, and faster than AES-256
/// for bulk page data.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut provider = default_provider();
    let preferred = [
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    provider
        .cipher_suites
        .retain(|suite| !preferred.contains(suite));
    provider.cipher_suites.splice(0..0, preferred);
    Arc::new(provider)
}

/// A TLS session shared by its two halves.
#[derive(Debug)]
pub struct TlsSession {
    state: Mutex<rustls::Connection>,
}

impl TlsSession {
    fn lock(&self) -> MutexGuard<'_, rustls::Connection> {
        // A panic while holding the lock leaves rustls in an unknown state;
        // the connection fails at its next use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure(error))
}

/// A TLS-level failure (a bad certificate, a corrupt record, an alert from
/// the peer), carried in an `io::Error` of kind `InvalidData`.
#[derive(Debug)]
pub struct TlsFailure(pub rustls::Error);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS: {}", self.0)
    }
}

impl std::error::Error for TlsFailure {}

/// Sends whatever rustls has queued (handshake messages, alerts).
fn flush_queued(state: &mut rustls::Connection, socket: &mut TcpStream) -> io::Result<()> {
    while state.wants_write() {
        state.write_tls(socket)?;
    }
    Ok(())
}

/// Runs the handshake on a blocking socket, finishing by `deadline`: each
/// read is given only what is left, so a peer that trickles its handshake
/// cannot stretch it. On a TLS error the alert rustls queued is sent before
/// the error is returned, so the peer learns why.
pub fn handshake(
    mut state: rustls::Connection,
    socket: &mut TcpStream,
    deadline: Instant,
) -> io::Result<Arc<TlsSession>> {
    let result = (|| {
        while state.is_handshaking() {
            flush_queued(&mut state, socket)?;
            if !state.is_handshaking() {
                break;
            }
            if state.wants_read() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the TLS handshake did not finish in time",
                    ));
                }
                socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                let received = match state.read_tls(socket) {
                    Err(error)
                        if matches!(
                            error.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue;
                    }
                    other => other?,
                };
                if received == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    ));
                }
                state.process_new_packets().map_err(tls_error)?;
            }
        }
        flush_queued(&mut state, socket)
    })();
    if let Err(error) = result {
        // The alert, if any: best effort, the connection is failing anyway.
        let _ = flush_queued(&mut state, socket);
        return Err(error);
    }
    socket.set_read_timeout(None)?;
    Ok(Arc::new(TlsSession {
        state: Mutex::new(state),
    }))
}

/// The read half: decrypted bytes of the stream.
#[derive(Debug)]
pub struct TlsReader {
    session: Arc<TlsSession>,
    socket: TcpStream,
    /// Ciphertext received and not yet given to rustls.
    received: Vec<u8>,
    start: usize,
    end: usize,
    /// Whether the last socket read filled the buffer (more was waiting).
    filled: bool,
}

impl TlsReader {
    /// The read half of `session` over (a handle on) its socket.
    pub fn new(session: Arc<TlsSession>, socket: TcpStream) -> TlsReader {
        TlsReader {
            session,
            socket,
            received: Vec::new(),
            start: 0,
            end: 0,
            filled: false,
        }
    }

    /// Hands out decrypted bytes, decrypting what has been received as
    /// needed; `None` if everything received has been handed out.
    fn decrypted(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut state = self.session.lock();
        loop {
            match state.reader().read(buf) {
                Ok(count) => return Ok(Some(count)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without a close_notify: at a
                // frame boundary that is an ordinary close, and mid-frame
                // the frame reader reports the truncation.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(0)),
                Err(error) => return Err(error),
            }
            if self.start == self.end {
                return Ok(None);
            }
            let mut pending = &self.received[self.start..self.end];
            let taken = state.read_tls(&mut pending)?;
            self.start += taken;
            // Messages rustls queues in answer (rare after the handshake)
            // stay queued for the writer, which sends them in order before
            // its next record; only an alert about a failure is sent from
            // here, the connection being lost anyway.
            if let Err(error) = state.process_new_packets() {
                let _ = flush_queued(&mut state, &mut self.socket);
                return Err(tls_error(error));
            }
        }
    }

    /// Gives rustls the end of the stream.
    fn end_of_stream(&mut self) -> io::Result<()> {
        let mut state = self.session.lock();
        state.read_tls(&mut io::empty())?;
        state.process_new_packets().map_err(tls_error)?;
        Ok(())
    }

    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.received.is_empty() {
            self.received.resize(RECEIVE_BYTES_MIN, 0);
        } else if self.filled && self.received.len() < RECEIVE_BYTES_MAX {
            self.received.resize(RECEIVE_BYTES_MAX, 0);
        }
    }

    fn note_received(&mut self, received: usize) {
        self.filled = self.end + received == self.received.len();
        self.end += received;
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(count) = self.decrypted(buf)? {
                return Ok(count);
            }
            self.make_room();
            let received = self.socket.read(&mut self.received[self.end..])?;
            if received == 0 {
                self.end_of_stream()?;
            }
            self.note_received(received);
        }
    }
}

impl SpinRead for TlsReader {
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            if let Some(count) = self.decrypted(buf)? {
                return Ok(Some(count));
            }
            self.make_room();
            let fd = self.socket.as_raw_fd();
            match recv_dontwait(fd, &mut self.received[self.end..])? {
                None => return Ok(None),
                Some(0) => self.end_of_stream()?,
                Some(received) => self.note_received(received),
            }
        }
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        // Decrypted bytes still held are handed out by `read_nonblocking`
        // first (see `FrameReader::try_fill`), so waiting on the socket
        // misses nothing.
        Some(self.socket.as_raw_fd())
    }
}

/// The write half: encrypts and sends.
#[derive(Debug)]
pub struct TlsWriter {
    session: Arc<TlsSession>,
    socket: TcpStream,
    /// Ciphertext of the chunk being sent.
    sealed: Vec<u8>,
}

impl TlsWriter {
    /// The write half of `session` over (a handle on) its socket.
    pub fn new(session: Arc<TlsSession>, socket: TcpStream) -> TlsWriter {
        TlsWriter {
            session,
            socket,
            sealed: Vec::new(),
        }
    }

    /// The socket, to set timeouts on or shut down.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Encrypts the next chunk of `bytes`: returns how much of `bytes` it
    /// took; the ciphertext is in `sealed`.
    fn seal(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.sealed.clear();
        let chunk = &bytes[..bytes.len().min(SEND_CHUNK_BYTES)];
        let mut state = self.session.lock();
        let mut taken = 0;
        while taken < chunk.len() {
            let count = state.writer().write(&chunk[taken..])?;
            taken += count;
            // Drain what was encrypted into our buffer, so that rustls's
            // own (bounded) buffer has room for the rest of the chunk.
            while state.wants_write() {
                state.write_tls(&mut self.sealed)?;
            }
            if count == 0 {
                break;
            }
        }
        if taken == 0 && !chunk.is_empty() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(taken)
    }

    /// Writes all of `bytes`, sending each encrypted chunk with
    /// `send(socket, ciphertext)` (which may apply its own deadline).
    pub fn write_all_with(
        &mut self,
        mut bytes: &[u8],
        mut send: impl FnMut(&mut TcpStream, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        while !bytes.is_empty() {
            let taken = self.seal(bytes)?;
            bytes = &bytes[taken..];
            send(&mut self.socket, &self.sealed)?;
        }
        // Keep a large burst's ciphertext buffer from pinning memory.
        if self.sealed.capacity() > 2 * SEND_CHUNK_BYTES {
            self.sealed = Vec::new();
        }
        Ok(())
    }
}

impl Write for TlsWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let taken = self.seal(bytes)?;
        let mut sealed = std::mem::take(&mut self.sealed);
        let sent = self.socket.write_all(&sealed);
        sealed.clear();
        self.sealed = sealed;
        sent.map(|()| taken)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all_with(bytes, |socket, sealed| socket.write_all(sealed))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

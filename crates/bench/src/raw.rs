//! Raw TCP over loopback, without Pagoda: the limits Pagoda is judged against.
//!
//! A [`RawServer`] answers every fixed-size request with a fixed-size reply,
//! which is a remote page read stripped to its bytes on the wire. Both ends
//! either block in `read` or busy-poll with non-blocking reads. A polling end
//! spins for a budget and then blocks, so that a server left idle between
//! measurement rounds does not steal a core from the next round on a two-core
//! machine; within a round requests arrive back to back and it never blocks.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How one end of a raw connection waits for bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Blocking reads.
    Block,
    /// Non-blocking reads in a loop for up to this long, then a blocking read.
    Poll(Duration),
}

/// How long a raw peer waits for the other end before it gives up.
const IO_TIMEOUT_S: u64 = 10;

/// Reads what is available now: `Ok(None)` if nothing is.
fn recv_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid and writable for `buf.len()` bytes during the
    // call, and recv writes at most that many.
    let result = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if result >= 0 {
        return Ok(Some(result as usize));
    }
    let error = io::Error::last_os_error();
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
        _ => Err(error),
    }
}

/// Fills `buf` from `stream`, waiting as `wait` says. `Ok(false)` if the
/// stream ended before the first byte.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], wait: Wait) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let mut received = None;
        if let Wait::Poll(budget) = wait {
            let began = Instant::now();
            loop {
                if let Some(count) = recv_now(stream, &mut buf[filled..])? {
                    received = Some(count);
                    break;
                }
                if began.elapsed() >= budget {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let count = match received {
            Some(count) => count,
            None => stream.read(&mut buf[filled..])?,
        };
        if count == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended mid-message",
            ));
        }
        filled += count;
    }
    Ok(true)
}

/// A thread answering each `request_bytes` request with `reply_bytes`, for
/// one connection; it ends when the client closes.
pub struct RawServer {
    addr: SocketAddr,
    thread: Option<JoinHandle<io::Result<u64>>>,
}

impl RawServer {
    /// Binds 127.0.0.1 on a free port and serves one connection.
    pub fn start(request_bytes: usize, reply_bytes: usize, wait: Wait) -> RawServer {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("binding loopback");
        let addr = listener.local_addr().expect("the bound address");
        let thread = std::thread::Builder::new()
            .name("raw-server".into())
            .spawn(move || -> io::Result<u64> {
                let (mut stream, _) = listener.accept()?;
                stream.set_nodelay(true)?;
                let mut request = vec![0u8; request_bytes];
                let reply = vec![0x5au8; reply_bytes];
                let mut served = 0u64;
                while read_full(&mut stream, &mut request, wait)? {
                    stream.write_all(&reply)?;
                    served += 1;
                }
                Ok(served)
            })
            .expect("spawning the raw server");
        RawServer {
            addr,
            thread: Some(thread),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The client has closed by now (it is dropped first by callers
            // that hold both); a server error only means a broken benchmark.
            match thread.join() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => crate::report::progress(&format!("raw server ended: {error}")),
                Err(_) => crate::report::progress("raw server panicked"),
            }
        }
    }
}

/// The client end of a raw request-reply connection.
pub struct RawClient {
    stream: TcpStream,
    request: Vec<u8>,
    reply: Vec<u8>,
    wait: Wait,
}

impl RawClient {
    /// Connects to a [`RawServer`] with the same message sizes.
    pub fn connect(
        addr: SocketAddr,
        request_bytes: usize,
        reply_bytes: usize,
        wait: Wait,
    ) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connecting over loopback");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_read_timeout(Some(Duration::from_secs(IO_TIMEOUT_S)))
            .expect("a read timeout");
        RawClient {
            stream,
            request: vec![0xa5u8; request_bytes],
            reply: vec![0u8; reply_bytes],
            wait,
        }
    }

    /// One request and its whole reply.
    pub fn round_trip(&mut self) {
        self.stream
            .write_all(&self.request)
            .expect("sending a raw request");
        let complete =
            read_full(&mut self.stream, &mut self.reply, self.wait).expect("reading a raw reply");
        assert!(complete, "the raw server closed the connection");
    }
}

/// A raw server and its client, closed in the right order.
pub struct RawPair {
    // Declared first so that it is dropped (closed) before the server joins.
    client: RawClient,
    _server: RawServer,
}

impl RawPair {
    /// A connected pair; both ends wait as `wait` says.
    pub fn new(request_bytes: usize, reply_bytes: usize, wait: Wait) -> RawPair {
        let server = RawServer::start(request_bytes, reply_bytes, wait);
        let client = RawClient::connect(server.addr(), request_bytes, reply_bytes, wait);
        RawPair {
            client,
            _server: server,
        }
    }

    /// One round trip.
    pub fn round_trip(&mut self) {
        self.client.round_trip();
    }
}

/// One-way bulk transfer over one loopback stream for `duration` in writes of
/// `chunk_bytes`, at most `bytes_max` bytes. Returns bytes per second.
pub fn stream_bandwidth(duration: Duration, chunk_bytes: usize, bytes_max: u64) -> f64 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("binding loopback");
    let addr = listener.local_addr().expect("the bound address");
    let receiver = std::thread::spawn(move || -> io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; chunk_bytes];
        let mut total = 0u64;
        loop {
            let count = stream.read(&mut buf)?;
            if count == 0 {
                return Ok(total);
            }
            total += count as u64;
        }
    });
    let mut stream = TcpStream::connect(addr).expect("connecting over loopback");
    let chunk = vec![0x33u8; chunk_bytes];
    let began = Instant::now();
    let mut sent = 0u64;
    while began.elapsed() < duration && sent < bytes_max {
        stream.write_all(&chunk).expect("streaming over loopback");
        sent += chunk_bytes as u64;
    }
    drop(stream);
    let received = receiver
        .join()
        .expect("the stream receiver")
        .expect("receiving the stream");
    let elapsed = began.elapsed().as_secs_f64();
    assert_eq!(received, sent, "every byte sent arrives");
    received as f64 / elapsed
}

//! The node against clients that attack its connections rather than its
//! protocol: slow handshakes on many connections, announced lengths that are
//! never delivered, pipelined replies that are never read, frames that stop
//! half way. Each test uses small settings (short timeouts, a small memory
//! budget) so that it runs in seconds, checks the node's memory from
//! /proc/self/status (the node runs in this process), and checks that a
//! well-behaved client is still served.
//!
//! The tests run one at a time (`SERIAL`): the memory checks read the whole
//! process's resident size.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions};
use pagoda_node::{Node, NodeConfig};
use pagoda_wire::frame::{FrameBuilder, HEADER_BYTES, Opcode};
use pagoda_wire::io::FrameReader;
use pagoda_wire::limits::FRAME_PAYLOAD_BYTES_MAX;
use pagoda_wire::message::{encode_read_pages, encode_write_pages};
use pagoda_wire::{ErrorCode, OpenMode, Request, Response, WireError};
use tempfile::TempDir;

const MIB: usize = 1024 * 1024;
/// How long a test waits for any one reply before it declares the node stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The process's resident set, in bytes.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

struct Fixture {
    node: Node,
    _dir: TempDir,
}

fn start(adjust: impl FnOnce(&mut NodeConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(([127, 0, 0, 1], 0).into(), 64 << 20, dir.path().into());
    config.spin = Duration::ZERO;
    adjust(&mut config);
    Fixture {
        node: Node::start(config).expect("node starts"),
        _dir: dir,
    }
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// A well-behaved client.
    fn client(&self) -> Client {
        let options = ClientOptions {
            timeout: REPLY_TIMEOUT,
            ..ClientOptions::default()
        };
        Client::connect(self.addr(), options).expect("a well-behaved client connects")
    }
}

/// The first frame of a handshake, for a node without credentials.
fn hello_frame(request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    Request::Hello {
        client_name: "hostile-test",
        credential: "",
        client_nonce: [0; 32],
    }
    .encode(&mut out, request_id, 0);
    out
}

/// A raw connection that sends whatever bytes it is given.
struct Raw {
    writer: TcpStream,
    reader: FrameReader<TcpStream>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect to the node");
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            writer: stream.try_clone().unwrap(),
            reader: FrameReader::new(stream, Duration::ZERO),
        }
    }

    fn authenticated(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&hello_frame(1));
        let (_, opcode, _) = raw.receive().expect("a reply to Hello");
        assert_eq!(opcode, Opcode::HelloOk as u8);
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send to the node");
    }

    fn receive(&mut self) -> Result<(u64, u8, Vec<u8>), WireError> {
        let frame = self.reader.read_frame()?;
        Ok((
            frame.header.request_id,
            frame.header.opcode,
            frame.payload.to_vec(),
        ))
    }

    /// Expects an error reply with `code`, then the end of the stream.
    fn expect_fatal(&mut self, code: ErrorCode) -> String {
        let (id, opcode, payload) = self.receive().expect("an error reply before the close");
        assert_eq!(id, 0, "connection errors carry request id 0");
        let message = match Response::decode(opcode, &payload).unwrap() {
            Response::Error {
                code: actual,
                message,
            } => {
                assert_eq!(actual, code, "{message}");
                message.to_owned()
            }
            other => panic!("expected an error, got {other:?}"),
        };
        self.expect_closed();
        message
    }

    fn expect_closed(&mut self) {
        match self.receive() {
            Err(WireError::Closed) => {}
            Err(WireError::Io(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the node to close the connection, got {other:?}"),
        }
    }
}

fn ping_frame(request_id: u64, padding: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut frame = FrameBuilder::begin(&mut out, Opcode::Ping, request_id, 0);
    let payload = frame.payload();
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.resize(payload.len() + padding, 0);
    frame.finish();
    out
}

/// QD1 pings from a well-behaved client: each must come back within
/// `within`.
fn assert_served(client: &Client, rounds: usize, within: Duration) {
    for _ in 0..rounds {
        let began = Instant::now();
        client.node_stat().expect("a well-behaved client is served");
        assert!(
            began.elapsed() < within,
            "a request took {:?} under attack",
            began.elapsed()
        );
    }
}

// Guards against slowloris: a peer that trickles its handshake one byte at a
// time is closed at the handshake deadline, counted from accept, not kept
// alive by each byte; and peers that hold every handshake slot do not keep a
// well-behaved client from connecting and being served.
#[test]
fn slow_handshakes_do_not_lock_clients_out() {
    let _serial = serial();
    let fixture = start(|config| {
        config.connections_max = 16;
        config.handshakes_max = 4;
        config.handshake_timeout = Duration::from_millis(1500);
    });
    let hello = hello_frame(1);
    // Twice as many attackers as connection slots, each sending one byte of
    // its Hello every 50 ms and reconnecting when closed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        let addr = fixture.addr();
        let hello = hello.clone();
        std::thread::spawn(move || {
            let mut sockets: Vec<(TcpStream, usize)> = Vec::new();
            let mut longest_alive = Duration::ZERO;
            let mut opened: Vec<Instant> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while sockets.len() < 32 {
                    match TcpStream::connect(addr) {
                        Ok(socket) => {
                            socket.set_nonblocking(true).unwrap();
                            sockets.push((socket, 0));
                            opened.push(Instant::now());
                        }
                        Err(_) => break,
                    }
                }
                let mut index = 0;
                while index < sockets.len() {
                    let (socket, sent) = &mut sockets[index];
                    // Never the last byte: the handshake never completes.
                    let wrote = *sent + 1 < hello.len()
                        && socket.write(&hello[*sent..*sent + 1]).is_ok_and(|n| n == 1);
                    // Anything to read is the node's goodbye (or the end).
                    let mut probe = [0u8; 64];
                    let open = matches!(
                        socket.read(&mut probe),
                        Err(ref error) if error.kind() == std::io::ErrorKind::WouldBlock
                    );
                    if wrote && open {
                        *sent += 1;
                        index += 1;
                    } else {
                        longest_alive = longest_alive.max(opened[index].elapsed());
                        sockets.swap_remove(index);
                        opened.swap_remove(index);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            longest_alive
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        // A new connection takes the slot of the oldest handshake, so on a
        // busy machine a client may itself be evicted before its Hello is
        // read; it is never locked out: it gets in within a few attempts.
        let mut attempts = 0;
        let client = loop {
            attempts += 1;
            let options = ClientOptions {
                timeout: REPLY_TIMEOUT,
                ..ClientOptions::default()
            };
            match Client::connect(fixture.addr(), options) {
                Ok(client) => break client,
                Err(error) => {
                    assert!(
                        attempts < 5,
                        "a well-behaved client was refused {attempts} times: {error}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        assert_served(&client, 5, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(200));
    }
    // A lone trickler, timed: closed at the deadline with a clear error.
    let mut raw = Raw::connect(fixture.addr());
    let began = Instant::now();
    let mut sent = 0;
    let closed_at = loop {
        if sent + 1 < hello.len() && raw.writer.write_all(&hello[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        raw.writer
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut probe = [0u8; 1];
        match raw.writer.peek(&mut probe) {
            Ok(_) => break began.elapsed(),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break began.elapsed(),
        }
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "a trickling handshake is still open after {:?}",
            began.elapsed()
        );
    };
    assert!(
        closed_at < Duration::from_millis(4000),
        "closed only after {closed_at:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let longest_alive = attacker.join().unwrap();
    assert!(
        longest_alive < Duration::from_secs(4),
        "an attacker held a handshake for {longest_alive:?}"
    );
}

// Guards against amplification by announced lengths: connections that
// announce the largest payload and deliver nearly all of it, then stall, hold
// no more than the node's connection memory budget between them; the frames
// that could not get memory are answered `Busy` or time out, and a
// well-behaved client is served throughout.
#[test]
fn announced_lengths_stay_within_the_memory_budget() {
    let _serial = serial();
    let budget = 40 * MIB;
    let fixture = start(|config| {
        config.connection_memory_bytes = budget;
        config.connection_memory_wait = Duration::from_millis(100);
        config.frame_timeout = Duration::from_secs(3);
    });
    let client = fixture.client();
    assert_served(&client, 3, Duration::from_secs(1));
    let before = rss_bytes();
    let attackers = 12;
    let mut raws = Vec::new();
    let mut peak = 0;
    for index in 0..attackers {
        let mut raw = Raw::authenticated(fixture.addr());
        let frame = ping_frame(100 + index as u64, FRAME_PAYLOAD_BYTES_MAX - 4);
        // All but the last byte.
        raw.send(&frame[..frame.len() - 1]);
        raws.push(raw);
        peak = peak.max(rss_bytes());
    }
    std::thread::sleep(Duration::from_millis(300));
    peak = peak.max(rss_bytes());
    assert_served(&client, 10, Duration::from_secs(2));
    let grown = peak.saturating_sub(before);
    // The budget, the attackers' baselines, and slack for the allocator and
    // the test's own frames (freed, but not necessarily returned).
    let bound = budget + attackers * 128 * 1024 + 40 * MIB;
    assert!(
        grown <= bound,
        "resident memory grew by {} MiB under {attackers} announced 16 MiB frames (bound {} MiB)",
        grown / MIB,
        bound / MIB
    );
    // Every stalled frame ends: Busy for those that got no memory (their
    // payload was read and dropped), a timeout for the others.
    for raw in &mut raws {
        let (id, opcode, payload) = raw.receive().expect("an answer to the stalled frame");
        let Response::Error { code, message } = Response::decode(opcode, &payload).unwrap() else {
            panic!("expected an error");
        };
        match code {
            ErrorCode::TimedOut => assert_eq!(id, 0, "{message}"),
            ErrorCode::Busy => assert!(id >= 100, "{message}"),
            other => panic!("unexpected {other}: {message}"),
        }
    }
    assert_served(&client, 3, Duration::from_secs(1));
}

// Guards against replies pinned by a client that never reads them: pipelined
// large reads on many connections hold no more than the budget, the node
// closes such a connection once a reply has waited the frame timeout, and a
// well-behaved client is served throughout.
#[test]
fn unread_replies_stay_within_the_memory_budget() {
    let _serial = serial();
    let budget = 40 * MIB;
    let fixture = start(|config| {
        config.connection_memory_bytes = budget;
        config.connection_memory_wait = Duration::from_millis(100);
        config.frame_timeout = Duration::from_secs(2);
    });
    let client = fixture.client();
    let info = client
        .create_region("wide", 64 * MIB as u64, 4096)
        .expect("create");
    let pages: Vec<u64> = (0..4096).collect();
    let before = rss_bytes();
    let connections = 10;
    let mut raws = Vec::new();
    for _ in 0..connections {
        let mut raw = Raw::authenticated(fixture.addr());
        let mut requests = Vec::new();
        for id in 0..8 {
            encode_read_pages(&mut requests, 10 + id, 0, info.id, &pages);
        }
        raw.send(&requests);
        raws.push(raw);
    }
    let began = Instant::now();
    let mut peak = 0;
    while began.elapsed() < Duration::from_millis(1500) {
        peak = peak.max(rss_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_served(&client, 10, Duration::from_secs(2));
    let grown = peak.saturating_sub(before);
    let bound = budget + connections * 128 * 1024 + 24 * MIB;
    assert!(
        grown <= bound,
        "resident memory grew by {} MiB under {connections} connections of unread 16 MiB \
         replies (bound {} MiB)",
        grown / MIB,
        bound / MIB
    );
    // The node gives up on a reply nobody reads: the connection is closed
    // within the frame timeout (plus the time to fill the socket buffers).
    std::thread::sleep(Duration::from_secs(3));
    for raw in &mut raws {
        raw.writer.shutdown(Shutdown::Write).ok();
        let mut sink = vec![0u8; MIB];
        let drained = Instant::now();
        loop {
            match raw.writer.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset,
                        "the node did not close a connection whose replies were never read"
                    );
                    break;
                }
            }
            assert!(drained.elapsed() < REPLY_TIMEOUT, "the node kept writing");
        }
    }
    assert_served(&client, 3, Duration::from_secs(1));
}

// Guards against a frame that stops half way holding its connection and its
// memory forever: it is answered `TimedOut` after the frame timeout and the
// connection is closed; a frame that completes in time is served.
#[test]
fn partial_frames_time_out() {
    let _serial = serial();
    let fixture = start(|config| {
        config.frame_timeout = Duration::from_millis(500);
    });
    let mut raw = Raw::authenticated(fixture.addr());
    let frame = ping_frame(7, MIB);
    raw.send(&frame[..HEADER_BYTES + 1000]);
    let began = Instant::now();
    let message = raw.expect_fatal(ErrorCode::TimedOut);
    assert!(message.contains("frame"), "{message}");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "timed out only after {:?}",
        began.elapsed()
    );
    // Slow but in time: served.
    let mut raw = Raw::authenticated(fixture.addr());
    let half = frame.len() / 2;
    raw.send(&frame[..half]);
    std::thread::sleep(Duration::from_millis(200));
    raw.send(&frame[half..]);
    let (id, opcode, _) = raw
        .receive()
        .expect("the frame completed in time is served");
    assert_eq!((id, opcode), (7, Opcode::Pong as u8));
    // And an authenticated connection idle between frames is not closed.
    std::thread::sleep(Duration::from_millis(800));
    raw.send(&ping_frame(8, 0));
    assert_eq!(raw.receive().unwrap().0, 8);
}

// Guards that large frames are still served when the budget allows them, and
// that a connection gives its borrowed memory back when idle: one
// connection after another sends a full-size write, each needing most of the
// budget.
#[test]
fn large_frames_are_served_and_their_memory_returned() {
    let _serial = serial();
    let fixture = start(|config| {
        config.connection_memory_bytes = 40 * MIB;
        config.connection_memory_wait = Duration::from_millis(500);
    });
    let client = fixture.client();
    let info = client
        .create_region("big", 64 * MIB as u64, 4096)
        .expect("create");
    let pages: Vec<u64> = (0..4096).collect();
    let mut keep = Vec::new();
    for round in 0..6u8 {
        let mut raw = Raw::authenticated(fixture.addr());
        // One writer per region: take the writer role for this round (and
        // give it back below, for the next round's connection).
        let mut open = Vec::new();
        Request::OpenRegion {
            name: "big",
            mode: OpenMode::Write,
            claim_epoch: 0,
        }
        .encode(&mut open, 10, 0);
        raw.send(&open);
        let (_, opcode, payload) = raw.receive().unwrap();
        let Response::RegionOpened {
            writer_epoch, lsn, ..
        } = Response::decode(opcode, &payload).unwrap()
        else {
            panic!("expected RegionOpened");
        };
        let mut frame = Vec::new();
        encode_write_pages(
            &mut frame,
            1,
            writer_epoch,
            info.id,
            lsn + 1,
            &pages,
            4096,
            |_, out| out.resize(out.len() + 4096, round),
        );
        raw.send(&frame);
        let (id, opcode, payload) = raw.receive().unwrap();
        assert_eq!(id, 1);
        assert_eq!(
            Response::decode(opcode, &payload).unwrap(),
            Response::Done,
            "round {round}"
        );
        let mut read = Vec::new();
        encode_read_pages(&mut read, 2, 0, info.id, &pages);
        raw.send(&read);
        let (id, opcode, payload) = raw.receive().unwrap();
        assert_eq!((id, opcode), (2, Opcode::PagesData as u8));
        assert!(payload.iter().all(|&byte| byte == round));
        let mut close = Vec::new();
        Request::CloseRegion { region: info.id }.encode(&mut close, 11, 0);
        raw.send(&close);
        assert_eq!(raw.receive().unwrap().1, Opcode::Done as u8);
        // Stays open and idle: its memory must still come back.
        keep.push(raw);
        std::thread::sleep(Duration::from_millis(50));
    }
}

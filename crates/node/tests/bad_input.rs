//! The node against hostile and broken peers, over real TCP on loopback.
//!
//! Every test starts its own node in-process and talks raw frames to it, so
//! it can send what no well-behaved client would: truncated frames, lies in
//! the header, bad checksums, garbage. Each checks the specific error code
//! the node answers with, whether the connection survives, and that another
//! client, connected before the bad input, is still served correctly after it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use pagoda_node::{Node, NodeConfig};
use pagoda_wire::auth::ClientHandshake;
use pagoda_wire::frame::{HEADER_BYTES, MAGIC, Opcode, VERSION};
use pagoda_wire::io::FrameReader;
use pagoda_wire::limits::CREDENTIAL_NAME_BYTES_MAX;
use pagoda_wire::limits::{
    BATCH_PAGES_MAX, FRAME_PAYLOAD_BYTES_MAX, PING_REPLY_BYTES_MAX, SEGMENT_BYTES,
};
use pagoda_wire::message::{encode_read_pages, encode_write_pages};
use pagoda_wire::{ErrorCode, OpenMode, RegionInfo, Request, Response, WireError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

const TOKEN: &[u8] = b"bad-input-test-token";
/// How long a test waits for any one reply before it declares the node stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// Raw frames.

/// A frame with every header field chosen by the caller and a correct checksum.
fn raw_frame(opcode: u8, request_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.push(VERSION);
    frame.push(opcode);
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&request_id.to_le_bytes());
    frame.extend_from_slice(&0u64.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(payload);
    reseal(&mut frame);
    frame
}

/// Recomputes a frame's checksum after a test edited its header or payload,
/// so that the node sees exactly the one defect the test means to send.
fn reseal(frame: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..28]), &frame[HEADER_BYTES..]);
    frame[28..32].copy_from_slice(&crc.to_le_bytes());
}

fn encode(request: &Request<'_>, request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(&mut out, request_id, 0);
    out
}

/// The handshake of the credential `default` (the node's token) with `token`.
fn handshake(token: &[u8]) -> ClientHandshake {
    ClientHandshake::new("bad-input-test", "default", token)
}

/// A `Hello` as the credential `default`.
fn hello_frame(request_id: u64) -> Vec<u8> {
    encode(&handshake(TOKEN).hello(), request_id)
}

fn read_pages_frame(region: u64, pages: &[u64], request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_read_pages(&mut out, request_id, 0, region, pages);
    out
}

/// A write of `pages` from a writer at `epoch`, numbered `lsn`.
fn write_pages_frame(
    region: u64,
    (epoch, lsn): (u64, u64),
    pages: &[u64],
    data: &[u8],
    request_id: u64,
) -> Vec<u8> {
    let page_size = data.len() / pages.len();
    let mut out = Vec::new();
    encode_write_pages(
        &mut out,
        request_id,
        epoch,
        region,
        lsn,
        pages,
        page_size,
        |index, out| out.extend_from_slice(&data[index * page_size..(index + 1) * page_size]),
    );
    out
}

fn page_pattern(page_size: usize, seed: u8) -> Vec<u8> {
    (0..page_size)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------
// A raw client.

/// A reply as it came off the wire.
#[derive(Debug)]
struct Reply {
    request_id: u64,
    opcode: u8,
    payload: Vec<u8>,
}

impl Reply {
    fn response(&self) -> Response<'_> {
        Response::decode(self.opcode, &self.payload).expect("the node's reply decodes")
    }

    /// The reply's error code and message; panics if it is not an error.
    fn error(&self) -> (ErrorCode, String) {
        match self.response() {
            Response::Error { code, message } => (code, message.to_owned()),
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
}

/// A connection that writes whatever bytes it is given and reads frames back.
struct Raw {
    writer: TcpStream,
    reader: FrameReader<TcpStream>,
    next_id: u64,
    /// Regions this connection opened for writing (holds the writer role
    /// of), with the writer epoch and the next log sequence number.
    writing: std::collections::HashMap<u64, (u64, u64)>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect to the node");
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let writer = stream.try_clone().unwrap();
        Raw {
            writer,
            reader: FrameReader::new(stream, Duration::ZERO),
            next_id: 1,
            writing: Default::default(),
        }
    }

    /// Runs the handshake with `token`: Hello, the node's challenge, the
    /// proof. Returns the reply to the proof.
    fn handshake(&mut self, token: &[u8]) -> Reply {
        let handshake = handshake(token);
        let challenge = self.call(&handshake.hello());
        let proof = match challenge.response() {
            Response::AuthChallenge { salt, node_nonce } => handshake.proof(salt, &node_nonce),
            other => panic!("expected a challenge, got {other:?}"),
        };
        self.call(&proof)
    }

    /// Connects and authenticates with the right token.
    fn authenticated(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        let reply = raw.handshake(TOKEN);
        assert!(
            matches!(
                reply.response(),
                Response::HelloOk {
                    version: VERSION,
                    ..
                }
            ),
            "{reply:?}"
        );
        raw
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send to the node");
    }

    fn receive(&mut self) -> Result<Reply, WireError> {
        let frame = self.reader.read_frame()?;
        Ok(Reply {
            request_id: frame.header.request_id,
            opcode: frame.header.opcode,
            payload: frame.payload.to_vec(),
        })
    }

    /// Sends one frame and returns its reply, checking that the reply echoes
    /// the frame's request id.
    fn send_and_receive(&mut self, frame: &[u8]) -> Reply {
        let request_id = u64::from_le_bytes(frame[12..20].try_into().unwrap());
        self.send(frame);
        let reply = self.receive().expect("a reply from the node");
        assert_eq!(reply.request_id, request_id, "{reply:?}");
        reply
    }

    fn call(&mut self, request: &Request<'_>) -> Reply {
        let id = self.id();
        self.send_and_receive(&encode(request, id))
    }

    /// Sends one frame and expects a well-framed error reply with its id.
    fn expect_error(&mut self, frame: &[u8], code: ErrorCode) -> String {
        let reply = self.send_and_receive(frame);
        let (actual, message) = reply.error();
        assert_eq!(actual, code, "{message}");
        message
    }

    /// Expects a connection-level error reply (request id 0) and then the
    /// end of the stream.
    fn expect_fatal(&mut self, code: ErrorCode) -> String {
        let reply = self.receive().expect("an error reply before the close");
        assert_eq!(reply.request_id, 0, "connection errors carry request id 0");
        let (actual, message) = reply.error();
        assert_eq!(actual, code, "{message}");
        self.expect_closed();
        message
    }

    /// Expects the node to have closed the connection, with nothing more sent.
    fn expect_closed(&mut self) {
        match self.receive() {
            Err(WireError::Closed) => {}
            Err(WireError::Io(error)) if error.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected the node to close the connection, got {other:?}"),
        }
    }

    fn ping(&mut self, reply_bytes: u32) {
        let reply = self.call(&Request::Ping { reply_bytes });
        match reply.response() {
            Response::Pong { payload } => assert_eq!(payload.len(), reply_bytes as usize),
            other => panic!("expected Pong, got {other:?}"),
        }
    }

    fn create(&mut self, name: &str, size: u64, page_size: u32) -> RegionInfo {
        match self
            .call(&Request::CreateRegion {
                name,
                size,
                page_size,
                replicas: Vec::new(),
                mode: pagoda_wire::ReplicationMode::Sync,
            })
            .response()
        {
            Response::RegionInfo(info) => info,
            other => panic!("expected RegionInfo, got {other:?}"),
        }
    }

    /// Writes pages, opening the region for writing first (found by id in
    /// the node's list) if this connection has not yet.
    fn write(&mut self, region: u64, pages: &[u64], data: &[u8]) {
        let frame = self.write_frame(region, pages, data);
        let reply = self.send_and_receive(&frame);
        assert_eq!(reply.response(), Response::Done);
    }

    /// A write frame numbered in this connection's write log of `region`,
    /// opening the region for writing first if this connection has not yet
    /// (a region it cannot open gets epoch 0).
    fn write_frame(&mut self, region: u64, pages: &[u64], data: &[u8]) -> Vec<u8> {
        if !self.writing.contains_key(&region) {
            let name = match self.call(&Request::ListRegions).response() {
                Response::RegionList(list) => list
                    .into_iter()
                    .find(|info| info.id == region)
                    .map(|info| info.name),
                other => panic!("expected RegionList, got {other:?}"),
            };
            if let Some(name) = name {
                let reply = self.call(&Request::OpenRegion {
                    name: &name,
                    mode: OpenMode::Write,
                    claim_epoch: 0,
                });
                match reply.response() {
                    Response::RegionOpened {
                        writer_epoch, lsn, ..
                    } => {
                        self.writing.insert(region, (writer_epoch, lsn + 1));
                    }
                    other => panic!("expected RegionOpened, got {other:?}"),
                }
            }
        }
        let numbered = match self.writing.get_mut(&region) {
            Some((epoch, next)) => {
                *next += 1;
                (*epoch, *next - 1)
            }
            None => (0, 1),
        };
        let id = self.id();
        write_pages_frame(region, numbered, pages, data, id)
    }

    fn read(&mut self, region: u64, pages: &[u64]) -> Vec<u8> {
        let id = self.id();
        let reply = self.send_and_receive(&read_pages_frame(region, pages, id));
        match reply.response() {
            Response::PagesData { data } => data.to_vec(),
            other => panic!("expected PagesData, got {other:?}"),
        }
    }

    fn node_stat(&mut self) -> pagoda_wire::message::NodeStat {
        match self.call(&Request::NodeStat).response() {
            Response::NodeStat(stat) => stat,
            other => panic!("expected NodeStat, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// A node with a bystander: a client connected before the bad input, which
// must be served correctly after it.

const BYSTANDER_PAGE: u64 = 3;
const BYSTANDER_PAGE_SIZE: u32 = 4096;

struct Fixture {
    node: Node,
    bystander: Raw,
    region: RegionInfo,
    expected: Vec<u8>,
    _dir: TempDir,
}

fn config(dir: &Path, capacity_bytes: u64) -> NodeConfig {
    let mut config = NodeConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        capacity_bytes,
        dir.to_path_buf(),
    );
    config.token = Some(TOKEN.to_vec());
    config
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_config(|_| {})
    }

    fn with_config(adjust: impl FnOnce(&mut NodeConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), 64 * MIB);
        adjust(&mut config);
        let node = Node::start(config).expect("node starts");
        let mut bystander = Raw::authenticated(node.local_addr());
        let region = bystander.create("bystander", MIB, BYSTANDER_PAGE_SIZE);
        let expected = page_pattern(BYSTANDER_PAGE_SIZE as usize, 0x5a);
        bystander.write(region.id, &[BYSTANDER_PAGE], &expected);
        Fixture {
            node,
            bystander,
            region,
            expected,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// The bystander is still served: a ping, and a read of what it wrote
    /// before the bad input.
    fn assert_bystander_served(&mut self) {
        self.bystander.ping(100);
        let back = self.bystander.read(self.region.id, &[BYSTANDER_PAGE]);
        assert!(back == self.expected, "the bystander's page changed");
    }
}

// ---------------------------------------------------------------------------
// Framing errors: the connection is closed.

// Guards against a node that hangs, answers or crashes when a peer sends half
// a frame and closes its side: the node must drop the connection silently.
#[test]
fn truncated_frame_then_close_is_dropped_silently() {
    let mut fixture = Fixture::new();
    for cut in [1, HEADER_BYTES / 2, HEADER_BYTES, HEADER_BYTES + 2] {
        let mut raw = Raw::authenticated(fixture.addr());
        let id = raw.id();
        let frame = encode(&Request::Ping { reply_bytes: 8 }, id);
        raw.send(&frame[..cut]);
        raw.writer.shutdown(Shutdown::Write).unwrap();
        raw.expect_closed();
    }
    // Before Hello, too.
    let mut raw = Raw::connect(fixture.addr());
    raw.send(&hello_frame(1)[..HEADER_BYTES + 3]);
    raw.writer.shutdown(Shutdown::Write).unwrap();
    raw.expect_closed();
    fixture.assert_bystander_served();
}

// Guards against head-of-line blocking across connections: a peer that sends
// half a frame and then stalls must not hold up other clients, and its frame
// is served once the rest of it arrives.
#[test]
fn truncated_frame_left_open_does_not_block_other_clients() {
    let mut fixture = Fixture::new();
    let mut stalled = Raw::authenticated(fixture.addr());
    let id = stalled.id();
    let frame = encode(&Request::Ping { reply_bytes: 64 }, id);
    let half = frame.len() / 2;
    stalled.send(&frame[..half]);
    for _ in 0..3 {
        fixture.assert_bystander_served();
    }
    let mut late = Raw::authenticated(fixture.addr());
    late.ping(10);
    stalled.send(&frame[half..]);
    let reply = stalled.receive().expect("the completed frame is served");
    assert_eq!(reply.request_id, id);
    assert!(matches!(reply.response(), Response::Pong { payload } if payload.len() == 64));
    fixture.assert_bystander_served();
}

// Guards against allocating for a length the peer merely announces: a header
// claiming a payload beyond the limit is refused from the header alone, before
// any payload byte is sent, and the connection is closed.
#[test]
fn oversized_payload_length_is_refused_from_the_header() {
    let mut fixture = Fixture::new();
    for length in [FRAME_PAYLOAD_BYTES_MAX as u32 + 1, u32::MAX] {
        let mut raw = Raw::authenticated(fixture.addr());
        let mut header = raw_frame(Opcode::WritePages as u8, 7, &[]);
        header[8..12].copy_from_slice(&length.to_le_bytes());
        reseal(&mut header);
        // Only the header: if the node waited for the payload, this would
        // time out instead of answering.
        raw.send(&header);
        let message = raw.expect_fatal(ErrorCode::FrameTooLarge);
        assert!(message.contains(&length.to_string()), "{message}");
    }
    fixture.assert_bystander_served();
}

// Guards against misreading frames of another protocol version.
#[test]
fn unknown_version_is_refused_and_closes_the_connection() {
    let mut fixture = Fixture::new();
    for version in [0u8, 2, 0xff] {
        let mut raw = Raw::authenticated(fixture.addr());
        let mut frame = raw_frame(Opcode::ListRegions as u8, 5, &[]);
        frame[4] = version;
        reseal(&mut frame);
        raw.send(&frame);
        let message = raw.expect_fatal(ErrorCode::UnsupportedVersion);
        assert!(message.contains(&version.to_string()), "{message}");
    }
    fixture.assert_bystander_served();
}

// Guards the reserved header flags: a frame that sets any of them is refused
// with a clear error and the connection closed, so that a later version can
// give the flags a meaning without this node misreading its frames.
#[test]
fn reserved_flags_are_refused_and_close_the_connection() {
    let mut fixture = Fixture::new();
    for flags in [1u16, 0x0100, 0xffff] {
        let mut raw = Raw::authenticated(fixture.addr());
        let mut frame = raw_frame(Opcode::ListRegions as u8, 5, &[]);
        frame[6..8].copy_from_slice(&flags.to_le_bytes());
        reseal(&mut frame);
        raw.send(&frame);
        let message = raw.expect_fatal(ErrorCode::UnsupportedFlags);
        assert!(message.contains("reserved header flags"), "{message}");
    }
    // Before Hello as well.
    let mut raw = Raw::connect(fixture.addr());
    let mut frame = hello_frame(1);
    frame[6] = 1;
    reseal(&mut frame);
    raw.send(&frame);
    raw.expect_fatal(ErrorCode::UnsupportedFlags);
    fixture.assert_bystander_served();
}

// Guards against treating a stranger's bytes (HTTP, TLS, another protocol) as
// frames.
#[test]
fn bad_magic_is_refused_and_closes_the_connection() {
    let mut fixture = Fixture::new();
    // Before Hello: someone speaking HTTP to the port.
    let mut raw = Raw::connect(fixture.addr());
    raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    raw.expect_fatal(ErrorCode::BadMagic);
    // After Hello: a frame whose magic is off by one bit.
    let mut raw = Raw::authenticated(fixture.addr());
    let mut frame = raw_frame(Opcode::ListRegions as u8, 5, &[]);
    frame[0] ^= 1;
    reseal(&mut frame);
    raw.send(&frame);
    raw.expect_fatal(ErrorCode::BadMagic);
    fixture.assert_bystander_served();
}

// Guards against acting on a frame damaged in transit: a checksum mismatch in
// header or payload is refused and the connection closed.
#[test]
fn bad_checksum_is_refused_and_closes_the_connection() {
    let mut fixture = Fixture::new();
    let region = fixture.region.id;
    let page = page_pattern(BYSTANDER_PAGE_SIZE as usize, 0xee);
    // Damage the request id (header), the page number, and the page data of
    // a write that would otherwise overwrite the bystander's page.
    for damaged in [13, HEADER_BYTES + 12, HEADER_BYTES + 30] {
        let mut raw = Raw::authenticated(fixture.addr());
        let mut frame = write_pages_frame(region, (1, 1), &[BYSTANDER_PAGE], &page, 9);
        frame[damaged] ^= 0x10;
        raw.send(&frame);
        raw.expect_fatal(ErrorCode::BadChecksum);
    }
    // Before Hello as well.
    let mut raw = Raw::connect(fixture.addr());
    let mut frame = hello_frame(1);
    frame[28] ^= 0xff;
    raw.send(&frame);
    raw.expect_fatal(ErrorCode::BadChecksum);
    fixture.assert_bystander_served();
}

// ---------------------------------------------------------------------------
// Well-framed bad requests: an error reply, and the connection goes on.

// Guards against an unknown opcode (a newer client, or a reply opcode sent as
// a request) killing the connection: it is answered and the next request works.
#[test]
fn unknown_opcode_is_answered_and_the_connection_goes_on() {
    let mut fixture = Fixture::new();
    let mut raw = Raw::authenticated(fixture.addr());
    for opcode in [
        0x00,
        0x04,
        0x1f,
        0x2f,
        0x77,
        Opcode::Pong as u8,
        Opcode::Error as u8,
    ] {
        let id = raw.id();
        let message = raw.expect_error(&raw_frame(opcode, id, b"xyz"), ErrorCode::UnknownOpcode);
        assert!(message.contains("opcode"), "{message}");
        raw.ping(16);
    }
    fixture.assert_bystander_served();
}

// Guards against out-of-range pages reading or writing outside a region (or
// into another region's RAM), and against a partly applied write batch.
#[test]
fn out_of_range_pages_are_refused_and_the_connection_goes_on() {
    let mut fixture = Fixture::new();
    let mut raw = Raw::authenticated(fixture.addr());
    let page_size = 8192u32;
    let info = raw.create("small", 16 * page_size as u64, page_size);
    let original = page_pattern(page_size as usize, 1);
    raw.write(info.id, &[15], &original);
    for pages in [&[16u64][..], &[0, 16], &[u64::MAX], &[1 << 40, 2]] {
        let id = raw.id();
        let message =
            raw.expect_error(&read_pages_frame(info.id, pages, id), ErrorCode::OutOfRange);
        assert!(message.contains("out of range"), "{message}");
        raw.ping(0);
    }
    // A write naming one good and one bad page changes neither.
    let new = page_pattern(page_size as usize, 2);
    let mut data = new.clone();
    data.extend_from_slice(&new);
    for pages in [&[15u64, 16][..], &[15, u64::MAX]] {
        let frame = raw.write_frame(info.id, pages, &data);
        raw.expect_error(&frame, ErrorCode::OutOfRange);
        assert!(
            raw.read(info.id, &[15]) == original,
            "a refused batch was applied"
        );
    }
    // A region id that does not exist.
    let id = raw.id();
    raw.expect_error(&read_pages_frame(9999, &[0], id), ErrorCode::RegionNotFound);
    let id = raw.id();
    raw.expect_error(
        &write_pages_frame(9999, (1, 1), &[0], &original, id),
        ErrorCode::RegionNotFound,
    );
    // The connection still works for good requests.
    raw.write(info.id, &[0], &new);
    assert!(raw.read(info.id, &[0, 15]) == [new, original].concat());
    fixture.assert_bystander_served();
}

// Guards the payload decoders against trusting lengths inside the payload: a
// truncated name, invalid UTF-8, trailing bytes, or a page count beyond the
// bytes present or the limit are answered as malformed.
#[test]
fn malformed_payloads_are_answered_and_the_connection_goes_on() {
    let mut fixture = Fixture::new();
    let mut raw = Raw::authenticated(fixture.addr());
    let mut create = Vec::new();
    create.extend_from_slice(&10u16.to_le_bytes());
    create.extend_from_slice(b"abc");
    let mut bad_utf8 = Vec::new();
    bad_utf8.extend_from_slice(&2u16.to_le_bytes());
    bad_utf8.extend_from_slice(&[0xc3, 0x28]);
    let mut pages_missing = Vec::new();
    pages_missing.extend_from_slice(&fixture.region.id.to_le_bytes());
    pages_missing.extend_from_slice(&3u32.to_le_bytes());
    pages_missing.extend_from_slice(&0u64.to_le_bytes());
    let mut pages_over_limit = Vec::new();
    pages_over_limit.extend_from_slice(&fixture.region.id.to_le_bytes());
    pages_over_limit.extend_from_slice(&(BATCH_PAGES_MAX as u32 + 1).to_le_bytes());
    let cases: [(Opcode, &[u8]); 9] = [
        (Opcode::CreateRegion, &create),
        (Opcode::CreateRegion, &create[..1]),
        (Opcode::OpenRegion, &bad_utf8),
        (Opcode::StatRegion, &[]),
        (Opcode::NodeStat, b"trailing"),
        (Opcode::Ping, &[1, 2]),
        (Opcode::ReadPages, &pages_missing),
        (Opcode::ReadPages, &pages_over_limit),
        (Opcode::WritePages, &fixture.region.id.to_le_bytes()),
    ];
    for (opcode, payload) in cases {
        let id = raw.id();
        let message = raw.expect_error(&raw_frame(opcode as u8, id, payload), ErrorCode::Malformed);
        assert!(message.contains("malformed"), "{opcode:?}: {message}");
        raw.ping(1);
    }
    // Nothing was created by the truncated CreateRegion.
    match raw.call(&Request::ListRegions).response() {
        Response::RegionList(list) => assert_eq!(list.len(), 1, "{list:?}"),
        other => panic!("expected RegionList, got {other:?}"),
    }
    fixture.assert_bystander_served();
}

// Guards against a write whose data does not match its page count being
// applied partly, or read past its end.
#[test]
fn write_with_wrong_data_length_is_refused() {
    let mut fixture = Fixture::new();
    let mut raw = Raw::authenticated(fixture.addr());
    // A region of its own: the bystander holds its region's writer role.
    let page_size = BYSTANDER_PAGE_SIZE as usize;
    let region = raw.create("lengths", MIB, BYSTANDER_PAGE_SIZE).id;
    raw.write(region, &[BYSTANDER_PAGE], &page_pattern(page_size, 1));
    for data_len in [0, 1, page_size - 1, page_size + 1, 2 * page_size] {
        // One page named, `data_len` bytes of data.
        let frame = raw.write_frame(region, &[BYSTANDER_PAGE], &vec![0xcc; data_len]);
        let message = raw.expect_error(&frame, ErrorCode::InvalidArgument);
        assert!(message.contains("expected"), "{message}");
    }
    raw.ping(0);
    fixture.assert_bystander_served();
}

// Guards the node's argument checks on everything but pages: pings beyond the
// reply limit, impossible region shapes and names, duplicate regions.
#[test]
fn invalid_arguments_are_refused_and_the_connection_goes_on() {
    let mut fixture = Fixture::new();
    let mut raw = Raw::authenticated(fixture.addr());
    let reply = raw.call(&Request::Ping {
        reply_bytes: PING_REPLY_BYTES_MAX + 1,
    });
    assert_eq!(reply.error().0, ErrorCode::InvalidArgument);
    for (name, size, page_size) in [
        ("zero-size", 0, 4096),
        ("not-a-multiple", 4096 + 1, 4096),
        ("odd-page", 3000 * 4, 3000),
        ("tiny-page", 2048 * 4, 2048),
        ("huge-page", 8 * MIB, 4 * MIB as u32),
        ("too-big", (1 << 40) + 4096, 4096),
        ("", 4096, 4096),
        ("control\ncharacter", 4096, 4096),
    ] {
        let reply = raw.call(&Request::CreateRegion {
            name,
            size,
            page_size,
            replicas: Vec::new(),
            mode: pagoda_wire::ReplicationMode::Sync,
        });
        let (code, message) = reply.error();
        assert_eq!(code, ErrorCode::InvalidArgument, "{name:?}: {message}");
    }
    let reply = raw.call(&Request::CreateRegion {
        name: "bystander",
        size: MIB,
        page_size: 4096,
        replicas: Vec::new(),
        mode: pagoda_wire::ReplicationMode::Sync,
    });
    assert_eq!(reply.error().0, ErrorCode::RegionExists);
    let reply = raw.call(&Request::DeleteRegion { name: "missing" });
    assert_eq!(reply.error().0, ErrorCode::RegionNotFound);
    raw.ping(3);
    fixture.assert_bystander_served();
}

// ---------------------------------------------------------------------------
// Authentication.

// Guards against serving anything before authentication: a request before
// Hello is refused and the connection closed.
#[test]
fn request_before_hello_is_refused_and_closes_the_connection() {
    let mut fixture = Fixture::new();
    let requests = [
        Request::Ping { reply_bytes: 4 },
        Request::ListRegions,
        Request::DeleteRegion { name: "bystander" },
    ];
    for request in requests {
        let mut raw = Raw::connect(fixture.addr());
        let (code, _) = raw.call(&request).error();
        assert_eq!(code, ErrorCode::NotAuthenticated, "{request:?}");
        raw.expect_closed();
    }
    // A malformed or unknown request before Hello closes the connection too.
    let mut raw = Raw::connect(fixture.addr());
    raw.expect_error(&raw_frame(0x77, 1, &[]), ErrorCode::UnknownOpcode);
    raw.expect_closed();
    fixture.assert_bystander_served();
}

// Guards the token check: no credential, or a proof made with a wrong,
// truncated or extended token, is refused and the connection closed; nothing
// is served on it. (crates/node/tests/access.rs tests the handshake further.)
#[test]
fn missing_and_wrong_tokens_are_refused() {
    let mut fixture = Fixture::new();
    let mut raw = Raw::connect(fixture.addr());
    let no_credential = ClientHandshake::new("bad-input-test", "", b"".as_slice());
    let message = raw.expect_error(&encode(&no_credential.hello(), 1), ErrorCode::Unauthorized);
    assert!(message.contains("none was given"), "{message}");
    raw.expect_closed();
    let mut same_length = TOKEN.to_vec();
    *same_length.last_mut().unwrap() ^= 1;
    let extended = [TOKEN, b"x"].concat();
    let tokens: [&[u8]; 4] = [b"wrong", &same_length, &TOKEN[..TOKEN.len() - 1], &extended];
    for token in tokens {
        let mut raw = Raw::connect(fixture.addr());
        let (code, message) = raw.handshake(token).error();
        assert_eq!(code, ErrorCode::Unauthorized, "{message}");
        assert!(message.contains("wrong token"), "{message}");
        raw.expect_closed();
    }
    // A credential name beyond the limit does not even decode.
    let mut raw = Raw::connect(fixture.addr());
    let oversized = "a".repeat(CREDENTIAL_NAME_BYTES_MAX + 1);
    let long_name = ClientHandshake::new("bad-input-test", oversized, TOKEN);
    raw.expect_error(&encode(&long_name.hello(), 1), ErrorCode::Malformed);
    raw.expect_closed();
    fixture.assert_bystander_served();
}

// Guards against exposing an unauthenticated node to the network: listening
// on a non-loopback address without a token is refused at start.
#[test]
fn non_loopback_listen_without_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let mut config = config(dir.path(), 4 * MIB);
        config.listen = listen.parse().unwrap();
        config.token = None;
        match Node::start(config) {
            Ok(node) => panic!("a node started on {} without a token", node.local_addr()),
            Err(error) => assert!(error.to_string().contains("token"), "{error}"),
        }
    }
    // An empty token is no token.
    let mut config = config(dir.path(), 4 * MIB);
    config.token = Some(Vec::new());
    match Node::start(config) {
        Ok(_) => panic!("a node started with an empty token"),
        Err(error) => assert!(error.to_string().contains("token"), "{error}"),
    }
}

// ---------------------------------------------------------------------------
// Resource limits.

// Guards the capacity bound: a write needing a segment beyond the node's RAM
// is refused with a clear message, and the segments already held keep working.
#[test]
fn out_of_memory_is_reported_and_existing_segments_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path(), 2 * SEGMENT_BYTES)).expect("node starts");
    let mut bystander = Raw::authenticated(node.local_addr());
    let mut raw = Raw::authenticated(node.local_addr());
    let page_size = 4096usize;
    let pages_per_segment = SEGMENT_BYTES / page_size as u64;
    let info = raw.create("big", 64 * MIB, page_size as u32);
    let first = page_pattern(page_size, 1);
    let second = page_pattern(page_size, 2);
    raw.write(info.id, &[0], &first);
    raw.write(info.id, &[pages_per_segment], &second);

    let third_segment = 2 * pages_per_segment;
    let frame = raw.write_frame(info.id, &[third_segment], &first);
    let message = raw.expect_error(&frame, ErrorCode::OutOfMemory);
    assert!(message.contains("out of memory"), "{message}");
    assert!(
        message.contains(&(2 * SEGMENT_BYTES).to_string()),
        "{message}"
    );
    // A batch touching a held segment and a new one changes nothing.
    let frame = raw.write_frame(
        info.id,
        &[1, third_segment],
        &[second.clone(), second.clone()].concat(),
    );
    raw.expect_error(&frame, ErrorCode::OutOfMemory);

    // The held segments still read and write; unallocated ones read as zeros.
    assert!(raw.read(info.id, &[0, pages_per_segment]) == [first.clone(), second.clone()].concat());
    assert!(
        raw.read(info.id, &[1]).iter().all(|&b| b == 0),
        "a refused batch was applied"
    );
    raw.write(
        info.id,
        &[1, pages_per_segment + 1],
        &[second.clone(), first.clone()].concat(),
    );
    assert!(
        raw.read(info.id, &[1, pages_per_segment + 1]) == [second.clone(), first.clone()].concat()
    );
    assert!(raw.read(info.id, &[third_segment]).iter().all(|&b| b == 0));
    let stat = bystander.node_stat();
    assert_eq!(
        (stat.used_bytes, stat.capacity_bytes),
        (2 * SEGMENT_BYTES, 2 * SEGMENT_BYTES)
    );
    bystander.ping(10);
    assert!(bystander.read(info.id, &[0]) == first);

    // Deleting the region gives its RAM back.
    assert_eq!(
        raw.call(&Request::DeleteRegion { name: "big" }).response(),
        Response::Done
    );
    assert_eq!(bystander.node_stat().used_bytes, 0);
    let again = raw.create("again", 64 * MIB, page_size as u32);
    raw.write(again.id, &[third_segment], &second);
    assert!(raw.read(again.id, &[third_segment, 0]) == [second, vec![0; page_size]].concat());
}

// Guards the connection limit: beyond connections_max, a connection gets
// TooManyConnections and is closed, the admitted ones are unaffected, and a
// slot freed by a closed connection is reused.
#[test]
fn connections_beyond_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 4 * MIB);
    config.connections_max = 2;
    let node = Node::start(config).expect("node starts");
    let mut first = Raw::authenticated(node.local_addr());
    let mut second = Raw::authenticated(node.local_addr());
    for _ in 0..3 {
        // Send nothing: the refusal comes unasked.
        let mut refused = Raw::connect(node.local_addr());
        let message = refused.expect_fatal(ErrorCode::TooManyConnections);
        assert!(message.contains("maximum"), "{message}");
    }
    first.ping(1);
    second.ping(1);

    // Close one and wait (bounded) for its slot to come back.
    drop(first);
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut third = loop {
        let mut candidate = Raw::connect(node.local_addr());
        let handshake = handshake(TOKEN);
        candidate.send(&encode(&handshake.hello(), 1));
        match candidate.receive() {
            Ok(reply) if matches!(reply.response(), Response::AuthChallenge { .. }) => {
                let Response::AuthChallenge { salt, node_nonce } = reply.response() else {
                    unreachable!("matched above");
                };
                let done = candidate.call(&handshake.proof(salt, &node_nonce));
                assert!(matches!(done.response(), Response::HelloOk { .. }));
                break candidate;
            }
            Ok(reply) => assert_eq!(reply.error().0, ErrorCode::TooManyConnections),
            // The refusal raced with our Hello and the close reset the stream.
            Err(WireError::Io(error)) if error.kind() == ErrorKind::ConnectionReset => {}
            Err(error) => panic!("unexpected {error}"),
        }
        assert!(
            Instant::now() < deadline,
            "a closed connection's slot was never freed"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    third.ping(1);
    second.ping(1);
}

// Guards against a read batch whose reply exceeds the frame limit: the
// request is well framed (4096 pages of 8 KiB is 32 MiB of reply), so it must
// get an error reply and leave the connection and the node working, not
// panic the connection's thread or allocate the reply first.
#[test]
fn read_batch_beyond_the_reply_limit_is_refused() {
    let mut fixture = Fixture::new();
    let mut raw = Raw::authenticated(fixture.addr());
    let page_size = 8192u32;
    let info = raw.create("wide", BATCH_PAGES_MAX as u64 * page_size as u64, page_size);
    let pages: Vec<u64> = (0..BATCH_PAGES_MAX as u64).collect();
    let id = raw.id();
    raw.send(&read_pages_frame(info.id, &pages, id));
    match raw.receive() {
        Ok(reply) => {
            assert_eq!(reply.request_id, id);
            let (code, message) = reply.error();
            assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
        }
        Err(error) => panic!(
            "no answer to an oversized read batch (the node's connection thread \
             likely panicked, leaving the socket open and the slot taken): {error}"
        ),
    }
    raw.ping(1);
    fixture.assert_bystander_served();
    assert_eq!(fixture.bystander.node_stat().connections, 2);
}

// ---------------------------------------------------------------------------
// Random input.

/// Runs the handshake on `stream`, reading exactly its two replies.
fn authenticate(stream: &TcpStream) {
    let handshake = handshake(TOKEN);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = FrameReader::new(stream.try_clone().unwrap(), Duration::ZERO);
    writer.write_all(&encode(&handshake.hello(), 1)).unwrap();
    let frame = reader.read_frame().expect("a challenge");
    let proof = match Response::decode(frame.header.opcode, frame.payload).unwrap() {
        Response::AuthChallenge { salt, node_nonce } => handshake.proof(salt, &node_nonce),
        other => panic!("expected a challenge, got {other:?}"),
    };
    writer.write_all(&encode(&proof, 1)).unwrap();
    let frame = reader.read_frame().expect("HelloOk");
    assert_eq!(frame.header.opcode, Opcode::HelloOk as u8);
    assert_eq!(
        reader.buffered(),
        0,
        "nothing beyond the handshake's replies"
    );
}

/// Request templates for the fuzz loop: valid requests, to be damaged.
fn templates(fuzz_region: u64) -> Vec<Vec<u8>> {
    let page = vec![0x33u8; 4096];
    vec![
        encode(&Request::Ping { reply_bytes: 64 }, 2),
        encode(
            &Request::CreateRegion {
                name: "fuzz-created",
                size: MIB,
                page_size: 4096,
                replicas: Vec::new(),
                mode: pagoda_wire::ReplicationMode::Sync,
            },
            2,
        ),
        encode(
            &Request::OpenRegion {
                name: "fuzz",
                mode: OpenMode::Write,
                claim_epoch: 0,
            },
            2,
        ),
        encode(&Request::StatRegion { name: "fuzz" }, 2),
        encode(
            &Request::DeleteRegion {
                name: "fuzz-created",
            },
            2,
        ),
        encode(&Request::ListRegions, 2),
        encode(&Request::NodeStat, 2),
        read_pages_frame(fuzz_region, &[0, 1, 7], 2),
        write_pages_frame(fuzz_region, (1, 1), &[3], &page, 2),
    ]
}

// Guards against any byte string crashing, hanging or leaking in the node:
// 2,000 random inputs, each on a fresh connection (pure garbage; a valid
// Hello then garbage; a valid Hello then a damaged but correctly checksummed
// request), after which a client connected beforehand is still served and
// every fuzz connection is gone.
#[test]
fn random_bytes_never_crash_the_node() {
    const ITERATIONS: usize = 2_000;
    const INPUT_BYTES_MAX: usize = 4096;
    const DRAIN_BYTES_MAX: usize = 64 * 1024 * 1024;
    let mut fixture = Fixture::new();
    let fuzz_region = fixture.bystander.create("fuzz", MIB, 4096).id;
    let templates = templates(fuzz_region);
    let mut rng = StdRng::seed_from_u64(0x9a90da);
    let mut sink = vec![0u8; 64 * 1024];
    for iteration in 0..ITERATIONS {
        let mut input = Vec::new();
        let mut stream = TcpStream::connect(fixture.addr()).expect("connect to the node");
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        match iteration % 3 {
            0 => {}
            1 => input.extend(hello_frame(1)),
            _ => {
                authenticate(&stream);
                let mut request = templates[rng.gen_range(0..templates.len())].clone();
                for _ in 0..rng.gen_range(1..=4) {
                    let at = rng.gen_range(0..request.len());
                    if (28..HEADER_BYTES).contains(&at) {
                        continue; // the checksum itself: keep it resealable
                    }
                    request[at] = rng.r#gen();
                }
                if rng.gen_bool(0.3) {
                    let keep = rng.gen_range(HEADER_BYTES..=request.len());
                    request.truncate(keep);
                    let payload_len = (keep - HEADER_BYTES) as u32;
                    request[8..12].copy_from_slice(&payload_len.to_le_bytes());
                }
                reseal(&mut request);
                input.extend(request);
            }
        }
        let garbage = rng.gen_range(0..=INPUT_BYTES_MAX - input.len().min(INPUT_BYTES_MAX));
        let start = input.len();
        input.resize(start + garbage, 0);
        rng.fill(&mut input[start..]);
        input.truncate(INPUT_BYTES_MAX);

        // The node may close before taking everything: that is fine.
        let _ = stream.write_all(&input);
        let _ = stream.shutdown(Shutdown::Write);
        let mut drained = 0;
        loop {
            match stream.read(&mut sink) {
                Ok(0) => break,
                Ok(count) => {
                    drained += count;
                    assert!(
                        drained <= DRAIN_BYTES_MAX,
                        "iteration {iteration}: endless reply"
                    );
                }
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    panic!("iteration {iteration}: the node stopped answering ({input:02x?})")
                }
                Err(_) => break,
            }
        }
    }
    fixture.assert_bystander_served();
    let mut late = Raw::authenticated(fixture.addr());
    let page = page_pattern(4096, 0x77);
    late.write(fuzz_region, &[5], &page);
    assert!(late.read(fuzz_region, &[5]) == page);
    // Every fuzz connection is closed: only the bystander and `late` remain.
    // Connection threads deregister just after closing, so wait, bounded.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while fixture.node.connections() != 2 {
        assert!(
            Instant::now() < deadline,
            "{} connections remain open",
            fixture.node.connections()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Writes ordered by log position.

// Guards the write log: a retried duplicate is answered with its original
// result and not applied again (a later write to the same page survives it),
// a refused request's number stays used (its retry gets the same error), a
// gap is refused and applies nothing, and writing goes on after all three.
#[test]
fn duplicates_are_applied_once_and_gaps_are_refused() {
    let mut fixture = Fixture::new();
    let mut raw = Raw::authenticated(fixture.addr());
    let page_size = 4096u32;
    let info = raw.create("ordered", 16 * page_size as u64, page_size);
    let (a, b, c) = (
        page_pattern(page_size as usize, 1),
        page_pattern(page_size as usize, 2),
        page_pattern(page_size as usize, 3),
    );
    let first = raw.write_frame(info.id, &[0], &a);
    assert_eq!(raw.send_and_receive(&first).response(), Response::Done);
    let second = raw.write_frame(info.id, &[0], &b);
    assert_eq!(raw.send_and_receive(&second).response(), Response::Done);
    // The first write, retried (say after a reconnect): answered, not applied.
    assert_eq!(raw.send_and_receive(&first).response(), Response::Done);
    assert!(
        raw.read(info.id, &[0]) == b,
        "a duplicate was applied again"
    );

    // A write refused after it was numbered: its retry gets the same error.
    let refused = raw.write_frame(info.id, &[16], &c);
    raw.expect_error(&refused, ErrorCode::OutOfRange);
    let message = raw.expect_error(&refused, ErrorCode::OutOfRange);
    assert!(message.contains("out of range"), "{message}");

    // A gap: two numbers are taken, only the second is sent.
    let skipped = raw.write_frame(info.id, &[1], &a);
    let ahead = raw.write_frame(info.id, &[2], &c);
    let message = raw.expect_error(&ahead, ErrorCode::LogGap);
    assert!(message.contains("arrived before"), "{message}");
    assert!(
        raw.read(info.id, &[2]).iter().all(|&byte| byte == 0),
        "a write beyond a gap was applied"
    );
    // The missing one first, then the one that was refused: both apply.
    assert_eq!(raw.send_and_receive(&skipped).response(), Response::Done);
    assert_eq!(raw.send_and_receive(&ahead).response(), Response::Done);
    assert!(raw.read(info.id, &[0, 1, 2]) == [b, a, c].concat());
    fixture.assert_bystander_served();
}

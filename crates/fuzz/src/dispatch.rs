//! The `dispatch` target: a real node, served sequences of requests.
//!
//! One `pagoda_node::Node` per process (started on first use, on 127.0.0.1
//! port 0, with a data dir and a directory store of its own, 8 MiB of page
//! RAM and no spinning, since the fuzzer gives the process one core). Each
//! input is read as up to [`FRAMES_MAX`] frame descriptions: an opcode byte, a
//! flags byte (bit 0 set: the frame's epoch is `flags >> 1`), a little-endian
//! u16 payload length, and the payload (cut to what is left). The harness
//! builds each into a frame with a valid checksum, so the fuzzer works on the
//! requests rather than on the framing, and sends them pipelined on one
//! authenticated connection (reused across inputs while it lives), followed
//! by `ListRegions` and a `Ping`.
//!
//! Oracles: the node answers every request exactly once, in order, with the
//! request's id and a reply that decodes; it never closes an authenticated
//! connection over well-framed requests (a panic in its connection thread
//! shows up so); and it answers the `Ping` within [`REPLY_TIMEOUT`]. After
//! each input the harness deletes every region, so inputs do not pile up
//! state (and RAM).
//!
//! Two rewrites keep the node on loopback and the process's memory bounded: a
//! `RecoverRegion` that names a source node gets a closed loopback port
//! instead (a recovery otherwise connects wherever the input says), and only
//! the first [`CREATES_MAX`] `CreateRegion`s of an input are sent (a region's
//! segment table is allocated up front: about 36 MiB for a 1 TiB region).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pagoda_node::{Node, NodeConfig, StorageConfig};
use pagoda_wire::frame::{FrameBuilder, HEADER_BYTES};
use pagoda_wire::io::FrameReader;
use pagoda_wire::{Opcode, RegionInfo, Request, Response};

/// Most frames one input describes.
pub const FRAMES_MAX: usize = 32;
/// Most `CreateRegion` requests sent per input.
pub const CREATES_MAX: usize = 4;
/// Input bytes beyond this are ignored: the requests must fit in the socket
/// buffers, because the harness writes them all before reading any reply.
pub const INPUT_BYTES_MAX: usize = 64 * 1024;
/// How long the node has to answer; longer is a hang.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The id of the harness's own requests; the input's get 1, 2, ...
const HARNESS_ID_BASE: u64 = 1 << 62;
const LIST_ID: u64 = HARNESS_ID_BASE + 1;
const PING_ID: u64 = HARNESS_ID_BASE + 2;
const DELETE_ID_BASE: u64 = HARNESS_ID_BASE + 16;
/// Region ids below this in a request stand for regions the input has met.
pub const REGION_ALIASES: u64 = 16;

/// One frame description, for seeding: appends it to `out` in the input
/// layout.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(opcode);
    out.push(0);
    let length = u16::try_from(payload.len()).expect("seed payload under 64 KiB");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(payload);
}

struct Harness {
    addr: SocketAddr,
    /// A loopback port nothing listens on, for recovery sources.
    closed_port: u16,
    connection: Mutex<Option<Connection>>,
    _node: Node,
    _dir: crate::ProcessDir,
}

struct Connection {
    writer: TcpStream,
    reader: FrameReader<TcpStream>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = crate::ProcessDir::new("dispatch");
        let mut config = NodeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            8 << 20,
            dir.path().join("data"),
        );
        config.spin = Duration::ZERO;
        config.storage = Some(StorageConfig::Dir(dir.path().join("store")));
        config.checkpoint_object_bytes = 256 * 1024;
        let node = Node::start(config).expect("the node starts");
        let closed_port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
            listener.local_addr().unwrap().port()
        };
        Harness {
            addr: node.local_addr(),
            closed_port,
            connection: Mutex::new(None),
            _node: node,
            _dir: dir,
        }
    })
}

fn connect(addr: SocketAddr) -> Connection {
    let stream = TcpStream::connect(addr).expect("connecting to the node");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let writer = stream.try_clone().unwrap();
    let mut connection = Connection {
        writer,
        reader: FrameReader::new(stream, Duration::ZERO),
    };
    let mut out = Vec::new();
    Request::Hello {
        client_name: "fuzz",
        credential: "",
        client_nonce: [0; 32],
    }
    .encode(&mut out, HARNESS_ID_BASE, 0);
    connection.writer.write_all(&out).expect("sending Hello");
    let frame = connection
        .reader
        .read_frame()
        .expect("the node answers Hello");
    let reply = Response::decode(frame.header.opcode, frame.payload).expect("a valid reply");
    assert!(
        matches!(reply, Response::HelloOk { .. }),
        "Hello refused: {reply:?}"
    );
    connection
}

/// Appends a frame with any opcode byte, known or not, and a valid checksum.
fn push_request(out: &mut Vec<u8>, opcode: u8, payload: &[u8], request_id: u64, epoch: u64) {
    let start = out.len();
    // FrameBuilder takes only known opcodes; an unknown one is written over
    // a Ping's and the checksum recomputed, exactly as FrameBuilder does.
    let known = Opcode::from_u8(opcode);
    let mut frame = FrameBuilder::begin(out, known.unwrap_or(Opcode::Ping), request_id, epoch);
    frame.payload().extend_from_slice(payload);
    frame.finish();
    if known.is_none() {
        out[start + 5] = opcode;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&out[start..start + 28]),
            &out[start + HEADER_BYTES..],
        );
        out[start + 28..start + 32].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Rewrites a `RecoverRegion` payload to name a closed loopback port as its
/// source, if it names one at all. The source string is found where the
/// decoder borrowed it from, so no other field needs to be known here.
fn loopback_recovery(payload: &[u8], closed_port: u16) -> Option<Vec<u8>> {
    let Ok(Request::RecoverRegion { source, .. }) =
        Request::decode(Opcode::RecoverRegion as u8, payload)
    else {
        return None;
    };
    if source.is_empty() {
        return None;
    }
    let start = source.as_ptr() as usize - payload.as_ptr() as usize;
    let end = start + source.len();
    let replacement = format!("127.0.0.1:{closed_port}");
    let mut rewritten = payload[..start - 2].to_vec();
    rewritten.extend_from_slice(&(replacement.len() as u16).to_le_bytes());
    rewritten.extend_from_slice(replacement.as_bytes());
    rewritten.extend_from_slice(&payload[end..]);
    debug_assert!(matches!(
        Request::decode(Opcode::RecoverRegion as u8, &rewritten),
        Ok(Request::RecoverRegion { source, .. }) if source == replacement
    ));
    Some(rewritten)
}

/// Sends `out` and reads the replies to `ids`, in order; returns the
/// decoded replies' region ids (from `RegionInfo` and `RegionStat`) and the
/// region list, if one came.
fn exchange(
    connection: &mut Connection,
    out: &[u8],
    ids: &[u64],
    known: &mut Vec<u64>,
) -> Vec<RegionInfo> {
    connection
        .writer
        .write_all(out)
        .unwrap_or_else(|error| panic!("the node stopped reading requests: {error}"));
    let mut regions = Vec::new();
    for &expected in ids {
        let frame = connection.reader.read_frame().unwrap_or_else(|error| {
            panic!("no reply to request {expected} (the node closed or hung): {error}")
        });
        assert_eq!(
            frame.header.request_id, expected,
            "replies out of order or missing"
        );
        let reply = Response::decode(frame.header.opcode, frame.payload)
            .unwrap_or_else(|error| panic!("the node sent an invalid reply: {error}"));
        if verbose() {
            let text = format!("{reply:?}");
            eprintln!(
                "reply {expected}: {}",
                &text[..text.floor_char_boundary(200)]
            );
        }
        match reply {
            Response::RegionInfo(info) | Response::RegionOpened { info, .. } => known.push(info.id),
            Response::RegionStat(stat) => known.push(stat.info.id),
            Response::RegionList(list) if expected == LIST_ID => regions = list,
            Response::Pong { .. } if expected == PING_ID => {}
            other if expected == LIST_ID || expected == PING_ID => {
                panic!("the harness's request {expected} answered with {other:?}")
            }
            _ => {}
        }
    }
    regions
}

/// Whether to print every reply (`PAGODA_FUZZ_VERBOSE` set): to see what a
/// corpus input does.
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("PAGODA_FUZZ_VERBOSE").is_some())
}

/// Whether a request's payload starts with a region id.
fn names_region_id(opcode: u8) -> bool {
    [
        Opcode::ReadPages,
        Opcode::WritePages,
        Opcode::DirtyPages,
        Opcode::FreezeRegion,
        Opcode::ApplyJournal,
    ]
    .iter()
    .any(|&op| op as u8 == opcode)
}

/// Whether a request's reply carries a region id the harness learns.
fn returns_region_id(opcode: u8) -> bool {
    [Opcode::CreateRegion, Opcode::OpenRegion, Opcode::StatRegion]
        .iter()
        .any(|&op| op as u8 == opcode)
}

/// Runs one input through the target.
///
/// Region ids are the node's, never reused, so an input cannot know them; a
/// region id below [`REGION_ALIASES`] in a request stands for one of the
/// regions this input has created, opened or stat-ed so far (by index, modulo
/// their number), if there is one. To learn the ids, the requests are sent
/// pipelined up to and including each request whose reply carries one.
pub fn run(data: &[u8]) {
    let harness = harness();
    let mut data = &data[..data.len().min(INPUT_BYTES_MAX)];
    let mut slot = harness.connection.lock().unwrap_or_else(|e| e.into_inner());
    let connection = slot.get_or_insert_with(|| connect(harness.addr));
    let mut known: Vec<u64> = Vec::new();
    let mut out = Vec::new();
    let mut ids = Vec::new();
    let mut sent = 0u64;
    let mut creates = 0;
    while data.len() >= 4 && (sent as usize) < FRAMES_MAX {
        let opcode = data[0];
        let flags = data[1];
        let length = (u16::from_le_bytes([data[2], data[3]]) as usize).min(data.len() - 4);
        let mut payload = std::borrow::Cow::Borrowed(&data[4..4 + length]);
        data = &data[4 + length..];
        if opcode == Opcode::CreateRegion as u8 {
            creates += 1;
            if creates > CREATES_MAX {
                continue;
            }
        }
        if opcode == Opcode::RecoverRegion as u8
            && let Some(rewritten) = loopback_recovery(&payload, harness.closed_port)
        {
            payload = rewritten.into();
        }
        if names_region_id(opcode) && payload.len() >= 8 && !known.is_empty() {
            let alias = u64::from_le_bytes(payload[..8].try_into().unwrap());
            if alias < REGION_ALIASES {
                let id = known[(alias % known.len() as u64) as usize];
                payload.to_mut()[..8].copy_from_slice(&id.to_le_bytes());
            }
        }
        let epoch = if flags & 1 != 0 {
            u64::from(flags >> 1)
        } else {
            0
        };
        sent += 1;
        push_request(&mut out, opcode, &payload, sent, epoch);
        ids.push(sent);
        if returns_region_id(opcode) {
            exchange(connection, &out, &ids, &mut known);
            out.clear();
            ids.clear();
        }
    }
    Request::ListRegions.encode(&mut out, LIST_ID, 0);
    Request::Ping { reply_bytes: 8 }.encode(&mut out, PING_ID, 0);
    ids.extend([LIST_ID, PING_ID]);
    let regions = exchange(connection, &out, &ids, &mut known);

    // Back to an empty node for the next input.
    if !regions.is_empty() {
        out.clear();
        ids.clear();
        for (index, region) in regions.iter().enumerate() {
            let id = DELETE_ID_BASE + index as u64;
            Request::DeleteRegion { name: &region.name }.encode(&mut out, id, 0);
            ids.push(id);
        }
        exchange(connection, &out, &ids, &mut known);
    }
}

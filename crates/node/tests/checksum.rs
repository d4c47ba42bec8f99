//! `RegionChecksum` against real nodes on loopback: digests of copies of a
//! region on two nodes agree exactly when their contents do, segment by
//! segment; unwritten segments hash as zeros; a region whose size is not a
//! multiple of the segment size, and one large enough that the segment list
//! comes in pages, are handled; bad arguments and missing rights are refused.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pagoda::{Client, ClientError, ClientOptions, ErrorCode, RegionInfo};
use pagoda_node::access::{self, Credential, Grant};
use pagoda_node::{Node, NodeConfig};
use pagoda_wire::checksum::{Digest, region_digest};
use pagoda_wire::limits::{CHECKSUM_SEGMENTS_MAX, SEGMENT_BYTES};
use pagoda_wire::{Request, Response};

mod common;
use common::raw_call;

const PAGE: usize = 4096;
const MIB: u64 = 1024 * 1024;
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn start(dir: &Path) -> Node {
    let config = NodeConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        64 * MIB,
        dir.to_path_buf(),
    );
    Node::start(config).expect("node starts")
}

fn connect(node: &Node) -> Client {
    let options = ClientOptions {
        timeout: REPLY_TIMEOUT,
        ..ClientOptions::default()
    };
    Client::connect(node.local_addr(), options).expect("client connects")
}

/// Two nodes, each with a client.
struct Pair {
    nodes: Vec<(Node, Client)>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Pair {
    fn new() -> Pair {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes = dirs
            .iter()
            .map(|dir| {
                let node = start(dir.path());
                let client = connect(&node);
                (node, client)
            })
            .collect();
        Pair { nodes, _dirs: dirs }
    }

    fn client(&self, index: usize) -> &Client {
        &self.nodes[index].1
    }

    /// Creates region `name` of the same shape on both nodes.
    fn create(&self, name: &str, size: u64) -> [RegionInfo; 2] {
        [0, 1].map(|index| {
            self.client(index)
                .create_region(name, size, PAGE as u32)
                .unwrap()
        })
    }
}

/// A page's contents, from its number and a version.
fn page_bytes(page: u64, version: u8) -> Vec<u8> {
    let mut bytes = vec![version; PAGE];
    bytes[..8].copy_from_slice(&page.to_le_bytes());
    bytes
}

fn write(client: &Client, info: &RegionInfo, pages: &[u64], version: u8) {
    let data: Vec<u8> = pages
        .iter()
        .flat_map(|&page| page_bytes(page, version))
        .collect();
    client.raw().write_pages(info, pages, &data).unwrap();
}

/// The region's bytes as a reader sees them.
fn read_all(client: &Client, info: &RegionInfo) -> Vec<u8> {
    let pages = info.size / PAGE as u64;
    let mut out = vec![0u8; info.size as usize];
    for (chunk, buffer) in out.chunks_mut(1024 * PAGE).enumerate() {
        let first = chunk as u64 * 1024;
        let list: Vec<u64> = (first..(first + 1024).min(pages)).collect();
        client.raw().read_pages(info, &list, buffer).unwrap();
    }
    out
}

/// The digests computed here from the bytes read back: the definition in
/// `pagoda_wire::checksum`, independently of the node.
fn expected_segments(bytes: &[u8]) -> Vec<Digest> {
    bytes
        .chunks(SEGMENT_BYTES as usize)
        .map(|segment| *blake3::hash(segment).as_bytes())
        .collect()
}

// Guards the point of the checksum: equal copies give equal digests, whole
// and per segment, both ways of computing the whole digest agree, and one
// changed page changes exactly its segment's digest and the whole digest.
#[test]
fn copies_agree_until_one_page_differs_and_then_only_its_segment_does() {
    let pair = Pair::new();
    let size = 8 * MIB;
    let infos = pair.create("copy", size);
    let pages: Vec<u64> = [0u64, 1, 511, 512, 700, 1536, 2047].to_vec();
    for (index, info) in infos.iter().enumerate() {
        write(pair.client(index), info, &pages, 1);
    }
    let a = pair.client(0).checksum("copy", true).unwrap();
    let b = pair.client(1).checksum("copy", true).unwrap();
    assert_eq!(a.segment_bytes, SEGMENT_BYTES);
    assert_eq!(a.segment_count, 4);
    assert_eq!(a.segments.len(), 4);
    assert_eq!(a, b);
    // The node's own whole-region walk gives the digest the client computed
    // from the segment list, and both match the definition over the bytes
    // read back.
    let whole = pair.client(0).checksum("copy", false).unwrap();
    assert_eq!(whole.digest, a.digest);
    assert!(whole.segments.is_empty());
    let bytes = read_all(pair.client(0), &infos[0]);
    assert_eq!(a.segments, expected_segments(&bytes));
    assert_eq!(a.digest, region_digest(a.segments.iter().copied()));

    // Page 700 lies in segment 1 (512 pages of 4 KiB per segment).
    write(pair.client(1), &infos[1], &[700], 2);
    let changed = pair.client(1).checksum("copy", true).unwrap();
    let differing: Vec<usize> = (0..4)
        .filter(|&index| a.segments[index] != changed.segments[index])
        .collect();
    assert_eq!(differing, [1]);
    assert_ne!(changed.digest, a.digest);
    assert_ne!(
        pair.client(1).checksum("copy", false).unwrap().digest,
        whole.digest
    );
    // Writing the old contents back makes the copies equal again.
    write(pair.client(1), &infos[1], &[700], 1);
    assert_eq!(pair.client(1).checksum("copy", true).unwrap(), a);
}

// Guards the zero digest: an unwritten region (no segment allocated) has
// the digest of one whose every page was written with zeros.
#[test]
fn an_unwritten_region_equals_one_written_with_zeros() {
    let pair = Pair::new();
    let size = 6 * MIB;
    let infos = pair.create("zeros", size);
    let pages: Vec<u64> = (0..size / PAGE as u64).collect();
    pair.client(1)
        .raw()
        .write_pages(&infos[1], &pages, &vec![0u8; size as usize])
        .unwrap();
    assert_eq!(
        pair.client(1)
            .stat_region("zeros")
            .unwrap()
            .segments_allocated,
        3
    );
    assert_eq!(
        pair.client(0)
            .stat_region("zeros")
            .unwrap()
            .segments_allocated,
        0
    );
    let unwritten = pair.client(0).checksum("zeros", true).unwrap();
    let written = pair.client(1).checksum("zeros", true).unwrap();
    assert_eq!(unwritten, written);
    let zero = *blake3::hash(&vec![0u8; SEGMENT_BYTES as usize]).as_bytes();
    assert_eq!(unwritten.segments, vec![zero; 3]);
    assert_eq!(
        pair.client(0).checksum("zeros", false).unwrap().digest,
        pair.client(1).checksum("zeros", false).unwrap().digest
    );
}

// Guards the last segment of a region whose size is not a multiple of the
// segment size: it hashes only the region's bytes, written or not.
#[test]
fn a_partial_last_segment_hashes_only_the_regions_bytes() {
    let pair = Pair::new();
    let size = 2 * SEGMENT_BYTES + 3 * PAGE as u64;
    let infos = pair.create("odd", size);
    let unwritten = pair.client(0).checksum("odd", true).unwrap();
    assert_eq!(unwritten.segment_count, 3);
    assert_eq!(
        unwritten.segments[2],
        *blake3::hash(&[0u8; 3 * PAGE]).as_bytes()
    );
    let last = size / PAGE as u64 - 1;
    write(pair.client(1), &infos[1], &[3, last], 9);
    let written = pair.client(1).checksum("odd", true).unwrap();
    let bytes = read_all(pair.client(1), &infos[1]);
    assert_eq!(written.segments, expected_segments(&bytes));
    assert_eq!(
        written.digest,
        pair.client(1).checksum("odd", false).unwrap().digest
    );
    assert_eq!(
        (0..3)
            .filter(|&index| written.segments[index] != unwritten.segments[index])
            .collect::<Vec<_>>(),
        [0, 2]
    );
}

// Guards paging: a region of more segments than one reply lists is walked
// in pages from start_segment, and the digest the client computes from all
// pages equals the node's own whole walk.
#[test]
fn a_large_region_is_listed_in_pages() {
    let pair = Pair::new();
    let segments = CHECKSUM_SEGMENTS_MAX as u64 + 100;
    let infos = pair.create("large", segments * SEGMENT_BYTES);
    let pages_per_segment = SEGMENT_BYTES / PAGE as u64;
    let changed_segment = CHECKSUM_SEGMENTS_MAX as u64 + 7;
    write(
        pair.client(0),
        &infos[0],
        &[changed_segment * pages_per_segment],
        3,
    );
    let a = pair.client(0).checksum("large", true).unwrap();
    let b = pair.client(1).checksum("large", true).unwrap();
    assert_eq!(a.segment_count, segments);
    assert_eq!(a.segments.len(), segments as usize);
    let differing: Vec<usize> = (0..segments as usize)
        .filter(|&index| a.segments[index] != b.segments[index])
        .collect();
    assert_eq!(differing, [changed_segment as usize]);
    assert_eq!(
        a.digest,
        pair.client(0).checksum("large", false).unwrap().digest
    );
    assert_eq!(
        b.digest,
        pair.client(1).checksum("large", false).unwrap().digest
    );
    assert_ne!(a.digest, b.digest);
}

/// Sends one request on a fresh connection to a node without credentials
/// and returns the reply's opcode and payload.
fn error_code(reply: &(u8, Vec<u8>)) -> ErrorCode {
    match Response::decode(reply.0, &reply.1).unwrap() {
        Response::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

// Guards the node's checks of the request: a start segment beyond the
// region, a start segment without a segment list, and an unknown region are
// refused with an error reply; the end of the list is an empty page.
#[test]
fn bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    connect(&node)
        .create_region("r", 4 * SEGMENT_BYTES, PAGE as u32)
        .unwrap();
    let ask = |name, start_segment, with_segments| {
        raw_call(
            node.local_addr(),
            &Request::RegionChecksum {
                name,
                start_segment,
                with_segments,
            },
        )
    };
    assert_eq!(error_code(&ask("r", 5, true)), ErrorCode::InvalidArgument);
    assert_eq!(
        error_code(&ask("r", u64::MAX, true)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(error_code(&ask("r", 1, false)), ErrorCode::InvalidArgument);
    assert_eq!(
        error_code(&ask("missing", 0, false)),
        ErrorCode::RegionNotFound
    );
    let (opcode, payload) = ask("r", 4, true);
    assert_eq!(
        Response::decode(opcode, &payload).unwrap(),
        Response::Checksum {
            segment_bytes: SEGMENT_BYTES,
            segment_count: 4,
            digest: [0; 32],
            next_segment: u64::MAX,
            segments: Vec::new(),
        }
    );
    // A page from the middle carries no region digest.
    let (opcode, payload) = ask("r", 1, true);
    match Response::decode(opcode, &payload).unwrap() {
        Response::Checksum {
            digest,
            next_segment,
            segments,
            ..
        } => {
            assert_eq!(digest, [0; 32]);
            assert_eq!(next_segment, u64::MAX);
            assert_eq!(
                segments.iter().map(|(index, _)| *index).collect::<Vec<_>>(),
                [1, 2, 3]
            );
        }
        other => panic!("expected a checksum, got {other:?}"),
    }
}

// Guards the rights: a checksum needs read on the region, like a stat.
#[test]
fn a_checksum_needs_read_on_the_region() {
    let dir = tempfile::tempdir().unwrap();
    let grants = |grants: &[&str]| grants.iter().map(|g| Grant::parse(g).unwrap()).collect();
    let credentials = vec![
        Credential::new("admin", b"admin-token", grants(&["*=admin"])).unwrap(),
        Credential::new("logs", b"logs-token", grants(&["logs-*=read"])).unwrap(),
    ];
    access::write_credentials(dir.path(), &credentials).unwrap();
    let node = start(dir.path());
    let as_credential = |name: &str, token: &str| {
        let options = ClientOptions {
            timeout: REPLY_TIMEOUT,
            ..ClientOptions::with_credential(name, token)
        };
        Client::connect(node.local_addr(), options).unwrap()
    };
    let admin = as_credential("admin", "admin-token");
    admin.create_region("logs-a", 2 * MIB, PAGE as u32).unwrap();
    admin.create_region("app", 2 * MIB, PAGE as u32).unwrap();
    let logs = as_credential("logs", "logs-token");
    assert_eq!(
        logs.checksum("logs-a", true).unwrap(),
        admin.checksum("logs-a", true).unwrap()
    );
    match logs.checksum("app", false) {
        Err(ClientError::Remote { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

//! Co-located access: a client on the node's host reads misses from the
//! region's shared memory. These tests guard that it reads what the node
//! holds (never stale, never torn), that it exposes only regions the client
//! may read, that `Off` really uses the connection, and that deletes,
//! checkpoints and restarts keep their guarantees with co-located readers.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, Colocated, ErrorCode, RegionOptions, Transport};
use pagoda_node::access::{Credential, Grant, Right, write_credentials};
use pagoda_node::storage::StorageConfig;
use pagoda_node::{Node, NodeConfig};
use pagoda_wire::auth::ClientHandshake;
use pagoda_wire::frame::FrameHeader;
use pagoda_wire::{HEADER_BYTES, Request, Response};
use rand::{Rng, SeedableRng};

const PAGE: usize = 4096;
const MIB: u64 = 1024 * 1024;

fn options(colocated: Colocated) -> ClientOptions {
    ClientOptions {
        colocated,
        ..ClientOptions::default()
    }
}

/// A cache of one page: nearly every read is a miss.
fn tiny_cache() -> RegionOptions {
    RegionOptions::with_cache_bytes(PAGE as u64)
}

/// Requests the node has served so far.
fn requests(client: &Client) -> u64 {
    client.node_stat().unwrap().requests
}

/// Reads page `page` through `region`, making sure it is a miss: the one-page
/// cache holds another page first.
fn read_fresh(region: &pagoda::Region, page: u64, pages: u64) -> Vec<u8> {
    let mut buffer = vec![0u8; PAGE];
    let other = (page + 1) % pages;
    region.read_at(other * PAGE as u64, &mut buffer).unwrap();
    region.read_at(page * PAGE as u64, &mut buffer).unwrap();
    buffer
}

// Guards that co-located reads equal what was written, under random writes
// from the same client and from another, and that they need no request.
#[test]
fn colocated_reads_follow_a_model_under_writes_from_two_clients() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 * MIB, None);
    assert!(node.local_socket().is_some(), "the node has a local socket");
    let writer = Client::connect(node.local_addr(), options(Colocated::Auto)).unwrap();
    let other = Client::connect(node.local_addr(), options(Colocated::Auto)).unwrap();
    let pages = 1024u64; // 4 MiB: two segments
    writer
        .create_region("model", pages * PAGE as u64, PAGE as u32)
        .unwrap();
    let written = writer.open_region("model", tiny_cache()).unwrap();
    let reader = other.open_region_read_only("model", tiny_cache()).unwrap();
    assert_eq!(writer.transport(), Transport::Colocated);
    assert_eq!(other.transport(), Transport::Colocated);
    let mut model = vec![0u8; pages as usize * PAGE];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut misses = 0u64;
    let before = requests(&other);
    for step in 0..300 {
        let page = rng.gen_range(0..pages);
        if rng.gen_bool(0.5) {
            let at = page as usize * PAGE + rng.gen_range(0..PAGE - 16);
            let bytes: [u8; 16] = rng.r#gen();
            model[at..at + 16].copy_from_slice(&bytes);
            written.write_at(at as u64, &bytes).unwrap();
            written.flush().unwrap();
        } else {
            let expected = &model[page as usize * PAGE..(page as usize + 1) * PAGE];
            assert_eq!(
                read_fresh(&reader, page, pages),
                expected,
                "step {step}, other client"
            );
            assert_eq!(
                read_fresh(&written, page, pages),
                expected,
                "step {step}, same client"
            );
            misses += 4;
        }
    }
    let served = requests(&other) - before;
    // The writer's flushes are requests; the other client's misses are not.
    let writes = served.saturating_sub(2);
    assert!(
        writes < misses / 2,
        "{served} requests for {misses} misses: the misses went over the connection"
    );
}

// Guards `Off`: the client uses TCP and every miss is a request.
#[test]
fn off_reads_over_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 16 * MIB, None);
    let client = Client::connect(node.local_addr(), options(Colocated::Off)).unwrap();
    client.create_region("r", 4 * MIB, PAGE as u32).unwrap();
    let region = client.open_region("r", tiny_cache()).unwrap();
    region.write_at(0, &[5u8; PAGE]).unwrap();
    region.flush().unwrap();
    assert_eq!(client.transport(), Transport::Tcp);
    let before = requests(&client);
    // Pages 1, 0, 2, 1, 3, 2, ...: every read a miss.
    for page in 0..50u64 {
        let expected = if page == 0 { 5 } else { 0 };
        assert_eq!(read_fresh(&region, page, 1024)[0], expected);
    }
    let served = requests(&client) - before;
    assert!(served >= 100, "{served} requests for 100 misses");
}

/// A page of version `version` of page `page`: every word the same, so a
/// torn copy shows.
fn pattern(page: u64, version: u64) -> Vec<u8> {
    let word = (page << 32) | version;
    (0..PAGE / 8).flat_map(|_| word.to_le_bytes()).collect()
}

// Guards the seqlock: a co-located reader never sees a page torn by a write
// the node applies at the same time.
#[test]
fn a_concurrent_writer_never_tears_a_colocated_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 16 * MIB, None);
    let writer = Client::connect(node.local_addr(), options(Colocated::Off)).unwrap();
    writer
        .create_region("torn", 8 * PAGE as u64, PAGE as u32)
        .unwrap();
    let reader = Client::connect(node.local_addr(), options(Colocated::Auto)).unwrap();
    let region = reader.open_region_read_only("torn", tiny_cache()).unwrap();
    assert_eq!(reader.transport(), Transport::Colocated);
    let stop = Arc::new(AtomicBool::new(false));
    let writing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let region = writer.open_region("torn", tiny_cache()).unwrap();
            let mut version = 1u64;
            while !stop.load(Ordering::Relaxed) && version < 1_000_000 {
                for page in 0..8 {
                    region
                        .write_at(page * PAGE as u64, &pattern(page, version))
                        .unwrap();
                }
                region.flush().unwrap();
                version += 1;
            }
            version
        })
    };
    let began = Instant::now();
    let mut reads = 0u64;
    while began.elapsed() < Duration::from_secs(2) {
        let page = reads % 8;
        let bytes = read_fresh(&region, page, 8);
        let first = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert!(
            bytes
                .chunks_exact(8)
                .all(|word| u64::from_le_bytes(word.try_into().unwrap()) == first),
            "page {page} read torn"
        );
        assert!(
            first == 0 || first >> 32 == page,
            "page {page} holds another page's bytes"
        );
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let versions = writing.join().unwrap();
    assert!(
        versions > 10 && reads > 100,
        "{versions} versions, {reads} reads"
    );
}

/// Sends `request` on `stream` (plain, no files expected) and returns the
/// reply's opcode and payload.
fn exchange(stream: &mut impl ReadWrite, request: &Request<'_>) -> (u8, Vec<u8>) {
    let mut frame = Vec::new();
    request.encode(&mut frame, 1, 0);
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).unwrap();
    let parsed = FrameHeader::parse(&header).unwrap();
    let mut payload = vec![0u8; parsed.payload_len as usize];
    stream.read_exact(&mut payload).unwrap();
    (parsed.opcode, payload)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn authenticate(stream: &mut impl ReadWrite, credential: &str, token: &[u8]) {
    let handshake = ClientHandshake::new("test", credential, token.to_vec());
    let (opcode, payload) = exchange(stream, &handshake.hello());
    let proof = match Response::decode(opcode, &payload).unwrap() {
        Response::AuthChallenge { salt, node_nonce } => handshake.proof(salt, &node_nonce),
        other => panic!("expected a challenge, got {other:?}"),
    };
    let (opcode, payload) = exchange(stream, &proof);
    assert!(matches!(
        Response::decode(opcode, &payload).unwrap(),
        Response::HelloOk { .. }
    ));
}

fn refusal(opcode: u8, payload: &[u8]) -> ErrorCode {
    match Response::decode(opcode, payload).unwrap() {
        Response::Error { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// Guards isolation: a client gets the memory of a region it may read and of
// no other; ShareRegion is refused off the local socket and for an unknown
// region.
#[test]
fn a_client_gets_only_the_regions_it_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let admin = b"admin-token-0123456789";
    let reader = b"reader-token-0123456789";
    write_credentials(
        dir.path(),
        &[
            Credential::new("admin", admin, vec![Grant::new("*", Right::Admin).unwrap()]).unwrap(),
            Credential::new(
                "reader",
                reader,
                vec![Grant::new("a", Right::Read).unwrap()],
            )
            .unwrap(),
        ],
    )
    .unwrap();
    let node = common::node(dir.path(), 16 * MIB, None);
    let admin_client = Client::connect(
        node.local_addr(),
        ClientOptions {
            token: Some(admin.to_vec()),
            credential: "admin".into(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let a = admin_client
        .create_region("a", 4 * MIB, PAGE as u32)
        .unwrap();
    let b = admin_client
        .create_region("b", 4 * MIB, PAGE as u32)
        .unwrap();
    let path = node.local_socket().unwrap().to_path_buf();

    let mut local = UnixStream::connect(&path).unwrap();
    authenticate(&mut local, "reader", reader);
    let (opcode, payload) = exchange(&mut local, &Request::ShareRegion { region: a.id });
    assert!(
        matches!(
            Response::decode(opcode, &payload).unwrap(),
            Response::RegionShared { .. }
        ),
        "region a is shared"
    );
    let (opcode, payload) = exchange(&mut local, &Request::ShareRegion { region: b.id });
    assert_eq!(refusal(opcode, &payload), ErrorCode::Forbidden);
    let (opcode, payload) = exchange(&mut local, &Request::ShareRegion { region: 999 });
    assert_eq!(refusal(opcode, &payload), ErrorCode::RegionNotFound);

    let mut tcp = std::net::TcpStream::connect(node.local_addr()).unwrap();
    authenticate(&mut tcp, "reader", reader);
    let (opcode, payload) = exchange(&mut tcp, &Request::ShareRegion { region: a.id });
    assert_eq!(refusal(opcode, &payload), ErrorCode::NotLocal);

    // Through the library: the reader's client reads a co-located, and b is
    // refused at the open.
    let client = Client::connect(
        node.local_addr(),
        ClientOptions {
            token: Some(reader.to_vec()),
            credential: "reader".into(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let _region = client.open_region_read_only("a", tiny_cache()).unwrap();
    assert_eq!(client.transport(), Transport::Colocated);
    let error = client.open_region_read_only("b", tiny_cache()).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Forbidden));
}

/// Kilobytes of shared memory this process has resident.
fn rss_shmem_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("RssShmem:"))
        .expect("RssShmem in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// Guards the node's memory: deleting a region frees it even while a
// co-located client still maps it, and the client then gets an error rather
// than stale or zero pages.
#[test]
fn a_deleted_region_is_freed_while_a_client_maps_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 64 * MIB, None);
    let admin = common::client(&node);
    let pages = 16 * MIB / PAGE as u64;
    admin.create_region("gone", 16 * MIB, PAGE as u32).unwrap();
    {
        let region = admin.open_region("gone", tiny_cache()).unwrap();
        for page in 0..pages {
            region
                .write_at(page * PAGE as u64, &pattern(page, 1))
                .unwrap();
        }
        region.flush().unwrap();
    }
    let reader = Client::connect(node.local_addr(), options(Colocated::Auto)).unwrap();
    let region = reader.open_region_read_only("gone", tiny_cache()).unwrap();
    assert_eq!(reader.transport(), Transport::Colocated);
    for page in 0..pages {
        assert_eq!(read_fresh(&region, page, pages), pattern(page, 1));
    }
    let mapped = rss_shmem_kib();
    admin.delete_region("gone").unwrap();
    assert_eq!(admin.node_stat().unwrap().used_bytes, 0);
    // The node's mapping and the client's each held the 16 MiB (the test
    // runs both in this process): both are gone, so the memory itself was
    // freed, not only the node's mapping of it.
    let freed = mapped.saturating_sub(rss_shmem_kib());
    assert!(
        freed >= 30 * 1024,
        "only {freed} KiB of shared memory freed"
    );
    let mut buffer = vec![0u8; PAGE];
    region.read_at(PAGE as u64 * 7, &mut buffer).unwrap_err();
}

fn storage_config(data: &Path, storage: &Path, listen: SocketAddr) -> NodeConfig {
    let mut config = NodeConfig::new(listen, 64 * MIB, data.to_path_buf());
    config.storage = Some(StorageConfig::Dir(storage.to_path_buf()));
    config
}

// Guards checkpoints, recovery and restarts with co-located readers: the
// pages a checkpoint saved come back after a restart, and a reader that
// mapped the old node's memory falls back and maps the new node's, never
// reading the old memory.
#[test]
fn checkpoint_restart_and_a_colocated_reader() {
    let data = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let node = Node::start(storage_config(
        data.path(),
        storage.path(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ))
    .unwrap();
    let addr = node.local_addr();
    let admin = Client::connect(addr, options(Colocated::Off)).unwrap();
    admin.create_region("kept", 4 * MIB, PAGE as u32).unwrap();
    let pages = 4 * MIB / PAGE as u64;
    {
        let region = admin.open_region("kept", tiny_cache()).unwrap();
        for page in 0..pages {
            region
                .write_at(page * PAGE as u64, &pattern(page, 1))
                .unwrap();
        }
        region.flush().unwrap();
        admin.checkpoint("kept", false).unwrap();
        // Written after the checkpoint, while a co-located reader maps the
        // region: copy-on-write keeps the checkpoint's version.
        for page in 0..8 {
            region
                .write_at(page * PAGE as u64, &pattern(page, 2))
                .unwrap();
        }
        region.flush().unwrap();
    }
    let reader = Client::connect(
        addr,
        ClientOptions {
            colocated: Colocated::Auto,
            reconnect_for: Duration::from_secs(20),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let region = reader.open_region_read_only("kept", tiny_cache()).unwrap();
    assert_eq!(reader.transport(), Transport::Colocated);
    assert_eq!(read_fresh(&region, 3, pages), pattern(3, 2));
    assert_eq!(read_fresh(&region, 30, pages), pattern(30, 1));
    drop(admin);
    // A graceful stop checkpoints the dirty pages: version 2 survives.
    node.shutdown();
    let node = Node::start(storage_config(data.path(), storage.path(), addr)).unwrap();
    let admin = Client::connect(addr, options(Colocated::Off)).unwrap();
    {
        let writer = admin.open_region("kept", tiny_cache()).unwrap();
        writer.write_at(9 * PAGE as u64, &pattern(9, 3)).unwrap();
        writer.flush().unwrap();
    }
    // The reader reconnects, shares the region again, and reads the new
    // node's pages, including one written only there.
    assert_eq!(read_fresh(&region, 3, pages), pattern(3, 2));
    assert_eq!(read_fresh(&region, 30, pages), pattern(30, 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.transport() != Transport::Colocated && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let _ = read_fresh(&region, 9, pages);
    }
    assert_eq!(
        reader.transport(),
        Transport::Colocated,
        "co-located again after the restart"
    );
    assert_eq!(read_fresh(&region, 9, pages), pattern(9, 3));
    drop(node);
}

//! Node lifecycle seen from clients: restarts on the same data dir, and
//! shutdown while clients are connected.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use pagoda::{ErrorCode, RegionInfo, RegionOptions};
use pagoda_node::Node;
use pagoda_wire::{HEADER_BYTES, Opcode, Request};

const MIB: u64 = 1024 * 1024;
/// How long a shutdown may take with clients connected.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Shuts `node` down on another thread and reports whether it finished within
/// `SHUTDOWN_TIMEOUT`.
fn shutdown_within_timeout(node: Node) -> bool {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        node.shutdown();
        let _ = done.send(());
    });
    finished.recv_timeout(SHUTDOWN_TIMEOUT).is_ok()
}

fn info(id: u64, name: &str, size: u64, page_size: u32) -> RegionInfo {
    RegionInfo {
        id,
        size,
        page_size,
        name: name.to_owned(),
    }
}

// Guards the catalog's persistence: after a restart on the same data dir, the
// regions are exactly those that existed (names, sizes, page sizes, ids), a
// deleted region stays deleted, and ids are never reused.
#[test]
fn restart_on_the_same_dir_keeps_region_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let expected = vec![
        info(3, "pages-2m", 64 * MIB, 2 * MIB as u32),
        info(1, "pages-4k", MIB, 4096),
    ];
    {
        let node = common::node(dir.path(), 16 * MIB, None);
        let client = common::client(&node);
        let created = [
            client.create_region("pages-4k", MIB, 4096).unwrap(),
            client
                .create_region("pages-64k", 8 * MIB, 64 * 1024)
                .unwrap(),
            client
                .create_region("pages-2m", 64 * MIB, 2 * MIB as u32)
                .unwrap(),
        ];
        let ids: Vec<u64> = created.iter().map(|info| info.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        client.delete_region("pages-64k").unwrap();
        assert_eq!(client.list_regions().unwrap(), expected);
        node.shutdown();
    }
    for restart in 0..2 {
        let node = common::node(dir.path(), 16 * MIB, None);
        let client = common::client(&node);
        assert_eq!(
            client.list_regions().unwrap(),
            expected,
            "restart {restart}"
        );
        for info in &expected {
            let region = client
                .open_region(&info.name, RegionOptions::with_cache_bytes(4 * MIB))
                .unwrap();
            assert_eq!(region.info(), info);
            assert_eq!(
                (region.len(), region.page_size()),
                (info.size, info.page_size as usize)
            );
            assert_eq!(client.stat_region(&info.name).unwrap().info, *info);
        }
        let error = client
            .open_region("pages-64k", RegionOptions::default())
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::RegionNotFound));
        node.shutdown();
    }
    // Ids are never reused, even for a reused name.
    let node = common::node(dir.path(), 16 * MIB, None);
    let client = common::client(&node);
    let reborn = client
        .create_region("pages-64k", 8 * MIB, 64 * 1024)
        .unwrap();
    assert_eq!(reborn.id, 4);
    node.shutdown();
    let node = common::node(dir.path(), 16 * MIB, None);
    let client = common::client(&node);
    let list = client.list_regions().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.contains(&reborn), "{list:?}");
}

// Guards the data dir lock: a second node on the dir of a running node is
// refused, and the dir is usable again once the first node stops.
#[test]
fn a_data_dir_serves_one_node_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = common::node(dir.path(), 4 * MIB, None);
    let mut config = pagoda_node::NodeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        4 * MIB,
        dir.path().to_path_buf(),
    );
    match Node::start(config.clone()) {
        Ok(_) => panic!("two nodes started on one data dir"),
        Err(error) => assert!(error.to_string().contains("in use"), "{error}"),
    }
    first.shutdown();
    config.capacity_bytes = 8 * MIB;
    let second = Node::start(config).expect("the dir is free after shutdown");
    common::client(&second).raw().ping(0).unwrap();
}

// Guards against a shutdown that waits for idle clients to hang up: with an
// idle client connected (and one holding an open region), shutdown finishes
// within a few seconds, and the clients then see a failed connection.
#[test]
fn shutdown_returns_while_idle_clients_are_connected() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 16 * MIB, None);
    // Clients that give up reconnecting soon: the node is gone for good.
    let options = || pagoda::ClientOptions {
        reconnect_for: Duration::from_millis(200),
        ..pagoda::ClientOptions::default()
    };
    let idle = pagoda::Client::connect(node.local_addr(), options()).unwrap();
    let busy = pagoda::Client::connect(node.local_addr(), options()).unwrap();
    busy.create_region("r", 4 * MIB, 4096).unwrap();
    let region = busy
        .open_region("r", RegionOptions::with_cache_bytes(64 * 1024))
        .unwrap();
    region.write_at(5, b"before shutdown").unwrap();
    region.flush().unwrap();
    idle.raw().ping(0).unwrap();
    // Two TCP connections, and the busy client's co-located channel on the
    // node's local socket (the node runs in this process).
    assert_eq!(node.connections(), 3);

    assert!(
        shutdown_within_timeout(node),
        "shutdown hung with idle clients connected"
    );
    assert!(idle.raw().ping(0).is_err(), "a stopped node still answered");
    let mut buf = [0u8; 4];
    assert!(
        region.read_at(3 * MIB, &mut buf).is_err(),
        "a stopped node still served a miss"
    );
}

// Guards against a shutdown that waits for a half-sent frame to complete.
#[test]
fn shutdown_returns_while_a_client_is_mid_frame() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 4 * MIB, None);
    let client = common::client(&node);
    let mut frame = Vec::new();
    Request::Hello {
        client_name: "mid-frame",
        credential: "",
        client_nonce: [0; 32],
    }
    .encode(&mut frame, 1, 0);
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    stream.write_all(&frame[..frame.len() - 3]).unwrap();
    client.raw().ping(0).unwrap();
    assert!(
        shutdown_within_timeout(node),
        "shutdown hung on a half-sent frame"
    );
}

// Guards against a shutdown that hangs on a client that stops reading its
// replies: the connection's thread blocks writing, and shutdown must still
// finish (closing such a connection is the only way forward).
#[test]
fn shutdown_returns_while_a_client_does_not_read_its_replies() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), 4 * MIB, None);
    let client = common::client(&node);
    let mut requests = Vec::new();
    Request::Hello {
        client_name: "not-reading",
        credential: "",
        client_nonce: [0; 32],
    }
    .encode(&mut requests, 1, 0);
    // 64 replies of 1 MiB: far more than the sockets' buffers hold.
    for id in 2..66 {
        Request::Ping {
            reply_bytes: MIB as u32,
        }
        .encode(&mut requests, id, 0);
    }
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    stream.set_write_timeout(Some(SHUTDOWN_TIMEOUT)).unwrap();
    stream.set_read_timeout(Some(SHUTDOWN_TIMEOUT)).unwrap();
    stream.write_all(&requests).unwrap();
    // Read only the reply to Hello: the node has then taken in every request
    // (they went in one small write) and started writing the 64 MiB of
    // replies, so it is bound to block writing.
    let mut hello_ok = [0u8; HEADER_BYTES + 9];
    stream.read_exact(&mut hello_ok).unwrap();
    assert_eq!(hello_ok[5], Opcode::HelloOk as u8);
    client.raw().ping(0).unwrap();
    let stopped = shutdown_within_timeout(node);
    drop(stream); // unblocks the node's writer if the shutdown hung
    assert!(
        stopped,
        "shutdown hung on a client that does not read its replies"
    );
}

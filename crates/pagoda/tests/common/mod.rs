//! Helpers shared by the client's integration tests: a node on loopback.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use pagoda::{Client, ClientOptions};
use pagoda_node::{Node, NodeConfig};

/// Starts a node on a free loopback port with `capacity` bytes of page RAM.
pub fn node(dir: &Path, capacity: u64, token: Option<&[u8]>) -> Node {
    let mut config = NodeConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        capacity,
        dir.to_path_buf(),
    );
    config.token = token.map(|t| t.to_vec());
    Node::start(config).expect("node starts")
}

/// Connects to `node` without a token.
pub fn client(node: &Node) -> Client {
    Client::connect(node.local_addr(), ClientOptions::default()).expect("client connects")
}

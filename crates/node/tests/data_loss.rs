//! The hardening issue's data-loss findings, each reproduced against a real
//! node on loopback: what a user was promised (checkpoints, restarts, a
//! graceful stop that loses nothing) must hold for every region name, on a
//! full disk, and whatever was deleted from storage behind the node's back.

use std::path::Path;

use pagoda::{Client, ClientOptions, RegionInfo};
use pagoda_node::{Node, NodeConfig, StorageConfig};

const PAGE: usize = 4096;

fn config(data_dir: &Path, storage: &Path) -> NodeConfig {
    let mut config = NodeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        64 << 20,
        data_dir.to_path_buf(),
    );
    config.storage = Some(StorageConfig::Dir(storage.to_path_buf()));
    config
}

fn connect(node: &Node) -> Client {
    Client::connect(node.local_addr(), ClientOptions::default()).unwrap()
}

/// Page `page`'s bytes in version `version`.
fn page_bytes(page: u64, version: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PAGE);
    while bytes.len() < PAGE {
        bytes.extend_from_slice(&page.to_le_bytes());
        bytes.extend_from_slice(&version.to_le_bytes());
    }
    bytes
}

fn write_pages(client: &Client, info: &RegionInfo, pages: &[u64], version: u64) {
    let data: Vec<u8> = pages.iter().flat_map(|&p| page_bytes(p, version)).collect();
    client.write_pages(info, pages, &data).unwrap();
}

fn assert_pages(client: &Client, info: &RegionInfo, pages: &[u64], version: u64) {
    let mut out = vec![0u8; pages.len() * PAGE];
    client.read_pages(info, pages, &mut out).unwrap();
    for (page, bytes) in pages.iter().zip(out.chunks_exact(PAGE)) {
        assert!(
            bytes == page_bytes(*page, version).as_slice(),
            "page {page} of {:?} is not version {version}",
            info.name
        );
    }
}

// Guards the long-name finding: a region whose name percent-encodes to more
// than a file name can hold (18 CJK characters, 255 bytes of punctuation)
// used to be created and written, then fail every checkpoint with "File name
// too long" and come back empty after a restart. Every valid name must
// checkpoint, and reload after a restart with its data.
#[test]
fn regions_with_long_names_checkpoint_and_reload() {
    let storage = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let names = [
        "數".repeat(18),
        "數".repeat(85),
        "%".repeat(255),
        "a/b ".repeat(63),
        "plain-name".to_owned(),
    ];
    let pages: Vec<u64> = (0..32).collect();
    {
        let node = Node::start(config(data.path(), storage.path())).unwrap();
        let client = connect(&node);
        for (version, name) in names.iter().enumerate() {
            let info = client.create_region(name, 1 << 20, PAGE as u32).unwrap();
            write_pages(&client, &info, &pages, version as u64 + 1);
            let done = client
                .checkpoint(name, false)
                .unwrap_or_else(|e| panic!("checkpoint of a {}-byte name: {e}", name.len()));
            assert_eq!(done.pages, pages.len() as u64);
        }
        node.shutdown();
    }
    let node = Node::start(config(data.path(), storage.path())).unwrap();
    let client = connect(&node);
    for (version, name) in names.iter().enumerate() {
        let stat = client.stat_region(name).unwrap();
        assert_eq!(
            stat.state,
            pagoda::RegionState::Active,
            "{name:?}: {stat:?}"
        );
        assert_pages(&client, &stat.info, &pages, version as u64 + 1);
    }
}

//! An in-process memory node on loopback with a pre-written region.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, RegionInfo};
use pagoda_node::{Node, NodeConfig};

use crate::PAGE_BYTES;

/// Pages written per request while pre-writing a region.
const PREWRITE_BATCH_PAGES: usize = 1024;

/// A node serving from a temporary data directory; dropped, it shuts down
/// and the directory is removed.
pub struct LocalNode {
    node: Node,
    _data_dir: tempfile::TempDir,
}

impl LocalNode {
    /// Starts a node on 127.0.0.1 with `capacity_bytes` of RAM for pages and
    /// its connection threads spinning `spin` before they block.
    pub fn start(capacity_bytes: u64, spin: Duration) -> LocalNode {
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let mut config = NodeConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            capacity_bytes,
            data_dir.path().to_path_buf(),
        );
        config.spin = spin;
        let node = Node::start(config).expect("the node starts on loopback");
        LocalNode {
            node,
            _data_dir: data_dir,
        }
    }

    /// The node's loopback address.
    pub fn addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// A client of this node whose waiting callers spin `spin` before they
    /// park.
    pub fn client(&self, spin: Duration) -> Client {
        let options = ClientOptions {
            spin,
            client_name: "pagoda-bench".into(),
            ..ClientOptions::default()
        };
        Client::connect(self.addr(), options).expect("the client connects over loopback")
    }
}

/// Creates a region of `bytes` in 4 KiB pages and writes every page, so that
/// every read afterwards hits an allocated segment. Page `p` is filled with
/// the byte `p as u8`.
pub fn create_written_region(client: &Client, name: &str, bytes: u64) -> RegionInfo {
    let info = client
        .create_region(name, bytes, PAGE_BYTES as u32)
        .expect("the region is created");
    write_whole_region(client, &info);
    info
}

/// Writes every 4 KiB page of a region once (page `p` filled with the byte
/// `p as u8`), in the largest batches the node takes, so that every segment
/// is allocated before anything is timed.
pub fn write_whole_region(client: &Client, info: &RegionInfo) {
    let pages = info.size / PAGE_BYTES as u64;
    let batch = PREWRITE_BATCH_PAGES.min(client.raw().batch_pages_max(PAGE_BYTES));
    let mut data = vec![0u8; batch * PAGE_BYTES];
    let began = Instant::now();
    let mut first = 0u64;
    while first < pages {
        let count = batch.min((pages - first) as usize);
        let list: Vec<u64> = (first..first + count as u64).collect();
        for (index, page) in data.chunks_exact_mut(PAGE_BYTES).take(count).enumerate() {
            page.fill((first + index as u64) as u8);
        }
        client
            .raw()
            .write_pages(info, &list, &data[..count * PAGE_BYTES])
            .expect("pre-writing the region");
        first += count as u64;
    }
    crate::report::progress(&format!(
        "pre-wrote region {:?}: {} MiB in {:.2} s",
        info.name,
        info.size >> 20,
        began.elapsed().as_secs_f64()
    ));
}

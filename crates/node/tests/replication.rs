//! Replicated regions between nodes in this process, on loopback: a primary
//! forwards every write to its replicas in log order; `sync` writes are
//! answered once the in-sync replicas have them; a replica that was away
//! catches up from the retained log, or by segment digests once the log no
//! longer holds what it missed; promotion fences the old primary.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, ErrorCode, RegionOptions, ReplicaRole, ReplicationMode};
use pagoda_node::{Node, NodeConfig};

const PAGE: usize = 4096;
const MIB: u64 = 1024 * 1024;
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn config(dir: &Path, adjust: impl FnOnce(&mut NodeConfig)) -> NodeConfig {
    let mut config = NodeConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        64 * MIB,
        dir.to_path_buf(),
    );
    config.replica_timeout = Duration::from_millis(1000);
    adjust(&mut config);
    config
}

fn connect(addr: SocketAddr) -> Client {
    let options = ClientOptions {
        timeout: REPLY_TIMEOUT,
        ..ClientOptions::default()
    };
    Client::connect(addr, options).expect("client connects")
}

fn page(seed: u64) -> Vec<u8> {
    (0..PAGE as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) as u8)
        .collect()
}

/// Waits (bounded) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Cluster {
    nodes: Vec<Option<Node>>,
    addrs: Vec<SocketAddr>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn new(count: usize) -> Cluster {
        let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<Option<Node>> = dirs
            .iter()
            .map(|dir| Some(Node::start(config(dir.path(), |_| {})).expect("node starts")))
            .collect();
        let addrs = nodes
            .iter()
            .map(|node| node.as_ref().unwrap().local_addr())
            .collect();
        Cluster { nodes, addrs, dirs }
    }

    fn client(&self, index: usize) -> Client {
        connect(self.addrs[index])
    }

    fn replicas_of(&self, primary: usize) -> Vec<String> {
        (0..self.addrs.len())
            .filter(|&index| index != primary)
            .map(|index| self.addrs[index].to_string())
            .collect()
    }

    /// Restarts node `index` on its address and data dir.
    fn restart(&mut self, index: usize) {
        self.nodes[index] = None;
        let addr = self.addrs[index];
        let node = Node::start(config(self.dirs[index].path(), |config| {
            config.listen = addr
        }))
        .expect("node restarts");
        self.nodes[index] = Some(node);
    }
}

fn create(cluster: &Cluster, name: &str, pages: u64, mode: ReplicationMode) -> pagoda::RegionInfo {
    let replicas = cluster.replicas_of(0);
    let replicas: Vec<&str> = replicas.iter().map(String::as_str).collect();
    cluster
        .client(0)
        .create_replicated_region(name, pages * PAGE as u64, PAGE as u32, &replicas, mode)
        .expect("replicated region created")
}

fn digest(client: &Client, name: &str) -> [u8; 32] {
    client.checksum(name, false).expect("checksum").digest
}

// Guards the basic promise of `sync` replication: once a write is answered,
// every in-sync replica holds it, so the copies are equal after any flush;
// the primary reports its replicas in sync with nothing unacknowledged.
#[test]
fn sync_writes_are_on_every_replica_when_answered() {
    let cluster = Cluster::new(3);
    let info = create(&cluster, "r", 1024, ReplicationMode::Sync);
    let writer = cluster.client(0);
    for round in 0..20u64 {
        let pages: Vec<u64> = (0..32).map(|i| (i * 37 + round * 11) % 1024).collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| page(p + round)).collect();
        writer.write_pages(&info, &pages, &data).unwrap();
        // Answered: both replicas have it, without waiting.
        let expected = digest(&writer, "r");
        for index in 1..3 {
            assert_eq!(
                digest(&cluster.client(index), "r"),
                expected,
                "replica {index} lacks an answered write (round {round})"
            );
        }
    }
    let set = writer.replicas("r").unwrap();
    assert_eq!(set.role, ReplicaRole::Primary);
    assert_eq!(set.replicas.len(), 2);
    for replica in &set.replicas {
        assert!(replica.in_sync, "{replica:?}");
        assert_eq!(replica.acked, set.lsn, "{replica:?}");
    }
    // A replica refuses writes, and names its primary.
    let replica = cluster.client(1);
    let error = replica
        .open_region("r", RegionOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotPrimary), "{error}");
    assert!(
        error.to_string().contains(&cluster.addrs[0].to_string()),
        "{error}"
    );
}

// Guards `async` mode: writes are answered by the primary, and replicas
// follow: the copies converge once writing stops.
#[test]
fn async_replicas_converge() {
    let cluster = Cluster::new(2);
    let info = create(&cluster, "a", 512, ReplicationMode::Async);
    let writer = cluster.client(0);
    let region = writer
        .open_region("a", RegionOptions::with_cache_bytes(64 * PAGE as u64))
        .unwrap();
    for i in 0..2000u64 {
        region
            .write_at((i * 7919 % 512) * PAGE as u64, &page(i))
            .unwrap();
    }
    region.flush().unwrap();
    drop(region);
    let _ = info;
    let expected = digest(&writer, "a");
    let replica = cluster.client(1);
    eventually("the async replica has every write", || {
        digest(&replica, "a") == expected
    });
}

// Guards catch-up from the retained log: a replica cut off for a short
// while (its node paused by a full stop and restart would lose its RAM;
// here its link is cut by stopping the primary's view of it) gets only what
// it missed. And by digests: a replica whose node restarted (its pages and
// log position gone) is rebuilt with only the segments that differ.
#[test]
fn a_restarted_replica_is_rebuilt_by_digests() {
    let mut cluster = Cluster::new(2);
    let info = create(&cluster, "d", 4096, ReplicationMode::Sync);
    let writer = cluster.client(0);
    // Write a few segments' worth.
    for chunk in 0..8u64 {
        let pages: Vec<u64> = (chunk * 512..chunk * 512 + 512).step_by(3).collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| page(p)).collect();
        writer.write_pages(&info, &pages, &data).unwrap();
    }
    let before = digest(&writer, "d");
    assert_eq!(digest(&cluster.client(1), "d"), before);
    // The replica's node restarts: it comes back with an empty copy whose
    // log position is unknown, and the primary rebuilds it.
    cluster.restart(1);
    let replica = cluster.client(1);
    let set = replica.replicas("d").unwrap();
    assert_eq!(set.role, ReplicaRole::Replica);
    eventually("the restarted replica is rebuilt", || {
        digest(&replica, "d") == before
    });
    eventually("the rebuilt replica is in sync", || {
        writer.replicas("d").unwrap().replicas[0].in_sync
    });
    // And it follows new writes again.
    writer.write_pages(&info, &[1], &page(99)).unwrap();
    assert_eq!(digest(&replica, "d"), digest(&writer, "d"));
}

// Guards promotion and fencing: with the primary gone, an in-sync replica is
// promoted (at a higher primary epoch) and takes the writer back under its
// epoch; the old primary, restarted, is fenced: it takes no write, and when
// the new primary reaches it, it becomes its replica again.
#[test]
fn a_promoted_replica_leads_and_the_old_primary_is_fenced() {
    let mut cluster = Cluster::new(2);
    let info = create(&cluster, "p", 256, ReplicationMode::Sync);
    let writer = cluster.client(0);
    writer
        .write_pages(&info, &[0, 1], &[page(1), page(2)].concat())
        .unwrap();
    let expected = digest(&writer, "p");
    drop(writer);
    // The primary goes away.
    cluster.nodes[0] = None;
    let replica = cluster.client(1);
    eventually("the replica notices its primary is gone", || {
        replica.replicas("p").unwrap().in_sync
    });
    let set = replica.promote("p", false).unwrap();
    assert_eq!(set.role, ReplicaRole::Primary);
    assert_eq!(set.primary_epoch, 2);
    assert_eq!(
        digest(&replica, "p"),
        expected,
        "an acknowledged write was lost"
    );
    // Writes go on at the new primary.
    let region = replica.open_region("p", RegionOptions::default()).unwrap();
    region.write_at(2 * PAGE as u64, &page(3)).unwrap();
    region.flush().unwrap();
    // The old primary comes back fenced, until the new primary reaches it.
    cluster.restart(0);
    let old = cluster.client(0);
    let status = old.replicas("p").unwrap();
    assert!(
        matches!(status.role, ReplicaRole::Fenced | ReplicaRole::Replica),
        "{status:?}"
    );
    let error = old
        .write_pages(&info, &[3], &page(4))
        .expect_err("a deposed primary took a write");
    assert!(
        matches!(
            error.code(),
            Some(ErrorCode::RegionUnavailable | ErrorCode::NotPrimary)
        ),
        "{error}"
    );
    eventually("the old primary follows the new one", || {
        old.replicas("p").unwrap().role == ReplicaRole::Replica
            && digest(&old, "p") == digest(&replica, "p")
    });
    drop(region);
}

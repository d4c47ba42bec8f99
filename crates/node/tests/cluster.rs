//! Nodes of one cluster in this process, sharing an embedded coordinator
//! (a directory): region records follow create and delete, the recorded
//! in-sync set shrinks before a write a dropped replica lacks is answered,
//! and a stopping primary hands its lead to an in-sync replica.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, ErrorCode, RegionOptions, ReplicationMode};
use pagoda_cluster::{Coordinator, RegionRecord};
use pagoda_node::{Node, NodeConfig};

mod common;
use common::{PAGE, eventually, page};

const MIB: u64 = 1024 * 1024;
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

struct Cluster {
    nodes: Vec<Option<Node>>,
    addrs: Vec<SocketAddr>,
    dirs: Vec<tempfile::TempDir>,
    store: tempfile::TempDir,
    coordinator: Arc<dyn Coordinator>,
}

fn config(dir: &Path, store: &Path, listen: SocketAddr) -> NodeConfig {
    let mut config = NodeConfig::new(listen, 64 * MIB, dir.to_path_buf());
    config.replica_timeout = Duration::from_millis(1000);
    config.coordinator = Some(format!("embedded:{}", store.display()));
    config.lease = Duration::from_secs(1);
    config.replace_replica_after = Duration::from_secs(1);
    config
}

impl Cluster {
    fn new(count: usize) -> Cluster {
        let store = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<Option<Node>> = dirs
            .iter()
            .map(|dir| {
                Some(
                    Node::start(config(
                        dir.path(),
                        store.path(),
                        SocketAddr::from(([127, 0, 0, 1], 0)),
                    ))
                    .expect("node starts"),
                )
            })
            .collect();
        let addrs = nodes
            .iter()
            .map(|node| node.as_ref().unwrap().local_addr())
            .collect();
        let coordinator =
            pagoda_cluster::connect(&format!("embedded:{}", store.path().display())).unwrap();
        Cluster {
            nodes,
            addrs,
            dirs,
            store,
            coordinator,
        }
    }

    fn client(&self, index: usize) -> Client {
        let options = ClientOptions {
            timeout: REPLY_TIMEOUT,
            ..ClientOptions::default()
        };
        Client::connect(self.addrs[index], options).expect("client connects")
    }

    fn record(&self, name: &str) -> Option<RegionRecord> {
        self.coordinator
            .region(name)
            .expect("coordinator answers")
            .map(|v| v.value)
    }

    fn others(&self, index: usize) -> Vec<String> {
        (0..self.addrs.len())
            .filter(|&i| i != index)
            .map(|i| self.addrs[i].to_string())
            .collect()
    }

    fn restart(&mut self, index: usize) {
        self.nodes[index] = None;
        let node = Node::start(config(
            self.dirs[index].path(),
            self.store.path(),
            self.addrs[index],
        ))
        .expect("node restarts");
        self.nodes[index] = Some(node);
    }
}

fn create(cluster: &Cluster, name: &str, pages: u64) {
    create_with(cluster, name, pages, cluster.others(0));
}

fn create_with(cluster: &Cluster, name: &str, pages: u64, replicas: Vec<String>) {
    let replicas: Vec<&str> = replicas.iter().map(String::as_str).collect();
    cluster
        .client(0)
        .create_replicated_region(
            name,
            pages * PAGE as u64,
            PAGE as u32,
            &replicas,
            ReplicationMode::Sync,
        )
        .expect("replicated region created");
}

// Guards the records: every node registers under its lease; a region is
// recorded with its primary, replicas, epoch and in-sync set when created,
// its name is taken cluster-wide, and the record goes with the region.
#[test]
fn records_follow_create_and_delete() {
    let cluster = Cluster::new(3);
    let mut live: Vec<String> = cluster
        .coordinator
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.addr)
        .collect();
    live.sort();
    let mut expected: Vec<String> = cluster.addrs.iter().map(|a| a.to_string()).collect();
    expected.sort();
    assert_eq!(live, expected);

    create(&cluster, "r", 64);
    let record = cluster.record("r").expect("recorded");
    assert_eq!(record.primary, cluster.addrs[0].to_string());
    assert_eq!(record.replicas, cluster.others(0));
    assert_eq!(record.in_sync, cluster.others(0));
    assert_eq!(record.primary_epoch, 1);
    assert_eq!(record.mode, "sync");
    assert_eq!(record.size, 64 * PAGE as u64);

    cluster
        .client(1)
        .create_region("solo", 16 * PAGE as u64, PAGE as u32)
        .unwrap();
    let solo = cluster.record("solo").expect("recorded");
    assert_eq!(solo.primary, cluster.addrs[1].to_string());
    assert_eq!(solo.mode, "solo");
    assert!(solo.replicas.is_empty());
    // Ticks later (every 250 ms) the records are as they were: nothing
    // fails over, nothing is vacated.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(cluster.record("solo").unwrap(), solo);
    assert_eq!(cluster.record("r").unwrap().primary, record.primary);

    // The name is the cluster's: another node refuses it.
    let error = cluster
        .client(2)
        .create_region("solo", 16 * PAGE as u64, PAGE as u32)
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::RegionExists), "{error}");
    assert!(
        error.to_string().contains(&cluster.addrs[1].to_string()),
        "{error}"
    );
    assert!(cluster.client(2).stat_region("solo").is_err());

    cluster.client(0).delete_region("r").unwrap();
    assert!(cluster.record("r").is_none());
    cluster.client(1).delete_region("solo").unwrap();
    assert!(cluster.record("solo").is_none());
}

// Guards the in-sync record: once a replica stops answering, the primary
// removes it from the record before it answers a write that replica lacks
// (so failover never picks a copy missing an acknowledged write); once
// the replica is back and caught up, it is recorded in sync again.
#[test]
fn a_dropped_replica_leaves_the_recorded_in_sync_set_before_a_write_is_answered() {
    let mut cluster = Cluster::new(3);
    create(&cluster, "s", 64);
    let writer = cluster.client(0);
    let info = writer.stat_region("s").unwrap().info;
    writer.raw().write_pages(&info, &[1], &page(1)).unwrap();
    let lost = cluster.addrs[2].to_string();
    cluster.nodes[2] = None;
    writer.raw().write_pages(&info, &[2], &page(2)).unwrap();
    let record = cluster.record("s").unwrap();
    assert_eq!(
        record.in_sync,
        vec![cluster.addrs[1].to_string()],
        "a write was answered while the record counted {lost} in sync"
    );
    // Back, rebuilt and caught up: recorded in sync again.
    cluster.restart(2);
    writer.raw().write_pages(&info, &[3], &page(3)).unwrap();
    eventually("the restarted replica is recorded in sync", || {
        let record = cluster.record("s").unwrap();
        record.in_sync.contains(&lost) && record.in_sync.len() == 2
    });
}

// Guards the hand-off: a primary that stops gracefully hands its lead to
// an in-sync replica first (the record names it at the next epoch); an
// application writing through the old primary follows without an error,
// and nothing it wrote is lost.
#[test]
fn a_stopping_primary_hands_its_lead_to_an_in_sync_replica() {
    let mut cluster = Cluster::new(3);
    create(&cluster, "h", 128);
    let options = ClientOptions {
        timeout: REPLY_TIMEOUT,
        fallback: vec![cluster.addrs[1], cluster.addrs[2]],
        ..ClientOptions::default()
    };
    let client = Client::connect(cluster.addrs[0], options).unwrap();
    let region = client
        .open_region("h", RegionOptions::with_cache_bytes(16 * PAGE as u64))
        .unwrap();
    let mut model = vec![0u64; 128];
    for i in 0..200u64 {
        let index = i * 7 % 128;
        region.write_at(index * PAGE as u64, &page(i + 1)).unwrap();
        model[index as usize] = i + 1;
    }
    region.flush().unwrap();
    let began = Instant::now();
    cluster.nodes[0] = None;
    let record = cluster.record("h").unwrap();
    assert_ne!(record.primary, cluster.addrs[0].to_string(), "{record:?}");
    assert!(cluster.others(0).contains(&record.primary), "{record:?}");
    assert_eq!(record.primary_epoch, 2);
    assert!(record.replicas.contains(&cluster.addrs[0].to_string()));
    for i in 200..400u64 {
        let index = i * 11 % 128;
        region.write_at(index * PAGE as u64, &page(i + 1)).unwrap();
        model[index as usize] = i + 1;
    }
    region.flush().unwrap();
    eprintln!("hand-off to first write after it: {:?}", began.elapsed());
    drop(region);
    let successor: SocketAddr = record.primary.parse().unwrap();
    let index = cluster.addrs.iter().position(|a| *a == successor).unwrap();
    let fresh = cluster.client(index);
    let info = fresh.stat_region("h").unwrap().info;
    let mut back = vec![0u8; PAGE];
    for (page_index, &version) in model.iter().enumerate().filter(|(_, v)| **v != 0) {
        fresh
            .raw()
            .read_pages(&info, &[page_index as u64], &mut back)
            .unwrap();
        assert!(
            back == page(version),
            "page {page_index} lost its last write"
        );
    }
}

// Guards restoring the replica count: a replica whose node is gone for
// longer than `replace_replica_after` is replaced by a new copy on another
// live node, rebuilt from the primary (equal contents, recorded in sync);
// the lost node, when it comes back, finds its copy replaced and deletes
// it.
#[test]
fn a_lost_replica_is_replaced_on_another_node() {
    let mut cluster = Cluster::new(4);
    let replicas = vec![cluster.addrs[1].to_string(), cluster.addrs[2].to_string()];
    create_with(&cluster, "l", 256, replicas);
    let writer = cluster.client(0);
    let info = writer.stat_region("l").unwrap().info;
    for i in 0..64u64 {
        writer
            .raw()
            .write_pages(&info, &[i * 3 % 256], &page(i + 1))
            .unwrap();
    }
    let lost = cluster.addrs[2].to_string();
    let replacement = cluster.addrs[3].to_string();
    cluster.nodes[2] = None;
    for i in 64..128u64 {
        writer
            .raw()
            .write_pages(&info, &[i * 5 % 256], &page(i + 1))
            .unwrap();
    }
    eventually(
        "the lost replica is replaced and the new copy is in sync",
        || {
            let record = cluster.record("l").unwrap();
            record.replicas.contains(&replacement)
                && !record.replicas.contains(&lost)
                && record.in_sync.contains(&replacement)
        },
    );
    let record = cluster.record("l").unwrap();
    assert_eq!(record.primary, cluster.addrs[0].to_string());
    assert_eq!(record.replicas.len(), 2, "{record:?}");
    let expected = writer.checksum("l", false).unwrap().digest;
    assert_eq!(
        cluster.client(3).checksum("l", false).unwrap().digest,
        expected,
        "the replacement's copy differs from the primary's"
    );
    // The lost node comes back: its copy is no longer one of the region's.
    cluster.restart(2);
    let error = cluster.client(2).stat_region("l").unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::RegionNotFound), "{error}");
    // And the region goes on with its new replica set.
    writer.raw().write_pages(&info, &[7], &page(1000)).unwrap();
    let expected = writer.checksum("l", false).unwrap().digest;
    assert_eq!(
        cluster.client(3).checksum("l", false).unwrap().digest,
        expected
    );
}

// Guards the lease against the agent's slow work: a node registered in the
// coordinator that accepts connections and never answers is where the
// primary tries to replace a lost replica (it has the most free bytes);
// each attempt waits for its timeout, and meanwhile the primary's lease is
// renewed by a thread of its own: it stays live and keeps its lead.
#[test]
fn a_peer_that_never_answers_does_not_cost_the_primary_its_lease() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut cluster = Cluster::new(3);
    create(&cluster, "p", 64);
    // The silent node: accepts, holds the connections, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let began = Instant::now();
            while !stop.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(60) {
                if let Ok((stream, _)) = silent.accept() {
                    held.push(stream);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let lease = cluster
        .coordinator
        .grant_lease(Duration::from_secs(30))
        .unwrap();
    cluster
        .coordinator
        .put_node(
            &pagoda_cluster::NodeRecord {
                addr: silent_addr.clone(),
                capacity_bytes: 1 << 40,
                free_bytes: 1 << 40,
                lease_ms: 30_000,
                version: "silent".into(),
            },
            lease,
        )
        .unwrap();
    // A replica is lost: after a second its primary tries to replace it on
    // the silent node, again and again.
    cluster.nodes[2] = None;
    let writer = cluster.client(0);
    let info = writer.stat_region("p").unwrap().info;
    writer.raw().write_pages(&info, &[1], &page(1)).unwrap();
    let primary = cluster.addrs[0].to_string();
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(6) {
        let live: Vec<String> = cluster
            .coordinator
            .nodes()
            .unwrap()
            .into_iter()
            .map(|n| n.addr)
            .collect();
        assert!(
            live.contains(&primary),
            "the primary's lease lapsed {:?} into the replacement attempts",
            began.elapsed()
        );
        assert_eq!(cluster.record("p").unwrap().primary, primary);
        std::thread::sleep(Duration::from_millis(100));
    }
    writer.raw().write_pages(&info, &[2], &page(2)).unwrap();
    stop.store(true, Ordering::SeqCst);
    holder.join().unwrap();
}

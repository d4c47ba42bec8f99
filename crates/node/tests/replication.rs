//! Replicated regions between nodes in this process, on loopback: a primary
//! forwards every write to its replicas in log order; `sync` writes are
//! answered once the in-sync replicas have them; a replica that was away
//! catches up from the retained log, or by segment digests once the log no
//! longer holds what it missed; promotion fences the old primary.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagoda_wire::limits::SEGMENT_BYTES;
use pagoda_wire::{OpenMode, Request, Response};

mod common;
use common::{PAGE, eventually, page, raw_call};

use pagoda::{Client, ClientOptions, ErrorCode, RegionOptions, ReplicaRole, ReplicationMode};
use pagoda_node::{Node, NodeConfig};

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

struct Cluster {
    nodes: Vec<Option<Node>>,
    addrs: Vec<SocketAddr>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn new(count: usize) -> Cluster {
        Cluster::with(count, |_| {})
    }

    fn with(count: usize, adjust: impl Fn(&mut NodeConfig)) -> Cluster {
        let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<Option<Node>> = dirs
            .iter()
            .map(|dir| Some(Node::start(config(dir.path(), &adjust)).expect("node starts")))
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
        writer.raw().write_pages(&info, &pages, &data).unwrap();
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
    let (opcode, payload) = raw_call(
        cluster.addrs[1],
        &Request::OpenRegion {
            name: "r",
            mode: OpenMode::Write,
            claim_epoch: 0,
        },
    );
    match Response::decode(opcode, &payload).unwrap() {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::NotPrimary, "{message}");
            assert!(message.contains(&cluster.addrs[0].to_string()), "{message}");
        }
        other => panic!("a replica opened for writing: {other:?}"),
    }
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
        writer.raw().write_pages(&info, &pages, &data).unwrap();
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
    writer.raw().write_pages(&info, &[1], &page(99)).unwrap();
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
        .raw()
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
        .raw()
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

// ---------------------------------------------------------------------------
// Outages of the link between a primary and its replica.

/// A TCP proxy on loopback in front of a node, whose connections the test
/// can cut and keep cut for a while (a network outage between two live
/// nodes).
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn new(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (accept_down, accept_links) = (down.clone(), links.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if accept_down.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut held = accept_links.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                drop(held);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, down, links }
    }

    /// Cuts every connection and refuses new ones until `restore`.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            let _ = link.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// A primary (node 0) with one replica (node 1) reached through a proxy.
fn behind_proxy(cluster: &Cluster, name: &str, pages: u64) -> (Proxy, pagoda::RegionInfo) {
    let proxy = Proxy::new(cluster.addrs[1]);
    let replica = proxy.addr.to_string();
    let info = cluster
        .client(0)
        .create_replicated_region(
            name,
            pages * PAGE as u64,
            PAGE as u32,
            &[replica.as_str()],
            ReplicationMode::Sync,
        )
        .expect("replicated region created");
    (proxy, info)
}

fn link_of(client: &Client, name: &str) -> pagoda::ReplicaInfo {
    client.replicas(name).unwrap().replicas.remove(0)
}

// Guards catch-up from the retained log (C18): a replica cut off for a
// second while writes go on receives only what it missed, fewer bytes than
// twice those written meanwhile, and no rebuild.
#[test]
fn a_replica_back_from_a_short_outage_catches_up_from_the_log() {
    let cluster = Cluster::new(2);
    let (proxy, info) = behind_proxy(&cluster, "short", 1024);
    let writer = cluster.client(0);
    let before: Vec<u64> = (0..64).collect();
    let data: Vec<u8> = before.iter().flat_map(|&p| page(p)).collect();
    writer.raw().write_pages(&info, &before, &data).unwrap();
    eventually("the replica is in sync", || {
        link_of(&writer, "short").in_sync
    });
    let sent_before = link_of(&writer, "short").sent_bytes;

    proxy.cut();
    let mut written = 0u64;
    let began = Instant::now();
    let mut round = 0u64;
    // About a second of writes, far less than the retained log holds.
    while began.elapsed() < Duration::from_secs(1) && round < 250 {
        let pages: Vec<u64> = (0..8).map(|i| (round * 8 + i) % 1024).collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| page(p + round)).collect();
        // Answered by the primary alone once the replica is dropped.
        writer.raw().write_pages(&info, &pages, &data).unwrap();
        written += data.len() as u64;
        round += 1;
        std::thread::sleep(Duration::from_millis(4));
    }
    let missed = link_of(&writer, "short");
    assert!(
        !missed.in_sync,
        "a cut-off replica counted in sync: {missed:?}"
    );
    proxy.restore();
    eventually("the replica catches up", || {
        link_of(&writer, "short").in_sync
    });
    let after = link_of(&writer, "short");
    assert_eq!(
        after.rebuilds, 0,
        "a short outage needed a rebuild: {after:?}"
    );
    let sent = after.sent_bytes - sent_before;
    assert!(
        sent < 2 * written,
        "catch-up sent {sent} bytes for {written} written during the outage"
    );
    assert!(
        sent >= written,
        "catch-up sent {sent} bytes, less than the {written} missed"
    );
    assert_eq!(
        digest(&cluster.client(1), "short"),
        digest(&writer, "short")
    );
}

// Guards the rebuild by digests (C7): a replica away for longer than the
// retained log holds is sent only the segments that differ (here 2 of 8),
// not a full copy.
#[test]
fn a_replica_back_from_a_long_outage_gets_only_the_segments_that_differ() {
    let cluster = Cluster::with(2, |config| config.replication_log_bytes = 1 << 20);
    let pages_per_segment = SEGMENT_BYTES / PAGE as u64;
    let (proxy, info) = behind_proxy(&cluster, "long", 8 * pages_per_segment);
    let writer = cluster.client(0);
    // Every segment written once.
    for segment in 0..8 {
        let pages: Vec<u64> = (0..16)
            .map(|i| segment * pages_per_segment + i * 7)
            .collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| page(p)).collect();
        writer.raw().write_pages(&info, &pages, &data).unwrap();
    }
    eventually("the replica is in sync", || {
        link_of(&writer, "long").in_sync
    });
    proxy.cut();
    // More than the retained log holds, in segments 2 and 5 only.
    for round in 0..12u64 {
        for segment in [2u64, 5] {
            let pages: Vec<u64> = (0..32).map(|i| segment * pages_per_segment + i).collect();
            let data: Vec<u8> = pages.iter().flat_map(|&p| page(p * 3 + round)).collect();
            writer.raw().write_pages(&info, &pages, &data).unwrap();
        }
    }
    proxy.restore();
    eventually("the replica is rebuilt and in sync", || {
        let link = link_of(&writer, "long");
        link.in_sync && link.rebuilds > 0
    });
    let link = link_of(&writer, "long");
    let differing = 2 * SEGMENT_BYTES;
    assert!(
        link.rebuilt_bytes < 2 * differing,
        "the rebuild sent {} bytes for 2 differing segments ({differing} bytes)",
        link.rebuilt_bytes
    );
    assert!(link.rebuilt_bytes >= differing, "{link:?}");
    assert_eq!(digest(&cluster.client(1), "long"), digest(&writer, "long"));
}

// Guards fencing of a deposed writer across a promotion: a writer cut off
// while another writer took the region over at the new primary keeps
// writing to the old primary; none of its writes lands on any node, and the
// final contents are those of the acknowledged writes.
#[test]
fn a_deposed_writer_lands_nothing_anywhere() {
    let cluster = Cluster::with(2, |config| config.writer_lease = Duration::from_millis(200));
    let info = create(&cluster, "w", 64, ReplicationMode::Sync);
    let old_writer = cluster.client(0);
    old_writer.raw().write_pages(&info, &[0], &page(1)).unwrap();
    // The replica is promoted while the old primary still runs (a planned
    // switchover, or an operator who believed it dead).
    let replica = cluster.client(1);
    eventually("the replica is in sync", || {
        replica.replicas("w").unwrap().in_sync
    });
    replica.promote("w", false).unwrap();
    // A new writer at the new primary.
    let new_writer = cluster.client(1);
    let new_info = new_writer
        .open_region("w", RegionOptions::default())
        .map(|region| region.info().clone())
        .unwrap();
    new_writer
        .raw()
        .write_pages(&new_info, &[0], &page(2))
        .unwrap();
    // The old writer keeps writing to the old primary: refused there (it is
    // fenced as soon as the new primary reaches it, and until then its
    // entries are refused by the new primary, so no write is acknowledged).
    let mut acknowledged = 0;
    for round in 0..50u64 {
        if old_writer
            .raw()
            .write_pages(&info, &[1], &page(100 + round))
            .is_ok()
        {
            acknowledged += 1;
        }
    }
    assert_eq!(acknowledged, 0, "a deposed primary acknowledged writes");
    eventually("the old primary follows the new one", || {
        cluster.client(0).replicas("w").unwrap().role == ReplicaRole::Replica
    });
    // Nothing of the deposed writer anywhere.
    for index in 0..2 {
        let mut back = vec![0u8; 2 * PAGE];
        cluster
            .client(index)
            .raw()
            .read_pages(&new_info_for(&cluster, index, "w"), &[0, 1], &mut back)
            .unwrap();
        assert!(
            back[..PAGE] == page(2)[..],
            "node {index}: page 0 is not the new writer's"
        );
        assert!(
            back[PAGE..].iter().all(|&b| b == 0),
            "node {index}: a deposed write landed"
        );
    }
}

/// The region's description on node `index` (ids are per node).
fn new_info_for(cluster: &Cluster, index: usize, name: &str) -> pagoda::RegionInfo {
    cluster.client(index).stat_region(name).unwrap().info
}

// Guards journal records on replicated regions: a `Remote` region's
// committed transactions reach the replicas as they reach the primary.
#[test]
fn journal_records_are_replicated() {
    let cluster = Cluster::new(2);
    create(&cluster, "j", 256, ReplicationMode::Sync);
    let writer = cluster.client(0);
    let options = RegionOptions {
        durability: pagoda::Durability::Remote,
        ..RegionOptions::default()
    };
    let region = writer.open_region("j", options).unwrap();
    for i in 0..100u64 {
        region
            .transaction(|tx| {
                tx.write_at(i * 97 % (256 * PAGE as u64 - 16), &i.to_le_bytes())?;
                tx.write_at(8 * PAGE as u64 + i * 8, &(i * 3).to_le_bytes())
            })
            .unwrap();
    }
    drop(region);
    assert_eq!(digest(&cluster.client(1), "j"), digest(&writer, "j"));
}

// Guards the client's side of a failover: an application writing through a
// `Region` handle keeps going when its primary is lost and a replica is
// promoted: the client reconnects to the replica (its fallback address),
// resumes its writer epoch there, resends what was unanswered with the
// same numbers, and every acknowledged write is on the new primary, all
// without reopening the region.
#[test]
fn a_running_application_follows_its_region_to_the_promoted_replica() {
    let mut cluster = Cluster::new(2);
    create(&cluster, "m", 256, ReplicationMode::Sync);
    let options = ClientOptions {
        timeout: REPLY_TIMEOUT,
        fallback: vec![cluster.addrs[1]],
        ..ClientOptions::default()
    };
    let client = Client::connect(cluster.addrs[0], options).unwrap();
    let region = client
        .open_region("m", RegionOptions::with_cache_bytes(16 * PAGE as u64))
        .unwrap();
    let mut model = vec![0u64; 256];
    for i in 0..300u64 {
        let page_index = i * 7 % 256;
        region
            .write_at(page_index * PAGE as u64, &page(i + 1))
            .unwrap();
        model[page_index as usize] = i + 1;
    }
    region.flush().unwrap();
    // The primary is lost; an operator promotes the replica.
    cluster.nodes[0] = None;
    let replica = cluster.client(1);
    eventually("the replica knows its primary is gone", || {
        replica.replicas("m").unwrap().in_sync
    });
    replica.promote("m", false).unwrap();
    // The application goes on through the same handle.
    for i in 300..600u64 {
        let page_index = i * 11 % 256;
        region
            .write_at(page_index * PAGE as u64, &page(i + 1))
            .unwrap();
        model[page_index as usize] = i + 1;
    }
    region.flush().unwrap();
    assert!(client.reconnects() > 0, "the client never reconnected");
    let mut back = vec![0u8; PAGE];
    for (index, &version) in model.iter().enumerate() {
        region
            .read_at(index as u64 * PAGE as u64, &mut back)
            .unwrap();
        let expected = if version == 0 {
            vec![0u8; PAGE]
        } else {
            page(version)
        };
        assert!(back == expected, "page {index} lost its last write");
    }
    // And the new primary holds the same as the application sees.
    drop(region);
    let fresh = cluster.client(1);
    let info = fresh.stat_region("m").unwrap().info;
    for (index, &version) in model.iter().enumerate().filter(|(_, v)| **v != 0) {
        fresh
            .raw()
            .read_pages(&info, &[index as u64], &mut back)
            .unwrap();
        assert!(
            back == page(version),
            "page {index} is not on the new primary"
        );
    }
}

// Guards deletion: deleting a replicated region at its primary deletes its
// replicas too.
#[test]
fn deleting_at_the_primary_deletes_the_replicas() {
    let cluster = Cluster::new(3);
    create(&cluster, "gone", 16, ReplicationMode::Sync);
    cluster.client(0).delete_region("gone").unwrap();
    for index in 0..3 {
        let error = cluster.client(index).stat_region("gone").unwrap_err();
        assert_eq!(
            error.code(),
            Some(ErrorCode::RegionNotFound),
            "node {index}"
        );
    }
}

// Guards catch-up of a restarted replica from the log (C18): a replica
// whose node restarts reloads its primary's latest checkpoint from the
// storage they share, knows the log position that checkpoint holds, and
// receives only the writes made since (here, those made while it was
// down): fewer bytes than twice those, and no rebuild.
#[test]
fn a_restarted_replica_catches_up_from_the_log_after_its_primarys_checkpoint() {
    let storage = tempfile::tempdir().unwrap();
    let shared = storage.path().to_path_buf();
    let mut cluster = Cluster::with(2, |config| {
        config.storage = Some(pagoda_node::StorageConfig::Dir(shared.clone()))
    });
    let info = create(&cluster, "c", 2048, ReplicationMode::Sync);
    let writer = cluster.client(0);
    for chunk in 0..16u64 {
        let pages: Vec<u64> = (chunk * 128..chunk * 128 + 64).collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| page(p)).collect();
        writer.raw().write_pages(&info, &pages, &data).unwrap();
    }
    let taken = writer.checkpoint("c", false).unwrap();
    // The replica learns which checkpoint covers it (with the next probe).
    let replica = cluster.client(1);
    eventually("the replica knows the checkpoint", || {
        let set = replica.replicas("c").unwrap();
        set.checkpoint == taken.number && set.checkpoint_lsn > 0 && set.checkpoint_lsn <= set.lsn
    });
    drop(replica);
    // The replica's node stops (its RAM copy goes with it) ...
    cluster.nodes[1] = None;
    eventually("the primary notices", || !link_of(&writer, "c").in_sync);
    let sent_before = link_of(&writer, "c").sent_bytes;
    // ... while writes go on.
    let mut written = 0u64;
    for round in 0..40u64 {
        let pages: Vec<u64> = (0..8).map(|i| (round * 37 + i * 5) % 2048).collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| page(p * 7 + round)).collect();
        writer.raw().write_pages(&info, &pages, &data).unwrap();
        written += data.len() as u64;
    }
    let addr = cluster.addrs[1];
    let dir = cluster.dirs[1].path().to_path_buf();
    let shared = storage.path().to_path_buf();
    cluster.nodes[1] = Some(
        Node::start(config(&dir, |config| {
            config.listen = addr;
            config.storage = Some(pagoda_node::StorageConfig::Dir(shared));
        }))
        .expect("the replica's node restarts"),
    );
    eventually("the restarted replica is in sync", || {
        link_of(&writer, "c").in_sync
    });
    let link = link_of(&writer, "c");
    assert_eq!(link.rebuilds, 0, "the replica was rebuilt: {link:?}");
    let sent = link.sent_bytes - sent_before;
    assert!(
        sent < 2 * written,
        "catch-up sent {sent} bytes for {written} written while the replica was down"
    );
    assert_eq!(digest(&cluster.client(1), "c"), digest(&writer, "c"));
}

//! Clients of a cluster (`Client::connect_cluster`), against nodes in this
//! process on loopback and the embedded coordinator in a temporary
//! directory: regions are found through their records, a workload follows
//! its region to a promoted replica without an error, a second writer is
//! kept out while the first holds the writer lease, and a host that loses
//! its lease stops writing before the coordinator could let another in.
//!
//! The tests write the region records they need themselves (creating or
//! updating them), so they hold whether or not the nodes keep records of
//! their own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagoda::pagoda_cluster::{
    self, ClusterError, Coordinator, LeaseId, NodeRecord, RegionRecord, Revision, Versioned,
    WriterRecord,
};
use pagoda::{
    Client, ClientError, ClientOptions, ErrorCode, RegionOptions, ReplicaRole, ReplicationMode,
};
use pagoda_node::{Node, NodeConfig};

const PAGE: usize = 4096;
const MIB: u64 = 1024 * 1024;
/// The bound on any wait in these tests.
const WAIT_MAX: Duration = Duration::from_secs(30);

fn page(seed: u64) -> Vec<u8> {
    (0..PAGE as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) as u8)
        .collect()
}

/// Waits (bounded) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Nodes sharing an embedded coordinator in a temporary directory.
struct Cluster {
    nodes: Vec<Option<Node>>,
    addrs: Vec<SocketAddr>,
    _dirs: Vec<tempfile::TempDir>,
    coordinator_dir: tempfile::TempDir,
}

impl Cluster {
    fn new(count: usize) -> Cluster {
        let coordinator_dir = tempfile::tempdir().unwrap();
        let endpoint = format!("embedded:{}", coordinator_dir.path().display());
        let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<Option<Node>> = dirs
            .iter()
            .map(|dir| {
                let mut config = NodeConfig::new(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    64 * MIB,
                    dir.path().to_path_buf(),
                );
                config.replica_timeout = Duration::from_millis(1000);
                config.coordinator = Some(endpoint.clone());
                Some(Node::start(config).expect("node starts"))
            })
            .collect();
        let addrs = nodes
            .iter()
            .map(|node| node.as_ref().unwrap().local_addr())
            .collect();
        Cluster {
            nodes,
            addrs,
            _dirs: dirs,
            coordinator_dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("embedded:{}", self.coordinator_dir.path().display())
    }

    fn coordinator(&self) -> Arc<dyn Coordinator> {
        pagoda_cluster::connect(&self.endpoint()).expect("coordinator opens")
    }

    /// A plain client of node `index`.
    fn client(&self, index: usize) -> Client {
        Client::connect(self.addrs[index], ClientOptions::default()).expect("client connects")
    }

    /// A cluster client named `name`.
    fn cluster_client(&self, name: &str) -> Client {
        Client::connect_cluster(&self.endpoint(), options(name)).expect("cluster client connects")
    }
}

fn options(name: &str) -> ClientOptions {
    ClientOptions {
        client_name: name.into(),
        timeout: Duration::from_secs(10),
        reconnect_for: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// Makes region `name`'s record name `primary` (with `replicas`, all in
/// sync), creating it or replacing another one; returns the record.
fn record(
    coordinator: &dyn Coordinator,
    name: &str,
    size: u64,
    primary: SocketAddr,
    replicas: &[SocketAddr],
) -> RegionRecord {
    let replicas: Vec<String> = replicas.iter().map(ToString::to_string).collect();
    for _ in 0..100 {
        let existing = coordinator.region(name).unwrap();
        let wanted = RegionRecord {
            name: name.into(),
            size,
            mode: if replicas.is_empty() { "solo" } else { "sync" }.into(),
            primary: primary.to_string(),
            replicas: replicas.clone(),
            in_sync: replicas.clone(),
            primary_epoch: existing.as_ref().map_or(1, |e| e.value.primary_epoch),
        };
        let outcome = match &existing {
            None => coordinator.create_region(&wanted).map(|_| ()),
            Some(existing) if existing.value.primary == wanted.primary => {
                return existing.value.clone();
            }
            Some(existing) => coordinator
                .update_region(&wanted, existing.revision)
                .map(|_| ()),
        };
        match outcome {
            Ok(()) => return wanted,
            Err(ClusterError::Exists(_) | ClusterError::Conflict(_)) => continue,
            Err(error) => panic!("writing the record of {name}: {error}"),
        }
    }
    panic!("the record of {name} kept changing");
}

// Guards finding regions through the coordinator: a cluster client opens
// each region on the primary its record names, regions on two different
// primaries through one client, and reads back what it wrote.
#[test]
fn regions_are_opened_on_the_primary_their_record_names() {
    let cluster = Cluster::new(2);
    let coordinator = cluster.coordinator();
    for (index, name) in ["on-a", "on-b"].iter().enumerate() {
        cluster
            .client(index)
            .create_region(name, MIB, PAGE as u32)
            .unwrap();
        record(coordinator.as_ref(), name, MIB, cluster.addrs[index], &[]);
    }
    let client = cluster.cluster_client("finder");
    let on_a = client
        .open_region("on-a", RegionOptions::default())
        .unwrap();
    let on_b = client
        .open_region("on-b", RegionOptions::default())
        .unwrap();
    assert_eq!(on_a.peer(), cluster.addrs[0]);
    assert_eq!(on_b.peer(), cluster.addrs[1]);
    on_a.write_at(0, &page(1)).unwrap();
    on_b.write_at(0, &page(2)).unwrap();
    on_a.flush().unwrap();
    on_b.flush().unwrap();
    // What was written is on the node the record names, and only there.
    let mut back = vec![0u8; PAGE];
    for (index, name, seed) in [(0, "on-a", 1), (1, "on-b", 2)] {
        let plain = cluster.client(index);
        let info = plain.stat_region(name).unwrap().info;
        plain.raw().read_pages(&info, &[0], &mut back).unwrap();
        assert!(back == page(seed), "{name} is not on its primary");
    }
    // A read-only open goes there too.
    let reader = cluster.cluster_client("reader");
    let read_only = reader
        .open_region_read_only("on-b", RegionOptions::default())
        .unwrap();
    assert_eq!(read_only.peer(), cluster.addrs[1]);
    read_only.read_at(0, &mut back).unwrap();
    assert!(back == page(2));
}

/// Promotes node `to`'s replica of `name` (unless the nodes did already)
/// and makes the record name it, at the next primary epoch: a failover as
/// the nodes' agents, or an operator, make it.
fn fail_over(cluster: &Cluster, coordinator: &dyn Coordinator, name: &str, to: usize) {
    let replica = cluster.client(to);
    eventually("the replica knows its primary is gone", || {
        let set = replica.replicas(name).unwrap();
        set.role == ReplicaRole::Primary || set.in_sync
    });
    if let Err(error) = replica.promote(name, false) {
        // The nodes' own failover may have promoted it meanwhile.
        let set = replica.replicas(name).unwrap();
        assert_eq!(set.role, ReplicaRole::Primary, "promotion failed: {error}");
    }
    let primary = cluster.addrs[to].to_string();
    loop {
        let Versioned { value, revision } = coordinator.region(name).unwrap().unwrap();
        if value.primary == primary {
            return;
        }
        let moved = RegionRecord {
            primary: primary.clone(),
            primary_epoch: value.primary_epoch + 1,
            ..value
        };
        match coordinator.update_region(&moved, revision) {
            Ok(_) => return,
            Err(ClusterError::Conflict(_)) => continue,
            Err(error) => panic!("updating the record: {error}"),
        }
    }
}

// Guards failover as the application sees it: a thread writing and reading
// through a region handle of a cluster client (with a small cache, so
// pages go to the node all the time) keeps going, without an error, when
// its primary is lost and the record moves to the promoted replica (no
// fallback address is configured: only the record says where to go); every
// write it made is on the new primary.
#[test]
fn a_workload_follows_its_region_to_the_promoted_replica() {
    let mut cluster = Cluster::new(2);
    let coordinator = cluster.coordinator();
    const PAGES: u64 = 256;
    cluster
        .client(0)
        .create_replicated_region(
            "m",
            PAGES * PAGE as u64,
            PAGE as u32,
            &[&cluster.addrs[1].to_string()],
            ReplicationMode::Sync,
        )
        .unwrap();
    record(
        coordinator.as_ref(),
        "m",
        PAGES * PAGE as u64,
        cluster.addrs[0],
        &[cluster.addrs[1]],
    );
    let client = cluster.cluster_client("workload");
    let region = Arc::new(
        client
            .open_region("m", RegionOptions::with_cache_bytes(8 * PAGE as u64))
            .unwrap(),
    );
    assert_eq!(region.peer(), cluster.addrs[0]);
    let model = Arc::new(Mutex::new(vec![0u64; PAGES as usize]));
    let writes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (region, model, writes, stop) =
            (region.clone(), model.clone(), writes.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(), ClientError> {
            let mut back = vec![0u8; PAGE];
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                let index = i * 7 % PAGES;
                region.write_at(index * PAGE as u64, &page(i))?;
                model.lock().unwrap()[index as usize] = i;
                // A read of a page written a while ago (not in the cache).
                let old = (i * 7 + 3 * 7) % PAGES;
                region.read_at(old * PAGE as u64, &mut back)?;
                let version = model.lock().unwrap()[old as usize];
                let expected = if version == 0 {
                    vec![0u8; PAGE]
                } else {
                    page(version)
                };
                assert!(back == expected, "page {old} read back wrong");
                if i.is_multiple_of(64) {
                    region.flush()?;
                }
                writes.store(i, Ordering::Release);
            }
            region.flush()
        })
    };
    eventually("the workload wrote", || {
        writes.load(Ordering::Acquire) > 500
    });
    // The primary is lost; its replica is promoted and the record moves.
    cluster.nodes[0] = None;
    let before = writes.load(Ordering::Acquire);
    fail_over(&cluster, coordinator.as_ref(), "m", 1);
    eventually("the workload wrote on the new primary", || {
        writes.load(Ordering::Acquire) > before + 500 || worker.is_finished()
    });
    stop.store(true, Ordering::Release);
    worker
        .join()
        .unwrap()
        .expect("the workload saw an error during the failover");
    assert_eq!(region.peer(), cluster.addrs[1], "the region did not move");
    assert!(region.reconnects() > 0);
    // The new primary holds every write.
    let fresh = cluster.client(1);
    let info = fresh.stat_region("m").unwrap().info;
    let mut back = vec![0u8; PAGE];
    for (index, &version) in model.lock().unwrap().iter().enumerate() {
        if version == 0 {
            continue;
        }
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

// Guards one writer at a time across hosts: while one client holds the
// region's writer lease, another's write open is refused naming the
// holder (with the `WriterBusy` code); once the first lease is revoked in
// the coordinator, the second gets in (the first noticed, and gave its
// writer role on the node back), and the first's writes are refused with
// `LeaseLost`; reads through it go on. Dropping a region releases its key.
#[test]
fn a_second_writer_gets_in_once_the_first_lease_is_gone() {
    let cluster = Cluster::new(1);
    let coordinator = cluster.coordinator();
    cluster
        .client(0)
        .create_region("w", MIB, PAGE as u32)
        .unwrap();
    record(coordinator.as_ref(), "w", MIB, cluster.addrs[0], &[]);
    let first = cluster.cluster_client("host-one");
    let region = first.open_region("w", RegionOptions::default()).unwrap();
    region.write_at(0, &page(1)).unwrap();
    region.flush().unwrap();
    let holder = coordinator.writer("w").unwrap().expect("the key is held");
    assert!(holder.holder.contains("host-one"), "{holder:?}");

    let second = cluster.cluster_client("host-two");
    let error = second
        .open_region("w", RegionOptions::default())
        .expect_err("a second writer got in");
    assert_eq!(error.code(), Some(ErrorCode::WriterBusy), "{error}");
    assert!(
        matches!(&error, ClientError::WriterBusy { holder, .. } if holder.contains("host-one")),
        "{error}"
    );
    // A reader is welcome meanwhile.
    let reader = second
        .open_region_read_only("w", RegionOptions::default())
        .unwrap();
    drop(reader);

    let lease = first.writer_lease().expect("the first holds a lease");
    coordinator.revoke_lease(lease).unwrap();
    let began = Instant::now();
    let taken = second
        .open_region("w", RegionOptions::default())
        .expect("the second writer gets in once the first lease is gone");
    println!(
        "second writer in {:?} after the first lease was revoked",
        began.elapsed()
    );
    let mut back = vec![0u8; PAGE];
    taken.read_at(0, &mut back).unwrap();
    assert!(back == page(1), "the first writer's flushed write is lost");
    taken.write_at(PAGE as u64, &page(2)).unwrap();
    taken.flush().unwrap();

    let error = region
        .write_at(0, &page(3))
        .expect_err("the first host wrote without its lease");
    match &error {
        ClientError::LeaseLost {
            region,
            coordinator,
            ..
        } => {
            assert_eq!(region, "w");
            assert_eq!(*coordinator, cluster.endpoint());
        }
        other => panic!("expected LeaseLost, got {other}"),
    }
    // Reads go on through the first handle.
    region.read_at(PAGE as u64, &mut back).unwrap();
    drop(region);
    drop(first);

    assert!(coordinator.writer("w").unwrap().is_some());
    drop(taken);
    assert_eq!(
        coordinator.writer("w").unwrap(),
        None,
        "dropping the region left its writer key"
    );
}

/// A coordinator that stops answering when told to (a host cut off from
/// it), in front of a real one.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn Coordinator>,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), ClusterError> {
        if self.down.load(Ordering::Acquire) {
            return Err(ClusterError::Unavailable {
                endpoint: self.inner.endpoint(),
                message: "cut off (test)".into(),
            });
        }
        Ok(())
    }
}

impl Coordinator for Flaky {
    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }
    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, ClusterError> {
        self.check()?;
        self.inner.grant_lease(ttl)
    }
    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, ClusterError> {
        self.check()?;
        self.inner.keep_alive(lease)
    }
    fn revoke_lease(&self, lease: LeaseId) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.revoke_lease(lease)
    }
    fn put_node(&self, record: &NodeRecord, lease: LeaseId) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.put_node(record, lease)
    }
    fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        self.check()?;
        self.inner.nodes()
    }
    fn create_region(&self, record: &RegionRecord) -> Result<Revision, ClusterError> {
        self.check()?;
        self.inner.create_region(record)
    }
    fn region(&self, name: &str) -> Result<Option<Versioned<RegionRecord>>, ClusterError> {
        self.check()?;
        self.inner.region(name)
    }
    fn regions(&self) -> Result<Vec<Versioned<RegionRecord>>, ClusterError> {
        self.check()?;
        self.inner.regions()
    }
    fn update_region(
        &self,
        record: &RegionRecord,
        expected: Revision,
    ) -> Result<Revision, ClusterError> {
        self.check()?;
        self.inner.update_region(record, expected)
    }
    fn delete_region(&self, name: &str) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.delete_region(name)
    }
    fn claim_writer(
        &self,
        region: &str,
        record: &WriterRecord,
        lease: LeaseId,
    ) -> Result<Option<WriterRecord>, ClusterError> {
        self.check()?;
        self.inner.claim_writer(region, record, lease)
    }
    fn release_writer(&self, region: &str, lease: LeaseId) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.release_writer(region, lease)
    }
    fn writer(&self, region: &str) -> Result<Option<WriterRecord>, ClusterError> {
        self.check()?;
        self.inner.writer(region)
    }
}

// Guards the lease's local deadline: a host cut off from the coordinator
// refuses writes (`LeaseLost`, naming the region and the coordinator)
// before the coordinator lets another host claim the region, within the
// lease of the cut; it gives its writer role on the node back, so the
// other host's open is not kept waiting for the node's writer lease.
#[test]
fn a_host_cut_off_from_the_coordinator_stops_writing_before_its_lease_lapses() {
    let cluster = Cluster::new(1);
    let coordinator = cluster.coordinator();
    cluster
        .client(0)
        .create_region("l", MIB, PAGE as u32)
        .unwrap();
    record(coordinator.as_ref(), "l", MIB, cluster.addrs[0], &[]);
    let flaky = Arc::new(Flaky {
        inner: coordinator.clone(),
        down: AtomicBool::new(false),
    });
    let lease = Duration::from_secs(2);
    let first = Client::connect_coordinator(
        flaky.clone(),
        ClientOptions {
            lease,
            ..options("cut-off")
        },
    )
    .unwrap();
    let region = first.open_region("l", RegionOptions::default()).unwrap();
    region.write_at(0, &page(1)).unwrap();
    region.flush().unwrap();

    // Another host polls the coordinator for the key meanwhile.
    let other_lease = coordinator.grant_lease(Duration::from_secs(60)).unwrap();
    let other = WriterRecord {
        holder: "the other host".into(),
        lease_ms: 60_000,
    };
    assert!(
        coordinator
            .claim_writer("l", &other, other_lease)
            .unwrap()
            .is_some()
    );

    flaky.down.store(true, Ordering::Release);
    let cut = Instant::now();
    let (mut refused, mut claimable) = (None, None);
    while refused.is_none() || claimable.is_none() {
        assert!(cut.elapsed() < WAIT_MAX, "nothing happened after the cut");
        if refused.is_none()
            && let Err(error) = region.write_at(PAGE as u64, &page(2))
        {
            refused = Some((cut.elapsed(), error));
        }
        if claimable.is_none()
            && coordinator
                .claim_writer("l", &other, other_lease)
                .unwrap()
                .is_none()
        {
            claimable = Some(cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (refused, error) = refused.unwrap();
    let claimable = claimable.unwrap();
    println!("writes refused {refused:?} after the cut; the key was claimable after {claimable:?}");
    assert!(
        refused < claimable,
        "the host wrote until {refused:?}, after the coordinator let the key go at {claimable:?}"
    );
    assert!(
        refused <= lease,
        "writes refused only {refused:?} after the cut"
    );
    match &error {
        ClientError::LeaseLost {
            region,
            coordinator,
            ..
        } => {
            assert_eq!(region, "l");
            assert_eq!(*coordinator, cluster.endpoint());
        }
        other => panic!("expected LeaseLost, got {other}"),
    }
    // Refused for good, even once the coordinator is back.
    flaky.down.store(false, Ordering::Release);
    assert!(matches!(
        region.write_at(0, &page(3)),
        Err(ClientError::LeaseLost { .. })
    ));
    assert!(matches!(
        region.flush(),
        Ok(()) | Err(ClientError::LeaseLost { .. })
    ));

    // The other host opens the region at once: the cut-off one gave its
    // writer role on the node back.
    coordinator.revoke_lease(other_lease).unwrap();
    let second = cluster.cluster_client("the-other-host");
    let began = Instant::now();
    let taken = second.open_region("l", RegionOptions::default()).unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the second open waited {:?} for the node's writer role",
        began.elapsed()
    );
    let mut back = vec![0u8; PAGE];
    taken.read_at(0, &mut back).unwrap();
    assert!(back == page(1));
    taken.read_at(PAGE as u64, &mut back).unwrap();
    assert!(back == page(2) || back == vec![0u8; PAGE]);
    drop(region);
}

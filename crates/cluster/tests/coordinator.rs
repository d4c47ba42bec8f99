//! The `Coordinator` contract, run against both implementations: the
//! embedded one in a temporary directory and the etcd one against a real
//! etcd server (`pagoda_cluster::testing::Etcd`). Every contract test runs
//! twice, as `embedded::NAME` and `etcd::NAME`; the etcd-only tests (etcd
//! stopped and restarted) follow.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pagoda_cluster::testing::Etcd;
use pagoda_cluster::{
    ClusterError, Coordinator, LeaseId, NodeRecord, RegionRecord, Versioned, WriterRecord,
};

/// One coordinator call, its answer dropped, for the tests that time them.
type Call<'a> = Box<dyn Fn() -> Result<(), ClusterError> + 'a>;

/// A store to run the contract against; each test gets its own.
enum Store {
    Embedded(tempfile::TempDir),
    Etcd(Etcd),
}

impl Store {
    fn embedded() -> Store {
        Store::Embedded(tempfile::tempdir().unwrap())
    }

    fn etcd() -> Store {
        Store::Etcd(Etcd::start())
    }

    fn endpoint(&self) -> String {
        match self {
            Store::Embedded(dir) => format!("embedded:{}", dir.path().display()),
            Store::Etcd(etcd) => etcd.endpoint(),
        }
    }

    /// A coordinator, through `connect` as the node and the CLI get one.
    fn connect(&self) -> Arc<dyn Coordinator> {
        pagoda_cluster::connect(&self.endpoint()).unwrap()
    }

    /// Replaces what the store holds for region `name` with bytes that are
    /// no record.
    fn corrupt_region(&self, name: &str) {
        match self {
            // The embedded store is one file: damaging it damages all.
            Store::Embedded(dir) => std::fs::write(
                dir.path().join(pagoda_cluster::embedded::FILE_NAME),
                b"{\"revision\": 3, \"regions\": [garbage",
            )
            .unwrap(),
            Store::Etcd(etcd) => raw_put(etcd, &format!("pagoda/regions/{name}"), b"garbage"),
        }
    }
}

/// Puts a key with etcd's own client, around the coordinator.
fn raw_put(etcd: &Etcd, key: &str, value: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.address()], None)
            .await
            .unwrap();
        client.put(key, value, None).await.unwrap();
    });
}

fn region(name: &str, primary: &str) -> RegionRecord {
    RegionRecord {
        name: name.to_owned(),
        size: 1 << 30,
        mode: pagoda_cluster::MODE_SYNC.to_owned(),
        primary: primary.to_owned(),
        replicas: vec!["10.0.0.2:7000".to_owned()],
        in_sync: vec!["10.0.0.2:7000".to_owned()],
        primary_epoch: 1,
    }
}

fn node(addr: &str) -> NodeRecord {
    NodeRecord {
        addr: addr.to_owned(),
        capacity_bytes: 64 << 30,
        free_bytes: 32 << 30,
        lease_ms: 1_000,
        version: "test".to_owned(),
    }
}

fn writer(holder: &str) -> WriterRecord {
    WriterRecord {
        holder: holder.to_owned(),
        lease_ms: 1_000,
    }
}

fn node_addrs(coordinator: &dyn Coordinator) -> Vec<String> {
    coordinator
        .nodes()
        .unwrap()
        .into_iter()
        .map(|node| node.addr)
        .collect()
}

/// Creates a region of each name, led by 10.0.0.1:7000.
fn create_regions(coordinator: &dyn Coordinator, names: &[&str]) {
    for name in names {
        coordinator
            .create_region(&region(name, "10.0.0.1:7000"))
            .unwrap();
    }
}

fn grant(coordinator: &dyn Coordinator) -> LeaseId {
    coordinator.grant_lease(Duration::from_secs(1)).unwrap()
}

// Guards against a second create overwriting a region, and against a
// record or its revision coming back other than written.
fn create_and_exists(store: &Store) {
    let coordinator = store.connect();
    let record = region("alpha", "10.0.0.1:7000");
    let revision = coordinator.create_region(&record).unwrap();
    assert!(revision > 0, "revision {revision}");
    assert_eq!(
        coordinator.region("alpha").unwrap(),
        Some(Versioned {
            value: record.clone(),
            revision
        })
    );

    let other = region("alpha", "10.0.0.9:7000");
    let error = coordinator.create_region(&other).unwrap_err();
    assert!(matches!(error, ClusterError::Exists(_)), "{error:?}");
    assert_eq!(coordinator.region("alpha").unwrap().unwrap().value, record);
    assert_eq!(coordinator.region("beta").unwrap(), None);
}

// Guards the compare-and-swap: the right revision wins, a stale one is a
// Conflict that changes nothing, and a missing record is NotFound (also
// with revision 0, which an absent etcd key would match).
fn update_compares_revisions(store: &Store) {
    let coordinator = store.connect();
    let first = region("alpha", "10.0.0.1:7000");
    let created = coordinator.create_region(&first).unwrap();

    let mut second = first.clone();
    second.primary = "10.0.0.2:7000".to_owned();
    second.primary_epoch = 2;
    let updated = coordinator.update_region(&second, created).unwrap();
    assert!(updated > created, "{updated} after {created}");
    assert_eq!(
        coordinator.region("alpha").unwrap(),
        Some(Versioned {
            value: second.clone(),
            revision: updated
        })
    );

    let mut stale = first.clone();
    stale.primary_epoch = 3;
    let error = coordinator.update_region(&stale, created).unwrap_err();
    assert!(matches!(error, ClusterError::Conflict(_)), "{error:?}");
    assert_eq!(
        coordinator.region("alpha").unwrap().unwrap(),
        Versioned {
            value: second,
            revision: updated
        }
    );

    for expected in [0, created, updated] {
        let error = coordinator
            .update_region(&region("missing", "10.0.0.1:7000"), expected)
            .unwrap_err();
        assert!(matches!(error, ClusterError::NotFound(_)), "{error:?}");
    }
    assert_eq!(coordinator.region("missing").unwrap(), None);
}

// Guards delete: the record and its writer key go, and deleting what is
// not there is no error.
fn delete_removes_region_and_writer(store: &Store) {
    let coordinator = store.connect();
    create_regions(&*coordinator, &["alpha", "beta"]);
    let lease = grant(&*coordinator);
    assert_eq!(
        coordinator
            .claim_writer("alpha", &writer("app-1"), lease)
            .unwrap(),
        None
    );
    assert_eq!(coordinator.writer("alpha").unwrap(), Some(writer("app-1")));

    coordinator.delete_region("alpha").unwrap();
    assert_eq!(coordinator.region("alpha").unwrap(), None);
    assert_eq!(coordinator.writer("alpha").unwrap(), None);
    let names: Vec<String> = coordinator
        .regions()
        .unwrap()
        .into_iter()
        .map(|r| r.value.name)
        .collect();
    assert_eq!(names, ["beta"]);
    coordinator.delete_region("alpha").unwrap();
    coordinator.delete_region("never").unwrap();
    // The name is free again.
    coordinator
        .create_region(&region("alpha", "10.0.0.3:7000"))
        .unwrap();
}

// Guards the listing: every region, by name, each with the revision a
// read of it gives.
fn regions_are_listed_by_name(store: &Store) {
    let coordinator = store.connect();
    assert_eq!(coordinator.regions().unwrap(), []);
    create_regions(&*coordinator, &["charlie", "alpha", "bravo"]);
    let listed = coordinator.regions().unwrap();
    let names: Vec<&str> = listed.iter().map(|r| r.value.name.as_str()).collect();
    assert_eq!(names, ["alpha", "bravo", "charlie"]);
    for record in &listed {
        assert_eq!(
            coordinator.region(&record.value.name).unwrap().as_ref(),
            Some(record)
        );
    }
    // Other kinds of keys are not regions.
    let lease = grant(&*coordinator);
    coordinator.put_node(&node("10.0.0.1:7000"), lease).unwrap();
    coordinator
        .claim_writer("alpha", &writer("app-1"), lease)
        .unwrap();
    assert_eq!(coordinator.regions().unwrap(), listed);
}

// Guards node liveness: a node whose lease is not renewed disappears soon
// after its TTL, one whose lease is renewed stays, and the lapsed lease can
// neither be renewed nor carry a new key.
fn nodes_live_and_die_with_their_lease(store: &Store) {
    let coordinator = store.connect();
    let lapsing = grant(&*coordinator);
    // The renewed lease outlives the lapsing one by a margin: every call
    // here syncs a file, and a loaded machine can stall a sync for most of
    // a second. The loop runs well past its TTL, so it survives only by
    // being renewed.
    let renewed_ttl = Duration::from_secs(3);
    let renewed = coordinator.grant_lease(renewed_ttl).unwrap();
    // A 1 s lease is a 1 s lease (etcd raises TTLs below its minimum).
    assert_eq!(
        coordinator.keep_alive(lapsing).unwrap(),
        Duration::from_secs(1)
    );
    let start = Instant::now();
    coordinator
        .put_node(&node("10.0.0.1:7000"), lapsing)
        .unwrap();
    coordinator
        .put_node(&node("10.0.0.2:7000"), renewed)
        .unwrap();
    assert_eq!(
        node_addrs(&*coordinator),
        ["10.0.0.1:7000", "10.0.0.2:7000"]
    );
    assert_eq!(coordinator.nodes().unwrap()[0], node("10.0.0.1:7000"));

    // Bounds that hold however slow each call is: the lapsed node is
    // first missing from a listing that ended at least 0.9 s after the
    // lease began, and no listing that began after 2.5 s still has it.
    let mut gone_after = None;
    let mut last_seen_from = Duration::ZERO;
    while start.elapsed() < renewed_ttl + Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(200));
        coordinator.keep_alive(renewed).unwrap();
        let listed_from = start.elapsed();
        let addrs = node_addrs(&*coordinator);
        let listed_by = start.elapsed();
        assert!(
            addrs.contains(&"10.0.0.2:7000".to_owned()),
            "the renewed node vanished at {listed_by:?}: {addrs:?}"
        );
        if addrs.contains(&"10.0.0.1:7000".to_owned()) {
            last_seen_from = listed_from;
        } else if gone_after.is_none() {
            gone_after = Some(listed_by);
        }
    }
    let gone_after = gone_after.expect("the node whose lease lapsed is still listed after 5 s");
    assert!(
        gone_after >= Duration::from_millis(900),
        "the lapsed node went after {gone_after:?}"
    );
    assert!(
        last_seen_from <= Duration::from_millis(2_500),
        "the lapsed node was still listed by a listing begun at {last_seen_from:?}"
    );

    let error = coordinator.keep_alive(lapsing).unwrap_err();
    assert!(
        matches!(error, ClusterError::LeaseExpired(id) if id == lapsing),
        "{error:?}"
    );
    let error = coordinator
        .put_node(&node("10.0.0.3:7000"), lapsing)
        .unwrap_err();
    assert!(
        matches!(error, ClusterError::LeaseExpired(id) if id == lapsing),
        "{error:?}"
    );
    assert_eq!(node_addrs(&*coordinator), ["10.0.0.2:7000"]);
    // Re-registering under a live lease updates the record.
    let mut updated = node("10.0.0.2:7000");
    updated.free_bytes = 1;
    coordinator.put_node(&updated, renewed).unwrap();
    assert_eq!(coordinator.nodes().unwrap(), [updated]);
}

// Guards revoke: the lease's keys go at once, the lease cannot be renewed,
// and revoking it again is no error.
fn revoke_removes_keys(store: &Store) {
    let coordinator = store.connect();
    let lease = coordinator.grant_lease(Duration::from_secs(30)).unwrap();
    let other = coordinator.grant_lease(Duration::from_secs(30)).unwrap();
    coordinator.put_node(&node("10.0.0.1:7000"), lease).unwrap();
    coordinator.put_node(&node("10.0.0.2:7000"), other).unwrap();
    coordinator
        .claim_writer("alpha", &writer("app-1"), lease)
        .unwrap();
    coordinator
        .claim_writer("beta", &writer("app-2"), other)
        .unwrap();

    coordinator.revoke_lease(lease).unwrap();
    assert_eq!(node_addrs(&*coordinator), ["10.0.0.2:7000"]);
    assert_eq!(coordinator.writer("alpha").unwrap(), None);
    assert_eq!(coordinator.writer("beta").unwrap(), Some(writer("app-2")));
    let error = coordinator.keep_alive(lease).unwrap_err();
    assert!(matches!(error, ClusterError::LeaseExpired(_)), "{error:?}");
    coordinator.revoke_lease(lease).unwrap();
    assert_eq!(
        coordinator.keep_alive(other).unwrap(),
        Duration::from_secs(30)
    );
}

// Guards the writer role: one lease holds it, the holder can re-claim
// (refreshing its record), another lease is told who holds it, a non-holder
// cannot release it, and it is free once the holder's lease ends.
fn writer_claims_are_exclusive(store: &Store) {
    let coordinator = store.connect();
    let first = coordinator.grant_lease(Duration::from_secs(30)).unwrap();
    let second = coordinator.grant_lease(Duration::from_secs(30)).unwrap();
    assert_eq!(coordinator.writer("alpha").unwrap(), None);
    assert_eq!(
        coordinator
            .claim_writer("alpha", &writer("app-1"), first)
            .unwrap(),
        None
    );
    let refreshed = WriterRecord {
        holder: "app-1".to_owned(),
        lease_ms: 2_000,
    };
    assert_eq!(
        coordinator
            .claim_writer("alpha", &refreshed, first)
            .unwrap(),
        None
    );
    assert_eq!(
        coordinator.writer("alpha").unwrap(),
        Some(refreshed.clone())
    );
    assert_eq!(
        coordinator
            .claim_writer("alpha", &writer("app-2"), second)
            .unwrap(),
        Some(refreshed.clone())
    );
    assert_eq!(
        coordinator.writer("alpha").unwrap(),
        Some(refreshed.clone())
    );

    coordinator.release_writer("alpha", second).unwrap();
    assert_eq!(
        coordinator.writer("alpha").unwrap(),
        Some(refreshed.clone())
    );
    coordinator.release_writer("alpha", first).unwrap();
    assert_eq!(coordinator.writer("alpha").unwrap(), None);

    // Claimed again by the first, free for the second once the first's
    // lease is revoked.
    assert_eq!(
        coordinator
            .claim_writer("alpha", &writer("app-1"), first)
            .unwrap(),
        None
    );
    coordinator.revoke_lease(first).unwrap();
    assert_eq!(
        coordinator
            .claim_writer("alpha", &writer("app-2"), second)
            .unwrap(),
        None
    );
    assert_eq!(coordinator.writer("alpha").unwrap(), Some(writer("app-2")));
    let error = coordinator
        .claim_writer("beta", &writer("app-1"), first)
        .unwrap_err();
    assert!(
        matches!(error, ClusterError::LeaseExpired(id) if id == first),
        "{error:?}"
    );
    assert_eq!(coordinator.writer("beta").unwrap(), None);
}

// Guards against a damaged record being taken for a valid one; in etcd,
// where records are separate keys, a listing skips it and keeps the others
// (one bad record must not hide a cluster's regions from failover).
fn corrupt_records_are_reported(store: &Store) {
    let coordinator = store.connect();
    create_regions(&*coordinator, &["alpha", "beta"]);
    store.corrupt_region("alpha");
    let error = coordinator.region("alpha").unwrap_err();
    assert!(
        matches!(&error, ClusterError::Corrupt { key, .. } if key.contains("regions/alpha") || key.ends_with(pagoda_cluster::embedded::FILE_NAME)),
        "{error:?}"
    );
    match store {
        // One file: nothing in it can be trusted.
        Store::Embedded(_) => {
            let error = coordinator.regions().unwrap_err();
            assert!(matches!(error, ClusterError::Corrupt { .. }), "{error:?}");
        }
        Store::Etcd(_) => {
            let names: Vec<String> = coordinator
                .regions()
                .unwrap()
                .into_iter()
                .map(|r| r.value.name)
                .collect();
            assert_eq!(names, vec!["beta".to_owned()]);
        }
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Store::embedded());
                }
            )*
        }
        mod etcd {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Store::etcd());
                }
            )*
        }
    };
}

contract!(
    create_and_exists,
    update_compares_revisions,
    delete_removes_region_and_writer,
    regions_are_listed_by_name,
    nodes_live_and_die_with_their_lease,
    revoke_removes_keys,
    writer_claims_are_exclusive,
    corrupt_records_are_reported,
);

// Guards against a malformed endpoint being accepted, or failing only at
// the first call.
#[test]
fn bad_endpoints_are_invalid() {
    for endpoint in [
        "",
        "etcd://",
        "etcd:///pagoda",
        "etcd://localhost",
        "etcd://localhost:",
        "etcd://localhost:port",
        "etcd://localhost:2379,",
        "etcd://localhost:2379/",
        "etcd://localhost:2379/a//b",
        "etcd://localhost:2379/with space",
        "embedded:",
        "zookeeper://localhost:2181",
        "localhost:2379",
    ] {
        let result = pagoda_cluster::connect(endpoint);
        assert!(
            matches!(result, Err(ClusterError::Invalid(_))),
            "{endpoint:?}: {result:?}"
        );
    }
}

// Guards the bound on every call while etcd is down, and recovery: once
// etcd is back the same coordinator works again (its client reconnects)
// and the data is still there. A coordinator built while etcd is down
// works once it is up.
#[test]
fn etcd_down_is_unavailable_within_the_bound_then_recovers() {
    let bound = Duration::from_millis(pagoda_cluster::etcd::REQUEST_TIMEOUT_MS + 1_000);
    let mut etcd = Etcd::start();
    let coordinator = pagoda_cluster::connect(&etcd.endpoint()).unwrap();
    let record = region("alpha", "10.0.0.1:7000");
    let revision = coordinator.create_region(&record).unwrap();
    let lease = coordinator.grant_lease(Duration::from_secs(30)).unwrap();

    etcd.stop();
    let calls: [(&str, Call); 5] = [
        ("region", Box::new(|| coordinator.region("alpha").map(drop))),
        ("regions", Box::new(|| coordinator.regions().map(drop))),
        (
            "update_region",
            Box::new(|| coordinator.update_region(&record, revision).map(drop)),
        ),
        (
            "grant_lease",
            Box::new(|| coordinator.grant_lease(Duration::from_secs(1)).map(drop)),
        ),
        (
            "keep_alive",
            Box::new(|| coordinator.keep_alive(lease).map(drop)),
        ),
    ];
    for (name, call) in &calls {
        let start = Instant::now();
        let error = call().unwrap_err();
        let elapsed = start.elapsed();
        assert!(
            matches!(&error, ClusterError::Unavailable { endpoint, .. } if endpoint.starts_with(&etcd.endpoint())),
            "{name}: {error:?}"
        );
        assert!(elapsed <= bound, "{name} took {elapsed:?}");
    }
    let late = pagoda_cluster::connect(&etcd.endpoint()).unwrap();
    let error = late.nodes().unwrap_err();
    assert!(
        matches!(error, ClusterError::Unavailable { .. }),
        "{error:?}"
    );

    etcd.restart();
    assert_eq!(
        coordinator.region("alpha").unwrap(),
        Some(Versioned {
            value: record.clone(),
            revision
        })
    );
    let mut second = record.clone();
    second.primary_epoch = 2;
    coordinator.update_region(&second, revision).unwrap();
    assert!(coordinator.keep_alive(lease).unwrap() > Duration::ZERO);
    assert_eq!(late.region("alpha").unwrap().unwrap().value, second);
}

// Guards the bound on every call when etcd accepts connections but answers
// nothing (hung, or the network dropping packets): each call gives up
// after the request timeout rather than waiting, and works again once etcd
// answers.
#[test]
fn hung_etcd_is_unavailable_after_the_request_timeout() {
    let timeout = Duration::from_millis(pagoda_cluster::etcd::REQUEST_TIMEOUT_MS);
    let bound = timeout + Duration::from_millis(1_000);
    let mut etcd = Etcd::start();
    let coordinator = pagoda_cluster::connect(&etcd.endpoint()).unwrap();
    let record = region("alpha", "10.0.0.1:7000");
    let revision = coordinator.create_region(&record).unwrap();

    etcd.pause();
    let mut second = record.clone();
    second.primary_epoch = 2;
    let calls: [(&str, Call); 2] = [
        ("region", Box::new(|| coordinator.region("alpha").map(drop))),
        (
            "update_region",
            Box::new(|| coordinator.update_region(&second, revision).map(drop)),
        ),
    ];
    for (name, call) in &calls {
        let start = Instant::now();
        let error = call().unwrap_err();
        let elapsed = start.elapsed();
        assert!(
            matches!(&error, ClusterError::Unavailable { .. }),
            "{name}: {error:?}"
        );
        assert!(
            elapsed >= timeout && elapsed <= bound,
            "{name} gave up after {elapsed:?}"
        );
    }

    etcd.resume();
    // The update that timed out may or may not have been applied (here it
    // was sent to a frozen server that then woke up): either revision is
    // a valid state, and the coordinator answers again.
    // The frozen server may apply the timed-out update a little after it
    // wakes, so a compare-and-swap on a revision read just before can meet a
    // newer one: read again and retry, within a bound.
    let mut third = record.clone();
    third.primary_epoch = 3;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = coordinator.region("alpha").unwrap().unwrap();
        assert!(now.value == record || now.value == second, "{now:?}");
        match coordinator.update_region(&third, now.revision) {
            Ok(updated) => {
                assert!(updated > now.revision);
                break;
            }
            Err(error)
                if Instant::now() < deadline && format!("{error:?}").contains("Conflict") =>
            {
                thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("the coordinator did not answer again: {error:?}"),
        }
    }
}

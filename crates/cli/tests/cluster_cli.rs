//! The cluster coordinator through the `pagoda` binary: `pagoda node
//! --coordinator/--lease-ms`, `pagoda cluster status`, and `pagoda region
//! ... --coordinator` (placement by free bytes, a named region's primary
//! found in the coordinator), with several `pagoda node` processes on
//! loopback sharing an embedded coordinator in a temporary directory.

mod common;
use common::{NodeProcess, field_names, free_port, pagoda, spawn_node, text};

use std::process::Output;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, RegionOptions};

/// How long any one wait in these tests may take.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// The lease every node of these tests keeps, in milliseconds: short, so
/// that a killed node drops out of the live nodes quickly.
const LEASE_MS: &str = "1000";

/// A temporary directory holding an embedded coordinator and the nodes'
/// data dirs.
struct Cluster {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("embedded:{}", dir.path().join("coordinator").display());
        Cluster { dir, endpoint }
    }

    /// Starts a node with `capacity` of RAM that joins the coordinator
    /// with a lease of `LEASE_MS`.
    fn node(&self, capacity: &str) -> NodeProcess {
        self.node_with_lease(capacity, LEASE_MS)
    }

    /// Starts a node with `capacity` of RAM that joins the coordinator
    /// with a lease of `lease_ms`.
    fn node_with_lease(&self, capacity: &str, lease_ms: &str) -> NodeProcess {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let data_dir = self.dir.path().join(format!("node-{port}"));
        let mut command = pagoda();
        command
            .args([
                "node",
                "--listen",
                &addr,
                "--capacity",
                capacity,
                "--coordinator",
                &self.endpoint,
                "--lease-ms",
                lease_ms,
                // Never shorter than the lease (the node refuses that).
                "--replace-replica-after-ms",
                &lease_ms.parse::<u64>().unwrap_or(0).max(30_000).to_string(),
                "--data-dir",
            ])
            .arg(&data_dir);
        let child = spawn_node(command, WAIT_LIMIT);
        NodeProcess { child, addr }
    }

    /// `pagoda cluster status --coordinator ENDPOINT --json`, parsed.
    fn status(&self) -> serde_json::Value {
        let output = pagoda()
            .args([
                "cluster",
                "status",
                "--json",
                "--coordinator",
                &self.endpoint,
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "cluster status: {}", text(&output));
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("cluster status --json: {e}: {}", text(&output)))
    }

    /// Waits, at most `WAIT_LIMIT`, until the live nodes are exactly
    /// `nodes`; returns the status then.
    fn wait_for_nodes(&self, nodes: &[&NodeProcess]) -> serde_json::Value {
        let mut expected: Vec<&str> = nodes.iter().map(|node| node.addr.as_str()).collect();
        expected.sort();
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let status = self.status();
            let mut live: Vec<&str> = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|node| node["addr"].as_str().unwrap())
                .collect();
            live.sort();
            if live == expected {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the live nodes are {live:?}, not {expected:?}, after {WAIT_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `pagoda ARGS --coordinator ENDPOINT`.
    fn run(&self, args: &[&str]) -> Output {
        pagoda()
            .args(args)
            .args(["--coordinator", &self.endpoint])
            .output()
            .unwrap()
    }

    /// Runs `pagoda ARGS --coordinator ENDPOINT`, which must succeed;
    /// returns its stdout.
    fn run_ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "pagoda {args:?} --coordinator: {}",
            text(&output)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

/// The region named `name` in a `cluster status --json` document.
fn region<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|region| region["name"] == name)
        .unwrap_or_else(|| panic!("no region {name:?} in {status}"))
}

/// The one line of `error: ...` a failed command prints.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "succeeded: {}", text(output));
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

// Guards `cluster status`: every node started with --coordinator is listed
// live with its capacity, free bytes and lease, in the JSON document with
// exactly its documented fields and in the text table.
#[test]
fn status_lists_the_live_nodes_and_their_capacity() {
    let cluster = Cluster::new();
    let small = cluster.node("32MiB");
    let large = cluster.node("96MiB");
    let status = cluster.wait_for_nodes(&[&small, &large]);
    let fields = field_names(&status);
    assert_eq!(fields, ["coordinator", "nodes", "regions"]);
    assert_eq!(status["coordinator"], cluster.endpoint);
    assert_eq!(status["regions"], serde_json::json!([]));
    for (node, capacity) in [(&small, 32u64 << 20), (&large, 96u64 << 20)] {
        let record = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|record| record["addr"] == node.addr.as_str())
            .unwrap();
        let fields = field_names(record);
        assert_eq!(
            fields,
            [
                "addr",
                "capacity_bytes",
                "free_bytes",
                "lease_ms",
                "version"
            ]
        );
        assert_eq!(record["capacity_bytes"], capacity, "{record}");
        assert_eq!(record["free_bytes"], capacity, "no region yet: {record}");
        assert_eq!(record["lease_ms"], 1000, "{record}");
    }
    let table = cluster.run_ok(&["cluster", "status"]);
    assert!(
        table.contains(&format!("coordinator     {}", cluster.endpoint)),
        "{table}"
    );
    assert!(table.contains("live nodes      2"), "{table}");
    let line = |addr: &str| {
        table
            .lines()
            .find(|line| line.starts_with(addr))
            .unwrap_or_else(|| panic!("no line for {addr}: {table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line(&small.addr),
        format!(
            "{} 32.0 MiB 32.0 MiB 1000 ms {}",
            small.addr,
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        line(&large.addr),
        format!(
            "{} 96.0 MiB 96.0 MiB 1000 ms {}",
            large.addr,
            env!("CARGO_PKG_VERSION")
        )
    );
    assert!(table.contains("no regions"), "{table}");
}

// Guards placement: `region create --coordinator --replicas 1` puts the
// primary on the live node with the most free bytes and the replica on the
// next, says so, and the primary's record (primary, replicas, epoch, in-sync
// set) is what `cluster status --json` shows, with the replica's lag as the
// primary reports it.
#[test]
fn create_places_the_primary_on_the_node_with_the_most_free_bytes() {
    let cluster = Cluster::new();
    let small = cluster.node("32MiB");
    let large = cluster.node("128MiB");
    let middle = cluster.node("64MiB");
    cluster.wait_for_nodes(&[&small, &large, &middle]);
    let stdout = cluster.run_ok(&[
        "region",
        "create",
        "orders",
        "--size",
        "4MiB",
        "--replicas",
        "1",
    ]);
    assert!(
        stdout.contains(&format!(
            "placed by the coordinator {} (most free bytes first): primary {} (128.0 MiB free), \
             replica {} (64.0 MiB free)",
            cluster.endpoint, large.addr, middle.addr
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "primary {}, sync replicas: {}",
            large.addr, middle.addr
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "recorded in the coordinator: primary {}",
            large.addr
        )),
        "{stdout}"
    );
    let status = cluster.status();
    let orders = region(&status, "orders");
    let fields = field_names(orders);
    assert_eq!(
        fields,
        [
            "in_sync",
            "mode",
            "name",
            "primary",
            "primary_epoch",
            "primary_error",
            "primary_live",
            "primary_role",
            "replica_status",
            "replicas",
            "revision",
            "size",
            "status",
            "writer"
        ]
    );
    assert_eq!(orders["size"], 4 << 20);
    assert_eq!(orders["mode"], "sync");
    assert_eq!(orders["primary"], large.addr.as_str());
    assert_eq!(orders["replicas"], serde_json::json!([middle.addr]));
    assert!(orders["primary_epoch"].as_u64().unwrap() >= 1, "{orders}");
    for addr in orders["in_sync"].as_array().unwrap() {
        assert_eq!(
            addr,
            middle.addr.as_str(),
            "in sync but not a replica: {orders}"
        );
    }
    assert_eq!(orders["primary_live"], true);
    assert_eq!(orders["status"], "ok", "{orders}");
    assert_eq!(orders["primary_role"], "primary");
    assert_eq!(orders["primary_error"], serde_json::Value::Null);
    assert_eq!(orders["writer"], serde_json::Value::Null);
    let replicas = orders["replica_status"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "{orders}");
    assert_eq!(replicas[0]["addr"], middle.addr.as_str());
    assert!(replicas[0]["lag_bytes"].is_u64(), "{orders}");
    // The text table: the region's row, then its replica's.
    let table = cluster.run_ok(&["cluster", "status"]);
    let row = table
        .lines()
        .find(|line| line.starts_with("orders"))
        .unwrap_or_else(|| panic!("no row for orders: {table}"));
    let row: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(row[0], "orders");
    assert_eq!(row[3], "sync");
    assert_eq!(row[4], large.addr);
    assert_eq!(row.last(), Some(&"ok"), "{table}");
    assert!(
        table
            .lines()
            .any(|line| line.trim_start().starts_with(&middle.addr)),
        "{table}"
    );
    // A second region of that name is refused before any node is asked.
    let output = cluster.run(&["region", "create", "orders", "--size", "4MiB"]);
    assert_eq!(
        error_line(&output),
        format!(
            "error: region \"orders\" already exists in the coordinator {} (primary {})",
            cluster.endpoint, large.addr
        )
    );
}

// Guards the region commands with --coordinator: they reach the primary the
// coordinator names (its pages written through the library are what `stat`
// and `checksum` see there, and no other node has the region), PAGODA_NODE
// does not override the coordinator, --node with --coordinator is refused,
// and a region the coordinator does not know is an exact error.
#[test]
fn region_commands_reach_the_recorded_primary() {
    let cluster = Cluster::new();
    let small = cluster.node("32MiB");
    let large = cluster.node("64MiB");
    cluster.wait_for_nodes(&[&small, &large]);
    let stdout = cluster.run_ok(&["region", "create", "notes", "--size", "4MiB"]);
    assert!(
        stdout.contains(&format!("primary {} (64.0 MiB free)", large.addr)),
        "{stdout}"
    );
    let status = cluster.status();
    assert_eq!(region(&status, "notes")["primary"], large.addr.as_str());
    assert_eq!(region(&status, "notes")["mode"], "solo");
    assert_eq!(region(&status, "notes")["status"], "ok");

    // Written to the recorded primary through the library.
    let client = Client::connect(large.addr.as_str(), ClientOptions::default()).unwrap();
    let handle = client
        .open_region("notes", RegionOptions::default())
        .unwrap();
    handle.write_at(4096 * 3, b"far memory").unwrap();
    handle.flush().unwrap();
    drop(handle);
    let reader = Client::connect(large.addr.as_str(), ClientOptions::default()).unwrap();
    let handle = reader
        .open_region_read_only("notes", RegionOptions::default())
        .unwrap();
    let mut back = [0u8; 10];
    handle.read_at(4096 * 3, &mut back).unwrap();
    assert_eq!(&back, b"far memory");

    let stat: serde_json::Value =
        serde_json::from_str(&cluster.run_ok(&["region", "stat", "notes", "--json"])).unwrap();
    assert_eq!(stat["name"], "notes");
    assert_eq!(stat["pages_written"], 1, "{stat}");
    // PAGODA_NODE names the other node: --coordinator wins over it.
    let output = pagoda()
        .env("PAGODA_NODE", &small.addr)
        .args(["region", "stat", "notes", "--json"])
        .args(["--coordinator", &cluster.endpoint])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let via_env: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(via_env["pages_written"], 1, "{via_env}");
    let through_coordinator = cluster.run_ok(&["region", "checksum", "notes"]);
    let on_primary = common::run_ok(&["region", "checksum", "notes"], &large.addr);
    assert_eq!(through_coordinator, on_primary);
    assert!(
        !common::run(&["region", "stat", "notes"], &small.addr)
            .status
            .success(),
        "the region is on the other node too"
    );

    let output = pagoda()
        .args(["region", "stat", "notes", "--node", &large.addr])
        .args(["--coordinator", &cluster.endpoint])
        .output()
        .unwrap();
    assert_eq!(
        error_line(&output),
        "error: --node and --coordinator are mutually exclusive: --coordinator finds the node \
         itself"
    );
    let output = cluster.run(&["region", "stat", "missing"]);
    assert_eq!(
        error_line(&output),
        format!(
            "error: region \"missing\" is not in the coordinator {}",
            cluster.endpoint
        )
    );
    let output = cluster.run(&["region", "ls"]);
    assert_eq!(
        error_line(&output),
        "error: region ls lists one node's regions: give --node, not --coordinator (pagoda \
         cluster status lists the coordinator's regions)"
    );
    // A count of replicas without --coordinator is named for what it is.
    let output = common::run(
        &["region", "create", "x", "--size", "4MiB", "--replicas", "1"],
        &large.addr,
    );
    assert_eq!(
        error_line(&output),
        "error: --replicas 1 is a count of replicas, which needs --coordinator ENDPOINT to \
         choose the nodes; with --node, --replicas lists the replicas' addresses (HOST:PORT,...)"
    );
}

// Guards the refusal of a placement the live nodes cannot hold: the exact
// error says how many nodes are needed, how many are live and which, and
// no node gets the region.
#[test]
fn too_few_live_nodes_is_refused_saying_how_many_are_live() {
    let cluster = Cluster::new();
    let only = cluster.node("64MiB");
    cluster.wait_for_nodes(&[&only]);
    let output = cluster.run(&[
        "region",
        "create",
        "wide",
        "--size",
        "4MiB",
        "--replicas",
        "2",
    ]);
    assert_eq!(
        error_line(&output),
        format!(
            "error: region \"wide\" needs 3 live nodes (a primary and 2 replicas), but the \
             coordinator {} has 1 live: {}",
            cluster.endpoint, only.addr
        )
    );
    assert!(
        !common::run(&["region", "stat", "wide"], &only.addr)
            .status
            .success(),
        "the refused region was created"
    );
    assert_eq!(cluster.status()["regions"], serde_json::json!([]));
}

// Guards --lease-ms: under a second (etcd's smallest lease), zero included,
// the node refuses to start with an exact error and never listens.
#[test]
fn a_lease_under_a_second_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for lease in ["0", "999"] {
        let output = pagoda()
            .args([
                "node",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--capacity",
                "64MiB",
                "--lease-ms",
                lease,
                "--data-dir",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(
            error_line(&output),
            format!(
                "error: --lease-ms {lease} is too short: at least 1000 ms (etcd leases are whole \
                 seconds, at least one)"
            )
        );
        assert!(!text(&output).contains("listening on"), "{}", text(&output));
    }
}

// Guards the coordinator's unreachability: an etcd endpoint nobody listens
// on fails `cluster status` and `region create` with an error naming it,
// within seconds rather than hanging.
#[test]
fn an_unreachable_etcd_endpoint_fails_within_seconds() {
    let endpoint = "etcd://127.0.0.1:1";
    for args in [
        vec!["cluster", "status"],
        vec!["region", "create", "r", "--size", "4MiB"],
        vec!["region", "stat", "r"],
    ] {
        let began = Instant::now();
        let output = pagoda()
            .args(&args)
            .args(["--coordinator", endpoint])
            .output()
            .unwrap();
        let elapsed = began.elapsed();
        let error = error_line(&output);
        assert!(
            error.starts_with(&format!("error: coordinator {endpoint}")),
            "{args:?}: {error}"
        );
        assert!(
            elapsed < Duration::from_secs(10),
            "{args:?} took {elapsed:?}: {error}"
        );
    }
}

// Guards the flags of a region whose primary is gone: a killed primary
// drops out of the live nodes when its lease lapses and its region is
// shown "primary down" (its replica's lag "unreachable"); a stopped
// primary whose lease still runs is "primary unreachable", answered within
// seconds, not waited for.
#[test]
fn status_flags_a_primary_that_is_down_or_unreachable() {
    let cluster = Cluster::new();
    // A long lease for the node that will be stopped, so that it stays live
    // in the coordinator while it does not answer.
    let mut stopped = cluster.node_with_lease("128MiB", "60000");
    let replica = cluster.node("64MiB");
    cluster.wait_for_nodes(&[&stopped, &replica]);
    cluster.run_ok(&[
        "region",
        "create",
        "paused",
        "--size",
        "4MiB",
        "--replicas",
        "1",
    ]);
    let mut killed = cluster.node("256MiB");
    cluster.wait_for_nodes(&[&stopped, &replica, &killed]);
    cluster.run_ok(&[
        "region",
        "create",
        "lost",
        "--size",
        "4MiB",
        "--replicas",
        "1",
    ]);
    let status = cluster.status();
    assert_eq!(region(&status, "paused")["primary"], stopped.addr.as_str());
    assert_eq!(region(&status, "lost")["primary"], killed.addr.as_str());
    assert_eq!(region(&status, "lost")["status"], "ok");

    // Stopped first: the replica of "lost" must not take it over when the
    // killed node's lease lapses.
    let pid = stopped.child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let status = cluster.wait_for_nodes(&[&stopped, &replica]);
    let lost = region(&status, "lost");
    assert_eq!(lost["primary_live"], false, "{lost}");
    assert_eq!(lost["status"], "primary down", "{lost}");
    assert_eq!(lost["replica_status"], serde_json::Value::Null);
    assert!(lost["primary_error"].is_string(), "{lost}");
    let paused = region(&status, "paused");
    assert_eq!(paused["primary_live"], true, "{paused}");
    assert_eq!(paused["status"], "primary unreachable", "{paused}");
    assert_eq!(paused["replica_status"], serde_json::Value::Null);

    let began = Instant::now();
    let table = cluster.run_ok(&["cluster", "status"]);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "status took {:?}",
        began.elapsed()
    );
    let row = |name: &str| {
        table
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
            .to_owned()
    };
    assert!(row("lost").ends_with(" primary down"), "{table}");
    assert!(row("paused").ends_with(" primary unreachable"), "{table}");
    assert!(
        table.lines().any(
            |line| line.trim_start().starts_with(&replica.addr) && line.contains("unreachable")
        ),
        "{table}"
    );
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    stopped.child.kill().unwrap();
    stopped.child.wait().unwrap();
}

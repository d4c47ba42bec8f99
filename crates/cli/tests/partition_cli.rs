//! Failover across a real network partition, made with a Linux network
//! namespace: a region's primary (a `pagoda node` process) and a writer
//! attached to it live in a namespace of their own, joined by a veth pair
//! to the rest (etcd and the two other nodes, in this process's namespace);
//! taking the namespace's end of the pair down cuts the primary off from
//! etcd and from its replicas while its writer still reaches it. One test
//! with a `sync` region, one with an `async` region (where the primary's
//! lease is all that stops it); they run one at a time.
//!
//! Addresses, in `10.77.S.0/24` for a subnet `S` no interface uses yet:
//!
//! ```text
//!  namespace pagoda-part-PID                this process's namespace
//!  ┌──────────────────────────────┐        ┌───────────────────────────────┐
//!  │ primary  10.77.S.2 (on lo)   │  veth  │ etcd, node, node  10.77.S.1   │
//!  │ writer (a thread in setns)   ├────────┤ writer (a cluster client)     │
//!  │ veth end 10.77.S.3/24        │        │ veth end 10.77.S.1/24         │
//!  └──────────────────────────────┘        └───────────────────────────────┘
//! ```
//!
//! The primary's address sits on the namespace's loopback so that it stays
//! up, and reachable from inside, while the veth end is down; the other
//! side's addresses sit on its veth end, which stays up (only its carrier
//! goes), so its local addresses keep working. Non-loopback addresses need
//! a token (`--token-file`) and, without TLS, `--insecure-no-tls`.
//!
//! Needs root (`ip netns`, `setns`); without it the test fails saying so,
//! never skips. The namespace and the veth pair are named after this
//! process's id and removed when the test ends, by a guard, even when it
//! panics.

mod common;
use common::model::stored_versions;
use common::writer::{Handle, Log, Writer};
use common::{clear_pagoda_env, free_port, log_tail, millis, spawn_logged, text};

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, ErrorCode, RegionOptions};
use pagoda_cluster::RegionRecord;

/// The region: 4 MiB. The writer in the namespace writes the lower half,
/// the one outside the upper half.
const REGION_PAGES: u64 = 1024;
const REGION_SIZE: &str = "4MiB";
/// The nodes' lease.
const LEASE: Duration = Duration::from_millis(1000);
/// The longest a writer writes.
const WRITER_TIME_MAX: Duration = Duration::from_secs(90);
/// How long any one wait may take.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// How long etcd may take to come up.
const ETCD_START_LIMIT: Duration = Duration::from_secs(20);
/// The shared token of every node and client.
const TOKEN: &str = "partition-test-token";

// ---------------------------------------------------------------------------
// The network.

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let ip = pagoda_cluster::testing::require_binary("ip", "iproute2");
    let output = Command::new(ip).args(args).output().unwrap_or_else(|e| {
        panic!("running ip {args:?}: {e} (the partition test needs iproute2's ip)")
    });
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        text(&output)
    );
}

/// A network namespace and a veth pair into it (see the module docs);
/// removed on drop.
struct Network {
    namespace: String,
    /// The veth end in this process's namespace.
    outer: String,
    /// The veth end in the namespace.
    inner: String,
    /// `10.77.S`.
    prefix: String,
}

impl Network {
    fn create() -> Network {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the partition test makes network namespaces and veth pairs (ip netns, setns): run it \
             as root; it is not skipped"
        );
        // Unique per process and per test in it.
        static NETWORKS: AtomicUsize = AtomicUsize::new(0);
        let pid = std::process::id();
        let test = NETWORKS.fetch_add(1, Ordering::SeqCst) % 10;
        let network = Network {
            namespace: format!("pagoda-part-{pid}-{test}"),
            outer: format!("pgp{pid}{test}o"),
            inner: format!("pgp{pid}{test}i"),
            prefix: free_subnet(pid),
        };
        let (ns, outer, inner) = (&network.namespace, &network.outer, &network.inner);
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.outside()),
            "dev",
            outer,
        ]);
        ip(&["link", "set", outer, "up"]);
        network.inside(&["ip", "link", "set", "lo", "up"]);
        network.inside(&[
            "ip",
            "addr",
            "add",
            &format!("{}/32", network.primary()),
            "dev",
            "lo",
        ]);
        network.inside(&[
            "ip",
            "addr",
            "add",
            &format!("{}.3/24", network.prefix),
            "dev",
            inner,
        ]);
        network.inside(&["ip", "link", "set", inner, "up"]);
        network
    }

    /// The address of everything outside the namespace.
    fn outside(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// The primary's address, inside.
    fn primary(&self) -> String {
        format!("{}.2", self.prefix)
    }

    /// Runs a command inside the namespace, which must succeed.
    fn inside(&self, command: &[&str]) {
        let mut args = vec!["netns", "exec", &self.namespace];
        args.extend_from_slice(command);
        ip(&args);
    }

    /// Cuts the namespace off: its veth end goes down.
    fn cut(&self) {
        self.inside(&["ip", "link", "set", &self.inner, "down"]);
    }

    /// Joins it again.
    fn heal(&self) {
        self.inside(&["ip", "link", "set", &self.inner, "up"]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; errors are ignored (a part
        // that was never made).
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .stderr(Stdio::null())
            .status();
    }
}

/// Moves the calling thread into the network namespace `namespace`
/// (`setns`): the sockets it opens from then on are the namespace's.
fn enter_namespace(namespace: &str) {
    let path = format!("/run/netns/{namespace}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: a valid descriptor of a network namespace; setns moves only
    // this thread.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        result,
        0,
        "setns into {namespace}: {}",
        std::io::Error::last_os_error()
    );
}

/// `10.77.S` for an `S` that no address or route of this host uses.
fn free_subnet(pid: u32) -> String {
    let output = |args: &[&str]| -> String {
        let output = Command::new("ip").args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let used = format!(
        "{}{}",
        output(&["-o", "addr"]),
        output(&["route", "show", "table", "all"])
    );
    let first = pid % 200;
    (0..200)
        .map(|offset| 20 + (first + offset) % 200)
        .map(|subnet| format!("10.77.{subnet}"))
        .find(|prefix| !used.contains(&format!("{prefix}.")))
        .expect("a free 10.77.S.0/24 subnet")
}

// ---------------------------------------------------------------------------
// Processes.

/// A child process killed on drop, with its stderr appended to a log file.
struct Process {
    child: Option<Child>,
    log: PathBuf,
    what: String,
}

impl Process {
    /// Spawns `command`; with `marker`, waits until a line of its stderr
    /// contains it.
    fn spawn(command: Command, log: &Path, what: &str, marker: Option<&str>) -> Process {
        let ready = marker.map(|marker| (marker, WAIT_LIMIT));
        Process {
            child: Some(spawn_logged(command, log, what, ready)),
            log: log.to_path_buf(),
            what: what.to_owned(),
        }
    }

    fn log_tail(&self) -> String {
        format!("--- {} ---\n{}", self.what, log_tail(&self.log))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The etcd binary: `$PAGODA_ETCD_BIN`, or `etcd` on `PATH` or in
/// `/usr/bin`; when there is none, the shared fixture installs it.
fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(pagoda_cluster::testing::ETCD_BIN_VARIABLE) {
        return PathBuf::from(path);
    }
    let find = || {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin")])
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = find() {
        return found;
    }
    // Installs Debian's etcd-server (or panics saying why it cannot).
    drop(pagoda_cluster::testing::Etcd::start());
    find().expect("etcd is on PATH after the fixture installed it")
}

/// A one-member etcd whose clients' port listens on `host` (the fixture's
/// listens on 127.0.0.1 only, which the namespace cannot reach).
fn start_etcd(host: &str, dir: &Path) -> (Process, String) {
    let client_url = format!("http://{host}:{}", free_port());
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let mut command = Command::new(etcd_binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(name);
        }
    }
    if std::env::consts::ARCH == "aarch64" {
        command.env("ETCD_UNSUPPORTED_ARCH", "arm64");
    }
    command
        .args(["--name", "partition"])
        .arg("--data-dir")
        .arg(dir.join("etcd-data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("partition={peer_url}")])
        .args(["--initial-cluster-state", "new"])
        // One-second leases are one second (see pagoda_cluster::testing).
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--logger", "zap", "--log-outputs", "stderr"]);
    let process = Process::spawn(command, &dir.join("etcd.log"), "etcd", None);
    let endpoint = format!("etcd://{}", client_url.trim_start_matches("http://"));
    let deadline = Instant::now() + ETCD_START_LIMIT;
    loop {
        let ready = pagoda_cluster::connect(&endpoint).and_then(|coordinator| coordinator.nodes());
        if ready.is_ok() {
            return (process, endpoint);
        }
        assert!(
            Instant::now() < deadline,
            "etcd on {client_url} did not answer within {ETCD_START_LIMIT:?}: {ready:?}\n{}",
            process.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The settings every node shares.
struct NodeSettings {
    endpoint: String,
    token_file: PathBuf,
    dir: PathBuf,
}

/// A `pagoda node` process on `addr`, inside `namespace` if given
/// (`ip netns exec`, which execs the node: killing the child kills it).
struct Node {
    process: Option<Process>,
    addr: String,
    index: usize,
    namespace: Option<String>,
    capacity: &'static str,
}

impl Node {
    fn start(
        settings: &NodeSettings,
        index: usize,
        addr: String,
        capacity: &'static str,
        namespace: Option<&str>,
    ) -> Node {
        let mut node = Node {
            process: None,
            addr,
            index,
            namespace: namespace.map(str::to_owned),
            capacity,
        };
        node.restart(settings);
        node
    }

    fn restart(&mut self, settings: &NodeSettings) {
        assert!(self.process.is_none(), "{} runs already", self.addr);
        let mut command = match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", namespace])
                    .arg(env!("CARGO_BIN_EXE_pagoda"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_pagoda")),
        };
        clear_pagoda_env(&mut command);
        command
            .args(["node", "--listen", &self.addr, "--capacity", self.capacity])
            .args(["--coordinator", &settings.endpoint])
            .args(["--lease-ms", &LEASE.as_millis().to_string()])
            .arg("--token-file")
            .arg(&settings.token_file)
            .arg("--insecure-no-tls")
            .arg("--data-dir")
            .arg(settings.dir.join(format!("node-{}", self.index)));
        let log = settings.dir.join(format!("node-{}.log", self.index));
        let what = format!("node {}", self.addr);
        self.process = Some(Process::spawn(command, &log, &what, Some("listening on")));
    }

    fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map_or_else(String::new, Process::log_tail)
    }
}

/// Runs `pagoda ARGS --token-file FILE` (ARGS name the node or the
/// coordinator).
fn run(args: &[&str], token_file: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pagoda"));
    clear_pagoda_env(&mut command);
    command
        .args(args)
        .arg("--token-file")
        .arg(token_file)
        .output()
        .unwrap()
}

fn run_ok(args: &[&str], token_file: &Path) -> String {
    let output = run(args, token_file);
    assert!(
        output.status.success(),
        "pagoda {args:?}: {}",
        text(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

// ---------------------------------------------------------------------------
// Writers and the model.

/// Reads every page from `addr` and compares it with the writers' logs:
/// each page holds an intact version its writer sent (asserted); returns
/// the pages holding a version older than the newest acknowledged one, as
/// (page, version held, version acknowledged).
fn compare_with_model(addr: &str, name: &str, logs: &[&Log], what: &str) -> Vec<(u64, u64, u64)> {
    let reader = Client::connect(
        addr,
        ClientOptions {
            timeout: Duration::from_secs(10),
            reconnect_for: Duration::ZERO,
            ..ClientOptions::with_token(TOKEN)
        },
    )
    .unwrap_or_else(|e| panic!("{what}: connecting to {addr}: {e}"));
    let newest = |pick: fn(&Log) -> &Vec<u64>| -> Vec<u64> {
        (0..REGION_PAGES as usize)
            .map(|page| logs.iter().map(|log| pick(log)[page]).max().unwrap())
            .collect()
    };
    let sent = newest(|log| &log.model.sent);
    let acknowledged = newest(|log| &log.model.acknowledged);
    let versions = stored_versions(&reader, addr, name, &sent, what);
    (0..REGION_PAGES)
        .zip(versions.into_iter().zip(acknowledged))
        .filter(|(_, (version, acknowledged))| version < acknowledged)
        .map(|(page, (version, acknowledged))| (page, version, acknowledged))
        .collect()
}

/// `compare_with_model`, and every acknowledged write must be there.
fn check_against_model(addr: &str, name: &str, logs: &[&Log], what: &str) {
    let lost = compare_with_model(addr, name, logs, what);
    assert!(
        lost.is_empty(),
        "{what}: ACKNOWLEDGED WRITES LOST on {addr}, as (page, version held, version \
         acknowledged): {lost:?}"
    );
}

/// Waits, at most `WAIT_LIMIT`, until `check` returns a value.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The tests.

/// One test at a time: each measures against one-second leases.
static SERIAL: Mutex<()> = Mutex::new(());

/// The network, etcd, the primary in the namespace and two nodes outside
/// (see the module docs); dropped in that order's reverse.
struct Setup {
    cut_off: Node,
    others: Vec<Node>,
    etcd: Process,
    endpoint: String,
    token_file: PathBuf,
    coordinator: Arc<dyn pagoda_cluster::Coordinator>,
    network: Network,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        let network = Network::create();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let (etcd, endpoint) = start_etcd(&network.outside(), dir.path());
        let settings = NodeSettings {
            endpoint: endpoint.clone(),
            token_file: token_file.clone(),
            dir: dir.path().to_path_buf(),
        };
        // The most free bytes: placement makes the namespace's node the
        // primary.
        let cut_off = Node::start(
            &settings,
            0,
            format!("{}:{}", network.primary(), free_port()),
            "512MiB",
            Some(&network.namespace),
        );
        let others: Vec<Node> = (1..3)
            .map(|index| {
                let addr = format!("{}:{}", network.outside(), free_port());
                Node::start(&settings, index, addr, "256MiB", None)
            })
            .collect();
        let coordinator = pagoda_cluster::connect(&endpoint).unwrap();
        eventually("the three nodes are live", || {
            let nodes = coordinator.nodes().ok()?;
            (nodes.len() == 3).then_some(())
        });
        // Each node learns the live nodes (its allowed peers off loopback)
        // at its agent's next tick, a quarter lease at most: before that
        // the primary would refuse the replicas as peers it may not dial.
        std::thread::sleep(LEASE / 2);
        Setup {
            cut_off,
            others,
            etcd,
            endpoint,
            token_file,
            coordinator,
            network,
            _dir: dir,
        }
    }

    /// Every process's log tail, for a failure message.
    fn logs(&self) -> String {
        let mut all = vec![self.cut_off.log_tail(), self.etcd.log_tail()];
        all.extend(self.others.iter().map(Node::log_tail));
        all.join("\n")
    }

    fn record(&self, name: &str) -> RegionRecord {
        self.coordinator
            .region(name)
            .expect("etcd answers")
            .expect("the region is recorded")
            .value
    }

    /// Creates a region with two replicas in `mode`, placed by the
    /// coordinator on the namespace's node.
    fn create_region(&self, name: &str, mode: &str) -> RegionRecord {
        run_ok(
            &[
                "region",
                "create",
                name,
                "--size",
                REGION_SIZE,
                "--replicas",
                "2",
                "--mode",
                mode,
                "--coordinator",
                &self.endpoint,
            ],
            &self.token_file,
        );
        let record = self.record(name);
        assert_eq!(
            record.primary, self.cut_off.addr,
            "placement did not choose the node with the most free bytes: {record:?}"
        );
        record
    }

    /// A writer inside the namespace, beside the primary: a plain client
    /// that does not reconnect, so every refusal reaches it.
    fn inside_writer(&self, name: &'static str, pages: std::ops::Range<u64>, seed: u64) -> Writer {
        let namespace = self.network.namespace.clone();
        let primary = self.cut_off.addr.clone();
        Writer::start(
            REGION_PAGES,
            pages,
            seed,
            WRITER_TIME_MAX,
            move || enter_namespace(&namespace),
            move || {
                let options = ClientOptions {
                    timeout: Duration::from_secs(10),
                    reconnect_for: Duration::ZERO,
                    client_name: "partition-test inside".into(),
                    ..ClientOptions::with_token(TOKEN)
                };
                let client = Client::connect(primary.as_str(), options)?;
                let info = client.stat_region(name)?.info;
                Ok(Handle::Plain { client, info })
            },
        )
    }

    /// A cluster client outside the namespace.
    fn outside_writer(&self, name: &'static str, pages: std::ops::Range<u64>, seed: u64) -> Writer {
        let endpoint = self.endpoint.clone();
        Writer::start(
            REGION_PAGES,
            pages,
            seed,
            WRITER_TIME_MAX,
            || {},
            move || {
                let options = ClientOptions {
                    timeout: Duration::from_secs(5),
                    reconnect_for: Duration::from_secs(20),
                    client_name: "partition-test outside".into(),
                    ..ClientOptions::with_token(TOKEN)
                };
                let client = Client::connect_cluster(&endpoint, options)?;
                let region = client.open_region(name, RegionOptions::with_cache_bytes(1 << 20))?;
                Ok(Handle::Cluster {
                    region,
                    _client: client,
                })
            },
        )
    }

    /// Waits until the record of `name` names another primary than
    /// `before` does, at a higher epoch, one that `before` counted in sync.
    fn wait_for_failover(&self, name: &str, before: &RegionRecord) -> RegionRecord {
        let after = eventually(
            &format!("the record of {name} names another primary"),
            || {
                let record = self.record(name);
                (record.primary != before.primary && !record.primary.is_empty()).then_some(record)
            },
        );
        assert!(
            after.primary_epoch > before.primary_epoch,
            "{name}: the new primary's epoch did not grow: {after:?}, before {before:?}"
        );
        assert!(
            before.in_sync.contains(&after.primary),
            "{name}: the new primary was not in sync: {after:?}, before {before:?}"
        );
        after
    }

    /// Waits until the old primary is an in-sync replica of `name` again,
    /// and says so itself.
    fn wait_for_rejoin(&self, name: &str, primary: &str) {
        eventually(
            &format!("the old primary is an in-sync replica of {name} again"),
            || {
                let record = self.record(name);
                (record.primary == primary && record.in_sync.contains(&self.cut_off.addr))
                    .then_some(())
            },
        );
        let set: serde_json::Value = serde_json::from_str(&run_ok(
            &[
                "region",
                "replicas",
                name,
                "--json",
                "--node",
                &self.cut_off.addr,
            ],
            &self.token_file,
        ))
        .unwrap();
        assert_eq!(set["role"], "replica", "{name} on the old primary: {set}");
        assert_eq!(set["primary"], primary, "{name} on the old primary: {set}");
    }

    /// The region's digest on `addr` (`pagoda region checksum`).
    fn digest(&self, name: &str, addr: &str) -> String {
        let stdout = run_ok(
            &["region", "checksum", name, "--json", "--node", addr],
            &self.token_file,
        );
        let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        value["digest"].as_str().unwrap().to_owned()
    }
}

/// The batches a writer had acknowledged after `since`, as ms after `from`.
fn acknowledged_after(log: &Log, since: Instant, from: Instant) -> Vec<f64> {
    log.acks
        .iter()
        .filter(|ack| ack.at > since)
        .map(|ack| millis(ack.at - from))
        .collect()
}

/// Whether any write was refused with NotPrimary.
fn answered_not_primary(log: &Log) -> bool {
    log.failures
        .iter()
        .any(|failure| failure.code == Some(ErrorCode::NotPrimary))
}

/// Refusals with NotPrimary after `since`.
fn refused_after(log: &Log, since: Instant) -> usize {
    log.failures
        .iter()
        .filter(|failure| failure.at > since && failure.code == Some(ErrorCode::NotPrimary))
        .count()
}

// Guards failover across a real partition, and the absence of split brain,
// for a `sync` region: its primary, with a writer beside it, is cut off from
// etcd and from both replicas. The cut-off primary acknowledges no write
// after its lease expired and answers its writer NotPrimary; the other side
// fails over (the record names a replica at a higher epoch) and a cluster
// client there writes on; once the partition heals the old primary rejoins
// as an in-sync replica, and both copies hold every acknowledged write of
// both writers.
#[test]
fn a_partitioned_primary_stops_and_the_majority_fails_over() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let setup = Setup::start();
    let name = "partitioned";
    let before = setup.create_region(name, "sync");
    let inside_writer = setup.inside_writer(name, 0..REGION_PAGES / 2, 1);
    inside_writer.wait_until(
        "the inside writer has 100 writes acknowledged",
        WAIT_LIMIT,
        |log| log.acks.len() >= 100,
    );

    let cut_at = Instant::now();
    setup.network.cut();
    let cut_done = Instant::now();
    // A cluster client outside, writing the other half.
    let outside_writer = setup.outside_writer(name, REGION_PAGES / 2..REGION_PAGES, 2);
    let after = setup.wait_for_failover(name, &before);
    let failed_over_at = cut_at.elapsed();
    let new_primary: SocketAddr = after.primary.parse().unwrap();
    outside_writer.wait_until(
        "the outside writer has 50 writes acknowledged",
        WAIT_LIMIT,
        |log| {
            log.acks
                .iter()
                .filter(|ack| ack.peer == new_primary)
                .count()
                >= 50
        },
    );
    let outside_first = outside_writer.log.lock().unwrap().acks[0].at - cut_at;
    // The cut-off primary refuses its writer, saying it is not the primary,
    // and goes on refusing while its writer tries.
    inside_writer.wait_until(
        "the cut-off primary answered NotPrimary",
        WAIT_LIMIT,
        answered_not_primary,
    );
    std::thread::sleep(LEASE * 2);

    let healed_at = Instant::now();
    setup.network.heal();
    setup.wait_for_rejoin(name, &after.primary);
    let rejoin = healed_at.elapsed();

    let outside = outside_writer.finish();
    let inside = inside_writer.finish();
    let late = acknowledged_after(&inside, cut_at + LEASE, cut_at);
    assert!(
        late.is_empty(),
        "SPLIT BRAIN: the cut-off primary acknowledged writes after its lease expired, at these \
         ms after the cut: {late:?}\n{}",
        setup.logs()
    );
    let refused = refused_after(&inside, cut_at + LEASE);
    assert!(
        refused > 0,
        "the cut-off primary's writer saw no NotPrimary after the lease expired: {:?}",
        inside.failures
    );
    assert!(
        inside
            .acks
            .iter()
            .all(|ack| ack.peer.to_string() == setup.cut_off.addr),
        "the inside writer reached another node"
    );
    check_against_model(
        &after.primary,
        name,
        &[&inside, &outside],
        "the new primary",
    );
    check_against_model(
        &setup.cut_off.addr,
        name,
        &[&inside, &outside],
        "the old primary",
    );
    assert_eq!(
        setup.digest(name, &after.primary),
        setup.digest(name, &setup.cut_off.addr),
        "the rejoined replica's copy differs from the new primary's"
    );
    // Writes acknowledged while the cut was being made count before it.
    let after_cut = acknowledged_after(&inside, cut_done, cut_at).len();
    eprintln!(
        "partition, sync: {} batches acknowledged inside before the cut (cut in {:.0} ms), \
         {after_cut} after it (none after the lease), {refused} refused with NotPrimary after \
         the lease; record moved to {} at epoch {} {:.0} ms after the cut; the outside writer's \
         first acknowledged write {:.0} ms after the cut, {} in all; the old primary an in-sync \
         replica {:.0} ms after the heal",
        inside.acks.len() - after_cut,
        millis(cut_done - cut_at),
        after.primary,
        after.primary_epoch,
        millis(failed_over_at),
        millis(outside_first),
        outside.acks.len(),
        millis(rejoin),
    );
}

// FAILS as of commit f51e0ee, at the SPLIT BRAIN assertion: the cut-off
// primary acknowledges an `async` write about 2 s after the cut, after its
// lease expired and after the new primary took over (the write passed the
// lease check before the fence, then waited in the write path until the
// links to the unreachable replicas failed, and was answered without a
// second check). A node bug, reported; the assertion stands.
//
// Guards self-fencing where nothing else stops a cut-off primary: in
// `async` mode a primary acknowledges writes without its replicas, so once
// it is cut off from etcd and its replicas only its lease stops it. It must
// acknowledge no write after its lease expired (and answer NotPrimary);
// the other side fails over; after the heal the old primary's copy is
// rebuilt to the new primary's (what it acknowledged alone, before its
// lease expired, is the documented loss of an `async` failover: counted,
// not asserted).
#[test]
fn a_partitioned_async_primary_acknowledges_nothing_after_its_lease() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let setup = Setup::start();
    let name = "partitioned-async";
    let before = setup.create_region(name, "async");
    let inside_writer = setup.inside_writer(name, 0..REGION_PAGES, 3);
    inside_writer.wait_until(
        "the inside writer has 100 writes acknowledged",
        WAIT_LIMIT,
        |log| log.acks.len() >= 100,
    );

    let cut_at = Instant::now();
    setup.network.cut();
    let cut_done = Instant::now();
    let after = setup.wait_for_failover(name, &before);
    let failed_over_at = cut_at.elapsed();
    inside_writer.wait_until(
        "the cut-off primary answered NotPrimary",
        WAIT_LIMIT,
        answered_not_primary,
    );
    std::thread::sleep(LEASE * 2);

    setup.network.heal();
    setup.wait_for_rejoin(name, &after.primary);
    let inside = inside_writer.finish();
    assert_eq!(
        setup.digest(name, &after.primary),
        setup.digest(name, &setup.cut_off.addr),
        "the rejoined replica's copy differs from the new primary's"
    );
    let lost = compare_with_model(&after.primary, name, &[&inside], "the new primary").len();
    let after_cut = acknowledged_after(&inside, cut_done, cut_at);
    let refused = refused_after(&inside, cut_at + LEASE);
    eprintln!(
        "partition, async: {} batches acknowledged by the cut-off primary after the cut, at \
         {:.0}..{:.0} ms after it; {refused} refused with NotPrimary after the lease; record \
         moved to {} at epoch {} {:.0} ms after the cut; {lost} pages on the new primary older \
         than acknowledged",
        after_cut.len(),
        after_cut.first().copied().unwrap_or(0.0),
        after_cut.last().copied().unwrap_or(0.0),
        after.primary,
        after.primary_epoch,
        millis(failed_over_at),
    );
    let late = acknowledged_after(&inside, cut_at + LEASE, cut_at);
    assert!(
        late.is_empty(),
        "SPLIT BRAIN: the cut-off async primary acknowledged writes after its lease expired \
         (the new primary took over {:.0} ms after the cut), at these ms after the cut: \
         {late:?}\n{}",
        millis(failed_over_at),
        setup.logs()
    );
    assert!(
        refused > 0,
        "the cut-off primary's writer saw no NotPrimary after the lease expired: {:?}",
        inside.failures
    );
}

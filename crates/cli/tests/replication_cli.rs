//! Replicated regions through the `pagoda` binary, with every node a separate
//! `pagoda node` process on loopback: `kill -9` of the primary under a `sync`
//! write load, promotion of its replica with `pagoda region promote`, and
//! the rejoin of the killed node, round after round, against a model of the
//! acknowledged writes; and the documented output and refusals of
//! `pagoda region replicas` and `pagoda region promote`.

mod common;
use common::model::{Model, PAGE, page_bytes, stored_versions};
use common::{field_names, free_port, pagoda, run, run_json, spawn_node, text};

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, ErrorCode, RegionInfo};
use rand::{Rng, SeedableRng};

/// The region: 4 MiB, two segments.
const REGION_PAGES: u64 = 1024;
/// The replica timeout every node runs with, in milliseconds.
const REPLICA_TIMEOUT_MS: &str = "1000";
/// Kill rounds: each kills the primary, promotes the replica, checks the
/// acknowledged writes and brings the killed node back.
const ROUNDS: u64 = 30;
/// Each round's writer writes its own pages, so that a writer still busy
/// with a request when its primary died could never race the next round's
/// writer on a page: per page, versions are in one writer's order.
const ROUND_PAGES: u64 = REGION_PAGES / 32;
/// Most write batches one round's writer sends.
const LOAD_BATCHES_MAX: u64 = 2_000;
/// Most pages in one write batch.
const BATCH_PAGES_MAX: u64 = 4;
/// How long any one wait in these tests may take.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// How long the whole kill test may take (it should need well under half).
const KILL_TEST_LIMIT: Duration = Duration::from_secs(240);

/// A `pagoda node` process on a fixed address and data dir, which can be
/// killed and started again; killed on drop.
struct NodeProcess {
    child: Option<Child>,
    addr: String,
    data_dir: PathBuf,
}

impl NodeProcess {
    fn start(data_dir: &Path) -> NodeProcess {
        let mut node = NodeProcess {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()),
            data_dir: data_dir.to_path_buf(),
        };
        node.restart();
        node
    }

    /// Starts the node process (again) on its address and data dir.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running already", self.addr);
        let mut command = pagoda();
        command
            .args([
                "node",
                "--listen",
                &self.addr,
                "--capacity",
                "64MiB",
                "--replica-timeout",
                REPLICA_TIMEOUT_MS,
                "--data-dir",
            ])
            .arg(&self.data_dir);
        self.child = Some(spawn_node(command, WAIT_LIMIT));
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("the node runs");
        child.kill().expect("SIGKILL");
        child.wait().expect("the killed node is reaped");
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("the node runs").id();
        let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(result, 0, "signal {signal} to {}", self.addr);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process must be continued to die promptly.
            let _ = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn replicas_json(name: &str, node: &str) -> serde_json::Value {
    run_json(&["region", "replicas", name, "--json"], node)
}

/// Waits, at most `WAIT_LIMIT`, until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client of the node at `addr` that does not reconnect by itself: the
/// tests move to a new primary with a new client.
fn client(addr: &str) -> Client {
    let options = ClientOptions {
        timeout: Duration::from_secs(10),
        reconnect_for: Duration::ZERO,
        ..ClientOptions::default()
    };
    Client::connect(addr, options).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// Reads every page from `addr` and compares it with the model: each page
/// must hold a version its writer sent (intact), no older than the newest
/// acknowledged one. Returns the number of acknowledged versions checked.
fn check_against_model(addr: &str, name: &str, model: &Mutex<Model>, round: u64) -> usize {
    let reader = client(addr);
    // Taken before the read: a write acknowledged during it (by a writer
    // still finishing a request) only raises what is found.
    let (acknowledged, sent) = {
        let model = model.lock().unwrap();
        (model.acknowledged.clone(), model.sent.clone())
    };
    let what = format!("round {round}");
    let versions = stored_versions(&reader, addr, name, &sent, &what);
    for (page, (&version, &acknowledged)) in versions.iter().zip(&acknowledged).enumerate() {
        assert!(
            version >= acknowledged,
            "round {round}: ACKNOWLEDGED WRITE LOST: page {page} on the new primary {addr} \
             holds version {version}, but version {acknowledged} was acknowledged"
        );
    }
    acknowledged.iter().filter(|&&version| version > 0).count()
}

/// One round's writer: a thread writing batches of versioned pages to its
/// own pages of the region on `primary` through an in-process client, each
/// recorded as acknowledged once `write_pages` returned Ok; it stops at
/// `stop`, at its first error, or after `LOAD_BATCHES_MAX` batches.
struct Writer {
    acknowledged: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), String>>,
}

impl Writer {
    fn start(primary: &str, name: &str, model: &Arc<Mutex<Model>>, round: u64) -> Writer {
        let acknowledged = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client = client(primary);
        // Region ids are per node: this node's id for the name.
        let info = client.stat_region(name).unwrap().info;
        let (model, counter, stopped) = (model.clone(), acknowledged.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let first = (round % (REGION_PAGES / ROUND_PAGES)) * ROUND_PAGES;
            let mut rng = rand::rngs::StdRng::seed_from_u64(round);
            for batch in 0..LOAD_BATCHES_MAX {
                if stopped.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let count = rng.gen_range(1..=BATCH_PAGES_MAX);
                let start = first + rng.gen_range(0..ROUND_PAGES - count + 1);
                let pages: Vec<u64> = (start..start + count).collect();
                let versions: Vec<u64> = {
                    let mut model = model.lock().unwrap();
                    pages
                        .iter()
                        .map(|&page| {
                            model.sent[page as usize] += 1;
                            model.sent[page as usize]
                        })
                        .collect()
                };
                let data: Vec<u8> = pages
                    .iter()
                    .zip(&versions)
                    .flat_map(|(&page, &version)| page_bytes(page, version))
                    .collect();
                write_batch(&client, &info, &pages, &data, batch)?;
                let mut model = model.lock().unwrap();
                for (&page, &version) in pages.iter().zip(&versions) {
                    let acked = &mut model.acknowledged[page as usize];
                    *acked = (*acked).max(version);
                }
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        });
        Writer {
            acknowledged,
            stop,
            thread,
        }
    }
}

/// `write_pages`, except that the first batch waits (bounded) while the
/// writer role is still held by another client (a previous round's, still
/// finishing its last request).
fn write_batch(
    client: &Client,
    info: &RegionInfo,
    pages: &[u64],
    data: &[u8],
    batch: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.raw().write_pages(info, pages, data) {
            Ok(()) => return Ok(()),
            Err(error)
                if batch == 0
                    && error.code() == Some(ErrorCode::WriterBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// The replica entry for `addr` in a primary's `region replicas --json`.
fn replica_entry<'a>(set: &'a serde_json::Value, addr: &str) -> Option<&'a serde_json::Value> {
    set["replicas"]
        .as_array()?
        .iter()
        .find(|replica| replica["addr"] == addr)
}

// Guards the promise of `sync` replication across real crashes: the primary
// process is killed with SIGKILL while a writer is writing; its replica,
// promoted with `pagoda region promote` (no --force: it is in sync), holds
// every write that was acknowledged. The killed node comes back on its port
// and data dir, fenced, and is rebuilt by the new primary as its replica;
// the next round kills the new primary. Zero acknowledged writes lost in
// every one of 30 rounds (the issue asks for at least 20).
#[test]
fn killing_the_primary_under_sync_load_loses_no_acknowledged_write() {
    let began = Instant::now();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes = [
        NodeProcess::start(dirs[0].path()),
        NodeProcess::start(dirs[1].path()),
    ];
    let name = "crash";
    let output = run(
        &[
            "region",
            "create",
            name,
            "--size",
            "4MiB",
            "--replicas",
            &nodes[1].addr,
            "--mode",
            "sync",
        ],
        &nodes[0].addr,
    );
    assert!(output.status.success(), "{}", text(&output));
    eventually("the replica is in sync", || {
        let set = replicas_json(name, &nodes[0].addr);
        replica_entry(&set, &nodes[1].addr).is_some_and(|r| r["in_sync"] == true)
    });
    let model = Arc::new(Mutex::new(Model::new(REGION_PAGES)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut primary = 0;
    let mut rounds = 0u64;
    let mut acknowledged_total = 0u64;
    let mut unfinished_writers = 0u64;
    let mut round_times = Vec::new();
    for round in 0..ROUNDS {
        assert!(
            began.elapsed() < KILL_TEST_LIMIT,
            "the kill test ran out of time after {rounds} rounds"
        );
        let round_began = Instant::now();
        let replica = 1 - primary;
        let primary_epoch = replicas_json(name, &nodes[primary].addr)["primary_epoch"]
            .as_u64()
            .unwrap();

        // A bounded sync write load; the primary dies in the middle of it.
        let writer = Writer::start(&nodes[primary].addr, name, &model, round);
        let kill_after = rng.gen_range(5..200u64);
        let load_deadline = Instant::now() + Duration::from_secs(5);
        while writer.acknowledged.load(Ordering::SeqCst) < kill_after
            && !writer.thread.is_finished()
            && Instant::now() < load_deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            !writer.thread.is_finished(),
            "round {round}: the writer stopped before the kill: {:?}",
            writer.thread.join()
        );
        nodes[primary].kill();
        writer.stop.store(true, Ordering::SeqCst);
        let acknowledged = writer.acknowledged.load(Ordering::SeqCst);
        assert!(
            acknowledged > 0,
            "round {round}: the writer had no write acknowledged before the kill"
        );
        acknowledged_total += acknowledged;
        // Its write in flight fails with the connection.
        let writer_deadline = Instant::now() + Duration::from_secs(2);
        while !writer.thread.is_finished() && Instant::now() < writer_deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if writer.thread.is_finished() {
            // An error is expected (its node was killed), or Ok if it saw
            // `stop` first.
            writer
                .thread
                .join()
                .expect("the writer does not panic")
                .ok();
        } else {
            unfinished_writers += 1;
        }

        // Promote the replica: it was in sync, so no --force.
        let promoted = run(&["region", "promote", name, "--json"], &nodes[replica].addr);
        assert!(
            promoted.status.success(),
            "round {round}: PROMOTION REFUSED for an in-sync replica {}: {}",
            nodes[replica].addr,
            text(&promoted)
        );
        let set: serde_json::Value =
            serde_json::from_slice(&promoted.stdout).expect("promote --json prints JSON");
        assert_eq!(set["role"], "primary", "round {round}: {set}");
        assert!(
            set["primary_epoch"].as_u64().unwrap() > primary_epoch,
            "round {round}: the promoted node's primary epoch did not grow: {set}"
        );

        // Every acknowledged write is on the new primary.
        check_against_model(&nodes[replica].addr, name, &model, round);

        // The killed node comes back on its port and data dir (fenced) and
        // is rebuilt by the new primary as its replica.
        nodes[primary].restart();
        let (new_primary, rejoined) = (nodes[replica].addr.clone(), nodes[primary].addr.clone());
        eventually(
            &format!("round {round}: the restarted node is in sync again"),
            || {
                let set = replicas_json(name, &new_primary);
                replica_entry(&set, &rejoined).is_some_and(|r| r["in_sync"] == true)
            },
        );
        // The next round promotes it: wait until it knows it is in sync
        // too (the primary's next message tells it).
        eventually(
            &format!("round {round}: the restarted node knows it is in sync"),
            || {
                let set = replicas_json(name, &rejoined);
                set["role"] == "replica" && set["in_sync"] == true
            },
        );
        primary = replica;
        rounds += 1;
        round_times.push(round_began.elapsed());
    }
    // The last promoted node holds every acknowledged write as well, after
    // its replica rejoined; and so does that replica.
    let checked = check_against_model(&nodes[primary].addr, name, &model, ROUNDS);
    assert!(rounds >= 20, "only {rounds} rounds");
    let slowest = round_times.iter().max().unwrap();
    eprintln!(
        "{rounds} kill rounds in {:.1} s (slowest round {:.2} s): {acknowledged_total} write \
         batches acknowledged before kills, {checked} pages checked at the end, zero lost; \
         {unfinished_writers} writers still busy 2 s after their primary died",
        began.elapsed().as_secs_f64(),
        slowest.as_secs_f64()
    );
}

// Guards the documented output of `pagoda region replicas` (the JSON fields
// and their types, on the primary and on a replica, and the text form) and
// the refusals of `pagoda region promote`: a node that is the primary
// already, a region that is not replicated, and a replica that is not known
// to be in sync (its primary stopped answering), whose refusal says what
// --force would lose; --force then promotes it. And the node's replication
// flags: listed in --help, a too-short --replica-timeout refused.
#[test]
fn replicas_json_and_promote_refusals() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes = [
        NodeProcess::start(dirs[0].path()),
        NodeProcess::start(dirs[1].path()),
    ];
    let (primary, replica) = (nodes[0].addr.as_str(), nodes[1].addr.as_str());

    // --mode needs --replicas.
    let output = run(
        &["region", "create", "m", "--size", "4MiB", "--mode", "async"],
        primary,
    );
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("--replicas"), "{}", text(&output));

    let output = run(
        &[
            "region",
            "create",
            "r",
            "--size",
            "4MiB",
            "--replicas",
            replica,
        ],
        primary,
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("sync replicas"), "{}", text(&output));
    let region = client(primary).stat_region("r").unwrap().info;
    client(primary)
        .raw()
        .write_pages(&region, &[0, 1, 2], &[7u8; 3 * PAGE])
        .unwrap();

    // On the primary: its view, and one entry per replica.
    let set = replicas_json("r", primary);
    assert_eq!(set["name"], "r");
    assert_eq!(set["role"], "primary");
    assert_eq!(set["mode"], "sync");
    assert_eq!(set["primary"], primary);
    assert_eq!(set["primary_epoch"], 1);
    assert!(set["writer_epoch"].as_u64().unwrap() >= 1, "{set}");
    let lsn = set["lsn"].as_u64().unwrap();
    assert!(lsn >= 1, "{set}");
    assert!(set["checkpoint"].is_u64(), "{set}");
    assert!(set["checkpoint_lsn"].is_u64(), "{set}");
    assert!(set["in_sync"].is_boolean(), "{set}");
    assert!(set["message"].is_string(), "{set}");
    let replicas = set["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "{set}");
    let entry = &replicas[0];
    assert_eq!(entry["addr"], replica);
    assert_eq!(
        entry["acked_lsn"], lsn,
        "a sync write answered before its ack"
    );
    assert_eq!(entry["in_sync"], true);
    assert_eq!(entry["connected"], true);
    assert_eq!(entry["lag_bytes"], 0);
    assert!(entry["lag_ms"].is_u64(), "{entry}");
    assert!(entry["message"].is_string(), "{entry}");
    assert!(entry["sent_bytes"].as_u64().unwrap() > 0, "{entry}");
    assert!(entry["rebuilt_bytes"].is_u64(), "{entry}");
    assert!(entry["rebuilds"].is_u64(), "{entry}");
    let keys = field_names(entry);
    assert_eq!(
        keys,
        [
            "acked_lsn",
            "addr",
            "connected",
            "in_sync",
            "lag_bytes",
            "lag_ms",
            "message",
            "rebuilds",
            "rebuilt_bytes",
            "sent_bytes"
        ]
    );

    // On the replica: its own view, no table.
    let set = replicas_json("r", replica);
    assert_eq!(set["role"], "replica");
    assert_eq!(set["primary"], primary);
    assert_eq!(set["primary_epoch"], 1);
    assert_eq!(set["lsn"], lsn);
    assert_eq!(set["in_sync"], true);
    assert_eq!(set["replicas"].as_array().unwrap().len(), 0);

    // The text form.
    let output = run(&["region", "replicas", "r"], primary);
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    for expected in [
        "role            primary",
        "mode            sync",
        "ACKED LSN",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing: {shown}");
    }
    assert!(
        shown
            .lines()
            .any(|line| line.starts_with(replica) && line.contains("yes")),
        "{shown}"
    );

    // Refused: the primary already; a region that is not replicated.
    let output = run(&["region", "promote", "r"], primary);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("primary here already"),
        "{}",
        text(&output)
    );
    let output = run(&["region", "create", "solo", "--size", "4MiB"], primary);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(replicas_json("solo", primary)["role"], "solo");
    let output = run(&["region", "promote", "solo"], primary);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("not replicated"),
        "{}",
        text(&output)
    );

    // The primary stops answering (SIGSTOP): after half the replica timeout
    // without a heartbeat the replica counts itself out of sync, and
    // promotion without --force is refused, saying what --force loses.
    nodes[0].signal(libc::SIGSTOP);
    eventually("the replica counts itself out of sync", || {
        replicas_json("r", replica)["in_sync"] == false
    });
    let set = replicas_json("r", replica);
    assert!(!set["message"].as_str().unwrap().is_empty(), "{set}");
    let output = run(&["region", "promote", "r"], replica);
    let refusal = text(&output);
    assert!(!output.status.success(), "{refusal}");
    assert!(
        refusal.contains("not known to be in sync") && refusal.contains("--force"),
        "{refusal}"
    );
    assert!(
        refusal.contains(&format!("after LSN {lsn}")),
        "the refusal does not say what --force would lose: {refusal}"
    );
    assert_eq!(replicas_json("r", replica)["role"], "replica");

    let promoted = run_json(&["region", "promote", "r", "--force", "--json"], replica);
    assert_eq!(promoted["role"], "primary");
    assert_eq!(promoted["primary_epoch"], 2);
    assert_eq!(promoted["lsn"], lsn);
    let output = run(&["region", "replicas", "r"], replica);
    assert!(
        text(&output).contains("primary epoch   2"),
        "{}",
        text(&output)
    );
    // The old primary, continued, learns of the new one and steps down.
    nodes[0].signal(libc::SIGCONT);
    eventually("the old primary steps down", || {
        let role = replicas_json("r", primary)["role"].clone();
        role == "replica" || role == "fenced"
    });

    // The node's replication flags.
    let help = pagoda().args(["node", "--help"]).output().unwrap();
    let help = text(&help);
    for flag in [
        "--replica-timeout",
        "--replication-log-bytes",
        "--replication-lag-bytes",
    ] {
        assert!(help.contains(flag), "{flag} missing from node --help");
    }
    let dir = tempfile::tempdir().unwrap();
    let output = pagoda()
        .args(["node", "--capacity", "4MiB", "--replica-timeout", "100"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("--replica-timeout must be at least"),
        "{}",
        text(&output)
    );
}

// Guards failover for a writer that resumes its writer epoch at the new
// primary (what a client that reconnects by itself does, `ClientOptions::
// reconnect_for`): after the old primary, which handed that epoch out,
// restarts and rejoins as a replica, the writer's next write is
// acknowledged and the new primary stays writable. (A restarted node once
// moved every region's writer epoch past the persisted one, also for a copy
// rejoining as a replica: the replica then refused the writer's entries
// with `StaleEpoch`, and the new primary took that for a newer primary and
// fenced itself.)
#[test]
fn a_writer_resuming_its_epoch_after_failover_keeps_the_region_writable() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes = [
        NodeProcess::start(dirs[0].path()),
        NodeProcess::start(dirs[1].path()),
    ];
    let (old_primary, new_primary) = (nodes[0].addr.clone(), nodes[1].addr.clone());
    let output = run(
        &[
            "region",
            "create",
            "resume",
            "--size",
            "4MiB",
            "--replicas",
            &new_primary,
        ],
        &old_primary,
    );
    assert!(output.status.success(), "{}", text(&output));
    // A writer that reconnects by itself, and follows the region's primary.
    let options = ClientOptions {
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let writer = Client::connect(old_primary.as_str(), options).unwrap();
    let info = writer.stat_region("resume").unwrap().info;
    writer
        .raw()
        .write_pages(&info, &[0], &page_bytes(0, 1))
        .unwrap();

    nodes[0].kill();
    let output = run(&["region", "promote", "resume"], &new_primary);
    assert!(output.status.success(), "{}", text(&output));
    nodes[0].restart();
    eventually("the old primary is in sync as a replica", || {
        let set = replicas_json("resume", &new_primary);
        replica_entry(&set, &old_primary).is_some_and(|r| r["in_sync"] == true)
    });

    // The writer's connection died with the old primary: it reconnects,
    // is sent to the new primary, resumes its epoch there, and writes.
    let written = writer.raw().write_pages(&info, &[1], &page_bytes(1, 1));
    let set = replicas_json("resume", &new_primary);
    assert!(
        written.is_ok(),
        "a write at the new primary failed: {written:?}; the new primary: {set}"
    );
    assert!(
        set["message"].as_str().unwrap().is_empty(),
        "the new primary fenced itself: {set}"
    );
}

// Guards `pagoda bench --replicas --mode`: the benchmark runs on a
// replicated region (its report says how), and leaves no copy behind on
// the primary or the replica.
#[test]
fn bench_runs_on_a_replicated_region() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes = [
        NodeProcess::start(dirs[0].path()),
        NodeProcess::start(dirs[1].path()),
    ];
    for mode in ["sync", "async"] {
        let output = pagoda()
            .args([
                "bench",
                "--node",
                &nodes[0].addr,
                "--replicas",
                &nodes[1].addr,
            ])
            .args(["--mode", mode, "--region-size", "4MiB", "--cache", "1MiB"])
            .args([
                "--read-ratio",
                "0.5",
                "--duration",
                "0.3",
                "--warmup",
                "0",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["replicas"], 1, "{report}");
        assert_eq!(report["replication_mode"], mode, "{report}");
        assert!(report["writes"].as_u64().unwrap() > 0, "{report}");
        for node in &nodes {
            let listed = run_json(&["region", "ls", "--json"], &node.addr);
            assert_eq!(
                listed,
                serde_json::json!([]),
                "left behind on {}",
                node.addr
            );
        }
    }
}

//! Tests of the `pagoda` binary as a user runs it.

mod common;
use common::{NodeProcess, free_port, pagoda, text};
use std::process::Command;
use std::time::{Duration, Instant};

// Guards the quickstart: it runs, verifies, and exits 0 saying so.
#[test]
fn quickstart_verifies_and_exits_zero() {
    let output = pagoda()
        .args(["quickstart", "--cache", "1MiB", "--duration", "1"])
        .output()
        .unwrap();
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("verification passed"), "{all}");
    assert!(
        all.contains("pages that differ from the model after flush:      0"),
        "{all}"
    );
}

// Guards the region commands against a real node process, and that the node
// keeps region metadata across a restart on the same data dir.
#[test]
fn region_commands_and_metadata_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[]);
    let run = |args: &[&str], addr: &str| {
        let output = pagoda().args(args).args(["--node", addr]).output().unwrap();
        (output.status.success(), text(&output))
    };
    let (ok, out) = run(&["region", "create", "alpha", "--size", "8MiB"], &node.addr);
    assert!(ok, "{out}");
    let (ok, out) = run(
        &[
            "region",
            "create",
            "beta",
            "--size",
            "4MiB",
            "--page-size",
            "64KiB",
        ],
        &node.addr,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["region", "create", "alpha", "--size", "8MiB"], &node.addr);
    assert!(!ok && out.contains("exists"), "{out}");
    let (ok, out) = run(
        &[
            "region",
            "create",
            "bad",
            "--size",
            "8MiB",
            "--page-size",
            "3KiB",
        ],
        &node.addr,
    );
    assert!(!ok && out.contains("power of two"), "{out}");
    let (ok, out) = run(&["region", "stat", "beta", "--json"], &node.addr);
    assert!(ok, "{out}");
    let stat: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(stat["page_size"], 65536);
    assert_eq!(stat["size"], 4 << 20);
    let (ok, out) = run(&["region", "rm", "alpha"], &node.addr);
    assert!(ok, "{out}");
    drop(node);

    let node = NodeProcess::start(dir.path(), &[]);
    let (ok, out) = run(&["region", "ls", "--json"], &node.addr);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["beta"]);
}

// Guards graceful shutdown: SIGTERM stops the node promptly with status 0,
// even with a client connected.
#[test]
fn sigterm_stops_the_node_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(dir.path(), &[]);
    let _idle = std::net::TcpStream::connect(&node.addr).unwrap();
    let pid = node.child.id() as i32;
    assert_eq!(unsafe_kill(pid, 15), 0);
    let started = Instant::now();
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node did not stop within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    // The test avoids a libc dependency by asking the kill command.
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    if status.success() { 0 } else { 1 }
}

// Guards configuration errors: a clear message and a failing exit, no panic.
#[test]
fn bad_configuration_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let output = pagoda()
        .args([
            "node",
            "--listen",
            "0.0.0.0:0",
            "--capacity",
            "64MiB",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let all = text(&output);
    assert!(!output.status.success());
    assert!(all.contains("without a token"), "{all}");

    let output = pagoda()
        .args(["node", "--capacity", "64XB", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("unknown unit"), "{}", text(&output));

    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "  \n").unwrap();
    let output = pagoda()
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--capacity",
            "64MiB",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--token-file")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("empty"), "{}", text(&output));

    let output = pagoda()
        .args([
            "region",
            "ls",
            "--node",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("connecting to"), "{}", text(&output));
}

// Guards token auth end to end through the CLI: the right token works, a
// wrong one is refused with a clear error.
#[test]
fn token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let data = dir.path().join("data");
    let token_arg = token.to_str().unwrap().to_owned();
    let node = NodeProcess::start(&data, &["--token-file", &token_arg]);
    let output = pagoda()
        .args(["region", "ls", "--node", &node.addr, "--token-file"])
        .arg(&token)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    for (token_args, expected) in [
        (
            vec![
                "--token-file".to_owned(),
                wrong.to_str().unwrap().to_owned(),
            ],
            "authentication as credential \"default\" failed",
        ),
        (vec![], "this node requires a credential and none was given"),
    ] {
        let output = pagoda()
            .args(["region", "ls", "--node", &node.addr])
            .args(&token_args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        // The node's message alone, without the code's name in front.
        assert_eq!(
            text(&output).trim(),
            text(&output).lines().next().unwrap().trim()
        );
        assert!(text(&output).contains(expected), "{}", text(&output));
    }
}

// Guards `pagoda bench --json`: one JSON object with the documented fields;
// and `--embedded` runs its own node even with PAGODA_NODE exported (it
// refuses only a --node given beside it).
#[test]
fn bench_json_reports_documented_fields() {
    let both = pagoda()
        .args(["bench", "--embedded", "--node", "127.0.0.1:1"])
        .env_remove("PAGODA_NODE")
        .output()
        .unwrap();
    assert!(!both.status.success());
    assert!(text(&both).contains("not both"), "{}", text(&both));
    let output = pagoda()
        .env("PAGODA_NODE", "127.0.0.1:1")
        .args([
            "bench",
            "--embedded",
            "--region-size",
            "8MiB",
            "--cache",
            "1MiB",
            "--workload",
            "zipf",
            "--threads",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for field in [
        "ops_per_s",
        "latency_us_p50",
        "latency_us_p99",
        "latency_us_p999",
        "hit_ratio",
        "bytes_fetched",
        "bytes_written_back",
        "prefetch_issued",
        "prefetch_used",
        "prefetch_late",
        "prefetch_wasted",
        "ops",
        "threads",
        "workload",
    ] {
        assert!(report.get(field).is_some(), "missing {field} in {report}");
    }
    assert!(report["ops"].as_u64().unwrap() > 0);
    // The embedded node runs in this process: misses are co-located.
    assert_eq!(report["transport"], "colocated");
    let hit_ratio = report["hit_ratio"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hit_ratio));
    // Unless they are told to go over TCP.
    let output = pagoda()
        .args([
            "bench",
            "--embedded",
            "--region-size",
            "8MiB",
            "--cache",
            "1MiB",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--no-colocated",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["transport"], "tcp");
}

// Guards `pagoda sim` as a user runs it: a gzip LIRS trace (with a `*` marker
// line to skip), each policy by name, JSON with exactly the documented fields,
// and a miss count computed by hand. The trace 1 2 3 1 2 3 loops over three
// blocks; with two pages LRU misses every request.
#[test]
fn sim_reports_hand_computed_misses_as_json() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.trace.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    encoder.write_all(b"1\n2\n3\n*\n1\n2\n3\n").unwrap();
    encoder.finish().unwrap();
    let output = pagoda()
        .args(["sim", "--trace"])
        .arg(&path)
        .args(["--cache-pages", "2", "--policy", "lru", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut fields: Vec<_> = report.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "cache_pages",
            "distinct",
            "miss_ratio",
            "misses",
            "policy",
            "requests",
            "trace"
        ]
    );
    assert_eq!(report["requests"], 6);
    assert_eq!(report["distinct"], 3);
    assert_eq!(report["misses"], 6);
    for policy in ["two-phase", "clock", "arc", "s3fifo"] {
        let output = pagoda()
            .args(["sim", "--trace"])
            .arg(&path)
            .args(["--cache-ratio", "1.0", "--policy", policy, "--json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{policy}: {}", text(&output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        // With room for every block only the three cold misses remain.
        assert_eq!(report["misses"], 3, "{policy}");
    }
    let output = pagoda()
        .args(["sim", "--trace"])
        .arg(dir.path().join("missing.trace"))
        .args(["--cache-pages", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("missing.trace"), "{}", text(&output));
}

// Guards the README's `pagoda sim` line: the sample trace ships with the
// repository, and replaying it prints the figures the README promises.
#[test]
fn sim_replays_the_shipped_sample_trace() {
    let trace = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sim/traces/zipfscan.trace.gz"
    );
    let output = pagoda()
        .args([
            "sim",
            "--trace",
            trace,
            "--cache-ratio",
            "0.1",
            "--policy",
            "two-phase",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("requests        84000"), "{stdout}");
    assert!(stdout.contains("miss ratio"), "{stdout}");
}

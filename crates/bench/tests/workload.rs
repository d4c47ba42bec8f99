//! Tests of the headline comparison's workload program as the driver runs it.

use std::process::Command;

use pagoda_node::{Node, NodeConfig};

fn run(args: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_workload"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "workload {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

// Guards the comparison's validity check: the local backend and the pagoda
// backend (a region on a real node, with a cache of a quarter of the dataset)
// run the same seeded operation sequence and must read the same bytes, so
// every workload's checksum agrees (read-ahead, streams and references, on). The swap backend is the local code under a
// memory cgroup, which needs root and is exercised by bench/compare.sh.
#[test]
fn local_and_pagoda_backends_read_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::new(
        ([127, 0, 0, 1], 0).into(),
        64 << 20,
        dir.path().to_path_buf(),
    ))
    .unwrap();
    let addr = node.local_addr().to_string();
    let common = [
        "--dataset",
        "8MiB",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
        "--check-ops",
        "3000",
        "--seed",
        "7",
        "--json",
    ];
    let mut local_args = vec!["--backend", "local"];
    local_args.extend(common);
    let mut pagoda_args = vec![
        "--backend",
        "pagoda",
        "--node",
        &addr,
        "--cache",
        "2MiB",
        "--fraction",
        "0.25",
        // The reference extractor (on while `indirect` runs) reads ahead,
        // and must not change what is read.
        "--references",
    ];
    pagoda_args.extend(common);
    let local = run(&local_args);
    let pagoda = run(&pagoda_args);
    let workloads: Vec<_> = local.iter().map(|r| r["workload"].clone()).collect();
    assert_eq!(
        workloads,
        ["kv90", "kv50", "uniform90", "scan", "chase", "indirect"].map(serde_json::Value::from)
    );
    assert_eq!(local.len(), pagoda.len());
    for (l, p) in local.iter().zip(&pagoda) {
        assert_eq!(l["workload"], p["workload"]);
        assert_eq!(l["check_ops"], 3000);
        assert_eq!(l["checksum"], p["checksum"], "workload {}", l["workload"]);
        assert!(p["ops"].as_u64().unwrap() > 0);
    }
}

//! `pagoda region checksum` through the binary, against a real node process:
//! the JSON shape the command documents, the text form, and that the digests
//! follow the region's contents.

mod common;
use common::{NodeProcess, pagoda, run_json, run_ok};

use pagoda::{Client, ClientOptions};

fn is_hex_digest(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

// Guards the documented output of `region checksum`: the JSON fields and
// their types, one entry per segment with --segments, the text form's
// digest and segment lines, and that a write changes the digest of its
// segment only.
#[test]
fn checksum_prints_documented_json_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[]);
    // 5 MiB: three segments, the last holding 1 MiB.
    run_ok(&["region", "create", "sums", "--size", "5MiB"], &node.addr);

    let whole = run_json(&["region", "checksum", "sums", "--json"], &node.addr);
    assert_eq!(whole["name"], "sums");
    assert!(is_hex_digest(&whole["digest"]), "{whole}");
    assert_eq!(whole["segment_bytes"], 2 * 1024 * 1024);
    assert_eq!(whole["segment_count"], 3);
    assert!(whole.get("segments").is_none(), "{whole}");

    let listed = run_json(
        &["region", "checksum", "sums", "--segments", "--json"],
        &node.addr,
    );
    assert_eq!(listed["digest"], whole["digest"]);
    let segments = listed["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 3);
    for (index, segment) in segments.iter().enumerate() {
        assert_eq!(segment["index"], index);
        assert!(is_hex_digest(&segment["digest"]), "{segment}");
    }
    // Two full unwritten segments hash alike; the short last one does not.
    assert_eq!(segments[0]["digest"], segments[1]["digest"]);
    assert_ne!(segments[0]["digest"], segments[2]["digest"]);

    let text = run_ok(&["region", "checksum", "sums", "--segments"], &node.addr);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 + 3, "{text}");
    assert_eq!(lines[0], whole["digest"].as_str().unwrap());
    assert!(lines[1].contains("3 segments"), "{text}");
    for (index, line) in lines[2..].iter().enumerate() {
        assert_eq!(
            *line,
            format!("{index} {}", segments[index]["digest"].as_str().unwrap())
        );
    }

    // A write into segment 1 changes that segment's digest and the whole.
    let client = Client::connect(node.addr.as_str(), ClientOptions::default()).unwrap();
    let info = client.stat_region("sums").unwrap().info;
    client
        .raw()
        .write_pages(&info, &[600], &[7u8; 4096])
        .unwrap();
    let after = run_json(
        &["region", "checksum", "sums", "--segments", "--json"],
        &node.addr,
    );
    assert_ne!(after["digest"], whole["digest"]);
    let changed: Vec<usize> = (0..3)
        .filter(|&index| after["segments"][index]["digest"] != segments[index]["digest"])
        .collect();
    assert_eq!(changed, [1]);

    let missing = pagoda()
        .args(["region", "checksum", "nope", "--node", &node.addr])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        common::text(&missing).contains("not found"),
        "{}",
        common::text(&missing)
    );
}

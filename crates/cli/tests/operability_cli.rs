//! What an operator sees around the core: `pagoda node stat`, one meaning
//! per size unit, errors that say each thing once, `--version`, and logs
//! without colour codes off a terminal or as JSON.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{NodeProcess, free_port, pagoda, spawn_node, text};

/// Runs `pagoda` with `args` and then `--node addr`.
fn run(args: &[&str], addr: &str) -> Output {
    pagoda().args(args).args(["--node", addr]).output().unwrap()
}

// Guards `pagoda node stat`: the node's capacity, use, segment size,
// regions, connections and requests, as text and as JSON, and that it
// authenticates like the other client commands.
#[test]
fn node_stat_shows_the_node_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "node-stat-secret\n").unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let token_arg = token.to_str().unwrap();
    let node = NodeProcess::start(&data_dir, &["--storage", "none", "--token-file", token_arg]);

    let created = run(
        &[
            "region",
            "create",
            "a",
            "--size",
            "4MiB",
            "--token-file",
            token_arg,
        ],
        &node.addr,
    );
    assert!(created.status.success(), "{}", text(&created));

    let output = run(
        &["node", "stat", "--json", "--token-file", token_arg],
        &node.addr,
    );
    assert!(output.status.success(), "{}", text(&output));
    let stat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stat["node"], node.addr.as_str(), "{stat}");
    assert_eq!(stat["capacity_bytes"], 64 << 20, "{stat}");
    assert_eq!(stat["used_bytes"], 0, "{stat}");
    assert_eq!(stat["segment_bytes"], 2 << 20, "{stat}");
    assert_eq!(stat["regions"], 1, "{stat}");
    assert!(stat["connections"].as_u64().unwrap() >= 1, "{stat}");
    assert!(stat["requests"].as_u64().unwrap() >= 1, "{stat}");

    let output = run(&["node", "stat", "--token-file", token_arg], &node.addr);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    for line in [
        "capacity        64.0 MiB",
        "used            0 B (0.0 %)",
        "segment size    2.0 MiB",
        "regions         1",
        "connections     ",
        "requests        ",
    ] {
        assert!(all.contains(line), "{line:?} missing from\n{all}");
    }

    // Without the token the node refuses, and says why once.
    let output = run(&["node", "stat"], &node.addr);
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.starts_with("error: "), "{all}");
    assert_eq!(all.lines().count(), 1, "{all}");
}

// Guards the one rule for sizes on every size flag: binary KiB..TiB,
// decimal KB..TB, and the ambiguous K/M/G/T refused with both spellings
// suggested (it used to mean GiB silently).
#[test]
fn ambiguous_size_units_are_refused_on_every_size_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 6] = [
        &["node", "--capacity", "4G", "--data-dir", "x"],
        &[
            "node",
            "--capacity",
            "1GiB",
            "--data-dir",
            "x",
            "--connection-memory",
            "256M",
        ],
        &["region", "create", "a", "--size", "4G"],
        &[
            "region",
            "create",
            "a",
            "--size",
            "4MiB",
            "--page-size",
            "4K",
        ],
        &["bench", "--embedded", "--cache", "64M"],
        &["quickstart", "--cache", "16M"],
    ];
    for args in cases {
        let output = pagoda()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        let all = text(&output);
        assert!(!output.status.success(), "{args:?}: {all}");
        assert!(all.contains("is ambiguous"), "{args:?}: {all}");
        assert!(all.contains("iB for binary units"), "{args:?}: {all}");
        assert!(all.contains("B for decimal ones"), "{args:?}: {all}");
    }
}

// Guards sizes against a real node: decimal units mean 1000-based sizes
// (a node with --capacity 1GB has 10^9 bytes, in whole 2 MiB segments), and a region size that is not
// a multiple of the page size is refused once, with the nearest multiples
// and the binary spelling suggested, before the node is asked.
#[test]
fn decimal_sizes_are_decimal_and_region_sizes_get_advice() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = pagoda();
    command
        .args(["node", "--listen", &addr, "--capacity", "1GB"])
        .args(["--storage", "none", "--data-dir"])
        .arg(dir.path());
    let node = NodeProcess {
        child: spawn_node(command, Duration::from_secs(20)),
        addr,
    };
    let output = run(&["node", "stat", "--json"], &node.addr);
    assert!(output.status.success(), "{}", text(&output));
    let stat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let capacity = stat["capacity_bytes"].as_u64().unwrap();
    assert!(
        capacity <= 1_000_000_000 && capacity > 1_000_000_000 - (2 << 20),
        "{stat}"
    );

    let output = run(&["region", "create", "a", "--size", "4GB"], &node.addr);
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert_eq!(
        all.trim(),
        "error: --size 4GB (4000000000 bytes) is not a multiple of the page size (4KiB); \
         try 4GiB or 3906248KiB or 3906252KiB"
    );
    let output = run(
        &[
            "region",
            "create",
            "a",
            "--size",
            "3MB",
            "--page-size",
            "64KiB",
        ],
        &node.addr,
    );
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("not a multiple of the page size (64KiB)"),
        "{all}"
    );
    assert!(all.contains("try 3MiB or 2880KiB or 2944KiB"), "{all}");
    assert_eq!(all.matches("multiple").count(), 1, "{all}");

    let output = run(&["region", "create", "a", "--size", "4MB"], &node.addr);
    assert!(!output.status.success(), "{}", text(&output));
    let output = run(&["region", "create", "a", "--size", "4096KB"], &node.addr);
    assert!(output.status.success(), "{}", text(&output));
    let output = run(&["region", "stat", "a", "--json"], &node.addr);
    let stat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stat["size"], 4_096_000u64, "{stat}");
}

// Guards against errors that say the same thing twice ("region not found:
// region "x" not found", "invalid argument: invalid argument: ...") and
// against an address without a port failing as "invalid socket address".
#[test]
fn errors_say_each_thing_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &["--storage", "none"]);

    let output = run(&["region", "stat", "x"], &node.addr);
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert_eq!(all.trim(), "error: region \"x\" not found");

    let created = run(&["region", "create", "solo", "--size", "4MiB"], &node.addr);
    assert!(created.status.success(), "{}", text(&created));
    let output = run(&["region", "promote", "solo"], &node.addr);
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert_eq!(all.matches("invalid argument").count(), 1, "{all}");
    assert!(all.contains("not replicated"), "{all}");

    let output = run(
        &[
            "region",
            "create",
            "odd",
            "--size",
            "8MiB",
            "--page-size",
            "3KiB",
        ],
        &node.addr,
    );
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("power of two"), "{all}");
    assert_eq!(all.matches("invalid argument").count(), 1, "{all}");

    for (args, flag) in [
        (
            &["region", "ls", "--node", "localhost"][..],
            "--node localhost",
        ),
        (
            &["node", "stat", "--node", "10.0.0.1"][..],
            "--node 10.0.0.1",
        ),
        (&["region", "ls", "--node", "::1"][..], "--node ::1"),
        (
            &[
                "region",
                "create",
                "r",
                "--size",
                "4MiB",
                "--replicas",
                "127.0.0.1:1,otherhost",
            ][..],
            "--replicas otherhost",
        ),
        (
            &[
                "region",
                "recover",
                "r",
                "--from",
                "localhost",
                "--to",
                "127.0.0.1:1",
            ][..],
            "--from localhost",
        ),
        (
            &[
                "node",
                "--capacity",
                "64MiB",
                "--data-dir",
                "unused",
                "--peer",
                "localhost",
            ][..],
            "--peer localhost",
        ),
    ] {
        let output = pagoda().args(args).output().unwrap();
        let all = text(&output);
        assert!(!output.status.success(), "{args:?}: {all}");
        assert!(
            all.contains(&format!("{flag}: the port is missing")),
            "{args:?}: {all}"
        );
        assert!(all.contains("HOST:PORT, e.g. "), "{args:?}: {all}");
        assert!(all.contains(":7070"), "{args:?}: {all}");
    }
    let output = pagoda()
        .args(["region", "ls", "--node", "localhost:http"])
        .output()
        .unwrap();
    assert!(
        text(&output).contains("\"http\" is not a port"),
        "{}",
        text(&output)
    );
}

// Guards `pagoda --version`: the crate's version from Cargo metadata.
#[test]
fn version_is_the_crates_version() {
    let output = pagoda().arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("pagoda {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Starts a node with `extra` flags and its stderr piped to a file, creates
/// a region so that it logs, stops it and returns what it wrote to stderr.
fn node_stderr(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("stderr");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let mut child = pagoda()
        .args(["node", "--listen", &addr, "--capacity", "64MiB"])
        .args(["--storage", "none", "--data-dir"])
        .arg(&data_dir)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("listening on")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let created = run(&["region", "create", "logged", "--size", "4MiB"], &addr);
    assert!(created.status.success(), "{}", text(&created));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log).unwrap()
}

// Guards logs read by programs: no colour codes when stderr is not a
// terminal, and with --log-format json one JSON object per line, the
// announcement included.
#[test]
fn logs_have_no_colour_off_a_terminal_and_can_be_json() {
    let plain = node_stderr(&[]);
    assert!(!plain.contains('\u{1b}'), "{plain}");
    assert!(plain.contains("region created"), "{plain}");

    let json = node_stderr(&["--log-format", "json"]);
    assert!(!json.contains('\u{1b}'), "{json}");
    let mut messages = Vec::new();
    for line in json.lines().filter(|line| !line.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("{line:?} is not JSON: {error}"));
        assert!(value["level"].is_string(), "{line}");
        messages.push(value["fields"]["message"].as_str().unwrap_or("").to_owned());
    }
    assert!(
        messages.iter().any(|m| m.contains("listening on")),
        "{json}"
    );
    assert!(messages.iter().any(|m| m == "region created"), "{json}");
}

/// `GET /metrics` from `addr`, over a plain TCP stream: the status line and
/// the body.
fn get_metrics(addr: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

// Guards `pagoda node --metrics`: the flag reaches the node, which serves
// the Prometheus text format there, counting the requests a CLI command made.
#[test]
fn node_serves_metrics_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let node = NodeProcess::start(dir.path(), &["--storage", "none", "--metrics", &metrics]);
    let stat = run(&["node", "stat"], &node.addr);
    assert!(stat.status.success(), "{}", text(&stat));
    let (status, body) = get_metrics(&metrics);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains("# TYPE pagoda_node_requests_total counter"),
        "{body}"
    );
    assert!(
        body.contains("pagoda_node_requests_total{opcode=\"NodeStat\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains(&format!("pagoda_node_ram_capacity_bytes {}\n", 64 << 20)),
        "{body}"
    );
}

// Guards the metrics endpoint's default: it has no authentication, so a
// non-loopback address is refused, naming the flag that allows it.
#[test]
fn node_refuses_remote_metrics_without_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let output = pagoda()
        .args([
            "node",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--capacity",
            "64MiB",
            "--storage",
            "none",
            "--metrics",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = text(&output);
    assert!(text.contains("--metrics-allow-remote"), "{text}");
    assert_eq!(
        text.matches("refusing to serve metrics").count(),
        1,
        "{text}"
    );
}

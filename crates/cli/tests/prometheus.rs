//! The node's metrics as a real Prometheus sees them: Debian's `prometheus`
//! scrapes a `pagoda node --metrics` that served some region work, and its
//! query API must report the target up with Pagoda's series in it.
//! `promtool` checks the generated configuration and lints the node's text.
//!
//! Both binaries come from Debian's `prometheus` package, which the test
//! installs with apt-get when it is missing (`pagoda_cluster::testing::
//! require_binary`, one test process at a time); if that fails the test
//! fails saying why, it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{get, scrape, url_encode};
use common::{NodeProcess, free_port, log_tail, run, run_ok, spawn_logged, text};

/// How long Prometheus may take to start serving its API.
const PROMETHEUS_START_TIMEOUT_MS: u64 = 30_000;
/// How long the scraped series may take to appear in queries (the scrape
/// interval is one second; the first scrape can wait up to one interval).
const QUERY_TIMEOUT_MS: u64 = 30_000;
/// How often a query is retried while waiting.
const QUERY_POLL_MS: u64 = 250;
/// How long Prometheus may take to stop after SIGTERM.
const PROMETHEUS_STOP_TIMEOUT_MS: u64 = 10_000;
/// The job name of the generated configuration.
const JOB: &str = "pagoda";

/// A `prometheus` server on a loopback port with its storage in a
/// temporary directory, killed when dropped.
struct Prometheus {
    child: Child,
    /// Where its web UI and API listen (`127.0.0.1:PORT`).
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `binary` with the configuration at `config`, keeping its data
    /// and log in `dir`, and waits until it says it serves requests.
    fn start(binary: &Path, config: &Path, dir: &Path) -> Prometheus {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=info");
        let child = spawn_logged(
            command,
            &log,
            "prometheus",
            Some((
                "Server is ready to receive web requests",
                Duration::from_millis(PROMETHEUS_START_TIMEOUT_MS),
            )),
        );
        Prometheus { child, addr, log }
    }

    /// The `data.result` of an instant query, waiting (bounded) until
    /// `accept` takes it; fails the test with the last answer and the
    /// targets' state otherwise.
    fn query_until(
        &self,
        query: &str,
        accept: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let deadline = Instant::now() + Duration::from_millis(QUERY_TIMEOUT_MS);
        let mut last;
        loop {
            match get(&self.addr, &path) {
                Ok((200, body)) => {
                    let answer: serde_json::Value = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("{query}: {e}: {body}"));
                    assert_eq!(answer["status"], "success", "{query}: {answer}");
                    let result = answer["data"]["result"]
                        .as_array()
                        .unwrap_or_else(|| panic!("{query}: no result array in {answer}"))
                        .clone();
                    if accept(&result) {
                        return result;
                    }
                    last = body;
                }
                Ok((status, body)) => last = format!("HTTP {status}: {body}"),
                Err(error) => last = error,
            }
            if Instant::now() >= deadline {
                let targets =
                    get(&self.addr, "/api/v1/targets").map_or_else(|e| e, |(_, body)| body);
                panic!(
                    "Prometheus's answer to {query} was still not the expected one after \
                     {QUERY_TIMEOUT_MS} ms; the last: {last}\ntargets: {targets}\nits log:\n{}",
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(QUERY_POLL_MS));
        }
    }

    /// Stops it with SIGTERM, as its service would be, and waits (bounded)
    /// for it to exit cleanly.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to prometheus");
        let deadline = Instant::now() + Duration::from_millis(PROMETHEUS_STOP_TIMEOUT_MS);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "prometheus exited with {status} on SIGTERM; its log:\n{}",
                    log_tail(&self.log)
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not stop within {PROMETHEUS_STOP_TIMEOUT_MS} ms of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scrape configuration for one node's metrics endpoint: one-second
/// scrapes, so that the test waits seconds, not the default minute.
fn config(metrics_addr: &str) -> String {
    format!(
        "# Generated by crates/cli/tests/prometheus.rs.\n\
         global:\n  \
           scrape_interval: 1s\n  \
           scrape_timeout: 1s\n  \
           evaluation_interval: 1s\n\
         scrape_configs:\n  \
           - job_name: {JOB}\n    \
             static_configs:\n      \
               - targets: [\"{metrics_addr}\"]\n"
    )
}

/// Runs `promtool` with `args` (and `stdin`, if given), and fails the test
/// with its output unless it succeeds.
fn promtool(binary: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting promtool: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}): {}",
        output.status,
        text(&output)
    );
    text(&output)
}

/// The one sample's value of an instant query's result, as a number.
fn value(result: &[serde_json::Value]) -> f64 {
    assert_eq!(result.len(), 1, "{result:?}");
    result[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {result:?}"))
}

// Guards the metrics endpoint against a real scraper: a Prometheus server
// must accept the node's text (format, content type, histograms and
// labels), mark the target up and store Pagoda's series, so that a
// deployment's dashboards and alerts have data; and the node's text must
// pass promtool's lint.
#[test]
fn prometheus_scrapes_the_node() {
    let began = Instant::now();
    let prometheus_binary = pagoda_cluster::testing::require_binary("prometheus", "prometheus");
    let promtool_binary = pagoda_cluster::testing::require_binary("promtool", "prometheus");

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    std::fs::create_dir(&data_dir).unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let node = NodeProcess::start(&data_dir, &["--metrics", &metrics_addr]);

    // Region work through the CLI: a region written and read by the
    // benchmark, a checkpoint, and one refused request.
    run_ok(&["region", "create", "work", "--size", "8MiB"], &node.addr);
    let bench = run(
        &[
            "bench",
            "--region-size",
            "8MiB",
            "--cache",
            "1MiB",
            "--workload",
            "uniform",
            "--threads",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--json",
        ],
        &node.addr,
    );
    assert!(bench.status.success(), "{}", text(&bench));
    run_ok(&["region", "checkpoint", "work", "--full"], &node.addr);
    let missing = run(&["region", "stat", "no-such-region"], &node.addr);
    assert!(!missing.status.success(), "{}", text(&missing));

    // promtool: the configuration is valid, and so is the node's text.
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config(&metrics_addr)).unwrap();
    promtool(
        &promtool_binary,
        &["check", "config", config_path.to_str().unwrap()],
        None,
    );
    let metrics_text = scrape(&metrics_addr);
    promtool(&promtool_binary, &["check", "metrics"], Some(&metrics_text));

    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prometheus_dir).unwrap();
    let prometheus = Prometheus::start(&prometheus_binary, &config_path, &prometheus_dir);

    let instance = format!("instance=\"{metrics_addr}\", job=\"{JOB}\"");
    let up = prometheus.query_until(&format!("up{{{instance}}}"), |result| {
        result.len() == 1 && result[0]["value"][1] == "1"
    });
    assert_eq!(value(&up), 1.0);

    // Counters and histograms: the requests the CLI made, by opcode.
    let writes = prometheus.query_until(
        &format!("pagoda_node_requests_total{{{instance}, opcode=\"WritePages\"}}"),
        |result| result.len() == 1,
    );
    assert!(value(&writes) >= 1.0, "{writes:?}");
    let requests = prometheus.query_until(
        &format!("sum(pagoda_node_request_duration_seconds_count{{{instance}}})"),
        |result| result.len() == 1,
    );
    assert!(value(&requests) >= value(&writes), "{requests:?}");
    let buckets = prometheus.query_until(
        &format!(
            "count(pagoda_node_request_duration_seconds_bucket{{{instance}, opcode=\"ReadPages\"}})"
        ),
        |result| result.len() == 1,
    );
    // 18 finite buckets and +Inf.
    assert_eq!(value(&buckets), 19.0, "{buckets:?}");
    let errors = prometheus.query_until(
        &format!("pagoda_node_errors_total{{{instance}, code=\"RegionNotFound\"}}"),
        |result| result.len() == 1,
    );
    assert!(value(&errors) >= 1.0, "{errors:?}");
    let received = prometheus.query_until(
        &format!("pagoda_node_received_bytes_total{{{instance}}}"),
        |result| result.len() == 1,
    );
    assert!(value(&received) > 0.0, "{received:?}");
    let checkpoints = prometheus.query_until(
        &format!("pagoda_node_checkpoint_duration_seconds_count{{{instance}}}"),
        |result| result.len() == 1,
    );
    assert!(value(&checkpoints) >= 1.0, "{checkpoints:?}");

    // Levels read at scrape time.
    let capacity = prometheus.query_until(
        &format!("pagoda_node_ram_capacity_bytes{{{instance}}}"),
        |result| result.len() == 1,
    );
    assert_eq!(value(&capacity), (64u64 << 20) as f64);
    let age = prometheus.query_until(
        &format!("pagoda_node_region_checkpoint_age_seconds{{{instance}, region=\"work\"}}"),
        |result| result.len() == 1,
    );
    assert!(value(&age) >= 0.0, "{age:?}");
    let regions = prometheus.query_until(&format!("pagoda_node_regions{{{instance}}}"), |result| {
        result.len() == 1
    });
    assert!(value(&regions) >= 1.0, "{regions:?}");

    prometheus.stop();
    drop(node);
    eprintln!("prometheus scrape check took {:?}", began.elapsed());
}

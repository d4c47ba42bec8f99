//! The metrics endpoint as a scraper sees it: a node on loopback serving
//! `GET /metrics`, read over a plain TCP stream and parsed strictly as the
//! Prometheus text format, its values checked against what the test did.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use pagoda::{Client, ClientOptions, ErrorCode};
use pagoda_node::{Node, NodeConfig, NodeError, StorageConfig};

const PAGE: usize = 4096;
const CAPACITY: u64 = 64 << 20;

fn start(data_dir: &Path, storage: &Path) -> Node {
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap(), CAPACITY, data_dir.into());
    config.storage = Some(StorageConfig::Dir(storage.into()));
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    Node::start(config).unwrap()
}

/// Sends `request` as is and returns the status code and body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_owned())
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

/// One sample: its name, its labels, its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed strictly: every line a comment, a blank or a sample;
/// every sample's family declared with `# TYPE` before it.
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "family {name} declared twice"
                );
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                value => value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end with }");
                    (name, parse_labels(body))
                }
            };
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "{name} has no # TYPE before it");
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Scrape { samples, types }
    }

    /// The value of the one sample of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<_> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted)
            .collect();
        assert_eq!(found.len(), 1, "one sample of {name} {wanted:?}");
        found[0].value
    }

    /// A histogram's buckets for `labels`, by bound, checked monotonic and
    /// ending in +Inf equal to `_count`; returns the count.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        assert_eq!(self.types.get(name).map(String::as_str), Some("histogram"));
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                    && s.labels.len() == labels.len() + 1
            })
            .map(|s| {
                let bound = &s.labels["le"];
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().unwrap()
                };
                (bound, s.value)
            })
            .collect();
        assert!(buckets.len() >= 2, "{name} {labels:?} has buckets");
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        for pair in buckets.windows(2) {
            assert!(
                pair[0].1 <= pair[1].1,
                "{name} buckets not monotonic: {buckets:?}"
            );
        }
        let (last_bound, last) = *buckets.last().unwrap();
        assert_eq!(last_bound, f64::INFINITY, "{name} has a +Inf bucket");
        let count = self.value(&format!("{name}_count"), labels);
        assert_eq!(last, count, "{name}: +Inf bucket equals _count");
        count
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

/// Parses `a="x",b="y"` with the format's escapes.
fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {name} value is quoted");
        let mut value = String::new();
        loop {
            match chars.next().expect("label value ends") {
                '"' => break,
                '\\' => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?}"),
                },
                c => value.push(c),
            }
        }
        assert!(labels.insert(name, value).is_none(), "duplicate label");
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => panic!("unexpected {c:?} after a label"),
        }
    }
    labels
}

// Guards the endpoint against counting wrong or leaving things out: the
// requests, errors, bytes, RAM, region gauges and checkpoint histogram of a
// known sequence of operations.
#[test]
fn scrape_reports_what_the_node_did() {
    let data = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let node = start(data.path(), storage.path());
    let metrics = node.metrics_addr().expect("metrics are on");
    assert!(metrics.ip().is_loopback() && metrics.port() != 0);

    let client = Client::connect(node.local_addr(), ClientOptions::default()).unwrap();
    let region = client
        .create_region("metrics-a", 256 * PAGE as u64, PAGE as u32)
        .unwrap();
    let page = vec![7u8; PAGE];
    for number in 0..3 {
        client.raw().write_pages(&region, &[number], &page).unwrap();
    }
    let mut out = vec![0u8; PAGE];
    for number in 0..2 {
        client
            .raw()
            .read_pages(&region, &[number], &mut out)
            .unwrap();
    }
    match client.stat_region("no-such-region") {
        Err(pagoda::ClientError::Remote { code, .. }) => {
            assert_eq!(code, ErrorCode::RegionNotFound)
        }
        other => panic!("expected RegionNotFound, got {other:?}"),
    }
    client.checkpoint("metrics-a", false).unwrap();
    client.raw().write_pages(&region, &[10], &page).unwrap();

    let scrape = scrape(metrics);
    let requests = |opcode: &str| scrape.value("pagoda_node_requests_total", &[("opcode", opcode)]);
    assert_eq!(requests("WritePages"), 4.0);
    assert_eq!(requests("ReadPages"), 2.0);
    assert_eq!(requests("CreateRegion"), 1.0);
    assert_eq!(requests("StatRegion"), 1.0);
    assert_eq!(requests("Checkpoint"), 1.0);
    assert_eq!(
        requests("DeleteRegion"),
        0.0,
        "unused opcodes are exported as 0"
    );
    for opcode in ["WritePages", "ReadPages", "Checkpoint", "Hello"] {
        let count = scrape.histogram_count(
            "pagoda_node_request_duration_seconds",
            &[("opcode", opcode)],
        );
        assert_eq!(count, requests(opcode), "{opcode}: one latency per request");
    }
    assert_eq!(
        scrape.value("pagoda_node_errors_total", &[("code", "RegionNotFound")]),
        1.0
    );
    assert_eq!(
        scrape.value("pagoda_node_errors_total", &[("code", "Forbidden")]),
        0.0
    );
    assert!(scrape.value("pagoda_node_received_bytes_total", &[]) >= (4 * PAGE) as f64);
    assert!(scrape.value("pagoda_node_sent_bytes_total", &[]) >= (2 * PAGE) as f64);
    assert_eq!(
        scrape.value("pagoda_node_ram_capacity_bytes", &[]),
        CAPACITY as f64
    );
    assert_eq!(
        scrape.value("pagoda_node_ram_used_bytes", &[]),
        (2 << 20) as f64
    );
    assert_eq!(scrape.value("pagoda_node_regions", &[]), 1.0);
    assert_eq!(scrape.value("pagoda_node_connections", &[]), 1.0);
    let region_label = [("region", "metrics-a")];
    assert_eq!(
        scrape.value("pagoda_node_region_dirty_pages", &region_label),
        1.0,
        "one page written since the checkpoint"
    );
    assert_eq!(
        scrape.value("pagoda_node_region_resident_bytes", &region_label),
        (2 << 20) as f64
    );
    let age = scrape.value("pagoda_node_region_checkpoint_age_seconds", &region_label);
    assert!((0.0..60.0).contains(&age), "checkpoint age {age}");
    assert_eq!(
        scrape.histogram_count("pagoda_node_checkpoint_duration_seconds", &[]),
        1.0
    );
    assert_eq!(
        scrape.value("pagoda_node_checkpoint_failures_total", &[]),
        0.0
    );
    assert!(
        !scrape.has("pagoda_node_replica_lag_bytes", &[]),
        "no replicas"
    );

    // A deleted region's series go with it.
    client.delete_region("metrics-a").unwrap();
    let scrape = self::scrape(metrics);
    assert!(!scrape.has("pagoda_node_region_dirty_pages", &region_label));
    assert_eq!(scrape.value("pagoda_node_regions", &[]), 0.0);
}

// Guards the endpoint's surface: only GET /metrics is served, a request
// head is bounded, and the endpoint stops with the node.
#[test]
fn endpoint_serves_only_metrics_and_stops_with_the_node() {
    let data = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let node = start(data.path(), storage.path());
    let metrics = node.metrics_addr().unwrap();
    assert_eq!(http(metrics, b"GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(metrics, b"GET /metricsx HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(metrics, b"POST /metrics HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(metrics, b"GET /metrics?x=1 HTTP/1.0\n\n").0, 200);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let mut stream = TcpStream::connect(metrics).unwrap();
    // The endpoint stops reading at its bound and answers; the rest of the
    // request may then fail to send.
    let _ = stream.write_all(&huge);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    drop(node);
    assert!(TcpStream::connect(metrics).is_err(), "the endpoint stopped");
}

// Guards the defaults: no metrics unless asked for, and never on a
// non-loopback address without the explicit opt-in.
#[test]
fn metrics_are_off_by_default_and_loopback_only_unless_allowed() {
    let data = tempfile::tempdir().unwrap();
    let config = NodeConfig::new("127.0.0.1:0".parse().unwrap(), CAPACITY, data.path().into());
    let node = Node::start(config.clone()).unwrap();
    assert_eq!(node.metrics_addr(), None);
    drop(node);
    let mut remote = config.clone();
    remote.metrics = Some("0.0.0.0:0".parse().unwrap());
    match Node::start(remote.clone()) {
        Err(NodeError::Config(message)) => {
            assert!(message.contains("--metrics-allow-remote"), "{message}")
        }
        Err(other) => panic!("expected a config error, got {other}"),
        Ok(_) => panic!("served metrics on a non-loopback address"),
    }
    remote.metrics_allow_remote = true;
    let node = Node::start(remote).unwrap();
    let addr = node.metrics_addr().unwrap();
    assert!(addr.ip().is_unspecified());
    let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert_eq!(scrape(local).value("pagoda_node_regions", &[]), 0.0);
}

// Guards the replication gauges: a primary reports each replica of a region
// by address, in sync with no bytes unacknowledged once a `sync` write is
// answered, and a replica node reports none (it is no primary).
#[test]
fn primary_reports_its_replicas_lag_and_sync() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Node> = dirs
        .iter()
        .map(|dir| {
            let mut config =
                NodeConfig::new("127.0.0.1:0".parse().unwrap(), CAPACITY, dir.path().into());
            config.metrics = Some("127.0.0.1:0".parse().unwrap());
            Node::start(config).unwrap()
        })
        .collect();
    let replica = nodes[1].local_addr().to_string();
    let client = Client::connect(nodes[0].local_addr(), ClientOptions::default()).unwrap();
    let region = client
        .create_replicated_region(
            "replicated",
            256 * PAGE as u64,
            PAGE as u32,
            &[replica.as_str()],
            pagoda::ReplicationMode::Sync,
        )
        .unwrap();
    client
        .raw()
        .write_pages(&region, &[0], &vec![1u8; PAGE])
        .unwrap();
    let labels = [("region", "replicated"), ("replica", replica.as_str())];
    let primary = scrape(nodes[0].metrics_addr().unwrap());
    assert_eq!(primary.value("pagoda_node_replica_in_sync", &labels), 1.0);
    assert_eq!(primary.value("pagoda_node_replica_lag_bytes", &labels), 0.0);
    let secondary = scrape(nodes[1].metrics_addr().unwrap());
    assert!(!secondary.has("pagoda_node_replica_lag_bytes", &[]));
    assert_eq!(
        secondary.value("pagoda_node_regions", &[]),
        1.0,
        "the replica holds the region"
    );
}

// Guards the journal-lag gauge: transaction records shipped to the node
// (`Durability::Remote`) count until a checkpoint covers them, and a region
// without a journal reports 0.
#[test]
fn journal_records_count_until_a_checkpoint_covers_them() {
    let data = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let node = start(data.path(), storage.path());
    let metrics = node.metrics_addr().expect("metrics are on");
    let client = Client::connect(node.local_addr(), ClientOptions::default()).unwrap();
    client
        .create_region("journaled", 64 * PAGE as u64, PAGE as u32)
        .unwrap();
    client
        .create_region("plain", 64 * PAGE as u64, PAGE as u32)
        .unwrap();
    let region = client
        .open_region(
            "journaled",
            pagoda::RegionOptions {
                durability: pagoda::Durability::Remote,
                ..pagoda::RegionOptions::with_cache_bytes(16 * PAGE as u64)
            },
        )
        .unwrap();
    for round in 0..3u64 {
        region
            .transaction(|tx| tx.write_at(round * 100, &round.to_le_bytes()))
            .unwrap();
    }
    let lag = |scrape: &Scrape, name: &str| {
        scrape.value("pagoda_node_region_journal_records", &[("region", name)])
    };
    let scrape = scrape(metrics);
    assert_eq!(lag(&scrape, "journaled"), 3.0);
    assert_eq!(lag(&scrape, "plain"), 0.0);
    client.checkpoint("journaled", false).unwrap();
    assert_eq!(lag(&self::scrape(metrics), "journaled"), 0.0);
}

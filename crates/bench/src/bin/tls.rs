//! What TLS costs, side by side with plain TCP in one run: queue-depth-one
//! 4 KiB page reads (p50) and batched throughput (256-page reads and writes,
//! two requests in flight on one client), each alternated between a plain
//! node and a TLS node (certificates made here with rcgen) for several runs,
//! reported as medians.

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, RegionInfo, TlsOptions};
use pagoda_bench::fixture::create_written_region;
use pagoda_bench::report::{Flags, Table, emit, micros, progress};
use pagoda_bench::{FastRng, PAGE_BYTES};
use pagoda_node::{Node, NodeConfig, TlsConfig};

const USAGE: &str = "\
tls: the cost of TLS beside plain TCP (QD1 p50 and batched throughput)

  --runs N              alternated runs of each measurement (default 5)
  --qd1-samples N       QD1 reads per run (default 5000)
  --seconds S           seconds per throughput run (default 1.5)
  --batch N             pages per batched request (default 256)
  --in-flight N         batched requests in flight, threads on one client (default 2)
  --region-mib N        region size in MiB (default 256)
  --client-spin-us N    client spin ceiling (default: the product's, 1000)
  --node-spin-us N      node connection spin ceiling (default: the product's, 1000)
  --connections N       idle connections for the memory measurement (default 200)
  --json                print JSON instead of the markdown table";

/// This process's resident set, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// A CA and a node certificate for 127.0.0.1, written to `dir`.
fn certificates(dir: &Path) -> (TlsConfig, TlsOptions) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let certificate = leaf
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let cert_file = dir.join("node.pem");
    let key_file = dir.join("node.key");
    std::fs::write(&cert_file, certificate.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (
        TlsConfig {
            cert_file,
            key_file,
            client_ca_file: None,
        },
        TlsOptions::with_ca(ca_file),
    )
}

struct Side {
    _node: Node,
    address: std::net::SocketAddr,
    client: Client,
    info: RegionInfo,
}

fn side(
    name: &'static str,
    dir: &Path,
    tls: Option<(TlsConfig, TlsOptions)>,
    region_bytes: u64,
    spins: (Duration, Duration),
) -> Side {
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut config = NodeConfig::new(([127, 0, 0, 1], 0).into(), region_bytes * 2, data_dir);
    config.spin = spins.1;
    let mut options = ClientOptions {
        spin: spins.0,
        client_name: "tls-bench".into(),
        ..ClientOptions::default()
    };
    if let Some((server, client)) = tls {
        config.tls = Some(server);
        options.tls = Some(client);
    }
    let node = Node::start(config).expect("the node starts");
    let client = Client::connect(node.local_addr(), options).expect("the client connects");
    let info = create_written_region(&client, "tls-bench", region_bytes);
    Side {
        address: node.local_addr(),
        _node: node,
        client,
        info,
    }
}

/// QD1 reads of one random page: the p50 in nanoseconds.
fn qd1_p50(side: &Side, samples: usize, rng: &mut FastRng) -> u64 {
    let pages = side.info.size / PAGE_BYTES as u64;
    let mut buffer = vec![0u8; PAGE_BYTES];
    let mut latencies: Vec<u64> = (0..samples)
        .map(|_| {
            let page = rng.below(pages);
            let began = Instant::now();
            side.client
                .raw()
                .read_pages(&side.info, &[page], &mut buffer)
                .expect("a read");
            let elapsed = began.elapsed().as_nanos() as u64;
            assert!(buffer[0] == page as u8);
            elapsed
        })
        .collect();
    latencies.sort_unstable();
    latencies[latencies.len() / 2]
}

/// Batched reads or writes from `in_flight` threads on one client: bytes per
/// second.
fn throughput(side: &Side, write: bool, batch: usize, in_flight: usize, duration: Duration) -> f64 {
    let pages = side.info.size / PAGE_BYTES as u64;
    let barrier = Barrier::new(in_flight);
    let results: Vec<(u64, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..in_flight)
            .map(|index| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut rng = FastRng::new(0x715 + index as u64);
                    let mut buffer = vec![0u8; batch * PAGE_BYTES];
                    let mut list = vec![0u64; batch];
                    barrier.wait();
                    let began = Instant::now();
                    let mut requests = 0u64;
                    while began.elapsed() < duration {
                        let first = rng.below(pages - batch as u64);
                        for (offset, page) in list.iter_mut().enumerate() {
                            *page = first + offset as u64;
                        }
                        if write {
                            // Keep the region's pattern: page p holds p as u8.
                            for (offset, page) in buffer.chunks_exact_mut(PAGE_BYTES).enumerate() {
                                page.fill((first + offset as u64) as u8);
                            }
                            side.client
                                .raw()
                                .write_pages(&side.info, &list, &buffer)
                                .expect("a batched write");
                        } else {
                            side.client
                                .raw()
                                .read_pages(&side.info, &list, &mut buffer)
                                .expect("a batched read");
                        }
                        requests += 1;
                    }
                    (requests, began.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let requests: u64 = results.iter().map(|r| r.0).sum();
    let seconds = results.iter().map(|r| r.1).fold(0.0, f64::max);
    requests as f64 * (batch * PAGE_BYTES) as f64 / seconds
}

fn main() {
    let flags = Flags::parse(
        &["json"],
        &[
            "runs",
            "qd1-samples",
            "seconds",
            "batch",
            "in-flight",
            "region-mib",
            "client-spin-us",
            "node-spin-us",
            "connections",
        ],
        USAGE,
    );
    let json = flags.switch("json");
    let runs: usize = flags.number::<usize>("runs", 5).max(1);
    let samples: usize = flags.number::<usize>("qd1-samples", 5000).max(1);
    let duration = Duration::from_secs_f64(flags.number("seconds", 1.5));
    let batch: usize = flags.number::<usize>("batch", 256).max(1);
    let in_flight: usize = flags.number::<usize>("in-flight", 2).max(1);
    let region_bytes = flags.number::<u64>("region-mib", 256).max(1) << 20;

    let spins = (
        Duration::from_micros(flags.number("client-spin-us", pagoda::SPIN_US_DEFAULT)),
        Duration::from_micros(flags.number("node-spin-us", pagoda_node::server::SPIN_US_DEFAULT)),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let plain = side("plain", dir.path(), None, region_bytes, spins);
    let (server_tls, client_tls) = certificates(dir.path());
    let tls = side(
        "tls",
        dir.path(),
        Some((server_tls, client_tls.clone())),
        region_bytes,
        spins,
    );
    let sides = [&plain, &tls];
    let mut rng = FastRng::new(0x7150);
    for side in sides {
        qd1_p50(side, 1000, &mut rng);
    }
    // [side][measurement] over runs: QD1 p50 ns, read B/s, write B/s.
    let mut results = vec![vec![Vec::new(), Vec::new(), Vec::new()]; 2];
    for run in 0..runs {
        progress(&format!("run {}/{runs}", run + 1));
        // Alternate which side goes first.
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for &index in &order {
            results[index][0].push(qd1_p50(sides[index], samples, &mut rng) as f64);
        }
        for &index in &order {
            results[index][1].push(throughput(sides[index], false, batch, in_flight, duration));
        }
        for &index in &order {
            results[index][2].push(throughput(sides[index], true, batch, in_flight, duration));
        }
    }
    let medians: Vec<Vec<f64>> = results
        .iter_mut()
        .map(|side| side.iter_mut().map(|values| median(values)).collect())
        .collect();
    let mut table = Table::new(&["measurement", "plain", "TLS", "TLS cost", "goal"]);
    let qd1_cost_ns = medians[1][0] - medians[0][0];
    table.row(vec![
        "QD1 4 KiB read, p50 µs".into(),
        micros(medians[0][0] as u64),
        micros(medians[1][0] as u64),
        format!("{:+.2} µs", qd1_cost_ns / 1000.0),
        "≤ 3 µs".into(),
    ]);
    let mut costs = Vec::new();
    for (column, name) in [(1, "read"), (2, "write")] {
        let cost = 1.0 - medians[1][column] / medians[0][column];
        costs.push(cost);
        table.row(vec![
            format!("batched {name}s of {batch} pages, {in_flight} in flight, MB/s"),
            format!("{:.0}", medians[0][column] / 1e6),
            format!("{:.0}", medians[1][column] / 1e6),
            format!("{:.1} %", cost * 100.0),
            "≤ 15 %".into(),
        ]);
    }
    // Memory: connections that each made one small request, plain and TLS;
    // both ends are in this process, so this is the client's and the node's
    // share together. Each side opens two batches and counts the second
    // (the first warms up allocator arenas), and every connection stays
    // open until the end, so no side reuses memory another freed.
    let connections: usize = flags.number("connections", 200);
    let mut per_connection = Vec::new();
    let mut open = Vec::new();
    for (side, tls) in [(&plain, None), (&tls, Some(client_tls))] {
        let mut batch = |count: usize| {
            for _ in 0..count {
                let client = Client::connect(
                    side.address,
                    ClientOptions {
                        tls: tls.clone(),
                        ..ClientOptions::default()
                    },
                )
                .expect("a client connects");
                client.node_stat().expect("a request");
                open.push(client);
            }
            std::thread::sleep(Duration::from_millis(200));
            rss_bytes()
        };
        let warmed = batch(connections);
        let counted = batch(connections);
        per_connection.push(counted.saturating_sub(warmed) as f64 / connections as f64);
    }
    drop(open);
    table.row(vec![
        format!("resident memory per connection, client and node ({connections} idle), KiB"),
        format!("{:.0}", per_connection[0] / 1024.0),
        format!("{:.0}", per_connection[1] / 1024.0),
        format!(
            "{:+.0} KiB",
            (per_connection[1] - per_connection[0]) / 1024.0
        ),
        "".into(),
    ]);
    let markdown = format!(
        "{}\nMedians of {runs} alternated runs ({samples} QD1 reads, {:.1} s of each batched \
         run); TLS 1.3 with the ring provider.\n",
        table.markdown(),
        duration.as_secs_f64()
    );
    emit(
        json,
        &serde_json::json!({
            "runs": runs,
            "qd1_p50_ns": { "plain": medians[0][0], "tls": medians[1][0] },
            "read_bytes_per_second": { "plain": medians[0][1], "tls": medians[1][1] },
            "write_bytes_per_second": { "plain": medians[0][2], "tls": medians[1][2] },
            "qd1_cost_ns": qd1_cost_ns,
            "read_cost": costs[0],
            "write_cost": costs[1],
            "rss_per_connection_bytes": { "plain": per_connection[0], "tls": per_connection[1] },
        }),
        &markdown,
    );
}

//! An authenticated, well-behaved client's queue-depth-one latency with the
//! node unloaded and under each hostile-client probe, side by side in one run,
//! with the node's resident memory.
//!
//! The node runs in a child process (this program, re-run with
//! `--node-child`), so that its resident set (`/proc/PID/status`, VmRSS) is
//! the node's alone. For each round and each probe: the client measures QD1
//! 4 KiB page reads with no probe running, then with the probe running; the
//! probe is then stopped and its connections closed. Probes:
//!
//! - `slowloris`: sockets that trickle a Hello one byte per tick and never
//!   finish it, reconnecting when the node closes them;
//! - `announced`: authenticated connections that each announce a
//!   largest-size frame, send all of it but its last byte, and stall;
//! - `unread`: authenticated connections that pipeline full-size page reads
//!   and never read the replies;
//! - `partial`: authenticated connections that send half a frame and stall;
//! - `bad-auth`: a client that fails the handshake as fast as it can.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, RegionInfo};
use pagoda_bench::fixture::create_written_region;
use pagoda_bench::report::{Flags, Table, emit, micros, progress};
use pagoda_bench::{FastRng, PAGE_BYTES};
use pagoda_node::{Node, NodeConfig};
use pagoda_wire::auth::ClientHandshake;
use pagoda_wire::frame::{FrameBuilder, HEADER_BYTES, Opcode};
use pagoda_wire::io::FrameReader;
use pagoda_wire::limits::FRAME_PAYLOAD_BYTES_MAX;
use pagoda_wire::message::encode_read_pages;
use pagoda_wire::{Request, Response};

const USAGE: &str = "\
hostile: a well-behaved client's QD1 latency under hostile-client probes

  --seconds S             seconds of measurement per phase (default 3)
  --rounds N              rounds of every probe (default 3)
  --capacity-mib N        the node's --capacity (default 512)
  --region-mib N          the client's pre-written region (default 64)
  --probes LIST           of slowloris,announced,unread,partial,bad-auth (default all)
  --slowloris N           trickling sockets (default 512)
  --announced N           connections announcing 16 MiB frames (default 64)
  --unread N              connections with unread 16 MiB replies (default 16)
  --partial N             connections with half frames (default 256)
  --json                  print JSON instead of the markdown table";

const TOKEN: &[u8] = b"hostile-bench-token";
const PROBES: [&str; 5] = ["slowloris", "announced", "unread", "partial", "bad-auth"];

/// The connection bound the node documents (docs/design.md, Limits):
/// 512 connections × 128 KiB of baselines plus the 256 MiB budget.
const DOCUMENTED_CONNECTION_BYTES: u64 = 512 * 128 * 1024 + 256 * 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--node-child") {
        node_child(&args[2..]);
        return;
    }
    let flags = Flags::parse(
        &["json"],
        &[
            "seconds",
            "rounds",
            "capacity-mib",
            "region-mib",
            "probes",
            "slowloris",
            "announced",
            "unread",
            "partial",
        ],
        USAGE,
    );
    let json = flags.switch("json");
    let seconds = Duration::from_secs_f64(flags.number("seconds", 3.0));
    let rounds: usize = flags.number::<usize>("rounds", 3).max(1);
    let capacity_mib: u64 = flags.number("capacity-mib", 512);
    let region_bytes = flags.number::<u64>("region-mib", 64).max(1) << 20;
    let probes: Vec<String> = match flags.values_get("probes") {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => PROBES.iter().map(|p| p.to_string()).collect(),
    };
    let sizes = ProbeSizes {
        slowloris: flags.number("slowloris", 512),
        announced: flags.number("announced", 64),
        unread: flags.number("unread", 16),
        partial: flags.number("partial", 256),
    };

    let mut child = NodeProcess::start(capacity_mib);
    let addr = child.addr;
    let client = Client::connect(
        addr,
        ClientOptions {
            client_name: "hostile-bench".into(),
            ..ClientOptions::with_token(TOKEN)
        },
    )
    .expect("the well-behaved client connects");
    let info = create_written_region(&client, "hostile", region_bytes);
    let idle_rss = child.rss_bytes();
    progress(&format!(
        "node pid {} on {addr}: {} MiB resident with the region written",
        child.pid(),
        idle_rss >> 20
    ));

    let mut rng = FastRng::new(0x5eed_0016);
    // Warm up.
    measure(&client, &info, &mut rng, Duration::from_millis(500));
    let mut rows: Vec<ProbeResult> = probes.iter().map(|name| ProbeResult::new(name)).collect();
    for round in 0..rounds {
        for (index, name) in probes.iter().enumerate() {
            progress(&format!("round {}/{rounds}: {name}", round + 1));
            let unloaded = measure(&client, &info, &mut rng, seconds);
            let rss = RssSampler::start(child.pid());
            let probe = Probe::start(name, addr, &info, &sizes);
            // Let the probe take hold before measuring.
            std::thread::sleep(Duration::from_millis(500));
            let loaded = measure(&client, &info, &mut rng, seconds);
            let peak = rss.stop();
            let effect = probe.stop();
            rows[index].add(unloaded, loaded, peak, effect);
            // Let the node close the probe's connections.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    drop(client);
    child.stop();

    let capacity_bytes = capacity_mib << 20;
    let bound = capacity_bytes + DOCUMENTED_CONNECTION_BYTES;
    let mut table = Table::new(&[
        "probe",
        "unloaded p50 µs",
        "unloaded p99 µs",
        "probed p50 µs",
        "probed p99 µs",
        "p99 ratio (goal ≤ 2)",
        "failed requests",
        "node RSS peak MiB",
        "RSS within capacity + bound",
        "probe",
    ]);
    let mut document = Vec::new();
    for row in &rows {
        let summary = row.summary();
        table.row(vec![
            row.name.clone(),
            micros(summary.unloaded_p50_ns),
            micros(summary.unloaded_p99_ns),
            micros(summary.loaded_p50_ns),
            micros(summary.loaded_p99_ns),
            format!("{:.2}", summary.p99_ratio),
            summary.failures.to_string(),
            (summary.rss_peak_bytes >> 20).to_string(),
            if summary.rss_peak_bytes <= bound {
                "yes"
            } else {
                "no"
            }
            .into(),
            summary.effect.clone(),
        ]);
        document.push(serde_json::json!({
            "probe": row.name,
            "unloaded_p50_ns": summary.unloaded_p50_ns,
            "unloaded_p99_ns": summary.unloaded_p99_ns,
            "loaded_p50_ns": summary.loaded_p50_ns,
            "loaded_p99_ns": summary.loaded_p99_ns,
            "p99_ratio": summary.p99_ratio,
            "failures": summary.failures,
            "rss_peak_bytes": summary.rss_peak_bytes,
            "effect": summary.effect,
        }));
    }
    let markdown = format!(
        "{}\nMedians of {rounds} rounds of {:.1} s per phase. Node: --capacity {capacity_mib} MiB, \
         defaults otherwise; {} MiB resident idle with the {} MiB region written; bound: \
         capacity + {} MiB for connections = {} MiB.\n",
        table.markdown(),
        seconds.as_secs_f64(),
        idle_rss >> 20,
        region_bytes >> 20,
        DOCUMENTED_CONNECTION_BYTES >> 20,
        bound >> 20
    );
    emit(
        json,
        &serde_json::json!({ "rounds": rounds, "capacity_bytes": capacity_bytes,
            "bound_bytes": bound, "idle_rss_bytes": idle_rss, "probes": document }),
        &markdown,
    );
}

// ---------------------------------------------------------------------------
// The node, in a child process.

fn node_child(args: &[String]) {
    let capacity_mib: u64 = args
        .first()
        .and_then(|value| value.parse().ok())
        .expect("--node-child CAPACITY_MIB");
    let data_dir = tempfile::tempdir().expect("a data dir");
    let mut config = NodeConfig::new(
        ([127, 0, 0, 1], 0).into(),
        capacity_mib << 20,
        data_dir.path().to_path_buf(),
    );
    config.token = Some(TOKEN.to_vec());
    let node = Node::start(config).expect("the node starts");
    println!("{}", node.local_addr());
    std::io::stdout().flush().unwrap();
    // Serve until the parent closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    node.shutdown();
}

struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(capacity_mib: u64) -> NodeProcess {
        let mut child = Command::new(std::env::current_exe().expect("this program's path"))
            .arg("--node-child")
            .arg(capacity_mib.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the node's process starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the node's address");
        let addr = line.trim().parse().expect("an address");
        NodeProcess { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_bytes(&self) -> u64 {
        rss_of(self.pid())
    }

    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Samples a process's resident set until stopped; the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(rss_of(pid));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak.max(rss_of(pid))
            })
        };
        RssSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

// ---------------------------------------------------------------------------
// The well-behaved client.

struct Sample {
    latencies_ns: Vec<u64>,
    failures: u64,
}

/// QD1 reads of one random 4 KiB page for `duration`.
fn measure(client: &Client, info: &RegionInfo, rng: &mut FastRng, duration: Duration) -> Sample {
    let pages = info.size / PAGE_BYTES as u64;
    let mut buffer = vec![0u8; PAGE_BYTES];
    let mut sample = Sample {
        latencies_ns: Vec::new(),
        failures: 0,
    };
    let began = Instant::now();
    while began.elapsed() < duration {
        let page = rng.below(pages);
        let start = Instant::now();
        match client.raw().read_pages(info, &[page], &mut buffer) {
            Ok(()) => {
                sample.latencies_ns.push(start.elapsed().as_nanos() as u64);
                assert!(buffer[0] == page as u8, "page {page} read back wrong");
            }
            Err(error) => {
                sample.failures += 1;
                if sample.failures <= 3 {
                    progress(&format!("the well-behaved client failed: {error}"));
                }
            }
        }
    }
    sample
}

fn percentile(samples: &mut [u64], quantile: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let index = ((samples.len() as f64 * quantile).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

struct ProbeResult {
    name: String,
    rounds: Vec<Round>,
    effects: Vec<String>,
}

/// One round of one probe.
struct Round {
    unloaded_p50_ns: u64,
    unloaded_p99_ns: u64,
    loaded_p50_ns: u64,
    loaded_p99_ns: u64,
    failures: u64,
    rss_peak_bytes: u64,
}

struct Summary {
    unloaded_p50_ns: u64,
    unloaded_p99_ns: u64,
    loaded_p50_ns: u64,
    loaded_p99_ns: u64,
    p99_ratio: f64,
    failures: u64,
    rss_peak_bytes: u64,
    effect: String,
}

impl ProbeResult {
    fn new(name: &str) -> ProbeResult {
        ProbeResult {
            name: name.to_owned(),
            rounds: Vec::new(),
            effects: Vec::new(),
        }
    }

    fn add(&mut self, mut unloaded: Sample, mut loaded: Sample, rss: u64, effect: String) {
        self.rounds.push(Round {
            unloaded_p50_ns: percentile(&mut unloaded.latencies_ns, 0.5),
            unloaded_p99_ns: percentile(&mut unloaded.latencies_ns, 0.99),
            loaded_p50_ns: percentile(&mut loaded.latencies_ns, 0.5),
            loaded_p99_ns: percentile(&mut loaded.latencies_ns, 0.99),
            failures: unloaded.failures + loaded.failures,
            rss_peak_bytes: rss,
        });
        self.effects.push(effect);
    }

    fn summary(&self) -> Summary {
        let column = |pick: fn(&Round) -> u64| {
            let mut values: Vec<f64> = self.rounds.iter().map(|r| pick(r) as f64).collect();
            median(&mut values) as u64
        };
        let mut ratios: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r.loaded_p99_ns as f64 / r.unloaded_p99_ns.max(1) as f64)
            .collect();
        Summary {
            unloaded_p50_ns: column(|r| r.unloaded_p50_ns),
            unloaded_p99_ns: column(|r| r.unloaded_p99_ns),
            loaded_p50_ns: column(|r| r.loaded_p50_ns),
            loaded_p99_ns: column(|r| r.loaded_p99_ns),
            p99_ratio: median(&mut ratios),
            failures: self.rounds.iter().map(|r| r.failures).sum(),
            rss_peak_bytes: self
                .rounds
                .iter()
                .map(|r| r.rss_peak_bytes)
                .max()
                .unwrap_or(0),
            effect: self.effects.last().cloned().unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------
// Probes.

struct ProbeSizes {
    slowloris: usize,
    announced: usize,
    unread: usize,
    partial: usize,
}

/// A running probe: its threads stop when `stop` is set; each thread returns
/// a count of what it achieved, summarised as the probe's effect.
struct Probe {
    name: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counter: Arc<AtomicU64>,
}

impl Probe {
    fn start(name: &str, addr: SocketAddr, info: &RegionInfo, sizes: &ProbeSizes) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let spawn = |threads: &mut Vec<JoinHandle<()>>, job: Box<dyn FnOnce() + Send>| {
            threads.push(std::thread::spawn(job));
        };
        match name {
            "slowloris" => {
                let (stop, counter, count) = (stop.clone(), counter.clone(), sizes.slowloris);
                spawn(
                    &mut threads,
                    Box::new(move || slowloris(addr, count, &stop, &counter)),
                );
            }
            "announced" => {
                // Frames go out from a few threads; the connections stay open
                // until the probe stops.
                let per_thread = sizes.announced.div_ceil(4);
                for _ in 0..4 {
                    let (stop, counter) = (stop.clone(), counter.clone());
                    spawn(
                        &mut threads,
                        Box::new(move || announced(addr, per_thread, &stop, &counter)),
                    );
                }
            }
            "unread" => {
                let (stop, counter, count) = (stop.clone(), counter.clone(), sizes.unread);
                let info = info.clone();
                spawn(
                    &mut threads,
                    Box::new(move || unread(addr, &info, count, &stop, &counter)),
                );
            }
            "partial" => {
                let (stop, counter, count) = (stop.clone(), counter.clone(), sizes.partial);
                spawn(
                    &mut threads,
                    Box::new(move || partial(addr, count, &stop, &counter)),
                );
            }
            "bad-auth" => {
                let (stop, counter) = (stop.clone(), counter.clone());
                spawn(
                    &mut threads,
                    Box::new(move || bad_auth(addr, &stop, &counter)),
                );
            }
            other => panic!("unknown probe {other:?}; see --help"),
        }
        Probe {
            name: name.to_owned(),
            stop,
            threads,
            counter,
        }
    }

    /// Stops the probe; what it did, in words.
    fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let count = self.counter.load(Ordering::Relaxed);
        match self.name.as_str() {
            "slowloris" => format!("{count} trickling connections opened"),
            "announced" => format!("{count} frames of 16 MiB announced and stalled"),
            "unread" => format!("{count} 16 MiB reads left unread"),
            "partial" => format!("{count} half frames stalled"),
            _ => format!("{count} failed handshakes"),
        }
    }
}

fn hello_frame(token: &[u8]) -> (ClientHandshake, Vec<u8>) {
    let handshake = ClientHandshake::new("hostile-probe", "default", token);
    let mut out = Vec::new();
    handshake.hello().encode(&mut out, 1, 0);
    (handshake, out)
}

/// An authenticated raw connection.
fn authenticated(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_nodelay(true).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let (handshake, hello) = hello_frame(TOKEN);
    stream.write_all(&hello).ok()?;
    let mut reader = FrameReader::new(stream.try_clone().ok()?, Duration::ZERO);
    let proof = {
        let frame = reader.read_frame().ok()?;
        match Response::decode(frame.header.opcode, frame.payload).ok()? {
            Response::AuthChallenge { salt, node_nonce } => handshake.proof(salt, &node_nonce),
            _ => return None,
        }
    };
    let mut out = Vec::new();
    proof.encode(&mut out, 2, 0);
    stream.write_all(&out).ok()?;
    let frame = reader.read_frame().ok()?;
    (frame.header.opcode == Opcode::HelloOk as u8).then_some(stream)
}

fn slowloris(addr: SocketAddr, count: usize, stop: &AtomicBool, opened: &AtomicU64) {
    let (_, hello) = hello_frame(TOKEN);
    let mut sockets: Vec<(TcpStream, usize)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        while sockets.len() < count {
            let Ok(socket) = TcpStream::connect(addr) else {
                break;
            };
            socket.set_nonblocking(true).unwrap();
            sockets.push((socket, 0));
            opened.fetch_add(1, Ordering::Relaxed);
        }
        sockets.retain_mut(|(socket, sent)| {
            let wrote = *sent + 1 < hello.len()
                && socket.write(&hello[*sent..*sent + 1]).is_ok_and(|n| n == 1);
            let mut probe = [0u8; 64];
            let open = matches!(socket.read(&mut probe),
                Err(ref error) if error.kind() == std::io::ErrorKind::WouldBlock);
            *sent += 1;
            wrote && open
        });
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn announced(addr: SocketAddr, count: usize, stop: &AtomicBool, announced: &AtomicU64) {
    let mut frame = Vec::new();
    let mut builder = FrameBuilder::begin(&mut frame, Opcode::Ping, 7, 0);
    let payload = builder.payload();
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.resize(HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX, 0);
    builder.finish();
    let mut held = Vec::new();
    for _ in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(mut stream) = authenticated(addr) else {
            continue;
        };
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // All but the last byte; a node that refused the memory reads it
        // through and waits for the last byte like the others.
        if stream.write_all(&frame[..frame.len() - 1]).is_ok() {
            announced.fetch_add(1, Ordering::Relaxed);
        }
        held.push(stream);
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unread(addr: SocketAddr, info: &RegionInfo, count: usize, stop: &AtomicBool, sent: &AtomicU64) {
    let pages: Vec<u64> = (0..(info.size / PAGE_BYTES as u64).min(4096)).collect();
    let mut requests = Vec::new();
    for id in 0..8 {
        encode_read_pages(&mut requests, 10 + id, 0, info.id, &pages);
    }
    let mut held = Vec::new();
    for _ in 0..count {
        let Some(mut stream) = authenticated(addr) else {
            continue;
        };
        if stream.write_all(&requests).is_ok() {
            sent.fetch_add(8, Ordering::Relaxed);
        }
        held.push(stream);
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn partial(addr: SocketAddr, count: usize, stop: &AtomicBool, stalled: &AtomicU64) {
    let mut frame = Vec::new();
    let mut builder = FrameBuilder::begin(&mut frame, Opcode::Ping, 7, 0);
    let payload = builder.payload();
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.resize(HEADER_BYTES + 64 * 1024, 0);
    builder.finish();
    let mut held = Vec::new();
    for _ in 0..count {
        let Some(mut stream) = authenticated(addr) else {
            continue;
        };
        if stream.write_all(&frame[..frame.len() / 2]).is_ok() {
            stalled.fetch_add(1, Ordering::Relaxed);
        }
        held.push(stream);
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bad_auth(addr: SocketAddr, stop: &AtomicBool, failed: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (handshake, hello) = hello_frame(b"a wrong token");
        if stream.write_all(&hello).is_err() {
            continue;
        }
        let mut reader = FrameReader::new(stream.try_clone().unwrap(), Duration::ZERO);
        let proof: Request<'static> = match reader.read_frame() {
            Ok(frame) => match Response::decode(frame.header.opcode, frame.payload) {
                Ok(Response::AuthChallenge { salt, node_nonce }) => {
                    handshake.proof(salt, &node_nonce)
                }
                _ => continue,
            },
            Err(_) => continue,
        };
        let mut out = Vec::new();
        proof.encode(&mut out, 2, 0);
        if stream.write_all(&out).is_err() {
            continue;
        }
        if let Ok(frame) = reader.read_frame()
            && frame.header.opcode == Opcode::Error as u8
        {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

//! The node's Prometheus metrics: what it records and the `/metrics`
//! endpoint that serves them.
//!
//! Counters and histograms are recorded through the `metrics` facade's
//! handles into a recorder of this node's own (not the process-wide one, so
//! that several nodes in one process keep apart), registered once at start:
//! a request costs one counter increment and one histogram record, nothing
//! more. Everything that is a level rather than an event (RAM, regions,
//! connections, each region's dirty pages and checkpoint age, each
//! replica's lag) is read from the node's state when a scrape asks for it,
//! so the write path pays nothing for it and a deleted region's series
//! vanish with it.
//!
//! The endpoint is one thread on a plain `TcpListener`: it answers
//! `GET /metrics` and nothing else (404), reads at most
//! `REQUEST_BYTES_MAX` of a request, and stops with the node. Every metric
//! is listed in docs/design.md, Metrics.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pagoda_wire::{ErrorCode, Opcode};

use crate::error::NodeError;
use crate::node::Shared;

/// Requests, by opcode.
pub const REQUESTS: &str = "pagoda_node_requests_total";
/// Time from a request's frame read to its reply encoded, by opcode.
pub const REQUEST_DURATION: &str = "pagoda_node_request_duration_seconds";
/// Error replies, by code.
pub const ERRORS: &str = "pagoda_node_errors_total";
/// Bytes of frames read from clients and peers.
pub const RECEIVED_BYTES: &str = "pagoda_node_received_bytes_total";
/// Bytes of replies written.
pub const SENT_BYTES: &str = "pagoda_node_sent_bytes_total";
/// How long each checkpoint took, successful or not.
pub const CHECKPOINT_DURATION: &str = "pagoda_node_checkpoint_duration_seconds";
/// Checkpoints that failed.
pub const CHECKPOINT_FAILURES: &str = "pagoda_node_checkpoint_failures_total";

/// Request latency buckets, in seconds: 5 µs to 5 s.
const REQUEST_BUCKETS_SECONDS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Checkpoint duration buckets, in seconds: 10 ms to 10 min.
const CHECKPOINT_BUCKETS_SECONDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// The most bytes of an HTTP request the endpoint reads; a longer request
/// is refused with 431.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a scraper has to send its request and read the answer.
const SCRAPE_TIMEOUT_MS: u64 = 5_000;
/// How often the endpoint's thread checks for the node's stop, and drains
/// the histograms' samples into their buckets even when nobody scrapes (so
/// their memory stays bounded by this interval's requests).
const POLL_MS: u64 = 100;
const UPKEEP_MS: u64 = 1_000;
/// The highest error code the node sends; higher ones count as `Unknown`.
const ERROR_CODE_MAX: u16 = 33;

/// One opcode's request counter and latency histogram.
#[derive(Clone)]
struct RequestMetrics {
    count: Counter,
    duration: Histogram,
}

/// A node's recorder and the handles its hot paths record through.
pub(crate) struct Metrics {
    handle: PrometheusHandle,
    /// Indexed by the opcode byte; bytes that are no request opcode share
    /// the `Unknown` entry.
    requests: Vec<RequestMetrics>,
    /// Indexed by the error code; index 0 is `Unknown`.
    errors: Vec<Counter>,
    received_bytes: Counter,
    sent_bytes: Counter,
    checkpoint_duration: Histogram,
    checkpoint_failures: Counter,
}

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_DURATION.into()),
                REQUEST_BUCKETS_SECONDS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(CHECKPOINT_DURATION.into()),
                    CHECKPOINT_BUCKETS_SECONDS,
                )
            })
            .expect("the bucket lists are not empty")
            .build_recorder();
        let describe = |name: &'static str, unit: Unit, help: &'static str| {
            recorder.describe_counter(KeyName::from_const_str(name), Some(unit), help.into());
        };
        describe(
            REQUESTS,
            Unit::Count,
            "Requests served, by opcode (authentication included).",
        );
        recorder.describe_histogram(
            KeyName::from_const_str(REQUEST_DURATION),
            Some(Unit::Seconds),
            SharedString::const_str(
                "Time from a request's frame read to its reply encoded, by opcode.",
            ),
        );
        describe(ERRORS, Unit::Count, "Error replies sent, by code.");
        describe(RECEIVED_BYTES, Unit::Bytes, "Bytes of request frames read.");
        describe(SENT_BYTES, Unit::Bytes, "Bytes of replies written.");
        recorder.describe_histogram(
            KeyName::from_const_str(CHECKPOINT_DURATION),
            Some(Unit::Seconds),
            SharedString::const_str("How long each checkpoint took, successful or not."),
        );
        describe(CHECKPOINT_FAILURES, Unit::Count, "Checkpoints that failed.");
        let request = |name: &str| RequestMetrics {
            count: recorder.register_counter(
                &key(REQUESTS, vec![Label::new("opcode", name.to_owned())]),
                &METADATA,
            ),
            duration: recorder.register_histogram(
                &key(
                    REQUEST_DURATION,
                    vec![Label::new("opcode", name.to_owned())],
                ),
                &METADATA,
            ),
        };
        let unknown = request("Unknown");
        let requests = (0..=u8::MAX)
            .map(|byte| match Opcode::from_u8(byte) {
                // Replies' opcodes (0x80 and up) are never requests.
                Some(opcode) if byte < 0x80 => request(&format!("{opcode:?}")),
                _ => unknown.clone(),
            })
            .collect();
        let errors = (0..=ERROR_CODE_MAX)
            .map(|value| {
                let name = format!("{:?}", ErrorCode::from_u16(value));
                recorder.register_counter(&key(ERRORS, vec![Label::new("code", name)]), &METADATA)
            })
            .collect();
        let plain = |name: &'static str| recorder.register_counter(&key(name, vec![]), &METADATA);
        Metrics {
            requests,
            errors,
            received_bytes: plain(RECEIVED_BYTES),
            sent_bytes: plain(SENT_BYTES),
            checkpoint_duration: recorder
                .register_histogram(&key(CHECKPOINT_DURATION, vec![]), &METADATA),
            checkpoint_failures: plain(CHECKPOINT_FAILURES),
            handle: recorder.handle(),
        }
    }

    /// A request with `opcode` served in `duration`, from a frame of
    /// `frame_bytes`.
    #[inline]
    pub(crate) fn request(&self, opcode: u8, frame_bytes: usize, duration: Duration) {
        let request = &self.requests[opcode as usize];
        request.count.increment(1);
        request.duration.record(duration.as_secs_f64());
        self.received_bytes.increment(frame_bytes as u64);
    }

    /// Reply bytes written.
    #[inline]
    pub(crate) fn sent(&self, bytes: usize) {
        self.sent_bytes.increment(bytes as u64);
    }

    /// An error reply with `code`.
    pub(crate) fn error(&self, code: ErrorCode) {
        let index = code as u16;
        let index = if index <= ERROR_CODE_MAX { index } else { 0 };
        self.errors[index as usize].increment(1);
    }

    /// A checkpoint that took `duration` and succeeded or not.
    pub(crate) fn checkpoint(&self, duration: Duration, succeeded: bool) {
        self.checkpoint_duration.record(duration.as_secs_f64());
        if !succeeded {
            self.checkpoint_failures.increment(1);
        }
    }
}

/// Counts an error reply, if the node keeps metrics.
pub(crate) fn count_error(shared: &Shared, code: ErrorCode) {
    if let Some(metrics) = &shared.metrics {
        metrics.error(code);
    }
}

/// The text the endpoint serves: the recorded counters and histograms, then
/// the levels read from the node now.
pub(crate) fn render(shared: &Shared, metrics: &Metrics) -> String {
    let mut text = metrics.handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(text, "{name}{labels} {value}");
        }
    };
    let one = |value: f64| vec![(String::new(), value)];
    gauge(
        "pagoda_node_ram_capacity_bytes",
        "RAM reserved for pages.",
        &one(shared.arena.capacity_bytes() as f64),
    );
    gauge(
        "pagoda_node_ram_used_bytes",
        "RAM holding regions' segments.",
        &one(shared.arena.used_bytes() as f64),
    );
    if let Some(bulk) = shared.arena.bulk() {
        let stat = bulk.stat();
        gauge(
            "pagoda_node_bulk_capacity_bytes",
            "Bytes the bulk tier on disk may hold.",
            &one(stat.capacity_bytes as f64),
        );
        gauge(
            "pagoda_node_bulk_used_bytes",
            "Bytes of distinct blocks in the bulk tier.",
            &one(stat.used_bytes as f64),
        );
        gauge(
            "pagoda_node_bulk_saved_bytes",
            "Bytes the bulk tier saves by storing zero pages as nothing and identical pages once.",
            &one(stat.saved_bytes() as f64),
        );
        let cache = bulk.cache();
        let (hits, misses) = cache.counts();
        gauge(
            "pagoda_node_bulk_cache_bytes",
            "RAM for the cache of hot bulk-tier blocks.",
            &one((cache.capacity_blocks() * crate::bulk::BLOCK_BYTES) as f64),
        );
        gauge(
            "pagoda_node_bulk_cache_hits",
            "Reads of single bulk-tier blocks served from the cache in RAM since the start.",
            &one(hits as f64),
        );
        gauge(
            "pagoda_node_bulk_cache_misses",
            "Reads of single bulk-tier blocks that went to the disk since the start.",
            &one(misses as f64),
        );
    }
    if shared.arena.bulk().is_some() {
        let (paged_out, paged_in) = shared.arena.paging();
        gauge(
            "pagoda_node_segments_paged_out",
            "Segments paged out to the bulk tier since the node started.",
            &one(paged_out as f64),
        );
        gauge(
            "pagoda_node_segments_paged_in",
            "Segments paged back into RAM since the node started.",
            &one(paged_in as f64),
        );
    }
    let regions = shared.catalog.regions();
    gauge(
        "pagoda_node_regions",
        "Regions the node holds.",
        &one(regions.len() as f64),
    );
    gauge(
        "pagoda_node_connections",
        "Connections open.",
        &one(shared.connection_count.load(Ordering::Relaxed) as f64),
    );
    let segment_bytes = shared.arena.segment_bytes() as f64;
    let now = SystemTime::now();
    let mut dirty = Vec::with_capacity(regions.len());
    let mut resident = Vec::with_capacity(regions.len());
    let mut age = Vec::with_capacity(regions.len());
    let mut journal = Vec::with_capacity(regions.len());
    let mut loading = Vec::with_capacity(regions.len());
    let mut lag = Vec::new();
    let mut in_sync = Vec::new();
    for region in &regions {
        let name = escape(&region.info().name);
        let labels = format!("{{region=\"{name}\"}}");
        let last = region.last_checkpoint();
        let since = last.as_ref().map_or(0, |mark| mark.start_seq);
        dirty.push((labels.clone(), region.dirty_count(since) as f64));
        // Shipped transaction records kept until a checkpoint covers them.
        let unreleased = region.journal().map_or(0, |journal| {
            journal.durable_id().saturating_sub(journal.released_id())
        });
        journal.push((labels.clone(), unreleased as f64));
        loading.push((labels.clone(), region.segments_loading() as f64));
        resident.push((
            labels.clone(),
            region.segments_allocated() as f64 * segment_bytes,
        ));
        if let Some(mark) = last {
            let seconds = now
                .duration_since(mark.started)
                .unwrap_or_default()
                .as_secs_f64();
            age.push((labels, seconds));
        }
        for replica in crate::replication::replica_infos(region) {
            let labels = format!(
                "{{region=\"{name}\",replica=\"{}\"}}",
                escape(&replica.addr)
            );
            lag.push((labels.clone(), replica.lag_bytes as f64));
            in_sync.push((labels, if replica.in_sync { 1.0 } else { 0.0 }));
        }
    }
    gauge(
        "pagoda_node_region_dirty_pages",
        "Pages of the region written since its last checkpoint.",
        &dirty,
    );
    gauge(
        "pagoda_node_region_resident_bytes",
        "RAM the region's allocated segments hold.",
        &resident,
    );
    gauge(
        "pagoda_node_region_journal_records",
        "Transaction records in the region's node journal that no checkpoint covers yet.",
        &journal,
    );
    gauge(
        "pagoda_node_region_segments_loading",
        "Segments of the region still to load from its baseline after a restart.",
        &loading,
    );
    gauge(
        "pagoda_node_region_checkpoint_age_seconds",
        "Time since the region's last checkpoint started (regions with one).",
        &age,
    );
    gauge(
        "pagoda_node_replica_lag_bytes",
        "Log bytes a primary's replica has not acknowledged.",
        &lag,
    );
    gauge(
        "pagoda_node_replica_in_sync",
        "1 if the replica counts for acknowledgements, else 0.",
        &in_sync,
    );
    text
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The running endpoint: its address, and its thread with the flag that
/// stops it.
pub(crate) struct Endpoint {
    pub(crate) local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Binds `addr` and serves the node's metrics on a thread of its own.
    pub(crate) fn start(shared: Arc<Shared>, addr: SocketAddr) -> Result<Endpoint, NodeError> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| NodeError::io(format!("binding the metrics address {addr}"), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| NodeError::io("reading the metrics address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| NodeError::io("configuring the metrics listener", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pagoda-metrics".into())
            .spawn(move || serve(&shared, &listener, &thread_stop))
            .map_err(|e| NodeError::io("spawning the metrics endpoint", e))?;
        tracing::info!(%local_addr, "serving metrics on /metrics");
        Ok(Endpoint {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops serving and waits for the thread.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(shared: &Arc<Shared>, listener: &TcpListener, stop: &AtomicBool) {
    let Some(metrics) = &shared.metrics else {
        return;
    };
    let mut upkeep = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if upkeep.elapsed() >= Duration::from_millis(UPKEEP_MS) {
            metrics.handle.run_upkeep();
            upkeep = Instant::now();
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(error) = answer(shared, metrics, stream) {
                    tracing::debug!(%error, "metrics scrape failed");
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(POLL_MS));
            }
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(POLL_MS));
            }
        }
    }
}

/// Reads one HTTP request (its head, at most `REQUEST_BYTES_MAX`) and
/// answers it; the connection is closed after.
fn answer(shared: &Shared, metrics: &Metrics, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let timeout = Some(Duration::from_millis(SCRAPE_TIMEOUT_MS));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() >= REQUEST_BYTES_MAX {
            break false;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&chunk[..n.min(REQUEST_BYTES_MAX - head.len())]);
    };
    let (status, body) = if !complete && head.len() >= REQUEST_BYTES_MAX {
        ("431 Request Header Fields Too Large", String::new())
    } else {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.trim_end().split(' ');
        match (parts.next(), parts.next()) {
            (Some("GET"), Some(path)) if path.split('?').next() == Some("/metrics") => {
                ("200 OK", render(shared, metrics))
            }
            (Some(_), Some(_)) => ("404 Not Found", "not found; try GET /metrics\n".into()),
            _ => ("400 Bad Request", String::new()),
        }
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the hot path's cost: what one request's recording costs, in a
    // release build (`cargo test --release -p pagoda-node
    // metrics::tests::cost -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn cost() {
        let metrics = Metrics::new();
        let rounds = 10_000_000u32;
        let began = Instant::now();
        for round in 0..rounds {
            let start = Instant::now();
            metrics.request(Opcode::WritePages as u8, 4096 + 40, start.elapsed());
            metrics.sent(32);
            if round % 1_000_000 == 0 {
                metrics.handle.run_upkeep();
            }
        }
        let per_request = began.elapsed() / rounds;
        println!("{per_request:?} per request recorded");
        assert!(per_request < Duration::from_micros(2));
    }

    // Guards the labels: every request opcode and error code has its own
    // series, and bytes that are no request opcode count as Unknown.
    #[test]
    fn records_by_opcode_and_code() {
        let metrics = Metrics::new();
        metrics.request(Opcode::ReadPages as u8, 100, Duration::from_micros(3));
        metrics.request(0xff, 10, Duration::from_micros(3));
        metrics.error(ErrorCode::RegionNotFound);
        metrics.error(ErrorCode::Unknown);
        let text = metrics.handle.render();
        assert!(
            text.contains("pagoda_node_requests_total{opcode=\"ReadPages\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pagoda_node_requests_total{opcode=\"Unknown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pagoda_node_errors_total{code=\"RegionNotFound\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pagoda_node_errors_total{code=\"Unknown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pagoda_node_received_bytes_total 110"),
            "{text}"
        );
    }
}

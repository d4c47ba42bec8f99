//! Batched 4 KiB page reads and writes over loopback, beside raw loopback
//! transfers of the same sizes.
//!
//! Each cell runs for a bounded time (and a bounded number of requests): a
//! batch of 16, 64 or 256 consecutive pages at a random place in a pre-written
//! region, with 1, 2 or 4 requests in flight, either as threads sharing one
//! `Client` (their requests pipeline on one connection) or with one `Client`
//! per thread. The raw baselines are one loopback stream's one-way bandwidth
//! and a raw request-reply exchange with each batch's byte sizes, one at a
//! time, with busy-polling ends.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use pagoda::{Client, RegionInfo};
use pagoda_bench::fixture::{LocalNode, create_written_region};
use pagoda_bench::raw::{RawPair, Wait, stream_bandwidth};
use pagoda_bench::report::{Flags, Table, emit, progress};
use pagoda_bench::{FastRng, PAGE_BYTES};

const USAGE: &str = "\
throughput: batched 4 KiB page reads and writes over loopback

  --seconds S           seconds per cell (default 1.5)
  --batches LIST        pages per request (default 16,64,256)
  --in-flight LIST      requests in flight (default 1,2,4)
  --region-mib N        region size in MiB (default 1024; node capacity is twice that)
  --client-spin-us N    client spin ceiling (default: the product's, 1000)
  --node-spin-us N      node connection spin ceiling (default: the product's, 1000)
  --json                print JSON instead of the markdown tables";

/// Most requests one thread makes in one cell, whatever the time.
const REQUESTS_PER_THREAD_MAX: u64 = 50_000_000;
/// Most bytes the raw stream baseline sends.
const STREAM_BYTES_MAX: u64 = 64 << 30;
/// Seconds of each raw request-reply baseline.
const RAW_EXCHANGE_S: f64 = 0.5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Operation {
    Read,
    Write,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }
}

struct Cell {
    operation: Operation,
    batch: usize,
    in_flight: usize,
    shared_client: bool,
    bytes_per_second: f64,
    pages_per_second: f64,
    request_us_mean: f64,
}

/// Runs one cell: `clients[i]` serves thread `i`.
fn run_cell(
    clients: &[&Client],
    info: &RegionInfo,
    operation: Operation,
    batch: usize,
    duration: Duration,
) -> (u64, f64) {
    let pages = info.size / PAGE_BYTES as u64;
    let barrier = Barrier::new(clients.len());
    let counts: Vec<(u64, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(index, client)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut rng = FastRng::new(0x7b_0000 + index as u64);
                    let mut buffer = vec![index as u8; batch * PAGE_BYTES];
                    let mut list = vec![0u64; batch];
                    barrier.wait();
                    let began = Instant::now();
                    let mut requests = 0u64;
                    while requests < REQUESTS_PER_THREAD_MAX && began.elapsed() < duration {
                        let first = rng.below(pages - batch as u64);
                        for (offset, page) in list.iter_mut().enumerate() {
                            *page = first + offset as u64;
                        }
                        match operation {
                            Operation::Read => client
                                .raw()
                                .read_pages(info, &list, &mut buffer)
                                .expect("a batched read"),
                            Operation::Write => client
                                .raw()
                                .write_pages(info, &list, &buffer)
                                .expect("a batched write"),
                        }
                        requests += 1;
                    }
                    (requests, began.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a load thread"))
            .collect()
    });
    let requests = counts.iter().map(|c| c.0).sum();
    let seconds = counts.iter().map(|c| c.1).fold(0.0, f64::max);
    (requests, seconds)
}

/// Raw request-reply exchanges, one at a time, for `seconds`: returns
/// exchanges per second.
fn raw_exchange_rate(
    request_bytes: usize,
    reply_bytes: usize,
    seconds: f64,
    spin: Duration,
) -> f64 {
    let mut pair = RawPair::new(request_bytes, reply_bytes, Wait::Poll(spin));
    for _ in 0..50 {
        pair.round_trip();
    }
    let began = Instant::now();
    let mut count = 0u64;
    while count < REQUESTS_PER_THREAD_MAX && began.elapsed().as_secs_f64() < seconds {
        pair.round_trip();
        count += 1;
    }
    count as f64 / began.elapsed().as_secs_f64()
}

fn main() {
    let flags = Flags::parse(
        &["json"],
        &[
            "seconds",
            "batches",
            "in-flight",
            "region-mib",
            "client-spin-us",
            "node-spin-us",
        ],
        USAGE,
    );
    let json = flags.switch("json");
    let duration = Duration::from_secs_f64(flags.number("seconds", 1.5));
    let batches: Vec<usize> = flags.numbers("batches", &[16, 64, 256]);
    let in_flights: Vec<usize> = flags.numbers("in-flight", &[1, 2, 4]);
    let region_bytes = flags.number::<u64>("region-mib", 1024).max(2) << 20;
    let client_spin =
        Duration::from_micros(flags.number("client-spin-us", pagoda::SPIN_US_DEFAULT));
    let node_spin =
        Duration::from_micros(flags.number("node-spin-us", pagoda_node::server::SPIN_US_DEFAULT));
    let threads_max = in_flights.iter().copied().max().unwrap_or(1).max(1);
    assert!(
        batches
            .iter()
            .all(|&b| b >= 1 && (b as u64) < region_bytes / PAGE_BYTES as u64),
        "every batch must fit in the region"
    );

    progress("raw stream baseline");
    let stream_before = stream_bandwidth(Duration::from_secs(1), 1 << 20, STREAM_BYTES_MAX);

    let node = LocalNode::start(region_bytes * 2, node_spin);
    let clients: Vec<Client> = (0..threads_max).map(|_| node.client(client_spin)).collect();
    let info = create_written_region(&clients[0], "throughput", region_bytes);
    let batch_limit = clients[0].raw().batch_pages_max(PAGE_BYTES);
    let mut raw_rows = Vec::new();
    let mut cells = Vec::new();
    for operation in [Operation::Read, Operation::Write] {
        for &batch in &batches {
            // The raw baseline of this batch's sizes, measured right before
            // its cells so that both see the same background load.
            let data = batch * PAGE_BYTES;
            let raw_rate = match operation {
                Operation::Read => raw_exchange_rate(64, data + 32, RAW_EXCHANGE_S, client_spin),
                Operation::Write => {
                    raw_exchange_rate(data + 64 + 8 * batch, 32, RAW_EXCHANGE_S, client_spin)
                }
            };
            raw_rows.push((operation, batch, raw_rate * data as f64));
            for &in_flight in &in_flights {
                for shared_client in [true, false] {
                    if in_flight == 1 && !shared_client {
                        continue; // the same as one shared client
                    }
                    let chosen: Vec<&Client> = (0..in_flight)
                        .map(|i| {
                            if shared_client {
                                &clients[0]
                            } else {
                                &clients[i]
                            }
                        })
                        .collect();
                    progress(&format!(
                        "{} batch {batch} in flight {in_flight} {}",
                        operation.name(),
                        if shared_client {
                            "shared client"
                        } else {
                            "client per thread"
                        }
                    ));
                    let (requests, seconds) = run_cell(&chosen, &info, operation, batch, duration);
                    let pages = requests as f64 * batch as f64;
                    cells.push(Cell {
                        operation,
                        batch,
                        in_flight,
                        shared_client,
                        bytes_per_second: pages * PAGE_BYTES as f64 / seconds,
                        pages_per_second: pages / seconds,
                        request_us_mean: seconds * 1e6 * in_flight as f64 / requests.max(1) as f64,
                    });
                }
            }
        }
    }

    progress("raw stream baseline again");
    let stream_after = stream_bandwidth(Duration::from_secs(1), 1 << 20, STREAM_BYTES_MAX);
    let stream_bytes_per_second = (stream_before + stream_after) / 2.0;
    let raw_for = |batch: usize, operation: Operation| {
        raw_rows
            .iter()
            .find(|r| r.0 == operation && r.1 == batch)
            .expect("a raw row per batch")
            .2
    };
    let mut raw_table = Table::new(&["raw loopback baseline", "GB/s"]);
    raw_table.row(vec![
        "one stream, one way, 1 MiB writes (before the cells)".into(),
        format!("{:.2}", stream_before / 1e9),
    ]);
    raw_table.row(vec![
        "one stream, one way, 1 MiB writes (after the cells)".into(),
        format!("{:.2}", stream_after / 1e9),
    ]);
    for &(operation, batch, rate) in &raw_rows {
        raw_table.row(vec![
            format!(
                "request-reply one at a time, {batch}-page {} sizes, polling ends",
                operation.name()
            ),
            format!("{:.2}", rate / 1e9),
        ]);
    }
    let mut table = Table::new(&[
        "op",
        "pages/request",
        "in flight",
        "clients",
        "GB/s",
        "pages/s",
        "mean request µs",
        "÷ raw one-at-a-time same sizes",
        "÷ raw stream (mean of both)",
    ]);
    for cell in &cells {
        table.row(vec![
            cell.operation.name().into(),
            cell.batch.to_string(),
            cell.in_flight.to_string(),
            if cell.shared_client {
                "1 shared"
            } else {
                "1 per thread"
            }
            .into(),
            format!("{:.2}", cell.bytes_per_second / 1e9),
            format!("{:.0}", cell.pages_per_second),
            format!("{:.1}", cell.request_us_mean),
            format!(
                "{:.2}",
                cell.bytes_per_second / raw_for(cell.batch, cell.operation)
            ),
            format!("{:.2}", cell.bytes_per_second / stream_bytes_per_second),
        ]);
    }
    let best = |operation: Operation| {
        cells
            .iter()
            .filter(|c| c.operation == operation)
            .map(|c| c.bytes_per_second)
            .fold(0.0, f64::max)
    };
    let verdict = |value: f64| if value >= 2e9 { "met" } else { "missed" };
    let markdown = format!(
        "{}\n{}\n\
         Goal: ≥ 2 GB/s batched reads and writes. Best read {:.2} GB/s ({}), best write {:.2} GB/s ({}).\n\
         Settings: {:.1} s per cell, region {} MiB pre-written, node batch limit {} pages, client spin {} µs, node spin {} µs; GB = 10^9 bytes of page data.\n",
        raw_table.markdown(),
        table.markdown(),
        best(Operation::Read) / 1e9,
        verdict(best(Operation::Read)),
        best(Operation::Write) / 1e9,
        verdict(best(Operation::Write)),
        duration.as_secs_f64(),
        region_bytes >> 20,
        batch_limit,
        client_spin.as_micros(),
        node_spin.as_micros(),
    );
    let document = serde_json::json!({
        "benchmark": "throughput",
        "settings": {
            "seconds_per_cell": duration.as_secs_f64(),
            "region_bytes": region_bytes,
            "client_spin_us": client_spin.as_micros() as u64,
            "node_spin_us": node_spin.as_micros() as u64,
        },
        "raw": {
            "stream_bytes_per_second_before": stream_before,
            "stream_bytes_per_second_after": stream_after,
            "exchanges": raw_rows.iter().map(|(operation, batch, rate)| serde_json::json!({
                "operation": operation.name(), "batch_pages": batch, "bytes_per_second": rate,
            })).collect::<Vec<_>>(),
        },
        "cells": cells.iter().map(|c| serde_json::json!({
            "operation": c.operation.name(), "batch_pages": c.batch, "in_flight": c.in_flight,
            "shared_client": c.shared_client, "bytes_per_second": c.bytes_per_second,
            "pages_per_second": c.pages_per_second, "request_us_mean": c.request_us_mean,
        })).collect::<Vec<_>>(),
    });
    emit(json, &document, &markdown);
}

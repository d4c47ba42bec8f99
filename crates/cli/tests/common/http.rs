//! A minimal HTTP/1.0 client for the tests that read the node's metrics
//! endpoint and Prometheus's API, and a reader of the Prometheus text
//! format's metric names.
#![allow(dead_code)] // not every test binary speaks HTTP

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long one request may take to connect, send and be answered.
const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// The most bytes of an answer read (a scrape of a test node is a few
/// tens of KiB).
const RESPONSE_BYTES_MAX: u64 = 16 << 20;

/// `GET path` from `addr` over HTTP/1.0 (so the answer is never chunked):
/// the status code and the body, or what went wrong.
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let socket = addr
        .parse()
        .map_err(|e| format!("{addr} is not a socket address: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("setting timeouts: {e}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("sending GET {path} to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut response)
        .map_err(|e| format!("reading the answer to GET {path} from {addr}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} from {addr}: no end of head in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {path} from {addr}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `GET /metrics` from a node's metrics endpoint at `addr`: the text, or
/// the test fails.
pub fn scrape(addr: &str) -> String {
    let (status, body) = get(addr, "/metrics").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "GET /metrics from {addr}: {body}");
    body
}

/// The names of the series a scrape in the Prometheus text format can
/// yield: every sample's name, and for each `# TYPE` line its name (with
/// `_bucket`, `_sum` and `_count` for a histogram or summary), so that a
/// gauge with no samples yet (no replicas, no checkpoint) still counts.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_owned());
                if kind == "histogram" || kind == "summary" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// `value` percent-encoded for a URL's query string.
pub fn url_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

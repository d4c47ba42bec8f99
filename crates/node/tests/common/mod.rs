//! Helpers shared by the node's integration tests.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pagoda_wire::io::FrameReader;
use pagoda_wire::{Request, Response};

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[allow(dead_code)]
pub const PAGE: usize = 4096;

/// A page of bytes derived from `seed`.
#[allow(dead_code)]
pub fn page(seed: u64) -> Vec<u8> {
    (0..PAGE as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) as u8)
        .collect()
}

/// Waits (at most 20 s) until `check` holds.
#[allow(dead_code)]
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `request` on a fresh connection to an open node (no credentials),
/// after a `Hello`, and returns the reply's opcode and payload: the node's
/// own answer, with no client library logic (retries, redirects) between.
#[allow(dead_code)]
pub fn raw_call(addr: SocketAddr, request: &Request<'_>) -> (u8, Vec<u8>) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = FrameReader::new(stream, Duration::ZERO);
    let mut call = |request: &Request<'_>, id: u64| {
        let mut out = Vec::new();
        request.encode(&mut out, id, 0);
        writer.write_all(&out).unwrap();
        let frame = reader.read_frame().unwrap();
        assert_eq!(frame.header.request_id, id);
        (frame.header.opcode, frame.payload.to_vec())
    };
    let (opcode, payload) = call(
        &Request::Hello {
            client_name: "checksum-test",
            credential: "",
            client_nonce: [1; 32],
        },
        1,
    );
    assert!(
        matches!(
            Response::decode(opcode, &payload).unwrap(),
            Response::HelloOk { .. }
        ),
        "{:?}",
        Response::decode(opcode, &payload)
    );
    call(request, 2)
}

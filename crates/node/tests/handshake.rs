//! Guards on connections that have not authenticated yet.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pagoda_node::{Node, NodeConfig};
use pagoda_wire::auth::ClientHandshake;
use pagoda_wire::frame::{FrameBuilder, Opcode};
use pagoda_wire::io::{FrameReader, NoSpin};
use pagoda_wire::limits::HELLO_PAYLOAD_BYTES_MAX;
use pagoda_wire::{ErrorCode, Response};

fn node(dir: &std::path::Path, handshake: Duration) -> Node {
    let mut config = NodeConfig::new(([127, 0, 0, 1], 0).into(), 8 << 20, dir.to_path_buf());
    config.token = Some(b"token".to_vec());
    config.handshake_timeout = handshake;
    Node::start(config).unwrap()
}

fn ping_with_padding(request_id: u64, padding: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut frame = FrameBuilder::begin(&mut out, Opcode::Ping, request_id, 0);
    // The builder's buffer holds the header too: pad after what is there.
    let payload = frame.payload();
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.resize(payload.len() + padding, 0);
    frame.finish();
    out
}

fn reply(stream: &TcpStream) -> (u64, u8, Vec<u8>) {
    let mut reader = FrameReader::new(NoSpin(stream.try_clone().unwrap()), Duration::ZERO);
    let frame = reader.read_frame().unwrap();
    (
        frame.header.request_id,
        frame.header.opcode,
        frame.payload.to_vec(),
    )
}

/// Runs the handshake as the credential `default` (the node's token).
fn authenticate(stream: &mut TcpStream) {
    let handshake = ClientHandshake::new("test", "default", b"token".as_slice());
    let mut hello = Vec::new();
    handshake.hello().encode(&mut hello, 1, 0);
    stream.write_all(&hello).unwrap();
    let (_, opcode, payload) = reply(stream);
    let proof = match Response::decode(opcode, &payload).unwrap() {
        Response::AuthChallenge { salt, node_nonce } => handshake.proof(salt, &node_nonce),
        other => panic!("expected a challenge, got {other:?}"),
    };
    let mut frame = Vec::new();
    proof.encode(&mut frame, 1, 0);
    stream.write_all(&frame).unwrap();
    assert_eq!(reply(stream).1, Opcode::HelloOk as u8);
}

// Guards memory before authentication: a frame larger than any Hello is
// refused from its header (FrameTooLarge) and the connection closed, while
// the same frame is accepted after a successful Hello.
#[test]
fn large_frames_are_refused_until_the_peer_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), Duration::from_secs(10));
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    let big = ping_with_padding(1, HELLO_PAYLOAD_BYTES_MAX + 1);
    stream.write_all(&big[..32]).unwrap();
    let (id, opcode, payload) = reply(&stream);
    assert_eq!((id, opcode), (0, Opcode::Error as u8));
    match Response::decode(opcode, &payload).unwrap() {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::FrameTooLarge),
        other => panic!("unexpected {other:?}"),
    }

    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    authenticate(&mut stream);
    stream.write_all(&ping_with_padding(2, 64 * 1024)).unwrap();
    let (id, opcode, _) = reply(&stream);
    assert_eq!((id, opcode), (2, Opcode::Pong as u8));
}

// Guards connection slots: a peer that connects and never says Hello is
// closed after the handshake timeout, while one that authenticated in time
// stays served past it.
#[test]
fn silent_peers_are_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), Duration::from_millis(300));
    let mut silent = TcpStream::connect(node.local_addr()).unwrap();
    let mut good = TcpStream::connect(node.local_addr()).unwrap();
    authenticate(&mut good);

    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let began = Instant::now();
    // The node says why, then closes.
    let (id, opcode, payload) = reply(&silent);
    assert_eq!(id, 0);
    match Response::decode(opcode, &payload).unwrap() {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::TimedOut, "{message}");
            assert!(message.contains("handshake"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut byte = [0u8; 1];
    let closed = matches!(silent.read(&mut byte), Ok(0) | Err(_));
    assert!(closed, "the silent peer was not closed");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        began.elapsed()
    );

    std::thread::sleep(Duration::from_millis(400));
    good.write_all(&ping_with_padding(2, 0)).unwrap();
    assert_eq!(reply(&good).1, Opcode::Pong as u8);
}

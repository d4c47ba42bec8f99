//! Access control against hostile and careless clients: the challenge-response
//! handshake (replay, wrong proofs, unknown names), credentials with rights per
//! region, and the one-writer-per-region rule. Each test starts its own node on
//! loopback and checks the exact error, and that the connection (or another
//! client) is still served where it should be.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientError, ClientOptions, ErrorCode, RegionOptions, Since};
use pagoda_node::access::{self, Credential, Grant};
use pagoda_node::{Node, NodeConfig};
use pagoda_wire::auth::ClientHandshake;
use pagoda_wire::io::FrameReader;
use pagoda_wire::message::encode_write_pages;
use pagoda_wire::{OpenMode, Request, Response, WireError};
use parking_lot::Mutex;

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;
const PAGE: usize = 4096;

/// Credentials the tests use: name, token, grants.
const CREDENTIALS: &[(&str, &str, &[&str])] = &[
    ("admin", "admin-token", &["*=admin"]),
    ("reader", "reader-token", &["*=read"]),
    ("app", "app-token", &["app-*=write", "shared=read"]),
    ("logs", "logs-token", &["logs-*=read"]),
];

fn write_credentials(dir: &Path) {
    let credentials: Vec<Credential> = CREDENTIALS
        .iter()
        .map(|(name, token, grants)| {
            let grants = grants.iter().map(|g| Grant::parse(g).unwrap()).collect();
            Credential::new(name, token.as_bytes(), grants).unwrap()
        })
        .collect();
    access::write_credentials(dir, &credentials).unwrap();
}

fn start(dir: &Path, adjust: impl FnOnce(&mut NodeConfig)) -> Node {
    let mut config = NodeConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        64 * MIB,
        dir.to_path_buf(),
    );
    adjust(&mut config);
    Node::start(config).expect("node starts")
}

/// A node with the test credentials.
fn node_with_credentials(dir: &Path) -> Node {
    write_credentials(dir);
    start(dir, |_| {})
}

fn options(credential: &str, token: &str) -> ClientOptions {
    ClientOptions {
        timeout: REPLY_TIMEOUT,
        client_name: format!("{credential}-client"),
        ..ClientOptions::with_credential(credential, token)
    }
}

fn connect(node: &Node, credential: &str) -> Client {
    let token = CREDENTIALS
        .iter()
        .find(|(name, ..)| *name == credential)
        .map(|(_, token, _)| *token)
        .unwrap();
    Client::connect(node.local_addr(), options(credential, token)).expect("client connects")
}

/// The error code and message of a refused call.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Remote { code, message }) => (code, message),
        other => panic!("expected a refusal from the node, got {other:?}"),
    }
}

fn page(seed: u8) -> Vec<u8> {
    vec![seed; PAGE]
}

// ---------------------------------------------------------------------------
// A raw connection, for what a well-behaved client never sends.

struct Raw {
    writer: TcpStream,
    reader: FrameReader<TcpStream>,
    next_id: u64,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect to the node");
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            writer: stream.try_clone().unwrap(),
            reader: FrameReader::new(stream, Duration::ZERO),
            next_id: 1,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn receive(&mut self) -> Result<(u64, u8, Vec<u8>), WireError> {
        let frame = self.reader.read_frame()?;
        Ok((
            frame.header.request_id,
            frame.header.opcode,
            frame.payload.to_vec(),
        ))
    }

    fn call_frame(&mut self, frame: &[u8]) -> (u8, Vec<u8>) {
        self.send(frame);
        let (_, opcode, payload) = self.receive().expect("a reply");
        (opcode, payload)
    }

    fn call(&mut self, request: &Request<'_>) -> (u8, Vec<u8>) {
        let mut frame = Vec::new();
        request.encode(&mut frame, self.next_id, 0);
        self.next_id += 1;
        self.call_frame(&frame)
    }

    /// Runs the handshake as `credential` with `token`; returns the reply to
    /// the proof.
    fn handshake(&mut self, credential: &str, token: &[u8]) -> (u8, Vec<u8>) {
        let handshake = ClientHandshake::new("raw", credential, token);
        let (opcode, payload) = self.call(&handshake.hello());
        let proof = match Response::decode(opcode, &payload).unwrap() {
            Response::AuthChallenge { salt, node_nonce } => handshake.proof(salt, &node_nonce),
            other => panic!("expected a challenge, got {other:?}"),
        };
        self.call(&proof)
    }

    fn expect_closed(&mut self) {
        match self.receive() {
            Err(WireError::Closed) => {}
            Err(WireError::Io(error)) if error.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected the node to close the connection, got {other:?}"),
        }
    }
}

fn error_of(opcode: u8, payload: &[u8]) -> (ErrorCode, String) {
    match Response::decode(opcode, payload).unwrap() {
        Response::Error { code, message } => (code, message.to_owned()),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn is_hello_ok(opcode: u8, payload: &[u8]) -> bool {
    matches!(
        Response::decode(opcode, payload),
        Ok(Response::HelloOk { .. })
    )
}

/// A write frame from a writer at `epoch`, numbered `lsn`.
fn write_frame(region: u64, epoch: u64, lsn: u64, pages: &[u64], seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    encode_write_pages(&mut out, 1, epoch, region, lsn, pages, PAGE, |_, out| {
        out.extend_from_slice(&page(seed))
    });
    out
}

// ---------------------------------------------------------------------------
// A proxy that records what a real client sends.

/// Forwards one connection to `target`, recording the client's bytes.
fn recording_proxy(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    std::thread::spawn(move || {
        for accepted in listener.incoming() {
            let Ok(client) = accepted else { return };
            let record = record.clone();
            std::thread::spawn(move || forward(client, target, record));
        }
    });
    (addr, sent)
}

/// Copies one client connection to `target` and back, recording what the
/// client sends; a close on either side is passed on.
fn forward(client: TcpStream, target: SocketAddr, record: Arc<Mutex<Vec<u8>>>) {
    let node = TcpStream::connect(target).unwrap();
    let (mut client_read, mut node_write) =
        (client.try_clone().unwrap(), node.try_clone().unwrap());
    let (mut node_read, mut client_write) = (node, client);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(count) = node_read.read(&mut buffer) {
            if count == 0 || client_write.write_all(&buffer[..count]).is_err() {
                break;
            }
        }
        let _ = client_write.shutdown(Shutdown::Write);
    });
    let mut buffer = [0u8; 4096];
    while let Ok(count) = client_read.read(&mut buffer) {
        if count == 0 {
            break;
        }
        record.lock().extend_from_slice(&buffer[..count]);
        if node_write.write_all(&buffer[..count]).is_err() {
            break;
        }
    }
    let _ = node_write.shutdown(Shutdown::Write);
}

/// Splits a byte stream into frames.
fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 32 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push(bytes[at..at + 32 + length].to_vec());
        at += 32 + length;
    }
    out
}

// ---------------------------------------------------------------------------
// The handshake.

// Guards against replay: the exact bytes a real client sent to authenticate
// (captured on the way) do not authenticate a new connection, whether the
// captured proof follows a replayed Hello or the new challenge; the token
// itself never crosses the wire.
#[test]
fn a_captured_handshake_replayed_on_a_new_connection_fails() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_credentials(dir.path());
    let (proxy, sent) = recording_proxy(node.local_addr());
    let client = Client::connect(proxy, options("admin", "admin-token")).unwrap();
    client.raw().ping(0).unwrap();
    let captured = sent.lock().clone();
    assert!(
        !captured.windows(11).any(|w| w == b"admin-token"),
        "the token crossed the wire"
    );
    let captured = frames(&captured);
    let (hello, proof) = (&captured[0], &captured[1]);
    assert_eq!(hello[5], 0x01, "the first frame is Hello");
    assert_eq!(proof[5], 0x03, "the second frame is the proof");

    // Replayed one frame at a time: a fresh challenge, then refusal.
    let mut replay = Raw::connect(node.local_addr());
    let (opcode, payload) = replay.call_frame(hello);
    assert!(matches!(
        Response::decode(opcode, &payload).unwrap(),
        Response::AuthChallenge { .. }
    ));
    let (opcode, payload) = replay.call_frame(proof);
    let (code, message) = error_of(opcode, &payload);
    assert_eq!(code, ErrorCode::Unauthorized, "{message}");
    assert!(message.contains("\"admin\""), "{message}");
    replay.expect_closed();

    // Replayed both at once.
    let mut replay = Raw::connect(node.local_addr());
    replay.send(&[hello.as_slice(), proof.as_slice()].concat());
    let (_, opcode, _) = replay.receive().unwrap();
    assert_eq!(opcode, pagoda_wire::Opcode::AuthChallenge as u8);
    let (_, opcode, payload) = replay.receive().unwrap();
    assert_eq!(error_of(opcode, &payload).0, ErrorCode::Unauthorized);
    replay.expect_closed();

    // The real client is still served.
    client.raw().ping(0).unwrap();
}

// Guards the proof check: a wrong token, a proof answering another
// challenge, and a request other than the proof after the challenge are all
// refused, with the connection closed; nothing is served on it.
#[test]
fn wrong_proofs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_credentials(dir.path());
    let bystander = connect(&node, "admin");

    let mut raw = Raw::connect(node.local_addr());
    let (opcode, payload) = raw.handshake("admin", b"admin-tokem");
    let (code, message) = error_of(opcode, &payload);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("wrong token"), "{message}");
    raw.expect_closed();

    // A proof computed for a different node nonce.
    let mut raw = Raw::connect(node.local_addr());
    let handshake = ClientHandshake::new("raw", "admin", b"admin-token".as_slice());
    let (opcode, payload) = raw.call(&handshake.hello());
    let Response::AuthChallenge { salt, .. } = Response::decode(opcode, &payload).unwrap() else {
        panic!("expected a challenge");
    };
    let (opcode, payload) = raw.call(&handshake.proof(salt, &[7; 32]));
    assert_eq!(error_of(opcode, &payload).0, ErrorCode::Unauthorized);
    raw.expect_closed();

    // Anything but the proof after a challenge.
    let mut raw = Raw::connect(node.local_addr());
    raw.call(&handshake.hello());
    let (opcode, payload) = raw.call(&Request::ListRegions);
    assert_eq!(error_of(opcode, &payload).0, ErrorCode::NotAuthenticated);
    raw.expect_closed();

    // No credential at all, to a node that has credentials.
    let error = Client::connect(node.local_addr(), ClientOptions::default()).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unauthorized), "{error}");

    bystander.raw().ping(0).unwrap();
}

// Guards against telling names apart: an unknown credential gets a challenge
// like a known one, and the same refusal as a wrong token at the proof.
#[test]
fn unknown_credentials_are_refused_like_wrong_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_credentials(dir.path());
    let mut unknown = Raw::connect(node.local_addr());
    let (opcode, payload) = unknown.handshake("nobody", b"admin-token");
    let (code, unknown_message) = error_of(opcode, &payload);
    assert_eq!(code, ErrorCode::Unauthorized);
    unknown.expect_closed();
    let mut wrong = Raw::connect(node.local_addr());
    let (opcode, payload) = wrong.handshake("admin", b"nobody-token");
    let (_, wrong_message) = error_of(opcode, &payload);
    assert_eq!(
        unknown_message.replace("nobody", "admin"),
        wrong_message,
        "the refusals differ"
    );
    // The same unknown name gets the same salt each time.
    let salt = |raw: &mut Raw| {
        let (opcode, payload) =
            raw.call(&ClientHandshake::new("raw", "ghost", b"x".as_slice()).hello());
        match Response::decode(opcode, &payload).unwrap() {
            Response::AuthChallenge { salt, .. } => salt.to_vec(),
            other => panic!("{other:?}"),
        }
    };
    let first = salt(&mut Raw::connect(node.local_addr()));
    assert_eq!(first, salt(&mut Raw::connect(node.local_addr())));
    assert_eq!(first.len(), 16);
}

// Guards the `--token-file` token: it is the credential `default` with admin
// on every region, and a client given only a token authenticates as it.
#[test]
fn the_token_file_token_is_the_default_admin_credential() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |config| config.token = Some(b"shared".to_vec()));
    let client = Client::connect(node.local_addr(), ClientOptions::with_token("shared")).unwrap();
    client.create_region("r", MIB, PAGE as u32).unwrap();
    client.delete_region("r").unwrap();
    let error = Client::connect(node.local_addr(), ClientOptions::with_token("other")).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unauthorized));
    // With the file's credentials beside it.
    drop(client);
    node.shutdown();
    write_credentials(dir.path());
    let node = start(dir.path(), |config| config.token = Some(b"shared".to_vec()));
    Client::connect(node.local_addr(), ClientOptions::with_token("shared")).unwrap();
    connect(&node, "reader").list_regions().unwrap();
}

// ---------------------------------------------------------------------------
// Rights.

// Guards read-only credentials: every write is refused with a message naming
// the credential, the region and the missing right, and the connection goes
// on serving reads.
#[test]
fn a_read_only_credential_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_credentials(dir.path());
    let admin = connect(&node, "admin");
    let info = admin.create_region("data", MIB, PAGE as u32).unwrap();
    admin.raw().write_pages(&info, &[1], &page(9)).unwrap();

    let reader = connect(&node, "reader");
    let (code, message) = refusal(reader.open_region("data", RegionOptions::default()));
    assert_eq!(code, ErrorCode::Forbidden);
    for part in ["\"reader\"", "\"data\"", "write right", "has read"] {
        assert!(message.contains(part), "{part}: {message}");
    }
    let (code, _) = refusal(reader.raw().write_pages(&info, &[1], &page(1)));
    assert_eq!(code, ErrorCode::Forbidden);
    // Still served, and reads work.
    let region = reader
        .open_region_read_only("data", RegionOptions::default())
        .unwrap();
    let mut back = vec![0u8; PAGE];
    region.read_at(PAGE as u64, &mut back).unwrap();
    assert_eq!(back, page(9));
    assert!(
        region.write_at(0, b"x").is_err(),
        "a read-only handle writes"
    );
    assert_eq!(reader.stat_region("data").unwrap().info.id, info.id);

    // A raw write frame and a journal record, past the client library.
    let mut raw = Raw::connect(node.local_addr());
    assert!(is_hello_ok_pair(raw.handshake("reader", b"reader-token")));
    let (opcode, payload) = raw.call_frame(&write_frame(info.id, 1, 1, &[1], 3));
    let (code, message) = error_of(opcode, &payload);
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    let (opcode, payload) = raw.call(&Request::ApplyJournal {
        region: info.id,
        lsn: 1,
        commit_id: 1,
        entries: vec![(0, b"abc".as_slice())],
    });
    assert_eq!(error_of(opcode, &payload).0, ErrorCode::Forbidden);
    let (opcode, _) = raw.call(&Request::Ping { reply_bytes: 0 });
    assert_eq!(opcode, pagoda_wire::Opcode::Pong as u8);
    // Nothing changed.
    let mut back = vec![0u8; PAGE];
    admin.raw().read_pages(&info, &[1], &mut back).unwrap();
    assert_eq!(back, page(9));
}

fn is_hello_ok_pair((opcode, payload): (u8, Vec<u8>)) -> bool {
    is_hello_ok(opcode, &payload)
}

// Guards admin operations: a credential with write but not admin cannot
// create, delete, checkpoint, recover, freeze or list dirty pages, and a
// credential sees and reads only the regions its grants name.
#[test]
fn admin_operations_need_admin_and_rights_follow_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_credentials(dir.path());
    let admin = connect(&node, "admin");
    let app_region = admin.create_region("app-1", MIB, PAGE as u32).unwrap();
    admin.create_region("shared", MIB, PAGE as u32).unwrap();
    admin.create_region("logs-a", MIB, PAGE as u32).unwrap();
    admin.create_region("secret", MIB, PAGE as u32).unwrap();

    let app = connect(&node, "app");
    let forbidden = |result: Result<(), ClientError>, what: &str| {
        let (code, message) = refusal(result);
        assert_eq!(code, ErrorCode::Forbidden, "{what}: {message}");
        assert!(message.contains("admin right"), "{what}: {message}");
    };
    forbidden(
        app.create_region("app-2", MIB, PAGE as u32).map(|_| ()),
        "create",
    );
    forbidden(app.delete_region("app-1"), "delete");
    forbidden(app.checkpoint("app-1", false).map(|_| ()), "checkpoint");
    forbidden(
        app.start_recovery("app-1", None, None, true).map(|_| ()),
        "recover",
    );
    forbidden(app.raw().freeze_region(app_region.id).map(|_| ()), "freeze");
    forbidden(
        app.raw()
            .dirty_pages(app_region.id, Since::Checkpoint(0))
            .map(|_| ()),
        "dirty pages",
    );
    // What it may do.
    let region = app.open_region("app-1", RegionOptions::default()).unwrap();
    region.write_at(0, b"hello").unwrap();
    region.flush().unwrap();
    app.open_region_read_only("shared", RegionOptions::default())
        .unwrap();
    let (code, message) = refusal(app.open_region("shared", RegionOptions::default()));
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    let (code, message) = refusal(app.stat_region("secret"));
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    assert!(message.contains("no right"), "{message}");
    app.node_stat().unwrap();

    // Listing shows only what a credential may read.
    let names = |client: &Client| -> Vec<String> {
        client
            .list_regions()
            .unwrap()
            .into_iter()
            .map(|info| info.name)
            .collect()
    };
    assert_eq!(names(&app), ["app-1", "shared"]);
    assert_eq!(names(&connect(&node, "logs")), ["logs-a"]);
    assert_eq!(names(&admin).len(), 4);
    // Reads by id need the right too.
    let logs = connect(&node, "logs");
    let mut buffer = vec![0u8; PAGE];
    let (code, _) = refusal(logs.raw().read_pages(&app_region, &[0], &mut buffer));
    assert_eq!(code, ErrorCode::Forbidden);
    logs.raw().ping(0).unwrap();
}

// Guards revocation: a revoked credential is refused at its next handshake,
// and an open connection of it is refused at its next request once the node
// has seen the change (within about a second); other credentials go on.
#[test]
fn a_revoked_credential_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_credentials(dir.path());
    let admin = connect(&node, "admin");
    let reader = connect(&node, "reader");
    reader.list_regions().unwrap();
    access::edit_credentials(dir.path(), |credentials| {
        credentials.retain(|c| c.name() != "reader");
        Ok(())
    })
    .unwrap();
    let error = Client::connect(node.local_addr(), options("reader", "reader-token")).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unauthorized), "{error}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let message = loop {
        match reader.list_regions() {
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the revoked connection is still served"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => break error.to_string(),
        }
    };
    assert!(message.contains("revoked"), "{message}");
    assert!(
        reader.raw().ping(0).is_err(),
        "the revoked connection stays open"
    );
    admin.raw().ping(0).unwrap();
    // A credential created while the node runs is accepted at once.
    access::edit_credentials(dir.path(), |credentials| {
        credentials.push(Credential::new(
            "late",
            b"late-token",
            vec![Grant::parse("*=read").unwrap()],
        )?);
        Ok(())
    })
    .unwrap();
    Client::connect(node.local_addr(), options("late", "late-token"))
        .unwrap()
        .list_regions()
        .unwrap();
}

// Guards the credentials file at start: a damaged one stops the node with a
// message naming it, rather than starting open or without some credentials.
#[test]
fn a_corrupt_credentials_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    write_credentials(dir.path());
    let path = dir.path().join(access::CREDENTIALS_FILE_NAME);
    let good = std::fs::read(&path).unwrap();
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x01;
    for damaged in [flipped, good[..good.len() / 2].to_vec(), b"junk".to_vec()] {
        std::fs::write(&path, &damaged).unwrap();
        let mut config = NodeConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            8 * MIB,
            dir.path().to_path_buf(),
        );
        config.token = None;
        match Node::start(config) {
            Ok(_) => panic!("a node started on a corrupt credentials file"),
            Err(error) => assert!(error.to_string().contains("credentials"), "{error}"),
        }
    }
    // An empty credentials file is not an open node.
    access::write_credentials(dir.path(), &[]).unwrap();
    let node = start(dir.path(), |_| {});
    let error = Client::connect(node.local_addr(), ClientOptions::default()).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unauthorized));
}

// Guards an open node that gains credentials while it runs: its anonymous
// connections are refused from then on, and losing the file again does not
// open it.
#[test]
fn an_open_node_that_gains_credentials_closes_anonymous_connections() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {});
    let anonymous = Client::connect(node.local_addr(), ClientOptions::default()).unwrap();
    anonymous.list_regions().unwrap();
    write_credentials(dir.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    while anonymous.list_regions().is_ok() {
        assert!(
            Instant::now() < deadline,
            "the anonymous connection is still served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Client::connect(node.local_addr(), ClientOptions::default()).is_err());
    connect(&node, "admin").raw().ping(0).unwrap();
    // Removing the file again does not open the node: it accepts no one.
    std::fs::remove_file(dir.path().join(access::CREDENTIALS_FILE_NAME)).unwrap();
    let error = Client::connect(node.local_addr(), ClientOptions::default()).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unauthorized), "{error}");
    let error = Client::connect(node.local_addr(), options("admin", "admin-token")).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unauthorized), "{error}");
}

// ---------------------------------------------------------------------------
// One writer per region.

// Guards the writer role: a second writer is refused with a message naming
// the holder, readers are not, a write from a connection without the role is
// refused, and the role passes on once the first writer closes the region
// or disconnects.
#[test]
fn a_second_writer_is_refused_until_the_first_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {});
    let named = |name: &str| {
        Client::connect(
            node.local_addr(),
            ClientOptions {
                client_name: name.into(),
                ..ClientOptions::default()
            },
        )
        .unwrap()
    };
    let first = named("first-writer");
    let second = named("second-writer");
    let info = first.create_region("r", MIB, PAGE as u32).unwrap();
    let region = first.open_region("r", RegionOptions::default()).unwrap();
    region.write_at(0, b"one").unwrap();
    region.flush().unwrap();

    let (code, message) = refusal(second.open_region("r", RegionOptions::default()));
    assert_eq!(code, ErrorCode::WriterBusy);
    assert!(message.contains("first-writer"), "{message}");
    let (code, message) = refusal(second.raw().write_pages(&info, &[0], &page(2)));
    assert_eq!(code, ErrorCode::WriterBusy, "{message}");
    // A raw write without opening at all.
    let mut raw = Raw::connect(node.local_addr());
    let hello = ClientHandshake::new("raw", "", b"".as_slice());
    let (opcode, payload) = raw.call(&hello.hello());
    assert!(is_hello_ok(opcode, &payload));
    let (opcode, payload) = raw.call_frame(&write_frame(info.id, 1, 1, &[0], 5));
    let (code, message) = error_of(opcode, &payload);
    assert_eq!(code, ErrorCode::NotWriter, "{message}");
    assert!(message.contains("first-writer"), "{message}");
    // Readers are welcome.
    let reader = second
        .open_region_read_only("r", RegionOptions::default())
        .unwrap();
    let mut back = [0u8; 3];
    reader.read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"one");

    // Two handles through one connection share the role: it passes on only
    // when both are closed.
    let again = first.open_region("r", RegionOptions::default()).unwrap();
    drop(region);
    assert_eq!(
        refusal(second.open_region("r", RegionOptions::default())).0,
        ErrorCode::WriterBusy
    );
    drop(again);
    let taken = second.open_region("r", RegionOptions::default()).unwrap();
    taken.write_at(0, b"two").unwrap();
    taken.flush().unwrap();
    assert_eq!(
        refusal(first.open_region("r", RegionOptions::default())).0,
        ErrorCode::WriterBusy
    );
    // A disconnect lets go as well: a raw connection takes the role and
    // goes away without closing the region.
    drop(taken);
    let open_for_writing = |raw: &mut Raw| {
        let (opcode, payload) = raw.call(&Request::OpenRegion {
            name: "r",
            mode: OpenMode::Write,
            claim_epoch: 0,
        });
        match Response::decode(opcode, &payload).unwrap() {
            Response::RegionOpened {
                writer_epoch, lsn, ..
            } => Some((writer_epoch, lsn)),
            _ => None,
        }
    };
    let mut vanishing = Raw::connect(node.local_addr());
    let (opcode, payload) = vanishing.call(&hello.hello());
    assert!(is_hello_ok(opcode, &payload));
    let (vanished_epoch, _) = open_for_writing(&mut vanishing).expect("the role was free");
    assert_eq!(open_for_writing(&mut raw), None);
    drop(vanishing);
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let (epoch, lsn) = loop {
        if let Some(granted) = open_for_writing(&mut raw) {
            break granted;
        }
        assert!(
            Instant::now() < deadline,
            "a disconnected writer kept the role"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(epoch > vanished_epoch, "a new writer gets a new epoch");
    let (opcode, payload) = raw.call_frame(&write_frame(info.id, epoch, lsn + 1, &[0], 5));
    assert_eq!(Response::decode(opcode, &payload).unwrap(), Response::Done);
    // The deposed epoch is fenced off: a write under it is refused.
    let (opcode, payload) = raw.call_frame(&write_frame(info.id, vanished_epoch, lsn + 2, &[0], 6));
    assert_eq!(error_of(opcode, &payload).0, ErrorCode::StaleEpoch);
}

// Guards the lease: a writer that stays silent beyond the writer lease loses
// the role to a new writer, and its later writes are refused rather than
// mixed with the new writer's.
#[test]
fn a_silent_writer_loses_the_role_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |config| {
        config.writer_lease = Duration::from_millis(300)
    });
    let first = Client::connect(node.local_addr(), ClientOptions::default()).unwrap();
    let second = Client::connect(node.local_addr(), ClientOptions::default()).unwrap();
    let info = first.create_region("r", MIB, PAGE as u32).unwrap();
    first.raw().write_pages(&info, &[0], &page(1)).unwrap();
    assert_eq!(
        refusal(second.raw().write_pages(&info, &[0], &page(2))).0,
        ErrorCode::WriterBusy
    );
    std::thread::sleep(Duration::from_millis(500));
    second.raw().write_pages(&info, &[0], &page(2)).unwrap();
    let (code, message) = refusal(first.raw().write_pages(&info, &[0], &page(3)));
    assert_eq!(code, ErrorCode::StaleEpoch, "{message}");
    let mut back = vec![0u8; PAGE];
    first.raw().read_pages(&info, &[0], &mut back).unwrap();
    assert_eq!(back, page(2));
}

// Guards the node-to-node path: a recovery's target authenticates to its
// source by proof, like any client, so the source's token never crosses the
// wire between the nodes (recorded here by a proxy in front of the source).
#[test]
fn a_recovery_target_proves_rather_than_sends_the_token() {
    let storage = tempfile::tempdir().unwrap();
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_storage = |config: &mut NodeConfig| {
        config.token = Some(b"cluster-token".to_vec());
        config.storage = Some(pagoda_node::StorageConfig::Dir(
            storage.path().to_path_buf(),
        ));
    };
    let source = start(source_dir.path(), with_storage);
    let target = start(target_dir.path(), with_storage);
    let (proxy, sent) = recording_proxy(source.local_addr());
    let admin = |node: &Node| {
        Client::connect(
            node.local_addr(),
            ClientOptions::with_token("cluster-token"),
        )
        .unwrap()
    };
    let on_source = admin(&source);
    let info = on_source.create_region("moving", MIB, PAGE as u32).unwrap();
    on_source.raw().write_pages(&info, &[0], &page(1)).unwrap();
    on_source.checkpoint("moving", false).unwrap();
    on_source.raw().write_pages(&info, &[1], &page(2)).unwrap();

    let on_target = admin(&target);
    let proxy_address = proxy.to_string();
    on_target
        .recover(
            "moving",
            Some(proxy_address.as_str()),
            Some(b"cluster-token".as_slice()),
            false,
            Duration::from_millis(20),
            |_| {},
        )
        .unwrap();
    let moved = on_target.stat_region("moving").unwrap().info;
    let mut back = vec![0u8; 2 * PAGE];
    on_target
        .raw()
        .read_pages(&moved, &[0, 1], &mut back)
        .unwrap();
    assert_eq!(back, [page(1), page(2)].concat());
    let captured = sent.lock().clone();
    assert!(
        !captured.is_empty(),
        "the target did not go through the proxy"
    );
    assert!(
        !captured.windows(13).any(|w| w == b"cluster-token"),
        "the token crossed the wire between the nodes"
    );
}

// Guards recovery between nodes that have only named credentials: the
// target authenticates to its source as its configured peer credential (here
// "admin", with the token the request carries), not always as "default",
// which such a source does not have.
#[test]
fn a_recovery_target_authenticates_as_its_peer_credential() {
    let storage = tempfile::tempdir().unwrap();
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_credentials(source_dir.path());
    write_credentials(target_dir.path());
    let storage_path = storage.path().to_path_buf();
    let source = start(source_dir.path(), |config| {
        config.storage = Some(pagoda_node::StorageConfig::Dir(storage_path.clone()));
    });
    let target = start(target_dir.path(), |config| {
        config.storage = Some(pagoda_node::StorageConfig::Dir(storage_path.clone()));
        config.peer_credential = "admin".into();
    });
    let on_source = connect(&source, "admin");
    let info = on_source.create_region("moving", MIB, PAGE as u32).unwrap();
    on_source.raw().write_pages(&info, &[0], &page(3)).unwrap();
    drop(on_source);
    let on_target = connect(&target, "admin");
    let source_address = source.local_addr().to_string();
    on_target
        .recover(
            "moving",
            Some(source_address.as_str()),
            Some(b"admin-token".as_slice()),
            false,
            Duration::from_millis(20),
            |_| {},
        )
        .unwrap();
    let moved = on_target.stat_region("moving").unwrap().info;
    let mut back = vec![0u8; PAGE];
    on_target.raw().read_pages(&moved, &[0], &mut back).unwrap();
    assert_eq!(back, page(3));
}

// Guards against a flood of failed handshakes (20,000 in 5 s from one client
// before): each refusal is answered only after a pause, so one connection
// can fail only a few handshakes a second, and a client that is already in
// is served meanwhile.
#[test]
fn failed_handshakes_are_answered_after_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_credentials(dir.path());
    let bystander = connect(&node, "admin");
    let began = std::time::Instant::now();
    for _ in 0..3 {
        let mut raw = Raw::connect(node.local_addr());
        let (opcode, payload) = raw.handshake("admin", b"wrong-token");
        assert_eq!(error_of(opcode, &payload).0, ErrorCode::Unauthorized);
        raw.expect_closed();
        bystander.raw().ping(0).unwrap();
    }
    assert!(
        began.elapsed() >= access::FAILED_HANDSHAKE_DELAY * 3,
        "three failed handshakes took {:?}",
        began.elapsed()
    );
}

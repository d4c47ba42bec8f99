//! TLS between clients and the node, with certificates made by the test
//! (rcgen): a round trip, the refusals that must be clear (an untrusted
//! node, a client without the certificate the node requires, a client
//! without TLS, a TLS client to a plain node), the non-loopback rule at
//! start, and a certificate replaced without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientError, ClientOptions, RegionOptions, TlsOptions};
use pagoda_node::{Node, NodeConfig, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tempfile::TempDir;

/// A certificate authority made for the test.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Authority { params, key }
    }

    /// Writes the authority's certificate to `dir/name`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.params.self_signed(&self.key).unwrap().pem()).unwrap();
        path
    }

    /// Issues a certificate for 127.0.0.1 and localhost; writes it and its
    /// key to `dir/{name}.pem` and `dir/{name}.key`.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&key, &issuer).unwrap();
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, certificate.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

struct Fixture {
    node: Node,
    dir: TempDir,
    ca_file: PathBuf,
    authority: Authority,
}

fn start(client_ca: bool) -> Fixture {
    start_with(client_ca, |_| {})
}

fn start_with(client_ca: bool, adjust: impl FnOnce(&mut NodeConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("Pagoda test CA");
    let ca_file = authority.write(dir.path(), "ca.pem");
    let (cert_file, key_file) = authority.issue(dir.path(), "node");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let mut config = NodeConfig::new(([127, 0, 0, 1], 0).into(), 16 << 20, data_dir);
    config.tls = Some(TlsConfig {
        cert_file,
        key_file,
        client_ca_file: client_ca.then(|| ca_file.clone()),
    });
    adjust(&mut config);
    let node = Node::start(config).expect("a TLS node starts");
    Fixture {
        node,
        dir,
        ca_file,
        authority,
    }
}

fn options(tls: Option<TlsOptions>) -> ClientOptions {
    ClientOptions {
        tls,
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

fn round_trip(client: &Client) {
    client
        .create_region("secret", 1 << 20, 4096)
        .expect("create over TLS");
    let region = client
        .open_region("secret", RegionOptions::with_cache_bytes(1 << 16))
        .expect("open over TLS");
    // Large enough to take many TLS records each way.
    let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    region.write_at(4096, &data).unwrap();
    region.flush().unwrap();
    drop(region);
    let region = client
        .open_region("secret", RegionOptions::with_cache_bytes(1 << 16))
        .expect("reopen over TLS");
    let mut back = vec![0u8; data.len()];
    region.read_at(4096, &mut back).unwrap();
    assert!(back == data, "data read back over TLS differs");
}

// Guards the TLS round trip: a client that trusts the node's CA creates,
// writes, and reads back a region through pages that take many records.
#[test]
fn tls_round_trip() {
    let fixture = start(false);
    let client = Client::connect(
        fixture.node.local_addr(),
        options(Some(TlsOptions::with_ca(&fixture.ca_file))),
    )
    .expect("a client trusting the CA connects");
    round_trip(&client);
    // By name, as the command line connects.
    let tls = TlsOptions {
        server_name: Some("localhost".into()),
        ..TlsOptions::with_ca(&fixture.ca_file)
    };
    let client = Client::connect(fixture.node.local_addr(), options(Some(tls))).unwrap();
    client.list_regions().unwrap();
}

// Guards against trusting any node: a node whose certificate no trusted CA
// signed is refused, and the error says why.
#[test]
fn an_untrusted_node_is_refused() {
    let fixture = start(false);
    let other = Authority::new("Another CA");
    let other_ca = other.write(fixture.dir.path(), "other-ca.pem");
    let error = Client::connect(
        fixture.node.local_addr(),
        options(Some(TlsOptions::with_ca(&other_ca))),
    )
    .expect_err("a node signed by an untrusted CA must be refused");
    let message = error.to_string();
    assert!(
        message.contains("certificate") && message.contains("UnknownIssuer"),
        "{message}"
    );
    // A name the certificate does not carry is refused too.
    let tls = TlsOptions {
        server_name: Some("elsewhere.example".into()),
        ..TlsOptions::with_ca(&fixture.ca_file)
    };
    let message = Client::connect(fixture.node.local_addr(), options(Some(tls)))
        .expect_err("a wrong name must be refused")
        .to_string();
    assert!(message.contains("not valid for name"), "{message}");
}

// Guards client certificates: a node with a client CA refuses a client
// without a certificate (or with one another CA signed) with a clear error,
// and serves one whose certificate its CA signed.
#[test]
fn a_client_without_the_required_certificate_is_refused() {
    let fixture = start(true);
    let addr = fixture.node.local_addr();
    let refused = |tls: TlsOptions| -> String {
        match Client::connect(addr, options(Some(tls))) {
            Ok(client) => match client.list_regions() {
                Ok(_) => panic!("a client without a valid certificate was served"),
                Err(error) => error.to_string(),
            },
            Err(error) => error.to_string(),
        }
    };
    let message = refused(TlsOptions::with_ca(&fixture.ca_file));
    assert!(message.contains("CertificateRequired"), "{message}");

    let other = Authority::new("Another CA");
    let (cert_file, key_file) = other.issue(fixture.dir.path(), "stranger");
    let message = refused(TlsOptions {
        cert_file: Some(cert_file),
        key_file: Some(key_file),
        ..TlsOptions::with_ca(&fixture.ca_file)
    });
    assert!(
        message.contains("UnknownCA") || message.contains("BadCertificate"),
        "{message}"
    );

    let (cert_file, key_file) = fixture.authority.issue(fixture.dir.path(), "client");
    let tls = TlsOptions {
        cert_file: Some(cert_file),
        key_file: Some(key_file),
        ..TlsOptions::with_ca(&fixture.ca_file)
    };
    let client = Client::connect(addr, options(Some(tls))).expect("a certified client connects");
    round_trip(&client);
}

// Guards against confusing failures across the TLS boundary: a client
// without TLS is told the node requires it, and a TLS client to a plain node
// is told the handshake failed and why that may be.
#[test]
fn plaintext_and_tls_mismatches_are_refused_clearly() {
    let fixture = start(false);
    let message = match Client::connect(fixture.node.local_addr(), options(None)) {
        Ok(client) => client.list_regions().map(|_| ()).unwrap_err().to_string(),
        Err(error) => error.to_string(),
    };
    assert!(message.contains("requires TLS"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let plain = Node::start(NodeConfig::new(
        ([127, 0, 0, 1], 0).into(),
        16 << 20,
        dir.path().into(),
    ))
    .unwrap();
    let error = Client::connect(
        plain.local_addr(),
        options(Some(TlsOptions::with_ca(&fixture.ca_file))),
    )
    .expect_err("TLS to a plain node must fail");
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("TLS handshake failed") && message.contains("not seem to speak TLS"),
        "{message}"
    );
}

// Guards the network rule: a node on a non-loopback address refuses to start
// without TLS unless the operator says --insecure-no-tls, and starts with
// TLS.
#[test]
fn non_loopback_without_tls_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(([0, 0, 0, 0], 0).into(), 16 << 20, dir.path().into());
    config.token = Some(b"token".to_vec());
    match Node::start(config.clone()) {
        Ok(node) => panic!("a node started on {} without TLS", node.local_addr()),
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains("without TLS") && message.contains("--insecure-no-tls"),
                "{message}"
            );
        }
    }
    let mut insecure = config.clone();
    insecure.insecure_no_tls = true;
    drop(Node::start(insecure).expect("--insecure-no-tls starts"));

    let authority = Authority::new("Pagoda test CA");
    let (cert_file, key_file) = authority.issue(dir.path(), "node");
    let mut secure = config;
    secure.tls = Some(TlsConfig {
        cert_file,
        key_file: key_file.clone(),
        client_ca_file: None,
    });
    drop(Node::start(secure.clone()).expect("a node with TLS starts"));

    // Unusable files are refused at start, naming the file.
    std::fs::write(&key_file, "not a key").unwrap();
    let message = Node::start(secure).err().expect("a bad key").to_string();
    assert!(message.contains("node.key"), "{message}");
}

// Guards certificate renewal: replacing the node's certificate and key files
// takes effect for new connections without a restart.
#[test]
fn a_replaced_certificate_is_used_without_a_restart() {
    let fixture = start(false);
    let renewed = Authority::new("Renewed CA");
    let renewed_ca = renewed.write(fixture.dir.path(), "renewed-ca.pem");
    let addr = fixture.node.local_addr();
    Client::connect(addr, options(Some(TlsOptions::with_ca(&renewed_ca))))
        .expect_err("the renewed CA does not sign the node's certificate yet");
    // Issue into a side directory, then move over the node's files.
    let side = fixture.dir.path().join("side");
    std::fs::create_dir(&side).unwrap();
    let (cert_file, key_file) = renewed.issue(&side, "node");
    std::fs::rename(key_file, fixture.dir.path().join("node.key")).unwrap();
    std::fs::rename(cert_file, fixture.dir.path().join("node.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(addr, options(Some(TlsOptions::with_ca(&renewed_ca)))) {
            Ok(client) => {
                client.list_regions().unwrap();
                break;
            }
            Err(error) => assert!(
                Instant::now() < deadline,
                "the renewed certificate was never used: {error}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// Guards node-to-node TLS: a recovery's target reaches a TLS source only
// with its peer TLS settings, and then rebuilds the region exactly; without
// them the recovery fails saying the source requires TLS.
#[test]
fn recovery_between_tls_nodes_uses_the_peer_settings() {
    let storage = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("Pagoda test CA");
    let ca_file = authority.write(dir.path(), "ca.pem");
    let (cert_file, key_file) = authority.issue(dir.path(), "node");
    let start_node = |name: &str, peer_tls: bool| {
        let data_dir = dir.path().join(name);
        std::fs::create_dir(&data_dir).unwrap();
        let mut config = NodeConfig::new(([127, 0, 0, 1], 0).into(), 16 << 20, data_dir);
        config.storage = Some(pagoda_node::StorageConfig::Dir(storage.path().into()));
        config.tls = Some(TlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: None,
        });
        config.peer_tls = peer_tls.then(|| TlsOptions::with_ca(&ca_file));
        Node::start(config).expect("a TLS node starts")
    };
    let source = start_node("source", false);
    let tls = || options(Some(TlsOptions::with_ca(&ca_file)));
    let client = Client::connect(source.local_addr(), tls()).unwrap();
    let info = client.create_region("moving", 1 << 20, 4096).unwrap();
    let page = |p: u64, v: u8| vec![v ^ p as u8; 4096];
    let pages: Vec<u64> = (0..64).collect();
    let data: Vec<u8> = pages.iter().flat_map(|&p| page(p, 1)).collect();
    client.raw().write_pages(&info, &pages, &data).unwrap();
    client.checkpoint("moving", false).unwrap();
    // Dirty after the baseline: only the source has these.
    client
        .raw()
        .write_pages(&info, &[3, 40], &[page(3, 2), page(40, 2)].concat())
        .unwrap();
    drop(client);
    let source_address = source.local_addr().to_string();

    let plain_target = start_node("plain-target", false);
    let target = Client::connect(plain_target.local_addr(), tls()).unwrap();
    let message = target
        .recover(
            "moving",
            Some(&source_address),
            None,
            false,
            Duration::from_millis(5),
            |_| {},
        )
        .expect_err("a target without peer TLS cannot reach a TLS source")
        .to_string();
    assert!(message.contains("requires TLS"), "{message}");

    let tls_target = start_node("tls-target", true);
    let target = Client::connect(tls_target.local_addr(), tls()).unwrap();
    target
        .recover(
            "moving",
            Some(&source_address),
            None,
            false,
            Duration::from_millis(5),
            |_| {},
        )
        .expect("a target with peer TLS recovers from a TLS source");
    let info = target.stat_region("moving").unwrap().info;
    let mut back = vec![0u8; 64 * 4096];
    target.raw().read_pages(&info, &pages, &mut back).unwrap();
    for &p in &pages {
        let version = if p == 3 || p == 40 { 2 } else { 1 };
        assert!(
            back[p as usize * 4096..(p as usize + 1) * 4096] == page(p, version)[..],
            "page {p} differs after recovery over TLS"
        );
    }
}

// Guards slowloris over TLS: a TLS handshake trickled one byte at a time is
// cut at the handshake deadline, counted from accept, and a client that
// connects meanwhile is served.
#[test]
fn a_trickled_tls_handshake_is_cut_at_the_deadline() {
    use std::io::{Read, Write};
    let fixture = start_with(false, |config| {
        config.handshake_timeout = Duration::from_millis(600);
    });
    let mut slow = std::net::TcpStream::connect(fixture.node.local_addr()).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // A TLS record carrying a ClientHello, 512 bytes long, sent so slowly
    // that it does not end within the test (a timeout per read would keep
    // it open).
    let mut record = vec![
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    record.resize(5 + 512, 0);
    let began = Instant::now();
    let mut sent = 0;
    let closed_after = loop {
        if sent < record.len() && slow.write_all(&record[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        let mut byte = [0u8; 64];
        match slow.read(&mut byte) {
            Ok(_) => break began.elapsed(),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break began.elapsed(),
        }
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "a trickled TLS handshake is still open"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        closed_after < Duration::from_secs(2),
        "closed only after {closed_after:?}"
    );
    let client = Client::connect(
        fixture.node.local_addr(),
        options(Some(TlsOptions::with_ca(&fixture.ca_file))),
    )
    .expect("a client connects");
    client.list_regions().unwrap();
}

// Guards replies finished off the connection's thread over TLS: on a node
// whose RAM holds a quarter of the region, pages read from the bulk tier by
// the node's reading threads reach three TLS clients' threads (sharing one
// connection each) intact and in the right replies, mixed with resident
// pages and with writes.
#[test]
fn bulk_tier_reads_reach_tls_clients_intact() {
    const PAGE: usize = 4096;
    const PAGES: u64 = 8 * 512; // 16 MiB in segments of 2 MiB
    let fixture = start_with(false, |config| {
        config.capacity_bytes = 4 << 20;
        config.bulk = Some(pagoda_node::bulk::BulkConfig {
            dir: config.data_dir.with_file_name("bulk"),
            capacity_bytes: 64 << 20,
        });
    });
    let client = std::sync::Arc::new(
        Client::connect(
            fixture.node.local_addr(),
            options(Some(TlsOptions::with_ca(&fixture.ca_file))),
        )
        .unwrap(),
    );
    let info = client
        .create_region("tiered", PAGES * PAGE as u64, PAGE as u32)
        .unwrap();
    let content = |page: u64, version: u64| -> Vec<u8> {
        (0..PAGE / 16)
            .flat_map(|_| [page.to_le_bytes(), version.to_le_bytes()].concat())
            .collect()
    };
    for first in (0..PAGES).step_by(256) {
        let pages: Vec<u64> = (first..first + 256).collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| content(p, 0)).collect();
        client.raw().write_pages(&info, &pages, &data).unwrap();
    }
    assert!(client.stat_region("tiered").unwrap().segments_paged_out >= 4);
    let threads: Vec<_> = (0..3u64)
        .map(|thread| {
            let (client, info) = (client.clone(), info.clone());
            std::thread::spawn(move || {
                // Each thread owns the pages p with p % 3 == thread.
                let mut versions = vec![0u64; PAGES as usize];
                let mut state = thread + 1;
                for step in 0..200u64 {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let pages: Vec<u64> = (0..8)
                        .map(|i| {
                            let page = (state >> 20).wrapping_add(i * 977) % (PAGES / 3);
                            page * 3 + thread
                        })
                        .filter(|&page| page < PAGES)
                        .collect();
                    if step % 5 == 0 {
                        let data: Vec<u8> =
                            pages.iter().flat_map(|&p| content(p, step + 1)).collect();
                        client.raw().write_pages(&info, &pages, &data).unwrap();
                        for &page in &pages {
                            versions[page as usize] = step + 1;
                        }
                    } else {
                        let mut out = vec![0u8; pages.len() * PAGE];
                        client.raw().read_pages(&info, &pages, &mut out).unwrap();
                        for (at, &page) in pages.iter().enumerate() {
                            assert!(
                                out[at * PAGE..(at + 1) * PAGE]
                                    == content(page, versions[page as usize])[..],
                                "page {page} read back wrong at step {step}"
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

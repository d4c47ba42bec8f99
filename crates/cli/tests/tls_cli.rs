//! TLS from the command line, against a running `pagoda node` process with
//! certificates made by the test: `--tls-cert/--tls-key` on the node,
//! `--tls-ca` (or `PAGODA_TLS_CA`) on client commands, the refusal of a
//! plaintext client, and the non-loopback rule at start.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use common::{free_port, pagoda, spawn_node, text};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// The `pagoda` binary without TLS settings from the environment.
fn command() -> Command {
    let mut command = pagoda();
    for name in [
        "PAGODA_TLS_CA",
        "PAGODA_TLS_CERT",
        "PAGODA_TLS_KEY",
        "PAGODA_TLS_SERVER_NAME",
    ] {
        command.env_remove(name);
    }
    command
}

/// Writes a CA certificate and a node certificate (for 127.0.0.1 and
/// localhost) with its key to `dir`: (ca, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "CLI test CA");
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let certificate = leaf
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
    );
    std::fs::write(&paths.0, ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    std::fs::write(&paths.1, certificate.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A `pagoda node` process, killed on drop.
struct NodeProcess {
    child: Child,
    port: u16,
}

impl NodeProcess {
    fn start(data_dir: &Path, cert: &Path, key: &Path) -> NodeProcess {
        let port = free_port();
        let mut node = command();
        node.args(["node", "--capacity", "64MiB", "--storage", "none"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key);
        let child = spawn_node(node, Duration::from_secs(30));
        NodeProcess { child, port }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn region(node: &str, args: &[&str], tls_ca: Option<&Path>) -> Output {
    let mut command = command();
    command.arg("region").args(args).args(["--node", node]);
    if let Some(ca) = tls_ca {
        command.arg("--tls-ca").arg(ca);
    }
    command.output().unwrap()
}

// Guards the command line's TLS: a client with --tls-ca (by IP address or by
// name, or with PAGODA_TLS_CA) is served by a TLS node, and one without TLS
// is told the node requires it.
#[test]
fn client_commands_speak_tls_to_a_tls_node() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let node = NodeProcess::start(&data_dir, &cert, &key);
    let by_ip = format!("127.0.0.1:{}", node.port);
    let by_name = format!("localhost:{}", node.port);

    let created = region(&by_ip, &["create", "secure", "--size", "1MiB"], Some(&ca));
    assert!(created.status.success(), "{}", text(&created));
    let listed = region(&by_name, &["ls"], Some(&ca));
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains("secure"), "{}", text(&listed));
    let from_env = command()
        .args(["region", "ls", "--node", &by_ip])
        .env("PAGODA_TLS_CA", &ca)
        .output()
        .unwrap();
    assert!(from_env.status.success(), "{}", text(&from_env));
    let stat = command()
        .args(["node", "stat", "--json", "--node", &by_name, "--tls-ca"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(stat.status.success(), "{}", text(&stat));
    let stat: serde_json::Value = serde_json::from_slice(&stat.stdout).unwrap();
    assert_eq!(stat["regions"], 1, "{stat}");

    let plaintext = region(&by_ip, &["ls"], None);
    assert!(!plaintext.status.success(), "{}", text(&plaintext));
    assert!(
        text(&plaintext).contains("requires TLS"),
        "{}",
        text(&plaintext)
    );
}

// Guards the network rule from the command line: a node on a non-loopback
// address without TLS refuses to start and names the flags that fix it.
#[test]
fn a_node_on_the_network_without_tls_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-token").unwrap();
    let output = command()
        .args(["node", "--capacity", "64MiB", "--storage", "none"])
        .args(["--listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let message = text(&output);
    assert!(
        message.contains("without TLS") && message.contains("--insecure-no-tls"),
        "{message}"
    );
}

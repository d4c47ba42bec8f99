//! Helpers shared by the tests of the `pagoda` binary.

pub mod http;
pub mod model;
pub mod writer;

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The `pagoda` binary, with none of the environment that would point it at
/// another node or change its logging.
pub fn pagoda() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pagoda"));
    clear_pagoda_env(&mut command);
    command
}

/// Removes from `command` the environment that would point `pagoda` at
/// another node or change its logging (for a `pagoda` started through
/// another program).
pub fn clear_pagoda_env(command: &mut Command) {
    command
        .env_remove("PAGODA_NODE")
        .env_remove("PAGODA_TOKEN_FILE")
        .env_remove("PAGODA_CREDENTIAL")
        .env_remove("PAGODA_LOG");
}

/// A command's stdout and stderr, as text.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A loopback port free at the time of the call, never handed out before in
/// this process, and below the kernel's ephemeral range: a port the kernel
/// picked for `bind(0)` could be picked again for another test's `bind(0)`
/// or for an outgoing connection before the server meant for it binds it
/// (a node failing with "Address already in use").
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(12_000, 65_535);
    let (low, span) = (10_000u32, ephemeral_low - 10_000);
    // Start where another test binary (or a left-over process) is unlikely
    // to be, and walk the range with a stride prime to its length.
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    for step in 0..span {
        let port = (low + (seed.wrapping_add(step.wrapping_mul(7_919))) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port between {low} and {ephemeral_low}");
}

/// Spawns `command` (a prepared `pagoda node ...`) with its stderr piped and
/// waits, at most `limit`, for it to announce that it listens; a node that
/// does not is killed and the test fails.
#[allow(dead_code)] // not every test binary starts a node
pub fn spawn_node(mut command: Command, limit: std::time::Duration) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = sender.send(());
            }
        }
    });
    if receiver.recv_timeout(limit).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the node did not announce that it listens within {limit:?}");
    }
    child
}

/// A `pagoda node` process on a free loopback port (64 MiB of capacity,
/// its data in `data_dir`), started and waited for until it listens, and
/// killed when dropped.
#[allow(dead_code)] // not every test binary starts a node
pub struct NodeProcess {
    /// The process.
    pub child: std::process::Child,
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: String,
}

#[allow(dead_code)]
impl NodeProcess {
    /// Starts `pagoda node --listen ADDR --capacity 64MiB --data-dir DIR`
    /// with `extra` arguments.
    pub fn start(data_dir: &std::path::Path, extra: &[&str]) -> NodeProcess {
        NodeProcess::start_at(&format!("127.0.0.1:{}", free_port()), data_dir, extra)
    }
}

#[allow(dead_code)]
impl NodeProcess {
    /// Starts `pagoda node --listen addr --capacity 64MiB --data-dir DIR`
    /// with `extra` arguments, on a given address (to start a node again
    /// where one was).
    pub fn start_at(addr: &str, data_dir: &std::path::Path, extra: &[&str]) -> NodeProcess {
        NodeProcess::start_sized(addr, "64MiB", data_dir, extra)
    }

    /// Starts `pagoda node --listen addr --capacity CAPACITY --data-dir DIR`
    /// with `extra` arguments.
    pub fn start_sized(
        addr: &str,
        capacity: &str,
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> NodeProcess {
        let mut command = pagoda();
        command
            .args([
                "node",
                "--listen",
                addr,
                "--capacity",
                capacity,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra);
        let child = spawn_node(command, std::time::Duration::from_secs(30));
        NodeProcess {
            child,
            addr: addr.to_owned(),
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client command against the node at `node`.
#[allow(dead_code)]
pub fn run(args: &[&str], node: &str) -> Output {
    pagoda().args(args).args(["--node", node]).output().unwrap()
}

/// Runs a client command that must succeed and returns its stdout.
#[allow(dead_code)]
pub fn run_ok(args: &[&str], node: &str) -> String {
    let output = run(args, node);
    assert!(
        output.status.success(),
        "pagoda {args:?} --node {node} failed: {}",
        text(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a client command that must succeed and prints JSON, and parses it.
#[allow(dead_code)]
pub fn run_json(args: &[&str], node: &str) -> serde_json::Value {
    let stdout = run_ok(args, node);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

/// Spawns `command` with its stderr appended to the file `log`. With
/// `ready` (a marker and a limit), waits until a stderr line contains the
/// marker; a process that writes none within the limit is killed and the
/// test fails, showing the end of its log.
#[allow(dead_code)]
pub fn spawn_logged(
    mut command: Command,
    log: &Path,
    what: &str,
    ready: Option<(&str, Duration)>,
) -> Child {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stderr = child.stderr.take().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    let marker = ready.map(|(marker, _)| marker.to_owned());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            if marker.as_ref().is_some_and(|marker| line.contains(marker)) {
                let _ = sender.send(());
            }
        }
    });
    if let Some((_, limit)) = ready
        && receiver.recv_timeout(limit).is_err()
    {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} did not start within {limit:?}; its log:\n{}",
            log_tail(log)
        );
    }
    child
}

/// The last 3,000 bytes of a log file.
#[allow(dead_code)]
pub fn log_tail(path: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let length = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(std::io::SeekFrom::Start(length.saturating_sub(3_000)));
    let mut tail = String::new();
    let _ = file.read_to_string(&mut tail);
    tail
}

/// A duration in milliseconds, for printing.
#[allow(dead_code)]
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The field names of a JSON object, sorted.
#[allow(dead_code)]
pub fn field_names(object: &serde_json::Value) -> Vec<&str> {
    let mut fields: Vec<&str> = object
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    fields
}

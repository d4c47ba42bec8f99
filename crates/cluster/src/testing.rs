//! A real etcd server for tests, here and in other crates. Not for
//! production use.
//!
//! [`Etcd::start`] runs Debian's `etcd` (3.4) as a one-member cluster on
//! free loopback ports, with its data in a temporary directory, and waits
//! until it has a leader. It can be stopped (`kill -9`) and restarted on the
//! same ports with the same data, paused (`SIGSTOP`, a server that accepts
//! connections and answers nothing) and resumed, and is killed when
//! dropped.
//!
//! It runs with `--heartbeat-interval 50 --election-timeout 500` so that
//! one-second leases are real one-second leases: etcd raises every lease
//! TTL to at least `ceil(1.5 × election timeout)`, which is 2 s with its
//! defaults (100 ms and 1 s) and 1 s with these.
//!
//! # Finding etcd
//!
//! The binary is `$PAGODA_ETCD_BIN` when set, else `etcd` on `PATH` (or
//! `/usr/bin/etcd`). When there is none, the fixture installs Debian's
//! `etcd-server` package with `apt-get` (running `apt-get update` first if
//! the install fails), one test process at a time under a lock file in the
//! temporary directory, so that `cargo test --workspace` works on a fresh
//! machine. If that fails too it panics saying why: a test that needs etcd
//! never skips silently. (The package's systemd unit, which would listen on
//! the fixed port 2379, is never started without systemd; the fixture uses
//! only ports the kernel handed out.)

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long etcd may take to answer its health check after it starts.
const START_TIMEOUT_MS: u64 = 20_000;
/// How often a starting etcd is asked whether it is healthy.
const HEALTH_POLL_INTERVAL_MS: u64 = 20;
/// How long one health check may take.
const HEALTH_TIMEOUT_MS: u64 = 500;
/// How many times a start is tried with fresh ports (another process may
/// take a free port between the fixture choosing it and etcd binding it).
const START_ATTEMPTS_MAX: usize = 3;
/// The most bytes of etcd's log quoted in a panic message.
const LOG_QUOTE_BYTES_MAX: u64 = 4_000;
/// The most bytes of a health answer read.
const HEALTH_ANSWER_BYTES_MAX: u64 = 4_096;
/// etcd's heartbeat interval and election timeout (see the module docs).
const HEARTBEAT_INTERVAL_MS: u64 = 50;
/// See [`HEARTBEAT_INTERVAL_MS`].
const ELECTION_TIMEOUT_MS: u64 = 500;
/// The environment variable that names the etcd binary to use.
pub const ETCD_BIN_VARIABLE: &str = "PAGODA_ETCD_BIN";

/// A running etcd server (see the module docs).
#[derive(Debug)]
pub struct Etcd {
    binary: PathBuf,
    /// Holds `data/` (etcd's data dir) and `etcd.log`; removed on drop.
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// `None` while stopped.
    child: Option<Child>,
}

impl Etcd {
    /// Starts a fresh etcd and waits until it answers. Panics if etcd can
    /// be neither found nor installed, or does not come up in time.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("pagoda-etcd-")
            .tempdir()
            .expect("creating etcd's temporary directory");
        let mut etcd = Etcd {
            binary: etcd_binary().to_path_buf(),
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS_MAX {
            (etcd.client_port, etcd.peer_port) = free_ports();
            match etcd.launch() {
                Ok(()) => return etcd,
                Err(failure) => {
                    failures.push(failure);
                    // A fresh member for the next attempt.
                    let _ = std::fs::remove_dir_all(etcd.data_dir());
                }
            }
        }
        panic!(
            "etcd ({}) did not start in {START_ATTEMPTS_MAX} attempts:\n{}",
            etcd.binary.display(),
            failures.join("\n---\n")
        );
    }

    /// The coordinator endpoint: `etcd://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("etcd://{}", self.address())
    }

    /// The client address, `127.0.0.1:PORT` (for `etcd_client::Client`).
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Whether it is running (not stopped by [`Etcd::stop`]).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills it (`SIGKILL`) and waits until it is gone. Its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (`SIGSTOP`): its sockets stay open and connections are
    /// still accepted by the kernel, but nothing is answered, like a hung
    /// or unreachable server. [`Etcd::resume`] thaws it.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws it after [`Etcd::pause`] (`SIGCONT`).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("etcd is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: signals our own child, which has not been waited for (so
        // its pid is not reused).
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            result,
            0,
            "signalling etcd: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Starts it again on the same ports with the same data (stopping it
    /// first if it runs), and waits until it answers. Panics if it does not.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(failure) = self.launch() {
            panic!("etcd did not restart: {failure}");
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Runs etcd and waits until it is healthy; on failure it is not
    /// running and the error quotes its log.
    fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd is already running");
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening {}: {e}", self.log_path().display()))?;
        let log_start = log.metadata().map_or(0, |m| m.len());
        let log_err = log
            .try_clone()
            .map_err(|e| format!("opening etcd's log: {e}"))?;
        let mut command = Command::new(&self.binary);
        // Settings of the environment's own etcd must not leak in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        if std::env::consts::ARCH == "aarch64" {
            // etcd 3.4 refuses to run on arm64 unless told it may.
            command.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let name = "pagoda-test";
        command
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--heartbeat-interval")
            .arg(HEARTBEAT_INTERVAL_MS.to_string())
            .arg("--election-timeout")
            .arg(ELECTION_TIMEOUT_MS.to_string())
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if healthy(self.client_port) {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .expect("launched above")
                .try_wait()
                .ok()
                .flatten();
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "etcd exited ({status}); its log:\n{}",
                    self.log_since(log_start)
                ));
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "etcd was not healthy within {START_TIMEOUT_MS} ms; its log:\n{}",
                    self.log_since(log_start)
                ));
            }
            std::thread::sleep(Duration::from_millis(HEALTH_POLL_INTERVAL_MS));
        }
    }

    /// The end of what etcd logged since `start` (a byte offset).
    fn log_since(&self, start: u64) -> String {
        let Ok(mut file) = File::open(self.log_path()) else {
            return String::from("(no log)");
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let from = start.max(len.saturating_sub(LOG_QUOTE_BYTES_MAX));
        let mut bytes = Vec::new();
        use std::io::Seek;
        if file.seek(std::io::SeekFrom::Start(from)).is_err()
            || file
                .take(LOG_QUOTE_BYTES_MAX)
                .read_to_end(&mut bytes)
                .is_err()
        {
            return String::from("(unreadable log)");
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether etcd on `port` says it is healthy (`GET /health` answers
/// `"health":"true"` once the member has a leader).
fn healthy(port: u16) -> bool {
    let timeout = Duration::from_millis(HEALTH_TIMEOUT_MS);
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, timeout) else {
        return false;
    };
    if stream.set_read_timeout(Some(timeout)).is_err()
        || stream.set_write_timeout(Some(timeout)).is_err()
    {
        return false;
    }
    let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    if stream
        .take(HEALTH_ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .is_err()
    {
        return false;
    }
    let answer = String::from_utf8_lossy(&answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains(r#""health":"true""#)
}

/// Two loopback ports that were free a moment ago.
fn free_ports() -> (u16, u16) {
    // Both listeners are held at once, so the kernel hands out two
    // different ports.
    let first = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let second = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = |listener: &TcpListener| listener.local_addr().expect("a bound address").port();
    (port(&first), port(&second))
}

/// The etcd binary, installed if missing (see the module docs); once per
/// process.
fn etcd_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os(ETCD_BIN_VARIABLE) {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{ETCD_BIN_VARIABLE}={} is not a file",
                path.display()
            );
            return path;
        }
        if let Some(path) = find_etcd() {
            return path;
        }
        install_etcd();
        find_etcd().unwrap_or_else(|| {
            panic!("etcd is still not on PATH or in /usr/bin after installing etcd-server")
        })
    })
}

fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// Installs Debian's etcd-server, one process at a time; panics saying why
/// when it cannot.
fn install_etcd() {
    install_package(
        "etcd-server",
        || find_etcd().is_some(),
        &format!(
            "the etcd tests need etcd, which is not on PATH. Install it (apt-get install \
             etcd-server), or set {ETCD_BIN_VARIABLE} to an etcd 3.4+ binary"
        ),
    );
}

/// Finds `binary` on `PATH` (or in `/usr/sbin`, `/sbin`, `/usr/bin`), or
/// installs Debian's `package` to get it: what a test needs that a fresh
/// machine with only the Rust toolchain lacks. Panics saying why when it
/// cannot.
pub fn require_binary(binary: &str, package: &str) -> PathBuf {
    let find = || {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
            .map(|dir| dir.join(binary))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = find() {
        return found;
    }
    install_package(
        package,
        || find().is_some(),
        &format!("this test needs {binary}, which is not on PATH (Debian's {package})"),
    );
    find().unwrap_or_else(|| panic!("{binary} is still missing after installing {package}"))
}

/// Installs a Debian package with apt-get, one process at a time (under a
/// lock file), unless `present` says another process did meanwhile;
/// panics with `why` and apt-get's transcript when it fails.
fn install_package(package: &str, present: impl Fn() -> bool, why: &str) {
    let lock_path = std::env::temp_dir().join("pagoda-test-install.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!(
            "locking {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    // Another process may have installed it while this one waited.
    if present() {
        return;
    }
    let mut transcript = String::new();
    let mut apt_get = |args: &[&str]| -> bool {
        let output = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(output) => {
                transcript.push_str(&format!(
                    "$ apt-get {}\n{}{}\n",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
                output.status.success()
            }
            Err(e) => {
                transcript.push_str(&format!("$ apt-get {}: {e}\n", args.join(" ")));
                false
            }
        }
    };
    // Waits for another apt (outside the tests) rather than failing.
    let install = [
        "-o",
        "DPkg::Lock::Timeout=120",
        "install",
        "-y",
        "--no-install-recommends",
        package,
    ];
    let installed = apt_get(&install)
        || (apt_get(&["-o", "DPkg::Lock::Timeout=120", "update"]) && apt_get(&install));
    if !installed || !present() {
        panic!("{why}, and installing Debian's {package} failed.\n{transcript}");
    }
    drop(lock);
}

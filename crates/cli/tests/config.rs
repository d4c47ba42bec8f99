//! `pagoda node --config FILE`: the settings file, its precedence under
//! flags and PAGODA_NODE_* variables, `--print-config`, and the checks a
//! node makes before it serves, each failing with one message that names
//! the fix.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{free_port, pagoda, run_json, run_ok, spawn_logged, text};

/// `pagoda node` with none of the PAGODA_NODE_* variables of the
/// environment the tests run in, so that only the ones a test sets count.
fn node_command() -> Command {
    let mut command = pagoda();
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PAGODA_NODE_") {
            command.env_remove(name);
        }
    }
    command.arg("node");
    command
}

/// Runs `command`, which must fail, and returns its stderr.
fn failure(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(!output.status.success(), "succeeded: {}", text(&output));
    String::from_utf8(output.stderr).unwrap()
}

/// Runs `command`, which must succeed, and returns its stdout.
fn success(command: &mut Command) -> String {
    let output: Output = command.output().unwrap();
    assert!(output.status.success(), "failed: {}", text(&output));
    String::from_utf8(output.stdout).unwrap()
}

/// The value of `key` in a printed configuration (its text after `= `).
fn printed<'a>(config: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    config
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key} in:\n{config}"))
}

// Guards the round trip: a printed configuration, read back with
// --config, prints as itself, every setting given on the command line in
// it and sizes in their exact spelling.
#[test]
fn printed_config_reads_back_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let printed_once = success(
        node_command()
            .args(["--print-config", "--listen", "127.0.0.1:7171"])
            .args(["--capacity", "3GiB", "--data-dir"])
            .arg(&data_dir)
            .args(["--peer", "127.0.0.1:7072", "--peer", "localhost:7073"])
            .args(["--storage", "none", "--lease-ms", "5000"])
            .args(["--replication-log-bytes", "100MB", "--insecure-no-tls"])
            .args(["--metrics", "127.0.0.1:9070"]),
    );
    assert_eq!(printed(&printed_once, "capacity"), "\"3GiB\"");
    assert_eq!(
        printed(&printed_once, "data-dir"),
        format!("\"{}\"", data_dir.display())
    );
    assert_eq!(
        printed(&printed_once, "peer"),
        "[\"127.0.0.1:7072\", \"localhost:7073\"]"
    );
    assert_eq!(printed(&printed_once, "lease-ms"), "5000");
    assert_eq!(
        printed(&printed_once, "replication-log-bytes"),
        "\"100000000\""
    );
    assert_eq!(printed(&printed_once, "insecure-no-tls"), "true");
    // Defaults are printed too: the file says everything the node will do.
    assert_eq!(printed(&printed_once, "writer-lease"), "60");
    assert_eq!(printed(&printed_once, "connection-memory"), "\"256MiB\"");

    let file = dir.path().join("node.toml");
    std::fs::write(&file, &printed_once).unwrap();
    let printed_twice = success(
        node_command()
            .arg("--config")
            .arg(&file)
            .arg("--print-config"),
    );
    assert_eq!(printed_twice, printed_once);
}

// Guards the precedence: a flag beats its PAGODA_NODE_* variable, which
// beats the config file, which beats the default, setting by setting.
#[test]
fn flags_beat_variables_beat_the_file_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "capacity = \"1GiB\"\nspin-us = 5\nconnections-max = 7\ndata-dir = \"/srv/pagoda\"\n",
    )
    .unwrap();
    let config = success(
        node_command()
            .arg("--config")
            .arg(&file)
            .env("PAGODA_NODE_CAPACITY", "2GiB")
            .env("PAGODA_NODE_SPIN_US", "6")
            .env("PAGODA_NODE_PEER", "127.0.0.1:7001,127.0.0.1:7002")
            .args(["--capacity", "3GiB", "--print-config"]),
    );
    assert_eq!(printed(&config, "capacity"), "\"3GiB\"", "the flag");
    assert_eq!(printed(&config, "spin-us"), "6", "the variable");
    assert_eq!(
        printed(&config, "peer"),
        "[\"127.0.0.1:7001\", \"127.0.0.1:7002\"]",
        "the variable, split at commas"
    );
    assert_eq!(printed(&config, "connections-max"), "7", "the file");
    assert_eq!(printed(&config, "data-dir"), "\"/srv/pagoda\"", "the file");
    assert_eq!(printed(&config, "handshakes-max"), "64", "the default");

    // The file itself may come from the environment, and a variable may
    // turn off a switch the file turns on.
    std::fs::write(
        &file,
        "capacity = \"1GiB\"\ndata-dir = \"/srv/pagoda\"\ninsecure-no-tls = true\n",
    )
    .unwrap();
    let config = success(
        node_command()
            .env("PAGODA_NODE_CONFIG", &file)
            .env("PAGODA_NODE_INSECURE_NO_TLS", "false")
            .arg("--print-config"),
    );
    assert_eq!(printed(&config, "insecure-no-tls"), "false");
    assert_eq!(printed(&config, "capacity"), "\"1GiB\"");
}

// Guards the file's errors: each names the file and the key, says what is
// wrong once, and says what to write instead.
#[test]
fn config_file_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    let shown = file.display().to_string();
    let load = |contents: &str| {
        std::fs::write(&file, contents).unwrap();
        failure(
            node_command()
                .arg("--config")
                .arg(&file)
                .arg("--print-config"),
        )
    };

    let error = load("capacity = \"1GiB\"\ndata_dir = \"/srv/pagoda\"\n");
    assert_eq!(
        error.trim_end(),
        format!(
            "error: --config {shown}: unknown key `data_dir` (did you mean `data-dir`? the keys \
             are the long flags of `pagoda node`, without the dashes: `pagoda node --help` \
             lists them)"
        )
    );
    let error = load("capacity = \"1GiB\"\ncapasity = \"2GiB\"\n");
    assert!(
        error.starts_with(&format!(
            "error: --config {shown}: unknown key `capasity` (the keys"
        )),
        "{error}"
    );

    let error = load("data-dir = \"/srv/pagoda\"\ncapacity = \"4G\"\n");
    assert!(
        error.starts_with(&format!(
            "error: --config {shown}: TOML parse error at line 2"
        )),
        "{error}"
    );
    assert!(
        error.contains(
            "the unit is ambiguous: write 4GiB for binary units (4 * 2^30) or 4GB for decimal \
             ones (4 * 10^9)"
        ),
        "{error}"
    );
    assert_eq!(error.matches("4G\"").count(), 1, "the value once: {error}");

    let error = load("data-dir = \"/srv/pagoda\"\ncapacity = \"1GiB\"\nlisten = \"localhost\"\n");
    assert!(error.contains("at line 3"), "{error}");
    assert!(
        error.contains("the port is missing (for example 127.0.0.1:7070)"),
        "{error}"
    );

    let error = load("data-dir = \"/srv/pagoda\"\ncapacity = \"1GiB\"\nspin-us = \"fast\"\n");
    assert!(error.contains("at line 3"), "{error}");

    let error = load("capacity = \n");
    assert!(
        error.starts_with(&format!(
            "error: --config {shown}: TOML parse error at line 1"
        )),
        "{error}"
    );

    let missing = dir.path().join("missing.toml");
    let error = failure(node_command().arg("--config").arg(&missing));
    assert!(
        error.starts_with(&format!(
            "error: --config {}: No such file or directory",
            missing.display()
        )),
        "{error}"
    );
}

// Guards the checks before serving: settings that contradict each other,
// wherever each came from, and directories the node cannot write, each
// refused with one line that names the flags and the fix.
#[test]
fn start_refuses_what_cannot_work_and_says_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"not a directory").unwrap();
    let start = |extra: &[&str]| {
        let mut command = node_command();
        command
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--capacity", "64MiB", "--data-dir"])
            .arg(&data_dir)
            .args(extra);
        failure(&mut command)
    };

    let under_a_file = a_file.join("data");
    let error = failure(
        node_command()
            .args(["--capacity", "64MiB", "--data-dir"])
            .arg(&under_a_file),
    );
    assert_eq!(
        error.trim_end(),
        format!(
            "error: configuration: data dir {} cannot be created: {} is a file, not a \
             directory; give --data-dir a directory this user can create and write",
            under_a_file.display(),
            a_file.display()
        )
    );

    let error = failure(
        node_command()
            .args(["--capacity", "64MiB", "--data-dir"])
            .arg(&a_file),
    );
    assert_eq!(
        error.trim_end(),
        format!(
            "error: configuration: data dir {} is a file, not a directory; give --data-dir a \
             directory this user can create and write",
            a_file.display()
        )
    );

    let storage = a_file.join("checkpoints");
    let error = start(&["--storage", storage.to_str().unwrap()]);
    assert_eq!(
        error.trim_end(),
        format!(
            "error: configuration: storage dir {} cannot be created: {} is a file, not a \
             directory; give --storage a directory this user can create and write",
            storage.display(),
            a_file.display()
        )
    );
    let error = start(&["--storage", &format!("file://{}", storage.display())]);
    assert!(error.contains("give --storage a directory"), "{error}");
    let error = start(&["--storage", "ftp://host/x"]);
    assert!(
        error.starts_with("error: storage scheme \"ftp\" is not supported (use a directory"),
        "{error}"
    );

    let error = start(&["--replication-lag-bytes", "128MiB"]);
    assert_eq!(
        error.trim_end(),
        "error: --replication-lag-bytes 128MiB is more than --replication-log-bytes 64MiB: an \
         async replica allowed to lag that far would need writes the log no longer keeps, and a \
         rebuild; raise --replication-log-bytes to at least 128MiB or lower \
         --replication-lag-bytes"
    );
    let error = start(&["--lease-ms", "5000", "--replace-replica-after-ms", "2000"]);
    assert_eq!(
        error.trim_end(),
        "error: --replace-replica-after-ms 2000 is shorter than --lease-ms 5000: one late lease \
         renewal (a pause, a brief partition) would rebuild a whole replica; give \
         --replace-replica-after-ms at least 5000"
    );
    let error = start(&["--lease-ms", "7200000"]);
    assert!(
        error.starts_with("error: --lease-ms 7200000 is too long: at most 3600000 ms"),
        "{error}"
    );
    let error = start(&["--tls-ca", "/etc/ca.pem"]);
    assert!(
        error.starts_with("error: --tls-ca (require client certificates) needs --tls-cert"),
        "{error}"
    );
    let error = start(&["--metrics-allow-remote"]);
    assert_eq!(
        error.trim_end(),
        "error: --metrics-allow-remote needs --metrics HOST:PORT"
    );

    // A contradiction split between the file and the command line.
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "tls-cert = \"/etc/pagoda/cert.pem\"\n").unwrap();
    let error = start(&["--config", file.to_str().unwrap()]);
    assert_eq!(
        error.trim_end(),
        "error: --tls-cert needs --tls-key, the certificate's private key"
    );
    let error = start(&["--config", file.to_str().unwrap(), "--insecure-no-tls"]);
    assert!(
        error.starts_with("error: --tls-cert needs --tls-key"),
        "{error}"
    );

    let error = failure(node_command().arg("--data-dir").arg(&data_dir));
    assert_eq!(
        error.trim_end(),
        "error: --capacity is missing: give --capacity 4GiB, set PAGODA_NODE_CAPACITY, or write \
         `capacity = \"4GiB\"` in the --config file"
    );

    let error = failure(node_command().args(["--listen", "localhost", "--capacity", "1GiB"]));
    assert!(
        error.starts_with(
            "error: invalid value 'localhost' for '--listen <IP:PORT>': the port is missing \
             (for example 127.0.0.1:7070)"
        ),
        "{error}"
    );
    // None of the refusals got as far as the data dir.
    assert!(!data_dir.join("regions.meta").exists());
}

/// The host's RAM, from /proc/meminfo.
fn host_memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .expect("MemTotal in /proc/meminfo");
    let kibibytes: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kibibytes * 1024
}

/// Starts `pagoda node --config FILE` (and `extra`), waits until it
/// listens, and returns it with its log's path.
fn start_from_file(dir: &Path, config: &str, extra: &[&str]) -> (std::process::Child, String) {
    let file = dir.join("node.toml");
    std::fs::write(&file, config).unwrap();
    let log = dir.join("node.log");
    let mut command = node_command();
    command.arg("--config").arg(&file).args(extra);
    let child = spawn_logged(
        command,
        &log,
        "pagoda node",
        Some(("listening on", Duration::from_secs(30))),
    );
    (child, log.display().to_string())
}

// Guards the RAM check: a capacity over the host's RAM is a warning, not
// an error (regions are thin-provisioned); the node starts and serves.
#[test]
fn capacity_over_the_host_memory_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ram_mib = host_memory_bytes() >> 20;
    let capacity = format!("{}MiB", ram_mib + 1024);
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "listen = \"{addr}\"\ncapacity = \"{capacity}\"\ndata-dir = \"{}\"\n",
        dir.path().join("data").display()
    );
    let (mut child, log) = start_from_file(dir.path(), &config, &[]);
    let listed = run_json(&["region", "ls", "--json"], &addr);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(log).unwrap();
    let warning = format!(
        "--capacity {} MiB is more than this host's RAM ({ram_mib} MiB, MemTotal in \
         /proc/meminfo)",
        ram_mib + 1024
    );
    assert!(log.contains("WARN"), "{log}");
    assert_eq!(log.matches(&warning).count(), 1, "{log}");
    assert!(
        log.contains(&format!("lower --capacity below {ram_mib} MiB")),
        "{log}"
    );
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // Within the RAM, no warning.
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "listen = \"{addr}\"\ncapacity = \"64MiB\"\ndata-dir = \"{}\"\n",
        dir.path().join("data").display()
    );
    let (mut child, log) = start_from_file(dir.path(), &config, &[]);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains("host's RAM"), "{log}");
}

// Guards the whole path: a node started from a config file alone (with a
// flag over it) serves regions, checkpoints into the file's storage, and
// prints the settings it runs with.
#[test]
fn node_started_from_a_config_file_serves() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let storage = dir.path().join("store");
    let config = format!(
        "listen = \"{addr}\"\ncapacity = \"32MiB\"\ndata-dir = \"{}\"\nstorage = \"{}\"\n\
         checkpoint-interval = 0\n",
        dir.path().join("data").display(),
        storage.display()
    );
    // The flag wins over the file's capacity.
    let (mut child, log) = start_from_file(dir.path(), &config, &["--capacity", "64MiB"]);
    run_ok(&["region", "create", "r", "--size", "4MiB"], &addr);
    let listed = run_json(&["region", "ls", "--json"], &addr);
    assert!(listed.to_string().contains("\"r\""), "{listed}");
    run_ok(&["region", "checkpoint", "r"], &addr);
    let stat = run_json(&["node", "stat", "--json"], &addr);
    assert_eq!(stat["capacity_bytes"], 64 << 20, "{stat}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        std::fs::read_dir(&storage).unwrap().count() > 0,
        "no checkpoint in {}",
        storage.display()
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains(&format!("listening on {addr} with 64.0 MiB")),
        "{log}"
    );
    // The probes left nothing behind.
    assert!(!dir.path().join("data/.pagoda-probe").exists());
}

// Guards deploy/pagoda-node.toml: the example is a configuration the node
// accepts, and every key it shows commented out is a flag of `pagoda node`.
#[test]
fn the_deploy_example_is_a_valid_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pagoda-node.toml");
    let config = success(
        node_command()
            .arg("--config")
            .arg(&example)
            .arg("--print-config"),
    );
    assert_eq!(printed(&config, "data-dir"), "\"/var/lib/pagoda\"");
    let help = success(node_command().arg("--help"));
    let text = std::fs::read_to_string(&example).unwrap();
    let commented: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter_map(|line| line.split_once(" = ").map(|(key, _)| key))
        .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    assert!(commented.len() >= 10, "{commented:?}");
    for key in commented {
        assert!(help.contains(&format!("--{key} ")), "--{key} is not a flag");
    }
}

/// A read-only tmpfs mounted on a temporary directory, unmounted when
/// dropped.
struct ReadOnlyMount {
    dir: tempfile::TempDir,
}

impl ReadOnlyMount {
    /// Mounts it; the tests run as root (README: "so run it as root"), and
    /// fail rather than skip when they cannot mount.
    fn new() -> ReadOnlyMount {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount (this test needs root)");
        assert!(
            status.success(),
            "mounting a read-only tmpfs (this test needs root)"
        );
        ReadOnlyMount { dir }
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

// Guards the write probes: a data dir or a storage directory that exists
// but cannot be written (a read-only file system, where root's rights do
// not help) fails the start, naming the directory and what to check.
#[test]
fn unwritable_directories_fail_the_start() {
    let mount = ReadOnlyMount::new();
    let dir = tempfile::tempdir().unwrap();
    let error = failure(
        node_command()
            .args(["--capacity", "64MiB", "--data-dir"])
            .arg(mount.dir.path()),
    );
    assert_eq!(
        error.trim_end(),
        format!(
            "error: configuration: data dir {} is not writable (Read-only file system (os error \
             30)); give --data-dir a directory this user can create and write, or let this user \
             write it",
            mount.dir.path().display()
        )
    );

    let error = failure(
        node_command()
            .args(["--capacity", "64MiB", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--storage")
            .arg(mount.dir.path()),
    );
    assert!(
        error.starts_with(&format!(
            "error: configuration: storage {} is not usable (",
            mount.dir.path().display()
        )),
        "{error}"
    );
    assert!(error.contains("writing _pagoda/probe-"), "{error}");
    assert!(error.contains("Read-only file system"), "{error}");
    assert!(
        error.contains("check its address, bucket and credentials"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
}

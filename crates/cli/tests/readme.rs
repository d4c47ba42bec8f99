//! Guards the README against drifting from the product: every command in its
//! shell blocks is run for real, as written, against nodes this test starts,
//! and must succeed. A command that cannot run inside a test is listed in
//! [`NOT_RUN`] with the reason; a new command that is neither run
//! successfully nor listed fails the test, so no README command goes
//! untested. The configuration file example is read back by the node
//! (`--print-config`), the manifest fragment for a project of one's own is
//! checked against the repository's crates, and the Rust blocks are compiled and run by
//! `crates/pagoda/tests/readme_snippets.rs`, which this test checks exists.
//!
//! What is rewritten, and nothing else: the README's addresses
//! (`127.0.0.1:7070`, `10.0.0.1:7070`, `etcd://10.0.0.5:2379`, ...) become
//! the loopback addresses of the test's nodes (the default node address
//! through `PAGODA_NODE` and `PAGODA_NODE_LISTEN`), `/var/lib/pagoda` a
//! temporary directory, `cargo run --release -p pagoda-cli --` the `pagoda`
//! binary under test, and a synopsis's optional parts (`[--json]`,
//! `[--mode sync|async]`) are all given, each with its first alternative
//! and placeholders (`ADDR`, `N`) filled in.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{free_port, log_tail, spawn_logged};
use pagoda_cluster::testing::Etcd;

/// README commands that cannot run inside a test, with the reason. Each must
/// still appear in the README (a stale entry fails the test too).
const NOT_RUN: &[(&str, &str)] = &[
    (
        "cargo test --workspace",
        "the whole test suite, this test included: it is what CI runs",
    ),
    (
        "cargo install --locked --path crates/cli",
        "a release build of the whole CLI into ~/.cargo/bin (minutes); the newcomer \
         walk-through in docs/benchmarks.md times it",
    ),
    (
        "bash bench/compare.sh",
        "needs root to make a swap file and memory cgroups, and takes about 25 minutes",
    ),
    (
        "bash bench/compare.sh --quick",
        "needs root to make a swap file and memory cgroups, and takes minutes",
    ),
];

/// The README's addresses and the role each plays in a fixture: the node
/// (by index) it stands for. `127.0.0.1:7070` is also the default node of
/// the client commands and the default `--listen` of `pagoda node`.
const NODE_ADDRESSES: &[(&str, usize)] = &[
    ("127.0.0.1:7070", 0),
    ("10.0.0.1:7070", 0),
    ("127.0.0.1:7071", 1),
    ("10.0.0.2:7070", 1),
    ("10.0.0.3:7070", 2),
];

/// The README's metrics address.
const METRICS_ADDRESS: &str = "127.0.0.1:9070";

/// The README's etcd endpoint.
const ETCD_ENDPOINT: &str = "etcd://10.0.0.5:2379";

/// The README's data dir.
const DATA_DIR: &str = "/var/lib/pagoda";

/// The README's way of running the CLI before it is installed.
const CARGO_RUN_PREFIX: &str = "cargo run --release -p pagoda-cli -- ";

/// The longest one command may take (a benchmark runs for 10 s after
/// writing 1 GiB); one that takes longer is killed and fails the test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest a node may take to stop gracefully after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Blocks run at once (each with nodes of its own).
const PARALLEL_BLOCKS_MAX: usize = 3;

/// Expected output of some commands (the README command, text the output
/// must contain), beyond succeeding.
const EXPECTED_OUTPUT: &[(&str, &str)] = &[
    ("pagoda --version", "pagoda "),
    (
        "cargo run --release -p pagoda-cli -- quickstart",
        "verification passed",
    ),
    (
        "curl -s http://127.0.0.1:9070/metrics",
        "pagoda_node_requests_total",
    ),
    ("pagoda region ls [--json]", "embeddings"),
    ("pagoda region stat embeddings [--json]", "embeddings"),
    (
        "pagoda region replicas orders [--node ADDR] [--json]",
        "\"role\"",
    ),
    (
        "pagoda cluster status --coordinator etcd://10.0.0.5:2379 [--json]",
        "orders",
    ),
    ("pagoda token ls     --data-dir /var/lib/pagoda", "viewer"),
];

/// Entries of the repository that README commands name by relative path
/// (`crates/sim/traces/...`, `bench/compare.sh`): linked into each block's
/// work dir, which stands for a clone's root.
const REPOSITORY_ENTRIES: &[&str] = &["crates", "bench", "deploy", "docs"];

/// The README's paths for files the configuration example names
/// (`/etc/pagoda/token`, ...): made in a temporary directory.
const CONFIG_DIR: &str = "/etc/pagoda";

/// One fenced block of the README.
#[derive(Debug)]
struct Block {
    /// The fence's language (`sh`, `toml`, `rust`).
    language: String,
    /// The README line of the opening fence.
    line: usize,
    /// The lines between the fences, with the fence's indentation removed.
    text: String,
}

/// The README's fenced blocks.
fn blocks(readme: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut open: Option<(String, usize, usize, Vec<String>)> = None;
    for (index, line) in readme.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(language)) => {
                open = Some((language.trim().to_owned(), index + 1, indent, Vec::new()));
            }
            (Some(_), Some(_)) => {
                let (language, line, _, lines) = open.take().unwrap();
                found.push(Block {
                    language,
                    line,
                    text: lines.join("\n"),
                });
            }
            (Some((_, _, indent, lines)), None) => {
                let cut = line.len() - line.trim_start().len();
                lines.push(line[cut.min(*indent)..].to_owned());
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md has an unclosed code fence");
    found
}

/// The commands of a shell block: continuation lines joined, comments and
/// blank lines dropped.
fn commands(block: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = match line.find(" #") {
            Some(comment) => &line[..comment],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let line = line.trim();
        if let Some(start) = line.strip_suffix('\\') {
            current.push_str(start.trim());
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let command = std::mem::take(&mut current).trim().to_owned();
        if !command.is_empty() {
            found.push(command);
        }
    }
    found
}

/// A synopsis made runnable: each optional part (`[--json]`) given, with
/// the first of its alternatives (`sync|async`).
fn expand_optional_parts(command: &str) -> String {
    let mut expanded = String::new();
    let mut rest = command;
    while let Some(start) = rest.find('[') {
        expanded.push_str(&rest[..start]);
        let end = rest[start..]
            .find(']')
            .unwrap_or_else(|| panic!("unclosed [ in {command:?}"))
            + start;
        // `[--a N | --b]`: alternatives of whole options; `[--mode a|b]`:
        // alternatives of one value.
        let part = rest[start + 1..end].split(" | ").next().unwrap();
        let words: Vec<&str> = part
            .split_whitespace()
            .map(|word| word.split('|').next().unwrap())
            .collect();
        expanded.push_str(&words.join(" "));
        rest = &rest[end + 1..];
    }
    expanded.push_str(rest);
    expanded
}

/// What a block's commands run against.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FixtureKind {
    /// No node: the block starts its own (`pagoda node ...`), or needs none.
    Empty,
    /// Three nodes sharing one storage directory.
    Nodes,
    /// etcd and three nodes joined to it, and a fourth node on its own
    /// (the one whose data dir is `/var/lib/pagoda`, with the embedded
    /// coordinator).
    Cluster,
}

/// The fixture a block needs, by its first command.
fn fixture_kind(first_command: &str) -> FixtureKind {
    let empty = [
        "cargo ",
        "pagoda --version",
        "pagoda node --listen",
        "pagoda node --capacity",
    ];
    if empty.iter().any(|prefix| first_command.starts_with(prefix)) {
        FixtureKind::Empty
    } else if first_command.contains(ETCD_ENDPOINT) {
        FixtureKind::Cluster
    } else {
        FixtureKind::Nodes
    }
}

/// A directory holding `pagoda` (the binary under test), to put first on
/// `PATH`.
fn bin_dir(root: &Path) -> PathBuf {
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pagoda"), dir.join("pagoda")).unwrap();
    dir
}

/// A running node of a fixture, stopped (SIGTERM, then killed) when dropped.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nodes (and etcd) a block runs against, with the README's addresses
/// mapped to theirs.
struct Fixture {
    /// The README text to replace and what replaces it.
    rewrites: Vec<(String, String)>,
    /// The address `127.0.0.1:7070` stands for.
    default_node: String,
    /// Where the block's commands run (`--out admin.token` lands here).
    work_dir: PathBuf,
    nodes: Vec<Node>,
    _etcd: Option<Etcd>,
}

/// Starts `pagoda node` with `args`, its log in `log`, and waits until it
/// listens.
fn start_node(args: &[String], log: &Path) -> Node {
    let mut command = common::pagoda();
    command.args(args).env("NO_COLOR", "1");
    let child = spawn_logged(
        command,
        log,
        "pagoda node",
        Some(("listening on", Duration::from_secs(30))),
    );
    Node {
        child,
        log: log.to_owned(),
    }
}

impl Fixture {
    fn start(kind: FixtureKind, root: &Path) -> Fixture {
        let work_dir = root.join("work");
        std::fs::create_dir_all(&work_dir).unwrap();
        let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for entry in REPOSITORY_ENTRIES {
            std::os::unix::fs::symlink(repository.join(entry), work_dir.join(entry)).unwrap();
        }
        let ports: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let data_dir = root.join("var-lib-pagoda");
        let mut rewrites: Vec<(String, String)> = NODE_ADDRESSES
            .iter()
            .map(|(readme, index)| (readme.to_string(), ports[*index].clone()))
            .collect();
        rewrites.push((
            METRICS_ADDRESS.to_owned(),
            format!("127.0.0.1:{}", free_port()),
        ));
        rewrites.push((DATA_DIR.to_owned(), data_dir.display().to_string()));
        let storage = root.join("storage").display().to_string();
        let node_args = |index: usize, extra: &[String]| -> Vec<String> {
            let mut args: Vec<String> = [
                "node",
                "--listen",
                &ports[index],
                "--capacity",
                "2GiB",
                "--storage",
                &storage,
                "--data-dir",
            ]
            .iter()
            .map(|text| text.to_string())
            .collect();
            args.push(if index == 0 {
                data_dir.display().to_string()
            } else {
                root.join(format!("node-{index}")).display().to_string()
            });
            args.extend_from_slice(extra);
            args
        };
        let mut nodes = Vec::new();
        let mut etcd = None;
        match kind {
            FixtureKind::Empty => {}
            FixtureKind::Nodes => {
                for index in 0..3 {
                    let log = root.join(format!("node-{index}.log"));
                    nodes.push(start_node(&node_args(index, &[]), &log));
                }
            }
            FixtureKind::Cluster => {
                let server = Etcd::start();
                let endpoint = server.endpoint();
                rewrites.push((ETCD_ENDPOINT.to_owned(), endpoint.clone()));
                for index in 0..3 {
                    let mut args = node_args(index, &["--coordinator".into(), endpoint.clone()]);
                    // The cluster's nodes keep their data apart from the
                    // lone node's (which is /var/lib/pagoda here).
                    let data_dir_index = args.iter().position(|arg| arg == "--data-dir").unwrap();
                    args[data_dir_index + 1] = root
                        .join(format!("cluster-node-{index}"))
                        .display()
                        .to_string();
                    let log = root.join(format!("node-{index}.log"));
                    nodes.push(start_node(&args, &log));
                }
                let lone = vec![
                    "node".to_owned(),
                    "--listen".to_owned(),
                    format!("127.0.0.1:{}", free_port()),
                    "--capacity".to_owned(),
                    "64MiB".to_owned(),
                    "--data-dir".to_owned(),
                    data_dir.display().to_string(),
                ];
                nodes.push(start_node(&lone, &root.join("lone-node.log")));
                etcd = Some(server);
            }
        }
        Fixture {
            rewrites,
            default_node: ports[0].clone(),
            work_dir,
            nodes,
            _etcd: etcd,
        }
    }

    /// The README command as this fixture runs it.
    fn rewrite(&self, readme_command: &str) -> String {
        let mut command = readme_command.to_owned();
        if let Some(rest) = command.strip_prefix(CARGO_RUN_PREFIX) {
            command = format!("pagoda {rest}");
        }
        command = expand_optional_parts(&command);
        let words: Vec<String> = command
            .split(' ')
            .map(|word| match word {
                "ADDR" => self.default_node.clone(),
                "N" => "2".to_owned(),
                other => other.to_owned(),
            })
            .collect();
        command = words.join(" ");
        for (readme, actual) in &self.rewrites {
            command = command.replace(readme.as_str(), actual);
        }
        command
    }

    /// `bash -c command` in the work dir, with `pagoda` on `PATH` and the
    /// default node (`127.0.0.1:7070`, for a command that names no node,
    /// coordinator or embedded node) pointing at the fixture's.
    fn shell(&self, command: &str, bin_dir: &Path) -> Command {
        let mut shell = Command::new("bash");
        common::clear_pagoda_env(&mut shell);
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        shell
            .arg("-c")
            .arg(command)
            .current_dir(&self.work_dir)
            .env("PATH", path)
            .env("NO_COLOR", "1")
            .env("PAGODA_NODE_LISTEN", &self.default_node)
            .stdin(Stdio::null());
        let says_where = ["--node ", "--coordinator ", "--embedded"]
            .iter()
            .any(|flag| command.contains(flag));
        if !says_where {
            shell.env("PAGODA_NODE", &self.default_node);
        }
        shell
    }
}

/// Waits at most `limit` for `child` to exit; kills it if it does not.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` to completion (bounded), returning its exit status and
/// its output (stdout then stderr).
fn run_bounded(mut command: Command, limit: Duration) -> (Option<ExitStatus>, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_bounded(&mut child, limit);
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    (status, text)
}

/// Whether a README command starts a node that keeps running (`pagoda node`
/// with no subcommand).
fn starts_a_node(command: &str) -> bool {
    command.starts_with("pagoda node ") && !command.starts_with("pagoda node stat")
}

/// Sends SIGTERM to a node a README command started and waits for it to
/// stop; a graceful stop must succeed.
fn stop_gracefully(mut child: Child, command: &str, log: &Path) -> Result<(), String> {
    // SAFETY: a plain signal to a process this test spawned and has not
    // reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    match wait_bounded(&mut child, STOP_TIMEOUT) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!(
            "`{command}` stopped with {status} after SIGTERM; its log:\n{}",
            log_tail(log)
        )),
        None => Err(format!(
            "`{command}` did not stop within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
            log_tail(log)
        )),
    }
}

/// Runs one shell block's commands in order against a fixture of its own.
/// Returns the failures.
fn run_shell_block(block: &Block, root: &Path, not_run_seen: &Mutex<Vec<String>>) -> Vec<String> {
    let commands = commands(&block.text);
    let runnable: Vec<&String> = commands
        .iter()
        .filter(|command| {
            let listed = NOT_RUN.iter().any(|(text, _)| text == command);
            if listed {
                not_run_seen.lock().unwrap().push(command.to_string());
            }
            !listed
        })
        .collect();
    let Some(first) = runnable.first() else {
        return Vec::new();
    };
    let fixture = Fixture::start(fixture_kind(first), root);
    let bin_dir = bin_dir(root);
    let mut failures = Vec::new();
    let mut started: Vec<(Child, String, PathBuf)> = Vec::new();
    for readme_command in runnable {
        let command = fixture.rewrite(readme_command);
        let context = format!("README.md block at line {}: `{readme_command}`", block.line);
        if starts_a_node(&command) {
            let log = root.join(format!("started-{}.log", started.len()));
            let mut shell = fixture.shell(&format!("exec {command}"), &bin_dir);
            shell.stdout(Stdio::null());
            let child = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                spawn_logged(
                    shell,
                    &log,
                    &context,
                    Some(("listening on", Duration::from_secs(30))),
                )
            }));
            match child {
                Ok(child) => started.push((child, command, log)),
                Err(_) => {
                    failures.push(format!(
                        "{context} (run as `{command}`) did not start a node; its log:\n{}",
                        log_tail(&log)
                    ));
                    break;
                }
            }
            continue;
        }
        let (status, output) = run_bounded(fixture.shell(&command, &bin_dir), COMMAND_TIMEOUT);
        match status {
            Some(status) if status.success() => {
                for (prefix, expected) in EXPECTED_OUTPUT {
                    if readme_command == prefix && !output.contains(expected) {
                        failures.push(format!(
                            "{context} (run as `{command}`) printed no {expected:?}:\n{output}"
                        ));
                    }
                }
            }
            Some(status) => {
                failures.push(format!(
                    "{context} (run as `{command}`) failed with {status}:\n{output}"
                ));
            }
            None => failures.push(format!(
                "{context} (run as `{command}`) took longer than {COMMAND_TIMEOUT:?}:\n{output}"
            )),
        }
    }
    for (child, command, log) in started {
        if let Err(failure) = stop_gracefully(child, &command, &log) {
            failures.push(format!("README.md block at line {}: {failure}", block.line));
        }
    }
    if !failures.is_empty() {
        for node in &fixture.nodes {
            failures.push(format!(
                "a fixture node's log ({}):\n{}",
                node.log.display(),
                log_tail(&node.log)
            ));
        }
    }
    failures
}

/// Writes the README's configuration file example and has the node read it
/// back (`--print-config`): every key must be one the node knows, every
/// value one it accepts.
fn check_toml_block(block: &Block, root: &Path) -> Vec<String> {
    // The files the example names under /etc/pagoda exist (the node reads
    // the token file to print its settings), in a directory of the test's.
    let config_dir = root.join("etc-pagoda");
    std::fs::create_dir_all(&config_dir).unwrap();
    let prefix = format!("\"{CONFIG_DIR}/");
    for (start, _) in block.text.match_indices(&prefix) {
        let name = block.text[start + prefix.len()..]
            .split('"')
            .next()
            .unwrap();
        std::fs::write(config_dir.join(name), "a secret of the README test\n").unwrap();
    }
    let text = block
        .text
        .replace(CONFIG_DIR, &config_dir.display().to_string())
        .replace(DATA_DIR, &root.join("var-lib-pagoda").display().to_string());
    let file = root.join("pagoda-node.toml");
    std::fs::write(&file, text).unwrap();
    let mut command = common::pagoda();
    command
        .args(["node", "--config"])
        .arg(&file)
        .arg("--print-config");
    let (status, output) = run_bounded(command, COMMAND_TIMEOUT);
    if status.is_some_and(|status| status.success()) {
        Vec::new()
    } else {
        vec![format!(
            "README.md block at line {}: the configuration file is refused by \
             `pagoda node --config FILE --print-config`:\n{output}",
            block.line
        )]
    }
}

/// Checks the README's manifest fragment for a project of one's own: the
/// crates it names by path are this repository's, under their names, and a
/// dependency it takes from crates.io asks for the version and features this
/// workspace builds with.
fn check_manifest_block(block: &Block) -> Vec<String> {
    let context = format!("README.md block at line {}", block.line);
    let manifest: toml::Table = match block.text.parse() {
        Ok(manifest) => manifest,
        Err(error) => return vec![format!("{context}: not TOML: {error}")],
    };
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace: toml::Table = std::fs::read_to_string(repository.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let workspace_dependencies = &workspace["workspace"]["dependencies"];
    let mut failures = Vec::new();
    let dependencies = manifest["dependencies"].as_table().unwrap();
    for (name, dependency) in dependencies {
        if let Some(path) = dependency.get("path").and_then(|path| path.as_str()) {
            let Some(relative) = path.strip_prefix("/path/to/pagoda/") else {
                failures.push(format!(
                    "{context}: {name}'s path {path:?} is not in a clone"
                ));
                continue;
            };
            let crate_manifest: toml::Table =
                match std::fs::read_to_string(repository.join(relative).join("Cargo.toml")) {
                    Ok(text) => text.parse().unwrap(),
                    Err(error) => {
                        failures.push(format!("{context}: {name} at {relative}: {error}"));
                        continue;
                    }
                };
            if crate_manifest["package"]["name"].as_str() != Some(name.as_str()) {
                failures.push(format!("{context}: {relative} is not the crate {name}"));
            }
        } else if dependency.get("version") != workspace_dependencies[name].get("version")
            || dependency.get("features") != workspace_dependencies[name].get("features")
        {
            failures.push(format!(
                "{context}: {name} = {dependency} differs from the workspace's {}",
                workspace_dependencies[name]
            ));
        }
    }
    failures
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap()
}

// Guards the parsing this test relies on: continuation lines, comments,
// optional parts and alternatives.
#[test]
fn readme_commands_are_parsed_as_a_reader_would_type_them() {
    let block = "a one   # comment\n#   a comment line\n\nb two \\\n    three [--x y|z]\n";
    assert_eq!(commands(block), vec!["a one", "b two three [--x y|z]"]);
    assert_eq!(
        expand_optional_parts(
            "pagoda top [--node ADDR] [--sort ops|bytes] [--iterations N | --once]"
        ),
        "pagoda top --node ADDR --sort ops --iterations N"
    );
    let parsed = blocks("text\n```sh\nx\n```\n- item:\n\n  ```rust\n  let a = 1;\n  ```\n");
    assert_eq!(parsed.len(), 2);
    assert_eq!(
        (parsed[0].language.as_str(), parsed[0].text.as_str()),
        ("sh", "x")
    );
    assert_eq!(
        (parsed[1].language.as_str(), parsed[1].text.as_str()),
        ("rust", "let a = 1;")
    );
}

// Guards the README: every command in it runs as written and succeeds,
// the configuration example is accepted, and every block is accounted for.
#[test]
fn every_readme_command_runs() {
    let readme = readme();
    let blocks = blocks(&readme);
    assert!(
        blocks.iter().filter(|block| block.language == "sh").count() >= 10,
        "README.md lost its shell blocks? found {blocks:?}"
    );
    let root = tempfile::tempdir().unwrap();
    let not_run_seen = Mutex::new(Vec::new());
    let failures = Mutex::new(BTreeMap::new());
    let queue = Mutex::new(blocks.iter().enumerate().collect::<Vec<_>>());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_BLOCKS_MAX {
            scope.spawn(|| {
                loop {
                    let Some((index, block)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let block_root = root.path().join(format!("block-{index}"));
                    std::fs::create_dir_all(&block_root).unwrap();
                    let found = match block.language.as_str() {
                        "sh" => run_shell_block(block, &block_root, &not_run_seen),
                        "toml" if block.text.starts_with("[dependencies]") => {
                            check_manifest_block(block)
                        }
                        "toml" => check_toml_block(block, &block_root),
                        // Compiled and run by crates/pagoda/tests/readme_snippets.rs,
                        // which fails when a README Rust block is missing there.
                        "rust" => Vec::new(),
                        other => vec![format!(
                            "README.md block at line {}: a ```{other} block, which this \
                             test does not know how to check",
                            block.line
                        )],
                    };
                    failures.lock().unwrap().insert(block.line, found);
                }
            });
        }
    });
    let snippets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pagoda/tests/readme_snippets.rs");
    assert!(
        snippets.exists(),
        "the README's Rust blocks are checked by {}, which is missing",
        snippets.display()
    );
    let not_run_seen = not_run_seen.into_inner().unwrap();
    for (command, reason) in NOT_RUN {
        assert!(
            not_run_seen.iter().any(|seen| seen == command),
            "NOT_RUN lists `{command}` ({reason}), which README.md no longer has"
        );
    }
    let failures: Vec<String> = failures
        .into_inner()
        .unwrap()
        .into_values()
        .flatten()
        .collect();
    assert!(
        failures.is_empty(),
        "README commands that failed (fix the README, or the code, or list the command \
         in NOT_RUN with the reason it cannot run here):\n\n{}",
        failures.join("\n\n")
    );
}

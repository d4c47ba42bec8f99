//! `pagoda top`: plain frames off a terminal with figures that follow the
//! traffic, each sort order, a clear error for a node that is down or
//! refuses, TLS, a node that goes away and comes back mid-run, and a
//! terminal given back as it was.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{NodeProcess, free_port, pagoda, text};
use pagoda::{Client, ClientOptions};

/// The token every test's node requires.
const TOKEN: &str = "top-secret-token";
/// The longest a traffic thread runs, should a test never stop it.
const TRAFFIC_S_MAX: u64 = 60;
/// The longest a test waits for a line of `pagoda top`'s output.
const LINE_WAIT_S_MAX: u64 = 30;

/// A node requiring `TOKEN`, its token file and data dir.
struct Setup {
    node: NodeProcess,
    token_file: String,
    data_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start_node() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let token_file = token_file.to_str().unwrap().to_owned();
    let node = NodeProcess::start(&data_dir, &node_flags(&token_file));
    Setup {
        node,
        token_file,
        data_dir,
        _dir: dir,
    }
}

fn node_flags(token_file: &str) -> Vec<&str> {
    vec!["--storage", "none", "--token-file", token_file]
}

fn client(addr: &str) -> Client {
    let options = ClientOptions {
        token: Some(TOKEN.as_bytes().to_vec()),
        ..ClientOptions::default()
    };
    Client::connect(addr, options).unwrap()
}

/// Writes and reads pages of `region` until `stop` is set (or the bound
/// passes); returns how many pages it moved.
fn traffic(addr: &str, region: &str, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let client = client(addr);
    let info = client.stat_region(region).unwrap().info;
    std::thread::spawn(move || {
        let page_bytes = info.page_size as usize;
        let pages = info.size / u64::from(info.page_size);
        let data = vec![7_u8; page_bytes * 4];
        let mut out = vec![0_u8; page_bytes * 4];
        let began = Instant::now();
        let mut moved = 0;
        let mut next = 0_u64;
        while !stop.load(Ordering::Relaxed) && began.elapsed().as_secs() < TRAFFIC_S_MAX {
            let batch: Vec<u64> = (0..4).map(|i| (next + i) % pages).collect();
            next = (next + 4) % pages;
            client.raw().write_pages(&info, &batch, &data).unwrap();
            client.raw().read_pages(&info, &batch, &mut out).unwrap();
            assert_eq!(out, data, "pages read back differ from those written");
            moved += 8;
        }
        moved
    })
}

/// `pagoda top` against `setup`'s node, with its token.
fn top(setup: &Setup, args: &[&str]) -> Command {
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
        .arg("top")
        .args([
            "--node",
            &setup.node.addr,
            "--token-file",
            &setup.token_file,
        ])
        .args(args);
    command
}

/// The frames of plain output: each starts with a `node ` line and ends
/// with a blank one.
fn frames(stdout: &str) -> Vec<Vec<&str>> {
    let mut frames: Vec<Vec<&str>> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("node ") {
            frames.push(Vec::new());
        }
        frames
            .last_mut()
            .unwrap_or_else(|| panic!("output before the first frame:\n{stdout}"))
            .push(line);
    }
    frames
}

/// A table line's cells: columns are two or more spaces apart, and no
/// cell holds two spaces in a row.
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .collect()
}

/// The cell of `column` in `region`'s row of `frame`.
fn cell<'a>(frame: &[&'a str], region: &str, column: &str) -> &'a str {
    let header = frame
        .iter()
        .find(|line| line.starts_with("REGION "))
        .unwrap_or_else(|| panic!("no table header in {frame:#?}"));
    let index = cells(header)
        .iter()
        .position(|name| *name == column)
        .unwrap_or_else(|| panic!("no column {column} in {header}"));
    let row = frame
        .iter()
        .find(|line| line.split_whitespace().next() == Some(region))
        .unwrap_or_else(|| panic!("no row for {region} in {frame:#?}"));
    let row_cells = cells(row);
    assert_eq!(row_cells.len(), cells(header).len(), "{row}");
    row_cells[index]
}

/// A rate as printed (`0`, `0.4`, `87`, `1.2k`, `3.4M`).
fn rate(text: &str) -> f64 {
    let (number, scale) = match text.strip_suffix('k') {
        Some(number) => (number, 1e3),
        None => match text.strip_suffix('M') {
            Some(number) => (number, 1e6),
            None => (text, 1.0),
        },
    };
    number
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("{text:?} is not a rate: {e}"))
        * scale
}

/// The region names of a frame's rows, in order.
fn row_names<'a>(frame: &[&'a str]) -> Vec<&'a str> {
    frame
        .iter()
        .skip_while(|line| !line.starts_with("REGION "))
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

// Guards the scriptable view: off a terminal, `--iterations 3` prints
// exactly three frames and nothing that is an escape code; every frame
// lists both regions; the busy region's pages and bytes per second, and the
// node's requests and bytes, are above zero while the idle one's are zero;
// the busy region's RAM shows; rows are ordered busiest first by default
// and by name with `--sort name`.
#[test]
fn plain_frames_follow_the_traffic() {
    let setup = start_node();
    let admin = client(&setup.node.addr);
    // Named so that the busiest-first order and the name order differ.
    admin.create_region("zz-busy", 8 << 20, 4096).unwrap();
    admin.create_region("aa-idle", 4 << 20, 4096).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = traffic(&setup.node.addr, "zz-busy", Arc::clone(&stop));

    let output = top(&setup, &["--iterations", "3", "--interval", "200ms"])
        .output()
        .unwrap();
    let sorted_by_name = top(
        &setup,
        &["--iterations", "2", "--interval", "200ms", "--sort", "name"],
    )
    .output()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let moved = writer.join().unwrap();
    assert!(moved > 0, "the traffic thread moved no pages");

    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(output.stderr.is_empty(), "{all}");
    assert!(
        !all.contains('\x1b'),
        "escape codes off a terminal:\n{all:?}"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let frames = frames(&stdout);
    assert_eq!(frames.len(), 3, "{stdout}");
    for frame in &frames {
        let title = format!("node {}  rates over ", setup.node.addr);
        assert!(frame[0].starts_with(&title), "{stdout}");
        assert!(frame[0].ends_with(" s  sorted by ops"), "{stdout}");
        assert!(frame[1].contains(" of 64.0 MiB ("), "{stdout}");
        assert!(frame[2].starts_with("regions 2  connections "), "{stdout}");
        assert_eq!(frame.last(), Some(&""), "a frame ends with a blank line");
        assert_eq!(
            row_names(frame),
            ["zz-busy", "aa-idle"],
            "busiest first:\n{stdout}"
        );
        assert_eq!(cell(frame, "aa-idle", "SIZE"), "4.0 MiB", "{stdout}");
        assert_eq!(cell(frame, "aa-idle", "PAGES/S"), "0", "{stdout}");
        assert_eq!(cell(frame, "aa-idle", "BYTES/S"), "0 B/s", "{stdout}");
        assert_eq!(cell(frame, "aa-idle", "RESIDENT"), "0 B", "{stdout}");
        assert_eq!(cell(frame, "aa-idle", "SEGMENTS"), "0", "{stdout}");
        assert_eq!(cell(frame, "aa-idle", "DIRTY"), "0", "{stdout}");
        assert_eq!(cell(frame, "aa-idle", "ROLE"), "solo", "{stdout}");
        assert_eq!(cell(frame, "aa-idle", "CHECKPOINT"), "none", "{stdout}");
        assert_eq!(cell(frame, "zz-busy", "SIZE"), "8.0 MiB", "{stdout}");
        // Written before the first frame: the writer starts before `top`.
        assert_ne!(cell(frame, "zz-busy", "RESIDENT"), "0 B", "{stdout}");
        assert_ne!(cell(frame, "zz-busy", "SEGMENTS"), "0", "{stdout}");
        assert_ne!(cell(frame, "zz-busy", "DIRTY"), "0", "{stdout}");
    }
    // The traffic runs through every frame; the last one must see it.
    let last = &frames[2];
    assert!(rate(cell(last, "zz-busy", "PAGES/S")) > 0.0, "{stdout}");
    assert_ne!(cell(last, "zz-busy", "BYTES/S"), "0 B/s", "{stdout}");
    assert!(!last[1].contains(" 0 B of "), "RAM in use: {stdout}");
    let totals = last[2];
    let requests: &str = totals
        .split("requests ")
        .nth(1)
        .and_then(|rest| rest.split("/s").next())
        .unwrap();
    assert!(rate(requests) > 0.0, "{stdout}");
    assert!(!totals.contains("in 0 B/s"), "{stdout}");
    assert!(!totals.contains("out 0 B/s"), "{stdout}");

    let all = text(&sorted_by_name);
    assert!(sorted_by_name.status.success(), "{all}");
    let stdout = String::from_utf8(sorted_by_name.stdout).unwrap();
    let frames = self::frames(&stdout);
    assert_eq!(frames.len(), 2, "{stdout}");
    for frame in &frames {
        assert!(frame[0].ends_with("sorted by name"), "{stdout}");
        assert_eq!(row_names(frame), ["aa-idle", "zz-busy"], "{stdout}");
    }
}

// Guards `--once`: one frame, already with rates, then exit 0; and the
// checkpoint column: none before the first, its number and age after.
#[test]
fn once_prints_one_frame_with_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.to_str().unwrap().to_owned();
    // Checkpoints need a storage: the data dir's own.
    let node = NodeProcess::start(dir.path(), &["--token-file", &token_file]);
    let setup = Setup {
        node,
        token_file,
        data_dir: dir.path().to_owned(),
        _dir: dir,
    };
    let admin = client(&setup.node.addr);
    let saved = admin.create_region("saved", 4 << 20, 4096).unwrap();
    admin.create_region("unsaved", 4 << 20, 4096).unwrap();
    admin
        .raw()
        .write_pages(&saved, &[0, 1], &[3; 8192])
        .unwrap();
    let checkpoint = admin.checkpoint("saved", false).unwrap();

    let output = top(&setup, &["--once", "--interval", "100ms"])
        .output()
        .unwrap();
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let frames = frames(&stdout);
    assert_eq!(frames.len(), 1, "{stdout}");
    assert!(frames[0][0].contains("rates over "), "{stdout}");
    assert_eq!(row_names(&frames[0]), ["saved", "unsaved"], "{stdout}");
    let saved = cell(&frames[0], "saved", "CHECKPOINT");
    let number = format!("#{} ", checkpoint.number);
    assert!(
        saved.starts_with(&number) && saved.ends_with(" ago"),
        "{stdout}"
    );
    assert_eq!(cell(&frames[0], "saved", "DIRTY"), "0", "{stdout}");
    assert_eq!(
        cell(&frames[0], "unsaved", "CHECKPOINT"),
        "none",
        "{stdout}"
    );
    assert_eq!(cell(&frames[0], "unsaved", "ROLE"), "solo", "{stdout}");
}

// Guards the errors at the start: a node that is down, a missing token and
// a wrong one are each said once, on stderr, with a non-zero exit and no
// frame.
#[test]
fn a_node_down_or_refusing_is_a_clear_error() {
    let down = format!("127.0.0.1:{}", free_port());
    let output = pagoda()
        .args(["top", "--node", &down, "--iterations", "2"])
        .args(["--interval", "100ms"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(output.stdout.is_empty(), "{}", text(&output));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: connecting to {down}: ")),
        "{stderr}"
    );

    let setup = start_node();
    let wrong_token = setup.data_dir.join("wrong-token");
    std::fs::write(&wrong_token, "not-the-token\n").unwrap();
    for (token_args, expected) in [
        (
            vec![],
            "error: this node requires a credential and none was given\n",
        ),
        (
            vec!["--token-file", wrong_token.to_str().unwrap()],
            "error: authentication as credential \"default\" failed: unknown credential or \
             wrong token\n",
        ),
    ] {
        let output = pagoda()
            .args(["top", "--node", &setup.node.addr, "--once"])
            .args(&token_args)
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "{token_args:?}: {}",
            text(&output)
        );
        assert!(
            output.stdout.is_empty(),
            "{token_args:?}: {}",
            text(&output)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            expected,
            "{token_args:?}"
        );
    }
}

/// Writes a CA certificate and a node certificate for 127.0.0.1 with its
/// key to `dir`: (ca, cert, key).
fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "top test CA");
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let certificate = leaf
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let paths = ["ca.pem", "node.pem", "node.key"].map(|name| dir.join(name));
    std::fs::write(&paths[0], ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    std::fs::write(&paths[1], certificate.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    paths
}

// Guards the connection options: against a TLS node, `top` with `--tls-ca`
// (and the token) shows the node; without it, it fails once, non-zero.
#[test]
fn top_speaks_tls_like_the_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = certificates(dir.path());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let token_file = token_file.to_str().unwrap().to_owned();
    let mut flags = node_flags(&token_file);
    flags.extend(["--tls-cert", cert.to_str().unwrap()]);
    flags.extend(["--tls-key", key.to_str().unwrap()]);
    let node = NodeProcess::start(&data_dir, &flags);
    let setup = Setup {
        node,
        token_file,
        data_dir,
        _dir: dir,
    };

    let output = top(&setup, &["--once", "--interval", "100ms"])
        .args(["--tls-ca", ca.to_str().unwrap()])
        .output()
        .unwrap();
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let frames = frames(&stdout);
    assert_eq!(frames.len(), 1, "{stdout}");
    assert!(frames[0][2].starts_with("regions 0  "), "{stdout}");

    let output = top(&setup, &["--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(output.stdout.is_empty(), "{}", text(&output));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
}

/// `pagoda top` running with its stdout read line by line.
struct Running {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line matching `wanted`, and returns it.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(LINE_WAIT_S_MAX);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no {what} within {LINE_WAIT_S_MAX} s; output:\n{:#?}",
                        self.seen
                    );
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Guards a node that goes away mid-run: the frames say it is unreachable
// and the command keeps polling; when the node is back the frames show it
// again and the run ends well. A node still away at the last frame makes
// the run fail, saying so.
#[test]
fn a_node_that_goes_away_is_shown_and_found_again() {
    let mut setup = start_node();
    let addr = setup.node.addr.clone();
    let mut running = Running::spawn(top(&setup, &["--iterations", "40", "--interval", "200ms"]));
    running.wait_for("a first frame", |line| {
        line.starts_with(&format!("node {addr}  rates over"))
    });
    setup.node.child.kill().unwrap();
    setup.node.child.wait().unwrap();
    let away = running.wait_for("an unreachable frame", |line| {
        line.starts_with("node ") && line.contains("unreachable")
    });
    assert!(
        away.starts_with(&format!("node {addr}  node unreachable, retrying (")),
        "{away}"
    );
    setup.node = NodeProcess::start_at(&addr, &setup.data_dir, &node_flags(&setup.token_file));
    running.wait_for("a frame after the node came back", |line| {
        line.starts_with(&format!("node {addr}  ")) && !line.contains("unreachable")
    });
    let status = running.child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(running.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}\n{:#?}", running.seen);
    assert!(stderr.is_empty(), "{stderr}");

    // Away at the end: the run fails, naming the node once.
    let mut running = Running::spawn(top(&setup, &["--iterations", "6", "--interval", "200ms"]));
    running.wait_for("a first frame", |line| line.starts_with("node "));
    setup.node.child.kill().unwrap();
    setup.node.child.wait().unwrap();
    let status = running.child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(running.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{:#?}", running.seen);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: node {addr} was still unreachable at the last frame: "
        )),
        "{stderr}"
    );
}

// Guards the terminal view: on a terminal (a pseudo-terminal from
// `script`) it takes the alternate screen and hides the cursor, redraws,
// quits on `q`, and gives the terminal back (cursor shown, main screen).
#[test]
fn the_terminal_view_quits_on_q_and_restores_the_terminal() {
    let setup = start_node();
    client(&setup.node.addr)
        .create_region("shown", 4 << 20, 4096)
        .unwrap();
    let binary = env!("CARGO_BIN_EXE_pagoda");
    let inner = format!(
        "stty cols 120 rows 30; {binary} top --node {} --token-file {} --interval 100ms",
        setup.node.addr, setup.token_file
    );
    let mut command = Command::new("script");
    common::clear_pagoda_env(&mut command);
    command.args(["--quiet", "--return", "--command", &inner, "/dev/null"]);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux runs the view on a pseudo-terminal");
    let mut stdout = child.stdout.take().unwrap();
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0_u8; 4096];
        while let Ok(read @ 1..) = std::io::Read::read(&mut stdout, &mut buffer) {
            if sender.send(buffer[..read].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(LINE_WAIT_S_MAX);
    // Wait until a frame with rates is drawn, so the poller has run too.
    while !String::from_utf8_lossy(&screen).contains("rates over") {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(bytes) => screen.extend(bytes),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no frame with rates drawn: {:?}",
                    String::from_utf8_lossy(&screen)
                );
            }
        }
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"q").unwrap();
    stdin.flush().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`q` did not end the view");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    while let Ok(bytes) = received.recv_timeout(Duration::from_millis(500)) {
        screen.extend(bytes);
    }
    drop(stdin);
    let screen = String::from_utf8_lossy(&screen);
    assert!(status.success(), "{screen:?}");
    // Enter the alternate screen and hide the cursor; leave and show it.
    let enter = screen
        .find("\x1b[?1049h")
        .expect("alternate screen entered");
    assert!(screen.contains("\x1b[?25l"), "cursor hidden: {screen:?}");
    let leave = screen.rfind("\x1b[?1049l").expect("alternate screen left");
    assert!(enter < leave, "{screen:?}");
    assert!(
        screen.rfind("\x1b[?25h").unwrap() > enter,
        "cursor shown again: {screen:?}"
    );
    assert!(screen.contains("shown"), "the region is drawn: {screen:?}");
    assert!(screen.contains("q quit"), "the keys are shown: {screen:?}");
}

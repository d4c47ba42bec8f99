//! Checkpoints and recovery through the `pagoda` binary, against real node
//! processes: `region checkpoint`, `region recover` (from a source node and
//! from the baseline alone), `kill -9` in the middle of a checkpoint, and a
//! SIGTERM shutdown with storage configured.
//!
//! Page contents are generated from (page number, version), so a model of a
//! region is just a version per page (0: never written, reads as zeros).

mod common;
use common::{free_port, pagoda, run, run_json, run_ok, text};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, ErrorCode, RegionInfo};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const PAGE_BYTES: usize = 4096;
/// Pages per read or write request the tests send.
const BATCH_PAGES: usize = 256;
/// How long a node may take to start (reloading baselines included) or stop.
const NODE_START_S: u64 = 30;
const NODE_STOP_S: u64 = 10;

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a child
    // this test spawned and has not yet reaped.
    let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal})");
}

/// Waits for `child` to exit, at most `limit`.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "{what} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `pagoda node` process, killed on drop. Its log is kept for failure
/// messages.
struct NodeProcess {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    fn start(data_dir: &Path, capacity: &str, extra: &[&str]) -> NodeProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = pagoda()
            .args([
                "node",
                "--listen",
                &addr,
                "--capacity",
                capacity,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = sender.send(());
                }
                thread_log.lock().unwrap().push(line);
            }
        });
        if receiver
            .recv_timeout(Duration::from_secs(NODE_START_S))
            .is_err()
        {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the node did not announce that it listens; its log:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        NodeProcess { child, addr, log }
    }

    fn client(&self) -> Client {
        let options = ClientOptions {
            timeout: Duration::from_secs(120),
            ..ClientOptions::default()
        };
        Client::connect(self.addr.as_str(), options).unwrap()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGKILL and reaps the process.
    fn kill_9(mut self) {
        signal(self.child.id(), libc::SIGKILL);
        let status = wait_bounded(&mut self.child, Duration::from_secs(NODE_STOP_S), "node");
        assert!(!status.success(), "a killed node exits unsuccessfully");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mixes a page number and a version into 64 bits (splitmix64's finalizer).
fn mix(page: u64, version: u32) -> u64 {
    let mut z = page
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((version as u64) << 40 | 0x5EED);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Appends the contents of `page` at `version` (0: zeros, never written).
/// The first two words name the page and the version, for diagnostics.
fn push_page(out: &mut Vec<u8>, page: u64, version: u32) {
    if version == 0 {
        out.resize(out.len() + PAGE_BYTES, 0);
        return;
    }
    let seed = mix(page, version);
    out.extend_from_slice(&page.to_le_bytes());
    out.extend_from_slice(&(version as u64).to_le_bytes());
    for word in 2..PAGE_BYTES as u64 / 8 {
        out.extend_from_slice(&(seed ^ word.wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes());
    }
}

/// Writes `pages` at `version` with the client library and records them in
/// `model`.
fn write_pages(client: &Client, info: &RegionInfo, model: &mut [u32], pages: &[u64], version: u32) {
    let mut data = Vec::with_capacity(BATCH_PAGES * PAGE_BYTES);
    for batch in pages.chunks(BATCH_PAGES) {
        data.clear();
        for &page in batch {
            push_page(&mut data, page, version);
        }
        client.raw().write_pages(info, batch, &data).unwrap();
        for &page in batch {
            model[page as usize] = version;
        }
    }
}

/// For each model, counts the pages whose contents on the node differ from
/// it and describes the first few. Reads the region once.
fn differences(client: &Client, info: &RegionInfo, models: &[&[u32]]) -> Vec<(usize, Vec<String>)> {
    assert_eq!(info.page_size as usize, PAGE_BYTES);
    let page_count = info.size / PAGE_BYTES as u64;
    assert!(models.iter().all(|model| model.len() as u64 == page_count));
    let mut results = vec![(0, Vec::new()); models.len()];
    let mut actual = vec![0u8; BATCH_PAGES * PAGE_BYTES];
    let mut expected = Vec::with_capacity(PAGE_BYTES);
    let all: Vec<u64> = (0..page_count).collect();
    for batch in all.chunks(BATCH_PAGES) {
        let actual = &mut actual[..batch.len() * PAGE_BYTES];
        client.raw().read_pages(info, batch, actual).unwrap();
        for (index, &page) in batch.iter().enumerate() {
            let got = &actual[index * PAGE_BYTES..(index + 1) * PAGE_BYTES];
            for (model, (differing, examples)) in models.iter().zip(&mut results) {
                expected.clear();
                push_page(&mut expected, page, model[page as usize]);
                if got != expected.as_slice() {
                    *differing += 1;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "page {page}: expected version {}, holds page {} version {}",
                            model[page as usize],
                            u64::from_le_bytes(got[..8].try_into().unwrap()),
                            u64::from_le_bytes(got[8..16].try_into().unwrap()),
                        ));
                    }
                }
            }
        }
    }
    results
}

fn assert_matches_model(client: &Client, name: &str, model: &[u32], context: &str) {
    let info = client.stat_region(name).unwrap().info;
    let (differing, examples) = differences(client, &info, &[model]).remove(0);
    assert_eq!(
        differing, 0,
        "{context}: {differing} pages differ from the model: {examples:?}"
    );
}

/// Parses a size as `format_bytes` prints it: "512 B", "820.0 KiB".
fn parse_printed_bytes(printed: &str) -> f64 {
    let (number, unit) = printed
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("not a printed size: {printed:?}"));
    let number: f64 = number.parse().unwrap();
    let multiplier = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unknown unit {other:?} in {printed:?}"),
    };
    number * multiplier
}

/// The text between `before` and the next `after` in `haystack`.
fn between<'a>(haystack: &'a str, before: &str, after: &str) -> &'a str {
    let start = haystack
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} not in {haystack:?}"))
        + before.len();
    let length = haystack[start..]
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} not after {before:?} in {haystack:?}"));
    &haystack[start..start + length]
}

fn distinct_pages(rng: &mut StdRng, page_count: u64, count: usize) -> Vec<u64> {
    let mut all: Vec<u64> = (0..page_count).collect();
    all.shuffle(rng);
    all.truncate(count);
    all.sort_unstable();
    all
}

fn seed() -> u64 {
    let seed = std::env::var("PAGODA_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (set PAGODA_TEST_SEED={seed} to repeat)");
    seed
}

// Guards `region checkpoint` and `region recover --from` end to end: the
// checkpoint's report (text and JSON), the move of a region from node A to
// node B through a shared storage directory, that recovery copies only the
// pages dirty since the baseline from the source (not the whole region), that
// B then holds exactly what A held, and that A's copy is read-only after.
#[test]
fn checkpoint_and_recover_between_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let storage_arg = storage.to_str().unwrap();
    let flags = ["--storage", storage_arg, "--checkpoint-interval", "0"];
    let node_a = NodeProcess::start(&dir.path().join("a"), "64MiB", &flags);
    let node_b = NodeProcess::start(&dir.path().join("b"), "64MiB", &flags);
    let mut rng = StdRng::seed_from_u64(seed());

    const PAGE_COUNT: u64 = 2048;
    run_ok(&["region", "create", "r", "--size", "8MiB"], &node_a.addr);
    let client_a = node_a.client();
    let info = client_a.stat_region("r").unwrap().info;
    assert_eq!(info.size, PAGE_COUNT * PAGE_BYTES as u64);
    let mut model = vec![0u32; PAGE_COUNT as usize];
    let written = distinct_pages(&mut rng, PAGE_COUNT, 1500);
    write_pages(&client_a, &info, &mut model, &written, 1);

    let report = run_json(&["region", "checkpoint", "r", "--json"], &node_a.addr);
    assert_eq!(report["name"], "r", "{report}");
    assert_eq!(report["number"], 1, "{report}");
    assert_eq!(report["full"], true, "{report}");
    assert_eq!(report["pages"], written.len() as u64, "{report}");
    assert_eq!(report["baseline_pages"], written.len() as u64, "{report}");
    assert!(report["objects"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        report["bytes"].as_u64().unwrap() >= written.len() as u64 * PAGE_BYTES as u64,
        "{report}"
    );
    assert!(report["seconds"].as_f64().unwrap() >= 0.0, "{report}");

    // An incremental checkpoint with nothing dirty: no pages, same baseline.
    let stdout = run_ok(&["region", "checkpoint", "r"], &node_a.addr);
    assert!(
        stdout.contains("checkpoint 2 of \"r\" (incremental): 0 pages"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("the baseline holds {} pages", written.len())),
        "{stdout}"
    );

    // 10% of the region written after the baseline: the pages the source
    // must supply.
    let dirty = distinct_pages(&mut rng, PAGE_COUNT, PAGE_COUNT as usize / 10);
    write_pages(&client_a, &info, &mut model, &dirty, 2);
    let stat = run_json(&["region", "stat", "r", "--json"], &node_a.addr);
    assert_eq!(stat["state"], "active", "{stat}");
    assert_eq!(stat["checkpoint"], 2, "{stat}");
    assert!(stat["checkpoint_age_ms"].is_u64(), "{stat}");
    assert_eq!(stat["dirty_pages"], dirty.len() as u64, "{stat}");

    let stdout = run_ok(
        &[
            "region",
            "recover",
            "r",
            "--from",
            &node_a.addr,
            "--to",
            &node_b.addr,
        ],
        &node_b.addr,
    );
    println!("{stdout}");
    let seconds: f64 = between(&stdout, "recovered \"r\" in ", " s: ")
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!((0.0..60.0).contains(&seconds), "{stdout}");
    let storage_bytes = parse_printed_bytes(between(&stdout, " s: ", " read from storage"));
    assert!(stdout.contains("(baseline checkpoint 2)"), "{stdout}");
    let source_bytes = parse_printed_bytes(between(&stdout, "), ", " copied from the source"));
    let dirty_bytes = (dirty.len() * PAGE_BYTES) as f64;
    // The baseline's pages come from storage, except the dirty ones, which
    // come from A (the load skips them): about the dirty pages (printed to
    // one decimal), never the whole region.
    let dirty_set: BTreeSet<u64> = dirty.iter().copied().collect();
    let from_storage = written
        .iter()
        .filter(|page| !dirty_set.contains(page))
        .count();
    assert!(
        storage_bytes >= 0.99 * (from_storage * PAGE_BYTES) as f64,
        "{stdout}"
    );
    assert!(source_bytes >= 0.99 * dirty_bytes, "{stdout}");
    assert!(source_bytes <= 2.0 * dirty_bytes, "{stdout}");
    assert!(stdout.contains("read-only"), "{stdout}");

    let client_b = node_b.client();
    assert_matches_model(&client_b, "r", &model, "node B after recovery");
    let stat = run_json(&["region", "stat", "r", "--json"], &node_b.addr);
    assert_eq!(stat["state"], "active", "{stat}");
    assert_eq!(stat["checkpoint"], 2, "{stat}");

    // A's copy moved: it reads, it refuses writes.
    let stat = run_json(&["region", "stat", "r", "--json"], &node_a.addr);
    assert_eq!(stat["state"], "read-only", "{stat}");
    let stdout = run_ok(&["region", "stat", "r"], &node_a.addr);
    assert!(stdout.contains("read-only"), "{stdout}");
    let mut page = Vec::new();
    push_page(&mut page, 0, 3);
    let error = client_a
        .raw()
        .write_pages(&info, &[0], &page)
        .expect_err("a write to the moved region's old copy");
    assert_eq!(error.code(), Some(ErrorCode::ReadOnly), "{error}");
    assert_matches_model(&client_a, "r", &model, "node A after the move");
    drop(node_a);
    drop(node_b);
}

// Guards recovery without a source: it must be asked for explicitly (the
// command line and the node both refuse otherwise, clearly), and when asked
// for it rebuilds the region from the baseline alone, saying how old the
// baseline is and that later writes are lost.
#[test]
fn baseline_only_recovery_is_explicit_and_says_what_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let storage_arg = storage.to_str().unwrap();
    let flags = ["--storage", storage_arg, "--checkpoint-interval", "0"];
    let node_a = NodeProcess::start(&dir.path().join("a"), "64MiB", &flags);
    let node_c = NodeProcess::start(&dir.path().join("c"), "64MiB", &flags);
    let mut rng = StdRng::seed_from_u64(seed());

    const PAGE_COUNT: u64 = 1024;
    run_ok(&["region", "create", "r", "--size", "4MiB"], &node_a.addr);
    let client_a = node_a.client();
    let info = client_a.stat_region("r").unwrap().info;
    let mut model = vec![0u32; PAGE_COUNT as usize];
    let written = distinct_pages(&mut rng, PAGE_COUNT, 700);
    write_pages(&client_a, &info, &mut model, &written, 1);
    let checkpoint_began = Instant::now();
    let report = run_json(&["region", "checkpoint", "r", "--json"], &node_a.addr);
    assert_eq!(report["number"], 1, "{report}");
    let checkpointed = model.clone();
    // Writes after the checkpoint, lost with node A.
    let later = distinct_pages(&mut rng, PAGE_COUNT, 200);
    write_pages(&client_a, &info, &mut model, &later, 2);
    drop(client_a);
    drop(node_a);
    std::thread::sleep(Duration::from_millis(300));

    let output = run(
        &["region", "recover", "r", "--to", &node_c.addr],
        &node_c.addr,
    );
    assert!(!output.status.success(), "{}", text(&output));
    assert_ne!(output.status.code(), Some(0));
    assert!(text(&output).contains("--from"), "{}", text(&output));
    let output = run(
        &[
            "region",
            "recover",
            "r",
            "--from",
            "127.0.0.1:1",
            "--baseline-only",
        ],
        &node_c.addr,
    );
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("cannot be used with"),
        "{}",
        text(&output)
    );
    // The node refuses too, for clients that bypass the command line.
    let client_c = node_c.client();
    let error = client_c
        .start_recovery("r", None, None, false)
        .expect_err("recovery without a source nor --baseline-only");
    assert!(error.to_string().contains("--baseline-only"), "{error}");
    assert!(client_c.list_regions().unwrap().is_empty());

    let stdout = run_ok(
        &[
            "region",
            "recover",
            "r",
            "--baseline-only",
            "--to",
            &node_c.addr,
        ],
        &node_c.addr,
    );
    println!("{stdout}");
    let age_s: f64 = between(&stdout, " taken ", " s before")
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    // Printed to 0.1 s: at least the 0.3 s slept since the checkpoint ended,
    // at most the time since it began.
    assert!(age_s + 0.05 >= 0.3, "{stdout}");
    assert!(
        age_s <= checkpoint_began.elapsed().as_secs_f64() + 0.05,
        "{stdout}"
    );
    assert!(stdout.contains("writes after it are lost"), "{stdout}");
    assert!(stdout.contains("(baseline checkpoint 1)"), "{stdout}");
    assert!(stdout.contains("0 B copied from the source"), "{stdout}");
    assert_matches_model(&client_c, "r", &checkpointed, "node C after recovery");
    let stat = run_json(&["region", "stat", "r", "--json"], &node_c.addr);
    assert_eq!(stat["state"], "active", "{stat}");
    assert_eq!(stat["checkpoint"], 1, "{stat}");
    // The recovered region serves writes.
    let info_c = client_c.stat_region("r").unwrap().info;
    let mut recovered = checkpointed;
    write_pages(&client_c, &info_c, &mut recovered, &[0, PAGE_COUNT - 1], 3);
    assert_matches_model(&client_c, "r", &recovered, "node C after a write");
}

/// The storage directory's view of a region's checkpoints.
struct StoredCheckpoints {
    /// Checkpoint numbers with a manifest.
    manifests: BTreeSet<u64>,
    /// File names of data objects, complete or still being written (those
    /// end in `#` and digits).
    data: BTreeSet<String>,
}

impl StoredCheckpoints {
    fn read(storage: &Path, name: &str) -> StoredCheckpoints {
        let names = |dir: PathBuf| -> BTreeSet<String> {
            match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
                Err(error) => panic!("{}: {error}", dir.display()),
            }
        };
        let region = storage.join("regions").join(name);
        StoredCheckpoints {
            manifests: names(region.join("manifests"))
                .iter()
                .filter(|file| file.ends_with(".manifest"))
                .filter_map(|file| file.get(..20)?.parse().ok())
                .collect(),
            data: names(region.join("data")),
        }
    }

    /// Whether data objects of checkpoint `number` appeared since `before`.
    fn wrote_data(&self, before: &StoredCheckpoints, number: u64) -> bool {
        let prefix = format!("{number:020}-");
        self.data
            .difference(&before.data)
            .any(|file| file.starts_with(&prefix))
    }
}

/// Checks that every data object the manifest of checkpoint `number` names
/// is in the storage directory with the size the manifest gives, and returns
/// how many it names.
fn assert_manifest_objects_present(storage: &Path, name: &str, number: u64) -> usize {
    let path = storage
        .join("regions")
        .join(name)
        .join("manifests")
        .join(format!("{number:020}.manifest"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"PGDAMAN1", "{}", path.display());
    let length = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 16 + length, "{}", path.display());
    let manifest: serde_json::Value = serde_json::from_slice(&bytes[16..]).unwrap();
    let objects = manifest["objects"].as_array().unwrap();
    for object in objects {
        let key = object["key"].as_str().unwrap();
        let metadata = std::fs::metadata(storage.join(key))
            .unwrap_or_else(|e| panic!("manifest {number} names {key}: {e}"));
        assert_eq!(metadata.len(), object["bytes"].as_u64().unwrap(), "{key}");
    }
    objects.len()
}

// Guards the checkpoint's crash safety with real processes: a node killed
// with SIGKILL at a random moment of a checkpoint comes back with the previous
// checkpoint or the new one, exactly, never a mix of the two and never a
// damaged region; a checkpoint the command line reported as done is never
// lost. At least one kill must land after the checkpoint wrote data objects
// and before its manifest (seen in the storage directory), so the torn case is
// really exercised.
#[test]
fn kill_9_during_checkpoint_keeps_a_whole_baseline() {
    const PAGE_COUNT: u64 = 16384; // 64 MiB of 4 KiB pages.
    const ITERATIONS_MIN: usize = 5;
    const ITERATIONS_MAX: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let storage = dir.path().join("storage");
    let storage_arg = storage.to_str().unwrap().to_owned();
    let flags = ["--storage", &storage_arg, "--checkpoint-interval", "0"];
    let capacity = "96MiB";
    let mut rng = StdRng::seed_from_u64(seed());

    let mut node = NodeProcess::start(&data, capacity, &flags);
    run_ok(&["region", "create", "r", "--size", "64MiB"], &node.addr);
    let mut client = node.client();
    let info = client.stat_region("r").unwrap().info;
    let all: Vec<u64> = (0..PAGE_COUNT).collect();
    let mut baseline = vec![0u32; PAGE_COUNT as usize];
    write_pages(&client, &info, &mut baseline, &all, 1);
    let began = Instant::now();
    let report = run_json(&["region", "checkpoint", "r", "--json"], &node.addr);
    let checkpoint_ms = began.elapsed().as_millis() as u64;
    assert_eq!(report["number"], 1, "{report}");
    assert_eq!(report["pages"], PAGE_COUNT, "{report}");
    println!(
        "a full checkpoint of 64 MiB: {checkpoint_ms} ms from the command's start, {} s in the node",
        report["seconds"]
    );

    let mut version = 1;
    let mut torn_kills = 0;
    let mut outcomes = Vec::new();
    let mut iteration = 0;
    while iteration < ITERATIONS_MIN || (torn_kills == 0 && iteration < ITERATIONS_MAX) {
        iteration += 1;
        version += 1;
        // Every page on odd iterations, a random half on even ones (so the
        // baseline's manifest names objects of several checkpoints).
        let pages = if iteration % 2 == 1 {
            all.clone()
        } else {
            distinct_pages(&mut rng, PAGE_COUNT, PAGE_COUNT as usize / 2)
        };
        let mut newer = baseline.clone();
        write_pages(&client, &info, &mut newer, &pages, version);
        drop(client);
        let before = StoredCheckpoints::read(&storage, "r");
        let number = before.manifests.last().copied().unwrap_or(0) + 1;

        let mut checkpoint = pagoda()
            .args(["region", "checkpoint", "r", "--json", "--node", &node.addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let sleep_ms = rng.gen_range(0..=checkpoint_ms);
        std::thread::sleep(Duration::from_millis(sleep_ms));
        node.kill_9();
        let status = wait_bounded(
            &mut checkpoint,
            Duration::from_secs(NODE_STOP_S),
            "region checkpoint",
        );
        let output = checkpoint.wait_with_output().unwrap();
        let reported_done = status.success();
        if reported_done {
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(report["number"], number, "{report}");
        }

        let after = StoredCheckpoints::read(&storage, "r");
        let manifest_written = after.manifests.contains(&number);
        let torn = !manifest_written && after.wrote_data(&before, number);
        torn_kills += usize::from(torn);
        assert!(
            !reported_done || manifest_written,
            "iteration {iteration}: the command reported checkpoint {number} done, its manifest is missing"
        );

        node = NodeProcess::start(&data, capacity, &flags);
        client = node.client();
        let stat = client.stat_region("r").unwrap();
        assert_eq!(
            stat.state.name(),
            "active",
            "iteration {iteration}: the region did not reload; node log:\n{}",
            node.log()
        );
        let mut found = differences(&client, &info, &[&baseline, &newer]);
        let (newer_differing, newer_examples) = found.pop().unwrap();
        let (older_differing, older_examples) = found.pop().unwrap();
        let outcome = match (older_differing, newer_differing) {
            (0, _) => "older",
            (_, 0) => "newer",
            _ => panic!(
                "iteration {iteration} (version {version}, slept {sleep_ms} ms): the reloaded region \
                 is neither checkpoint: {older_differing} pages differ from the older \
                 ({older_examples:?}), {newer_differing} from the newer ({newer_examples:?})"
            ),
        };
        // The reload follows the latest manifest: the new one exactly when
        // its manifest was written.
        assert_eq!(
            outcome == "newer",
            manifest_written,
            "iteration {iteration}: manifests {:?}, came back with the {outcome} checkpoint",
            after.manifests
        );
        assert_eq!(
            stat.checkpoint,
            if manifest_written { number } else { number - 1 },
            "iteration {iteration}"
        );
        let objects = assert_manifest_objects_present(&storage, "r", stat.checkpoint);
        println!(
            "iteration {iteration}: slept {sleep_ms} ms, command {}, torn {torn}, reloaded the \
             {outcome} checkpoint (checkpoint {}, {objects} objects)",
            if reported_done { "done" } else { "cut off" },
            stat.checkpoint
        );
        outcomes.push(outcome);
        if outcome == "newer" {
            baseline = newer;
        }
    }
    assert!(
        torn_kills >= 1,
        "no kill landed between a checkpoint's data objects and its manifest in {iteration} tries"
    );
    assert!(outcomes.contains(&"older"), "{outcomes:?}");

    // The baseline the last reload left still takes a checkpoint and
    // reloads after a clean kill.
    let report = run_json(&["region", "checkpoint", "r", "--json"], &node.addr);
    assert!(report["number"].as_u64().unwrap() >= 2, "{report}");
    drop(client);
    node.kill_9();
    let node = NodeProcess::start(&data, capacity, &flags);
    assert_matches_model(&node.client(), "r", &baseline, "after the last checkpoint");
}

// Guards shutdown with storage configured (by default, in the data dir):
// SIGTERM still stops the node promptly with status 0, the stop first
// checkpoints the pages written since the last checkpoint, and a restart on
// the same data dir reloads that baseline exactly.
#[test]
fn sigterm_with_storage_stops_cleanly_and_restart_reloads_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--checkpoint-interval", "0"];
    let mut node = NodeProcess::start(&data, "64MiB", &flags);
    let mut rng = StdRng::seed_from_u64(seed());
    const PAGE_COUNT: u64 = 512;
    run_ok(&["region", "create", "r", "--size", "2MiB"], &node.addr);
    let client = node.client();
    let info = client.stat_region("r").unwrap().info;
    let mut model = vec![0u32; PAGE_COUNT as usize];
    let written = distinct_pages(&mut rng, PAGE_COUNT, 300);
    write_pages(&client, &info, &mut model, &written, 1);
    let report = run_json(&["region", "checkpoint", "r", "--json"], &node.addr);
    assert_eq!(report["number"], 1, "{report}");
    // Written after checkpoint 1: the stop must save them.
    write_pages(&client, &info, &mut model, &[0, 1, PAGE_COUNT - 1], 2);
    let checkpoints = data.join("checkpoints");
    assert_eq!(
        StoredCheckpoints::read(&checkpoints, "r").manifests,
        BTreeSet::from([1]),
        "the default storage is the data dir's checkpoints directory"
    );

    // A client stays connected through the stop.
    signal(node.child.id(), libc::SIGTERM);
    let status = wait_bounded(&mut node.child, Duration::from_secs(NODE_STOP_S), "node");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
    assert!(
        StoredCheckpoints::read(&checkpoints, "r")
            .manifests
            .contains(&2),
        "the stop took no checkpoint; log:\n{}",
        node.log()
    );
    drop(client);
    drop(node);

    let node = NodeProcess::start(&data, "64MiB", &flags);
    let client = node.client();
    let stat = client.stat_region("r").unwrap();
    assert_eq!(stat.state.name(), "active", "log:\n{}", node.log());
    assert_eq!((stat.checkpoint, stat.dirty_pages), (2, 0));
    assert_matches_model(&client, "r", &model, "after the restart");
    let report = run_json(&["region", "checkpoint", "r", "--json"], &node.addr);
    assert_eq!(report["number"], 3, "{report}");
    assert_eq!(report["pages"], 0, "{report}");
}

/// A tmpfs of a given size mounted on a temporary directory (the test runs
/// as root), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running mount (this test needs it, as root): {e}"));
        assert!(
            output.status.success(),
            "mounting a tmpfs failed (this test needs root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { dir }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "remounting the tmpfs at {size}");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
        if !status.is_ok_and(|status| status.success()) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

// Guards the full-disk stop finding: SIGTERM with the checkpoint disk full
// used to exit 0 in a fraction of a second, losing 16 MiB of acknowledged
// writes with only warnings logged. The node must refuse to stop, say which
// region would lose what, and serve again with the data intact; once the
// disk has room a second SIGTERM stops it with status 0, and a restart
// reloads every acknowledged write.
#[test]
fn sigterm_on_a_full_disk_refuses_to_lose_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = Tmpfs::mount("3m");
    let storage = disk.path().to_str().unwrap().to_owned();
    let flags = [
        "--checkpoint-interval",
        "0",
        "--stop-retry",
        "1",
        "--storage",
        &storage,
    ];
    let mut node = NodeProcess::start(&data, "64MiB", &flags);
    const PAGE_COUNT: u64 = 4096; // 16 MiB: far more than the disk holds
    run_ok(&["region", "create", "r", "--size", "16MiB"], &node.addr);
    let client = node.client();
    let info = client.stat_region("r").unwrap().info;
    let mut model = vec![0u32; PAGE_COUNT as usize];
    let every: Vec<u64> = (0..PAGE_COUNT).collect();
    write_pages(&client, &info, &mut model, &every, 1);
    drop(client);

    signal(node.child.id(), libc::SIGTERM);
    let refused = Instant::now();
    while !node.log().contains("refusing to stop") {
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "the node exited on a full disk; log:\n{}",
            node.log()
        );
        assert!(
            refused.elapsed() < Duration::from_secs(NODE_STOP_S + 5),
            "no refusal logged; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = node.log();
    assert!(log.contains("\"r\" (4096 dirty pages"), "log:\n{log}");
    assert!(node.child.try_wait().unwrap().is_none(), "log:\n{log}");
    // It serves again, every acknowledged write in place.
    assert_matches_model(&node.client(), "r", &model, "after the refused stop");

    disk.resize("64m");
    signal(node.child.id(), libc::SIGTERM);
    let status = wait_bounded(&mut node.child, Duration::from_secs(NODE_STOP_S), "node");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
    drop(node);

    let node = NodeProcess::start(&data, "64MiB", &flags);
    assert_matches_model(&node.client(), "r", &model, "after the restart");
}

// Guards the operator's way out: SIGQUIT stops a node whose last checkpoint
// cannot be written, with a failure status and the loss stated.
#[test]
fn sigquit_abandons_unsaved_changes_with_a_failure_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = Tmpfs::mount("1m");
    let storage = disk.path().to_str().unwrap().to_owned();
    let flags = ["--checkpoint-interval", "0", "--storage", &storage];
    let mut node = NodeProcess::start(&data, "64MiB", &flags);
    run_ok(&["region", "create", "r", "--size", "4MiB"], &node.addr);
    let client = node.client();
    let info = client.stat_region("r").unwrap().info;
    let mut model = vec![0u32; 1024];
    let every: Vec<u64> = (0..1024).collect();
    write_pages(&client, &info, &mut model, &every, 1);
    drop(client);
    signal(node.child.id(), libc::SIGQUIT);
    let status = wait_bounded(&mut node.child, Duration::from_secs(NODE_STOP_S), "node");
    assert!(!status.success(), "log:\n{}", node.log());
    // The log reader thread may still be draining the pipe.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        node.log().contains("losing changes"),
        "log:\n{}",
        node.log()
    );
}

// Guards journal replay over a lazy reload: byte-range writes committed to
// the node's journal (not in any checkpoint) and then lost with a `kill -9`
// are replayed at the next start over the baseline, which loads lazily:
// each record loads the segments it writes before it is applied, so the
// baseline never lands over a replayed write. Every page afterwards is the
// checkpoint's, with the journaled ranges on top.
#[test]
fn kill_9_then_the_journal_replays_over_the_lazy_reload() {
    const PAGE_COUNT: u64 = 16384; // 64 MiB: 32 segments.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let storage = dir.path().join("storage");
    let storage_arg = storage.to_str().unwrap().to_owned();
    let flags = ["--storage", &storage_arg, "--checkpoint-interval", "0"];
    let node = NodeProcess::start(&data, "96MiB", &flags);
    run_ok(&["region", "create", "r", "--size", "64MiB"], &node.addr);
    let client = node.client();
    let info = client.stat_region("r").unwrap().info;
    let all: Vec<u64> = (0..PAGE_COUNT).collect();
    let mut model = vec![0u32; PAGE_COUNT as usize];
    write_pages(&client, &info, &mut model, &all, 1);
    let report = run_json(&["region", "checkpoint", "r", "--json"], &node.addr);
    assert_eq!(report["number"], 1, "{report}");
    let mut expected = Vec::with_capacity(PAGE_COUNT as usize * PAGE_BYTES);
    for page in 0..PAGE_COUNT {
        push_page(&mut expected, page, 1);
    }
    // Ranges across page and segment boundaries, in segments near the end
    // (the background loader reaches them last).
    let journaled = client
        .open_region(
            "r",
            pagoda::RegionOptions {
                durability: pagoda::Durability::Remote,
                ..pagoda::RegionOptions::with_cache_bytes(64 * PAGE_BYTES as u64)
            },
        )
        .unwrap();
    let segment = 512 * PAGE_BYTES as u64;
    for (index, offset) in [
        31 * segment - 100,
        30 * segment + 7 * PAGE_BYTES as u64 - 10,
        2 * segment + 5,
        29 * segment,
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = vec![0xc0 | index as u8; 300];
        journaled.write_at(offset, &bytes).unwrap();
        expected[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
    }
    drop((journaled, client));
    node.kill_9();

    let node = NodeProcess::start(&data, "96MiB", &flags);
    let client = node.client();
    let mut actual = vec![0u8; BATCH_PAGES * PAGE_BYTES];
    for batch in all.chunks(BATCH_PAGES) {
        client.raw().read_pages(&info, batch, &mut actual).unwrap();
        for (index, &page) in batch.iter().enumerate() {
            let at = page as usize * PAGE_BYTES;
            assert!(
                actual[index * PAGE_BYTES..(index + 1) * PAGE_BYTES]
                    == expected[at..at + PAGE_BYTES],
                "page {page} differs from the checkpoint with the journal on top; log:\n{}",
                node.log()
            );
        }
    }
    assert!(
        node.log().contains("journal replayed over the baseline"),
        "{}",
        node.log()
    );
}

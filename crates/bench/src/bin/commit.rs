//! Committed transactions per second through `Region::transaction` in
//! `Durability::Local` mode, at several numbers of concurrent committers,
//! with commit coalescing on and off, for small and large transactions, all
//! in one run against an in-process node.
//!
//! Each committer owns its own pages (no lock conflicts), so the cell
//! measures the commit path: the local journal's persists, plus shipping to
//! the node in the background. A small transaction writes 64 bytes; a large
//! one writes 16 whole 4 KiB pages. Every cell is bounded by `--seconds` and
//! a commit count, and is repeated `--repeats` times; the table shows
//! medians and the on/off ratio. The journal and the node's data dir are on
//! the disk under `--dir` (default a temporary directory under /work), never
//! on tmpfs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pagoda::{Client, ClientOptions, Durability, RegionOptions};
use pagoda_bench::PAGE_BYTES;
use pagoda_bench::report::{Flags, Table, emit, progress};
use pagoda_node::{Node, NodeConfig};

const USAGE: &str = "\
commit: committed transactions per second, coalescing on and off (Durability::Local)

  --committers LIST  concurrent committers (default 1,4,16,64)
  --seconds S        seconds per cell (default 1.0)
  --repeats N        repeats per cell; medians are shown (default 3)
  --dir PATH         where journals and the node's data dir go (default: a temp dir under /work)
  --json             print JSON instead of the markdown table";

/// Most commits one committer makes in one cell, whatever the time.
const COMMITS_PER_COMMITTER_MAX: u64 = 1_000_000;
/// Pages written by a large transaction.
const LARGE_PAGES: u64 = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Size {
    Small,
    Large,
}

impl Size {
    fn name(self) -> &'static str {
        match self {
            Size::Small => "64 B",
            Size::Large => "16 pages",
        }
    }
}

struct Sample {
    commits_per_second: f64,
    persists_per_commit: f64,
}

fn run_cell(
    node: &Node,
    dir: &std::path::Path,
    cell: usize,
    committers: usize,
    size: Size,
    coalesce: bool,
    seconds: f64,
) -> Sample {
    let client = Client::connect(node.local_addr(), ClientOptions::default()).expect("connects");
    let name = format!("commit-{cell}");
    let pages_per_committer = LARGE_PAGES;
    let region_bytes = committers as u64 * pages_per_committer * PAGE_BYTES as u64;
    client
        .create_region(&name, region_bytes, PAGE_BYTES as u32)
        .expect("region");
    let journal_dir = dir.join(format!("journal-{cell}"));
    let options = RegionOptions {
        durability: Durability::Local {
            journal_dir: journal_dir.clone(),
        },
        journal_coalesce: coalesce,
        ..RegionOptions::with_cache_bytes(region_bytes.max(1 << 20))
    };
    let region = Arc::new(client.open_region(&name, options).expect("opens"));
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let threads: Vec<_> = (0..committers)
        .map(|committer| {
            let region = region.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let base = committer as u64 * pages_per_committer * PAGE_BYTES as u64;
                let small = [committer as u8; 64];
                let page = vec![committer as u8; PAGE_BYTES];
                let mut commits = 0u64;
                while !stop.load(Ordering::Relaxed) && commits < COMMITS_PER_COMMITTER_MAX {
                    region
                        .transaction(|tx| {
                            match size {
                                Size::Small => tx.write_at(base + (commits % 64) * 64, &small)?,
                                Size::Large => {
                                    for index in 0..LARGE_PAGES {
                                        tx.write_at(base + index * PAGE_BYTES as u64, &page)?;
                                    }
                                }
                            }
                            Ok(())
                        })
                        .expect("commit");
                    commits += 1;
                }
                commits
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let commits: u64 = threads
        .into_iter()
        .map(|t| t.join().expect("committer"))
        .sum();
    let elapsed = began.elapsed().as_secs_f64();
    let stats = region.journal_stats();
    // Not timed: ship the rest, so the next cell starts from a quiet node.
    region.flush().expect("ships");
    drop(region);
    client.delete_region(&name).expect("deletes");
    let _ = std::fs::remove_dir_all(&journal_dir);
    Sample {
        commits_per_second: commits as f64 / elapsed,
        persists_per_commit: stats.persists as f64 / stats.commits.max(1) as f64,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let flags = Flags::parse(
        &["json"],
        &["committers", "seconds", "repeats", "dir"],
        USAGE,
    );
    let committers = flags.numbers::<usize>("committers", &[1, 4, 16, 64]);
    let seconds: f64 = flags.number("seconds", 1.0);
    let repeats: usize = flags.number("repeats", 3).max(1);
    let root = match flags.values_get("dir") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir_in("/work"),
    }
    .expect("a working directory");
    let mut config = NodeConfig::new(
        "127.0.0.1:0".parse().expect("an address"),
        1 << 30,
        root.path().join("node"),
    );
    config.checkpoint_interval = None;
    let node = Node::start(config).expect("the node starts");

    let mut table = Table::new(&[
        "size",
        "committers",
        "coalescing on, commits/s",
        "off, commits/s",
        "on / off",
        "persists per commit (on)",
    ]);
    let mut rows = Vec::new();
    let mut cell = 0;
    for size in [Size::Small, Size::Large] {
        for &count in &committers {
            let mut on = Vec::new();
            let mut off = Vec::new();
            let mut persists = Vec::new();
            // On and off alternate within each repeat, side by side.
            for _ in 0..repeats {
                for coalesce in [true, false] {
                    cell += 1;
                    let sample = run_cell(&node, root.path(), cell, count, size, coalesce, seconds);
                    if coalesce {
                        on.push(sample.commits_per_second);
                        persists.push(sample.persists_per_commit);
                    } else {
                        off.push(sample.commits_per_second);
                    }
                }
            }
            let (on, off, persists) = (median(&mut on), median(&mut off), median(&mut persists));
            progress(&format!(
                "{} × {count}: on {on:.0}/s, off {off:.0}/s",
                size.name()
            ));
            table.row(vec![
                size.name().to_owned(),
                count.to_string(),
                format!("{on:.0}"),
                format!("{off:.0}"),
                format!("{:.2}", on / off),
                format!("{persists:.3}"),
            ]);
            rows.push(serde_json::json!({
                "size": size.name(),
                "committers": count,
                "coalesced_commits_per_second": on,
                "uncoalesced_commits_per_second": off,
                "ratio": on / off,
                "persists_per_commit_coalesced": persists,
            }));
        }
    }
    let markdown = format!(
        "Durability::Local, medians of {repeats} runs of {seconds} s per cell.\n\n{}",
        table.markdown()
    );
    emit(
        flags.switch("json"),
        &serde_json::json!({"seconds": seconds, "repeats": repeats, "rows": rows}),
        &markdown,
    );
}

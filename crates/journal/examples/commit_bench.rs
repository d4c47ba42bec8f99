//! Committed transactions per second, with commit coalescing on and off.
//!
//! Runs every cell, small (one 64-byte write) and large (sixteen 4 KiB pages)
//! transactions at each committer count, coalescing on and off, in one run on a real
//! file system, and prints medians over the repeats and the on/off ratio. A shipper
//! thread releases durable commits every 10 ms, as a memory node's acknowledgements
//! would, so the log stays small.
//!
//! ```text
//! cargo run --release -p pagoda-journal --example commit_bench -- --seconds 1 --repeats 3
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use pagoda_journal::{Journal, JournalOptions};

/// The statfs magic number of tmpfs, which has no durable media to measure.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const PAGE_BYTES: usize = 4096;
const LARGE_PAGES: usize = 16;
const SMALL_BYTES: usize = 64;
const RELEASE_INTERVAL_MS: u64 = 10;

#[derive(Parser, Debug)]
#[command(about = "Committed transactions per second, coalescing on and off")]
struct Arguments {
    /// Directory for the journals (a temporary directory inside it is used and removed).
    /// Default: the system temporary directory, or the current directory if that is tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per cell.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Repeats per cell; the table shows medians.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Most commits per cell, whatever the time.
    #[arg(long, default_value_t = 200_000)]
    commits_max: u64,
    /// Committer counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    threads: Vec<usize>,
    /// How far ahead of the tail segments are kept zeroed (`JournalOptions::preallocate_bytes`;
    /// 0 appends to a growing file). Default: the journal's default.
    #[arg(long)]
    preallocate_bytes: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Size {
    Small,
    Large,
}

impl Size {
    fn name(self) -> &'static str {
        match self {
            Size::Small => "small (1 x 64 B)",
            Size::Large => "large (16 x 4 KiB)",
        }
    }
}

/// One run of one cell.
#[derive(Clone, Copy, Debug)]
struct Run {
    commits: u64,
    persists: u64,
    seconds: f64,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.commits as f64 / self.seconds
    }
}

fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is a valid C string.
    unsafe {
        let mut stats: libc::statfs = std::mem::zeroed();
        libc::statfs(name.as_ptr(), &mut stats) == 0 && stats.f_type as i64 == TMPFS_MAGIC
    }
}

fn run_cell(
    dir: &Path,
    size: Size,
    threads: usize,
    coalesce: bool,
    arguments: &Arguments,
) -> Result<Run, Box<dyn std::error::Error>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let defaults = JournalOptions::default();
    let options = JournalOptions {
        coalesce,
        preallocate_bytes: arguments
            .preallocate_bytes
            .unwrap_or(defaults.preallocate_bytes),
        ..defaults
    };
    let (journal, _) = Journal::open(dir, options)?;
    let page = vec![0xA5u8; PAGE_BYTES];
    let small = [0x5Au8; SMALL_BYTES];
    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    let persists_before = journal.stats().persists;
    let started = Instant::now();
    let failure = thread::scope(|scope| {
        let committers: Vec<_> = (0..threads)
            .map(|thread| {
                let (journal, stop, committed, page) = (&journal, &stop, &committed, &page);
                scope.spawn(move || -> Result<(), pagoda_journal::JournalError> {
                    let region = thread as u64;
                    let mut offset = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let mut micro_journal = journal.begin();
                        match size {
                            Size::Small => micro_journal.push(region, offset, &small),
                            Size::Large => {
                                for index in 0..LARGE_PAGES {
                                    let at = offset + (index * PAGE_BYTES) as u64;
                                    micro_journal.push(region, at, page);
                                }
                            }
                        }
                        journal.commit(micro_journal)?;
                        offset += 1 << 20;
                        if committed.fetch_add(1, Ordering::Relaxed) + 1 >= arguments.commits_max {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let shipper = scope.spawn(|| -> Result<(), pagoda_journal::JournalError> {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(RELEASE_INTERVAL_MS));
                journal.release_through(journal.durable_id())?;
            }
            Ok(())
        });
        let deadline = started + Duration::from_secs_f64(arguments.seconds);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        let mut failure = None;
        for committer in committers {
            if let Err(error) = committer.join().expect("committer panicked") {
                failure.get_or_insert(error);
            }
        }
        if let Err(error) = shipper.join().expect("shipper panicked") {
            failure.get_or_insert(error);
        }
        failure
    });
    let seconds = started.elapsed().as_secs_f64();
    if let Some(error) = failure {
        return Err(error.into());
    }
    let stats = journal.stats();
    drop(journal);
    std::fs::remove_dir_all(dir)?;
    Ok(Run {
        commits: committed.load(Ordering::Relaxed),
        persists: stats.persists - persists_before,
        seconds,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments = Arguments::parse();
    if arguments.repeats == 0 || arguments.seconds <= 0.0 || arguments.threads.is_empty() {
        return Err("--repeats, --seconds and --threads must be positive".into());
    }
    let parent = match &arguments.dir {
        Some(dir) => dir.clone(),
        None => {
            let temporary = std::env::temp_dir();
            if is_tmpfs(&temporary) {
                std::env::current_dir()?
            } else {
                temporary
            }
        }
    };
    if is_tmpfs(&parent) {
        eprintln!(
            "warning: {} is tmpfs; fdatasync costs nothing there",
            parent.display()
        );
    }
    std::fs::create_dir_all(&parent)?;
    let root = tempfile::Builder::new()
        .prefix("commit-bench-")
        .tempdir_in(&parent)?;
    if !arguments.json {
        println!(
            "journal commit throughput in {} ({} s per cell, median of {}, at most {} commits per cell, preallocate_bytes {})\n",
            root.path().display(),
            arguments.seconds,
            arguments.repeats,
            arguments.commits_max,
            arguments
                .preallocate_bytes
                .unwrap_or(JournalOptions::default().preallocate_bytes)
        );
        println!(
            "| transaction | committers | coalescing on (tx/s) | off (tx/s) | on/off | commits per persist (on) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    }
    let mut cells = Vec::new();
    for size in [Size::Small, Size::Large] {
        for &threads in &arguments.threads {
            let mut on_runs = Vec::new();
            let mut off_runs = Vec::new();
            // On and off alternate, so drift in the machine's load hits both alike.
            for _ in 0..arguments.repeats {
                for coalesce in [true, false] {
                    let dir = root.path().join("journal");
                    let run = run_cell(&dir, size, threads, coalesce, &arguments)?;
                    if coalesce {
                        on_runs.push(run);
                    } else {
                        off_runs.push(run);
                    }
                }
            }
            let on = median(&mut on_runs.iter().map(Run::per_second).collect::<Vec<_>>());
            let off = median(&mut off_runs.iter().map(Run::per_second).collect::<Vec<_>>());
            let per_persist = median(
                &mut on_runs
                    .iter()
                    .map(|run| run.commits as f64 / run.persists.max(1) as f64)
                    .collect::<Vec<_>>(),
            );
            if !arguments.json {
                println!(
                    "| {} | {threads} | {on:.0} | {off:.0} | {:.2} | {per_persist:.1} |",
                    size.name(),
                    on / off
                );
            }
            let runs = |runs: &[Run]| {
                runs.iter()
                    .map(|run| {
                        serde_json::json!({
                            "commits": run.commits,
                            "persists": run.persists,
                            "seconds": run.seconds,
                            "commits_per_second": run.per_second(),
                        })
                    })
                    .collect::<Vec<_>>()
            };
            cells.push(serde_json::json!({
                "transaction": match size { Size::Small => "small", Size::Large => "large" },
                "transaction_bytes": match size { Size::Small => SMALL_BYTES, Size::Large => LARGE_PAGES * PAGE_BYTES },
                "committers": threads,
                "coalescing_on_commits_per_second": on,
                "coalescing_off_commits_per_second": off,
                "on_off_ratio": on / off,
                "commits_per_persist_on": per_persist,
                "runs_on": runs(&on_runs),
                "runs_off": runs(&off_runs),
            }));
        }
    }
    if arguments.json {
        let report = serde_json::json!({
            "seconds_per_cell": arguments.seconds,
            "repeats": arguments.repeats,
            "commits_max": arguments.commits_max,
            "preallocate_bytes": arguments.preallocate_bytes.unwrap_or(JournalOptions::default().preallocate_bytes),
            "directory": root.path().display().to_string(),
            "cells": cells,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

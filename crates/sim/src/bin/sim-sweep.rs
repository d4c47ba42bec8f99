//! Runs every trace in one or more directories (or single trace files) at
//! several cache sizes under every policy,
//! prints a markdown table of miss ratios and a check of the two-phase
//! policy's goals, and writes one SVG chart per trace.
//!
//! `cargo run --release -p pagoda-sim --bin sim-sweep -- ../shared/traces/lirs --plots docs/plots`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use pagoda_sim::plot::{Series, miss_ratio_chart};
use pagoda_sim::{PolicyName, SimError, TraceFormat, pages_for_ratio, simulate, trace};

/// Sweep cache sizes and policies over a directory of traces.
#[derive(Parser)]
struct Arguments {
    /// Directories of traces (every regular file in each is read) or single
    /// trace files, in any mix.
    #[arg(required = true)]
    traces: Vec<PathBuf>,
    /// The traces' format.
    #[arg(long, value_enum, default_value_t = TraceFormat::Lirs)]
    format: TraceFormat,
    /// Cache sizes as fractions of each trace's distinct blocks.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.05,0.1,0.25")]
    ratios: Vec<f64>,
    /// Where to write one SVG chart per trace; no charts without it.
    #[arg(long)]
    plots: Option<PathBuf>,
}

/// Miss ratios of one trace: `ratios[size][policy]`, policies in
/// `PolicyName::ALL` order.
struct TraceResult {
    name: String,
    pages: Vec<usize>,
    ratios: Vec<Vec<f64>>,
}

fn trace_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.trim_end_matches(".gz")
        .trim_end_matches(".trace")
        .to_string()
}

fn sweep(path: &Path, arguments: &Arguments) -> Result<TraceResult, SimError> {
    let requests = trace::load(path, arguments.format, None)?;
    if requests.is_empty() {
        return Err(SimError::EmptyTrace(path.to_path_buf()));
    }
    let distinct = requests
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let mut result = TraceResult {
        name: trace_name(path),
        pages: Vec::new(),
        ratios: Vec::new(),
    };
    for &ratio in &arguments.ratios {
        let pages = pages_for_ratio(ratio, distinct);
        let mut row = Vec::new();
        for policy in PolicyName::ALL {
            let mut cache = policy.build(pages);
            let counts = simulate(cache.as_mut(), requests.iter().map(|&key| Ok(key)))?;
            row.push(counts.misses as f64 / counts.requests as f64);
        }
        result.pages.push(pages);
        result.ratios.push(row);
    }
    Ok(result)
}

fn column(policy: PolicyName) -> usize {
    PolicyName::ALL
        .iter()
        .position(|&candidate| candidate == policy)
        .expect("listed")
}

fn percent(ratio: f64) -> String {
    format!("{:.2}", ratio * 100.0)
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let mut paths: Vec<PathBuf> = Vec::new();
    for input in &arguments.traces {
        if input.is_file() {
            paths.push(input.clone());
            continue;
        }
        match std::fs::read_dir(input) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|path| path.is_file())
                    .collect();
                found.sort();
                paths.extend(found);
            }
            Err(error) => {
                eprintln!("cannot list {}: {error}", input.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let mut results = Vec::new();
    for path in &paths {
        match sweep(path, &arguments) {
            Ok(result) => results.push(result),
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        }
    }

    let (two_phase, lru, arc, s3fifo) = (
        column(PolicyName::TwoPhase),
        column(PolicyName::Lru),
        column(PolicyName::Arc),
        column(PolicyName::S3Fifo),
    );
    print!("| trace | size | pages |");
    for policy in PolicyName::ALL {
        print!(" {policy} |");
    }
    println!(" two-phase − best of lru/arc/s3fifo |");
    println!(
        "|---|---:|---:|{}---:|",
        "---:|".repeat(PolicyName::ALL.len())
    );
    let mut pairs = 0;
    let mut within = 0;
    let mut lru_best = 0;
    let mut lru_best_kept = 0;
    let mut failures = Vec::new();
    // Per cache size: pairs, pairs within a point, worst gap (points).
    let mut by_size = vec![(0, 0, f64::NEG_INFINITY); arguments.ratios.len()];
    for result in &results {
        for (size, row) in result.ratios.iter().enumerate() {
            let best = row[lru].min(row[arc]).min(row[s3fifo]);
            let gap = row[two_phase] - best;
            print!(
                "| {} | {}% | {} |",
                result.name,
                arguments.ratios[size] * 100.0,
                result.pages[size]
            );
            for (index, &ratio) in row.iter().enumerate() {
                if index != two_phase && ratio == best {
                    print!(" **{}** |", percent(ratio));
                } else {
                    print!(" {} |", percent(ratio));
                }
            }
            println!(" {:+.2} |", gap * 100.0);
            pairs += 1;
            let size_row = &mut by_size[size];
            size_row.0 += 1;
            size_row.2 = size_row.2.max(gap * 100.0);
            if gap <= 0.01 {
                size_row.1 += 1;
                within += 1;
            } else {
                failures.push(format!(
                    "{} at {}%",
                    result.name,
                    arguments.ratios[size] * 100.0
                ));
            }
            if row[lru] == best {
                lru_best += 1;
                if row[two_phase] - row[lru] <= 0.01 {
                    lru_best_kept += 1;
                }
            }
        }
    }
    println!();
    println!(
        "Goal 1: within 1 point of the best of lru/arc/s3fifo on {within} of {pairs} pairs ({:.0}%).{}",
        100.0 * within as f64 / pairs.max(1) as f64,
        if failures.is_empty() {
            String::new()
        } else {
            format!(" Outside: {}.", failures.join(", "))
        }
    );
    let per_size: Vec<String> = by_size
        .iter()
        .zip(&arguments.ratios)
        .map(|(&(pairs, within, worst), ratio)| {
            format!(
                "{}%: {within} of {pairs} (worst {worst:+.2})",
                ratio * 100.0
            )
        })
        .collect();
    println!("Goal 1 by size: {}.", per_size.join("; "));
    println!(
        "Goal 2: where lru is the best of the three, within 1 point of it on {lru_best_kept} of {lru_best} pairs."
    );
    let at_ten = arguments
        .ratios
        .iter()
        .position(|&ratio| (ratio - 0.1).abs() < 1e-9);
    for name in ["scan", "cs"] {
        let found = results.iter().find(|result| result.name == name);
        if let (Some(result), Some(size)) = (found, at_ten) {
            let row = &result.ratios[size];
            println!(
                "Goal 3: {name} at 10%: two-phase {}%, s3fifo {}% ({}).",
                percent(row[two_phase]),
                percent(row[s3fifo]),
                if row[two_phase] <= row[s3fifo] {
                    "met"
                } else {
                    "not met"
                }
            );
        }
    }

    if let Some(directory) = &arguments.plots {
        if let Err(error) = std::fs::create_dir_all(directory) {
            eprintln!("cannot create {}: {error}", directory.display());
            return ExitCode::FAILURE;
        }
        let labels: Vec<String> = arguments
            .ratios
            .iter()
            .map(|ratio| format!("{}%", ratio * 100.0))
            .collect();
        for result in &results {
            let series: Vec<Series> = PolicyName::ALL
                .iter()
                .enumerate()
                .map(|(index, policy)| Series {
                    label: policy.to_string(),
                    values: result.ratios.iter().map(|row| row[index]).collect(),
                })
                .collect();
            let svg = miss_ratio_chart(&format!("{}: miss ratio", result.name), &labels, &series);
            let path = directory.join(format!("sim-{}.svg", result.name));
            if let Err(error) = std::fs::write(&path, svg) {
                eprintln!("cannot write {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

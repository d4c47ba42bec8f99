//! Trace-driven simulation of eviction policies: how many requests of a block
//! trace miss in a cache of a given size under a given policy.
//!
//! The product's two-phase policy runs through the same `EvictionPolicy`
//! implementation the page cache uses ([`policies::ProductCache`]); LRU,
//! CLOCK, ARC and S3-FIFO are reference implementations that live only here,
//! so the product never builds them. This crate knows nothing of nodes,
//! sockets or regions. The CLI's `pagoda sim` subcommand is a thin wrapper
//! over [`SimArgs`] and [`run`]; `sim-sweep` (in `src/bin`) produces the
//! comparison tables and plots in `docs/`.

pub mod plot;
pub mod policies;
pub mod trace;

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use policies::{PolicyName, Simulated};
pub use trace::{Column, TraceFormat, TraceReader};

/// What can go wrong in a simulation: all operating errors (bad files, bad
/// arguments), none of them a bug.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The trace file could not be opened or read.
    #[error("cannot read trace {path}: {source}")]
    Io {
        /// The trace file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The trace file's content does not match its format.
    #[error("malformed trace {path} at line {line}: {message}")]
    Format {
        /// The trace file.
        path: PathBuf,
        /// 1-based line number (0 for binary formats).
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The trace holds no request.
    #[error("trace {0} holds no request")]
    EmptyTrace(PathBuf),
    /// The arguments are inconsistent.
    #[error("invalid arguments: {0}")]
    Arguments(String),
}

/// Arguments of `pagoda sim`: which trace, how big a cache, which policy.
#[derive(Clone, Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("cache_size")
        .required(true)
        .args(["cache_pages", "cache_ratio"]),
))]
pub struct SimArgs {
    /// The trace file (gzip is detected and decompressed).
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// The trace's format.
    #[arg(long, value_enum, default_value_t = TraceFormat::Lirs)]
    pub format: TraceFormat,
    /// For csv: the column holding the block id, by header name or 0-based
    /// index (default 0).
    #[arg(long, value_name = "NAME_OR_INDEX")]
    pub column: Option<String>,
    /// Cache size in pages.
    #[arg(long, value_name = "N")]
    pub cache_pages: Option<usize>,
    /// Cache size as a fraction of the trace's distinct blocks (e.g. 0.1).
    #[arg(long, value_name = "R")]
    pub cache_ratio: Option<f64>,
    /// The eviction policy.
    #[arg(long, value_enum, default_value_t = PolicyName::TwoPhase)]
    pub policy: PolicyName,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one simulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// The policy that ran.
    pub policy: PolicyName,
    /// The trace file, as given.
    pub trace: PathBuf,
    /// Cache size in pages.
    pub cache_pages: usize,
    /// Requests in the trace.
    pub requests: u64,
    /// Distinct block ids in the trace.
    pub distinct: u64,
    /// Requests that missed (cold misses included).
    pub misses: u64,
    /// `misses / requests`.
    pub miss_ratio: f64,
}

impl SimReport {
    /// The report as a JSON object with exactly the fields policy, trace,
    /// cache_pages, requests, distinct, misses and miss_ratio.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "policy          {}", self.policy)?;
        writeln!(formatter, "trace           {}", self.trace.display())?;
        writeln!(formatter, "cache pages     {}", self.cache_pages)?;
        writeln!(formatter, "requests        {}", self.requests)?;
        writeln!(formatter, "distinct blocks {}", self.distinct)?;
        writeln!(formatter, "misses          {}", self.misses)?;
        write!(
            formatter,
            "miss ratio      {:.4} ({:.2}%)",
            self.miss_ratio,
            self.miss_ratio * 100.0
        )
    }
}

/// Counts of one run over a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Requests seen.
    pub requests: u64,
    /// Requests that missed.
    pub misses: u64,
}

/// Runs every request of `trace` through `cache`.
pub fn simulate<I>(cache: &mut dyn Simulated, trace: I) -> Result<Counts, SimError>
where
    I: IntoIterator<Item = Result<u64, SimError>>,
{
    let mut counts = Counts {
        requests: 0,
        misses: 0,
    };
    for key in trace {
        counts.requests += 1;
        if !cache.access(key?) {
            counts.misses += 1;
        }
    }
    Ok(counts)
}

/// Cache pages for a fraction `ratio` of `distinct` blocks: rounded, at least
/// one page.
pub fn pages_for_ratio(ratio: f64, distinct: u64) -> usize {
    ((ratio * distinct as f64).round() as usize).max(1)
}

/// Runs one simulation as `pagoda sim` does. The trace is streamed, twice
/// when the cache size is a ratio of its distinct blocks (once to count them).
pub fn run(args: &SimArgs) -> Result<SimReport, SimError> {
    let column = match (&args.column, args.format) {
        (Some(column), TraceFormat::Csv) => Some(Column::parse(column)),
        (Some(_), format) => {
            return Err(SimError::Arguments(format!(
                "--column applies to csv traces, not {format:?}"
            )));
        }
        (None, _) => None,
    };
    let open = || TraceReader::open(&args.trace, args.format, column.clone());
    let mut distinct_keys = HashSet::new();
    let cache_pages = match (args.cache_pages, args.cache_ratio) {
        (Some(0), None) => {
            return Err(SimError::Arguments(
                "--cache-pages must be at least 1".into(),
            ));
        }
        (Some(pages), None) => pages,
        (None, Some(ratio)) => {
            if !(ratio > 0.0 && ratio.is_finite()) {
                return Err(SimError::Arguments(format!(
                    "--cache-ratio must be a positive fraction, not {ratio}"
                )));
            }
            for key in open()? {
                distinct_keys.insert(key?);
            }
            pages_for_ratio(ratio, distinct_keys.len() as u64)
        }
        _ => {
            return Err(SimError::Arguments(
                "give exactly one of --cache-pages and --cache-ratio".into(),
            ));
        }
    };
    if cache_pages >= u32::MAX as usize {
        return Err(SimError::Arguments(format!(
            "--cache-pages {cache_pages} exceeds the 32-bit frame ids"
        )));
    }
    let counting = distinct_keys.is_empty();
    let mut cache = args.policy.build(cache_pages);
    let trace = open()?.inspect(|key| {
        if let (true, Ok(key)) = (counting, key) {
            distinct_keys.insert(*key);
        }
    });
    let counts = simulate(cache.as_mut(), trace)?;
    if counts.requests == 0 {
        return Err(SimError::EmptyTrace(args.trace.clone()));
    }
    Ok(SimReport {
        policy: args.policy,
        trace: args.trace.clone(),
        cache_pages,
        requests: counts.requests,
        distinct: distinct_keys.len() as u64,
        misses: counts.misses,
        miss_ratio: counts.misses as f64 / counts.requests as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(arguments: &[&str]) -> Result<SimArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("sim").chain(arguments.iter().copied()))
            .map(|command| command.sim)
    }

    fn trace_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file.flush().unwrap();
        file
    }

    // Guards the command line: exactly one cache size, known policies and
    // formats, defaults.
    #[test]
    fn arguments_parse() {
        let args = parse(&["--trace", "t", "--cache-pages", "10"]).unwrap();
        assert_eq!(args.policy, PolicyName::TwoPhase);
        assert_eq!(args.format, TraceFormat::Lirs);
        let args = parse(&["--trace", "t", "--cache-ratio", "0.1", "--policy", "s3fifo"]).unwrap();
        assert_eq!(args.policy, PolicyName::S3Fifo);
        assert!(parse(&["--trace", "t"]).is_err());
        assert!(parse(&["--trace", "t", "--cache-pages", "1", "--cache-ratio", "0.1"]).is_err());
        assert!(parse(&["--trace", "t", "--cache-pages", "1", "--policy", "mru"]).is_err());
        assert!(parse(&["--trace", "t", "--cache-pages", "1", "--format", "xml"]).is_err());
    }

    // Guards the end-to-end run and the JSON's exact field set.
    #[test]
    fn run_reports_misses_and_json() {
        let file = trace_file("1\n2\n3\n1\n2\n3\n*\n4\n");
        let args = parse(&[
            "--trace",
            file.path().to_str().unwrap(),
            "--cache-ratio",
            "0.75",
            "--policy",
            "lru",
        ])
        .unwrap();
        let report = run(&args).unwrap();
        assert_eq!(report.cache_pages, 3);
        assert_eq!((report.requests, report.distinct, report.misses), (7, 4, 4));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "cache_pages",
                "distinct",
                "miss_ratio",
                "misses",
                "policy",
                "requests",
                "trace"
            ]
        );
        assert_eq!(json["policy"], "lru");
        let text = report.to_string();
        assert!(text.contains("misses          4"), "{text}");
        assert!(text.contains("57.14%"), "{text}");
    }

    // Guards clear errors for bad runs: empty trace, zero pages, both sizes,
    // a column on a non-csv trace.
    #[test]
    fn bad_runs_are_errors() {
        let empty = trace_file("*\n");
        let mut args = parse(&[
            "--trace",
            empty.path().to_str().unwrap(),
            "--cache-pages",
            "4",
        ])
        .unwrap();
        assert!(matches!(run(&args), Err(SimError::EmptyTrace(_))));
        args.cache_pages = Some(0);
        assert!(matches!(run(&args), Err(SimError::Arguments(_))));
        args.cache_pages = Some(4);
        args.cache_ratio = Some(0.5);
        assert!(matches!(run(&args), Err(SimError::Arguments(_))));
        args.cache_ratio = None;
        args.column = Some("1".into());
        assert!(matches!(run(&args), Err(SimError::Arguments(_))));
    }
}

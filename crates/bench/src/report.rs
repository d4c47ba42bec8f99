//! Percentiles, markdown tables, JSON output and a small flag parser.

use std::collections::HashMap;

/// Percentiles of a set of latency samples, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Percentiles {
    /// Samples summarised.
    pub samples: usize,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Mean.
    pub mean_ns: u64,
}

impl Percentiles {
    /// Summarises `samples` (nanoseconds); sorts them in place.
    pub fn of(samples: &mut [u64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |quantile: f64| {
            let index =
                ((samples.len() as f64 * quantile).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index]
        };
        let sum: u128 = samples.iter().map(|&s| s as u128).sum();
        Percentiles {
            samples: samples.len(),
            p50_ns: at(0.50),
            p99_ns: at(0.99),
            p999_ns: at(0.999),
            mean_ns: (sum / samples.len() as u128) as u64,
        }
    }
}

/// Nanoseconds as microseconds with two decimals.
pub fn micros(nanoseconds: u64) -> String {
    format!("{:.2}", nanoseconds as f64 / 1000.0)
}

/// A markdown table built row by row.
#[derive(Debug, Default, serde::Serialize)]
pub struct Table {
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows of cells, as many as there are headers.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; it must have one cell per header.
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.headers.len(),
            "a row needs one cell per column"
        );
        self.rows.push(cells);
    }

    /// The table as GitHub-flavoured markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("| {} |\n", self.headers.join(" | ")));
        out.push_str(&format!(
            "|{}\n",
            self.headers.iter().map(|_| " --- |").collect::<String>()
        ));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    }
}

/// Command-line flags of the form `--name value` and `--switch`.
#[derive(Debug)]
pub struct Flags {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Flags {
    /// Parses the process's arguments. `switches` names the flags that take
    /// no value; every other flag takes one. Unknown flags are rejected so a
    /// typo never silently runs the default.
    pub fn parse(switches: &[&str], valued: &[&str], usage: &str) -> Flags {
        let mut values = HashMap::new();
        let mut given = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                fail(&format!("unexpected argument {arg:?}"), usage);
            };
            if name == "help" {
                println!("{usage}");
                std::process::exit(0);
            }
            // Harness flags cargo passes to bench targets.
            if name == "bench" {
                continue;
            }
            if switches.contains(&name) {
                given.push(name.to_owned());
            } else if valued.contains(&name) {
                let Some(value) = args.next() else {
                    fail(&format!("--{name} needs a value"), usage);
                };
                values.insert(name.to_owned(), value);
            } else {
                fail(&format!("unknown flag --{name}"), usage);
            }
        }
        Flags {
            values,
            switches: given,
        }
    }

    /// A flag's text, if given.
    pub fn values_get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Whether a switch was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// A numeric flag, or its default.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.values.get(name) {
            None => default,
            Some(text) => text
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{name} {text:?} is not a number"), "")),
        }
    }

    /// A list of numbers separated by commas, or its default.
    pub fn numbers<T: std::str::FromStr + Clone>(&self, name: &str, default: &[T]) -> Vec<T> {
        match self.values.get(name) {
            None => default.to_vec(),
            Some(text) => text
                .split(',')
                .map(|part| {
                    part.trim().parse().unwrap_or_else(|_| {
                        fail(&format!("--{name}: {part:?} is not a number"), "")
                    })
                })
                .collect(),
        }
    }
}

fn fail(message: &str, usage: &str) -> ! {
    eprintln!("error: {message}");
    if !usage.is_empty() {
        eprintln!("{usage}");
    }
    std::process::exit(2);
}

/// Prints either the markdown tables with their notes or, with `--json`,
/// one JSON document and nothing else.
pub fn emit(json: bool, document: &serde_json::Value, markdown: &str) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(document).expect("a JSON value serialises")
        );
    } else {
        print!("{markdown}");
    }
}

/// Progress for humans, on stderr so that stdout stays a clean table or JSON.
pub fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

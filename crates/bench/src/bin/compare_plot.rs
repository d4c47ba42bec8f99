//! Checks, tabulates and plots the headline comparison's results.
//!
//! Reads the JSON lines that `bench/compare.sh` collected from the workload
//! program (one object per backend, local fraction and workload), and:
//!
//! 1. asserts that every run of a workload read the same checksum in its
//!    checked phase, and fails loudly (exit status 1) if not;
//! 2. writes a markdown table of throughput, the ratios of each Pagoda
//!    backend (`pagoda`: through the region's cache; `mapped`: the region
//!    mapped into the process) to swap, zswap and local, mapped/pagoda, and
//!    p50/p99 operation latency, a table of the co-located backends
//!    (`pagoda-colocated`, `mapped-colocated`: misses copied from the node's
//!    shared memory) where they ran, followed by the goals with their
//!    verdicts;
//! 3. writes two SVG plots drawn by hand (no plotting dependency):
//!    `compare-throughput.svg` and `compare-p99.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

const USAGE: &str = "\
compare_plot: check, tabulate and plot bench/compare.sh results

  --results FILE   the JSON lines (required)
  --meta FILE      the run's meta.json (optional; shown above the table)
  --plots DIR      where to write compare-throughput.svg and compare-p99.svg
  --table FILE     where to write the markdown table (default: stdout only)";

/// The workloads in the order they are shown.
const WORKLOADS: [&str; 6] = ["kv90", "kv50", "uniform90", "scan", "chase", "indirect"];
/// The limited backends in the order they are shown; `local` is the baseline.
const LIMITED: [&str; 6] = [
    "swap",
    "zswap",
    "pagoda",
    "pagoda-colocated",
    "mapped",
    "mapped-colocated",
];
/// Bar colours: swap, zswap, pagoda, pagoda-colocated, mapped,
/// mapped-colocated.
const COLOURS: [&str; 6] = [
    "#d95f02", "#e6ab02", "#1b9e77", "#66a61e", "#7570b3", "#e7298a",
];
/// The backends that run on a Pagoda memory node.
const PAGODA_BACKENDS: [&str; 4] = ["pagoda", "pagoda-colocated", "mapped", "mapped-colocated"];

#[derive(Clone, Debug)]
struct Row {
    backend: String,
    workload: String,
    fraction: f64,
    ops_per_sec: f64,
    p50_ns: f64,
    p99_ns: f64,
    checksum: String,
    check_ops: u64,
    hit_ratio: Option<f64>,
    cgroup_swap_bytes: Option<u64>,
}

fn main() {
    if let Err(message) = run() {
        eprintln!("compare_plot: FAILED: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut results = None;
    let mut meta = None;
    let mut plots = None;
    let mut table_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--results" => results = Some(value),
            "--meta" => meta = Some(value),
            "--plots" => plots = Some(value),
            "--table" => table_path = Some(value),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let results = results.ok_or_else(|| format!("--results is required\n{USAGE}"))?;
    let text = std::fs::read_to_string(&results).map_err(|e| format!("{results}: {e}"))?;
    let rows = parse(&text)?;
    if rows.is_empty() {
        return Err(format!("{results} holds no results"));
    }
    verify_checksums(&rows)?;
    let meta = match meta {
        Some(path) => Some(
            serde_json::from_str::<Value>(
                &std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?,
            )
            .map_err(|e| format!("{path}: {e}"))?,
        ),
        None => None,
    };
    let table = render_table(&rows, meta.as_ref());
    print!("{table}");
    if let Some(path) = table_path {
        std::fs::write(&path, &table).map_err(|e| format!("{path}: {e}"))?;
    }
    if let Some(dir) = plots {
        let throughput = plot(&rows, Metric::Throughput, meta.as_ref());
        let p99 = plot(&rows, Metric::P99, meta.as_ref());
        for (name, svg) in [
            ("compare-throughput.svg", throughput),
            ("compare-p99.svg", p99),
        ] {
            let path = std::path::Path::new(&dir).join(name);
            std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("compare_plot: wrote {}", path.display());
        }
    }
    Ok(())
}

fn parse(text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", number + 1))?;
        let field = |name: &str| {
            v.get(name)
                .ok_or_else(|| format!("line {}: no {name}", number + 1))
        };
        let string = |name: &str| -> Result<String, String> {
            Ok(field(name)?.as_str().unwrap_or_default().to_string())
        };
        let float =
            |name: &str| -> Result<f64, String> { Ok(field(name)?.as_f64().unwrap_or(0.0)) };
        rows.push(Row {
            backend: string("backend")?,
            workload: string("workload")?,
            fraction: float("fraction")?,
            ops_per_sec: float("ops_per_sec")?,
            p50_ns: float("p50_ns")?,
            p99_ns: float("p99_ns")?,
            checksum: string("checksum")?,
            check_ops: field("check_ops")?.as_u64().unwrap_or(0),
            hit_ratio: v.pointer("/cache/hit_ratio").and_then(Value::as_f64),
            cgroup_swap_bytes: v.pointer("/cgroup/swap_bytes").and_then(Value::as_u64),
        });
    }
    Ok(rows)
}

/// Every run of a workload must have read the same bytes in its checked
/// phase; anything else means a backend returned wrong data.
fn verify_checksums(rows: &[Row]) -> Result<(), String> {
    let mut by_workload: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        by_workload.entry(&row.workload).or_default().push(row);
    }
    let mut errors = Vec::new();
    for (workload, runs) in &by_workload {
        let first = runs[0];
        for run in runs {
            if run.checksum != first.checksum || run.check_ops != first.check_ops {
                errors.push(format!(
                    "{workload}: {}@{} read checksum {} over {} ops, but {}@{} read {} over {} ops",
                    run.backend,
                    run.fraction,
                    run.checksum,
                    run.check_ops,
                    first.backend,
                    first.fraction,
                    first.checksum,
                    first.check_ops
                ));
            }
        }
        eprintln!(
            "compare_plot: {workload}: {} runs agree on checksum {} over {} checked operations",
            runs.len(),
            first.checksum,
            first.check_ops
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("CHECKSUM MISMATCH\n{}", errors.join("\n")))
    }
}

/// The fractions present, largest first.
fn fractions(rows: &[Row]) -> Vec<f64> {
    let mut list: Vec<f64> = rows
        .iter()
        .filter(|r| r.backend != "local")
        .map(|r| r.fraction)
        .collect();
    list.sort_by(|a, b| b.total_cmp(a));
    list.dedup();
    list
}

fn find<'a>(rows: &'a [Row], backend: &str, workload: &str, fraction: f64) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.backend == backend
            && r.workload == workload
            && (backend == "local" || (r.fraction - fraction).abs() < 1e-9)
    })
}

/// One row of the result tables: a workload at a local fraction, with each
/// backend's run (local runs once, at 100 %).
struct Cell<'a> {
    workload: &'static str,
    fraction: f64,
    local: Option<&'a Row>,
    swap: Option<&'a Row>,
    zswap: Option<&'a Row>,
    pagoda: Option<&'a Row>,
    mapped: Option<&'a Row>,
}

/// The table rows in order, skipping fractions at which only local ran.
fn cells<'a>(rows: &'a [Row], fractions: &[f64]) -> Vec<Cell<'a>> {
    let mut cells = Vec::new();
    for workload in WORKLOADS {
        for &fraction in fractions {
            let cell = Cell {
                workload,
                fraction,
                local: find(rows, "local", workload, fraction),
                swap: find(rows, "swap", workload, fraction),
                zswap: find(rows, "zswap", workload, fraction),
                pagoda: find(rows, "pagoda", workload, fraction),
                mapped: find(rows, "mapped", workload, fraction),
            };
            if cell.swap.is_some()
                || cell.zswap.is_some()
                || cell.pagoda.is_some()
                || cell.mapped.is_some()
            {
                cells.push(cell);
            }
        }
    }
    cells
}

fn percent(fraction: f64) -> String {
    let value = fraction * 100.0;
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}%")
    } else {
        format!("{value:.1}%")
    }
}

fn ops(value: Option<&Row>) -> String {
    match value {
        Some(row) if row.ops_per_sec >= 1e6 => format!("{:.2}M", row.ops_per_sec / 1e6),
        Some(row) if row.ops_per_sec >= 1e3 => format!("{:.1}k", row.ops_per_sec / 1e3),
        Some(row) => format!("{:.0}", row.ops_per_sec),
        None => "–".into(),
    }
}

fn ratio(top: Option<&Row>, bottom: Option<&Row>) -> Option<f64> {
    Some(top?.ops_per_sec / bottom?.ops_per_sec.max(1e-9))
}

fn ratio_text(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.2}×"))
}

fn micros(ns: f64) -> String {
    let us = ns / 1000.0;
    if us >= 100.0 {
        format!("{us:.0}")
    } else if us >= 10.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.2}")
    }
}

fn hit_ratio(row: Option<&Row>) -> String {
    row.and_then(|r| r.hit_ratio)
        .map_or("–".into(), |h| format!("{h:.3}"))
}

fn latency(row: Option<&Row>) -> String {
    row.map_or("–".into(), |r| {
        format!("{} / {}", micros(r.p50_ns), micros(r.p99_ns))
    })
}

fn render_table(rows: &[Row], meta: Option<&Value>) -> String {
    let mut out = String::new();
    if let Some(meta) = meta {
        let get = |k: &str| {
            meta.get(k)
                .map_or(String::new(), |v| v.to_string().replace('"', ""))
        };
        let _ = writeln!(
            out,
            "Dataset {} of 4 KiB records, {} s measured per cell after a warm-up of up to {} s; \
             memory cgroup v{} (limit = fraction × dataset + {} MiB), swappiness {}, zswap {}; \
             kernel {}, {} CPUs ({}), {} GiB RAM, THP {}{}.\n\nCommand: `{}` ({}).\n",
            get("dataset"),
            get("duration_s"),
            get("warmup_s"),
            get("cgroup_version"),
            get("allowance_mib"),
            get("swappiness"),
            get("zswap_compressor"),
            get("kernel"),
            get("cpus"),
            get("cpu_model"),
            meta.get("mem_total_kib")
                .and_then(Value::as_f64)
                .map_or(String::new(), |k| format!("{:.0}", k / 1048576.0)),
            get("thp"),
            match meta.get("hog_processes").and_then(Value::as_u64) {
                Some(hogs) if hogs > 0 => {
                    format!("; under a hog: {hogs} CPU-bound processes, one per core")
                }
                _ => String::new(),
            },
            get("command"),
            get("date"),
        );
    }
    let fractions = fractions(rows);
    let _ = writeln!(out, "Throughput (operations per second) and ratios:\n");
    let _ = writeln!(
        out,
        "| workload | local memory | local | swap | zswap | pagoda | mapped \
         | pagoda/swap | pagoda/zswap | pagoda/local \
         | mapped/swap | mapped/zswap | mapped/local | mapped/pagoda \
         | pagoda hit ratio | mapped hit ratio |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for Cell {
        workload,
        fraction,
        local,
        swap,
        zswap,
        pagoda,
        mapped,
    } in cells(rows, &fractions)
    {
        let _ = writeln!(
            out,
            "| {workload} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            percent(fraction),
            ops(local),
            ops(swap),
            ops(zswap),
            ops(pagoda),
            ops(mapped),
            ratio_text(ratio(pagoda, swap)),
            ratio_text(ratio(pagoda, zswap)),
            ratio_text(ratio(pagoda, local)),
            ratio_text(ratio(mapped, swap)),
            ratio_text(ratio(mapped, zswap)),
            ratio_text(ratio(mapped, local)),
            ratio_text(ratio(mapped, pagoda)),
            hit_ratio(pagoda),
            hit_ratio(mapped),
        );
    }
    let _ = writeln!(
        out,
        "\nA mapping's hits are plain loads that no code sees: its hit ratio is one \
         less the pages it fetched per operation (each operation touches one page).\n"
    );
    let _ = writeln!(out, "Operation latency, p50 / p99 in µs:\n");
    let _ = writeln!(
        out,
        "| workload | local memory | local | swap | zswap | pagoda | mapped |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for Cell {
        workload,
        fraction,
        local,
        swap,
        zswap,
        pagoda,
        mapped,
    } in cells(rows, &fractions)
    {
        let _ = writeln!(
            out,
            "| {workload} | {} | {} | {} | {} | {} | {} |",
            percent(fraction),
            latency(local),
            latency(swap),
            latency(zswap),
            latency(pagoda),
            latency(mapped),
        );
    }
    let swapped: Vec<String> = rows
        .iter()
        .filter(|r| {
            PAGODA_BACKENDS.contains(&r.backend.as_str()) && r.cgroup_swap_bytes.unwrap_or(0) > 0
        })
        .map(|r| {
            format!(
                "{} {}@{} ({} KiB)",
                r.backend,
                r.workload,
                percent(r.fraction),
                r.cgroup_swap_bytes.unwrap_or(0) >> 10
            )
        })
        .collect();
    let colocated: Vec<(&str, f64)> = WORKLOADS
        .iter()
        .flat_map(|&workload| fractions.iter().map(move |&fraction| (workload, fraction)))
        .filter(|&(workload, fraction)| {
            find(rows, "pagoda-colocated", workload, fraction).is_some()
                || find(rows, "mapped-colocated", workload, fraction).is_some()
        })
        .collect();
    if !colocated.is_empty() {
        let _ = writeln!(
            out,
            "\nCo-located (misses copied from the node's shared memory), operations per second, \
             ratios, and p50 / p99 in µs:\n"
        );
        let _ = writeln!(
            out,
            "| workload | local memory | swap | zswap | pagoda | pagoda-colocated \
             | colocated/zswap | colocated/pagoda | colocated p50 / p99 | hit ratio \
             | mapped-colocated | mapped-colocated/swap | mapped-colocated/zswap \
             | mapped-colocated p50 / p99 |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (workload, fraction) in colocated {
            let row = find(rows, "pagoda-colocated", workload, fraction);
            let mapped = find(rows, "mapped-colocated", workload, fraction);
            let swap = find(rows, "swap", workload, fraction);
            let zswap = find(rows, "zswap", workload, fraction);
            let pagoda = find(rows, "pagoda", workload, fraction);
            let _ = writeln!(
                out,
                "| {workload} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                percent(fraction),
                ops(swap),
                ops(zswap),
                ops(pagoda),
                ops(row),
                ratio_text(ratio(row, zswap)),
                ratio_text(ratio(row, pagoda)),
                latency(row),
                hit_ratio(row),
                ops(mapped),
                ratio_text(ratio(mapped, swap)),
                ratio_text(ratio(mapped, zswap)),
                latency(mapped),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nPagoda's own process (pagoda, pagoda-colocated, mapped, mapped-colocated) swapped: {}.",
        if swapped.is_empty() {
            "never (their cgroups' swap counters stayed at 0)".to_string()
        } else {
            swapped.join(", ")
        }
    );
    let _ = writeln!(out, "\nGoals:\n");
    let goal = |out: &mut String, text: &str, value: Option<f64>, target: f64| {
        let verdict = match value {
            Some(v) if v >= target => "met",
            Some(_) => "NOT met",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "- {text}: {} (target ≥ {target:.2}×) — {verdict}",
            ratio_text(value)
        );
    };
    let at = |backend: &str, workload: &str, fraction: f64| find(rows, backend, workload, fraction);
    goal(
        &mut out,
        "kv90 at 25%: pagoda/swap",
        ratio(at("pagoda", "kv90", 0.25), at("swap", "kv90", 0.25)),
        3.0,
    );
    goal(
        &mut out,
        "kv90 at 25%: pagoda/local",
        ratio(at("pagoda", "kv90", 0.25), at("local", "kv90", 1.0)),
        0.5,
    );
    goal(
        &mut out,
        "uniform90 at 25%: pagoda/zswap",
        ratio(
            at("pagoda", "uniform90", 0.25),
            at("zswap", "uniform90", 0.25),
        ),
        1.0,
    );
    if at("pagoda-colocated", "uniform90", 0.25).is_some() {
        goal(
            &mut out,
            "uniform90 at 25%: pagoda-colocated/zswap",
            ratio(
                at("pagoda-colocated", "uniform90", 0.25),
                at("zswap", "uniform90", 0.25),
            ),
            2.0,
        );
    }
    for backend in ["mapped", "mapped-colocated"] {
        if at(backend, "kv90", 0.25).is_some() {
            goal(
                &mut out,
                &format!("kv90 at 25%: {backend}/swap"),
                ratio(at(backend, "kv90", 0.25), at("swap", "kv90", 0.25)),
                3.0,
            );
            goal(
                &mut out,
                &format!("kv90 at 25%: {backend}/zswap"),
                ratio(at(backend, "kv90", 0.25), at("zswap", "kv90", 0.25)),
                1.0,
            );
        }
    }
    for workload in WORKLOADS {
        if at("mapped", workload, 1.0).is_some() {
            goal(
                &mut out,
                &format!("{workload} at 100%: mapped/local"),
                ratio(at("mapped", workload, 1.0), at("local", workload, 1.0)),
                0.95,
            );
        }
    }
    for workload in WORKLOADS {
        if at("pagoda", workload, 1.0).is_some() {
            goal(
                &mut out,
                &format!("{workload} at 100%: pagoda/local"),
                ratio(at("pagoda", workload, 1.0), at("local", workload, 1.0)),
                0.8,
            );
        }
    }
    out
}

// ------------------------------------------------------------------ plotting

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    Throughput,
    P99,
}

impl Metric {
    fn of(self, row: &Row) -> f64 {
        match self {
            Metric::Throughput => row.ops_per_sec,
            Metric::P99 => row.p99_ns / 1000.0,
        }
    }

    fn axis(self) -> &'static str {
        match self {
            Metric::Throughput => "operations per second (log)",
            Metric::P99 => "p99 latency, µs (log)",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::Throughput => "Throughput by local memory (dashed: all-local)",
            Metric::P99 => "p99 operation latency by local memory (dashed: all-local)",
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn tick_label(value: f64, metric: Metric) -> String {
    match metric {
        Metric::Throughput if value >= 1e6 => format!("{:.0}M", value / 1e6),
        Metric::Throughput if value >= 1e3 => format!("{:.0}k", value / 1e3),
        _ if value < 1.0 => format!("{value}"),
        _ => format!("{value:.0}"),
    }
}

/// Small multiples: one panel per workload, local fractions along x, grouped
/// bars for swap, zswap, pagoda and mapped on a log axis, all-local as a
/// dashed line.
fn plot(rows: &[Row], metric: Metric, meta: Option<&Value>) -> String {
    let fractions = fractions(rows);
    let workloads: Vec<&str> = WORKLOADS
        .into_iter()
        .filter(|w| rows.iter().any(|r| r.workload == *w))
        .collect();
    let values: Vec<f64> = rows
        .iter()
        .map(|r| metric.of(r))
        .filter(|v| *v > 0.0)
        .collect();
    let low = values.iter().copied().fold(f64::MAX, f64::min).max(1e-3);
    let high = values
        .iter()
        .copied()
        .fold(0.0f64, f64::max)
        .max(low * 10.0);
    let (decade_low, decade_high) = (low.log10().floor(), high.log10().ceil());
    let (panel_w, panel_h) = (250.0, 260.0);
    let (left, top, gap) = (70.0, 60.0, 30.0);
    let width = left + workloads.len() as f64 * (panel_w + gap) + 10.0;
    let height = top + panel_h + 80.0;
    let y_of = |v: f64| {
        let t = (v.max(1e-9).log10() - decade_low) / (decade_high - decade_low);
        top + panel_h * (1.0 - t.clamp(0.0, 1.0))
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let subtitle = meta
        .and_then(|m| m.get("dataset"))
        .and_then(Value::as_str)
        .map_or(String::new(), |d| {
            format!(" — dataset {d} of 4 KiB records, one thread")
        });
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="22" font-size="15" font-weight="bold">{}{}</text>"#,
        escape(metric.title()),
        escape(&subtitle)
    );
    // Legend.
    for (index, backend) in LIMITED.iter().enumerate() {
        let x = left + index as f64 * 110.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="32" width="12" height="12" fill="{}"/><text x="{}" y="42">{backend}</text>"#,
            COLOURS[index],
            x + 16.0
        );
    }
    let x = left + LIMITED.len() as f64 * 110.0;
    let _ = writeln!(
        svg,
        r#"<line x1="{x}" y1="38" x2="{}" y2="38" stroke="black" stroke-dasharray="4 3"/><text x="{}" y="42">local (no limit)</text>"#,
        x + 24.0,
        x + 28.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + panel_h / 2.0,
        escape(metric.axis())
    );
    for (panel, workload) in workloads.iter().enumerate() {
        let x0 = left + panel as f64 * (panel_w + gap);
        // Grid and y ticks.
        let mut decade = decade_low;
        while decade <= decade_high + 1e-9 {
            let value = 10f64.powf(decade);
            let y = y_of(value);
            let _ = writeln!(
                svg,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##,
                x0 + panel_w
            );
            if panel == 0 {
                let _ = writeln!(
                    svg,
                    r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                    x0 - 4.0,
                    y + 4.0,
                    tick_label(value, metric)
                );
            }
            decade += 1.0;
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{x0}" y="{top}" width="{panel_w}" height="{panel_h}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{workload}</text>"#,
            x0 + panel_w / 2.0,
            top - 6.0
        );
        let group_w = panel_w / fractions.len().max(1) as f64;
        let bar_w = (group_w - 12.0) / LIMITED.len() as f64;
        for (group, &fraction) in fractions.iter().enumerate() {
            let gx = x0 + group as f64 * group_w + 6.0;
            for (index, backend) in LIMITED.iter().enumerate() {
                if let Some(row) = find(rows, backend, workload, fraction) {
                    let value = metric.of(row);
                    let y = y_of(value);
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{backend} at {}: {value:.1}</title></rect>"#,
                        gx + index as f64 * bar_w,
                        bar_w - 1.0,
                        (top + panel_h - y).max(0.0),
                        COLOURS[index],
                        percent(fraction)
                    );
                }
            }
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                gx + (group_w - 12.0) / 2.0,
                top + panel_h + 16.0,
                percent(fraction)
            );
        }
        if let Some(local) = find(rows, "local", workload, 1.0) {
            let y = y_of(metric.of(local));
            let _ = writeln!(
                svg,
                r#"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="black" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
                x0 + panel_w
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">local memory (fraction of dataset)</text>"#,
            x0 + panel_w / 2.0,
            top + panel_h + 34.0
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

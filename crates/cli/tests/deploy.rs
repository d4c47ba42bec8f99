//! The files in deploy/ against the code they deploy: the systemd unit is
//! one systemd accepts and that runs the shipped binary, the Grafana
//! dashboard and the alerting rules query only metrics (and labels) the
//! node exports, and the Prometheus example is a configuration Prometheus
//! accepts.
//!
//! `systemd-analyze` (Debian's `systemd`) and `promtool` (Debian's
//! `prometheus`) are installed with apt-get when missing
//! (`pagoda_cluster::testing::require_binary`); if that fails the test fails
//! saying why, it never skips.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::http::{metric_names, scrape};
use common::{NodeProcess, free_port, run_ok, text};

/// The binary the shipped unit runs.
const UNIT_BINARY: &str = "/usr/local/bin/pagoda";
/// The unit's command line after the binary.
const UNIT_ARGUMENTS: &str = "node --config /etc/pagoda/node.toml";
/// The highest `systemd-analyze security` exposure the unit may have, in
/// tenths (its scale is 0.0, fully confined, to 10.0).
const UNIT_EXPOSURE_TENTHS_MAX: u32 = 20;

/// The repository's deploy/ directory.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read_deploy(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn succeed(output: &Output, what: &str) -> String {
    assert!(output.status.success(), "{what}: {}", text(output));
    text(output)
}

/// The value of every `Key=value` line of a unit's file (in order).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

// Guards deploy/pagoda-node.service: it runs the node with the shipped
// configuration path, stops it with SIGTERM (the graceful stop that hands
// off primaryship and checkpoints), restarts it on failure, passes
// `systemd-analyze verify` with the real binary in ExecStart, and stays
// confined (`systemd-analyze security`).
#[test]
fn systemd_unit_verifies() {
    let systemd_analyze = pagoda_cluster::testing::require_binary("systemd-analyze", "systemd");
    let unit = read_deploy("pagoda-node.service");
    let exec_start = format!("{UNIT_BINARY} {UNIT_ARGUMENTS}");
    assert_eq!(unit_values(&unit, "ExecStart"), [exec_start.as_str()]);
    assert_eq!(unit_values(&unit, "KillSignal"), ["SIGTERM"]);
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&unit, "User"), ["pagoda"]);
    assert_eq!(unit_values(&unit, "StateDirectory"), ["pagoda"]);
    assert_eq!(unit_values(&unit, "NoNewPrivileges"), ["yes"]);
    // The graceful stop may retry checkpoints for --stop-retry (30 s by
    // default) after handing regions off; systemd's default of 90 s before
    // SIGKILL would leave little room.
    let timeout = unit_values(&unit, "TimeoutStopSec");
    assert_eq!(timeout.len(), 1, "{unit}");
    assert!(timeout[0].ends_with("min"), "TimeoutStopSec={}", timeout[0]);

    // The unit's command line is one the binary accepts.
    let help = common::pagoda().args(["node", "--help"]).output().unwrap();
    let help = succeed(&help, "pagoda node --help");
    for flag in UNIT_ARGUMENTS.split(' ').filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag),
            "the unit runs `pagoda {UNIT_ARGUMENTS}`, but `pagoda node --help` has no {flag}:\n{help}"
        );
    }

    // verify needs ExecStart's binary to exist: the same unit, running the
    // binary this test was built with.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pagoda-node.service");
    let built = env!("CARGO_BIN_EXE_pagoda");
    std::fs::write(&copy, unit.replace(UNIT_BINARY, built)).unwrap();
    let verify = Command::new(&systemd_analyze)
        .arg("verify")
        .arg(&copy)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = succeed(&verify, "systemd-analyze verify pagoda-node.service");
    // Complaints about the unit name it; anything else (a host without a
    // running systemd) is not the unit's.
    let complaints: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("pagoda-node.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains:\n{said}"
    );

    let security = Command::new(&systemd_analyze)
        .args([
            "security",
            "--offline=yes",
            &format!("--threshold={UNIT_EXPOSURE_TENTHS_MAX}"),
        ])
        .arg(&copy)
        .current_dir(dir.path())
        .output()
        .unwrap();
    succeed(
        &security,
        &format!(
            "systemd-analyze security: the unit's exposure is above {}.{}",
            UNIT_EXPOSURE_TENTHS_MAX / 10,
            UNIT_EXPOSURE_TENTHS_MAX % 10
        ),
    );
}

/// PromQL's functions, aggregation operators and keywords: the identifiers
/// in an expression that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "and",
    "avg",
    "avg_over_time",
    "bool",
    "bottomk",
    "by",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "group_left",
    "group_right",
    "histogram_quantile",
    "idelta",
    "ignoring",
    "increase",
    "inf",
    "irate",
    "label_replace",
    "last_over_time",
    "ln",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "nan",
    "offset",
    "on",
    "or",
    "predict_linear",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "stddev",
    "stdvar",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "unless",
    "vector",
    "without",
];

/// The metric names and label names a PromQL expression uses.
#[derive(Debug, Default)]
struct Uses {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn is_identifier_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads the metric and label names of `expression`: Grafana's variables
/// (`$job`, `${datasource}`, `$__rate_interval`) are dropped, label names
/// are read from `{...}` matchers and `by`/`without`/`on`/`ignoring`
/// lists, string literals, ranges and numbers are skipped, and every other
/// identifier that is no PromQL word or function call is a metric name.
fn promql_uses(expression: &str) -> Uses {
    let chars: Vec<char> = expression.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    // Skips a string literal starting at `i`; returns the index after it.
    let skip_string = |i: usize| -> usize {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            if chars[j] == '\\' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    let identifier_at = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < chars.len() && is_identifier_char(chars[j]) {
            j += 1;
        }
        (chars[i..j].iter().collect(), j)
    };
    let next_non_space = |mut j: usize| -> Option<char> {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        chars.get(j).copied()
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && is_identifier_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '{' {
            // Matchers: label names before their operators.
            i += 1;
            while i < chars.len() && chars[i] != '}' {
                if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                    i = skip_string(i);
                } else if chars[i] == '$' {
                    i += 1;
                    while i < chars.len() && is_identifier_char(chars[i]) {
                        i += 1;
                    }
                } else if is_identifier_start(chars[i]) {
                    let (name, end) = identifier_at(i);
                    uses.labels.insert(name);
                    i = end;
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (0.99, 1e3, 5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_identifier_start(c) {
            let (name, end) = identifier_at(i);
            i = end;
            let list = matches!(name.as_str(), "by" | "without" | "on" | "ignoring")
                || (matches!(name.as_str(), "group_left" | "group_right")
                    && next_non_space(i) == Some('('));
            if list {
                while i < chars.len() && chars[i] != '(' {
                    i += 1;
                }
                while i < chars.len() && chars[i] != ')' {
                    if is_identifier_start(chars[i]) {
                        let (label, end) = identifier_at(i);
                        uses.labels.insert(label);
                        i = end;
                    } else {
                        i += 1;
                    }
                }
                i += 1;
            } else if !PROMQL_WORDS.contains(&name.as_str()) && next_non_space(i) != Some('(') {
                uses.metrics.insert(name);
            }
        } else {
            i += 1;
        }
    }
    uses
}

/// The label names of a scrape's samples.
fn sample_labels(text: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(open) = line.find('{') else {
            continue;
        };
        let mut rest = &line[open + 1..];
        // name="value" pairs; values may hold commas and escaped quotes.
        while let Some(equals) = rest.find('=') {
            labels.insert(rest[..equals].trim_start_matches(',').trim().to_owned());
            let value = &rest[equals + 1..];
            assert!(value.starts_with('"'), "unquoted label value in {line:?}");
            let mut escaped = false;
            let mut close = None;
            for (at, c) in value.char_indices().skip(1) {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        close = Some(at);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let close = close.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
            rest = &value[close + 1..];
            if rest.starts_with('}') {
                break;
            }
        }
    }
    labels
}

/// Every `expr` string in a dashboard's panels (rows' panels included).
fn panel_expressions(panels: &serde_json::Value, found: &mut Vec<(String, String)>) {
    for panel in panels.as_array().expect("panels is an array") {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        if let Some(targets) = panel["targets"].as_array() {
            for target in targets {
                let expression = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                found.push((title.clone(), expression.to_owned()));
            }
        }
        if panel.get("panels").is_some() {
            panel_expressions(&panel["panels"], found);
        }
    }
}

/// The `{{label}}` names of a Grafana legend format.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_owned())
        .collect()
}

/// A node with a replicated region, a checkpoint and a refused request, so
/// that a scrape shows every label the node uses, and that scrape.
fn scrape_of_a_busy_node(dir: &Path) -> String {
    let replica_dir = dir.join("replica");
    let primary_dir = dir.join("primary");
    std::fs::create_dir(&replica_dir).unwrap();
    std::fs::create_dir(&primary_dir).unwrap();
    let replica = NodeProcess::start(&replica_dir, &[]);
    let metrics = format!("127.0.0.1:{}", free_port());
    // With a bulk tier: its series are on the dashboard too.
    let bulk_dir = dir.join("bulk");
    let bulk_dir = bulk_dir.to_str().unwrap();
    let primary = NodeProcess::start(
        &primary_dir,
        &[
            "--metrics",
            &metrics,
            "--bulk-dir",
            bulk_dir,
            "--bulk-capacity",
            "64MiB",
        ],
    );
    run_ok(
        &[
            "region",
            "create",
            "replicated",
            "--size",
            "4MiB",
            "--replicas",
            &replica.addr,
        ],
        &primary.addr,
    );
    run_ok(&["region", "checkpoint", "replicated"], &primary.addr);
    let missing = common::run(&["region", "stat", "no-such-region"], &primary.addr);
    assert!(!missing.status.success(), "{}", text(&missing));
    scrape(&metrics)
}

/// What a dashboard or a rule may use: the scraped names plus Prometheus's
/// own series, and the scraped labels plus the ones Prometheus adds.
fn exported(scraped: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = metric_names(scraped);
    metrics.insert("up".to_owned());
    let mut labels = sample_labels(scraped);
    labels.extend(["job", "instance", "__name__"].map(str::to_owned));
    (metrics, labels)
}

/// Fails the test when `expression` (found at `place`) uses a metric or
/// label the node does not export; returns the metrics it uses.
fn check_expression(
    place: &str,
    expression: &str,
    metrics: &BTreeSet<String>,
    labels: &BTreeSet<String>,
) -> BTreeSet<String> {
    let uses = promql_uses(expression);
    assert!(
        !uses.metrics.is_empty(),
        "{place}: no metric found in {expression:?}"
    );
    for metric in &uses.metrics {
        assert!(
            metrics.contains(metric),
            "{place}: {expression:?} uses {metric}, which the node does not export; it does: \
             {metrics:?}"
        );
    }
    for label in &uses.labels {
        assert!(
            labels.contains(label),
            "{place}: {expression:?} uses the label {label}, which no series of the node has; \
             they have: {labels:?}"
        );
    }
    uses.metrics
}

// Guards the parser the dashboard check relies on: metric names found,
// functions, keywords, variables, strings, ranges and numbers not.
#[test]
fn promql_reader_finds_metrics_and_labels() {
    let uses = promql_uses(
        "histogram_quantile(0.99, sum by (le, opcode) (rate(pagoda_node_request_duration_seconds_bucket{job=~\"$job\", instance=~\"a,b{c}\"}[$__rate_interval]))) / ignoring(x) up offset 5m > 1e3 and on (region) foo:bar",
    );
    assert_eq!(
        uses.metrics,
        [
            "foo:bar",
            "pagoda_node_request_duration_seconds_bucket",
            "up"
        ]
        .map(str::to_owned)
        .into()
    );
    assert_eq!(
        uses.labels,
        ["instance", "job", "le", "opcode", "region", "x"]
            .map(str::to_owned)
            .into()
    );
}

// Guards deploy/grafana-dashboard.json and deploy/pagoda-alerts.yml
// against drift from the code: every metric and label their PromQL uses
// is one a running node serves (a renamed metric breaks this test, not a
// panel in production), every metric family the node serves is on some
// panel, and the dashboard is a well-formed Grafana model.
#[test]
fn dashboard_and_alerts_use_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let scraped = scrape_of_a_busy_node(dir.path());
    let (metrics, labels) = exported(&scraped);
    assert!(labels.contains("replica"), "{scraped}");

    let dashboard: serde_json::Value = serde_json::from_str(&read_deploy("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana-dashboard.json: {e}"));
    assert_eq!(dashboard["uid"], "pagoda-nodes");
    assert!(dashboard["title"].is_string(), "no title");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "no schemaVersion"
    );
    let mut ids = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        for field in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][field].is_u64(), "{panel}: gridPos.{field}");
        }
    }
    let mut expressions = Vec::new();
    panel_expressions(&dashboard["panels"], &mut expressions);
    assert!(expressions.len() >= 10, "{expressions:?}");
    let mut used = BTreeSet::new();
    for (title, expression) in &expressions {
        used.extend(check_expression(
            &format!("dashboard panel {title:?}"),
            expression,
            &metrics,
            &labels,
        ));
    }
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            for label in legend_labels(target["legendFormat"].as_str().unwrap_or_default()) {
                assert!(
                    labels.contains(&label),
                    "panel {}: legend label {label} is no label of the node's series",
                    panel["title"]
                );
            }
        }
    }
    // The template variables' queries: label_values(SELECTOR, LABEL).
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let Some(definition) = variable["definition"].as_str() else {
            continue;
        };
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {definition:?} is not label_values(...)"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        check_expression(
            &format!("variable {}", variable["name"]),
            selector,
            &metrics,
            &labels,
        );
        assert!(labels.contains(label.trim()), "{definition}: {label}");
    }

    // Every family the node exports is on the dashboard.
    for line in scraped.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let family = rest.split_whitespace().next().unwrap();
        assert!(
            ["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| used.contains(&format!("{family}{suffix}"))),
            "the node exports {family}, which no panel of deploy/grafana-dashboard.json shows"
        );
    }

    // The alerting rules' expressions (one line each).
    let rules = read_deploy("pagoda-alerts.yml");
    let mut alerts = 0;
    for line in rules.lines() {
        if let Some(expression) = line.trim().strip_prefix("expr:") {
            check_expression(
                "deploy/pagoda-alerts.yml",
                expression.trim(),
                &metrics,
                &labels,
            );
            alerts += 1;
        }
    }
    assert!(alerts >= 5, "{alerts} expressions in pagoda-alerts.yml");
}

// Guards deploy/prometheus.yml and the rules it loads: promtool accepts
// them, and the example scrapes the node's metrics port as the README and
// the Containerfile give it.
#[test]
fn prometheus_example_is_valid() {
    let promtool = pagoda_cluster::testing::require_binary("promtool", "prometheus");
    let config = deploy_dir().join("prometheus.yml");
    let output = Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
        .unwrap();
    let said = succeed(&output, "promtool check config deploy/prometheus.yml");
    assert!(said.contains("1 rule files found"), "{said}");
    let output = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(deploy_dir().join("pagoda-alerts.yml"))
        .output()
        .unwrap();
    succeed(&output, "promtool check rules deploy/pagoda-alerts.yml");

    let example = read_deploy("prometheus.yml");
    assert!(example.contains("job_name: pagoda"), "{example}");
    assert!(example.contains("127.0.0.1:9070"), "{example}");
    let containerfile = read_deploy("Containerfile");
    assert!(
        containerfile
            .lines()
            .any(|line| line.starts_with("EXPOSE") && line.contains("9070")),
        "{containerfile}"
    );
}

/// The crates `cargo install pagoda-cli` needs, all of which must package.
const PUBLISHED: [&str; 8] = [
    "pagoda",
    "pagoda-cache",
    "pagoda-cli",
    "pagoda-cluster",
    "pagoda-journal",
    "pagoda-node",
    "pagoda-sim",
    "pagoda-wire",
];

// Guards publishing: every crate the pagoda command depends on, and the
// command's own, packages as crates.io would take it (a version on every
// path dependency, a license and a description), and the research and
// benchmark crates stay unpublished.
#[test]
fn crates_package_for_publishing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "package",
            "--workspace",
            "--no-verify",
            "--allow-dirty",
            "--offline",
            "--exclude",
            "pagoda-bench",
            "--exclude",
            "pagoda-fuzz",
            "--target-dir",
        ])
        .arg(target.path())
        .output()
        .unwrap();
    succeed(&output, "cargo package");
    let mut packaged: Vec<String> = std::fs::read_dir(target.path().join("package"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            Some(name.strip_suffix(".crate")?.rsplit_once('-')?.0.to_owned())
        })
        .collect();
    packaged.sort();
    assert_eq!(packaged, PUBLISHED);

    let output = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .unwrap();
    let metadata: serde_json::Value =
        serde_json::from_str(&succeed(&output, "cargo metadata")).unwrap();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let publish = &package["publish"];
        if PUBLISHED.contains(&name) {
            assert!(publish.is_null(), "{name} must be publishable: {publish}");
            for field in ["license", "description"] {
                assert!(package[field].is_string(), "{name} has no {field}");
            }
        } else {
            assert_eq!(
                publish,
                &serde_json::json!([]),
                "{name} must not be published"
            );
        }
    }
}

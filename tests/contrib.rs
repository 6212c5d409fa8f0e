//! contrib/: the Grafana dashboard (contrib/grafana/garivini-dashboard.json)
//! and the Prometheus alert rules (contrib/prometheus/garivini-alerts.yml)
//! name only metrics and labels of Garivini's catalogue (src/telemetry.rs),
//! and cover what they are meant to. With promtool (`scripts/contrib deps`
//! unpacks it into target/contrib/; or `$PROMTOOL`, or the PATH) the rules
//! also go through `promtool check rules` and their unit tests
//! (garivini-alerts.test.yml) through `promtool test rules`, and every
//! dashboard expression is parsed by promtool as a recording rule; without
//! it those checks are skipped with a message. Needs no database.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Counters and gauges: their names are series names as they are.
const METRICS: &[&str] = &[
    "garivini_jobs_inserted_total",
    "garivini_jobs_injected_total",
    "garivini_inject_refused_total",
    "garivini_jobs_claimed_total",
    "garivini_jobs_dispatched_total",
    "garivini_function_jobs_dispatched_total",
    "garivini_jobs_held_total",
    "garivini_jobs_completed_total",
    "garivini_jobs_failed_total",
    "garivini_jobs_dead_total",
    "garivini_rows_parked_total",
    "garivini_leases_expired_total",
    "garivini_stale_copies_total",
    "garivini_completions_missed_total",
    "garivini_node_moves_total",
    "garivini_gearmand_queue_depth",
    "garivini_due_rows",
    "garivini_function_due_rows",
    "garivini_function_oldest_due_seconds",
    "garivini_function_dead_rows",
];

/// Histograms: their series are `<name>_bucket`, `_count` and `_sum`.
const HISTOGRAMS: &[&str] = &[
    "garivini_inject_seconds",
    "garivini_claim_round_seconds",
    "garivini_controller_job_seconds",
];

/// The labels of the catalogue, with `le` (histogram buckets) and the two
/// Prometheus adds to every scraped series.
const LABELS: &[&str] = &[
    "reason", "role", "function", "db", "waiting", "le", "instance", "job",
];

/// How long one promtool run may take.
const PROMTOOL_LIMIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every identifier in `expr` that starts with `garivini_`.
fn garivini_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(i) = expr[from..].find("garivini_") {
        let start = from + i;
        let end = expr[start..]
            .find(|c: char| !is_ident(c))
            .map_or(expr.len(), |j| start + j);
        if !expr[..start].ends_with(is_ident) {
            names.push(expr[start..end].to_string());
        }
        from = end;
    }
    names
}

/// Whether `name` is a series Garivini exports: a counter or gauge as it
/// is, a histogram only by its `_bucket`, `_count` or `_sum` series.
fn is_known_series(name: &str) -> bool {
    METRICS.contains(&name)
        || ["_bucket", "_count", "_sum"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| HISTOGRAMS.contains(&base))
        })
}

/// The label names `expr` uses: in `by`, `without`, `on`, `ignoring`,
/// `group_left` and `group_right` lists and in `{…}` matchers.
fn label_names(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let words = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<(usize, char)> = expr.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        if !c.is_ascii_alphabetic() || (k > 0 && is_ident(chars[k - 1].1)) {
            continue;
        }
        let rest = &expr[i..];
        for word in words {
            let Some(after) = rest.strip_prefix(word) else {
                continue;
            };
            if after.starts_with(is_ident) {
                continue;
            }
            let after = after.trim_start();
            if let Some(list) = after.strip_prefix('(') {
                let list = &list[..list.find(')').expect("an unclosed label list")];
                labels.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
            }
        }
    }
    // Matchers: `{name op "value", …}`, skipping the quoted values.
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let body = &rest[open + 1..];
        let close = body.find('}').expect("an unclosed matcher");
        let mut inner = &body[..close];
        loop {
            inner = inner.trim_start_matches([' ', ',']);
            let Some(op) = inner.find(['=', '!']) else {
                break;
            };
            labels.push(inner[..op].trim().to_string());
            let Some(q) = inner.find('"') else { break };
            let Some(q2) = inner[q + 1..].find('"') else {
                break;
            };
            inner = &inner[q + 1 + q2 + 1..];
        }
        rest = &body[close + 1..];
    }
    labels
}

/// What is wrong with `expr`: names outside the catalogue, labels outside
/// [`LABELS`], or no Garivini metric at all.
fn problems(expr: &str) -> Vec<String> {
    let names = garivini_names(expr);
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| !is_known_series(n))
        .map(|n| format!("unknown metric {n}"))
        .collect();
    out.extend(
        label_names(expr)
            .into_iter()
            .filter(|l| !LABELS.contains(&l.as_str()))
            .map(|l| format!("unknown label {l}")),
    );
    if names.is_empty() {
        out.push("names no garivini_ metric".to_string());
    }
    out
}

/// The metric of a series name: a histogram's series give the histogram.
fn base_metric(name: &str) -> &str {
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if HISTOGRAMS.contains(&base) {
                return base;
            }
        }
    }
    name
}

/// The dashboard's panels as (title, exprs).
fn dashboard_panels() -> Vec<(String, Vec<String>)> {
    let text = read("contrib/grafana/garivini-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is not JSON");
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dash["panels"]
        .as_array()
        .expect("the dashboard has no panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        // Rows hold panels of their own.
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        let Some(targets) = panel["targets"].as_array() else {
            continue;
        };
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        let exprs = targets
            .iter()
            .map(|t| {
                t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"))
                    .to_string()
            })
            .collect();
        out.push((title, exprs));
    }
    out
}

/// One alert rule of the rules file, read by a line scan.
struct Alert {
    name: String,
    expr: String,
    severity: Option<String>,
    summary: bool,
    description: bool,
}

/// The alert rules of `text`: each `- alert:` opens one; its `expr:` is
/// the rest of that line or, after `|` or `>`, the lines indented deeper.
fn alert_rules(text: &str) -> Vec<Alert> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut alerts: Vec<Alert> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        i += 1;
        if t.starts_with('#') {
            continue;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            alerts.push(Alert {
                name: name.trim().to_string(),
                expr: String::new(),
                severity: None,
                summary: false,
                description: false,
            });
            continue;
        }
        if t.starts_with("- record:") {
            panic!("line {i}: a recording rule; this test knows only alert rules");
        }
        let Some(alert) = alerts.last_mut() else {
            continue;
        };
        if let Some(rest) = t.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut body = Vec::new();
                while i < lines.len()
                    && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
                {
                    body.push(lines[i].trim());
                    i += 1;
                }
                alert.expr = body.join("\n").trim().to_string();
            } else {
                alert.expr = rest.trim_matches(['"', '\'']).to_string();
            }
        } else if let Some(rest) = t.strip_prefix("severity:") {
            alert.severity = Some(rest.trim().trim_matches('"').to_string());
        } else if t.starts_with("summary:") {
            alert.summary = true;
        } else if t.starts_with("description:") {
            alert.description = true;
        }
    }
    alerts
}

#[test]
fn the_checker_refuses_what_is_not_in_the_catalogue() {
    assert!(problems("sum(rate(garivini_jobs_completed_total[5m]))").is_empty());
    assert!(problems(
        "histogram_quantile(0.99, sum by (le, function) (rate(garivini_controller_job_seconds_bucket[5m])))"
    )
    .is_empty());
    for (bad, why) in [
        (
            "rate(garivini_jobs_complted_total[5m])",
            "a misspelt counter",
        ),
        ("garivini_inject_seconds", "a histogram without a suffix"),
        (
            "rate(garivini_jobs_completed_total_bucket[5m])",
            "a counter's _bucket",
        ),
        (
            "sum by (funcname) (garivini_due_rows)",
            "an unknown label in by",
        ),
        (
            "garivini_due_rows{database=\"1\"}",
            "an unknown label in a matcher",
        ),
        (
            "garivini_due_rows{db=\"1\", shard=~\"a,b\"}",
            "an unknown label after a value with a comma",
        ),
        ("rate(jobs_completed_total[5m])", "no garivini_ metric"),
    ] {
        assert!(!problems(bad).is_empty(), "{why}: {bad:?} passed");
    }
}

#[test]
fn the_dashboard_names_only_catalogued_metrics() {
    let text = read("contrib/grafana/garivini-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is not JSON");
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    assert!(
        text.contains("${DS_PROMETHEUS}")
            && dash["__inputs"]
                .as_array()
                .is_some_and(|i| i.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "the dashboard should take its datasource as the DS_PROMETHEUS input"
    );

    let panels = dashboard_panels();
    assert!(
        panels.len() >= 10,
        "only {} panels with queries",
        panels.len()
    );
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    for (title, exprs) in &panels {
        assert!(!exprs.is_empty(), "panel {title:?} has no query");
        for expr in exprs {
            for p in problems(expr) {
                wrong.push(format!("panel {title:?}: {p} in {expr}"));
            }
            used.extend(
                garivini_names(expr)
                    .iter()
                    .map(|n| base_metric(n).to_string()),
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let missing: Vec<&&str> = [
        "garivini_jobs_inserted_total",
        "garivini_jobs_dispatched_total",
        "garivini_jobs_completed_total",
        "garivini_jobs_failed_total",
        "garivini_jobs_dead_total",
        "garivini_due_rows",
        "garivini_gearmand_queue_depth",
        "garivini_inject_seconds",
        "garivini_claim_round_seconds",
        "garivini_controller_job_seconds",
        "garivini_jobs_held_total",
        "garivini_stale_copies_total",
        "garivini_node_moves_total",
    ]
    .iter()
    .filter(|m| !used.contains(**m))
    .collect();
    assert!(
        missing.is_empty(),
        "the dashboard shows nothing of {missing:?}"
    );
}

#[test]
fn the_alert_rules_name_only_catalogued_metrics() {
    let text = read("contrib/prometheus/garivini-alerts.yml");
    assert!(
        !text.contains('\t'),
        "a tab in the rules file (YAML refuses tabs)"
    );
    assert!(
        text.lines().any(|l| l == "groups:"),
        "the rules file has no top-level groups:"
    );
    let alerts = alert_rules(&text);
    assert!(alerts.len() >= 7, "only {} alert rules", alerts.len());
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    let mut names = BTreeSet::new();
    for a in &alerts {
        if !names.insert(a.name.clone()) {
            wrong.push(format!("{}: the name twice", a.name));
        }
        if a.expr.is_empty() {
            wrong.push(format!("{}: no expr", a.name));
        }
        for p in problems(&a.expr) {
            wrong.push(format!("{}: {p} in {}", a.name, a.expr));
        }
        match a.severity.as_deref() {
            Some("critical" | "warning" | "info") => {}
            other => wrong.push(format!("{}: severity {other:?}", a.name)),
        }
        if !a.summary || !a.description {
            wrong.push(format!("{}: needs a summary and a description", a.name));
        }
        used.extend(
            garivini_names(&a.expr)
                .iter()
                .map(|n| base_metric(n).to_string()),
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let missing: Vec<&&str> = [
        "garivini_due_rows",
        "garivini_jobs_dispatched_total",
        "garivini_jobs_dead_total",
        "garivini_jobs_claimed_total",
        "garivini_jobs_completed_total",
        "garivini_stale_copies_total",
        "garivini_inject_refused_total",
        "garivini_node_moves_total",
        "garivini_completions_missed_total",
        "garivini_leases_expired_total",
    ]
    .iter()
    .filter(|m| !used.contains(**m))
    .collect();
    assert!(missing.is_empty(), "no alert rule watches {missing:?}");
}

/// promtool: `$PROMTOOL`, else the one `scripts/contrib deps` unpacks
/// into target/contrib/, else the first on the PATH.
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/contrib/promtool");
    if ours.is_file() {
        return Some(ours);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
}

/// Runs `promtool args…` in `dir`, within [`PROMTOOL_LIMIT`], and panics
/// with its output unless it succeeds.
async fn run_promtool(promtool: &Path, dir: &Path, args: &[&str]) -> String {
    let run = tokio::process::Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PROMTOOL_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("promtool {args:?} still running after {PROMTOOL_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("promtool {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{text}",
        out.status
    );
    text
}

#[tokio::test]
async fn promtool_checks_the_rules_runs_their_tests_and_parses_the_dashboard() {
    let Some(promtool) = promtool() else {
        eprintln!(
            "skipped: no promtool (Debian's prometheus package, or $PROMTOOL); \
             the rules and the dashboard were still checked against the catalogue"
        );
        return;
    };
    let dir = root().join("contrib/prometheus");
    let out = run_promtool(&promtool, &dir, &["check", "rules", "garivini-alerts.yml"]).await;
    let alerts = alert_rules(&read("contrib/prometheus/garivini-alerts.yml")).len();
    assert!(
        out.contains(&format!("SUCCESS: {alerts} rules found")),
        "promtool found other rules than the {alerts} alerts read here:\n{out}"
    );
    let out = run_promtool(
        &promtool,
        &dir,
        &["test", "rules", "garivini-alerts.test.yml"],
    )
    .await;
    assert!(out.contains("SUCCESS"), "{out}");

    // Each dashboard query as a recording rule, with Grafana's variables
    // given values, so that promtool parses its PromQL.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for (_, exprs) in dashboard_panels() {
        for expr in exprs {
            n += 1;
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$__range", "1h")
                .replace("$instance", ".*");
            rules.push_str(&format!(
                "      - record: dashboard:query_{n}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    std::fs::write(tmp.path().join("dashboard.yml"), rules).unwrap();
    let out = run_promtool(&promtool, tmp.path(), &["check", "rules", "dashboard.yml"]).await;
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

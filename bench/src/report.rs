//! What a run reports: the medians over the repetitions as a table on
//! stdout (its header first: the settings and the machine), and every
//! number as JSON (`--json FILE`).

use std::collections::BTreeMap;

use garivini::queue_runner;
use serde_json::json;

use crate::cpu::{self, Role};
use crate::opts::{split_args, Opts};
use crate::processes::version;
use crate::scenarios::{Metrics, Run, Unit};
use crate::targets::{big_summary, cpu_rows, met_text, ratios, rows, Target};

/// Results of every repetition of every phase.
pub struct Results {
    pub runs: BTreeMap<Unit, Vec<Run>>,
}

impl Results {
    pub fn values(&self, unit: Unit, metric: &str) -> Vec<f64> {
        self.runs
            .get(&unit)
            .into_iter()
            .flatten()
            .filter_map(|r| value(&r.metrics, metric))
            .collect()
    }

    fn stat(&self, unit: Unit, metric: &str) -> Option<Stat> {
        stat(&self.values(unit, metric))
    }

    pub fn median(&self, unit: Unit, metric: &str) -> Option<f64> {
        self.stat(unit, metric).map(|s| s.median)
    }

    pub fn failures(&self, unit: Unit) -> Vec<&str> {
        self.runs
            .get(&unit)
            .into_iter()
            .flatten()
            .filter_map(|r| r.error.as_deref())
            .collect()
    }

    /// The metrics of `unit` whose name starts with `prefix`, in the order
    /// the first repetition that has them has them, without the prefix.
    fn names_with(&self, unit: Unit, prefix: &str) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for run in self.runs.get(&unit).into_iter().flatten() {
            for (k, _) in &run.metrics {
                if k.starts_with(prefix) && !names.contains(k) {
                    names.push(*k);
                }
            }
        }
        names
    }

    fn ran(&self, unit: Unit) -> usize {
        self.runs.get(&unit).map_or(0, Vec::len)
    }

    /// Repetitions of `unit` that did not get `metric`.
    fn missing(&self, unit: Unit, metric: &str) -> usize {
        self.runs
            .get(&unit)
            .into_iter()
            .flatten()
            .filter(|r| value(&r.metrics, metric).is_none())
            .count()
    }
}

fn value(m: &Metrics, metric: &str) -> Option<f64> {
    m.iter().find(|(k, _)| *k == metric).map(|(_, v)| *v)
}

/// Statistics of one metric over the repetitions that succeeded.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(values: &[f64]) -> Option<Stat> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// Prints the header, the table of medians and targets, and what failed.
pub fn print_table(opts: &Opts, r: &Results, header: &[String]) {
    let fmt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    println!();
    for line in header {
        println!("{line}");
    }
    println!();
    println!(
        "{:<48} {:>9} {:>8} {:>8} {:>8} {:>8}  {:<30} met?",
        "scenario", "jobs/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "target"
    );
    println!("{}", "-".repeat(138));
    for row in rows(opts, r) {
        if !opts.scenarios.contains(&row.unit.scenario()) {
            continue;
        }
        let ran = r.ran(row.unit);
        let failed = r.missing(row.unit, row.rate_metric);
        let mut label = row.label.clone();
        if failed > 0 {
            label = format!("{label} [{failed}/{ran} FAILED]");
        }
        let rate = match r.median(row.unit, row.rate_metric) {
            Some(v) => format!("{v:.0}"),
            None => "FAILED".to_string(),
        };
        let lat = |k| {
            if row.latency {
                fmt(r.median(row.unit, k), 2)
            } else {
                "-".to_string()
            }
        };
        let row_failed = ran > 0 && r.median(row.unit, row.rate_metric).is_none();
        let met = |t: &Target| {
            if row_failed {
                "FAILED"
            } else {
                met_text(t.met)
            }
        };
        let mut targets = row.targets.iter();
        let first = targets.next();
        println!(
            "{:<48} {:>9} {:>8} {:>8} {:>8} {:>8}  {:<30} {}",
            label,
            rate,
            lat("p50_ms"),
            lat("p90_ms"),
            lat("p99_ms"),
            lat("max_ms"),
            first.map_or("", |t| t.text.as_str()),
            first.map_or("", met),
        );
        for t in targets {
            println!("{:<94}  {:<30} {}", "", t.text, met(t));
        }
    }
    println!("{}", "-".repeat(138));
    let ratios: Vec<String> = ratios(r)
        .into_iter()
        .map(|(k, v)| format!("{k} = {}", fmt(v, 2)))
        .collect();
    if opts.scenarios.iter().any(|&s| s <= 4) {
        println!("ratios (end-to-end jobs/s): {}", ratios.join(", "));
    }
    if opts.scenarios.iter().any(|&s| s == 3 || s == 4) {
        println!(
            "drain: QueueRunner(s) started on {} queued rows, until the table is empty; end to end: from gv_inject's start \
             until the table is empty, the other processes already running; latency rows: jobs/s is the rate gv_inject achieved",
            opts.jobs
        );
    }
    if opts.has(5) {
        println!("{}", big_summary(opts, r));
        println!(
            "5: background rows of {} other functions, none of them due during the measurement; \
             drain: --jobs rows of the scenario's function inserted, QueueRunner(s) started, until none is left",
            crate::big_table::BG_FUNCS
        );
    }
    print_cpu_table(opts, r);
    let mut failures = Vec::new();
    for unit in Unit::ALL {
        for (i, e) in r
            .runs
            .get(&unit)
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, x)| x.error.as_ref().map(|e| (i, e)))
        {
            failures.push(format!(
                "  {} {} rep {}: {e}",
                unit.scenario(),
                unit.title(),
                i + 1
            ));
        }
    }
    if !failures.is_empty() {
        println!("failures:");
        for f in failures {
            println!("{f}");
        }
    }
}

/// The CPU table: µs of CPU per job of each process of each phase.
fn print_cpu_table(opts: &Opts, r: &Results) {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!();
    for line in [
        "CPU per job, us: user + system time of all threads of each process (the kernel's per-process CPU clock, ns),",
        "from the start of the measured phase to its end, medians. roles = the garivini processes; in-proc = gv_bench",
        "itself, whose one runtime runs both the client and the worker of scenarios 1-2 (not told apart); ours = every",
        "process the phase runs; MariaDB* = the shared server's CPU over the phase, whatever else used it then (it is",
        "shared with the machine's other users); all = ours + MariaDB*; net = all less the server's CPU rate in the",
        "0.5 s before the phase (our services idle) times the phase's length: the phase's own share, if the rest stays alike",
        "(not given when that other load is over half of what the server used during the phase: too noisy to tell);",
        "conns = MariaDB's threads that served connections to the phase's database (PROCESSLIST's TID, polled every",
        "100 ms; /proc/PID/task/TID/schedstat): a lower bound of its share, without InnoDB's background work.",
    ] {
        println!("{line}");
    }
    println!(
        "{:<36} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}  {:<20} met?",
        "phase",
        "gearmand",
        "roles",
        "worker",
        "client",
        "in-proc",
        "ours",
        "MariaDB*",
        "all",
        "net",
        "conns",
        "target"
    );
    println!("{}", "-".repeat(159));
    for row in cpu_rows(r) {
        let unit = row.unit;
        if !opts.scenarios.contains(&unit.scenario()) || r.ran(unit) == 0 {
            continue;
        }
        let col = |role: Role| fmt(r.median(unit, role.metric()));
        let mut targets = row.targets.iter();
        let first = targets.next();
        println!(
            "{:<36} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}  {:<20} {}",
            format!("{} {}", unit.scenario(), unit.title()),
            col(Role::Gearmand),
            col(Role::Roles),
            col(Role::Worker),
            col(Role::Client),
            col(Role::InProcess),
            fmt(r.median(unit, cpu::OURS)),
            fmt(r.median(unit, cpu::MARIADB)),
            fmt(r.median(unit, cpu::ALL)),
            fmt(r.median(unit, cpu::ALL_NET)),
            fmt(r.median(unit, cpu::MARIADB_CONNS)),
            first.map_or("", |t| t.text.as_str()),
            first.map_or("", |t| met_text(t.met)),
        );
        for t in targets {
            println!("{:<133}  {:<20} {}", "", t.text, met_text(t.met));
        }
        let procs: Vec<String> = r
            .names_with(unit, cpu::PROC_PREFIX)
            .into_iter()
            .map(|k| {
                format!(
                    "{} {}",
                    &k[cpu::PROC_PREFIX.len()..],
                    fmt(r.median(unit, k))
                )
            })
            .collect();
        let mut detail = format!("    per process: {}", procs.join(", "));
        if let Some(during) = r.median(unit, cpu::MARIADB_DURING) {
            detail.push_str(&format!(
                "; MariaDB busy {during:.0} ms/s during the phase ({:.1} s), {} ms/s in the 0.5 s before it",
                r.median(unit, cpu::PHASE_S).unwrap_or(0.0),
                r.median(unit, cpu::MARIADB_BEFORE)
                    .map_or("?".to_string(), |b| format!("{b:.0}"))
            ));
        }
        println!("{detail}");
    }
    println!("{}", "-".repeat(159));
}

/// Every number of the run, and its settings.
pub fn to_json(
    o: &Opts,
    r: &Results,
    header: &[String],
    load: (String, String),
) -> serde_json::Value {
    let mut units = serde_json::Map::new();
    for unit in Unit::ALL {
        let Some(runs) = r.runs.get(&unit) else {
            continue;
        };
        let mut metrics = serde_json::Map::new();
        let names: Vec<&str> = runs
            .iter()
            .flat_map(|x| x.metrics.iter().map(|(k, _)| *k))
            .fold(Vec::new(), |mut acc, k| {
                if !acc.contains(&k) {
                    acc.push(k);
                }
                acc
            });
        for name in names {
            let values = r.values(unit, name);
            let s = stat(&values);
            metrics.insert(
                name.to_string(),
                json!({
                    "median": s.map(|s| s.median),
                    "min": s.map(|s| s.min),
                    "max": s.map(|s| s.max),
                    "reps": values,
                }),
            );
        }
        let reps: Vec<serde_json::Value> = runs
            .iter()
            .map(|x| {
                let metrics: serde_json::Map<String, serde_json::Value> = x
                    .metrics
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                json!({"ok": x.error.is_none(), "metrics": metrics, "error": x.error})
            })
            .collect();
        units.insert(
            unit.key().to_string(),
            json!({
                "scenario": unit.scenario(),
                "title": unit.title(),
                "metrics": metrics,
                "repetitions": reps,
                "failed": r.failures(unit).len(),
            }),
        );
    }
    let targets: Vec<serde_json::Value> = rows(o, r)
        .into_iter()
        .filter(|row| o.scenarios.contains(&row.unit.scenario()))
        .flat_map(|row| {
            let value = r.median(row.unit, row.rate_metric);
            let label = row.label.clone();
            row.targets.into_iter().map(
                move |t| json!({"row": label, "jobs_per_s": value, "target": t.text, "met": t.met}),
            )
        })
        .collect();
    let cpu_targets: Vec<serde_json::Value> = cpu_rows(r)
        .into_iter()
        .filter(|row| o.scenarios.contains(&row.unit.scenario()))
        .flat_map(|row| {
            let value = r.median(row.unit, cpu::ALL);
            let key = row.unit.key();
            row.targets.into_iter().map(
                move |t| json!({"unit": key, "cpu_us_all": value, "target": t.text, "met": t.met}),
            )
        })
        .collect();
    let ratios: serde_json::Map<String, serde_json::Value> = ratios(r)
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "settings": {
            "jobs": o.jobs,
            "payload_bytes": o.payload,
            "reps": o.reps,
            "concurrency": o.concurrency,
            "insert_concurrency": o.insert_concurrency,
            "insert_batch": o.insert_batch,
            "worker_concurrency": o.worker_concurrency,
            "submit_batch": o.submit_batch,
            "queuerunners": o.queuerunners,
            "controllers": o.controllers,
            "rate": o.rate,
            "latency_jobs": o.latency_jobs,
            "scenarios": o.scenarios,
            "queuerunner_args": split_args(&o.queuerunner_args),
            "controller_args": split_args(&o.controller_args),
            "gearmand_args": split_args(&o.gearmand_args),
            "timeout_s": o.timeout,
            "db_prefix": o.db_prefix,
        },
        "environment": header,
        "loadavg_start": load.0,
        "loadavg_end": load.1,
        "units": units,
        "targets": targets,
        "cpu_targets": cpu_targets,
        "ratios": ratios,
    })
}

/// The load average, as /proc/loadavg has it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The header of the table: that of the JSON, and the load at the end.
pub fn table_header(header: &[String], load: &(String, String)) -> Vec<String> {
    let mut h = header.to_vec();
    h.push(format!("load average at end {}", load.1));
    h
}

/// The lines that say what was run where: settings, machine, load.
pub fn header(opts: &Opts) -> Vec<String> {
    let mut header = vec![
        format!(
            "gv_bench: {} jobs, {} B payload, {} repetition(s) (median shown), {} cores, load average at start {}; {}",
            opts.jobs,
            opts.payload,
            opts.reps,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg(),
            version(std::path::Path::new(&opts.gearmand_bin))
        ),
        format!(
            "gearmand flags: {}; workers run {} jobs at once; scenarios 1-2: in-process client, pipelined batches of {}, a unique id per job",
            if opts.gearmand_args.trim().is_empty() { "(gearmand's defaults)" } else { opts.gearmand_args.trim() },
            opts.worker_concurrency, opts.submit_batch
        ),
    ];
    if opts.has(3) {
        header.push(format!(
            "scenario 3: gv_inject --batch {} --concurrency {}; {} QueueRunner(s): {}",
            opts.insert_batch,
            opts.insert_concurrency,
            opts.queuerunners,
            qr_settings(opts)
        ));
    }
    if opts.has(4) {
        header.push(format!(
            "scenario 4: gv_inject --concurrency {} (one job per inject_jobs); 1 QueueRunner+Injector process{}, {} Controller(s){}",
            opts.concurrency,
            if opts.queuerunner_args.trim().is_empty() { "" } else { " (with the QueueRunner flags)" },
            opts.controllers,
            if opts.controller_args.trim().is_empty() {
                String::new()
            } else {
                format!(" with {}", opts.controller_args.trim())
            }
        ));
    }
    if opts.has(1) || opts.has(3) || opts.has(4) {
        header.push(format!(
            "latency: {} jobs offered at {}/s, one job per submit (1: background job, {} connections; 3: insert, up to {} in flight; \
             4: inject_jobs, up to {} in flight); from submit to the worker's start",
            opts.latency_jobs,
            opts.rate,
            crate::scenarios::LATENCY_SUBMITTERS,
            opts.insert_concurrency,
            opts.concurrency,
        ));
    }
    header
}

/// The QueueRunner's defaults as "flag value" pairs, the flags
/// `garivini queuerunner` takes for its `Config` fields.
fn queuerunner_defaults() -> Vec<(&'static str, String)> {
    // Every field named: a new setting does not compile until it is shown.
    let queue_runner::Config {
        lease,
        batch_max_size,
        batch_start_size,
        batch_run_sleep,
        busy_run_sleep,
        idle_poll,
        queue_watermark_depth,
        submit_retry_delay,
        report_due_rows: _,
        // Config-file entries, not flags.
        periodic: _,
        functions: _,
    } = queue_runner::Config::default();
    let secs = |d: std::time::Duration| d.as_secs_f64().to_string();
    vec![
        ("--lease", lease.to_string()),
        ("--batch-max-size", batch_max_size.to_string()),
        ("--batch-start-size", batch_start_size.to_string()),
        ("--batch-run-sleep", secs(batch_run_sleep)),
        ("--busy-run-sleep", secs(busy_run_sleep)),
        ("--idle-poll", secs(idle_poll)),
        ("--queue-watermark-depth", queue_watermark_depth.to_string()),
        ("--submit-retry-delay", submit_retry_delay.to_string()),
    ]
}

/// What the QueueRunners run with: `--queuerunner-args` over the defaults.
fn qr_settings(opts: &Opts) -> String {
    let defaults = queuerunner_defaults()
        .iter()
        .map(|(f, v)| format!("{f} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    if opts.queuerunner_args.trim().is_empty() {
        format!("defaults ({defaults})")
    } else {
        format!(
            "{} over the defaults ({defaults})",
            opts.queuerunner_args.trim()
        )
    }
}

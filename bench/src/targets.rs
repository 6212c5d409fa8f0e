//! The rows of the tables and the targets each is held to.

use crate::cpu;
use crate::opts::Opts;
use crate::report::Results;
use crate::scenarios::Unit;

/// The performance targets Garivini was written to, shown in the table.
struct Targets {
    /// Throughput mode, end to end, jobs/s.
    tp_jobs: f64,
    /// Throughput mode end to end against gearmand memory-only (scenario
    /// 1; issue #17, 0.6 before).
    tp_vs_ceiling: f64,
    /// Throughput mode end to end against gearmand -q mysql (scenario 2).
    tp_vs_gearmand_mysql: f64,
    /// Throughput mode, insert to start at the offered rate, p50 ms.
    tp_p50_ms: f64,
    /// Low-latency mode, end to end, jobs/s.
    ll_jobs: f64,
    /// Low-latency mode end to end against gearmand memory-only (#17).
    ll_vs_ceiling: f64,
    /// Low-latency mode, submit to start at the offered rate, p50 and p99
    /// ms (p99: #17, 10 ms before).
    ll_p50_ms: f64,
    ll_p99_ms: f64,
    /// Low-latency p50 against memory-only gearmand's own submit->start
    /// p50 at the same rate, measured in the same run (#17).
    ll_p50_vs_gearmand: f64,
    /// CPU per job of every process together, MariaDB included, µs:
    /// throughput and low-latency mode end to end (#17).
    tp_cpu_us: f64,
    ll_cpu_us: f64,
    /// Scenario 5, on the big table against the empty one: drain rate at
    /// least this share, insert->start p50 at most this multiple, and
    /// `garivini status` under this many seconds (#17).
    big_drain_vs_empty: f64,
    big_p50_vs_empty: f64,
    big_status_s: f64,
}

const TARGETS: Targets = Targets {
    tp_jobs: 10_000.0,
    tp_vs_ceiling: 0.4,
    tp_vs_gearmand_mysql: 10.0,
    tp_p50_ms: 100.0,
    ll_jobs: 5_000.0,
    ll_vs_ceiling: 0.15,
    ll_p50_ms: 2.0,
    ll_p99_ms: 5.0,
    ll_p50_vs_gearmand: 2.5,
    tp_cpu_us: 80.0,
    ll_cpu_us: 250.0,
    big_drain_vs_empty: 0.8,
    big_p50_vs_empty: 1.2,
    big_status_s: 1.0,
};

/// A target of a row, and whether the medians met it (None: not known).
pub struct Target {
    pub text: String,
    pub met: Option<bool>,
}

fn at_least(value: Option<f64>, min: Option<f64>, text: String) -> Target {
    let met = match (value, min) {
        (Some(v), Some(m)) => Some(v >= m),
        _ => None,
    };
    Target { text, met }
}

fn at_most(value: Option<f64>, max: f64, text: String) -> Target {
    Target {
        text,
        met: value.map(|v| v <= max),
    }
}

/// What a target's column says.
pub fn met_text(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "n/a",
    }
}

/// A line of the table.
pub struct Row {
    pub label: String,
    pub unit: Unit,
    /// The metric shown as its jobs/s.
    pub rate_metric: &'static str,
    /// Whether it shows latency percentiles.
    pub latency: bool,
    pub targets: Vec<Target>,
}

fn row(
    label: String,
    unit: Unit,
    rate_metric: &'static str,
    latency: bool,
    targets: Vec<Target>,
) -> Row {
    Row {
        label,
        unit,
        rate_metric,
        latency,
        targets,
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Every row of the table, its targets judged on the medians of `r`.
pub fn rows(opts: &Opts, r: &Results) -> Vec<Row> {
    let t = &TARGETS;
    let ceiling = r.median(Unit::Memory, "jobs_per_s");
    let gq = r.median(Unit::Mysql, "jobs_per_s");
    let tp = r.median(Unit::TpE2e, "jobs_per_s");
    let tp_p50 = r.median(Unit::TpLatency, "p50_ms");
    let ll = r.median(Unit::LlE2e, "jobs_per_s");
    let ll_p50 = r.median(Unit::LlLatency, "p50_ms");
    let ll_p99 = r.median(Unit::LlLatency, "p99_ms");
    let mem_p50 = r.median(Unit::MemLatency, "p50_ms");
    let of = |k: f64, base: Option<f64>, n: u8| match base {
        Some(b) => format!(">= {k} x ({n}) = {:.0}/s", k * b),
        None => format!(">= {k} x ({n})"),
    };
    let k = t.ll_p50_vs_gearmand;
    let p50_of_gearmand = Target {
        text: match mem_p50 {
            Some(g) => format!("p50 <= {k} x (1)'s = {:.2} ms", k * g),
            None => format!("p50 <= {k} x (1)'s p50"),
        },
        met: ratio(ll_p50, mem_p50).map(|x| x <= k),
    };
    let rate = opts.rate;
    let big = big_rows(opts, r);
    let mut rows = vec![
        row(
            "1 gearmand memory-only (ceiling)".into(),
            Unit::Memory,
            "jobs_per_s",
            false,
            vec![],
        ),
        row(
            format!("1 gearmand memory-only: submit->start @{rate}/s"),
            Unit::MemLatency,
            "offered_jobs_per_s",
            true,
            vec![],
        ),
        row(
            "2 gearmand -q mysql".into(),
            Unit::Mysql,
            "jobs_per_s",
            false,
            vec![],
        ),
        row(
            format!("3 throughput: insert (batch {})", opts.insert_batch),
            Unit::TpDrain,
            "insert_jobs_per_s",
            false,
            vec![],
        ),
        row(
            format!("3 throughput: drain {} queued", opts.jobs),
            Unit::TpDrain,
            "drain_jobs_per_s",
            false,
            vec![],
        ),
        row(
            "3 throughput: end to end".into(),
            Unit::TpE2e,
            "jobs_per_s",
            false,
            vec![
                at_least(tp, Some(t.tp_jobs), format!(">= {:.0}/s", t.tp_jobs)),
                at_least(
                    tp,
                    ceiling.map(|c| c * t.tp_vs_ceiling),
                    of(t.tp_vs_ceiling, ceiling, 1),
                ),
                at_least(
                    tp,
                    gq.map(|g| g * t.tp_vs_gearmand_mysql),
                    of(t.tp_vs_gearmand_mysql, gq, 2),
                ),
            ],
        ),
        row(
            format!("3 throughput: insert->start @{rate}/s"),
            Unit::TpLatency,
            "offered_jobs_per_s",
            true,
            vec![at_most(
                tp_p50,
                t.tp_p50_ms,
                format!("p50 <= {:.0} ms", t.tp_p50_ms),
            )],
        ),
        row(
            "4 low-latency: end to end".into(),
            Unit::LlE2e,
            "jobs_per_s",
            false,
            vec![
                at_least(ll, Some(t.ll_jobs), format!(">= {:.0}/s", t.ll_jobs)),
                at_least(
                    ll,
                    ceiling.map(|c| c * t.ll_vs_ceiling),
                    of(t.ll_vs_ceiling, ceiling, 1),
                ),
            ],
        ),
        row(
            format!("4 low-latency: submit->start @{rate}/s"),
            Unit::LlLatency,
            "offered_jobs_per_s",
            true,
            vec![
                p50_of_gearmand,
                at_most(ll_p50, t.ll_p50_ms, format!("p50 <= {:.0} ms", t.ll_p50_ms)),
                at_most(ll_p99, t.ll_p99_ms, format!("p99 <= {:.0} ms", t.ll_p99_ms)),
            ],
        ),
    ];
    rows.extend(big);
    rows
}

/// How scenario 5's big table is named in the table.
pub fn big_label(opts: &Opts) -> String {
    let n = opts.big_table_rows;
    if n >= 1_000_000 && n % 100_000 == 0 {
        format!("{}M-row table", n as f64 / 1e6)
    } else {
        format!("{n}-row table")
    }
}

/// Scenario 5's rows: drain and insert->start on the empty table and on
/// the big one, the big one's judged against the empty one's, and the
/// big table's `garivini status` time.
fn big_rows(opts: &Opts, r: &Results) -> Vec<Row> {
    let t = &TARGETS;
    let (rate, jobs, big) = (opts.rate, opts.jobs, big_label(opts));
    let drain = |u| r.median(u, "drain_jobs_per_s");
    let p50 = |u| r.median(u, "p50_ms");
    let empty_drain = drain(Unit::BigEmpty);
    let empty_p50 = p50(Unit::BigEmpty);
    let status = r.median(Unit::BigFull, "status_s");
    let k = t.big_drain_vs_empty;
    let drain_target = at_least(
        drain(Unit::BigFull),
        empty_drain.map(|e| e * k),
        match empty_drain {
            Some(e) => format!(">= {k} x empty = {:.0}/s", e * k),
            None => format!(">= {k} x empty"),
        },
    );
    let k = t.big_p50_vs_empty;
    let p50_target = Target {
        text: match empty_p50 {
            Some(e) => format!("p50 <= {k} x empty = {:.2} ms", e * k),
            None => format!("p50 <= {k} x empty's"),
        },
        met: ratio(p50(Unit::BigFull), empty_p50).map(|x| x <= k),
    };
    let status_target = at_most(
        status,
        t.big_status_s,
        match status {
            Some(s) => format!("status {s:.2} s <= {:.0} s", t.big_status_s),
            None => format!("status <= {:.0} s", t.big_status_s),
        },
    );
    vec![
        row(
            format!("5 empty table: drain {jobs} queued"),
            Unit::BigEmpty,
            "drain_jobs_per_s",
            false,
            vec![],
        ),
        row(
            format!("5 {big}: drain {jobs} queued"),
            Unit::BigFull,
            "drain_jobs_per_s",
            false,
            vec![drain_target],
        ),
        row(
            format!("5 empty table: insert->start @{rate}/s"),
            Unit::BigEmpty,
            "offered_jobs_per_s",
            true,
            vec![],
        ),
        row(
            format!("5 {big}: insert->start @{rate}/s"),
            Unit::BigFull,
            "offered_jobs_per_s",
            true,
            vec![p50_target, status_target],
        ),
    ]
}

/// Scenario 5's summary: the big table's figures against the empty one's.
pub fn big_summary(opts: &Opts, r: &Results) -> String {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    let m = |u, k| r.median(u, k);
    format!(
        "5 ({}, filled in {} s): drain big/empty = {}, insert->start p50 big/empty = {}, p99 big/empty = {}; \
         garivini status, median of {}: empty {} s, big {} s (min {}, max {})",
        big_label(opts),
        f(m(Unit::BigFull, "fill_seconds"), 0),
        f(ratio(m(Unit::BigFull, "drain_jobs_per_s"), m(Unit::BigEmpty, "drain_jobs_per_s")), 2),
        f(ratio(m(Unit::BigFull, "p50_ms"), m(Unit::BigEmpty, "p50_ms")), 2),
        f(ratio(m(Unit::BigFull, "p99_ms"), m(Unit::BigEmpty, "p99_ms")), 2),
        opts.status_runs.max(1),
        f(m(Unit::BigEmpty, "status_s"), 3),
        f(m(Unit::BigFull, "status_s"), 3),
        f(m(Unit::BigFull, "status_min_s"), 3),
        f(m(Unit::BigFull, "status_max_s"), 3),
    )
}

/// End-to-end jobs/s of one scenario against another's.
pub fn ratios(r: &Results) -> Vec<(&'static str, Option<f64>)> {
    let m = |u| r.median(u, "jobs_per_s");
    vec![
        ("3/1", ratio(m(Unit::TpE2e), m(Unit::Memory))),
        ("3/2", ratio(m(Unit::TpE2e), m(Unit::Mysql))),
        ("4/1", ratio(m(Unit::LlE2e), m(Unit::Memory))),
        ("4/2", ratio(m(Unit::LlE2e), m(Unit::Mysql))),
        (
            "4 p50 / 1 p50 (submit->start)",
            ratio(
                r.median(Unit::LlLatency, "p50_ms"),
                r.median(Unit::MemLatency, "p50_ms"),
            ),
        ),
    ]
}

/// A line of the CPU table: a phase, and the targets on its CPU per job.
pub struct CpuRow {
    pub unit: Unit,
    pub targets: Vec<Target>,
}

/// Every line of the CPU table, its targets judged on the medians of `r`:
/// CPU per job of all processes, MariaDB's included (the figures,
/// 100-125 and ~400 µs, include it): as measured, with MariaDB's share
/// net of the load it had before the phase (the server is shared), and
/// with only its threads that served the phase's connections (a lower
/// bound).
pub fn cpu_rows(r: &Results) -> Vec<CpuRow> {
    let t = &TARGETS;
    Unit::ALL
        .into_iter()
        .map(|unit| {
            let all = r.median(unit, cpu::ALL);
            let net = r.median(unit, cpu::ALL_NET);
            let conns = r.median(unit, cpu::ALL_CONNS);
            let limit = match unit {
                Unit::TpE2e => Some(t.tp_cpu_us),
                Unit::LlE2e => Some(t.ll_cpu_us),
                _ => None,
            };
            let targets = limit
                .map(|l| {
                    vec![
                        at_most(all, l, format!("all <= {l:.0} us")),
                        at_most(net, l, format!("net <= {l:.0} us")),
                        at_most(conns, l, format!("ours+conns <= {l:.0}")),
                    ]
                })
                .unwrap_or_default();
            CpuRow { unit, targets }
        })
        .collect()
}

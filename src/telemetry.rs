//! The metrics the roles record, through the `metrics` facade: without an
//! installed recorder they cost next to nothing; `garivini --metrics-addr`
//! installs a Prometheus exporter that serves them on `/metrics`. Every
//! name is here, so the list below is the whole catalogue.
//!
//! Counters: `garivini_jobs_inserted_total` (rows stored, any path),
//! `garivini_jobs_injected_total` (jobs stored by `inject_jobs`),
//! `garivini_inject_refused_total{reason="invalid"|"database"}`,
//! `garivini_jobs_claimed_total`, `garivini_jobs_dispatched_total{role}`
//! (submitted to gearmand), `garivini_function_jobs_dispatched_total{function}`
//! (the QueueRunner's, per function), `garivini_jobs_held_total` (due rows a
//! claim read and left due: a room shared by several functions ran out;
//! held functions' rows are not even read), `garivini_jobs_completed_total`
//! (rows deleted), `garivini_jobs_failed_total{function}` (rescheduled
//! after a failure), `garivini_jobs_dead_total{function}` (parked after
//! the last attempt; both by our Client: the Controller's, or a worker's),
//! `garivini_leases_expired_total{function}` (rows the QueueRunner
//! dispatched again because their last lease ran out with no completion
//! or failure recorded: the runs-per-job signal of a job that keeps
//! coming back), `garivini_rows_parked_total` (rows made dead because
//! they cannot be dispatched as they are: a function name that is not UTF-8 or holds a
//! control character), `garivini_stale_copies_total` (copies of a job
//! dropped before they ran: their row was completed, cancelled or failed
//! since they were sent), `garivini_completions_missed_total{db}`
//! (deletes and reschedules that found no row), `garivini_node_moves_total{db}`
//! (a database's calls moved to its next node).
//! Histograms (seconds): `garivini_inject_seconds` (request to commit),
//! `garivini_claim_round_seconds`, `garivini_controller_job_seconds{function}`.
//!
//! A `function` label holds at most [`MAX_FUNCTION_LABELS`] distinct
//! names per process; later ones are counted as `other`, so that a table
//! of many functions cannot grow the exporter without bound.
//! Gauges: `garivini_gearmand_queue_depth{function}` (summed over the
//! gearmand servers), `garivini_due_rows{db}` (counted up to
//! [`DUE_ROWS_CAP`]), and per function, as `garivini status` counts them:
//! `garivini_function_due_rows{db,function,waiting}` (`waiting`: `none`,
//! or why they wait: `paused`, `no_worker`, `over_limit`, `over_watermark`),
//! `garivini_function_oldest_due_seconds{db,function}`,
//! `garivini_function_dead_rows{db,function}`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Most distinct values of a `function` label in one process.
pub const MAX_FUNCTION_LABELS: usize = 100;
/// The label of every function past [`MAX_FUNCTION_LABELS`].
pub const OTHER_FUNCTION: &str = "other";

static FUNCTION_LABELS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// `funcname` as a `function` label: itself while fewer than
/// [`MAX_FUNCTION_LABELS`] names have been seen (or it is one of them),
/// else [`OTHER_FUNCTION`].
pub fn function_label(funcname: &str) -> String {
    let mut seen = FUNCTION_LABELS.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.contains(funcname) {
        return funcname.to_string();
    }
    if seen.len() < MAX_FUNCTION_LABELS {
        seen.insert(funcname.to_string());
        return funcname.to_string();
    }
    OTHER_FUNCTION.to_string()
}

/// Gives every metric its HELP text; call once an exporter is installed.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("garivini_jobs_inserted_total", "Rows stored, by any path.");
    describe_counter!(
        "garivini_jobs_injected_total",
        "Jobs stored by inject_jobs."
    );
    describe_counter!(
        "garivini_inject_refused_total",
        "inject_jobs requests refused: invalid, or the database away."
    );
    describe_counter!(
        "garivini_jobs_claimed_total",
        "Rows claimed (leased) by the QueueRunner."
    );
    describe_counter!(
        "garivini_jobs_dispatched_total",
        "Jobs sent to run, by role: queuerunner and injector submitted to gearmand, \
         injector_local handed by the Injector to the Controller in its process."
    );
    describe_counter!(
        "garivini_function_jobs_dispatched_total",
        "Jobs the QueueRunner submitted to gearmand, by function."
    );
    describe_counter!(
        "garivini_jobs_held_total",
        "Due rows a claim read and left due: a room shared by several functions ran out."
    );
    describe_gauge!(
        "garivini_function_due_rows",
        "Due rows by database and function, and why they wait (waiting=none: they go next)."
    );
    describe_gauge!(
        "garivini_function_oldest_due_seconds",
        Unit::Seconds,
        "Seconds since the oldest due row of a function became due."
    );
    describe_gauge!(
        "garivini_function_dead_rows",
        "Dead rows (kept for inspection) by database and function."
    );
    describe_counter!(
        "garivini_jobs_completed_total",
        "Rows deleted by completions."
    );
    describe_counter!(
        "garivini_jobs_failed_total",
        "Failed runs rescheduled with backoff, by function."
    );
    describe_counter!(
        "garivini_jobs_dead_total",
        "Jobs parked dead after their last attempt, by function."
    );
    describe_counter!(
        "garivini_leases_expired_total",
        "Rows dispatched again because their last lease ran out with no completion or failure \
         recorded, by function."
    );
    describe_counter!(
        "garivini_rows_parked_total",
        "Rows made dead because they cannot be dispatched as they are."
    );
    describe_counter!(
        "garivini_stale_copies_total",
        "Copies of a job dropped before they ran: their row changed since they were sent."
    );
    describe_counter!(
        "garivini_completions_missed_total",
        "Deletes and reschedules that found no row, by database."
    );
    describe_counter!(
        "garivini_node_moves_total",
        "A database's calls moved to its next node."
    );
    describe_histogram!(
        "garivini_inject_seconds",
        Unit::Seconds,
        "inject_jobs: request to commit."
    );
    describe_histogram!(
        "garivini_claim_round_seconds",
        Unit::Seconds,
        "One claim round."
    );
    describe_histogram!(
        "garivini_controller_job_seconds",
        Unit::Seconds,
        "A Controller's wait for a job's answer, by function."
    );
    describe_gauge!(
        "garivini_gearmand_queue_depth",
        "Jobs queued or running in gearmand, by function, summed over the servers."
    );
    describe_gauge!(
        "garivini_due_rows",
        "Rows due now, by database (counted up to a cap)."
    );
}

/// The due-rows gauge stops counting here, so that reading it costs a
/// bounded index scan whatever the backlog.
pub const DUE_ROWS_CAP: u64 = 100_000;

/// Histogram buckets, in seconds: 0.5 ms to 1 min.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub(crate) fn inserted(n: usize) {
    metrics::counter!("garivini_jobs_inserted_total").increment(n as u64);
}

pub(crate) fn injected(n: usize, took: Duration) {
    metrics::counter!("garivini_jobs_injected_total").increment(n as u64);
    metrics::histogram!("garivini_inject_seconds").record(took.as_secs_f64());
}

pub(crate) fn inject_refused(database: bool) {
    let reason = if database { "database" } else { "invalid" };
    metrics::counter!("garivini_inject_refused_total", "reason" => reason).increment(1);
}

pub(crate) fn claim_round(claimed: usize, dispatched: usize, held: usize, took: Duration) {
    metrics::counter!("garivini_jobs_claimed_total").increment(claimed as u64);
    dispatched_by("queuerunner", dispatched);
    metrics::counter!("garivini_jobs_held_total").increment(held as u64);
    metrics::histogram!("garivini_claim_round_seconds").record(took.as_secs_f64());
}

pub(crate) fn dispatched_by(role: &'static str, n: usize) {
    metrics::counter!("garivini_jobs_dispatched_total", "role" => role).increment(n as u64);
}

pub(crate) fn completed(n: u64) {
    metrics::counter!("garivini_jobs_completed_total").increment(n);
}

pub(crate) fn failed(funcname: &str, dead: bool) {
    let function = function_label(funcname);
    if dead {
        metrics::counter!("garivini_jobs_dead_total", "function" => function).increment(1);
    } else {
        metrics::counter!("garivini_jobs_failed_total", "function" => function).increment(1);
    }
}

/// The QueueRunner's submits of one round, per function.
pub(crate) fn dispatched_functions<'a>(funcnames: impl Iterator<Item = &'a str>) {
    let mut counts: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for f in funcnames {
        *counts.entry(f).or_insert(0) += 1;
    }
    for (f, n) in counts {
        metrics::counter!("garivini_function_jobs_dispatched_total", "function" => function_label(f))
            .increment(n);
    }
}

pub(crate) fn lease_expired(funcname: &str) {
    metrics::counter!("garivini_leases_expired_total", "function" => function_label(funcname))
        .increment(1);
}

pub(crate) fn parked(n: usize) {
    if n > 0 {
        metrics::counter!("garivini_rows_parked_total").increment(n as u64);
    }
}

pub(crate) fn stale_copy() {
    metrics::counter!("garivini_stale_copies_total").increment(1);
}

pub(crate) fn controller_job(funcname: &str, took: Duration) {
    metrics::histogram!("garivini_controller_job_seconds", "function" => function_label(funcname))
        .record(took.as_secs_f64());
}

pub(crate) fn queue_depth(function: &str, depth: u64) {
    metrics::gauge!("garivini_gearmand_queue_depth", "function" => function.to_string())
        .set(depth as f64);
}

pub(crate) fn due_rows(dbid: u32, rows: u64) {
    metrics::gauge!("garivini_due_rows", "db" => dbid.to_string()).set(rows as f64);
}

/// One function's rows in one database, as the gauges show them.
pub(crate) struct FunctionRows<'a> {
    pub funcname: &'a str,
    pub due: u64,
    pub waiting: Option<crate::waiting::WaitReason>,
    pub oldest_due_secs: Option<u64>,
    pub dead: u64,
}

/// The `waiting` label's values.
const WAITING: [&str; 5] = [
    "none",
    "paused",
    "no_worker",
    "over_limit",
    "over_watermark",
];

/// Functions whose gauges database `db` set last time: a function gone
/// from the table has its gauges set to 0, not left at their last value.
static FUNCTION_GAUGES: Mutex<Option<std::collections::HashMap<u32, HashSet<String>>>> =
    Mutex::new(None);

/// Sets the per-function gauges of database `dbid` to `rows`.
pub(crate) fn function_rows(dbid: u32, rows: &[FunctionRows<'_>]) {
    let db = dbid.to_string();
    let set = |function: &str, due: u64, waiting: &str, oldest: u64, dead: u64| {
        for w in WAITING {
            let n = if w == waiting { due } else { 0 };
            metrics::gauge!("garivini_function_due_rows", "db" => db.clone(),
                "function" => function.to_string(), "waiting" => w)
            .set(n as f64);
        }
        metrics::gauge!("garivini_function_oldest_due_seconds", "db" => db.clone(),
            "function" => function.to_string())
        .set(oldest as f64);
        metrics::gauge!("garivini_function_dead_rows", "db" => db.clone(),
            "function" => function.to_string())
        .set(dead as f64);
    };
    let mut now: HashSet<String> = HashSet::new();
    for r in rows {
        let function = function_label(r.funcname);
        let waiting = r.waiting.map_or("none", |w| w.label());
        set(
            &function,
            r.due,
            waiting,
            r.oldest_due_secs.unwrap_or(0),
            r.dead,
        );
        now.insert(function);
    }
    let mut gauges = FUNCTION_GAUGES.lock().unwrap_or_else(|e| e.into_inner());
    let before = gauges
        .get_or_insert_with(Default::default)
        .insert(dbid, now.clone());
    for gone in before.unwrap_or_default().difference(&now) {
        set(gone, 0, "none", 0, 0);
    }
}

pub(crate) fn completions_missed(dbid: u32, n: u64) {
    metrics::counter!("garivini_completions_missed_total", "db" => dbid.to_string()).increment(n);
}

pub(crate) fn node_moved(dbid: u32) {
    metrics::counter!("garivini_node_moves_total", "db" => dbid.to_string()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_labels_are_bounded_with_an_other_bucket() {
        let names: Vec<String> = (0..MAX_FUNCTION_LABELS + 5)
            .map(|i| format!("lf{i}"))
            .collect();
        let labels: Vec<String> = names.iter().map(|n| function_label(n)).collect();
        let distinct: HashSet<&String> = labels.iter().collect();
        assert!(
            distinct.len() <= MAX_FUNCTION_LABELS + 1,
            "{}",
            distinct.len()
        );
        assert_eq!(labels.last().unwrap(), OTHER_FUNCTION);
        // A name seen before keeps its label.
        assert_eq!(function_label(&labels[0]), labels[0]);
    }
}

//! The metrics the roles record, through the `metrics` facade: without an
//! installed recorder they cost next to nothing; `garivini --metrics-addr`
//! installs a Prometheus exporter that serves them on `/metrics`. Every
//! name is here, so the list below is the whole catalogue.
//!
//! Counters: `garivini_jobs_inserted_total` (rows stored, any path),
//! `garivini_jobs_injected_total` (jobs stored by `inject_jobs`),
//! `garivini_inject_refused_total{reason="invalid"|"database"}`,
//! `garivini_jobs_claimed_total`, `garivini_jobs_dispatched_total{role}`
//! (submitted to gearmand), `garivini_jobs_pushed_back_total` (held back by
//! the watermark or for want of a worker), `garivini_jobs_completed_total`
//! (rows deleted), `garivini_jobs_failed_total` (rescheduled after a
//! failure), `garivini_jobs_dead_total` (parked after the last attempt),
//! `garivini_rows_parked_total` (rows made dead because they cannot be
//! dispatched as they are: a function name that is not UTF-8 or holds a
//! control character), `garivini_stale_copies_total` (copies of a job
//! dropped before they ran: their row was completed, cancelled or failed
//! since they were sent), `garivini_completions_missed_total{db}`
//! (deletes and reschedules that found no row), `garivini_node_moves_total{db}`
//! (a database's calls moved to its next node).
//! Histograms (seconds): `garivini_inject_seconds` (request to commit),
//! `garivini_claim_round_seconds`, `garivini_controller_job_seconds`.
//! Gauges: `garivini_gearmand_queue_depth{function}` (summed over the
//! gearmand servers), `garivini_due_rows{db}` (counted up to
//! [`DUE_ROWS_CAP`]).

use std::time::Duration;

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

pub(crate) fn claim_round(claimed: usize, dispatched: usize, pushed_back: usize, took: Duration) {
    metrics::counter!("garivini_jobs_claimed_total").increment(claimed as u64);
    dispatched_by("queuerunner", dispatched);
    metrics::counter!("garivini_jobs_pushed_back_total").increment(pushed_back as u64);
    metrics::histogram!("garivini_claim_round_seconds").record(took.as_secs_f64());
}

pub(crate) fn dispatched_by(role: &'static str, n: usize) {
    metrics::counter!("garivini_jobs_dispatched_total", "role" => role).increment(n as u64);
}

pub(crate) fn completed(n: u64) {
    metrics::counter!("garivini_jobs_completed_total").increment(n);
}

pub(crate) fn failed(dead: bool) {
    if dead {
        metrics::counter!("garivini_jobs_dead_total").increment(1);
    } else {
        metrics::counter!("garivini_jobs_failed_total").increment(1);
    }
}

pub(crate) fn parked(n: usize) {
    if n > 0 {
        metrics::counter!("garivini_rows_parked_total").increment(n as u64);
    }
}

pub(crate) fn stale_copy() {
    metrics::counter!("garivini_stale_copies_total").increment(1);
}

pub(crate) fn controller_job(took: Duration) {
    metrics::histogram!("garivini_controller_job_seconds").record(took.as_secs_f64());
}

pub(crate) fn queue_depth(function: &str, depth: u64) {
    metrics::gauge!("garivini_gearmand_queue_depth", "function" => function.to_string())
        .set(depth as f64);
}

pub(crate) fn due_rows(dbid: u32, rows: u64) {
    metrics::gauge!("garivini_due_rows", "db" => dbid.to_string()).set(rows as f64);
}

pub(crate) fn completions_missed(dbid: u32, n: u64) {
    metrics::counter!("garivini_completions_missed_total", "db" => dbid.to_string()).increment(n);
}

pub(crate) fn node_moved(dbid: u32) {
    metrics::counter!("garivini_node_moves_total", "db" => dbid.to_string()).increment(1);
}

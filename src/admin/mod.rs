//! Operating a deployment: the report behind `garivini status` and the job
//! commands behind `garivini jobs` (list, show, retry, cancel) and
//! `garivini functions` (pause, resume, list). Everything
//! here builds plain values that serialize to JSON; the binary formats
//! them for people.
//!
//! On a table without our history columns (`attempted_at`, `failed_at`:
//! the original's schema) "in flight" is an approximation, stated wherever
//! it is shown: a dispatched row is one whose `run_after` was moved to
//! now plus the lease, so a row counts as in flight when it is due within
//! the next `lease` seconds; a row delayed or backed off by less than the lease
//! counts too. With them it is exact (leased, lease not run out, not
//! failed since), and a failed row waiting out its backoff is "retrying".
//! See [`Selection`](crate::store::Selection).
//!
//! One file per command family: `status` (the report), `jobs` (listing,
//! show and the guarded changes) and `pause` (pause, resume and what is
//! paused). Every item is re-exported here: callers name `admin::X`.

mod jobs;
mod pause;
mod status;

pub use crate::store::{Counts, FunctionStatus, JobState, ListQuery};
pub use crate::waiting::{Limits, WaitReason};
pub use jobs::{
    cancel, cancel_function, dead_rows, list, list_page, purge_dead, retry, retry_dead, show,
    Cursor, FunctionCancel, Guard, ListPage, ListedJob, Shown, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT,
};
pub use pause::{pause, paused, resume, PauseReport, Paused, PausedReport};
pub use status::{status, DbStatus, GearmandFunction, GearmandStatus, Status};

/// A unix time as people read it, `2026-01-02 03:04:05 UTC`: what
/// `garivini status` / `jobs` and the web pages show. A time past what
/// chrono can hold (after the year 262143) is shown as its number.
pub fn utc_date(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .map_or_else(
            || format!("{unix} (unix time)"),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

//! The job commands behind `garivini jobs`: listing (whole or paged by
//! [`Cursor`]), showing one row, and the guarded changes (retry, cancel,
//! and the dead-row and per-function variants).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Counts, JobState, ListQuery};
use crate::error::{Error, Result};
use crate::job::JobRef;
use crate::job::{unsendable_funcname, Job, NewJob, MAX_FUNCNAME_LEN};
use crate::store::{After, Change, History, Listed, Page, Store};

/// Rows `jobs list` shows unless told otherwise.
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// Most rows one `jobs list` shows.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// One row of a listing.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct ListedJob {
    /// `DBID:JOBID`.
    pub id: String,
    /// Database id.
    pub dbid: u32,
    /// Row id.
    pub jobid: u64,
    /// The function.
    pub funcname: String,
    /// Its state.
    pub state: JobState,
    /// Unix time it is due (2147483647 = never).
    pub run_after: u32,
    /// Seconds until it is due (negative: overdue by that long); `None`
    /// when dead.
    pub due_in_secs: Option<i64>,
    /// Failures so far.
    pub failcount: u8,
    /// Dedup key.
    pub uniqkey: Option<String>,
    /// `shim` or `controller`.
    pub flag: crate::job::Flag,
    /// Length of the arg, in bytes.
    pub arg_bytes: u64,
    /// The arg's first bytes, as text (invalid UTF-8 replaced).
    pub arg_preview: String,
    /// Why the row cannot be dispatched as it is, if it cannot (the first
    /// claim that meets it parks it, dead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsendable: Option<String>,
    /// What happened to it (`created_at`, `attempted_at`, `failed_at`,
    /// `last_error`), where the table has the history columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

fn due_in(state: JobState, run_after: u32, now: u32) -> Option<i64> {
    (state != JobState::Dead).then(|| i64::from(run_after) - i64::from(now))
}

impl ListedJob {
    fn new(listed: Listed, now: u32, lease: u32) -> ListedJob {
        let job = listed.job;
        let state = JobState::of_job(&job, listed.history.as_ref(), now, lease);
        ListedJob {
            id: JobRef::from(&job).to_string(),
            dbid: job.dbid,
            jobid: job.jobid,
            state,
            run_after: job.run_after,
            due_in_secs: due_in(state, job.run_after, now),
            failcount: job.failcount,
            flag: job.flag,
            arg_bytes: listed.arg_len,
            arg_preview: String::from_utf8_lossy(&job.arg).into_owned(),
            unsendable: listed.unsendable,
            history: listed.history,
            uniqkey: job.uniqkey,
            funcname: job.funcname,
        }
    }
}

impl ListQuery {
    /// Refuses a limit out of range or a function name no row can have.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_LIST_LIMIT).contains(&self.limit) {
            return Err(Error::InvalidConfig {
                name: "limit",
                reason: format!("must be 1 to {MAX_LIST_LIMIT}, not {}", self.limit),
            });
        }
        // Any name a row can have: rows written by SQL are not held to
        // what a new job may be named.
        match &self.funcname {
            Some(f) if f.is_empty() => return Err(Error::EmptyFuncname),
            Some(f) if f.len() > MAX_FUNCNAME_LEN => {
                return Err(Error::FuncnameTooLong {
                    len: f.len(),
                    max: MAX_FUNCNAME_LEN,
                })
            }
            _ => {}
        }
        Ok(())
    }
}

/// Up to `limit` rows over all databases, soonest due first (then by
/// database and id).
pub async fn list(store: &Store, query: &ListQuery) -> Result<Vec<ListedJob>> {
    query.validate()?;
    let mut all = Vec::new();
    for dbid in store.dbids() {
        let (now, rows) = store.list(dbid, query).await?;
        all.extend(
            rows.into_iter()
                .map(|r| ListedJob::new(r, now, query.lease)),
        );
    }
    all.sort_by_key(|j| (j.run_after, j.dbid, j.jobid));
    all.truncate(query.limit);
    Ok(all)
}

/// A position in a paged listing over every database: the last row of
/// the page before, written `RUN_AFTER.FAILCOUNT.DBID.JOBID`. The order of
/// pages is `(run_after, failcount, dbid, jobid)` with a function named,
/// `(run_after, dbid, jobid)` without (its failcount then counts for
/// nothing): the order of the indexes each database reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cursor {
    /// Due time of the last row seen.
    pub run_after: u32,
    /// Its failcount.
    pub failcount: u8,
    /// Its database.
    pub dbid: u32,
    /// Its id.
    pub jobid: u64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Cursor {
            run_after,
            failcount,
            dbid,
            jobid,
        } = self;
        write!(f, "{run_after}.{failcount}.{dbid}.{jobid}")
    }
}

impl std::str::FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Cursor> {
        let bad = || Error::InvalidConfig {
            name: "after",
            reason: format!("{s:?} is not a page cursor (RUN_AFTER.FAILCOUNT.DBID.JOBID)"),
        };
        let parts: Vec<&str> = s.split('.').collect();
        let [run_after, failcount, dbid, jobid] = parts[..] else {
            return Err(bad());
        };
        Ok(Cursor {
            run_after: run_after.parse().map_err(|_| bad())?,
            failcount: failcount.parse().map_err(|_| bad())?,
            dbid: dbid.parse().map_err(|_| bad())?,
            jobid: jobid.parse().map_err(|_| bad())?,
        })
    }
}

/// One page of a listing, and where the next one starts.
#[derive(Debug, Clone, Serialize)]
pub struct ListPage {
    /// The rows, in page order.
    pub jobs: Vec<ListedJob>,
    /// The cursor of the next page; `None` when this one is the last.
    pub next: Option<Cursor>,
}

/// Up to `query.limit` rows over all databases after `after` (from the
/// first when `None`), of unique keys starting with `uniqkey_prefix` if
/// given: keyset paging, so that a deep page costs what the first does
/// (see [`Cursor`] for the order).
pub async fn list_page(
    store: &Store,
    query: &ListQuery,
    uniqkey_prefix: Option<&str>,
    after: Option<Cursor>,
) -> Result<ListPage> {
    query.validate()?;
    let by_func = query.funcname.is_some();
    let mut all = Vec::new();
    for dbid in store.dbids() {
        let page = Page {
            after: after.map(|c| After {
                run_after: c.run_after,
                failcount: if by_func { c.failcount } else { 0 },
                jobid: match dbid.cmp(&c.dbid) {
                    std::cmp::Ordering::Equal => c.jobid,
                    std::cmp::Ordering::Greater => 0,
                    std::cmp::Ordering::Less => u64::MAX,
                },
            }),
            uniqkey_prefix: uniqkey_prefix.map(str::to_string),
        };
        let (now, rows) = store.list_page(dbid, query, &page).await?;
        all.extend(
            rows.into_iter()
                .map(|r| ListedJob::new(r, now, query.lease)),
        );
    }
    let key = |j: &ListedJob| {
        let failcount = if by_func { j.failcount } else { 0 };
        (j.run_after, failcount, j.dbid, j.jobid)
    };
    all.sort_by_key(key);
    all.truncate(query.limit);
    let next = (all.len() == query.limit)
        .then(|| all.last())
        .flatten()
        .map(|j| Cursor {
            run_after: j.run_after,
            failcount: j.failcount,
            dbid: j.dbid,
            jobid: j.jobid,
        });
    Ok(ListPage { jobs: all, next })
}

/// One row in full (`jobs show`).
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    /// `DBID:JOBID`.
    pub id: String,
    /// Its state.
    pub state: JobState,
    /// Whether it has failed before (failcount > 0).
    pub failing: bool,
    /// The database's clock when read.
    pub now: u32,
    /// Seconds until it is due (negative: overdue); `None` when dead.
    pub due_in_secs: Option<i64>,
    /// Length of the arg, in bytes.
    pub arg_bytes: usize,
    /// Why the row cannot be dispatched as it is, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsendable: Option<String>,
    /// What happened to it, where the table has the history columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// The job JSON a worker receives for it.
    pub job: serde_json::Value,
    /// The same, byte for byte as a worker receives it (field order kept).
    #[serde(skip)]
    pub job_json: String,
}

/// Reads one row; [`Error::UnknownJobs`] when there is none.
pub async fn show(store: &Store, id: JobRef, lease: u32) -> Result<Shown> {
    let (now, jobs) = store.get_many_with_history(id.dbid, &[id.jobid]).await?;
    let (job, history): (Job, Option<History>) = jobs
        .into_iter()
        .next()
        .ok_or_else(|| Error::UnknownJobs { jobs: vec![id] })?;
    let state = JobState::of_job(&job, history.as_ref(), now, lease);
    let json = job.to_json();
    Ok(Shown {
        id: id.to_string(),
        state,
        failing: job.failcount > 0 && state != JobState::Dead,
        now,
        due_in_secs: due_in(state, job.run_after, now),
        arg_bytes: job.arg.len(),
        unsendable: unsendable_funcname(&job.funcname),
        history,
        job: serde_json::from_slice(&json).expect("the job JSON is JSON"),
        job_json: String::from_utf8(json).expect("JSON is UTF-8"),
    })
}

/// How a change by id treats rows in flight.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// The lease window, in seconds.
    pub lease: u32,
    /// Change rows in flight too.
    pub force: bool,
}

/// Ids by database, each database's ids sorted and once.
fn by_db(ids: &[JobRef]) -> BTreeMap<u32, Vec<u64>> {
    let mut map: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for id in ids {
        map.entry(id.dbid).or_default().push(id.jobid);
    }
    for v in map.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    map
}

/// Checks, before anything changes, that every id has a row and (unless
/// forced) none is in flight; refuses the whole command otherwise.
async fn preflight(store: &Store, ids: &BTreeMap<u32, Vec<u64>>, guard: Guard) -> Result<()> {
    let (mut missing, mut in_flight) = (Vec::new(), Vec::new());
    for (&dbid, jobids) in ids {
        let (now, rows) = store.get_many_with_history(dbid, jobids).await?;
        let found: std::collections::HashMap<u64, &(Job, Option<History>)> =
            rows.iter().map(|row| (row.0.jobid, row)).collect();
        for &jobid in jobids {
            match found.get(&jobid) {
                None => missing.push(JobRef { dbid, jobid }),
                Some((job, history))
                    if !guard.force
                        && JobState::of_job(job, history.as_ref(), now, guard.lease)
                            == JobState::InFlight =>
                {
                    in_flight.push(JobRef { dbid, jobid })
                }
                Some(_) => {}
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::UnknownJobs { jobs: missing });
    }
    if !in_flight.is_empty() {
        return Err(Error::JobsInFlight {
            jobs: in_flight,
            lease: guard.lease,
        });
    }
    Ok(())
}

/// Turns a database's refusal (a row that changed between the check and
/// the change) into the error the check would have given.
fn refused(dbid: u32, change: Change, lease: u32) -> Result<Vec<JobRef>> {
    let refs = |ids: Vec<u64>| -> Vec<JobRef> {
        ids.into_iter()
            .map(|jobid| JobRef { dbid, jobid })
            .collect()
    };
    if !change.missing.is_empty() {
        return Err(Error::UnknownJobs {
            jobs: refs(change.missing),
        });
    }
    if !change.in_flight.is_empty() {
        return Err(Error::JobsInFlight {
            jobs: refs(change.in_flight),
            lease,
        });
    }
    Ok(refs(change.changed))
}

/// Makes the rows due now (`jobs retry`), keeping their failcount unless
/// `reset_failcount`. Refuses the whole command, changing nothing, when an
/// id has no row or (unless forced) a row is in flight: a second dispatch
/// of a row a worker is running would run it twice. Each database's rows
/// change in one transaction; a row that changes state between the check
/// and its database's turn fails the command there, and databases before
/// it keep their change.
pub async fn retry(
    store: &Store,
    ids: &[JobRef],
    reset_failcount: bool,
    guard: Guard,
) -> Result<Vec<JobRef>> {
    let ids = by_db(ids);
    preflight(store, &ids, guard).await?;
    let lock_guard = (!guard.force).then_some(guard.lease);
    let mut done = Vec::new();
    for (dbid, jobids) in ids {
        let change = store
            .retry(dbid, &jobids, reset_failcount, lock_guard)
            .await?;
        done.extend(refused(dbid, change, guard.lease)?);
    }
    Ok(done)
}

/// Deletes the rows (`jobs cancel`), with the same checks as [`retry`]:
/// deleting an in-flight row does not stop a worker running it.
pub async fn cancel(store: &Store, ids: &[JobRef], guard: Guard) -> Result<Vec<JobRef>> {
    let ids = by_db(ids);
    preflight(store, &ids, guard).await?;
    let lock_guard = (!guard.force).then_some(guard.lease);
    let mut done = Vec::new();
    for (dbid, jobids) in ids {
        let change = store.cancel(dbid, &jobids, lock_guard).await?;
        done.extend(refused(dbid, change, guard.lease)?);
    }
    Ok(done)
}

/// Dead rows per (database id, function), of `funcname` only if given:
/// what `retry_dead` or `purge_dead` would change (`--dry-run`).
pub async fn dead_rows(store: &Store, funcname: Option<&str>) -> Result<Vec<(u32, String, u64)>> {
    let mut out = Vec::new();
    for dbid in store.dbids() {
        for (f, n) in store.dead_by_function(dbid).await? {
            if funcname.is_none_or(|want| want == f) {
                out.push((dbid, f, n));
            }
        }
    }
    Ok(out)
}

/// Makes every dead row of `funcname` due now, in every database
/// (`jobs retry --dead --funcname F`); returns how many per database id.
pub async fn retry_dead(
    store: &Store,
    funcname: &str,
    reset_failcount: bool,
) -> Result<Vec<(u32, u64)>> {
    NewJob::new(funcname, "").validate()?;
    let mut out = Vec::new();
    for dbid in store.dbids() {
        out.push((
            dbid,
            store.retry_dead(dbid, funcname, reset_failcount).await?,
        ));
    }
    Ok(out)
}

/// Deletes every dead row of `funcname`, in every database; returns how
/// many per database id. A dead row is never leased: no worker runs it.
pub async fn purge_dead(store: &Store, funcname: &str) -> Result<Vec<(u32, u64)>> {
    NewJob::new(funcname, "").validate()?;
    let mut out = Vec::new();
    for dbid in store.dbids() {
        out.push((dbid, store.purge_dead(dbid, funcname).await?));
    }
    Ok(out)
}

/// What `jobs cancel --funcname F` did (or, with `--dry-run`, would do)
/// in one database.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct FunctionCancel {
    /// Database id.
    pub dbid: u32,
    /// The function's rows by state, as counted before anything was
    /// deleted (`due`, `scheduled` and `retrying` are what a cancel
    /// deletes, `in_flight` too with `force`; `dead` rows are kept:
    /// `jobs cancel --dead` deletes them).
    pub before: Counts,
    /// Rows deleted (none in a dry run; with one, what would be).
    pub cancelled: u64,
    /// Rows in flight left in place: a worker may be running them, and
    /// deleting a row does not stop it (`force` deletes them too). Counted
    /// after the deletions.
    pub in_flight_left: u64,
}

/// Deletes every live (not dead) row of `funcname` in every database
/// (`jobs cancel --funcname F`): due, scheduled and retrying ones, and the
/// rows in flight only if `guard.force` (they are left, and counted, when
/// not). With `dry_run` it counts them by state and deletes nothing. In
/// bounded chunks, each committed on its own (see [`Store::cancel_live`]):
/// a failure part way keeps what was deleted before it.
pub async fn cancel_function(
    store: &Store,
    funcname: &str,
    guard: Guard,
    dry_run: bool,
) -> Result<Vec<FunctionCancel>> {
    NewJob::new(funcname, "").validate()?;
    let mut out = Vec::new();
    for dbid in store.dbids() {
        let before = store.count_function(dbid, funcname, guard.lease).await?;
        let deletable = before.due + before.scheduled + before.retrying;
        let (cancelled, in_flight_left) = match (dry_run, guard.force) {
            (true, true) => (deletable + before.in_flight, 0),
            (true, false) => (deletable, before.in_flight),
            (false, force) => {
                let cancelled = store
                    .cancel_live(dbid, funcname, guard.lease, force)
                    .await?;
                let after = store.count_function(dbid, funcname, guard.lease).await?;
                (cancelled, after.in_flight)
            }
        };
        out.push(FunctionCancel {
            dbid,
            before,
            cancelled,
            in_flight_left,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Selection;

    #[test]
    fn states_split_at_now_the_lease_and_never() {
        let now = 1_000_000;
        assert_eq!(JobState::of(now, now, 100), JobState::Due);
        assert_eq!(JobState::of(now - 5, now, 100), JobState::Due);
        assert_eq!(JobState::of(now + 1, now, 100), JobState::InFlight);
        assert_eq!(JobState::of(now + 100, now, 100), JobState::InFlight);
        assert_eq!(JobState::of(now + 101, now, 100), JobState::Scheduled);
        assert_eq!(JobState::of(crate::job::NEVER, now, 100), JobState::Dead);
        assert_eq!(JobState::of(u32::MAX, now, 100), JobState::Dead);
    }

    #[test]
    fn job_ids_read_as_dbid_colon_jobid() {
        let id: JobRef = "2:42".parse().unwrap();
        assert_eq!((id.dbid, id.jobid), (2, 42));
        assert_eq!(id.to_string(), "2:42");
        for bad in ["42", "0:1", "1:", ":1", "1:x", "1:2:3", "-1:2", ""] {
            let err = bad.parse::<JobRef>().unwrap_err();
            assert!(
                matches!(err, Error::InvalidJobId { ref id } if id == bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_page_cursor_reads_back_as_written() {
        let c = Cursor {
            run_after: 1_790_000_000,
            failcount: 3,
            dbid: 2,
            jobid: 42,
        };
        assert_eq!(c.to_string(), "1790000000.3.2.42");
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        for bad in ["", "1.2.3", "1.2.3.4.5", "a.0.1.1", "1.300.1.1"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_limit_or_funcname_is_refused() {
        let q = |limit, funcname: Option<&str>| ListQuery {
            funcname: funcname.map(str::to_string),
            selection: Selection::All,
            lease: 10,
            limit,
        };
        assert!(q(1, Some("f")).validate().is_ok());
        assert!(matches!(
            q(0, None).validate(),
            Err(Error::InvalidConfig { name: "limit", .. })
        ));
        assert!(matches!(
            q(5, Some("")).validate(),
            Err(Error::EmptyFuncname)
        ));
    }
}

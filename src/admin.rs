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

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gearman::FunctionLoad;
use crate::job::JobRef;
use crate::job::{unsendable_funcname, Job, NewJob, MAX_FUNCNAME_LEN};
use crate::store::{After, Change, History, Listed, Page, Store};
pub use crate::store::{Counts, FunctionStatus, JobState, ListQuery};
pub use crate::waiting::{Limits, WaitReason};

/// Rows `jobs list` shows unless told otherwise.
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// Most rows one `jobs list` shows.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// One database's part of the report.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct DbStatus {
    /// Database id.
    pub dbid: u32,
    /// Its URL, password masked.
    pub dsn: String,
    /// Its clock (unix time) when counted; `None` if it did not answer.
    pub now: Option<u32>,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
    /// Whether its table has the history columns (`attempted_at`,
    /// `failed_at`): its in flight is then exact and it counts retrying
    /// rows; without them, in flight is the lease-window approximation.
    pub history: bool,
    /// Per function, by name.
    pub functions: Vec<FunctionStatus>,
    /// The sum over its functions.
    pub total: Counts,
}

/// One function as one gearmand sees it (admin `status`).
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GearmandFunction {
    /// The function.
    pub funcname: String,
    /// Jobs queued or running: the depth the watermark compares.
    pub depth: u64,
    /// Jobs running.
    pub running: u64,
    /// Workers registered.
    pub workers: u64,
}

/// One gearmand's part of the report.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct GearmandStatus {
    /// Its `host:port`.
    pub server: String,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
    /// Per function, by name.
    pub functions: Vec<GearmandFunction>,
}

/// The whole deployment on one screen (`garivini status`).
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The lease window that tells in flight from scheduled, in seconds.
    pub lease: u32,
    /// Each database, by id.
    pub databases: Vec<DbStatus>,
    /// Each gearmand, in the order configured.
    pub gearmand: Vec<GearmandStatus>,
    /// Functions with rows waiting (due, in flight or scheduled) and no
    /// worker registered on any gearmand that answered: their rows wait
    /// in the database (the QueueRunner holds them back). Empty when no
    /// gearmand was given or none answered.
    pub without_worker: Vec<String>,
    /// Paused functions (`garivini functions pause`): their jobs wait in
    /// the database until resumed.
    pub paused: PausedReport,
}

impl Status {
    /// One line per database or gearmand that could not be read.
    /// (Each names its database or server.)
    pub fn errors(&self) -> Vec<String> {
        let dbs = self.databases.iter().filter_map(|db| db.error.clone());
        let servers = self.gearmand.iter().filter_map(|g| g.error.clone());
        dbs.chain(servers).collect()
    }
}

/// Reads every database and every gearmand at once. A source that fails
/// is reported in its section (see [`Status::errors`]), not as an error:
/// the rest of the screen is still worth having. Each function with due
/// rows says why they wait ([`FunctionStatus::waiting`]), as the
/// QueueRunner running with `limits` decides.
pub async fn status(store: &Store, gearmand: &[String], lease: u32, limits: &Limits) -> Status {
    let dbs = futures::future::join_all(store.dbids().map(|dbid| db_status(store, dbid, lease)));
    let servers = futures::future::join_all(gearmand.iter().map(|server| async move {
        match crate::gearman::server_status(server).await {
            Ok(rows) => {
                let mut functions: Vec<GearmandFunction> = rows
                    .into_iter()
                    .map(|(funcname, load)| GearmandFunction {
                        funcname,
                        depth: load.queued,
                        running: load.running,
                        workers: load.workers,
                    })
                    .collect();
                functions.sort_by(|a, b| a.funcname.cmp(&b.funcname));
                GearmandStatus {
                    server: server.clone(),
                    error: None,
                    functions,
                }
            }
            Err(e) => GearmandStatus {
                server: server.clone(),
                error: Some(e.to_string()),
                functions: Vec::new(),
            },
        }
    }));
    let (mut databases, gearmand, paused) = futures::join!(dbs, servers, paused(store));
    let without_worker = without_worker(&databases, &gearmand);
    let load = load_of(&gearmand);
    for db in &mut databases {
        for f in &mut db.functions {
            if f.counts.due > 0 {
                let is_paused = paused.functions.iter().any(|p| p.funcname == f.funcname);
                f.waiting = limits.reason(&f.funcname, is_paused, load.as_ref());
            }
        }
    }
    Status {
        lease,
        databases,
        gearmand,
        without_worker,
        paused,
    }
}

/// The load of each function summed over the gearmand servers that
/// answered; `None` if none did.
fn load_of(gearmand: &[GearmandStatus]) -> Option<HashMap<String, FunctionLoad>> {
    if !gearmand.iter().any(|g| g.error.is_none()) {
        return None;
    }
    let mut load: HashMap<String, FunctionLoad> = HashMap::new();
    for f in gearmand.iter().flat_map(|g| &g.functions) {
        let l = load.entry(f.funcname.clone()).or_default();
        l.queued += f.depth;
        l.running += f.running;
        l.workers += f.workers;
    }
    Some(load)
}

/// See [`Status::without_worker`].
fn without_worker(databases: &[DbStatus], gearmand: &[GearmandStatus]) -> Vec<String> {
    if !gearmand.iter().any(|g| g.error.is_none()) {
        return Vec::new();
    }
    let served: std::collections::HashSet<&str> = gearmand
        .iter()
        .flat_map(|g| &g.functions)
        .filter(|f| f.workers > 0)
        .map(|f| f.funcname.as_str())
        .collect();
    let waiting: std::collections::BTreeSet<&str> = databases
        .iter()
        .flat_map(|db| &db.functions)
        .filter(|f| f.counts.due + f.counts.in_flight + f.counts.scheduled > 0)
        .map(|f| f.funcname.as_str())
        .filter(|f| !served.contains(f))
        .collect();
    waiting.into_iter().map(str::to_string).collect()
}

async fn db_status(store: &Store, dbid: u32, lease: u32) -> DbStatus {
    let dsn = store.masked_dsn(dbid).unwrap_or_default();
    match store.count_by_function(dbid, lease).await {
        Ok((now, functions)) => {
            let mut total = Counts::default();
            for f in &functions {
                total.add(&f.counts);
            }
            DbStatus {
                dbid,
                dsn,
                now: Some(now),
                error: None,
                // Read by the count just made: no second round trip.
                history: store.has_history(dbid).await.unwrap_or(false),
                functions,
                total,
            }
        }
        Err(e) => DbStatus {
            dbid,
            dsn,
            now: None,
            error: Some(e.to_string()),
            history: false,
            functions: Vec::new(),
            total: Counts::default(),
        },
    }
}

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

/// A paused function across the databases (`garivini functions list`,
/// `garivini status`): its due jobs wait in the table until it is resumed.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Paused {
    /// The function.
    pub funcname: String,
    /// When it was paused: the earliest over the databases (unix time).
    pub since: u32,
    /// The databases that hold its pause (a pause on any one holds for
    /// all).
    pub databases: Vec<u32>,
}

/// Every paused function, by name, and the databases that could not say.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct PausedReport {
    /// The paused functions, by name.
    pub functions: Vec<Paused>,
    /// Databases without the `garivini_paused` table: nothing is paused
    /// there (`garivini schema check --apply` creates it).
    pub without_table: Vec<u32>,
    /// Databases that could not be read, one line each.
    pub errors: Vec<String>,
}

/// Reads the paused functions of every database at once.
pub async fn paused(store: &Store) -> PausedReport {
    let reads = futures::future::join_all(
        store
            .dbids()
            .map(|dbid| async move { (dbid, store.list_paused(dbid).await) }),
    )
    .await;
    let mut report = PausedReport::default();
    let mut by_name: BTreeMap<String, Paused> = BTreeMap::new();
    for (dbid, read) in reads {
        match read {
            Ok(Some(rows)) => {
                for row in rows {
                    let entry = by_name
                        .entry(row.funcname.clone())
                        .or_insert_with(|| Paused {
                            funcname: row.funcname,
                            since: row.since,
                            databases: Vec::new(),
                        });
                    entry.since = entry.since.min(row.since);
                    entry.databases.push(dbid);
                }
            }
            Ok(None) => report.without_table.push(dbid),
            Err(err) => report.errors.push(err.to_string()),
        }
    }
    report.functions = by_name.into_values().collect();
    report
}

/// What `garivini functions pause` or `resume` did, per database.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct PauseReport {
    /// The function.
    pub funcname: String,
    /// Databases where it was paused (or resumed) now.
    pub changed: Vec<u32>,
    /// Databases where it was so already.
    pub unchanged: Vec<u32>,
    /// Databases without the `garivini_paused` table: nothing changed there.
    pub without_table: Vec<u32>,
    /// Databases that failed, one line each.
    pub errors: Vec<String>,
}

/// Pauses `funcname` on every database: the roles stop dispatching its
/// jobs within a couple of seconds (they stay due in the table). A name
/// [`check_funcname`](crate::job::check_funcname) refuses changes nothing.
pub async fn pause(store: &Store, funcname: &str) -> Result<PauseReport> {
    crate::job::check_funcname(funcname)?;
    let changes = futures::future::join_all(
        store
            .dbids()
            .map(|dbid| async move { (dbid, store.pause_function(dbid, funcname).await) }),
    )
    .await;
    Ok(pause_report(funcname, changes))
}

/// Resumes `funcname` on every database (as [`pause`] pauses it): its
/// waiting jobs run within a couple of seconds.
pub async fn resume(store: &Store, funcname: &str) -> Result<PauseReport> {
    crate::job::check_funcname(funcname)?;
    let changes = futures::future::join_all(
        store
            .dbids()
            .map(|dbid| async move { (dbid, store.resume_function(dbid, funcname).await) }),
    )
    .await;
    Ok(pause_report(funcname, changes))
}

fn pause_report(
    funcname: &str,
    changes: Vec<(u32, Result<crate::store::functions::PauseChange>)>,
) -> PauseReport {
    use crate::store::functions::PauseChange;
    let mut report = PauseReport {
        funcname: funcname.to_string(),
        ..PauseReport::default()
    };
    for (dbid, change) in changes {
        match change {
            Ok(PauseChange::Changed) => report.changed.push(dbid),
            Ok(PauseChange::Unchanged) => report.unchanged.push(dbid),
            Ok(PauseChange::NoTable) => report.without_table.push(dbid),
            Err(err) => report.errors.push(err.to_string()),
        }
    }
    report
}

/// A unix time as people read it, `2026-01-02 03:04:05 UTC` (the civil
/// date from days, after Howard Hinnant's algorithm): what `garivini
/// status` / `jobs` and the web pages show.
pub fn utc_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
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

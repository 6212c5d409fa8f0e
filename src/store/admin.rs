//! What the admin commands (`garivini status`, `garivini jobs`) read and
//! change: counts by function and state, listings, guarded retries and
//! cancels.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

use super::history::History;
use super::rows::{columns, db_now, in_list, levels, priority, RawRow, MAX_IN_LIST};
use super::{tx_opts, Store};
use crate::error::Result;
use serde::Serialize;

use crate::job::{Job, NEVER};

/// Which rows a count or a listing means, relative to the database's now
/// and a lease window of `lease` seconds. The four states partition the
/// table; failing cuts across them.
///
/// On a table without our `attempted_at` and `failed_at` columns (the
/// original's), a row a QueueRunner, Injector or Controller has
/// dispatched has `run_after = now + lease`, just as a row delayed by
/// that long. So "in flight" is *run_after within the next `lease`
/// seconds*: every leased row (while its lease holds) is in it, and so is
/// any row delayed, backed off or pushed back by less than the lease; and
/// nothing is retrying.
///
/// With them, a row is *retrying* when our Client or Controller recorded
/// its failure (`failed_at`) and it is not due yet, and *in flight* when it
/// was leased (`attempted_at`; or, never attempted, it has flag
/// `controller`: an Injector stores its rows leased) and its lease has not
/// run out (due within `lease` seconds, not failed since). A row delayed
/// at insert is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every row.
    All,
    /// `run_after <= now`: waiting for a QueueRunner.
    Due,
    /// `now < run_after <= now + lease` (leased, or due again soon); with
    /// the history columns, only rows leased and not failed since.
    InFlight,
    /// Not due, not dead, and neither in flight nor retrying.
    Scheduled,
    /// Not due, not dead, failed before (`failcount > 0`) and not in
    /// flight: waiting out its backoff for the next try, however the
    /// failure was recorded (by our Client, our Controller, or a foreign
    /// worker's plain UPDATE). None without the history columns, which
    /// tell a row leased again from one waiting.
    Retrying,
    /// `run_after >= NEVER`: given up, kept for inspection.
    Dead,
    /// `failcount > 0` and not dead.
    Failing,
}

impl Selection {
    /// The WHERE condition, whose `?`s [`Selection::params`] binds, on a
    /// table with (`history`) or without the history columns.
    fn condition(self, history: bool) -> String {
        if history {
            let waiting = format!("run_after > ? AND run_after < {NEVER}");
            match self {
                Selection::InFlight => {
                    return format!(
                        "run_after > ? AND run_after <= ? AND {NOT_FAILED} AND {LEASED}"
                    )
                }
                Selection::Scheduled => {
                    return format!(
                        "{waiting} AND failcount = 0 \
                         AND NOT (run_after <= ? AND {NOT_FAILED} AND {LEASED})"
                    )
                }
                Selection::Retrying => {
                    return format!(
                        "{waiting} AND failcount > 0 \
                         AND NOT (run_after <= ? AND {NOT_FAILED} AND {LEASED})"
                    )
                }
                _ => {}
            }
        }
        match self {
            Selection::Retrying => "FALSE".into(),
            Selection::All => "TRUE".into(),
            Selection::Due => "run_after <= ?".into(),
            Selection::InFlight => "run_after > ? AND run_after <= ?".into(),
            Selection::Scheduled => format!("run_after > ? AND run_after < {NEVER}"),
            Selection::Dead => format!("run_after >= {NEVER}"),
            Selection::Failing => format!("failcount > 0 AND run_after < {NEVER}"),
        }
    }

    fn params(self, now: u32, lease: u32, history: bool) -> Vec<Value> {
        let until = Value::from(u64::from(now) + u64::from(lease));
        match self {
            Selection::All | Selection::Dead | Selection::Failing => vec![],
            Selection::Retrying if !history => vec![],
            Selection::Due => vec![Value::from(now)],
            Selection::InFlight => vec![Value::from(now), until],
            Selection::Scheduled if !history => vec![until],
            Selection::Scheduled | Selection::Retrying => vec![Value::from(now), until],
        }
    }
}

/// With the history columns: a row whose attempt started (a claim's lease,
/// an Injector's dispatch, a Controller's start). A row stored and never
/// attempted is not in flight, whoever is to complete it.
pub(super) const LEASED: &str = "attempted_at > 0";
/// Not failed since its last lease. 0 is "not set": the columns are NOT
/// NULL DEFAULT 0, so that a lease rewrites them in place (a NULL made a
/// value grows the row, which InnoDB cannot do in place: the claim cost
/// ~45 % more per job); NULL, in a column made nullable by hand, too.
pub(super) const NOT_FAILED: &str = "COALESCE(failed_at, 0) = 0";

/// A row's state, as listings and `show` name it.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Due now.
    Due,
    /// Due within the lease window (leased, or due again soon).
    InFlight,
    /// Due later than the lease window; with the history columns, any
    /// row not due, not leased and not failed (delayed, rescheduled).
    Scheduled,
    /// Failed before, waiting out its backoff for the next try: nothing
    /// runs it now. Only with the history columns.
    Retrying,
    /// Never runs again unless retried.
    Dead,
}

impl JobState {
    /// The state of a row due at `run_after`, at `now`, for a lease window
    /// of `lease` seconds: the same bounds as the SQL of [`Selection`].
    pub fn of(run_after: u32, now: u32, lease: u32) -> JobState {
        let (run_after, now) = (u64::from(run_after), u64::from(now));
        if run_after >= u64::from(NEVER) {
            JobState::Dead
        } else if run_after <= now {
            JobState::Due
        } else if run_after <= now + u64::from(lease) {
            JobState::InFlight
        } else {
            JobState::Scheduled
        }
    }

    /// The state of `job` at `now`, for a lease window of `lease`
    /// seconds, given its `history` (`None`: the table has no history
    /// columns, and [`JobState::of`] says): the same bounds as the SQL of
    /// [`Selection`].
    pub fn of_job(job: &Job, history: Option<&History>, now: u32, lease: u32) -> JobState {
        let state = JobState::of(job.run_after, now, lease);
        let Some(h) = history else {
            return state;
        };
        let leased = h.attempted_at.is_some();
        match state {
            JobState::Due | JobState::Dead => state,
            JobState::InFlight if leased && h.failed_at.is_none() => JobState::InFlight,
            _ if job.failcount > 0 => JobState::Retrying,
            _ => JobState::Scheduled,
        }
    }

    /// How people read it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Due => "due",
            JobState::InFlight => "in flight",
            JobState::Scheduled => "scheduled",
            JobState::Retrying => "retrying",
            JobState::Dead => "dead",
        }
    }
}

/// Rows of one function (or of a whole database) by state.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Due now, waiting for a QueueRunner.
    pub due: u64,
    /// Due within the lease window: leased (dispatched), or due again soon.
    pub in_flight: u64,
    /// Due later than the lease window (with the history columns: not
    /// leased, not failed).
    pub scheduled: u64,
    /// Failed, waiting out the backoff (only with the history columns).
    pub retrying: u64,
    /// Given up (run_after = never), kept for inspection.
    pub dead: u64,
    /// failcount > 0 and not dead (also counted in their state).
    pub failing: u64,
    /// Seconds since the oldest due row became due; `None` when none is.
    pub oldest_due_secs: Option<u64>,
    /// The counts above that are lower bounds, by field name (`due`,
    /// `dead`, ...), in name order: the range held more rows than a status
    /// counts one by one (see [`Store::count_by_function`]), and its
    /// count is how many it counted. A count of 0 is never named (the
    /// rows counted held none of that state). Empty: all exact.
    pub at_least: Vec<String>,
}

impl Counts {
    /// Adds another function's (or database's) counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.due += other.due;
        self.in_flight += other.in_flight;
        self.scheduled += other.scheduled;
        self.retrying += other.retrying;
        self.dead += other.dead;
        self.failing += other.failing;
        self.oldest_due_secs = self.oldest_due_secs.max(other.oldest_due_secs);
        self.at_least.extend(other.at_least.iter().cloned());
        self.at_least.sort();
        self.at_least.dedup();
    }

    /// `field`'s count (`due`, `in_flight`, ...) as people read it: `1000+`
    /// when it is a lower bound.
    pub fn shown(&self, field: &str, n: u64) -> String {
        if self.at_least.iter().any(|f| f == field) {
            format!("{n}+")
        } else {
            n.to_string()
        }
    }
}

/// One function's rows in one database.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionStatus {
    /// The function.
    pub funcname: String,
    /// Its rows by state.
    #[serde(flatten)]
    pub counts: Counts,
    /// Why its due rows wait, if they do and something holds them
    /// (`garivini status` fills it in; `None` otherwise).
    pub waiting: Option<crate::waiting::WaitReason>,
}

/// What `jobs list` asks for.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Only this function's rows.
    pub funcname: Option<String>,
    /// Which rows.
    pub selection: Selection,
    /// The lease window, in seconds.
    pub lease: u32,
    /// Most rows shown, 1..=[`crate::admin::MAX_LIST_LIMIT`].
    pub limit: usize,
}

/// A row as a listing shows it: the job with at most
/// [`LISTED_ARG_BYTES`] of its arg, and the arg's full length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The row; `arg` holds its first bytes only.
    pub job: Job,
    /// Length of the whole arg, in bytes.
    pub arg_len: u64,
    /// Why the row cannot be dispatched as it is, if it cannot (such a
    /// row is parked, dead, by the first claim that meets it).
    pub unsendable: Option<String>,
    /// What happened to it, where the table has the history columns.
    pub history: Option<History>,
}

/// Bytes of each arg a listing reads.
pub const LISTED_ARG_BYTES: usize = 64;

/// What a guarded change ([`Store::retry`], [`Store::cancel`]) found in
/// one database. Either every asked-for row was changed, or none was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Rows changed (all that were asked for, or none).
    pub changed: Vec<u64>,
    /// Ids with no row: nothing was changed.
    pub missing: Vec<u64>,
    /// Rows in flight that the guard refused: nothing was changed.
    pub in_flight: Vec<u64>,
}

/// Where a page of a listing starts, and what else it filters on
/// ([`Store::list_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Only rows after this one in the page order.
    pub after: Option<After>,
    /// Only rows whose unique key starts with this.
    pub uniqkey_prefix: Option<String>,
}

/// A position in the page order of one database: rows strictly after
/// `(run_after, failcount, jobid)` (failcount counts only when the listing
/// names a function). `jobid` 0 means "every row at this
/// `(run_after, failcount)`", `u64::MAX` "none of them".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    /// Due time of the last row seen.
    pub run_after: u32,
    /// Its failcount.
    pub failcount: u8,
    /// Its id.
    pub jobid: u64,
}

/// `prefix` as a `LIKE ... ESCAPE '!'` pattern matching what starts with it.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Rows a chunked bulk retry changes per statement, so that no statement
/// holds the locks of a whole function's dead rows at once.
const RETRY_CHUNK: u64 = 10_000;

impl Store {
    // The admin operations below (status, jobs) go through `attempt`, not
    // `run`: their caller reports a failure to the operator, so there is
    // no outage to log, and a role's view of the database's health is not
    // theirs to change.

    /// The masked URL of database `dbid`, for reports.
    pub fn masked_dsn(&self, dbid: u32) -> Result<String> {
        Ok(self.db(dbid)?.cfg.masked())
    }

    /// The live and dead rows of one function in database `dbid` by state,
    /// as [`Store::count_by_function`] counts them, but exactly (ranges of
    /// `funcname_run_after` of this function only). Takes no lock.
    pub async fn count_function(&self, dbid: u32, funcname: &str, lease: u32) -> Result<Counts> {
        let (_, mut counts) = self.count_functions(dbid, lease, Some(funcname)).await?;
        Ok(counts.pop().map(|f| f.counts).unwrap_or_default())
    }

    /// The database's clock and up to `query.limit` rows of its selection
    /// (of its function only, if it names one), soonest due first, with only the first
    /// [`LISTED_ARG_BYTES`] of each arg. Takes no lock. Ordered as the
    /// index read gives it, so that the scan stops at `limit`: with a
    /// funcname `funcname_run_after`, `(run_after, failcount, jobid)`;
    /// without, the claim index, `(run_after, jobid)` (see
    /// [`Store::list_page`]).
    pub async fn list(&self, dbid: u32, query: &ListQuery) -> Result<(u32, Vec<Listed>)> {
        self.list_page(dbid, query, &Page::default()).await
    }

    /// [`Store::list`] one page at a time (keyset paging, no OFFSET): only
    /// rows after `page.after` in the page order, and of them only those
    /// whose unique key starts with `page.uniqkey_prefix`. The page order
    /// is the order of the index each range reads, so a page costs its
    /// rows, however deep it is: with a funcname (`funcname_run_after`)
    /// `(run_after, failcount, jobid)`, without one `(run_after, jobid)`.
    pub async fn list_page(
        &self,
        dbid: u32,
        query: &ListQuery,
        page: &Page,
    ) -> Result<(u32, Vec<Listed>)> {
        let db = self.db(dbid)?;
        let cols = self.optional_quiet(db).await?;
        let priority = priority(cols);
        let history = cols.history();
        let history_columns = &super::history::columns(cols);
        self.attempt(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            let now = db_now(&mut conn).await?;
            let condition = query.selection.condition(history);
            let mut params = query.selection.params(now, query.lease, history);
            let by_func = match query.funcname.as_deref() {
                Some(f) => {
                    params.push(Value::from(f));
                    "AND funcname = ?"
                }
                None => "",
            };
            let by_key = match page.uniqkey_prefix.as_deref() {
                Some(prefix) => {
                    params.push(Value::from(like_prefix(prefix)));
                    "AND uniqkey LIKE ? ESCAPE '!'"
                }
                None => "",
            };
            let with_failcount = query.funcname.is_some();
            let after = match page.after {
                Some(a) if with_failcount => {
                    params.extend([
                        Value::from(a.run_after),
                        Value::from(a.run_after),
                        Value::from(a.failcount),
                        Value::from(a.failcount),
                        Value::from(a.jobid),
                    ]);
                    "AND run_after >= ? AND (run_after > ? OR failcount > ? \
                     OR (failcount = ? AND jobid > ?))"
                }
                Some(a) => {
                    params.extend([
                        Value::from(a.run_after),
                        Value::from(a.run_after),
                        Value::from(a.jobid),
                    ]);
                    "AND run_after >= ? AND (run_after > ? OR jobid > ?)"
                }
                None => "",
            };
            let order = if with_failcount {
                "run_after, failcount, jobid"
            } else {
                "run_after, jobid"
            };
            params.push(Value::from(query.limit as u64));
            // With a funcname, funcname_run_after gives the order; without,
            // one range of the claim index per priority level, merged here
            // (a table with priorities has no plain run_after index).
            let levels = match query.funcname {
                Some(_) => &[""][..],
                None => levels(cols),
            };
            let mut listed: Vec<Listed> = Vec::new();
            for level in levels {
                let rows: Vec<RawRow> = conn
                    .exec(
                        format!(
                            "SELECT jobid, funcname, LEFT(arg, {LISTED_ARG_BYTES}), uniqkey, run_after, \
                             `coalesce`, flag, failcount, {priority}, COALESCE(LENGTH(arg), 0), \
                             {history_columns} \
                             FROM job WHERE {level}({condition}) {by_func} {by_key} {after} \
                             ORDER BY {order} LIMIT ?"
                        ),
                        Params::Positional(params.clone()),
                    )
                    .await?;
                listed.extend(rows.into_iter().map(|mut row| {
                    let tail = History::from_values(row.take_tail(4));
                    let read = row.read(dbid);
                    Listed {
                        arg_len: read.extra.first().copied().unwrap_or(0),
                        unsendable: read.unsendable,
                        job: read.job,
                        history: history.then_some(tail),
                    }
                }));
            }
            listed.sort_by_key(|l| {
                let failcount = if with_failcount { l.job.failcount } else { 0 };
                (l.job.run_after, failcount, l.job.jobid)
            });
            listed.truncate(query.limit);
            Ok((now, listed))
        })
        .await
    }

    /// The database's clock and the rows of `jobids` that exist (in no
    /// particular order). Takes no lock.
    pub async fn get_many(&self, dbid: u32, jobids: &[u64]) -> Result<(u32, Vec<Job>)> {
        let (now, rows) = self.get_many_with_history(dbid, jobids).await?;
        Ok((now, rows.into_iter().map(|(job, _)| job).collect()))
    }

    /// [`Store::get_many`], each row with its history where the table has
    /// the history columns (`None` where it has not). Takes no lock.
    pub async fn get_many_with_history(
        &self,
        dbid: u32,
        jobids: &[u64],
    ) -> Result<(u32, Vec<(Job, Option<History>)>)> {
        let db = self.db(dbid)?;
        let cols = self.optional_quiet(db).await?;
        let history = cols.history();
        let columns = &format!("{}, {}", columns(cols), super::history::columns(cols));
        self.attempt(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            let now = db_now(&mut conn).await?;
            let mut jobs = Vec::with_capacity(jobids.len());
            for chunk in jobids.chunks(MAX_IN_LIST) {
                let (list, params) = in_list(chunk);
                let rows: Vec<RawRow> = conn
                    .exec(
                        format!("SELECT {columns} FROM job WHERE jobid IN ({list})"),
                        params,
                    )
                    .await?;
                jobs.extend(rows.into_iter().map(|mut r| {
                    let tail = History::from_values(r.take_tail(4));
                    (r.read(dbid).job, history.then_some(tail))
                }));
            }
            Ok((now, jobs))
        })
        .await
    }

    /// Makes rows of database `dbid` due now (`run_after` = the database's
    /// now), and sets their failcount to 0 if `reset_failcount`.
    ///
    /// All or nothing, in one transaction holding the rows' locks: when an
    /// id has no row, or `guard` is `Some(lease)` and a row is in flight
    /// (due within `lease` seconds, see [`Selection`]), nothing changes
    /// and the [`Change`] names them. A guard makes sure a row a worker may
    /// be running is not dispatched a second time.
    pub async fn retry(
        &self,
        dbid: u32,
        jobids: &[u64],
        reset_failcount: bool,
        guard: Option<u32>,
    ) -> Result<Change> {
        let set = if reset_failcount {
            "run_after = UNIX_TIMESTAMP(), failcount = 0"
        } else {
            "run_after = UNIX_TIMESTAMP()"
        };
        self.guarded_change(dbid, jobids, guard, &format!("UPDATE job SET {set}"))
            .await
    }

    /// Deletes rows of database `dbid`, all or nothing, with the same
    /// guard as [`Store::retry`]: an in-flight row may be running on a
    /// worker right now, and deleting it does not stop that run.
    pub async fn cancel(&self, dbid: u32, jobids: &[u64], guard: Option<u32>) -> Result<Change> {
        self.guarded_change(dbid, jobids, guard, "DELETE FROM job")
            .await
    }

    /// Locks the rows, checks them, then runs `statement` (`UPDATE job
    /// SET ...` or `DELETE FROM job`) on them, in one transaction.
    async fn guarded_change(
        &self,
        dbid: u32,
        jobids: &[u64],
        guard: Option<u32>,
        statement: &str,
    ) -> Result<Change> {
        let db = self.db(dbid)?;
        let mut wanted = jobids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let wanted = &wanted;
        let cols = self.optional_quiet(db).await?;
        let history = cols.history();
        let columns = &format!("{}, {}", columns(cols), super::history::columns(cols));
        self.attempt(db, move || async move {
            let mut tx = db.pool().start_transaction(tx_opts()).await?;
            let now = db_now(&mut tx).await?;
            let mut found: HashMap<u64, (Job, Option<History>)> = HashMap::new();
            for chunk in wanted.chunks(MAX_IN_LIST) {
                let (list, params) = in_list(chunk);
                let rows: Vec<RawRow> = tx
                    .exec(
                        format!("SELECT {columns} FROM job WHERE jobid IN ({list}) FOR UPDATE"),
                        params,
                    )
                    .await?;
                found.extend(rows.into_iter().map(|mut r| {
                    let tail = History::from_values(r.take_tail(4));
                    let job = r.read(dbid).job;
                    (job.jobid, (job, history.then_some(tail)))
                }));
            }
            let mut change = Change::default();
            for &id in wanted {
                match found.get(&id) {
                    None => change.missing.push(id),
                    Some((job, history)) => {
                        if let Some(lease) = guard {
                            if JobState::of_job(job, history.as_ref(), now, lease)
                                == JobState::InFlight
                            {
                                change.in_flight.push(id);
                            }
                        }
                    }
                }
            }
            if !change.missing.is_empty() || !change.in_flight.is_empty() {
                tx.rollback().await?;
                return Ok(change);
            }
            for chunk in wanted.chunks(MAX_IN_LIST) {
                let (list, params) = in_list(chunk);
                tx.exec_drop(format!("{statement} WHERE jobid IN ({list})"), params)
                    .await?;
            }
            tx.commit().await?;
            change.changed = wanted.clone();
            Ok(change)
        })
        .await
    }

    /// Makes every dead row of `funcname` in database `dbid` due now
    /// (failcount reset to 0 if `reset_failcount`); returns how many.
    /// Runs in statements of at most 10,000 rows each, every one committed
    /// on its own: rows made due early may already be running when a
    /// later statement fails.
    pub async fn retry_dead(
        &self,
        dbid: u32,
        funcname: &str,
        reset_failcount: bool,
    ) -> Result<u64> {
        let set = if reset_failcount {
            "run_after = UNIX_TIMESTAMP(), failcount = 0"
        } else {
            "run_after = UNIX_TIMESTAMP()"
        };
        let sql = format!(
            "UPDATE job SET {set} WHERE funcname = ? AND run_after >= {NEVER} LIMIT {RETRY_CHUNK}"
        );
        self.in_chunks(dbid, &sql, vec![funcname.into()]).await
    }

    /// Deletes every dead row of `funcname` in database `dbid`; returns
    /// how many. In statements of at most 10,000 rows each, every one
    /// committed on its own (as [`Store::retry_dead`]). A dead row is
    /// never leased, so no worker is running one.
    pub async fn purge_dead(&self, dbid: u32, funcname: &str) -> Result<u64> {
        let sql = format!(
            "DELETE FROM job WHERE funcname = ? AND run_after >= {NEVER} LIMIT {RETRY_CHUNK}"
        );
        self.in_chunks(dbid, &sql, vec![funcname.into()]).await
    }

    /// Deletes the live (not dead) rows of `funcname` in database `dbid`
    /// that no worker is running: due, scheduled and retrying (see
    /// [`Selection`]), and in flight too if `force`; returns how many.
    /// In statements of at most 10,000 rows each, every one committed on
    /// its own (as [`Store::purge_dead`]); each statement tells in flight
    /// by the database's clock when it runs, so that a row leased while
    /// the cancel goes on is left alone. Three ranges of
    /// `funcname_run_after`, so that the rows kept are not read again by
    /// every statement: due (never in flight), due later than the lease
    /// window (never in flight), and, with the history columns, the
    /// window's rows not leased or failed since. A row whose state cannot
    /// be told (a NULL in a history column made nullable by hand) is kept,
    /// as in flight.
    pub async fn cancel_live(
        &self,
        dbid: u32,
        funcname: &str,
        lease: u32,
        force: bool,
    ) -> Result<u64> {
        let db = self.db(dbid)?;
        let history = self.optional_quiet(db).await?.history();
        let delete = |range: &str| {
            format!(
                "DELETE FROM job WHERE funcname = ? AND {range} AND run_after < {NEVER} \
                 LIMIT {RETRY_CHUNK}"
            )
        };
        if force {
            return self
                .in_chunks(dbid, &delete("TRUE"), vec![funcname.into()])
                .await;
        }
        let mut ranges = vec![
            (delete("run_after <= UNIX_TIMESTAMP()"), false),
            (delete("run_after > UNIX_TIMESTAMP() + ?"), true),
        ];
        if history {
            ranges.push((
                delete(&format!(
                    "run_after > UNIX_TIMESTAMP() AND run_after <= UNIX_TIMESTAMP() + ? \
                     AND NOT COALESCE({NOT_FAILED} AND {LEASED}, TRUE)"
                )),
                true,
            ));
        }
        let mut total = 0;
        for (sql, with_lease) in ranges {
            let mut params: Vec<Value> = vec![funcname.into()];
            if with_lease {
                params.push(lease.into());
            }
            total += self.in_chunks(dbid, &sql, params).await?;
        }
        Ok(total)
    }

    /// The functions with dead rows in database `dbid`, and how many each
    /// has: a read of the `funcname_run_after` index (its entries only, no
    /// row), for a bulk action's `--dry-run` and for one over every
    /// function.
    pub async fn dead_by_function(&self, dbid: u32) -> Result<Vec<(String, u64)>> {
        let db = self.db(dbid)?;
        self.attempt(db, || async {
            let mut conn = db.pool().get_conn().await?;
            let rows: Vec<(Vec<u8>, u64)> = conn
                .exec(
                    format!(
                        "SELECT funcname, COUNT(*) FROM job WHERE run_after >= {NEVER} \
                         GROUP BY funcname ORDER BY funcname"
                    ),
                    (),
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|(f, n)| (String::from_utf8_lossy(&f).into_owned(), n))
                .collect())
        })
        .await
    }

    /// Runs `sql` (a statement on one function's rows ending in `LIMIT
    /// RETRY_CHUNK`, with `params`) until it changes fewer than a chunk;
    /// returns how many rows it changed in all. Each statement commits on
    /// its own.
    async fn in_chunks(&self, dbid: u32, sql: &str, params: Vec<Value>) -> Result<u64> {
        let db = self.db(dbid)?;
        let mut total = 0;
        loop {
            let changed = self
                .attempt(db, || async {
                    let mut conn = db.pool().get_conn().await?;
                    conn.exec_drop(sql, Params::Positional(params.clone()))
                        .await?;
                    Ok(conn.affected_rows())
                })
                .await?;
            total += changed;
            if changed < RETRY_CHUNK {
                return Ok(total);
            }
        }
    }

    /// The highest job id database `dbid` holds (0 when empty): what the
    /// dashboard's sampler reads, with the counts, to tell rows added from
    /// rows gone. One lookup at the end of the primary key.
    pub async fn max_jobid(&self, dbid: u32) -> Result<u64> {
        let db = self.db(dbid)?;
        self.attempt(db, || async {
            let mut conn = db.pool().get_conn().await?;
            let max: Option<u64> = conn
                .query_first("SELECT CAST(COALESCE(MAX(jobid), 0) AS UNSIGNED) FROM job")
                .await?;
            Ok(max.unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod page_tests {
    use super::like_prefix;

    #[test]
    fn a_prefix_matches_its_wildcards_literally() {
        assert_eq!(like_prefix("img-1"), "img-1%");
        assert_eq!(like_prefix("50%_a!"), "50!%!_a!!%");
    }
}

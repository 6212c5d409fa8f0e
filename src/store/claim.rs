//! A stored job's life: claimed and leased for dispatch, probed for,
//! given back, its lease extended while it runs, deleted when done,
//! rescheduled after a failure, read.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

use super::holds::{claim_columns, function_firsts, rows_by_function, Holds};
use super::rows::{columns, db_now, in_list, levels, Optional, RawRow, MAX_IN_LIST};
use super::{tx_opts, Store};
use crate::error::Result;
use crate::job::{Job, JobRef, When, NEVER};
use crate::telemetry;

/// What one claim took from a database.
#[derive(Debug, Default)]
pub struct Claim {
    /// Rows leased to the caller, to be dispatched now.
    pub jobs: Vec<Job>,
    /// Rows that were due and read, but refused by the caller's `decide`:
    /// left as they were, due.
    pub held: usize,
    /// Rows that cannot be dispatched as they are (a function name that is
    /// not UTF-8 or has a control character, see
    /// [`unsendable_funcname`](crate::job::unsendable_funcname)), with why:
    /// made dead (run_after = never) so that they cannot hold up the rows
    /// behind them, and logged.
    pub parked: Vec<(u64, String)>,
    /// Ids of the rows of `jobs` whose last attempt's lease ran out with
    /// no completion or failure recorded (a worker lost, stopped, or
    /// slower than the lease without renewing it): dispatched again now.
    /// Counted (`garivini_leases_expired_total`) and logged. Only on a
    /// table with the history columns.
    pub lease_expired: Vec<u64>,
    /// Whether a held or limited function had a due row: the rows were
    /// read function by function (see [`Holds`]), and the next claim
    /// should be too.
    pub limited: bool,
}

impl Store {
    /// Claims up to `limit` due rows of database `dbid` in one transaction
    /// that skips rows other claimers hold: oldest first (high priority
    /// before normal before low), and none of the functions `holds` holds.
    ///
    /// While no held or limited function has a due row, the claim reads the
    /// due rows in the order of the claim index. Otherwise it reads function
    /// by function through `funcname_run_after`, so that a held backlog is
    /// never read: each function with due rows gets a fair share of
    /// `limit` (the function whose oldest row is oldest first; a share it
    /// does not fill goes to the next), at most its room, oldest first
    /// within the function; the batch is then ordered by priority. (On a
    /// table without that index, the one of the original's schema, the
    /// claim always reads in index order.)
    ///
    /// `decide` says, for the rows read in order, which to dispatch
    /// (`true`); the others are left as they were, due. It may be called
    /// again if the claim is retried, so it must not keep state. Rows to
    /// dispatch are leased: their run_after moves to now + `lease` secs, so
    /// that no other claimer takes them until the lease runs out. The
    /// change is committed before this returns.
    pub async fn claim(
        &self,
        dbid: u32,
        limit: usize,
        lease: u32,
        holds: &Holds,
        decide: impl Fn(&[Job]) -> Vec<bool>,
    ) -> Result<Claim> {
        let admit = &decide;
        let db = self.db(dbid)?;
        let cols = self.optional(db).await?;
        let claim = self
            .run(db, move || async move {
                let mut tx = db.pool().start_transaction(tx_opts()).await?;
                // The read is at READ COMMITTED without gap locks: a row another
                // claimer leased between our index read and our row lock can
                // come back with its new run_after. The locked row's current
                // run_after is what counts, so such rows are left alone.
                let scan = function_firsts(&mut tx, cols, holds).await?;
                let by_function = scan
                    .as_ref()
                    .is_some_and(|s| s.limited || holds.by_function);
                let (now, rows) = match scan {
                    Some(scan) if by_function => {
                        let rows =
                            rows_by_function(&mut tx, cols, scan.now, &scan.firsts, holds, limit)
                                .await?;
                        (scan.now, rows)
                    }
                    _ => {
                        let (now, due_levels) = now_and_due_levels(&mut tx, cols).await?;
                        (now, due_rows(&mut tx, cols, now, &due_levels, limit).await?)
                    }
                };
                let mut claim = Claim {
                    limited: by_function,
                    ..Claim::default()
                };
                let mut due = Vec::with_capacity(rows.len());
                let mut expired = std::collections::HashSet::new();
                for read in rows.into_iter().map(|r| r.read(dbid)) {
                    match read.unsendable {
                        _ if read.job.run_after > now => {}
                        None => {
                            if read.extra.first() == Some(&1) {
                                expired.insert(read.job.jobid);
                            }
                            due.push(read.job)
                        }
                        Some(reason) => claim.parked.push((read.job.jobid, reason)),
                    }
                }
                if by_function {
                    // High before normal before low across the functions'
                    // shares, oldest first within a level.
                    due.sort_by_key(|job| (job.priority, job.run_after, job.jobid));
                }
                let decisions = admit(&due);
                for (job, go) in due.into_iter().zip(decisions) {
                    match go {
                        true => claim.jobs.push(job),
                        false => claim.held += 1,
                    }
                }
                let leased: Vec<u64> = claim.jobs.iter().map(|j| j.jobid).collect();
                claim.lease_expired = leased
                    .iter()
                    .copied()
                    .filter(|id| expired.contains(id))
                    .collect();
                set_run_after(&mut tx, &leased, Due::Leased(lease, cols)).await?;
                super::history::park(&mut tx, &claim.parked, cols).await?;
                tx.commit().await?;
                Ok(claim)
            })
            .await?;
        for (jobid, reason) in &claim.parked {
            // Parked rows are dead now: never claimed again, so each is
            // logged once, however often the claim runs.
            tracing::warn!(
                job = %JobRef { dbid, jobid: *jobid },
                %reason,
                "parked a row that cannot be dispatched: it stays in the table, dead (garivini jobs show / cancel)"
            );
        }
        telemetry::parked(claim.parked.len());
        if !claim.lease_expired.is_empty() {
            let expired: std::collections::HashSet<u64> =
                claim.lease_expired.iter().copied().collect();
            for job in claim.jobs.iter().filter(|j| expired.contains(&j.jobid)) {
                // The runs-per-job signal: a job that never completes (its
                // worker dies on it, or answers in a way gearmand refuses)
                // comes back here once per lease, each time said.
                tracing::warn!(
                    job.id = job.jobid,
                    db.id = dbid,
                    funcname = %job.funcname,
                    "job {dbid}:{} ({}) dispatched again: its lease ran out without a completion or failure",
                    job.jobid,
                    job.funcname
                );
                telemetry::lease_expired(&job.funcname);
            }
        }
        Ok(claim)
    }

    /// Whether database `dbid` has a due row: one statement of probes of
    /// the claim index (see `now_and_due_levels`), no lock taken. Cheap enough for
    /// an idle QueueRunner to ask ten times a second, where a claim round
    /// would also open a transaction and ask gearmand for its queue
    /// depths. Rows of functions that `holds` holds do not count (with
    /// such a function due, the probe reads the list of functions: one
    /// index dive each).
    pub async fn any_due(&self, dbid: u32, holds: &Holds) -> Result<bool> {
        let db = self.db(dbid)?;
        let cols = self.optional(db).await?;
        self.run(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            if let Some(scan) = function_firsts(&mut conn, cols, holds).await? {
                return Ok(scan
                    .firsts
                    .iter()
                    .any(|f| f.first <= scan.now && holds.room_of(&f.name_lossy()) > 0));
            }
            if cols.priority {
                let (_, due) = now_and_due_levels(&mut conn, cols).await?;
                return Ok(!due.is_empty());
            }
            let due: Option<u8> = conn
                .query_first("SELECT 1 FROM job WHERE run_after <= UNIX_TIMESTAMP() LIMIT 1")
                .await?;
            Ok(due.is_some())
        })
        .await
    }

    /// Rows of database `dbid` due now, counted up to `cap` (the scans of
    /// the claim index stop there).
    pub async fn count_due(&self, dbid: u32, cap: u64) -> Result<u64> {
        let db = self.db(dbid)?;
        let cols = self.optional(db).await?;
        self.run(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            let mut due = 0;
            for level in levels(cols) {
                let rows: Option<u64> = conn
                    .exec_first(
                        format!(
                            "SELECT COUNT(*) FROM (SELECT 1 FROM job \
                             WHERE {level}run_after <= UNIX_TIMESTAMP() LIMIT ?) due"
                        ),
                        (cap - due,),
                    )
                    .await?;
                due += rows.unwrap_or(0);
                if due >= cap {
                    break;
                }
            }
            Ok(due)
        })
        .await
    }

    /// Makes rows of database `dbid` due again `delay` secs from now: used
    /// to give back leased rows that could not be dispatched (their attempt
    /// never started).
    pub async fn release(&self, dbid: u32, jobids: &[u64], delay: u32) -> Result<()> {
        let db = self.db(dbid)?;
        let cols = self.optional(db).await?;
        self.run(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            set_run_after(&mut conn, jobids, Due::GivenBack(delay, cols)).await
        })
        .await
    }

    /// Moves a running job's row to now + `lease` secs, so that it is not
    /// dispatched again while it runs. Returns whether the row still exists.
    pub async fn extend_lease(&self, job: JobRef, lease: u32) -> Result<bool> {
        let db = self.db(job.dbid)?;
        self.run(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            set_run_after(&mut conn, &[job.jobid], Due::In(lease)).await?;
            Ok(conn.affected_rows() > 0)
        })
        .await
    }

    /// Renews the lease of a job about to run (now + `lease` secs), if its
    /// row is still the one this copy was dispatched from: it exists, is
    /// not dead, and has the copy's failcount. Returns false for a stale
    /// copy: the row was completed, cancelled or failed since (a copy that
    /// waited in gearmand past its lease, or one left on another gearmand).
    pub async fn renew_if_current(&self, job: JobRef, failcount: u8, lease: u32) -> Result<bool> {
        let db = self.db(job.dbid)?;
        let history = super::history::lease_set(self.optional(db).await?);
        self.run(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            conn.exec_drop(
                format!(
                    "UPDATE job SET run_after = UNIX_TIMESTAMP() + ?{history} \
                     WHERE jobid = ? AND failcount = ? AND run_after < {NEVER}"
                ),
                (lease, job.jobid, failcount),
            )
            .await?;
            Ok(conn.affected_rows() > 0)
        })
        .await
    }

    /// Deletes rows of database `dbid` (completed jobs). Returns how many
    /// existed. Answers only after the deletion is committed. Rows that
    /// were not there are counted (`garivini_completions_missed_total`)
    /// and logged, at most once per [`MISSED_LOG_EVERY`] per database: a
    /// copy of a job completed or cancelled since, or, on a replica that
    /// has not applied the row's INSERT yet, a row left to run again (the
    /// DSN's `wsrep_sync_wait=3` makes a Galera node wait for it).
    pub async fn delete(&self, dbid: u32, jobids: &[u64]) -> Result<u64> {
        let db = self.db(dbid)?;
        let deleted = self
            .run(db, move || async move {
                let mut conn = db.pool().get_conn().await?;
                let mut deleted = 0;
                for chunk in jobids.chunks(MAX_IN_LIST) {
                    let (list, params) = in_list(chunk);
                    conn.exec_drop(format!("DELETE FROM job WHERE jobid IN ({list})"), params)
                        .await?;
                    deleted += conn.affected_rows();
                }
                Ok(deleted)
            })
            .await?;
        db.missed(
            "deleted",
            jobids.len() as u64 - deleted.min(jobids.len() as u64),
        );
        Ok(deleted)
    }

    /// Sets when a row runs next and its failcount. Returns whether the
    /// row still existed (one that did not is counted and logged as by
    /// [`Store::delete`]).
    pub async fn reschedule(&self, job: JobRef, when: When, failcount: u8) -> Result<bool> {
        let db = self.db(job.dbid)?;
        // Not a failure: the attempt, if any, is over without one.
        let given_back = super::history::give_back_set(self.optional(db).await?);
        self.set_outcome(job, when, failcount, given_back, Vec::new())
            .await
    }

    /// One row's `run_after` (from `when`) and failcount, with `set` (more
    /// `, column = ...` assignments) and its `extra` parameters, in one
    /// statement: what [`Store::reschedule`] and [`Store::fail`] write.
    /// Returns whether the row still existed (one that did not is counted
    /// and logged as by [`Store::delete`]).
    pub(super) async fn set_outcome(
        &self,
        job: JobRef,
        when: When,
        failcount: u8,
        set: &str,
        extra: Vec<Value>,
    ) -> Result<bool> {
        let db = self.db(job.dbid)?;
        let (run_after, mut params): (&str, Vec<Value>) = match when {
            When::In(secs) => (
                "LEAST(UNIX_TIMESTAMP() + ?, ?)",
                vec![secs.into(), NEVER.into()],
            ),
            When::At(at) => ("?", vec![at.min(NEVER).into()]),
            When::Never => ("?", vec![NEVER.into()]),
        };
        params.push(Value::from(failcount));
        params.extend(extra);
        params.push(Value::from(job.jobid));
        let sql =
            format!("UPDATE job SET run_after = {run_after}, failcount = ?{set} WHERE jobid = ?");
        let (sql, params) = (&sql, &params);
        let found = self
            .run(db, move || async move {
                let mut conn = db.pool().get_conn().await?;
                conn.exec_drop(sql.as_str(), params.clone()).await?;
                Ok(conn.affected_rows() > 0)
            })
            .await?;
        db.missed("rescheduled", u64::from(!found));
        Ok(found)
    }

    /// Reads one row, if it exists.
    pub async fn get(&self, job: JobRef) -> Result<Option<Job>> {
        let db = self.db(job.dbid)?;
        let columns = &columns(self.optional(db).await?);
        self.run(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            let row: Option<RawRow> = conn
                .exec_first(
                    format!("SELECT {columns} FROM job WHERE jobid = ?"),
                    (job.jobid,),
                )
                .await?;
            Ok(row.map(|r| r.read(job.dbid).job))
        })
        .await
    }
}

/// Levels of the `priority` column as [`now_and_due_levels`] reports
/// them: 0 high, 1 normal, 2 low, and [`ABOVE_LOW`] for any value above
/// low's (set by hand), claimed after low.
const ABOVE_LOW: u8 = 3;

/// The database's now and, on a table with priorities, which levels have a
/// row due then (0 high, 1 normal, 2 low, [`ABOVE_LOW`]): one statement,
/// whose probes read the first entry of each level in the claim index, no
/// lock taken.
///
/// Why probe first: a locking range read of a level with nothing due does
/// not stop at the level's end. InnoDB locks and steps over every
/// delete-marked entry that recent leases left at the front of the next
/// level (until purge removes them) before the server sees a row past the
/// range; an exact-prefix read (MIN over one level) stops at the level's
/// end. Measured with gv_claim_bench, reading the empty high level first
/// cost the claim 23-30 % per job.
async fn now_and_due_levels(
    q: &mut impl Queryable,
    cols: Optional,
) -> mysql_async::Result<(u32, Vec<u8>)> {
    if !cols.priority {
        return Ok((db_now(q).await?, Vec::new()));
    }
    type Firsts = (u32, Option<u32>, Option<u32>, Option<u32>, bool);
    let (now, high, normal, low, above): Firsts = q
        .query_first(
            "SELECT UNIX_TIMESTAMP() AS now, \
             (SELECT MIN(run_after) FROM job WHERE priority = 0), \
             (SELECT MIN(run_after) FROM job WHERE priority = 1), \
             (SELECT MIN(run_after) FROM job WHERE priority = 2), \
             EXISTS (SELECT 1 FROM job WHERE priority > 2 AND run_after <= UNIX_TIMESTAMP())",
        )
        .await?
        .unwrap_or_default();
    let due = [high, normal, low]
        .into_iter()
        .zip(0u8..)
        .filter(|(first, _)| first.is_some_and(|at| at <= now))
        .map(|(_, level)| level)
        .chain(above.then_some(ABOVE_LOW))
        .collect();
    Ok((now, due))
}

/// Up to `limit` rows due at `now`, locked, skipping those other claimers
/// hold: oldest first, and on a table with priorities, high before normal
/// before low. With priorities, one statement reads the ranges of the
/// claim index of the levels that have due rows (`due_levels`, from
/// [`now_and_due_levels`]) in index order (`priority IN (...) AND
/// run_after <= now ORDER BY priority, run_after`: a range per level, no
/// sort, no row of a level that is not due read), and a value above low's,
/// set by hand, is read after them only while there is room.
async fn due_rows(
    tx: &mut impl Queryable,
    cols: Optional,
    now: u32,
    due_levels: &[u8],
    limit: usize,
) -> mysql_async::Result<Vec<RawRow>> {
    let columns = claim_columns(cols);
    let mut rows: Vec<RawRow> = Vec::with_capacity(limit);
    let mut ranges: Vec<(String, &str)> = Vec::new();
    if !cols.priority {
        ranges.push((String::new(), "run_after"));
    } else {
        let levels: Vec<u8> = due_levels
            .iter()
            .copied()
            .filter(|&level| level < ABOVE_LOW)
            .collect();
        match levels.as_slice() {
            [] => {}
            [level] => ranges.push((format!("priority = {level} AND "), "run_after")),
            levels => {
                let list: Vec<String> = levels.iter().map(u8::to_string).collect();
                ranges.push((
                    format!("priority IN ({}) AND ", list.join(", ")),
                    "priority, run_after",
                ));
            }
        }
        if due_levels.contains(&ABOVE_LOW) {
            ranges.push(("priority > 2 AND ".to_string(), "priority, run_after"));
        }
    }
    for (level, order) in ranges {
        if rows.len() >= limit {
            break;
        }
        let more: Vec<RawRow> = tx
            .exec(
                format!(
                    "SELECT {columns} FROM job WHERE {level}run_after <= ? \
                     ORDER BY {order} LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                (now, (limit - rows.len()) as u64),
            )
            .await?;
        rows.extend(more);
    }
    Ok(rows)
}

/// When [`set_run_after`] makes rows due.
#[derive(Clone, Copy)]
enum Due {
    /// This many seconds from the database's now.
    In(u32),
    /// The same, for rows given back unrun (see `history`).
    GivenBack(u32, Optional),
    /// Leased for this many seconds from now: an attempt starts (its time
    /// recorded where the table has the columns, see `history`).
    Leased(u32, Optional),
}

async fn set_run_after(
    conn: &mut impl Queryable,
    jobids: &[u64],
    due: Due,
) -> mysql_async::Result<()> {
    let (expr, value, history) = match due {
        Due::In(delay) => ("UNIX_TIMESTAMP() + ?", delay, String::new()),
        Due::GivenBack(delay, cols) => (
            "UNIX_TIMESTAMP() + ?",
            delay,
            super::history::give_back_set(cols).to_string(),
        ),
        Due::Leased(lease, cols) => (
            "UNIX_TIMESTAMP() + ?",
            lease,
            super::history::claim_set(cols),
        ),
    };
    for chunk in jobids.chunks(MAX_IN_LIST) {
        let (list, mut params) = in_list(chunk);
        params.insert(0, Value::from(value));
        conn.exec_drop(
            format!("UPDATE job SET run_after = {expr}{history} WHERE jobid IN ({list})"),
            Params::Positional(params),
        )
        .await?;
    }
    Ok(())
}

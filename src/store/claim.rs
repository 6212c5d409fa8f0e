//! A stored job's life: claimed and leased for dispatch, probed for,
//! given back, its lease extended while it runs, deleted when done,
//! rescheduled after a failure, read.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::rows::{columns, db_now, in_list, levels, Optional, RawRow, MAX_IN_LIST};
use super::{tx_opts, Store};
use crate::error::{Error, Result};
use crate::job::{Job, JobRef, When, NEVER};
use crate::telemetry;

/// How long an elected claimer's turn lasts unless renewed, in seconds:
/// how soon another QueueRunner takes over when it stops.
pub const CLAIMER_TTL: u32 = 5;
/// How often a QueueRunner renews its turn, or asks whether the turn has
/// come free.
const CLAIMER_RENEW: Duration = Duration::from_secs(1);

/// This process's part in a database's claimer election.
pub(super) struct Election {
    /// Who we are in `garivini_claimer`: unique per Store.
    owner: String,
    state: Elect,
}

impl Default for Election {
    fn default() -> Self {
        Election {
            owner: format!("{}:{:016x}", std::process::id(), rand::random::<u64>()),
            state: Elect::Unknown,
        }
    }
}

#[derive(Clone, Copy)]
enum Elect {
    /// Not yet known whether this database elects.
    Unknown,
    /// No election: every QueueRunner claims.
    Off,
    /// Whether the turn is ours, as of `at`.
    Decided { mine: bool, at: Instant },
}

/// Functions whose due rows a claim must leave where they are: paused,
/// without a worker, or with no room left under their limit or the
/// watermark ([`Holds::held`]), or with room for only so many
/// ([`Holds::room`]). A held row is neither read nor rewritten: it stays
/// due, with its `run_after`, so that every surface can say it is due and
/// why it waits, and the rows of other functions are claimed as fast as
/// on a table without it.
#[derive(Debug, Clone, Default)]
pub struct Holds {
    /// Functions none of whose rows may be claimed now.
    pub held: HashSet<String>,
    /// Functions of which at most so many rows may be claimed now.
    pub room: HashMap<String, u64>,
    /// The functions that have a worker, if known: the others are held.
    /// (Alone it does not make a claim read function by function: only a
    /// row of such a function that `decide` refused does, see
    /// [`Claim::limited`].)
    pub served: Option<HashSet<String>>,
    /// Claim function by function even when no function named here has a
    /// due row: the caller's `decide` refused rows in the last claim (a
    /// dispatch function's room, shared by several functions).
    pub by_function: bool,
}

impl Holds {
    /// Whether nothing is held or limited: a claim reads the due rows in
    /// index order, as fast as it can.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.room.is_empty() && !self.by_function
    }

    /// How many rows of `funcname` may be claimed now (`u64::MAX`: any).
    fn room_of(&self, funcname: &str) -> u64 {
        let unserved = self.served.as_ref().is_some_and(|s| !s.contains(funcname));
        if unserved || self.held.contains(funcname) {
            0
        } else {
            self.room.get(funcname).copied().unwrap_or(u64::MAX)
        }
    }

    fn limits(&self, funcname: &str) -> bool {
        self.room_of(funcname) != u64::MAX
    }
}

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

    /// Whether this process's QueueRunner may claim from database `dbid`
    /// now. Always, unless QueueRunners of this database elect one
    /// claimer: by default on a Galera cluster (`wsrep_on`), or as the
    /// DSN's `single_claimer` says. There, `FOR UPDATE SKIP LOCKED` skips
    /// only the rows locked on the same node, so QueueRunners on different
    /// nodes took the same oldest rows and all but one lost at commit; the
    /// elected one claims, the others stand by and take over within
    /// [`CLAIMER_TTL`] secs of it stopping. The turn is held in the
    /// `garivini_claimer` table (schema.sql; GET_LOCK is refused on a
    /// cluster); without that table every QueueRunner claims, as before,
    /// and one warning says so.
    pub async fn claim_turn(&self, dbid: u32) -> Result<bool> {
        let db = self.db(dbid)?;
        {
            let election = db.election.lock().unwrap();
            match election.state {
                Elect::Off => return Ok(true),
                Elect::Decided { mine, at } if at.elapsed() < CLAIMER_RENEW => return Ok(mine),
                _ => {}
            }
        }
        let elect = match db.single_claimer {
            Some(elect) => elect,
            None => {
                let cluster = self
                    .run(db, move || async move {
                        let mut conn = db.pool().get_conn().await?;
                        let row: Option<(String, String)> =
                            conn.query_first("SHOW VARIABLES LIKE 'wsrep_on'").await?;
                        Ok(row.is_some_and(|(_, on)| on.eq_ignore_ascii_case("on")))
                    })
                    .await?;
                cluster
            }
        };
        if !elect {
            db.election.lock().unwrap().state = Elect::Off;
            return Ok(true);
        }
        let owner = db.election.lock().unwrap().owner.clone();
        let owner = &owner;
        let outcome = self
            .run(db, move || async move {
                let mut conn = db.pool().get_conn().await?;
                // Ours if nobody's, ours already, or its owner's turn ran out.
                // (Assignments run left to right: `expires` sees the new owner.)
                conn.exec_drop(
                    "INSERT INTO garivini_claimer (name, owner, expires) \
                     VALUES ('claim', ?, UNIX_TIMESTAMP() + ?) \
                     ON DUPLICATE KEY UPDATE \
                     owner = IF(owner = VALUES(owner) OR expires < UNIX_TIMESTAMP(), VALUES(owner), owner), \
                     expires = IF(owner = VALUES(owner), VALUES(expires), expires)",
                    (owner.as_str(), CLAIMER_TTL),
                )
                .await?;
                let holder: Option<String> = conn
                    .exec_first("SELECT owner FROM garivini_claimer WHERE name = 'claim'", ())
                    .await?;
                Ok(holder.as_deref() == Some(owner.as_str()))
            })
            .await;
        let mine = match outcome {
            Ok(mine) => mine,
            Err(Error::Db {
                source: mysql_async::Error::Server(e),
                ..
            }) if e.code == 1146 => {
                tracing::warn!(
                    db.id = dbid,
                    "no garivini_claimer table: every QueueRunner of this cluster claims, and those on different nodes fight over the same rows (garivini schema check --apply adds the table)"
                );
                db.election.lock().unwrap().state = Elect::Off;
                return Ok(true);
            }
            // A certification conflict with another QueueRunner taking its
            // turn at the same moment on another node: not our turn now.
            Err(Error::Db {
                source: mysql_async::Error::Server(e),
                ..
            }) if e.code == 1213 => false,
            Err(err) => return Err(err),
        };
        let mut election = db.election.lock().unwrap();
        if let Elect::Decided { mine: was, .. } = election.state {
            if was != mine {
                tracing::info!(
                    db.id = dbid,
                    claimer = mine,
                    "queuerunner claimer turn changed"
                );
            }
        }
        election.state = Elect::Decided {
            mine,
            at: Instant::now(),
        };
        Ok(mine)
    }

    /// Gives this process's claimer turn of database `dbid` up, if it
    /// holds it, so that a standing-by QueueRunner takes over at its next
    /// ask rather than after [`CLAIMER_TTL`]: for a QueueRunner that stops.
    pub async fn end_claim_turn(&self, dbid: u32) {
        let Ok(db) = self.db(dbid) else { return };
        let owner = {
            let mut election = db.election.lock().unwrap();
            if !matches!(election.state, Elect::Decided { mine: true, .. }) {
                return;
            }
            election.state = Elect::Unknown;
            election.owner.clone()
        };
        let owner = &owner;
        // If this fails, the turn simply runs out.
        let _ = self
            .run(db, move || async move {
                let mut conn = db.pool().get_conn().await?;
                conn.exec_drop(
                    "UPDATE garivini_claimer SET expires = 0 WHERE name = 'claim' AND owner = ?",
                    (owner.as_str(),),
                )
                .await
            })
            .await;
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

/// A function's oldest row, from the loose scan of [`function_firsts`].
struct First {
    /// The name as stored (bound back as it came: any bytes).
    name: Value,
    /// Its oldest `run_after`.
    first: u32,
}

impl First {
    fn name_lossy(&self) -> String {
        match &self.name {
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            other => other.as_sql(true),
        }
    }
}

/// Most functions [`function_firsts`] lists in one scan (a dive each): a
/// table of more names has the rest claimed in index order, as without
/// holds, at the next round's fast path.
const MAX_FUNCTIONS_SCANNED: usize = 1000;

/// What [`function_firsts`] read.
struct Scan {
    /// The database's now.
    now: u32,
    /// Each function's oldest row.
    firsts: Vec<First>,
    /// Whether a function `holds` holds or limits has a due row.
    limited: bool,
}

/// The database's now and each function's oldest `run_after`, when
/// `holds` holds or limits anything and the table has
/// `funcname_run_after`: one loose index scan, a dive per function however
/// many rows each has. `None`: nothing to scan for, read in index order.
async fn function_firsts(
    q: &mut impl Queryable,
    cols: Optional,
    holds: &Holds,
) -> mysql_async::Result<Option<Scan>> {
    if holds.is_empty() || !cols.funcname_index {
        return Ok(None);
    }
    let now = db_now(q).await?;
    // One dive of the index per function, each from the last name found.
    // Not `GROUP BY funcname`: its loose index scan is the optimizer's
    // choice, and with statistics that lag a table just filled it read the
    // whole index instead (measured: 3x the claim's cost behind 100,000
    // held rows, 8x behind 1,000,000).
    let mut firsts: Vec<First> = Vec::new();
    loop {
        let next: Option<(Value, u32)> = match firsts.last() {
            None => {
                q.query_first(
                    "SELECT funcname, run_after FROM job FORCE INDEX (funcname_run_after) \
                     ORDER BY funcname, run_after LIMIT 1",
                )
                .await?
            }
            Some(last) => {
                q.exec_first(
                    "SELECT funcname, run_after FROM job FORCE INDEX (funcname_run_after) \
                     WHERE funcname > ? ORDER BY funcname, run_after LIMIT 1",
                    (last.name.clone(),),
                )
                .await?
            }
        };
        let Some((name, first)) = next else { break };
        firsts.push(First { name, first });
        if firsts.len() >= MAX_FUNCTIONS_SCANNED {
            break;
        }
    }
    let limited = firsts
        .iter()
        .any(|f| f.first <= now && holds.limits(&f.name_lossy()));
    Ok(Some(Scan {
        now,
        firsts,
        limited,
    }))
}

/// The columns a claim reads: the job's, then whether each row's last
/// lease ran out, for the claim to count.
fn claim_columns(cols: Optional) -> String {
    format!(
        "{}{}",
        columns(cols),
        super::history::lease_ran_out_column(cols)
    )
}

/// Up to `limit` rows due at `now`, locked, skipping those other claimers
/// hold, read function by function (see [`Store::claim`]): none of a held
/// function, at most its room of a limited one, a fair share of the rest.
async fn rows_by_function(
    tx: &mut impl Queryable,
    cols: Optional,
    now: u32,
    firsts: &[First],
    holds: &Holds,
    limit: usize,
) -> mysql_async::Result<Vec<RawRow>> {
    let columns = claim_columns(cols);
    let mut due: Vec<(&First, u64)> = firsts
        .iter()
        .filter(|f| f.first <= now)
        .map(|f| (f, holds.room_of(&f.name_lossy())))
        .filter(|(_, room)| *room > 0)
        .collect();
    due.sort_by_key(|(f, _)| f.first);
    let mut rows: Vec<RawRow> = Vec::with_capacity(limit);
    for (i, (f, room)) in due.iter().enumerate() {
        let left = limit - rows.len();
        if left == 0 {
            break;
        }
        let share = (left.div_ceil(due.len() - i) as u64).min(*room);
        let more: Vec<RawRow> = tx
            .exec(
                format!(
                    "SELECT {columns} FROM job WHERE funcname = ? AND run_after <= ? \
                     ORDER BY run_after LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                (f.name.clone(), now, share),
            )
            .await?;
        rows.extend(more);
    }
    Ok(rows)
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

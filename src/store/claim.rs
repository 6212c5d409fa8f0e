//! A stored job's life: claimed and leased for dispatch, probed for,
//! given back, its lease extended while it runs, deleted when done,
//! rescheduled after a failure, read.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

use super::rows::{db_now, in_list, RawRow, COLUMNS, MAX_IN_LIST};
use super::{tx_opts, Store};
use crate::error::Result;
use crate::job::{Job, JobRef, When, NEVER};
use crate::telemetry;

/// What one claim took from a database.
#[derive(Debug, Default)]
pub struct Claim {
    /// Rows leased to the caller, to be dispatched now.
    pub jobs: Vec<Job>,
    /// Rows that were due but refused by the caller, pushed back.
    pub pushed_back: usize,
    /// Rows that cannot be dispatched as they are (a function name that is
    /// not UTF-8 or has a control character, see
    /// [`unsendable_funcname`](crate::job::unsendable_funcname)), with why:
    /// made dead (run_after = never) so that they cannot hold up the rows
    /// behind them, and logged.
    pub parked: Vec<(u64, String)>,
}

impl Store {
    /// Claims up to `limit` due rows of database `dbid`, oldest first, in
    /// one transaction that skips rows other claimers hold.
    ///
    /// `decide` says, for the due rows in order, which to dispatch (`None`)
    /// and which to push back by so many seconds (`Some(secs)`); it may be
    /// called again if the claim is retried, so it must not keep state.
    /// Rows to dispatch are leased: their run_after moves to now + `lease`
    /// secs, so that no other claimer takes them until the lease runs out.
    /// Either way the change is committed before this returns.
    pub async fn claim(
        &self,
        dbid: u32,
        limit: usize,
        lease: u32,
        decide: impl Fn(&[Job]) -> Vec<Option<u32>>,
    ) -> Result<Claim> {
        let admit = &decide;
        let db = self.db(dbid)?;
        let claim = self
            .run(db, move || async move {
                let mut tx = db.pool.start_transaction(tx_opts()).await?;
                // The read is at READ COMMITTED without gap locks: a row another
                // claimer leased between our index read and our row lock can
                // come back with its new run_after. The locked row's current
                // run_after is what counts, so such rows are left alone.
                let now = db_now(&mut tx).await?;
                let rows: Vec<RawRow> = tx
                    .exec(
                        format!(
                            "SELECT {COLUMNS} FROM job WHERE run_after <= ? \
                         ORDER BY run_after LIMIT ? FOR UPDATE SKIP LOCKED"
                        ),
                        (now, limit as u64),
                    )
                    .await?;
                let mut claim = Claim::default();
                let mut due = Vec::with_capacity(rows.len());
                for read in rows.into_iter().map(|r| r.read(dbid)) {
                    match read.unsendable {
                        _ if read.job.run_after > now => {}
                        None => due.push(read.job),
                        Some(reason) => claim.parked.push((read.job.jobid, reason)),
                    }
                }
                let decisions = admit(&due);
                let mut later: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
                for (job, decision) in due.into_iter().zip(decisions) {
                    match decision {
                        None => claim.jobs.push(job),
                        Some(secs) => later.entry(secs).or_default().push(job.jobid),
                    }
                }
                let leased: Vec<u64> = claim.jobs.iter().map(|j| j.jobid).collect();
                set_run_after(&mut tx, &leased, Due::In(lease)).await?;
                for (secs, ids) in &later {
                    set_run_after(&mut tx, ids, Due::In(*secs)).await?;
                    claim.pushed_back += ids.len();
                }
                let parked: Vec<u64> = claim.parked.iter().map(|(id, _)| *id).collect();
                set_run_after(&mut tx, &parked, Due::Never).await?;
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
        Ok(claim)
    }

    /// Whether database `dbid` has a due row: one probe of the run_after
    /// index, no lock taken. Cheap enough for an idle QueueRunner to ask
    /// ten times a second, where a claim round would also open a
    /// transaction and ask gearmand for its queue depths.
    pub async fn any_due(&self, dbid: u32) -> Result<bool> {
        let db = self.db(dbid)?;
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            let due: Option<u8> = conn
                .exec_first(
                    "SELECT 1 FROM job WHERE run_after <= UNIX_TIMESTAMP() LIMIT 1",
                    (),
                )
                .await?;
            Ok(due.is_some())
        })
        .await
    }

    /// Rows of database `dbid` due now, counted up to `cap` (the scan of
    /// the run_after index stops there).
    pub async fn count_due(&self, dbid: u32, cap: u64) -> Result<u64> {
        let db = self.db(dbid)?;
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            let rows: Option<u64> = conn
                .exec_first(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM job \
                     WHERE run_after <= UNIX_TIMESTAMP() LIMIT ?) due",
                    (cap,),
                )
                .await?;
            Ok(rows.unwrap_or(0))
        })
        .await
    }

    /// Makes rows of database `dbid` due again `delay` secs from now: used
    /// to give back leased rows that could not be dispatched.
    pub async fn release(&self, dbid: u32, jobids: &[u64], delay: u32) -> Result<()> {
        let db = self.db(dbid)?;
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            set_run_after(&mut conn, jobids, Due::In(delay)).await
        })
        .await
    }

    /// Moves a running job's row to now + `lease` secs, so that it is not
    /// dispatched again while it runs. Returns whether the row still exists.
    pub async fn extend_lease(&self, job: JobRef, lease: u32) -> Result<bool> {
        let db = self.db(job.dbid)?;
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
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
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            conn.exec_drop(
                format!(
                    "UPDATE job SET run_after = UNIX_TIMESTAMP() + ? \
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
    /// existed. Answers only after the deletion is committed.
    pub async fn delete(&self, dbid: u32, jobids: &[u64]) -> Result<u64> {
        let db = self.db(dbid)?;
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            let mut deleted = 0;
            for chunk in jobids.chunks(MAX_IN_LIST) {
                let (list, params) = in_list(chunk);
                conn.exec_drop(format!("DELETE FROM job WHERE jobid IN ({list})"), params)
                    .await?;
                deleted += conn.affected_rows();
            }
            Ok(deleted)
        })
        .await
    }

    /// Sets when a row runs next and its failcount. Returns whether the
    /// row still existed.
    pub async fn reschedule(&self, job: JobRef, when: When, failcount: u8) -> Result<bool> {
        let db = self.db(job.dbid)?;
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            match when {
                When::In(secs) => {
                    conn.exec_drop(
                        "UPDATE job SET run_after = LEAST(UNIX_TIMESTAMP() + ?, ?), failcount = ? \
                         WHERE jobid = ?",
                        (secs, NEVER, failcount, job.jobid),
                    )
                    .await?
                }
                When::At(at) => {
                    conn.exec_drop(
                        "UPDATE job SET run_after = ?, failcount = ? WHERE jobid = ?",
                        (at.min(NEVER), failcount, job.jobid),
                    )
                    .await?
                }
                When::Never => {
                    conn.exec_drop(
                        "UPDATE job SET run_after = ?, failcount = ? WHERE jobid = ?",
                        (NEVER, failcount, job.jobid),
                    )
                    .await?
                }
            }
            Ok(conn.affected_rows() > 0)
        })
        .await
    }

    /// Reads one row, if it exists.
    pub async fn get(&self, job: JobRef) -> Result<Option<Job>> {
        let db = self.db(job.dbid)?;
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            let row: Option<RawRow> = conn
                .exec_first(
                    format!("SELECT {COLUMNS} FROM job WHERE jobid = ?"),
                    (job.jobid,),
                )
                .await?;
            Ok(row.map(|r| r.read(job.dbid).job))
        })
        .await
    }
}

/// When [`set_run_after`] makes rows due.
#[derive(Clone, Copy)]
enum Due {
    /// This many seconds from the database's now.
    In(u32),
    /// Never: dead (rows no worker can be given).
    Never,
}

async fn set_run_after(
    conn: &mut impl Queryable,
    jobids: &[u64],
    due: Due,
) -> mysql_async::Result<()> {
    let (expr, value) = match due {
        Due::In(delay) => ("UNIX_TIMESTAMP() + ?", delay),
        Due::Never => ("?", NEVER),
    };
    for chunk in jobids.chunks(MAX_IN_LIST) {
        let (list, mut params) = in_list(chunk);
        params.insert(0, Value::from(value));
        conn.exec_drop(
            format!("UPDATE job SET run_after = {expr} WHERE jobid IN ({list})"),
            Params::Positional(params),
        )
        .await?;
    }
    Ok(())
}

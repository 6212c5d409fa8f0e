//! Storing jobs: validated first, then keyless jobs in multi-row INSERTs
//! that fit the database's packet limit, keyed jobs on the shard their key
//! hashes to, deduplicated by UNIQUE (funcname, uniqkey).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

use super::rows::{repeat_placeholders, Optional, MAX_IN_LIST};
use super::{tx_opts, Db, Store};
use crate::error::{Error, Result};
use crate::job::{JobRef, NewJob, Priority};
use crate::telemetry;

/// Largest payload of one protocol packet. The driver (mysql_async) sends
/// a statement whose values add up to more as "long data": each value in
/// packets of up to `MAX_PAYLOAD + 1` bytes.
const MAX_PAYLOAD: u64 = 0xff_ffff;
/// Bytes of an INSERT's packet besides its rows, at most: command, statement
/// id, flags, iteration count, and slack.
const STATEMENT_OVERHEAD: u64 = 64;
/// Bytes one row adds to an INSERT's packet besides its values, at most:
/// a type (2 bytes) for each of its eight values, a length prefix (up to 9)
/// for each of its five strings, 8 for the run_after integer, and its share
/// of the null bitmap.
const ROW_OVERHEAD: u64 = 88;

/// Where [`Store::insert_telling_new`] stored a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The row.
    pub job: JobRef,
    /// Whether the row is new: false when the job's unique key named a row
    /// that exists, which was left as it was.
    pub new: bool,
}

impl Store {
    /// Refuses, before anything is sent, a job whose INSERT would be over
    /// the packet limit of the database it goes to: the server would
    /// refuse it, or the driver would fail the connection.
    fn check_packet(db: &Db, limit: u64, jobs: &[NewJob], idx: &[usize]) -> Result<()> {
        match idx.iter().find(|&&i| !fits_alone(&jobs[i], limit)) {
            None => Ok(()),
            Some(&i) => Err(Error::JobOverPacketLimit {
                dbid: db.cfg.dbid,
                len: row_bytes(&jobs[i]) + STATEMENT_OVERHEAD,
                max_allowed_packet: limit,
            }),
        }
    }

    /// Stores jobs and returns where each went, in the order given.
    ///
    /// Answers only after every row is committed. Jobs are validated first,
    /// so nothing is written when any job is bad. Jobs without a unique key
    /// go in one multi-row statement to a random database not known down
    /// (another one is tried if it fails on a fault of the database's); a
    /// job with a unique key goes to the database its key hashes to and,
    /// when a row with the same (funcname, uniqkey) exists, the existing
    /// row's id is returned and nothing new is stored. While that database
    /// is known down, such a job fails at once ([`Error::DbDown`], naming
    /// it) and nothing is stored.
    pub async fn insert(&self, jobs: &[NewJob]) -> Result<Vec<JobRef>> {
        let stored = self.insert_telling_new(jobs).await?;
        Ok(stored.into_iter().map(|s| s.job).collect())
    }

    /// [`Store::insert`], telling for each job whether its row is new or
    /// one its unique key named already ([`Stored::new`]): a job of an
    /// existing row is not the caller's to dispatch (its row keeps its own
    /// schedule and lease).
    pub async fn insert_telling_new(&self, jobs: &[NewJob]) -> Result<Vec<Stored>> {
        for job in jobs {
            job.validate()?;
        }
        let mut refs = vec![None; jobs.len()];
        let (keyed, keyless): (Vec<usize>, Vec<usize>) = (0..jobs.len())
            .partition(|&i| jobs[i].uniqkey.as_deref().is_some_and(|k| !k.is_empty()));

        let mut by_shard: HashMap<u32, Vec<usize>> = HashMap::new();
        for &i in &keyed {
            let job = &jobs[i];
            let db = self.shard_for(&job.funcname, job.uniqkey.as_deref().unwrap_or_default());
            by_shard.entry(db.cfg.dbid).or_default().push(i);
        }
        // Every job is checked against its database's packet limit before
        // the first row is written, so that nothing is stored when one
        // is too large.
        for (&dbid, idx) in &by_shard {
            let db = self.db(dbid)?;
            Self::check_packet(db, self.packet_limit(db).await?, jobs, idx)?;
        }

        if !keyless.is_empty() {
            let mut tried = Vec::new();
            loop {
                let db = self.pick_keyless(&tried).expect("at least one database");
                let outcome = match self.packet_limit(db).await {
                    Ok(limit) => match Self::check_packet(db, limit, jobs, &keyless) {
                        Ok(()) => self.insert_keyless(db, jobs, &keyless, limit).await,
                        Err(err) => Err(err),
                    },
                    Err(err) => Err(err),
                };
                match outcome {
                    Ok(ids) => {
                        for (&i, jobid) in keyless.iter().zip(ids) {
                            refs[i] = Some(Stored {
                                job: JobRef {
                                    dbid: db.cfg.dbid,
                                    jobid,
                                },
                                new: true,
                            });
                        }
                        break;
                    }
                    Err(err) => {
                        tried.push(db.cfg.dbid);
                        if !err.is_connection_fault() || tried.len() == self.dbs.len() {
                            return Err(err);
                        }
                    }
                }
            }
        }

        for (dbid, idx) in by_shard {
            let db = self.db(dbid)?;
            let ids = self.insert_keyed(db, jobs, &idx).await?;
            for (&i, (jobid, new)) in idx.iter().zip(ids) {
                refs[i] = Some(Stored {
                    job: JobRef { dbid, jobid },
                    new,
                });
            }
        }
        telemetry::inserted(jobs.len());
        Ok(refs
            .into_iter()
            .map(|r| r.expect("every job placed"))
            .collect())
    }

    /// The optional columns of `db`'s table, which the INSERTs name where
    /// they are. A job of high or low priority for a table without the
    /// column is refused rather than stored at normal.
    async fn columns_for(&self, db: &Arc<Db>, jobs: &[NewJob], idx: &[usize]) -> Result<Optional> {
        let cols = self.optional(db).await?;
        if !cols.priority && idx.iter().any(|&i| jobs[i].priority != Priority::Normal) {
            return Err(Error::NoPriorityColumn { dbid: db.cfg.dbid });
        }
        Ok(cols)
    }

    async fn insert_keyless(
        &self,
        db: &Arc<Db>,
        jobs: &[NewJob],
        idx: &[usize],
        max_packet: u64,
    ) -> Result<Vec<u64>> {
        let statements = statements(jobs, idx, max_packet);
        let statements = &statements;
        let cols = self.columns_for(db, jobs, idx).await?;
        self.run(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            let returning = match db.returning.load(Ordering::Relaxed) {
                0 => {
                    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
                    let returning = version.as_deref().is_some_and(takes_returning);
                    db.returning
                        .store(if returning { 1 } else { 2 }, Ordering::Relaxed);
                    returning
                }
                known => known == 1,
            };
            if returning {
                if let [one] = statements.as_slice() {
                    // One statement is atomic on its own: no transaction, so
                    // one round trip instead of three.
                    return insert_rows(&mut conn, jobs, one, cols).await;
                }
            }
            // Several statements in one transaction: stored whole or not at
            // all, and retried after a deadlock without storing twice.
            let mut tx = conn.start_transaction(tx_opts()).await?;
            let mut ids = Vec::with_capacity(idx.len());
            if returning {
                for chunk in statements {
                    ids.extend(insert_rows(&mut tx, jobs, chunk, cols).await?);
                }
            } else {
                // Without RETURNING only a one-row INSERT's id is known for
                // sure: a multi-row one's are not first + k × the step
                // when the step changes under the session (Galera changes
                // it at once when the cluster's size changes).
                for &i in idx {
                    ids.push(insert_one(&mut tx, &jobs[i], cols).await?);
                }
            }
            tx.commit().await?;
            Ok(ids)
        })
        .await
    }

    async fn insert_keyed(
        &self,
        db: &Arc<Db>,
        jobs: &[NewJob],
        idx: &[usize],
    ) -> Result<Vec<(u64, bool)>> {
        let cols = self.columns_for(db, jobs, idx).await?;
        self.run(db, move || async move {
            let mut conn = db.pool().get_conn().await?;
            if let [i] = idx {
                return Ok(vec![insert_keyed_row(&mut conn, &jobs[*i], cols).await?]);
            }
            let mut tx = conn.start_transaction(tx_opts()).await?;
            let mut ids = Vec::with_capacity(idx.len());
            for &i in idx {
                ids.push(insert_keyed_row(&mut tx, &jobs[i], cols).await?);
            }
            tx.commit().await?;
            Ok(ids)
        })
        .await
    }
}

/// Bytes a job adds to an INSERT's packet, at most.
fn row_bytes(job: &NewJob) -> u64 {
    let text = |s: &Option<String>| s.as_deref().map_or(0, str::len);
    (job.funcname.len()
        + job.arg.len()
        + text(&job.uniqkey)
        + text(&job.coalesce)
        + job.flag.as_str().len()) as u64
        + ROW_OVERHEAD
}

/// Room for rows in one INSERT's packet under `max_packet`. Statements
/// are kept within one protocol packet, so that they are sent whole and
/// the limit is the packet's. The server refuses a packet of
/// `max_allowed_packet` bytes itself, hence the `- 1`.
fn statement_room(max_packet: u64) -> u64 {
    max_packet
        .saturating_sub(1)
        .min(MAX_PAYLOAD)
        .saturating_sub(STATEMENT_OVERHEAD)
}

/// Whether a job can be stored in a statement of its own under
/// `max_packet`: its statement fits one packet, or the server takes the
/// driver's long-data packets (`MAX_PAYLOAD + 1` bytes), in which each
/// value travels on its own and none is over `MAX_PAYLOAD` (the columns'
/// limits). So on a server at exactly 16 MiB, MariaDB's default, an arg
/// a little under the MEDIUMBLOB's 16 MiB - 1 is the largest that fits:
/// a larger one used to fail with "Packets out of sync" and a broken
/// connection.
fn fits_alone(job: &NewJob, max_packet: u64) -> bool {
    row_bytes(job) <= statement_room(max_packet) || max_packet > MAX_PAYLOAD + 1
}

/// Splits rows into INSERT statements of at most [`MAX_IN_LIST`] rows
/// whose packets fit `max_packet`; a row too large to share a packet goes
/// alone. Order is kept.
fn statements<'a>(jobs: &[NewJob], idx: &'a [usize], max_packet: u64) -> Vec<&'a [usize]> {
    let room = statement_room(max_packet);
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (k, &i) in idx.iter().enumerate() {
        let bytes = row_bytes(&jobs[i]);
        if k > start && (k - start == MAX_IN_LIST || used + bytes > room) {
            out.push(&idx[start..k]);
            (start, used) = (k, 0);
        }
        used += bytes;
    }
    if start < idx.len() {
        out.push(&idx[start..]);
    }
    out
}

/// Whether a server of this `VERSION()` takes `INSERT ... RETURNING`:
/// MariaDB from 10.5 (MySQL has none).
fn takes_returning(version: &str) -> bool {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return false;
    };
    version.contains("MariaDB") && (major, minor) >= (10, 5)
}

/// Which columns an INSERT names: those of the original's table, and of
/// ours those the table has and the rows need.
#[derive(Clone, Copy)]
struct Shape {
    keyed: bool,
    priority: bool,
    /// `attempted_at`, for rows stored leased ([`NewJob::leased`]).
    attempted: bool,
}

impl Shape {
    /// Keyless rows, `leased` if any of them is.
    fn keyless(cols: Optional, leased: bool) -> Shape {
        Shape {
            keyed: false,
            priority: cols.priority,
            attempted: cols.attempted_at && leased,
        }
    }

    /// A row with a unique key, `leased` if dispatched right after its
    /// commit (a row its key names already keeps its own attempt).
    fn keyed(cols: Optional, leased: bool) -> Shape {
        Shape {
            keyed: true,
            priority: cols.priority,
            attempted: cols.attempted_at && leased,
        }
    }

    /// `INSERT INTO job (...) VALUES `.
    fn insert_into(self) -> String {
        format!(
            "INSERT INTO job (funcname, arg, uniqkey, run_after, `coalesce`, flag{}{}) VALUES ",
            if self.priority { ", priority" } else { "" },
            if self.attempted { ", attempted_at" } else { "" },
        )
    }

    /// One row's placeholders, the unique key bound or NULL.
    fn placeholders(self) -> String {
        format!(
            "(?, ?, {}, UNIX_TIMESTAMP() + ?, ?, ?{}{})",
            if self.keyed { "?" } else { "NULL" },
            if self.priority { ", ?" } else { "" },
            if self.attempted {
                ", IF(?, UNIX_TIMESTAMP(), 0)"
            } else {
                ""
            },
        )
    }
}

/// A row's values for [`Shape::placeholders`].
fn values(job: &NewJob, shape: Shape, out: &mut Vec<Value>) {
    out.extend([
        Value::from(job.funcname.as_str()),
        Value::from(job.arg.as_slice()),
    ]);
    if shape.keyed {
        out.push(Value::from(job.uniqkey.as_deref()));
    }
    out.extend([
        Value::from(job.delay),
        Value::from(job.coalesce.as_deref()),
        Value::from(job.flag.as_str()),
    ]);
    if shape.priority {
        out.push(Value::from(job.priority.column()));
    }
    if shape.attempted {
        out.push(Value::from(job.leased));
    }
}

/// One multi-row INSERT of keyless jobs; returns their ids, as the server
/// reports them (`RETURNING`, in the order of the rows), whatever the
/// auto-increment settings.
async fn insert_rows(
    q: &mut impl Queryable,
    jobs: &[NewJob],
    idx: &[usize],
    cols: Optional,
) -> mysql_async::Result<Vec<u64>> {
    let shape = Shape::keyless(cols, idx.iter().any(|&i| jobs[i].leased));
    let sql = format!(
        "{}{} RETURNING jobid",
        shape.insert_into(),
        repeat_placeholders(&shape.placeholders(), idx.len())
    );
    let mut params = Vec::with_capacity(idx.len() * 6);
    for &i in idx {
        values(&jobs[i], shape, &mut params);
    }
    q.exec(sql, Params::Positional(params)).await
}

/// One INSERT of one keyless job (servers without `RETURNING`).
async fn insert_one(
    q: &mut impl Queryable,
    job: &NewJob,
    cols: Optional,
) -> mysql_async::Result<u64> {
    let shape = Shape::keyless(cols, job.leased);
    let mut params = Vec::with_capacity(6);
    values(job, shape, &mut params);
    let result = q
        .exec_iter(
            format!("{}{}", shape.insert_into(), shape.placeholders()),
            Params::Positional(params),
        )
        .await?;
    let id = result.last_insert_id().unwrap_or_default();
    result.drop_result().await?;
    Ok(id)
}

/// The bit [`insert_keyed_row`] sets in the id it reports for a row that
/// existed: no id comes near it (2^63).
const EXISTED: u64 = 1 << 63;

/// One INSERT of a job with a unique key; returns the row's id and whether
/// it is new. On a duplicate key, LAST_INSERT_ID(...) makes it report the
/// existing row's id, marked with [`EXISTED`], and leaves the row as it
/// was (`jobid = IF(..., jobid, jobid)`). The affected-rows count cannot
/// tell: with CLIENT_FOUND_ROWS (which the store sets) an unchanged
/// duplicate counts 1, as a new row does.
pub(super) async fn insert_keyed_row(
    q: &mut impl Queryable,
    job: &NewJob,
    cols: Optional,
) -> mysql_async::Result<(u64, bool)> {
    let shape = Shape::keyed(cols, job.leased);
    let mut params = Vec::with_capacity(7);
    values(job, shape, &mut params);
    let result = q
        .exec_iter(
            format!(
                "{}{} ON DUPLICATE KEY UPDATE jobid = IF(LAST_INSERT_ID(jobid + {EXISTED}), jobid, jobid)",
                shape.insert_into(),
                shape.placeholders()
            ),
            Params::Positional(params),
        )
        .await?;
    let id = result.last_insert_id().unwrap_or_default();
    result.drop_result().await?;
    Ok((id & !EXISTED, id & EXISTED == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returning_is_used_on_mariadb_from_10_5() {
        assert!(takes_returning("10.11.19-MariaDB-0+deb12u1"));
        assert!(takes_returning("10.5.0-MariaDB"));
        assert!(takes_returning("11.4.2-MariaDB-log"));
        assert!(!takes_returning("10.4.34-MariaDB"));
        assert!(!takes_returning("8.0.36"));
        assert!(!takes_returning("9.1.0-commercial"));
        assert!(!takes_returning("garbage"));
    }

    fn sized(arg: usize) -> NewJob {
        NewJob::new("f", vec![b'a'; arg])
    }

    #[test]
    fn rows_are_split_into_statements_that_fit_the_packet() {
        let mib = 1024 * 1024;
        let jobs: Vec<NewJob> = (0..10).map(|_| sized(300 * 1024)).collect();
        let idx: Vec<usize> = (0..10).collect();
        // 3 MiB of args: one statement under 16 MiB, several under 1 MiB.
        assert_eq!(statements(&jobs, &idx, 16 * mib), vec![&idx[..]]);
        let split = statements(&jobs, &idx, mib);
        assert_eq!(split.len(), 4);
        assert_eq!(split.concat(), idx, "every row once, in order");
        for s in &split {
            let bytes: u64 = s.iter().map(|&i| row_bytes(&jobs[i])).sum();
            assert!(bytes + STATEMENT_OVERHEAD <= mib, "{bytes}");
        }
        // Never more than MAX_IN_LIST rows, however small.
        let small: Vec<NewJob> = (0..2500).map(|_| sized(1)).collect();
        let idx: Vec<usize> = (0..2500).collect();
        let lens: Vec<usize> = statements(&small, &idx, 64 * mib)
            .iter()
            .map(|s| s.len())
            .collect();
        assert_eq!(lens, vec![1024, 1024, 452]);
        // A row larger than a packet goes alone.
        let jobs = vec![sized(10), sized(2 * mib as usize), sized(10)];
        assert_eq!(statements(&jobs, &[0, 1, 2], mib).len(), 3);
        assert!(statements(&jobs, &[], mib).is_empty());
    }

    #[test]
    fn a_job_over_a_small_packet_limit_does_not_fit() {
        let mib: u64 = 1024 * 1024;
        let room = |max: u64| {
            (max.min(MAX_PAYLOAD + 1) - 1 - STATEMENT_OVERHEAD - ROW_OVERHEAD) as usize
                - "f".len()
                - "shim".len()
        };
        assert!(fits_alone(&sized(room(mib)), mib));
        assert!(!fits_alone(&sized(room(mib) + 1), mib));
        // At exactly 16 MiB the statement must still fit one packet: the
        // server refuses the driver's long-data packets of 16 MiB.
        assert!(fits_alone(&sized(room(16 * mib)), 16 * mib));
        assert!(!fits_alone(&sized(room(16 * mib) + 1), 16 * mib));
        assert!(!fits_alone(&sized(crate::job::MAX_ARG_LEN), 16 * mib));
        // Above it, a statement over a packet goes value by value: every
        // job within the column limits fits.
        assert!(fits_alone(&sized(crate::job::MAX_ARG_LEN), 64 * mib));
    }
}

//! Periodic jobs' ticks ([`crate::periodic`]): one transaction, on the
//! database the tick's unique key hashes to, that moves the entry's
//! `last_tick` in `garivini_periodic` forwards and inserts the tick's job.
//! Whoever moves it inserts; every other QueueRunner finds it moved and
//! does nothing, so that each tick is inserted once.

use mysql_async::prelude::Queryable;

use super::{tx_opts, Store};
use crate::error::{Error, Result};
use crate::job::{JobRef, NewJob, Priority};
use crate::telemetry;

/// One tick of a periodic entry, to insert as its job.
#[derive(Debug, Clone)]
pub struct Tick<'a> {
    /// The entry's name: its row of `garivini_periodic`.
    pub name: &'a str,
    /// The tick's time, unix seconds.
    pub tick: u32,
    /// The tick's job; its unique key places it (and the entry's
    /// `last_tick` it moves) on a database.
    pub job: NewJob,
}

/// What [`Store::insert_tick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    /// The tick was the entry's newest on its database: `last_tick` moved
    /// to it and its job was stored, both committed.
    Inserted(JobRef),
    /// The entry's `last_tick` there was already at or past it (another
    /// QueueRunner, or an earlier try, inserted it): nothing changed.
    Taken,
    /// The database has no `garivini_periodic` table: nothing changed.
    NoTable {
        /// The database.
        dbid: u32,
    },
}

impl Store {
    /// Inserts `tick`'s job unless its entry already has this tick or a
    /// later one on the database the job's unique key hashes to
    /// ([`Store::shard_for`]): in one transaction there, moves the entry's
    /// `last_tick` to `tick.tick` only if it was older (creating the row
    /// if there was none), and inserts the job only if it moved. Answers
    /// [`TickOutcome::Inserted`] only once both are committed. Any number
    /// of callers may race on one tick: one inserts it.
    pub async fn insert_tick(&self, tick: &Tick<'_>) -> Result<TickOutcome> {
        let job = &tick.job;
        job.validate()?;
        let key = job.uniqkey.as_deref().unwrap_or_default();
        if key.is_empty() {
            return Err(Error::invalid_config(
                "periodic",
                "a tick's job needs a unique key",
            ));
        }
        let db = self.shard_for(&job.funcname, key);
        let dbid = db.cfg.dbid;
        let cols = self.optional(db).await?;
        if !cols.priority && job.priority != Priority::Normal {
            return Err(Error::NoPriorityColumn { dbid });
        }
        let outcome = self
            .run(db, || async {
                let mut conn = db.pool().get_conn().await?;
                let mut tx = conn.start_transaction(tx_opts()).await?;
                // CLIENT_FOUND_ROWS: the count is of rows matched, and a
                // matched row here is one that moves.
                tx.exec_drop(
                    "UPDATE garivini_periodic SET last_tick = ? WHERE name = ? AND last_tick < ?",
                    (tick.tick, tick.name, tick.tick),
                )
                .await?;
                let mut moved = tx.affected_rows() == 1;
                if !moved {
                    // No row yet, or one at or past the tick: only the
                    // first case inserts (a racing insert waits for ours
                    // and is then ignored).
                    tx.exec_drop(
                        "INSERT IGNORE INTO garivini_periodic (name, last_tick) VALUES (?, ?)",
                        (tick.name, tick.tick),
                    )
                    .await?;
                    moved = tx.affected_rows() == 1;
                }
                if !moved {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let (jobid, _) = super::insert::insert_keyed_row(&mut tx, job, cols).await?;
                tx.commit().await?;
                Ok(Some(jobid))
            })
            .await;
        match outcome {
            Ok(Some(jobid)) => {
                telemetry::inserted(1);
                Ok(TickOutcome::Inserted(JobRef { dbid, jobid }))
            }
            Ok(None) => Ok(TickOutcome::Taken),
            Err(err) if is_no_periodic_table(&err) => Ok(TickOutcome::NoTable { dbid }),
            Err(err) => Err(err),
        }
    }
}

/// Whether `err` is the server's "table garivini_periodic doesn't exist"
/// (ER_NO_SUCH_TABLE, 1146).
fn is_no_periodic_table(err: &Error) -> bool {
    matches!(
        err,
        Error::Db {
            source: mysql_async::Error::Server(e),
            ..
        } if e.code == 1146 && e.message.contains("garivini_periodic")
    )
}

//! Jobs dispatched per minute: the `garivini_dispatches` table
//! (schema.sql), one row per minute (unix time DIV 60, as the database's
//! clock has it) in each database, for the dashboard's chart. The job
//! table keeps no record of a dispatch, and the web role may run in
//! another process than the roles that dispatch.
//!
//! The dispatching roles (the QueueRunner's background submits, the
//! Injector's `run_queued_job`s) count what gearmand acknowledged into an
//! in-memory tally per database ([`Store::count_dispatched`]: a lock and
//! an addition, never a statement, so the dispatch path never waits for
//! it). [`Store::flush_dispatches_until`], a task of the role's own, writes
//! the tally at most once per [`FLUSH_EVERY`] per database (whatever the
//! number of roles in the process), and the role flushes once more when it
//! stops ([`Store::flush_dispatches`]): one
//! `INSERT ... ON DUPLICATE KEY UPDATE dispatched = dispatched + ...` per
//! database per minute. A flush that fails (the database away, a Galera
//! certification conflict on the hot row) keeps the tally for the next
//! one; so a flush whose commit the server made but whose answer was lost
//! may count those dispatches twice, and a crash loses what was not
//! flushed yet (about a second's). Rows older than [`KEEP_MINUTES`] are
//! deleted about once per [`PRUNE_EVERY`], a bounded batch at a time.
//!
//! Without the table nothing is counted: one log line per process and
//! database, and it is looked for again every [`MISSING_REREAD`] (so a
//! table made by `garivini schema check --apply` is used without a
//! restart).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use super::{host_clock, Db, Store};
use crate::error::{Error, Result};

/// Shortest time between two flushes of one database's tally (the one a
/// role makes when it stops excepted).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long a row of the table is kept, in minutes: a day.
pub const KEEP_MINUTES: u32 = 24 * 60;
/// How often a flusher deletes the rows older than [`KEEP_MINUTES`].
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Most rows one prune deletes (the rest go at the next).
pub const PRUNE_LIMIT: u32 = 10_000;
/// How long a database found without the table is believed to lack it.
pub const MISSING_REREAD: Duration = Duration::from_secs(60);
/// How long the last flush of a stopping role may take
/// ([`Store::flush_dispatches_last`]).
pub const LAST_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// One database's tally of dispatches not written yet, and what its
/// flushes found.
#[derive(Default)]
pub(super) struct Tally(Mutex<TallyState>);

#[derive(Default)]
struct TallyState {
    /// Dispatches not written yet, by minute.
    pending: BTreeMap<u32, u64>,
    /// When the last flush began.
    flushed_at: Option<Instant>,
    /// When the table was last found missing (nothing is counted then).
    missing: Option<Instant>,
    /// When the last prune was made.
    pruned_at: Option<Instant>,
}

/// What one flush did, over every database.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Dispatches written.
    pub dispatches: u64,
    /// Upserts that committed (one per database and minute).
    pub statements: usize,
    /// Databases whose flush failed (their tally is kept).
    pub failed: usize,
}

/// The dispatches of one minute, summed over the databases that have the
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteCount {
    /// Unix time / 60.
    pub minute: u32,
    /// Jobs dispatched in it.
    pub dispatched: u64,
}

/// The minute it is now on `db`'s clock: its last reading moved on by the
/// host's monotonic clock (the host's wall clock until one is read).
fn minute_now(db: &Db) -> u32 {
    let known = *db.clock.lock().unwrap();
    let secs = known.map_or_else(host_clock, |(at, secs)| {
        secs.saturating_add(at.elapsed().as_secs() as u32)
    });
    secs / 60
}

/// Whether `err` is the server's "table garivini_dispatches doesn't
/// exist" (ER_NO_SUCH_TABLE, 1146).
fn is_no_table(err: &mysql_async::Error) -> bool {
    matches!(err, mysql_async::Error::Server(e)
        if e.code == 1146 && e.message.contains("garivini_dispatches"))
}

/// Minutes taken out of a tally to be written; what is left of them when
/// this is dropped (not written, or the flush cancelled) goes back.
struct Taken<'a> {
    db: &'a Db,
    minutes: BTreeMap<u32, u64>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.minutes.is_empty() {
            return;
        }
        let mut state = self.db.dispatches.0.lock().unwrap();
        if state.missing.is_some() {
            return;
        }
        for (&minute, &n) in &self.minutes {
            *state.pending.entry(minute).or_insert(0) += n;
        }
    }
}

impl Store {
    /// Counts `n` jobs of database `dbid` that gearmand acknowledged, in
    /// the minute it is now. Never waits for the database: the count is
    /// written by the next flush. Nothing is counted while the database is
    /// known to lack the table, nor for an unknown `dbid`.
    pub fn count_dispatched(&self, dbid: u32, n: u64) {
        let Ok(db) = self.db(dbid) else { return };
        if n == 0 {
            return;
        }
        let minute = minute_now(db);
        let mut state = db.dispatches.0.lock().unwrap();
        if state.missing.is_some() {
            return;
        }
        *state.pending.entry(minute).or_insert(0) += n;
        // A database away for a day: what it could not take is past
        // keeping.
        let oldest = minute.saturating_sub(KEEP_MINUTES);
        while state
            .pending
            .first_key_value()
            .is_some_and(|(&m, _)| m < oldest)
        {
            state.pending.pop_first();
        }
    }

    /// Writes every database's tally now, whenever the last flush was
    /// (what a role does when it stops), and deletes the old rows when
    /// that is due. A database known down, or whose write fails, keeps its
    /// tally. Safe to cancel: what was not written goes back to the tally.
    pub async fn flush_dispatches(&self) -> Flushed {
        self.flush(true).await
    }

    /// The last flush of a role that stops: [`Store::flush_dispatches`]
    /// for at most [`LAST_FLUSH_LIMIT`], so that a database that hangs
    /// does not hold the shutdown. What it could not write stays in the
    /// tally (another role of the process may still write it), and is
    /// otherwise lost with the process.
    pub async fn flush_dispatches_last(&self) {
        match tokio::time::timeout(LAST_FLUSH_LIMIT, self.flush_dispatches()).await {
            Ok(Flushed { failed: 0, .. }) => {}
            Ok(_) | Err(_) => tracing::debug!(
                "not every dispatch count was written at shutdown: the chart misses those"
            ),
        }
    }

    /// Flushes the tallies ([`Store::flush_dispatches`]) every
    /// [`FLUSH_EVERY`] until `shutdown`; each database at most once per
    /// [`FLUSH_EVERY`] however many of these run on the store. Logs a
    /// flush only when it failed (at debug: the tally is kept, and the next
    /// tries again).
    pub async fn flush_dispatches_until(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(FLUSH_EVERY) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = self.flush(false) => {}
            }
        }
    }

    async fn flush(&self, force: bool) -> Flushed {
        let mut flushed = Flushed::default();
        // All at once: a database that hangs delays only its own counts.
        let outcomes =
            futures::future::join_all(self.dbs.iter().map(|db| self.flush_db(db, force))).await;
        for (db, outcome) in self.dbs.iter().zip(outcomes) {
            match outcome {
                Ok((dispatches, statements)) => {
                    flushed.dispatches += dispatches;
                    flushed.statements += statements;
                }
                Err(err) => {
                    tracing::debug!(db.id = db.cfg.dbid, error = %err, "dispatch counts not written; kept for the next flush");
                    flushed.failed += 1;
                }
            }
        }
        flushed
    }

    /// Writes `db`'s tally (and prunes, and looks for a missing table,
    /// when that is due); the dispatches and the statements written.
    async fn flush_db(&self, db: &std::sync::Arc<Db>, force: bool) -> Result<(u64, usize)> {
        let dbid = db.cfg.dbid;
        if db.health.lock().unwrap().down.is_some() {
            return Ok((0, 0));
        }
        let (minutes, missing, prune) = {
            let mut state = db.dispatches.0.lock().unwrap();
            if !force
                && state
                    .flushed_at
                    .is_some_and(|at| at.elapsed() < FLUSH_EVERY)
            {
                return Ok((0, 0));
            }
            state.flushed_at = Some(Instant::now());
            if let Some(at) = state.missing {
                if at.elapsed() < MISSING_REREAD {
                    return Ok((0, 0));
                }
            }
            let prune = state.pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY);
            if state.pending.is_empty() && !prune && state.missing.is_none() {
                return Ok((0, 0));
            }
            (
                std::mem::take(&mut state.pending),
                state.missing.is_some(),
                prune,
            )
        };
        let wrap = |source| Error::Db {
            dbid,
            dsn: db.cfg.masked(),
            source,
        };
        let timed_out = || Error::DbTimeout {
            dbid,
            dsn: db.cfg.masked(),
            timeout: self.op_timeout,
        };
        if missing {
            let found = tokio::time::timeout(self.op_timeout, async {
                let mut conn = db.pool().get_conn().await?;
                conn.query_drop("SELECT minute FROM garivini_dispatches LIMIT 0")
                    .await
            })
            .await;
            match found {
                Ok(Ok(())) => {
                    db.dispatches.0.lock().unwrap().missing = None;
                    tracing::info!(
                        db.id = dbid,
                        "garivini_dispatches table found: dispatches are counted"
                    );
                }
                Ok(Err(err)) if is_no_table(&err) => {
                    db.dispatches.0.lock().unwrap().missing = Some(Instant::now());
                }
                Ok(Err(err)) => return Err(wrap(err)),
                Err(_) => return Err(timed_out()),
            }
            return Ok((0, 0));
        }
        // Keeps the minutes of the database's clock once it is read.
        let now = self.clock(dbid).await / 60;
        let mut taken = Taken { db, minutes };
        let (mut dispatches, mut statements) = (0, 0);
        while let Some((&minute, &n)) = taken.minutes.first_key_value() {
            let written = tokio::time::timeout(self.op_timeout, async {
                let mut conn = db.pool().get_conn().await?;
                conn.exec_drop(
                    "INSERT INTO garivini_dispatches (minute, dispatched) VALUES (?, ?) \
                     ON DUPLICATE KEY UPDATE dispatched = dispatched + VALUES(dispatched)",
                    (minute, n),
                )
                .await
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    taken.minutes.pop_first();
                    dispatches += n;
                    statements += 1;
                }
                Ok(Err(err)) if is_no_table(&err) => {
                    self.table_missing(db);
                    taken.minutes.clear();
                    return Ok((dispatches, statements));
                }
                Ok(Err(err)) => return Err(wrap(err)),
                Err(_) => return Err(timed_out()),
            }
        }
        drop(taken);
        if prune {
            // Tried once per PRUNE_EVERY, whatever the outcome: the next
            // prune deletes what this one did not.
            db.dispatches.0.lock().unwrap().pruned_at = Some(Instant::now());
            let pruned = tokio::time::timeout(self.op_timeout, async {
                let mut conn = db.pool().get_conn().await?;
                conn.exec_drop(
                    "DELETE FROM garivini_dispatches WHERE minute < ? LIMIT ?",
                    (now.saturating_sub(KEEP_MINUTES), PRUNE_LIMIT),
                )
                .await?;
                Ok::<_, mysql_async::Error>(conn.affected_rows())
            })
            .await;
            match pruned {
                Ok(Ok(rows)) if rows > 0 => {
                    tracing::debug!(db.id = dbid, rows, "old dispatch counts deleted")
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) if is_no_table(&err) => self.table_missing(db),
                Ok(Err(err)) => return Err(wrap(err)),
                Err(_) => return Err(timed_out()),
            }
        }
        Ok((dispatches, statements))
    }

    /// Remembers that `db` has no table (its tally dropped), and says so
    /// once until it is found again.
    fn table_missing(&self, db: &Db) {
        let mut state = db.dispatches.0.lock().unwrap();
        state.pending.clear();
        if state.missing.replace(Instant::now()).is_none() {
            tracing::info!(
                db.id = db.cfg.dbid,
                "no garivini_dispatches table: dispatches are not counted, and the dashboard's chart has no dispatched line (garivini schema check --apply creates it)"
            );
        }
    }

    /// The dispatches counted in database `dbid` from minute `since` (unix
    /// time / 60) on, oldest first: one range read of the table's primary
    /// key. `None` when the database has no table (remembered for
    /// [`MISSING_REREAD`]: no statement meanwhile).
    pub async fn dispatches_since(
        &self,
        dbid: u32,
        since: u32,
    ) -> Result<Option<Vec<MinuteCount>>> {
        let db = self.db(dbid)?;
        if db
            .dispatches
            .0
            .lock()
            .unwrap()
            .missing
            .is_some_and(|at| at.elapsed() < MISSING_REREAD)
        {
            return Ok(None);
        }
        let read = self
            .attempt(db, || async {
                let mut conn = db.pool().get_conn().await?;
                conn.exec::<(u32, u64), _, _>(
                    "SELECT minute, dispatched FROM garivini_dispatches \
                     WHERE minute >= ? ORDER BY minute LIMIT ?",
                    (since, KEEP_MINUTES),
                )
                .await
            })
            .await;
        match read {
            Ok(rows) => {
                db.dispatches.0.lock().unwrap().missing = None;
                Ok(Some(
                    rows.into_iter()
                        .map(|(minute, dispatched)| MinuteCount { minute, dispatched })
                        .collect(),
                ))
            }
            Err(Error::Db { source, .. }) if is_no_table(&source) => {
                self.table_missing(db);
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let dbs = crate::config::parse_dsn_list("mysql://u@127.0.0.1:1/never").unwrap();
        Store::open(dbs).unwrap()
    }

    fn pending(store: &Store) -> BTreeMap<u32, u64> {
        store.dbs[0].dispatches.0.lock().unwrap().pending.clone()
    }

    #[test]
    fn counts_add_up_by_minute_and_what_is_not_written_goes_back() {
        let store = store();
        store.count_dispatched(1, 3);
        store.count_dispatched(1, 2);
        store.count_dispatched(1, 0);
        store.count_dispatched(9, 7);
        let now = minute_now(&store.dbs[0]);
        let counts = pending(&store);
        assert_eq!(counts.values().sum::<u64>(), 5, "{counts:?}");
        assert!(counts.keys().all(|&m| m + 1 >= now && m <= now));

        // Taken out for a flush that wrote one minute of two.
        let minutes = std::mem::take(&mut store.dbs[0].dispatches.0.lock().unwrap().pending);
        let mut taken = Taken {
            db: &store.dbs[0],
            minutes,
        };
        taken.minutes.insert(now - 1, 4);
        taken.minutes.remove(&(now - 1));
        store.count_dispatched(1, 1);
        drop(taken);
        assert_eq!(pending(&store).values().sum::<u64>(), 6);

        // A day old: past keeping.
        store.dbs[0]
            .dispatches
            .0
            .lock()
            .unwrap()
            .pending
            .insert(now - KEEP_MINUTES - 1, 9);
        store.count_dispatched(1, 1);
        assert_eq!(pending(&store).values().sum::<u64>(), 7);
    }

    #[test]
    fn nothing_is_counted_while_the_table_is_missing() {
        let store = store();
        store.count_dispatched(1, 3);
        store.table_missing(&store.dbs[0]);
        assert!(pending(&store).is_empty());
        store.count_dispatched(1, 3);
        assert!(pending(&store).is_empty());
    }
}

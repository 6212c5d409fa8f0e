//! Paused functions: the `garivini_paused` table (schema.sql), one row per
//! paused function per database. `garivini functions pause F` writes the
//! row to every database and `resume` deletes it from every one; a role
//! honours a pause found on any database it reads, so that a pause holds
//! for the function's rows wherever they are (and survives one database
//! being away while the others answer).
//!
//! The roles read the table through [`Store::paused_functions`]: cached per
//! database for [`PAUSED_REREAD`], shared by every role of the process
//! (they share the store), and read again in the background, so that no
//! role waits for a database other than its own, and a hung database costs
//! only its own pauses being a little late. Without the table a database
//! pauses nothing: one warning, and everything runs as before.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use serde::Serialize;
use tokio::sync::watch;

use super::{Db, Store};
use crate::error::{Error, Result};

/// How long a reading of a database's paused functions is trusted: a
/// pause or resume reaches every role within about this (plus a read).
pub const PAUSED_REREAD: Duration = Duration::from_secs(1);
/// How old a reading may be and still be used while a new one is under
/// way. A role that looks often (a QueueRunner, a busy Injector) keeps its
/// readings younger than this and never waits; one that looks after a
/// quiet spell waits for a fresh reading, so that a pause made meanwhile
/// holds from its first job.
const STALE_LIMIT: Duration = Duration::from_secs(2);
/// How long looks wait, in all, for a reading under way when the last is
/// older than [`STALE_LIMIT`] (or there is none yet); then they use what
/// there is. So a database that hangs costs each of its readings this,
/// once, rather than every look its operation timeout.
const READ_WAIT: Duration = Duration::from_secs(2);

/// One database's paused functions as this process last read them.
pub(super) struct PauseCache {
    state: Mutex<CacheState>,
    /// Readings ended (done or failed) so far: looks waiting for a new
    /// reading wait for this to move.
    readings: watch::Sender<u64>,
}

impl Default for PauseCache {
    fn default() -> Self {
        PauseCache {
            state: Mutex::default(),
            readings: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct CacheState {
    names: Arc<HashSet<String>>,
    /// When the last reading ended (`None`: none yet, or forgotten after
    /// a pause or resume by this process).
    read_at: Option<Instant>,
    /// When the reading under way, if any, started.
    reading_since: Option<Instant>,
    /// Whether the table was missing at the last reading (warned once).
    missing: bool,
}

/// The functions paused on any database, as the roles see them now
/// ([`Store::paused_functions`]).
#[derive(Debug, Clone, Default)]
pub struct PausedFunctions(Vec<Arc<HashSet<String>>>);

impl PausedFunctions {
    /// A set of these names (for tests and callers of their own).
    pub fn of<S: Into<String>>(names: impl IntoIterator<Item = S>) -> PausedFunctions {
        PausedFunctions(vec![Arc::new(names.into_iter().map(Into::into).collect())])
    }

    /// Whether `funcname` is paused.
    pub fn contains(&self, funcname: &str) -> bool {
        self.0.iter().any(|set| set.contains(funcname))
    }

    /// The paused functions' names (a name paused on several databases
    /// may come more than once).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flat_map(|set| set.iter().map(String::as_str))
    }

    /// Whether nothing is paused.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|set| set.is_empty())
    }
}

/// A paused function as one database holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PausedFunction {
    /// The function.
    pub funcname: String,
    /// When it was paused there (unix time, the database's clock).
    pub since: u32,
}

/// What a pause or resume did on one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseChange {
    /// The row was added (pause) or deleted (resume).
    Changed,
    /// It was paused already (pause), or not paused (resume).
    Unchanged,
    /// The database has no `garivini_paused` table: nothing changed.
    NoTable,
}

impl Store {
    /// The functions paused on any database: each database's reading is
    /// at most [`PAUSED_REREAD`] old, or being read again meanwhile. A
    /// database without the table, or that cannot be read, pauses nothing
    /// new (a database that stops answering keeps its last reading). A
    /// reading older than a couple of seconds (or none yet) is waited for,
    /// at most a couple of seconds per reading; a role that looks often
    /// never waits.
    pub async fn paused_functions(&self) -> PausedFunctions {
        let mut sets = Vec::with_capacity(self.dbs.len());
        for db in &self.dbs {
            sets.push(self.db_paused(db).await);
        }
        PausedFunctions(sets)
    }

    async fn db_paused(&self, db: &Arc<Db>) -> Arc<HashSet<String>> {
        let (names, wait_until, seen) = {
            let mut state = db.paused.state.lock().unwrap();
            let age = state.read_at.map(|at| at.elapsed());
            if age.is_none_or(|age| age >= PAUSED_REREAD) && state.reading_since.is_none() {
                state.reading_since = Some(Instant::now());
                tokio::spawn(refresh_paused(db.clone(), self.op_timeout));
            }
            let wait_until = match (age, state.reading_since) {
                (Some(age), _) if age < STALE_LIMIT => None,
                (_, Some(since)) => Some(since + READ_WAIT),
                _ => None,
            };
            (
                state.names.clone(),
                wait_until,
                *db.paused.readings.borrow(),
            )
        };
        let Some(wait_until) = wait_until.filter(|&at| at > Instant::now()) else {
            return names;
        };
        let mut readings = db.paused.readings.subscribe();
        let ended = readings.wait_for(|&n| n > seen);
        let _ = tokio::time::timeout_at(wait_until.into(), ended).await;
        let names = db.paused.state.lock().unwrap().names.clone();
        names
    }

    /// Pauses `funcname` on database `dbid` (as of the database's clock),
    /// and forgets this process's reading of it so that its own roles
    /// see the pause at their next look.
    pub async fn pause_function(&self, dbid: u32, funcname: &str) -> Result<PauseChange> {
        crate::job::check_funcname(funcname)?;
        self.change_pause(
            dbid,
            "INSERT IGNORE INTO garivini_paused (funcname, since) VALUES (?, UNIX_TIMESTAMP())",
            funcname,
        )
        .await
    }

    /// Resumes `funcname` on database `dbid`, as [`Store::pause_function`]
    /// pauses it.
    pub async fn resume_function(&self, dbid: u32, funcname: &str) -> Result<PauseChange> {
        crate::job::check_funcname(funcname)?;
        self.change_pause(
            dbid,
            "DELETE FROM garivini_paused WHERE funcname = ?",
            funcname,
        )
        .await
    }

    // Admin calls, as `garivini jobs`: through `attempt`, so that a
    // database that does not answer is reported by the command, not
    // logged as an outage of the process.
    async fn change_pause(
        &self,
        dbid: u32,
        statement: &'static str,
        funcname: &str,
    ) -> Result<PauseChange> {
        let db = self.db(dbid)?;
        let changed = self
            .attempt(db, move || async move {
                let mut conn = db.pool().get_conn().await?;
                conn.exec_drop(statement, (funcname,)).await?;
                Ok(conn.affected_rows() > 0)
            })
            .await;
        db.paused.state.lock().unwrap().read_at = None;
        match changed {
            Ok(true) => Ok(PauseChange::Changed),
            Ok(false) => Ok(PauseChange::Unchanged),
            Err(err) if is_no_paused_table(&err) => Ok(PauseChange::NoTable),
            Err(err) => Err(err),
        }
    }

    /// The functions paused on database `dbid`, by name; `None` when it
    /// has no `garivini_paused` table.
    pub async fn list_paused(&self, dbid: u32) -> Result<Option<Vec<PausedFunction>>> {
        let db = self.db(dbid)?;
        let read = self
            .attempt(db, move || async move {
                let mut conn = db.pool().get_conn().await?;
                conn.query::<(Vec<u8>, u32), _>(
                    "SELECT funcname, since FROM garivini_paused ORDER BY funcname",
                )
                .await
            })
            .await;
        match read {
            Ok(rows) => Ok(Some(
                rows.into_iter()
                    .map(|(name, since)| PausedFunction {
                        funcname: String::from_utf8_lossy(&name).into_owned(),
                        since,
                    })
                    .collect(),
            )),
            Err(err) if is_no_paused_table(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// Reads database `db`'s paused functions into its cache, bounded by
/// `timeout`. Not through [`Store::run`]: a reading that fails is no news
/// for the database's health (the roles' own calls tell), and it keeps the
/// last reading. A database known down is not tried.
async fn refresh_paused(db: Arc<Db>, timeout: Duration) {
    let down = db.health.lock().unwrap().down.is_some();
    let read = if down {
        None
    } else {
        let pool = db.pool().clone();
        Some(
            tokio::time::timeout(timeout, async move {
                let mut conn = pool.get_conn().await?;
                conn.query::<Vec<u8>, _>("SELECT funcname FROM garivini_paused")
                    .await
            })
            .await,
        )
    };
    let dbid = db.cfg.dbid;
    {
        let mut state = db.paused.state.lock().unwrap();
        match read {
            Some(Ok(Ok(rows))) => {
                if state.missing {
                    tracing::info!(
                        db.id = dbid,
                        "garivini_paused table found: pauses are honoured"
                    );
                    state.missing = false;
                }
                let names: HashSet<String> = rows
                    .into_iter()
                    .map(|name| String::from_utf8_lossy(&name).into_owned())
                    .collect();
                if names != *state.names {
                    let mut now: Vec<&str> = names.iter().map(String::as_str).collect();
                    now.sort_unstable();
                    tracing::info!(db.id = dbid, paused = ?now, "paused functions changed");
                    state.names = Arc::new(names);
                }
            }
            Some(Ok(Err(mysql_async::Error::Server(e)))) if e.code == 1146 => {
                if !state.missing {
                    tracing::warn!(
                        db.id = dbid,
                        "no garivini_paused table: functions paused there are not honoured (garivini schema check --apply creates it)"
                    );
                    state.missing = true;
                }
                state.names = Arc::default();
            }
            Some(Ok(Err(err))) => {
                tracing::debug!(db.id = dbid, error = %err, "cannot read paused functions; keeping the last reading");
            }
            Some(Err(_)) => {
                tracing::debug!(
                    db.id = dbid,
                    ?timeout,
                    "paused functions not read in time; keeping the last reading"
                );
            }
            None => {}
        }
        state.read_at = Some(Instant::now());
        state.reading_since = None;
    }
    db.paused.readings.send_modify(|n| *n += 1);
}

/// Whether `err` is the server's "table garivini_paused doesn't exist"
/// (ER_NO_SUCH_TABLE, 1146).
fn is_no_paused_table(err: &Error) -> bool {
    matches!(
        err,
        Error::Db {
            source: mysql_async::Error::Server(e),
            ..
        } if e.code == 1146 && e.message.contains("garivini_paused")
    )
}

//! Which QueueRunner claims from a database whose QueueRunners elect one
//! claimer (a Galera cluster, or the DSN's `single_claimer`): the turn is
//! held in the `garivini_claimer` table.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::Store;
use crate::error::{Error, Result};

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

impl Store {
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
}

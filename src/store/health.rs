//! Each database's health: the check at start-up ([`Store::connect`],
//! [`Store::connect_or_wait`]), a database known down, and the probe that
//! takes it back once it answers.
//!
//! A database down at start-up and one that went down later are the same
//! thing from then on: known down, its calls refused at once, one probe
//! trying it. What the start-up check would have done for it (see that the
//! job table is there, read `max_allowed_packet`) is done by the probe
//! when it first answers; what the calls read on first use (the optional
//! columns, the clock) they read then.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt as _};
use mysql_async::prelude::Queryable;

use super::{fault_reason, Db, Store, PROBE_CAP, STARTUP_GRACE};
use crate::config::DbConfig;
use crate::error::{Error, Result};

/// A database's health, as its calls found it.
#[derive(Default)]
pub(super) struct Health {
    /// Set when a call failed on a fault of the database's own
    /// ([`Error::is_connection_fault`]: unreachable, timed out, refusing
    /// connections), with when it went down and its last fault; cleared
    /// when it answers again.
    /// While set, calls are refused at once ([`Error::DbDown`]) and a probe
    /// tries the database in the background.
    pub(super) down: Option<(Instant, String)>,
    /// Whether that probe is running (at most one per database).
    probing: bool,
    /// Whether the start-up check has run on it (passed, or its failure
    /// reported): false for a database down since the start, whose probe
    /// then runs the check when it first answers.
    checked: bool,
}

impl Health {
    /// Records `err`, a fault of the database's; an outage already under
    /// way keeps its start.
    fn went_down(&mut self, err: &Error) {
        let since = self.down.as_ref().map_or_else(Instant::now, |(at, _)| *at);
        self.down = Some((since, fault_reason(err)));
    }
}

/// What a start does when no database answers.
#[derive(Clone, Copy, PartialEq)]
enum NoneAnswers {
    /// Fails with the first one's fault: a command, a client.
    Fail,
    /// Starts all the same, every database known down: a process that
    /// serves, and waits for them.
    Wait,
}

impl Store {
    /// Opens the pools and checks the databases, all at once, so that a
    /// bad configuration fails at start-up. Reads each server's
    /// `max_allowed_packet` on the way.
    ///
    /// Starts when at least one database answers. One that is down (a
    /// fault of its own: unreachable, refusing connections, or no answer
    /// within [`STARTUP_GRACE`] of the first that did) is logged once,
    /// with why, and starts as known down: its calls fail at once until a
    /// background probe finds it answering. A database that answers but
    /// refuses us (wrong password, host not allowed, unknown database, no
    /// `job` table) is a configuration mistake, not an outage: an error
    /// here, as is every database being down (the first one's fault).
    pub async fn connect(dbs: Vec<DbConfig>) -> Result<Store> {
        Store::start(dbs, NoneAnswers::Fail).await
    }

    /// [`Store::connect`] for a process that serves (the roles, the web
    /// role), which must come up whether or not a database answers:
    /// with every database down it starts all the same. Each is then known
    /// down as one that went down later is: logged once, its calls refused
    /// at once ([`Error::DbDown`]: nothing is stored, nothing hangs), and
    /// taken up by its probe within about [`PROBE_CAP`] of answering. The
    /// probe then checks it as the start-up would have; a configuration
    /// mistake found so is logged once as an error, and its calls fail on
    /// it. A database that answers at start-up and refuses us is an error
    /// here too.
    pub async fn connect_or_wait(dbs: Vec<DbConfig>) -> Result<Store> {
        Store::start(dbs, NoneAnswers::Wait).await
    }

    async fn start(dbs: Vec<DbConfig>, none_answers: NoneAnswers) -> Result<Store> {
        let store = Store::open(dbs)?;
        let mut outcomes: Vec<Option<Result<Option<u64>>>> =
            store.dbs.iter().map(|_| None).collect();
        {
            let mut checks: FuturesUnordered<_> = store
                .dbs
                .iter()
                .enumerate()
                .map(|(i, db)| {
                    let store = &store;
                    async move {
                        let check = || async { check(&mut db.pool().get_conn().await?).await };
                        // Not through `run`: a fault here is reported below,
                        // once, or is the caller's error.
                        (i, store.attempt_nodes(db, check).await)
                    }
                })
                .collect();
            let grace = tokio::time::sleep(Duration::MAX);
            tokio::pin!(grace);
            let mut answered = false;
            loop {
                tokio::select! {
                    next = checks.next() => match next {
                        None => break,
                        Some((i, outcome)) => {
                            if outcome.is_ok() && !answered {
                                answered = true;
                                grace.as_mut().reset(tokio::time::Instant::now() + STARTUP_GRACE);
                            }
                            outcomes[i] = Some(outcome);
                        }
                    },
                    _ = &mut grace, if answered => break,
                }
            }
        }
        let mut down = Vec::new();
        for (db, outcome) in store.dbs.iter().zip(outcomes) {
            match outcome {
                Some(Ok(server)) => {
                    db.set_max_packet(server);
                    db.health.lock().unwrap().checked = true;
                }
                Some(Err(err)) if !err.is_connection_fault() => return Err(err),
                Some(Err(err)) => down.push((db, err)),
                None => down.push((
                    db,
                    Error::DbTimeout {
                        dbid: db.cfg.dbid,
                        dsn: db.cfg.masked(),
                        timeout: STARTUP_GRACE,
                    },
                )),
            }
        }
        if down.len() == store.dbs.len() {
            if none_answers == NoneAnswers::Fail {
                return Err(down.swap_remove(0).1);
            }
            tracing::info!(
                databases = down.len(),
                "no database answers: starting all the same, not ready; each is taken up when it answers"
            );
        }
        for (db, err) in down {
            // The one warning of this outage, with why.
            db.outage.failed(&err);
            store.mark_down(db, &err);
        }
        Ok(store)
    }

    /// Whether database `dbid` takes calls now: it is not known down, and
    /// its job table answers a read. Run as the roles' calls are: a fault
    /// marks it down (its probe then takes it back once it answers), and
    /// while it is known down this fails at once ([`Error::DbDown`])
    /// without trying it. So it says yes exactly when the roles' calls go
    /// through, and never waits on a database known away.
    pub async fn ready(&self, dbid: u32) -> Result<()> {
        let db = self.db(dbid)?;
        self.run(db, || async {
            let mut conn = db.pool().get_conn().await?;
            conn.query_drop("SELECT jobid FROM job LIMIT 0").await
        })
        .await
    }

    /// Whether database `dbid` takes calls, as its calls and its probe
    /// found it, for anyone to see (`/readyz`): `Err` with the last
    /// fault's reason, never the database's URL, while it is known down.
    /// No query once the database was checked (by [`Store::connect`],
    /// [`Store::connect_or_wait`] or its probe): every role's call and
    /// the web role's sampling keep that state. A database never checked
    /// (a store made by [`Store::open`]) is asked with [`Store::ready`].
    pub async fn readiness(&self, dbid: u32) -> std::result::Result<(), String> {
        let db = self.db(dbid).map_err(|e| e.to_string())?;
        let checked = {
            let health = db.health.lock().unwrap();
            if let Some((_, reason)) = &health.down {
                return Err(reason.clone());
            }
            health.checked
        };
        if checked {
            return Ok(());
        }
        self.ready(dbid).await.map_err(|e| fault_reason(&e))
    }

    /// Marks `db` down after `err`, and starts its probe unless one runs.
    pub(super) fn mark_down(&self, db: &Arc<Db>, err: &Error) {
        let mut health = db.health.lock().unwrap();
        health.went_down(err);
        if !health.probing {
            health.probing = true;
            tokio::spawn(probe(Arc::downgrade(db), self.op_timeout));
        }
    }

    pub(super) fn healthy(&self, db: &Db) -> bool {
        db.health.lock().unwrap().down.is_none()
    }
}

/// The start-up check of a node: its job table is there, and the server's
/// max_allowed_packet.
async fn check(conn: &mut mysql_async::Conn) -> mysql_async::Result<Option<u64>> {
    conn.query_drop("SELECT jobid FROM job LIMIT 0").await?;
    conn.query_first::<u64, _>("SELECT @@max_allowed_packet")
        .await
}

/// Tries a database known down, with the outage's backoff (at most
/// [`PROBE_CAP`] apart), until it answers; then lets its calls through
/// again. Ends early when the store is dropped. A database not checked yet
/// (down since the start) is tried with the start-up check, so that it is
/// checked as it is taken up.
async fn probe(db: Weak<Db>, timeout: Duration) {
    loop {
        let Some(pause) = db.upgrade().map(|db| db.outage.delay_up_to(PROBE_CAP)) else {
            return;
        };
        tokio::time::sleep(pause).await;
        let Some(db) = db.upgrade() else {
            return;
        };
        let checked = {
            // A call that was under way when it went down answered since.
            let mut health = db.health.lock().unwrap();
            if health.down.is_none() {
                health.probing = false;
                return;
            }
            health.checked
        };
        // Every node, from the one in use on in failover order: the first
        // that answers takes the calls.
        let mut answer = Ok(None);
        for k in 0..db.nodes.len() {
            let node = (db.active() + k) % db.nodes.len();
            let tried = tokio::time::timeout(timeout, async {
                let mut conn = db.nodes[node].pool.get_conn().await?;
                match checked {
                    true => conn.query_drop("SELECT 1").await.map(|()| None),
                    false => check(&mut conn).await,
                }
            })
            .await;
            answer = match tried {
                Ok(Ok(server)) => Ok(server),
                Ok(Err(source)) => Err(Error::Db {
                    dbid: db.cfg.dbid,
                    dsn: db.nodes[node].masked.clone(),
                    source,
                }),
                Err(_) => Err(Error::DbTimeout {
                    dbid: db.cfg.dbid,
                    dsn: db.nodes[node].masked.clone(),
                    timeout,
                }),
            };
            if !answer.as_ref().is_err_and(Error::is_connection_fault) {
                db.active.store(node, Ordering::Relaxed);
                break;
            }
        }
        match answer {
            Err(err) if err.is_connection_fault() => {
                db.outage.failed(&err);
                db.health.lock().unwrap().went_down(&err);
            }
            answer => {
                // A database that refused us stays unchecked: `/readyz`
                // then asks it at each look, and says why, until mended.
                let refused = answer.is_err();
                match answer {
                    Ok(server) if !checked => {
                        db.set_max_packet(server);
                    }
                    Ok(_) => {}
                    // Answered, and refused us: its calls fail on it as
                    // they do on a shard whose table was dropped; said
                    // once, as the start-up would have.
                    Err(err) => tracing::error!(
                        db.id = db.cfg.dbid,
                        error = %err,
                        "database answers but refuses us, a configuration mistake: its calls fail until it is mended"
                    ),
                }
                db.outage.ended();
                let mut health = db.health.lock().unwrap();
                health.down = None;
                health.probing = false;
                health.checked = !refused;
                return;
            }
        }
    }
}

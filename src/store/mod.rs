//! The `job` table in one or more MySQL/MariaDB databases. All SQL of the
//! crate lives here, always as prepared statements with bound parameters.
//!
//! Times come from the database's clock (`UNIX_TIMESTAMP()`), never from
//! the host's: several QueueRunners and clients on different hosts then
//! agree on what is due.
//!
//! This file holds [`Store`]: the pools, the run of one operation
//! (timeout, lock-conflict retries, outage tracking) and the choice of a
//! shard. The statements are grouped by concern:
//!
//! - `insert`: storing jobs (multi-row INSERTs that fit the packet limit,
//!   dedup by unique key, shard by key hash);
//! - `claim`: a job's life after it is stored: claim and lease, probe,
//!   give back, extend a lease, delete, reschedule, read one;
//! - `admin`: what `garivini status` and `garivini jobs` read and change;
//! - `rows`: reading rows without failing on any, and SQL helpers;
//! - [`schema`]: `garivini schema check`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts};
use rand::Rng;

use crate::config::DbConfig;
use crate::error::{Error, Result};
pub use crate::job::JobRef;
use crate::outage::Outage;

mod admin;
mod claim;
mod insert;
mod rows;
pub mod schema;

pub use admin::{
    Change, Counts, FunctionStatus, JobState, ListQuery, Listed, Selection, LISTED_ARG_BYTES,
};
pub use claim::Claim;

/// How long a database that failed is avoided for keyless inserts.
pub const DEFAULT_AVOID_FOR: Duration = Duration::from_secs(30);
/// How long one database operation may take before it counts as failed.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per database pool.
pub const DEFAULT_POOL_SIZE: usize = 32;
/// How long an idle pooled connection is kept open.
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);
/// Tries of an operation that keeps meeting lock conflicts.
const LOCK_CONFLICT_TRIES: u64 = 10;
impl Db {
    /// Records the server's max_allowed_packet; returns the limit in force.
    fn set_max_packet(&self, server: Option<u64>) -> u64 {
        // mysql_async's own default when the server does not say.
        let server = server.unwrap_or(4 * 1024 * 1024);
        let limit = self.client_max_packet.map_or(server, |c| c.min(server));
        self.max_packet
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        limit
    }
}

struct Db {
    cfg: DbConfig,
    pool: Pool,
    /// Set when an operation failed for a reason that is the database's
    /// (connection, timeout), not the request's.
    failed_at: Mutex<Option<Instant>>,
    /// Logs its outages, once each.
    outage: Outage,
    /// The server's auto_increment_increment, once read (0 = not yet).
    id_step: std::sync::atomic::AtomicU64,
    /// The largest packet this database takes: the server's
    /// max_allowed_packet, once read (0 = not yet), or the URL's own
    /// `max_allowed_packet` when smaller (the driver then refuses larger
    /// packets itself).
    max_packet: std::sync::atomic::AtomicU64,
    /// The URL's `max_allowed_packet`, if it sets one.
    client_max_packet: Option<u64>,
    /// The database's clock as last read, and when ([`Store::clock`]).
    clock: Mutex<Option<(Instant, u32)>>,
}

/// The job tables of all configured databases.
pub struct Store {
    dbs: Vec<Db>,
    op_timeout: Duration,
    avoid_for: Duration,
}

impl Store {
    /// Opens a pool per database without connecting (connections are made
    /// on first use).
    pub fn open(dbs: Vec<DbConfig>) -> Result<Store> {
        if dbs.is_empty() {
            return Err(Error::NoDatabase);
        }
        let dbs = dbs
            .into_iter()
            .map(|cfg| {
                let opts = crate::config::driver_opts(&cfg.url)?;
                let client_max_packet = opts.max_allowed_packet().map(|n| n as u64);
                let constraints = mysql_async::PoolConstraints::new(0, DEFAULT_POOL_SIZE)
                    .expect("0 <= pool size");
                let opts = mysql_async::OptsBuilder::from_opts(opts)
                    // No COM_RESET_CONNECTION when a connection goes back to
                    // the pool (the driver's default): it costs a round trip
                    // per use and drops the server's prepared statements, so
                    // every statement would be prepared anew. We leave no
                    // session state behind: transactions always end.
                    .pool_opts(
                        mysql_async::PoolOpts::new()
                            .with_constraints(constraints)
                            .with_reset_connection(false)
                            // Without an idle TTL the driver keeps only `min`
                            // idle connections and closes every other one
                            // as it comes back: each operation then paid a
                            // fresh connect and handshake (~0.6 ms here).
                            .with_inactive_connection_ttl(IDLE_CONNECTION_TTL),
                    )
                    .stmt_cache_size(64)
                    // An UPDATE then counts the rows it found, not only those
                    // it changed: "does the row still exist" stays answerable
                    // when the new run_after equals the old.
                    .client_found_rows(true)
                    .tcp_nodelay(true);
                Ok(Db {
                    pool: Pool::new(opts),
                    cfg,
                    failed_at: Mutex::new(None),
                    outage: Outage::new(
                        "database unreachable; keyless inserts avoid it for a while",
                    ),
                    id_step: Default::default(),
                    max_packet: Default::default(),
                    client_max_packet,
                    clock: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Store {
            dbs,
            op_timeout: DEFAULT_OP_TIMEOUT,
            avoid_for: DEFAULT_AVOID_FOR,
        })
    }

    /// Opens the pools and checks that every database answers and has the
    /// `job` table, so that a bad configuration fails at start-up. Reads
    /// each server's `max_allowed_packet` on the way.
    pub async fn connect(dbs: Vec<DbConfig>) -> Result<Store> {
        let store = Store::open(dbs)?;
        for db in &store.dbs {
            let check = || async {
                let mut conn = db.pool.get_conn().await?;
                conn.query_drop("SELECT jobid FROM job LIMIT 0").await?;
                conn.query_first::<u64, _>("SELECT @@max_allowed_packet")
                    .await
            };
            // Not through `run`: the caller reports this error, so there
            // is no outage to log.
            let server = store.attempt(db, check).await?;
            db.set_max_packet(server);
        }
        Ok(store)
    }

    /// The largest statement database `dbid` takes, in bytes (its
    /// `max_allowed_packet`), read from the server on first use.
    pub async fn max_packet(&self, dbid: u32) -> Result<u64> {
        self.packet_limit(self.db(dbid)?).await
    }

    async fn packet_limit(&self, db: &Db) -> Result<u64> {
        let known = db.max_packet.load(std::sync::atomic::Ordering::Relaxed);
        if known > 0 {
            return Ok(known);
        }
        let server = self
            .run(db, || async {
                let mut conn = db.pool.get_conn().await?;
                conn.query_first::<u64, _>("SELECT @@max_allowed_packet")
                    .await
            })
            .await?;
        Ok(db.set_max_packet(server))
    }

    /// The database's clock (unix seconds), where a time must be stamped
    /// without a statement of its own: read from the server at most once a
    /// minute, and moved on by the host's monotonic clock in between, so
    /// that it agrees with the database's `UNIX_TIMESTAMP()` to a second
    /// whatever the host's wall clock says. Falls back to the host's clock
    /// only while the database cannot be read.
    pub async fn clock(&self, dbid: u32) -> u32 {
        let Ok(db) = self.db(dbid) else {
            return host_clock();
        };
        let known = *db.clock.lock().unwrap();
        if let Some((at, secs)) = known {
            if at.elapsed() < CLOCK_REREAD {
                return secs.saturating_add(at.elapsed().as_secs() as u32);
            }
        }
        let read = self
            .run(db, || async {
                let mut conn = db.pool.get_conn().await?;
                rows::db_now(&mut conn).await
            })
            .await;
        match read {
            Ok(secs) => {
                *db.clock.lock().unwrap() = Some((Instant::now(), secs));
                secs
            }
            Err(_) => known.map_or_else(host_clock, |(at, secs)| {
                secs.saturating_add(at.elapsed().as_secs() as u32)
            }),
        }
    }

    /// Sets how long one operation may take (default [`DEFAULT_OP_TIMEOUT`]).
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The configured database ids, 1..=n.
    pub fn dbids(&self) -> impl Iterator<Item = u32> + '_ {
        self.dbs.iter().map(|db| db.cfg.dbid)
    }

    fn db(&self, dbid: u32) -> Result<&Db> {
        dbid.checked_sub(1)
            .and_then(|i| self.dbs.get(i as usize))
            .ok_or(Error::UnknownDb {
                dbid,
                configured: self.dbs.len(),
            })
    }

    /// Runs one operation on `db` under the timeout and wraps its error
    /// with the database's id and masked URL. An operation the server
    /// rolled back because of a deadlock or a lock wait timeout is run
    /// again (a few times, after a short random pause): completions and
    /// claims lock the same rows in different index orders, and InnoDB
    /// resolves that by failing one of them.
    async fn attempt<T, F, Fut>(&self, db: &Db, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = mysql_async::Result<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match tokio::time::timeout(self.op_timeout, op()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(source)) if is_lock_conflict(&source) && tries < LOCK_CONFLICT_TRIES => {
                    tracing::debug!(db.id = db.cfg.dbid, error = %source, tries, "lock conflict, trying again");
                    let pause = rand::rng().random_range(1..20 * tries);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Ok(Err(source)) => {
                    return Err(Error::Db {
                        dbid: db.cfg.dbid,
                        dsn: db.cfg.masked(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(Error::DbTimeout {
                        dbid: db.cfg.dbid,
                        dsn: db.cfg.masked(),
                        timeout: self.op_timeout,
                    })
                }
            }
        }
    }

    /// [`Store::attempt`], and marks the database failed when the fault is
    /// the connection's rather than the statement's (logged once per
    /// outage), or recovered when it answers again.
    async fn run<T, F, Fut>(&self, db: &Db, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = mysql_async::Result<T>>,
    {
        let outcome = self.attempt(db, op).await;
        db.outage.track(&outcome);
        let mut failed_at = db.failed_at.lock().unwrap();
        match &outcome {
            Ok(_) => *failed_at = None,
            Err(err) if err.is_connection_fault() => *failed_at = Some(Instant::now()),
            Err(_) => {}
        }
        outcome
    }

    fn healthy(&self, db: &Db) -> bool {
        db.failed_at
            .lock()
            .unwrap()
            .is_none_or(|at| at.elapsed() >= self.avoid_for)
    }

    /// The database a job with this unique key always goes to, so that the
    /// table's UNIQUE(funcname, uniqkey) dedups across shards.
    fn shard_for(&self, funcname: &str, uniqkey: &str) -> &Db {
        // FNV-1a: stable across processes, versions and platforms, unlike
        // the standard library's randomly keyed hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in funcname.bytes().chain([0]).chain(uniqkey.bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.dbs[(h % self.dbs.len() as u64) as usize]
    }

    /// A random database among those not recently failed (any, if all did),
    /// skipping `exclude`.
    fn pick_keyless(&self, exclude: &[u32]) -> Option<&Db> {
        let candidates: Vec<&Db> = self
            .dbs
            .iter()
            .filter(|db| !exclude.contains(&db.cfg.dbid))
            .collect();
        let healthy: Vec<&Db> = candidates
            .iter()
            .copied()
            .filter(|db| self.healthy(db))
            .collect();
        let from = if healthy.is_empty() {
            candidates
        } else {
            healthy
        };
        if from.is_empty() {
            return None;
        }
        Some(from[rand::rng().random_range(0..from.len())])
    }

    /// Closes every pool, waiting for connections in use to come back.
    pub async fn close(self) {
        for db in self.dbs {
            let _ = db.pool.disconnect().await;
        }
    }
}

/// How long [`Store::clock`] trusts its last reading of a database's clock.
const CLOCK_REREAD: Duration = Duration::from_secs(60);

fn host_clock() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as u32
}

/// Deadlock (1213) or lock wait timeout (1205): the server rolled the
/// statement or transaction back, and the same work may simply be redone.
fn is_lock_conflict(err: &mysql_async::Error) -> bool {
    matches!(err, mysql_async::Error::Server(e) if e.code == 1213 || e.code == 1205)
}

/// Transactions here only take row locks. READ COMMITTED: the claim's
/// `FOR UPDATE` then locks the rows it takes, not the gaps of the
/// run_after range it scans, so inserts of new due rows (which land in
/// that range) neither wait for a claim nor deadlock with it.
fn tx_opts() -> TxOpts {
    let mut opts = TxOpts::default();
    opts.with_consistent_snapshot(false)
        .with_isolation_level(mysql_async::IsolationLevel::ReadCommitted);
    opts
}

//! The `job` table in one or more MySQL/MariaDB databases. All SQL of the
//! crate lives here, always as prepared statements with bound parameters.
//!
//! Times come from the database's clock (`UNIX_TIMESTAMP()`), never from
//! the host's: several QueueRunners and clients on different hosts then
//! agree on what is due.
//!
//! This file holds [`Store`]: the pools, the run of one operation
//! (timeout, lock-conflict retries, outage tracking), and the choice of a
//! shard; `health` each database's health (the start-up check, known down,
//! the probe). The statements are grouped by concern:
//!
//! - `insert`: storing jobs (multi-row INSERTs that fit the packet limit,
//!   dedup by unique key, shard by key hash);
//! - `claim`: a job's life after it is stored: claim and lease, probe,
//!   give back, extend a lease, delete, reschedule, read one;
//! - `admin`: what `garivini status` and `garivini jobs` read and change;
//! - `history`: what happened to a job (attempt, failure, last error), in
//!   our optional columns;
//! - [`functions`]: paused functions (`garivini functions pause`), as the
//!   roles read them;
//! - [`dispatches`]: jobs dispatched per minute, counted by the roles and
//!   read by the dashboard's chart;
//! - `rows`: reading rows without failing on any, and SQL helpers;
//! - [`schema`]: `garivini schema check`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, PoolConstraints, TxOpts};
use rand::Rng;

use crate::config::DbConfig;
use crate::error::{Error, Result};
pub use crate::job::JobRef;
use crate::outage::Outage;
use crate::telemetry;
use health::Health;

mod admin;
mod claim;
mod counts;
pub mod dispatches;
mod election;
pub mod functions;
mod health;
mod history;
mod holds;
mod insert;
pub mod periodic;
mod rows;
pub mod schema;

pub use admin::{
    After, Change, Counts, FunctionStatus, JobState, ListQuery, Listed, Page, Selection,
    LISTED_ARG_BYTES,
};
pub use claim::Claim;
#[cfg(feature = "web")]
pub(crate) use counts::caps as status_caps;
pub use election::CLAIMER_TTL;
pub use history::{bound_error, History, MAX_LAST_ERROR_CHARS};
pub use holds::Holds;
pub use insert::Stored;

/// How long one database operation may take before it counts as failed.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per database pool at most, unless the database's URL sets
/// `pool_max`. A role needs few at once (a claim, a few group DELETEs or
/// INSERTs); this is room for the Controller's and the clients' per-job
/// updates under load. Several processes on one server need
/// `processes x pool_max` within its `max_connections`. Beyond it the
/// server refuses new connections (ERROR 1040): a call then tries again a
/// few times over a moment (one of the pool's own connections is soon
/// free), and a limit that lasts is an outage of that database (its calls
/// fail fast, completions are kept and retried), never a failed job.
pub const DEFAULT_POOL_SIZE: usize = 32;
/// Connections per database pool kept open at least, unless the URL sets
/// `pool_min`: none, idle ones close after [`IDLE_CONNECTION_TTL`].
pub const DEFAULT_POOL_MIN: usize = 0;
/// How long [`Store::connect`] waits for the other databases once one has
/// answered: a database down or hung at start-up does not hold the roles
/// back; it is taken as down and picked up once it answers.
pub const STARTUP_GRACE: Duration = Duration::from_secs(2);
/// Longest pause between two tries of a database known down (the first
/// ones are shorter: [`crate::outage`]'s backoff). A try is one connect and
/// `SELECT 1`, cheap for the server; short, so that calls resume within
/// about a second of its return.
pub const PROBE_CAP: Duration = Duration::from_secs(1);
/// Completions that found no row are logged at most this often per
/// database (and each counted).
pub const MISSED_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept open.
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);
/// Tries of an operation that keeps meeting lock conflicts.
const LOCK_CONFLICT_TRIES: u64 = 10;
impl Db {
    fn active(&self) -> usize {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pool of the node calls go to.
    fn pool(&self) -> &Pool {
        &self.nodes[self.active()].pool
    }

    /// Moves calls from node `failed` (which stopped answering with
    /// `err`) to the next in failover order, unless another call did
    /// already; the move is logged once.
    fn move_on(&self, failed: usize, err: &Error) {
        let next = (failed + 1) % self.nodes.len();
        let moved = self.active.compare_exchange(
            failed,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        if moved.is_ok() {
            tracing::warn!(
                db.id = self.cfg.dbid,
                from = %self.nodes[failed].masked,
                to = %self.nodes[next].masked,
                reason = %fault_reason(err),
                "database node not answering: its calls move to the next node"
            );
            telemetry::node_moved(self.cfg.dbid);
        }
    }

    /// Counts `n` completions (deletes or reschedules, `what`) that found
    /// no row, and warns about them at most once per [`MISSED_LOG_EVERY`].
    fn missed(&self, what: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        telemetry::completions_missed(self.cfg.dbid, n);
        let mut missed = self.missed.lock().unwrap();
        missed.0 += n;
        if missed.1.is_some_and(|at| at.elapsed() < MISSED_LOG_EVERY) {
            return;
        }
        tracing::warn!(
            db.id = self.cfg.dbid,
            rows = missed.0,
            what,
            "completions found no row: another copy completed it or it was cancelled, or this node has not applied its INSERT yet (on a cluster, set wsrep_sync_wait=3 in the DSN)"
        );
        *missed = (0, Some(Instant::now()));
    }

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

/// One node of a database: a server holding (a replica of) its table.
struct Node {
    pool: Pool,
    /// Its URL without the password, for logs and errors.
    masked: String,
}

struct Db {
    cfg: DbConfig,
    /// Its nodes, in failover order (one, unless the DSN lists several).
    nodes: Vec<Node>,
    /// The node calls go to: the first, until it stops answering; then
    /// the next that answers, which keeps them (no move back while it
    /// answers: two nodes written at once would only conflict).
    active: std::sync::atomic::AtomicUsize,
    /// The DSN's `single_claimer`, if it sets one.
    single_claimer: Option<bool>,
    /// Whether the server takes `INSERT ... RETURNING` (MariaDB 10.5+),
    /// once known: 0 = not yet, 1 = yes, 2 = no.
    returning: std::sync::atomic::AtomicU8,
    /// This process's turn to claim, when QueueRunners elect one claimer.
    election: Mutex<election::Election>,
    /// Whether it is known down.
    health: Mutex<Health>,
    /// Logs its outages, once each.
    outage: Outage,
    /// The largest packet this database takes: the server's
    /// max_allowed_packet, once read (0 = not yet), or the URL's own
    /// `max_allowed_packet` when smaller (the driver then refuses larger
    /// packets itself).
    max_packet: std::sync::atomic::AtomicU64,
    /// The URL's `max_allowed_packet`, if it sets one.
    client_max_packet: Option<u64>,
    /// The database's clock as last read, and when ([`Store::clock`]).
    clock: Mutex<Option<(Instant, u32)>>,
    /// Completions that found no row since the last warning, and when
    /// that was ([`Db::missed`]).
    missed: Mutex<(u64, Option<Instant>)>,
    /// Which of our optional columns its table has, and when that was read
    /// ([`Store::optional`]).
    optional: Mutex<Option<(Instant, rows::Optional)>>,
    /// Its paused functions as last read ([`Store::paused_functions`]).
    paused: functions::PauseCache,
    /// Its dispatches not written yet ([`Store::count_dispatched`]).
    dispatches: dispatches::Tally,
}

/// The job tables of all configured databases.
///
/// Each database has a health of its own: one that is down costs only
/// its own rows. Its calls fail at once with [`Error::DbDown`] (instead of
/// each waiting for the timeout), keyless inserts go to the others, and a
/// background probe takes it back as soon as it answers.
pub struct Store {
    dbs: Vec<Arc<Db>>,
    op_timeout: Duration,
}

impl Store {
    /// Opens a pool per database without connecting (connections are made
    /// on first use).
    pub fn open(dbs: Vec<DbConfig>) -> Result<Store> {
        if dbs.is_empty() {
            return Err(Error::NoDatabase);
        }
        let shards = dbs.len();
        let dbs = dbs
            .into_iter()
            .map(|cfg| {
                let mut nodes = Vec::new();
                let (mut single_claimer, mut client_max_packet) = (None, None);
                for url in cfg.nodes() {
                    let node = crate::config::node_options(url)?;
                    single_claimer = single_claimer.or(node.single_claimer);
                    // Every node of one database is the same server as far
                    // as packets go; the first URL's limit stands for all.
                    if nodes.is_empty() {
                        client_max_packet = node.opts.max_allowed_packet().map(|n| n as u64);
                    }
                    nodes.push(Node {
                        pool: Pool::new(pool_opts(node.opts, node.pool)),
                        masked: crate::config::mask_dsn(url),
                    });
                }
                let outage = Outage::database(match shards {
                    1 => "database unreachable: its calls fail at once until it answers again",
                    _ => "database unreachable: its calls fail at once until it answers again; keyless inserts go to the others",
                })
                .about(format!("database {}", cfg.dbid));
                Ok(Arc::new(Db {
                    nodes,
                    active: Default::default(),
                    single_claimer,
                    returning: Default::default(),
                    election: Mutex::default(),
                    cfg,
                    health: Mutex::default(),
                    outage,
                    max_packet: Default::default(),
                    client_max_packet,
                    clock: Mutex::new(None),
                    missed: Mutex::default(),
                    optional: Mutex::default(),
                    paused: Default::default(),
                    dispatches: Default::default(),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Store {
            dbs,
            op_timeout: DEFAULT_OP_TIMEOUT,
        })
    }

    /// The largest statement database `dbid` takes, in bytes (its
    /// `max_allowed_packet`), read from the server on first use.
    pub async fn max_packet(&self, dbid: u32) -> Result<u64> {
        self.packet_limit(self.db(dbid)?).await
    }

    async fn packet_limit(&self, db: &Arc<Db>) -> Result<u64> {
        let known = db.max_packet.load(std::sync::atomic::Ordering::Relaxed);
        if known > 0 {
            return Ok(known);
        }
        let server = self
            .run(db, || async {
                let mut conn = db.pool().get_conn().await?;
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
                let mut conn = db.pool().get_conn().await?;
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

    /// Which of our optional columns the job table of `db` has: read from
    /// the server at first use and again after [`COLUMNS_REREAD`], so that
    /// a column added by `garivini schema check --apply` is used without
    /// a restart. Read as the roles' calls are ([`Store::run`]: a fault
    /// marks the database down); a reading that fails once one is known
    /// keeps the known one, and the call it was for meets the fault itself.
    async fn optional(&self, db: &Arc<Db>) -> Result<rows::Optional> {
        self.optional_by(db, true).await
    }

    /// [`Store::optional`] for the admin commands, whose faults are theirs
    /// to report ([`Store::attempt_nodes`]: no outage logged, no health
    /// changed).
    async fn optional_quiet(&self, db: &Arc<Db>) -> Result<rows::Optional> {
        self.optional_by(db, false).await
    }

    async fn optional_by(&self, db: &Arc<Db>, track: bool) -> Result<rows::Optional> {
        let known = *db.optional.lock().unwrap();
        if let Some((at, cols)) = known {
            if at.elapsed() < COLUMNS_REREAD {
                return Ok(cols);
            }
        }
        let read = || async {
            let mut conn = db.pool().get_conn().await?;
            rows::Optional::read(&mut conn).await
        };
        let read = match track {
            true => self.run(db, read).await,
            false => self.attempt_nodes(db, read).await,
        };
        match (read, known) {
            (Ok(cols), _) => {
                *db.optional.lock().unwrap() = Some((Instant::now(), cols));
                Ok(cols)
            }
            (Err(_), Some((_, cols))) => Ok(cols),
            (Err(err), None) => Err(err),
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

    /// Whether database `dbid` is known down: its last call failed on a
    /// fault of its own and it has not answered since. Its calls fail at
    /// once meanwhile ([`Error::DbDown`]); a background probe clears this
    /// when it answers.
    pub fn is_down(&self, dbid: u32) -> bool {
        self.db(dbid).is_ok_and(|db| !self.healthy(db))
    }

    fn db(&self, dbid: u32) -> Result<&Arc<Db>> {
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
    /// resolves that by failing one of them. So is one the server refused
    /// a new connection for being at its connection limit (1040, 1203):
    /// the pool's other connections still work, and one of them is likely
    /// free a moment later; only a limit that lasts through the tries is
    /// an outage of the database.
    async fn attempt<T, F, Fut>(&self, db: &Db, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = mysql_async::Result<T>>,
    {
        let node = db.active();
        let mut tries = 0;
        loop {
            tries += 1;
            match tokio::time::timeout(self.op_timeout, op()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(source))
                    if (is_lock_conflict(&source) || is_connection_limit(&source))
                        && tries < LOCK_CONFLICT_TRIES =>
                {
                    tracing::debug!(db.id = db.cfg.dbid, error = %source, tries, "lock conflict or connection limit, trying again");
                    let pause = rand::rng().random_range(1..20 * tries);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Ok(Err(source)) => {
                    return Err(Error::Db {
                        dbid: db.cfg.dbid,
                        dsn: db.nodes[node].masked.clone(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(Error::DbTimeout {
                        dbid: db.cfg.dbid,
                        dsn: db.nodes[node].masked.clone(),
                        timeout: self.op_timeout,
                    })
                }
            }
        }
    }

    /// [`Store::attempt`] on the database's node in use and, while the
    /// nodes it tries fail on a fault of their own (unreachable, timed
    /// out, refusing connections), on the next ones in failover order, each
    /// at most once: a database with several nodes is down only when none
    /// answers. The operation may then run twice (on the node that failed
    /// and on the next), as after any fault mid-call: every operation
    /// here is one that may (an insert's second copy is a job run twice at
    /// worst, never one lost).
    async fn attempt_nodes<T, F, Fut>(&self, db: &Db, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = mysql_async::Result<T>>,
    {
        let mut node = db.active();
        let mut outcome = self.attempt(db, &mut op).await;
        for _ in 1..db.nodes.len() {
            match &outcome {
                Err(err) if err.is_connection_fault() => db.move_on(node, err),
                _ => break,
            }
            node = db.active();
            outcome = self.attempt(db, &mut op).await;
        }
        outcome
    }

    /// [`Store::attempt_nodes`] on a database not known down, and its health
    /// from the outcome: a fault of the database's own (logged once per
    /// outage) marks it down, any answer (even a refused statement) up.
    /// On a database known down it fails at once with [`Error::DbDown`]:
    /// no call waits for the timeout of a database that is away, and the
    /// background probe, not the callers, finds out when it is back.
    async fn run<T, F, Fut>(&self, db: &Arc<Db>, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = mysql_async::Result<T>>,
    {
        if let Some((at, reason)) = db.health.lock().unwrap().down.clone() {
            return Err(Error::DbDown {
                dbid: db.cfg.dbid,
                dsn: db.cfg.masked(),
                reason,
                since: at.elapsed(),
            });
        }
        let outcome = self.attempt_nodes(db, op).await;
        db.outage.track(&outcome);
        match &outcome {
            Err(err) if err.is_connection_fault() => self.mark_down(db, err),
            _ => db.health.lock().unwrap().down = None,
        }
        outcome
    }

    /// The database a job with this unique key always goes to, so that the
    /// table's UNIQUE(funcname, uniqkey) dedups across shards.
    fn shard_for(&self, funcname: &str, uniqkey: &str) -> &Arc<Db> {
        // FNV-1a: stable across processes, versions and platforms, unlike
        // the standard library's randomly keyed hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in funcname.bytes().chain([0]).chain(uniqkey.bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.dbs[(h % self.dbs.len() as u64) as usize]
    }

    /// A random database among those not known down (any, if all are),
    /// skipping `exclude`.
    fn pick_keyless(&self, exclude: &[u32]) -> Option<&Arc<Db>> {
        let candidates: Vec<&Arc<Db>> = self
            .dbs
            .iter()
            .filter(|db| !exclude.contains(&db.cfg.dbid))
            .collect();
        let healthy: Vec<&Arc<Db>> = candidates
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
            for node in &db.nodes {
                let _ = node.pool.clone().disconnect().await;
            }
        }
    }
}

/// Why a database is down, in one line, without its id and URL (which
/// [`Error::DbDown`] names).
fn fault_reason(err: &Error) -> String {
    let reason = match err {
        Error::Db { source, .. } => source.to_string(),
        Error::DbTimeout { timeout, .. } => format!("no answer within {timeout:?}"),
        Error::DbDown { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    reason.replace(['\r', '\n'], " ")
}

/// The driver's options for one node's pool.
fn pool_opts(opts: mysql_async::Opts, constraints: PoolConstraints) -> mysql_async::Opts {
    mysql_async::OptsBuilder::from_opts(opts)
        // No COM_RESET_CONNECTION when a connection goes back to the pool
        // (the driver's default): it costs a round trip per use and drops
        // the server's prepared statements, so every statement would be
        // prepared anew. We leave no session state behind: transactions
        // always end. (So the DSN's session settings, applied when a
        // connection opens, stay for its life.)
        .pool_opts(
            mysql_async::PoolOpts::new()
                .with_constraints(constraints)
                .with_reset_connection(false)
                // Without an idle TTL the driver keeps only `min` idle
                // connections and closes every other one as it comes back:
                // each operation then paid a fresh connect and handshake
                // (~0.6 ms here).
                .with_inactive_connection_ttl(IDLE_CONNECTION_TTL),
        )
        .stmt_cache_size(64)
        // An UPDATE then counts the rows it found, not only those it
        // changed: "does the row still exist" stays answerable when the new
        // run_after equals the old.
        .client_found_rows(true)
        .tcp_nodelay(true)
        .into()
}

/// How long [`Store::optional`] trusts its reading of a table's columns.
const COLUMNS_REREAD: Duration = Duration::from_secs(60);

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

/// Too many connections (1040, the server's max_connections) or too many
/// of this user's (1203, max_user_connections): a new connection was
/// refused, and the work may be redone on another once one is free.
fn is_connection_limit(err: &mysql_async::Error) -> bool {
    matches!(err, mysql_async::Error::Server(e) if e.code == 1040 || e.code == 1203)
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

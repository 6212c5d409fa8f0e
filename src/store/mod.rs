//! The `job` table in one or more MySQL/MariaDB databases. All SQL of the
//! crate lives here, always as prepared statements with bound parameters.
//!
//! Times come from the database's clock (`UNIX_TIMESTAMP()`), never from
//! the host's: several QueueRunners and clients on different hosts then
//! agree on what is due.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, TxOpts, Value};
use rand::Rng;

use crate::config::DbConfig;
use crate::error::{Error, Result};
pub use crate::job::JobRef;
use crate::job::{Job, NewJob, When, NEVER};
use crate::outage::Outage;
use crate::telemetry;

mod rows;
pub mod schema;

use rows::{RawRow, COLUMNS};

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
/// Most ids in one `IN (...)` list, and most rows in one INSERT.
const MAX_IN_LIST: usize = 1024;
/// Largest payload of one protocol packet. The driver (mysql_async) sends
/// a statement whose values add up to more as "long data": each value in
/// packets of up to `MAX_PAYLOAD + 1` bytes.
const MAX_PAYLOAD: u64 = 0xff_ffff;
/// Bytes of an INSERT's packet besides its rows, at most: command, statement
/// id, flags, iteration count, and slack.
const STATEMENT_OVERHEAD: u64 = 64;
/// Bytes one row adds to an INSERT's packet besides its values, at most:
/// a type (2 bytes) for each of its six values, a length prefix (up to 9)
/// for each of its five strings, 8 for the run_after integer, and its share
/// of the null bitmap.
const ROW_OVERHEAD: u64 = 80;

/// Which rows a count or a listing means, relative to the database's now
/// and a lease window of `lease` seconds. The four states partition the
/// table; failing cuts across them.
///
/// There is no lease column: a row a QueueRunner, Injector or Controller
/// has dispatched has `run_after = now + lease`, just as a row delayed by
/// that long. So "in flight" is *run_after within the next `lease`
/// seconds*: every leased row (while its lease holds) is in it, and so is
/// any row delayed, backed off or pushed back by less than the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every row.
    All,
    /// `run_after <= now`: waiting for a QueueRunner.
    Due,
    /// `now < run_after <= now + lease`: leased (or due again soon).
    InFlight,
    /// `now + lease < run_after < NEVER`: delayed beyond the lease.
    Scheduled,
    /// `run_after >= NEVER`: given up, kept for inspection.
    Dead,
    /// `failcount > 0` and not dead.
    Failing,
}

impl Selection {
    /// The WHERE condition, whose `?`s [`Selection::params`] binds.
    fn condition(self) -> &'static str {
        match self {
            Selection::All => "TRUE",
            Selection::Due => "run_after <= ?",
            Selection::InFlight => "run_after > ? AND run_after <= ?",
            Selection::Scheduled => "run_after > ? AND run_after < 2147483647",
            Selection::Dead => "run_after >= 2147483647",
            Selection::Failing => "failcount > 0 AND run_after < 2147483647",
        }
    }

    fn params(self, now: u32, lease: u32) -> Vec<Value> {
        let until = Value::from(u64::from(now) + u64::from(lease));
        match self {
            Selection::All | Selection::Dead | Selection::Failing => vec![],
            Selection::Due => vec![Value::from(now)],
            Selection::InFlight => vec![Value::from(now), until],
            Selection::Scheduled => vec![until],
        }
    }

    /// The state (not [`Selection::Failing`] or [`Selection::All`]) of a
    /// row due at `run_after`, by the same bounds as the SQL.
    pub fn state_of(run_after: u32, now: u32, lease: u32) -> Selection {
        let (run_after, now) = (u64::from(run_after), u64::from(now));
        if run_after >= u64::from(NEVER) {
            Selection::Dead
        } else if run_after <= now {
            Selection::Due
        } else if run_after <= now + u64::from(lease) {
            Selection::InFlight
        } else {
            Selection::Scheduled
        }
    }
}

/// The rows of one function in one database, by state
/// ([`Store::count_by_function`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionCounts {
    /// The function.
    pub funcname: String,
    /// Rows due now.
    pub due: u64,
    /// Rows due within the lease window (leased, or due again soon).
    pub in_flight: u64,
    /// Rows due later than the lease window.
    pub scheduled: u64,
    /// Dead rows.
    pub dead: u64,
    /// Rows with failcount > 0 that are not dead.
    pub failing: u64,
    /// run_after of the oldest due row, if any is due.
    pub oldest_due: Option<u32>,
}

/// A row as a listing shows it: the job with at most
/// [`LISTED_ARG_BYTES`] of its arg, and the arg's full length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The row; `arg` holds its first bytes only.
    pub job: Job,
    /// Length of the whole arg, in bytes.
    pub arg_len: u64,
    /// Why the row cannot be dispatched as it is, if it cannot (such a
    /// row is parked, dead, by the first claim that meets it).
    pub unsendable: Option<String>,
}

/// Bytes of each arg a listing reads.
pub const LISTED_ARG_BYTES: usize = 64;

/// What a guarded change ([`Store::retry`], [`Store::cancel`]) found in
/// one database. Either every asked-for row was changed, or none was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Rows changed (all that were asked for, or none).
    pub changed: Vec<u64>,
    /// Ids with no row: nothing was changed.
    pub missing: Vec<u64>,
    /// Rows in flight that the guard refused: nothing was changed.
    pub in_flight: Vec<u64>,
}

/// Rows a chunked bulk retry changes per statement, so that no statement
/// holds the locks of a whole function's dead rows at once.
const RETRY_CHUNK: u64 = 10_000;

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

    /// Stores jobs and returns where each went, in the order given.
    ///
    /// Answers only after every row is committed. Jobs are validated first,
    /// so nothing is written when any job is bad. Jobs without a unique key
    /// go in one multi-row statement to a random healthy database (another
    /// one is tried if it fails); a job with a unique key goes to the
    /// database its key hashes to and, when a row with the same
    /// (funcname, uniqkey) exists, the existing row's id is returned and
    /// nothing new is stored.
    pub async fn insert(&self, jobs: &[NewJob]) -> Result<Vec<JobRef>> {
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
                            refs[i] = Some(JobRef {
                                dbid: db.cfg.dbid,
                                jobid,
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
            for (&i, jobid) in idx.iter().zip(ids) {
                refs[i] = Some(JobRef { dbid, jobid });
            }
        }
        telemetry::inserted(jobs.len());
        Ok(refs
            .into_iter()
            .map(|r| r.expect("every job placed"))
            .collect())
    }

    async fn insert_keyless(
        &self,
        db: &Db,
        jobs: &[NewJob],
        idx: &[usize],
        max_packet: u64,
    ) -> Result<Vec<u64>> {
        let statements = statements(jobs, idx, max_packet);
        let statements = &statements;
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            // Ids of one multi-row INSERT are consecutive steps of
            // auto_increment_increment from LAST_INSERT_ID() (InnoDB
            // allocates them at once for an INSERT of known row count).
            let mut step = db.id_step.load(std::sync::atomic::Ordering::Relaxed);
            if step == 0 {
                step = conn
                    .query_first("SELECT @@auto_increment_increment")
                    .await?
                    .unwrap_or(1);
                db.id_step.store(step, std::sync::atomic::Ordering::Relaxed);
            }
            if let [one] = statements.as_slice() {
                // One statement is atomic on its own: no transaction, so one
                // round trip instead of three.
                return insert_rows(&mut conn, jobs, one, step).await;
            }
            // Several statements in one transaction: stored whole or not at
            // all, and retried after a deadlock without storing twice.
            let mut tx = conn.start_transaction(tx_opts()).await?;
            let mut ids = Vec::with_capacity(idx.len());
            for chunk in statements {
                ids.extend(insert_rows(&mut tx, jobs, chunk, step).await?);
            }
            tx.commit().await?;
            Ok(ids)
        })
        .await
    }

    async fn insert_keyed(&self, db: &Db, jobs: &[NewJob], idx: &[usize]) -> Result<Vec<u64>> {
        self.run(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            if let [i] = idx {
                return Ok(vec![insert_keyed_row(&mut conn, &jobs[*i]).await?]);
            }
            let mut tx = conn.start_transaction(tx_opts()).await?;
            let mut ids = Vec::with_capacity(idx.len());
            for &i in idx {
                ids.push(insert_keyed_row(&mut tx, &jobs[i]).await?);
            }
            tx.commit().await?;
            Ok(ids)
        })
        .await
    }

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

    // The admin operations below (status, jobs) go through `attempt`, not
    // `run`: their caller reports a failure to the operator, so there is
    // no outage to log, and a role's view of the database's health is not
    // theirs to change.

    /// The masked URL of database `dbid`, for reports.
    pub fn masked_dsn(&self, dbid: u32) -> Result<String> {
        Ok(self.db(dbid)?.cfg.masked())
    }

    /// The database's clock and, per function, its rows by state and the
    /// oldest due row, with "in flight" meaning due within `lease` seconds
    /// (see [`Selection`]). One statement over the
    /// `funcname_run_after (funcname, run_after, failcount)` index, which
    /// covers it: it reads index entries only, ~0.5 s per million rows.
    /// Without that index (a table created before it) the answer is the
    /// same, only slower. Takes no lock.
    pub async fn count_by_function(
        &self,
        dbid: u32,
        lease: u32,
    ) -> Result<(u32, Vec<FunctionCounts>)> {
        let db = self.db(dbid)?;
        self.attempt(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            let now = db_now(&mut conn).await?;
            let until = u64::from(now) + u64::from(lease);
            let rows: Vec<RawRow> = conn
                .exec(
                    "SELECT funcname, \
                       CAST(SUM(run_after <= ?) AS UNSIGNED), \
                       CAST(SUM(run_after > ? AND run_after <= ?) AS UNSIGNED), \
                       CAST(SUM(run_after > ? AND run_after < 2147483647) AS UNSIGNED), \
                       CAST(SUM(run_after >= 2147483647) AS UNSIGNED), \
                       CAST(SUM(failcount > 0 AND run_after < 2147483647) AS UNSIGNED), \
                       MIN(IF(run_after <= ?, run_after, NULL)) \
                     FROM job GROUP BY funcname ORDER BY funcname",
                    (now, now, until, until, now),
                )
                .await?;
            let counts = rows
                .into_iter()
                .map(|row| {
                    let (funcname, n) = row.name_and_numbers();
                    let at = |i: usize| n.get(i).copied().flatten();
                    FunctionCounts {
                        funcname,
                        due: at(0).unwrap_or(0),
                        in_flight: at(1).unwrap_or(0),
                        scheduled: at(2).unwrap_or(0),
                        dead: at(3).unwrap_or(0),
                        failing: at(4).unwrap_or(0),
                        oldest_due: at(5).map(|t| t.min(u64::from(u32::MAX)) as u32),
                    }
                })
                .collect();
            Ok((now, counts))
        })
        .await
    }

    /// The database's clock and up to `limit` rows of `selection` (of
    /// `funcname` only, if given), soonest due first, with only the first
    /// [`LISTED_ARG_BYTES`] of each arg. Takes no lock. Ordered by
    /// run_after alone, so that with a funcname the
    /// `funcname_run_after` index gives the order and the scan stops at
    /// `limit`; rows due at the same second come in no set order.
    pub async fn list(
        &self,
        dbid: u32,
        funcname: Option<&str>,
        selection: Selection,
        lease: u32,
        limit: usize,
    ) -> Result<(u32, Vec<Listed>)> {
        let db = self.db(dbid)?;
        self.attempt(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            let now = db_now(&mut conn).await?;
            let condition = selection.condition();
            let mut params = selection.params(now, lease);
            let by_func = match funcname {
                Some(f) => {
                    params.push(Value::from(f));
                    "AND funcname = ?"
                }
                None => "",
            };
            params.push(Value::from(limit as u64));
            let rows: Vec<RawRow> = conn
                .exec(
                    format!(
                        "SELECT jobid, funcname, LEFT(arg, {LISTED_ARG_BYTES}), uniqkey, run_after, \
                         `coalesce`, flag, failcount, COALESCE(LENGTH(arg), 0) \
                         FROM job WHERE {condition} {by_func} ORDER BY run_after LIMIT ?"
                    ),
                    Params::Positional(params),
                )
                .await?;
            let listed = rows
                .into_iter()
                .map(|row| {
                    let read = row.read(dbid);
                    Listed {
                        arg_len: read.extra.first().copied().unwrap_or(0),
                        unsendable: read.unsendable,
                        job: read.job,
                    }
                })
                .collect();
            Ok((now, listed))
        })
        .await
    }

    /// The database's clock and the rows of `jobids` that exist (in no
    /// particular order). Takes no lock.
    pub async fn get_many(&self, dbid: u32, jobids: &[u64]) -> Result<(u32, Vec<Job>)> {
        let db = self.db(dbid)?;
        self.attempt(db, move || async move {
            let mut conn = db.pool.get_conn().await?;
            let now = db_now(&mut conn).await?;
            let mut jobs = Vec::with_capacity(jobids.len());
            for chunk in jobids.chunks(MAX_IN_LIST) {
                let (list, params) = in_list(chunk);
                let rows: Vec<RawRow> = conn
                    .exec(
                        format!("SELECT {COLUMNS} FROM job WHERE jobid IN ({list})"),
                        params,
                    )
                    .await?;
                jobs.extend(rows.into_iter().map(|r| r.read(dbid).job));
            }
            Ok((now, jobs))
        })
        .await
    }

    /// Makes rows of database `dbid` due now (`run_after` = the database's
    /// now), and sets their failcount to 0 if `reset_failcount`.
    ///
    /// All or nothing, in one transaction holding the rows' locks: when an
    /// id has no row, or `guard` is `Some(lease)` and a row is in flight
    /// (due within `lease` seconds, see [`Selection`]), nothing changes
    /// and the [`Change`] names them. A guard makes sure a row a worker may
    /// be running is not dispatched a second time.
    pub async fn retry(
        &self,
        dbid: u32,
        jobids: &[u64],
        reset_failcount: bool,
        guard: Option<u32>,
    ) -> Result<Change> {
        let set = if reset_failcount {
            "run_after = UNIX_TIMESTAMP(), failcount = 0"
        } else {
            "run_after = UNIX_TIMESTAMP()"
        };
        self.guarded_change(dbid, jobids, guard, &format!("UPDATE job SET {set}"))
            .await
    }

    /// Deletes rows of database `dbid`, all or nothing, with the same
    /// guard as [`Store::retry`]: an in-flight row may be running on a
    /// worker right now, and deleting it does not stop that run.
    pub async fn cancel(&self, dbid: u32, jobids: &[u64], guard: Option<u32>) -> Result<Change> {
        self.guarded_change(dbid, jobids, guard, "DELETE FROM job")
            .await
    }

    /// Locks the rows, checks them, then runs `statement` (`UPDATE job
    /// SET ...` or `DELETE FROM job`) on them, in one transaction.
    async fn guarded_change(
        &self,
        dbid: u32,
        jobids: &[u64],
        guard: Option<u32>,
        statement: &str,
    ) -> Result<Change> {
        let db = self.db(dbid)?;
        let mut wanted = jobids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let wanted = &wanted;
        self.attempt(db, move || async move {
            let mut tx = db.pool.start_transaction(tx_opts()).await?;
            let now = db_now(&mut tx).await?;
            let mut found: HashMap<u64, u32> = HashMap::new();
            for chunk in wanted.chunks(MAX_IN_LIST) {
                let (list, params) = in_list(chunk);
                let rows: Vec<(u64, u32)> = tx
                    .exec(
                        format!(
                            "SELECT jobid, run_after FROM job WHERE jobid IN ({list}) FOR UPDATE"
                        ),
                        params,
                    )
                    .await?;
                found.extend(rows);
            }
            let mut change = Change::default();
            for &id in wanted {
                match found.get(&id) {
                    None => change.missing.push(id),
                    Some(&run_after) => {
                        if let Some(lease) = guard {
                            if Selection::state_of(run_after, now, lease) == Selection::InFlight {
                                change.in_flight.push(id);
                            }
                        }
                    }
                }
            }
            if !change.missing.is_empty() || !change.in_flight.is_empty() {
                tx.rollback().await?;
                return Ok(change);
            }
            for chunk in wanted.chunks(MAX_IN_LIST) {
                let (list, params) = in_list(chunk);
                tx.exec_drop(format!("{statement} WHERE jobid IN ({list})"), params)
                    .await?;
            }
            tx.commit().await?;
            change.changed = wanted.clone();
            Ok(change)
        })
        .await
    }

    /// Makes every dead row of `funcname` in database `dbid` due now
    /// (failcount reset to 0 if `reset_failcount`); returns how many.
    /// Runs in statements of at most 10,000 rows each, every one committed
    /// on its own: rows made due early may already be running when a
    /// later statement fails.
    pub async fn retry_dead(
        &self,
        dbid: u32,
        funcname: &str,
        reset_failcount: bool,
    ) -> Result<u64> {
        let db = self.db(dbid)?;
        let set = if reset_failcount {
            "run_after = UNIX_TIMESTAMP(), failcount = 0"
        } else {
            "run_after = UNIX_TIMESTAMP()"
        };
        let sql = format!(
            "UPDATE job SET {set} WHERE funcname = ? AND run_after >= 2147483647 LIMIT {RETRY_CHUNK}"
        );
        let mut total = 0;
        loop {
            let changed = self
                .attempt(db, || async {
                    let mut conn = db.pool.get_conn().await?;
                    conn.exec_drop(sql.as_str(), (funcname,)).await?;
                    Ok(conn.affected_rows())
                })
                .await?;
            total += changed;
            if changed < RETRY_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Closes every pool, waiting for connections in use to come back.
    pub async fn close(self) {
        for db in self.dbs {
            let _ = db.pool.disconnect().await;
        }
    }
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

/// One multi-row INSERT of keyless jobs; returns their ids.
async fn insert_rows(
    q: &mut impl Queryable,
    jobs: &[NewJob],
    idx: &[usize],
    step: u64,
) -> mysql_async::Result<Vec<u64>> {
    let sql = format!(
        "INSERT INTO job (funcname, arg, uniqkey, run_after, `coalesce`, flag) VALUES {}",
        repeat_placeholders("(?, ?, NULL, UNIX_TIMESTAMP() + ?, ?, ?)", idx.len())
    );
    let mut params = Vec::with_capacity(idx.len() * 5);
    for &i in idx {
        let job = &jobs[i];
        params.extend([
            Value::from(job.funcname.as_str()),
            Value::from(job.arg.as_slice()),
            Value::from(job.delay),
            Value::from(job.coalesce.as_deref()),
            Value::from(job.flag.as_str()),
        ]);
    }
    let result = q.exec_iter(sql, Params::Positional(params)).await?;
    let first = result.last_insert_id().unwrap_or_default();
    result.drop_result().await?;
    Ok((0..idx.len() as u64).map(|k| first + k * step).collect())
}

/// One INSERT of a job with a unique key; on a duplicate key,
/// LAST_INSERT_ID(jobid) makes it report the existing row's id.
/// The database's clock, in seconds: the one every run_after is compared
/// with, so that processes on several hosts agree.
async fn db_now(q: &mut impl Queryable) -> mysql_async::Result<u32> {
    Ok(q.query_first("SELECT UNIX_TIMESTAMP()")
        .await?
        .unwrap_or_default())
}

async fn insert_keyed_row(q: &mut impl Queryable, job: &NewJob) -> mysql_async::Result<u64> {
    let result = q
        .exec_iter(
            "INSERT INTO job (funcname, arg, uniqkey, run_after, `coalesce`, flag) \
             VALUES (?, ?, ?, UNIX_TIMESTAMP() + ?, ?, ?) \
             ON DUPLICATE KEY UPDATE jobid = LAST_INSERT_ID(jobid)",
            (
                job.funcname.as_str(),
                job.arg.as_slice(),
                job.uniqkey.as_deref(),
                job.delay,
                job.coalesce.as_deref(),
                job.flag.as_str(),
            ),
        )
        .await?;
    let id = result.last_insert_id().unwrap_or_default();
    result.drop_result().await?;
    Ok(id)
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

/// Placeholders for an `IN (...)` list of `ids`, padded to the next power
/// of two with the first id repeated, so that a handful of statement
/// shapes serve every batch size and stay in the prepared statement cache.
fn in_list(ids: &[u64]) -> (String, Vec<Value>) {
    let n = ids.len().max(1).next_power_of_two();
    let mut params: Vec<Value> = ids.iter().map(|&id| Value::from(id)).collect();
    params.resize(n, Value::from(ids.first().copied().unwrap_or(0)));
    (repeat_placeholders("?", n), params)
}

fn repeat_placeholders(one: &str, n: usize) -> String {
    let mut s = String::with_capacity((one.len() + 2) * n);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(one);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_list_pads_to_a_power_of_two_with_a_real_id() {
        let (sql, params) = in_list(&[7, 8, 9]);
        assert_eq!(sql, "?, ?, ?, ?");
        assert_eq!(params.len(), 4);
        assert_eq!(params[3], Value::from(7u64));
        assert_eq!(in_list(&[5]).0, "?");
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

//! The QueueRunner: moves due rows from the databases into gearmand.
//!
//! Each round, for each database, it claims a batch of due rows in one
//! transaction (`FOR UPDATE SKIP LOCKED`, so several QueueRunners never
//! block each other), leases them (run_after = now + lease), commits, and
//! submits them to gearmand as background jobs. A row whose submit fails is
//! given back at once (due again shortly); only a crash leaves a row to
//! wait out its lease.
//!
//! Rows that cannot be sent now are held: left due in the table, their
//! `run_after` untouched, and not even read while they wait (see
//! [`Holds`]): those of a paused function (`garivini functions pause`), of a
//! function with no worker on any gearmand, of a function whose gearmand
//! queue is at the watermark (so gearmand's memory stays bounded however
//! long the table's backlog is), and of a function at its concurrency limit
//! ([`crate::functions`]). Other functions' rows are claimed as fast as if
//! the held ones were not there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::functions::Functions;
use crate::gearman::{BackgroundJob, FunctionLoad, Submitter};
use crate::names::{
    dispatch_function, DEFAULT_LEASE, DEFAULT_QUEUE_WATERMARK_DEPTH, DEFAULT_SUBMIT_RETRY_DELAY,
};
use crate::outage::Outage;
use crate::periodic;
use crate::store::{Holds, Store};
use crate::telemetry;
use crate::waiting::Limits;

mod room;
use room::Room;

/// Largest batch claimed from one database in one round.
pub const DEFAULT_BATCH_MAX_SIZE: usize = 1000;
/// First batch size (grows while batches come back full).
pub const DEFAULT_BATCH_START_SIZE: usize = 50;
/// Pause between rounds when the tables are idle.
pub const DEFAULT_BATCH_RUN_SLEEP: Duration = Duration::from_secs(1);
/// During a pause, how often the tables are probed for a due row (one
/// indexed `SELECT 1 ... LIMIT 1` per database, no lock, no gearmand call):
/// an idle QueueRunner notices new jobs within this, not within
/// `batch_run_sleep`.
pub const DEFAULT_IDLE_POLL: Duration = Duration::from_millis(100);
/// Pause between rounds while jobs keep coming (but less than a full
/// batch): new jobs wait for at most this long, and an idle table is
/// still polled only every `batch_run_sleep`.
pub const DEFAULT_BUSY_RUN_SLEEP: Duration = Duration::from_millis(50);
/// How often the due-rows gauge is counted (a bounded index scan).
const DUE_ROWS_EVERY: Duration = Duration::from_secs(5);

/// QueueRunner settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lease of a dispatched row, seconds.
    pub lease: u32,
    /// Largest batch per database per round.
    pub batch_max_size: usize,
    /// First batch size.
    pub batch_start_size: usize,
    /// Pause between rounds once the tables are idle (the round's own
    /// duration is subtracted).
    pub batch_run_sleep: Duration,
    /// Pause after a round that found jobs but not a full batch; the pause
    /// doubles from here up to `batch_run_sleep` while rounds find nothing.
    pub busy_run_sleep: Duration,
    /// During a pause, probe for due rows this often and end the pause when
    /// one is found (zero = never probe).
    pub idle_poll: Duration,
    /// Queue depth per function at which its rows are held; 0 = off.
    pub queue_watermark_depth: u64,
    /// Delay before a row whose submit failed is due again, seconds.
    pub submit_retry_delay: u32,
    /// Count due rows for the `garivini_due_rows` gauge every few seconds
    /// (a bounded index scan): worth it only when metrics are served.
    pub report_due_rows: bool,
    /// Periodic jobs to insert, each tick once across all QueueRunners
    /// ([`periodic`]); none by default.
    pub periodic: Vec<periodic::Entry>,
    /// Per-function concurrency limits and watermarks ([`crate::functions`]).
    pub functions: Functions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease: DEFAULT_LEASE,
            batch_max_size: DEFAULT_BATCH_MAX_SIZE,
            batch_start_size: DEFAULT_BATCH_START_SIZE,
            batch_run_sleep: DEFAULT_BATCH_RUN_SLEEP,
            busy_run_sleep: DEFAULT_BUSY_RUN_SLEEP,
            idle_poll: DEFAULT_IDLE_POLL,
            queue_watermark_depth: DEFAULT_QUEUE_WATERMARK_DEPTH,
            submit_retry_delay: DEFAULT_SUBMIT_RETRY_DELAY,
            report_due_rows: false,
            periodic: Vec::new(),
            functions: Functions::default(),
        }
    }
}

impl Config {
    /// Checks the settings' ranges.
    pub fn validate(&self) -> Result<()> {
        if self.lease == 0 {
            return Err(Error::invalid_config("lease", "must be at least 1 second"));
        }
        if self.batch_max_size == 0 || self.batch_max_size > 100_000 {
            return Err(Error::invalid_config(
                "batch_max_size",
                "must be between 1 and 100000",
            ));
        }
        if self.batch_start_size == 0 {
            return Err(Error::invalid_config(
                "batch_start_size",
                "must be at least 1",
            ));
        }
        periodic::validate(&self.periodic)?;
        self.functions.validate()?;
        Ok(())
    }
}

/// Adaptive batch size, as in the original: grows by 10 % of the maximum
/// while batches come back full, shrinks by 5 % of it otherwise.
#[derive(Debug, Clone, Copy)]
pub struct BatchSize {
    current: usize,
    min: usize,
    max: usize,
}

impl BatchSize {
    /// Starts at `start`, within `1..=max` (never below `start` once shrunk,
    /// unless `start` is above `max`).
    pub fn new(start: usize, max: usize) -> BatchSize {
        let max = max.max(1);
        let min = start.clamp(1, max);
        BatchSize {
            current: min,
            min,
            max,
        }
    }

    /// The size to claim now.
    pub fn get(&self) -> usize {
        self.current
    }

    /// Adapts to how many rows the last claim returned.
    pub fn update(&mut self, got: usize) {
        let step = |pct: usize| (self.max * pct / 100).max(1);
        self.current = if got >= self.current {
            (self.current + step(10)).min(self.max)
        } else {
            self.current.saturating_sub(step(5)).max(self.min)
        };
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Rows claimed and leased for dispatch.
    pub claimed: usize,
    /// Rows gearmand acknowledged.
    pub dispatched: usize,
    /// Due rows read but held (left due): their dispatch function's room
    /// was shared by several functions and ran out (see [`Holds`]).
    pub held: usize,
    /// Rows given back because their submit failed.
    pub given_back: usize,
    /// Rows parked (made dead, logged) because they cannot be dispatched
    /// as they are.
    pub parked: usize,
    /// Databases that failed this round.
    pub db_errors: usize,
    /// Databases left to another QueueRunner, the claimer elected for them
    /// ([`Store::claim_turn`]).
    pub standby: usize,
    /// Whether any database returned a full batch (more is likely waiting).
    pub full: bool,
}

/// Moves due rows into gearmand. See the module docs.
pub struct QueueRunner {
    config: Config,
    store: Arc<Store>,
    gearmand: Vec<String>,
    submitter: Submitter,
    batches: HashMap<u32, BatchSize>,
    db_outages: HashMap<u32, Outage>,
    status_outage: Outage,
    /// When the due-rows gauge was last counted.
    due_counted: Instant,
    /// Ends a round's waits on gearmand early ([`QueueRunner::run`]'s
    /// token; never cancelled for a bare [`QueueRunner::run_once`]).
    shutdown: CancellationToken,
    /// The databases this runner claims from: all of the store's, but in
    /// each of the claim loops [`QueueRunner::run`] starts, one.
    dbids: Vec<u32>,
    /// Per database, what its last claim held: the probes between rounds
    /// look for other rows only, and the next claim reads function by
    /// function if that one met held or limited rows.
    holds: HashMap<u32, Holds>,
    /// gearmand's load at the last round, for the gauges' reasons.
    load: Option<HashMap<String, FunctionLoad>>,
}

/// How a round went, for the pause after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// A database gave a full batch: more is likely waiting, go again now.
    Full,
    /// Jobs were found, fewer than a batch.
    Found,
    /// Nothing was due.
    Idle,
    /// The round failed (no gearmand answered): wait the pause out whole.
    Failed,
    /// Another QueueRunner claims (the elected claimer): ask again after a
    /// whole pause.
    Standby,
}

impl QueueRunner {
    /// A QueueRunner over `store`, submitting to `gearmand`.
    pub fn new(config: Config, store: Arc<Store>, gearmand: Vec<String>) -> Result<QueueRunner> {
        config.validate()?;
        if gearmand.is_empty() {
            return Err(Error::NoGearmand);
        }
        let batches = store
            .dbids()
            .map(|id| {
                (
                    id,
                    BatchSize::new(config.batch_start_size, config.batch_max_size),
                )
            })
            .collect();
        let db_outages = store
            .dbids()
            .map(|id| (id, Outage::new("queuerunner cannot claim from database")))
            .collect();
        Ok(QueueRunner {
            submitter: Submitter::new(gearmand.clone()),
            config,
            gearmand,
            batches,
            db_outages,
            status_outage: Outage::new("queuerunner cannot read gearmand queue depths"),
            due_counted: Instant::now()
                .checked_sub(DUE_ROWS_EVERY)
                .unwrap_or_else(Instant::now),
            shutdown: CancellationToken::new(),
            dbids: store.dbids().collect(),
            holds: HashMap::new(),
            load: None,
            store,
        })
    }

    /// A runner of the same settings that claims from database `dbid`
    /// alone, with its own gearmand connections, batch size and pauses.
    fn for_db(&self, dbid: u32) -> QueueRunner {
        QueueRunner {
            config: self.config.clone(),
            store: self.store.clone(),
            gearmand: self.gearmand.clone(),
            submitter: Submitter::new(self.gearmand.clone()),
            batches: self.batches.clone(),
            db_outages: [(dbid, Outage::new("queuerunner cannot claim from database"))].into(),
            status_outage: Outage::new("queuerunner cannot read gearmand queue depths"),
            due_counted: self.due_counted,
            shutdown: self.shutdown.clone(),
            dbids: vec![dbid],
            holds: HashMap::new(),
            load: None,
        }
    }

    /// The current batch size for database `dbid`.
    pub fn batch_size(&self, dbid: u32) -> Option<usize> {
        self.batches.get(&dbid).map(BatchSize::get)
    }

    /// One round: one batch from each database. Errors of one database
    /// are logged (once per outage) and counted, and do not stop the others.
    pub async fn run_once(&mut self) -> Result<Stats> {
        let started = Instant::now();
        let stats = self.round().await?;
        telemetry::claim_round(
            stats.claimed,
            stats.dispatched,
            stats.held,
            started.elapsed(),
        );
        if self.config.report_due_rows && self.due_counted.elapsed() >= DUE_ROWS_EVERY {
            self.due_counted = Instant::now();
            self.report_rows().await;
        }
        Ok(stats)
    }

    /// Sets the due-rows gauges: per database, and per function with why
    /// its due rows wait, as `garivini status` counts and tells them.
    async fn report_rows(&self) {
        let limits = Limits {
            watermark: self.config.queue_watermark_depth,
            functions: self.config.functions.clone(),
        };
        let paused = self.store.paused_functions().await;
        for &dbid in &self.dbids {
            if let Ok(rows) = self.store.count_due(dbid, telemetry::DUE_ROWS_CAP).await {
                telemetry::due_rows(dbid, rows);
            }
            let Ok((_, functions)) = self.store.count_by_function(dbid, self.config.lease).await
            else {
                continue;
            };
            let rows: Vec<telemetry::FunctionRows<'_>> = functions
                .iter()
                .map(|f| telemetry::FunctionRows {
                    funcname: &f.funcname,
                    due: f.counts.due,
                    waiting: (f.counts.due > 0)
                        .then(|| {
                            let paused = paused.contains(&f.funcname);
                            limits.reason(&f.funcname, paused, self.load.as_ref())
                        })
                        .flatten(),
                    oldest_due_secs: f.counts.oldest_due_secs,
                    dead: f.counts.dead,
                })
                .collect();
            telemetry::function_rows(dbid, &rows);
        }
    }

    async fn round(&mut self) -> Result<Stats> {
        let mut stats = Stats::default();
        let watermark = self.config.queue_watermark_depth;
        // Asked every round, whatever the watermark: a function without a
        // worker is held.
        let mut room = {
            // Raced against shutdown: a gearmand that accepts and never
            // answers would hold a stopping role for the reply timeout.
            let (load, errors) = tokio::select! {
                status = self.submitter.function_status() => status,
                _ = self.shutdown.cancelled() => return Ok(stats),
            };
            if errors.len() == self.gearmand.len() {
                // No server to send to: claiming now would only churn rows.
                let err = errors.into_iter().next().expect("at least one server");
                self.status_outage.failed(&err);
                return Err(err);
            }
            self.status_outage.ended();
            for (function, l) in &load {
                telemetry::queue_depth(function, l.queued);
            }
            self.load = Some(load.clone());
            Room::new(watermark, load, self.config.functions.clone())
        };
        for dbid in self.dbids.clone() {
            if self.shutdown.is_cancelled() {
                break;
            }
            match self.run_db(dbid, &mut room, &mut stats).await {
                Ok(()) => self.db_outages.get_mut(&dbid).expect("known db").ended(),
                Err(err) => {
                    self.db_outages
                        .get_mut(&dbid)
                        .expect("known db")
                        .failed(&err);
                    stats.db_errors += 1;
                }
            }
        }
        Ok(stats)
    }

    #[tracing::instrument(skip(self, room, stats), fields(db.id = dbid), err(level = "debug"))]
    async fn run_db(&mut self, dbid: u32, room: &mut Room, stats: &mut Stats) -> Result<()> {
        if !self.store.claim_turn(dbid).await? {
            stats.standby += 1;
            return Ok(());
        }
        let limit = self.batches[&dbid].get();
        let paused = self.store.paused_functions().await;
        let mut holds = room.holds(limit);
        holds.held.extend(paused.names().map(str::to_string));
        // Its last claim met held or limited rows: read function by function.
        holds.by_function = self.holds.get(&dbid).is_some_and(|h| h.by_function);
        let claim = self
            .store
            .claim(dbid, limit, self.config.lease, &holds, |due| {
                room.admit(due, &paused)
            })
            .await?;
        room.take(&claim.jobs);
        // Rows refused after they were read (a dispatch function's room
        // shared by several functions): the next claim reads function by
        // function, so that they do not fill its batch again.
        holds.by_function = claim.limited || claim.held > 0;
        // What the probes between rounds skip.
        self.holds.insert(dbid, holds);
        let moved = claim.jobs.len();
        self.batches.get_mut(&dbid).expect("known db").update(moved);
        // Full means dispatched full: held rows are no reason to go again
        // at once.
        stats.full |= moved >= limit;
        stats.claimed += claim.jobs.len();
        stats.held += claim.held;
        stats.parked += claim.parked.len();
        if claim.jobs.is_empty() {
            return Ok(());
        }

        let submits: Vec<BackgroundJob> = claim
            .jobs
            .iter()
            .map(|job| BackgroundJob {
                function: dispatch_function(job.flag, &job.funcname).to_string(),
                unique: job.dispatch_unique(),
                data: Bytes::from(job.to_json()),
                priority: job.priority,
            })
            .collect();
        // On shutdown, what gearmand has not acknowledged yet is given
        // back below rather than left to wait out its lease.
        let acked = tokio::select! {
            acked = self.submitter.submit(&submits) => acked,
            _ = self.shutdown.cancelled() => vec![false; submits.len()],
        };
        let failed: Vec<u64> = claim
            .jobs
            .iter()
            .zip(&acked)
            .filter(|(_, &ok)| !ok)
            .map(|(job, _)| job.jobid)
            .collect();
        stats.dispatched += claim.jobs.len() - failed.len();
        self.store
            .count_dispatched(dbid, (claim.jobs.len() - failed.len()) as u64);
        telemetry::dispatched_functions(
            claim
                .jobs
                .iter()
                .zip(&acked)
                .filter(|(_, &ok)| ok)
                .map(|(job, _)| job.funcname.as_str()),
        );
        if !failed.is_empty() {
            stats.given_back += failed.len();
            // If this fails too, the rows come back when their lease ends.
            self.store
                .release(dbid, &failed, self.config.submit_retry_delay)
                .await?;
        }
        Ok(())
    }

    /// Sleeps until `until`; with `probe`, wakes every `idle_poll` to look
    /// for a due row and returns as soon as there is one.
    async fn pause_until(&self, until: Instant, probe: bool) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            if !probe {
                tokio::time::sleep(until - now).await;
                return;
            }
            tokio::time::sleep((until - now).min(self.config.idle_poll)).await;
            for &dbid in &self.dbids {
                // A failed probe is no news: the next round will tell.
                let holds = self.holds.get(&dbid).cloned().unwrap_or_default();
                if let Ok(true) = self.store.any_due(dbid, &holds).await {
                    return;
                }
            }
        }
    }

    /// Runs rounds until `shutdown`. A round that dispatched a full batch
    /// is followed at once by the next. After a round that found jobs the
    /// pause is `busy_run_sleep`; it doubles while rounds find nothing, up
    /// to `batch_run_sleep`; the round's own duration is subtracted. A
    /// pause ends early when a probe every `idle_poll` finds a due row.
    ///
    /// With several databases, each gets a claim loop of its own (its own
    /// gearmand connections, batch size, pauses and outage), so that a
    /// database that hangs or is down holds back only its own rows, not
    /// the others' (it used to cost every round its 10 s operation
    /// timeout). The watermark is read by each loop; together they may
    /// overshoot it by a batch per database.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.shutdown = shutdown.clone();
        // Periodic ticks on a task of their own: a claim loop held up by
        // its database or gearmand does not delay them.
        // (The entries were checked by `new`.)
        let ticker = (!self.config.periodic.is_empty())
            .then(|| periodic::Ticker::new(self.config.periodic.clone(), self.store.clone()).ok())
            .flatten()
            .map(|ticker| tokio::spawn(ticker.run(shutdown.clone())));
        // The dispatch counts of the chart, written off the claim loops.
        let store = self.store.clone();
        let flusher = tokio::spawn({
            let (store, shutdown) = (store.clone(), shutdown.clone());
            async move { store.flush_dispatches_until(shutdown).await }
        });
        if self.dbids.len() > 1 {
            let mut loops = tokio::task::JoinSet::new();
            for dbid in self.dbids.clone() {
                loops.spawn(self.for_db(dbid).claim_loop(shutdown.clone()));
            }
            while let Some(ended) = loops.join_next().await {
                if let Err(err) = ended {
                    tracing::error!(error = %err, "queuerunner claim loop ended badly");
                }
            }
        } else {
            self.claim_loop(shutdown).await;
        }
        if let Some(ticker) = ticker {
            if let Err(err) = ticker.await {
                tracing::error!(error = %err, "periodic ticker ended badly");
            }
        }
        if let Err(err) = flusher.await {
            tracing::error!(error = %err, "dispatch count flusher ended badly");
        }
        store.flush_dispatches_last().await;
    }

    async fn claim_loop(mut self, shutdown: CancellationToken) {
        let busy = self.config.busy_run_sleep.min(self.config.batch_run_sleep);
        let mut pause = self.config.batch_run_sleep;
        tracing::info!(
            lease = self.config.lease,
            watermark = self.config.queue_watermark_depth,
            db.id = ?self.dbids,
            "queuerunner started"
        );
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let round = match self.run_once().await {
                Ok(stats) => {
                    if stats.claimed + stats.held + stats.given_back > 0 {
                        tracing::debug!(?stats, "queuerunner round");
                    }
                    match stats {
                        Stats { full: true, .. } => Round::Full,
                        Stats { claimed: 1.., .. } => Round::Found,
                        Stats { standby: 1.., .. } => Round::Standby,
                        _ => Round::Idle,
                    }
                }
                Err(_) => Round::Failed,
            };
            pause = match round {
                Round::Full => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Round::Found => busy,
                Round::Idle | Round::Failed => (pause * 2).min(self.config.batch_run_sleep),
                Round::Standby => self.config.batch_run_sleep,
            };
            let until = started + pause;
            // After a failed round the pause is waited out whole: probing
            // would only bring the failure back sooner.
            let probe = !matches!(round, Round::Failed | Round::Standby)
                && !self.config.idle_poll.is_zero();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.pause_until(until, probe) => {}
            }
        }
        for &dbid in &self.dbids {
            self.store.end_claim_turn(dbid).await;
        }
        tracing::info!("queuerunner stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_grows_by_a_tenth_of_max_while_full() {
        let mut b = BatchSize::new(50, 1000);
        b.update(50);
        assert_eq!(b.get(), 150);
        b.update(150);
        assert_eq!(b.get(), 250);
        for _ in 0..20 {
            let n = b.get();
            b.update(n);
        }
        assert_eq!(b.get(), 1000);
    }

    #[test]
    fn batch_shrinks_by_a_twentieth_of_max_when_not_full_but_not_below_start() {
        let mut b = BatchSize::new(50, 1000);
        for _ in 0..5 {
            let n = b.get();
            b.update(n);
        }
        assert_eq!(b.get(), 550);
        b.update(3);
        assert_eq!(b.get(), 500);
        for _ in 0..100 {
            b.update(0);
        }
        assert_eq!(b.get(), 50);
    }

    #[test]
    fn tiny_max_still_moves() {
        let mut b = BatchSize::new(50, 5);
        assert_eq!(b.get(), 5);
        b.update(0);
        assert_eq!(b.get(), 5);
    }

    #[test]
    fn config_refuses_a_zero_lease() {
        let c = Config {
            lease: 0,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::InvalidConfig { name: "lease", .. })
        ));
        assert!(Config::default().validate().is_ok());
    }
}

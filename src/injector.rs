//! The Injector: the `inject_jobs` Gearman worker of low-latency mode.
//!
//! Any Gearman client sends a JSON job (or an array of them) in the
//! foreground; the Injector stores it with flag `controller`, answers
//! `{"jobid":N,"dbid":N}` only once the row is committed, and dispatches a
//! job that is due now straight to gearmand as a background
//! `run_queued_job` for a Controller. Such a row is stored already leased
//! (due at now + lease), so a job lost anywhere after the commit comes
//! back through the QueueRunner. A delayed job, or one arriving while
//! `run_queued_job` is over the queue watermark, is stored due when it
//! should run and left to the QueueRunner, as is a job of a paused
//! function (`garivini functions pause`) or of one with a concurrency limit
//! ([`crate::functions`]): the QueueRunner sends those within the limit.
//! With a Controller in the same process ([`Injector::hand_to`]), a due
//! job goes to it directly while it has a free slot, committed and leased
//! just the same, and through gearmand otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::controller;
use crate::error::{Error, Result};
use crate::functions::Functions;
use crate::gearman::{
    serve, BackgroundJob, StatusReader, Submitter, WorkResult, DEFAULT_SHUTDOWN_TIMEOUT,
};
use crate::job::{Flag, Job, JobRef, NewJob, Priority, MAX_DELAY};
use crate::names::{
    DEFAULT_LEASE, DEFAULT_QUEUE_WATERMARK_DEPTH, DEFAULT_SUBMIT_RETRY_DELAY, INJECT_JOBS,
    RUN_QUEUED_JOB,
};
use crate::outage::Outage;
use crate::store::{Store, Stored};
use crate::telemetry;

/// Most jobs in one `inject_jobs` array.
pub const DEFAULT_MAX_BATCH: usize = 1000;
/// Requests handled at once, per gearmand.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// How often the queue depth of `run_queued_job` is read from gearmand.
pub const DEPTH_REFRESH: Duration = Duration::from_millis(250);
/// Jobs waiting for dispatch before requests wait for room.
const DISPATCH_QUEUE: usize = 10_000;
/// Most background submits pipelined at once.
const DISPATCH_BATCH: usize = 500;

/// Injector settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lease of a dispatched row, seconds.
    pub lease: u32,
    /// Most jobs in one array request.
    pub max_batch: usize,
    /// Depth of `run_queued_job` in gearmand at which jobs are stored for
    /// the QueueRunner instead of dispatched; 0 = no limit.
    pub queue_watermark_depth: u64,
    /// Requests handled at once, per gearmand.
    pub concurrency: usize,
    /// Delay before a row whose dispatch failed is due again, seconds.
    pub submit_retry_delay: u32,
    /// How long shutdown waits for the requests in hand.
    pub shutdown_timeout: Duration,
    /// Per-function settings: a function with a concurrency limit is left
    /// to the QueueRunner.
    pub functions: Functions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease: DEFAULT_LEASE,
            max_batch: DEFAULT_MAX_BATCH,
            queue_watermark_depth: DEFAULT_QUEUE_WATERMARK_DEPTH,
            concurrency: DEFAULT_CONCURRENCY,
            submit_retry_delay: DEFAULT_SUBMIT_RETRY_DELAY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
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
        if self.max_batch == 0 {
            return Err(Error::invalid_config("max_batch", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(Error::invalid_config(
                "inject_concurrency",
                "must be at least 1",
            ));
        }
        self.functions.validate()
    }
}

/// A parsed `inject_jobs` workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The jobs, flag `controller`, delay = the request's run_after.
    pub jobs: Vec<NewJob>,
    /// Whether it came as an array (and is answered with one).
    pub array: bool,
}

/// Reads an `inject_jobs` workload: a JSON object `{funcname, arg, unique |
/// uniqkey, run_after, coalesce}` or an array of at most `max_batch` of
/// them. Every job is checked against the table's limits, so a request
/// that passes here stores whole.
pub fn parse_request(data: &[u8], max_batch: usize) -> Result<Request> {
    let bad = |reason: String| Error::InvalidRequest { reason };
    let value: Value = serde_json::from_slice(data).map_err(|e| bad(format!("not JSON: {e}")))?;
    match value {
        Value::Object(_) => Ok(Request {
            jobs: vec![parse_job(&value).map_err(bad)?],
            array: false,
        }),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(bad("empty array: no jobs".into()));
            }
            if items.len() > max_batch {
                return Err(bad(format!(
                    "{} jobs in one array, over the limit of {max_batch}",
                    items.len()
                )));
            }
            let jobs = items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_job(item).map_err(|e| bad(format!("job {i}: {e}"))))
                .collect::<Result<Vec<_>>>()?;
            Ok(Request { jobs, array: true })
        }
        _ => Err(bad("expected a JSON object or an array of them".into())),
    }
}

fn parse_job(value: &Value) -> std::result::Result<NewJob, String> {
    let Value::Object(o) = value else {
        return Err("expected a JSON object".into());
    };
    let text = |key: &str| -> std::result::Result<Option<&str>, String> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("{key} must be a string")),
        }
    };
    let funcname = text("funcname")?.ok_or("funcname is missing")?;
    let arg = match o.get("arg") {
        None => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("arg must be a string".into()),
    };
    // One key under two names (`unique` as gearman clients call it). An
    // empty one is no key, as for `Client`; given both, they must agree,
    // so that no key is silently dropped or preferred.
    let key = |name: &str| text(name).map(|k| k.filter(|k| !k.is_empty()));
    let uniqkey = match (key("uniqkey")?, key("unique")?) {
        (Some(a), Some(b)) if a != b => {
            return Err("uniqkey and unique name one key: given both, they must be equal".into())
        }
        (Some(k), _) | (None, Some(k)) => Some(k.to_string()),
        (None, None) => None,
    };
    let delay = match o.get("run_after") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or("run_after must be a whole number of seconds >= 0")?,
        // As the Perl original's clients may send numbers.
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| "run_after must be a whole number of seconds >= 0")?,
        Some(_) => return Err("run_after must be a whole number of seconds >= 0".into()),
    };
    let delay = u32::try_from(delay)
        .ok()
        .filter(|&d| d <= MAX_DELAY)
        .ok_or_else(|| format!("run_after {delay} is over the limit of {MAX_DELAY} seconds"))?;
    let job = NewJob {
        funcname: funcname.to_string(),
        arg: arg.as_bytes().to_vec(),
        uniqkey,
        delay,
        flag: Flag::Controller,
        coalesce: text("coalesce")?.map(str::to_string),
        priority: match text("priority")? {
            None => Priority::Normal,
            Some(p) => p.parse().map_err(|e: Error| e.to_string())?,
        },
        leased: false,
    };
    job.validate().map_err(|e| e.to_string())?;
    Ok(job)
}

/// The last queue depth of `run_queued_job` read from gearmand, plus what
/// this Injector dispatched since.
#[derive(Default)]
struct Depth {
    read: AtomicU64,
    since: AtomicU64,
}

impl Depth {
    /// Takes up to `n` places under `watermark`; returns how many it got.
    fn take(&self, n: u64, watermark: u64) -> u64 {
        if watermark == 0 {
            return n;
        }
        let mut taken = 0;
        let _ = self
            .since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |since| {
                let used = self.read.load(Ordering::Relaxed) + since;
                taken = n.min(watermark.saturating_sub(used));
                Some(since + taken)
            });
        taken
    }

    /// Returns `n` places taken for jobs that were not dispatched after all.
    fn give_back(&self, n: u64) {
        let _ = self
            .since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |since| {
                Some(since.saturating_sub(n))
            });
    }

    fn set(&self, depth: u64) {
        self.read.store(depth, Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }
}

/// Serves `inject_jobs`. See the module docs.
pub struct Injector {
    config: Config,
    store: Arc<Store>,
    gearmand: Vec<String>,
    depth: Arc<Depth>,
    dispatch: mpsc::Sender<Job>,
    dispatch_rx: std::sync::Mutex<Option<mpsc::Receiver<Job>>>,
    inserts: mpsc::Sender<PendingInsert>,
    /// Requests refused because the database is away: one warning per outage.
    db_outage: Outage,
    /// A Controller in this process, given due jobs directly while it has
    /// room ([`Injector::hand_to`]).
    local: std::sync::OnceLock<controller::Local>,
    /// Jobs handed to it so far.
    handed_off: AtomicU64,
}

/// One request's jobs, waiting to be stored with others' (group commit).
struct PendingInsert {
    jobs: Vec<NewJob>,
    /// The jobs come back with the outcome: the request dispatches them.
    reply: oneshot::Sender<(Vec<NewJob>, Result<Vec<Stored>>)>,
}

/// Requests stored in one transaction, at most.
const INSERT_BATCH: usize = 100;
/// Insert transactions running at once.
const INSERTS_IN_FLIGHT: usize = 2;

/// Stores the jobs of many requests with one `Store::insert` and answers
/// each with its own ids. If that fails for a reason of the statement's,
/// each request is stored on its own, so that one request's trouble never
/// fails another's.
async fn insert_batch(store: &Store, batch: Vec<PendingInsert>) {
    let sizes: Vec<usize> = batch.iter().map(|p| p.jobs.len()).collect();
    let (mut all, mut replies) = (Vec::new(), Vec::new());
    for p in batch {
        all.extend(p.jobs);
        replies.push(p.reply);
    }
    let outcome = store.insert_telling_new(&all).await;
    let mut jobs = all.into_iter();
    let mut own = |n: usize| -> Vec<NewJob> { jobs.by_ref().take(n).collect() };
    match outcome {
        Ok(refs) => {
            let mut refs = refs.into_iter();
            for (reply, n) in replies.into_iter().zip(sizes) {
                let _ = reply.send((own(n), Ok(refs.by_ref().take(n).collect())));
            }
        }
        Err(err) if replies.len() > 1 && !err.is_connection_fault() => {
            for (reply, n) in replies.into_iter().zip(sizes) {
                let jobs = own(n);
                let outcome = store.insert_telling_new(&jobs).await;
                let _ = reply.send((jobs, outcome));
            }
        }
        Err(err) => {
            let (reason, connection_fault) = (err.to_string(), err.is_connection_fault());
            for (reply, n) in replies.into_iter().zip(sizes) {
                let failed = Error::GroupFailed {
                    reason: reason.clone(),
                    connection_fault,
                };
                let _ = reply.send((own(n), Err(failed)));
            }
        }
    }
}

impl Injector {
    /// An Injector storing into `store` and dispatching to `gearmand`.
    /// Must be called within a Tokio runtime: it starts the insert batcher.
    pub fn new(config: Config, store: Arc<Store>, gearmand: Vec<String>) -> Result<Arc<Injector>> {
        config.validate()?;
        if gearmand.is_empty() {
            return Err(Error::NoGearmand);
        }
        let (tx, rx) = mpsc::channel(DISPATCH_QUEUE);
        let limits = batch::Limits {
            max_batch: INSERT_BATCH,
            linger: Duration::ZERO,
            in_flight: INSERTS_IN_FLIGHT,
        };
        let s = store.clone();
        let inserts = batch::spawn(limits, move |batch| {
            let s = s.clone();
            async move { insert_batch(&s, batch).await }
        });
        Ok(Arc::new(Injector {
            inserts,
            config,
            store,
            gearmand,
            depth: Arc::new(Depth::default()),
            dispatch: tx,
            dispatch_rx: std::sync::Mutex::new(Some(rx)),
            db_outage: Outage::new("inject_jobs refused: database unreachable"),
            local: std::sync::OnceLock::new(),
            handed_off: AtomicU64::new(0),
        }))
    }

    /// Gives this Injector's due jobs to `local`, a Controller in the same
    /// process, while it has a free slot, instead of dispatching them as
    /// `run_queued_job` through gearmand (one gearmand round trip and two
    /// wake-ups fewer per job); the rest go through gearmand as before.
    /// The first call counts.
    pub fn hand_to(&self, local: controller::Local) {
        let _ = self.local.set(local);
    }

    /// Jobs handed to the Controller of [`Injector::hand_to`] so far.
    pub fn handed_off(&self) -> u64 {
        self.handed_off.load(Ordering::Relaxed)
    }

    /// Handles one `inject_jobs` workload: stores its jobs and returns the
    /// answer for the client, only after the rows are committed. Jobs due
    /// now are queued for dispatch (see [`Injector::run`]).
    pub async fn inject(&self, workload: &[u8]) -> Result<Bytes> {
        let started = std::time::Instant::now();
        let mut request = parse_request(workload, self.config.max_batch)?;
        // A paused function's job is stored due, and waits for the
        // QueueRunner to send it after the resume.
        let paused = self.store.paused_functions().await;
        let functions = &self.config.functions;
        let dispatchable = |job: &NewJob| {
            job.delay == 0
                && !paused.contains(&job.funcname)
                && functions.concurrency(&job.funcname).is_none()
        };
        let due_now = request.jobs.iter().filter(|j| dispatchable(j)).count() as u64;
        let taken = self.depth.take(due_now, self.config.queue_watermark_depth);
        let mut room = taken;
        let mut dispatch = Vec::with_capacity(request.jobs.len());
        for job in &mut request.jobs {
            let now = dispatchable(job) && room > 0;
            if now {
                room -= 1;
                // Stored leased: the dispatch below is its first run.
                job.delay = self.config.lease;
                job.leased = true;
            }
            dispatch.push(now);
        }
        // Answers only after the commit: the reply comes from the batch.
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::GroupFailed {
            reason: "the injector is shutting down".into(),
            connection_fault: false,
        };
        let pending = PendingInsert {
            jobs: request.jobs,
            reply,
        };
        let stored = match self.inserts.send(pending).await {
            Ok(()) => answer.await.map_err(|_| stopped()),
            Err(_) => Err(stopped()),
        };
        let (jobs, refs) = match stored.and_then(|(jobs, refs)| Ok((jobs, refs?))) {
            Ok(stored) => stored,
            Err(err) => {
                // Nothing is dispatched: the places under the watermark
                // go back to the requests that follow.
                self.depth.give_back(taken);
                return Err(err);
            }
        };
        telemetry::injected(refs.len(), started.elapsed());

        let answer: Vec<Value> = refs
            .iter()
            .map(|r| serde_json::json!({"jobid": r.job.jobid, "dbid": r.job.dbid}))
            .collect();
        let answer = if request.array {
            Value::Array(answer)
        } else {
            answer.into_iter().next().expect("one job")
        };
        for ((job, stored), go) in jobs.into_iter().zip(refs).zip(dispatch) {
            let r = stored.job;
            if go && !stored.new {
                // Its unique key named a row that exists: that row keeps
                // its own schedule (a delayed one is not run early) and
                // lease (a running one is not run twice); the QueueRunner
                // sends it when it is due.
                self.depth.give_back(1);
                continue;
            }
            if go {
                let job = Job {
                    dbid: r.dbid,
                    jobid: r.jobid,
                    funcname: job.funcname,
                    arg: job.arg,
                    uniqkey: job.uniqkey,
                    coalesce: job.coalesce,
                    run_after: self.store.clock(r.dbid).await,
                    flag: Flag::Controller,
                    failcount: 0,
                    priority: job.priority,
                };
                // Committed and leased: the local Controller may run it.
                let handed = match self.local.get() {
                    Some(local) => local.try_run(job),
                    None => Err(job),
                };
                let job = match handed {
                    Ok(()) => {
                        self.handed_off.fetch_add(1, Ordering::Relaxed);
                        telemetry::dispatched_by("injector_local", 1);
                        self.store.count_dispatched(r.dbid, 1);
                        // It takes no place in gearmand's queue.
                        self.depth.give_back(1);
                        continue;
                    }
                    Err(job) => job,
                };
                // Waits when the dispatcher is behind: backpressure on the
                // clients rather than an unbounded queue.
                if self.dispatch.send(job).await.is_err() {
                    tracing::warn!(
                        job.id = r.jobid,
                        db.id = r.dbid,
                        "dispatcher stopped; the job runs after its lease"
                    );
                }
            }
        }
        Ok(Bytes::from(
            serde_json::to_vec(&answer).expect("ids serialize"),
        ))
    }

    /// Serves `inject_jobs` until `shutdown`, then finishes the requests in
    /// hand and dispatches what they queued.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(rx) = self.dispatch_rx.lock().unwrap().take() else {
            tracing::error!("injector already running");
            return;
        };
        tracing::info!(lease = self.config.lease, "injector started");
        let served = CancellationToken::new();
        let give_up = CancellationToken::new();
        let mut dispatcher = tokio::spawn(dispatch_loop(
            rx,
            self.store.clone(),
            Submitter::new(self.gearmand.clone()),
            self.config.submit_retry_delay,
            served.clone(),
            give_up.clone(),
        ));
        // The dispatch counts of the chart, written off the dispatch path.
        let flusher = tokio::spawn({
            let (store, shutdown) = (self.store.clone(), shutdown.clone());
            async move { store.flush_dispatches_until(shutdown).await }
        });
        let depth_stop = CancellationToken::new();
        let refresher = tokio::spawn(refresh_depth(
            StatusReader::new(self.gearmand.clone()),
            self.depth.clone(),
            depth_stop.clone(),
        ));
        let me = self.clone();
        serve(
            self.gearmand.clone(),
            INJECT_JOBS.to_string(),
            self.config.concurrency,
            move |a| {
                let me = me.clone();
                async move {
                    let outcome = me.inject(&a.data).await;
                    me.db_outage.track(&outcome);
                    match outcome {
                        Ok(answer) => WorkResult::Complete(answer),
                        Err(err) => {
                            telemetry::inject_refused(err.is_connection_fault());
                            if !err.is_connection_fault() {
                                tracing::warn!(error = %err, "inject_jobs refused");
                            }
                            WorkResult::FailWith(Bytes::from(err.to_string()))
                        }
                    }
                }
            },
            shutdown,
            self.config.shutdown_timeout,
        )
        .await;
        depth_stop.cancel();
        let _ = refresher.await;
        served.cancel();
        // What is queued is dispatched, for at most the shutdown timeout
        // (a gearmand that accepts and never answers would hold us for its
        // reply timeout per batch); then it is given back to the
        // QueueRunner instead.
        if tokio::time::timeout(self.config.shutdown_timeout, &mut dispatcher)
            .await
            .is_err()
        {
            give_up.cancel();
            let _ = dispatcher.await;
        }
        let _ = flusher.await;
        self.store.flush_dispatches_last().await;
        tracing::info!("injector stopped");
    }
}

async fn refresh_depth(gearmand: StatusReader, depth: Arc<Depth>, stop: CancellationToken) {
    loop {
        let (depths, errors) = tokio::select! {
            depths = gearmand.queue_depths() => depths,
            _ = stop.cancelled() => return,
        };
        if errors.len() < gearmand.len() {
            depth.set(depths.get(RUN_QUEUED_JOB).copied().unwrap_or(0));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DEPTH_REFRESH) => {}
        }
    }
}

/// Submits queued jobs to gearmand in pipelined batches; gives a row whose
/// submit failed back to the QueueRunner (due again shortly).
///
/// Once `served` is cancelled (no request is in hand any more) it
/// dispatches what is queued and returns; once `give_up` is, it gives
/// back what it has not dispatched yet.
async fn dispatch_loop(
    mut rx: mpsc::Receiver<Job>,
    store: Arc<Store>,
    mut submitter: Submitter,
    retry_delay: u32,
    served: CancellationToken,
    give_up: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = served.cancelled(), if !rx.is_closed() => {
                rx.close();
                continue;
            }
        };
        let Some(first) = first else { return };
        let mut jobs = vec![first];
        while jobs.len() < DISPATCH_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let submits: Vec<BackgroundJob> = jobs
            .iter()
            .map(|job| BackgroundJob {
                function: RUN_QUEUED_JOB.to_string(),
                unique: job.dispatch_unique(),
                data: Bytes::from(job.to_json()),
                priority: job.priority,
            })
            .collect();
        let acked = tokio::select! {
            acked = submitter.submit(&submits) => acked,
            _ = give_up.cancelled() => vec![false; submits.len()],
        };
        telemetry::dispatched_by("injector", acked.iter().filter(|&&ok| ok).count());
        let mut failed: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut sent: HashMap<u32, u64> = HashMap::new();
        for (job, ok) in jobs.iter().zip(acked) {
            if ok {
                *sent.entry(job.dbid).or_insert(0) += 1;
            } else {
                failed.entry(job.dbid).or_default().push(job.jobid);
            }
        }
        for (dbid, n) in sent {
            store.count_dispatched(dbid, n);
        }
        for (dbid, ids) in failed {
            if let Err(err) = store.release(dbid, &ids, retry_delay).await {
                tracing::warn!(db.id = dbid, jobs = ids.len(), error = %err, "cannot give back undispatched jobs; they run after their lease");
            }
        }
    }
}

/// Where a stored job lives, as the Injector answers it.
pub fn answer_refs(answer: &[u8]) -> Result<Vec<JobRef>> {
    let bad = |reason: String| Error::InvalidRequest { reason };
    let value: Value = serde_json::from_slice(answer).map_err(|e| bad(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    items
        .iter()
        .map(|v| {
            let n = |k: &str| {
                v.get(k)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(format!("answer lacks {k}")))
            };
            let dbid = n("dbid")?;
            Ok(JobRef {
                dbid: u32::try_from(dbid)
                    .map_err(|_| bad(format!("dbid {dbid} is out of range")))?,
                jobid: n("jobid")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(data: &str) -> String {
        match parse_request(data.as_bytes(), 3) {
            Err(Error::InvalidRequest { reason }) => reason,
            other => panic!("{data}: {other:?}"),
        }
    }

    #[test]
    fn an_object_is_one_controller_job() {
        let r = parse_request(
            br#"{"funcname":"f","arg":"a","unique":"u","run_after":5,"coalesce":"c"}"#,
            3,
        )
        .unwrap();
        assert!(!r.array);
        let j = &r.jobs[0];
        assert_eq!(
            (j.funcname.as_str(), j.arg.as_slice(), j.delay),
            ("f", &b"a"[..], 5)
        );
        assert_eq!(
            (j.uniqkey.as_deref(), j.coalesce.as_deref()),
            (Some("u"), Some("c"))
        );
        assert_eq!(j.flag, Flag::Controller);
    }

    #[test]
    fn uniqkey_and_string_numbers_are_accepted() {
        let r = parse_request(
            br#"[{"funcname":"f","uniqkey":"k","run_after":"7"},{"funcname":"g"}]"#,
            3,
        )
        .unwrap();
        assert!(r.array);
        assert_eq!(r.jobs[0].uniqkey.as_deref(), Some("k"));
        assert_eq!(r.jobs[0].delay, 7);
        assert_eq!(
            (
                r.jobs[1].arg.len(),
                r.jobs[1].delay,
                r.jobs[1].uniqkey.clone()
            ),
            (0, 0, None)
        );
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        assert!(refused("nope").starts_with("not JSON"));
        assert_eq!(refused("42"), "expected a JSON object or an array of them");
        assert_eq!(refused(r#"{"arg":"x"}"#), "funcname is missing");
        assert_eq!(refused(r#"{"funcname":""}"#), "funcname is empty");
        assert_eq!(refused(r#"{"funcname":7}"#), "funcname must be a string");
        assert_eq!(
            refused(&format!(r#"{{"funcname":"{}"}}"#, "f".repeat(201))),
            "funcname is 201 bytes, over the limit of 200"
        );
        assert_eq!(
            refused(&format!(
                r#"{{"funcname":"f","unique":"{}"}}"#,
                "u".repeat(256)
            )),
            "unique key is 256 bytes, over the limit of 255"
        );
        for bad in [r#"-1"#, r#"1.5"#, r#""soon""#, r#"true"#] {
            assert_eq!(
                refused(&format!(r#"{{"funcname":"f","run_after":{bad}}}"#)),
                "run_after must be a whole number of seconds >= 0",
                "{bad}"
            );
        }
        assert!(refused(r#"{"funcname":"f","run_after":99999999999}"#).contains("over the limit"));
        assert_eq!(
            refused(r#"{"funcname":"f","arg":{"a":1}}"#),
            "arg must be a string"
        );
        assert_eq!(
            refused(r#"{"funcname":"f","arg":null}"#),
            "arg must be a string"
        );
        assert_eq!(refused("[]"), "empty array: no jobs");
        assert_eq!(
            refused(r#"[{"funcname":"f"},{"funcname":"f"},{"funcname":"f"},{"funcname":"f"}]"#),
            "4 jobs in one array, over the limit of 3"
        );
        assert_eq!(
            refused(r#"[{"funcname":"f"},"x"]"#),
            "job 1: expected a JSON object"
        );
    }

    #[test]
    fn depth_hands_out_only_the_room_under_the_watermark() {
        let d = Depth::default();
        d.set(8);
        assert_eq!(d.take(5, 10), 2);
        assert_eq!(d.take(5, 10), 0);
        d.set(0);
        assert_eq!(d.take(5, 10), 5);
        assert_eq!(d.take(50, 0), 50, "0 = no watermark");
    }
}

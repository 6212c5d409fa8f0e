//! The Controller: the `run_queued_job` Gearman worker of low-latency mode.
//!
//! For each job JSON it gets, it submits the job in the foreground to the
//! job's real function (same JSON as workload) and waits. WORK_COMPLETE
//! deletes the row; WORK_FAIL or WORK_EXCEPTION fails it (backoff, dead
//! after max_attempts). If gearmand goes away meanwhile, the outcome is
//! unknown: the row stays leased and runs again after its lease. While a
//! job runs, the Controller extends its lease every half lease, so a long
//! job is never dispatched a second time while it is still running.
//!
//! Hung work does not hold a slot for ever: after `job_timeout` the
//! Controller stops waiting, frees the slot and fails the row (backoff, as
//! a WORK_FAIL); the worker's late answer, if any, is ignored. Jobs still
//! running when shutdown gives up on them are not left leased: their rows
//! are given back, due again after `give_back_delay`.
//!
//! An Injector in the same process hands it committed, leased jobs
//! directly ([`Local`]), without the `run_queued_job` round through
//! gearmand, while it has a free slot of `local_concurrency`; otherwise the
//! Injector dispatches through gearmand as before, where any Controller
//! takes the job.
//!
//! Per-function settings ([`crate::functions`]): a function's own timeout
//! replaces `job_timeout`; a function with a concurrency limit has at most
//! that many jobs running in this Controller, and a job that finds the
//! limit reached (here, or in gearmand's `status` read just before its
//! submit) is given back, due again in a second, its failcount kept.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::client::{Client, Retry};
use crate::error::{Error, Result};
use crate::functions::Functions;
use crate::gearman::{
    gearman_unique, serve, sleep_until_some, ForegroundClient, Outcome, WorkResult,
    DEFAULT_SHUTDOWN_TIMEOUT,
};
use crate::job::{unsendable_funcname, Job, JobRef, When};
use crate::names::{DEFAULT_LEASE, DEFAULT_SUBMIT_RETRY_DELAY, RUN_QUEUED_JOB};
use crate::outage::Outage;
use crate::telemetry;

/// Jobs run at once, per gearmand.
pub const DEFAULT_CONCURRENCY: usize = 200;
/// How long a job may run before the Controller gives up on it: generous,
/// since it is there for hung workers, not slow ones.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long, after shutdown gave up on the jobs in hand, giving back their
/// rows may take.
const GIVE_BACK_LIMIT: Duration = Duration::from_secs(5);

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The lease a running job's row is kept under, seconds; renewed every
    /// half lease while the job runs.
    pub lease: u32,
    /// Jobs run at once, per gearmand.
    pub concurrency: usize,
    /// How long shutdown waits for the jobs in hand; the rows of those
    /// still running then are given back (see `give_back_delay`).
    pub shutdown_timeout: Duration,
    /// How long the Controller waits for a job's answer, counted from its
    /// submit (time queued in gearmand included); then the job is failed
    /// (backoff) and its slot freed. `None`: no limit.
    pub job_timeout: Option<Duration>,
    /// Seconds before a job still running when shutdown gave up on it is
    /// due again (its row keeps its failcount).
    pub give_back_delay: u32,
    /// Per-function timeouts and concurrency limits.
    pub functions: Functions,
    /// Jobs an Injector in this process may hand over at once, beside
    /// those taken from gearmand (see [`Local`]); 0: none, every job goes
    /// through gearmand.
    pub local_concurrency: usize,
    /// Most jobs of one function this Controller runs at once, of its
    /// `concurrency` slots (0: no cap, [`Config::share`]): with a cap, a
    /// function whose worker hangs, or that floods, leaves the rest of the
    /// slots to the other functions. A job past it is given back, due, for
    /// the QueueRunner to send again: off by default, since with one busy
    /// function every job past the cap makes that round trip through the
    /// table (and without a QueueRunner it would wait there).
    pub function_share: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease: DEFAULT_LEASE,
            concurrency: DEFAULT_CONCURRENCY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            job_timeout: Some(DEFAULT_JOB_TIMEOUT),
            give_back_delay: DEFAULT_SUBMIT_RETRY_DELAY,
            functions: Functions::default(),
            local_concurrency: DEFAULT_CONCURRENCY,
            function_share: 0,
        }
    }
}

impl Config {
    /// Checks the settings' ranges.
    pub fn validate(&self) -> Result<()> {
        if self.lease < 2 {
            return Err(Error::invalid_config(
                "lease",
                "must be at least 2 seconds (it is renewed every half lease)",
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::invalid_config("concurrency", "must be at least 1"));
        }
        if self.job_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_config(
                "job_timeout",
                "must be more than 0 (no limit: none)",
            ));
        }
        self.functions.validate()
    }

    /// The most jobs of one function run at once (see `function_share`).
    pub fn share(&self) -> usize {
        match self.function_share {
            0 => usize::MAX,
            n => n,
        }
    }
}

/// What became of one `run_queued_job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// The worker completed it; its row is deleted.
    Completed,
    /// The worker failed it; its row is rescheduled or dead.
    Failed(Retry),
    /// No answer within `job_timeout`: the row is failed as if the worker
    /// had failed it, and a late answer is ignored.
    TimedOut(Retry),
    /// Still running when shutdown gave up on it: its row is given back,
    /// due after `give_back_delay`.
    GivenBack,
    /// The outcome is unknown (gearmand lost, or the row could not be
    /// updated); the row runs again after its lease.
    Unknown,
    /// No worker serves the job's function: its row is given back, due,
    /// its failcount kept, rather than hold a Controller slot; the
    /// QueueRunner holds it until a worker registers.
    NoWorker,
    /// The job's function is paused (`garivini functions pause`): its row
    /// is given back, due, its failcount kept; nothing was run.
    Paused,
    /// The job's function is at its concurrency limit: its row is given
    /// back, due again in a second, its failcount kept; nothing was run.
    AtLimit,
    /// The workload was not a job JSON; nothing was run.
    NotAJob,
    /// The job's function name cannot be sent to gearmand (see
    /// [`unsendable_funcname`]): its row is parked, dead, and logged.
    Parked,
    /// A stale copy: its row was completed, cancelled or failed since it
    /// was sent (see [`Client::start_job`]). Dropped, not run.
    Stale,
}

/// Serves `run_queued_job`. See the module docs.
pub struct Controller {
    config: Config,
    client: Client,
    gearmand: Vec<String>,
    foreground: ForegroundClient,
    /// gearmand's functions with workers, as last read (`None` inside: no
    /// server answered), and when. An async lock, held across the read:
    /// one read in flight, whatever the number of jobs asking.
    served: tokio::sync::Mutex<(Instant, Option<HashSet<String>>)>,
    /// Row updates failing because the database is away: one warning per
    /// outage, not one per job.
    rows: Outage,
    /// Running jobs lost with a gearmand connection: one warning per outage.
    lost: Outage,
    /// Every `run_job` in progress, so that shutdown can wait for them
    /// after `serve` has returned.
    in_hand: TaskTracker,
    /// Cancelled once shutdown has given up on the jobs in hand: they stop
    /// waiting and give their rows back.
    abandon: CancellationToken,
    /// The running jobs of each function with a concurrency limit.
    limits: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Free slots for jobs handed over in this process ([`Local`]).
    local: Arc<tokio::sync::Semaphore>,
    /// Whether [`Local`] may take jobs: only while `run` serves.
    accepting: AtomicBool,
    /// Jobs of each function running now (see [`Config::share`]).
    running: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// One running job's place in its function's share; given up on drop.
struct Share {
    running: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    funcname: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.funcname) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.funcname);
            }
        }
    }
}

/// Hands jobs to a Controller in the same process ([`Controller::local`]).
#[derive(Clone)]
pub struct Local(Arc<Controller>);

impl Local {
    /// Starts `job` in this Controller if it is serving and has a free
    /// local slot, as if it had come through `run_queued_job`; else gives
    /// it back, for gearmand. The caller has committed its row, leased
    /// (and, where the table has the column, its attempt recorded): if the
    /// process dies before the job ends, the row runs again after its
    /// lease, as a job gearmand lost.
    ///
    /// A job without a unique key is run without the check that its row
    /// is still its dispatch (one UPDATE and commit less per job): the
    /// caller has just stored that row itself, so no other copy exists. A
    /// keyed job may have found an existing row of its key, and is checked.
    pub fn try_run(&self, job: Job) -> std::result::Result<(), Job> {
        let c = &self.0;
        if !c.accepting.load(Ordering::Acquire) {
            return Err(job);
        }
        let Ok(slot) = c.local.clone().try_acquire_owned() else {
            return Err(job);
        };
        let me = c.clone();
        c.in_hand.spawn(async move {
            let workload = Bytes::from(job.to_json());
            let fresh = job.uniqkey.is_none();
            let _ = me.run_in_span(job, workload, fresh).await;
            drop(slot);
        });
        Ok(())
    }
}

/// How often a running job's function is checked for a worker.
const WORKER_CHECK: Duration = Duration::from_secs(2);
/// How long a status read from gearmand is trusted.
const STATUS_MAX_AGE: Duration = Duration::from_millis(500);
/// How long it is trusted to say a function has no worker.
const NO_WORKER_MAX_AGE: Duration = Duration::from_millis(100);

impl Controller {
    /// A Controller finishing rows through `client` and running jobs on
    /// `gearmand`. Must be called within a Tokio runtime.
    pub fn new(config: Config, client: Client, gearmand: Vec<String>) -> Result<Arc<Controller>> {
        config.validate()?;
        if gearmand.is_empty() {
            return Err(Error::NoGearmand);
        }
        let limits = config
            .functions
            .entries()
            .into_iter()
            .filter_map(|(f, s)| {
                let n = s.concurrency? as usize;
                Some((f.to_string(), Arc::new(tokio::sync::Semaphore::new(n))))
            })
            .collect();
        let config_local = config.local_concurrency;
        Ok(Arc::new(Controller {
            limits,
            foreground: ForegroundClient::new(gearmand.clone()),
            config,
            client,
            gearmand,
            served: tokio::sync::Mutex::new((
                Instant::now()
                    .checked_sub(STATUS_MAX_AGE)
                    .unwrap_or_else(Instant::now),
                None,
            )),
            rows: Outage::new(
                "controller cannot update job rows; they run again after their lease",
            ),
            lost: Outage::new(
                "controller lost track of running jobs; they run again after their lease",
            ),
            in_hand: TaskTracker::new(),
            abandon: CancellationToken::new(),
            local: Arc::new(tokio::sync::Semaphore::new(config_local)),
            accepting: AtomicBool::new(false),
            running: Arc::default(),
        }))
    }

    /// A place in `funcname`'s share of the slots, if it has one free.
    fn take_share(&self, funcname: &str) -> Option<Share> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let n = running.entry(funcname.to_string()).or_insert(0);
        if *n >= self.config.share() {
            return None;
        }
        *n += 1;
        Some(Share {
            running: self.running.clone(),
            funcname: funcname.to_string(),
        })
    }

    /// The handle an Injector in this process gives its jobs to.
    pub fn local(self: &Arc<Self>) -> Local {
        Local(self.clone())
    }

    /// Runs one job JSON to its end: submits it to its function, keeps its
    /// lease while it runs, and completes or fails its row.
    pub async fn run_job(&self, workload: Bytes) -> Ran {
        self.in_hand.track_future(self.run_workload(workload)).await
    }

    async fn run_workload(&self, workload: Bytes) -> Ran {
        let job = match Job::from_json(&workload) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(error = %err, "run_queued_job got something that is not a job");
                return Ran::NotAJob;
            }
        };
        self.run_in_span(job, workload, false).await
    }

    /// [`Controller::run_parsed`] in a span naming the job.
    async fn run_in_span(&self, job: Job, workload: Bytes, fresh: bool) -> Ran {
        let span = tracing::info_span!("job", job.id = job.jobid, db.id = job.dbid, funcname = %job.funcname);
        self.run_parsed(job, workload, fresh).instrument(span).await
    }

    /// Runs a job; `fresh`: its row was just stored, leased, by this
    /// process (see [`Local::try_run`]), so it is not checked for staleness.
    async fn run_parsed(&self, job: Job, workload: Bytes, fresh: bool) -> Ran {
        if let Some(reason) = unsendable_funcname(&job.funcname) {
            // Only a foreign Injector or QueueRunner sends such a job (ours
            // refuse or park it): submitting it would make gearmand's
            // status unreadable for that function, or, for a name we serve
            // (`run_queued_job`), have this Controller run it by sending it
            // to itself, slot after slot.
            tracing::warn!(%reason, "parking a job whose function cannot be sent to gearmand: it stays in the table, dead");
            let parked = self
                .client
                .store()
                .fail(
                    JobRef::from(&job),
                    When::Never,
                    job.failcount,
                    Some(&reason),
                )
                .await;
            telemetry::parked(1);
            return match self.row_update(parked, "cannot park a job whose function cannot be sent")
            {
                Some(_) => Ran::Parked,
                None => Ran::Unknown,
            };
        }
        // A copy that waited in gearmand past its lease (or on another
        // gearmand) may find its row done, cancelled or failed since:
        // running it would run the job again. When the row cannot be read,
        // the job runs (at least once).
        let current = if fresh {
            Ok(true)
        } else {
            self.client.start_job(&job, self.config.lease).await
        };
        if let Some(false) = self.row_update(current, "cannot check that a job is still due") {
            tracing::info!(
                failcount = job.failcount,
                "dropping a stale copy of a job: its row was completed, cancelled or failed since"
            );
            return Ran::Stale;
        }
        if self
            .client
            .store()
            .paused_functions()
            .await
            .contains(&job.funcname)
        {
            // Sent before the pause took hold: given back, due again
            // shortly, its failcount kept; the QueueRunner holds it until
            // the resume.
            return self.put_back(&job, "is paused", Ran::Paused).await;
        }
        if !self.has_worker(&job.funcname).await {
            return self.put_back(&job, "has no worker", Ran::NoWorker).await;
        }
        let Some(_share) = self.take_share(&job.funcname) else {
            return self
                .put_back(&job, "holds its share of the slots", Ran::AtLimit)
                .await;
        };
        // Held until the answer (or the timeout): the limit counts jobs
        // running here, whatever became of them in gearmand.
        let _slot = match self.limits.get(&job.funcname) {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) if !self.at_limit_elsewhere(&job.funcname).await => Some(slot),
                _ => {
                    return self
                        .put_back(&job, "at its concurrency limit", Ran::AtLimit)
                        .await
                }
            },
        };
        let started = Instant::now();
        let unique = gearman_unique(job.uniqkey.as_deref());
        let run = self
            .foreground
            .submit(&job.funcname, unique, workload.clone());
        tokio::pin!(run);
        let beat = Duration::from_secs(u64::from(self.config.lease / 2));
        let timeout = self.timeout_of(&job.funcname);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // Each tick keeps its own schedule: the frequent worker check must
        // not put the lease's renewal off.
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + WORKER_CHECK, WORKER_CHECK);
        let waited = loop {
            tokio::select! {
                outcome = &mut run => break Waited::Answered(outcome),
                _ = renew.tick() => {
                    let extended = self.client.extend_lease(&job, self.config.lease).await;
                    self.row_update(extended, "cannot extend the lease of a running job");
                }
                _ = sleep_until_some(deadline) => break Waited::TimedOut,
                _ = self.abandon.cancelled() => break Waited::Abandoned,
                _ = check.tick() => {
                    // A worker that vanished with the job leaves gearmand
                    // holding it for nobody: the slot is not held for it.
                    if !self.has_worker(&job.funcname).await {
                        break Waited::WorkerGone;
                    }
                }
            }
        };
        telemetry::controller_job(&job.funcname, started.elapsed());
        let outcome = match waited {
            Waited::Answered(outcome) => outcome,
            Waited::TimedOut => return self.timed_out(&job, timeout.unwrap_or_default()).await,
            Waited::Abandoned => return self.give_back(&job).await,
            Waited::WorkerGone => {
                tracing::info!("job's function lost its last worker: given back, due");
                return self
                    .put_back(&job, "lost its last worker", Ran::NoWorker)
                    .await;
            }
        };
        match &outcome {
            Ok(_) => self.lost.ended(),
            Err(err) => self.lost.failed(err),
        }
        match outcome {
            Ok(Outcome::Complete(_)) => {
                let completed = self.client.complete_job(&job).await;
                match self.row_update(
                    completed,
                    "job done but its row remains; it runs again after its lease",
                ) {
                    Some(()) => Ran::Completed,
                    None => Ran::Unknown,
                }
            }
            Ok(outcome @ (Outcome::Fail(_) | Outcome::Exception(_))) => {
                let failed = self
                    .client
                    .failed_job_with(&job, &failure_text(&outcome))
                    .await;
                match self.row_update(failed, "job failed and its row could not be rescheduled") {
                    Some(retry) => {
                        tracing::info!(%retry, "job failed");
                        Ran::Failed(retry)
                    }
                    None => Ran::Unknown,
                }
            }
            Err(_) => Ran::Unknown,
        }
    }

    /// Fails a job whose worker did not answer within `job_timeout`. Its
    /// foreground submit is dropped: the worker's answer, should it come,
    /// finds nobody waiting.
    async fn timed_out(&self, job: &Job, timeout: Duration) -> Ran {
        let error = format!(
            "timed out after {} s: no answer from the worker",
            timeout.as_secs_f64()
        );
        let failed = self.client.failed_job_with(job, &error).await;
        match self.row_update(failed, "job timed out and its row could not be rescheduled") {
            Some(retry) => {
                tracing::warn!(
                    timeout_s = timeout.as_secs_f64(),
                    %retry,
                    "job timed out: no answer from its worker; failed, and its slot freed"
                );
                Ran::TimedOut(retry)
            }
            None => Ran::Unknown,
        }
    }

    /// Gives back the row of a job not run because its function `why`
    /// (is paused, has no worker): due now, its failcount kept, its attempt
    /// undone. The QueueRunner holds it, due, until that changes.
    async fn put_back(&self, job: &Job, why: &str, ran: Ran) -> Ran {
        let given = self.client.reschedule_job(job, When::In(0)).await;
        let what = format!("function {why}, and its row could not be put back");
        match self.row_update(given, &what) {
            Some(()) => ran,
            None => Ran::Unknown,
        }
    }

    /// The job timeout of `funcname`: its own, else the role's.
    fn timeout_of(&self, funcname: &str) -> Option<Duration> {
        self.config
            .functions
            .get(funcname)
            .timeout
            .or(self.config.job_timeout)
    }

    /// Whether gearmand already holds `funcname`'s limit of jobs, queued or
    /// running (other Controllers' included), read afresh: a limited
    /// function's jobs are few at a time, and a stale reading would hold
    /// the next one back for a second after each answer. No answer: no.
    async fn at_limit_elsewhere(&self, funcname: &str) -> bool {
        let Some(limit) = self.config.functions.concurrency(funcname) else {
            return false;
        };
        let (load, _) = self.foreground.function_status().await;
        load.get(funcname)
            .is_some_and(|l| l.queued >= u64::from(limit))
    }

    /// Gives back the row of a job still running when shutdown gave up on
    /// it: due after `give_back_delay`, instead of leased for a whole
    /// lease. (gearmand also hands its `run_queued_job` to another
    /// Controller, with the row's old dispatch in it.)
    async fn give_back(&self, job: &Job) -> Ran {
        let given = self
            .client
            .reschedule_job(job, When::In(self.config.give_back_delay))
            .await;
        match self.row_update(
            given,
            "cannot give back the row of a job left running at shutdown; it runs again after its lease",
        ) {
            Some(()) => {
                tracing::info!(
                    due_in_s = self.config.give_back_delay,
                    "job still running at shutdown: its row is given back"
                );
                Ran::GivenBack
            }
            None => Ran::Unknown,
        }
    }

    /// The value of a row update, or None after logging why it failed: an
    /// unreachable database once per outage, anything else per job.
    fn row_update<T>(&self, result: Result<T>, what: &str) -> Option<T> {
        self.rows.track(&result);
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                if !err.is_connection_fault() {
                    tracing::warn!(error = %err, "{what}");
                }
                None
            }
        }
    }

    /// Whether gearmand has a worker for `function`, from its `status`.
    /// When in doubt (no gearmand answers), yes: the job is tried.
    ///
    /// A reading younger than [`STATUS_MAX_AGE`] answers yes, one younger
    /// than [`NO_WORKER_MAX_AGE`] no; an older one is read afresh by the
    /// first job that asks, while the others wait for it: 200 jobs of a
    /// function with no worker cost one status read, not 200.
    async fn has_worker(&self, function: &str) -> bool {
        let mut served = self.served.lock().await;
        let has =
            |served: &Option<HashSet<String>>| served.as_ref().is_none_or(|s| s.contains(function));
        // A "no" is trusted for less long: a worker that registers now
        // should get its jobs at once, not after the no-worker delay.
        let max_age = if has(&served.1) {
            STATUS_MAX_AGE
        } else {
            NO_WORKER_MAX_AGE
        };
        if served.0.elapsed() >= max_age {
            let (load, errors) = self.foreground.function_status().await;
            let known = (errors.len() < self.gearmand.len()).then(|| {
                load.into_iter()
                    .filter(|(_, l)| l.workers > 0)
                    .map(|(f, _)| f)
                    .collect()
            });
            *served = (Instant::now(), known);
        }
        has(&served.1)
    }

    /// Serves `run_queued_job` until `shutdown`, then finishes the jobs in
    /// hand.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(
            lease = self.config.lease,
            concurrency = self.config.concurrency,
            job_timeout_s = self.config.job_timeout.map_or(0.0, |t| t.as_secs_f64()),
            "controller started"
        );
        let stopping = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                Instant::now()
            }
        });
        let stopped = shutdown.clone();
        self.accepting.store(true, Ordering::Release);
        let me = self.clone();
        serve(
            self.gearmand.clone(),
            RUN_QUEUED_JOB.to_string(),
            self.config.concurrency,
            move |a| {
                let me = me.clone();
                async move {
                    // The Controller's own job is done whatever the real
                    // job's outcome: that is in the row now.
                    let _ = me.run_job(a.data).await;
                    WorkResult::Complete(Bytes::new())
                }
            },
            shutdown,
            self.config.shutdown_timeout,
        )
        .await;
        // `serve` is done with the jobs it took: those still running were
        // left by it at the shutdown timeout. Jobs handed over in this
        // process get what is left of that timeout; then all of those
        // still running give their rows back.
        self.accepting.store(false, Ordering::Release);
        self.in_hand.close();
        let since = if stopped.is_cancelled() {
            stopping.await.unwrap_or_else(|_| Instant::now())
        } else {
            stopping.abort();
            Instant::now()
        };
        let left = self.config.shutdown_timeout.saturating_sub(since.elapsed());
        let _ = tokio::time::timeout(left, self.in_hand.wait()).await;
        self.abandon.cancel();
        let left = self.in_hand.len();
        if left > 0 {
            tracing::warn!(
                jobs = left,
                "shutdown timeout: giving back the rows of the jobs still running"
            );
            if tokio::time::timeout(GIVE_BACK_LIMIT, self.in_hand.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    jobs = self.in_hand.len(),
                    "rows not given back at exit; those jobs run again after their lease"
                );
            }
        }
        // Completions and failures kept through a database outage are
        // written before exit, for at most the shutdown timeout.
        if tokio::time::timeout(
            self.config.shutdown_timeout,
            self.client.flush_completions(),
        )
        .await
        .is_err()
        {
            tracing::warn!(
                rows = self.client.unwritten(),
                "completions not written at exit; those jobs run again after their lease"
            );
        }
        tracing::info!("controller stopped");
    }
}

/// How the wait for a worker's answer ended.
enum Waited {
    Answered(Result<Outcome>),
    TimedOut,
    Abandoned,
    /// gearmand says no worker serves the function any more.
    WorkerGone,
}

/// The last error a failed job's row records: which answer, and what the
/// worker said with it (its last WORK_WARNING before a WORK_FAIL, or the
/// WORK_EXCEPTION's data), as text.
fn failure_text(outcome: &Outcome) -> String {
    let (what, data) = match outcome {
        Outcome::Fail(data) => ("WORK_FAIL", data),
        Outcome::Exception(data) => ("WORK_EXCEPTION", data),
        Outcome::Complete(data) => ("WORK_COMPLETE", data),
    };
    if data.is_empty() {
        format!("{what} (the worker said nothing more)")
    } else {
        format!("{what}: {}", String::from_utf8_lossy(data))
    }
}

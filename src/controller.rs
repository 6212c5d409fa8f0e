//! The Controller: the `run_queued_job` Gearman worker of low-latency mode.
//!
//! For each job JSON it gets, it submits the job in the foreground to the
//! job's real function (same JSON as workload) and waits. WORK_COMPLETE
//! deletes the row; WORK_FAIL or WORK_EXCEPTION fails it (backoff, dead
//! after max_attempts). If gearmand goes away meanwhile, the outcome is
//! unknown: the row stays leased and runs again after its lease. While a
//! job runs, the Controller extends its lease every half lease, so a long
//! job is never dispatched a second time while it is still running.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::client::{Client, Retry};
use crate::error::{Error, Result};
use crate::gearman::{
    function_status, gearman_unique, serve, ForegroundClient, Outcome, WorkResult,
    DEFAULT_SHUTDOWN_TIMEOUT,
};
use crate::job::{unsendable_funcname, Job, When};
use crate::names::{DEFAULT_LEASE, DEFAULT_NO_WORKER_DELAY, RUN_QUEUED_JOB};
use crate::outage::Outage;
use crate::telemetry;

/// Jobs run at once, per gearmand.
pub const DEFAULT_CONCURRENCY: usize = 200;

/// Controller settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The lease a running job's row is kept under, seconds; renewed every
    /// half lease while the job runs.
    pub lease: u32,
    /// Jobs run at once, per gearmand.
    pub concurrency: usize,
    /// How long shutdown waits for the jobs in hand; those still running
    /// then run again after their lease.
    pub shutdown_timeout: Duration,
    /// Seconds a job whose function has no worker waits in the database
    /// before it is tried again.
    pub no_worker_delay: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease: DEFAULT_LEASE,
            concurrency: DEFAULT_CONCURRENCY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            no_worker_delay: DEFAULT_NO_WORKER_DELAY,
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
        Ok(())
    }
}

/// What became of one `run_queued_job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// The worker completed it; its row is deleted.
    Completed,
    /// The worker failed it; its row is rescheduled or dead.
    Failed(Retry),
    /// The outcome is unknown (gearmand lost, or the row could not be
    /// updated); the row runs again after its lease.
    Unknown,
    /// No worker serves the job's function: the row waits in the database
    /// (`no_worker_delay`) rather than hold a Controller slot.
    NoWorker,
    /// The workload was not a job JSON; nothing was run.
    NotAJob,
    /// The job's function name cannot be sent to gearmand (see
    /// [`unsendable_funcname`]): its row is parked, dead, and logged.
    Parked,
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
}

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
        Ok(Arc::new(Controller {
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
        }))
    }

    /// Runs one job JSON to its end: submits it to its function, keeps its
    /// lease while it runs, and completes or fails its row.
    pub async fn run_job(&self, workload: Bytes) -> Ran {
        let job = match Job::from_json(&workload) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(error = %err, "run_queued_job got something that is not a job");
                return Ran::NotAJob;
            }
        };
        let span = tracing::info_span!("job", job.id = job.jobid, db.id = job.dbid, funcname = %job.funcname);
        self.run_parsed(job, workload).instrument(span).await
    }

    async fn run_parsed(&self, job: Job, workload: Bytes) -> Ran {
        if let Some(reason) = unsendable_funcname(&job.funcname) {
            // Only a foreign Injector or QueueRunner sends such a job (ours
            // refuse or park it): submitting it would make gearmand's
            // status unreadable for that function.
            tracing::warn!(%reason, "parking a job whose function cannot be sent to gearmand: it stays in the table, dead");
            let parked = self.client.reschedule_job(&job, When::Never).await;
            telemetry::parked(1);
            return match self.row_update(parked, "cannot park a job whose function cannot be sent")
            {
                Some(_) => Ran::Parked,
                None => Ran::Unknown,
            };
        }
        if !self.has_worker(&job.funcname).await {
            let released = self
                .client
                .reschedule_job(&job, When::In(self.config.no_worker_delay))
                .await;
            return match self.row_update(
                released,
                "no worker for the job, and its row could not be put back",
            ) {
                Some(()) => Ran::NoWorker,
                None => Ran::Unknown,
            };
        }
        let started = Instant::now();
        let unique = gearman_unique(job.uniqkey.as_deref());
        let run = self
            .foreground
            .submit(&job.funcname, unique, workload.clone());
        tokio::pin!(run);
        let beat = Duration::from_secs(u64::from(self.config.lease / 2));
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                _ = tokio::time::sleep(beat) => {
                    let extended = self.client.extend_lease(&job, self.config.lease).await;
                    self.row_update(extended, "cannot extend the lease of a running job");
                }
            }
        };
        telemetry::controller_job(started.elapsed());
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
            Ok(Outcome::Fail(_) | Outcome::Exception(_)) => {
                let failed = self.client.failed_job(&job).await;
                match self.row_update(failed, "job failed and its row could not be rescheduled") {
                    Some(retry) => {
                        tracing::info!(?retry, "job failed");
                        Ran::Failed(retry)
                    }
                    None => Ran::Unknown,
                }
            }
            Err(_) => Ran::Unknown,
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
            let (load, errors) = function_status(&self.gearmand).await;
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
            "controller started"
        );
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
        tracing::info!("controller stopped");
    }
}

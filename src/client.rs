//! The library API of throughput mode: store jobs, and, from a worker,
//! complete, reschedule or fail them.
//!
//! Completion is the hottest path of the system, so completions that
//! arrive together are coalesced into one `DELETE ... WHERE jobid IN (...)`
//! per database (group commit): a completion that finds the database idle
//! is sent at once; those that arrive while deletes are in flight ride
//! together in the next one. A worker that need not wait for the DELETE
//! ([`Client::complete_job_deferred`]) frees its slot at once, so its
//! speed is bounded by the database's throughput, not its commit latency.
//!
//! No completion is dropped on a database fault: a DELETE (or a
//! reschedule) that fails because the database is down, hung or refusing
//! connections is kept and tried again, with capped and jittered backoff,
//! until it commits or the process exits; [`Client::flush_completions`]
//! waits for them. So an outage shorter than the lease makes no job run
//! twice. A change the database refuses for a reason of the statement's
//! is logged and dropped (the job then runs again after its lease), and
//! one whose row is gone is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::batch;
use crate::error::{Error, Result};
use crate::functions::Functions;
use crate::job::{backoff, Job, JobRef, NewJob, When};
use crate::outage::Outage;
use crate::store::Store;
use crate::telemetry;

/// After this many failures a job is parked as dead.
pub const DEFAULT_MAX_ATTEMPTS: u8 = 25;
/// Most completions in one DELETE.
pub const DEFAULT_COMPLETE_BATCH: usize = 1000;
/// How long a completion may wait for others to join its DELETE: none.
/// Completions that arrive while DELETEs are in flight join the next one
/// anyway, and a timer would add a millisecond to every job at low load.
pub const DEFAULT_COMPLETE_LINGER: Duration = Duration::ZERO;
/// DELETEs in flight at once: one, so that under load the completions
/// that arrive during a DELETE's commit all join the next one. With four,
/// low-latency mode wrote 0.18 DELETEs per job instead of 0.13, and
/// MariaDB spent 72-73 µs of CPU per job instead of 61-64 (gv_bench
/// scenario 4, taken in turn); a lone completion still goes at once.
const COMPLETE_IN_FLIGHT: usize = 1;
/// Longest pause between two tries of the changes kept after a database
/// fault. While the database is known down a try costs nothing (the store
/// refuses it without a round trip), so the pause is short: the kept
/// changes commit within about a second of the database's return.
pub const KEPT_RETRY_CAP: Duration = Duration::from_secs(1);

/// What [`Client::failed_job`] did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It runs again this many seconds from now.
    In(u32),
    /// It reached the attempt limit and is parked, dead.
    Dead,
}

impl std::fmt::Display for Retry {
    /// As logs say it: `in 60 s`, or `dead`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retry::In(secs) => write!(f, "in {secs} s"),
            Retry::Dead => f.write_str("dead"),
        }
    }
}

struct Completion {
    job: JobRef,
    /// Ok, or why the DELETE failed and whether the database was away;
    /// None for a deferred completion, which nobody waits for.
    done: Option<oneshot::Sender<Result<(), (String, bool)>>>,
}

/// A change to a row that failed on a fault of its database, kept until
/// it commits.
enum Kept {
    /// A completion.
    Delete(JobRef),
    /// A reschedule: [`Client::reschedule_job`].
    Reschedule {
        job: JobRef,
        when: When,
        failcount: u8,
    },
    /// A failure: [`Client::failed_job`] or [`Client::failed_job_with`].
    Fail {
        job: JobRef,
        when: When,
        failcount: u8,
        error: Option<String>,
    },
}

/// Changes not yet written, so that a worker can wait for them before it
/// exits: deferred completions not yet sent, and every change kept after a
/// database fault.
struct Unwritten {
    count: AtomicUsize,
    written: Notify,
    /// Changes being kept: logged once per outage, at info (the store's
    /// own tracker warns that the database is down).
    outage: Outage,
}

impl Unwritten {
    fn done(&self, n: usize) {
        if n > 0 {
            self.count.fetch_sub(n, Ordering::SeqCst);
            self.written.notify_waiters();
        }
    }
}

/// A handle for storing and finishing jobs. Cheap to clone; clones share
/// one database pool per database, one completion batcher and one keeper
/// of the changes that failed on a database fault.
#[derive(Clone)]
pub struct Client {
    store: Arc<Store>,
    completions: mpsc::Sender<Completion>,
    unwritten: Arc<Unwritten>,
    kept: mpsc::UnboundedSender<Kept>,
    max_attempts: u8,
    functions: Functions,
}

impl Client {
    /// A client on `store`. Must be called within a Tokio runtime: it
    /// starts the completion batcher ([`crate::batch`]), which ends when
    /// the last clone of the client is dropped, and the keeper of changes
    /// that failed on a database fault, which ends once the last clone is
    /// dropped and it has written them all.
    pub fn new(store: Arc<Store>) -> Client {
        let limits = batch::Limits {
            max_batch: DEFAULT_COMPLETE_BATCH,
            linger: DEFAULT_COMPLETE_LINGER,
            in_flight: COMPLETE_IN_FLIGHT,
        };
        let unwritten = Arc::new(Unwritten {
            count: AtomicUsize::new(0),
            written: Notify::new(),
            outage: Outage::info(
                "completions kept while the database is down; written once it answers",
            ),
        });
        let (kept, to_retry) = mpsc::unbounded_channel();
        tokio::spawn(retry_kept(store.clone(), unwritten.clone(), to_retry));
        let (s, u, k) = (store.clone(), unwritten.clone(), kept.clone());
        let completions = batch::spawn(limits, move |batch| {
            let (s, u, k) = (s.clone(), u.clone(), k.clone());
            async move { flush(&s, &u, &k, batch).await }
        });
        Client {
            store,
            completions,
            unwritten,
            kept,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            functions: Functions::default(),
        }
    }

    /// Sets after how many failures [`Client::failed_job`] parks a job as
    /// dead (default [`DEFAULT_MAX_ATTEMPTS`]; at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u8) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Sets per-function max attempts ([`crate::functions`]): a function's
    /// own `max_attempts` wins over [`Client::with_max_attempts`].
    pub fn with_functions(mut self, functions: Functions) -> Self {
        self.functions = functions;
        self
    }

    /// The store this client writes to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stores one job. Answers only after its row is committed; with a
    /// unique key that already has a row, answers that row instead.
    pub async fn insert_job(&self, job: NewJob) -> Result<JobRef> {
        let refs = self.store.insert(std::slice::from_ref(&job)).await?;
        Ok(refs[0])
    }

    /// Stores many jobs, in as few multi-row statements as the shards
    /// allow. Answers only after every row is committed; nothing is stored
    /// if any job fails validation.
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<JobRef>> {
        self.store.insert(jobs).await
    }

    /// Marks a job done: deletes its row. Answers Ok only after the delete
    /// is committed; it may share its DELETE with other completions.
    ///
    /// On a fault of the database (down, hung, refusing connections) it
    /// answers [`Error::CompletionFailed`] with `connection_fault` (at
    /// once while the database is known down) and keeps the completion:
    /// it is written once the database answers, unless the process exits
    /// first ([`Client::flush_completions`] waits for it).
    pub async fn complete_job(&self, job: &Job) -> Result<()> {
        let job = JobRef::from(job);
        let (done, answer) = oneshot::channel();
        let lost = || Error::CompletionLost { job };
        self.completions
            .send(Completion {
                job,
                done: Some(done),
            })
            .await
            .map_err(|_| lost())?;
        answer
            .await
            .map_err(|_| lost())?
            .map_err(|(reason, connection_fault)| Error::CompletionFailed {
                job,
                reason,
                connection_fault,
            })
    }

    /// Marks a job done without waiting for its DELETE: queues it for the
    /// next group DELETE and answers once it is queued (waiting only while
    /// the queue is full). The row stays until that DELETE commits. A
    /// DELETE that fails on a fault of the database is kept and tried
    /// again until it commits; only if the process exits first (or the
    /// database refuses the statement itself, logged) does the job run
    /// again after its lease, so at least once still holds. Call
    /// [`Client::flush_completions`] before exiting.
    pub async fn complete_job_deferred(&self, job: &Job) -> Result<()> {
        let job = JobRef::from(job);
        self.unwritten.count.fetch_add(1, Ordering::SeqCst);
        let queued = self.completions.send(Completion { job, done: None }).await;
        if queued.is_err() {
            self.unwritten.done(1);
            return Err(Error::CompletionLost { job });
        }
        Ok(())
    }

    /// Waits until every deferred completion, and every completion or
    /// reschedule kept after a database fault, has been written (or
    /// refused by the database for a reason of its own, and logged).
    ///
    /// While a database is down this waits for its return: bound it by
    /// the shutdown timeout (`gv_consume` waits `--shutdown-timeout`), and
    /// see [`Client::unwritten`] for what is left when it runs out.
    pub async fn flush_completions(&self) {
        loop {
            let written = self.unwritten.written.notified();
            if self.unwritten.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            written.await;
        }
    }

    /// Completions and reschedules not yet written: deferred ones not yet
    /// sent, and those kept after a database fault. Those left when the
    /// process exits run again after their lease.
    pub fn unwritten(&self) -> usize {
        self.unwritten.count.load(Ordering::SeqCst)
    }

    /// Sets when a job runs again, keeping its failcount. On a fault of
    /// the database the change is kept and written once it answers (and
    /// the fault returned).
    pub async fn reschedule_job(&self, job: &Job, when: When) -> Result<()> {
        self.reschedule(JobRef::from(job), when, job.failcount)
            .await
    }

    async fn reschedule(&self, job: JobRef, when: When, failcount: u8) -> Result<()> {
        match self.store.reschedule(job, when, failcount).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_connection_fault() => {
                keep(
                    &self.unwritten,
                    &self.kept,
                    Kept::Reschedule {
                        job,
                        when,
                        failcount,
                    },
                    &err,
                );
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// Keeps a running job's row leased for `lease` more seconds, so that
    /// it is not dispatched again while it runs. Returns whether the row
    /// still exists (false: completed or cancelled meanwhile).
    pub async fn extend_lease(&self, job: &Job, lease: u32) -> Result<bool> {
        self.store.extend_lease(JobRef::from(job), lease).await
    }

    /// Checks, before a job runs, that this copy is still its row's
    /// dispatch, and renews the row's lease for `lease` secs if so. False
    /// means a stale copy (the row was completed, cancelled or failed
    /// since this copy was sent: it waited in gearmand past its lease, or
    /// another copy ran first): do not run it. One indexed UPDATE; a
    /// foreign worker can do the same, see the README.
    pub async fn start_job(&self, job: &Job, lease: u32) -> Result<bool> {
        let current = self
            .store
            .renew_if_current(JobRef::from(job), job.failcount, lease)
            .await?;
        if !current {
            telemetry::stale_copy();
        }
        Ok(current)
    }

    /// Records a failed run: failcount + 1, and the job runs again after
    /// the original's backoff (2^failcount minutes, at most a day), or is
    /// parked dead once it has failed `max_attempts` times. On a fault of
    /// the database the change is kept and written once it answers (and
    /// the fault returned). Where the table has the columns, the row's
    /// `failed_at` is set (it shows as retrying) and its `last_error`
    /// cleared: see [`Client::failed_job_with`] to say why.
    pub async fn failed_job(&self, job: &Job) -> Result<Retry> {
        self.failed(job, None).await
    }

    /// [`Client::failed_job`], recording `error` as the row's last error
    /// where the table has the `last_error` column (`garivini jobs show`
    /// shows it): its last [`MAX_LAST_ERROR_CHARS`] characters, cut on a
    /// character boundary.
    ///
    /// [`MAX_LAST_ERROR_CHARS`]: crate::store::MAX_LAST_ERROR_CHARS
    pub async fn failed_job_with(&self, job: &Job, error: &str) -> Result<Retry> {
        // Bounded here too: a failure kept through an outage holds no more.
        let error =
            crate::store::bound_error(error, crate::store::MAX_LAST_ERROR_CHARS, false, false);
        self.failed(job, Some(error)).await
    }

    async fn failed(&self, job: &Job, error: Option<String>) -> Result<Retry> {
        let failcount = job.failcount.saturating_add(1);
        let max_attempts = self
            .functions
            .get(&job.funcname)
            .max_attempts
            .unwrap_or(self.max_attempts);
        let retry = if failcount >= max_attempts {
            Retry::Dead
        } else {
            Retry::In(backoff(job.failcount))
        };
        let when = match retry {
            Retry::Dead => When::Never,
            Retry::In(secs) => When::In(secs),
        };
        let job_funcname = job.funcname.as_str();
        let job = JobRef::from(job);
        match self
            .store
            .fail(job, when, failcount, error.as_deref())
            .await
        {
            Ok(_) => {}
            Err(err) if err.is_connection_fault() => {
                keep(
                    &self.unwritten,
                    &self.kept,
                    Kept::Fail {
                        job,
                        when,
                        failcount,
                        error,
                    },
                    &err,
                );
                return Err(err);
            }
            Err(err) => return Err(err),
        }
        telemetry::failed(job_funcname, retry == Retry::Dead);
        Ok(retry)
    }
}

/// Keeps `change`, which failed on `fault`, for [`retry_kept`].
fn keep(unwritten: &Unwritten, kept: &mpsc::UnboundedSender<Kept>, change: Kept, fault: &Error) {
    unwritten.count.fetch_add(1, Ordering::SeqCst);
    unwritten.outage.failed(fault);
    if kept.send(change).is_err() {
        // The keeper ends only after the last client: nothing can call here then.
        unwritten.done(1);
    }
}

/// Writes the changes kept after a database fault, with the outage's
/// backoff (at most [`KEPT_RETRY_CAP`] apart), until each commits or is
/// refused for a reason of the statement's. Ends once every client is
/// gone and nothing is kept.
async fn retry_kept(
    store: Arc<Store>,
    unwritten: Arc<Unwritten>,
    mut to_retry: mpsc::UnboundedReceiver<Kept>,
) {
    let mut kept = Vec::new();
    loop {
        if kept.is_empty() {
            match to_retry.recv().await {
                Some(change) => kept.push(change),
                None => return,
            }
        }
        // The database was down a moment ago: give it the pause first.
        tokio::time::sleep(unwritten.outage.delay_up_to(KEPT_RETRY_CAP)).await;
        while let Ok(change) = to_retry.try_recv() {
            kept.push(change);
        }
        kept = write_kept(&store, &unwritten, kept).await;
    }
}

/// One try of the kept changes: the deletes of each database in one
/// group DELETE, the reschedules one by one. Returns those to try again.
async fn write_kept(store: &Store, unwritten: &Unwritten, kept: Vec<Kept>) -> Vec<Kept> {
    let mut deletes: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut reschedules = Vec::new();
    for change in kept {
        match change {
            Kept::Delete(job) => deletes.entry(job.dbid).or_default().push(job.jobid),
            Kept::Reschedule {
                job,
                when,
                failcount,
            } => reschedules.push((job, when, failcount, None, false)),
            Kept::Fail {
                job,
                when,
                failcount,
                error,
            } => reschedules.push((job, when, failcount, error, true)),
        }
    }
    let mut again = Vec::new();
    let mut fault = None;
    let mut done = 0;
    for (dbid, jobids) in deletes {
        match store.delete(dbid, &jobids).await {
            // Rows already gone (completed by another run) are done too.
            Ok(deleted) => {
                telemetry::completed(deleted);
                done += jobids.len();
            }
            Err(err) if err.is_connection_fault() => {
                again.extend(
                    jobids
                        .into_iter()
                        .map(|jobid| Kept::Delete(JobRef { dbid, jobid })),
                );
                fault = Some(err);
            }
            Err(err) => {
                tracing::warn!(db.id = dbid, jobs = jobids.len(), error = %err, "kept completions refused by the database; those jobs run again after their lease");
                done += jobids.len();
            }
        }
    }
    for (job, when, failcount, error, failure) in reschedules {
        let written = if failure {
            store.fail(job, when, failcount, error.as_deref()).await
        } else {
            store.reschedule(job, when, failcount).await
        };
        match written {
            Ok(_) => done += 1,
            Err(err) if err.is_connection_fault() => {
                again.push(if failure {
                    Kept::Fail {
                        job,
                        when,
                        failcount,
                        error,
                    }
                } else {
                    Kept::Reschedule {
                        job,
                        when,
                        failcount,
                    }
                });
                fault = Some(err);
            }
            Err(err) => {
                tracing::warn!(%job, error = %err, "a kept reschedule refused by the database; the job runs again after its lease");
                done += 1;
            }
        }
    }
    unwritten.done(done);
    match &fault {
        Some(err) => unwritten.outage.failed(err),
        None => unwritten.outage.ended(),
    }
    again
}

async fn flush(
    store: &Store,
    unwritten: &Unwritten,
    kept: &mpsc::UnboundedSender<Kept>,
    batch: Vec<Completion>,
) {
    let mut by_db: HashMap<u32, Vec<Completion>> = HashMap::new();
    for c in batch {
        by_db.entry(c.job.dbid).or_default().push(c);
    }
    for (dbid, completions) in by_db {
        let ids: Vec<u64> = completions.iter().map(|c| c.job.jobid).collect();
        let outcome = store.delete(dbid, &ids).await;
        let fault = match &outcome {
            Ok(deleted) => {
                telemetry::completed(*deleted);
                None
            }
            Err(err) => Some(err),
        };
        let answer = outcome
            .as_ref()
            .map(|_| ())
            .map_err(|e| (e.to_string(), e.is_connection_fault()));
        let (mut written, mut refused) = (0, 0);
        for c in completions {
            match fault {
                // Kept, deferred or not, before anyone is told: a worker
                // flushing at exit then waits for it.
                Some(err) if err.is_connection_fault() => {
                    keep(unwritten, kept, Kept::Delete(c.job), err);
                    // A deferred one was counted when it was queued.
                    if c.done.is_none() {
                        written += 1;
                    }
                }
                Some(_) if c.done.is_none() => {
                    refused += 1;
                    written += 1;
                }
                _ if c.done.is_none() => written += 1,
                _ => {}
            }
            // The caller may have gone away; its row is deleted (or kept) all the same.
            if let Some(done) = c.done {
                drop(done.send(answer.clone()));
            }
        }
        if let (Some(err), true) = (fault, refused > 0) {
            tracing::warn!(db.id = dbid, jobs = refused, error = %err, "deferred completions refused by the database; those jobs run again after their lease");
        }
        unwritten.done(written);
    }
}

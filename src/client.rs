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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::batch;
use crate::error::{Error, Result};
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
/// DELETEs in flight at once.
const COMPLETE_IN_FLIGHT: usize = 4;

/// What [`Client::failed_job`] did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It runs again this many seconds from now.
    In(u32),
    /// It reached the attempt limit and is parked, dead.
    Dead,
}

struct Completion {
    job: JobRef,
    /// Ok, or why the DELETE failed and whether the database was away;
    /// None for a deferred completion, which nobody waits for.
    done: Option<oneshot::Sender<Result<(), (String, bool)>>>,
}

/// Deferred completions not yet written, so that a worker can wait for
/// them before it exits.
struct Deferred {
    pending: AtomicUsize,
    written: Notify,
    /// Deferred DELETEs failing: one warning per outage.
    outage: Outage,
}

/// A handle for storing and finishing jobs. Cheap to clone; clones share
/// one database pool per database and one completion batcher.
#[derive(Clone)]
pub struct Client {
    store: Arc<Store>,
    completions: mpsc::Sender<Completion>,
    deferred: Arc<Deferred>,
    max_attempts: u8,
}

impl Client {
    /// A client on `store`. Must be called within a Tokio runtime: it
    /// starts the completion batcher ([`crate::batch`]), which ends when
    /// the last clone of the client is dropped.
    pub fn new(store: Arc<Store>) -> Client {
        let limits = batch::Limits {
            max_batch: DEFAULT_COMPLETE_BATCH,
            linger: DEFAULT_COMPLETE_LINGER,
            in_flight: COMPLETE_IN_FLIGHT,
        };
        let deferred = Arc::new(Deferred {
            pending: AtomicUsize::new(0),
            written: Notify::new(),
            outage: Outage::new(
                "deferred completions failed; those jobs run again after their lease",
            ),
        });
        let (s, d) = (store.clone(), deferred.clone());
        let completions = batch::spawn(limits, move |batch| {
            let (s, d) = (s.clone(), d.clone());
            async move { flush(&s, &d, batch).await }
        });
        Client {
            store,
            completions,
            deferred,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Sets after how many failures [`Client::failed_job`] parks a job as
    /// dead (default [`DEFAULT_MAX_ATTEMPTS`]; at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u8) -> Self {
        self.max_attempts = max_attempts.max(1);
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

    /// Marks a job done: deletes its row. Answers only after the delete is
    /// committed; it may share its DELETE with other completions.
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
    /// the queue is full). The row stays until that DELETE commits; if the
    /// process dies first or the DELETE fails, the job runs again after
    /// its lease, so at least once still holds. Failures are logged, once
    /// per outage. Call [`Client::flush_completions`] before exiting.
    pub async fn complete_job_deferred(&self, job: &Job) -> Result<()> {
        let job = JobRef::from(job);
        self.deferred.pending.fetch_add(1, Ordering::SeqCst);
        let queued = self.completions.send(Completion { job, done: None }).await;
        if queued.is_err() {
            self.deferred.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::CompletionLost { job });
        }
        Ok(())
    }

    /// Waits until every deferred completion has been written (or has
    /// failed and been logged).
    pub async fn flush_completions(&self) {
        loop {
            let written = self.deferred.written.notified();
            if self.deferred.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            written.await;
        }
    }

    /// Sets when a job runs again, keeping its failcount.
    pub async fn reschedule_job(&self, job: &Job, when: When) -> Result<()> {
        self.store
            .reschedule(JobRef::from(job), when, job.failcount)
            .await?;
        Ok(())
    }

    /// Keeps a running job's row leased for `lease` more seconds, so that
    /// it is not dispatched again while it runs. Returns whether the row
    /// still exists (false: completed or cancelled meanwhile).
    pub async fn extend_lease(&self, job: &Job, lease: u32) -> Result<bool> {
        self.store.extend_lease(JobRef::from(job), lease).await
    }

    /// Records a failed run: failcount + 1, and the job runs again after
    /// the original's backoff (2^failcount minutes, at most a day), or is
    /// parked dead once it has failed `max_attempts` times.
    pub async fn failed_job(&self, job: &Job) -> Result<Retry> {
        let failcount = job.failcount.saturating_add(1);
        let retry = if failcount >= self.max_attempts {
            Retry::Dead
        } else {
            Retry::In(backoff(job.failcount))
        };
        let when = match retry {
            Retry::Dead => When::Never,
            Retry::In(secs) => When::In(secs),
        };
        self.store
            .reschedule(JobRef::from(job), when, failcount)
            .await?;
        telemetry::failed(retry == Retry::Dead);
        Ok(retry)
    }
}

async fn flush(store: &Store, deferred: &Deferred, batch: Vec<Completion>) {
    let mut by_db: HashMap<u32, Vec<Completion>> = HashMap::new();
    for c in batch {
        by_db.entry(c.job.dbid).or_default().push(c);
    }
    for (dbid, completions) in by_db {
        let ids: Vec<u64> = completions.iter().map(|c| c.job.jobid).collect();
        let outcome = store
            .delete(dbid, &ids)
            .await
            .map_err(|e| (e.to_string(), e.is_connection_fault()));
        if let Ok(deleted) = outcome {
            telemetry::completed(deleted);
        }
        let mut written = 0;
        for c in completions {
            match c.done {
                // The caller may have gone away; its row is deleted all the same.
                Some(done) => drop(done.send(outcome.clone().map(|_| ()))),
                None => written += 1,
            }
        }
        if written > 0 {
            match &outcome {
                Ok(_) => deferred.outage.ended(),
                Err((reason, fault)) => deferred.outage.failed(&Error::GroupFailed {
                    reason: reason.clone(),
                    connection_fault: *fault,
                }),
            }
            deferred.pending.fetch_sub(written, Ordering::SeqCst);
            deferred.written.notify_waiters();
        }
    }
}

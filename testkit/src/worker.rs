//! A real worker's stand-in: a Gearman worker in the test's process that
//! records every job it is handed and answers as told.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use garivini::gearman::{serve, Assignment, WorkResult};
use garivini::{Client, Job};
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use crate::db::{TestDb, PERL_COMPLETE_JOB};
use crate::gearmand::Gearmand;

/// Jobs one worker runs at once.
const CONCURRENCY: usize = 8;
/// How long it finishes the jobs in hand once stopped.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// One job a worker was handed.
#[derive(Debug, Clone)]
pub struct Run {
    /// The function it came under.
    pub function: String,
    /// The job JSON it carried.
    pub job: Job,
    /// Its Gearman unique id, if it had one.
    pub unique: Option<String>,
}

/// What the worker does with the row before it answers.
#[derive(Clone)]
enum Completion {
    /// Nothing: in low-latency mode the Controller deletes it.
    None,
    /// `Client::complete_job`, as a throughput-mode worker of ours does.
    Client(Client),
    /// The original Perl worker's DELETE, on a connection of its own.
    Original(mysql_async::Pool),
}

/// How a [`Worker`] is to behave; [`WorkerSpec::start`] starts it.
pub struct WorkerSpec {
    function: String,
    completion: Completion,
    work: Duration,
    answer: WorkResult,
}

impl WorkerSpec {
    /// Complete each row with `client` (throughput mode) before answering.
    pub fn completing_with(self, client: Client) -> WorkerSpec {
        WorkerSpec {
            completion: Completion::Client(client),
            ..self
        }
    }

    /// Delete each row as the original's users' workers do, with its
    /// `DELETE FROM job WHERE jobid=?` on `db`, before answering.
    pub fn deleting_like_the_original(self, db: &TestDb) -> WorkerSpec {
        WorkerSpec {
            completion: Completion::Original(mysql_async::Pool::new(db.url.as_str())),
            ..self
        }
    }

    /// Take `work` over each job.
    pub fn taking(self, work: Duration) -> WorkerSpec {
        WorkerSpec { work, ..self }
    }

    /// Answer every job with `answer` (default: WORK_COMPLETE, empty).
    pub fn answering(self, answer: WorkResult) -> WorkerSpec {
        WorkerSpec { answer, ..self }
    }

    /// Starts it; returns once gearmand knows it.
    pub async fn start(self, gearmand: &Gearmand) -> Worker {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let WorkerSpec {
            function,
            completion,
            work,
            answer,
        } = self;
        let recorded = runs.clone();
        let overlap = Arc::new(Overlap::default());
        let counted = overlap.clone();
        tokio::spawn(serve(
            gearmand.servers(),
            function.clone(),
            CONCURRENCY,
            move |a: Assignment| {
                let (recorded, completion, answer, counted) = (
                    recorded.clone(),
                    completion.clone(),
                    answer.clone(),
                    counted.clone(),
                );
                async move {
                    let _running = counted.enter();
                    let job = Job::from_json(&a.data).expect("job JSON");
                    recorded.lock().unwrap().push(Run {
                        function: a.function,
                        job: job.clone(),
                        unique: a.unique,
                    });
                    tokio::time::sleep(work).await;
                    match completion {
                        Completion::None => {}
                        Completion::Client(client) => {
                            client.complete_job(&job).await.expect("complete")
                        }
                        Completion::Original(pool) => {
                            let mut conn = pool.get_conn().await.expect("worker connection");
                            conn.exec_drop(PERL_COMPLETE_JOB, (job.jobid,))
                                .await
                                .expect("the original's DELETE");
                        }
                    }
                    answer
                }
            },
            stop.clone(),
            SHUTDOWN_TIMEOUT,
        ));
        gearmand.wait_for_worker(&function).await;
        Worker {
            runs,
            stop,
            overlap,
        }
    }
}

/// Jobs in the worker's hands now, and the most there ever were.
#[derive(Default)]
struct Overlap {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Overlap {
    /// Counts one job in until the guard is dropped (after its answer
    /// is decided and its row completed).
    fn enter(self: &Arc<Self>) -> impl Drop {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        struct Left(Arc<Overlap>);
        impl Drop for Left {
            fn drop(&mut self) {
                self.0.now.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Left(self.clone())
    }
}

/// A Gearman worker for one function in this process, recording each job
/// it is handed (when handed, before it works or answers); stopped on
/// drop.
pub struct Worker {
    runs: Arc<Mutex<Vec<Run>>>,
    stop: CancellationToken,
    overlap: Arc<Overlap>,
}

impl Worker {
    /// A worker for `function` that answers WORK_COMPLETE at once and
    /// leaves the row alone; change that with the [`WorkerSpec`] methods.
    pub fn serving(function: &str) -> WorkerSpec {
        WorkerSpec {
            function: function.to_string(),
            completion: Completion::None,
            work: Duration::ZERO,
            answer: WorkResult::Complete(Bytes::new()),
        }
    }

    /// Starts `Worker::serving(function)` as it is.
    pub async fn plain(gearmand: &Gearmand, function: &str) -> Worker {
        Worker::serving(function).start(gearmand).await
    }

    /// Every job handed to it so far, in order.
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    /// The jobs handed to it so far, in order.
    pub fn jobs(&self) -> Vec<Job> {
        self.runs().into_iter().map(|r| r.job).collect()
    }

    /// Jobs handed to it so far.
    pub fn count(&self) -> usize {
        self.runs.lock().unwrap().len()
    }

    /// The most jobs it ever had in hand at once (it runs up to 8).
    pub fn most_at_once(&self) -> usize {
        self.overlap.most.load(Ordering::SeqCst)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

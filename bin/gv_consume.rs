//! `gv_consume`: an example worker. Serves `--funcname`, reads the job
//! JSON, runs the job (counts it, or pipes its arg to `--exec CMD`). In
//! throughput mode it keeps the row leased while the job runs (one UPDATE
//! every half `--lease`, as the Controller does), then completes the row
//! (or fails it, with backoff); in low-latency mode it only answers
//! gearmand, and the Controller finishes the row.
//!
//! A command runs in a process group of its own. After `--kill-timeout` it
//! is sent SIGTERM, then SIGKILL a few seconds later, and the job fails; at
//! shutdown, commands still running when `--shutdown-timeout` is up are
//! stopped the same way, so that none outlives gv_consume. (Their Gearman
//! jobs go back to gearmand with the connection, which hands them to
//! another worker; their rows are left as they are.)

#[path = "common/allocator.rs"]
mod allocator;
#[path = "common/example.rs"]
mod example;
#[path = "common/metrics_endpoint.rs"]
mod metrics_endpoint;
#[path = "common/seconds.rs"]
mod seconds;
#[path = "common/servers.rs"]
mod servers;
#[path = "common/signal.rs"]
mod signal;
#[path = "common/terminal.rs"]
mod terminal;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{CommandFactory, FromArgMatches, Parser};
use example::Mode;
use garivini::gearman::{serve, Assignment, WorkResult};
use garivini::outage::Outage;
use garivini::{Client, Job};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a command has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long stopping the commands still running at shutdown may take, past
/// [`KILL_GRACE`].
const STOP_LIMIT: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(name = "gv_consume", version, about = "Garivini example worker")]
struct Cli {
    #[command(flatten)]
    servers: servers::Servers,
    #[command(flatten)]
    logging: terminal::Logging,
    /// How jobs are finished.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// Gearman function to serve.
    #[arg(long)]
    funcname: String,
    /// Jobs run at once, per gearmand.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Run each job as `sh -c CMD` with its arg on stdin; exit 0 = success.
    #[arg(long)]
    exec: Option<String>,
    /// Seconds an --exec command may run (the function's timeout): then
    /// SIGTERM to its process group, SIGKILL 5 s later, and the job fails
    /// with "timed out after SECS s" as its last error (0 = no limit).
    #[arg(
        long,
        visible_alias = "timeout",
        value_name = "SECS",
        default_value_t = 3600.0
    )]
    kill_timeout: f64,
    /// Throughput mode: seconds a running job's row is kept leased,
    /// renewed every half lease; as the QueueRunner's --lease.
    #[arg(long, value_name = "SECS", default_value_t = garivini::names::DEFAULT_LEASE)]
    lease: u32,
    /// Throughput mode: before running a job, check that its row is still
    /// the dispatch this copy came from (one UPDATE, which also renews the
    /// lease) and drop a stale copy: one whose row was completed,
    /// cancelled or failed since it was sent.
    #[arg(long)]
    skip_stale: bool,
    /// Milliseconds each job takes (simulated work).
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Append a line `DBID JOBID` to this file as each job starts.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Append a line with the microseconds from the job's creation (stamped
    /// in its arg by gv_inject) to its start; gv_inject reads them.
    #[arg(long)]
    latency_file: Option<PathBuf>,
    /// Seconds shutdown waits for the jobs in hand; --exec commands still
    /// running then are stopped (SIGTERM, SIGKILL 5 s later).
    #[arg(long, default_value_t = garivini::gearman::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
    shutdown_timeout: f64,
    /// Throughput mode: failures after which a job is parked as dead.
    #[arg(long, default_value_t = garivini::client::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u8,
    /// Serve Prometheus metrics on http://IP:PORT/metrics: in throughput
    /// mode the completions, failures and deaths this worker writes.
    #[arg(long, value_name = "IP:PORT", env = "GARIVINI_METRICS_ADDR")]
    metrics_addr: Option<String>,
}

/// A file that lines are appended to, one write each: lines from several
/// jobs never interleave, and survive a SIGKILL.
struct LineLog(Mutex<std::fs::File>);

impl LineLog {
    fn open(path: &Option<PathBuf>) -> anyhow::Result<Option<LineLog>> {
        let Some(path) = path else { return Ok(None) };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Some(LineLog(Mutex::new(file))))
    }

    fn write(&self, line: String) {
        if let Err(err) = self.0.lock().unwrap().write_all(line.as_bytes()) {
            tracing::error!(error = %err, "cannot write a log file");
        }
    }
}

struct Worker {
    /// Throughput mode only: keeps rows leased and finishes them.
    client: Option<Client>,
    /// Throughput mode: the lease a running job's row is kept under.
    lease: u32,
    /// Throughput mode: drop stale copies before running them.
    skip_stale: bool,
    exec: Option<String>,
    kill_timeout: Option<Duration>,
    work: Duration,
    record: Option<LineLog>,
    latency: Option<LineLog>,
    done: AtomicU64,
    failed: AtomicU64,
    /// Rows that cannot be finished while the database is away.
    rows: Outage,
    /// Cancelled once shutdown has given up on the jobs in hand: their
    /// commands are stopped.
    abandon: CancellationToken,
}

/// How a job's work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    Succeeded,
    /// Its command failed: why (exit status and the tail of its stderr).
    Failed(String),
    /// Its command outlived --kill-timeout and was killed.
    TimedOut,
    /// Still running at shutdown: its command was stopped.
    Abandoned,
}

impl Worker {
    /// The last error of a job whose command outlived --kill-timeout.
    fn timed_out(&self) -> String {
        format!(
            "timed out after {} s: gv_consume stopped the command (SIGTERM, then SIGKILL)",
            self.kill_timeout.map_or(0.0, |t| t.as_secs_f64())
        )
    }

    async fn handle(&self, assignment: Assignment) -> WorkResult {
        let started = example::unix_micros();
        let job = match Job::from_json(&assignment.data) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(error = %err, function = %assignment.function, "not a job JSON");
                return WorkResult::FailWith(Bytes::from(err.to_string()));
            }
        };
        if let Some(latency) = &self.latency {
            // gv_inject's arg: "SEQ MICROS ...".
            let stamp = std::str::from_utf8(&job.arg)
                .ok()
                .and_then(|a| a.split(' ').nth(1))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(stamp) = stamp {
                latency.write(format!("{}\n", started.saturating_sub(stamp)));
            }
        }
        if let (true, Some(client)) = (self.skip_stale, &self.client) {
            let current = client.start_job(&job, self.lease).await;
            self.rows.track(&current);
            if let Ok(false) = current {
                tracing::info!(job.id = job.jobid, db.id = job.dbid, "dropping a stale copy of a job: its row was completed, cancelled or failed since");
                return WorkResult::Complete(Bytes::new());
            }
        }
        if let Some(record) = &self.record {
            record.write(format!("{} {}\n", job.dbid, job.jobid));
        }
        let work = self.work(&job);
        let ended = match &self.client {
            Some(client) => keep_leased(client, &job, self.lease, &self.rows, work).await,
            None => work.await,
        };
        let ok = match ended {
            Ended::Succeeded => true,
            Ended::Failed(_) | Ended::TimedOut => false,
            Ended::Abandoned => {
                // The connection is closed by now: gearmand gives the job
                // to another worker, and the row keeps its lease meanwhile.
                return WorkResult::Fail;
            }
        };
        let Some(client) = &self.client else {
            // Low-latency mode: the Controller finishes the row.
            return if ok {
                self.done.fetch_add(1, Ordering::Relaxed);
                WorkResult::Complete(Bytes::new())
            } else {
                self.failed.fetch_add(1, Ordering::Relaxed);
                match ended {
                    Ended::TimedOut => WorkResult::FailWith(Bytes::from(self.timed_out())),
                    // The Controller records it as the row's last error.
                    Ended::Failed(why) => WorkResult::FailWith(Bytes::from(why)),
                    _ => WorkResult::Fail,
                }
            };
        };
        let outcome = if ok {
            // The slot is free again before the DELETE commits: the row
            // goes in the next group DELETE (and, if we die first, the job
            // runs again after its lease).
            client.complete_job_deferred(&job).await.map(|_| None)
        } else {
            let why = match &ended {
                Ended::Failed(why) => why.clone(),
                _ => self.timed_out(),
            };
            client.failed_job_with(&job, &why).await.map(Some)
        };
        self.rows.track(&outcome);
        match outcome {
            Ok(None) => {
                self.done.fetch_add(1, Ordering::Relaxed);
                WorkResult::Complete(Bytes::new())
            }
            Ok(Some(retry)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(job.id = job.jobid, db.id = job.dbid, %retry, "job failed");
                WorkResult::Fail
            }
            Err(err) => {
                // The row stays leased; the job runs again after the lease.
                if !err.is_connection_fault() {
                    tracing::warn!(job.id = job.jobid, db.id = job.dbid, error = %err, "cannot finish the row");
                }
                WorkResult::Fail
            }
        }
    }

    /// The job's work: the simulated time, then its command.
    async fn work(&self, job: &Job) -> Ended {
        if !self.work.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(self.work) => {}
                _ = self.abandon.cancelled() => return Ended::Abandoned,
            }
        }
        match &self.exec {
            None => Ended::Succeeded,
            Some(cmd) => run_command(cmd, &job.arg, self.kill_timeout, &self.abandon).await,
        }
    }
}

/// Runs `work` while keeping `job`'s row leased: `lease` more seconds
/// every half lease, as the Controller does, so that a job longer than the
/// lease is not dispatched again while it runs.
async fn keep_leased(
    client: &Client,
    job: &Job,
    lease: u32,
    rows: &Outage,
    work: impl std::future::Future<Output = Ended>,
) -> Ended {
    tokio::pin!(work);
    let beat = Duration::from_secs(u64::from(lease / 2));
    loop {
        tokio::select! {
            ended = &mut work => return ended,
            _ = tokio::time::sleep(beat) => {
                let extended = client.extend_lease(job, lease).await;
                rows.track(&extended);
                match extended {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(job.id = job.jobid, db.id = job.dbid, "the row of a running job is gone (cancelled?)"),
                    Err(err) if err.is_connection_fault() => {}
                    Err(err) => tracing::warn!(job.id = job.jobid, db.id = job.dbid, error = %err, "cannot extend the lease of a running job"),
                }
            }
        }
    }
}

/// Runs `sh -c CMD` in a process group of its own, `arg` on its stdin.
/// After `kill_timeout`, or once `abandon` is cancelled, the whole group is
/// stopped (SIGTERM, then SIGKILL after [`KILL_GRACE`]).
async fn run_command(
    cmd: &str,
    arg: &[u8],
    kill_timeout: Option<Duration>,
    abandon: &CancellationToken,
) -> Ended {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the command");
            return Ended::Failed(format!("cannot start the command: {err}"));
        }
    };
    let stderr = child.stderr.take().map(StderrTail::start);
    let Some(group) = child.id().map(Group) else {
        // Already exited and reaped: nothing left to stop.
        return Ended::Failed("the command exited before it could be watched".into());
    };
    if let Some(mut stdin) = child.stdin.take() {
        let arg = arg.to_vec();
        // Fed beside the wait: a command that does not read a large arg
        // must not hang the job. One that does not read it is no error.
        tokio::spawn(async move {
            let _ = stdin.write_all(&arg).await;
        });
    }
    let deadline = kill_timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        status = child.wait() => {
            group.disarm();
            let tail = match stderr {
                Some(tail) => tail.finish().await,
                None => String::new(),
            };
            match status {
                Ok(status) if status.success() => Ended::Succeeded,
                Ok(status) => Ended::Failed(failure_text(&status.to_string(), &tail)),
                Err(err) => Ended::Failed(failure_text(&format!("cannot wait for it: {err}"), &tail)),
            }
        }
        _ = sleep => {
            tracing::warn!(
                pid = group.0,
                kill_timeout_s = kill_timeout.map_or(0.0, |t| t.as_secs_f64()),
                "the command outlived --kill-timeout: stopping it; the job fails"
            );
            group.stop(&mut child).await;
            Ended::TimedOut
        }
        _ = abandon.cancelled() => {
            tracing::warn!(pid = group.0, "the command is still running at shutdown: stopping it");
            group.stop(&mut child).await;
            Ended::Abandoned
        }
    }
}

/// Bytes of a command's stderr kept for its failure's last error.
const STDERR_TAIL: usize = 800;
/// How long, after a command exited, its stderr may take to end (a child
/// it left behind may hold it open).
const STDERR_DRAIN: Duration = Duration::from_millis(200);

/// A command's stderr, copied to ours as it comes, its last
/// [`STDERR_TAIL`] bytes kept.
struct StderrTail {
    tail: Arc<Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl StderrTail {
    fn start(mut pipe: tokio::process::ChildStderr) -> StderrTail {
        use tokio::io::AsyncReadExt as _;
        let tail = Arc::new(Mutex::new(Vec::new()));
        let kept = tail.clone();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let _ = std::io::stderr().write_all(&buf[..n]);
                let mut kept = kept.lock().unwrap();
                kept.extend_from_slice(&buf[..n]);
                let over = kept.len().saturating_sub(STDERR_TAIL);
                kept.drain(..over);
            }
        });
        StderrTail { tail, reader }
    }

    /// The tail as text, once the pipe ended or [`STDERR_DRAIN`] passed.
    async fn finish(self) -> String {
        let mut reader = self.reader;
        if tokio::time::timeout(STDERR_DRAIN, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
        let tail = self.tail.lock().unwrap();
        String::from_utf8_lossy(&tail).trim().to_string()
    }
}

/// A failed command's last error: its exit status, then the tail of its
/// stderr.
fn failure_text(status: &str, stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        format!("command failed: {status}")
    } else {
        format!("command failed: {status}; stderr: {stderr_tail}")
    }
}

/// The process group of a running command (its id is the shell's pid),
/// SIGKILLed on drop unless disarmed: a command never outlives its job,
/// even when the job's future is dropped.
struct Group(u32);

impl Group {
    /// SIGTERM to the group; SIGKILL after [`KILL_GRACE`] if its leader
    /// has not exited.
    async fn stop(self, child: &mut tokio::process::Child) {
        self.signal("TERM");
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(pid = self.0, "the command ignored SIGTERM: SIGKILL");
        }
        // Also reaches what the leader left behind in its group.
        self.signal("KILL");
        let _ = child.wait().await;
        std::mem::forget(self);
    }

    fn disarm(self) {
        std::mem::forget(self);
    }

    /// Sends SIGname to the whole group, through the shell's `kill`
    /// builtin: `sh` is what runs the commands, so it is there.
    fn signal(&self, name: &str) {
        let sent = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -s {name} -- -{} 2>/dev/null", self.0))
            .stdin(std::process::Stdio::null())
            .status();
        if let Err(err) = sent {
            tracing::error!(pid = self.0, error = %err, "cannot signal the command's process group");
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal("KILL");
    }
}

fn main() {
    let matches = terminal::matches(Cli::command());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| terminal::usage_error(e));
    terminal::init_tracing(&cli.logging);
    terminal::run(async move {
        if cli.mode == Mode::Throughput && cli.lease < 2 {
            anyhow::bail!(
                "invalid setting --lease: must be at least 2 seconds (it is renewed every half lease)"
            );
        }
        let gearmand = cli.servers.gearmand()?;
        let client = match cli.mode {
            Mode::Throughput => {
                Some(Client::new(cli.servers.store().await?).with_max_attempts(cli.max_attempts))
            }
            Mode::Lowlatency => None,
        };
        if let Some(addr) = &cli.metrics_addr {
            metrics_endpoint::serve(addr).await?;
        }
        let kill_timeout =
            Some(seconds::seconds("--kill-timeout", cli.kill_timeout)?).filter(|t| !t.is_zero());
        let shutdown_timeout = seconds::seconds("--shutdown-timeout", cli.shutdown_timeout)?;
        let worker = Arc::new(Worker {
            client: client.clone(),
            lease: cli.lease,
            skip_stale: cli.skip_stale,
            exec: cli.exec.clone(),
            kill_timeout,
            work: Duration::from_millis(cli.work_ms),
            record: LineLog::open(&cli.record)?,
            latency: LineLog::open(&cli.latency_file)?,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rows: Outage::new(
                "cannot finish rows: database unreachable; the jobs run again after their lease",
            ),
            abandon: CancellationToken::new(),
        });
        let shutdown = signal::shutdown_on_signal();
        let reporter = tokio::spawn(report(worker.clone(), shutdown.clone()));
        let in_hand = TaskTracker::new();
        let (w, tracker) = (worker.clone(), in_hand.clone());
        serve(
            gearmand,
            cli.funcname.clone(),
            cli.concurrency,
            move |a| {
                let w = w.clone();
                tracker.track_future(async move { w.handle(a).await })
            },
            shutdown,
            shutdown_timeout,
        )
        .await;
        // Jobs still in hand now were left by `serve` at the shutdown
        // timeout: their commands are stopped before we exit.
        worker.abandon.cancel();
        in_hand.close();
        if tokio::time::timeout(KILL_GRACE + STOP_LIMIT, in_hand.wait())
            .await
            .is_err()
        {
            tracing::warn!(jobs = in_hand.len(), "jobs still running at exit");
        }
        if let Some(client) = &client {
            let limit = shutdown_timeout;
            if tokio::time::timeout(limit, client.flush_completions())
                .await
                .is_err()
            {
                tracing::warn!(
                    "completions not written at exit; those jobs run again after their lease"
                );
            }
        }
        let _ = reporter.await;
        Ok(())
    });
}

/// Prints a summary line every few seconds while jobs are done (with the
/// rate over those seconds), and one at the end.
async fn report(worker: Arc<Worker>, shutdown: tokio_util::sync::CancellationToken) {
    let mut last = ((0, 0), Instant::now());
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_secs(5)) => false,
        };
        let now = (
            worker.done.load(Ordering::Relaxed),
            worker.failed.load(Ordering::Relaxed),
        );
        if now != last.0 || stop {
            let secs = last.1.elapsed().as_secs_f64();
            crate::say!(
                "done {} jobs, failed {} ({:.0} jobs/s over the last {:.0} s)",
                now.0,
                now.1,
                (now.0 - last.0 .0) as f64 / secs.max(1e-9),
                secs
            );
            last = (now, Instant::now());
        }
        if stop {
            return;
        }
    }
}

//! `gv_consume`: an example worker. Serves `--funcname`, reads the job
//! JSON, runs the job (counts it, or pipes its arg to `--exec CMD`). In
//! throughput mode it then completes the row (or fails it, with backoff);
//! in low-latency mode it only answers gearmand, and the Controller
//! finishes the row.

#[path = "common/example.rs"]
mod example;
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
use clap::Parser;
use example::Mode;
use garivini::gearman::{serve, Assignment, WorkResult};
use garivini::outage::Outage;
use garivini::{Client, Job};
use tokio::io::AsyncWriteExt as _;

#[derive(Parser, Debug)]
#[command(version, about = "Garivini example worker")]
struct Cli {
    #[command(flatten)]
    servers: servers::Servers,
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
    /// Seconds shutdown waits for the jobs in hand.
    #[arg(long, default_value_t = garivini::gearman::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
    shutdown_timeout: f64,
    /// Throughput mode: failures after which a job is parked as dead.
    #[arg(long, default_value_t = garivini::client::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u8,
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
    /// Throughput mode only: finishes rows.
    client: Option<Client>,
    exec: Option<String>,
    work: Duration,
    record: Option<LineLog>,
    latency: Option<LineLog>,
    done: AtomicU64,
    failed: AtomicU64,
    /// Rows that cannot be finished while the database is away.
    rows: Outage,
}

impl Worker {
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
        if let Some(record) = &self.record {
            record.write(format!("{} {}\n", job.dbid, job.jobid));
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let ok = match &self.exec {
            None => true,
            Some(cmd) => run_command(cmd, &job.arg).await,
        };
        let Some(client) = &self.client else {
            // Low-latency mode: the Controller finishes the row.
            return if ok {
                self.done.fetch_add(1, Ordering::Relaxed);
                WorkResult::Complete(Bytes::new())
            } else {
                self.failed.fetch_add(1, Ordering::Relaxed);
                WorkResult::Fail
            };
        };
        let outcome = if ok {
            // The slot is free again before the DELETE commits: the row
            // goes in the next group DELETE (and, if we die first, the job
            // runs again after its lease).
            client.complete_job_deferred(&job).await.map(|_| None)
        } else {
            client.failed_job(&job).await.map(Some)
        };
        self.rows.track(&outcome);
        match outcome {
            Ok(None) => {
                self.done.fetch_add(1, Ordering::Relaxed);
                WorkResult::Complete(Bytes::new())
            }
            Ok(Some(retry)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(job.id = job.jobid, db.id = job.dbid, ?retry, "job failed");
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
}

async fn run_command(cmd: &str, arg: &[u8]) -> bool {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the command");
            return false;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is not an error.
        let _ = stdin.write_all(arg).await;
    }
    matches!(child.wait().await, Ok(status) if status.success())
}

fn main() {
    let cli = Cli::parse();
    terminal::init_tracing();
    terminal::run(async move {
        let gearmand = cli.servers.gearmand()?;
        let client = match cli.mode {
            Mode::Throughput => {
                Some(Client::new(cli.servers.store().await?).with_max_attempts(cli.max_attempts))
            }
            Mode::Lowlatency => None,
        };
        let worker = Arc::new(Worker {
            client: client.clone(),
            exec: cli.exec.clone(),
            work: Duration::from_millis(cli.work_ms),
            record: LineLog::open(&cli.record)?,
            latency: LineLog::open(&cli.latency_file)?,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rows: Outage::new(
                "cannot finish rows: database unreachable; the jobs run again after their lease",
            ),
        });
        let shutdown = signal::shutdown_on_signal();
        let reporter = tokio::spawn(report(worker.clone(), shutdown.clone()));
        let w = worker.clone();
        serve(
            gearmand,
            cli.funcname.clone(),
            cli.concurrency,
            move |a| {
                let w = w.clone();
                async move { w.handle(a).await }
            },
            shutdown,
            seconds::seconds("--shutdown-timeout", cli.shutdown_timeout)?,
        )
        .await;
        if let Some(client) = &client {
            let limit = seconds::seconds("--shutdown-timeout", cli.shutdown_timeout)?;
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
            println!(
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

//! `gv_consume`: an example worker. Serves `--funcname`, reads the job
//! JSON, runs the job (counts it, or pipes its arg to `--exec CMD`), and in
//! throughput mode completes the row (or fails it, with backoff).

mod common;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use garivini::gearman::{serve, Assignment, WorkResult};
use garivini::{Client, Job};
use tokio::io::AsyncWriteExt as _;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Complete or fail the row in the database after each job.
    Throughput,
}

#[derive(Parser, Debug)]
#[command(version, about = "Garivini example worker")]
struct Cli {
    #[command(flatten)]
    servers: common::Servers,
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
    record: Option<std::path::PathBuf>,
    /// Failures after which a job is parked as dead.
    #[arg(long, default_value_t = garivini::client::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u8,
}

struct Worker {
    client: Client,
    exec: Option<String>,
    work: Duration,
    record: Option<Mutex<std::fs::File>>,
    done: AtomicU64,
    failed: AtomicU64,
}

impl Worker {
    async fn handle(&self, assignment: Assignment) -> WorkResult {
        let job = match Job::from_json(&assignment.data) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(error = %err, function = %assignment.function, "not a job JSON");
                return WorkResult::Fail;
            }
        };
        if let Some(record) = &self.record {
            let line = format!("{} {}\n", job.dbid, job.jobid);
            // One write per line on an O_APPEND file: lines from several
            // workers never interleave, and survive a SIGKILL.
            if let Err(err) = record.lock().unwrap().write_all(line.as_bytes()) {
                tracing::error!(error = %err, "cannot write the record file");
            }
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let ok = match &self.exec {
            None => true,
            Some(cmd) => run_command(cmd, &job.arg).await,
        };
        let outcome = if ok {
            self.client.complete_job(&job).await.map(|_| None)
        } else {
            self.client.failed_job(&job).await.map(Some)
        };
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
                tracing::warn!(job.id = job.jobid, db.id = job.dbid, error = %err, "cannot finish the row");
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
    common::init_tracing();
    common::run(async move {
        let gearmand = cli.servers.gearmand()?;
        let client = Client::new(cli.servers.store().await?).with_max_attempts(cli.max_attempts);
        let record = match &cli.record {
            None => None,
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open --record file {}", path.display()))?,
            )),
        };
        let worker = Arc::new(Worker {
            client,
            exec: cli.exec.clone(),
            work: Duration::from_millis(cli.work_ms),
            record,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let shutdown = common::shutdown_on_signal();
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
        )
        .await;
        let _ = reporter.await;
        Ok(())
    });
}

/// Prints a summary line every few seconds while jobs are done, and one
/// at the end.
async fn report(worker: Arc<Worker>, shutdown: tokio_util::sync::CancellationToken) {
    let started = Instant::now();
    let mut last = (0, 0);
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_secs(5)) => false,
        };
        let now = (
            worker.done.load(Ordering::Relaxed),
            worker.failed.load(Ordering::Relaxed),
        );
        if now != last || stop {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "done {} jobs, failed {}, {:.0} jobs/s",
                now.0,
                now.1,
                now.0 as f64 / secs.max(1e-9)
            );
            last = now;
        }
        if stop {
            return;
        }
    }
}

//! `gv_inject`: an example client and load generator. Stores `--count`
//! jobs and prints one summary line (jobs, seconds, jobs/s).
//!
//! Each job's arg starts with `SEQ UNIXMICROS ` (its number and the time it
//! was made), padded with `x` to `--arg-size` bytes, so that a worker can
//! tell how long it waited.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use garivini::{Client, NewJob};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Insert rows straight into the database (the Client library).
    Throughput,
}

#[derive(Parser, Debug)]
#[command(version, about = "Garivini example client and load generator")]
struct Cli {
    #[command(flatten)]
    servers: common::Servers,
    /// How jobs are submitted.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// Gearman function of the worker that runs the jobs.
    #[arg(long)]
    funcname: String,
    /// How many jobs.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Size of each job's arg in bytes (at least its `SEQ MICROS ` prefix).
    #[arg(long, default_value_t = 100)]
    arg_size: usize,
    /// Jobs per multi-row insert.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Inserts in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds from now until the jobs are due.
    #[arg(long, default_value_t = 0)]
    delay: u32,
    /// Give job N the unique key PREFIX-N (jobs with one key are stored once).
    #[arg(long)]
    unique_prefix: Option<String>,
}

fn job(cli: &Cli, seq: u64) -> NewJob {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let mut arg = format!("{seq} {micros} ").into_bytes();
    if arg.len() < cli.arg_size {
        arg.resize(cli.arg_size, b'x');
    }
    let mut job = NewJob::new(cli.funcname.clone(), arg).delay(cli.delay);
    if let Some(prefix) = &cli.unique_prefix {
        job = job.unique(format!("{prefix}-{seq}"));
    }
    job
}

fn main() {
    let cli = Cli::parse();
    common::init_tracing();
    common::run(async move {
        if cli.batch == 0 || cli.concurrency == 0 {
            anyhow::bail!("invalid setting: --batch and --concurrency must be at least 1");
        }
        // Refuse bad input before touching the database.
        job(&cli, cli.count).validate()?;
        let client = Client::new(cli.servers.store().await?);

        let bar = ProgressBar::new(cli.count).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {per_sec} eta {eta}")
                .expect("valid template"),
        );
        let cli = Arc::new(cli);
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..cli.concurrency {
            let (cli, client, next, bar) = (cli.clone(), client.clone(), next.clone(), bar.clone());
            tasks.spawn(async move {
                loop {
                    let from = next.fetch_add(cli.batch as u64, Ordering::Relaxed);
                    if from >= cli.count {
                        return anyhow::Ok(());
                    }
                    let to = (from + cli.batch as u64).min(cli.count);
                    let jobs: Vec<NewJob> = (from..to).map(|seq| job(&cli, seq)).collect();
                    client.insert_jobs(&jobs).await?;
                    bar.inc(to - from);
                }
            });
        }
        while let Some(res) = tasks.join_next().await {
            res??;
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "inserted {} jobs in {:.2} s: {:.0} jobs/s",
            cli.count,
            secs,
            cli.count as f64 / secs.max(1e-9)
        );
        Ok(())
    });
}

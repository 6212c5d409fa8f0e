//! `gv_inject`: an example client and load generator. Submits `--count`
//! jobs (straight into the database, or through `inject_jobs`) and prints
//! one summary line (jobs, seconds, jobs/s).
//!
//! Each job's arg starts with `SEQ UNIXMICROS ` (its number and the time it
//! was submitted), padded with `x` to `--arg-size` bytes, so that a worker
//! can tell how long it waited: with `--latency-file` on both gv_inject and
//! gv_consume, gv_inject also reports the latency from submit to worker
//! start.

#[path = "common/allocator.rs"]
mod allocator;
#[path = "common/example.rs"]
mod example;
#[path = "common/servers.rs"]
mod servers;
#[path = "common/terminal.rs"]
mod terminal;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{CommandFactory, FromArgMatches, Parser};
use example::Mode;
use garivini::gearman::{ForegroundClient, Outcome};
use garivini::injector::answer_refs;
use garivini::names::INJECT_JOBS;
use garivini::{Client, JobRef, NewJob, Priority};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "gv_inject",
    version,
    about = "Garivini example client and load generator"
)]
struct Cli {
    #[command(flatten)]
    servers: servers::Servers,
    #[command(flatten)]
    logging: terminal::Logging,
    /// How jobs are submitted.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// Gearman function of the worker that runs the jobs.
    #[arg(long)]
    funcname: String,
    /// How many jobs (with --arg-lines: one per line read).
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Size of each job's arg in bytes (at least its `SEQ MICROS ` prefix);
    /// the synthetic arg gv_consume's latency report reads.
    #[arg(long, default_value_t = 100)]
    arg_size: usize,
    /// Give every job this arg instead of a synthetic one.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["arg_file", "arg_lines"])]
    arg: Option<String>,
    /// Give every job the contents of FILE as its arg (throughput mode:
    /// any bytes; lowlatency mode: UTF-8 text, as inject_jobs takes it).
    #[arg(long, value_name = "FILE", conflicts_with = "arg_lines")]
    arg_file: Option<PathBuf>,
    /// One job per line of stdin, the line (without its newline) as arg.
    #[arg(long)]
    arg_lines: bool,
    /// The args given by --arg, --arg-file or --arg-lines (job N takes
    /// the Nth, or the one).
    #[arg(skip)]
    given: Option<Vec<Vec<u8>>>,
    /// Jobs per insert (throughput) or per inject_jobs array (lowlatency;
    /// 1 sends a plain object).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Submits in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Offer at most this many jobs per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds from now until the jobs are due.
    #[arg(long, default_value_t = 0)]
    delay: u32,
    /// Priority of the jobs: high, normal or low (due jobs of higher
    /// priority are dispatched first).
    #[arg(long, default_value_t = Priority::Normal, value_parser = parse_priority)]
    priority: Priority,
    /// Give job N the unique key PREFIX-N (jobs with one key are stored once).
    #[arg(long)]
    unique_prefix: Option<String>,
    /// Read the latencies gv_consume --latency-file writes (same file) and
    /// report their p50/p90/p99 once every job has started.
    #[arg(long)]
    latency_file: Option<PathBuf>,
    /// Seconds to wait for every job to start, with --latency-file.
    #[arg(long, default_value_t = 120)]
    latency_wait: u64,
    /// Append a line `DBID JOBID` to this file for each acknowledged job.
    #[arg(long)]
    record: Option<PathBuf>,
    /// On a failed submit, report it and go on with the next jobs instead
    /// of stopping (the failed jobs are not retried); exits 0 and prints
    /// how many jobs failed.
    #[arg(long)]
    keep_going: bool,
}

/// The args of --arg, --arg-file or --arg-lines, if one was given.
fn given_args(cli: &Cli) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
    let args = if let Some(text) = &cli.arg {
        vec![text.clone().into_bytes()]
    } else if let Some(path) = &cli.arg_file {
        vec![std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?]
    } else if cli.arg_lines {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)
            .context("cannot read stdin")?;
        let lines: Vec<Vec<u8>> = text
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .collect();
        // The newline ending the last line starts no job.
        let n = lines.len() - usize::from(text.ends_with(b"\n") || text.is_empty());
        lines.into_iter().take(n).collect()
    } else {
        return Ok(None);
    };
    if args.is_empty() {
        anyhow::bail!("--arg-lines: no line on stdin, so no job");
    }
    if cli.mode == Mode::Lowlatency {
        if let Some(i) = args.iter().position(|a| std::str::from_utf8(a).is_err()) {
            anyhow::bail!(
                "invalid arg{}: not UTF-8 text, which inject_jobs needs (--mode throughput takes any bytes)",
                if cli.arg_lines { format!(" on line {}", i + 1) } else { String::new() }
            );
        }
    }
    Ok(Some(args))
}

fn parse_priority(value: &str) -> Result<Priority, String> {
    value.parse().map_err(|e: garivini::Error| e.to_string())
}

impl Cli {
    fn job(&self, seq: u64) -> NewJob {
        let arg = match &self.given {
            Some(args) => args[seq as usize % args.len()].clone(),
            None => {
                let mut arg = format!("{seq} {} ", example::unix_micros()).into_bytes();
                if arg.len() < self.arg_size {
                    arg.resize(self.arg_size, b'x');
                }
                arg
            }
        };
        let mut job = NewJob::new(self.funcname.clone(), arg)
            .delay(self.delay)
            .priority(self.priority);
        if let Some(prefix) = &self.unique_prefix {
            job = job.unique(format!("{prefix}-{seq}"));
        }
        job
    }

    /// The inject_jobs workload for jobs `seqs`: an object, or an array.
    fn inject_request(&self, seqs: std::ops::Range<u64>) -> Bytes {
        let items: Vec<serde_json::Value> = seqs
            .map(|seq| {
                let job = self.job(seq);
                serde_json::json!({
                    "funcname": job.funcname,
                    // Checked to be UTF-8 before the first submit.
                    "arg": String::from_utf8(job.arg).expect("a UTF-8 arg"),
                    "uniqkey": job.uniqkey,
                    "run_after": job.delay,
                    "priority": job.priority,
                })
            })
            .collect();
        let value = if self.batch == 1 {
            items.into_iter().next().expect("one job")
        } else {
            serde_json::Value::Array(items)
        };
        Bytes::from(serde_json::to_vec(&value).expect("JSON"))
    }
}

/// Where jobs go.
#[derive(Clone)]
enum Sink {
    Database(Client),
    Injector(ForegroundClient),
}

impl Sink {
    /// Submits jobs `seqs`; answers the acknowledged (committed) jobs.
    async fn submit(&self, cli: &Cli, seqs: std::ops::Range<u64>) -> anyhow::Result<Vec<JobRef>> {
        Ok(match self {
            Sink::Database(client) => {
                let jobs: Vec<NewJob> = seqs.map(|seq| cli.job(seq)).collect();
                client.insert_jobs(&jobs).await?
            }
            Sink::Injector(fg) => match fg.submit(INJECT_JOBS, "", cli.inject_request(seqs)).await?
            {
                Outcome::Complete(answer) => answer_refs(&answer)?,
                Outcome::Fail(reason) | Outcome::Exception(reason) => {
                    anyhow::bail!("inject_jobs failed: {}", String::from_utf8_lossy(&reason))
                }
            },
        })
    }
}

fn main() {
    let matches = terminal::matches(Cli::command());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| terminal::usage_error(e));
    terminal::init_tracing(&cli.logging);
    let mut cli = cli;
    terminal::run(async move {
        if cli.batch == 0 || cli.concurrency == 0 {
            anyhow::bail!("invalid setting: --batch and --concurrency must be at least 1");
        }
        cli.given = given_args(&cli)?;
        if let Some(args) = &cli.given {
            if cli.arg_lines {
                cli.count = args.len() as u64;
            }
        }
        // Refuse bad input before touching any server.
        cli.job(cli.count).validate()?;
        let sink = match cli.mode {
            Mode::Throughput => Sink::Database(Client::new(cli.servers.store().await?)),
            Mode::Lowlatency => Sink::Injector(ForegroundClient::new(cli.servers.gearmand()?)),
        };
        if let Some(path) = &cli.latency_file {
            // Start from an empty file: every line in it is one of ours.
            std::fs::write(path, b"")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let record = match &cli.record {
            Some(path) => Some(std::sync::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            )),
            None => None,
        };
        let record = Arc::new(record);
        let failed = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(AtomicBool::new(false));

        let bar = ProgressBar::new(cli.count).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {per_sec} eta {eta}")
                .expect("valid template"),
        );
        let cli = Arc::new(cli);
        let next = Arc::new(AtomicU64::new(0));
        let acks = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
            cli.count as usize,
        )));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..cli.concurrency {
            let (cli, sink, next, bar, acks, record, failed, failing) = (
                cli.clone(),
                sink.clone(),
                next.clone(),
                bar.clone(),
                acks.clone(),
                record.clone(),
                failed.clone(),
                failing.clone(),
            );
            tasks.spawn(async move {
                loop {
                    let from = next.fetch_add(cli.batch as u64, Ordering::Relaxed);
                    if from >= cli.count {
                        return anyhow::Ok(());
                    }
                    if cli.rate > 0 {
                        // Job `from` is offered at start + from / rate.
                        let at = started + Duration::from_secs_f64(from as f64 / cli.rate as f64);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    let to = (from + cli.batch as u64).min(cli.count);
                    let sent = Instant::now();
                    let refs = match sink.submit(&cli, from..to).await {
                        Ok(refs) => {
                            if failing.swap(false, Ordering::Relaxed) {
                                bar.suspend(|| eprintln!("gv_inject: submits succeed again"));
                            }
                            refs
                        }
                        Err(err) if cli.keep_going => {
                            // Once per run of failures, not once per job.
                            if !failing.swap(true, Ordering::Relaxed) {
                                bar.suspend(|| {
                                    eprintln!("gv_inject: jobs {from}..{to}: {err}; going on")
                                });
                            }
                            failed.fetch_add(to - from, Ordering::Relaxed);
                            bar.inc(to - from);
                            // Do not spin through the rest while a server is away.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Err(err) => return Err(err),
                    };
                    acks.lock().unwrap().push(sent.elapsed().as_micros() as u64);
                    if let Some(file) = record.as_ref() {
                        use std::io::Write as _;
                        let lines: String = refs
                            .iter()
                            .map(|r| format!("{} {}\n", r.dbid, r.jobid))
                            .collect();
                        file.lock()
                            .unwrap()
                            .write_all(lines.as_bytes())
                            .context("cannot write the --record file")?;
                    }
                    bar.inc(to - from);
                }
            });
        }
        while let Some(res) = tasks.join_next().await {
            res??;
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        let verb = match cli.mode {
            Mode::Throughput => "inserted",
            Mode::Lowlatency => "injected",
        };
        let failed = failed.load(Ordering::Relaxed);
        let done = cli.count - failed;
        crate::say!(
            "{verb} {done} jobs in {secs:.2} s: {:.0} jobs/s",
            done as f64 / secs.max(1e-9)
        );
        if failed > 0 {
            crate::say!("{failed} jobs failed (--keep-going)");
        }
        let acks = std::mem::take(&mut *acks.lock().unwrap());
        crate::say!("{}", latency_line("submit->ack (committed)", acks));
        if let Some(path) = &cli.latency_file {
            let samples =
                wait_for_latencies(path, cli.count, Duration::from_secs(cli.latency_wait)).await?;
            crate::say!("{}", latency_line("submit->start", samples));
        }
        Ok(())
    });
}

/// Waits until `path` holds `count` latencies (microseconds, a line each).
async fn wait_for_latencies(
    path: &std::path::Path,
    count: u64,
    limit: Duration,
) -> anyhow::Result<Vec<u64>> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let samples: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if samples.len() as u64 >= count {
            return Ok(samples);
        }
        if start.elapsed() > limit {
            anyhow::bail!(
                "only {} of {count} jobs started within {limit:?} (is gv_consume running with --latency-file {}?)",
                samples.len(),
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// "latency WHAT: p50 … p90 … p99 … max … (N samples)", in ms, from
/// samples in microseconds.
fn latency_line(what: &str, mut samples: Vec<u64>) -> String {
    if samples.is_empty() {
        return format!("latency {what}: no samples");
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    format!(
        "latency {what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0),
        samples.len()
    )
}

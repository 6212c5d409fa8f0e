//! The scenarios, each of one or more measured phases ([`Unit`]s), and
//! the loop that runs every phase of every repetition. A new scenario is
//! a `Unit` (its key, title and database), a method here, and its rows in
//! `targets.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use garivini::gearman::{
    serve, Assignment, BackgroundJob, Submitter, WorkResult, DEFAULT_SHUTDOWN_TIMEOUT,
    MAX_GEARMAN_UNIQUE,
};
use garivini::names::{INJECT_JOBS, RUN_QUEUED_JOB};
use tokio_util::sync::CancellationToken;

use crate::gv_inject::{parse_latency, parse_rate, Inject, Mode};
use crate::processes::{secs, Bench, DbKind, Env, GEARMAN_QUEUE_TABLE, POLL, STARTUP};
use crate::report::Results;

/// Jobs queued to check that gearmand -q mysql really persists.
const VERIFY_JOBS: u64 = 10;

/// One measured phase; a scenario has one or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    Memory,
    MemLatency,
    Mysql,
    TpDrain,
    TpE2e,
    TpLatency,
    LlE2e,
    LlLatency,
    BigEmpty,
    BigFull,
}

impl Unit {
    pub const ALL: [Unit; 10] = [
        Unit::Memory,
        Unit::MemLatency,
        Unit::Mysql,
        Unit::TpDrain,
        Unit::TpE2e,
        Unit::TpLatency,
        Unit::LlE2e,
        Unit::LlLatency,
        Unit::BigEmpty,
        Unit::BigFull,
    ];

    /// Its name in the JSON.
    pub fn key(self) -> &'static str {
        match self {
            Unit::Memory => "gearmand_memory",
            Unit::MemLatency => "gearmand_memory_latency",
            Unit::Mysql => "gearmand_mysql",
            Unit::TpDrain => "throughput_insert_drain",
            Unit::TpE2e => "throughput_e2e",
            Unit::TpLatency => "throughput_latency",
            Unit::LlE2e => "lowlatency_e2e",
            Unit::LlLatency => "lowlatency_latency",
            Unit::BigEmpty => "big_table_empty",
            Unit::BigFull => "big_table_full",
        }
    }

    pub fn scenario(self) -> u8 {
        match self {
            Unit::Memory | Unit::MemLatency => 1,
            Unit::Mysql => 2,
            Unit::TpDrain | Unit::TpE2e | Unit::TpLatency => 3,
            Unit::LlE2e | Unit::LlLatency => 4,
            Unit::BigEmpty | Unit::BigFull => 5,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Unit::Memory => "gearmand memory-only",
            Unit::MemLatency => "gearmand memory-only: latency",
            Unit::Mysql => "gearmand -q mysql",
            Unit::TpDrain => "throughput: insert, then drain",
            Unit::TpE2e => "throughput: end to end",
            Unit::TpLatency => "throughput: latency",
            Unit::LlE2e => "low-latency: end to end",
            Unit::LlLatency => "low-latency: latency",
            Unit::BigEmpty => "empty table: drain",
            Unit::BigFull => "big table: drain",
        }
    }

    fn db(self) -> DbKind {
        match self {
            Unit::Memory | Unit::MemLatency => DbKind::None,
            Unit::Mysql => DbKind::GearmanQueue,
            _ => DbKind::Garivini,
        }
    }
}

/// A phase's numbers, by name.
pub type Metrics = Vec<(&'static str, f64)>;

/// One repetition of a phase: the numbers it got, and its error if it
/// failed (a phase that fails half way keeps the numbers it had).
pub struct Run {
    pub metrics: Metrics,
    pub error: Option<String>,
}

/// Connections submitting in scenario 1's latency measurement: at 1,000
/// jobs/s a submit's round trip (~0.1 ms) rarely overlaps the next; more
/// keep a slow one from delaying the schedule.
pub const LATENCY_SUBMITTERS: usize = 4;

/// Function names of the scenarios' jobs.
const GEARMAND_FUNC: &str = "gv_bench_gearmand";
const TP_FUNC: &str = "gv_bench_tp";
const LL_FUNC: &str = "gv_bench_ll";

/// Runs every phase of the chosen scenarios, `--reps` times in turn.
pub async fn run(bench: &Bench) -> Results {
    let o = &bench.opts;
    let units: Vec<Unit> = Unit::ALL
        .into_iter()
        .filter(|u| o.has(u.scenario()))
        .collect();
    let mut results = Results {
        runs: BTreeMap::new(),
    };
    for rep in 1..=o.reps {
        for &unit in &units {
            bench.log(format!(
                "rep {rep}/{}: {} {} ...",
                o.reps,
                unit.scenario(),
                unit.title()
            ));
            let t = Instant::now();
            let run = bench.run_unit(unit, rep).await;
            let parts: Vec<String> = run
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect();
            let outcome = match &run.error {
                None => parts.join(", "),
                Some(e) if parts.is_empty() => format!("FAILED: {e}"),
                Some(e) => format!("{} ... then FAILED: {e}", parts.join(", ")),
            };
            bench.log(format!(
                "rep {rep}/{}: {} {}: {outcome} ({})",
                o.reps,
                unit.scenario(),
                unit.title(),
                secs(t.elapsed())
            ));
            results.runs.entry(unit).or_default().push(run);
        }
    }
    results
}

impl Bench {
    /// Runs one phase on a fresh environment, always torn down after.
    async fn run_unit(&self, unit: Unit, rep: usize) -> Run {
        let mut m = Metrics::new();
        let tag = format!("r{rep}-{}", unit.key());
        let res = match self.env(tag, unit.db()).await {
            Err(e) => Err(e),
            Ok(mut env) => {
                let env = &mut env;
                match unit {
                    Unit::Memory => self.gearmand_only(env, false, &mut m).await,
                    Unit::MemLatency => self.gearmand_latency(env, &mut m).await,
                    Unit::Mysql => self.gearmand_only(env, true, &mut m).await,
                    Unit::TpDrain => self.tp_drain(env, &mut m).await,
                    Unit::TpE2e => self.tp_e2e(env, &mut m).await,
                    Unit::TpLatency => self.tp_latency(env, &mut m).await,
                    Unit::LlE2e => self.ll_e2e(env, &mut m).await,
                    Unit::LlLatency => self.ll_latency(env, &mut m).await,
                    Unit::BigEmpty => self.big_table(env, false, &mut m).await,
                    Unit::BigFull => self.big_table(env, true, &mut m).await,
                }
            }
        };
        Run {
            metrics: m,
            error: res.err().map(|e| format!("{e:#}")),
        }
    }

    /// Scenarios 1 and 2: our client and worker on a gearmand alone.
    async fn gearmand_only(
        &self,
        env: &mut Env,
        mysql: bool,
        m: &mut Metrics,
    ) -> anyhow::Result<()> {
        let n = self.opts.jobs;
        let func = GEARMAND_FUNC;
        let servers = vec![env.addr().to_string()];
        let payload = Bytes::from(vec![b'x'; self.opts.payload]);
        let job = |unique: String| BackgroundJob {
            function: func.to_string(),
            unique,
            data: payload.clone(),
            priority: Default::default(),
        };
        let mut submitter = Submitter::new(servers.clone());

        // gearmand -q mysql: queue a few jobs with no worker around, and
        // check that they are rows of its table.
        if mysql {
            let jobs: Vec<BackgroundJob> = (0..VERIFY_JOBS)
                .map(|i| job(format!("verify-{i}")))
                .collect();
            submit_all(&mut submitter, &jobs).await?;
            let rows = self.count(env.db(), GEARMAN_QUEUE_TABLE).await?;
            if rows != VERIFY_JOBS {
                bail!(
                    "gearmand -q mysql does not persist: {rows} rows in {}.{GEARMAN_QUEUE_TABLE} with {VERIFY_JOBS} jobs queued",
                    env.db()
                );
            }
        }

        let done = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let _stop_worker = shutdown.clone().drop_guard();
        let handler = {
            let done = done.clone();
            move |_job| {
                let done = done.clone();
                async move {
                    done.fetch_add(1, Ordering::Relaxed);
                    WorkResult::Complete(Bytes::new())
                }
            }
        };
        let worker = tokio::spawn(serve(
            servers,
            func.to_string(),
            self.opts.worker_concurrency,
            handler,
            shutdown.clone(),
            DEFAULT_SHUTDOWN_TIMEOUT,
        ));
        self.wait_workers(env, func, 1).await?;

        if mysql {
            self.wait_count(env, &done, VERIFY_JOBS, Instant::now() + STARTUP)
                .await
                .context("the verification jobs did not run")?;
            self.wait_queue_table_empty(env).await?;
            done.store(0, Ordering::Relaxed);
        }

        // Every job has a unique id: gearmand -q mysql refuses a second
        // queued job of a function without one (UNIQUE(unique_key,
        // function_name)); scenario 1 gets them too, to differ only by the
        // queue.
        let jobs: Vec<BackgroundJob> = (0..n)
            .map(|i| {
                let mut u = format!("gv-bench-{i}");
                u.truncate(MAX_GEARMAN_UNIQUE);
                job(u)
            })
            .collect();
        let meter = self.meter(env, n, mysql, true).await;
        let start = Instant::now();
        let deadline = start + self.opts.timeout();
        for batch in jobs.chunks(self.opts.submit_batch.max(1)) {
            submit_all(&mut submitter, batch).await?;
            if Instant::now() > deadline {
                bail!("timeout: submits took over {}", secs(self.opts.timeout()));
            }
        }
        let submitted = start.elapsed();
        self.wait_count(env, &done, n, deadline).await?;
        let elapsed = start.elapsed();
        meter.finish(&env.pids(), Vec::new(), m);
        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .is_err()
        {
            self.log("warning: the in-process worker did not stop within 5 s");
        }
        m.extend([
            ("jobs_per_s", n as f64 / elapsed.as_secs_f64()),
            ("submit_jobs_per_s", n as f64 / submitted.as_secs_f64()),
            ("seconds", elapsed.as_secs_f64()),
        ]);
        if mysql {
            // gearmand deletes a row when its job is done.
            let t = Instant::now();
            self.wait_queue_table_empty(env).await?;
            m.push(("queue_table_empty_after_s", t.elapsed().as_secs_f64()));
        }
        Ok(())
    }

    /// Scenario 1, latency: `--latency-jobs` background jobs offered at
    /// `--rate` straight to a memory-only gearmand by our client (one job
    /// per submit, up to LATENCY_SUBMITTERS in flight), and the time from
    /// just before each submit to the start of the in-process worker's
    /// handler: what gv_inject and gv_consume measure for scenario 4, one
    /// gearmand hop and no database.
    async fn gearmand_latency(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let n = self.opts.latency_jobs;
        let func = GEARMAND_FUNC;
        let servers = vec![env.addr().to_string()];
        let payload = self.opts.payload;
        let job = move |i: Option<u64>| {
            let mut data = match i {
                Some(i) => format!("{i} ").into_bytes(),
                None => b"warm-up ".to_vec(),
            };
            data.resize(payload.max(data.len()), b'x');
            let mut unique = match i {
                Some(i) => format!("gv-bench-lat-{i}"),
                None => format!("gv-bench-warm-{:x}", rand::random::<u64>()),
            };
            unique.truncate(MAX_GEARMAN_UNIQUE);
            BackgroundJob {
                function: func.to_string(),
                unique,
                data: Bytes::from(data),
                priority: Default::default(),
            }
        };
        // Microseconds since `base`: when job i was submitted, and each
        // job's submit->start.
        let base = Instant::now();
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let samples = Arc::new(Mutex::new(Vec::<u64>::with_capacity(n as usize)));
        let shutdown = CancellationToken::new();
        let _stop_worker = shutdown.clone().drop_guard();
        let handler = {
            let (sent, samples) = (sent.clone(), samples.clone());
            move |job: Assignment| {
                let (sent, samples) = (sent.clone(), samples.clone());
                async move {
                    let started = base.elapsed().as_micros() as u64;
                    let i = std::str::from_utf8(&job.data)
                        .ok()
                        .and_then(|d| d.split(' ').next())
                        .and_then(|t| t.parse::<usize>().ok());
                    if let Some(at) = i.and_then(|i| sent.get(i)) {
                        let at = at.load(Ordering::Acquire);
                        samples.lock().unwrap().push(started.saturating_sub(at));
                    }
                    WorkResult::Complete(Bytes::new())
                }
            }
        };
        let worker = tokio::spawn(serve(
            servers.clone(),
            func.to_string(),
            self.opts.worker_concurrency,
            handler,
            shutdown.clone(),
            DEFAULT_SHUTDOWN_TIMEOUT,
        ));
        self.wait_workers(env, func, 1).await?;
        // Each submitter connected (a warm-up job each) before the clock
        // starts.
        let mut submitters = Vec::new();
        for _ in 0..LATENCY_SUBMITTERS {
            let mut s = Submitter::new(servers.clone());
            submit_all(&mut s, &[job(None)]).await?;
            submitters.push(s);
        }
        let meter = self.meter(env, n, false, true).await;
        let next = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let rate = self.opts.rate.max(1) as f64;
        let mut tasks = tokio::task::JoinSet::new();
        for mut submitter in submitters {
            let (next, sent) = (next.clone(), sent.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return anyhow::Ok(());
                    }
                    tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate))
                        .await;
                    let jobs = [job(Some(i))];
                    sent[i as usize].store(base.elapsed().as_micros() as u64, Ordering::Release);
                    submit_all(&mut submitter, &jobs).await?;
                }
            });
        }
        let offered = Duration::from_secs_f64(n as f64 / rate);
        let deadline = Instant::now() + offered + self.opts.timeout();
        let submits = async {
            while let Some(res) = tasks.join_next().await {
                res??;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout_at(deadline.into(), submits)
            .await
            .map_err(|_| anyhow!("timeout: submits took over {}", secs(offered)))??;
        let submitted = start.elapsed();
        loop {
            let got = samples.lock().unwrap().len() as u64;
            if got >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!("timeout: {got} of {n} jobs started");
            }
            env.check()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        meter.finish(&env.pids(), Vec::new(), m);
        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .is_err()
        {
            self.log("warning: the in-process worker did not stop within 5 s");
        }
        let mut v = samples.lock().unwrap().clone();
        v.sort_unstable();
        // As gv_inject's: the ceil(len × q)-th smallest, in ms.
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i] as f64 / 1000.0
        };
        m.extend([
            ("offered_jobs_per_s", n as f64 / submitted.as_secs_f64()),
            ("p50_ms", at(0.50)),
            ("p90_ms", at(0.90)),
            ("p99_ms", at(0.99)),
            ("max_ms", at(1.0)),
        ]);
        Ok(())
    }

    /// Waits until the in-process worker has done `n` jobs.
    async fn wait_count(
        &self,
        env: &mut Env,
        done: &AtomicU64,
        n: u64,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let mut last_check = Instant::now();
        while done.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!("timeout: {} of {n} jobs done", done.load(Ordering::Relaxed));
            }
            if last_check.elapsed() > POLL {
                env.check()?;
                last_check = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Scenario 3 (a) and (b): a bulk insert into an idle system, then the
    /// time QueueRunner(s) and gv_consume take to drain it.
    async fn tp_drain(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let n = self.opts.jobs;
        let args = Inject::bulk(&self.opts, Mode::Throughput, TP_FUNC)
            .args(&self.opts, self.servers_args(env));
        // CPU from the insert's start to the drain's end: every process
        // started in between counts from its start.
        let meter = self.meter(env, n, true, false).await;
        let mut inject = self.spawn_inject(env, args)?;
        let inject_cpu = self
            .wait_exit(env, &mut inject, self.opts.timeout())
            .await?;
        m.push((
            "insert_jobs_per_s",
            parse_rate(&inject.stdout(), Mode::Throughput.verb(), n)?,
        ));
        let rows = self.count(env.db(), "job").await?;
        if rows != n {
            bail!("{rows} rows in the job table after inserting {n}");
        }
        self.start_consume(env, Mode::Throughput, TP_FUNC, None)?;
        self.wait_workers(env, TP_FUNC, 1).await?;
        let start = Instant::now();
        self.start_queuerunners(env)?;
        let (end, _) = self.wait_done(env, None).await?;
        let drain = end - start;
        m.extend([
            ("drain_jobs_per_s", n as f64 / drain.as_secs_f64()),
            ("drain_seconds", drain.as_secs_f64()),
        ]);
        meter.finish(&env.pids(), vec![inject_cpu], m);
        Ok(())
    }

    /// Scenario 3 (c): with QueueRunner(s) and gv_consume running, from the
    /// start of gv_inject until the table is empty again.
    async fn tp_e2e(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        self.start_consume(env, Mode::Throughput, TP_FUNC, None)?;
        self.start_queuerunners(env)?;
        self.wait_workers(env, TP_FUNC, 1).await?;
        self.wait_queuerunners(env).await?;
        self.inject_until_drained(env, m, Mode::Throughput, TP_FUNC, "insert_jobs_per_s")
            .await
    }

    /// Scenario 3 (d): latency at the offered rate.
    async fn tp_latency(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let file = self.dir.join(format!("{}-latency", env.tag));
        self.start_consume(env, Mode::Throughput, TP_FUNC, Some(&file))?;
        self.start_queuerunners(env)?;
        self.wait_workers(env, TP_FUNC, 1).await?;
        self.wait_queuerunners(env).await?;
        self.latency(env, Mode::Throughput, TP_FUNC, &file, m, true)
            .await
    }

    /// Scenario 4: jobs/s through inject_jobs, until the table is empty.
    async fn ll_e2e(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        self.start_lowlatency(env, None).await?;
        self.inject_until_drained(env, m, Mode::LowLatency, LL_FUNC, "inject_jobs_per_s")
            .await
    }

    /// Scenario 4: latency at the offered rate.
    async fn ll_latency(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let file = self.dir.join(format!("{}-latency", env.tag));
        self.start_lowlatency(env, Some(&file)).await?;
        self.latency(env, Mode::LowLatency, LL_FUNC, &file, m, true)
            .await
    }

    /// gv_consume and the low-latency roles, each known to gearmand.
    async fn start_lowlatency(&self, env: &mut Env, file: Option<&Path>) -> anyhow::Result<()> {
        self.start_consume(env, Mode::LowLatency, LL_FUNC, file)?;
        self.start_lowlatency_roles(env)?;
        self.wait_workers(env, LL_FUNC, 1).await?;
        self.wait_workers(env, INJECT_JOBS, 1).await?;
        self.wait_workers(env, RUN_QUEUED_JOB, self.opts.controllers.max(1) as u64)
            .await?;
        self.wait_queuerunners(env).await
    }

    /// Runs gv_inject's bulk load of `func` and waits until the table is
    /// empty: end-to-end jobs/s from gv_inject's start, and the submit rate
    /// it printed under `rate_key`.
    async fn inject_until_drained(
        &self,
        env: &mut Env,
        m: &mut Metrics,
        mode: Mode,
        func: &str,
        rate_key: &'static str,
    ) -> anyhow::Result<()> {
        let n = self.opts.jobs;
        let args = Inject::bulk(&self.opts, mode, func).args(&self.opts, self.servers_args(env));
        let meter = self.meter(env, n, true, false).await;
        let start = Instant::now();
        let mut inject = self.spawn_inject(env, args)?;
        let (end, inject_cpu) = self.wait_done(env, Some(&mut inject)).await?;
        let elapsed = end - start;
        meter.finish(&env.pids(), inject_cpu.into_iter().collect(), m);
        m.extend([
            ("jobs_per_s", n as f64 / elapsed.as_secs_f64()),
            ("seconds", elapsed.as_secs_f64()),
            (rate_key, parse_rate(&inject.stdout(), mode.verb(), n)?),
        ]);
        Ok(())
    }

    /// Latency from submit (insert, or inject_jobs) to worker start at the
    /// offered rate; the services are running. `meter`: its CPU per job
    /// too (scenario 5 meters its drain instead).
    pub(crate) async fn latency(
        &self,
        env: &mut Env,
        mode: Mode,
        func: &str,
        file: &Path,
        m: &mut Metrics,
        meter: bool,
    ) -> anyhow::Result<()> {
        let n = self.opts.latency_jobs;
        let args =
            Inject::latency(&self.opts, mode, func, file).args(&self.opts, self.servers_args(env));
        let meter = match meter {
            true => Some(self.meter(env, n, true, false).await),
            false => None,
        };
        let mut inject = self.spawn_inject(env, args)?;
        let offered = Duration::from_secs_f64(n as f64 / self.opts.rate.max(1) as f64);
        let inject_cpu = self
            .wait_exit(
                env,
                &mut inject,
                offered + self.opts.timeout() + Duration::from_secs(10),
            )
            .await?;
        if let Some(meter) = meter {
            meter.finish(&env.pids(), vec![inject_cpu], m);
        }
        let out = inject.stdout();
        let rate = parse_rate(&out, mode.verb(), n)?;
        let [p50, p90, p99, max] = parse_latency(&out, "submit->start", n)?
            .ok_or_else(|| anyhow!("gv_inject printed no 'latency submit->start' line: {out:?}"))?;
        m.extend([
            ("offered_jobs_per_s", rate),
            ("p50_ms", p50),
            ("p90_ms", p90),
            ("p99_ms", p99),
            ("max_ms", max),
        ]);
        // Newer gv_inject also reports how long a submit took to be
        // acknowledged (committed).
        if let Some([p50, _, p99, max]) = parse_latency(&out, "submit->ack (committed)", n)? {
            m.extend([
                ("ack_p50_ms", p50),
                ("ack_p99_ms", p99),
                ("ack_max_ms", max),
            ]);
        }
        Ok(())
    }
}

/// Submits `jobs`; every one must be acknowledged.
async fn submit_all(submitter: &mut Submitter, jobs: &[BackgroundJob]) -> anyhow::Result<()> {
    let acked = submitter.submit(jobs).await;
    let refused = acked.iter().filter(|&&ok| !ok).count();
    if refused > 0 {
        bail!(
            "gearmand did not acknowledge {refused} of {} background jobs",
            jobs.len()
        );
    }
    Ok(())
}

//! `gv_bench`: Garivini against plain gearmand, on one MariaDB and one
//! gearmand, side by side.
//!
//! Scenarios, run in turn in each repetition:
//!
//! 1. gearmand memory-only, with our in-process client (pipelined
//!    background submits) and worker: the ceiling without persistence;
//! 2. gearmand with its own `-q mysql` queue, same client and worker;
//! 3. Garivini throughput mode end to end (gv_inject → MySQL → QueueRunner
//!    → gearmand → gv_consume → DELETE): insert rate, drain rate, end to end
//!    jobs/s, and insert→start latency at a steady offered rate;
//! 4. Garivini low-latency mode end to end (gv_inject → inject_jobs →
//!    Injector → Controller → gv_consume): jobs/s, and submit→start latency
//!    at a steady offered rate.
//!
//! Every phase gets a fresh database (dropped afterwards) and a fresh
//! private gearmand on a free loopback port. Scenarios 3 and 4 run the real
//! release binaries (`garivini`, `gv_inject`, `gv_consume`, found next to
//! this one and copied aside at start, so that a rebuild during the run
//! cannot mix versions). Every child is killed when its phase ends, every
//! wait is bounded, and a phase that fails or times out is reported as
//! failed. The table shows the median over the repetitions; `--json FILE`
//! writes every number (min, max and each repetition too).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use garivini::gearman::{
    serve, BackgroundJob, Submitter, WorkResult, DEFAULT_SHUTDOWN_TIMEOUT, MAX_GEARMAN_UNIQUE,
};
use garivini::names::{INJECT_JOBS, RUN_QUEUED_JOB};
use mysql_async::prelude::Queryable as _;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// The job table, as the repository's schema.sql has it.
const SCHEMA: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.sql"));
/// The table gearmand -q mysql keeps its queue in.
const GEARMAN_QUEUE_TABLE: &str = "gearman_queue";
/// Jobs queued to check that gearmand -q mysql really persists.
const VERIFY_JOBS: u64 = 10;
/// How often tables and processes are polled.
const POLL: Duration = Duration::from_millis(50);
/// How long a server or worker may take to come up.
const STARTUP: Duration = Duration::from_secs(15);

/// Targets of the issue, shown in the table.
const TARGET_TP_JOBS: f64 = 10_000.0;
const TARGET_TP_VS_CEILING: f64 = 0.6;
const TARGET_TP_VS_GEARMAND_MYSQL: f64 = 10.0;
const TARGET_TP_P50_MS: f64 = 100.0;
const TARGET_LL_JOBS: f64 = 5_000.0;
const TARGET_LL_P50_MS: f64 = 2.0;
const TARGET_LL_P99_MS: f64 = 10.0;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Benchmark: gearmand (memory, -q mysql) against Garivini's throughput and low-latency modes",
    after_help = "Scenarios: 1 gearmand memory-only (ceiling), 2 gearmand -q mysql, \
                  3 Garivini throughput mode, 4 Garivini low-latency mode. \
                  Progress goes to stderr, the table to stdout."
)]
struct Opts {
    /// MySQL/MariaDB server (no database): scratch databases gv_bench_* are
    /// created on it and dropped afterwards.
    #[arg(long, env = "GARIVINI_TEST_MYSQL")]
    mysql: String,
    /// Jobs per throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Payload (job arg) size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Client submits in flight in low-latency mode (gv_inject --mode
    /// lowlatency, both measurements).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Inserts in flight in throughput mode (gv_inject --mode throughput:
    /// bulk inserts and the latency measurement; 4 is gv_inject's default).
    #[arg(long, default_value_t = 4)]
    insert_concurrency: usize,
    /// Jobs per multi-row insert in gv_inject's bulk inserts.
    #[arg(long, default_value_t = 500)]
    insert_batch: usize,
    /// Jobs running at once in each worker (in-process worker, gv_consume).
    #[arg(long, default_value_t = 16)]
    worker_concurrency: usize,
    /// Background jobs per pipelined submit batch (scenarios 1 and 2).
    #[arg(long, default_value_t = 1000)]
    submit_batch: usize,
    /// QueueRunner processes (scenario 3; scenario 4 runs one, with the
    /// Injector).
    #[arg(long, default_value_t = 1)]
    queuerunners: usize,
    /// Controller processes (scenario 4).
    #[arg(long, default_value_t = 1)]
    controllers: usize,
    /// Repetitions of each scenario; the table shows the median.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Offered rate (jobs/s) of the latency measurements.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Jobs per latency measurement.
    #[arg(long, default_value_t = 5000)]
    latency_jobs: u64,
    /// Scenarios to run, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u8, 2, 3, 4])]
    scenarios: Vec<u8>,
    /// Extra flags for every QueueRunner (and for scenario 4's
    /// `garivini workers --roles queuerunner,injector`), e.g.
    /// "--batch-run-sleep 0.1"; default: none (the QueueRunner's defaults).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    queuerunner_args: String,
    /// Extra flags for every `garivini controller`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    controller_args: String,
    /// Extra flags for every gearmand started (every scenario alike). The
    /// default, one thread, is what a small host should run: gearmand's
    /// default of 4 I/O threads handing packets to a processing thread
    /// measured here 49k -> 32k jobs/s memory-only, and each hop of a job
    /// through gearmand 0.5 -> 1 ms. Pass "" for gearmand's own default.
    #[arg(long, default_value = "--threads=0", allow_hyphen_values = true)]
    gearmand_args: String,
    /// The gearmand executable.
    #[arg(long, default_value = "gearmand")]
    gearmand_bin: String,
    /// Directory of the garivini, gv_inject and gv_consume executables
    /// (default: this executable's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Seconds any one wait may take (a drain, a run, a latency
    /// measurement beyond its offered duration) before the phase fails.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Write every number as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for the children's logs (default: a new one under the
    /// system temp dir, removed after a run without failures).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the logs even when every phase succeeded.
    #[arg(long)]
    keep_logs: bool,
}

/// One measured phase; a scenario has one or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Unit {
    Memory,
    Mysql,
    TpDrain,
    TpE2e,
    TpLatency,
    LlE2e,
    LlLatency,
}

/// What database a phase needs.
enum DbKind {
    None,
    GearmanQueue,
    Garivini,
}

impl Unit {
    const ALL: [Unit; 7] = [
        Unit::Memory,
        Unit::Mysql,
        Unit::TpDrain,
        Unit::TpE2e,
        Unit::TpLatency,
        Unit::LlE2e,
        Unit::LlLatency,
    ];

    fn key(self) -> &'static str {
        match self {
            Unit::Memory => "gearmand_memory",
            Unit::Mysql => "gearmand_mysql",
            Unit::TpDrain => "throughput_insert_drain",
            Unit::TpE2e => "throughput_e2e",
            Unit::TpLatency => "throughput_latency",
            Unit::LlE2e => "lowlatency_e2e",
            Unit::LlLatency => "lowlatency_latency",
        }
    }

    fn scenario(self) -> u8 {
        match self {
            Unit::Memory => 1,
            Unit::Mysql => 2,
            Unit::TpDrain | Unit::TpE2e | Unit::TpLatency => 3,
            Unit::LlE2e | Unit::LlLatency => 4,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Unit::Memory => "gearmand memory-only",
            Unit::Mysql => "gearmand -q mysql",
            Unit::TpDrain => "throughput: insert, then drain",
            Unit::TpE2e => "throughput: end to end",
            Unit::TpLatency => "throughput: latency",
            Unit::LlE2e => "low-latency: end to end",
            Unit::LlLatency => "low-latency: latency",
        }
    }

    fn db(self) -> DbKind {
        match self {
            Unit::Memory => DbKind::None,
            Unit::Mysql => DbKind::GearmanQueue,
            _ => DbKind::Garivini,
        }
    }
}

/// A phase's numbers, by name.
type Metrics = Vec<(&'static str, f64)>;

/// One repetition of a phase: the numbers it got, and its error if it
/// failed (a phase that fails half way keeps the numbers it had).
struct Run {
    metrics: Metrics,
    error: Option<String>,
}

/// A gv_inject run.
struct Inject<'a> {
    mode: &'a str,
    func: &'a str,
    count: u64,
    batch: usize,
    concurrency: usize,
    rate: u64,
    latency: Option<&'a Path>,
}

/// A child process, killed when dropped; stdout and stderr go to files.
struct Proc {
    name: String,
    out: PathBuf,
    log: PathBuf,
    child: tokio::process::Child,
}

impl Proc {
    fn spawn(
        dir: &Path,
        tag: &str,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<Proc> {
        let out = dir.join(format!("{tag}-{name}.out"));
        let log = dir.join(format!("{tag}-{name}.log"));
        let create = |p: &Path| {
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            // Everything is passed as flags; none of the caller's servers.
            .env_remove("GARIVINI_DSN")
            .env_remove("GARIVINI_GEARMAND")
            // Plain logs, readable in the error messages.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(create(&out)?)
            .stderr(create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Proc {
            name: name.to_string(),
            out,
            log,
            child,
        })
    }

    /// The last lines of its stderr, for an error message.
    fn tail(&self) -> String {
        let text = strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default());
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = lines[lines.len().saturating_sub(3)..].join(" | ");
        format!("log {}: {}", self.log.display(), last)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Err if it has exited: it should still be running.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}); {}", self.name, self.tail());
        }
        Ok(())
    }

    /// Whether it has exited successfully (Err if it failed).
    fn exited(&mut self) -> anyhow::Result<bool> {
        match self.child.try_wait()? {
            None => Ok(false),
            Some(status) if status.success() => Ok(true),
            Some(status) => bail!("{} failed ({status}); {}", self.name, self.tail()),
        }
    }

    /// SIGKILL, and wait (bounded) until it is gone.
    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// A private gearmand.
struct Gearmand {
    addr: String,
    proc: Proc,
}

/// Everything one phase runs on: its database, its gearmand, its processes.
struct Env {
    tag: String,
    db: Option<String>,
    gearmand: Option<Gearmand>,
    procs: Vec<Proc>,
}

impl Env {
    fn addr(&self) -> &str {
        &self.gearmand.as_ref().expect("gearmand running").addr
    }

    fn db(&self) -> &str {
        self.db.as_deref().expect("phase with a database")
    }

    /// Err if gearmand or any service process has exited.
    fn check(&mut self) -> anyhow::Result<()> {
        if let Some(g) = self.gearmand.as_mut() {
            g.proc.check_running()?;
        }
        for p in &mut self.procs {
            p.check_running()?;
        }
        Ok(())
    }
}

/// Statistics of one metric over the repetitions that succeeded.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(values: &[f64]) -> Option<Stat> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

struct Bench {
    opts: Opts,
    pool: mysql_async::Pool,
    mysql_opts: mysql_async::Opts,
    /// mysql://user@host:port, without a database.
    server_url: String,
    dir: PathBuf,
    garivini: PathBuf,
    gv_inject: PathBuf,
    gv_consume: PathBuf,
    /// Databases created and not yet dropped.
    dbs: Mutex<HashSet<String>>,
}

/// `mysql://user:pass@host:port/db?x` → `mysql://user:pass@host:port`.
fn server_url(url: &str) -> anyhow::Result<String> {
    let start = url
        .find("://")
        .ok_or_else(|| anyhow!("--mysql: not a mysql:// URL: {url}"))?
        + 3;
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    Ok(url[..end].to_string())
}

/// `text` without terminal colour sequences (ESC [ ... letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn split_args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A free loopback port (free when asked; gearmand binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// gearmand's admin `status`: function → (queued+running, running, workers).
async fn gearmand_status(addr: &str) -> anyhow::Result<HashMap<String, (u64, u64, u64)>> {
    let query = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"status\n").await?;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut rows = HashMap::new();
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                bail!("gearmand {addr} closed the admin connection");
            }
            let l = line.trim_end();
            if l == "." {
                return Ok(rows);
            }
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() >= 4 {
                let n = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
                rows.insert(f[0].to_string(), (n(f[1]), n(f[2]), n(f[3])));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .map_err(|_| anyhow!("gearmand {addr}: no answer to status"))?
}

/// The number right after `key` in `line` (e.g. "p50 " in "p50 3.65 ms").
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| c.is_whitespace() || c == ',')
        .find(|t| !t.is_empty())?
        .parse()
        .ok()
}

/// gv_inject's summary "VERB N jobs in S s: R jobs/s" → R, after checking N.
fn parse_rate(stdout: &str, verb: &str, count: u64) -> anyhow::Result<f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(verb))
        .ok_or_else(|| anyhow!("gv_inject printed no '{verb} …' line: {stdout:?}"))?;
    let n = number_after(line, verb).map(|n| n as u64);
    if n != Some(count) {
        bail!("gv_inject reported {n:?} jobs, expected {count}: {line:?}");
    }
    let rate = line
        .rsplit(':')
        .next()
        .and_then(|r| number_after(r, ""))
        .ok_or_else(|| anyhow!("no rate in gv_inject's line {line:?}"))?;
    Ok(rate)
}

/// gv_inject's "latency WHAT: p50 X ms, p90 X ms, p99 X ms, max X ms (N
/// jobs)" line for `what` (e.g. "submit->start") → [p50, p90, p99, max];
/// None when there is no such line.
fn parse_latency(stdout: &str, what: &str, count: u64) -> anyhow::Result<Option<[f64; 4]>> {
    let prefix = format!("latency {what}:");
    let Some(line) = stdout.lines().find(|l| l.starts_with(&prefix)) else {
        return Ok(None);
    };
    let get = |k: &str| number_after(line, k).ok_or_else(|| anyhow!("no {k}in {line:?}"));
    let samples = line
        .rfind('(')
        .and_then(|i| number_after(&line[i..], "("))
        .map(|n| n as u64);
    if samples != Some(count) {
        bail!("latency line covers {samples:?} jobs, expected {count}: {line:?}");
    }
    Ok(Some([
        get("p50 ")?,
        get("p90 ")?,
        get("p99 ")?,
        get("max ")?,
    ]))
}

impl Bench {
    fn log(&self, msg: impl AsRef<str>) {
        eprintln!("gv_bench: {}", msg.as_ref());
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.opts.timeout)
    }

    fn dsn(&self, db: &str) -> String {
        format!("{}/{db}", self.server_url)
    }

    async fn sql(&self, q: String) -> anyhow::Result<()> {
        let mut conn = self.pool.get_conn().await?;
        conn.query_drop(&q)
            .await
            .with_context(|| format!("SQL failed: {q}"))?;
        Ok(())
    }

    async fn count(&self, db: &str, table: &str) -> anyhow::Result<u64> {
        let mut conn = self.pool.get_conn().await?;
        let n: Option<u64> = conn
            .query_first(format!("SELECT COUNT(*) FROM `{db}`.`{table}`"))
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Whether `table` is empty. Cheap whatever the table holds: the drain
    /// polls it every POLL, and a COUNT(*) scan would load the server we
    /// measure.
    async fn is_empty(&self, db: &str, table: &str) -> anyhow::Result<bool> {
        let mut conn = self.pool.get_conn().await?;
        let any: Option<u8> = conn
            .query_first(format!("SELECT 1 FROM `{db}`.`{table}` LIMIT 1"))
            .await?;
        Ok(any.is_none())
    }

    /// A new database; with the job table when `schema`.
    async fn create_db(&self, kind: &str, schema: bool) -> anyhow::Result<String> {
        let name = format!("gv_bench_{kind}_{:08x}", rand::random::<u32>());
        self.sql(format!("CREATE DATABASE `{name}`")).await?;
        self.dbs.lock().unwrap().insert(name.clone());
        if schema {
            let opts = mysql_async::OptsBuilder::from_opts(self.mysql_opts.clone())
                .db_name(Some(name.clone()));
            let mut conn = mysql_async::Conn::new(opts).await?;
            conn.query_drop(SCHEMA)
                .await
                .context("cannot load schema.sql")?;
            let _ = conn.disconnect().await;
        }
        Ok(name)
    }

    async fn drop_db(&self, name: &str) {
        let drop = self.sql(format!("DROP DATABASE IF EXISTS `{name}`"));
        match tokio::time::timeout(Duration::from_secs(60), drop).await {
            Ok(Ok(())) => {
                self.dbs.lock().unwrap().remove(name);
            }
            Ok(Err(e)) => self.log(format!("cannot drop database {name}: {e:#}")),
            Err(_) => self.log(format!("DROP DATABASE {name} timed out")),
        }
    }

    /// Drops every database still left (after an interruption).
    async fn drop_all_dbs(&self) {
        let left: Vec<String> = self.dbs.lock().unwrap().iter().cloned().collect();
        for db in left {
            self.drop_db(&db).await;
        }
    }

    /// A private gearmand on a free port (tried again on another port if
    /// it exits at once: someone else may have taken the port meanwhile).
    async fn start_gearmand(&self, tag: &str, queue_db: Option<&str>) -> anyhow::Result<Gearmand> {
        let mut attempt = 1;
        loop {
            match self.try_start_gearmand(tag, queue_db).await {
                Ok(g) => return Ok(g),
                Err(e) if attempt < 3 => {
                    self.log(format!(
                        "gearmand did not start ({e:#}); trying another port"
                    ));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_start_gearmand(
        &self,
        tag: &str,
        queue_db: Option<&str>,
    ) -> anyhow::Result<Gearmand> {
        let port = free_port()?;
        let file = |what: &str| self.dir.join(format!("{tag}-gearmand.{what}"));
        let mut args = vec![
            "--config-file=/dev/null".to_string(),
            "--listen=127.0.0.1".to_string(),
            format!("--port={port}"),
            format!("--log-file={}", file("server.log").display()),
            format!("--pid-file={}", file("pid").display()),
        ];
        if let Some(db) = queue_db {
            let o = &self.mysql_opts;
            args.extend([
                "-q".to_string(),
                "mysql".to_string(),
                format!("--mysql-host={}", o.ip_or_hostname()),
                format!("--mysql-port={}", o.tcp_port()),
                format!("--mysql-user={}", o.user().unwrap_or("root")),
                format!("--mysql-db={db}"),
                format!("--mysql-table={GEARMAN_QUEUE_TABLE}"),
            ]);
            if let Some(pass) = o.pass() {
                args.push(format!("--mysql-password={pass}"));
            }
        }
        args.extend(split_args(&self.opts.gearmand_args));
        let mut proc = Proc::spawn(
            &self.dir,
            tag,
            "gearmand",
            Path::new(&self.opts.gearmand_bin),
            &args,
        )?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + STARTUP;
        loop {
            proc.check_running()?;
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(Gearmand { addr, proc });
            }
            if Instant::now() > deadline {
                bail!(
                    "gearmand did not listen on {addr} within {STARTUP:?}; {}",
                    proc.tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A fresh database and gearmand for `unit` in repetition `rep`.
    async fn env(&self, unit: Unit, rep: usize) -> anyhow::Result<Env> {
        let tag = format!("r{rep}-{}", unit.key());
        let db = match unit.db() {
            DbKind::None => None,
            DbKind::GearmanQueue => Some(self.create_db("gq", false).await?),
            DbKind::Garivini => Some(self.create_db("gv", true).await?),
        };
        let queue_db = match unit.db() {
            DbKind::GearmanQueue => db.as_deref(),
            _ => None,
        };
        let gearmand = match self.start_gearmand(&tag, queue_db).await {
            Ok(g) => g,
            Err(e) => {
                if let Some(db) = &db {
                    self.drop_db(db).await;
                }
                return Err(e);
            }
        };
        Ok(Env {
            tag,
            db,
            gearmand: Some(gearmand),
            procs: Vec::new(),
        })
    }

    async fn teardown(&self, mut env: Env) {
        for p in env.procs.drain(..) {
            p.kill().await;
        }
        if let Some(g) = env.gearmand.take() {
            g.proc.kill().await;
        }
        if let Some(db) = env.db.take() {
            self.drop_db(&db).await;
        }
    }

    /// Runs one phase on a fresh environment, always torn down after.
    async fn run_unit(&self, unit: Unit, rep: usize) -> Run {
        let mut m = Metrics::new();
        let res = match self.env(unit, rep).await {
            Err(e) => Err(e),
            Ok(mut env) => {
                let env_ = &mut env;
                let res = match unit {
                    Unit::Memory => self.gearmand_only(env_, false, &mut m).await,
                    Unit::Mysql => self.gearmand_only(env_, true, &mut m).await,
                    Unit::TpDrain => self.tp_drain(env_, &mut m).await,
                    Unit::TpE2e => self.tp_e2e(env_, &mut m).await,
                    Unit::TpLatency => self.tp_latency(env_, &mut m).await,
                    Unit::LlE2e => self.ll_e2e(env_, &mut m).await,
                    Unit::LlLatency => self.ll_latency(env_, &mut m).await,
                };
                self.teardown(env).await;
                res
            }
        };
        Run {
            metrics: m,
            error: res.err().map(|e| format!("{e:#}")),
        }
    }

    fn spawn(
        &self,
        env: &Env,
        name: &str,
        program: &Path,
        args: Vec<String>,
    ) -> anyhow::Result<Proc> {
        Proc::spawn(&self.dir, &env.tag, name, program, &args)
    }

    /// Starts a long-running process of the phase (checked while waiting).
    fn service(
        &self,
        env: &mut Env,
        name: &str,
        program: &Path,
        args: Vec<String>,
    ) -> anyhow::Result<()> {
        let p = self.spawn(env, name, program, args)?;
        env.procs.push(p);
        Ok(())
    }

    fn servers_args(&self, env: &Env) -> Vec<String> {
        vec![
            "--dsn".into(),
            self.dsn(env.db()),
            "--gearmand".into(),
            env.addr().to_string(),
        ]
    }

    fn start_consume(
        &self,
        env: &mut Env,
        mode: &str,
        func: &str,
        latency: Option<&Path>,
    ) -> anyhow::Result<()> {
        let mut args = self.servers_args(env);
        args.extend([
            "--mode".into(),
            mode.into(),
            "--funcname".into(),
            func.into(),
            "--concurrency".into(),
            self.opts.worker_concurrency.to_string(),
        ]);
        if let Some(path) = latency {
            args.extend(["--latency-file".into(), path.display().to_string()]);
        }
        let program = self.gv_consume.clone();
        self.service(env, "gv_consume", &program, args)
    }

    fn start_queuerunners(&self, env: &mut Env) -> anyhow::Result<()> {
        for i in 0..self.opts.queuerunners {
            let mut args = self.servers_args(env);
            args.push("queuerunner".into());
            args.extend(split_args(&self.opts.queuerunner_args));
            let program = self.garivini.clone();
            self.service(env, &format!("queuerunner{i}"), &program, args)?;
        }
        Ok(())
    }

    /// The low-latency roles: one process with a QueueRunner and the
    /// Injector, and `--controllers` Controller processes.
    fn start_lowlatency_roles(&self, env: &mut Env) -> anyhow::Result<()> {
        let program = self.garivini.clone();
        let mut args = self.servers_args(env);
        args.extend([
            "workers".into(),
            "--roles".into(),
            "queuerunner,injector".into(),
        ]);
        args.extend(split_args(&self.opts.queuerunner_args));
        self.service(env, "queuerunner_injector", &program, args)?;
        for i in 0..self.opts.controllers {
            let mut args = self.servers_args(env);
            args.push("controller".into());
            args.extend(split_args(&self.opts.controller_args));
            self.service(env, &format!("controller{i}"), &program, args)?;
        }
        Ok(())
    }

    /// Waits until `func` has at least `min` worker connections.
    async fn wait_workers(&self, env: &mut Env, func: &str, min: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            env.check()?;
            let status = gearmand_status(env.addr()).await?;
            if status.get(func).is_some_and(|s| s.2 >= min) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no {min} worker(s) for {func} within {STARTUP:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded, best effort) until every QueueRunner logged its start.
    async fn wait_queuerunners(&self, env: &mut Env) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            env.check()?;
            let started = env
                .procs
                .iter()
                .filter(|p| p.name.starts_with("queuerunner"))
                .all(|p| {
                    std::fs::read_to_string(&p.log)
                        .is_ok_and(|l| strip_ansi(&l).contains("queuerunner started"))
                });
            if started {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.log("warning: no 'queuerunner started' log line seen; going on");
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `proc` exits successfully, the services staying up.
    async fn wait_exit(
        &self,
        env: &mut Env,
        proc: &mut Proc,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if proc.exited()? {
                return Ok(());
            }
            env.check()?;
            if Instant::now() > deadline {
                bail!("{} did not finish within {}", proc.name, secs(limit));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `inject` (if any) has exited successfully and the job
    /// table is empty; returns when that was seen.
    async fn wait_done(
        &self,
        env: &mut Env,
        mut inject: Option<&mut Proc>,
    ) -> anyhow::Result<Instant> {
        let limit = self.timeout();
        let deadline = Instant::now() + limit;
        loop {
            env.check()?;
            let injected = match inject.as_deref_mut() {
                Some(p) => p.exited()?,
                None => true,
            };
            if injected && self.is_empty(env.db(), "job").await? {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(match injected {
                    true => {
                        let n = self.count(env.db(), "job").await?;
                        anyhow!("timeout: {n} jobs still in the table after {}", secs(limit))
                    }
                    false => anyhow!("timeout: gv_inject still running after {}", secs(limit)),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn inject_args(&self, env: &Env, i: Inject<'_>) -> Vec<String> {
        let Inject {
            mode,
            func,
            count,
            batch,
            concurrency,
            rate,
            latency,
        } = i;
        let mut args = self.servers_args(env);
        args.extend([
            "--mode".into(),
            mode.into(),
            "--funcname".into(),
            func.into(),
            "--count".into(),
            count.to_string(),
            "--arg-size".into(),
            self.opts.payload.to_string(),
            "--batch".into(),
            batch.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
        ]);
        if rate > 0 {
            args.extend(["--rate".into(), rate.to_string()]);
        }
        if let Some(path) = latency {
            args.extend([
                "--latency-file".into(),
                path.display().to_string(),
                "--latency-wait".into(),
                self.opts.timeout.to_string(),
            ]);
        }
        args
    }

    /// Scenarios 1 and 2: our client and worker on a gearmand alone.
    async fn gearmand_only(
        &self,
        env: &mut Env,
        mysql: bool,
        m: &mut Metrics,
    ) -> anyhow::Result<()> {
        let n = self.opts.jobs;
        let func = "gv_bench_gearmand";
        let servers = vec![env.addr().to_string()];
        let payload = Bytes::from(vec![b'x'; self.opts.payload]);
        let job = |unique: String| BackgroundJob {
            function: func.to_string(),
            unique,
            data: payload.clone(),
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
        let start = Instant::now();
        let deadline = start + self.timeout();
        for batch in jobs.chunks(self.opts.submit_batch.max(1)) {
            submit_all(&mut submitter, batch).await?;
            if Instant::now() > deadline {
                bail!("timeout: submits took over {}", secs(self.timeout()));
            }
        }
        let submitted = start.elapsed();
        self.wait_count(env, &done, n, deadline).await?;
        let elapsed = start.elapsed();
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

    async fn wait_queue_table_empty(&self, env: &mut Env) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            env.check()?;
            if self.is_empty(env.db(), GEARMAN_QUEUE_TABLE).await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                let rows = self.count(env.db(), GEARMAN_QUEUE_TABLE).await?;
                bail!("gearmand -q mysql left {rows} rows in its table after the jobs ran");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// gv_inject's arguments for scenario 3's bulk insert of `--jobs` jobs.
    fn bulk_insert_args(&self, env: &Env, func: &str) -> Vec<String> {
        self.inject_args(
            env,
            Inject {
                mode: "throughput",
                func,
                count: self.opts.jobs,
                batch: self.opts.insert_batch,
                concurrency: self.opts.insert_concurrency,
                rate: 0,
                latency: None,
            },
        )
    }

    /// Scenario 3 (a) and (b): a bulk insert into an idle system, then the
    /// time QueueRunner(s) and gv_consume take to drain it.
    async fn tp_drain(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let n = self.opts.jobs;
        let func = "gv_bench_tp";
        let args = self.bulk_insert_args(env, func);
        let mut inject = self.spawn(env, "gv_inject", &self.gv_inject, args)?;
        self.wait_exit(env, &mut inject, self.timeout()).await?;
        m.push((
            "insert_jobs_per_s",
            parse_rate(&inject.stdout(), "inserted", n)?,
        ));
        let rows = self.count(env.db(), "job").await?;
        if rows != n {
            bail!("{rows} rows in the job table after inserting {n}");
        }
        self.start_consume(env, "throughput", func, None)?;
        self.wait_workers(env, func, 1).await?;
        let start = Instant::now();
        self.start_queuerunners(env)?;
        let end = self.wait_done(env, None).await?;
        let drain = end - start;
        m.extend([
            ("drain_jobs_per_s", n as f64 / drain.as_secs_f64()),
            ("drain_seconds", drain.as_secs_f64()),
        ]);
        Ok(())
    }

    /// Scenario 3 (c): with QueueRunner(s) and gv_consume running, from the
    /// start of gv_inject until the table is empty again.
    async fn tp_e2e(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let n = self.opts.jobs;
        let func = "gv_bench_tp";
        self.start_consume(env, "throughput", func, None)?;
        self.start_queuerunners(env)?;
        self.wait_workers(env, func, 1).await?;
        self.wait_queuerunners(env).await?;
        let args = self.bulk_insert_args(env, func);
        self.inject_until_drained(env, m, args, n, "inserted", "insert_jobs_per_s")
            .await
    }

    /// Runs gv_inject with `args` and waits until the table is empty:
    /// end-to-end jobs/s from gv_inject's start, and the submit rate it
    /// printed (`verb` = "inserted" or "injected") under `rate_key`.
    async fn inject_until_drained(
        &self,
        env: &mut Env,
        m: &mut Metrics,
        args: Vec<String>,
        n: u64,
        verb: &str,
        rate_key: &'static str,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut inject = self.spawn(env, "gv_inject", &self.gv_inject, args)?;
        let end = self.wait_done(env, Some(&mut inject)).await?;
        let elapsed = end - start;
        m.extend([
            ("jobs_per_s", n as f64 / elapsed.as_secs_f64()),
            ("seconds", elapsed.as_secs_f64()),
            (rate_key, parse_rate(&inject.stdout(), verb, n)?),
        ]);
        Ok(())
    }

    /// Latency from submit (insert, or inject_jobs) to worker start at the
    /// offered rate; the services are running.
    async fn latency(
        &self,
        env: &mut Env,
        mode: &str,
        func: &str,
        file: &Path,
        m: &mut Metrics,
    ) -> anyhow::Result<()> {
        let n = self.opts.latency_jobs;
        let args = self.inject_args(
            env,
            Inject {
                mode,
                func,
                count: n,
                batch: 1,
                concurrency: if mode == "throughput" {
                    self.opts.insert_concurrency
                } else {
                    self.opts.concurrency
                },
                rate: self.opts.rate,
                latency: Some(file),
            },
        );
        let mut inject = self.spawn(env, "gv_inject", &self.gv_inject, args)?;
        let offered = Duration::from_secs_f64(n as f64 / self.opts.rate.max(1) as f64);
        self.wait_exit(
            env,
            &mut inject,
            offered + self.timeout() + Duration::from_secs(10),
        )
        .await?;
        let out = inject.stdout();
        let verb = if mode == "throughput" {
            "inserted"
        } else {
            "injected"
        };
        let rate = parse_rate(&out, verb, n)?;
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

    /// Scenario 3 (d).
    async fn tp_latency(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let func = "gv_bench_tp";
        let file = self.dir.join(format!("{}-latency", env.tag));
        self.start_consume(env, "throughput", func, Some(&file))?;
        self.start_queuerunners(env)?;
        self.wait_workers(env, func, 1).await?;
        self.wait_queuerunners(env).await?;
        self.latency(env, "throughput", func, &file, m).await
    }

    async fn start_lowlatency(
        &self,
        env: &mut Env,
        func: &str,
        file: Option<&Path>,
    ) -> anyhow::Result<()> {
        self.start_consume(env, "lowlatency", func, file)?;
        self.start_lowlatency_roles(env)?;
        self.wait_workers(env, func, 1).await?;
        self.wait_workers(env, INJECT_JOBS, 1).await?;
        self.wait_workers(env, RUN_QUEUED_JOB, self.opts.controllers as u64)
            .await?;
        self.wait_queuerunners(env).await
    }

    /// Scenario 4: jobs/s through inject_jobs, until the table is empty.
    async fn ll_e2e(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let n = self.opts.jobs;
        let func = "gv_bench_ll";
        self.start_lowlatency(env, func, None).await?;
        let args = self.inject_args(
            env,
            Inject {
                mode: "lowlatency",
                func,
                count: n,
                batch: 1,
                concurrency: self.opts.concurrency,
                rate: 0,
                latency: None,
            },
        );
        self.inject_until_drained(env, m, args, n, "injected", "inject_jobs_per_s")
            .await
    }

    /// Scenario 4: latency at the offered rate.
    async fn ll_latency(&self, env: &mut Env, m: &mut Metrics) -> anyhow::Result<()> {
        let func = "gv_bench_ll";
        let file = self.dir.join(format!("{}-latency", env.tag));
        self.start_lowlatency(env, func, Some(&file)).await?;
        self.latency(env, "lowlatency", func, &file, m).await
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

/// Results of every repetition of every phase.
struct Results {
    runs: BTreeMap<Unit, Vec<Run>>,
}

impl Results {
    fn values(&self, unit: Unit, metric: &str) -> Vec<f64> {
        self.runs
            .get(&unit)
            .into_iter()
            .flatten()
            .filter_map(|r| value(&r.metrics, metric))
            .collect()
    }

    fn stat(&self, unit: Unit, metric: &str) -> Option<Stat> {
        stat(&self.values(unit, metric))
    }

    fn median(&self, unit: Unit, metric: &str) -> Option<f64> {
        self.stat(unit, metric).map(|s| s.median)
    }

    fn failures(&self, unit: Unit) -> Vec<&str> {
        self.runs
            .get(&unit)
            .into_iter()
            .flatten()
            .filter_map(|r| r.error.as_deref())
            .collect()
    }

    fn ran(&self, unit: Unit) -> usize {
        self.runs.get(&unit).map_or(0, Vec::len)
    }

    /// Repetitions of `unit` that did not get `metric`.
    fn missing(&self, unit: Unit, metric: &str) -> usize {
        self.runs
            .get(&unit)
            .into_iter()
            .flatten()
            .filter(|r| value(&r.metrics, metric).is_none())
            .count()
    }
}

fn value(m: &Metrics, metric: &str) -> Option<f64> {
    m.iter().find(|(k, _)| *k == metric).map(|(_, v)| *v)
}

/// A target of the table.
struct Target {
    text: String,
    met: Option<bool>,
}

fn at_least(value: Option<f64>, min: Option<f64>, text: String) -> Target {
    let met = match (value, min) {
        (Some(v), Some(m)) => Some(v >= m),
        _ => None,
    };
    Target { text, met }
}

fn at_most(value: Option<f64>, max: f64, text: String) -> Target {
    Target {
        text,
        met: value.map(|v| v <= max),
    }
}

/// A line of the table.
struct Row {
    label: String,
    unit: Unit,
    rate_metric: &'static str,
    latency: bool,
    targets: Vec<Target>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn rows(opts: &Opts, r: &Results) -> Vec<Row> {
    let ceiling = r.median(Unit::Memory, "jobs_per_s");
    let gq = r.median(Unit::Mysql, "jobs_per_s");
    let tp = r.median(Unit::TpE2e, "jobs_per_s");
    let tp_p50 = r.median(Unit::TpLatency, "p50_ms");
    let ll = r.median(Unit::LlE2e, "jobs_per_s");
    let ll_p50 = r.median(Unit::LlLatency, "p50_ms");
    let ll_p99 = r.median(Unit::LlLatency, "p99_ms");
    let of = |k: f64, base: Option<f64>, n: u8| match base {
        Some(b) => format!(">= {k} x ({n}) = {:.0}/s", k * b),
        None => format!(">= {k} x ({n})"),
    };
    let rate = opts.rate;
    let row = |label: String, unit, rate_metric, latency, targets| Row {
        label,
        unit,
        rate_metric,
        latency,
        targets,
    };
    vec![
        row(
            "1 gearmand memory-only (ceiling)".into(),
            Unit::Memory,
            "jobs_per_s",
            false,
            vec![],
        ),
        row(
            "2 gearmand -q mysql".into(),
            Unit::Mysql,
            "jobs_per_s",
            false,
            vec![],
        ),
        row(
            format!("3 throughput: insert (batch {})", opts.insert_batch),
            Unit::TpDrain,
            "insert_jobs_per_s",
            false,
            vec![],
        ),
        row(
            format!("3 throughput: drain {} queued", opts.jobs),
            Unit::TpDrain,
            "drain_jobs_per_s",
            false,
            vec![],
        ),
        row(
            "3 throughput: end to end".into(),
            Unit::TpE2e,
            "jobs_per_s",
            false,
            vec![
                at_least(
                    tp,
                    Some(TARGET_TP_JOBS),
                    format!(">= {TARGET_TP_JOBS:.0}/s"),
                ),
                at_least(
                    tp,
                    ceiling.map(|c| c * TARGET_TP_VS_CEILING),
                    of(TARGET_TP_VS_CEILING, ceiling, 1),
                ),
                at_least(
                    tp,
                    gq.map(|g| g * TARGET_TP_VS_GEARMAND_MYSQL),
                    of(TARGET_TP_VS_GEARMAND_MYSQL, gq, 2),
                ),
            ],
        ),
        row(
            format!("3 throughput: insert->start @{rate}/s"),
            Unit::TpLatency,
            "offered_jobs_per_s",
            true,
            vec![at_most(
                tp_p50,
                TARGET_TP_P50_MS,
                format!("p50 <= {TARGET_TP_P50_MS:.0} ms"),
            )],
        ),
        row(
            "4 low-latency: end to end".into(),
            Unit::LlE2e,
            "jobs_per_s",
            false,
            vec![at_least(
                ll,
                Some(TARGET_LL_JOBS),
                format!(">= {TARGET_LL_JOBS:.0}/s"),
            )],
        ),
        row(
            format!("4 low-latency: submit->start @{rate}/s"),
            Unit::LlLatency,
            "offered_jobs_per_s",
            true,
            vec![
                at_most(
                    ll_p50,
                    TARGET_LL_P50_MS,
                    format!("p50 <= {TARGET_LL_P50_MS:.0} ms"),
                ),
                at_most(
                    ll_p99,
                    TARGET_LL_P99_MS,
                    format!("p99 <= {TARGET_LL_P99_MS:.0} ms"),
                ),
            ],
        ),
    ]
}

fn ratios(r: &Results) -> Vec<(&'static str, Option<f64>)> {
    let m = |u| r.median(u, "jobs_per_s");
    vec![
        ("3/1", ratio(m(Unit::TpE2e), m(Unit::Memory))),
        ("3/2", ratio(m(Unit::TpE2e), m(Unit::Mysql))),
        ("4/2", ratio(m(Unit::LlE2e), m(Unit::Mysql))),
    ]
}

fn met_text(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "n/a",
    }
}

fn print_table(b: &Bench, r: &Results, header: &[String]) {
    let opts = &b.opts;
    let fmt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    println!();
    for line in header {
        println!("{line}");
    }
    println!();
    println!(
        "{:<48} {:>9} {:>8} {:>8} {:>8} {:>8}  {:<24} met?",
        "scenario", "jobs/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "target"
    );
    println!("{}", "-".repeat(132));
    for row in rows(opts, r) {
        if !opts.scenarios.contains(&row.unit.scenario()) {
            continue;
        }
        let ran = r.ran(row.unit);
        let failed = r.missing(row.unit, row.rate_metric);
        let mut label = row.label.clone();
        if failed > 0 {
            label = format!("{label} [{failed}/{ran} FAILED]");
        }
        let rate = match r.median(row.unit, row.rate_metric) {
            Some(v) => format!("{v:.0}"),
            None => "FAILED".to_string(),
        };
        let lat = |k| {
            if row.latency {
                fmt(r.median(row.unit, k), 2)
            } else {
                "-".to_string()
            }
        };
        let row_failed = ran > 0 && r.median(row.unit, row.rate_metric).is_none();
        let met = |t: &Target| {
            if row_failed {
                "FAILED"
            } else {
                met_text(t.met)
            }
        };
        let mut targets = row.targets.iter();
        let first = targets.next();
        println!(
            "{:<48} {:>9} {:>8} {:>8} {:>8} {:>8}  {:<24} {}",
            label,
            rate,
            lat("p50_ms"),
            lat("p90_ms"),
            lat("p99_ms"),
            lat("max_ms"),
            first.map_or("", |t| t.text.as_str()),
            first.map_or("", met),
        );
        for t in targets {
            println!("{:<95}  {:<24} {}", "", t.text, met(t));
        }
    }
    println!("{}", "-".repeat(132));
    let ratios: Vec<String> = ratios(r)
        .into_iter()
        .map(|(k, v)| format!("{k} = {}", fmt(v, 2)))
        .collect();
    println!("ratios (end-to-end jobs/s): {}", ratios.join(", "));
    if opts.scenarios.iter().any(|&s| s >= 3) {
        println!(
            "drain: QueueRunner(s) started on {} queued rows, until the table is empty; end to end: from gv_inject's start \
             until the table is empty, the other processes already running; latency rows: jobs/s is the rate gv_inject achieved",
            opts.jobs
        );
    }
    let mut failures = Vec::new();
    for unit in Unit::ALL {
        for (i, e) in r
            .runs
            .get(&unit)
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, x)| x.error.as_ref().map(|e| (i, e)))
        {
            failures.push(format!(
                "  {} {} rep {}: {e}",
                unit.scenario(),
                unit.title(),
                i + 1
            ));
        }
    }
    if !failures.is_empty() {
        println!("failures:");
        for f in failures {
            println!("{f}");
        }
    }
}

fn to_json(b: &Bench, r: &Results, header: &[String], load: (String, String)) -> serde_json::Value {
    let o = &b.opts;
    let mut units = serde_json::Map::new();
    for unit in Unit::ALL {
        let Some(runs) = r.runs.get(&unit) else {
            continue;
        };
        let mut metrics = serde_json::Map::new();
        let names: Vec<&str> = runs
            .iter()
            .flat_map(|x| x.metrics.iter().map(|(k, _)| *k))
            .fold(Vec::new(), |mut acc, k| {
                if !acc.contains(&k) {
                    acc.push(k);
                }
                acc
            });
        for name in names {
            let values = r.values(unit, name);
            let s = stat(&values);
            metrics.insert(
                name.to_string(),
                json!({
                    "median": s.map(|s| s.median),
                    "min": s.map(|s| s.min),
                    "max": s.map(|s| s.max),
                    "reps": values,
                }),
            );
        }
        let reps: Vec<serde_json::Value> = runs
            .iter()
            .map(|x| {
                let metrics: serde_json::Map<String, serde_json::Value> = x
                    .metrics
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                json!({"ok": x.error.is_none(), "metrics": metrics, "error": x.error})
            })
            .collect();
        units.insert(
            unit.key().to_string(),
            json!({
                "scenario": unit.scenario(),
                "title": unit.title(),
                "metrics": metrics,
                "repetitions": reps,
                "failed": r.failures(unit).len(),
            }),
        );
    }
    let targets: Vec<serde_json::Value> = rows(o, r)
        .into_iter()
        .filter(|row| o.scenarios.contains(&row.unit.scenario()))
        .flat_map(|row| {
            let value = r.median(row.unit, row.rate_metric);
            let label = row.label.clone();
            row.targets.into_iter().map(
                move |t| json!({"row": label, "jobs_per_s": value, "target": t.text, "met": t.met}),
            )
        })
        .collect();
    let ratios: serde_json::Map<String, serde_json::Value> = ratios(r)
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "settings": {
            "jobs": o.jobs,
            "payload_bytes": o.payload,
            "reps": o.reps,
            "concurrency": o.concurrency,
            "insert_concurrency": o.insert_concurrency,
            "insert_batch": o.insert_batch,
            "worker_concurrency": o.worker_concurrency,
            "submit_batch": o.submit_batch,
            "queuerunners": o.queuerunners,
            "controllers": o.controllers,
            "rate": o.rate,
            "latency_jobs": o.latency_jobs,
            "scenarios": o.scenarios,
            "queuerunner_args": split_args(&o.queuerunner_args),
            "controller_args": split_args(&o.controller_args),
            "gearmand_args": split_args(&o.gearmand_args),
            "timeout_s": o.timeout,
        },
        "environment": header,
        "loadavg_start": load.0,
        "loadavg_end": load.1,
        "units": units,
        "targets": targets,
        "ratios": ratios,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The version line of `program --version`.
fn version(program: &Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// Copies the binaries aside, so a rebuild during the run cannot mix
/// versions.
fn snapshot_binaries(from: &Path, to: &Path) -> anyhow::Result<[PathBuf; 3]> {
    std::fs::create_dir_all(to)?;
    let copy = |name: &str| -> anyhow::Result<PathBuf> {
        let src = from.join(name);
        let dst = to.join(name);
        std::fs::copy(&src, &dst).with_context(|| {
            format!(
                "cannot copy {} (build the release binaries first: cargo build --release)",
                src.display()
            )
        })?;
        Ok(dst)
    };
    Ok([copy("garivini")?, copy("gv_inject")?, copy("gv_consume")?])
}

/// The QueueRunner's defaults, as `garivini queuerunner --help` of the
/// binary being run states them: "flag value" pairs (Injector and
/// Controller settings left out).
fn queuerunner_defaults(garivini: &Path) -> Vec<(String, String)> {
    let help = std::process::Command::new(garivini)
        .args(["queuerunner", "--help"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // Each option: a "--flag <VALUE>" line, then its help ending with
    // "[default: X]" (or both on one line).
    let mut defaults = Vec::new();
    let mut flag: Option<String> = None;
    let mut text = String::new();
    let mut finish = |flag: &Option<String>, text: &str| {
        let Some(flag) = flag else { return };
        let other_role = text.trim_start().starts_with("Injector")
            || text.trim_start().starts_with("Controller");
        if let Some(i) = text.find("[default: ") {
            let value = text[i + 10..].split(']').next().unwrap_or("").to_string();
            if !other_role {
                defaults.push((flag.clone(), value));
            }
        }
    };
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || t.starts_with("-h") {
            finish(&flag, &text);
            let mut words = t.split_whitespace();
            flag = words
                .next()
                .map(|f| f.trim_end_matches(',').to_string())
                .filter(|f| f.starts_with("--"));
            text = words
                .skip_while(|w| w.starts_with('<'))
                .collect::<Vec<_>>()
                .join(" ");
        } else {
            text.push(' ');
            text.push_str(t);
        }
    }
    finish(&flag, &text);
    defaults
}

fn qr_settings(opts: &Opts, defaults: &[(String, String)]) -> String {
    let defaults = defaults
        .iter()
        .map(|(f, v)| format!("{f} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    if opts.queuerunner_args.trim().is_empty() {
        format!("defaults ({defaults})")
    } else {
        format!(
            "{} over the defaults ({defaults})",
            opts.queuerunner_args.trim()
        )
    }
}

async fn run(bench: &Bench) -> anyhow::Result<Results> {
    let o = &bench.opts;
    let units: Vec<Unit> = Unit::ALL
        .into_iter()
        .filter(|u| o.scenarios.contains(&u.scenario()))
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
    Ok(results)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main().await {
        eprintln!("gv_bench: error: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    if opts.jobs == 0 || opts.reps == 0 || opts.latency_jobs == 0 || opts.rate == 0 {
        bail!("--jobs, --reps, --latency-jobs and --rate must be at least 1");
    }
    if let Some(bad) = opts.scenarios.iter().find(|s| !(1..=4).contains(*s)) {
        bail!("--scenarios: no scenario {bad} (1 to 4)");
    }
    let bin_dir = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for this executable"))?
            .to_path_buf(),
    };
    let dir = match &opts.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "gv_bench-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let [garivini, gv_inject, gv_consume] = snapshot_binaries(&bin_dir, &dir.join("bin"))?;

    let server_url = server_url(&opts.mysql)?;
    let mysql_opts = mysql_async::Opts::from_url(&server_url)
        .with_context(|| format!("--mysql: bad URL {}", opts.mysql))?;
    let pool = mysql_async::Pool::new(mysql_opts.clone());
    {
        let mut conn = tokio::time::timeout(Duration::from_secs(10), pool.get_conn())
            .await
            .map_err(|_| anyhow!("MySQL at {server_url}: no answer within 10 s"))?
            .with_context(|| format!("cannot connect to MySQL at {server_url}"))?;
        conn.query_drop("SELECT 1").await?;
    }

    let has = |n: u8| opts.scenarios.contains(&n);
    let mut header = vec![
        format!(
            "gv_bench: {} jobs, {} B payload, {} repetition(s) (median shown), {} cores, load average at start {}; {}",
            opts.jobs,
            opts.payload,
            opts.reps,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg(),
            version(Path::new(&opts.gearmand_bin))
        ),
        format!(
            "gearmand flags: {}; workers run {} jobs at once; scenarios 1-2: in-process client, pipelined batches of {}, a unique id per job",
            if opts.gearmand_args.trim().is_empty() { "(gearmand's defaults)" } else { opts.gearmand_args.trim() },
            opts.worker_concurrency, opts.submit_batch
        ),
    ];
    if has(3) {
        header.push(format!(
            "scenario 3: gv_inject --batch {} --concurrency {}; {} QueueRunner(s): {}",
            opts.insert_batch,
            opts.insert_concurrency,
            opts.queuerunners,
            qr_settings(&opts, &queuerunner_defaults(&garivini))
        ));
    }
    if has(4) {
        header.push(format!(
            "scenario 4: gv_inject --concurrency {} (one job per inject_jobs); 1 QueueRunner+Injector process{}, {} Controller(s){}",
            opts.concurrency,
            if opts.queuerunner_args.trim().is_empty() { "" } else { " (with the QueueRunner flags)" },
            opts.controllers,
            if opts.controller_args.trim().is_empty() {
                String::new()
            } else {
                format!(" with {}", opts.controller_args.trim())
            }
        ));
    }
    if has(3) || has(4) {
        header.push(format!(
            "latency: {} jobs offered at {}/s, one job per insert / inject_jobs, up to {} / {} in flight; from submit to the worker's start",
            opts.latency_jobs, opts.rate, opts.insert_concurrency, opts.concurrency,
        ));
    }
    let bench = Bench {
        opts,
        pool,
        mysql_opts,
        server_url,
        dir: dir.clone(),
        garivini,
        gv_inject,
        gv_consume,
        dbs: Mutex::new(HashSet::new()),
    };
    bench.log(format!("logs in {}", dir.display()));

    let load_start = loadavg();
    let outcome = tokio::select! {
        r = run(&bench) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // After an interruption the phase's processes are gone with its future;
    // its database may be left.
    bench.drop_all_dbs().await;
    let results = outcome?;
    let load = (load_start, loadavg());

    print_table(&bench, &results, &bench_header(&header, &load));
    if let Some(path) = &bench.opts.json {
        let value = to_json(&bench, &results, &header, load.clone());
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        bench.log(format!("JSON written to {}", path.display()));
    }
    let failed = Unit::ALL.iter().any(|&u| !results.failures(u).is_empty());
    if failed || bench.opts.keep_logs {
        bench.log(format!("logs kept in {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = bench.pool.clone().disconnect().await;
    if failed {
        bail!("some phases failed (see the table)");
    }
    Ok(())
}

fn bench_header(header: &[String], load: &(String, String)) -> Vec<String> {
    let mut h = header.to_vec();
    h.push(format!("load average at end {}", load.1));
    h
}

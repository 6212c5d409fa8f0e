//! What a phase runs on and with: a fresh database, a private gearmand,
//! the release binaries as child processes (testkit's fixtures), and the
//! bounded waits on them. Every wait also checks that the phase's servers
//! and services are still running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use mysql_async::prelude::Queryable as _;
use testkit::{Gearmand, GearmandConfig, Proc, TestDb};

use crate::cpu::{self, DbThreads, Final, Meter};
use crate::gv_inject::Mode;
use crate::opts::{split_args, Opts};

/// The table gearmand -q mysql keeps its queue in.
pub const GEARMAN_QUEUE_TABLE: &str = "gearman_queue";
/// How often tables and processes are polled.
pub const POLL: Duration = Duration::from_millis(50);
/// How long a server or worker may take to come up.
pub const STARTUP: Duration = Duration::from_secs(15);
/// How long gearmand may take to answer `status`.
const STATUS_LIMIT: Duration = Duration::from_secs(5);

/// What database a phase needs.
pub enum DbKind {
    None,
    /// An empty one, for gearmand's `-q mysql` queue.
    GearmanQueue,
    /// One with the job table.
    Garivini,
}

/// The run's settings, servers and binaries.
pub struct Bench {
    pub opts: Opts,
    pool: mysql_async::Pool,
    mysql_opts: mysql_async::Opts,
    /// mysql://user@host:port, without a database.
    server_url: String,
    /// Where the children's logs go.
    pub dir: PathBuf,
    garivini: PathBuf,
    gv_inject: PathBuf,
    gv_consume: PathBuf,
    /// The MariaDB server's pid, when it runs on this machine.
    pub mariadbd: Option<u32>,
}

/// Everything one phase runs on: its database, its gearmand, its
/// processes. Dropped, it kills the processes and gearmand, then drops the
/// database.
pub struct Env {
    pub tag: String,
    // Fields drop in order: the processes go before the servers they use.
    procs: Vec<Proc>,
    gearmand: Gearmand,
    /// From gearmand's pid file.
    gearmand_pid: Option<u32>,
    db: Option<TestDb>,
}

impl Env {
    pub fn addr(&self) -> &str {
        &self.gearmand.addr
    }

    /// The phase's database name.
    pub fn db(&self) -> &str {
        &self.db.as_ref().expect("phase with a database").name
    }

    /// The phase's database URL (its `--dsn`).
    pub fn dsn(&self) -> &str {
        &self.db.as_ref().expect("phase with a database").url
    }

    /// (name, pid) of gearmand and of every service process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut pids: Vec<(String, u32)> = self
            .gearmand_pid
            .map(|pid| ("gearmand".to_string(), pid))
            .into_iter()
            .collect();
        pids.extend(self.procs.iter().map(|p| (p.name.clone(), p.pid())));
        pids
    }

    /// Err if gearmand or any service process has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        self.gearmand.check_running()?;
        for p in &mut self.procs {
            p.check_running()?;
        }
        Ok(())
    }
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

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
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

/// The version line of `program --version`.
pub fn version(program: &Path) -> String {
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

impl Bench {
    /// Copies the binaries aside into `dir` and checks that MySQL answers.
    pub async fn new(opts: Opts, dir: PathBuf) -> anyhow::Result<Bench> {
        let bin_dir = opts.bin_dir.clone().unwrap_or_else(testkit::bin_dir);
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
        let mariadbd = find_mariadbd(&pool, &mysql_opts).await;
        Ok(Bench {
            opts,
            pool,
            mysql_opts,
            server_url,
            dir,
            garivini,
            gv_inject,
            gv_consume,
            mariadbd,
        })
    }

    pub fn log(&self, msg: impl AsRef<str>) {
        eprintln!("gv_bench: {}", msg.as_ref());
    }

    pub async fn disconnect(&self) {
        let _ = self.pool.clone().disconnect().await;
    }

    /// A connection to the server (for scenario 5's own statements).
    pub async fn conn(&self) -> anyhow::Result<mysql_async::Conn> {
        Ok(self.pool.get_conn().await?)
    }

    /// The `garivini` executable the phases run.
    pub fn garivini_bin(&self) -> &Path {
        &self.garivini
    }

    pub async fn count(&self, db: &str, table: &str) -> anyhow::Result<u64> {
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

    /// gearmand's flags for a `-q mysql` queue in database `db`.
    fn queue_args(&self, db: &str) -> Vec<String> {
        let o = &self.mysql_opts;
        let mut args = vec![
            "-q".to_string(),
            "mysql".to_string(),
            format!("--mysql-host={}", o.ip_or_hostname()),
            format!("--mysql-port={}", o.tcp_port()),
            format!("--mysql-user={}", o.user().unwrap_or("root")),
            format!("--mysql-db={db}"),
            format!("--mysql-table={GEARMAN_QUEUE_TABLE}"),
        ];
        if let Some(pass) = o.pass() {
            args.push(format!("--mysql-password={pass}"));
        }
        args
    }

    /// A fresh database (of `kind`) and gearmand for the phase `tag`.
    pub async fn env(&self, tag: String, kind: DbKind) -> anyhow::Result<Env> {
        let db = match kind {
            DbKind::None => None,
            DbKind::GearmanQueue => {
                let prefix = format!("{}_gq", self.opts.db_prefix);
                Some(TestDb::create(&self.server_url, &prefix, None).await?)
            }
            DbKind::Garivini => Some(
                TestDb::create(
                    &self.server_url,
                    &format!("{}_gv", self.opts.db_prefix),
                    Some(testkit::SCHEMA),
                )
                .await
                .context("cannot load schema.sql")?,
            ),
        };
        let mut args = match (&kind, &db) {
            (DbKind::GearmanQueue, Some(db)) => self.queue_args(&db.name),
            _ => Vec::new(),
        };
        args.extend(split_args(&self.opts.gearmand_args));
        let gearmand = Gearmand::launch(GearmandConfig {
            program: Some(PathBuf::from(&self.opts.gearmand_bin)),
            args,
            dir: Some((self.dir.clone(), tag.clone())),
        })
        .await?;
        let pid_file = self.dir.join(format!("{tag}-gearmand.pid"));
        let gearmand_pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&pid| cpu::comm(pid).is_some_and(|c| c.contains("gearmand")));
        if gearmand_pid.is_none() {
            self.log(format!(
                "warning: no gearmand pid in {}: its CPU is not measured",
                pid_file.display()
            ));
        }
        Ok(Env {
            tag,
            procs: Vec::new(),
            gearmand,
            gearmand_pid,
            db,
        })
    }

    /// Starts `program` with `args` for the phase of `env` (not kept in
    /// `env`: the caller waits for it).
    pub fn spawn(
        &self,
        env: &Env,
        name: &str,
        program: &Path,
        args: Vec<String>,
    ) -> anyhow::Result<Proc> {
        let mut cmd = testkit::command(program);
        // Plain logs, readable in the error messages.
        cmd.args(&args).env("NO_COLOR", "1");
        let file = |ext: &str| self.dir.join(format!("{}-{name}.{ext}", env.tag));
        Proc::start_logged(name, cmd, &file("out"), &file("log"))
    }

    /// gv_inject with `args`.
    pub fn spawn_inject(&self, env: &Env, args: Vec<String>) -> anyhow::Result<Proc> {
        self.spawn(env, "gv_inject", &self.gv_inject, args)
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

    /// `--dsn … --gearmand …` of the phase.
    pub fn servers_args(&self, env: &Env) -> Vec<String> {
        vec![
            "--dsn".into(),
            env.db.as_ref().expect("phase with a database").url.clone(),
            "--gearmand".into(),
            env.addr().to_string(),
        ]
    }

    /// gv_consume for `func` in `mode`, writing start times to `latency`.
    pub fn start_consume(
        &self,
        env: &mut Env,
        mode: Mode,
        func: &str,
        latency: Option<&Path>,
    ) -> anyhow::Result<()> {
        let mut args = self.servers_args(env);
        args.extend([
            "--mode".into(),
            mode.flag().into(),
            "--funcname".into(),
            func.into(),
            "--concurrency".into(),
            self.opts.worker_concurrency.to_string(),
        ]);
        if let Some(path) = latency {
            args.extend(["--latency-file".into(), path.display().to_string()]);
        }
        self.service(env, "gv_consume", &self.gv_consume, args)
    }

    /// `garivini ROLE… EXTRA` on the phase's servers, a service called
    /// `name`; EXTRA is one of the `--*-args` flags.
    fn start_garivini(
        &self,
        env: &mut Env,
        name: &str,
        role: &[&str],
        extra: &str,
    ) -> anyhow::Result<()> {
        let mut args = self.servers_args(env);
        args.extend(role.iter().map(|a| a.to_string()));
        args.extend(split_args(extra));
        self.service(env, name, &self.garivini, args)
    }

    /// `--queuerunners` QueueRunner processes.
    pub fn start_queuerunners(&self, env: &mut Env) -> anyhow::Result<()> {
        for i in 0..self.opts.queuerunners {
            let name = format!("queuerunner{i}");
            self.start_garivini(env, &name, &["queuerunner"], &self.opts.queuerunner_args)?;
        }
        Ok(())
    }

    /// The low-latency roles: one process with a QueueRunner and the
    /// Injector, and `--controllers` Controller processes.
    pub fn start_lowlatency_roles(&self, env: &mut Env) -> anyhow::Result<()> {
        if self.opts.controllers == 0 {
            // The recommended deployment: the Controller beside the
            // Injector, which hands it its jobs without gearmand.
            let all = ["workers", "--roles", "queuerunner,injector,controller"];
            let args = format!(
                "{} {}",
                self.opts.queuerunner_args, self.opts.controller_args
            );
            return self.start_garivini(env, "workers", &all, &args);
        }
        let qr_injector = ["workers", "--roles", "queuerunner,injector"];
        self.start_garivini(
            env,
            "queuerunner_injector",
            &qr_injector,
            &self.opts.queuerunner_args,
        )?;
        for i in 0..self.opts.controllers {
            let name = format!("controller{i}");
            self.start_garivini(env, &name, &["controller"], &self.opts.controller_args)?;
        }
        Ok(())
    }

    /// Waits until `func` has at least `min` worker connections.
    pub async fn wait_workers(&self, env: &mut Env, func: &str, min: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            env.check()?;
            let load = tokio::time::timeout(STATUS_LIMIT, env.gearmand.load(func))
                .await
                .map_err(|_| anyhow!("gearmand {}: no answer to status", env.addr()))??;
            if load.workers >= min {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no {min} worker(s) for {func} within {STARTUP:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded, best effort) until every QueueRunner logged its start.
    pub async fn wait_queuerunners(&self, env: &mut Env) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            env.check()?;
            let started = env
                .procs
                .iter()
                .filter(|p| p.name.starts_with("queuerunner"))
                .all(|p| p.log().contains("queuerunner started"));
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

    /// Starts measuring the CPU of the phase's processes over `jobs` jobs
    /// (after half a second measuring what MariaDB does without them, when
    /// `db`). `in_process`: the client and worker are gv_bench's own.
    pub async fn meter(&self, env: &Env, jobs: u64, db: bool, in_process: bool) -> Meter {
        let mariadbd = self.mariadbd.filter(|_| db);
        let before = match mariadbd {
            Some(pid) => cpu::busy_ms_per_s(pid, Duration::from_millis(500)).await,
            None => None,
        };
        let threads = match (mariadbd, &env.db) {
            (Some(pid), Some(db)) => Some(self.watch_db_threads(pid, db.name.clone())),
            _ => None,
        };
        Meter::start(jobs, &env.pids(), mariadbd, before, threads, in_process)
    }

    /// The MariaDB server's threads serving connections to `db`, polled
    /// every 100 ms (PROCESSLIST's TID) until the answer is dropped.
    fn watch_db_threads(&self, pid: u32, db: String) -> DbThreads {
        let stop = tokio_util::sync::CancellationToken::new();
        let threads = DbThreads::new(pid, stop.clone().drop_guard());
        let (seen, pool) = (threads.seen.clone(), self.pool.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(mut conn) = pool.get_conn().await {
                    let tids: Vec<u64> = conn
                        .exec(
                            "SELECT TID FROM information_schema.PROCESSLIST WHERE DB = ?",
                            (db.as_str(),),
                        )
                        .await
                        .unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .extend(tids.into_iter().map(|t| t as u32));
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        threads
    }

    /// Waits until `proc` exits successfully, the services staying up;
    /// answers its CPU time, read before it was reaped.
    pub async fn wait_exit(
        &self,
        env: &mut Env,
        proc: &mut Proc,
        limit: Duration,
    ) -> anyhow::Result<Final> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        loop {
            if reap(proc, &mut last)? {
                return Ok(Final {
                    name: proc.name.clone(),
                    ns: last,
                });
            }
            env.check()?;
            if Instant::now() > deadline {
                bail!("{} did not finish within {}", proc.name, secs(limit));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `inject` (if any) has exited successfully and the job
    /// table is empty; returns when that was seen, and `inject`'s CPU time
    /// (read before it was reaped).
    pub async fn wait_done(
        &self,
        env: &mut Env,
        mut inject: Option<&mut Proc>,
    ) -> anyhow::Result<(Instant, Option<Final>)> {
        let limit = self.opts.timeout();
        let deadline = Instant::now() + limit;
        let mut last = None;
        let mut done = None;
        loop {
            env.check()?;
            let injected = match inject.as_deref_mut() {
                Some(p) if done.is_none() => {
                    if reap(p, &mut last)? {
                        done = Some(Final {
                            name: p.name.clone(),
                            ns: last,
                        });
                    }
                    done.is_some()
                }
                _ => true,
            };
            if injected && self.is_empty(env.db(), "job").await? {
                return Ok((Instant::now(), done));
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

    /// Waits until gearmand -q mysql's table is empty.
    pub async fn wait_queue_table_empty(&self, env: &mut Env) -> anyhow::Result<()> {
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
}

/// `proc.exited()`, reading its CPU time first: once it is a zombie, the
/// time is final, and reaping it would lose it. While it runs, it is not
/// reaped (so no exit between the read and the reaping goes uncounted).
fn reap(proc: &mut Proc, cpu_ns: &mut Option<u64>) -> anyhow::Result<bool> {
    let pid = proc.pid();
    if cpu::is_zombie(pid) {
        *cpu_ns = cpu::process_ns(pid).or(*cpu_ns);
        return proc.exited();
    }
    match cpu::process_ns(pid) {
        // Running.
        Some(ns) => {
            *cpu_ns = Some(ns);
            Ok(false)
        }
        // Gone (or unreadable): whatever was read last.
        None => proc.exited(),
    }
}

/// The pid of the MySQL server `opts` names, when it runs here: from its
/// `pid_file`, checked against /proc; None (and a warning) otherwise.
async fn find_mariadbd(pool: &mysql_async::Pool, opts: &mysql_async::Opts) -> Option<u32> {
    let host = opts.ip_or_hostname();
    if !["127.0.0.1", "localhost", "::1"].contains(&host) {
        eprintln!("gv_bench: MySQL on {host}, not here: its CPU is not measured");
        return None;
    }
    let file: Option<String> = match pool.get_conn().await {
        Ok(mut conn) => conn.query_first("SELECT @@pid_file").await.ok().flatten(),
        Err(_) => None,
    };
    let pid = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&pid| {
            cpu::comm(pid).is_some_and(|c| c.contains("mariadbd") || c.contains("mysqld"))
        });
    if pid.is_none() {
        eprintln!("gv_bench: the MySQL server's pid_file names no running mariadbd or mysqld here: its CPU is not measured");
    }
    pid
}

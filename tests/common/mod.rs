//! Fixtures for integration tests: a fresh database per test on the real
//! MariaDB, a private gearmand per test on a free port, our binaries as
//! child processes; all cleaned up on drop. Every wait is bounded.
//!
//! Needs the services of `scripts/services up` (its `target/services/env`
//! is read when the variables are not set). A missing service fails the
//! test with a message saying so; nothing is skipped.

#![allow(dead_code)] // each test file uses its own part of this file

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use garivini::config::{parse_dsn_list, DbConfig};
use garivini::Store;
use mysql_async::prelude::Queryable;

/// The MariaDB server URL (no database): `GARIVINI_TEST_MYSQL`, or the one
/// `scripts/services up` wrote, or the default local server.
pub fn server_url() -> String {
    if let Ok(url) = std::env::var("GARIVINI_TEST_MYSQL") {
        return url;
    }
    let env_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/services/env");
    if let Ok(text) = std::fs::read_to_string(env_file) {
        for line in text.lines() {
            if let Some(url) = line.strip_prefix("export GARIVINI_TEST_MYSQL=") {
                return url.trim().to_string();
            }
        }
    }
    "mysql://root@127.0.0.1:3306".to_string()
}

/// Waits until `check` returns true, polling; panics with `what` after
/// `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits `fut`, panicking with `what` after `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// The original Perl Garivini's job table, as its schema defines it: `flag`
/// nullable, no charset given (the server's default applies), none of
/// our indexes. Append a table option (` DEFAULT CHARSET=latin1`) to
/// stand for an older server's default.
pub const ORIGINAL_SCHEMA: &str = "CREATE TABLE job (
    jobid      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    funcname   VARCHAR(200) NOT NULL,
    arg        MEDIUMBLOB,
    uniqkey    VARCHAR(255) NULL,
    run_after  INT UNSIGNED NOT NULL,
    `coalesce` VARCHAR(255) NULL,
    flag       ENUM('controller','shim') DEFAULT 'shim',
    failcount  TINYINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (jobid),
    INDEX (run_after),
    UNIQUE (funcname, uniqkey)
) ENGINE=InnoDB";

/// The original Perl client's `insert_job` statement (see
/// [`TestDb::perl_insert_job`]).
pub const PERL_INSERT_JOB: &str = "INSERT IGNORE INTO job (funcname, run_after, uniqkey, coalesce, arg, flag) VALUES (?, ?, ?, ?, ?, ?)";

/// A database of its own with the job table, dropped on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pool: mysql_async::Pool,
}

impl TestDb {
    /// A database with the job table of schema.sql.
    pub async fn new() -> TestDb {
        let schema = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.sql"))
            .expect("schema.sql");
        TestDb::with_schema(&schema).await
    }

    /// A database whose tables `schema` (one or more statements) creates:
    /// the original Perl Garivini's table, say.
    pub async fn with_schema(schema: &str) -> TestDb {
        let server = server_url();
        let name = format!("gv_test_{:016x}", rand::random::<u64>());
        let admin = mysql_async::Pool::new(server.as_str());
        let schema = schema.to_string();
        let setup = async {
            let mut conn = admin.get_conn().await?;
            conn.query_drop(format!("CREATE DATABASE {name}")).await?;
            conn.query_drop(format!("USE {name}")).await?;
            conn.query_drop(schema).await?;
            mysql_async::Result::Ok(())
        };
        within(Duration::from_secs(20), "creating the test database", setup)
            .await
            .unwrap_or_else(|e| {
                panic!("MariaDB at {server} is not usable ({e}); run scripts/services up")
            });
        let _ = admin.disconnect().await;
        let url = format!("{}/{name}", server.trim_end_matches('/'));
        let pool = mysql_async::Pool::new(url.as_str());
        TestDb { name, url, pool }
    }

    pub fn config(&self, dbid: u32) -> DbConfig {
        DbConfig {
            dbid,
            url: self.url.clone(),
        }
    }

    /// A store on this one database (id 1).
    pub async fn store(&self) -> Arc<Store> {
        Arc::new(
            Store::connect(parse_dsn_list(&self.url).unwrap())
                .await
                .expect("store connects"),
        )
    }

    pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> Vec<T> {
        let mut conn = self.pool.get_conn().await.expect("test connection");
        conn.query(sql).await.expect(sql)
    }

    /// A connection of the test's own, for statements with parameters.
    pub async fn conn(&self) -> mysql_async::Conn {
        self.pool.get_conn().await.expect("test connection")
    }

    /// The original Perl client's `insert_job`, exactly: DBI binds
    /// `run_after` as the string 'UNIX_TIMESTAMP() + 0' (which MySQL turns
    /// into 0) and `flag` as NULL unless the caller passes one. Returns
    /// the row's id (0 when INSERT IGNORE stored nothing).
    pub async fn perl_insert_job(&self, funcname: &str, arg: &str, uniqkey: Option<&str>) -> u64 {
        let insert = async {
            let mut conn = self.conn().await;
            conn.exec_drop(
                PERL_INSERT_JOB,
                (
                    funcname,
                    "UNIX_TIMESTAMP() + 0",
                    uniqkey,
                    None::<String>,
                    arg,
                    None::<String>,
                ),
            )
            .await
            .expect("the original client's INSERT IGNORE");
            conn.last_insert_id().unwrap_or_default()
        };
        within(
            Duration::from_secs(20),
            "the original client's INSERT IGNORE",
            insert,
        )
        .await
    }

    pub async fn exec(&self, sql: &str) {
        let mut conn = self.pool.get_conn().await.expect("test connection");
        conn.query_drop(sql).await.expect(sql)
    }

    pub async fn count(&self, condition: &str) -> u64 {
        self.query::<u64>(&format!("SELECT COUNT(*) FROM job WHERE {condition}"))
            .await[0]
    }

    /// (dbid 1, jobid) of every row: the jobs that were committed.
    pub async fn jobids(&self) -> std::collections::HashSet<(u32, u64)> {
        self.query::<u64>("SELECT jobid FROM job")
            .await
            .into_iter()
            .map(|id| (1, id))
            .collect()
    }

    pub async fn now(&self) -> u32 {
        self.query::<u32>("SELECT UNIX_TIMESTAMP()").await[0]
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        cleanup_sql(format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

/// Runs one statement on the server, from a `Drop`, ignoring failure: a
/// fixture's cleanup. Drop runs outside any runtime we may block, so this
/// uses a thread and a runtime of its own.
pub fn cleanup_sql(sql: String) {
    let server = server_url();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Bounded like every wait: a cleanup stuck behind another session's
        // lock must not hang the suite (what it leaves is named).
        let what = sql.clone();
        // The timeout is made inside the runtime: made outside, its timer
        // finds no reactor and the thread panics before any cleanup.
        let done = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                let pool = mysql_async::Pool::new(server.as_str());
                if let Ok(mut conn) = pool.get_conn().await {
                    let _ = conn.query_drop(sql).await;
                }
                let _ = pool.disconnect().await;
            })
            .await
        });
        if done.is_err() {
            eprintln!("cleanup gave up after 30 s: {what}");
        }
    })
    .join();
}

/// The `DBID JOBID` lines that `gv_consume --record` wrote, in order (a job
/// run twice appears twice).
pub fn recorded_runs(path: &std::path::Path) -> Vec<(u32, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut p = l.split_whitespace();
            let mut field = || p.next().expect("two fields").parse().expect("a number");
            (field() as u32, field())
        })
        .collect()
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gearmand_binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
    {
        let p = PathBuf::from(dir).join("gearmand");
        if p.exists() {
            return p;
        }
    }
    panic!("gearmand is not installed; run scripts/services up (it installs gearman-job-server)");
}

/// A private gearmand on a free port, killed on drop.
pub struct Gearmand {
    pub addr: String,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Gearmand {
    pub fn start() -> Gearmand {
        let port = free_port();
        let mut g = Gearmand {
            addr: format!("127.0.0.1:{port}"),
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        g.restart();
        g
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "gearmand already running");
        let dir = self.dir.path();
        let child = Command::new(gearmand_binary())
            .arg("--config-file=/dev/null")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg(format!("--log-file={}", dir.join("gearmand.log").display()))
            .arg(format!("--pid-file={}", dir.join("gearmand.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gearmand starts");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "gearmand did not listen on {} within 10 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): its memory queue is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Workers registered for `function`, from the admin `status`.
    pub async fn workers(&self, function: &str) -> u64 {
        let (load, errors) =
            garivini::gearman::function_status(std::slice::from_ref(&self.addr)).await;
        assert!(errors.is_empty(), "gearmand status: {errors:?}");
        load.get(function).map_or(0, |l| l.workers)
    }

    /// Waits until `function` has a worker registered.
    pub async fn wait_for_worker(&self, function: &str) {
        wait_until(
            Duration::from_secs(10),
            &format!("a worker for {function}"),
            || async { self.workers(function).await > 0 },
        )
        .await;
    }

    /// Jobs queued or running per function, from the admin `status`.
    pub async fn depth(&self, function: &str) -> u64 {
        let (depths, errors) =
            garivini::gearman::queue_depths(std::slice::from_ref(&self.addr)).await;
        assert!(errors.is_empty(), "gearmand status: {errors:?}");
        depths.get(function).copied().unwrap_or(0)
    }
}

impl Drop for Gearmand {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One of our binaries as a child process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

/// A command for one of our binaries, with the GARIVINI_* variables of the
/// caller's environment removed so that only what the test passes counts.
pub fn bin(name: &str) -> Command {
    let path = match name {
        "garivini" => env!("CARGO_BIN_EXE_garivini"),
        "gv_inject" => env!("CARGO_BIN_EXE_gv_inject"),
        "gv_consume" => env!("CARGO_BIN_EXE_gv_consume"),
        other => panic!("no binary {other}"),
    };
    let mut cmd = Command::new(path);
    cmd.env_remove("GARIVINI_DSN")
        .env_remove("GARIVINI_GEARMAND")
        .env("RUST_LOG", "warn");
    cmd
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let child = bin(name)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
        }
    }

    /// Like `spawn`, with stderr (the log) appended to the file `log`.
    pub fn spawn_logged(name: &str, args: &[&str], log: &std::path::Path) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", log.display()));
        let child = bin(name)
            .args(args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
        }
    }

    /// Whether it is still running (false once it has exited).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Takes charge of a child process of any program: killed on drop, so
    /// that a failing test leaves nothing running.
    pub fn adopt(name: &str, child: Child) -> Proc {
        Proc {
            name: name.to_string(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit; returns its status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("{} did not exit within {limit:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a binary to completion (bounded) and returns (status, stdout, stderr).
pub fn run_bin(
    name: &str,
    args: &[&str],
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut cmd = bin(name);
    cmd.args(args);
    run_command(cmd, limit)
}

/// Runs a prepared command to completion (bounded) and returns (status,
/// stdout, stderr).
pub fn run_command(
    mut cmd: Command,
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    // Read both pipes while waiting, so that a chatty child (RUST_LOG=trace)
    // never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    )
}

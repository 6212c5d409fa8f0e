//! Database faults tried as an operator would, every run counted by job id:
//! the database cut mid-run with slow workers (completions kept, no job run
//! twice), a Controller's awaited completions and failed runs while it is
//! away (kept, flushed once it is back), a server at `max_connections` (an
//! outage, not failed jobs; `?pool_max=` honoured), a shard down or hung at
//! start-up (roles start on the other and take it up when it answers;
//! keyed inserts to it fail fast), a shard without the job table (a
//! start-up error). Needs `scripts/services up` (MariaDB on 127.0.0.1:3306,
//! gearmand) and `mariadbd` (in /usr/sbin or on PATH) for a private server
//! of its own: the shared MariaDB is never stopped or reconfigured, faults
//! go through TCP proxies. About 20 s.
//!
//! Each fault run appends one row to `target/faults-report.txt`, as the
//! fault suite's do.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use garivini::config::DbConfig;
use garivini::{Client, Error, NewJob, Store};
use mysql_async::prelude::Queryable;
use testkit::{
    check_runs, free_port, host_port, recorded_runs, via, wait_until, within, DbProxy, FaultRow,
    Gearmand, Proc, TestDb,
};

const FUNC: &str = "db_fault_job";
/// How long a run may take to drain once its fault is over.
const DRAIN: Duration = Duration::from_secs(40);
/// Warnings one process may log for one outage: the store's, and its
/// role's own (the QueueRunner's "cannot claim", say).
const MAX_WARNINGS: usize = 2;

/// A database with the job table and a trigger that copies each inserted
/// jobid into `committed` in the same transaction: the jobs the database
/// committed, counted by the database itself.
async fn counted_db(server: &str) -> TestDb {
    let db = TestDb::create(server, "gv_dbfault", Some(testkit::SCHEMA))
        .await
        .unwrap_or_else(|e| {
            panic!("MariaDB at {server} is not usable ({e:#}); run scripts/services up")
        });
    db.count_commits().await;
    db
}

/// Stores `n` jobs of FUNC, due now, straight into `db` (no proxy).
async fn preload(db: &TestDb, n: usize) {
    let client = Client::new(db.store().await);
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new(FUNC, format!("job {i}")))
        .collect();
    within(
        Duration::from_secs(20),
        "storing the jobs",
        client.insert_jobs(&jobs),
    )
    .await
    .expect("the jobs are stored");
}

/// Warnings in a process's log.
fn warnings(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_string)
        .collect()
}

/// Processes of a run, each logging to a file of its own in `dir`.
struct Procs {
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    logs: Vec<(String, PathBuf)>,
}

impl Procs {
    fn new() -> Procs {
        Procs {
            dir: tempfile::tempdir().unwrap(),
            procs: Vec::new(),
            logs: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self, what: &str, bin: &str, args: &[&str]) {
        let log = self.path(&format!("{what}.log"));
        self.procs.push(Proc::spawn_logged(bin, args, &log));
        self.logs.push((what.to_string(), log));
    }

    /// A `garivini queuerunner` on `dsn` with quick rounds.
    fn queuerunner(&mut self, dsn: &str, gearmand: &Gearmand, extra: &[&str]) {
        let mut args = vec![
            "queuerunner",
            "--dsn",
            dsn,
            "--gearmand",
            gearmand.addr.as_str(),
            "--batch-run-sleep",
            "0.2",
            "--submit-retry-delay",
            "1",
        ];
        args.extend(extra);
        self.spawn("queuerunner", "garivini", &args);
    }

    /// A throughput-mode `gv_consume` on `dsn` recording its runs.
    fn consumer(&mut self, dsn: &str, gearmand: &Gearmand, concurrency: &str, work_ms: &str) {
        let record = self.path("runs.log");
        let args = [
            "--dsn",
            dsn,
            "--gearmand",
            gearmand.addr.as_str(),
            "--mode",
            "throughput",
            "--funcname",
            FUNC,
            "--concurrency",
            concurrency,
            "--work-ms",
            work_ms,
            "--record",
            record.to_str().unwrap(),
        ];
        self.spawn("gv_consume", "gv_consume", &args);
    }

    /// A throughput-mode `gv_inject` on `dsn` recording what it was told
    /// was stored, going on after failures.
    fn injector(&mut self, dsn: &str, gearmand: &Gearmand, count: &str, rest: &[&str]) {
        let acked = self.path("acked.log");
        let mut args = vec![
            "--dsn",
            dsn,
            "--gearmand",
            gearmand.addr.as_str(),
            "--mode",
            "throughput",
            "--funcname",
            FUNC,
            "--count",
            count,
            "--keep-going",
            "--record",
            acked.to_str().unwrap(),
        ];
        args.extend(rest);
        self.spawn("gv_inject", "gv_inject", &args);
    }

    fn runs(&self) -> Vec<(u32, u64)> {
        recorded_runs(&self.path("runs.log"))
    }

    fn acked(&self) -> HashSet<(u32, u64)> {
        recorded_runs(&self.path("acked.log")).into_iter().collect()
    }

    /// The proc named `what`.
    fn get(&mut self, what: &str) -> &mut Proc {
        let i = self
            .logs
            .iter()
            .position(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("no {what}"));
        &mut self.procs[i]
    }

    /// Waits for `what` to exit 0; its log.
    async fn wait_exit(&mut self, what: &str, limit: Duration) -> String {
        let log = self.log(what);
        let proc = self.get(what);
        within(limit, &format!("{what} to finish"), async {
            loop {
                match proc.exited() {
                    Ok(true) => return,
                    Ok(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await;
        log
    }

    fn log(&self, what: &str) -> String {
        let (_, path) = self.logs.iter().find(|(w, _)| w == what).unwrap();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Asserts every process still runs (but `except`) and logged at most
    /// `max` warnings; returns the most any logged.
    fn check(&mut self, max: usize, except: &[&str]) -> usize {
        let mut most = 0;
        for (i, (what, log)) in self.logs.iter().enumerate() {
            let warned = warnings(log);
            assert!(
                warned.len() <= max,
                "{what} logged {} warnings for one outage:\n{}",
                warned.len(),
                warned.join("\n")
            );
            most = most.max(warned.len());
            if !except.contains(&what.as_str()) {
                self.procs[i].check_running().unwrap();
            }
        }
        most
    }

    fn keep_if_asked(self) {
        if std::env::var_os("GARIVINI_FAULTS_KEEP").is_some() {
            eprintln!("logs kept in {}", self.dir.keep().display());
        }
    }
}

/// One row of the fault table (target/faults-report.txt).
fn report(
    fault: &str,
    in_flight: u64,
    acked: usize,
    committed: usize,
    runs: usize,
    dups: usize,
    drained: Duration,
) {
    FaultRow {
        mode: "throughput",
        fault,
        in_flight,
        acked,
        committed,
        runs,
        duplicates: dups,
        drained,
    }
    .write();
}

/// gv_inject's summary lines: how many it stored, how many failed.
fn summary_of(log: &str) -> String {
    log.lines()
        .filter(|l| l.starts_with("inserted ") || l.contains("jobs failed"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `db`'s job table is empty.
async fn drain(db: &TestDb, what: &str) {
    wait_until(DRAIN, &format!("the table to drain: {what}"), || async {
        db.count("1").await == 0
    })
    .await;
}

// (a) ---------------------------------------------------------------------

/// The database goes away for 6 s while slow workers hold jobs: the
/// completions they make meanwhile are kept and written once it is back,
/// inside the lease, so no job runs twice (before: each one was dropped
/// and its job ran again after the lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_made_while_the_database_is_away_are_kept_not_dropped() {
    const JOBS: usize = 600;
    let db = counted_db(&testkit::server_url()).await;
    preload(&db, JOBS).await;
    let gearmand = Gearmand::start().await;
    let proxy = DbProxy::start(host_port(&db.url), false).await;
    let dsn = via(&db.url, &proxy.addr);
    let mut procs = Procs::new();
    // A lease longer than the outage plus the retry: a kept completion
    // commits before the job is due again.
    procs.queuerunner(
        &dsn,
        &gearmand,
        &["--lease", "12", "--queue-watermark-depth", "40"],
    );
    // 32 at a time, 200 ms each: many jobs in hand at the cut.
    procs.consumer(&dsn, &gearmand, "32", "200");
    wait_until(DRAIN, "a quarter of the jobs to run", || async {
        procs.runs().len() >= JOBS / 4
    })
    .await;
    let in_flight = db.count("1").await;
    // Jobs running or queued in gearmand: their completions fall in the
    // outage.
    let queued = gearmand.depth(FUNC).await;
    let at = Instant::now();
    proxy.cut().await;
    let before = procs.runs().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = procs.runs().len() - before;
    proxy.restore();
    let restored = Instant::now();
    let stalled = procs.runs().len();
    wait_until(
        DRAIN,
        "jobs to run again once the database is back",
        || async { procs.runs().len() > stalled },
    )
    .await;
    let resumed = restored.elapsed();
    drain(&db, "after a 6 s outage").await;
    let drained = at.elapsed();
    // A dropped completion would have kept its row (and the table from
    // draining) until the lease ran out and the job ran again; this is
    // only for the last lines of the run log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warned = procs.check(MAX_WARNINGS, &[]);
    let committed = db.committed(1).await;
    let runs = procs.runs();
    let (n, dups) = check_runs("database away 6 s", None, &committed, &runs);
    eprintln!(
        "database away 6 s: {in_flight} rows in flight at the cut, {queued} running or queued in gearmand, \
         {during} jobs started during the outage, dispatch resumed {resumed:.1?} after its return, {n} runs of {} jobs, {dups} duplicates, drained {drained:.1?} after the cut, \
         at most {warned} warnings per process",
        committed.len()
    );
    report(
        "database away 6 s, slow workers, lease 12",
        in_flight,
        JOBS,
        committed.len(),
        n,
        dups,
        drained,
    );
    assert!(
        queued > 0,
        "no job was in hand at the cut: the outage tested nothing"
    );
    assert_eq!(
        dups, 0,
        "jobs ran twice after a database outage shorter than the lease"
    );
    procs.keep_if_asked();
}

// (b) ---------------------------------------------------------------------

/// A MariaDB server of the test's own, on a free port, killed on drop.
struct PrivateServer {
    /// `mysql://root@127.0.0.1:PORT` (no database).
    url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl PrivateServer {
    /// Starts `mariadbd` with `--max-connections=max_connections`, no
    /// grant tables (any user is root), returns once it answers.
    async fn start(max_connections: u32) -> PrivateServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let port = free_port();
        let program = ["/usr/sbin/mariadbd", "/usr/local/sbin/mariadbd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mariadbd");
        let mut cmd = testkit::command(program);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--max-connections={max_connections}"))
            .args([
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=8M",
            ])
            .arg(format!(
                "--log-error={}",
                dir.path().join("err.log").display()
            ));
        // mariadbd refuses to run as root unless told which user to be.
        if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            cmd.arg("--user=root");
        }
        let out = dir.path().join("out.log");
        let proc = Proc::start_logged("mariadbd", cmd, &out, &dir.path().join("stderr.log"))
            .unwrap_or_else(|e| panic!("mariadbd starts ({e:#}); is MariaDB installed?"));
        let url = format!("mysql://root@127.0.0.1:{port}");
        let started = Instant::now();
        let pool = mysql_async::Pool::new(format!("{url}?prefer_socket=false").as_str());
        wait_until(
            Duration::from_secs(30),
            "the private mariadbd to answer",
            || async { pool.get_conn().await.is_ok() },
        )
        .await;
        let _ = pool.disconnect().await;
        eprintln!("private mariadbd answered after {:.1?}", started.elapsed());
        PrivateServer {
            url,
            _proc: proc,
            _dir: dir,
        }
    }

    /// A status variable's value.
    async fn status(&self, conn: &mut mysql_async::Conn, name: &str) -> u64 {
        let row: Option<(String, String)> = conn
            .query_first(format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .await
            .unwrap();
        row.map_or(0, |(_, v)| v.parse().unwrap_or(0))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Connections the server has open for `user`.
async fn connections_of(conn: &mut mysql_async::Conn, user: &str) -> u64 {
    conn.exec_first(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?",
        (user,),
    )
    .await
    .unwrap()
    .unwrap_or(0)
}

/// A server at `max_connections=20` (21 with the superuser's spare), 12
/// of them held by the test: the roles, which would open up to 32 each,
/// meet ERROR 1040. That is an outage of the database, not of the jobs:
/// no job runs twice, every job stored runs, each process warns at most
/// once per outage and keeps running. Then `?pool_max=4` keeps a process
/// within 4 connections under 40 concurrent inserts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_max_connections_is_an_outage_and_pool_max_is_honoured() {
    let server = PrivateServer::start(20).await;
    let db = counted_db(&server.url).await;
    let gearmand = Gearmand::start().await;
    let dsn = format!("{}?prefer_socket=false", db.url);
    let admin = mysql_async::Pool::new(format!("{}?prefer_socket=false", server.url).as_str());
    let mut monitor = admin.get_conn().await.unwrap();

    let mut procs = Procs::new();
    procs.queuerunner(&dsn, &gearmand, &["--lease", "30"]);
    procs.consumer(&dsn, &gearmand, "32", "5");
    gearmand.wait_for_worker(FUNC).await;
    // Hold 12 connections: 8 (with the spare, 9) are left for the roles.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(admin.get_conn().await.expect("a connection to hold"));
    }
    let refused_before = server
        .status(&mut monitor, "Connection_errors_max_connections")
        .await;
    procs.injector(&dsn, &gearmand, "3000", &["--concurrency", "24"]);
    let inject_log = procs.wait_exit("gv_inject", Duration::from_secs(40)).await;
    let refused = server
        .status(&mut monitor, "Connection_errors_max_connections")
        .await
        - refused_before;
    drop(held);
    let at = Instant::now();
    drain(&db, "at max_connections").await;
    let drained = at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warned = procs.check(MAX_WARNINGS, &["gv_inject"]);
    let committed = db.committed(1).await;
    let acked = procs.acked();
    let runs = procs.runs();
    let (n, dups) = check_runs("max_connections", Some(&acked), &committed, &runs);
    let summary = summary_of(&procs.log("gv_inject"));
    eprintln!(
        "max_connections=20, 12 held: {refused} connections refused (ERROR 1040), {} acked of 3000, \
         {} committed, {n} runs, {dups} duplicates, at most {warned} warnings per process; gv_inject: {}",
        acked.len(),
        committed.len(),
        summary.trim().replace('\n', " / ")
    );
    report(
        "max_connections=20 (12 held), pools of 32",
        0,
        acked.len(),
        committed.len(),
        n,
        dups,
        drained,
    );
    assert!(
        refused > 0,
        "no connection was refused: the fault tested nothing\n{inject_log}"
    );
    assert_eq!(
        dups, 0,
        "jobs ran twice while the server refused connections"
    );
    assert!(
        acked.len() >= 1500,
        "only {} of 3000 jobs were stored",
        acked.len()
    );
    drop(procs);

    // The same server, one process with ?pool_max=4: 40 inserts at once
    // wait for one of its 4 connections instead of opening more.
    // Its own user name (any is root here), to count its connections apart.
    let cfg = DbConfig {
        dbid: 1,
        url: format!(
            "{}?prefer_socket=false&pool_max=4",
            db.url.replacen("root@", "pool_probe@", 1)
        ),
    };
    let store = Arc::new(
        within(
            Duration::from_secs(10),
            "connect",
            Store::connect(vec![cfg]),
        )
        .await
        .expect("the store connects"),
    );
    let client = Client::new(store.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..40 {
        let (client, stop) = (client.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut stored = 0;
            while !stop.load(Ordering::Relaxed) {
                client
                    .insert_job(NewJob::new("pool_probe", format!("{t}")))
                    .await
                    .expect("an insert within the pool");
                stored += 1;
            }
            stored
        }));
    }
    let mut most = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(2) {
        most = most.max(connections_of(&mut monitor, "pool_probe").await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut stored = 0;
    for task in tasks {
        stored += within(Duration::from_secs(10), "an insert task", task)
            .await
            .unwrap();
    }
    eprintln!("pool_max=4: {stored} inserts from 40 tasks in 2 s, at most {most} connections open");
    assert!(stored > 40, "the inserts made no progress: {stored}");
    assert!(most <= 4, "{most} connections open with pool_max=4");
    assert!(most > 0, "the sampling saw no connection at all");
    drop(monitor);
    let _ = admin.disconnect().await;
}

// (c) ---------------------------------------------------------------------

/// The FNV-1a hash the store shards keyed jobs by (stable by contract):
/// the database id a (funcname, uniqkey) goes to among `n`.
fn shard_of(funcname: &str, uniqkey: &str, n: u64) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in funcname.bytes().chain([0]).chain(uniqkey.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % n) as u32 + 1
}

/// Two shards, the second down (a proxy that closes every connection)
/// when the QueueRunner, the worker and the client start: they start on
/// the first, store and run jobs there, a keyed insert for the second
/// fails at once naming it, and once it answers every process takes it
/// up without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_start_with_a_shard_down_and_take_it_up_when_it_answers() {
    let server = testkit::server_url();
    let (a, b) = (counted_db(&server).await, counted_db(&server).await);
    let gearmand = Gearmand::start().await;
    let proxy = DbProxy::start(host_port(&b.url), true).await;
    let dsn = format!("{},{}", a.url, via(&b.url, &proxy.addr));
    let mut procs = Procs::new();
    let started = Instant::now();
    procs.queuerunner(&dsn, &gearmand, &["--lease", "30"]);
    procs.consumer(&dsn, &gearmand, "8", "2");
    gearmand.wait_for_worker(FUNC).await;
    let worker_up = started.elapsed();
    procs.injector(
        &dsn,
        &gearmand,
        "1500",
        &["--rate", "300", "--concurrency", "4"],
    );
    wait_until(
        Duration::from_secs(10),
        "jobs to run on the first shard",
        || async { procs.runs().len() >= 100 },
    )
    .await;

    // A client of our own, started the same way, and a keyed insert whose
    // key hashes to the shard that is down.
    let store = within(
        Duration::from_secs(10),
        "connect with a shard down",
        Store::connect(garivini::config::parse_dsn_list(&dsn).unwrap()),
    )
    .await
    .expect("a store starts with one shard down");
    assert!(store.is_down(2) && !store.is_down(1));
    let client = Client::new(Arc::new(store));
    let key = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| shard_of(FUNC, k, 2) == 2)
        .unwrap();
    let tried = Instant::now();
    let err = within(
        Duration::from_secs(15),
        "a keyed insert to the shard that is down",
        client.insert_job(NewJob::new(FUNC, "keyed").unique(&key)),
    )
    .await
    .expect_err("no success without a committed row");
    let keyed_took = tried.elapsed();
    let message = err.to_string();
    assert!(matches!(err, Error::DbDown { dbid: 2, .. }), "{message}");
    assert!(err.is_connection_fault());
    assert!(message.starts_with("database 2 ("), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(
        keyed_took < Duration::from_millis(500),
        "took {keyed_took:?}: {message}"
    );

    let in_b_before = b.count("1").await + b.committed(2).await.len() as u64;
    assert_eq!(
        in_b_before, 0,
        "nothing can be stored on the shard that is down"
    );
    proxy.restore();
    let restored = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the client to store jobs on the second shard",
        || async { !b.committed(2).await.is_empty() },
    )
    .await;
    let taken_up = restored.elapsed();
    wait_until(
        Duration::from_secs(10),
        "jobs of the second shard to run",
        || async { procs.runs().iter().any(|r| r.0 == 2) },
    )
    .await;
    within(
        Duration::from_secs(10),
        "the keyed insert once the shard is back",
        async {
            loop {
                match client
                    .insert_job(NewJob::new(FUNC, "keyed").unique(&key))
                    .await
                {
                    Ok(r) => break assert_eq!(r.dbid, 2),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        },
    )
    .await;

    let inject_log = procs.wait_exit("gv_inject", Duration::from_secs(30)).await;
    let summary = summary_of(&procs.log("gv_inject"));
    let at = Instant::now();
    drain(&a, "shard 1").await;
    drain(&b, "shard 2").await;
    let drained = at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let warned = procs.check(MAX_WARNINGS, &["gv_inject"]);
    let mut all = a.committed(1).await;
    let on_b = b.committed(2).await;
    all.extend(on_b.iter().copied());
    let acked = procs.acked();
    let runs = procs.runs();
    let (n, dups) = check_runs("a shard down at start-up", Some(&acked), &all, &runs);
    eprintln!(
        "shard 2 down at start: worker up after {worker_up:.1?}; keyed insert to it failed in {keyed_took:.1?}: \
         {message}; taken up {taken_up:.1?} after it answered; {} acked, {} committed ({} on shard 2), \
         {n} runs, {dups} duplicates, at most {warned} warnings per process; gv_inject: {}",
        acked.len(),
        all.len(),
        on_b.len(),
        summary.trim().replace('\n', " / ")
    );
    report(
        "shard 2 of 2 down at start-up, then up",
        0,
        acked.len(),
        all.len(),
        n,
        dups,
        drained,
    );
    assert!(
        summary.starts_with("inserted 1500 jobs") && !summary.contains("failed"),
        "keyless inserts must skip the shard that is down: {summary}\n{inject_log}"
    );
    assert_eq!(acked.len(), 1500);
    assert_eq!(dups, 0);
    procs.keep_if_asked();
}

// (d) ---------------------------------------------------------------------

/// A shard that accepts connections and never answers (hung) holds the
/// start-up back only for the grace period; a shard that answers without
/// a job table is a start-up error naming it, not an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_shard_delays_start_up_briefly_and_a_missing_table_fails_it() {
    let a = TestDb::new().await;
    // Accepts, reads nothing, answers nothing.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((conn, _)) = hole.accept().await {
            conns.push(conn);
        }
    });
    let dsn = format!("{},{}", a.url, via(&a.url, &hole_addr));
    let started = Instant::now();
    let store = within(
        Duration::from_secs(15),
        "connect with a hung shard",
        Store::connect(garivini::config::parse_dsn_list(&dsn).unwrap()),
    )
    .await
    .expect("a store starts with one shard hung");
    let took = started.elapsed();
    assert!(store.is_down(2) && !store.is_down(1));
    assert!(
        took < Duration::from_secs(4),
        "start-up took {took:?} with a hung shard"
    );
    let client = Client::new(Arc::new(store));
    let stored = within(
        Duration::from_secs(5),
        "keyless inserts with a hung shard",
        async {
            let mut dbids = Vec::new();
            for _ in 0..20 {
                dbids.push(
                    client
                        .insert_job(NewJob::new(FUNC, "x"))
                        .await
                        .unwrap()
                        .dbid,
                );
            }
            dbids
        },
    )
    .await;
    assert!(stored.iter().all(|&d| d == 1), "{stored:?}");
    eprintln!("a hung shard: start-up took {took:.1?}; 20 keyless inserts all went to shard 1");
    held.abort();

    let no_table = TestDb::create(&testkit::server_url(), "gv_notable", None)
        .await
        .unwrap();
    let dsn = format!("{},{}", a.url, no_table.url);
    let err = within(
        Duration::from_secs(15),
        "connect with a shard lacking the table",
        Store::connect(garivini::config::parse_dsn_list(&dsn).unwrap()),
    )
    .await
    .err()
    .expect("a shard without the job table is a start-up error");
    let text = err.to_string();
    assert!(text.starts_with("database 2 ("), "{text}");
    assert!(!err.is_connection_fault(), "{text}");
}

// (e) ---------------------------------------------------------------------

/// A Controller's way of finishing rows (awaited completions and failed
/// runs) while the database is away: each call fails at once, its change
/// is kept, and `flush_completions` returns once the database is back and
/// every kept change has committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaited_completions_and_reschedules_are_kept_while_the_database_is_away() {
    let db = TestDb::new().await;
    let proxy = DbProxy::start(host_port(&db.url), false).await;
    let store =
        Store::connect(garivini::config::parse_dsn_list(&via(&db.url, &proxy.addr)).unwrap())
            .await
            .expect("the store connects through the proxy");
    let client = Client::new(Arc::new(store));
    let refs = within(
        Duration::from_secs(10),
        "storing two jobs",
        client.insert_jobs(&[NewJob::new(FUNC, "done"), NewJob::new(FUNC, "fails")]),
    )
    .await
    .unwrap();
    let mut jobs = Vec::new();
    for r in &refs {
        jobs.push(
            client
                .store()
                .get(*r)
                .await
                .unwrap()
                .expect("the row is there"),
        );
    }
    let job = |i: usize| &jobs[i];
    proxy.cut().await;
    let started = Instant::now();
    let completed = within(
        Duration::from_secs(15),
        "a completion",
        client.complete_job(job(0)),
    )
    .await;
    let failed = within(
        Duration::from_secs(15),
        "a failed run",
        client.failed_job(job(1)),
    )
    .await;
    let took = started.elapsed();
    let (completed, failed) = (completed.unwrap_err(), failed.unwrap_err());
    assert!(completed.is_connection_fault() && failed.is_connection_fault());
    assert!(completed.to_string().contains("kept"), "{completed}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(client.unwritten(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    let back = Instant::now();
    within(
        Duration::from_secs(10),
        "the kept changes to commit",
        client.flush_completions(),
    )
    .await;
    let flushed = back.elapsed();
    let rows: Vec<(u64, u8, u32)> = db
        .query("SELECT jobid, failcount, CAST(run_after AS SIGNED) - UNIX_TIMESTAMP() FROM job")
        .await;
    eprintln!("kept while away: both calls failed in {took:.1?}; written {flushed:.1?} after the return; rows left {rows:?}");
    assert_eq!(
        rows.len(),
        1,
        "the completed row is gone, the failed one stays: {rows:?}"
    );
    assert_eq!((rows[0].0, rows[0].1), (refs[1].jobid, 1));
    assert!(
        rows[0].2 > 30,
        "the failed job is due after its backoff: {rows:?}"
    );
    assert_eq!(client.unwritten(), 0);
}

//! The fault suite: jobs flow through the real binaries (as separate
//! processes) in each mode while a process is SIGKILLed, gearmand dies, or
//! the database becomes unreachable. Afterwards every job the database
//! committed must have run at least once, and every job a client was told
//! was stored must have been committed.
//!
//! Committed jobs are counted by the database itself: a trigger copies each
//! inserted jobid into a side table in the same transaction, so a row that
//! was committed and then completed is still counted, and a job a client
//! hoped for but never committed is not.
//!
//! Each test appends one row to `target/faults-report.txt`; `scripts/test`
//! prints that table after the suite.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::{
    check_runs, host_port, recorded_runs, via, wait_until, within, DbProxy, FaultRow, Gearmand,
    Proc, TestDb,
};

const FUNC: &str = "fault_job";
/// Lease of the fault runs: short, so that jobs lost with a process come
/// back soon.
const SHORT_LEASE: &str = "3";
/// Lease of the runs without faults: far longer than the run, so a job run
/// twice there would be a real double dispatch.
const LONG_LEASE: &str = "600";
const JOBS: u64 = 1500;
const RATE: &str = "500";
const DRAIN: Duration = Duration::from_secs(120);
/// Warnings one process may log for one outage: its own, and its store's
/// or gearmand client's.
const MAX_WARNINGS: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Throughput,
    LowLatency,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::LowLatency => "lowlatency",
        }
    }
}

/// One of the processes of a flow, with what it takes to start it again.
struct Member {
    what: String,
    bin: &'static str,
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Member {
    fn start(&mut self) {
        assert!(self.proc.is_none(), "{} is already running", self.what);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.proc = Some(Proc::spawn_logged(self.bin, &args, &self.log));
    }
}

/// What a flow runs.
struct Setup {
    mode: Mode,
    lease: &'static str,
    queuerunners: usize,
    controllers: usize,
    workers: usize,
    /// Route every process's database connections through a DbProxy.
    proxy: bool,
}

impl Setup {
    fn new(mode: Mode) -> Setup {
        Setup {
            mode,
            lease: SHORT_LEASE,
            queuerunners: 1,
            controllers: 1,
            workers: 1,
            proxy: false,
        }
    }
}

/// Jobs flowing through real processes: a database with the committed-jobs
/// trigger, a gearmand, the roles of the mode, workers recording what they
/// run, and gv_inject recording what it was told was stored.
struct Flow {
    // Fields drop in order: the processes go before the servers they use.
    members: Vec<Member>,
    inject: Option<Member>,
    mode: Mode,
    db: TestDb,
    gearmand: Gearmand,
    proxy: Option<DbProxy>,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Flow {
    async fn start(setup: Setup) -> Flow {
        let db = TestDb::new().await;
        db.count_commits().await;
        let gearmand = Gearmand::start().await;
        let proxy = match setup.proxy {
            true => Some(DbProxy::start(host_port(&db.url), false).await),
            false => None,
        };
        let dsn = match &proxy {
            Some(p) => via(&db.url, &p.addr),
            None => db.url.clone(),
        };
        let dir = tempfile::tempdir().unwrap();
        let servers = vec![
            "--dsn".to_string(),
            dsn,
            "--gearmand".to_string(),
            gearmand.addr.clone(),
        ];
        let member = |what: String, bin: &'static str, extra: &[&str]| {
            let mut args = servers.clone();
            args.extend(extra.iter().map(|s| s.to_string()));
            Member {
                log: dir.path().join(format!("{what}.log")),
                what,
                bin,
                args,
                proc: None,
            }
        };
        let lease = setup.lease;
        // Fast retries, so that a run recovers within the test's patience.
        let role = ["--lease", lease, "--no-worker-delay", "1"];
        let mut members = Vec::new();
        for i in 0..setup.queuerunners {
            members.push(member(
                format!("queuerunner{i}"),
                "garivini",
                &[
                    &["queuerunner"][..],
                    &role,
                    &["--batch-run-sleep", "0.2", "--submit-retry-delay", "1"],
                ]
                .concat(),
            ));
        }
        if setup.mode == Mode::LowLatency {
            members.push(member(
                "injector".into(),
                "garivini",
                &[&["injector"][..], &role].concat(),
            ));
            for i in 0..setup.controllers {
                members.push(member(
                    format!("controller{i}"),
                    "garivini",
                    &[&["controller"][..], &role, &["--concurrency", "32"]].concat(),
                ));
            }
        }
        let record = dir.path().join("runs.log");
        for i in 0..setup.workers {
            members.push(member(
                format!("worker{i}"),
                "gv_consume",
                &[
                    "--mode",
                    setup.mode.flag(),
                    "--funcname",
                    FUNC,
                    "--concurrency",
                    "8",
                    "--work-ms",
                    "2",
                    "--record",
                    record.to_str().unwrap(),
                ],
            ));
        }
        let acked = dir.path().join("acked.log");
        let inject = member(
            "gv_inject".into(),
            "gv_inject",
            &[
                "--mode",
                setup.mode.flag(),
                "--funcname",
                FUNC,
                "--count",
                &JOBS.to_string(),
                "--rate",
                RATE,
                "--concurrency",
                "8",
                "--keep-going",
                "--record",
                acked.to_str().unwrap(),
            ],
        );
        for m in &mut members {
            m.start();
        }
        let flow = Flow {
            mode: setup.mode,
            db,
            gearmand,
            proxy,
            dir,
            members,
            inject: Some(inject),
            started: Instant::now(),
        };
        flow.gearmand.wait_for_worker(FUNC).await;
        if flow.mode == Mode::LowLatency {
            flow.gearmand
                .wait_for_worker(garivini::names::INJECT_JOBS)
                .await;
        }
        flow
    }

    /// Starts a flow of `setup` and lets a fifth of the jobs run; returns
    /// it with the rows in flight at that moment, and the moment: the fault
    /// goes in now.
    async fn in_full_swing(setup: Setup) -> (Flow, u64, Instant) {
        let mut flow = Flow::start(setup).await;
        flow.inject();
        flow.wait_for_runs(JOBS as usize / 5).await;
        let (in_flight, at) = (flow.in_flight().await, Instant::now());
        (flow, in_flight, at)
    }

    fn member(&mut self, what: &str) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.what == what)
            .unwrap_or_else(|| panic!("no {what} in this flow"))
    }

    /// Starts the client; jobs flow from now on.
    fn inject(&mut self) {
        self.inject.as_mut().unwrap().start();
        self.started = Instant::now();
    }

    fn runs(&self) -> Vec<(u32, u64)> {
        recorded_runs(&self.dir.path().join("runs.log"))
    }

    /// Waits until workers have started `n` jobs: the flow is in full swing.
    async fn wait_for_runs(&self, n: usize) {
        wait_until(DRAIN, &format!("{n} jobs to run"), || async {
            self.runs().len() >= n
        })
        .await;
    }

    /// Rows not yet completed: the jobs a fault now can hurt. A fault that
    /// hits an idle flow proves nothing, so the fault runs assert this.
    async fn in_flight(&self) -> u64 {
        let n = self.db.count("1").await;
        assert!(n > 0, "the flow is idle: the fault would test nothing");
        n
    }

    /// Asserts that an outage was logged once per process, not once per
    /// job or attempt: at most `max` warnings in each process's log.
    fn assert_few_warnings(&self, max: usize) {
        for m in &self.members {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let warnings = log.lines().filter(|l| l.contains("WARN")).count();
            assert!(
                warnings <= max,
                "{} logged {warnings} warnings for one outage:\n{log}",
                m.what
            );
        }
    }

    /// SIGKILLs `what`, as a crash, and starts it again after `pause`.
    async fn crash_and_restart(&mut self, what: &str, pause: Duration) {
        self.member(what).proc.take().expect("running").kill();
        tokio::time::sleep(pause).await;
        self.member(what).start();
    }

    /// Waits for the client to finish and the table to drain, checks that
    /// nothing was lost, and reports the run as one row of the table.
    async fn finish(mut self, fault: &str, fault_at: Instant, in_flight: u64) -> Report {
        let mut inject = self.inject.take().unwrap();
        let client = inject.proc.as_mut().expect("gv_inject was started");
        within(DRAIN, "gv_inject to finish", async {
            while client.running() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let client_log = std::fs::read_to_string(&inject.log).unwrap_or_default();
        let db = &self.db;
        wait_until(
            DRAIN,
            &format!("the table to drain after: {fault}"),
            || async { db.count("1").await == 0 },
        )
        .await;
        let drained = fault_at.elapsed();

        for m in &mut self.members {
            let p = m.proc.as_mut().expect("every member runs at the end");
            assert!(
                p.running(),
                "{} exited during the run; its log:\n{}",
                m.what,
                std::fs::read_to_string(&m.log).unwrap_or_default()
            );
        }

        let committed = self.db.committed(1).await;
        let acked: HashSet<(u32, u64)> = recorded_runs(&self.dir.path().join("acked.log"))
            .into_iter()
            .collect();
        let runs = self.runs();
        let (run_count, duplicates) = check_runs(fault, Some(&acked), &committed, &runs);
        assert!(
            acked.len() as u64 >= JOBS / 2,
            "{fault}: only {} of {JOBS} jobs were acknowledged; gv_inject said:\n{client_log}",
            acked.len()
        );
        let report = Report {
            fault: fault.to_string(),
            mode: self.mode,
            in_flight,
            acked: acked.len(),
            committed: committed.len(),
            runs: run_count,
            duplicates,
            drained,
        };
        report.write();
        if std::env::var_os("GARIVINI_FAULTS_KEEP").is_some() {
            eprintln!("{fault}: logs kept in {}", self.dir.keep().display());
        }
        report
    }
}

/// One row of the fault table.
struct Report {
    fault: String,
    mode: Mode,
    in_flight: u64,
    acked: usize,
    committed: usize,
    runs: usize,
    duplicates: usize,
    drained: Duration,
}

impl Report {
    fn write(&self) {
        FaultRow {
            mode: self.mode.flag(),
            fault: &self.fault,
            in_flight: self.in_flight,
            acked: self.acked,
            committed: self.committed,
            runs: self.runs,
            duplicates: self.duplicates,
            drained: self.drained,
        }
        .write();
    }
}

/// Kills `what` once a fifth of the jobs ran, starts it again half a second
/// later, and checks the run.
async fn crash_mid_run(mode: Mode, what: &str) -> Report {
    let (mut flow, in_flight, at) = Flow::in_full_swing(Setup::new(mode)).await;
    flow.crash_and_restart(what, Duration::from_millis(500))
        .await;
    flow.finish(&format!("SIGKILL {what}, restart"), at, in_flight)
        .await
}

/// SIGTERMs `what` once a fifth of the jobs ran and starts it again, with a
/// lease longer than the test may take: it must exit 0 after finishing what
/// it holds, and no job may be left to wait for its lease.
async fn graceful_stop_mid_run(mode: Mode, what: &str) -> Report {
    let (mut flow, in_flight, at) = Flow::in_full_swing(Setup {
        lease: LONG_LEASE,
        ..Setup::new(mode)
    })
    .await;
    let mut stopped = flow.member(what).proc.take().expect("running");
    let status = stopped.terminate(Duration::from_secs(35)).await;
    assert!(
        status.success(),
        "{what} exited with {status} after SIGTERM"
    );
    flow.member(what).start();
    let report = flow
        .finish(&format!("SIGTERM {what}, restart"), at, in_flight)
        .await;
    assert_eq!(report.duplicates, 0, "a job ran twice while its lease held");
    report
}

async fn gearmand_dies_mid_run(mode: Mode) -> Report {
    let (mut flow, in_flight, at) = Flow::in_full_swing(Setup::new(mode)).await;
    flow.gearmand.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    flow.gearmand.restart().await;
    flow.assert_few_warnings(MAX_WARNINGS);
    flow.finish("SIGKILL gearmand (queue lost), restart", at, in_flight)
        .await
}

async fn database_away_mid_run(mode: Mode) -> Report {
    let (flow, in_flight, at) = Flow::in_full_swing(Setup {
        proxy: true,
        ..Setup::new(mode)
    })
    .await;
    let proxy = flow.proxy.as_ref().unwrap();
    proxy.cut().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();
    flow.assert_few_warnings(MAX_WARNINGS);
    flow.finish("database unreachable 4 s", at, in_flight).await
}

/// No fault, two of each dispatching role, a lease longer than the run:
/// a job run twice would be a double dispatch while its lease held.
async fn two_of_each_while_leases_hold(mode: Mode) -> Report {
    let mut flow = Flow::start(Setup {
        lease: LONG_LEASE,
        queuerunners: 2,
        controllers: 2,
        workers: 2,
        ..Setup::new(mode)
    })
    .await;
    flow.inject();
    let at = Instant::now();
    let what = match mode {
        Mode::Throughput => "two QueueRunners, no fault",
        Mode::LowLatency => "two QueueRunners + two Controllers, no fault",
    };
    let report = flow.finish(what, at, 0).await;
    assert_eq!(
        report.duplicates, 0,
        "{what}: jobs ran twice while their lease held"
    );
    report
}

/// One test per fault run, `name => run;`, each on a runtime of two
/// threads (the processes' pipes and the proxy run beside the checks).
macro_rules! fault_runs {
    ($($name:ident => $run:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $run.await;
            }
        )*
    };
}

fault_runs! {
    throughput_survives_a_killed_queuerunner => crash_mid_run(Mode::Throughput, "queuerunner0");
    throughput_survives_a_killed_worker => crash_mid_run(Mode::Throughput, "worker0");
    throughput_survives_gearmand_dying => gearmand_dies_mid_run(Mode::Throughput);
    throughput_survives_the_database_going_away => database_away_mid_run(Mode::Throughput);
    throughput_two_queuerunners_never_run_a_leased_job_twice => two_of_each_while_leases_hold(Mode::Throughput);
    low_latency_survives_a_killed_injector => crash_mid_run(Mode::LowLatency, "injector");
    low_latency_survives_a_killed_controller => crash_mid_run(Mode::LowLatency, "controller0");
    low_latency_survives_a_killed_worker => crash_mid_run(Mode::LowLatency, "worker0");
    low_latency_survives_gearmand_dying => gearmand_dies_mid_run(Mode::LowLatency);
    low_latency_survives_the_database_going_away => database_away_mid_run(Mode::LowLatency);
    low_latency_two_of_each_never_run_a_leased_job_twice => two_of_each_while_leases_hold(Mode::LowLatency);
    sigterm_to_the_queuerunner_leaves_no_job_waiting_for_a_lease => graceful_stop_mid_run(Mode::Throughput, "queuerunner0");
    sigterm_to_a_throughput_worker_leaves_no_job_waiting_for_a_lease => graceful_stop_mid_run(Mode::Throughput, "worker0");
    sigterm_to_the_injector_leaves_no_job_waiting_for_a_lease => graceful_stop_mid_run(Mode::LowLatency, "injector");
    sigterm_to_the_controller_leaves_no_job_waiting_for_a_lease => graceful_stop_mid_run(Mode::LowLatency, "controller0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fails_fast_while_the_database_is_down() {
    let db = TestDb::new().await;
    let proxy = DbProxy::start(host_port(&db.url), false).await;
    let store = garivini::Store::connect(
        garivini::config::parse_dsn_list(&via(&db.url, &proxy.addr)).unwrap(),
    )
    .await
    .expect("store connects through the proxy");
    let client = garivini::Client::new(Arc::new(store));
    client
        .insert_job(garivini::NewJob::new(FUNC, "before"))
        .await
        .expect("insert while up");

    proxy.cut().await;
    let start = Instant::now();
    let err = within(
        Duration::from_secs(15),
        "an insert while the database is down",
        client.insert_job(garivini::NewJob::new(FUNC, "during")),
    )
    .await
    .expect_err("no success without a committed row");
    let took = start.elapsed();
    let message = err.to_string();
    assert!(
        took < Duration::from_secs(5),
        "the insert took {took:?} to fail: {message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    eprintln!("insert while down failed after {took:?}: {message}");

    proxy.restore();
    within(
        Duration::from_secs(15),
        "an insert once it is back",
        async {
            loop {
                match client
                    .insert_job(garivini::NewJob::new(FUNC, "after"))
                    .await
                {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        },
    )
    .await;
    let args: Vec<Vec<u8>> = db.query("SELECT arg FROM job ORDER BY jobid").await;
    assert_eq!(args, vec![b"before".to_vec(), b"after".to_vec()]);
}

//! Several gearmand servers, one of them dead: the clients of gearmand
//! (foreground submits of the Controller and of gv_inject, background
//! submits) send only to the live one, a dead server costs a job no more
//! than a connect attempt, and its outage is logged once. Real gearmand
//! servers (killed and left down), real MariaDB, our roles (the
//! `garivini` binary, or in process), a recording worker in process, and
//! every run counted by job id. Needs scripts/services up.
//!
//! (e) and (f) run a whole deployment as separate processes (QueueRunner,
//! Injector, Controller, gv_consume, gv_inject), each given both servers,
//! one of which is SIGKILLed mid-run and stays down: nothing acknowledged
//! is lost in throughput mode, and the workers keep serving the live
//! server well past the reconnect backoff's cap.
//!
//! The tests take turns (one lock): two of them compare rates.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use garivini::gearman::{
    serve, BackgroundJob, ForegroundClient, Outcome, StatusReader, Submitter, WorkResult,
};
use garivini::injector::answer_refs;
use garivini::names::{INJECT_JOBS, RUN_QUEUED_JOB};
use garivini::{controller, injector, roles, Job};
use testkit::{bin, run_bin, wait_until, within, Gearmand, Proc, TestDb};
use tokio_util::sync::CancellationToken;

/// The real worker's function.
const FUNC: &str = "gm_fault_job";
/// A lease far longer than any test: a job that waits for it fails the
/// test's time limit instead.
const LONG_LEASE: u32 = 600;
/// How long a job offered after the fault may take to run.
const RUN_LIMIT: Duration = Duration::from_secs(20);
/// How long one gv_inject run may take (both servers up: about 6 s).
const GV_INJECT_LIMIT: Duration = Duration::from_secs(60);
/// Bound of the small waits: a start, a stop, a status.
const LIMIT: Duration = Duration::from_secs(30);

/// One test at a time: rates measured side by side would measure each
/// other.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A worker for [`FUNC`] on every server, in this process: answers at
/// once, and records when each job id first ran and how often.
struct RecordingWorker {
    runs: Arc<Mutex<HashMap<u64, (Instant, usize)>>>,
    stop: CancellationToken,
}

impl RecordingWorker {
    async fn start(gearmand: &[&Gearmand]) -> RecordingWorker {
        let runs: Arc<Mutex<HashMap<u64, (Instant, usize)>>> = Default::default();
        let stop = CancellationToken::new();
        let recorded = runs.clone();
        tokio::spawn(serve(
            gearmand.iter().map(|g| g.addr.clone()).collect(),
            FUNC.to_string(),
            16,
            move |a| {
                let recorded = recorded.clone();
                async move {
                    let job = Job::from_json(&a.data).expect("a job JSON");
                    recorded
                        .lock()
                        .unwrap()
                        .entry(job.jobid)
                        .or_insert((Instant::now(), 0))
                        .1 += 1;
                    WorkResult::Complete(Bytes::new())
                }
            },
            stop.clone(),
            Duration::from_secs(5),
        ));
        for g in gearmand {
            g.wait_for_worker(FUNC).await;
        }
        RecordingWorker { runs, stop }
    }

    /// When job `jobid` first ran.
    fn first_run(&self, jobid: u64) -> Option<Instant> {
        self.runs.lock().unwrap().get(&jobid).map(|r| r.0)
    }

    /// Runs beyond the first, over every job.
    fn duplicates(&self) -> usize {
        self.runs.lock().unwrap().values().map(|r| r.1 - 1).sum()
    }
}

impl Drop for RecordingWorker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One `inject_jobs` request of the client: when it was sent, whether
/// after the fault, and the job id it was answered (None: it failed).
struct Offer {
    sent: Instant,
    after_fault: bool,
    jobid: Option<u64>,
}

/// Offers one job per `inject_jobs` request from `tasks` tasks, each every
/// `every`, until `stop`; what became of each offer.
fn offer_jobs(
    client: ForegroundClient,
    tasks: usize,
    every: Duration,
    fault: Arc<AtomicBool>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<Offer>> {
    tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let (client, fault, stop) = (client.clone(), fault.clone(), stop.clone());
            set.spawn(async move {
                let mut offers = Vec::new();
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for seq in 0.. {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => break,
                    }
                    let body = format!(r#"{{"funcname":"{FUNC}","arg":"{t}-{seq}"}}"#);
                    let (sent, after_fault) = (Instant::now(), fault.load(Ordering::SeqCst));
                    let answer = within(
                        LIMIT,
                        "an inject_jobs request",
                        client.submit(INJECT_JOBS, "", Bytes::from(body)),
                    )
                    .await;
                    let jobid = match answer {
                        Ok(Outcome::Complete(answer)) => {
                            Some(answer_refs(&answer).expect("an answer")[0].jobid)
                        }
                        _ => None,
                    };
                    offers.push(Offer {
                        sent,
                        after_fault,
                        jobid,
                    });
                }
                offers
            });
        }
        let mut offers = Vec::new();
        while let Some(task) = set.join_next().await {
            offers.extend(task.expect("an offering task"));
        }
        offers
    })
}

/// The log lines of `log` at `level` that mention `server`, each with the
/// message and fields (time stamp left out), and how often each came.
fn lines_about(log: &str, level: &str, server: &str) -> Vec<(String, usize)> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains(level) && l.contains(server))
    {
        // "TIME  LEVEL target: message (server) error=..."
        let text = line.split_once(level).map_or(line, |(_, rest)| rest);
        let message = text.split(" error=").next().unwrap_or(text).trim();
        match seen.iter_mut().find(|(m, _)| m == message) {
            Some((_, n)) => *n += 1,
            None => seen.push((message.to_string(), 1)),
        }
    }
    seen
}

/// (a) Low-latency mode on two gearmand: Injector, Controller and
/// QueueRunner in one `garivini workers` process, a worker on both
/// servers; one gearmand is killed mid-run and left down. Every job
/// offered after the kill is stored and runs at once on the other server
/// (the lease is 600 s: none may wait for it), and the process logs the
/// outage once per tracker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_latency_jobs_offered_after_a_gearmand_dies_run_on_the_other_at_once() {
    let _turn = TURN.lock().await;
    let db = TestDb::new().await;
    let (g0, mut g1) = (Gearmand::start().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("workers.log");
    let servers = format!("{},{}", g0.addr, g1.addr);
    let mut cmd = bin("garivini");
    cmd.args(["workers", "--roles", "queuerunner,injector,controller"])
        .args(["--dsn", &db.url, "--gearmand", &servers])
        .args(["--lease", &LONG_LEASE.to_string(), "--no-worker-delay", "1"])
        .env("RUST_LOG", "info");
    let mut workers =
        Proc::start_logged("garivini workers", cmd, &dir.path().join("out"), &log).unwrap();
    for g in [&g0, &g1] {
        g.wait_for_worker(INJECT_JOBS).await;
        g.wait_for_worker(RUN_QUEUED_JOB).await;
    }
    let worker = RecordingWorker::start(&[&g0, &g1]).await;

    let fault = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let client = ForegroundClient::new(vec![g0.addr.clone(), g1.addr.clone()]);
    // 4 × 50 requests/s.
    let offering = offer_jobs(
        client,
        4,
        Duration::from_millis(20),
        fault.clone(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    g1.kill();
    fault.store(true, Ordering::SeqCst);
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let offers = within(LIMIT, "the client to stop", offering).await.unwrap();
    let last_offer = Instant::now();

    let after: Vec<&Offer> = offers.iter().filter(|o| o.after_fault).collect();
    let acked: Vec<(&Offer, u64)> = after
        .iter()
        .filter_map(|o| o.jobid.map(|id| (*o, id)))
        .collect();
    // Bounded: a job that waits for its lease is never seen here.
    let deadline = last_offer + RUN_LIMIT;
    while Instant::now() < deadline && acked.iter().any(|(_, id)| worker.first_run(*id).is_none()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waits: Vec<Option<Duration>> = acked
        .iter()
        .map(|(o, id)| worker.first_run(*id).map(|ran| ran - o.sent))
        .collect();
    let never = waits.iter().filter(|w| w.is_none()).count();
    let slow = waits.iter().flatten().filter(|w| **w > RUN_LIMIT).count();
    let mut sorted: Vec<Duration> = waits.iter().flatten().copied().collect();
    sorted.sort();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let before_kill = offers.iter().filter(|o| !o.after_fault).count();
    let lost_before: usize = offers
        .iter()
        .filter(|o| !o.after_fault)
        .filter_map(|o| o.jobid)
        .filter(|id| worker.first_run(*id).is_none())
        .count();
    eprintln!(
        "(a) offered {before_kill} before the kill ({lost_before} of them not run: lost with the dead server's memory, left to their lease); \
         after it {} offered, {} failed, {} acked, {never} never ran within {RUN_LIMIT:?}, {slow} ran later than that; \
         offer->run p50 {:?}, p99 {:?}, max {:?}; {} duplicate runs; {:.1} s since the kill",
        after.len(),
        after.len() - acked.len(),
        acked.len(),
        at(0.5),
        at(0.99),
        sorted.last().copied().unwrap_or_default(),
        worker.duplicates(),
        killed.elapsed().as_secs_f64(),
    );

    workers
        .check_running()
        .expect("garivini workers still runs");
    let text = workers.log();
    let warnings = lines_about(&text, "WARN", &g1.addr);
    let recovered: Vec<&str> = text.lines().filter(|l| l.contains("recovered")).collect();
    eprintln!(
        "(a) warnings about {}: {warnings:#?}\n(a) recovered lines: {recovered:#?}",
        g1.addr
    );

    assert_eq!(
        after.len(),
        acked.len(),
        "inject_jobs failed after the kill while the other gearmand was up"
    );
    assert_eq!(
        (never, slow),
        (0, 0),
        "jobs offered after the kill waited (for their lease)"
    );
    assert!(
        after.len() >= 100,
        "the client stalled: {} requests in 3 s",
        after.len()
    );
    for (message, n) in &warnings {
        assert_eq!(*n, 1, "warned {n} times for one outage: {message}");
    }
    assert!(
        !warnings.is_empty(),
        "the dead server's outage is logged: {text}"
    );
    assert!(
        !recovered.iter().any(|l| l.contains(&g1.addr)),
        "a server left down never recovered: {recovered:#?}"
    );
    assert!(
        recovered.len() <= 3,
        "recovered lines, one per tracker at most: {recovered:#?}"
    );
}

/// The summary of one gv_inject run: jobs per second and failed jobs.
fn gv_inject_summary(stdout: &str) -> (f64, u64) {
    let rate = stdout
        .lines()
        .find_map(|l| l.strip_prefix("injected "))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in gv_inject's output: {stdout}"));
    let failed = stdout
        .lines()
        .find(|l| l.ends_with("jobs failed (--keep-going)"))
        .and_then(|l| l.split_whitespace().next())
        .map_or(0, |n| n.parse().unwrap());
    (rate, failed)
}

/// Runs gv_inject in low-latency mode against `servers`; its rate and its
/// failed jobs.
async fn gv_inject(servers: &str, count: u64) -> (f64, u64) {
    let count = count.to_string();
    let args = [
        "--mode",
        "lowlatency",
        "--gearmand",
        servers,
        "--funcname",
        FUNC,
        "--count",
        &count,
        "--concurrency",
        "8",
        "--keep-going",
    ];
    let (status, out, err) = run_bin("gv_inject", &args, GV_INJECT_LIMIT).await;
    assert!(status.success(), "gv_inject: {status}\n{out}\n{err}");
    gv_inject_summary(&out)
}

/// An Injector and a Controller (lease 600 s) on `servers`, in this
/// process; stopped when the token is cancelled.
fn low_latency_roles(
    store: Arc<garivini::Store>,
    servers: Vec<String>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<garivini::Result<()>>,
) {
    let config = roles::Config {
        injector: Some(injector::Config {
            lease: LONG_LEASE,
            ..Default::default()
        }),
        controller: Some(controller::Config {
            lease: LONG_LEASE,
            ..Default::default()
        }),
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let running = tokio::spawn(roles::run(store, servers, config, stop.clone()));
    (stop, running)
}

/// (b) gv_inject in low-latency mode, with the roles, against two gearmand
/// of which one is dead from the start (of gv_inject and of the roles):
/// it keeps the rate it had with both alive, no request fails, and every
/// job runs (none waits for its 600 s lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gv_inject_keeps_its_rate_with_one_of_two_gearmand_dead() {
    let _turn = TURN.lock().await;
    const JOBS: u64 = 1500;
    let db = TestDb::new().await;
    let store = db.store().await;
    let (g0, mut g1) = (Gearmand::start().await, Gearmand::start().await);
    let servers = vec![g0.addr.clone(), g1.addr.clone()];
    let list = servers.join(",");
    let worker = RecordingWorker::start(&[&g0, &g1]).await;

    let (stop, running) = low_latency_roles(store.clone(), servers.clone());
    for g in [&g0, &g1] {
        g.wait_for_worker(INJECT_JOBS).await;
        g.wait_for_worker(RUN_QUEUED_JOB).await;
    }
    let (both_rate, both_failed) = gv_inject(&list, JOBS).await;
    wait_until(
        RUN_LIMIT,
        "the jobs to run with both servers up",
        || async { db.count("1").await == 0 },
    )
    .await;
    stop.cancel();
    within(LIMIT, "the roles to stop", running)
        .await
        .unwrap()
        .unwrap();

    g1.kill();
    let (stop, running) = low_latency_roles(store.clone(), servers.clone());
    g0.wait_for_worker(INJECT_JOBS).await;
    g0.wait_for_worker(RUN_QUEUED_JOB).await;
    let started = Instant::now();
    let (one_rate, one_failed) = gv_inject(&list, JOBS).await;
    let deadline = Instant::now() + RUN_LIMIT;
    let mut left = db.count("1").await;
    while left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = db.count("1").await;
    }
    eprintln!(
        "(b) gv_inject, both gearmand up: {both_rate:.0} jobs/s, {both_failed} failed; \
         one dead: {one_rate:.0} jobs/s ({:.0} %), {one_failed} failed; \
         rows left {:.1} s after the start: {left}; duplicate runs: {}",
        100.0 * one_rate / both_rate,
        started.elapsed().as_secs_f64(),
        worker.duplicates()
    );
    stop.cancel();
    within(LIMIT, "the roles to stop", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((both_failed, one_failed), (0, 0), "failed requests");
    assert!(
        one_rate >= both_rate * 0.5,
        "with one server dead the rate fell from {both_rate:.0} to {one_rate:.0} jobs/s"
    );
    assert_eq!(left, 0, "jobs waited for their lease");
}

/// Counts the tracing events of the thread it is set on (a current-thread
/// runtime: the test and every task it spawns), with their fields.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl Events {
    /// Events at `level` or more severe whose text mentions `server`.
    fn about(&self, server: &str, level: tracing::Level) -> usize {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|(l, text)| *l <= level && text.contains(server))
            .count()
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// `n` background jobs of `function`, numbered from `from`.
fn jobs(function: &str, from: usize, n: usize) -> Vec<BackgroundJob> {
    (from..from + n)
        .map(|i| BackgroundJob {
            function: function.to_string(),
            unique: String::new(),
            data: Bytes::from(format!("job {i}")),
            priority: Default::default(),
        })
        .collect()
}

/// (c) The background Submitter with two gearmand, one killed and left
/// down: every job of every batch is acknowledged, all by the live server,
/// and the dead one costs the batch that found it dead, not every other
/// batch (its failures do not grow with the batches: only its background
/// probes, with backoff, try it again), with one warning.
#[tokio::test]
async fn the_background_submitter_skips_a_dead_gearmand() {
    let _turn = TURN.lock().await;
    const BATCH: usize = 20;
    const BATCHES: usize = 60;
    let function = "gm_fault_bg";
    let (g0, mut g1) = (Gearmand::start().await, Gearmand::start().await);
    let events = Events::default();
    let _events = tracing::subscriber::set_default(events.clone());
    let mut submitter = Submitter::new(vec![g0.addr.clone(), g1.addr.clone()]);
    let mut next = 0;
    for _ in 0..10 {
        let acked = within(
            LIMIT,
            "a batch",
            submitter.submit(&jobs(function, next, BATCH)),
        )
        .await;
        assert!(acked.iter().all(|&ok| ok), "both up: every job acked");
        next += BATCH;
    }
    let before = (g0.depth(function).await, g1.depth(function).await);
    assert_eq!(before.0 + before.1, next as u64);
    assert!(before.0 > 0 && before.1 > 0, "both took jobs: {before:?}");

    g1.kill();
    let started = Instant::now();
    let mut unacked = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..BATCHES {
        let sent = Instant::now();
        let acked = within(
            LIMIT,
            "a batch",
            submitter.submit(&jobs(function, next, BATCH)),
        )
        .await;
        slowest = slowest.max(sent.elapsed());
        unacked += acked.iter().filter(|&&ok| !ok).count();
        next += BATCH;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let on_live = g0.depth(function).await - before.0;
    let failures = events.about(&g1.addr, tracing::Level::DEBUG);
    let warnings = events.about(&g1.addr, tracing::Level::WARN);
    eprintln!(
        "(c) {BATCHES} batches of {BATCH} in {:.1} s with one of two gearmand dead: {unacked} jobs not acked, \
         {on_live} of {} on the live server, slowest batch {slowest:?}; \
         {failures} failures logged about the dead one ({warnings} warnings)",
        took.as_secs_f64(),
        BATCHES * BATCH,
    );
    assert_eq!(unacked, 0, "jobs not acknowledged");
    assert_eq!(
        on_live,
        (BATCHES * BATCH) as u64,
        "every job on the live one"
    );
    assert_eq!(warnings, 1, "one warning for the dead server");
    // Its probes: backoff from 0.1 s doubling, at most about 6 in 3 s.
    assert!(
        failures <= 10,
        "{failures} failures about the dead server in {BATCHES} batches: one per batch?"
    );
}

/// (d) A gearmand that was dead and comes back is sent work again, by
/// every client, without a restart of the client: its probes find it
/// (backoff from 0.1 s, capped at 5 s). Meanwhile the status reader
/// skips it at once.
#[tokio::test]
async fn a_gearmand_that_comes_back_gets_work_again() {
    let _turn = TURN.lock().await;
    let (bg, fg) = ("gm_back_bg", "gm_back_fg");
    let (g0, mut g1) = (Gearmand::start().await, Gearmand::start().await);
    let servers = vec![g0.addr.clone(), g1.addr.clone()];
    let mut submitter = Submitter::new(servers.clone());
    let foreground = ForegroundClient::new(servers.clone());
    let status = StatusReader::new(servers.clone());
    g1.kill();

    // Every client finds it dead. Foreground jobs of a function without a
    // worker stay queued (their tasks end with the test).
    for i in 0..4 {
        let acked = within(LIMIT, "a batch", submitter.submit(&jobs(bg, i * 10, 10))).await;
        assert!(acked.iter().all(|&ok| ok));
        let client = foreground.clone();
        tokio::spawn(async move { client.submit(fg, "", Bytes::from("x")).await });
    }
    wait_until(LIMIT, "the foreground jobs on the live server", || async {
        g0.depth(fg).await == 4
    })
    .await;
    let (_, errors) = within(LIMIT, "a status", status.function_status()).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let started = Instant::now();
    let (_, errors) = within(LIMIT, "a status", status.function_status()).await;
    let skipped = started.elapsed();
    assert!(
        errors.len() == 1 && errors[0].to_string().contains("skipped"),
        "{errors:?}"
    );

    g1.restart().await;
    let back = Instant::now();
    let mut i = 4;
    let (mut bg_back, mut fg_back, mut status_back) = (None, None, None);
    while back.elapsed() < Duration::from_secs(15)
        && (bg_back.is_none() || fg_back.is_none() || status_back.is_none())
    {
        within(LIMIT, "a batch", submitter.submit(&jobs(bg, i * 10, 10))).await;
        i += 1;
        let client = foreground.clone();
        tokio::spawn(async move { client.submit(fg, "", Bytes::from("x")).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, errors) = within(LIMIT, "a status", status.function_status()).await;
        let now = Some(back.elapsed());
        if errors.is_empty() && status_back.is_none() {
            status_back = now;
        }
        let queued = |f: &'static str| {
            let g1 = &g1;
            async move {
                within(LIMIT, "gearmand status", g1.load(f))
                    .await
                    .is_ok_and(|l| l.queued > 0)
            }
        };
        if bg_back.is_none() && queued(bg).await {
            bg_back = now;
        }
        if fg_back.is_none() && queued(fg).await {
            fg_back = now;
        }
    }
    eprintln!(
        "(d) a status read skips the dead server in {skipped:?}; after its restart, work reaches it again: \
         background submits after {bg_back:?}, foreground after {fg_back:?}, status after {status_back:?}"
    );
    assert!(skipped < Duration::from_millis(100), "{skipped:?}");
    assert!(bg_back.is_some(), "the Submitter never used it again");
    assert!(
        fg_back.is_some(),
        "the ForegroundClient never used it again"
    );
    assert!(
        status_back.is_some(),
        "the StatusReader never read it again"
    );
}

/// The binaries of a deployment on two gearmand, as separate processes,
/// logging to files of their own in `dir`.
struct Deployment {
    procs: Vec<(String, Proc)>,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        Deployment {
            procs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Starts binary `bin` as `what`, logging at info level.
    fn start(&mut self, what: &str, bin: &str, args: &[&str]) {
        let log = self.path(&format!("{what}.log"));
        let proc = Proc::spawn_logged(bin, args, &log);
        self.procs.push((what.to_string(), proc));
    }

    /// Every process still runs.
    fn check_running(&mut self) {
        for (what, proc) in &mut self.procs {
            assert!(
                proc.running(),
                "{what} exited; its log:\n{}",
                std::fs::read_to_string(self.dir.path().join(format!("{what}.log")))
                    .unwrap_or_default()
            );
        }
    }

    /// The warnings each process logged about `server`, and how often
    /// each: an outage is logged once per tracker, not once per retry.
    fn warnings_about(&self, server: &str) -> Vec<(String, Vec<(String, usize)>)> {
        self.procs
            .iter()
            .map(|(what, _)| {
                let log =
                    std::fs::read_to_string(self.path(&format!("{what}.log"))).unwrap_or_default();
                (what.clone(), lines_about(&log, "WARN", server))
            })
            .collect()
    }

    /// The `DBID JOBID` lines of the record file `name`.
    fn recorded(&self, name: &str) -> Vec<(u32, u64)> {
        testkit::recorded_runs(&self.path(name))
    }
}

/// Asserts that no process warned about `server` more than once per
/// message (one per tracker of the outage), over a wait several times the
/// reconnect backoff's cap.
fn assert_outage_logged_once(deployment: &Deployment, server: &str) {
    let warnings = deployment.warnings_about(server);
    eprintln!("warnings about {server}: {warnings:#?}");
    for (what, lines) in &warnings {
        for (message, n) in lines {
            assert_eq!(*n, 1, "{what} warned {n} times for one outage: {message}");
        }
    }
}

/// (e) Throughput mode end to end, through the binaries, on two gearmand:
/// gv_inject stores jobs, a QueueRunner submits them to both servers,
/// gv_consume serves both; one gearmand is SIGKILLed mid-run and left
/// down with the jobs queued in it. Those come back when their lease (3 s)
/// runs out and run on the other: every acknowledged job is committed, every
/// committed one runs, no process exits, the table drains, and each
/// process logs the outage once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_mode_loses_nothing_when_one_of_two_gearmand_dies_and_stays_down() {
    let _turn = TURN.lock().await;
    const JOBS: u64 = 1500;
    let db = TestDb::new().await;
    db.count_commits().await;
    let (g0, mut g1) = (Gearmand::start().await, Gearmand::start().await);
    let servers = format!("{},{}", g0.addr, g1.addr);
    let mut d = Deployment::new();
    let common = ["--dsn", db.url.as_str(), "--gearmand", servers.as_str()];
    d.start(
        "queuerunner",
        "garivini",
        &[
            &common[..],
            &["queuerunner", "--lease", "3", "--no-worker-delay", "1"],
            &["--batch-run-sleep", "0.2", "--submit-retry-delay", "1"],
        ]
        .concat(),
    );
    let runs = d.path("runs.log");
    let acked = d.path("acked.log");
    let (runs_arg, acked_arg) = (runs.to_str().unwrap(), acked.to_str().unwrap());
    d.start(
        "gv_consume",
        "gv_consume",
        &[
            &common[..],
            &["--mode", "throughput", "--funcname", FUNC],
            // 2 × 2 jobs at once of 10 ms: 400 jobs/s, under the 500/s
            // offered, so that jobs wait in both gearmand's queues.
            &[
                "--concurrency",
                "2",
                "--work-ms",
                "10",
                "--record",
                runs_arg,
            ],
        ]
        .concat(),
    );
    for g in [&g0, &g1] {
        g.wait_for_worker(FUNC).await;
    }
    let count = JOBS.to_string();
    let mut inject = Proc::spawn_logged(
        "gv_inject",
        &[
            &common[..],
            &[
                "--mode",
                "throughput",
                "--funcname",
                FUNC,
                "--count",
                &count,
            ],
            &["--rate", "500", "--concurrency", "8", "--keep-going"],
            &["--record", acked_arg],
        ]
        .concat(),
        &d.path("gv_inject.log"),
    );
    wait_until(LIMIT, "a fifth of the jobs to run", || async {
        d.recorded("runs.log").len() >= JOBS as usize / 5
    })
    .await;
    // The kill must take jobs with it: some queued or running in g1.
    wait_until(LIMIT, "jobs queued in the gearmand to kill", || async {
        g1.depth(FUNC).await > 0
    })
    .await;
    let in_flight = db.count("1").await;
    let queued_in_g1 = g1.depth(FUNC).await;
    g1.kill();
    let killed = Instant::now();
    within(GV_INJECT_LIMIT, "gv_inject to finish", async {
        while inject.running() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    wait_until(
        GV_INJECT_LIMIT,
        "the table to drain with one gearmand dead",
        || async { db.count("1").await == 0 },
    )
    .await;
    let drained = killed.elapsed();
    d.check_running();

    let committed = db.committed(1).await;
    let acked: std::collections::HashSet<(u32, u64)> =
        d.recorded("acked.log").into_iter().collect();
    let ran = d.recorded("runs.log");
    let (runs, duplicates) =
        testkit::check_runs("one of two gearmand killed", Some(&acked), &committed, &ran);
    eprintln!(
        "(e) throughput, one of two gearmand SIGKILLed and left down: {in_flight} rows in flight \
         at the kill, {queued_in_g1} jobs queued in the dead one; {} acked, {} committed, {runs} \
         runs, {duplicates} duplicates; drained {:.1} s after the kill",
        acked.len(),
        committed.len(),
        drained.as_secs_f64()
    );
    assert_eq!(acked.len() as u64, JOBS, "every insert acknowledged");
    assert!(in_flight > 0, "the kill hit an idle flow");
    assert_outage_logged_once(&d, &g1.addr);
}

/// (f) Low-latency mode through the binaries (Injector, Controller,
/// QueueRunner, gv_consume), every one on two gearmand; one is SIGKILLed
/// and stays down. Waves of jobs offered 1, 7 and 13 s later (past the
/// reconnect backoff's cap of 5 s, while every client and worker keeps
/// trying the dead server) are all stored and all run on the live one
/// within seconds: no worker or client stalls on the dead server, none
/// waits for the 600 s lease, and each process logs the outage once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_serving_the_live_gearmand_while_the_other_stays_down() {
    let _turn = TURN.lock().await;
    const WAVE: u64 = 150;
    let db = TestDb::new().await;
    let (g0, mut g1) = (Gearmand::start().await, Gearmand::start().await);
    let servers = format!("{},{}", g0.addr, g1.addr);
    let mut d = Deployment::new();
    let common = ["--dsn", db.url.as_str(), "--gearmand", servers.as_str()];
    let lease = LONG_LEASE.to_string();
    let role = ["--lease", lease.as_str(), "--no-worker-delay", "1"];
    for r in ["injector", "controller", "queuerunner"] {
        d.start(r, "garivini", &[&common[..], &[r], &role].concat());
    }
    let runs = d.path("runs.log");
    d.start(
        "gv_consume",
        "gv_consume",
        &[
            &common[..],
            &["--mode", "lowlatency", "--funcname", FUNC],
            &["--concurrency", "8", "--record", runs.to_str().unwrap()],
        ]
        .concat(),
    );
    for g in [&g0, &g1] {
        g.wait_for_worker(INJECT_JOBS).await;
        g.wait_for_worker(RUN_QUEUED_JOB).await;
        g.wait_for_worker(FUNC).await;
    }
    g1.kill();
    let killed = Instant::now();
    let mut waves = Vec::new();
    for (k, at) in [1u64, 7, 13].into_iter().enumerate() {
        tokio::time::sleep_until((killed + Duration::from_secs(at)).into()).await;
        let acked = d.path(&format!("acked{k}.log"));
        let count = WAVE.to_string();
        let started = Instant::now();
        let (status, out, err) = run_bin(
            "gv_inject",
            &[
                "--mode",
                "lowlatency",
                "--gearmand",
                &servers,
                "--funcname",
                FUNC,
                "--count",
                &count,
                "--concurrency",
                "4",
                "--keep-going",
                "--record",
                acked.to_str().unwrap(),
            ],
            GV_INJECT_LIMIT,
        )
        .await;
        assert!(status.success(), "gv_inject: {status}\n{out}\n{err}");
        let (_, failed) = gv_inject_summary(&out);
        let wave: Vec<(u32, u64)> = testkit::recorded_runs(&acked);
        let ran = || {
            let ran: std::collections::HashSet<(u32, u64)> =
                d.recorded("runs.log").into_iter().collect();
            wave.iter().filter(|j| !ran.contains(j)).count()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while ran() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        waves.push((at, failed, wave.len(), ran(), started.elapsed()));
    }
    eprintln!(
        "(f) waves after the kill (s after, failed, acked, not run within 5 s of the wave's \
         end, wave took): {waves:?}"
    );
    d.check_running();
    for (at, failed, acked, not_run, _) in &waves {
        assert_eq!(
            (*failed, *acked as u64, *not_run),
            (0, WAVE, 0),
            "the wave {at} s after the kill"
        );
    }
    // The last jobs' DELETE may still be on its way (it follows the
    // worker's answer); a row left for the lease would stay 600 s.
    db.wait_for_count(
        Duration::from_secs(10),
        "rows left: their jobs wait for the 600 s lease",
        "1",
        0,
    )
    .await;
    assert_outage_logged_once(&d, &g1.addr);
}

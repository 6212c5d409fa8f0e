//! Slow and hung work (issue 12): a throughput job longer than the lease
//! runs once (gv_consume renews its lease); a Controller's job timeout
//! frees the slots a hung worker holds and fails its rows; SIGTERM to a
//! Controller gives back the row of a job it abandons; gv_consume's
//! commands are killed at `--kill-timeout` and never outlive it. The
//! binaries run as processes on the real MariaDB and a private gearmand,
//! every run counted by job id; the commands are found by a marker in
//! their command line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use garivini::gearman::ForegroundClient;
use garivini::names::{INJECT_JOBS, RUN_QUEUED_JOB};
use testkit::{
    insert_numbered, recorded_runs, wait_until, with_servers, Gearmand, InjectClient, Proc, TestDb,
    Worker,
};

/// How long a test waits for anything (a run, a row, an exit).
const LIMIT: Duration = Duration::from_secs(30);

/// A process of ours, its log in `dir`.
fn start(dir: &Path, what: &str, bin: &str, args: &[&str]) -> Proc {
    Proc::spawn_logged(bin, args, &dir.join(format!("{what}.log")))
}

/// A QueueRunner and a throughput-mode `gv_consume --exec` for
/// `funcname`, both with `lease`, the worker recording its runs to
/// `record` and taking `extra` flags; returns (queuerunner, worker) once
/// gearmand knows the worker.
async fn throughput_pair(
    dir: &Path,
    db: &TestDb,
    gearmand: &Gearmand,
    funcname: &str,
    lease: &str,
    record: &Path,
    extra: &[&str],
) -> (Proc, Proc) {
    let queuerunner = start(
        dir,
        "queuerunner",
        "garivini",
        &with_servers(
            db,
            gearmand,
            &["queuerunner", "--lease", lease, "--batch-run-sleep", "0.2"],
        ),
    );
    let mut args = vec![
        "--mode",
        "throughput",
        "--funcname",
        funcname,
        "--lease",
        lease,
        "--record",
        record.to_str().unwrap(),
    ];
    args.extend(extra);
    let worker = start(
        dir,
        "worker",
        "gv_consume",
        &with_servers(db, gearmand, &args),
    );
    gearmand.wait_for_worker(funcname).await;
    (queuerunner, worker)
}

/// `garivini workers --roles injector,controller --lease 600` with
/// `extra` flags, logging to `dir`.
/// Returns once gearmand knows its Injector and Controller.
async fn hung_low_latency(dir: &Path, db: &TestDb, gearmand: &Gearmand, extra: &[&str]) -> Proc {
    let mut args = vec![
        "workers",
        "--roles",
        "injector,controller",
        "--lease",
        "600",
    ];
    args.extend(extra);
    let roles = start(dir, "roles", "garivini", &with_servers(db, gearmand, &args));
    gearmand.wait_for_worker(INJECT_JOBS).await;
    gearmand.wait_for_worker(RUN_QUEUED_JOB).await;
    roles
}

/// A worker for `hang` that takes every job and never answers.
async fn never_answering(gearmand: &Gearmand) -> Worker {
    Worker::serving("hang")
        .taking(Duration::from_secs(1000))
        .start(gearmand)
        .await
}

/// Injects `n` jobs of `hang` and waits until the worker that never
/// answers holds them all.
async fn hand_over(inject: &InjectClient, hang: &Worker, n: usize) {
    inject.inject_numbered("hang", "h", n).await;
    wait_until(LIMIT, "the hung worker to hold its jobs", || async {
        hang.count() == n
    })
    .await;
}

fn log(dir: &Path, what: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{what}.log"))).unwrap_or_default()
}

/// Jobs recorded in `path`, and how often each ran.
fn runs_per_job(path: &Path) -> std::collections::BTreeMap<u64, usize> {
    let mut runs = std::collections::BTreeMap::new();
    for (_, jobid) in recorded_runs(path) {
        *runs.entry(jobid).or_default() += 1;
    }
    runs
}

/// Whether `check` comes true within `limit` (polled); unlike
/// `wait_until`, a miss is an answer, so that the test can report figures
/// before it fails.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A marker no other process has in its command line: a `sleep` length.
fn marker() -> String {
    format!(
        "{}.{:06}",
        600 + rand::random::<u32>() % 300,
        rand::random::<u32>() % 1_000_000
    )
}

/// Live processes whose command line holds `marker`, but for `except`
/// (gv_consume, whose `--exec` holds it too). Zombies have no command line.
fn marked(marker: &str, except: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid != except && pid != std::process::id() && contains(&cmdline, marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Kills (by id) what a failed test left running with `marker`.
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in marked(&self.0, 0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The jobids of an `inject_jobs` answer.
fn jobids(answer: &Bytes) -> Vec<u64> {
    let value: serde_json::Value =
        serde_json::from_slice(answer).expect("inject_jobs answers JSON");
    let one = |v: &serde_json::Value| v["jobid"].as_u64().expect("a jobid");
    match &value {
        serde_json::Value::Array(items) => items.iter().map(one).collect(),
        v => vec![one(v)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throughput_job_longer_than_the_lease_runs_once() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("runs.log");
    let (_queuerunner, _worker) = throughput_pair(
        dir.path(),
        &db,
        &gearmand,
        "slow",
        "5",
        &record,
        &["--exec", "sleep 8", "--concurrency", "8"],
    )
    .await;
    let client = garivini::Client::new(db.store().await);
    let jobs = insert_numbered(&client, "slow", "s", 4).await;
    let started = Instant::now();
    db.wait_for_count(LIMIT, "the slow jobs to complete", "1", 0)
        .await;
    let took = started.elapsed();
    // A second copy would have started (and been recorded) by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = runs_per_job(&record);
    eprintln!("4 jobs of 8 s under a 5 s lease: {runs:?} runs per job, drained in {took:?}");
    assert_eq!(runs.len(), jobs.len(), "every job ran");
    assert!(
        runs.values().all(|&n| n == 1),
        "a job longer than the lease ran again while it ran: {runs:?}; worker log:\n{}",
        log(dir.path(), "worker")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_frees_its_controller_slots_at_the_job_timeout() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("runs.log");
    let _roles = hung_low_latency(
        dir.path(),
        &db,
        &gearmand,
        &["--concurrency", "2", "--job-timeout", "3"],
    )
    .await;
    let hang = never_answering(&gearmand).await;
    let _ok = start(
        dir.path(),
        "ok",
        "gv_consume",
        &[
            "--gearmand",
            &gearmand.addr,
            "--mode",
            "lowlatency",
            "--funcname",
            "ok",
            "--record",
            record.to_str().unwrap(),
        ],
    );
    gearmand.wait_for_worker("ok").await;
    let inject = InjectClient::new(&gearmand);
    hand_over(&inject, &hang, 2).await;
    let hung_at = Instant::now();
    let batch: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"funcname":"ok","arg":"o{i}"}}"#))
        .collect();
    let ok = jobids(
        &inject
            .inject(format!("[{}]", batch.join(",")))
            .await
            .expect("stored"),
    );
    // Bounded at the timeout plus a few seconds: what the fix promises.
    let patience = Duration::from_secs(3 + 7);
    let ran = eventually(patience, || async {
        runs_per_job(&record).len() == ok.len()
    })
    .await;
    let took = hung_at.elapsed();
    let runs = runs_per_job(&record);
    eprintln!(
        "two hung jobs, Controller concurrency 2, --job-timeout 3: {} of 10 ran, the last {:.1} s after the hung ones started",
        runs.len(),
        took.as_secs_f64()
    );
    assert!(
        ran,
        "only {} of the ten ran; roles log:\n{}",
        runs.len(),
        log(dir.path(), "roles")
    );
    assert!(runs.values().all(|&n| n == 1), "a job ran twice: {runs:?}");
    db.wait_for_count(LIMIT, "the ten rows to be completed", "funcname = 'ok'", 0)
        .await;
    // Failed with the first backoff (a minute), not leased for the lease.
    db.wait_for_count(
        LIMIT,
        "the hung rows to be failed with backoff",
        "funcname = 'hang' AND failcount = 1 \
         AND run_after BETWEEN UNIX_TIMESTAMP() + 30 AND UNIX_TIMESTAMP() + 61",
        2,
    )
    .await;
    assert_eq!(hang.count(), 2, "a hung job was handed out again at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_controller_gives_back_the_row_of_a_hung_job() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let mut roles = hung_low_latency(
        dir.path(),
        &db,
        &gearmand,
        &["--shutdown-timeout", "1", "--submit-retry-delay", "2"],
    )
    .await;
    let hang = never_answering(&gearmand).await;
    hand_over(&InjectClient::new(&gearmand), &hang, 1).await;
    let stopping = Instant::now();
    let status = roles.terminate(LIMIT).await;
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "exited with {status}: {}",
        log(dir.path(), "roles")
    );
    let due_in: Vec<(i64, u8)> = db
        .query("SELECT CAST(run_after AS SIGNED) - UNIX_TIMESTAMP(), failcount FROM job")
        .await;
    eprintln!(
        "SIGTERM with a hung job in hand: exit after {took:?}, row due in {due_in:?} s (lease 600)"
    );
    assert_eq!(due_in.len(), 1);
    let (due, failcount) = due_in[0];
    assert!(
        due <= 2,
        "the row stays leased for {due} s after the Controller left; log:\n{}",
        log(dir.path(), "roles")
    );
    assert_eq!(failcount, 0, "given back, not failed");
}

/// The job JSON a Controller would send, for a gv_consume in low-latency
/// mode (no database).
fn job_json(funcname: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jobid":1,"dbid":1,"funcname":"{funcname}","arg":"","uniqkey":null,"coalesce":null,"run_after":0,"flag":"controller","failcount":0}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_gv_consume_leaves_no_command_running() {
    let gearmand = Gearmand::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mark = marker();
    let _reaper = Reaper(mark.clone());
    let exec = format!("sleep {mark}; echo done");
    let mut worker = start(
        dir.path(),
        "worker",
        "gv_consume",
        &[
            "--gearmand",
            &gearmand.addr,
            "--mode",
            "lowlatency",
            "--funcname",
            "sleepy",
            "--exec",
            &exec,
            "--shutdown-timeout",
            "1",
        ],
    );
    gearmand.wait_for_worker("sleepy").await;
    let client = ForegroundClient::new(gearmand.servers());
    let submit = tokio::spawn(async move { client.submit("sleepy", "", job_json("sleepy")).await });
    let pid = worker.pid();
    wait_until(LIMIT, "the command (sh and sleep) to run", || async {
        marked(&mark, pid).len() == 2
    })
    .await;
    let stopping = Instant::now();
    let status = worker.terminate(LIMIT).await;
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "exited with {status}: {}",
        log(dir.path(), "worker")
    );
    let gone = eventually(Duration::from_secs(3), || async {
        marked(&mark, pid).is_empty()
    })
    .await;
    eprintln!(
        "SIGTERM to gv_consume with a command running: exit after {took:?}, left running: {:?}",
        marked(&mark, pid)
    );
    assert!(gone, "gv_consume left its command running");
    submit.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_the_kill_timeout_is_killed_and_its_job_fails() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let mark = marker();
    let _reaper = Reaper(mark.clone());
    // It ignores SIGTERM (and so does its sleep): SIGKILL must follow.
    let exec = format!("trap '' TERM; sleep {mark}; echo done");
    let record: PathBuf = dir.path().join("runs.log");
    let (_queuerunner, worker) = throughput_pair(
        dir.path(),
        &db,
        &gearmand,
        "stuck",
        "60",
        &record,
        &["--exec", &exec, "--kill-timeout", "2"],
    )
    .await;
    let client = garivini::Client::new(db.store().await);
    insert_numbered(&client, "stuck", "k", 1).await;
    let pid = worker.pid();
    wait_until(LIMIT, "the command to run", || async {
        marked(&mark, pid).len() == 2
    })
    .await;
    let started = Instant::now();
    db.wait_for_count(
        LIMIT,
        "the job to be failed with backoff",
        "failcount = 1 AND run_after > UNIX_TIMESTAMP() + 30",
        1,
    )
    .await;
    let took = started.elapsed();
    // SIGKILLed before the job was failed; on a loaded machine the
    // process may take a moment more to be gone from /proc.
    let gone = eventually(Duration::from_secs(2), || async {
        marked(&mark, pid).is_empty()
    })
    .await;
    let left = marked(&mark, pid);
    eprintln!("a command ignoring SIGTERM, --kill-timeout 2: job failed after {took:?}, left running: {left:?}");
    assert!(gone, "the command outlived its kill timeout");
    assert!(
        took >= Duration::from_secs(2),
        "killed before its timeout: {took:?}"
    );
    assert_eq!(recorded_runs(&record).len(), 1, "it ran once");
    let error: Vec<Option<String>> = db.query("SELECT last_error FROM job").await;
    let error = error[0].clone().unwrap_or_default();
    assert!(error.starts_with("timed out after 2 s"), "{error}");
}

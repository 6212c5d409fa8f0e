//! Throughput mode end to end with the real binaries as separate
//! processes: gv_inject → MariaDB → garivini queuerunner → gearmand →
//! gv_consume → DELETE. Needs scripts/services up.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use testkit::{recorded_runs, run_bin, wait_until, with_servers, Gearmand, Proc, TestDb};

const DRAIN: Duration = Duration::from_secs(180);

/// A `garivini queuerunner` on `db` and `gearmand`, polling every 0.2 s.
fn queuerunner(db: &TestDb, gearmand: &Gearmand, extra: &[&str]) -> Proc {
    let mut args = with_servers(db, gearmand, &["queuerunner", "--batch-run-sleep", "0.2"]);
    args.extend(extra);
    Proc::spawn("garivini", &args)
}

/// Injects `count` jobs, runs `runners` QueueRunners and `consumers`
/// gv_consume workers until the table is empty, and checks that every
/// committed job ran, none twice (the default lease holds throughout).
async fn flow(count: u64, runners: usize, consumers: usize) {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let func = "e2e_work";
    let count_arg = count.to_string();
    let (status, stdout, stderr) = run_bin(
        "gv_inject",
        &[
            "--dsn",
            &db.url,
            "--mode",
            "throughput",
            "--funcname",
            func,
            "--count",
            &count_arg,
            "--batch",
            "500",
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(status.success(), "gv_inject failed: {stderr}");
    assert!(
        stdout.starts_with(&format!("inserted {count} jobs in ")),
        "{stdout}"
    );
    // What counts is what the database holds, not what the client hoped.
    let committed: HashSet<(u32, u64)> = db.jobids().await;
    assert_eq!(committed.len() as u64, count);

    let mut procs = Vec::new();
    for _ in 0..runners {
        procs.push(queuerunner(&db, &gearmand, &[]));
    }
    let records: Vec<_> = (0..consumers)
        .map(|i| dir.path().join(format!("run{i}.log")))
        .collect();
    for record in &records {
        let args = [
            "--mode",
            "throughput",
            "--funcname",
            func,
            "--record",
            record.to_str().unwrap(),
        ];
        procs.push(Proc::spawn(
            "gv_consume",
            &with_servers(&db, &gearmand, &args),
        ));
    }
    db.wait_for_count(DRAIN, "the job table to drain", "1", 0)
        .await;
    drop(procs);

    let mut runs: HashMap<(u32, u64), usize> = HashMap::new();
    for record in &records {
        for job in recorded_runs(record) {
            *runs.entry(job).or_insert(0) += 1;
        }
    }
    let missing: Vec<_> = committed.iter().filter(|j| !runs.contains_key(j)).collect();
    assert!(
        missing.is_empty(),
        "{} committed jobs never ran, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let twice: Vec<_> = runs.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} jobs ran twice while their lease held, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(runs.len() as u64, count, "only committed jobs ran");
}

#[tokio::test]
async fn ten_thousand_jobs_flow_through_one_queuerunner_and_one_consumer() {
    flow(10_000, 1, 1).await;
}

#[tokio::test]
async fn two_queuerunners_and_two_consumers_run_each_job_once_while_leases_hold() {
    flow(10_000, 2, 2).await;
}

#[tokio::test]
async fn a_failing_command_reschedules_the_job_with_backoff() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let (status, _, stderr) = run_bin(
        "gv_inject",
        &["--dsn", &db.url, "--funcname", "flaky", "--count", "3"],
        Duration::from_secs(30),
    )
    .await;
    assert!(status.success(), "{stderr}");
    let _qr = queuerunner(&db, &gearmand, &[]);
    let _worker = Proc::spawn(
        "gv_consume",
        &with_servers(
            &db,
            &gearmand,
            &["--funcname", "flaky", "--exec", "cat >/dev/null; exit 3"],
        ),
    );
    wait_until(
        Duration::from_secs(30),
        "all three jobs to fail once",
        || async { db.count("failcount = 1").await == 3 },
    )
    .await;
    let now = db.now().await;
    assert_eq!(
        db.count(&format!("run_after BETWEEN {} AND {}", now + 50, now + 60))
            .await,
        3
    );
}

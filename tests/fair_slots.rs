//! A Controller's slots are shared fairly: a function whose worker hangs
//! (or that floods) holds at most its share of them, so other functions'
//! low-latency jobs keep running; and a job whose function loses its last
//! worker is given back, due, within seconds, its slot freed. Real MariaDB
//! (a database per test) and a private gearmand; needs scripts/services up.

use std::time::{Duration, Instant};

use garivini::{controller, injector, roles};
use testkit::{quick_queue_runner, wait_until, Gearmand, InjectClient, Roles, TestDb, Worker};

const LIMIT: Duration = Duration::from_secs(30);

/// Every low-latency role, as `garivini workers --roles
/// queuerunner,injector,controller --function-share 100` runs them (200
/// slots, a share of 100 per function), every job through gearmand.
async fn roles(db: &TestDb, gearmand: &Gearmand) -> Roles {
    let config = roles::Config {
        queue_runner: Some(quick_queue_runner()),
        injector: Some(injector::Config::default()),
        controller: Some(controller::Config {
            local_concurrency: 0,
            function_share: 100,
            // The hung jobs are given back at the stop, not waited for.
            shutdown_timeout: Duration::from_secs(1),
            ..controller::Config::default()
        }),
        ..roles::Config::default()
    };
    Roles::start(config, db.store().await, gearmand).await
}

/// An `inject_jobs` array of `n` jobs of `funcname`.
fn jobs(funcname: &str, n: usize) -> String {
    let jobs: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"funcname":"{funcname}","arg":"{i}"}}"#))
        .collect();
    format!("[{}]", jobs.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_functions_run_while_a_hung_worker_holds_450_jobs() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    // Registered, and never takes a job: every job sent to it hangs.
    let _hung = gearmand.idle_worker("fs_hang").await;
    let other = Worker::plain(&gearmand, "fs_other").await;
    let roles = roles(&db, &gearmand).await;
    let client = InjectClient::new(&gearmand);
    client.inject(jobs("fs_hang", 450)).await.expect("stored");
    // The hung function takes what it can of the slots first.
    wait_until(
        LIMIT,
        "the hung function's share to be in gearmand",
        || async { gearmand.depth("fs_hang").await >= 100 },
    )
    .await;
    let started = Instant::now();
    client.inject(jobs("fs_other", 50)).await.expect("stored");
    wait_until(LIMIT, "the other function's 50 jobs to run", || async {
        other.count() == 50
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "50 jobs took {took:?}");
    assert!(
        gearmand.depth("fs_hang").await <= 100,
        "the hung function holds at most half of the 200 slots"
    );
    assert_eq!(
        db.count("funcname = 'fs_hang'").await,
        450,
        "no hung job is lost"
    );
    roles.stop(LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_vanishes_is_given_back_due_within_seconds() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let hung = gearmand.idle_worker("fs_gone").await;
    let roles = roles(&db, &gearmand).await;
    let client = InjectClient::new(&gearmand);
    client.inject(jobs("fs_gone", 5)).await.expect("stored");
    wait_until(LIMIT, "the jobs to wait on the worker", || async {
        gearmand.depth("fs_gone").await == 5
    })
    .await;
    let gone = Instant::now();
    drop(hung);
    db.wait_for_count(
        LIMIT,
        "the rows given back due, their attempt undone",
        "funcname = 'fs_gone' AND run_after <= UNIX_TIMESTAMP() AND attempted_at = 0",
        5,
    )
    .await;
    let took = gone.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "given back {took:?} after the worker left, not at the job timeout"
    );
    // And they run once a worker comes back.
    let back = Worker::plain(&gearmand, "fs_gone").await;
    wait_until(LIMIT, "the given-back jobs to run", || async {
        back.count() >= 5
    })
    .await;
    roles.stop(LIMIT).await;
}

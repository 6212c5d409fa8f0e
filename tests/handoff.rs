//! The Injector's hand-off to a Controller in the same process: a due job
//! goes to it directly while it has a free local slot, and through
//! gearmand (`run_queued_job`, for any Controller) otherwise; the row is
//! committed and leased first, so a crash of that process loses nothing.
//! Real MariaDB and a private gearmand; needs `scripts/services up`.

use std::sync::Arc;
use std::time::Duration;

use garivini::names::{INJECT_JOBS, RUN_QUEUED_JOB};
use garivini::{controller, injector, Client};
use testkit::{wait_until, with_servers, Gearmand, InjectClient, Proc, TestDb, Worker};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

/// A Controller on `gearmand` with `concurrency` slots for gearmand's jobs
/// and `local` for handed-over ones, running until `stop`.
async fn controller(
    db: &TestDb,
    gearmand: &Gearmand,
    concurrency: usize,
    local: usize,
    stop: &CancellationToken,
) -> Arc<controller::Controller> {
    let config = controller::Config {
        concurrency,
        local_concurrency: local,
        ..controller::Config::default()
    };
    let client = Client::new(db.store().await);
    let c = controller::Controller::new(config, client, gearmand.servers()).unwrap();
    tokio::spawn(c.clone().run(stop.clone()));
    c
}

/// An Injector on `gearmand` handing its jobs to `to`, running until `stop`.
async fn injector_handing_to(
    db: &TestDb,
    gearmand: &Gearmand,
    to: &Arc<controller::Controller>,
    stop: &CancellationToken,
) -> Arc<injector::Injector> {
    let i = injector::Injector::new(
        injector::Config::default(),
        db.store().await,
        gearmand.servers(),
    )
    .unwrap();
    i.hand_to(to.local());
    tokio::spawn(i.clone().run(stop.clone()));
    gearmand.wait_for_worker(INJECT_JOBS).await;
    gearmand.wait_for_worker(RUN_QUEUED_JOB).await;
    i
}

/// Waits until `worker` ran `n` jobs and every row is gone.
async fn all_ran(worker: &Worker, db: &TestDb, n: usize) {
    wait_until(
        LIMIT,
        &format!("{n} jobs to run and their rows to go"),
        || async { worker.count() == n && db.count("1").await == 0 },
    )
    .await;
}

/// Asserts that the table holds one row, in flight: its attempt recorded
/// (at `since` or after) and its lease not run out.
async fn one_row_in_flight(db: &TestDb, since: u32) {
    let rows: Vec<(u32, u32, u32)> = db
        .query("SELECT attempted_at, run_after, UNIX_TIMESTAMP() FROM job")
        .await;
    let [(attempted_at, run_after, now)] = rows[..] else {
        panic!("one row: {rows:?}")
    };
    assert!(attempted_at >= since, "attempt recorded: {rows:?}");
    assert!(run_after > now, "leased: {rows:?}");
}

#[tokio::test]
async fn an_injected_job_goes_straight_to_the_controller_in_the_same_process() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let worker = Worker::plain(&gearmand, "handed").await;
    let ctl = controller(&db, &gearmand, 8, 8, &stop).await;
    let injector = injector_handing_to(&db, &gearmand, &ctl, &stop).await;
    InjectClient::new(&gearmand)
        .inject_numbered("handed", "a", 20)
        .await;
    all_ran(&worker, &db, 20).await;
    assert_eq!(injector.handed_off(), 20, "every job went straight to it");
}

#[tokio::test]
async fn a_full_local_controller_leaves_jobs_to_gearmand_and_another_controller() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let worker = Worker::serving("slow")
        .taking(Duration::from_secs(2))
        .start(&gearmand)
        .await;
    // One local slot and one for gearmand's jobs: two jobs at most here.
    let here = controller(&db, &gearmand, 1, 1, &stop).await;
    let _elsewhere = controller(&db, &gearmand, 8, 0, &stop).await;
    let injector = injector_handing_to(&db, &gearmand, &here, &stop).await;
    let client = InjectClient::new(&gearmand);
    let jobs: Vec<String> = (0..3)
        .map(|i| format!(r#"{{"funcname":"slow","arg":"s{i}"}}"#))
        .collect();
    client
        .inject(format!("[{}]", jobs.join(",")))
        .await
        .expect("stored");
    all_ran(&worker, &db, 3).await;
    assert_eq!(injector.handed_off(), 1, "the one free local slot");
    // Three at once: the third was run by the other Controller.
    assert_eq!(worker.most_at_once(), 3);
}

#[tokio::test]
async fn sigkill_of_the_process_mid_run_loses_no_handed_over_job() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::serving("crashy")
        .taking(Duration::from_secs(1))
        .start(&gearmand)
        .await;
    let roles = ["workers", "--roles", "injector,controller", "--lease", "4"];
    let mut first = Proc::spawn_logged(
        "garivini",
        &with_servers(&db, &gearmand, &roles),
        &dir.path().join("first.log"),
    );
    gearmand.wait_for_worker(INJECT_JOBS).await;
    InjectClient::new(&gearmand)
        .inject_numbered("crashy", "a", 10)
        .await;
    wait_until(LIMIT, "the jobs to start", || async { worker.count() >= 5 }).await;
    // Running there without a run_queued_job in gearmand: handed over.
    let through_gearmand = gearmand.load(RUN_QUEUED_JOB).await.unwrap();
    assert_eq!(through_gearmand.queued, 0, "{through_gearmand:?}");
    first.kill();
    // A QueueRunner sends the rows whose lease ran out to a new Controller.
    let recover = [
        "workers",
        "--roles",
        "queuerunner,controller",
        "--lease",
        "4",
    ];
    let _second = Proc::spawn_logged(
        "garivini",
        &with_servers(&db, &gearmand, &recover),
        &dir.path().join("second.log"),
    );
    wait_until(LIMIT, "every row to be completed", || async {
        db.count("1").await == 0
    })
    .await;
    let mut ran: Vec<String> = worker
        .jobs()
        .iter()
        .map(|j| String::from_utf8_lossy(&j.arg).into_owned())
        .collect();
    ran.sort();
    ran.dedup();
    assert_eq!(ran.len(), 10, "every job ran: {ran:?}");
}

/// A handed-over job runs without a check of its row (the Injector has
/// just stored it), yet reads as in flight while it runs: its row is
/// stored with the attempt recorded (attempted_at) and leased.
#[tokio::test]
async fn a_handed_over_job_is_in_flight_while_it_runs() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let worker = Worker::serving("handed_slow")
        .taking(Duration::from_secs(3))
        .start(&gearmand)
        .await;
    let ctl = controller(&db, &gearmand, 8, 8, &stop).await;
    let injector = injector_handing_to(&db, &gearmand, &ctl, &stop).await;
    let before: u32 = db.now().await;
    InjectClient::new(&gearmand)
        .inject_numbered("handed_slow", "a", 1)
        .await;
    wait_until(LIMIT, "the job to start", || async { worker.count() == 1 }).await;
    one_row_in_flight(&db, before).await;
    assert_eq!(injector.handed_off(), 1);
    all_ran(&worker, &db, 1).await;
}

/// An injected job is in flight from its dispatch on, as a claimed one
/// is: its row is stored with the attempt recorded, before any Controller
/// has it (here none runs), so a copy lost in gearmand reads as an
/// expired lease.
#[tokio::test]
async fn an_injected_job_is_in_flight_from_its_dispatch() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let _injector =
        testkit::Roles::injector(injector::Config::default(), db.store().await, &gearmand).await;
    let before: u32 = db.now().await;
    InjectClient::new(&gearmand)
        .inject_numbered("no_controller", "a", 1)
        .await;
    gearmand
        .wait_for_depth(LIMIT, "the dispatch", RUN_QUEUED_JOB, 1)
        .await;
    one_row_in_flight(&db, before).await;
}

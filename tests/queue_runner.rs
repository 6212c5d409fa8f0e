//! The QueueRunner against a real MariaDB and a private gearmand per test:
//! what it dispatches, when, to which function, under the watermark, and
//! that a gearmand outage loses nothing. Needs scripts/services up.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use garivini::names::RUN_QUEUED_JOB;
use garivini::queue_runner::Config;
use garivini::{roles, Client, Flag, NewJob, Store};
use testkit::{
    insert_numbered, queue_runner, quick_queue_runner as quick, round, Gearmand, Roles, TestDb,
    Worker,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A test's database, a Client on it, and a private gearmand.
async fn setup() -> (TestDb, Gearmand, Client) {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let client = Client::new(db.store().await);
    (db, gearmand, client)
}

/// A QueueRunner with `config` running in this process, as a role
/// process runs it; stopped on drop.
async fn running(config: Config, store: Arc<Store>, gearmand: &Gearmand) -> Roles {
    let roles = roles::Config {
        queue_runner: Some(config),
        ..roles::Config::default()
    };
    Roles::start(roles, store, gearmand).await
}

/// A worker for `function` that completes each row with `client`.
async fn completing(gearmand: &Gearmand, function: &str, client: &Client) -> Worker {
    Worker::serving(function)
        .completing_with(client.clone())
        .start(gearmand)
        .await
}

#[tokio::test]
async fn due_jobs_reach_the_worker_as_job_json_with_their_unique_key() {
    let (db, gearmand, client) = setup().await;
    let jobs = [
        NewJob::new("resize", "{\"w\":1}"),
        NewJob::new("resize", "k").unique("img-7"),
    ];
    let [plain, keyed] = client.insert_jobs(&jobs).await.unwrap()[..] else {
        panic!("two jobs stored");
    };
    let mut qr = queue_runner(quick(), client.store().clone(), &gearmand);
    let idle = gearmand.idle_worker("resize").await;
    let stats = round(&mut qr).await.unwrap();
    assert_eq!((stats.claimed, stats.dispatched), (2, 2));
    assert_eq!(gearmand.depth("resize").await, 2);
    drop(idle);

    let worker = completing(&gearmand, "resize", &client).await;
    db.wait_for_count(LIMIT, "both jobs done", "1", 0).await;
    let runs = worker.runs();
    let by_id = |id| {
        let run = runs.iter().find(|r| r.job.jobid == id).cloned().unwrap();
        (run.job, run.unique)
    };
    let (job, unique) = by_id(plain.jobid);
    assert_eq!(
        (job.dbid, job.funcname.as_str(), job.arg.as_slice()),
        (1, "resize", &b"{\"w\":1}"[..])
    );
    assert_eq!(
        unique.as_deref(),
        Some(format!("gv:1:{}", plain.jobid).as_str()),
        "a keyless row's unique id is its own id"
    );
    let (job, unique) = by_id(keyed.jobid);
    assert_eq!(job.uniqkey.as_deref(), Some("img-7"));
    assert_eq!(
        unique.as_deref(),
        Some("img-7"),
        "the unique key is gearmand's unique id"
    );
}

#[tokio::test]
async fn dispatched_rows_are_leased_not_deleted() {
    let (db, gearmand, client) = setup().await;
    client.insert_job(NewJob::new("nobody", "x")).await.unwrap();
    let config = Config {
        lease: 500,
        ..quick()
    };
    let mut qr = queue_runner(config, client.store().clone(), &gearmand);
    let _idle = gearmand.idle_worker("nobody").await;
    let now = db.now().await;
    round(&mut qr).await.unwrap();
    assert_eq!(
        db.count(&format!(
            "run_after BETWEEN {} AND {}",
            now + 500,
            now + 502
        ))
        .await,
        1
    );
    // A second round finds nothing due: the lease holds.
    assert_eq!(round(&mut qr).await.unwrap().claimed, 0);
}

#[tokio::test]
async fn delayed_job_is_not_dispatched_early() {
    let (db, gearmand, client) = setup().await;
    let r = client
        .insert_job(NewJob::new("later", "x").delay(3))
        .await
        .unwrap();
    let due = client.store().get(r).await.unwrap().unwrap().run_after;
    let mut qr = queue_runner(quick(), client.store().clone(), &gearmand);
    let _idle = gearmand.idle_worker("later").await;
    // Rounds until it is dispatched: none before the database clock
    // reaches run_after (read after the round, so that a round racing the
    // second's tick cannot fail the test), and rounds did run before.
    let (mut dispatched, mut early_rounds) = (0, 0);
    for _ in 0..40 {
        let stats = round(&mut qr).await.unwrap();
        let now = db.now().await;
        if stats.claimed > 0 {
            assert!(now >= due, "dispatched at {now}, before {due}");
            dispatched = stats.dispatched;
            break;
        }
        early_rounds += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        early_rounds >= 5,
        "only {early_rounds} rounds before it was due"
    );
    assert_eq!(dispatched, 1, "the delayed job is dispatched once due");
    assert_eq!(gearmand.depth("later").await, 1);
}

#[tokio::test]
async fn rows_over_the_watermark_stay_due_in_the_table_not_submitted() {
    let (db, gearmand, client) = setup().await;
    insert_numbered(&client, "busy", "", 20).await;
    client.insert_job(NewJob::new("idle", "x")).await.unwrap();
    let config = Config {
        queue_watermark_depth: 5,
        ..quick()
    };
    let mut qr = queue_runner(config, client.store().clone(), &gearmand);
    let _idle = (
        gearmand.idle_worker("busy").await,
        gearmand.idle_worker("idle").await,
    );
    let stats = round(&mut qr).await.unwrap();
    assert_eq!(stats.dispatched, 6, "{stats:?}");
    assert_eq!(gearmand.depth("busy").await, 5);
    assert_eq!(
        gearmand.depth("idle").await,
        1,
        "another function is not held back"
    );
    assert_eq!(
        db.count("run_after <= UNIX_TIMESTAMP() AND attempted_at = 0")
            .await,
        15,
        "the rest wait due, their run_after as it was"
    );
    // With the queue still full, nothing more goes.
    assert_eq!(round(&mut qr).await.unwrap().dispatched, 0);
}

#[tokio::test]
async fn controller_rows_go_to_run_queued_job() {
    let (db, gearmand, client) = setup().await;
    client
        .insert_job(NewJob::new("real", "x").flag(Flag::Controller))
        .await
        .unwrap();
    let mut qr = queue_runner(quick(), client.store().clone(), &gearmand);
    // While "real" has no worker, a Controller could only wait for one:
    // the row waits in the database instead.
    let stats = round(&mut qr).await.unwrap();
    assert_eq!((stats.dispatched, stats.held), (0, 1));
    assert_eq!(db.count("run_after <= UNIX_TIMESTAMP()").await, 1, "due");

    let _worker = completing(&gearmand, "real", &client).await;
    gearmand.wait_for_worker("real").await;
    round(&mut qr).await.unwrap();
    assert_eq!(gearmand.depth(RUN_QUEUED_JOB).await, 1);
    assert_eq!(gearmand.depth("real").await, 0);
}

#[tokio::test]
async fn batch_size_grows_while_batches_are_full() {
    let (_db, gearmand, client) = setup().await;
    insert_numbered(&client, "bulk", "", 400).await;
    let config = Config {
        queue_watermark_depth: 0,
        ..quick()
    };
    let mut qr = queue_runner(config, client.store().clone(), &gearmand);
    // A worker that takes nothing: the rows pile up in gearmand.
    let _idle = gearmand.idle_worker("bulk").await;
    let sizes: Vec<usize> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(round(&mut qr).await.unwrap().dispatched);
        }
        v
    };
    assert_eq!(sizes, vec![50, 150, 200]);
    assert_eq!(gearmand.depth("bulk").await, 400);
}

#[tokio::test]
async fn gearmand_outage_loses_nothing() {
    let (db, mut gearmand, client) = setup().await;
    let config = Config {
        lease: 3,
        submit_retry_delay: 1,
        ..quick()
    };
    let runner = running(config, client.store().clone(), &gearmand).await;

    // Jobs that reach gearmand and die with it (no worker takes them).
    let idle = gearmand.idle_worker("survive").await;
    insert_numbered(&client, "survive", "a", 50).await;
    gearmand
        .wait_for_depth(LIMIT, "first jobs queued in gearmand", "survive", 50)
        .await;
    gearmand.kill();
    drop(idle);
    // Jobs inserted while gearmand is down.
    insert_numbered(&client, "survive", "b", 50).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    gearmand.restart().await;

    let worker = completing(&gearmand, "survive", &client).await;
    db.wait_for_count(LIMIT, "every job to complete after the outage", "1", 0)
        .await;
    let done: HashSet<u64> = worker.jobs().iter().map(|j| j.jobid).collect();
    assert_eq!(done.len(), 100);
    runner.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn run_returns_promptly_on_shutdown() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let config = Config {
        batch_run_sleep: Duration::from_secs(60),
        ..Config::default()
    };
    let runner = running(config, db.store().await, &gearmand).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // run() returns promptly after the cancel.
    runner.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn an_idle_queuerunner_notices_a_new_job_long_before_its_round_is_due() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let config = Config {
        // Without the probe, a job inserted now would wait up to a minute.
        batch_run_sleep: Duration::from_secs(60),
        idle_poll: Duration::from_millis(100),
        ..Config::default()
    };
    let runner = running(config, store.clone(), &gearmand).await;
    let _idle = gearmand.idle_worker("idle_probe").await;
    // Its first round found nothing: it is now in its minute-long pause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Client::new(store)
        .insert_job(NewJob::new("idle_probe", "x"))
        .await
        .unwrap();
    gearmand
        .wait_for_depth(
            Duration::from_secs(5),
            "the job to be queued in gearmand",
            "idle_probe",
            1,
        )
        .await;
    runner.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rows_of_a_function_without_a_worker_wait_in_the_database() {
    let (db, gearmand, client) = setup().await;
    insert_numbered(&client, "unserved", "", 3).await;
    let mut qr = queue_runner(quick(), client.store().clone(), &gearmand);
    let stats = round(&mut qr).await.unwrap();
    assert_eq!((stats.dispatched, stats.held), (0, 3), "{stats:?}");
    // The next round does not even read them.
    let stats = round(&mut qr).await.unwrap();
    assert_eq!((stats.dispatched, stats.held), (0, 0), "{stats:?}");
    assert_eq!(
        gearmand.depth("unserved").await,
        0,
        "nothing piles up in gearmand"
    );
    assert_eq!(
        db.count("run_after <= UNIX_TIMESTAMP()").await,
        3,
        "they wait due, not pushed back"
    );
    // Once a worker registers, they go.
    let worker = completing(&gearmand, "unserved", &client).await;
    round(&mut qr).await.unwrap();
    db.wait_for_count(LIMIT, "the three jobs done", "1", 0)
        .await;
    assert_eq!(worker.runs().len(), 3);
}

#[tokio::test]
async fn a_row_submitted_again_while_still_queued_is_not_queued_twice() {
    let (db, gearmand, client) = setup().await;
    insert_numbered(&client, "slow", "", 3).await;
    client
        .insert_job(NewJob::new("slow", "keyed").unique("k-1"))
        .await
        .unwrap();
    let config = Config {
        lease: 1,
        ..quick()
    };
    let mut qr = queue_runner(config, client.store().clone(), &gearmand);
    let _idle = gearmand.idle_worker("slow").await;
    assert_eq!(round(&mut qr).await.unwrap().dispatched, 4);
    // The leases run out while the copies wait in gearmand: the rows are
    // claimed and submitted again, and gearmand coalesces them.
    for _ in 0..3 {
        let due = db.now().await + 2;
        while db.now().await < due {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(round(&mut qr).await.unwrap().dispatched, 4);
    }
    assert_eq!(
        gearmand.depth("slow").await,
        4,
        "one copy of each row in gearmand"
    );
}

//! The QueueRunner against a real MariaDB and a private gearmand per test:
//! what it dispatches, when, to which function, under the watermark, and
//! that a gearmand outage loses nothing. Needs scripts/services up.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, within, Gearmand, TestDb};
use garivini::gearman::{serve, Assignment, WorkResult};
use garivini::names::RUN_QUEUED_JOB;
use garivini::queue_runner::{Config, QueueRunner};
use garivini::{Client, Flag, Job, NewJob};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

fn quick() -> Config {
    Config {
        batch_run_sleep: Duration::from_millis(100),
        ..Config::default()
    }
}

/// An in-process worker for `function`: records each job JSON it gets and
/// completes the row. Stops on drop.
/// Each job a worker got, with the Gearman unique id it came with.
type Seen = Arc<Mutex<Vec<(Job, Option<String>)>>>;

struct Worker {
    seen: Seen,
    stop: CancellationToken,
}

impl Worker {
    fn start(gearmand: &Gearmand, function: &str, client: Client) -> Worker {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let s = seen.clone();
        tokio::spawn(serve(
            vec![gearmand.addr.clone()],
            function.to_string(),
            4,
            move |a: Assignment| {
                let (s, client) = (s.clone(), client.clone());
                async move {
                    let job = Job::from_json(&a.data).expect("job JSON");
                    s.lock().unwrap().push((job.clone(), a.unique.clone()));
                    client.complete_job(&job).await.expect("complete");
                    WorkResult::Complete(Default::default())
                }
            },
            stop.clone(),
            Duration::from_secs(5),
        ));
        Worker { seen, stop }
    }

    fn jobids(&self) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(j, _)| j.jobid)
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test]
async fn due_jobs_reach_the_worker_as_job_json_with_their_unique_key() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let client = Client::new(db.store().await);
    let plain = client
        .insert_job(NewJob::new("resize", "{\"w\":1}"))
        .await
        .unwrap();
    let keyed = client
        .insert_job(NewJob::new("resize", "k").unique("img-7"))
        .await
        .unwrap();
    let mut qr =
        QueueRunner::new(quick(), client.store().clone(), vec![gearmand.addr.clone()]).unwrap();
    let stats = within(LIMIT, "run_once", qr.run_once()).await.unwrap();
    assert_eq!((stats.claimed, stats.dispatched), (2, 2));
    assert_eq!(gearmand.depth("resize").await, 2);

    let worker = Worker::start(&gearmand, "resize", client.clone());
    wait_until(LIMIT, "both jobs done", || async {
        db.count("1").await == 0
    })
    .await;
    let seen = worker.seen.lock().unwrap().clone();
    let by_id = |id| seen.iter().find(|(j, _)| j.jobid == id).cloned().unwrap();
    let (job, unique) = by_id(plain.jobid);
    assert_eq!(
        (job.dbid, job.funcname.as_str(), job.arg.as_slice()),
        (1, "resize", &b"{\"w\":1}"[..])
    );
    assert_eq!(unique, None);
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
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let client = Client::new(db.store().await);
    client.insert_job(NewJob::new("nobody", "x")).await.unwrap();
    let config = Config {
        lease: 500,
        ..quick()
    };
    let mut qr =
        QueueRunner::new(config, client.store().clone(), vec![gearmand.addr.clone()]).unwrap();
    let now = db.now().await;
    qr.run_once().await.unwrap();
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
    assert_eq!(qr.run_once().await.unwrap().claimed, 0);
}

#[tokio::test]
async fn delayed_job_is_not_dispatched_early() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let client = Client::new(db.store().await);
    let r = client
        .insert_job(NewJob::new("later", "x").delay(3))
        .await
        .unwrap();
    let due = client.store().get(r).await.unwrap().unwrap().run_after;
    let mut qr =
        QueueRunner::new(quick(), client.store().clone(), vec![gearmand.addr.clone()]).unwrap();
    // Until the database clock reaches run_after, every round claims nothing.
    while db.now().await < due {
        assert_eq!(
            qr.run_once().await.unwrap().claimed,
            0,
            "dispatched before {due}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut dispatched = 0;
    for _ in 0..20 {
        dispatched = qr.run_once().await.unwrap().dispatched;
        if dispatched > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dispatched, 1, "the delayed job is dispatched once due");
    assert_eq!(gearmand.depth("later").await, 1);
}

#[tokio::test]
async fn rows_over_the_watermark_are_pushed_back_not_submitted() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let client = Client::new(db.store().await);
    let jobs: Vec<NewJob> = (0..20)
        .map(|i| NewJob::new("busy", format!("{i}")))
        .collect();
    client.insert_jobs(&jobs).await.unwrap();
    client.insert_job(NewJob::new("idle", "x")).await.unwrap();
    let config = Config {
        queue_watermark_depth: 5,
        watermark_pushback: 60,
        ..quick()
    };
    let mut qr =
        QueueRunner::new(config, client.store().clone(), vec![gearmand.addr.clone()]).unwrap();
    let now = db.now().await;
    let stats = qr.run_once().await.unwrap();
    assert_eq!((stats.dispatched, stats.pushed_back), (6, 15), "{stats:?}");
    assert_eq!(gearmand.depth("busy").await, 5);
    assert_eq!(
        gearmand.depth("idle").await,
        1,
        "another function is not held back"
    );
    assert_eq!(
        db.count(&format!("run_after BETWEEN {} AND {}", now + 60, now + 62))
            .await,
        15
    );
    // With the queue still full, nothing more goes.
    assert_eq!(qr.run_once().await.unwrap().dispatched, 0);
}

#[tokio::test]
async fn controller_rows_go_to_run_queued_job() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let client = Client::new(db.store().await);
    client
        .insert_job(NewJob::new("real", "x").flag(Flag::Controller))
        .await
        .unwrap();
    let mut qr =
        QueueRunner::new(quick(), client.store().clone(), vec![gearmand.addr.clone()]).unwrap();
    // While "real" has no worker, a Controller could only wait for one:
    // the row waits in the database instead.
    let stats = qr.run_once().await.unwrap();
    assert_eq!((stats.dispatched, stats.pushed_back), (0, 1));
    db.exec("UPDATE job SET run_after = UNIX_TIMESTAMP()").await;

    let _worker = Worker::start(&gearmand, "real", client.clone());
    gearmand.wait_for_worker("real").await;
    qr.run_once().await.unwrap();
    assert_eq!(gearmand.depth(RUN_QUEUED_JOB).await, 1);
    assert_eq!(gearmand.depth("real").await, 0);
}

#[tokio::test]
async fn batch_size_grows_while_batches_are_full() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let client = Client::new(db.store().await);
    let jobs: Vec<NewJob> = (0..400)
        .map(|i| NewJob::new("bulk", format!("{i}")))
        .collect();
    client.insert_jobs(&jobs).await.unwrap();
    let config = Config {
        queue_watermark_depth: 0,
        ..quick()
    };
    let mut qr =
        QueueRunner::new(config, client.store().clone(), vec![gearmand.addr.clone()]).unwrap();
    let sizes: Vec<usize> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(qr.run_once().await.unwrap().dispatched);
        }
        v
    };
    assert_eq!(sizes, vec![50, 150, 200]);
    assert_eq!(gearmand.depth("bulk").await, 400);
}

#[tokio::test]
async fn gearmand_outage_loses_nothing() {
    let (db, mut gearmand) = (TestDb::new().await, Gearmand::start());
    let client = Client::new(db.store().await);
    let config = Config {
        lease: 3,
        submit_retry_delay: 1,
        ..quick()
    };
    let stop = CancellationToken::new();
    let qr = QueueRunner::new(config, client.store().clone(), vec![gearmand.addr.clone()]).unwrap();
    let runner = tokio::spawn(qr.run(stop.clone()));

    // Jobs that reach gearmand and die with it (no worker yet).
    let first: Vec<NewJob> = (0..50)
        .map(|i| NewJob::new("survive", format!("a{i}")))
        .collect();
    client.insert_jobs(&first).await.unwrap();
    wait_until(LIMIT, "first jobs queued in gearmand", || async {
        gearmand.depth("survive").await == 50
    })
    .await;
    gearmand.kill();
    // Jobs inserted while gearmand is down.
    let second: Vec<NewJob> = (0..50)
        .map(|i| NewJob::new("survive", format!("b{i}")))
        .collect();
    client.insert_jobs(&second).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    gearmand.restart();

    let worker = Worker::start(&gearmand, "survive", client.clone());
    wait_until(LIMIT, "every job to complete after the outage", || async {
        db.count("1").await == 0
    })
    .await;
    let done: HashSet<u64> = worker.jobids().into_iter().collect();
    assert_eq!(done.len(), 100);
    stop.cancel();
    within(Duration::from_secs(5), "queuerunner stops", runner)
        .await
        .unwrap();
}

#[tokio::test]
async fn run_returns_promptly_on_shutdown() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let config = Config {
        batch_run_sleep: Duration::from_secs(60),
        ..Config::default()
    };
    let qr = QueueRunner::new(config, db.store().await, vec![gearmand.addr.clone()]).unwrap();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(qr.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    within(Duration::from_secs(2), "run() returns after cancel", runner)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_idle_queuerunner_notices_a_new_job_long_before_its_round_is_due() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let store = db.store().await;
    let config = Config {
        // Without the probe, a job inserted now would wait up to a minute.
        batch_run_sleep: Duration::from_secs(60),
        idle_poll: Duration::from_millis(100),
        ..Config::default()
    };
    let qr = QueueRunner::new(config, store.clone(), vec![gearmand.addr.clone()]).unwrap();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(qr.run(stop.clone()));
    // Its first round found nothing: it is now in its minute-long pause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Client::new(store)
        .insert_job(NewJob::new("idle_probe", "x"))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the job to be queued in gearmand",
        || async { gearmand.depth("idle_probe").await == 1 },
    )
    .await;
    stop.cancel();
    within(Duration::from_secs(5), "queuerunner stops", runner)
        .await
        .unwrap();
}

//! Priorities: due jobs of higher priority are claimed first and
//! submitted to gearmand with the matching priority, so that they also
//! overtake a backlog queued there. Needs scripts/services up.

use std::sync::Arc;
use std::time::Duration;

use garivini::names::INJECT_JOBS;
use garivini::queue_runner::Config;
use garivini::{roles, Client, Error, NewJob, Priority, Store};
use testkit::{
    quick_queue_runner as quick, round, wait_until, within, Gearmand, InjectClient, Roles, TestDb,
    Worker, ORIGINAL_SCHEMA,
};

const LIMIT: Duration = Duration::from_secs(60);

async fn running(config: Config, store: Arc<Store>, gearmand: &Gearmand) -> Roles {
    let roles = roles::Config {
        queue_runner: Some(config),
        ..roles::Config::default()
    };
    Roles::start(roles, store, gearmand).await
}

fn jobs(funcname: &str, n: usize, priority: Priority) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob::new(funcname, format!("{priority} {i}")).priority(priority))
        .collect()
}

/// Jobs the test worker runs at once: the order it records them in is
/// that of gearmand's hand-outs up to so many taken at the same moment.
const AT_ONCE: usize = 8;

/// The first jobs a worker ran, by arg.
fn first_args(worker: &Worker, n: usize) -> Vec<String> {
    worker
        .jobs()
        .iter()
        .take(n)
        .map(|j| String::from_utf8_lossy(&j.arg).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_job_inserted_behind_5000_normal_ones_starts_before_them() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let client = Client::new(db.store().await);
    client
        .insert_jobs(&jobs("prio_f", 5000, Priority::Normal))
        .await
        .unwrap();
    client
        .insert_jobs(&jobs("prio_f", 1, Priority::High))
        .await
        .unwrap();
    let worker = Worker::serving("prio_f")
        .completing_with(client.clone())
        .start(&gearmand)
        .await;
    let _runner = running(quick(), client.store().clone(), &gearmand).await;
    wait_until(LIMIT, "the first jobs to run", || async {
        worker.count() >= 10
    })
    .await;
    // Among the first taken, where without priorities it would have come
    // after the 5,000.
    let first = first_args(&worker, AT_ONCE);
    assert!(first.contains(&"high 0".to_string()), "{first:?}");
}

/// Normal jobs already queued inside gearmand (up to the watermark) are
/// overtaken by a high one submitted after them, and low ones wait for
/// both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_job_overtakes_the_backlog_queued_in_gearmand_and_low_ones_wait() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let client = Client::new(db.store().await);
    let mut qr = testkit::queue_runner(quick(), client.store().clone(), &gearmand);
    // A worker is registered (rows wait in the table while there is none)
    // but takes nothing: the jobs queue in gearmand.
    let idle = gearmand.idle_worker("back_f").await;
    client
        .insert_jobs(&jobs("back_f", 5, Priority::Low))
        .await
        .unwrap();
    client
        .insert_jobs(&jobs("back_f", 300, Priority::Normal))
        .await
        .unwrap();
    let mut dispatched = 0;
    while dispatched < 305 {
        dispatched += round(&mut qr).await.unwrap().dispatched;
    }
    assert_eq!(dispatched, 305);
    client
        .insert_jobs(&jobs("back_f", 1, Priority::High))
        .await
        .unwrap();
    assert_eq!(round(&mut qr).await.unwrap().dispatched, 1);
    assert_eq!(gearmand.depth("back_f").await, 306);
    drop(idle);

    let worker = Worker::serving("back_f")
        .completing_with(client.clone())
        .start(&gearmand)
        .await;
    wait_until(LIMIT, "every job to run", || async {
        worker.count() >= 306
    })
    .await;
    let order = first_args(&worker, 306);
    let at = |arg: &str| order.iter().position(|a| a == arg).unwrap();
    assert!(at("high 0") < AT_ONCE, "{:?}", &order[..AT_ONCE]);
    for i in 0..5 {
        let low = format!("low {i}");
        assert!(at(&low) >= 306 - 5 - AT_ONCE, "{low}: {:?}", &order[290..]);
    }
}

/// `inject_jobs` takes `"priority"`: stored in the row, and its
/// `run_queued_job` dispatched with it; a wrong value is refused with the
/// reason and nothing is stored.
#[tokio::test]
async fn inject_jobs_takes_a_priority_and_refuses_a_wrong_one() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let injector = Roles::injector(Default::default(), store, &gearmand).await;
    gearmand.wait_for_worker(INJECT_JOBS).await;
    let inject = InjectClient::new(&gearmand);
    let answer = inject
        .inject(r#"[{"funcname":"inj_f","priority":"low"},{"funcname":"inj_f"}]"#)
        .await
        .unwrap();
    assert!(answer.starts_with(b"["), "{answer:?}");
    let stored: Vec<(String, u8)> = db
        .query("SELECT funcname, priority FROM job ORDER BY jobid")
        .await;
    assert_eq!(stored, [("inj_f".into(), 2), ("inj_f".into(), 1)]);
    let refused = inject
        .inject(r#"{"funcname":"inj_f","priority":"urgent"}"#)
        .await
        .unwrap_err();
    assert!(
        refused.contains("invalid priority \"urgent\": expected high, normal or low"),
        "{refused}"
    );
    assert_eq!(db.count("1").await, 2, "nothing more stored");
    drop(injector);
}

/// The original's table has no priority column: normal jobs work as
/// before, a high one is refused with the way out, nothing stored.
#[tokio::test]
async fn a_table_without_the_priority_column_takes_normal_jobs_and_refuses_others() {
    let db = TestDb::with_schema(ORIGINAL_SCHEMA).await;
    let (gearmand, client) = (Gearmand::start().await, Client::new(db.store().await));
    client
        .insert_jobs(&jobs("old_f", 3, Priority::Normal))
        .await
        .unwrap();
    let err = client
        .insert_job(NewJob::new("old_f", "x").priority(Priority::High))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoPriorityColumn { dbid: 1 }), "{err}");
    assert!(err.to_string().contains("garivini schema check --apply"));
    assert_eq!(db.count("1").await, 3);
    let worker = Worker::serving("old_f")
        .completing_with(client.clone())
        .start(&gearmand)
        .await;
    let mut qr = testkit::queue_runner(quick(), client.store().clone(), &gearmand);
    within(LIMIT, "a round", round(&mut qr)).await.unwrap();
    wait_until(LIMIT, "the jobs to run", || async { worker.count() == 3 }).await;
    assert!(worker.jobs().iter().all(|j| j.priority == Priority::Normal));
}

/// One claim takes the due rows high first, then normal, then low, then
/// a level above low's set by hand (which the probes of the claim index
/// must not leave out), each level oldest first; a row not yet due is
/// left alone whatever its level. And a level with nothing due does not
/// hold up the others.
#[tokio::test]
async fn one_claim_takes_high_then_normal_then_low_then_a_level_set_by_hand() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    for (priority, n) in [
        (Priority::Low, 2),
        (Priority::Normal, 2),
        (Priority::High, 2),
    ] {
        client
            .insert_jobs(&jobs("levels_f", n, priority))
            .await
            .unwrap();
    }
    client
        .insert_job(NewJob::new("levels_f", "by hand 0"))
        .await
        .unwrap();
    db.exec("UPDATE job SET priority = 7 WHERE arg = 'by hand 0'")
        .await;
    client
        .insert_job(
            NewJob::new("levels_f", "later")
                .priority(Priority::High)
                .delay(3600),
        )
        .await
        .unwrap();
    let store = client.store();
    let holds = garivini::store::Holds::default();
    let claim = |limit| store.claim(1, limit, 60, &holds, |due| vec![true; due.len()]);
    let args = |claim: garivini::store::Claim| -> Vec<String> {
        claim
            .jobs
            .iter()
            .map(|j| String::from_utf8_lossy(&j.arg).into_owned())
            .collect()
    };
    assert_eq!(
        args(claim(3).await.unwrap()),
        ["high 0", "high 1", "normal 0"]
    );
    assert_eq!(
        args(claim(100).await.unwrap()),
        ["normal 1", "low 0", "low 1", "by hand 0"]
    );
    assert!(claim(100).await.unwrap().jobs.is_empty());
    assert!(!store.any_due(1, &Default::default()).await.unwrap());
    // Only a level above low's due: the idle probe sees it too.
    db.exec("UPDATE job SET run_after = 0, priority = 9 WHERE arg = 'later'")
        .await;
    assert!(store.any_due(1, &Default::default()).await.unwrap());
    assert_eq!(args(claim(100).await.unwrap()), ["later"]);
}

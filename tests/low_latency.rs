//! Low-latency mode against a real MariaDB and a private gearmand per
//! test: inject_jobs → Injector → run_queued_job → Controller → a plain
//! worker. Roles run in-process here (the fault tests with processes are in
//! tests/processes.rs). Needs scripts/services up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use garivini::gearman::{Outcome, WorkResult};
use garivini::injector::answer_refs;
use garivini::job::NEVER;
use garivini::names::INJECT_JOBS;
use garivini::{controller, injector, queue_runner, roles, Client, Flag, Job};
use testkit::{
    quick_queue_runner, wait_until, within, Gearmand, InjectClient, Roles, TestDb, Worker,
};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

/// Injector and Controller with `lease`, the Controller's jobs dead after
/// `max_attempts` failures, and a QueueRunner when `queue_runner`; in this
/// process, stopped on drop.
async fn start_roles(
    db: &TestDb,
    gearmand: &Gearmand,
    lease: u32,
    max_attempts: u8,
    queue_runner: bool,
) -> Roles {
    let config = roles::Config {
        injector: Some(injector::Config {
            lease,
            ..Default::default()
        }),
        controller: Some(controller::Config {
            lease,
            ..Default::default()
        }),
        queue_runner: queue_runner.then(|| queue_runner::Config {
            lease,
            ..quick_queue_runner()
        }),
        max_attempts,
        ..roles::Config::default()
    };
    Roles::start(config, db.store().await, gearmand).await
}

/// A test's database and gearmand, the roles of [`start_roles`] on them
/// (stopped first when the four are dropped), and a client of
/// `inject_jobs`.
async fn servers_and_roles(
    lease: u32,
    max_attempts: u8,
    queue_runner: bool,
) -> (TestDb, Gearmand, Roles, InjectClient) {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let roles = start_roles(&db, &gearmand, lease, max_attempts, queue_runner).await;
    let client = InjectClient::new(&gearmand);
    (db, gearmand, roles, client)
}

/// A plain worker for `function` that takes `work` over each job and
/// answers `result`.
async fn worker_taking(
    gearmand: &Gearmand,
    function: &str,
    work: Duration,
    result: WorkResult,
) -> Worker {
    Worker::serving(function)
        .taking(work)
        .answering(result)
        .start(gearmand)
        .await
}

async fn inject(client: &InjectClient, body: &str) -> Outcome {
    client.submit(body.to_string()).await
}

/// Waits until `worker` ran one job and its row is gone; that job.
async fn only_run(worker: &Worker, db: &TestDb) -> Job {
    wait_until(
        LIMIT,
        "the job to run and its row to be deleted",
        || async { worker.count() == 1 && db.count("1").await == 0 },
    )
    .await;
    worker.jobs()[0].clone()
}

fn ok() -> WorkResult {
    WorkResult::Complete(Bytes::new())
}

#[tokio::test]
async fn injected_job_runs_on_a_plain_worker_and_its_row_is_gone() {
    let (db, gearmand, _roles, client) = servers_and_roles(60, 25, false).await;
    let worker = Worker::plain(&gearmand, "ll_resize").await;

    let answer = client
        .inject(r#"{"funcname":"ll_resize","arg":"img-1","unique":"k1"}"#)
        .await
        .expect("inject_jobs succeeds");
    let refs = answer_refs(&answer).unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].dbid, 1);
    let job = only_run(&worker, &db).await;
    assert_eq!(job.jobid, refs[0].jobid);
    assert_eq!(
        (job.funcname.as_str(), job.arg.as_slice()),
        ("ll_resize", &b"img-1"[..])
    );
    assert_eq!(
        (job.uniqkey.as_deref(), job.flag),
        (Some("k1"), Flag::Controller)
    );
}

#[tokio::test]
async fn quotes_sql_and_nul_reach_the_worker_byte_for_byte() {
    // A NUL ends a field in the Gearman protocol: a unique key with one,
    // given to gearmand, made the rest of the key the start of the
    // workload, and the worker got a job JSON that was not JSON.
    let (db, gearmand, _roles, client) = servers_and_roles(60, 25, false).await;
    let funcname = "ll_'\";DROP/**/TABLE/**/job;--";
    let worker = Worker::plain(&gearmand, funcname).await;
    let hostile = "x'); DROP TABLE job; -- \0 % _ \\ \" \n";
    let body = serde_json::json!({"funcname": funcname, "arg": hostile, "unique": hostile});
    let answer = client
        .inject(body.to_string())
        .await
        .expect("inject_jobs succeeds");
    let r = answer_refs(&answer).unwrap()[0];
    let job = only_run(&worker, &db).await;
    assert_eq!(job.jobid, r.jobid);
    assert_eq!(job.funcname, funcname);
    assert_eq!(job.arg, hostile.as_bytes());
    assert_eq!(job.uniqkey.as_deref(), Some(hostile));
}

#[tokio::test]
async fn the_answer_comes_after_the_commit() {
    // With no Controller and no worker, the row must be there when the
    // client hears back: the answer is the proof of a committed row.
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let _injector = Roles::injector(injector::Config::default(), db.store().await, &gearmand).await;
    let client = InjectClient::new(&gearmand);
    for i in 0..20 {
        let answer = client
            .inject(format!(r#"{{"funcname":"nobody","arg":"{i}"}}"#))
            .await
            .expect("inject_jobs succeeds");
        let r = answer_refs(&answer).unwrap()[0];
        assert_eq!(
            db.count(&format!("jobid = {} AND flag = 'controller'", r.jobid))
                .await,
            1
        );
    }
}

#[tokio::test]
async fn an_array_injects_many_and_answers_an_array_in_order() {
    let (db, gearmand, _roles, client) = servers_and_roles(60, 25, false).await;
    let worker = Worker::plain(&gearmand, "ll_many").await;
    let body: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"funcname":"ll_many","arg":"a{i}"}}"#))
        .collect();
    let answer = client
        .inject(format!("[{}]", body.join(",")))
        .await
        .expect("inject_jobs succeeds");
    assert!(answer.starts_with(b"["));
    let refs = answer_refs(&answer).unwrap();
    assert_eq!(refs.len(), 50);
    db.wait_for_count(LIMIT, "all 50 jobs to run", "1", 0).await;
    let runs = worker.jobs();
    for (i, r) in refs.iter().enumerate() {
        let job = runs.iter().find(|j| j.jobid == r.jobid).expect("ran");
        assert_eq!(job.arg, format!("a{i}").into_bytes());
    }
}

#[tokio::test]
async fn delayed_job_waits_for_its_time() {
    let (db, gearmand, _roles, client) = servers_and_roles(60, 25, true).await;
    let worker = Worker::plain(&gearmand, "ll_later").await;
    let answer = client
        .inject(r#"{"funcname":"ll_later","arg":"x","run_after":3}"#)
        .await
        .expect("inject_jobs succeeds");
    let r = answer_refs(&answer).unwrap()[0];
    let due: Vec<u32> = db
        .query(&format!(
            "SELECT run_after FROM job WHERE jobid = {}",
            r.jobid
        ))
        .await;
    while db.now().await < due[0] {
        assert_eq!(worker.count(), 0, "ran before it was due");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.wait_for_count(LIMIT, "the delayed job to run", "1", 0)
        .await;
    assert_eq!(worker.count(), 1);
}

#[tokio::test]
async fn a_failing_worker_leads_to_backoff_then_a_dead_row() {
    let (db, gearmand, _roles, client) = servers_and_roles(60, 2, true).await;
    let worker = worker_taking(&gearmand, "ll_flaky", Duration::ZERO, WorkResult::Fail).await;
    inject(&client, r#"{"funcname":"ll_flaky","arg":"x"}"#).await;
    db.wait_for_count(
        LIMIT,
        "the first failure to be recorded",
        "failcount = 1",
        1,
    )
    .await;
    let now = db.now().await;
    assert_eq!(
        db.count(&format!("run_after BETWEEN {} AND {}", now + 58, now + 61))
            .await,
        1,
        "backoff of a minute"
    );
    // Make it due now: the QueueRunner sends it to the Controller again.
    db.exec("UPDATE job SET run_after = UNIX_TIMESTAMP()").await;
    db.wait_for_count(
        LIMIT,
        "the second failure to park the job",
        &format!("failcount = 2 AND run_after = {NEVER}"),
        1,
    )
    .await;
    assert_eq!(worker.count(), 2);
}

#[tokio::test]
async fn a_worker_exception_counts_as_a_failure() {
    let (db, gearmand, _roles, client) = servers_and_roles(60, 25, false).await;
    let _worker = worker_taking(
        &gearmand,
        "ll_throws",
        Duration::ZERO,
        WorkResult::FailWith(Bytes::from("boom")),
    )
    .await;
    inject(&client, r#"{"funcname":"ll_throws","arg":"x"}"#).await;
    db.wait_for_count(LIMIT, "the failure to be recorded", "failcount = 1", 1)
        .await;
}

#[tokio::test]
async fn bad_input_is_refused_stores_nothing_and_the_next_request_is_served() {
    let (db, _gearmand, _roles, client) = servers_and_roles(60, 25, false).await;
    let long_func = format!(r#"{{"funcname":"{}"}}"#, "f".repeat(201));
    let long_key = format!(r#"{{"funcname":"f","unique":"{}"}}"#, "u".repeat(256));
    let too_many = format!("[{}]", vec![r#"{"funcname":"f"}"#; 1001].join(","));
    let cases = [
        ("not json", "not JSON"),
        ("42", "expected a JSON object or an array"),
        (r#"{"arg":"x"}"#, "funcname is missing"),
        (r#"{"funcname":""}"#, "funcname is empty"),
        (long_func.as_str(), "funcname is 201 bytes"),
        (long_key.as_str(), "unique key is 256 bytes"),
        (
            r#"{"funcname":"f","run_after":-5}"#,
            "run_after must be a whole number",
        ),
        (
            r#"{"funcname":"f","run_after":2.5}"#,
            "run_after must be a whole number",
        ),
        (r#"{"funcname":"f","arg":17}"#, "arg must be a string"),
        (
            too_many.as_str(),
            "1001 jobs in one array, over the limit of 1000",
        ),
        (
            r#"[{"funcname":"ok"},{"funcname":""}]"#,
            "job 1: funcname is empty",
        ),
    ];
    for (body, why) in cases {
        match inject(&client, body).await {
            Outcome::Fail(reason) => {
                let reason = String::from_utf8_lossy(&reason);
                assert!(
                    reason.contains(why),
                    "{body:.60}: refused with {reason:?}, expected {why:?}"
                );
            }
            other => panic!("{body:.60}: expected a failure, got {other:?}"),
        }
    }
    assert_eq!(db.count("1").await, 0, "nothing stored");
    assert!(matches!(
        inject(&client, r#"{"funcname":"fine","run_after":60}"#).await,
        Outcome::Complete(_)
    ));
    assert_eq!(db.count("1").await, 1);
}

#[tokio::test]
async fn an_unreachable_database_is_a_failure_never_a_success() {
    let gearmand = Gearmand::start().await;
    let dead = format!("mysql://root@127.0.0.1:{}/nothing", testkit::free_port());
    let store = garivini::Store::open(garivini::config::parse_dsn_list(&dead).unwrap())
        .unwrap()
        .with_op_timeout(Duration::from_secs(2));
    let _injector = Roles::injector(injector::Config::default(), Arc::new(store), &gearmand).await;
    let client = InjectClient::new(&gearmand);
    for _ in 0..3 {
        match inject(&client, r#"{"funcname":"f","arg":"x"}"#).await {
            Outcome::Fail(reason) => assert!(
                String::from_utf8_lossy(&reason).contains("database 1"),
                "{reason:?}"
            ),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_lost_dispatch_comes_back_through_the_queue_runner() {
    let (db, mut gearmand) = (TestDb::new().await, Gearmand::start().await);
    // Only an Injector: its dispatch sits in gearmand, which then dies.
    let injector = Roles::injector(
        injector::Config {
            lease: 2,
            ..Default::default()
        },
        db.store().await,
        &gearmand,
    )
    .await;
    let client = InjectClient::new(&gearmand);
    inject(&client, r#"{"funcname":"ll_lost","arg":"x"}"#).await;
    gearmand
        .wait_for_depth(LIMIT, "the dispatch to reach gearmand", "run_queued_job", 1)
        .await;
    injector.stop(LIMIT).await;
    gearmand.kill();
    gearmand.restart().await;
    // And a throughput-mode row whose dispatch was lost the same way.
    let store = db.store().await;
    let c = Client::new(store.clone());
    c.insert_job(garivini::NewJob::new("ll_lost", "shim-row"))
        .await
        .unwrap();
    db.exec("UPDATE job SET run_after = UNIX_TIMESTAMP() + 2 WHERE flag = 'shim'")
        .await;

    let _roles = start_roles(&db, &gearmand, 2, 25, true).await;
    let worker = Worker::plain(&gearmand, "ll_lost").await;
    wait_until(LIMIT, "both rows to run after their lease", || async {
        worker.count() >= 2
    })
    .await;
    // The shim row is the worker's to delete; the controller row is gone.
    db.wait_for_count(
        LIMIT,
        "the controller row to be deleted",
        "flag = 'controller'",
        0,
    )
    .await;
}

#[tokio::test]
async fn a_job_running_longer_than_its_lease_is_not_started_twice() {
    let (db, gearmand, _roles, client) = servers_and_roles(2, 25, true).await;
    let worker = worker_taking(&gearmand, "ll_slow", Duration::from_secs(6), ok()).await;
    inject(&client, r#"{"funcname":"ll_slow","arg":"x"}"#).await;
    wait_until(
        Duration::from_secs(40),
        "the slow job to finish",
        || async { db.count("1").await == 0 },
    )
    .await;
    assert_eq!(worker.count(), 1, "started more than once while it ran");
}

#[tokio::test]
async fn controller_shutdown_does_not_wait_forever_for_a_job_in_hand() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let _injector = Roles::injector(injector::Config::default(), store.clone(), &gearmand).await;
    let config = controller::Config {
        shutdown_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let ctl = controller::Controller::new(config, Client::new(store), gearmand.servers()).unwrap();
    let ctl_stop = CancellationToken::new();
    let running = tokio::spawn(ctl.run(ctl_stop.clone()));
    let _worker = worker_taking(&gearmand, "ll_forever", Duration::from_secs(3600), ok()).await;
    let client = InjectClient::new(&gearmand);
    inject(&client, r#"{"funcname":"ll_forever","arg":"x"}"#).await;
    gearmand
        .wait_for_depth(LIMIT, "the worker to run the job", "ll_forever", 1)
        .await;
    ctl_stop.cancel();
    within(
        Duration::from_secs(5),
        "controller stops within its shutdown timeout",
        running,
    )
    .await
    .unwrap();
    assert_eq!(
        db.count("1").await,
        1,
        "the row stays, to run after its lease"
    );
}

#[tokio::test]
async fn a_job_whose_function_has_no_worker_waits_in_the_database() {
    let (db, gearmand, _roles, client) = servers_and_roles(60, 25, false).await;
    inject(&client, r#"{"funcname":"ll_unserved","arg":"x"}"#).await;
    db.wait_for_count(
        LIMIT,
        "the row to be given back due, its attempt undone",
        "run_after <= UNIX_TIMESTAMP() AND attempted_at = 0",
        1,
    )
    .await;
    assert_eq!(
        gearmand.depth("ll_unserved").await,
        0,
        "no Controller slot held for it"
    );
    assert_eq!(db.count("failcount = 0").await, 1, "waiting is not failing");
}

#[tokio::test]
async fn roles_reconnect_after_gearmand_restarts() {
    let (db, mut gearmand, _roles, client) = servers_and_roles(60, 25, true).await;
    let worker = Worker::plain(&gearmand, "ll_again").await;
    inject(&client, r#"{"funcname":"ll_again","arg":"before"}"#).await;
    db.wait_for_count(LIMIT, "the first job to run", "1", 0)
        .await;

    gearmand.kill();
    gearmand.restart().await;
    // Every role and the worker find gearmand again by themselves (capped
    // backoff); the client's first submit after the restart may fail.
    wait_until(
        LIMIT,
        "the Injector and the worker to register again",
        || async {
            gearmand.workers(INJECT_JOBS).await > 0 && gearmand.workers("ll_again").await > 0
        },
    )
    .await;
    let mut answered = false;
    for _ in 0..20 {
        if let Ok(Outcome::Complete(_)) = client
            .try_submit(r#"{"funcname":"ll_again","arg":"after"}"#)
            .await
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answered, "inject_jobs never answered after the restart");
    wait_until(
        LIMIT,
        "the job injected after the restart to run",
        || async { db.count("1").await == 0 },
    )
    .await;
    assert_eq!(worker.count(), 2);
}

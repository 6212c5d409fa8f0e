//! Waiting work is visible: while a QueueRunner runs, a paused function's
//! and a worker-less function's rows stay due (their `run_after` as
//! stored), and `garivini status --json` says so at every look, with why
//! and how long; other functions' jobs run past them; paging over such a
//! backlog meets every row once and ends. Real MariaDB (a database per
//! test) and a private gearmand; needs scripts/services up.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use garivini::{admin, queue_runner, roles, Client, NewJob};
use serde_json::Value;
use testkit::{insert_numbered, run_garivini, wait_until, Gearmand, Roles, TestDb, Worker};

const LIMIT: Duration = Duration::from_secs(30);

/// `garivini --gearmand G status --json` on `dsn`.
async fn status_json(dsn: &str, gearmand: &Gearmand) -> Value {
    let (code, out, err) =
        run_garivini(dsn, &["--gearmand", &gearmand.addr, "status", "--json"]).await;
    assert_eq!(code, 0, "garivini status: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status printed no JSON ({e}): {out}"))
}

/// Database 1's entry for `funcname` in a status report.
fn function<'a>(status: &'a Value, funcname: &str) -> &'a Value {
    status["databases"][0]["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .find(|f| f["funcname"] == funcname)
        .unwrap_or_else(|| panic!("{funcname} not in {status}"))
}

/// A QueueRunner with quick rounds, as `garivini queuerunner` runs it.
async fn queue_runner(db: &TestDb, gearmand: &Gearmand) -> Roles {
    let config = roles::Config {
        queue_runner: Some(queue_runner::Config {
            batch_run_sleep: Duration::from_millis(100),
            ..queue_runner::Config::default()
        }),
        ..roles::Config::default()
    };
    Roles::start(config, db.store().await, gearmand).await
}

#[tokio::test]
async fn paused_and_worker_less_rows_read_due_with_why_at_every_look_while_others_run() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    admin::pause(&store, "w_paused").await.expect("paused");
    let client = Client::new(store.clone());
    insert_numbered(&client, "w_paused", "p", 300).await;
    insert_numbered(&client, "w_nobody", "n", 200).await;
    let stored: u64 = db
        .count("funcname IN ('w_paused', 'w_nobody') AND run_after <= UNIX_TIMESTAMP()")
        .await;
    assert_eq!(stored, 500);
    let ok = Worker::serving("w_ok")
        .completing_with(Client::new(store.clone()))
        .start(&gearmand)
        .await;
    let roles = queue_runner(&db, &gearmand).await;
    insert_numbered(&client, "w_ok", "o", 20).await;
    wait_until(LIMIT, "the served function's jobs to run", || async {
        ok.count() == 20
    })
    .await;

    // Five looks over several QueueRunner rounds: the held rows read due
    // every time, and say why.
    let mut oldest_before = 0;
    for look in 0..5 {
        let status = status_json(&db.url, &gearmand).await;
        let paused = function(&status, "w_paused");
        assert_eq!(paused["due"], 300, "look {look}: {paused}");
        assert_eq!(paused["waiting"], "paused", "look {look}: {paused}");
        let nobody = function(&status, "w_nobody");
        assert_eq!(nobody["due"], 200, "look {look}: {nobody}");
        assert_eq!(nobody["waiting"], "no_worker", "look {look}: {nobody}");
        assert_eq!(nobody["scheduled"], 0, "look {look}: {nobody}");
        let oldest = nobody["oldest_due_secs"]
            .as_u64()
            .expect("an oldest due age");
        assert!(
            oldest >= oldest_before,
            "the age grows: {oldest} after {oldest_before}"
        );
        oldest_before = oldest;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        db.count("funcname IN ('w_paused', 'w_nobody') AND attempted_at = 0 AND failcount = 0")
            .await,
        500,
        "no held row was leased or failed"
    );
    // The text says it too.
    let (_, text, _) = run_garivini(&db.url, &["--gearmand", &gearmand.addr, "status"]).await;
    assert!(
        text.contains("no worker") && text.contains("paused"),
        "{text}"
    );
    roles.stop(LIMIT).await;
}

#[tokio::test]
async fn a_healthy_functions_jobs_run_at_once_behind_thousands_of_worker_less_rows() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let client = Client::new(store.clone());
    let batch: Vec<NewJob> = (0..10_000)
        .map(|i| NewJob::new("w_orphan", format!("o{i}")))
        .collect();
    for chunk in batch.chunks(1000) {
        client.insert_jobs(chunk).await.expect("stored");
    }
    let ok = Worker::serving("w_fast")
        .completing_with(Client::new(store.clone()))
        .start(&gearmand)
        .await;
    let roles = queue_runner(&db, &gearmand).await;
    // Let the QueueRunner meet the backlog first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    insert_numbered(&client, "w_fast", "f", 100).await;
    wait_until(LIMIT, "the healthy function's 100 jobs to run", || async {
        ok.count() == 100
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "100 jobs took {took:?} behind 10,000 worker-less rows"
    );
    roles.stop(LIMIT).await;
}

#[tokio::test]
async fn paging_over_a_held_backlog_meets_every_row_once_and_ends() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    admin::pause(&store, "w_page").await.expect("paused");
    let client = Client::new(store.clone());
    insert_numbered(&client, "w_page", "p", 300).await;
    let roles = queue_runner(&db, &gearmand).await;
    let mut seen = HashSet::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec![
            "jobs",
            "list",
            "--funcname",
            "w_page",
            "--limit",
            "50",
            "--json",
        ];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let (code, out, err) = run_garivini(&db.url, &args).await;
        assert_eq!(code, 0, "{err}");
        let page: Value = serde_json::from_str(&out).expect("JSON");
        for job in page["jobs"].as_array().expect("jobs") {
            let id = job["id"].as_str().expect("id").to_string();
            assert!(seen.insert(id.clone()), "{id} came twice");
        }
        pages += 1;
        assert!(pages <= 7, "paging did not end: {pages} pages");
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
        // As a person clicks: rounds run between the pages.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(seen.len(), 300, "every row once");
    roles.stop(LIMIT).await;
}

#[tokio::test]
async fn a_low_latency_job_without_a_worker_reads_due_and_cancels_without_force() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let config = roles::Config {
        queue_runner: Some(testkit::quick_queue_runner()),
        injector: Some(garivini::injector::Config::default()),
        controller: Some(garivini::controller::Config::default()),
        ..roles::Config::default()
    };
    let roles = Roles::start(config, db.store().await, &gearmand).await;
    let answer = testkit::InjectClient::new(&gearmand)
        .inject(r#"{"funcname":"w_ll_nobody","arg":"x"}"#)
        .await
        .expect("stored");
    let answer: Value = serde_json::from_slice(&answer).expect("JSON");
    let id = format!("{}:{}", answer["dbid"], answer["jobid"]);
    db.wait_for_count(
        LIMIT,
        "the job given back due, its attempt undone",
        "run_after <= UNIX_TIMESTAMP() AND attempted_at = 0",
        1,
    )
    .await;
    // Several rounds later it still reads due, not in flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = status_json(&db.url, &gearmand).await;
    let f = function(&status, "w_ll_nobody");
    assert_eq!(
        (f["due"].as_u64(), f["in_flight"].as_u64()),
        (Some(1), Some(0)),
        "{f}"
    );
    assert_eq!(f["waiting"], "no_worker", "{f}");
    let (code, out, err) = run_garivini(&db.url, &["jobs", "cancel", &id]).await;
    assert_eq!(code, 0, "cancel without --force: {out}{err}");
    assert_eq!(db.count("1").await, 0, "cancelled");
    roles.stop(LIMIT).await;
}

//! What happened to a job: `created_at`, `attempted_at`, `failed_at` and
//! `last_error` written by leases and by our Client's and Controller's
//! failures, shown by `garivini jobs show`, and the exact in flight and
//! retrying of `status` / `jobs list` / `jobs retry`; the original table
//! (without the columns) keeps the old behaviour until `schema check
//! --apply` adds them. Real MariaDB and, where a worker runs, a private
//! gearmand; needs `scripts/services up`.

use std::time::Duration;

use bytes::Bytes;
use garivini::gearman::WorkResult;
use garivini::{controller, injector, roles, Client, NewJob};
use serde_json::Value;
use testkit::{
    run_garivini, with_servers, Gearmand, InjectClient, Proc, Roles, TestDb, Worker,
    ORIGINAL_SCHEMA,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs a command that must succeed and print JSON; returns it.
async fn json(dsn: &str, args: &[&str]) -> Value {
    let (code, out, err) = run_garivini(dsn, args).await;
    assert_eq!(code, 0, "garivini {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// `jobs show ID --json`.
async fn show(db: &TestDb, id: &str) -> Value {
    json(&db.url, &["jobs", "show", id, "--json"]).await
}

/// The states `jobs list --json` gives, by id.
async fn states(db: &TestDb) -> Vec<(String, String)> {
    let list = json(&db.url, &["jobs", "list", "--json"]).await;
    let mut out: Vec<(String, String)> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_string(),
                j["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `status --json`'s counts of `funcname` in database 1.
async fn counts(db: &TestDb, funcname: &str) -> Value {
    let status = json(&db.url, &["status", "--json"]).await;
    status["databases"][0]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["funcname"] == funcname)
        .unwrap_or_else(|| panic!("no {funcname} in {status}"))
        .clone()
}

async fn retry(db: &TestDb, id: &str) -> (i32, String) {
    let (code, _, err) = run_garivini(&db.url, &["jobs", "retry", id]).await;
    (code, err)
}

#[tokio::test]
async fn a_work_fail_through_the_controller_shows_its_data_and_attempt_time_and_retries_unforced() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let config = roles::Config {
        injector: Some(injector::Config {
            lease: 60,
            ..Default::default()
        }),
        controller: Some(controller::Config {
            lease: 60,
            ..Default::default()
        }),
        queue_runner: None,
        max_attempts: 25,
        ..roles::Config::default()
    };
    let _roles = Roles::start(config, db.store().await, &gearmand).await;
    let _worker = Worker::serving("h_flaky")
        .answering(WorkResult::FailWith(Bytes::from("disk full on /var")))
        .start(&gearmand)
        .await;
    let before = db.now().await;
    InjectClient::new(&gearmand)
        .inject(r#"{"funcname":"h_flaky","arg":"x"}"#)
        .await
        .expect("inject_jobs succeeds");
    db.wait_for_count(LIMIT, "the failure to be recorded", "failcount = 1", 1)
        .await;

    let shown = show(&db, "1:1").await;
    let h = &shown["history"];
    assert_eq!(h["last_error"], "WORK_FAIL: disk full on /var", "{shown}");
    let attempted = h["attempted_at"].as_u64().expect("an attempt time");
    assert!(attempted >= u64::from(before), "{shown}");
    assert!(h["failed_at"].as_u64().unwrap() >= attempted, "{shown}");
    assert!(
        h["created_at"].as_u64().unwrap() >= u64::from(before),
        "{shown}"
    );
    assert_eq!(shown["state"], "retrying");
    // The text people read says the same.
    let (code, out, err) = run_garivini(&db.url, &["jobs", "show", "1:1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  state      retrying"), "{out}");
    assert!(
        out.contains("  last error WORK_FAIL: disk full on /var"),
        "{out}"
    );
    assert!(out.contains("  attempted  20"), "{out}");

    assert_eq!(states(&db).await, [("1:1".into(), "retrying".into())]);
    let c = counts(&db, "h_flaky").await;
    assert_eq!(
        [&c["retrying"], &c["in_flight"], &c["scheduled"]].map(|n| n.as_u64().unwrap()),
        [1, 0, 0],
        "{c}"
    );
    // Its backoff is a minute, under the 1000 s lease: still not in flight,
    // so it is retried without --force.
    let (code, err) = retry(&db, "1:1").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(states(&db).await, [("1:1".into(), "due".into())]);
}

#[tokio::test]
async fn gv_consume_exec_records_the_exit_status_and_the_end_of_stderr() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let log = |name: &str| dir.path().join(name);
    let _queuerunner = Proc::spawn_logged(
        "garivini",
        &with_servers(
            &db,
            &gearmand,
            &["queuerunner", "--lease", "60", "--batch-run-sleep", "0.2"],
        ),
        &log("queuerunner.log"),
    );
    let _worker = Proc::spawn_logged(
        "gv_consume",
        &with_servers(
            &db,
            &gearmand,
            &[
                "--mode",
                "throughput",
                "--funcname",
                "h_exec",
                "--lease",
                "60",
                "--exec",
                "echo 'first line'; echo 'cannot open input.png' >&2; exit 3",
            ],
        ),
        &log("worker.log"),
    );
    gearmand.wait_for_worker("h_exec").await;
    let client = Client::new(db.store().await);
    let id = client
        .insert_job(NewJob::new("h_exec", "input.png"))
        .await
        .unwrap();
    db.wait_for_count(LIMIT, "the failure to be recorded", "failcount = 1", 1)
        .await;
    let shown = show(&db, &id.to_string()).await;
    assert_eq!(
        shown["history"]["last_error"],
        "command failed: exit status: 3; stderr: cannot open input.png",
        "{shown}"
    );
    assert!(shown["history"]["attempted_at"].as_u64().is_some());
    assert_eq!(shown["state"], "retrying");
}

#[tokio::test]
async fn in_flight_means_leased_and_not_expired() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let client = Client::new(store.clone());
    // 1: delayed 30 s at insert, never attempted; 2: due now, to be leased.
    let delayed = client
        .insert_job(NewJob::new("h_lease", "a").delay(30))
        .await
        .unwrap();
    let leased = client
        .insert_job(NewJob::new("h_lease", "b"))
        .await
        .unwrap();
    let claim = store
        .claim(1, 10, 600, &Default::default(), |jobs| {
            vec![true; jobs.len()]
        })
        .await
        .unwrap();
    assert_eq!(claim.jobs.len(), 1);
    assert_eq!(
        states(&db).await,
        [
            (delayed.to_string(), "scheduled".into()),
            (leased.to_string(), "in_flight".into())
        ]
    );
    assert!(
        show(&db, &leased.to_string()).await["history"]["attempted_at"]
            .as_u64()
            .is_some()
    );
    let (code, err) = retry(&db, &leased.to_string()).await;
    assert_eq!(code, 1);
    assert!(err.contains("in flight"), "{err}");
    // A scheduled row is not running: retried without --force.
    let (code, err) = retry(&db, &delayed.to_string()).await;
    assert_eq!(code, 0, "{err}");
    // Its lease runs out: due again, though it was attempted.
    db.exec(&format!(
        "UPDATE job SET run_after = UNIX_TIMESTAMP() - 1 WHERE jobid = {}",
        leased.jobid
    ))
    .await;
    assert_eq!(
        states(&db).await,
        [
            (delayed.to_string(), "due".into()),
            (leased.to_string(), "due".into())
        ]
    );
}

/// `jobs show ID --json`'s last error.
async fn last_error(db: &TestDb, id: garivini::JobRef) -> Value {
    show(db, &id.to_string()).await["history"]["last_error"].clone()
}

/// Makes the rows of `db` due now, as a lease running out does.
async fn due_now(db: &TestDb) {
    db.exec("UPDATE job SET run_after = UNIX_TIMESTAMP() - 1")
        .await;
}

#[tokio::test]
async fn a_claim_after_an_expired_lease_says_so_and_a_given_back_row_does_not() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let client = Client::new(store.clone());
    let lost = client.insert_job(NewJob::new("h_lost", "a")).await.unwrap();
    let given = client
        .insert_job(NewJob::new("h_given", "b"))
        .await
        .unwrap();
    let holds = garivini::store::Holds::default();
    let lease_all = || store.claim(1, 10, 600, &holds, |jobs| vec![true; jobs.len()]);
    assert_eq!(lease_all().await.unwrap().jobs.len(), 2);
    // `given`'s submit failed: given back unrun. `lost`'s worker vanished.
    store.release(1, &[given.jobid], 0).await.unwrap();
    due_now(&db).await;
    assert_eq!(lease_all().await.unwrap().jobs.len(), 2);
    let text = last_error(&db, lost).await;
    assert!(
        text.as_str()
            .is_some_and(|t| t.starts_with("lease expired")),
        "{text}"
    );
    assert_eq!(last_error(&db, given).await, Value::Null);
    // A failure recorded since is what the next claim leaves shown.
    let job = store.get(lost).await.unwrap().unwrap();
    client
        .failed_job_with(&job, "WORK_FAIL: disk full")
        .await
        .unwrap();
    due_now(&db).await;
    lease_all().await.unwrap();
    assert_eq!(last_error(&db, lost).await, "WORK_FAIL: disk full");
}

#[tokio::test]
async fn a_foreign_workers_plain_update_leaves_the_last_error_as_it_was() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let client = Client::new(store.clone());
    let id = client
        .insert_job(NewJob::new("h_foreign", "a"))
        .await
        .unwrap();
    let job = store.get(id).await.unwrap().unwrap();
    client
        .failed_job_with(&job, "first failure: é".repeat(200).as_str())
        .await
        .unwrap();
    let error = show(&db, &id.to_string()).await["history"]["last_error"].clone();
    let text = error.as_str().expect("a last error");
    assert_eq!(text.chars().count(), 1000, "bounded to the column");
    assert!(text.starts_with('\u{2026}') && text.ends_with("first failure: é"));
    // The original worker's reschedule, as the contract gives it.
    let mut conn = db.conn().await;
    mysql_async::prelude::Queryable::exec_drop(
        &mut conn,
        "UPDATE job SET run_after=?, failcount=? WHERE jobid=?",
        (db.now().await + 7200, 2u8, id.jobid),
    )
    .await
    .unwrap();
    drop(conn);
    let shown = show(&db, &id.to_string()).await;
    assert_eq!(shown["history"]["last_error"], error);
    assert_eq!(shown["job"]["failcount"], 2);
}

#[tokio::test]
async fn the_original_table_keeps_the_lease_window_until_schema_check_adds_the_columns() {
    let db = TestDb::with_schema(ORIGINAL_SCHEMA).await;
    let store = db.store().await;
    let client = Client::new(store.clone());
    let first = client.insert_job(NewJob::new("h_old", "a")).await.unwrap();
    let job = store.get(first).await.unwrap().unwrap();
    // No columns to write: the failure is a plain reschedule.
    client.failed_job_with(&job, "boom").await.unwrap();
    let shown = show(&db, &first.to_string()).await;
    assert!(shown.get("history").is_none(), "{shown}");
    // Backed off a minute: within the lease window, so in flight, as before.
    assert_eq!(shown["state"], "in_flight");
    let c = counts(&db, "h_old").await;
    assert_eq!(c["in_flight"], 1, "{c}");
    assert_eq!(c["retrying"], 0, "{c}");
    let (code, err) = retry(&db, &first.to_string()).await;
    assert_eq!(code, 1, "refused without --force: {err}");
    let (code, _, err) = run_garivini(&db.url, &["jobs", "list", "--retrying"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_garivini(&db.url, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("in flight = due within the"), "{out}");
    assert!(!out.contains("RETRYING"), "{out}");

    let (code, out, err) = run_garivini(&db.url, &["schema", "check", "--apply"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for column in ["created_at", "attempted_at", "failed_at", "last_error"] {
        let found: Vec<String> = db
            .query(&format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = 'job' AND COLUMN_NAME = '{column}'"
            ))
            .await;
        assert_eq!(found.len(), 1, "{column} added: {out}");
    }
    // A new store reads the new columns at once.
    let store = db.store().await;
    let client = Client::new(store.clone());
    let second = client.insert_job(NewJob::new("h_old", "b")).await.unwrap();
    let job = store.get(second).await.unwrap().unwrap();
    client.failed_job_with(&job, "boom again").await.unwrap();
    let shown = show(&db, &second.to_string()).await;
    assert_eq!(shown["history"]["last_error"], "boom again", "{shown}");
    assert_eq!(shown["state"], "retrying");
    // The original's INSERT still works, and gets a created_at.
    let third = db.perl_insert_job("h_old", "c", None).await;
    let shown = show(&db, &format!("1:{third}")).await;
    assert!(shown["history"]["created_at"].as_u64().is_some(), "{shown}");
    assert_eq!(shown["state"], "due");
    let (code, out, err) = run_garivini(&db.url, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("RETRYING"), "{out}");
    assert!(out.starts_with("in flight = leased"), "{out}");
}

#[tokio::test]
async fn a_foreign_workers_failure_is_retrying_and_a_failed_row_leased_again_is_in_flight() {
    let db = TestDb::new().await;
    let perl = db.perl_insert_job("h_perl", "a", None).await;
    let leased = db.perl_insert_job("h_perl", "b", None).await;
    // The original worker's failure: a plain UPDATE, no failed_at.
    db.exec(&format!(
        "UPDATE job SET run_after = UNIX_TIMESTAMP() + 3600, failcount = 1 WHERE jobid = {perl}"
    ))
    .await;
    // Failed before, then leased again by a QueueRunner: in flight.
    db.exec(&format!(
        "UPDATE job SET run_after = UNIX_TIMESTAMP() + 100, failcount = 1, \
         attempted_at = UNIX_TIMESTAMP() WHERE jobid = {leased}"
    ))
    .await;
    let c = counts(&db, "h_perl").await;
    assert_eq!(
        [&c["retrying"], &c["in_flight"], &c["scheduled"]].map(|n| n.as_u64().unwrap()),
        [1, 1, 0],
        "{c}"
    );
    assert_eq!(
        states(&db).await,
        [
            (format!("1:{perl}"), "retrying".into()),
            (format!("1:{leased}"), "in_flight".into())
        ]
    );
    assert_eq!(show(&db, &format!("1:{perl}")).await["state"], "retrying");
    let listed = json(&db.url, &["jobs", "list", "--retrying", "--json"]).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["jobs"][0]["id"], format!("1:{perl}"));
    let listed = json(&db.url, &["jobs", "list", "--scheduled", "--json"]).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0, "{listed}");
}

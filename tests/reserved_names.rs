//! Jobs named as a function Garivini's roles serve (`inject_jobs`,
//! `run_queued_job`, `job_status`), against a real MariaDB and a private
//! gearmand per test: refused at every entrance (inject_jobs, the web API,
//! `Client`, gv_inject) with one line naming the name; a row that already
//! has such a name is parked dead with a last error, by a claim or by a
//! Controller, never dispatched; and low latency keeps running after such
//! an attempt (issue #25: a job named `run_queued_job` once had the
//! Controller submit it to itself until its slots were full). Needs
//! scripts/services up.

#[path = "support/web.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use garivini::gearman::{BackgroundJob, Outcome, Submitter, WorkResult};
use garivini::job::NEVER;
use garivini::names::{RESERVED, RUN_QUEUED_JOB};
use garivini::{controller, injector, queue_runner, roles, Client, Error, NewJob};
use hyper::{Method, StatusCode};
use support::{config, WebServer, TOKEN};
use testkit::{
    queue_runner, quick_queue_runner, round, run_bin, wait_until, within, Gearmand, InjectClient,
    Roles, TestDb, Worker,
};

const LIMIT: Duration = Duration::from_secs(30);

/// The one line every entrance answers for `name`.
fn refusal(name: &str) -> String {
    format!("funcname {name} is reserved: Garivini serves it")
}

/// Injector, Controller and a quick QueueRunner in this process.
async fn low_latency_with_queue_runner(db: &TestDb, gearmand: &Gearmand) -> Roles {
    let config = roles::Config {
        injector: Some(injector::Config::default()),
        controller: Some(controller::Config::default()),
        queue_runner: Some(quick_queue_runner()),
        ..roles::Config::default()
    };
    Roles::start(config, db.store().await, gearmand).await
}

#[tokio::test]
async fn reserved_names_are_refused_at_inject_jobs_with_one_line_and_nothing_stored() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let _roles = Roles::injector(injector::Config::default(), db.store().await, &gearmand).await;
    let client = InjectClient::new(&gearmand);
    for name in RESERVED {
        for body in [
            format!(r#"{{"funcname":"{name}","arg":"x"}}"#),
            format!(r#"[{{"funcname":"fine"}},{{"funcname":"{name}"}}]"#),
        ] {
            match client.submit(body.clone()).await {
                Outcome::Fail(reason) => {
                    let reason = String::from_utf8_lossy(&reason);
                    assert!(reason.contains(&refusal(name)), "{body}: {reason}");
                    assert_eq!(reason.lines().count(), 1, "{reason}");
                }
                other => panic!("{body}: expected a failure, got {other:?}"),
            }
        }
    }
    assert_eq!(db.count("1").await, 0, "nothing stored");
}

#[tokio::test]
async fn reserved_names_are_refused_by_the_client_the_api_and_gv_inject() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let client = Client::new(store.clone());
    let web = WebServer::start(config(), store, Vec::new()).await;
    for name in RESERVED {
        let err = client
            .insert_job(NewJob::new(name, "x"))
            .await
            .expect_err("a reserved name is refused");
        assert!(
            matches!(&err, Error::ReservedFuncname { name: n } if n == name),
            "{err:?}"
        );
        assert!(err.to_string().starts_with(&refusal(name)), "{err}");

        let body = format!(r#"{{"funcname":"{name}","arg":"x"}}"#);
        let (status, json) = web
            .call(Method::POST, "/api/v1/jobs", Some(TOKEN), Some(&body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        assert_eq!(json["code"], "invalid_funcname", "{json}");
        let line = json["error"].as_str().unwrap();
        assert!(line.contains(&refusal(name)), "{json}");

        let (status, _, err) = run_bin(
            "gv_inject",
            &["--dsn", &db.url, "--funcname", name, "--count", "1"],
            LIMIT,
        )
        .await;
        assert!(!status.success());
        assert!(err.contains(&refusal(name)), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert_eq!(db.count("1").await, 0, "nothing stored");
}

#[tokio::test]
async fn rows_with_a_reserved_name_are_parked_dead_with_a_last_error_and_never_dispatched() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    // Rows any SQL client may write, in both modes, beside a plain one.
    db.exec(
        "INSERT INTO job (funcname, arg, run_after, flag) VALUES \
         ('run_queued_job', 'x', 0, 'controller'), \
         ('inject_jobs', '{\"funcname\":\"f\"}', 0, 'shim'), \
         ('job_status', 'x', 0, 'shim'), \
         ('plain', 'x', 0, 'shim')",
    )
    .await;
    let plain = Worker::plain(&gearmand, "plain").await;
    let mut qr = queue_runner(queue_runner::Config::default(), db.store().await, &gearmand);
    let mut parked = 0;
    let start = std::time::Instant::now();
    while plain.count() == 0 || parked < 3 {
        assert!(start.elapsed() < LIMIT, "timed out: {parked} parked");
        parked += round(&mut qr).await.expect("a round never fails").parked;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(parked, 3, "each reserved row parked once");
    assert_eq!(plain.count(), 1, "the rows behind them run");
    for name in RESERVED {
        let rows: Vec<(u32, Option<String>)> = db
            .query(&format!(
                "SELECT run_after, last_error FROM job WHERE funcname = '{name}'"
            ))
            .await;
        assert_eq!(rows.len(), 1, "{name}: kept in the table");
        assert_eq!(rows[0].0, NEVER, "{name}: dead");
        let why = rows[0].1.as_deref().unwrap_or_default();
        assert!(why.contains(&refusal(name)), "{name}: last error {why:?}");
    }
    // Parked rows are never claimed again, and nothing reached gearmand.
    assert_eq!(round(&mut qr).await.unwrap().parked, 0);
    for name in RESERVED {
        assert_eq!(gearmand.depth(name).await, 0, "{name} never submitted");
    }
}

#[tokio::test]
async fn a_controller_never_submits_to_run_queued_job_and_parks_the_row() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    // A leased row, and its job JSON as a foreign Injector would send it.
    db.exec("INSERT INTO job (funcname, arg, run_after, flag) VALUES ('run_queued_job', 'x', UNIX_TIMESTAMP() + 1000, 'controller')")
        .await;
    let jobid: Vec<u64> = db.query("SELECT jobid FROM job").await;
    let _roles = Roles::low_latency(db.store().await, &gearmand).await;
    let json = serde_json::json!({"jobid": jobid[0], "dbid": 1, "funcname": RUN_QUEUED_JOB, "arg": "x", "flag": "controller"});
    let mut submitter = Submitter::new(gearmand.servers());
    let job = BackgroundJob {
        function: RUN_QUEUED_JOB.into(),
        unique: String::new(),
        data: serde_json::to_vec(&json).unwrap().into(),
        priority: Default::default(),
    };
    let acked = within(LIMIT, "gearmand takes the job", submitter.submit(&[job])).await;
    assert_eq!(acked, vec![true]);
    db.wait_for_count(
        LIMIT,
        "the row to be parked",
        &format!("run_after = {NEVER}"),
        1,
    )
    .await;
    let why: Vec<Option<String>> = db.query("SELECT last_error FROM job").await;
    let why = why[0].as_deref().unwrap_or_default();
    assert!(why.contains(&refusal(RUN_QUEUED_JOB)), "{why:?}");
    // The Controller's slots are free: a job of a real worker runs.
    let worker = Worker::plain(&gearmand, "after").await;
    let client = InjectClient::new(&gearmand);
    client
        .inject(r#"{"funcname":"after","arg":"y"}"#)
        .await
        .expect("inject_jobs succeeds");
    wait_until(LIMIT, "the next job to run", || {
        let n = worker.count();
        async move { n == 1 }
    })
    .await;
}

/// The issue's reproduction: after an injection of a job named
/// `run_queued_job`, a delayed low-latency job still runs.
#[tokio::test]
async fn after_a_run_queued_job_injection_a_delayed_job_still_runs() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let _roles = low_latency_with_queue_runner(&db, &gearmand).await;
    let worker = Worker::serving("fa")
        .answering(WorkResult::Complete(Bytes::new()))
        .start(&gearmand)
        .await;
    let client = InjectClient::new(&gearmand);
    let _ = client
        .submit(r#"{"funcname":"run_queued_job","arg":"x"}"#)
        .await;
    client
        .inject(r#"{"funcname":"fa","arg":"y","run_after":2}"#)
        .await
        .expect("inject_jobs succeeds");
    db.wait_for_count(LIMIT, "the delayed job to run", "funcname = 'fa'", 0)
        .await;
    assert_eq!(worker.count(), 1);
}

//! Pausing a function (`garivini functions pause|resume`): its jobs wait
//! in the table, due and never leased, while other functions run, in
//! throughput mode (QueueRunner) and low-latency mode (inject_jobs), and
//! run within a couple of seconds of the resume; a pause made by the
//! binary holds for roles of another process, and on every shard; a
//! `run_queued_job` already in gearmand is given back, not failed;
//! `status` and `functions list` show it; without the `garivini_paused`
//! table, one warning and everything runs; a bad name is refused in one
//! line. Real MariaDB (a database per test) and a private gearmand; needs
//! scripts/services up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use garivini::controller::{self, Controller, Ran};
use garivini::store::functions::PAUSED_REREAD;
use garivini::{admin, injector, roles, Client, JobRef, NewJob, Store};
use testkit::{
    insert_numbered, quick_queue_runner, run_garivini, wait_until, with_servers, within, Gearmand,
    InjectClient, Proc, Roles, TestDb, Worker,
};

const LIMIT: Duration = Duration::from_secs(30);
/// How long a resumed function's jobs may take to run: the roles' next
/// reading of the table, plus the push-back of a waiting row, plus a round.
const RESUMED_WITHIN: Duration = Duration::from_secs(4);
/// Long enough for every role to have read a pause (or resume) made
/// elsewhere: a reading is at most [`PAUSED_REREAD`] old.
const HONOURED_AFTER: Duration = Duration::from_millis(1600);

/// Every role, as `garivini workers --roles queuerunner,injector,controller`
/// runs them, with quick QueueRunner rounds.
async fn all_roles(store: Arc<Store>, gearmand: &Gearmand) -> Roles {
    let config = roles::Config {
        queue_runner: Some(quick_queue_runner()),
        injector: Some(injector::Config::default()),
        controller: Some(controller::Config::default()),
        ..roles::Config::default()
    };
    Roles::start(config, store, gearmand).await
}

/// A throughput-mode worker for `function` that completes each row.
async fn completing(gearmand: &Gearmand, function: &str, store: Arc<Store>) -> Worker {
    Worker::serving(function)
        .completing_with(Client::new(store))
        .start(gearmand)
        .await
}

/// `garivini functions ARGS` on `dsn`; its exit code, stdout and stderr.
async fn functions(dsn: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["functions"];
    all.extend(args);
    run_garivini(dsn, &all).await
}

/// Rows of `funcname` that wait as a paused function's should: due (or
/// pushed back by at most a second or two), never leased, never failed.
async fn waiting(db: &TestDb, funcname: &str) -> u64 {
    db.count(&format!(
        "funcname = '{funcname}' AND run_after <= UNIX_TIMESTAMP() + 2 AND failcount = 0"
    ))
    .await
}

/// While `funcname` is paused: `other` runs its `n` jobs, and several
/// rounds later `held` has run none and its `n` rows wait.
async fn only_the_other_runs(db: &TestDb, held: &Worker, funcname: &str, other: &Worker, n: usize) {
    wait_until(LIMIT, "the other function's jobs to run", || async {
        other.count() == n
    })
    .await;
    // Several QueueRunner rounds more: the paused rows are still not sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(held.count(), 0, "a paused function's job ran");
    assert_eq!(
        waiting(db, funcname).await,
        n as u64,
        "every paused row waits, due and not leased"
    );
}

/// After the resume at `resumed`: `held` runs its `n` jobs within
/// `within`, every row is completed, and the roles stop.
async fn all_run_after_the_resume(
    db: &TestDb,
    held: &Worker,
    n: usize,
    resumed: Instant,
    within: Duration,
    roles: Roles,
) {
    wait_until(LIMIT, "the resumed function's jobs to run", || async {
        held.count() == n
    })
    .await;
    assert!(
        resumed.elapsed() < within,
        "ran {:?} after the resume",
        resumed.elapsed()
    );
    db.wait_for_count(LIMIT, "every row completed", "1", 0)
        .await;
    roles.stop(LIMIT).await;
}

#[tokio::test]
async fn a_paused_functions_jobs_wait_in_throughput_mode_while_others_run_and_run_after_resume() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let held = completing(&gearmand, "pz_held", store.clone()).await;
    let other = completing(&gearmand, "pz_other", store.clone()).await;
    let report = admin::pause(&store, "pz_held").await.expect("paused");
    assert_eq!(report.changed, vec![1]);
    let roles = all_roles(store.clone(), &gearmand).await;

    let client = Client::new(store.clone());
    insert_numbered(&client, "pz_held", "h", 20).await;
    insert_numbered(&client, "pz_other", "o", 20).await;
    only_the_other_runs(&db, &held, "pz_held", &other, 20).await;

    let resumed = Instant::now();
    admin::resume(&store, "pz_held").await.expect("resumed");
    all_run_after_the_resume(&db, &held, 20, resumed, RESUMED_WITHIN, roles).await;
}

/// The pause comes from `garivini functions pause` (another process) while
/// the roles run here: the Injector stores and acknowledges the paused
/// function's jobs without dispatching them, and the QueueRunner sends
/// them after `garivini functions resume`.
#[tokio::test]
async fn a_pause_by_the_binary_holds_inject_jobs_in_low_latency_mode_until_the_resume() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    // Low-latency workers: the Controller deletes the rows.
    let held = Worker::plain(&gearmand, "pz_llheld").await;
    let other = Worker::plain(&gearmand, "pz_llother").await;
    let roles = all_roles(store.clone(), &gearmand).await;

    let (code, out, err) = functions(&db.url, &["pause", "pz_llheld"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("paused pz_llheld"), "{out}");
    tokio::time::sleep(HONOURED_AFTER).await;

    let inject = InjectClient::new(&gearmand);
    for i in 0..10 {
        for function in ["pz_llheld", "pz_llother"] {
            let answer = inject
                .inject(format!(r#"{{"funcname":"{function}","arg":"{i}"}}"#))
                .await
                .expect("stored and acknowledged");
            assert!(
                String::from_utf8_lossy(&answer).contains("\"jobid\""),
                "{answer:?}"
            );
        }
    }
    only_the_other_runs(&db, &held, "pz_llheld", &other, 10).await;

    let (code, out, err) = functions(&db.url, &["resume", "pz_llheld"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "resumed pz_llheld: its jobs run again");
    let resumed = Instant::now();
    // The binary's resume reaches these roles at their next reading.
    let within = RESUMED_WITHIN + PAUSED_REREAD;
    all_run_after_the_resume(&db, &held, 10, resumed, within, roles).await;
}

/// A `run_queued_job` sent before the pause reaches a Controller after it:
/// the row is given back, due again in a second, its failcount kept, and
/// the real function is not called.
#[tokio::test]
async fn a_run_queued_job_of_a_paused_function_is_given_back_not_failed() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let worker = Worker::plain(&gearmand, "pz_ctl").await;
    let client = Client::new(store.clone());
    let id: JobRef = client
        .insert_job(NewJob::new("pz_ctl", "x").flag(garivini::Flag::Controller))
        .await
        .expect("stored");
    db.exec(&format!(
        "UPDATE job SET failcount = 2, run_after = UNIX_TIMESTAMP() + 1000 WHERE jobid = {}",
        id.jobid
    ))
    .await;
    let job = store.get(id).await.expect("read").expect("a row");
    admin::pause(&store, "pz_ctl").await.expect("paused");

    let controller = Controller::new(
        controller::Config::default(),
        Client::new(store.clone()),
        gearmand.servers(),
    )
    .expect("a Controller");
    let ran = within(
        LIMIT,
        "the Controller's run",
        controller.run_job(Bytes::from(job.to_json())),
    )
    .await;
    assert_eq!(ran, Ran::Paused);
    assert_eq!(worker.count(), 0, "the real function was not called");
    let row: Vec<(u8, i64)> = db
        .query(&format!(
            "SELECT failcount, CAST(run_after AS SIGNED) - UNIX_TIMESTAMP() FROM job WHERE jobid = {}",
            id.jobid
        ))
        .await;
    let (failcount, due_in) = row[0];
    assert_eq!(failcount, 2, "failcount kept");
    assert!((0..=2).contains(&due_in), "due again in {due_in} s");
}

/// A pause lives in every database, and one found on any holds for the
/// function's rows on all of them: here the pause is removed by hand from
/// database 1 alone, and database 1's rows still wait.
#[tokio::test]
async fn a_pause_is_written_to_every_shard_and_one_found_on_any_holds_for_all() {
    let (db1, db2, gearmand) = (
        TestDb::new().await,
        TestDb::new().await,
        Gearmand::start().await,
    );
    let dsn = format!("{},{}", db1.url, db2.url);
    let (code, out, err) = functions(&dsn, &["pause", "pz_shard"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for db in [&db1, &db2] {
        assert_eq!(
            db.query::<String>("SELECT funcname FROM garivini_paused")
                .await,
            vec!["pz_shard".to_string()]
        );
    }
    db1.exec("DELETE FROM garivini_paused").await;

    let store = Arc::new(
        Store::connect(garivini::config::parse_dsn_list(&dsn).unwrap())
            .await
            .expect("both shards"),
    );
    let worker = completing(&gearmand, "pz_shard", store.clone()).await;
    let roles = all_roles(store.clone(), &gearmand).await;
    let client = Client::new(store.clone());
    // One insert each: a batch of keyless jobs goes to one shard, and
    // both must hold some (all 20 on one: 1 in 2^19).
    for i in 0..20 {
        insert_numbered(&client, "pz_shard", &format!("s{i}-"), 1).await;
    }
    let on_db1 = db1.count("1").await;
    assert!(on_db1 > 0, "keyless jobs spread over both shards");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        worker.count(),
        0,
        "a job ran while database 2 holds the pause"
    );

    let (code, out, err) = functions(&dsn, &["resume", "pz_shard"]).await;
    assert_eq!(code, 0, "{out}{err}");
    wait_until(LIMIT, "the 20 jobs to run after the resume", || async {
        worker.count() == 20
    })
    .await;
    roles.stop(LIMIT).await;
}

#[tokio::test]
async fn status_and_functions_list_show_a_paused_function() {
    let db = TestDb::new().await;
    let store = db.store().await;
    insert_numbered(&Client::new(store), "pz_shown", "x", 3).await;
    let (code, out, _) = functions(&db.url, &["list"]).await;
    assert_eq!((code, out.as_str()), (0, "no function is paused\n"));

    let (code, out, err) = functions(&db.url, &["pause", "pz_shown"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "paused pz_shown: its jobs wait in the database until `garivini functions resume pz_shown`\n"
    );
    let (code, out, _) = functions(&db.url, &["pause", "pz_shown"]).await;
    assert_eq!((code, out.as_str()), (0, "pz_shown was paused already\n"));

    let (code, out, _) = functions(&db.url, &["list"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("pz_shown  paused since 20"), "{out}");
    assert!(out.trim_end().ends_with(" ago)"), "{out}");

    let (code, out, err) = run_garivini(&db.url, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\npaused: pz_shown since 20"),
        "status names the paused function: {out}"
    );
    let (code, out, _) = run_garivini(&db.url, &["status", "--json"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["paused"]["functions"][0]["funcname"], "pz_shown");
    assert_eq!(json["paused"]["functions"][0]["databases"][0], 1);
    let (_, out, _) = functions(&db.url, &["list", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(json["functions"][0]["since"].as_u64().unwrap() > 1_700_000_000);

    let (code, out, _) = functions(&db.url, &["resume", "pz_shown"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "resumed pz_shown: its jobs run again\n")
    );
    let (code, out, _) = functions(&db.url, &["resume", "pz_shown"]).await;
    assert_eq!((code, out.as_str()), (0, "pz_shown was not paused\n"));
    let (_, out, _) = run_garivini(&db.url, &["status"]).await;
    assert!(!out.contains("paused:"), "{out}");
}

/// `functions pause|resume --json`: what changed in which database, as
/// the API's answer says it; a database without the table is in it too,
/// and the command still exits 1 with one line.
#[tokio::test]
async fn pause_and_resume_json_say_per_database_what_changed() {
    let db = TestDb::new().await;
    let report = async |args: &[&str], code: i32| {
        let (got, out, err) = functions(&db.url, args).await;
        assert_eq!(got, code, "{args:?}: {out}{err}");
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}{err}"))
    };
    let said = |changed: &[u32], unchanged: &[u32], without_table: &[u32]| {
        serde_json::json!({
            "funcname": "pz_json", "changed": changed, "unchanged": unchanged,
            "without_table": without_table, "errors": [],
        })
    };
    let pause = ["pause", "pz_json", "--json"];
    let resume = ["resume", "pz_json", "--json"];
    assert_eq!(report(&pause, 0).await, said(&[1], &[], &[]));
    assert_eq!(report(&pause, 0).await, said(&[], &[1], &[]));
    assert_eq!(report(&resume, 0).await, said(&[1], &[], &[]));
    assert_eq!(report(&resume, 0).await, said(&[], &[1], &[]));

    db.exec("DROP TABLE garivini_paused").await;
    assert_eq!(report(&pause, 1).await, said(&[], &[], &[1]));
    let (_, _, err) = functions(&db.url, &pause).await;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no garivini_paused table"), "{err}");
}

#[tokio::test]
async fn a_bad_function_name_is_refused_in_one_line() {
    let db = TestDb::new().await;
    let long = "f".repeat(201);
    for (name, reason) in [
        ("", "funcname is empty"),
        ("two words", "funcname has a space at byte 3"),
        (
            long.as_str(),
            "funcname is 201 bytes, over the limit of 200",
        ),
    ] {
        for command in ["pause", "resume"] {
            let (code, out, err) = functions(&db.url, &[command, name]).await;
            assert_eq!(code, 1, "{command} {name:?}: {out}{err}");
            assert_eq!(out, "", "{command} {name:?}");
            assert_eq!(err.lines().count(), 1, "{command} {name:?}: {err}");
            assert!(
                err.starts_with("error: invalid function name") && err.contains(reason),
                "{command} {name:?}: {err}"
            );
        }
    }
    assert_eq!(
        db.query::<u64>("SELECT COUNT(*) FROM garivini_paused")
            .await,
        vec![0],
        "nothing was paused"
    );
}

/// Without the table: the roles log one warning and run everything;
/// `functions pause` fails in one line; `schema check --apply` creates the
/// table, and a pause then holds.
#[tokio::test]
async fn without_the_paused_table_one_warning_and_everything_runs() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    db.exec("DROP TABLE garivini_paused").await;
    let store = db.store().await;
    let worker = completing(&gearmand, "pz_notable", store.clone()).await;
    let ll = Worker::plain(&gearmand, "pz_notable_ll").await;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let args = with_servers(
        &db,
        &gearmand,
        &[
            "workers",
            "--roles",
            "queuerunner,injector,controller",
            "--batch-run-sleep",
            "0.1",
        ],
    );
    let mut roles = Proc::spawn_logged("garivini", &args, &log);
    gearmand.wait_for_worker(garivini::names::INJECT_JOBS).await;
    gearmand
        .wait_for_worker(garivini::names::RUN_QUEUED_JOB)
        .await;

    let (code, out, err) = functions(&db.url, &["pause", "pz_notable"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("pz_notable not paused: database 1 has no garivini_paused table"),
        "{err}"
    );

    insert_numbered(&Client::new(store.clone()), "pz_notable", "n", 10).await;
    let inject = InjectClient::new(&gearmand);
    inject.inject_numbered("pz_notable_ll", "", 5).await;
    wait_until(LIMIT, "every job to run", || async {
        worker.count() == 10 && ll.count() == 5
    })
    .await;
    // More readings of the missing table: still one warning.
    tokio::time::sleep(Duration::from_secs(2)).await;
    roles.check_running().expect("the roles keep running");
    let status = roles.terminate(LIMIT).await;
    assert!(status.success(), "{}", roles.tail());
    let text = roles.log();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("no garivini_paused table"), "{text}");

    let (code, out, err) = run_garivini(&db.url, &["schema", "check"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("  needs: no garivini_paused table: functions cannot be paused"),
        "{out}"
    );
    let (code, out, err) = run_garivini(&db.url, &["schema", "check", "--apply"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  applied: CREATE TABLE IF NOT EXISTS garivini_paused ( …\n"),
        "{out}"
    );
    let (code, out, err) = functions(&db.url, &["pause", "pz_notable"]).await;
    assert_eq!(code, 0, "{out}{err}");
}

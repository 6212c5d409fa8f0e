//! Drop-in for existing Perl Garivini deployments: the original table and
//! the original client's exact statements against our roles, and rows or
//! inputs that must never stop a role (a NULL flag, a function name that is
//! not UTF-8 or holds a newline, failcount 255, a TLS DSN). Real MariaDB
//! (a database per test, some with the original's table) and a private
//! gearmand per test; needs scripts/services up.

use std::sync::Arc;
use std::time::Duration;

use garivini::gearman::Outcome;
use garivini::job::NEVER;
use garivini::queue_runner::{self, QueueRunner};
use garivini::{Client, Flag, Job, NewJob, Retry};
use mysql_async::prelude::Queryable;
use testkit::{
    queue_runner, round, run_bin, run_garivini, wait_until, with_servers, within, Gearmand,
    InjectClient, Roles, TestDb, Worker, ORIGINAL_SCHEMA, SCHEMA,
};

const LIMIT: Duration = Duration::from_secs(30);

/// The original client's `insert_jobs` for two jobs.
const PERL_INSERT_JOBS: &str = "INSERT IGNORE INTO job (funcname, run_after, uniqkey, coalesce, arg, flag) VALUES (?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?)";

/// A throughput-mode worker as the original's users write one: it reads
/// the job JSON and deletes the row with the original's statement, on a
/// connection of its own (no Garivini client).
async fn perl_style_worker(db: &TestDb, gearmand: &Gearmand, function: &str) -> Worker {
    Worker::serving(function)
        .deleting_like_the_original(db)
        .start(gearmand)
        .await
}

/// (function served, job) of every job `worker` ran.
fn runs(worker: &Worker) -> Vec<(String, Job)> {
    worker
        .runs()
        .into_iter()
        .map(|r| (r.function, r.job))
        .collect()
}

fn runner(store: Arc<garivini::Store>, gearmand: &Gearmand) -> QueueRunner {
    queue_runner(queue_runner::Config::default(), store, gearmand)
}

/// Rounds of the QueueRunner until `done` (each bounded), failing on a
/// round that errs: a row must never stop the role.
async fn run_rounds_until<F, Fut>(qr: &mut QueueRunner, what: &str, mut done: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut parked = 0;
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        let stats = round(qr).await.expect("a round never fails on a row");
        parked += stats.parked;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    parked
}

/// The original client's inserts, our QueueRunner, the original worker's
/// DELETE: every job runs under its own function, as a `shim` job, and
/// the table ends empty.
async fn perl_client_round_trip(schema: &str) {
    let (db, gearmand) = (TestDb::with_schema(schema).await, Gearmand::start().await);
    for i in 0..10 {
        db.perl_insert_job("resize", &format!("img-{i}"), None)
            .await;
        db.perl_insert_job("thumb", &format!("th-{i}"), Some(&format!("k{i}")))
            .await;
    }
    // A second insert of the same (funcname, uniqkey) is ignored.
    db.perl_insert_job("thumb", "again", Some("k0")).await;
    let mut conn = db.conn().await;
    let row = |f: &str, arg: &str| {
        vec![
            mysql_async::Value::from(f),
            "UNIX_TIMESTAMP() + 0".into(),
            mysql_async::Value::NULL,
            mysql_async::Value::NULL,
            arg.into(),
            mysql_async::Value::NULL,
        ]
    };
    conn.exec_drop(
        PERL_INSERT_JOBS,
        [row("resize", "many-1"), row("thumb", "many-2")].concat(),
    )
    .await
    .expect("the original client's multi-row INSERT IGNORE");
    drop(conn);
    assert_eq!(db.count("TRUE").await, 22);
    assert_eq!(
        db.count("flag IS NULL AND run_after = 0").await,
        22,
        "the original's NULL flag is stored as NULL, its string run_after as 0"
    );

    let resize = perl_style_worker(&db, &gearmand, "resize").await;
    let thumb = perl_style_worker(&db, &gearmand, "thumb").await;
    let mut qr = runner(db.store().await, &gearmand);
    run_rounds_until(&mut qr, "the table to empty", || async {
        db.count("TRUE").await == 0
    })
    .await;
    wait_until(LIMIT, "both workers' runs recorded", || async {
        resize.runs().len() + thumb.runs().len() == 22
    })
    .await;
    for (worker, function, n) in [(&resize, "resize", 11), (&thumb, "thumb", 11)] {
        let runs = runs(worker);
        assert_eq!(runs.len(), n, "{function}: {runs:?}");
        for (served, job) in runs {
            assert_eq!(served, function);
            assert_eq!(job.funcname, function);
            assert_eq!(job.flag, Flag::Shim, "NULL flag reaches the worker as shim");
        }
    }
}

#[tokio::test]
async fn perl_client_jobs_run_under_their_own_function_on_the_original_table() {
    perl_client_round_trip(ORIGINAL_SCHEMA).await;
}

#[tokio::test]
async fn perl_client_jobs_run_under_their_own_function_on_a_latin1_original_table() {
    perl_client_round_trip(&format!("{ORIGINAL_SCHEMA} DEFAULT CHARSET=latin1")).await;
}

#[tokio::test]
async fn perl_client_jobs_run_under_their_own_function_on_our_schema() {
    perl_client_round_trip(SCHEMA).await;
}

#[tokio::test]
async fn inject_jobs_run_through_the_controller_on_the_original_table() {
    let (db, gearmand) = (
        TestDb::with_schema(ORIGINAL_SCHEMA).await,
        Gearmand::start().await,
    );
    let _roles = Roles::low_latency(db.store().await, &gearmand).await;
    let worker = Worker::plain(&gearmand, "resize").await;
    let client = InjectClient::new(&gearmand);
    for i in 0..10 {
        let body = format!(r#"{{"funcname":"resize","arg":"img-{i}"}}"#);
        let outcome = client.submit(body).await;
        assert!(matches!(outcome, Outcome::Complete(_)), "{outcome:?}");
    }
    wait_until(LIMIT, "ten runs and an empty table", || async {
        worker.count() == 10 && db.count("TRUE").await == 0
    })
    .await;
    for (served, job) in runs(&worker) {
        assert_eq!((served.as_str(), job.flag), ("resize", Flag::Controller));
    }
}

/// The original table with a binary function name column, as a table
/// created under a binary default charset has.
fn varbinary_schema() -> String {
    let schema = ORIGINAL_SCHEMA.replace(
        "`funcname`    VARCHAR(200) NOT NULL",
        "`funcname`    VARBINARY(200) NOT NULL",
    );
    assert_ne!(schema, ORIGINAL_SCHEMA);
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_rows_are_run_or_parked_and_never_stop_a_role() {
    let (db, gearmand) = (
        TestDb::with_schema(&varbinary_schema()).await,
        Gearmand::start().await,
    );
    // Rows any SQL client may write into the original table.
    db.exec(
        "INSERT IGNORE INTO job (funcname, arg, run_after, flag, failcount) VALUES \
         ('odd', NULL, 0, NULL, 255), \
         (X'6361666599', 'not utf-8', 0, NULL, 0), \
         ('evil\\nx', 'newline', 0, NULL, 0), \
         (CONCAT('esc', CHAR(27), '[31mred'), 'escape', 0, 'shim', 0), \
         ('odd', 'empty flag', 0, '', 0), \
         ('odd', 'plain', UNIX_TIMESTAMP(), 'shim', 3)",
    )
    .await;
    let unsendable = "funcname <> 'odd'";
    assert_eq!(db.count(unsendable).await, 3);
    let worker = perl_style_worker(&db, &gearmand, "odd").await;
    let mut qr = runner(db.store().await, &gearmand);
    let parked = run_rounds_until(&mut qr, "the odd rows to run", || async {
        db.count("funcname = 'odd'").await == 0
    })
    .await;
    assert_eq!(parked, 3, "each unsendable row parked once");
    assert_eq!(worker.runs().len(), 3);
    assert_eq!(
        db.count(&format!("{unsendable} AND run_after = {NEVER}"))
            .await,
        3,
        "parked rows stay in the table, dead"
    );
    // The role goes on: a new row after the parked ones still runs, and
    // the parked ones are not claimed again.
    db.perl_insert_job("odd", "later", None).await;
    let parked = run_rounds_until(&mut qr, "the later row to run", || async {
        db.count("funcname = 'odd'").await == 0
    })
    .await;
    assert_eq!(parked, 0);

    // The admin commands read every row, and print names escaped.
    let evil: Vec<u64> = db
        .query("SELECT jobid FROM job WHERE funcname = 'evil\\nx'")
        .await;
    let evil = format!("1:{}", evil[0]);
    for args in [
        vec!["status"],
        vec!["jobs", "list"],
        vec!["jobs", "list", "--dead", "--json"],
        vec!["jobs", "show", evil.as_str()],
    ] {
        let (code, out, err) = run_garivini(&db.url, &args).await;
        assert_eq!(code, 0, "{args:?}\n{out}\n{err}");
        assert!(!out.contains('\x1b'), "{args:?} printed a raw ESC:\n{out}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if args[0] == "status" || args.len() == 2 {
            assert!(
                out.contains("evil\\nx"),
                "{args:?}: the newline shown escaped\n{out}"
            );
            assert!(
                out.contains("cafe\\x99"),
                "{args:?}: bad bytes shown as \\xNN\n{out}"
            );
        }
    }
    let (_, out, _) = run_garivini(&db.url, &["jobs", "show", &evil]).await;
    assert!(
        out.contains("cannot be dispatched: funcname has a newline"),
        "{out}"
    );
}

#[tokio::test]
async fn a_failure_at_failcount_255_makes_the_job_dead_without_overflow() {
    let db = TestDb::with_schema(ORIGINAL_SCHEMA).await;
    db.exec("INSERT INTO job (funcname, arg, run_after, flag, failcount) VALUES ('f', 'x', 0, NULL, 255)")
        .await;
    let store = db.store().await;
    let client = Client::new(store.clone());
    let jobid: Vec<u64> = db.query("SELECT jobid FROM job").await;
    let job = store
        .get(garivini::JobRef {
            dbid: 1,
            jobid: jobid[0],
        })
        .await
        .unwrap()
        .expect("the row");
    assert_eq!((job.failcount, job.flag), (255, Flag::Shim));
    let retry = within(LIMIT, "failed_job", client.failed_job(&job))
        .await
        .unwrap();
    assert_eq!(retry, Retry::Dead);
    assert_eq!(
        db.count(&format!("run_after = {NEVER} AND failcount = 255"))
            .await,
        1
    );
}

#[tokio::test]
async fn the_original_clients_reschedules_are_honoured_by_our_queue_runner() {
    let (db, gearmand) = (
        TestDb::with_schema(ORIGINAL_SCHEMA).await,
        Gearmand::start().await,
    );
    for i in 0..5 {
        db.perl_insert_job("r", &format!("job-{i}"), None).await;
    }
    let ids: Vec<u64> = db.query("SELECT jobid FROM job ORDER BY jobid").await;
    let now = db.now().await;
    let mut conn = db.conn().await;
    // reschedule_job: never, in N seconds, at a time; failed_job: failcount
    // + 1, due in 2^failcount minutes.
    let statements: [(&str, Vec<mysql_async::Value>); 4] = [
        (
            "UPDATE job SET run_after = 2147483647, failcount = ? WHERE jobid=?",
            vec![1.into(), ids[0].into()],
        ),
        (
            "UPDATE job SET run_after = UNIX_TIMESTAMP() + 3600, failcount = ? WHERE jobid=?",
            vec![0.into(), ids[1].into()],
        ),
        (
            "UPDATE job SET run_after = ?, failcount = ? WHERE jobid=?",
            vec![(now - 10).into(), 2.into(), ids[2].into()],
        ),
        (
            "UPDATE job SET run_after = UNIX_TIMESTAMP() + ?, failcount = ? WHERE jobid=?",
            vec![(8 * 60).into(), 4.into(), ids[3].into()],
        ),
    ];
    for (sql, params) in statements {
        conn.exec_drop(sql, params).await.expect(sql);
    }
    drop(conn);
    let worker = perl_style_worker(&db, &gearmand, "r").await;
    let mut qr = runner(db.store().await, &gearmand);
    run_rounds_until(&mut qr, "the due rows to run", || async {
        worker.runs().len() == 2
    })
    .await;
    // One more round: nothing else is due.
    round(&mut qr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ran: Vec<(u64, u8)> = worker
        .jobs()
        .iter()
        .map(|j| (j.jobid, j.failcount))
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, vec![(ids[2], 2), (ids[4], 0)]);
    let left: Vec<u64> = db.query("SELECT jobid FROM job ORDER BY jobid").await;
    assert_eq!(left, vec![ids[0], ids[1], ids[3]]);
}

#[tokio::test]
async fn a_function_name_gearmand_cannot_carry_is_refused_at_every_entrance() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let client = Client::new(db.store().await);
    for name in ["evil\nx", "tab\there", "esc\x1b[31m", "two words"] {
        let err = client
            .insert_job(NewJob::new(name, "x"))
            .await
            .expect_err(name)
            .to_string();
        assert!(
            err.starts_with("funcname has ") && !err.contains('\n'),
            "{name:?}: {err}"
        );
    }
    let args = with_servers(&db, &gearmand, &["--funcname", "evil\nx", "--count", "1"]);
    let (status, out, err) = run_bin("gv_inject", &args, LIMIT).await;
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("funcname has a newline"), "{err}");

    let _roles = Roles::low_latency(db.store().await, &gearmand).await;
    let worker = Worker::plain(&gearmand, "fine").await;
    let fg = InjectClient::new(&gearmand);
    let outcome = fg.submit(r#"{"funcname":"evil\nx"}"#).await;
    match outcome {
        Outcome::Fail(reason) => assert!(
            String::from_utf8_lossy(&reason).contains("funcname has a newline"),
            "{reason:?}"
        ),
        other => panic!("{other:?}"),
    }
    // Nothing stored, and the next request is served.
    let outcome = fg.submit(r#"{"funcname":"fine"}"#).await;
    assert!(matches!(outcome, Outcome::Complete(_)), "{outcome:?}");
    wait_until(LIMIT, "the fine job to run", || async {
        worker.count() == 1
    })
    .await;
    assert_eq!(db.count("funcname <> 'fine'").await, 0);
}

#[tokio::test]
async fn a_controller_parks_a_job_whose_function_cannot_be_sent() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    // A row and its job JSON as a foreign Injector might send them.
    db.exec("INSERT INTO job (funcname, arg, run_after, flag) VALUES ('evil\\nx', 'x', UNIX_TIMESTAMP() + 1000, 'controller')")
        .await;
    let jobid: Vec<u64> = db.query("SELECT jobid FROM job").await;
    let _roles = Roles::low_latency(db.store().await, &gearmand).await;
    let json = serde_json::json!({"jobid": jobid[0], "dbid": 1, "funcname": "evil\nx", "arg": "x", "flag": "controller"});
    let mut submitter = garivini::gearman::Submitter::new(gearmand.servers());
    let job = garivini::gearman::BackgroundJob {
        function: garivini::names::RUN_QUEUED_JOB.into(),
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
    let depth = gearmand.depth("evil\nx").await;
    assert_eq!(depth, 0, "never submitted to gearmand");
}

/// The local MariaDB has no TLS: a DSN that requires it fails at start-up
/// with one line naming the database, in every binary (TLS itself is in
/// tests/tls.rs).
#[tokio::test]
async fn a_tls_dsn_to_a_server_without_tls_fails_with_one_line_by_every_binary() {
    let dsn = format!("{}/garivini?require_ssl=true", testkit::server_url());
    let named = format!("database 1 ({dsn})");
    for testkit::BinaryRun {
        bin,
        args,
        status,
        out,
        err,
    } in testkit::run_every_binary(&dsn, LIMIT).await
    {
        assert_eq!(status.code(), Some(1), "{bin} {args:?}: {out}\n{err}");
        assert!(!err.contains("panicked"), "{bin}: {err}");
        let err = err.trim();
        assert_eq!(err.lines().count(), 1, "{bin}: {err}");
        assert!(err.contains(&named), "{bin}: {err}");
        assert!(
            err.contains("server does not have this capability"),
            "{bin}: {err}"
        );
    }
}

//! The dashboard's count of jobs dispatched per minute
//! (`garivini_dispatches`): the QueueRunner's and the Injector's
//! dispatches are counted exactly and written within about a second; a
//! write that fails keeps the count for the next; old rows are pruned; a
//! database without the table runs everything with one log line; the
//! overview's chart draws the dispatched line with the hour's total.
//! Real MariaDB (a database per test, named `gv_dispatch_*`) and a private
//! gearmand; needs scripts/services up.

#[path = "support/web.rs"]
mod support;

use std::time::Duration;

use garivini::config::parse_dsn_list;
use garivini::store::dispatches::Flushed;
use garivini::{roles, Client, Store};
use hyper::Method;
use mysql_async::prelude::Queryable;
use testkit::{
    insert_numbered, quick_queue_runner, server_url, wait_until, with_servers, within, Gearmand,
    InjectClient, Proc, Roles, TestDb, Worker, SCHEMA,
};

const LIMIT: Duration = Duration::from_secs(30);
/// How long a count may take to reach the table: a flush a second, and
/// room for a slow test machine.
const FLUSHED: Duration = Duration::from_secs(10);

/// A database of schema.sql's tables, named `gv_dispatch_*`.
async fn new_db() -> TestDb {
    TestDb::create(&server_url(), "gv_dispatch", Some(SCHEMA))
        .await
        .expect("MariaDB is usable (scripts/services up)")
}

/// The dispatches the table holds, all minutes.
async fn counted(db: &TestDb) -> u64 {
    db.query::<u64>(
        "SELECT CAST(COALESCE(SUM(dispatched), 0) AS UNSIGNED) FROM garivini_dispatches",
    )
    .await[0]
}

async fn wait_for_counted(db: &TestDb, n: u64) {
    wait_until(FLUSHED, &format!("{n} dispatches counted"), || async {
        counted(db).await == n
    })
    .await;
}

#[tokio::test]
async fn the_queue_runners_dispatches_are_counted_exactly_once() {
    let (db, gearmand) = (new_db().await, Gearmand::start().await);
    let store = db.store().await;
    let worker = Worker::serving("gd_thru")
        .completing_with(Client::new(store.clone()))
        .start(&gearmand)
        .await;
    let config = roles::Config {
        queue_runner: Some(quick_queue_runner()),
        ..roles::Config::default()
    };
    let roles = Roles::start(config, store.clone(), &gearmand).await;
    insert_numbered(&Client::new(store.clone()), "gd_thru", "t", 25).await;
    wait_until(LIMIT, "every job to run", || async { worker.count() == 25 }).await;
    wait_for_counted(&db, 25).await;
    // Later flushes add nothing more, nor does the last one at shutdown.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(counted(&db).await, 25);
    roles.stop(LIMIT).await;
    assert_eq!(counted(&db).await, 25);
    let now_minute = db.now().await / 60;
    let minutes = db
        .query::<u32>("SELECT minute FROM garivini_dispatches")
        .await;
    assert!(
        minutes
            .iter()
            .all(|&m| m + 2 >= now_minute && m <= now_minute),
        "minutes of the database's clock: {minutes:?}, now {now_minute}"
    );
}

#[tokio::test]
async fn the_injectors_dispatches_are_counted_too() {
    let (db, gearmand) = (new_db().await, Gearmand::start().await);
    let store = db.store().await;
    let worker = Worker::plain(&gearmand, "gd_ll").await;
    // No QueueRunner: every dispatch is the Injector's.
    let roles = Roles::low_latency(store, &gearmand).await;
    let client = InjectClient::new(&gearmand);
    client.inject_numbered("gd_ll", "", 12).await;
    let batch: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"funcname":"gd_ll","arg":"b{i}"}}"#))
        .collect();
    client
        .inject(format!("[{}]", batch.join(",")))
        .await
        .expect("stored");
    wait_until(LIMIT, "every job to run", || async { worker.count() == 20 }).await;
    wait_for_counted(&db, 20).await;
    roles.stop(LIMIT).await;
    assert_eq!(counted(&db).await, 20);
}

#[tokio::test]
async fn a_failed_write_keeps_the_count_and_old_rows_are_pruned() {
    let db = new_db().await;
    let now_minute = db.now().await / 60;
    db.exec(&format!(
        "INSERT INTO garivini_dispatches VALUES ({}, 5), ({}, 6)",
        now_minute - 2000,
        now_minute - 30
    ))
    .await;
    // A lock is waited for a second at most: the write then fails, as a
    // Galera certification conflict on the hot row does.
    let dsn = format!("{}?lock_wait_timeout=1", db.url);
    let store = Store::connect(parse_dsn_list(&dsn).unwrap())
        .await
        .expect("store connects");
    store.count_dispatched(1, 3);

    // The table locked by another session: the write fails, the count is
    // kept.
    let mut locker = db.conn().await;
    locker
        .query_drop("LOCK TABLES garivini_dispatches WRITE")
        .await
        .unwrap();
    let flushed = within(LIMIT, "a flush", store.flush_dispatches()).await;
    assert_eq!(flushed.failed, 1, "{flushed:?}");
    locker.query_drop("UNLOCK TABLES").await.unwrap();

    store.count_dispatched(1, 4);
    let flushed = within(LIMIT, "a flush", store.flush_dispatches()).await;
    assert_eq!(
        flushed,
        Flushed {
            dispatches: 7,
            statements: 1,
            failed: 0
        }
    );
    // The day-old row is gone (the first flush that wrote pruned), the
    // half-hour old one kept.
    assert_eq!(counted(&db).await, 7 + 6);
    let read = store
        .dispatches_since(1, now_minute - 59)
        .await
        .unwrap()
        .expect("the table is there");
    assert_eq!(read.iter().map(|m| m.dispatched).sum::<u64>(), 13);
    let flushed = store.flush_dispatches().await;
    assert_eq!(flushed, Flushed::default(), "nothing left to write");
}

/// Without the table: the roles, run as `garivini workers`, run every job
/// of both modes and log its absence once (an info line; no error, no
/// warning); the store reads no counts.
#[tokio::test]
async fn without_the_table_everything_runs_and_it_is_said_once() {
    let (db, gearmand) = (new_db().await, Gearmand::start().await);
    db.exec("DROP TABLE garivini_dispatches").await;
    let store = db.store().await;
    let worker = Worker::serving("gd_notable")
        .completing_with(Client::new(store.clone()))
        .start(&gearmand)
        .await;
    let ll = Worker::plain(&gearmand, "gd_notable_ll").await;
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
    // At info: the one line is not a warning (nothing is wrong with the
    // jobs).
    let mut cmd = testkit::bin("garivini");
    cmd.args(&args).env("RUST_LOG", "info");
    let mut roles =
        Proc::start_logged("garivini", cmd, &dir.path().join("out"), &log).expect("it starts");
    gearmand.wait_for_worker(garivini::names::INJECT_JOBS).await;
    insert_numbered(&Client::new(store.clone()), "gd_notable", "n", 10).await;
    let inject = InjectClient::new(&gearmand);
    inject.inject_numbered("gd_notable_ll", "", 5).await;
    wait_until(LIMIT, "every job to run", || async {
        worker.count() == 10 && ll.count() == 5
    })
    .await;
    // Many flushes' worth of rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    roles.check_running().expect("the roles keep running");
    let status = roles.terminate(LIMIT).await;
    assert!(status.success(), "{}", roles.tail());
    let text = roles.log();
    let loud: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(loud.is_empty(), "{text}");
    let said: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("garivini_dispatches"))
        .collect();
    assert_eq!(said.len(), 1, "{text}");
    assert!(said[0].contains("no garivini_dispatches table"), "{text}");
    assert_eq!(store.dispatches_since(1, 0).await.unwrap(), None);
}

#[tokio::test]
async fn the_overview_chart_draws_the_dispatched_line_with_the_hours_total() {
    let db = new_db().await;
    let now_minute = db.now().await / 60;
    // Counted before this web role started, by roles elsewhere.
    db.exec(&format!(
        "INSERT INTO garivini_dispatches VALUES ({}, 17), ({}, 4242), ({}, 99)",
        now_minute - 10,
        now_minute - 3,
        now_minute - 90
    ))
    .await;
    let config = garivini::web::Config {
        public_read: true,
        ..support::config()
    };
    let web = support::WebServer::start(config, db.store().await, Vec::new()).await;
    let page = || async {
        let (_, _, page) = web.send(Method::GET, "/", &[], "").await;
        page
    };
    wait_until(LIMIT, "the chart to have the dispatched line", || async {
        page().await.contains(r#"<polyline class="dispatched""#)
    })
    .await;
    let page = page().await;
    assert!(
        page.contains("dispatched (orange, 4259 in the hour)"),
        "the hour's total, not the 90-minute old row: {page}"
    );
    let line = page
        .split(r#"<polyline class="dispatched" fill="none" points=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the line's points");
    assert_eq!(line.split(' ').count(), 2, "{line}");
    assert!(page.contains(">4242</text>"), "scaled to it: {page}");
    web.stop(LIMIT).await;
}

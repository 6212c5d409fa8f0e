//! `garivini jobs cancel --funcname F [--force] [--dry-run]`: deleting the
//! live rows of one function (due, scheduled, retrying; in flight only
//! when forced), run as the real binary against a fresh database on the
//! real MariaDB. Needs the services of `scripts/services up`.

use garivini::job::NEVER;
use serde_json::Value;
use testkit::{run_garivini, server_url, TestDb, SCHEMA};

/// A new database of schema.sql, named for these tests.
async fn new_db() -> TestDb {
    let server = server_url();
    TestDb::create(&server, "gv_cancelfn", Some(SCHEMA))
        .await
        .unwrap_or_else(|e| {
            panic!("MariaDB at {server} is not usable ({e:#}); run scripts/services up")
        })
}

/// A row of `func` due `run_after` seconds from now (`None`: dead), with
/// its history: attempted and failed so many seconds ago (`None`: never).
struct Row {
    func: &'static str,
    run_after: Option<i64>,
    attempted: Option<i64>,
    failed: Option<i64>,
}

const fn row(func: &'static str, run_after: Option<i64>, attempted: Option<i64>) -> Row {
    Row {
        func,
        run_after,
        attempted,
        failed: None,
    }
}

/// For `resize`: 2 due, 2 in flight (leased, under the 1000 s lease), 2
/// scheduled (delayed at insert: one within the lease window, one beyond
/// it), 1 retrying (failed, waiting out its backoff), 1 dead; for `email`
/// 1 due and 1 in flight. Ids 1, 2, ... in this order.
const MIX: &[Row] = &[
    row("resize", Some(-75), None),     // 1:1 due
    row("resize", Some(-3), Some(400)), // 1:2 due: its lease ran out
    row("resize", Some(600), Some(0)),  // 1:3 in flight
    row("resize", Some(900), Some(5)),  // 1:4 in flight
    row("resize", Some(30), None),      // 1:5 scheduled, within the window
    row("resize", Some(7200), None),    // 1:6 scheduled
    Row {
        func: "resize",
        run_after: Some(60),
        attempted: Some(10),
        failed: Some(1),
    }, // 1:7 retrying
    row("resize", None, Some(5000)),    // 1:8 dead
    row("email", Some(0), None),        // 1:9 due
    row("email", Some(30), Some(0)),    // 1:10 in flight
];

async fn seeded(rows: &[Row]) -> TestDb {
    let db = new_db().await;
    for (i, r) in rows.iter().enumerate() {
        let at = |ago: Option<i64>| ago.map_or("0".into(), |s| format!("UNIX_TIMESTAMP() - {s}"));
        let run_after = r
            .run_after
            .map_or(NEVER.to_string(), |d| format!("UNIX_TIMESTAMP() + ({d})"));
        db.exec(&format!(
            "INSERT INTO job (jobid, funcname, arg, run_after, failcount, attempted_at, failed_at) \
             VALUES ({}, '{}', 'arg', {run_after}, {}, {}, {})",
            i + 1,
            r.func,
            u8::from(r.failed.is_some()),
            at(r.attempted),
            at(r.failed),
        ))
        .await;
    }
    db
}

/// The ids of the rows left, in order.
async fn left(db: &TestDb) -> Vec<u64> {
    db.query("SELECT jobid FROM job ORDER BY jobid").await
}

/// Runs a command that must succeed; its stdout.
async fn ok(db: &TestDb, args: &[&str]) -> String {
    let (code, out, err) = run_garivini(&db.url, args).await;
    assert_eq!(code, 0, "garivini {args:?}: {err}");
    out
}

#[tokio::test]
async fn a_dry_run_counts_the_functions_rows_by_state_and_deletes_nothing() {
    let db = seeded(MIX).await;
    let out = ok(
        &db,
        &["jobs", "cancel", "--funcname", "resize", "--dry-run"],
    )
    .await;
    assert_eq!(
        out.trim(),
        "database 1: would cancel 5 jobs of resize (2 due, 2 scheduled, 1 retrying) and leave \
         2 in flight (a worker may be running them: --force deletes them too); --dry-run: \
         nothing deleted"
    );
    let json: Value = serde_json::from_str(
        &ok(
            &db,
            &[
                "jobs",
                "cancel",
                "--funcname",
                "resize",
                "--dry-run",
                "--json",
            ],
        )
        .await,
    )
    .unwrap();
    let one = &json["by_database"][0];
    assert_eq!(one["dbid"], 1, "{json}");
    assert_eq!(one["cancelled"], 5, "{json}");
    assert_eq!(one["in_flight_left"], 2, "{json}");
    let before = &one["before"];
    let states = ["due", "in_flight", "scheduled", "retrying", "dead"];
    assert_eq!(
        states.map(|s| before[s].as_u64().unwrap()),
        [2, 2, 2, 1, 1],
        "{json}"
    );
    // Forced, the rows in flight would go too.
    let out = ok(
        &db,
        &[
            "jobs",
            "cancel",
            "--funcname",
            "resize",
            "--dry-run",
            "--force",
        ],
    )
    .await;
    assert_eq!(
        out.trim(),
        "database 1: would cancel 7 jobs of resize (2 due, 2 scheduled, 1 retrying, 2 in \
         flight); --dry-run: nothing deleted"
    );
    assert_eq!(left(&db).await, (1..=10).collect::<Vec<u64>>());
}

#[tokio::test]
async fn cancel_deletes_the_functions_rows_but_not_in_flight_ones_unless_forced() {
    let db = seeded(MIX).await;
    let out = ok(&db, &["jobs", "cancel", "--funcname", "resize"]).await;
    assert_eq!(
        out.trim(),
        "database 1: 5 jobs of resize cancelled (deleted); 2 in flight left: a worker may be \
         running them (--force deletes them too)"
    );
    // resize's in flight and dead rows, and every row of email, stay.
    assert_eq!(left(&db).await, [3, 4, 8, 9, 10]);
    let out = ok(&db, &["jobs", "cancel", "--funcname", "resize", "--force"]).await;
    assert_eq!(
        out.trim(),
        "database 1: 2 jobs of resize cancelled (deleted)"
    );
    assert_eq!(left(&db).await, [8, 9, 10], "dead and other rows kept");
    // Nothing left to cancel: said so, exit 0.
    let out = ok(&db, &["jobs", "cancel", "--funcname", "resize"]).await;
    assert_eq!(
        out.trim(),
        "database 1: 0 jobs of resize cancelled (deleted)"
    );
}

#[tokio::test]
async fn cancel_of_a_function_goes_through_many_chunks() {
    let db = new_db().await;
    // 25,001 due rows of one function (a statement deletes 10,000 at most),
    // and one of another.
    db.exec(
        "INSERT INTO job (funcname, arg, run_after) \
         SELECT 'bulk', 'x', UNIX_TIMESTAMP() - 1 FROM \
         (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
          UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 \
          UNION ALL SELECT 9) a, \
         (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
          UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 \
          UNION ALL SELECT 9) b, \
         (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
          UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 \
          UNION ALL SELECT 9) c, \
         (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
          UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 \
          UNION ALL SELECT 9) e, \
         (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2) f \
         LIMIT 25001",
    )
    .await;
    db.exec("INSERT INTO job (funcname, arg, run_after) VALUES ('other', 'x', 0)")
        .await;
    assert_eq!(db.count("funcname = 'bulk'").await, 25_001);
    let out = ok(&db, &["jobs", "cancel", "--funcname", "bulk"]).await;
    assert_eq!(
        out.trim(),
        "database 1: 25001 jobs of bulk cancelled (deleted)"
    );
    assert_eq!(db.count("1").await, 1, "only the other function's row left");
}

#[tokio::test]
async fn cancel_by_function_needs_the_function_and_takes_no_ids() {
    let db = seeded(MIX).await;
    for args in [
        &["jobs", "cancel"][..],
        &["jobs", "cancel", "--dry-run"],
        &["jobs", "cancel", "--funcname", "resize", "1:1"],
        &["jobs", "cancel", "--funcname", ""],
    ] {
        let (code, out, err) = run_garivini(&db.url, args).await;
        assert_eq!(code, 1, "garivini {args:?}: stdout {out}, stderr {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line of error, got:\n{err}");
    }
    assert_eq!(left(&db).await.len(), 10, "nothing deleted");
    // With --dead, --funcname still names whose dead rows go.
    let out = ok(&db, &["jobs", "cancel", "--dead", "--funcname", "resize"]).await;
    assert_eq!(out.trim(), "1 dead job of resize cancelled (deleted)");
    assert_eq!(db.count("jobid = 8").await, 0);
    assert_eq!(left(&db).await.len(), 9);
}

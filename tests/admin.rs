//! `garivini status` and `garivini jobs list|show|retry|cancel`, run as the
//! real binary against a fresh database on the real MariaDB and, where the
//! gearmand side matters, a private gearmand with a real QueueRunner.
//! Needs the services of `scripts/services up`.

use std::io::Write as _;
use std::time::Duration;

use garivini::job::NEVER;
use serde_json::Value;
use testkit::{run_garivini, with_servers, Gearmand, Proc, TestDb};

const LIMIT: Duration = Duration::from_secs(30);

/// Rows as (funcname, run_after relative to now or NEVER, failcount), with
/// ids 1, 2, ... in the order given. Rows due later are stored as a
/// QueueRunner's lease leaves them (attempted_at = now): in flight while
/// within the lease window, scheduled beyond it.
async fn seed(db: &TestDb, rows: &[(&str, Option<i64>, u8)]) {
    for (i, (func, delay, failcount)) in rows.iter().enumerate() {
        let run_after = match delay {
            Some(d) => format!("UNIX_TIMESTAMP() + ({d})"),
            None => NEVER.to_string(),
        };
        let attempted_at = match delay {
            Some(d) if *d > 0 => "UNIX_TIMESTAMP()",
            // Never attempted: the column's default.
            _ => "0",
        };
        db.exec(&format!(
            "INSERT INTO job (jobid, funcname, arg, run_after, failcount, attempted_at) \
             VALUES ({}, '{func}', 'arg-{}', {run_after}, {failcount}, {attempted_at})",
            i + 1,
            i + 1
        ))
        .await;
    }
}

/// A new database holding `rows` (see [`seed`]).
async fn seeded(rows: &[(&str, Option<i64>, u8)]) -> TestDb {
    let db = TestDb::new().await;
    seed(&db, rows).await;
    db
}

/// A new database with the mix most tests use: for `resize` 2 due (one
/// failing, 75 s overdue), 1 in flight (due in 600 s, under the 1000 s
/// lease), 1 scheduled (2 h), 1 dead; for `email` 1 due, 1 in flight and
/// failing.
async fn mix() -> TestDb {
    seeded(&[
        ("resize", Some(-75), 0),  // 1:1
        ("resize", Some(-3), 2),   // 1:2
        ("resize", Some(600), 0),  // 1:3
        ("resize", Some(7200), 0), // 1:4
        ("resize", None, 25),      // 1:5
        ("email", Some(0), 0),     // 1:6
        ("email", Some(30), 1),    // 1:7
    ])
    .await
}

/// Runs a command that must succeed and print JSON; returns it.
async fn json(dsn: &str, args: &[&str]) -> Value {
    let (code, out, err) = run_garivini(dsn, args).await;
    assert_eq!(code, 0, "garivini {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Runs a command that must fail with exit code 1; returns its one line.
async fn fails(dsn: &str, args: &[&str]) -> String {
    let (code, out, err) = run_garivini(dsn, args).await;
    assert_eq!(code, 1, "garivini {args:?}: stdout {out}, stderr {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line of error, got:\n{err}");
    lines[0].to_string()
}

/// The entry of `list` whose funcname is `name`.
fn named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|f| f["funcname"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:?}"))
}

/// The ids of a `jobs list --json` page, in order.
fn ids(listing: &Value) -> Vec<String> {
    listing["jobs"]
        .as_array()
        .expect("a JSON array of jobs")
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn status_counts_due_in_flight_scheduled_dead_and_failing_rows_per_function() {
    let db = mix().await;
    let status = json(&db.url, &["status", "--json"]).await;
    let dbs = status["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 1);
    assert_eq!(dbs[0]["error"], Value::Null);
    let funcs = dbs[0]["functions"].as_array().unwrap();
    let (resize, email) = (named(funcs, "resize"), named(funcs, "email"));
    let counts = |f: &Value| {
        ["due", "in_flight", "scheduled", "dead", "failing"].map(|k| f[k].as_u64().unwrap())
    };
    assert_eq!(counts(resize), [2, 1, 1, 1, 1]);
    assert_eq!(counts(email), [1, 1, 0, 0, 1]);
    let oldest = resize["oldest_due_secs"].as_u64().unwrap();
    assert!((75..=80).contains(&oldest), "oldest due {oldest} s");
    assert_eq!(counts(&dbs[0]["total"]), [3, 2, 1, 1, 2]);

    // A shorter lease moves the row due in 600 s from in flight to scheduled.
    let status = json(&db.url, &["status", "--json", "--lease", "60"]).await;
    let resize = &status["databases"][0]["functions"][1];
    assert_eq!(resize["funcname"], "resize");
    assert_eq!(counts(resize), [2, 0, 2, 1, 1]);

    // The table a person reads.
    let (code, out, err) = run_garivini(&db.url, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    // schema.sql's table has the history columns: retrying is counted.
    assert!(
        out.contains("FUNCTION  DUE  IN FLIGHT  SCHEDULED  RETRYING  DEAD  FAILING  OLDEST DUE"),
        "{out}"
    );
    let resize_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("resize"))
        .unwrap();
    let cells: Vec<&str> = resize_line.split_whitespace().collect();
    assert_eq!(
        &cells[..7],
        ["resize", "2", "1", "1", "0", "1", "1"],
        "{out}"
    );
    assert!(cells[7].starts_with("1m1"), "oldest due as 1m15s: {out}");
}

#[tokio::test]
async fn status_shows_what_the_queuerunner_leased_and_gearmand_queued() {
    let (db, gearmand) = (
        seeded(&[("resize", Some(0), 0), ("resize", Some(-5), 0)]).await,
        Gearmand::start().await,
    );
    // A worker for another function: gearmand lists it with no jobs.
    let mut worker = std::net::TcpStream::connect(&gearmand.addr).unwrap();
    let name = b"thumbs";
    let mut can_do = b"\0REQ".to_vec();
    can_do.extend(1u32.to_be_bytes());
    can_do.extend((name.len() as u32).to_be_bytes());
    can_do.extend(name);
    worker.write_all(&can_do).unwrap();
    gearmand.wait_for_worker("thumbs").await;

    // A worker for resize that takes no job: both wait in gearmand, their
    // rows leased.
    let _idle = gearmand.idle_worker("resize").await;
    let _runner = Proc::spawn("garivini", &with_servers(&db, &gearmand, &["queuerunner"]));
    gearmand
        .wait_for_depth(LIMIT, "the QueueRunner to dispatch both rows", "resize", 2)
        .await;
    let status = json(&db.url, &["--gearmand", &gearmand.addr, "status", "--json"]).await;
    let resize = &status["databases"][0]["functions"][0];
    assert_eq!(
        (resize["due"].as_u64(), resize["in_flight"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(resize["oldest_due_secs"], Value::Null);
    let server = &status["gearmand"][0];
    assert_eq!(server["server"], gearmand.addr.as_str());
    assert_eq!(server["error"], Value::Null);
    let funcs = server["functions"].as_array().unwrap();
    let (r, t) = (named(funcs, "resize"), named(funcs, "thumbs"));
    assert_eq!([&r["depth"], &r["running"], &r["workers"]], [2, 0, 1]);
    assert_eq!([&t["depth"], &t["running"], &t["workers"]], [0, 0, 1]);

    // What the README shows.
    let (code, out, err) = run_garivini(&db.url, &["--gearmand", &gearmand.addr, "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("gearmand {}", gearmand.addr)),
        "{out}"
    );
    assert!(out.contains("FUNCTION  DEPTH  RUNNING  WORKERS"), "{out}");
    println!("{out}");
}

#[tokio::test]
async fn status_reports_an_unreachable_database_exits_1_and_hides_its_password() {
    let db = seeded(&[("resize", Some(0), 0)]).await;
    let port = testkit::free_port();
    let dsn = format!("{},mysql://u:hunter2@127.0.0.1:{port}/gone", db.url);
    let (code, out, err) = run_garivini(&dsn, &["status"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("database 1"),
        "the readable one is still shown: {out}"
    );
    assert!(out.contains("database 2  mysql://u:***@127.0.0.1"), "{out}");
    assert!(out.contains("unreadable"), "{out}");
    assert!(err.starts_with("error: database 2"), "{err}");
    assert!(!out.contains("hunter2") && !err.contains("hunter2"));
}

#[tokio::test]
async fn list_filters_by_state_and_function_soonest_first() {
    let db = mix().await;
    let list = async |extra: &[&str]| {
        let mut args = vec!["jobs", "list", "--json"];
        args.extend(extra);
        ids(&json(&db.url, &args).await)
    };
    assert_eq!(
        list(&[]).await,
        ["1:1", "1:2", "1:6", "1:7", "1:3", "1:4", "1:5"]
    );
    assert_eq!(list(&["--due"]).await, ["1:1", "1:2", "1:6"]);
    assert_eq!(list(&["--in-flight"]).await, ["1:7", "1:3"]);
    assert_eq!(list(&["--scheduled"]).await, ["1:4"]);
    assert_eq!(list(&["--dead"]).await, ["1:5"]);
    assert_eq!(list(&["--failing"]).await, ["1:2", "1:7"]);
    assert_eq!(list(&["--funcname", "email"]).await, ["1:6", "1:7"]);
    assert_eq!(
        list(&["--funcname", "resize", "--due", "--limit", "1"]).await,
        ["1:1"]
    );
    assert!(list(&["--funcname", "nosuch"]).await.is_empty());

    let listing = json(&db.url, &["jobs", "list", "--json", "--dead"]).await;
    let dead = &listing["jobs"][0];
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["failcount"], 25);
    assert_eq!(dead["due_in_secs"], Value::Null);
    assert_eq!(dead["arg_preview"], "arg-5");

    let (code, out, _) = run_garivini(&db.url, &["jobs", "list", "--failing"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("ID   FUNCTION  STATE"), "{out}");
    // Due in 30 s when seeded; a slow machine may take a second or two.
    let line = out
        .lines()
        .find(|l| l.starts_with("1:7"))
        .expect("1:7 listed");
    assert!(line.starts_with("1:7  email     in flight  in "), "{out}");
    let secs: u32 = line
        .split_whitespace()
        .nth(5)
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!((25..=30).contains(&secs), "{out}");
}

/// `jobs list --json` is a page as the API's GET /api/v1/jobs answers it:
/// `{"jobs": [...], "next": CURSOR}`, `next` null on the last page;
/// following it gives every row once, and it is the cursor the text
/// prints.
#[tokio::test]
async fn list_json_gives_the_jobs_and_the_next_page_cursor() {
    let db = mix().await;
    let (mut seen, mut after, mut cursors) = (Vec::new(), None::<String>, Vec::new());
    loop {
        let mut args = vec!["jobs", "list", "--json", "--limit", "3"];
        if let Some(cursor) = &after {
            args.extend(["--after", cursor.as_str()]);
        }
        let page = json(&db.url, &args).await;
        let keys: Vec<&String> = page.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["jobs", "next"], "{page}");
        seen.extend(ids(&page));
        match &page["next"] {
            Value::Null => break,
            Value::String(cursor) => after = Some(cursor.clone()),
            other => panic!("next is {other}"),
        }
        cursors.push(after.clone().unwrap());
        assert!(cursors.len() < 5, "no last page: {seen:?}");
    }
    assert_eq!(seen, ["1:1", "1:2", "1:6", "1:7", "1:3", "1:4", "1:5"]);
    let (code, out, err) = run_garivini(&db.url, &["jobs", "list", "--limit", "3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("--after {})", cursors[0])),
        "the text's cursor is not {}: {out}",
        cursors[0]
    );
}

#[tokio::test]
async fn list_refuses_two_state_filters_a_zero_limit_and_a_bad_funcname() {
    let db = TestDb::new().await;
    let (code, _, err) = run_garivini(&db.url, &["jobs", "list", "--dead", "--due"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("'--due' cannot be used with '--dead'")
            || err.contains("'--dead' cannot be used with '--due'"),
        "{err}"
    );
    let err = fails(&db.url, &["jobs", "list", "--limit", "0"]).await;
    assert_eq!(
        err,
        "error: invalid setting --limit: must be 1 to 10000, not 0"
    );
    let long = "f".repeat(201);
    let err = fails(&db.url, &["jobs", "list", "--funcname", &long]).await;
    assert!(
        err.contains("funcname is 201 bytes, over the limit of 200"),
        "{err}"
    );
}

#[tokio::test]
async fn show_prints_the_row_its_job_json_and_when_it_runs_next() {
    let db = mix().await;
    let shown = json(&db.url, &["jobs", "show", "1:4", "--json"]).await;
    assert_eq!(shown["id"], "1:4");
    assert_eq!(shown["state"], "scheduled");
    let due_in = shown["due_in_secs"].as_i64().unwrap();
    assert!((7195..=7200).contains(&due_in), "{due_in}");
    assert_eq!(shown["job"]["funcname"], "resize");
    assert_eq!(shown["job"]["arg"], "arg-4");
    assert_eq!(shown["job"]["dbid"], 1);

    let (code, out, _) = run_garivini(&db.url, &["jobs", "show", "1:2"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("state      due"), "{out}");
    assert!(out.contains("failcount  2 (failing)"), "{out}");
    let next_run = out.lines().find(|l| l.contains("next run")).unwrap();
    assert!(next_run.contains("s ago ("), "due 3 s before: {out}");
    let json_line = out.lines().last().unwrap();
    let job = garivini::Job::from_json(json_line.as_bytes()).expect("the job JSON");
    assert_eq!(
        (job.jobid, job.failcount, job.arg.as_slice()),
        (2, 2, &b"arg-2"[..])
    );

    let (_, out, _) = run_garivini(&db.url, &["jobs", "show", "1:5"]).await;
    assert!(out.contains("next run   never"), "{out}");
}

#[tokio::test]
async fn show_of_an_unknown_id_says_so() {
    let db = mix().await;
    let err = fails(&db.url, &["jobs", "show", "1:99"]).await;
    assert_eq!(
        err,
        "error: no such job: 1:99 (completed, cancelled, or never stored)"
    );
    let err = fails(&db.url, &["jobs", "show", "99"]).await;
    assert_eq!(
        err,
        "error: invalid job id \"99\": expected DBID:JOBID, e.g. 1:42 (see --help)"
    );
    let err = fails(&db.url, &["jobs", "show", "2:1"]).await;
    assert_eq!(
        err,
        "error: unknown database id 2 (only database 1 is configured)"
    );
}

#[tokio::test]
async fn retry_makes_rows_due_now_keeping_or_resetting_failcount() {
    let db = mix().await;
    let (code, out, err) = run_garivini(&db.url, &["jobs", "retry", "1:4", "1:5"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "2 jobs made due now (failcount kept): 1:4 1:5");
    let now = db.now().await;
    let rows: Vec<(u64, u32, u8)> = db
        .query("SELECT jobid, run_after, failcount FROM job WHERE jobid IN (4, 5) ORDER BY jobid")
        .await;
    for (id, run_after, _) in &rows {
        assert!(*run_after <= now, "job {id} is due now");
    }
    assert_eq!((rows[0].2, rows[1].2), (0, 25), "failcount kept");

    let out = json(
        &db.url,
        &["jobs", "retry", "1:2", "--reset-failcount", "--json"],
    )
    .await;
    assert_eq!(out["retried"], serde_json::json!(["1:2"]));
    assert_eq!(db.count("jobid = 2 AND failcount = 0").await, 1);
}

#[tokio::test]
async fn retry_dead_of_a_function_makes_only_its_dead_rows_due() {
    let db = seeded(&[
        ("resize", None, 25),
        ("resize", None, 3),
        ("email", None, 25),
        ("resize", Some(7200), 1),
    ])
    .await;
    let (code, out, err) = run_garivini(
        &db.url,
        &[
            "jobs",
            "retry",
            "--dead",
            "--funcname",
            "resize",
            "--reset-failcount",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "2 dead jobs of resize made due now (failcount reset)"
    );
    assert_eq!(
        db.count("run_after <= UNIX_TIMESTAMP() AND failcount = 0")
            .await,
        2
    );
    assert_eq!(
        db.count("funcname = 'email' AND run_after = 2147483647")
            .await,
        1
    );
    assert_eq!(
        db.count("jobid = 4 AND failcount = 1").await,
        1,
        "scheduled row untouched"
    );

    // Without --funcname: every function's, here email's last dead row.
    let (code, out, err) = run_garivini(&db.url, &["jobs", "retry", "--dead", "--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "would be made due now (failcount kept): 1 dead job: email (1) (--dry-run: nothing changed)"
    );
    assert_eq!(
        db.count("run_after = 2147483647").await,
        1,
        "a dry run changes nothing"
    );
    let (code, out, err) = run_garivini(&db.url, &["jobs", "retry", "--dead"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "1 dead job of 1 function made due now (failcount kept)"
    );
    assert_eq!(db.count("run_after = 2147483647").await, 0);
}

#[tokio::test]
async fn retry_refuses_an_in_flight_row_without_force() {
    let db = mix().await;
    let err = fails(&db.url, &["jobs", "retry", "1:1", "1:3"]).await;
    assert_eq!(
        err,
        "error: refused: 1:3 in flight (due within the 1000 s lease: a worker may be running it); \
         nothing was changed; pass --force to do it anyway"
    );
    assert_eq!(
        db.count("jobid = 3 AND run_after > UNIX_TIMESTAMP()").await,
        1
    );
    let out = json(
        &db.url,
        &["jobs", "retry", "1:1", "1:3", "--force", "--json"],
    )
    .await;
    assert_eq!(out["retried"], serde_json::json!(["1:1", "1:3"]));
    assert_eq!(
        db.count("jobid = 3 AND run_after <= UNIX_TIMESTAMP()")
            .await,
        1
    );
}

#[tokio::test]
async fn cancel_deletes_rows_and_an_unknown_id_changes_nothing() {
    let db = mix().await;
    let err = fails(&db.url, &["jobs", "cancel", "1:1", "1:98", "1:99"]).await;
    assert_eq!(
        err,
        "error: no such job: 1:98, 1:99 (completed, cancelled, or never stored)"
    );
    let err = fails(&db.url, &["jobs", "cancel", "1:1", "one"]).await;
    assert!(err.starts_with("error: invalid job id \"one\""), "{err}");
    assert_eq!(db.count("1").await, 7, "nothing deleted");

    let (code, out, err) = run_garivini(&db.url, &["jobs", "cancel", "1:1", "1:5"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "2 jobs cancelled (deleted): 1:1 1:5");
    assert_eq!(db.count("jobid IN (1, 5)").await, 0);
    assert_eq!(db.count("1").await, 5);
}

#[tokio::test]
async fn cancel_refuses_an_in_flight_row_without_force() {
    let db = mix().await;
    let err = fails(&db.url, &["jobs", "cancel", "1:3", "1:4"]).await;
    assert!(err.starts_with("error: refused: 1:3 in flight"), "{err}");
    assert!(err.ends_with("pass --force to do it anyway"), "{err}");
    assert_eq!(db.count("jobid IN (3, 4)").await, 2, "nothing deleted");
    let out = json(
        &db.url,
        &["jobs", "cancel", "1:3", "1:4", "--force", "--json"],
    )
    .await;
    assert_eq!(out["cancelled"], serde_json::json!(["1:3", "1:4"]));
    assert_eq!(db.count("jobid IN (3, 4)").await, 0);
}

#[tokio::test]
async fn status_and_jobs_count_in_flight_by_the_longest_lease_of_the_config_file() {
    let db = seeded(&[
        ("resize", Some(2000), 0), // 1:1
        ("resize", Some(4000), 0), // 1:2
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garivini.toml");
    let with_file = async |text: &str, args: &[&str]| -> Value {
        std::fs::write(&path, text).unwrap();
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend(args);
        json(&db.url, &all).await
    };
    let in_flight_and_scheduled = |status: &Value| {
        let resize = &status["databases"][0]["functions"][0];
        assert_eq!(resize["funcname"], "resize");
        [&resize["in_flight"], &resize["scheduled"]].map(|n| n.as_u64().unwrap())
    };

    // No file: the default 1000 s lease, both rows scheduled.
    let status = json(&db.url, &["status", "--json"]).await;
    assert_eq!(in_flight_and_scheduled(&status), [0, 2]);

    // [roles] lease = 3600: the row due in 2000 s may be running.
    let roles = "[roles]\nlease = 3600\n";
    let status = with_file(roles, &["status", "--json"]).await;
    assert_eq!(status["lease"], 3600);
    assert_eq!(in_flight_and_scheduled(&status), [1, 1]);
    let listed = with_file(roles, &["jobs", "list", "--in-flight", "--json"]).await;
    assert_eq!(ids(&listed), ["1:1"]);
    std::fs::write(&path, roles).unwrap();
    let err = fails(
        &db.url,
        &["--config", path.to_str().unwrap(), "jobs", "retry", "1:1"],
    )
    .await;
    assert!(err.contains("due within the 3600 s lease"), "{err}");

    // A role's own section over [roles]: the longest lease of any role.
    let controller = "[roles]\nlease = 3600\n[controller]\nlease = 5000\n";
    let status = with_file(controller, &["status", "--json"]).await;
    assert_eq!(in_flight_and_scheduled(&status), [2, 0]);

    // --lease wins over the file.
    let status = with_file(controller, &["status", "--json", "--lease", "1000"]).await;
    assert_eq!(in_flight_and_scheduled(&status), [0, 2]);
}

#[tokio::test]
async fn status_names_the_functions_whose_rows_wait_for_a_worker() {
    let (db, gearmand) = (mix().await, Gearmand::start().await);
    // email has a worker; resize has none.
    let _idle = gearmand.idle_worker("email").await;
    let status = json(&db.url, &["--gearmand", &gearmand.addr, "status", "--json"]).await;
    assert_eq!(status["without_worker"], serde_json::json!(["resize"]));
    let (code, out, err) = run_garivini(&db.url, &["--gearmand", &gearmand.addr, "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("no worker: resize (their rows wait in the database until one registers)"),
        "{out}"
    );
    // Without gearmand it cannot be told.
    let status = json(&db.url, &["status", "--json"]).await;
    assert_eq!(status["without_worker"], serde_json::json!([]));
}

#[tokio::test]
async fn cancel_dead_of_a_function_deletes_only_its_dead_rows() {
    let db = seeded(&[
        ("resize", None, 25),
        ("resize", None, 3),
        ("email", None, 25),
        ("resize", Some(7200), 1),
        ("resize", Some(0), 0),
    ])
    .await;
    let (code, out, err) = run_garivini(
        &db.url,
        &["jobs", "cancel", "--dead", "--funcname", "resize"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "2 dead jobs of resize cancelled (deleted)");
    assert_eq!(db.count("funcname = 'resize'").await, 2, "live rows kept");
    assert_eq!(
        db.count("funcname = 'email'").await,
        1,
        "other function kept"
    );
    let dry = json(
        &db.url,
        &["jobs", "cancel", "--dead", "--dry-run", "--json"],
    )
    .await;
    assert_eq!(dry["cancelled"], 1, "{dry}");
    assert_eq!(dry["by_function"]["email"], 1, "{dry}");
    assert_eq!(
        db.count("funcname = 'email'").await,
        1,
        "a dry run deletes nothing"
    );
    let (code, out, err) = run_garivini(&db.url, &["jobs", "cancel", "--dead"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1 dead job of 1 function cancelled (deleted)");
    assert_eq!(db.count("1").await, 2, "only live rows left");
    let (code, _, err) = run_garivini(&db.url, &["jobs", "cancel", "--dry-run"]).await;
    assert_eq!(code, 1, "--dry-run needs --dead: {err}");
}

#[tokio::test]
async fn list_finds_rows_by_unique_key_prefix_and_pages_with_the_cursor_it_prints() {
    let db = TestDb::new().await;
    let client = garivini::Client::new(db.store().await);
    for key in ["img-1", "img-2", "img-3", "doc-1"] {
        client
            .insert_job(garivini::NewJob::new("resize", "x").unique(key))
            .await
            .unwrap();
    }
    let ids = |v: Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["uniqkey"].as_str().unwrap().to_string())
            .collect()
    };
    let all = json(
        &db.url,
        &["jobs", "list", "--unique-prefix", "img-", "--json"],
    )
    .await;
    assert_eq!(ids(all), ["img-1", "img-2", "img-3"]);
    // Two at a time: the text names the cursor of the next page.
    let (code, out, err) = run_garivini(
        &db.url,
        &["jobs", "list", "--unique-prefix", "img-", "--limit", "2"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let cursor = out
        .lines()
        .find_map(|l| l.split("--after ").nth(1))
        .map(|c| c.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("no cursor in: {out}"));
    let rest = json(
        &db.url,
        &[
            "jobs",
            "list",
            "--unique-prefix",
            "img-",
            "--after",
            &cursor,
            "--json",
        ],
    )
    .await;
    assert_eq!(ids(rest), ["img-3"]);
    let (code, _, err) = run_garivini(&db.url, &["jobs", "list", "--after", "nonsense"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a page cursor"), "{err}");
}

#[tokio::test]
async fn status_counts_a_range_past_its_cap_as_at_least_and_small_ones_exactly() {
    let db = seeded(&[
        ("small", Some(-5), 1), // 1:1
        ("small", None, 3),     // 1:2
    ])
    .await;
    // More due rows of one function than a status counts one by one
    // (10,000 per range with two functions).
    db.exec(
        "INSERT INTO job (funcname, arg, run_after) \
         SELECT 'bulk', 'x', UNIX_TIMESTAMP() - seq FROM seq_1_to_10500",
    )
    .await;
    let status = json(&db.url, &["status", "--json"]).await;
    let funcs = status["databases"][0]["functions"].as_array().unwrap();
    let (bulk, small) = (named(funcs, "bulk"), named(funcs, "small"));
    assert_eq!(bulk["due"], 10_000, "{bulk}");
    // None failing among the rows read: 0, not a lower bound of 0.
    assert_eq!(bulk["failing"], 0, "{bulk}");
    assert_eq!(bulk["at_least"], serde_json::json!(["due"]), "{bulk}");
    // Its oldest due row is found however many come after it.
    assert!(
        bulk["oldest_due_secs"].as_u64().unwrap() >= 10_500,
        "{bulk}"
    );
    assert_eq!(
        ["due", "dead", "failing"].map(|k| small[k].as_u64().unwrap()),
        [1, 1, 1],
        "{small}"
    );
    assert_eq!(small["at_least"], serde_json::json!([]), "{small}");
    let total = &status["databases"][0]["total"];
    assert_eq!(total["due"], 10_001, "{total}");
    assert_eq!(total["at_least"], serde_json::json!(["due"]), "{total}");

    let (code, out, err) = run_garivini(&db.url, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("N+ = at least N"), "{out}");
    let line = |name: &str| {
        let found = out.lines().find(|l| l.trim_start().starts_with(name));
        found
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    assert!(line("bulk").contains("10000+"), "{out}");
    assert!(!line("small").contains('+'), "{out}");
    assert!(!out.split_whitespace().any(|w| w == "0+"), "{out}");
}

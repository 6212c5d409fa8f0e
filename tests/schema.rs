//! `garivini schema check [--apply]`, run as the real binary on tables kept
//! from elsewhere: the original Perl Garivini's (also in latin1), one from
//! our older schema.sql (flag NOT NULL), schema.sql's own, none at all, and
//! one whose mend fails; after --apply, the original client's exact
//! statements still work. Real MariaDB (a database per test); needs
//! scripts/services up.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde_json::Value;
use testkit::{run_garivini, within, TestDb, ORIGINAL_SCHEMA, PERL_COMPLETE_JOB, SCHEMA};

const LIMIT: Duration = Duration::from_secs(30);
/// The original worker's reschedule after a failure.
const PERL_RESCHEDULE: &str = "UPDATE job SET run_after=?, failcount=? WHERE jobid=?";

const ADD_STATUS_INDEX: &str =
    "ALTER TABLE job ADD INDEX funcname_run_after (funcname, run_after, failcount);";
const MEND_FLAG: &str =
    "ALTER TABLE job MODIFY flag ENUM('controller','shim') NULL DEFAULT 'shim';";

/// Runs `garivini --dsn DSN schema check ARGS`; returns (exit code,
/// stdout, stderr).
async fn check(dsn: &str, args: &[&str]) -> (i32, String, String) {
    run_garivini(dsn, &[&["schema", "check"], args].concat()).await
}

/// Fails, showing `out`, unless it holds `text`.
#[track_caller]
fn assert_has(out: &str, text: &str) {
    assert!(out.contains(text), "{out}");
}

fn lines_starting<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// `schema` (a job table kept from elsewhere) with what `--apply` adds
/// to any table beside the checks below, which are about the rest: our
/// `priority` column and its index, our history columns (`ADD_HISTORY`),
/// and schema.sql's garivini_periodic
/// table (and garivini_paused after it). Each missing is a need of its own
/// (`the_original_table_gets_the_priority_column_from_apply`,
/// `a_missing_table_is_reported_with_the_create_and_apply_creates_it`
/// here, and tests/periodic.rs).
fn kept(schema: &str) -> String {
    let start = SCHEMA
        .find("CREATE TABLE IF NOT EXISTS garivini_periodic")
        .expect("schema.sql creates garivini_periodic");
    format!(
        "{schema};\n{ADD_PRIORITY};\n{ADD_PRIORITY_INDEX};\n{};\n{}",
        ADD_HISTORY.join(";\n"),
        &SCHEMA[start..]
    )
}

/// Our history columns, which `kept` adds too (tests/history.rs has
/// `--apply` add them to the original's table).
const ADD_HISTORY: [&str; 4] = [
    "ALTER TABLE job ADD COLUMN created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP",
    "ALTER TABLE job ADD COLUMN attempted_at INT UNSIGNED NOT NULL DEFAULT 0",
    "ALTER TABLE job ADD COLUMN failed_at INT UNSIGNED NOT NULL DEFAULT 0",
    "ALTER TABLE job ADD COLUMN last_error VARCHAR(1000) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL DEFAULT NULL",
];

const ADD_PRIORITY: &str =
    "ALTER TABLE job ADD COLUMN priority TINYINT UNSIGNED NOT NULL DEFAULT 1";
const ADD_PRIORITY_INDEX: &str =
    "ALTER TABLE job ADD INDEX priority_run_after (priority, run_after)";

/// The original's table has no priority column: the check says what it
/// costs, `--apply` adds it and its index, and then a high job is stored
/// and claimed first.
#[tokio::test]
async fn the_original_table_gets_the_priority_column_from_apply() {
    let start = SCHEMA
        .find("CREATE TABLE IF NOT EXISTS garivini_periodic")
        .expect("schema.sql creates garivini_periodic");
    let db = TestDb::with_schema(&format!("{ORIGINAL_SCHEMA};\n{}", &SCHEMA[start..])).await;
    let (code, out, _) = check(&db.url, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "needs: column priority is missing: jobs are claimed oldest first whatever their priority, \
         and a high or low one is refused",
    );
    let alters = lines_starting(&out, "ALTER");
    assert!(
        alters.contains(&format!("{ADD_PRIORITY};").as_str()),
        "{out}"
    );
    assert!(
        alters.contains(&format!("{ADD_PRIORITY_INDEX};").as_str()),
        "{out}"
    );
    let (code, out, _) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("    ok: nothing needs mending\n"), "{out}");
    original_statements_work(&db).await;
    db.exec("DELETE FROM job").await;
    let client = garivini::Client::new(db.store().await);
    within(
        LIMIT,
        "a high job",
        client.insert_job(garivini::NewJob::new("f", "x").priority(garivini::Priority::High)),
    )
    .await
    .unwrap();
    let stored: Vec<u8> = query(&db, "SELECT priority FROM job").await;
    assert_eq!(stored, vec![0]);
}

/// schema.sql as our older versions had it: flag NOT NULL.
fn old_schema() -> String {
    let old = SCHEMA.replace(
        "ENUM('controller','shim') NULL DEFAULT 'shim'",
        "ENUM('controller','shim') NOT NULL DEFAULT 'shim'",
    );
    assert_ne!(
        old, SCHEMA,
        "schema.sql's flag line changed: update this test"
    );
    old
}

async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
    db: &TestDb,
    sql: &str,
) -> Vec<T> {
    within(LIMIT, sql, db.query(sql)).await
}

/// The original's statements on a mended table: INSERT IGNORE with flag
/// NULL stores NULL and dedups by (funcname, uniqkey) only, UPDATE
/// reschedules, DELETE completes.
async fn original_statements_work(db: &TestDb) {
    let id = db.perl_insert_job("f", "x", None).await;
    assert!(id > 0, "a row was stored");
    assert_eq!(
        query::<Option<u8>>(
            db,
            &format!("SELECT flag IS NULL FROM job WHERE jobid = {id}")
        )
        .await,
        vec![Some(1)],
        "the original client's NULL flag is stored as NULL"
    );
    // Keyless jobs are all kept; a repeated key is not stored twice.
    db.perl_insert_job("f", "x", None).await;
    db.perl_insert_job("f", "x", Some("k")).await;
    db.perl_insert_job("f", "x", Some("k")).await;
    assert_eq!(
        query::<u64>(db, "SELECT COUNT(*) FROM job WHERE funcname = 'f'").await,
        vec![3]
    );
    within(LIMIT, "the original's UPDATE and DELETE", async {
        let mut conn = db.conn().await;
        conn.exec_drop(PERL_RESCHEDULE, (2_000_000_000u32, 3u8, id))
            .await
            .expect("the original's UPDATE");
        assert_eq!(conn.affected_rows(), 1);
        let row: Option<(u32, u8)> = conn
            .exec_first(
                "SELECT run_after, failcount FROM job WHERE jobid = ?",
                (id,),
            )
            .await
            .unwrap();
        assert_eq!(row, Some((2_000_000_000, 3)));
        conn.exec_drop(PERL_COMPLETE_JOB, (id,))
            .await
            .expect("the original's DELETE");
        assert_eq!(conn.affected_rows(), 1);
    })
    .await;
    assert_eq!(
        query::<u64>(db, "SELECT COUNT(*) FROM job WHERE funcname = 'f'").await,
        vec![2]
    );
}

#[tokio::test]
async fn the_original_table_needs_the_status_index_only_and_apply_adds_it() {
    let db = TestDb::with_schema(&kept(ORIGINAL_SCHEMA)).await;
    let (code, out, err) = check(&db.url, &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with(&format!("database 1  {}\n", db.url)),
        "{out}"
    );
    let needs = lines_starting(&out, "needs:");
    assert_eq!(needs.len(), 1, "{out}");
    assert!(
        needs[0].starts_with("needs: index funcname_run_after (funcname, run_after, failcount)"),
        "{out}"
    );
    assert_has(&out, &format!("\n    {ADD_STATUS_INDEX}\n"));
    assert_eq!(
        err.trim(),
        "error: database 1 needs 1 change; run `garivini schema check --apply`, or the \
         statements above"
    );

    let (code, out, err) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_has(
        &out,
        &format!("\n  applied: {}\n", ADD_STATUS_INDEX.trim_end_matches(';')),
    );
    let again = &out[out.find("  checked again:\n").expect(&out)..];
    assert!(!again.contains("needs:"), "{out}");
    assert!(
        again.trim_end().ends_with("ok: nothing needs mending") || again.trim_end().ends_with("ok")
    );

    let (code, out, _) = check(&db.url, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(lines_starting(&out, "needs:").is_empty(), "{out}");
    let columns = query::<String>(
        &db,
        "SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job' AND INDEX_NAME = 'funcname_run_after'",
    )
    .await;
    assert_eq!(columns, vec!["funcname,run_after,failcount".to_string()]);
    original_statements_work(&db).await;
}

#[tokio::test]
async fn a_not_null_flag_from_our_old_schema_is_made_nullable() {
    let db = TestDb::with_schema(&old_schema()).await;
    // What goes wrong: the original client's NULL flag becomes 'controller'.
    let id = db.perl_insert_job("wrong", "x", None).await;
    assert_eq!(
        query::<String>(&db, &format!("SELECT flag FROM job WHERE jobid = {id}")).await,
        vec!["controller".to_string()]
    );

    let (code, out, err) = check(&db.url, &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    let needs = lines_starting(&out, "needs:");
    assert_eq!(
        needs,
        vec![
            "needs: flag is NOT NULL: the original client's NULL flag would be stored as \
             'controller' and a throughput job would go to the wrong function"
        ],
        "{out}"
    );
    assert_has(&out, &format!("\n    {MEND_FLAG}\n"));

    let (code, out, err) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("applied: {}", MEND_FLAG.trim_end_matches(';'))));
    let (code, out, _) = check(&db.url, &[]).await;
    assert_eq!((code, out), (0, format!("database 1  {}\n  ok\n", db.url)));
    assert_eq!(
        query::<(String, Option<String>)>(
            &db,
            "SELECT IS_NULLABLE, COLUMN_DEFAULT FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job' AND COLUMN_NAME = 'flag'"
        )
        .await,
        vec![("YES".to_string(), Some("'shim'".to_string()))]
    );
    // The row stored before keeps its value; new ones get NULL.
    assert_eq!(
        query::<String>(&db, &format!("SELECT flag FROM job WHERE jobid = {id}")).await,
        vec!["controller".to_string()]
    );
    original_statements_work(&db).await;
}

#[tokio::test]
async fn schema_sql_itself_is_ok() {
    let db = TestDb::new().await;
    let (code, out, err) = check(&db.url, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("database 1  {}\n  ok\n", db.url));
    let (code, out, _) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!("database 1  {}\n  ok\n", db.url),
        "nothing to apply"
    );
}

#[tokio::test]
async fn a_missing_table_is_reported_with_the_create_and_apply_creates_it() {
    let db = TestDb::with_schema("DO 0").await;
    let (code, out, err) = check(&db.url, &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("  needs: table job is missing: create it as schema.sql does\n    CREATE TABLE IF NOT EXISTS job (\n"),
        "{out}"
    );
    assert!(
        out.contains("    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "  needs: no garivini_periodic table: QueueRunners do not run [[periodic]] entries \
                      (each logs a warning)\n    CREATE TABLE IF NOT EXISTS garivini_periodic (\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "  needs: no garivini_paused table: functions cannot be paused \
             (garivini functions pause fails; each role logs a warning)\n    CREATE TABLE IF NOT EXISTS garivini_paused (\n"
        ),
        "{out}"
    );
    assert!(
        err.starts_with("error: database 1 needs 3 changes;"),
        "{err}"
    );

    let (code, out, err) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  applied: CREATE TABLE IF NOT EXISTS job ( …\n"),
        "{out}"
    );
    assert!(
        out.contains("  applied: CREATE TABLE IF NOT EXISTS garivini_periodic ( …\n"),
        "{out}"
    );
    assert!(
        out.contains("  applied: CREATE TABLE IF NOT EXISTS garivini_paused ( …\n"),
        "{out}"
    );
    assert!(out.ends_with("  checked again:\n    ok\n"), "{out}");
    original_statements_work(&db).await;
}

/// garivini_dispatches only feeds the dashboard's chart: its absence is a
/// note (the check passes), with the CREATE TABLE that `--apply` runs.
#[tokio::test]
async fn a_missing_dispatches_table_is_a_note_and_apply_creates_it() {
    let db = TestDb::create(&testkit::server_url(), "gv_dispatch", Some(SCHEMA))
        .await
        .expect("MariaDB is usable (scripts/services up)");
    db.exec("DROP TABLE garivini_dispatches").await;
    let (code, out, err) = check(&db.url, &[]).await;
    assert_eq!(code, 0, "only a note: {out}{err}");
    assert!(lines_starting(&out, "needs:").is_empty(), "{out}");
    assert_has(
        &out,
        "  note: no garivini_dispatches table: the dashboard's chart has no dispatched line \
         (each dispatching role logs it once)\n    CREATE TABLE IF NOT EXISTS garivini_dispatches (\n",
    );
    assert!(out.ends_with("  ok: nothing needs mending\n"), "{out}");

    let (code, out, err) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_has(
        &out,
        "  applied: CREATE TABLE IF NOT EXISTS garivini_dispatches ( …\n",
    );
    assert!(out.ends_with("  checked again:\n    ok\n"), "{out}");
    assert_eq!(
        query::<u64>(&db, "SELECT COUNT(*) FROM garivini_dispatches").await,
        vec![0]
    );
    let (code, out, _) = check(&db.url, &[]).await;
    assert_eq!((code, out), (0, format!("database 1  {}\n  ok\n", db.url)));
}

#[tokio::test]
async fn a_latin1_original_table_gets_the_charset_note_and_no_alter_for_it() {
    let db = TestDb::with_schema(&kept(&format!("{ORIGINAL_SCHEMA} DEFAULT CHARSET=latin1"))).await;
    let (code, out, _) = check(&db.url, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(lines_starting(&out, "needs:").len(), 1, "{out}");
    let notes = lines_starting(&out, "note:");
    assert_eq!(notes.len(), 2, "{out}");
    assert!(
        notes[0].starts_with("note: index run_after (run_after) is the original's claim index"),
        "{out}"
    );
    assert!(
        notes[1].starts_with("note: table charset latin1: "),
        "{out}"
    );
    assert!(notes[1].contains("'?'"), "{out}");
    let statements = lines_starting(&out, "ALTER");
    assert_eq!(statements, vec![ADD_STATUS_INDEX], "{out}");

    let (code, out, _) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines_starting(&out, "applied:").len(), 1, "{out}");
    assert_eq!(
        query::<String>(
            &db,
            "SELECT TABLE_COLLATION FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job'"
        )
        .await,
        vec!["latin1_swedish_ci".to_string()],
        "the charset is left alone"
    );
    let (code, out, _) = check(&db.url, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines_starting(&out, "note: table charset latin1").len(), 1);
    assert!(out.ends_with("  ok: nothing needs mending\n"), "{out}");
    original_statements_work(&db).await;
}

#[tokio::test]
async fn every_shard_is_checked_and_json_carries_the_statements() {
    let original = TestDb::with_schema(&kept(ORIGINAL_SCHEMA)).await;
    let ours = TestDb::new().await;
    let dsn = format!("{},{}", original.url, ours.url);
    let (code, out, err) = check(&dsn, &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_has(&out, &format!("database 1  {}\n", original.url));
    assert!(
        out.ends_with(&format!("\n\ndatabase 2  {}\n  ok\n", ours.url)),
        "{out}"
    );

    let (code, out, _) = check(&dsn, &["--json"]).await;
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v[0]["dbid"], 1);
    assert_eq!(v[0]["check"]["ok"], false);
    let needs: Vec<&Value> = v[0]["check"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "needs")
        .collect();
    assert_eq!(needs.len(), 1);
    assert_eq!(needs[0]["mend"], ADD_STATUS_INDEX.trim_end_matches(';'));
    assert_eq!(v[1]["check"]["ok"], true);
    assert_eq!(v[1]["check"]["findings"], serde_json::json!([]));

    let (code, out, _) = check(&dsn, &["--apply", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["applied"][0], ADD_STATUS_INDEX.trim_end_matches(';'));
    assert_eq!(v[0]["after"]["ok"], true);
    assert!(
        v[1].get("applied").is_none(),
        "nothing to apply on database 2"
    );
}

#[tokio::test]
async fn a_mend_that_fails_stops_and_is_reported() {
    // No UNIQUE (funcname, uniqkey), and rows that break it.
    let schema = ORIGINAL_SCHEMA.replace(",\n    UNIQUE (funcname, uniqkey)", "");
    assert_ne!(schema, ORIGINAL_SCHEMA);
    let db = TestDb::with_schema(&kept(&schema)).await;
    within(
        LIMIT,
        "seeding duplicates",
        db.exec(
            "INSERT INTO job (funcname, uniqkey, run_after) VALUES ('f', 'k', 0), ('f', 'k', 0)",
        ),
    )
    .await;
    let (code, out, _) = check(&db.url, &[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        lines_starting(&out, "ALTER"),
        vec![
            "ALTER TABLE job ADD UNIQUE funcname_uniqkey (funcname, uniqkey);",
            ADD_STATUS_INDEX
        ],
        "{out}"
    );

    let (code, out, err) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "  failed: ALTER TABLE job ADD UNIQUE funcname_uniqkey (funcname, uniqkey)\n",
    );
    assert_has(&out, "Duplicate entry");
    assert!(
        lines_starting(&out, "applied:").is_empty(),
        "stops at the first failure: {out}"
    );
    assert_eq!(
        err.trim(),
        "error: database 1 still needs 2 changes after --apply"
    );
    assert_eq!(
        query::<u64>(&db, "SELECT COUNT(*) FROM job").await,
        vec![2],
        "nothing dropped"
    );
}

// The cluster variant (schema-cluster.sql): UNIQUE dedup_key
// (keyed_funcname, uniqkey) on a generated column that is NULL for keyless
// rows, instead of UNIQUE (funcname, uniqkey).

/// schema-cluster.sql, as a new cluster deployment loads it.
const CLUSTER_SCHEMA: &str = include_str!("../schema-cluster.sql");

/// The original's table on a server whose default collation is
/// `collation` (its CREATE TABLE names none: the server's applies).
fn original_in(collation: &str) -> String {
    let charset = collation.split('_').next().unwrap();
    format!("{ORIGINAL_SCHEMA} DEFAULT CHARSET={charset} COLLATE={collation}")
}

/// Who stores a job: the original Perl client's INSERT IGNORE, or our
/// Client (INSERT ... ON DUPLICATE KEY UPDATE jobid = LAST_INSERT_ID(jobid)
/// for a keyed job; a job with the key '' is keyless to it).
#[derive(Clone, Copy, Debug)]
enum Via {
    Perl,
    Client,
}

/// One dedup case: two jobs stored one after the other.
struct Case {
    what: &'static str,
    first: (Via, String, Option<String>),
    second: (Via, String, Option<String>),
}

/// Who stores a job, its function and its key.
type Job<'a> = (Via, &'a str, Option<String>);

/// The cases, each with function names of its own (`t<n>_...`).
fn dedup_cases() -> Vec<Case> {
    use Via::{Client as C, Perl as P};
    let k = |s: &str| Some(s.to_string());
    let long = "x".repeat(255);
    let long_a = format!("{}a", "x".repeat(254));
    let long_b = format!("{}b", "x".repeat(254));
    let accented = "é".repeat(255);
    let cases: Vec<(&'static str, Job<'_>, Job<'_>)> = vec![
        ("equal key, Perl twice", (P, "f", k("k")), (P, "f", k("k"))),
        (
            "equal key, Client twice",
            (C, "f", k("k")),
            (C, "f", k("k")),
        ),
        (
            "equal key, Perl then Client",
            (P, "f", k("k")),
            (C, "f", k("k")),
        ),
        (
            "equal key, Client then Perl",
            (C, "f", k("k")),
            (P, "f", k("k")),
        ),
        (
            "key differing in case, Perl",
            (P, "f", k("Key")),
            (P, "f", k("key")),
        ),
        (
            "key differing in case, Client",
            (C, "f", k("Key")),
            (C, "f", k("key")),
        ),
        (
            "funcname differing in case",
            (C, "F", k("k")),
            (P, "f", k("k")),
        ),
        (
            "key with a trailing space",
            (P, "f", k("k")),
            (P, "f", k("k ")),
        ),
        (
            "key with a trailing space, Client",
            (C, "f", k("k ")),
            (C, "f", k("k")),
        ),
        (
            "funcname with a trailing space",
            (P, "f ", k("k")),
            (P, "f", k("k")),
        ),
        ("NULL key twice, Perl", (P, "f", None), (P, "f", None)),
        ("NULL key twice, Client", (C, "f", None), (C, "f", None)),
        ("empty key twice, Perl", (P, "f", k("")), (P, "f", k(""))),
        ("empty key twice, Client", (C, "f", k("")), (C, "f", k(""))),
        (
            "empty key, Perl then Client",
            (P, "f", k("")),
            (C, "f", k("")),
        ),
        ("empty key and a space", (P, "f", k("")), (P, "f", k(" "))),
        ("NULL key and empty key", (P, "f", None), (P, "f", k(""))),
        ("longest key, equal", (P, "f", k(&long)), (C, "f", k(&long))),
        (
            "longest key, last byte differs",
            (C, "f", k(&long_a)),
            (P, "f", k(&long_b)),
        ),
        (
            "longest key of 2-byte characters",
            (P, "f", k(&accented)),
            (P, "f", k(&accented)),
        ),
        ("accent", (P, "f", k("é")), (P, "f", k("e"))),
        // What a CONCAT(funcname, NUL, uniqkey) key merges where the
        // collation ignores NUL (utf8mb4_unicode_ci).
        (
            "the key's start moved into funcname",
            (P, "fa", k("bc")),
            (P, "fab", k("c")),
        ),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(|(n, (what, (v1, f1, k1), (v2, f2, k2)))| {
            let name = |f: &str| format!("t{n}_{f}");
            Case {
                what,
                first: (v1, name(f1), k1),
                second: (v2, name(f2), k2),
            }
        })
        .collect()
}

/// The longest function name (200 characters), stored twice with one key.
fn long_funcname_case(n: usize) -> Case {
    let f = format!("t{n}_{}", "g".repeat(200 - format!("t{n}_").len()));
    Case {
        what: "longest funcname, equal",
        first: (Via::Client, f.clone(), Some("k".into())),
        second: (Via::Perl, f, Some("k".into())),
    }
}

/// What became of one case: the two ids the clients were answered (0:
/// INSERT IGNORE stored nothing) and the rows of its functions.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Outcome {
    what: &'static str,
    ids: (u64, u64),
    rows: u64,
}

/// Stores one job as `via` does; the id it answers.
async fn store_job(
    db: &TestDb,
    client: &garivini::Client,
    job: &(Via, String, Option<String>),
) -> u64 {
    let (via, funcname, key) = job;
    match via {
        Via::Perl => db.perl_insert_job(funcname, "x", key.as_deref()).await,
        Via::Client => {
            let mut new = garivini::NewJob::new(funcname.clone(), "x");
            if let Some(key) = key {
                new = new.unique(key.clone());
            }
            within(LIMIT, "Client::insert_job", client.insert_job(new))
                .await
                .unwrap_or_else(|e| panic!("{funcname}: {e}"))
                .jobid
        }
    }
}

/// Runs every case on `db`, in order.
async fn run_cases(db: &TestDb, client: &garivini::Client, cases: &[Case]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let first = store_job(db, client, &case.first).await;
        let second = store_job(db, client, &case.second).await;
        let rows = db.count(&format!("funcname LIKE 't{n}\\_%'")).await;
        outcomes.push(Outcome {
            what: case.what,
            ids: (first, second),
            rows,
        });
    }
    outcomes
}

/// Every row, byte for byte: (jobid, funcname, uniqkey, arg).
async fn all_rows(db: &TestDb) -> Vec<(u64, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>)> {
    query(
        db,
        "SELECT jobid, CAST(funcname AS BINARY), CAST(uniqkey AS BINARY), arg FROM job ORDER BY jobid",
    )
    .await
}

/// Whether the case named `what` stored one row (the second job merged
/// into the first).
fn merged(outcomes: &[Outcome], what: &str) -> bool {
    let o = outcomes
        .iter()
        .find(|o| o.what == what)
        .unwrap_or_else(|| panic!("no case {what}"));
    o.rows == 1
}

/// Converts the table of `db` with `garivini schema check --apply
/// --cluster`; the ALTER it ran.
async fn convert(db: &TestDb) -> String {
    let (code, out, err) = check(&db.url, &["--apply", "--cluster"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let applied = lines_starting(&out, "applied: ALTER TABLE job ADD COLUMN keyed_funcname");
    assert_eq!(applied.len(), 1, "{out}");
    let again = &out[out.find("  checked again:\n").expect(&out)..];
    assert!(!again.contains("needs:"), "{out}");
    applied[0].trim_start_matches("applied: ").to_string()
}

/// For each collation an original table may have (the server's default
/// when it was made) and schema.sql's own: the same jobs stored through
/// the original Perl client and our Client give the same answers (ids),
/// the same rows and the same merges on the original table and on its
/// conversion to the cluster variant, before the conversion (the rows it
/// converts include every near-duplicate of the cases) and after it (the
/// same jobs again, now colliding with those rows); for schema.sql, also
/// on schema-cluster.sql's fresh table.
#[tokio::test]
async fn the_cluster_variant_dedups_exactly_as_the_original_unique_key() {
    let mut cases = dedup_cases();
    cases.push(long_funcname_case(cases.len()));
    let flavours: Vec<(&str, String)> = vec![
        ("utf8mb4_general_ci", original_in("utf8mb4_general_ci")),
        ("latin1_swedish_ci", original_in("latin1_swedish_ci")),
        ("utf8mb4_unicode_ci", original_in("utf8mb4_unicode_ci")),
        ("utf8mb4_nopad_bin", original_in("utf8mb4_nopad_bin")),
        ("utf8mb4_bin", SCHEMA.to_string()),
    ];
    for (collation, schema) in &flavours {
        let original = TestDb::with_schema(schema).await;
        let converted = TestDb::with_schema(schema).await;
        let mut tables = vec![("original", &original), ("converted", &converted)];
        let fresh = TestDb::with_schema(CLUSTER_SCHEMA).await;
        if *collation == "utf8mb4_bin" {
            tables.push(("schema-cluster.sql", &fresh));
        }
        let mut clients = Vec::new();
        for (_, db) in &tables {
            clients.push(garivini::Client::new(db.store().await));
        }

        // Round 1: every case, before the conversion.
        let mut first = Vec::new();
        for ((_, db), client) in tables.iter().zip(&clients) {
            first.push(run_cases(db, client, &cases).await);
        }
        assert_eq!(
            first[0], first[1],
            "{collation}: the same table, the same answers"
        );
        let alter = convert(&converted).await;
        assert!(
            alter.contains(&format!(
                "keyed_funcname varchar(200) CHARACTER SET {} COLLATE {collation} AS (IF(uniqkey \
                 IS NULL, NULL, funcname)) STORED",
                collation.split('_').next().unwrap()
            )),
            "{collation}: keyed_funcname takes funcname's collation: {alter}"
        );
        assert_eq!(
            all_rows(&original).await,
            all_rows(&converted).await,
            "{collation}: the conversion keeps every row"
        );
        assert_eq!(
            query::<u64>(
                &converted,
                "SELECT COUNT(*) FROM job WHERE NOT (keyed_funcname <=> IF(uniqkey IS NULL, NULL, funcname))"
            )
            .await,
            vec![0],
            "{collation}: keyed_funcname is funcname for keyed rows, NULL for keyless ones"
        );

        // Round 2: the same jobs again, on the converted table and the
        // original one.
        let mut second = Vec::new();
        for ((_, db), client) in tables.iter().zip(&clients) {
            second.push(run_cases(db, client, &cases).await);
        }
        for (k, (name, db)) in tables.iter().enumerate().skip(1) {
            assert_eq!(
                first[0], first[k],
                "{collation}: {name} answers as the original table before the conversion"
            );
            assert_eq!(
                second[0], second[k],
                "{collation}: {name} answers as the original table after it"
            );
            assert_eq!(
                all_rows(&original).await,
                all_rows(db).await,
                "{collation}: {name} holds the original table's rows"
            );
        }

        // What the original index does, and so the variant.
        let outcomes = &first[0];
        let merges: Vec<&str> = outcomes
            .iter()
            .filter(|o| o.rows == 1)
            .map(|o| o.what)
            .collect();
        eprintln!("{collation}: merged: {merges:?}");
        let ci = collation.ends_with("_ci");
        let pad = !collation.contains("nopad");
        for (what, merges) in [
            ("equal key, Perl twice", true),
            ("equal key, Client twice", true),
            ("equal key, Perl then Client", true),
            ("equal key, Client then Perl", true),
            ("key differing in case, Perl", ci),
            ("key differing in case, Client", ci),
            ("funcname differing in case", ci),
            ("key with a trailing space", pad),
            ("funcname with a trailing space", pad),
            ("NULL key twice, Perl", false),
            ("NULL key twice, Client", false),
            // The original stores '' and its index merges it; our Client
            // takes '' for no key.
            ("empty key twice, Perl", true),
            ("empty key twice, Client", false),
            ("empty key, Perl then Client", false),
            ("empty key and a space", pad),
            ("NULL key and empty key", false),
            ("longest key, equal", true),
            ("longest key, last byte differs", false),
            ("longest key of 2-byte characters", true),
            ("the key's start moved into funcname", false),
            ("longest funcname, equal", true),
        ] {
            assert_eq!(
                merged(outcomes, what),
                merges,
                "{collation}: {what}: {:?}",
                outcomes.iter().find(|o| o.what == what)
            );
        }
        // A merged job answers the first one's id to our Client, and 0
        // (nothing stored) to the original's INSERT IGNORE.
        let o = outcomes
            .iter()
            .find(|o| o.what == "equal key, Perl then Client")
            .unwrap();
        assert_eq!(o.ids.0, o.ids.1, "{collation}: {o:?}");
        let o = outcomes
            .iter()
            .find(|o| o.what == "equal key, Client then Perl")
            .unwrap();
        assert_eq!(o.ids.1, 0, "{collation}: {o:?}");
        let case =
            |round: &[Outcome], what: &str| round.iter().find(|o| o.what == what).cloned().unwrap();
        let (before, after) = (
            case(&first[0], "equal key, Client twice"),
            case(&second[0], "equal key, Client twice"),
        );
        assert_eq!(
            (after.ids, after.rows),
            ((before.ids.0, before.ids.0), 1),
            "{collation}: round 2 is answered round 1's row"
        );

        // The converted table is healthy to the check, and --apply
        // converts nothing back.
        let (code, out, _) = check(&converted.url, &["--apply"]).await;
        assert_eq!(code, 0, "{collation}: {out}");
        for applied in lines_starting(&out, "applied:") {
            assert!(applied.contains("ADD INDEX funcname_run_after"), "{out}");
        }
        for word in ["keyed_funcname", "funcname_uniqkey", "dedup_key", "UNIQUE"] {
            assert!(!out.contains(word), "{collation}: {word}: {out}");
        }
        original_statements_work(&converted).await;
    }
}

/// The unique key the issue first measured, CONCAT(funcname, NUL,
/// uniqkey) in one generated column, does not dedup as the original
/// index: why the cluster variant keeps the two columns apart. The check
/// takes such a key for the dedup (no missing index) with a note saying so.
#[tokio::test]
async fn a_concat_key_merges_jobs_the_original_keeps_apart() {
    let concat = |collation: &str| {
        original_in(collation).replace(
            "UNIQUE (funcname, uniqkey)",
            "dedup VARCHAR(456) AS (CONCAT(funcname, CHAR(0 USING utf8mb4), uniqkey)) STORED,\n    \
             UNIQUE dedup_key (dedup)",
        )
    };
    let cases = dedup_cases();
    for (collation, case) in [
        ("utf8mb4_unicode_ci", "the key's start moved into funcname"),
        ("utf8mb4_bin", "funcname with a trailing space"),
    ] {
        let original = TestDb::with_schema(&original_in(collation)).await;
        let other = TestDb::with_schema(&kept(&concat(collation))).await;
        let o = run_cases(
            &original,
            &garivini::Client::new(original.store().await),
            &cases,
        )
        .await;
        let c = run_cases(&other, &garivini::Client::new(other.store().await), &cases).await;
        assert_ne!(
            merged(&o, case),
            merged(&c, case),
            "{collation}: {case}: the CONCAT key dedups as the original"
        );
        let (code, out, _) = check(&other.url, &[]).await;
        assert_eq!(code, 1, "{out}");
        let needs = lines_starting(&out, "needs:");
        assert_eq!(needs.len(), 1, "only the status index: {out}");
        assert!(needs[0].contains("funcname_run_after"), "{out}");
        assert_has(
            &out,
            "note: UNIQUE dedup_key (dedup) on a generated column is taken for the dedup",
        );
    }
}

/// Can a table hold rows the cluster variant's key refuses? Not one with
/// UNIQUE (funcname, uniqkey): the new key compares the same values in the
/// same collations (the conversions above keep every near-duplicate). A
/// table without it can: there the ALTER fails as a whole, and the table
/// is left as it was, rows and all.
#[tokio::test]
async fn converting_a_table_holding_duplicates_fails_and_changes_nothing() {
    let schema = ORIGINAL_SCHEMA.replace(",\n    UNIQUE (funcname, uniqkey)", "");
    assert_ne!(schema, ORIGINAL_SCHEMA);
    let db = TestDb::with_schema(&schema).await;
    within(
        LIMIT,
        "seeding duplicates",
        db.exec(
            "INSERT INTO job (funcname, uniqkey, run_after) VALUES ('f', 'k', 0), ('f', 'K', 0), \
             ('f', NULL, 0), ('f', NULL, 0)",
        ),
    )
    .await;
    let (code, out, err) = check(&db.url, &["--cluster"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let needs = lines_starting(&out, "needs:");
    assert!(
        needs.iter().any(|n| n.starts_with(
            "needs: the dedup by unique key is missing and --cluster asks for the cluster variant"
        )),
        "{out}"
    );
    assert_has(
        &out,
        "ALTER TABLE job ADD COLUMN keyed_funcname varchar(200) CHARACTER SET utf8mb4 COLLATE \
         utf8mb4_general_ci AS (IF(uniqkey IS NULL, NULL, funcname)) STORED, ADD UNIQUE dedup_key \
         (keyed_funcname, uniqkey);\n    (run by --apply only with --cluster)\n",
    );
    assert!(
        err.contains("run `garivini schema check --apply --cluster`"),
        "{err}"
    );

    let (code, out, err) = check(&db.url, &["--apply", "--cluster"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_has(&out, "  failed: ALTER TABLE job ADD COLUMN keyed_funcname");
    assert_has(&out, "Duplicate entry");
    assert_eq!(
        query::<u64>(
            &db,
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'job' AND COLUMN_NAME = 'keyed_funcname'"
        )
        .await,
        vec![0],
        "the failed ALTER added no column"
    );
    assert_eq!(
        query::<u64>(&db, "SELECT COUNT(*) FROM job").await,
        vec![4],
        "nothing dropped"
    );
}

/// On a Galera node (told to the check: no cluster runs here) the plain
/// UNIQUE (funcname, uniqkey) is a need with the conversion, which apply
/// runs only when told to; after it the check is content. This server is
/// no Galera node, and says so.
#[tokio::test]
async fn on_galera_the_plain_key_gets_the_conversion_which_apply_runs_only_with_cluster() {
    use garivini::store::schema::{CheckOptions, Kind};
    let db = TestDb::with_schema(&kept(&original_in("latin1_swedish_ci"))).await;
    for (id, key) in [(1, Some("k")), (2, None), (3, None)] {
        assert_eq!(db.perl_insert_job("f", "x", key).await, id);
    }
    let store = db.store().await;
    assert!(
        !within(LIMIT, "wsrep_on", store.is_galera(1)).await.unwrap(),
        "the test server is no Galera node"
    );
    let on_galera = CheckOptions {
        cluster: false,
        galera: Some(true),
    };
    let report = within(LIMIT, "a check", store.check_schema_with(1, on_galera))
        .await
        .unwrap();
    assert!(report.expect.galera);
    let conversion: Vec<_> = report.findings.iter().filter(|f| f.cluster_only).collect();
    assert_eq!(conversion.len(), 1, "{:?}", report.findings);
    let finding = conversion[0];
    assert_eq!(finding.kind, Kind::Needs);
    assert!(
        finding.message.starts_with(
            "UNIQUE funcname (funcname, uniqkey) on a Galera cluster (wsrep_on=ON): Galera \
             certifies every write by its unique keys"
        ),
        "{}",
        finding.message
    );
    assert!(finding.message.contains("(funcname, NULL)"));
    let statement = finding.mend.clone().unwrap();
    assert_eq!(
        statement,
        "ALTER TABLE job ADD COLUMN keyed_funcname varchar(200) CHARACTER SET latin1 COLLATE \
         latin1_swedish_ci AS (IF(uniqkey IS NULL, NULL, funcname)) STORED, ADD UNIQUE \
         dedup_key (keyed_funcname, uniqkey), DROP INDEX funcname"
    );

    // Without --cluster: the status index and the claimer table only;
    // the plain key stays.
    let applied = within(LIMIT, "apply", store.apply_schema(&report, false)).await;
    assert!(applied.failed.is_none(), "{:?}", applied.failed);
    assert_eq!(applied.statements.len(), 2, "{:?}", applied.statements);
    assert_eq!(
        applied.statements[0],
        "ALTER TABLE job ADD INDEX funcname_run_after (funcname, run_after, failcount)"
    );
    assert!(
        applied.statements[1].starts_with("CREATE TABLE IF NOT EXISTS garivini_claimer"),
        "{:?}",
        applied.statements
    );
    assert_eq!(
        query::<u64>(&db, "SELECT COUNT(*) FROM garivini_claimer").await,
        vec![0],
        "QueueRunners of the cluster can elect their claimer"
    );
    let report = within(LIMIT, "a check", store.check_schema_with(1, on_galera))
        .await
        .unwrap();
    assert!(report.needs_mending() && report.has_cluster_only());
    assert_eq!(report.mends().collect::<Vec<_>>(), vec![statement.as_str()]);

    // With it: converted, rows kept, and the check has no more to say
    // about the dedup.
    let applied = within(LIMIT, "apply --cluster", store.apply_schema(&report, true)).await;
    assert!(applied.failed.is_none(), "{:?}", applied.failed);
    assert_eq!(applied.statements, vec![statement]);
    let report = within(LIMIT, "a check", store.check_schema_with(1, on_galera))
        .await
        .unwrap();
    assert!(!report.needs_mending(), "{:?}", report.findings);
    assert_eq!(
        query::<(u64, Option<String>)>(&db, "SELECT jobid, keyed_funcname FROM job ORDER BY jobid")
            .await,
        vec![(1, Some("f".to_string())), (2, None), (3, None)]
    );
    // The new key refuses the old duplicates; keyless jobs are all kept.
    assert_eq!(db.perl_insert_job("F", "x", Some("K")).await, 0);
    assert_eq!(db.perl_insert_job("f", "x", None).await, 5);
    let client = garivini::Client::new(store.clone());
    let again = within(
        LIMIT,
        "Client::insert_job",
        client.insert_job(garivini::NewJob::new("f", "x").unique("k")),
    )
    .await
    .unwrap();
    assert_eq!(again.jobid, 1, "our Client is answered the existing row");
}

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
    let db = TestDb::with_schema(ORIGINAL_SCHEMA).await;
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
        err.starts_with("error: database 1 needs 1 change;"),
        "{err}"
    );

    let (code, out, err) = check(&db.url, &["--apply"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  applied: CREATE TABLE IF NOT EXISTS job ( …\n"),
        "{out}"
    );
    assert!(out.ends_with("  checked again:\n    ok\n"), "{out}");
    original_statements_work(&db).await;
}

#[tokio::test]
async fn a_latin1_original_table_gets_the_charset_note_and_no_alter_for_it() {
    let db = TestDb::with_schema(&format!("{ORIGINAL_SCHEMA} DEFAULT CHARSET=latin1")).await;
    let (code, out, _) = check(&db.url, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(lines_starting(&out, "needs:").len(), 1, "{out}");
    let notes = lines_starting(&out, "note:");
    assert_eq!(notes.len(), 1, "{out}");
    assert!(
        notes[0].starts_with("note: table charset latin1: "),
        "{out}"
    );
    assert!(notes[0].contains("'?'"), "{out}");
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
    let original = TestDb::with_schema(ORIGINAL_SCHEMA).await;
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
    let db = TestDb::with_schema(&schema).await;
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

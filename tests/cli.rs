//! Bad configuration and bad input to the binaries: a non-zero exit with
//! one clear line, and nothing stored. Needs MariaDB (scripts/services up).

mod common;

use std::time::Duration;

use common::{run_bin, TestDb};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs a binary that must fail; returns its one line of error.
fn fails(name: &str, args: &[&str]) -> String {
    let (status, stdout, stderr) = run_bin(name, args, LIMIT);
    assert!(!status.success(), "{name} {args:?} succeeded: {stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!stderr.contains("panicked"), "{name} panicked: {stderr}");
    assert!(
        lines.len() <= 3,
        "{name} {args:?}: expected a short error, got:\n{stderr}"
    );
    stderr
}

#[tokio::test]
async fn unknown_mode_is_refused() {
    let err = fails(
        "gv_inject",
        &[
            "--mode",
            "sideways",
            "--funcname",
            "f",
            "--dsn",
            "mysql://root@127.0.0.1/x",
        ],
    );
    assert!(
        err.contains("invalid value 'sideways' for '--mode"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_dsn_is_refused_without_showing_the_password() {
    let err = fails(
        "gv_inject",
        &["--funcname", "f", "--dsn", "postgres://u:hunter2@h/db"],
    );
    assert!(
        err.starts_with("error: invalid database URL postgres://u:***@h/db"),
        "{err}"
    );
    assert!(!err.contains("hunter2"));
    let err = fails(
        "garivini",
        &[
            "--dsn",
            "mysql://root@127.0.0.1:3306",
            "--gearmand",
            "127.0.0.1:1",
            "queuerunner",
        ],
    );
    assert!(err.contains("no database name"), "{err}");
}

#[tokio::test]
async fn missing_settings_are_named() {
    let err = fails("garivini", &["queuerunner"]);
    assert!(err.contains("no gearmand given"), "{err}");
    let err = fails("gv_inject", &["--funcname", "f"]);
    assert!(err.contains("no database given"), "{err}");
    let err = fails(
        "garivini",
        &[
            "--dsn",
            "mysql://root@127.0.0.1/x",
            "--gearmand",
            "localhost",
            "queuerunner",
        ],
    );
    assert!(
        err.contains("invalid gearmand address \"localhost\""),
        "{err}"
    );
    let err = fails(
        "garivini",
        &[
            "--dsn",
            "mysql://root@127.0.0.1/x",
            "--gearmand",
            "h:1",
            "queuerunner",
            "--lease",
            "0",
        ],
    );
    assert!(err.contains("invalid setting --lease"), "{err}");
}

#[tokio::test]
async fn unreachable_database_at_start_up_is_one_line() {
    let port = common::free_port();
    let dsn = format!("mysql://u:pw@127.0.0.1:{port}/garivini");
    let err = fails(
        "garivini",
        &["--dsn", &dsn, "--gearmand", "127.0.0.1:1", "queuerunner"],
    );
    assert!(
        err.starts_with("error: cannot start: database unreachable"),
        "{err}"
    );
    assert!(
        err.contains(&format!("mysql://u:***@127.0.0.1:{port}/garivini")),
        "{err}"
    );
    assert!(!err.contains(":pw@"), "{err}");
}

#[tokio::test]
async fn oversized_job_fields_are_refused_and_nothing_is_stored() {
    let db = TestDb::new().await;
    let inject = |extra: &[&str]| {
        let mut args = vec!["--dsn", &db.url, "--count", "1"];
        args.extend(extra);
        fails("gv_inject", &args)
    };
    let long_func = "f".repeat(201);
    let err = inject(&["--funcname", &long_func]);
    assert!(
        err.contains("funcname is 201 bytes, over the limit of 200"),
        "{err}"
    );
    let long_key = "k".repeat(254); // + "-0"
    let err = inject(&["--funcname", "f", "--unique-prefix", &long_key]);
    assert!(
        err.contains("unique key is 256 bytes, over the limit of 255"),
        "{err}"
    );
    let err = inject(&["--funcname", "f", "--arg-size", "16777216"]);
    assert!(
        err.contains("arg is 16777216 bytes, over the limit of 16777215"),
        "{err}"
    );
    assert_eq!(db.count("1").await, 0);
}

//! Bad configuration and bad input to the binaries: a non-zero exit with
//! one clear line, and nothing stored; and the binaries the test kit runs
//! are the ones cargo built for these tests. Needs MariaDB (scripts/services
//! up).

use std::path::Path;
use std::time::Duration;

use testkit::{run_bin, TestDb};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs a binary that must fail; returns its one line of error.
async fn fails(name: &str, args: &[&str]) -> String {
    let (status, stdout, stderr) = run_bin(name, args, LIMIT).await;
    assert!(!status.success(), "{name} {args:?} succeeded: {stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!stderr.contains("panicked"), "{name} panicked: {stderr}");
    assert!(
        lines.len() <= 3,
        "{name} {args:?}: expected a short error, got:\n{stderr}"
    );
    stderr
}

/// `garivini --dsn DSN --gearmand GEARMAND queuerunner EXTRA`, which must
/// fail; its error.
async fn queuerunner_fails(dsn: &str, gearmand: &str, extra: &[&str]) -> String {
    let args = [
        &["--dsn", dsn, "--gearmand", gearmand, "queuerunner"],
        extra,
    ]
    .concat();
    fails("garivini", &args).await
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
    )
    .await;
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
    )
    .await;
    assert!(
        err.starts_with("error: invalid database URL postgres://u:***@h/db"),
        "{err}"
    );
    assert!(!err.contains("hunter2"));
    let err = queuerunner_fails("mysql://root@127.0.0.1:3306", "127.0.0.1:1", &[]).await;
    assert!(err.contains("no database name"), "{err}");
}

#[tokio::test]
async fn missing_settings_are_named() {
    let err = fails("garivini", &["queuerunner"]).await;
    assert!(err.contains("no gearmand given"), "{err}");
    let err = fails("gv_inject", &["--funcname", "f"]).await;
    assert!(err.contains("no database given"), "{err}");
    let err = queuerunner_fails("mysql://root@127.0.0.1/x", "localhost", &[]).await;
    assert!(
        err.contains("invalid gearmand address \"localhost\""),
        "{err}"
    );
    let err = queuerunner_fails("mysql://root@127.0.0.1/x", "h:1", &["--lease", "0"]).await;
    assert!(err.contains("invalid setting --lease"), "{err}");
}

#[tokio::test]
async fn unreachable_database_at_start_up_is_one_line() {
    let port = testkit::free_port();
    let dsn = format!("mysql://u:pw@127.0.0.1:{port}/garivini");
    let err = queuerunner_fails(&dsn, "127.0.0.1:1", &[]).await;
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
    let inject = async |extra: &[&str]| {
        let mut args = vec!["--dsn", &db.url, "--count", "1"];
        args.extend(extra);
        fails("gv_inject", &args).await
    };
    let long_func = "f".repeat(201);
    let err = inject(&["--funcname", &long_func]).await;
    assert!(
        err.contains("funcname is 201 bytes, over the limit of 200"),
        "{err}"
    );
    let long_key = "k".repeat(254); // + "-0"
    let err = inject(&["--funcname", "f", "--unique-prefix", &long_key]).await;
    assert!(
        err.contains("unique key is 256 bytes, over the limit of 255"),
        "{err}"
    );
    let err = inject(&["--funcname", "f", "--arg-size", "16777216"]).await;
    assert!(
        err.contains("arg is 16777216 bytes, over the limit of 16777215"),
        "{err}"
    );
    assert_eq!(db.count("1").await, 0);
}

#[test]
fn the_test_kit_runs_the_binaries_cargo_built_for_these_tests() {
    for (name, built) in [
        ("garivini", env!("CARGO_BIN_EXE_garivini")),
        ("gv_inject", env!("CARGO_BIN_EXE_gv_inject")),
        ("gv_consume", env!("CARGO_BIN_EXE_gv_consume")),
    ] {
        let found = testkit::bin_path(name);
        assert_eq!(
            found.canonicalize().unwrap(),
            Path::new(built).canonicalize().unwrap(),
            "{name}"
        );
    }
}

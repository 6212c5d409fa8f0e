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

/// A command or a client that finds no database fails with one line (a
/// role, which serves, starts all the same: tests/start_degraded.rs).
#[tokio::test]
async fn unreachable_database_at_start_up_is_one_line() {
    let port = testkit::free_port();
    let dsn = format!("mysql://u:pw@127.0.0.1:{port}/garivini");
    for (name, args) in [
        ("garivini", &["functions", "list"][..]),
        ("gv_inject", &["--funcname", "f", "--count", "1"][..]),
    ] {
        let err = fails(name, &[&["--dsn", dsn.as_str()][..], args].concat()).await;
        assert!(
            err.starts_with("error: cannot start: database 1 (")
                && err
                    .trim_end()
                    .ends_with("Connection refused (os error 111)"),
            "{name}: {err}"
        );
        assert!(
            err.contains(&format!("mysql://u:***@127.0.0.1:{port}/garivini")),
            "{name}: {err}"
        );
        assert!(!err.contains(":pw@"), "{name}: {err}");
    }
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

/// Runs a binary that must fail with exit status 1 and exactly one line
/// on stderr; returns the line.
async fn one_line_exit_1(name: &str, args: &[&str]) -> String {
    let (status, stdout, stderr) = run_bin(name, args, LIMIT).await;
    assert_eq!(status.code(), Some(1), "{name} {args:?}: {stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{name} {args:?}: {stderr}");
    lines[0].to_string()
}

#[tokio::test]
async fn bad_usage_is_one_line_and_exit_1_in_every_binary() {
    for (name, args, says) in [
        (
            "garivini",
            &["queuerunner", "--lease", "-1"][..],
            "invalid value '-1' for '--lease <LEASE>'",
        ),
        (
            "garivini",
            &["--nosuch"][..],
            "unexpected argument '--nosuch'",
        ),
        (
            "garivini",
            &[
                "jobs",
                "show",
                "notanid",
                "--dsn",
                "mysql://u@127.0.0.1:1/x",
            ][..],
            "invalid job id \"notanid\"",
        ),
        (
            "gv_inject",
            &["--mode", "nosuch"][..],
            "invalid value 'nosuch' for '--mode <MODE>'",
        ),
        (
            "gv_consume",
            &["--nosuch"][..],
            "unexpected argument '--nosuch'",
        ),
    ] {
        let line = one_line_exit_1(name, args).await;
        assert!(
            line.starts_with("error: ") && line.contains(says),
            "{name} {args:?}: {line}"
        );
        assert!(!line.contains("..="), "Rust range syntax: {line}");
    }
}

/// Runs `name args` with its stdout a pipe whose reader goes away before
/// the first line, as `| head -0` does; its exit status and stderr.
async fn into_a_closed_pipe(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::from(testkit::bin(name));
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("the binary runs");
    drop(child.stdout.take());
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("it ends")
        .expect("its output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

#[tokio::test]
async fn output_to_a_pipe_closed_early_ends_quietly() {
    let args = [
        "--dsn",
        "mysql://u@127.0.0.1:1/x",
        "--gearmand",
        "127.0.0.1:1",
        "config",
        "check",
    ];
    let (code, stderr) = into_a_closed_pipe("garivini", &args).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// `garivini --completions bash | head -1`: the script into a pipe closed
/// early ends quietly (exit 0, no panic, nothing on stderr), in every
/// binary and for every shell; and `--help` names both generators.
#[tokio::test]
async fn completions_into_a_closed_pipe_end_quietly_and_help_lists_them() {
    for name in ["garivini", "gv_inject", "gv_consume"] {
        let (status, out, err) = run_bin(name, &["--help"], LIMIT).await;
        assert!(status.success(), "{name} --help: {err}");
        for flag in ["--completions <SHELL>", "--man <DIR>"] {
            assert!(out.contains(flag), "{name} --help lacks {flag}:\n{out}");
        }
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let (code, stderr) = into_a_closed_pipe(name, &["--completions", shell]).await;
            assert_eq!(code, Some(0), "{name} --completions {shell}: {stderr}");
            assert!(stderr.is_empty(), "{name} --completions {shell}: {stderr}");
        }
    }
}

#[tokio::test]
async fn logs_to_a_file_have_no_colour_and_json_logs_are_one_object_per_line() {
    // A worker whose gearmand is not there logs a warning and keeps trying.
    let args = [
        "--gearmand",
        "127.0.0.1:1",
        "--funcname",
        "nobody",
        "--mode",
        "lowlatency",
    ];
    for format in ["text", "json"] {
        let mut cmd = tokio::process::Command::from(testkit::bin("gv_consume"));
        cmd.args(args)
            .args(["--log-format", format])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("gv_consume runs");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        child.start_kill().unwrap();
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.trim().is_empty(), "{format}: nothing logged");
        assert!(
            !stderr.contains('\x1b'),
            "{format}: colour codes in a file: {stderr}"
        );
        if format == "json" {
            for line in stderr.lines().filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
}

#[tokio::test]
async fn a_database_error_is_one_line_in_the_words_of_the_server() {
    let db = TestDb::new().await;
    let wrong_password = db.url.replacen("root@", "root:wrong@", 1);
    let no_table = TestDb::create(&testkit::server_url(), "gv_test", None)
        .await
        .expect("an empty database");
    for (dsn, says) in [
        (
            wrong_password.as_str(),
            "ERROR 1045 (28000): Access denied for user",
        ),
        (
            "mysql://root@127.0.0.1:1/x",
            ": Connection refused (os error 111)",
        ),
        (no_table.url.as_str(), "doesn't exist (load schema.sql)"),
    ] {
        let line = one_line_exit_1("garivini", &["jobs", "list", "--dsn", dsn]).await;
        assert!(line.contains(says), "{dsn}: {line}");
        assert!(!line.contains("wrong"), "the password shows: {line}");
        for noise in [
            "Input/output error: Input",
            "Server error",
            "`",
            "not set up",
        ] {
            assert!(!line.contains(noise), "{dsn}: {noise:?} in {line}");
        }
    }
}

#[tokio::test]
async fn gv_inject_sends_the_args_it_is_given() {
    use tokio::io::AsyncWriteExt as _;
    let db = TestDb::new().await;
    let mut cmd = tokio::process::Command::from(testkit::bin("gv_inject"));
    cmd.args(["--dsn", &db.url, "--funcname", "given", "--arg-lines"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("gv_inject runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"img-1.png\nimg 2.png\r\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("it ends")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _, err) = run_bin(
        "gv_inject",
        &[
            "--dsn",
            &db.url,
            "--funcname",
            "given",
            "--arg",
            "same",
            "--count",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(status.success(), "{err}");
    let mut args: Vec<String> = db.query("SELECT CAST(arg AS CHAR) FROM job").await;
    args.sort();
    assert_eq!(args, ["img 2.png", "img-1.png", "same", "same"]);
}

#[tokio::test]
async fn every_binary_writes_its_man_pages_and_shell_completions() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().to_str().unwrap();
    for name in ["garivini", "gv_inject", "gv_consume"] {
        let (status, _, err) = run_bin(name, &["--man", man], LIMIT).await;
        assert!(status.success(), "{name} --man: {err}");
        let page = std::fs::read_to_string(dir.path().join(format!("{name}.1"))).unwrap();
        assert!(page.contains(".TH"), "{name}.1 is not a man page");
        for shell in ["bash", "zsh", "fish"] {
            let (status, out, err) = run_bin(name, &["--completions", shell], LIMIT).await;
            assert!(status.success(), "{name} --completions {shell}: {err}");
            assert!(
                out.contains(name) && out.contains("log-format"),
                "{name} {shell}"
            );
        }
    }
    assert!(
        dir.path().join("garivini-jobs-retry.1").exists(),
        "a page per subcommand"
    );
    let line = one_line_exit_1("garivini", &["--completions", "nosh"]).await;
    assert!(line.contains("bash, zsh, fish"), "{line}");
}

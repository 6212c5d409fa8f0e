//! `--config garivini.toml`: roles run from a file, flags and the
//! environment win over it, `garivini config check` shows the result with
//! passwords masked, and a bad file is refused in one line. Needs
//! scripts/services up.

use std::time::Duration;

use garivini::Client;
use testkit::{bin, insert_numbered, run_bin, run_command, Gearmand, Proc, TestDb};

const LIMIT: Duration = Duration::from_secs(30);

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("garivini.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn config_check_shows_each_setting_and_where_it_came_from_without_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        r#"
dsn = ["mysql://gv:hunter2@db1:3306/garivini", "mysql://gv:hunter2@db2/garivini"]
gearmand = ["from-file:4730"]

[roles]
lease = 600

[queuerunner]
queue-watermark-depth = 2000
"#,
    );
    let mut check = bin("garivini");
    check
        .args(["--config", &file, "config", "check", "--offline"])
        .env("GARIVINI_GEARMAND", "from-env:4730");
    let (status, stdout, stderr) = run_command(check, LIMIT).await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    for line in [
        "database 1: mysql://gv:***@db1:3306/garivini (file)",
        "database 2: mysql://gv:***@db2/garivini (file)",
        // The environment wins over the file.
        "gearmand: from-env:4730 (environment)",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let section = |role: &str| -> String {
        let start = stdout.find(&format!("[{role}]")).expect("role section");
        let rest = &stdout[start + 1..];
        rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
    };
    let qr = section("queuerunner");
    assert!(qr.contains("lease = 600 (file)"), "{qr}");
    assert!(qr.contains("queue-watermark-depth = 2000 (file)"), "{qr}");
    let inj = section("injector");
    assert!(inj.contains("lease = 600 (file)"), "{inj}");
    assert!(
        inj.contains("queue-watermark-depth = 4000 (default)"),
        "{inj}"
    );
}

#[tokio::test]
async fn a_role_runs_with_the_servers_and_settings_of_its_file_and_flags_win() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        &format!(
            "dsn = \"{}\"\ngearmand = \"{}\"\n[queuerunner]\nqueue-watermark-depth = 1\nbatch-run-sleep = 0.1\n",
            db.url, gearmand.addr
        ),
    );
    // Nothing on the command line but the file, and a flag over it.
    let _qr = Proc::spawn(
        "garivini",
        &[
            "--config",
            &file,
            "queuerunner",
            "--queue-watermark-depth",
            "3",
        ],
    );
    // A worker that takes nothing: the jobs go, and stay queued.
    let _idle = gearmand.idle_worker("cfg_job").await;
    let client = Client::new(db.store().await);
    insert_numbered(&client, "cfg_job", "", 5).await;
    // The flag's watermark of 3 holds, not the file's 1.
    gearmand
        .wait_for_depth(LIMIT, "3 jobs queued in the file's gearmand", "cfg_job", 3)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gearmand.depth("cfg_job").await, 3);
}

#[tokio::test]
async fn a_bad_config_file_is_refused_in_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (text, says) in [
        ("[queuerunner]\nleese = 3\n", "unknown setting \"leese\""),
        ("[queuerunnr]\nlease = 3\n", "unknown section [queuerunnr]"),
        ("[roles]\nlease = -3\n", "invalid value '-3' for '--lease"),
        ("lease = \n", "garivini.toml"),
        (
            "[roles]\nlease = 3\nlease = = 4\n",
            "garivini.toml line 3: ",
        ),
    ] {
        let file = write(&dir, text);
        let (status, out, err) =
            run_bin("garivini", &["--config", &file, "config", "check"], LIMIT).await;
        assert!(!status.success(), "{text:?} was accepted: {out}");
        assert!(err.contains(says), "{text:?}: {err}");
        assert!(
            err.contains(&file),
            "{text:?}: the error should name the file: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{text:?}: {err}");
    }
}

#[tokio::test]
async fn connection_flags_work_after_the_subcommand_too() {
    let db = TestDb::new().await;
    let (status, out, err) = run_bin("garivini", &["status", "--dsn", &db.url], LIMIT).await;
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("database 1"), "{out}");
}

#[tokio::test]
async fn config_check_tries_each_database_and_gearmand_and_says_which_answered() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let servers = gearmand.servers().join(",");
    let check = |dsn: String| {
        let servers = servers.clone();
        async move {
            let args = ["--dsn", &dsn, "--gearmand", &servers, "config", "check"];
            run_bin("garivini", &args, LIMIT).await
        }
    };
    let (status, out, err) = check(db.url.clone()).await;
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("database 1 (") && out.contains("): answered; job table readable"),
        "{out}"
    );
    assert!(
        out.contains(&format!("gearmand {servers}: answered")),
        "{out}"
    );

    let wrong = db.url.replacen("root@", "root:wrong@", 1);
    let (status, out, err) = check(wrong).await;
    assert_eq!(status.code(), Some(1), "a wrong password was ok: {out}");
    assert!(
        out.contains("NO ANSWER: database 1") && out.contains("Access denied"),
        "{out}"
    );
    assert!(
        !out.contains(":wrong@") && !err.contains(":wrong@"),
        "{out}{err}"
    );
    assert_eq!(err.trim(), "error: config check: no answer from database 1");
}

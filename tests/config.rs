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

/// One file, one process per role (as garivini@.service runs them): two
/// that would serve metrics on one address are refused by `config check`
/// in one line naming the address and the roles, before the second
/// process fails to bind it. Roles of one `workers` process share theirs.
#[tokio::test]
async fn config_check_refuses_a_metrics_address_two_role_processes_would_share() {
    let dir = tempfile::tempdir().unwrap();
    let (port, other) = (testkit::free_port(), testkit::free_port());
    let head = "dsn = \"mysql://gv:pw@db1/garivini\"\ngearmand = \"g:4730\"\n";
    let check = async |text: &str, extra: &[&str]| {
        let file = write(&dir, &format!("{head}{text}"));
        let mut args = vec!["--config", file.as_str(), "config", "check", "--offline"];
        args.extend(extra);
        run_bin("garivini", &args, LIMIT).await
    };
    for (text, says) in [
        (
            format!(
                "[roles]\nmetrics-addr = \"0.0.0.0:{port}\"\n\
                 [queuerunner]\nmetrics-addr = \"127.0.0.1:{other}\"\n"
            ),
            format!("metrics address 0.0.0.0:{port} would be served by injector and controller"),
        ),
        // A wildcard address takes the port on loopback too.
        (
            format!(
                "[queuerunner]\nmetrics-addr = \"127.0.0.1:{port}\"\n\
                 [controller]\nmetrics-addr = \"0.0.0.0:{port}\"\n"
            ),
            format!(
                "metrics address 127.0.0.1:{port} would be served by queuerunner and controller"
            ),
        ),
    ] {
        let (status, out, err) = check(&text, &[]).await;
        assert_eq!(status.code(), Some(1), "{text}: accepted: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{text}: {err}");
        assert!(err.contains(&says), "{text}: {err}");
        assert!(out.is_empty(), "{text}: {out}");
    }
    let shared = format!("[roles]\nmetrics-addr = \"0.0.0.0:{port}\"\n");
    let (status, out, err) = check(&shared, &[]).await;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        err.contains("would be served by queuerunner, injector and controller"),
        "{err}"
    );
    // The same file for one `garivini workers --roles ...` process.
    let (status, out, err) =
        check(&shared, &["--workers", "queuerunner,injector,controller"]).await;
    assert!(status.success(), "{out}{err}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
    let (status, _, err) = check(&shared, &["--workers", "injector,controller"]).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("would be served by queuerunner and workers (injector,controller)"),
        "{err}"
    );
    // Each role its own address.
    let own = format!(
        "[queuerunner]\nmetrics-addr = \"0.0.0.0:{port}\"\n[injector]\nmetrics-addr = \"0.0.0.0:{other}\"\n"
    );
    let (status, out, err) = check(&own, &[]).await;
    assert!(status.success(), "{out}{err}");
    // GARIVINI_METRICS_ADDR (one environment file for every unit) wins
    // over the file, for every role.
    let mut env = bin("garivini");
    let file = write(&dir, &format!("{head}{own}"));
    env.args(["--config", &file, "config", "check", "--offline"])
        .env("GARIVINI_METRICS_ADDR", format!("127.0.0.1:{other}"));
    let (status, out, err) = run_command(env, LIMIT).await;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        err.contains(&format!(
            "metrics address 127.0.0.1:{other} would be served by queuerunner, injector and controller"
        )),
        "{err}"
    );
    let (status, _, err) = check("[roles]\nmetrics-addr = \"nowhere\"\n", &[]).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("invalid --metrics-addr \"nowhere\": expected IP:PORT"),
        "{err}"
    );
}

/// `config check --json`: every role's settings with where each came
/// from, passwords masked, what answered; exit 1 (after the JSON) when a
/// database did not.
#[tokio::test]
async fn config_check_json_gives_each_setting_its_source_and_what_answered() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        &format!(
            "dsn = \"{}\"\n[roles]\nlease = 600\n[functions.resize]\nconcurrency = 2\n",
            db.url
        ),
    );
    let check = async |file: &str, offline: bool| {
        let mut args = vec!["--config", file, "--gearmand", gearmand.addr.as_str()];
        args.extend(["config", "check", "--json"]);
        if offline {
            args.push("--offline");
        }
        let (status, out, err) = run_bin("garivini", &args, LIMIT).await;
        let json: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON ({e}): {out}{err}"));
        (status, json, err)
    };
    let (status, v, err) = check(&file, false).await;
    assert!(status.success(), "{v}{err}");
    assert_eq!(v["config_file"], file.as_str());
    assert_eq!(v["databases"][0]["dbid"], 1);
    assert_eq!(v["databases"][0]["source"], "file");
    assert_eq!(v["gearmand"]["servers"][0], gearmand.addr.as_str());
    assert_eq!(v["gearmand"]["source"], "flag");
    let qr = &v["roles"]["queuerunner"];
    assert_eq!(
        qr["settings"]["lease"],
        serde_json::json!({"value": "600", "source": "file"})
    );
    assert_eq!(qr["settings"]["queue-watermark-depth"]["source"], "default");
    assert_eq!(qr["functions"]["resize"]["concurrency"], 2);
    assert_eq!(v["answers"]["databases"][0]["answered"], true, "{v}");
    assert_eq!(v["answers"]["gearmand"][0]["answered"], true, "{v}");
    assert_eq!(v["ok"], true);

    let (_, v, _) = check(&file, true).await;
    assert_eq!(v["answers"], serde_json::Value::Null, "{v}");
    assert_eq!(v["ok"], true);

    let wrong = db.url.replacen("root@", "root:wrong@", 1);
    let file = write(&dir, &format!("dsn = \"{wrong}\"\n"));
    let (status, v, err) = check(&file, false).await;
    assert_eq!(status.code(), Some(1), "{v}");
    let answer = &v["answers"]["databases"][0];
    assert_eq!(answer["answered"], false, "{v}");
    assert!(
        answer["error"].as_str().unwrap().contains("Access denied"),
        "{v}"
    );
    assert!(
        v["databases"][0]["dsn"].as_str().unwrap().contains(":***@"),
        "{v}"
    );
    assert!(
        !v.to_string().contains("wrong") && !err.contains("wrong"),
        "{v}{err}"
    );
    assert_eq!(v["ok"], false);
    assert_eq!(err.trim(), "error: config check: no answer from database 1");
}

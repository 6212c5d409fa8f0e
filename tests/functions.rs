//! Per-function settings (`[functions.NAME]`, `--function`): a function
//! limited to one never has two jobs running at once, in throughput mode
//! and in low-latency mode, while a function without a limit runs several
//! side by side; a function's own timeout fails its job with "timed out"
//! while the roles' default lets another finish; a function's own max
//! attempts parks its job dead after one failure while another retries;
//! the config file's sections show in `config check`, and a bad one is
//! refused in one line. Real MariaDB (a database per test) and a private
//! gearmand; needs scripts/services up.

use std::sync::Arc;
use std::time::Duration;

use garivini::functions::{Functions, Settings};
use garivini::gearman::WorkResult;
use garivini::{admin, controller, injector, queue_runner, roles, Client, JobRef, Store};
use testkit::{
    insert_numbered, quick_queue_runner, run_bin, Gearmand, InjectClient, Roles, TestDb, Worker,
};

const LIMIT: Duration = Duration::from_secs(60);
/// Long enough for several jobs of an unlimited function to overlap.
const WORK: Duration = Duration::from_millis(300);

fn one_at_a_time(funcname: &str) -> Functions {
    Functions::new([(
        funcname.to_string(),
        Settings {
            concurrency: Some(1),
            ..Settings::default()
        },
    )])
}

/// Every role with `functions`, as `garivini workers` gives them the
/// file's `[functions.NAME]` sections.
async fn all_roles(
    store: Arc<Store>,
    gearmand: &Gearmand,
    functions: Functions,
    controller: controller::Config,
) -> Roles {
    let config = roles::Config {
        queue_runner: Some(queue_runner::Config {
            functions: functions.clone(),
            ..quick_queue_runner()
        }),
        injector: Some(injector::Config {
            functions: functions.clone(),
            ..injector::Config::default()
        }),
        controller: Some(controller::Config {
            functions,
            ..controller
        }),
        ..roles::Config::default()
    };
    Roles::start(config, store, gearmand).await
}

/// After every row is done: `one` ran its `n` jobs one at a time, and
/// `free` (no limit, same work) ran several at once, so it is the limit
/// that held `one` back.
async fn ran_one_at_a_time(db: &TestDb, one: &Worker, free: &Worker, n: usize) {
    db.wait_for_count(LIMIT, "every job done", "1", 0).await;
    assert_eq!(one.count(), n, "each job of the limited function ran once");
    assert_eq!(
        one.most_at_once(),
        1,
        "two jobs of a function limited to 1 ran at once"
    );
    assert!(
        free.most_at_once() > 1,
        "the unlimited function never overlapped: the test shows nothing"
    );
}

#[tokio::test]
async fn a_function_limited_to_one_never_has_two_running_at_once_in_throughput_mode() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let client = Client::new(store.clone());
    let one = Worker::serving("fl_one")
        .taking(WORK)
        .completing_with(client.clone())
        .start(&gearmand)
        .await;
    let free = Worker::serving("fl_free")
        .taking(WORK)
        .completing_with(client.clone())
        .start(&gearmand)
        .await;
    insert_numbered(&client, "fl_one", "o", 6).await;
    insert_numbered(&client, "fl_free", "f", 6).await;
    let functions = one_at_a_time("fl_one");
    let roles = all_roles(store, &gearmand, functions, controller::Config::default()).await;
    ran_one_at_a_time(&db, &one, &free, 6).await;
    roles.stop(LIMIT).await;
}

#[tokio::test]
async fn a_function_limited_to_one_never_has_two_running_at_once_in_low_latency_mode() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    // Low-latency workers: the Controller deletes the rows.
    let one = Worker::serving("fl_llone")
        .taking(WORK)
        .start(&gearmand)
        .await;
    let free = Worker::serving("fl_llfree")
        .taking(WORK)
        .start(&gearmand)
        .await;
    let functions = one_at_a_time("fl_llone");
    let roles = all_roles(store, &gearmand, functions, controller::Config::default()).await;
    let inject = InjectClient::new(&gearmand);
    for i in 0..6 {
        for f in ["fl_llone", "fl_llfree"] {
            let body = format!(r#"{{"funcname":"{f}","arg":"{i}"}}"#);
            inject.inject(body).await.expect("acknowledged");
        }
    }
    ran_one_at_a_time(&db, &one, &free, 6).await;
    roles.stop(LIMIT).await;
}

/// The row of `funcname`'s one job, as `garivini jobs show` sees it.
async fn shown(store: &Store, db: &TestDb, funcname: &str) -> admin::Shown {
    let jobid: u64 = db
        .query(&format!(
            "SELECT jobid FROM job WHERE funcname = '{funcname}'"
        ))
        .await[0];
    admin::show(store, JobRef { dbid: 1, jobid }, 60)
        .await
        .expect("jobs show")
}

#[tokio::test]
async fn a_functions_own_timeout_fails_its_job_while_the_default_lets_another_finish() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let slow = Duration::from_secs(3);
    let _own = Worker::serving("ft_own")
        .taking(slow)
        .start(&gearmand)
        .await;
    let _default = Worker::serving("ft_default")
        .taking(slow)
        .start(&gearmand)
        .await;
    let functions = Functions::new([(
        "ft_own".to_string(),
        Settings {
            timeout: Some(Duration::from_secs(1)),
            ..Settings::default()
        },
    )]);
    let controller = controller::Config {
        job_timeout: Some(Duration::from_secs(3600)),
        ..controller::Config::default()
    };
    let roles = all_roles(store.clone(), &gearmand, functions, controller).await;
    let inject = InjectClient::new(&gearmand);
    inject
        .inject(r#"{"funcname":"ft_own","arg":"a"}"#)
        .await
        .expect("acknowledged");
    inject
        .inject(r#"{"funcname":"ft_default","arg":"b"}"#)
        .await
        .expect("acknowledged");
    db.wait_for_count(LIMIT, "the own-timeout job failed", "failcount = 1", 1)
        .await;
    let failed = shown(&store, &db, "ft_own").await;
    let error = failed
        .history
        .and_then(|h| h.last_error)
        .expect("a last error");
    assert!(error.starts_with("timed out after 1 s"), "{error}");
    db.wait_for_count(
        LIMIT,
        "the default-timeout job completed",
        "funcname = 'ft_default'",
        0,
    )
    .await;
    roles.stop(LIMIT).await;
}

#[tokio::test]
async fn a_functions_own_max_attempts_parks_its_job_dead_while_another_retries() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let fail = || WorkResult::Fail;
    let _once = Worker::serving("fm_once")
        .answering(fail())
        .start(&gearmand)
        .await;
    let _often = Worker::serving("fm_often")
        .answering(fail())
        .start(&gearmand)
        .await;
    let functions = Functions::new([(
        "fm_once".to_string(),
        Settings {
            max_attempts: Some(1),
            ..Settings::default()
        },
    )]);
    let roles = all_roles(
        store.clone(),
        &gearmand,
        functions,
        controller::Config::default(),
    )
    .await;
    let inject = InjectClient::new(&gearmand);
    for f in ["fm_once", "fm_often"] {
        inject
            .inject(format!(r#"{{"funcname":"{f}","arg":"x"}}"#))
            .await
            .expect("acknowledged");
    }
    db.wait_for_count(LIMIT, "both jobs failed once", "failcount = 1", 2)
        .await;
    assert_eq!(
        shown(&store, &db, "fm_once").await.state,
        garivini::store::JobState::Dead
    );
    assert_eq!(
        shown(&store, &db, "fm_often").await.state,
        garivini::store::JobState::Retrying
    );
    roles.stop(LIMIT).await;
}

/// `garivini config check` on a config file of `text` at `path`.
async fn check(path: &str, text: &str) -> (std::process::ExitStatus, String, String) {
    std::fs::write(path, text).unwrap();
    let args = [
        "--config",
        path,
        "--dsn",
        "mysql://u@127.0.0.1:1/x",
        "--gearmand",
        "127.0.0.1:1",
        "config",
        "check",
        "--offline",
    ];
    run_bin("garivini", &args, LIMIT).await
}

#[tokio::test]
async fn config_check_shows_a_functions_settings_and_refuses_a_bad_one_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garivini.toml");
    let path = path.to_str().unwrap();
    let (status, out, err) = check(
        path,
        "[functions.resize]\nconcurrency = 1\ntimeout = 30\nmax-attempts = 4\n",
    )
    .await;
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("[functions.resize] concurrency 1, timeout 30 s, max-attempts 4"),
        "{out}"
    );
    for (text, says) in [
        (
            "[functions.resize]\nspeed = 3\n",
            "unknown setting \"speed\"",
        ),
        ("[functions.resize]\nconcurrency = 0\n", "at least 1"),
        ("[functions]\nresize = 1\n", "[functions.NAME] tables"),
    ] {
        let (status, out, err) = check(path, text).await;
        assert!(!status.success(), "{text:?} was accepted: {out}");
        assert!(err.contains(says), "{text:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{text:?}: {err}");
    }
}

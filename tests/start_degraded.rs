//! Processes started while their only database is down (behind a proxy
//! that closes every connection): `garivini workers --roles
//! queuerunner,injector,controller,web` and `garivini web` stay up,
//! `/healthz` answers 200 and `/readyz` 503, `inject_jobs` fails at once
//! (nothing acknowledged without a committed row), and each process warns
//! once about the database however long it stays away. Once the proxy
//! opens, `/readyz` of each turns 200 within seconds, and jobs of both
//! modes then run to completion. Needs `scripts/services up`. About 10 s.

use std::path::Path;
use std::time::{Duration, Instant};

use garivini::gearman::Outcome;
use garivini::names::INJECT_JOBS;
use garivini::{Client, NewJob};
use testkit::{
    free_port, host_port, http_get, via, wait_until, within, DbProxy, Gearmand, InjectClient, Proc,
    TestDb, Worker,
};

const LIMIT: Duration = Duration::from_secs(30);
/// How long the database stays away after the processes are up: long
/// enough for many rounds and probes, each of which must not warn again.
const AWAY: Duration = Duration::from_secs(4);
/// How soon after the database answers the web role must say it is ready
/// (the probe tries at least once a second).
const READY_WITHIN: Duration = Duration::from_secs(5);
/// The throughput-mode function (its worker completes the row) and the
/// low-latency one (the Controller completes it).
const TP: &str = "degraded_tp";
const LL: &str = "degraded_ll";

/// `GET path` on the web role: (status code, body); None while nothing
/// listens there.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    let answer = tokio::task::spawn_blocking(move || http_get(&addr, &path))
        .await
        .unwrap()?;
    let code = answer.0.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, answer.1))
}

/// The warning lines of a process's log.
fn warnings(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_start_with_their_only_database_down_and_become_ready_when_it_answers() {
    let db = TestDb::new().await;
    let gearmand = Gearmand::start().await;
    let proxy = DbProxy::start(host_port(&db.url), true).await;
    let dsn = via(&db.url, &proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let (roles_log, web_log) = (dir.path().join("workers.log"), dir.path().join("web.log"));
    let (roles_addr, web_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let started = Instant::now();
    let mut roles = Proc::spawn_logged(
        "garivini",
        &[
            "workers",
            "--roles",
            "queuerunner,injector,controller,web",
            "--dsn",
            &dsn,
            "--gearmand",
            &gearmand.addr,
            "--batch-run-sleep",
            "0.2",
            "--web-addr",
            &roles_addr,
        ],
        &roles_log,
    );
    let mut web = Proc::spawn_logged(
        "garivini",
        &["web", "--dsn", &dsn, "--web-addr", &web_addr],
        &web_log,
    );

    // Up, alive, not ready.
    for (proc, addr) in [(&mut roles, &roles_addr), (&mut web, &web_addr)] {
        within(LIMIT, "/healthz to answer", async {
            loop {
                if let Err(e) = proc.check_running() {
                    panic!("{e}");
                }
                if let Some(answer) = get(addr, "/healthz").await {
                    break assert_eq!(answer, (200, "ok\n".to_string()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let (code, body) = get(addr, "/readyz").await.expect("/readyz answers");
        assert_eq!(code, 503, "{body}");
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ready["ready"], false, "{body}");
        assert_eq!(ready["databases"][0]["ok"], false, "{body}");
    }
    let listening = started.elapsed();
    within(LIMIT, "the Injector to serve inject_jobs", async {
        while gearmand.workers(INJECT_JOBS).await == 0 {
            if let Err(e) = roles.check_running() {
                panic!("{e}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // inject_jobs fails, at once, while nothing can be stored.
    let inject = InjectClient::new(&gearmand);
    let asked = Instant::now();
    let outcome = inject
        .try_submit(format!(r#"{{"funcname":"{LL}","arg":"while down"}}"#))
        .await
        .expect("gearmand reachable");
    let refused_in = asked.elapsed();
    assert!(
        matches!(outcome, Outcome::Fail(_)),
        "inject_jobs must fail while the database is down: {outcome:?}"
    );
    assert!(
        refused_in < Duration::from_secs(2),
        "inject_jobs took {refused_in:?} to fail"
    );

    // Away for a while: many claim rounds and probes, still one warning.
    tokio::time::sleep(AWAY).await;
    roles.check_running().unwrap();
    web.check_running().unwrap();
    for addr in [&roles_addr, &web_addr] {
        let (code, _) = get(addr, "/readyz").await.expect("/readyz answers");
        assert_eq!(code, 503);
    }
    for (name, log) in [("workers", &roles_log), ("web", &web_log)] {
        let warned = warnings(log);
        assert_eq!(
            warned.len(),
            1,
            "{name}: one warning for the database, not one per retry: {warned:#?}"
        );
        assert!(
            warned[0].contains("database 1"),
            "{name}: the warning names the database: {warned:#?}"
        );
    }

    // It answers: each ready within seconds, and jobs run to completion.
    proxy.restore();
    let opened = Instant::now();
    for addr in [&roles_addr, &web_addr] {
        within(
            READY_WITHIN,
            "/readyz to turn 200 once the database answers",
            async {
                loop {
                    if let Some((200, _)) = get(addr, "/readyz").await {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await;
    }
    let ready_after = opened.elapsed();
    let client = Client::new(db.store().await);
    let tp_worker = Worker::serving(TP)
        .completing_with(client.clone())
        .start(&gearmand)
        .await;
    let ll_worker = Worker::plain(&gearmand, LL).await;
    within(
        LIMIT,
        "a job stored",
        client.insert_job(NewJob::new(TP, "tp")),
    )
    .await
    .expect("stored");
    let answer = inject
        .inject(format!(r#"{{"funcname":"{LL}","arg":"ll"}}"#))
        .await
        .expect("inject_jobs stores once the database answers");
    let answered: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answered["dbid"], 1, "{answered}");
    db.wait_for_count(LIMIT, "both jobs to complete", "1", 0)
        .await;
    wait_until(LIMIT, "each worker to have run its job", || async {
        tp_worker.count() == 1 && ll_worker.count() == 1
    })
    .await;
    eprintln!(
        "only database down at start: both processes answered /healthz after {listening:.1?}; \
         inject_jobs failed in {refused_in:.1?}; /readyz of both 200 {ready_after:.1?} after it answered"
    );
    for proc in [&mut roles, &mut web] {
        let status = proc.terminate(LIMIT).await;
        assert!(status.success(), "{} exited {status}", proc.name);
        assert!(!proc.log().contains("panicked"), "{}", proc.log());
    }
}

/// A database that answers only after the start, and then refuses us (here:
/// no job table), is checked when it first answers as the start-up would
/// have: one error line saying so, and `/readyz` stays 503 naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_answers_late_without_the_job_table_is_reported_once() {
    let no_table = TestDb::create(&testkit::server_url(), "gv_notable", None)
        .await
        .expect("a database without tables");
    let proxy = DbProxy::start(host_port(&no_table.url), true).await;
    let dsn = via(&no_table.url, &proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("web.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut web = Proc::spawn_logged(
        "garivini",
        &["web", "--dsn", &dsn, "--web-addr", &addr],
        &log,
    );
    within(LIMIT, "/healthz to answer", async {
        loop {
            if let Err(e) = web.check_running() {
                panic!("{e}");
            }
            if get(&addr, "/healthz").await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    proxy.restore();
    let errors = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_until(READY_WITHIN, "the missing table to be reported", || async {
        !errors().is_empty()
    })
    .await;
    // Readiness asked, and time given for more probes or rounds: still one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = get(&addr, "/readyz").await.expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("doesn't exist"), "{body}");
    let errors = errors();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("refuses us") && errors[0].contains("doesn't exist"),
        "{errors:#?}"
    );
    web.check_running().unwrap();
    let status = web.terminate(LIMIT).await;
    assert!(status.success(), "exited {status}");
}

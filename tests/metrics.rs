//! `--metrics-addr`: a role process serves what it did as Prometheus text,
//! scraped here over HTTP after real jobs went through it. Needs
//! scripts/services up.

use std::collections::HashMap;
use std::time::Duration;

use garivini::gearman::Outcome;
use garivini::names::INJECT_JOBS;
use garivini::Client;
use testkit::{
    free_port, http_get, insert_numbered, run_bin, scrape_metrics, wait_until, with_servers,
    Gearmand, InjectClient, Proc, TestDb,
};

/// The gauge of `m_held`'s rows waiting at the watermark.
const HELD_AT_WATERMARK: &str =
    "garivini_function_due_rows{db=\"1\",function=\"m_held\",waiting=\"over_watermark\"}";
const LIMIT: Duration = Duration::from_secs(30);

/// The sum of `name`'s samples over all their labels.
fn sum(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| {
        let mut names: Vec<_> = m.keys().collect();
        names.sort();
        panic!("no sample {name} in /metrics; there are: {names:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_process_serves_what_it_did_as_prometheus_metrics() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let metrics = format!("127.0.0.1:{}", free_port());
    let with = |extra: &[&'static str]| with_servers(&db, &gearmand, extra);
    let roles = [
        "workers",
        "--roles",
        "queuerunner,injector,controller",
        "--batch-run-sleep",
        "0.2",
        "--max-attempts",
        "1",
        "--queue-watermark-depth",
        "2",
        "--metrics-addr",
        &metrics,
    ];
    let _roles = Proc::spawn("garivini", &with_servers(&db, &gearmand, &roles));
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    let _tp = Proc::spawn(
        "gv_consume",
        &with_servers(
            &db,
            &gearmand,
            &[
                "--mode",
                "throughput",
                "--funcname",
                "m_tp",
                "--metrics-addr",
                &worker_metrics,
            ],
        ),
    );
    let _ll = Proc::spawn(
        "gv_consume",
        &with(&["--mode", "lowlatency", "--funcname", "m_ll"]),
    );
    let _fails = Proc::spawn(
        "gv_consume",
        &with(&[
            "--mode",
            "lowlatency",
            "--funcname",
            "m_fail",
            "--exec",
            "exit 1",
        ]),
    );
    for f in ["m_tp", "m_ll", "m_fail", INJECT_JOBS] {
        gearmand.wait_for_worker(f).await;
    }

    // Throughput mode: 20 jobs the QueueRunner claims and dispatches; 5 for
    // a function whose one worker takes nothing, held back by the
    // watermark of 2.
    let _idle = gearmand.idle_worker("m_held").await;
    let client = Client::new(db.store().await);
    insert_numbered(&client, "m_tp", "", 20).await;
    insert_numbered(&client, "m_held", "", 5).await;
    // Low latency: 10 jobs through inject_jobs, one that fails (and, with
    // --max-attempts 1, is dead), and one request refused as invalid.
    let (status, out, err) = run_bin(
        "gv_inject",
        &with(&[
            "--mode",
            "lowlatency",
            "--funcname",
            "m_ll",
            "--count",
            "10",
        ]),
        LIMIT,
    )
    .await;
    assert!(status.success(), "gv_inject: {out}{err}");
    let fg = InjectClient::new(&gearmand);
    let answer = fg.submit(r#"{"funcname":"m_fail","arg":"x"}"#).await;
    assert!(matches!(answer, Outcome::Complete(_)), "{answer:?}");
    let refused = fg.submit(&b"{not json"[..]).await;
    assert!(!matches!(refused, Outcome::Complete(_)), "{refused:?}");

    db.wait_for_count(
        LIMIT,
        "every servable job to finish",
        "funcname <> 'm_held' AND run_after < 2147483647",
        0,
    )
    .await;
    // The counters move after the rows do; give them a moment.
    let mut m = HashMap::new();
    wait_until(LIMIT, "the metrics to show the finished jobs", || {
        m = scrape_metrics(&metrics).unwrap_or_default();
        let done = m
            .get("garivini_jobs_completed_total")
            .copied()
            .unwrap_or(0.0)
            >= 10.0
            && sum(&m, "garivini_jobs_dead_total") >= 1.0
            && m.contains_key("garivini_due_rows{db=\"1\"}")
            // Counted every 5 s: a counting made before the watermark
            // filled says 0 of them wait there.
            && m.get(HELD_AT_WATERMARK) == Some(&3.0);
        async move { done }
    })
    .await;

    assert_eq!(get(&m, "garivini_jobs_injected_total"), 11.0);
    assert_eq!(
        get(&m, "garivini_jobs_inserted_total"),
        11.0,
        "rows stored by this process"
    );
    assert_eq!(
        get(&m, "garivini_inject_refused_total{reason=\"invalid\"}"),
        1.0
    );
    // Under the watermark of 2 the Injector dispatches what fits and leaves
    // the rest due, for the QueueRunner. Beside a Controller it hands its
    // jobs over in the process (injector_local) while that has room.
    let by_injector = ["injector", "injector_local"]
        .iter()
        .filter_map(|r| m.get(&format!("garivini_jobs_dispatched_total{{role=\"{r}\"}}")))
        .sum::<f64>();
    let by_runner = get(&m, "garivini_jobs_dispatched_total{role=\"queuerunner\"}");
    assert!(by_injector >= 1.0, "{by_injector}");
    assert!(
        by_injector + by_runner >= 20.0 + 2.0 + 11.0,
        "{by_injector} + {by_runner}"
    );
    assert!(get(&m, "garivini_jobs_claimed_total") >= by_runner);
    assert_eq!(
        get(&m, HELD_AT_WATERMARK),
        3.0,
        "5 due, room for 2: 3 wait, due, and say why"
    );
    assert!(
        get(
            &m,
            "garivini_function_oldest_due_seconds{db=\"1\",function=\"m_held\"}"
        ) >= 0.0
    );
    assert_eq!(
        get(
            &m,
            "garivini_function_dead_rows{db=\"1\",function=\"m_fail\"}"
        ),
        1.0
    );
    // The Controller deletes the low-latency rows; gv_consume deletes the
    // throughput ones in its own process.
    assert_eq!(get(&m, "garivini_jobs_completed_total"), 10.0);
    assert_eq!(
        get(&m, "garivini_jobs_dead_total{function=\"m_fail\"}"),
        1.0,
        "counted under its function"
    );
    assert_eq!(sum(&m, "garivini_jobs_dead_total"), 1.0);
    assert_eq!(
        get(
            &m,
            "garivini_function_jobs_dispatched_total{function=\"m_tp\"}"
        ),
        20.0
    );
    assert_eq!(get(&m, "garivini_inject_seconds_count"), 11.0);
    assert!(get(&m, "garivini_inject_seconds_bucket{le=\"60\"}") >= 11.0);
    assert_eq!(sum(&m, "garivini_controller_job_seconds_count"), 11.0);
    assert_eq!(
        get(
            &m,
            "garivini_controller_job_seconds_count{function=\"m_ll\"}"
        ),
        10.0
    );
    // Each metric says what it is, and only /metrics answers.
    let (_, text) = http_get(&metrics, "/metrics").unwrap();
    for name in ["garivini_jobs_dead_total", "garivini_claim_round_seconds"] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    let (status, _) = http_get(&metrics, "/").unwrap();
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    // The throughput worker reports the completions it wrote itself.
    let mut w = HashMap::new();
    wait_until(
        LIMIT,
        "the worker's metrics to show its completions",
        || {
            w = scrape_metrics(&worker_metrics).unwrap_or_default();
            let done = w.get("garivini_jobs_completed_total").copied() == Some(20.0);
            async move { done }
        },
    )
    .await;
    assert!(get(&m, "garivini_claim_round_seconds_count") >= 1.0);
    assert_eq!(
        get(&m, "garivini_gearmand_queue_depth{function=\"m_held\"}"),
        2.0
    );
    assert!(get(&m, "garivini_due_rows{db=\"1\"}") >= 0.0);
}

#[tokio::test]
async fn a_metrics_address_that_cannot_be_bound_is_refused_in_one_line() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = with_servers(&db, &gearmand, &["queuerunner", "--metrics-addr", &addr]);
    let (status, _, err) = run_bin("garivini", &args, LIMIT).await;
    assert!(!status.success());
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

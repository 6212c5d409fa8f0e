//! The runs-per-job signal: a QueueRunner that claims a row whose last
//! lease ran out with no completion or failure recorded counts it in
//! `garivini_leases_expired_total{function}` and logs one warning naming
//! the job; a row given back unrun or failed is not counted. A real
//! `garivini queuerunner` process on the real MariaDB and a private
//! gearmand, scraped over HTTP; needs `scripts/services up`.

use std::collections::HashMap;
use std::time::Duration;

use garivini::{Client, NewJob};
use testkit::{
    free_port, scrape_metrics, server_url, wait_until, with_servers, Gearmand, Proc, TestDb, SCHEMA,
};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_dispatched_again_after_its_lease_ran_out_is_counted_and_logged() {
    let server = server_url();
    let db = TestDb::create(&server, "gv_cancelfn", Some(SCHEMA))
        .await
        .unwrap_or_else(|e| {
            panic!("MariaDB at {server} is not usable ({e:#}); run scripts/services up")
        });
    let gearmand = Gearmand::start().await;
    let store = db.store().await;
    let client = Client::new(store.clone());
    let lost = client
        .insert_job(NewJob::new("le_lost", "a"))
        .await
        .unwrap();
    let given = client
        .insert_job(NewJob::new("le_given", "b"))
        .await
        .unwrap();
    let failed = client
        .insert_job(NewJob::new("le_failed", "c"))
        .await
        .unwrap();
    // A first QueueRunner leases all three and goes away: `given`'s submit
    // failed (given back unrun), `failed`'s worker recorded a failure, and
    // `lost`'s worker vanished without a word.
    let claim = store
        .claim(1, 10, 600, &Default::default(), |jobs| {
            vec![true; jobs.len()]
        })
        .await
        .unwrap();
    assert_eq!(claim.jobs.len(), 3);
    store.release(1, &[given.jobid], 0).await.unwrap();
    let job = store.get(failed).await.unwrap().unwrap();
    client.failed_job_with(&job, "WORK_FAIL").await.unwrap();
    // All three due again; `lost` because its lease ran out.
    db.exec("UPDATE job SET run_after = UNIX_TIMESTAMP() - 1")
        .await;

    // Workers that take nothing: the rows are dispatched, never completed.
    let mut idle = Vec::new();
    for f in ["le_lost", "le_given", "le_failed"] {
        idle.push(gearmand.idle_worker(f).await);
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queuerunner.log");
    let mut runner = Proc::spawn_logged(
        "garivini",
        &with_servers(
            &db,
            &gearmand,
            &[
                "queuerunner",
                "--batch-run-sleep",
                "0.2",
                "--metrics-addr",
                &metrics,
            ],
        ),
        &log,
    );
    // Leased again, for the default lease of 1000 s: each claimed once.
    wait_until(LIMIT, "the queuerunner to lease the three rows", || async {
        db.count("run_after > UNIX_TIMESTAMP() + 100").await == 3
    })
    .await;
    let dispatched =
        |f: &str| format!("garivini_function_jobs_dispatched_total{{function=\"{f}\"}}");
    let mut m = HashMap::new();
    wait_until(LIMIT, "the metrics to show the three dispatches", || {
        m = scrape_metrics(&metrics).unwrap_or_default();
        let done = ["le_lost", "le_given", "le_failed"]
            .iter()
            .all(|f| m.get(&dispatched(f)).copied().unwrap_or(0.0) >= 1.0);
        async move { done }
    })
    .await;
    runner.check_running().unwrap();

    let expired: HashMap<&String, &f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("garivini_leases_expired_total{"))
        .collect();
    let lost_key = "garivini_leases_expired_total{function=\"le_lost\"}".to_string();
    assert_eq!(
        expired,
        HashMap::from([(&lost_key, &1.0)]),
        "only the row whose lease ran out is counted"
    );
    let text = runner.log();
    let line = format!(
        "job {lost} (le_lost) dispatched again: its lease ran out without a completion or failure"
    );
    assert!(text.contains(&line), "no {line:?} in:\n{text}");
    assert_eq!(
        text.matches("dispatched again").count(),
        1,
        "one warning, for the lost row only:\n{text}"
    );
    drop(idle);
}

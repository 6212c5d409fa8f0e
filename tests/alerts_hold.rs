//! The shipped alert rules hold on a held backlog: a real QueueRunner
//! process (`garivini queuerunner --metrics-addr`) over a paused and a
//! worker-less function's rows is scraped several times; its due-row
//! gauges never drop to 0 between looks (they flapped while held rows were
//! pushed back), and promtool, fed those very samples as a series, fires
//! GariviniDueJobsNotDispatched and GariviniJobsWaiting. Needs
//! scripts/services up and promtool (`scripts/contrib deps`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use garivini::{admin, Client};
use testkit::{
    free_port, insert_numbered, scrape_metrics, wait_until, with_servers, Gearmand, Proc, TestDb,
};

const LIMIT: Duration = Duration::from_secs(30);
const DUE: &str = "garivini_due_rows{db=\"1\"}";
const NO_WORKER: &str =
    "garivini_function_due_rows{db=\"1\",function=\"al_nobody\",waiting=\"no_worker\"}";
const PAUSED: &str =
    "garivini_function_due_rows{db=\"1\",function=\"al_paused\",waiting=\"paused\"}";

/// promtool: `$PROMTOOL`, else the one `scripts/contrib deps` unpacks, else
/// the PATH's. Missing, the test fails: it says what to run.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return p.into();
    }
    let ours = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/contrib/promtool");
    if ours.exists() {
        return ours;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.exists())
        .expect("no promtool: run scripts/contrib deps")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_fire_on_a_paused_and_a_worker_less_backlog_held_by_a_queuerunner() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    admin::pause(&store, "al_paused").await.expect("paused");
    let client = Client::new(store.clone());
    insert_numbered(&client, "al_paused", "p", 30).await;
    insert_numbered(&client, "al_nobody", "n", 20).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let args = [
        "queuerunner",
        "--batch-run-sleep",
        "0.2",
        "--metrics-addr",
        &metrics,
    ];
    let _qr = Proc::spawn("garivini", &with_servers(&db, &gearmand, &args));

    // Six looks, one a second: the gauges are counted every 5 s, so these
    // span two countings and many claim rounds.
    let mut looks: Vec<HashMap<String, f64>> = Vec::new();
    wait_until(LIMIT, "the first counting of the gauges", || {
        let m = scrape_metrics(&metrics).unwrap_or_default();
        async move { m.contains_key(NO_WORKER) }
    })
    .await;
    for _ in 0..6 {
        looks.push(scrape_metrics(&metrics).expect("/metrics answers"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let values = |name: &str| -> Vec<f64> {
        looks
            .iter()
            .map(|m| *m.get(name).unwrap_or_else(|| panic!("no {name} in a look")))
            .collect()
    };
    let (due, nobody, paused) = (values(DUE), values(NO_WORKER), values(PAUSED));
    assert!(
        due.iter().all(|&v| v == 50.0),
        "due rows at each look: {due:?}"
    );
    assert!(nobody.iter().all(|&v| v == 20.0), "{nobody:?}");
    assert!(paused.iter().all(|&v| v == 30.0), "{paused:?}");

    // The looks, a minute apart, as Prometheus would have stored them.
    let series = |v: &[f64]| -> String {
        let looks: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        std::iter::repeat_n(looks.join(" "), 5)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let tests = format!(
        r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'garivini_due_rows{{db="1",instance="qr",job="garivini"}}'
        values: '{due}'
      - series: 'garivini_function_due_rows{{db="1",function="al_nobody",waiting="no_worker",instance="qr",job="garivini"}}'
        values: '{nobody}'
      - series: 'garivini_function_due_rows{{db="1",function="al_paused",waiting="paused",instance="qr",job="garivini"}}'
        values: '{paused}'
      - series: 'garivini_jobs_dispatched_total{{role="queuerunner",instance="qr",job="garivini"}}'
        values: '0x30'
    promql_expr_test:
      - expr: 'ALERTS{{alertstate="firing"}}'
        eval_time: 20m
        exp_samples:
          - labels: 'ALERTS{{alertname="GariviniDueJobsNotDispatched",alertstate="firing",db="1",severity="critical"}}'
            value: 1
          - labels: 'ALERTS{{alertname="GariviniJobsWaiting",alertstate="firing",db="1",function="al_nobody",waiting="no_worker",severity="warning"}}'
            value: 1
"#,
        rules = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/prometheus/garivini-alerts.yml")
            .display(),
        due = series(&due),
        nobody = series(&nobody),
        paused = series(&paused),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("held.test.yml");
    std::fs::write(&file, tests).expect("written");
    let run = tokio::process::Command::new(promtool())
        .args(["test", "rules"])
        .arg(&file)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, run)
        .await
        .expect("promtool within its limit")
        .expect("promtool ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules: {text}");
}

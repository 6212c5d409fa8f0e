//! Low-latency mode with the real binaries as separate processes, and with
//! a client and a worker this project did not write (the `gearman` tool
//! from gearman-tools). Needs scripts/services up.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{recorded_runs, run_bin, wait_until, Gearmand, Proc, TestDb};

const DRAIN: Duration = Duration::from_secs(90);

#[tokio::test]
async fn killing_the_controller_mid_run_loses_no_job() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("runs.log");
    let record = record.to_str().unwrap();
    let servers = ["--dsn", &db.url, "--gearmand", &gearmand.addr];
    let with = |extra: &[&'static str]| [&servers[..], extra].concat();

    let _front = Proc::spawn(
        "garivini",
        &with(&[
            "workers",
            "--roles",
            "queuerunner,injector",
            "--lease",
            "3",
            "--batch-run-sleep",
            "0.2",
            "--submit-retry-delay",
            "1",
        ]),
    );
    let (status, out, err) = run_bin(
        "gv_inject",
        &with(&[
            "--mode",
            "lowlatency",
            "--funcname",
            "ll_proc",
            "--count",
            "300",
            "--concurrency",
            "8",
        ]),
        Duration::from_secs(60),
    );
    assert!(status.success(), "gv_inject: {err}");
    assert!(out.starts_with("injected 300 jobs"), "{out}");
    // Every acknowledged job is a row: count them from the database.
    let committed: HashSet<(u32, u64)> = db.jobids().await;
    assert_eq!(committed.len(), 300);

    let _worker = Proc::spawn(
        "gv_consume",
        &[
            &with(&[
                "--mode",
                "lowlatency",
                "--funcname",
                "ll_proc",
                "--work-ms",
                "50",
                "--concurrency",
                "8",
            ])[..],
            &["--record", record],
        ]
        .concat(),
    );
    gearmand.wait_for_worker("ll_proc").await;
    let mut controller = Proc::spawn(
        "garivini",
        &with(&["controller", "--lease", "3", "--concurrency", "16"]),
    );
    wait_until(DRAIN, "some jobs to run", || async {
        recorded_runs(std::path::Path::new(record)).len() >= 40
    })
    .await;
    controller.kill();
    let left = db.count("1").await;
    assert!(left > 0, "the kill came too late to test anything");
    let _controller = Proc::spawn(
        "garivini",
        &with(&["controller", "--lease", "3", "--concurrency", "16"]),
    );
    wait_until(DRAIN, "the table to drain after the kill", || async {
        db.count("1").await == 0
    })
    .await;

    let runs = recorded_runs(std::path::Path::new(record));
    let ran: HashSet<(u32, u64)> = runs.iter().copied().collect();
    let missing: Vec<_> = committed.difference(&ran).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged jobs never ran: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "controller killed with {left} jobs left; {} runs for 300 jobs",
        runs.len()
    );
}

fn gearman_tool() -> Command {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin"])
    {
        let p = std::path::Path::new(dir).join("gearman");
        if p.exists() {
            return Command::new(p);
        }
    }
    panic!(
        "the gearman tool is not installed; run scripts/services up (it installs gearman-tools)"
    );
}

#[tokio::test]
async fn a_foreign_client_and_a_foreign_worker_use_garivini() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("worker.out");
    let port = gearmand.port.to_string();
    let _roles = Proc::spawn(
        "garivini",
        &[
            "--dsn",
            &db.url,
            "--gearmand",
            &gearmand.addr,
            "workers",
            "--roles",
            "queuerunner,injector,controller",
        ],
    );
    // A plain shell worker: gearman -w runs the command with the job JSON on stdin.
    let _worker = gearman_tool()
        .args(["-p", &port, "-w", "-f", "cli_echo", "--", "sh", "-c"])
        .arg(format!(
            "cat >> {}; echo >> {}",
            out.display(),
            out.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gearman -w starts");
    let _worker = Proc::adopt("gearman -w", _worker);
    gearmand.wait_for_worker("cli_echo").await;
    let client = gearman_tool()
        .args([
            "-p",
            &port,
            "-f",
            "inject_jobs",
            r#"{"funcname":"cli_echo","arg":"from the gearman tool"}"#,
        ])
        .output()
        .expect("gearman client runs");
    assert!(
        client.status.success(),
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    let answer = String::from_utf8_lossy(&client.stdout);
    assert!(
        answer.contains(r#""jobid":"#) && answer.contains(r#""dbid":1"#),
        "{answer}"
    );

    wait_until(
        Duration::from_secs(30),
        "the shell worker to run the job and the row to go",
        || async {
            std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("from the gearman tool")
                && db.count("1").await == 0
        },
    )
    .await;
    let line = std::fs::read_to_string(&out).unwrap();
    let job: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(job["funcname"], "cli_echo");
    assert_eq!(job["flag"], "controller");

    // Bad input through the same tool: a failure with the reason, nothing stored.
    let refused = gearman_tool()
        .args(["-p", &port, "-f", "inject_jobs", r#"{"arg":"no function"}"#])
        .output()
        .expect("gearman client runs");
    assert!(!refused.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(said.contains("funcname is missing"), "{said}");
    assert_eq!(db.count("1").await, 0);
}

//! Low-latency mode with a client and a worker this project did not write
//! (the `gearman` tool from gearman-tools). Needs scripts/services up.
//! Processes killed mid-run are the fault suite's (tests/faults.rs).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_until, Gearmand, Proc, TestDb};

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

//! Low-latency mode with a client and a worker this project did not write
//! (the `gearman` tool from gearman-tools). Needs scripts/services up.
//! Processes killed mid-run are the fault suite's (tests/faults.rs).

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{run_command, wait_until, with_servers, Gearmand, Proc, TestDb};

const LIMIT: Duration = Duration::from_secs(30);

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
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("worker.out");
    let port = gearmand.port.to_string();
    let roles = ["workers", "--roles", "queuerunner,injector,controller"];
    let _roles = Proc::spawn("garivini", &with_servers(&db, &gearmand, &roles));
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
    let mut client = gearman_tool();
    client.args([
        "-p",
        &port,
        "-f",
        "inject_jobs",
        r#"{"funcname":"cli_echo","arg":"from the gearman tool"}"#,
    ]);
    let (status, answer, err) = run_command(client, LIMIT).await;
    assert!(status.success(), "{err}");
    assert!(
        answer.contains(r#""jobid":"#) && answer.contains(r#""dbid":1"#),
        "{answer}"
    );

    wait_until(
        LIMIT,
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
    let mut refused = gearman_tool();
    refused.args(["-p", &port, "-f", "inject_jobs", r#"{"arg":"no function"}"#]);
    let (status, out, err) = run_command(refused, LIMIT).await;
    assert!(!status.success());
    let said = format!("{out}{err}");
    assert!(said.contains("funcname is missing"), "{said}");
    assert_eq!(db.count("1").await, 0);
}

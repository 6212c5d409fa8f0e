//! Shutdown with a gearmand that accepts connections and never answers:
//! SIGTERM must still end every role promptly (well inside its shutdown
//! timeout), and rows a QueueRunner claimed but could not hand over are
//! given back, not left to wait out their lease. Real MariaDB (a database
//! per test), the real binaries; the "gearmand" is a listener of the
//! test's own. Needs scripts/services up.

use std::time::{Duration, Instant};

use testkit::{Proc, Silent, TestDb};

/// Well under the roles' 30 s reply timeout and shutdown timeout: a role
/// that waits on the silent server before it stops takes longer.
const STOP_WITHIN: Duration = Duration::from_secs(8);

async fn stops_promptly(role: &str, extra: &[&str], db: &TestDb, gearmand: &Silent) {
    let mut args = vec![
        role,
        "--dsn",
        db.url.as_str(),
        "--gearmand",
        gearmand.addr.as_str(),
    ];
    args.extend(extra);
    let mut proc = Proc::spawn("garivini", &args);
    // Long enough for the role to be inside its first wait on gearmand.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(proc.running(), "{role} died before SIGTERM");
    let start = Instant::now();
    let status = proc.terminate(STOP_WITHIN).await;
    assert!(status.success(), "{role}: {status}");
    eprintln!("{role} stopped {:?} after SIGTERM", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_stops_promptly_with_gearmand_hung() {
    let (db, gearmand) = (TestDb::new().await, Silent::start());
    for role in ["queuerunner", "injector", "controller"] {
        stops_promptly(role, &[], &db, &gearmand).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_leased_for_a_hung_gearmand_and_the_queuerunner_stops_promptly() {
    let (db, gearmand) = (TestDb::new().await, Silent::start());
    db.exec("INSERT INTO job (funcname, arg, run_after) VALUES ('f', 'x', 0)")
        .await;
    // Every round asks gearmand which functions have a worker first: a
    // gearmand that never answers gets no row leased to it.
    let args = [
        "queuerunner",
        "--dsn",
        db.url.as_str(),
        "--gearmand",
        gearmand.addr.as_str(),
        "--queue-watermark-depth",
        "0",
        "--lease",
        "600",
    ];
    let mut proc = Proc::spawn("garivini", &args);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = proc.terminate(STOP_WITHIN).await;
    assert!(status.success(), "{status}");
    assert_eq!(
        db.count("run_after <= UNIX_TIMESTAMP() AND attempted_at = 0")
            .await,
        1,
        "the row stays due, never leased for 600 s to a gearmand that hangs"
    );
}

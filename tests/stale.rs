//! Stale copies are not run: a copy of a job whose row was completed,
//! cancelled or failed since the copy was sent (it waited in gearmand past
//! its lease, or sat on another gearmand) is dropped by the Controller, and
//! by `gv_consume --skip-stale` in throughput mode. Real MariaDB (a
//! database per test), a private gearmand, the Controller in this process
//! and gv_consume as a process. Needs scripts/services up.

use std::time::Duration;

use bytes::Bytes;
use garivini::gearman::{BackgroundJob, Submitter};
use garivini::names::RUN_QUEUED_JOB;
use garivini::{Flag, Job};
use testkit::{recorded_runs, wait_until, with_servers, Gearmand, Proc, Roles, TestDb, Worker};

const LIMIT: Duration = Duration::from_secs(20);

/// Three rows of `funcname` with `flag`, and a copy of each as it would
/// have been dispatched: one whose row failed since (failcount 1 now, 0 in
/// the copy), one whose row is gone (completed or cancelled), one current.
/// Returns the copies, in that order.
async fn rows_and_copies(db: &TestDb, funcname: &str, flag: Flag) -> [Job; 3] {
    let flag_sql = flag.as_str();
    db.exec(&format!(
        "INSERT INTO job (funcname, arg, run_after, flag) VALUES \
         ('{funcname}', 'failed since', UNIX_TIMESTAMP() + 600, '{flag_sql}'), \
         ('{funcname}', 'gone', UNIX_TIMESTAMP() + 600, '{flag_sql}'), \
         ('{funcname}', 'current', UNIX_TIMESTAMP() + 600, '{flag_sql}')"
    ))
    .await;
    let ids: Vec<u64> = db.query("SELECT jobid FROM job ORDER BY jobid").await;
    let copy = |jobid: u64, arg: &str| Job {
        dbid: 1,
        jobid,
        funcname: funcname.into(),
        arg: arg.as_bytes().to_vec(),
        uniqkey: None,
        coalesce: None,
        run_after: 0,
        flag,
        failcount: 0,
        priority: Default::default(),
    };
    let copies = [
        copy(ids[0], "failed since"),
        copy(ids[1], "gone"),
        copy(ids[2], "current"),
    ];
    // What happened to the first two since their copies were sent.
    db.exec(&format!(
        "UPDATE job SET failcount = 1, run_after = UNIX_TIMESTAMP() + 60 WHERE jobid = {}",
        ids[0]
    ))
    .await;
    db.exec(&format!("DELETE FROM job WHERE jobid = {}", ids[1]))
        .await;
    copies
}

async fn send(gearmand: &Gearmand, function: &str, copies: &[Job]) {
    let jobs: Vec<BackgroundJob> = copies
        .iter()
        .map(|j| BackgroundJob {
            function: function.to_string(),
            unique: String::new(),
            data: Bytes::from(j.to_json()),
            priority: Default::default(),
        })
        .collect();
    let acked = Submitter::new(gearmand.servers()).submit(&jobs).await;
    assert!(acked.iter().all(|&ok| ok), "{acked:?}");
}

#[tokio::test]
async fn a_controller_drops_stale_copies_and_runs_the_current_one() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let worker = Worker::serving("st").start(&gearmand).await;
    let _roles = Roles::low_latency(db.store().await, &gearmand).await;
    let copies = rows_and_copies(&db, "st", Flag::Controller).await;
    send(&gearmand, RUN_QUEUED_JOB, &copies).await;
    db.wait_for_count(LIMIT, "the current job done", "arg = 'current'", 0)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ran: Vec<u64> = worker.jobs().iter().map(|j| j.jobid).collect();
    assert_eq!(ran, vec![copies[2].jobid], "only the current copy runs");
    // The failed row is left as its failure left it: not reset, not rerun.
    assert_eq!(
        db.count("arg = 'failed since' AND failcount = 1 AND run_after > UNIX_TIMESTAMP() + 30")
            .await,
        1
    );
}

#[tokio::test]
async fn gv_consume_skip_stale_drops_stale_copies_in_throughput_mode() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("runs");
    let record_arg = record.to_str().unwrap().to_string();
    let _consumer = Proc::spawn(
        "gv_consume",
        &with_servers(
            &db,
            &gearmand,
            &[
                "--mode",
                "throughput",
                "--funcname",
                "st2",
                "--skip-stale",
                "--record",
                &record_arg,
            ],
        ),
    );
    gearmand.wait_for_worker("st2").await;
    let copies = rows_and_copies(&db, "st2", Flag::Shim).await;
    send(&gearmand, "st2", &copies).await;
    db.wait_for_count(LIMIT, "the current job done", "arg = 'current'", 0)
        .await;
    wait_until(LIMIT, "gearmand's queue to empty", || async {
        gearmand.depth("st2").await == 0
    })
    .await;
    assert_eq!(recorded_runs(&record), vec![(1, copies[2].jobid)]);
    assert_eq!(db.count("arg = 'failed since' AND failcount = 1").await, 1);
}

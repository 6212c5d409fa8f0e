//! Garivini on a real 3-node MariaDB Galera cluster (issue 13), tried as a
//! user would run it: each test starts a private cluster on loopback
//! (`scripts/galera`, Debian's mariadb-server and galera-4, rsync SST),
//! spreads the roles over the nodes (every role's DSN lists all three
//! nodes, its own first: multi-primary), feeds jobs at a steady pace,
//! SIGKILLs a node mid-run and brings it back (IST), and checks what a
//! user would: every acknowledged job ran, no id was handed to two jobs
//! (each run carries the arg its id was acknowledged with), no row is
//! left in the table (none leased, none dead), the roles are still running
//! and stop cleanly, and all of it within bounded time.
//!
//! The jobs the cluster committed are counted by the cluster itself (a
//! trigger copies each inserted jobid into `committed` in the same
//! transaction). Needs `galera-4` and `rsync` (scripts/galera installs
//! them) and gearmand (`scripts/services up`); about 45 s a test, the two
//! at once. Each run appends one row to `target/faults-report.txt`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use garivini::config::parse_dsn_list;
use garivini::gearman::Outcome;
use garivini::injector::answer_refs;
use garivini::{controller, injector, queue_runner, roles, Client, NewJob, Store};
use testkit::{
    check_runs, quick_queue_runner, wait_until, within, Cluster, ClusterDb, FaultRow, Gearmand,
    InjectClient, Roles, Worker,
};

/// Session settings of every role's connections: reads, UPDATEs and
/// DELETEs wait until the node has applied every write committed before
/// them anywhere in the cluster, so that a completion reaching a node
/// before the row's INSERT is applied there deletes the row all the same.
const SESSION: &str = "wsrep_sync_wait=3";
/// Lease of dispatched rows, seconds: a job lost in the fault (in
/// gearmand, or between a role and a dying node) is run again this soon.
const LEASE: u32 = 8;
/// Jobs per insert or `inject_jobs` request, and the pause between two.
const BATCH: usize = 5;
const PACE: Duration = Duration::from_millis(100);
/// Jobs acknowledged before the kill, after the eviction, and after the
/// node is back, before the feeding stops.
const PER_PHASE: usize = 100;
/// How long each phase, the eviction, the drain may take.
const PHASE_LIMIT: Duration = Duration::from_secs(40);
const DRAIN: Duration = Duration::from_secs(60);
/// How long a role may take to stop.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// The jobs a client was told were stored: jobid → arg, and the ids told
/// twice (to two jobs).
#[derive(Default)]
struct Ledger {
    acked: HashMap<u64, String>,
    reused: Vec<u64>,
    failed_submits: usize,
}

/// A feeder: submits BATCH jobs every PACE until stopped, through
/// `submit` (Ok: the (jobid, arg) pairs acknowledged; Err: nothing was);
/// its ledger, and how many jobs are acknowledged so far.
struct Feeder {
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Feeder {
    fn start<F, Fut>(mode: &'static str, submit: F) -> Feeder
    where
        F: Fn(Vec<String>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Vec<u64>, String>> + Send,
    {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, a, s) = (ledger.clone(), acked.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seq = 0;
            while !s.load(Ordering::Relaxed) {
                let args: Vec<String> = (seq..seq + BATCH).map(|i| format!("{mode}-{i}")).collect();
                seq += BATCH;
                match submit(args.clone()).await {
                    Ok(ids) => {
                        assert_eq!(ids.len(), args.len(), "one id per job acknowledged");
                        let mut ledger = l.lock().unwrap();
                        for (id, arg) in ids.into_iter().zip(args) {
                            if ledger.acked.insert(id, arg).is_some() {
                                ledger.reused.push(id);
                            }
                        }
                        a.store(ledger.acked.len(), Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("{mode}: a submit failed (not acknowledged): {e}");
                        l.lock().unwrap().failed_submits += 1;
                    }
                }
                tokio::time::sleep(PACE).await;
            }
        });
        Feeder {
            ledger,
            acked,
            stop,
            task,
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` jobs beyond those acknowledged now are
    /// acknowledged.
    async fn wait_for_more(&self, more: usize, what: &str) {
        let target = self.acked() + more;
        wait_until(PHASE_LIMIT, what, || async { self.acked() >= target }).await;
    }

    /// Stops it; its ledger.
    async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        within(PHASE_LIMIT, "the feeder to stop", self.task)
            .await
            .expect("the feeder ran");
        Arc::try_unwrap(self.ledger)
            .ok()
            .expect("the feeder's ledger")
            .into_inner()
            .unwrap()
    }
}

/// A store on the database `dsn` (nodes in failover order).
async fn store(dsn: &str) -> Arc<Store> {
    let dbs = parse_dsn_list(dsn).expect("a valid DSN");
    Arc::new(
        within(PHASE_LIMIT, "the store to connect", Store::connect(dbs))
            .await
            .expect("the store connects"),
    )
}

/// One QueueRunner with LEASE, on `dsn`.
async fn queue_runner_on(dsn: &str, gearmand: &Gearmand) -> Roles {
    let config = roles::Config {
        queue_runner: Some(queue_runner::Config {
            lease: LEASE,
            ..quick_queue_runner()
        }),
        ..roles::Config::default()
    };
    Roles::start(config, store(dsn).await, gearmand).await
}

/// Feeds jobs through `feeder` while node `victim` is SIGKILLed, evicted,
/// brought back: PER_PHASE jobs acknowledged before the kill, as many once
/// the others have evicted it (the roles on it failed over), as many once
/// it is back. Returns the ledger and when the kill was.
async fn kill_and_rejoin(cluster: &Cluster, victim: usize, feeder: Feeder) -> (Ledger, Instant) {
    let others: Vec<usize> = (1..=3).filter(|&n| n != victim).collect();
    feeder
        .wait_for_more(PER_PHASE, "jobs acknowledged before the kill")
        .await;
    let killed = Instant::now();
    cluster.kill(victim).await;
    cluster.wait_for_size(&others, 2, PHASE_LIMIT).await;
    eprintln!(
        "node {victim} evicted {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    feeder
        .wait_for_more(PER_PHASE, "jobs acknowledged with a node down")
        .await;
    let back = Instant::now();
    cluster.restart(victim).await;
    cluster.wait_for_size(&[1, 2, 3], 3, PHASE_LIMIT).await;
    eprintln!(
        "node {victim} back in {:.1} s",
        back.elapsed().as_secs_f64()
    );
    feeder
        .wait_for_more(PER_PHASE, "jobs acknowledged after the rejoin")
        .await;
    (feeder.finish().await, killed)
}

/// What a user checks once it is over: the table drains (no row leased or
/// dead), every acknowledged job ran, each run carried the arg its id was
/// acknowledged with, no id was acknowledged twice; one row for the fault
/// table.
async fn check_outcome(
    mode: &str,
    fault: &str,
    db: &ClusterDb,
    ledger: &Ledger,
    worker: &Worker,
    killed: Instant,
) {
    wait_until(DRAIN, "the table to drain", || async {
        db.count("1=1").await == 0
    })
    .await;
    let drained = killed.elapsed();
    wait_for_every_run(db, worker).await;
    let runs = runs_of(worker);
    assert!(
        ledger.reused.is_empty(),
        "{mode}: ids acknowledged for two jobs: {:?}",
        &ledger.reused[..ledger.reused.len().min(5)]
    );
    let mixed: Vec<&(u64, String)> = runs
        .iter()
        .filter(|(id, arg)| ledger.acked.get(id).is_some_and(|a| a != arg))
        .collect();
    assert!(
        mixed.is_empty(),
        "{mode}: {} runs carried another job's arg than the one their id was acknowledged with: {:?}",
        mixed.len(),
        &mixed[..mixed.len().min(5)]
    );
    let acked: HashSet<(u32, u64)> = ledger.acked.keys().map(|&id| (1, id)).collect();
    let committed = db.committed(1).await;
    let ran: Vec<(u32, u64)> = runs.iter().map(|(id, _)| (1, *id)).collect();
    let (runs, duplicates) = check_runs(mode, Some(&acked), &committed, &ran);
    eprintln!(
        "{mode}: {} acknowledged, {} committed, {runs} runs ({duplicates} duplicates), {} failed submits, drained {:.1} s after the kill",
        acked.len(),
        committed.len(),
        ledger.failed_submits,
        drained.as_secs_f64()
    );
    FaultRow {
        mode,
        fault,
        in_flight: 0,
        acked: acked.len(),
        committed: committed.len(),
        runs,
        duplicates,
        drained,
    }
    .write();
}

/// The (jobid, arg) of every job `worker` ran.
fn runs_of(worker: &Worker) -> Vec<(u64, String)> {
    worker
        .jobs()
        .into_iter()
        .map(|j| (j.jobid, String::from_utf8_lossy(&j.arg).into_owned()))
        .collect()
}

/// Waits until `worker` ran every job the cluster committed.
async fn wait_for_every_run(db: &ClusterDb, worker: &Worker) {
    let committed = db.committed(1).await;
    wait_until(DRAIN, "every committed job to run", || async {
        let ran: HashSet<u64> = worker.jobs().iter().map(|j| j.jobid).collect();
        committed.iter().all(|(_, id)| ran.contains(id))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_mode_on_a_cluster_runs_every_job_when_a_node_dies_and_rejoins() {
    const FUNC: &str = "cluster_tp_job";
    let cluster = Cluster::start().await;
    let gearmand = Gearmand::start().await;
    let db = cluster.database().await;
    db.count_commits().await;

    // The client and one QueueRunner on node 1 (the one killed), another
    // QueueRunner on node 2, the worker's completions on node 3.
    let worker = Worker::serving(FUNC)
        .completing_with(Client::new(store(&db.dsn(&[3, 1, 2], SESSION)).await))
        .start(&gearmand)
        .await;
    let qr1 = queue_runner_on(&db.dsn(&[1, 2, 3], SESSION), &gearmand).await;
    let qr2 = queue_runner_on(&db.dsn(&[2, 3, 1], SESSION), &gearmand).await;
    let client = Client::new(store(&db.dsn(&[1, 2, 3], SESSION)).await);
    let feeder = Feeder::start("tp", move |args| {
        let client = client.clone();
        async move {
            let jobs: Vec<NewJob> = args.iter().map(|a| NewJob::new(FUNC, a.clone())).collect();
            let refs = tokio::time::timeout(PHASE_LIMIT, client.insert_jobs(&jobs))
                .await
                .map_err(|_| "no answer within the phase limit".to_string())?
                .map_err(|e| e.to_string())?;
            assert!(refs.iter().all(|r| r.dbid == 1), "one database");
            Ok(refs.into_iter().map(|r| r.jobid).collect())
        }
    });

    let (ledger, killed) = kill_and_rejoin(&cluster, 1, feeder).await;
    check_outcome(
        "throughput",
        "galera: node of client+QR SIGKILLed, rejoins",
        &db,
        &ledger,
        &worker,
        killed,
    )
    .await;
    qr1.stop(STOP_LIMIT).await;
    qr2.stop(STOP_LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_latency_mode_on_a_cluster_runs_every_job_when_a_node_dies_and_rejoins() {
    const FUNC: &str = "cluster_ll_job";
    let cluster = Cluster::start().await;
    let gearmand = Gearmand::start().await;
    let db = cluster.database().await;
    db.count_commits().await;

    // The Injector on node 2 (the one killed), the Controller on node 3,
    // the QueueRunner that re-dispatches lost jobs on node 1.
    let worker = Worker::plain(&gearmand, FUNC).await;
    let controller = Roles::start(
        roles::Config {
            controller: Some(controller::Config {
                lease: LEASE,
                ..controller::Config::default()
            }),
            ..roles::Config::default()
        },
        store(&db.dsn(&[3, 1, 2], SESSION)).await,
        &gearmand,
    )
    .await;
    let qr = queue_runner_on(&db.dsn(&[1, 2, 3], SESSION), &gearmand).await;
    let injector = Roles::injector(
        injector::Config {
            lease: LEASE,
            ..injector::Config::default()
        },
        store(&db.dsn(&[2, 3, 1], SESSION)).await,
        &gearmand,
    )
    .await;
    let inject = Arc::new(InjectClient::new(&gearmand));
    let feeder = Feeder::start("ll", move |args| {
        let inject = inject.clone();
        async move {
            let body: Vec<serde_json::Value> = args
                .iter()
                .map(|a| serde_json::json!({"funcname": FUNC, "arg": a}))
                .collect();
            let body = serde_json::to_vec(&body).unwrap();
            match inject.try_submit(body).await.map_err(|e| e.to_string())? {
                Outcome::Complete(answer) => Ok(answer_refs(&answer)
                    .expect("inject_jobs answers refs")
                    .into_iter()
                    .map(|r| r.jobid)
                    .collect()),
                other => Err(format!("{other:?}")),
            }
        }
    });

    let (ledger, killed) = kill_and_rejoin(&cluster, 2, feeder).await;
    check_outcome(
        "lowlatency",
        "galera: node of Injector SIGKILLed, rejoins",
        &db,
        &ledger,
        &worker,
        killed,
    )
    .await;
    injector.stop(STOP_LIMIT).await;
    qr.stop(STOP_LIMIT).await;
    controller.stop(STOP_LIMIT).await;
}

/// Jobs of each mode's burst, and the lease of its rows: far longer than
/// the burst may take to drain, so that a row whose completion found
/// nothing (a node that had not applied its INSERT yet) shows as a row
/// left behind, not as a late second run.
const BURST: usize = 2000;
const BURST_LEASE: u32 = 300;
const BURST_DRAIN: Duration = Duration::from_secs(60);

/// Waits until the table is empty, then checks that every acknowledged
/// job ran exactly once; the jobs committed so far, `earlier` (those of an
/// earlier burst) among them.
async fn check_burst(
    mode: &str,
    db: &ClusterDb,
    acked: &HashSet<(u32, u64)>,
    worker: &Worker,
    earlier: &HashSet<(u32, u64)>,
) -> HashSet<(u32, u64)> {
    let start = Instant::now();
    while db.count("1=1").await > 0 {
        if start.elapsed() > BURST_DRAIN {
            let left: Vec<(u64, i64, u8)> = db
                .query(
                    "SELECT jobid, CAST(run_after AS SIGNED) - UNIX_TIMESTAMP(), failcount \
                     FROM job LIMIT 5",
                )
                .await;
            panic!(
                "{mode}: {} rows left behind {BURST_DRAIN:?} after the burst (the worker ran {} \
                 jobs); the first (jobid, seconds until due, failcount): {left:?}",
                db.count("1=1").await,
                worker.count()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ran: Vec<(u32, u64)> = worker.jobs().iter().map(|j| (j.dbid, j.jobid)).collect();
    let all = db.committed(1).await;
    let committed: HashSet<(u32, u64)> = all.difference(earlier).copied().collect();
    let (runs, duplicates) = check_runs(mode, Some(acked), &committed, &ran);
    assert_eq!(
        acked.len(),
        BURST,
        "{mode}: every job of the burst acknowledged"
    );
    assert_eq!(
        (runs, duplicates),
        (BURST, 0),
        "{mode}: each job of the burst runs once"
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_completed_on_other_nodes_than_it_was_stored_on_leaves_no_row_and_runs_once() {
    let cluster = Cluster::start().await;
    let gearmand = Gearmand::start().await;
    let db = cluster.database().await;
    db.count_commits().await;

    // Throughput: stored and claimed on node 1, completed on node 2.
    const TP: &str = "cluster_burst_tp";
    let worker = Worker::serving(TP)
        .completing_with(Client::new(store(&db.dsn(&[2, 3, 1], SESSION)).await))
        .start(&gearmand)
        .await;
    let config = roles::Config {
        queue_runner: Some(queue_runner::Config {
            lease: BURST_LEASE,
            ..quick_queue_runner()
        }),
        ..roles::Config::default()
    };
    let qr = Roles::start(config, store(&db.dsn(&[1, 2, 3], SESSION)).await, &gearmand).await;
    let client = Client::new(store(&db.dsn(&[1, 2, 3], SESSION)).await);
    let jobs: Vec<NewJob> = (0..BURST)
        .map(|i| NewJob::new(TP, format!("b{i}")))
        .collect();
    let mut acked = HashSet::new();
    for chunk in jobs.chunks(200) {
        let refs = within(PHASE_LIMIT, "a burst insert", client.insert_jobs(chunk))
            .await
            .expect("stored");
        acked.extend(refs.into_iter().map(|r| (r.dbid, r.jobid)));
    }
    let earlier = check_burst("throughput burst", &db, &acked, &worker, &HashSet::new()).await;
    qr.stop(STOP_LIMIT).await;

    // Low latency: stored and dispatched by the Injector on node 1, run
    // and deleted by the Controller on node 2.
    const LL: &str = "cluster_burst_ll";
    let worker = Worker::plain(&gearmand, LL).await;
    let controller = Roles::start(
        roles::Config {
            controller: Some(controller::Config {
                lease: BURST_LEASE,
                ..controller::Config::default()
            }),
            ..roles::Config::default()
        },
        store(&db.dsn(&[2, 3, 1], SESSION)).await,
        &gearmand,
    )
    .await;
    let injector = Roles::injector(
        injector::Config {
            lease: BURST_LEASE,
            ..injector::Config::default()
        },
        store(&db.dsn(&[1, 2, 3], SESSION)).await,
        &gearmand,
    )
    .await;
    let inject = Arc::new(InjectClient::new(&gearmand));
    let mut acked = HashSet::new();
    // 16 requests of 5 jobs in flight at once.
    let mut pending = tokio::task::JoinSet::new();
    for batch in 0..BURST / 5 {
        if pending.len() >= 16 {
            acked.extend(pending.join_next().await.unwrap().expect("a request"));
        }
        let inject = inject.clone();
        pending.spawn(async move {
            let body: Vec<serde_json::Value> = (0..5)
                .map(|i| serde_json::json!({"funcname": LL, "arg": format!("l{batch}-{i}")}))
                .collect();
            match inject.submit(serde_json::to_vec(&body).unwrap()).await {
                Outcome::Complete(answer) => answer_refs(&answer)
                    .expect("inject_jobs answers refs")
                    .into_iter()
                    .map(|r| (r.dbid, r.jobid))
                    .collect::<Vec<_>>(),
                other => panic!("inject_jobs: {other:?}"),
            }
        });
    }
    while let Some(done) = pending.join_next().await {
        acked.extend(done.expect("a request"));
    }
    check_burst("low-latency burst", &db, &acked, &worker, &earlier).await;
    injector.stop(STOP_LIMIT).await;
    controller.stop(STOP_LIMIT).await;
}

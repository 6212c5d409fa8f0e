//! The Gearman worker loop that the Injector, the Controller, gv_consume
//! and the test worker share (`garivini::gearman::serve`): how it takes
//! jobs from a real gearmand. Needs scripts/services up (gearmand).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use garivini::gearman::{serve, worker_connections, BackgroundJob, Submitter, WorkResult};
use garivini::Priority;
use testkit::{wait_until, Gearmand};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

/// What a test worker saw: jobs done, and most running at once.
#[derive(Default)]
struct Seen {
    running: AtomicUsize,
    most: AtomicUsize,
    done: AtomicUsize,
}

/// Serves `function` with `slots` jobs at once, each taking `work`, until
/// the returned token is cancelled.
fn worker(
    gearmand: &Gearmand,
    function: &str,
    slots: usize,
    work: Duration,
) -> (Arc<Seen>, tokio_util::sync::DropGuard) {
    let seen = Arc::new(Seen::default());
    let shutdown = CancellationToken::new();
    let counted = seen.clone();
    tokio::spawn(serve(
        gearmand.servers(),
        function.to_string(),
        slots,
        move |_| {
            let seen = counted.clone();
            async move {
                let now = seen.running.fetch_add(1, Ordering::SeqCst) + 1;
                seen.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(work).await;
                seen.running.fetch_sub(1, Ordering::SeqCst);
                seen.done.fetch_add(1, Ordering::SeqCst);
                WorkResult::Complete(Bytes::new())
            }
        },
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    (seen, shutdown.drop_guard())
}

async fn submit(gearmand: &Gearmand, function: &str, from: usize, n: usize) {
    let jobs: Vec<BackgroundJob> = (from..from + n)
        .map(|i| BackgroundJob {
            function: function.to_string(),
            unique: format!("{function}-{i}"),
            data: Bytes::from(format!("job {i}")),
            priority: Priority::Normal,
        })
        .collect();
    let accepted = Submitter::new(gearmand.servers()).submit(&jobs).await;
    assert!(accepted.iter().all(|&ok| ok), "{accepted:?}");
}

/// Grabs are pipelined: one connection fills all 16 slots from a backlog,
/// where one grab at a time needed a connection per slot or two, and each
/// connection more is woken for every new job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_fills_every_slot_through_one_connection() {
    let gearmand = Gearmand::start().await;
    submit(&gearmand, "serve_backlog", 0, 48).await;
    let (seen, _stop) = worker(&gearmand, "serve_backlog", 16, Duration::from_millis(300));
    wait_until(LIMIT, "the 48 jobs to be done", || async {
        seen.done.load(Ordering::SeqCst) == 48
    })
    .await;
    assert_eq!(worker_connections(16), 1);
    assert_eq!(gearmand.workers("serve_backlog").await, 1);
    assert_eq!(seen.most.load(Ordering::SeqCst), 16);
}

/// Jobs that come one at a time find the worker asleep (PRE_SLEEP) each
/// time; gearmand's NOOP wakes it and each runs, as do a few that come
/// together after it slept.
#[tokio::test]
async fn a_sleeping_worker_wakes_for_each_lone_job_and_for_a_burst() {
    let gearmand = Gearmand::start().await;
    let (seen, _stop) = worker(&gearmand, "serve_lone", 16, Duration::ZERO);
    gearmand.wait_for_worker("serve_lone").await;
    for i in 0..5 {
        // Long enough for the worker to have gone back to sleep.
        tokio::time::sleep(Duration::from_millis(100)).await;
        submit(&gearmand, "serve_lone", i, 1).await;
        wait_until(LIMIT, "the lone job to be done", || async {
            seen.done.load(Ordering::SeqCst) == i + 1
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    submit(&gearmand, "serve_lone", 5, 40).await;
    wait_until(LIMIT, "the burst to be done", || async {
        seen.done.load(Ordering::SeqCst) == 45
    })
    .await;
    assert_eq!(gearmand.depth("serve_lone").await, 0);
}

//! The web role under slow clients, in a shared process: `garivini workers
//! --roles queuerunner,injector,controller,web` run with a limit of 1,024
//! open files (soft and hard, so that raising the soft limit gives
//! nothing), on a fresh database on the real MariaDB and a private
//! gearmand. 1,100 loopback connections each send one header line every
//! few seconds and never finish their request (reconnecting when closed);
//! meanwhile `/healthz` must answer within 2 s each time, and low-latency
//! jobs injected through `inject_jobs` must run on a worker. Needs the
//! services of `scripts/services up` and `prlimit` (util-linux).

use std::time::{Duration, Instant};

use testkit::{free_port, with_servers, Gearmand, InjectClient, Proc, TestDb, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const SLOW_CLIENTS: usize = 1_100;
const HEALTHZ_LIMIT: Duration = Duration::from_secs(2);

/// One slow client until `stop`: connects, sends a request line, then a
/// header line every 3 s, never the blank line; reconnects when closed.
async fn slow_client(addr: String, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut line: &[u8] = b"GET /api/v1/status HTTP/1.1\r\nHost: slow\r\n";
        loop {
            if stream.write_all(line).await.is_err() {
                break;
            }
            line = b"X-Slow: 1\r\n";
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /healthz` on a new connection: its status line and how long it
/// took, or what went wrong within [`HEALTHZ_LIMIT`].
async fn healthz(addr: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    match tokio::time::timeout(HEALTHZ_LIMIT, exchange).await {
        Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 200") => Ok(started.elapsed()),
        Ok(Ok(answer)) => Err(format!("answered {answer:?}")),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(format!("no answer within {HEALTHZ_LIMIT:?}")),
    }
}

#[tokio::test]
async fn under_1100_slow_connections_at_1024_files_healthz_answers_and_jobs_run() {
    // The test's own connections need more than the 1,024 it may have.
    rlimit::increase_nofile_limit(4 * SLOW_CLIENTS as u64).unwrap();
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let roles = [
        "workers",
        "--roles",
        "queuerunner,injector,controller,web",
        "--web-addr",
        &addr,
    ];
    let mut cmd = testkit::command("prlimit");
    cmd.arg("--nofile=1024:1024")
        .arg(testkit::bin_path("garivini"))
        .args(with_servers(&db, &gearmand, &roles));
    let (out, log) = (dir.path().join("out"), dir.path().join("log"));
    let mut process = Proc::start_logged("garivini workers", cmd, &out, &log).unwrap();
    testkit::wait_until(
        Duration::from_secs(30),
        "the web role to answer",
        || async { healthz(&addr).await.is_ok() },
    )
    .await;
    let worker = Worker::plain(&gearmand, "slow_web_jobs").await;
    let client = InjectClient::new(&gearmand);
    client.inject_numbered("slow_web_jobs", "before-", 5).await;
    testkit::wait_until(Duration::from_secs(20), "the jobs before", || async {
        worker.count() >= 5
    })
    .await;

    let stop = CancellationToken::new();
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| tokio::spawn(slow_client(addr.clone(), stop.clone())))
        .collect();
    // Every slow client connected (or in the backlog), sending its lines.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut took = Vec::new();
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut injected = 0;
    while Instant::now() < deadline {
        match healthz(&addr).await {
            Ok(t) => took.push(t),
            Err(err) => failures.push(err),
        }
        if injected < 20 {
            client
                .inject_numbered("slow_web_jobs", &format!("during-{injected}-"), 5)
                .await;
            injected += 5;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    testkit::within(
        Duration::from_secs(20),
        "the jobs injected under the slow connections to run",
        async {
            while worker.count() < 25 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    stop.cancel();
    for task in slow {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let slowest = took.iter().max().copied().unwrap_or_default();
    eprintln!(
        "healthz under {SLOW_CLIENTS} slow connections: {} answers, slowest {slowest:?}, {} failures",
        took.len(),
        failures.len()
    );
    process.check_running().unwrap();
    let text = process.log();
    assert!(
        failures.is_empty(),
        "healthz failed: {failures:?}\n{}",
        process.tail()
    );
    assert!(!text.contains("Too many open files"), "{text}");
    // 1,024 files less 256 for the roles.
    assert!(text.contains("max_connections=768"), "{text}");
    process.terminate(Duration::from_secs(30)).await;
}

//! Shards isolated: a database that hangs (accepts connections, never
//! answers, as a SIGSTOPped server does) holds back only its own rows. Real
//! MariaDB for the healthy shard (a database of the test's own), a silent
//! listener for the hung one, a private gearmand, the QueueRunner and a
//! worker in this process. Needs scripts/services up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use garivini::config::parse_dsn_list;
use garivini::{roles, Client, Store};
use testkit::{insert_numbered, quick_queue_runner, Gearmand, Roles, Silent, TestDb, Worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_shard_holds_back_only_its_own_rows() {
    let (db, gearmand, hung) = (
        TestDb::new().await,
        Gearmand::start().await,
        Silent::start(),
    );
    // Shard 1 answers; shard 2 accepts and never answers.
    let dsn = format!("{},mysql://root@{}/hung", db.url, hung.addr);
    let store = Arc::new(Store::open(parse_dsn_list(&dsn).unwrap()).unwrap());
    let client = Client::new(store.clone());
    // Stored straight into shard 1, so the inserts do not meet shard 2.
    insert_numbered(&Client::new(db.store().await), "iso", "", 300).await;
    let worker = Worker::serving("iso")
        .completing_with(client.clone())
        .start(&gearmand)
        .await;

    let started = Instant::now();
    let roles = roles::Config {
        queue_runner: Some(quick_queue_runner()),
        ..roles::Config::default()
    };
    let runner = Roles::start(roles, store, &gearmand).await;
    // Every claim on shard 2 waits out the 10 s operation timeout; shard
    // 1's rows must not wait for it.
    db.wait_for_count(
        Duration::from_secs(8),
        "shard 1's 300 jobs to be done while shard 2 hangs",
        "TRUE",
        0,
    )
    .await;
    eprintln!("300 jobs done in {:?} with shard 2 hung", started.elapsed());
    assert_eq!(worker.runs().len(), 300, "each job once");
    runner.stop(Duration::from_secs(15)).await;
}

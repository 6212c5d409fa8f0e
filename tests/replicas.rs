//! A database with several nodes (replicas in failover order, `|` in the
//! DSN), session settings from the DSN, ids that the server reports, the
//! elected claimer, and completions that find no row. The nodes here are
//! two proxies in front of one MariaDB database: the same rows behind
//! two addresses, as replicas of one table are, each of which a test can
//! cut. The Galera cluster itself is in tests/cluster.rs. Needs
//! scripts/services up.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use garivini::config::parse_dsn_list;
use garivini::queue_runner::Config;
use garivini::{roles, Client, NewJob, Store};
use mysql_async::prelude::Queryable as _;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use testkit::{
    check_runs, host_port, quick_queue_runner as quick, via, wait_until, within, DbProxy, Gearmand,
    Roles, TestDb, Worker,
};

const LIMIT: Duration = Duration::from_secs(30);

async fn connect(dsn: &str) -> Arc<Store> {
    Arc::new(
        within(LIMIT, "the store to connect", async {
            Store::connect(parse_dsn_list(dsn).unwrap()).await.unwrap()
        })
        .await,
    )
}

/// `statement` as a DSN's `init` parameter.
fn init(statement: &str) -> String {
    format!("init={}", utf8_percent_encode(statement, NON_ALPHANUMERIC))
}

/// Checks that every id in `refs` is the row holding `args[i]`.
async fn ids_match(db: &TestDb, refs: &[garivini::JobRef], args: &[String]) {
    let stored: Vec<(u64, String)> = db.query("SELECT jobid, CAST(arg AS CHAR) FROM job").await;
    let stored: std::collections::HashMap<u64, String> = stored.into_iter().collect();
    for (r, arg) in refs.iter().zip(args) {
        assert_eq!(
            stored.get(&r.jobid),
            Some(arg),
            "id {} was returned for {arg}",
            r.jobid
        );
    }
}

async fn insert_args(store: &Store, from: usize, n: usize) -> (Vec<garivini::JobRef>, Vec<String>) {
    let args: Vec<String> = (from..from + n).map(|i| format!("a{i}")).collect();
    let jobs: Vec<NewJob> = args
        .iter()
        .map(|a| NewJob::new("ids_f", a.as_str()))
        .collect();
    // The first try may meet the connection the test killed.
    let refs = within(LIMIT, "an insert to succeed", async {
        loop {
            match store.insert(&jobs).await {
                Ok(refs) => return refs,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    (refs, args)
}

/// Galera changes auto_increment_increment and _offset under open
/// sessions when the cluster's size changes; ids computed as first id +
/// k × a step read once were then wrong (5,566 of them after a node died,
/// 492 given to two jobs). Here the step and offset of the store's
/// session change between two inserts, through a table its `init` reads
/// when it reconnects.
#[tokio::test]
async fn ids_stay_right_when_the_sessions_auto_increment_step_changes() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE step (inc INT NOT NULL, off INT NOT NULL)")
        .await;
    db.exec("INSERT INTO step VALUES (1, 1)").await;
    // The store's sessions say who they are, so that the test kills those
    // alone (not its own pool's).
    db.exec("CREATE TABLE opened (id BIGINT NOT NULL)").await;
    let dsn = format!(
        "{}?pool_max=1&{}&{}",
        db.url,
        init(
            "SET SESSION auto_increment_increment = (SELECT inc FROM step), \
             auto_increment_offset = (SELECT off FROM step)"
        ),
        init("INSERT INTO opened VALUES (CONNECTION_ID())"),
    );
    let store = connect(&dsn).await;
    let (refs, args) = insert_args(&store, 0, 30).await;
    ids_match(&db, &refs, &args).await;

    db.exec("UPDATE step SET inc = 7, off = 3").await;
    let ids: Vec<u64> = db.query("SELECT id FROM opened").await;
    assert!(!ids.is_empty());
    for id in ids {
        // One that closed meanwhile is no longer there to kill.
        let _ = db
            .conn()
            .await
            .query_drop(format!("KILL CONNECTION {id}"))
            .await;
    }
    // One statement, and several in one transaction (over 1,024 rows).
    for (from, n) in [(30, 40), (70, 1500)] {
        let (refs, args) = insert_args(&store, from, n).await;
        ids_match(&db, &refs, &args).await;
        assert!(
            refs.iter().all(|r| r.jobid % 7 == 3),
            "the new step was in force: {:?}",
            &refs[..3]
        );
    }
    assert_eq!(db.count("1").await, 1570);
}

/// Each setting of the DSN is in force on every connection of the pool,
/// from its first statement.
#[tokio::test]
async fn session_settings_of_the_dsn_apply_to_every_pooled_connection() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE opened (id BIGINT, tz VARCHAR(16), wait_timeout INT)")
        .await;
    let dsn = format!(
        "{}?time_zone=%2B05:00&innodb_lock_wait_timeout=7&{}",
        db.url,
        init(
            "INSERT INTO opened VALUES (CONNECTION_ID(), @@session.time_zone, \
             @@session.innodb_lock_wait_timeout)"
        )
    );
    let store = connect(&dsn).await;
    // Enough at once to open several connections.
    let jobs: Vec<NewJob> = (0..20)
        .map(|i| NewJob::new("s_f", format!("{i}")))
        .collect();
    let inserts = (0..8).map(|_| store.insert(&jobs));
    for outcome in futures::future::join_all(inserts).await {
        outcome.unwrap();
    }
    let opened: Vec<(u64, String, u32)> = db.query("SELECT id, tz, wait_timeout FROM opened").await;
    assert!(!opened.is_empty());
    for (id, tz, wait) in &opened {
        assert_eq!((tz.as_str(), *wait), ("+05:00", 7), "connection {id}");
    }
    let bad = parse_dsn_list(&format!("{}?wsrep_sync_wait=all", db.url))
        .expect_err("refused")
        .to_string();
    assert!(
        bad.contains("wsrep_sync_wait must be a whole number"),
        "{bad}"
    );
}

/// A QueueRunner in this process, on `store`.
async fn running(config: Config, store: Arc<Store>, gearmand: &Gearmand) -> Roles {
    let roles = roles::Config {
        queue_runner: Some(config),
        ..roles::Config::default()
    };
    Roles::start(roles, store, gearmand).await
}

/// Two proxies in front of `db` (the same rows behind two addresses, as
/// replicas of one table are), and a DSN listing them as its nodes.
async fn two_nodes(db: &TestDb) -> (DbProxy, DbProxy, String) {
    let upstream = host_port(&db.url);
    let first = DbProxy::start(upstream.clone(), false).await;
    let second = DbProxy::start(upstream, false).await;
    let dsn = format!(
        "{}|{}",
        via(&db.url, &first.addr),
        via(&db.url, &second.addr)
    );
    (first, second, dsn)
}

/// A database listed as two nodes: when the one in use stops answering,
/// its calls (claims, completions, inserts) move to the next and nothing
/// waits for it to come back; when that one goes too, they move back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_whose_node_stops_answering_moves_to_the_next_node() {
    let db = TestDb::new().await;
    let gearmand = Gearmand::start().await;
    let (first, second, dsn) = two_nodes(&db).await;
    let store = connect(&dsn).await;
    let client = Client::new(store.clone());
    let worker = Worker::serving("fo_f")
        .completing_with(client.clone())
        .start(&gearmand)
        .await;
    let _runner = running(quick(), store.clone(), &gearmand).await;

    let mut acked = HashSet::new();
    let insert = |n: usize| {
        let client = client.clone();
        async move {
            let jobs: Vec<NewJob> = (0..n)
                .map(|i| NewJob::new("fo_f", format!("{i}")))
                .collect();
            client.insert_jobs(&jobs).await
        }
    };
    for r in insert(200).await.unwrap() {
        acked.insert((r.dbid, r.jobid));
    }
    wait_until(LIMIT, "some jobs to run", || async { worker.count() >= 50 }).await;

    first.cut().await;
    // Calls go on at once on the second node: the insert does not wait for
    // the first one.
    let refs = within(
        Duration::from_secs(5),
        "an insert after the cut",
        insert(200),
    )
    .await
    .expect("stored on the next node");
    acked.extend(refs.iter().map(|r| (r.dbid, r.jobid)));
    assert!(
        !store.is_down(1),
        "one node of two is away: the database is not"
    );
    db.wait_for_count(LIMIT, "the table to drain on the second node", "1", 0)
        .await;

    first.restore();
    second.cut().await;
    let refs = within(
        Duration::from_secs(5),
        "an insert after the second cut",
        insert(100),
    )
    .await
    .expect("stored on the first node again");
    acked.extend(refs.iter().map(|r| (r.dbid, r.jobid)));
    db.wait_for_count(LIMIT, "the table to drain on the first node", "1", 0)
        .await;
    let runs: Vec<(u32, u64)> = worker.jobs().iter().map(|j| (j.dbid, j.jobid)).collect();
    check_runs("node failover", Some(&acked), &acked, &runs);
}

/// With all of a database's nodes away it is down, as a single server
/// is; the first node that answers again takes its calls.
#[tokio::test]
async fn a_database_is_down_only_when_no_node_answers() {
    let db = TestDb::new().await;
    let (first, second, dsn) = two_nodes(&db).await;
    let store = connect(&dsn).await;
    let client = Client::new(store.clone());
    first.cut().await;
    second.cut().await;
    let err = client
        .insert_job(NewJob::new("down_f", "x"))
        .await
        .unwrap_err();
    assert!(err.is_connection_fault(), "{err}");
    assert!(store.is_down(1));
    second.restore();
    wait_until(LIMIT, "the database to be back", || async {
        client.insert_job(NewJob::new("down_f", "y")).await.is_ok()
    })
    .await;
    assert_eq!(db.count("1").await, 1);
}

/// QueueRunners of one database that elect a claimer
/// (`single_claimer=true`, the default on a Galera cluster): one claims,
/// the other stands by and takes over once the first stops renewing its
/// turn.
#[tokio::test]
async fn one_queuerunner_claims_and_another_takes_over_when_it_stops() {
    let db = TestDb::new().await;
    let dsn = format!("{}?single_claimer=true", db.url);
    let (a, b) = (connect(&dsn).await, connect(&dsn).await);
    assert!(a.claim_turn(1).await.unwrap(), "the first to ask claims");
    assert!(!b.claim_turn(1).await.unwrap(), "the other stands by");
    assert!(
        a.claim_turn(1).await.unwrap(),
        "its turn holds while it renews"
    );
    drop(a);
    let took = std::time::Instant::now();
    wait_until(
        Duration::from_secs(15),
        "the other to take over",
        || async { b.claim_turn(1).await.unwrap() },
    )
    .await;
    let ttl = Duration::from_secs(garivini::store::CLAIMER_TTL.into());
    assert!(
        took.elapsed() <= ttl + Duration::from_secs(3),
        "{:?}",
        took.elapsed()
    );
    // One that stops hands its turn over at once.
    let d = connect(&dsn).await;
    b.end_claim_turn(1).await;
    assert!(
        d.claim_turn(1).await.unwrap(),
        "a turn given up is free at once"
    );
    // Without the table, every QueueRunner claims (as before the table).
    db.exec("DROP TABLE garivini_claimer").await;
    let c = connect(&dsn).await;
    assert!(c.claim_turn(1).await.unwrap());
}

/// Two QueueRunners on one database with an elected claimer: every job
/// runs once, and only one of them claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queuerunners_with_one_claimer_run_every_job_once() {
    let db = TestDb::new().await;
    let gearmand = Gearmand::start().await;
    let dsn = format!("{}?single_claimer=true", db.url);
    let (a, b) = (connect(&dsn).await, connect(&dsn).await);
    let client = Client::new(a.clone());
    let worker = Worker::serving("one_f")
        .completing_with(client.clone())
        .start(&gearmand)
        .await;
    let _ra = running(quick(), a.clone(), &gearmand).await;
    let _rb = running(quick(), b.clone(), &gearmand).await;
    let jobs: Vec<NewJob> = (0..300)
        .map(|i| NewJob::new("one_f", format!("{i}")))
        .collect();
    let acked: HashSet<(u32, u64)> = client
        .insert_jobs(&jobs)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.dbid, r.jobid))
        .collect();
    db.wait_for_count(LIMIT, "the table to drain", "1", 0).await;
    let runs: Vec<(u32, u64)> = worker.jobs().iter().map(|j| (j.dbid, j.jobid)).collect();
    let (_, dups) = check_runs("one claimer", Some(&acked), &acked, &runs);
    assert_eq!(dups, 0);
    let owners: Vec<String> = db.query("SELECT owner FROM garivini_claimer").await;
    assert_eq!(owners.len(), 1, "one turn row: {owners:?}");
}

/// A completion that deletes nothing (the row gone, or not yet applied on
/// the node the worker writes to) used to count as done without a word;
/// now the worker says so, once per interval.
#[tokio::test]
async fn a_completion_that_finds_no_row_is_logged() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let mut submitter = garivini::gearman::Submitter::new(gearmand.servers());
    let json = r#"{"jobid":987654,"dbid":1,"funcname":"miss_f","arg":"","uniqkey":null,"coalesce":null,"run_after":0,"flag":"shim","failcount":0}"#;
    let acked = submitter
        .submit(&[garivini::gearman::BackgroundJob {
            function: "miss_f".into(),
            unique: String::new(),
            data: json.as_bytes().to_vec().into(),
            priority: Default::default(),
        }])
        .await;
    assert_eq!(acked, [true]);
    let dir = tempfile::tempdir().unwrap();
    let consumer = testkit::Proc::spawn_logged(
        "gv_consume",
        &testkit::with_servers(
            &db,
            &gearmand,
            &["--mode", "throughput", "--funcname", "miss_f"],
        ),
        &dir.path().join("consume.log"),
    );
    wait_until(LIMIT, "the worker to warn", || async {
        consumer.log().contains("completions found no row")
    })
    .await;
    assert_eq!(gearmand.depth("miss_f").await, 0);
}

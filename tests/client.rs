//! The Client and the store against a real MariaDB: inserts, dedup,
//! completion, failure backoff, dead jobs, shards. Needs MariaDB
//! (scripts/services up); each test has a database of its own.

use std::sync::Arc;
use std::time::Duration;

use garivini::config::parse_dsn_list;
use garivini::job::{backoff, NEVER};
use garivini::{Client, Error, Flag, Job, JobRef, NewJob, Retry, Store, When};
use testkit::{within, TestDb};

const LIMIT: Duration = Duration::from_secs(20);

async fn stored(client: &Client, r: JobRef) -> Job {
    client.store().get(r).await.unwrap().expect("row exists")
}

#[tokio::test]
async fn inserted_job_is_a_committed_row_due_now() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let r = within(
        LIMIT,
        "insert",
        client.insert_job(NewJob::new("resize", "img-1")),
    )
    .await
    .unwrap();
    assert_eq!(r.dbid, 1);
    // Read through another connection: the row is committed, not just ours.
    let rows: Vec<(u64, String, Vec<u8>, String, u8)> = db
        .query("SELECT jobid, funcname, arg, flag, failcount FROM job")
        .await;
    assert_eq!(
        rows,
        vec![(
            r.jobid,
            "resize".into(),
            b"img-1".to_vec(),
            "shim".into(),
            0
        )]
    );
    assert_eq!(db.count("run_after <= UNIX_TIMESTAMP()").await, 1);
}

#[tokio::test]
async fn delayed_job_is_stored_due_later() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let before = db.now().await;
    let r = client
        .insert_job(NewJob::new("f", "x").delay(30))
        .await
        .unwrap();
    let job = stored(&client, r).await;
    assert!(
        job.run_after >= before + 30 && job.run_after <= before + 32,
        "{}",
        job.run_after
    );
}

#[tokio::test]
async fn unique_key_inserted_twice_yields_one_row_and_the_same_id() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let a = client
        .insert_job(NewJob::new("f", "first").unique("k1"))
        .await
        .unwrap();
    let b = client
        .insert_job(NewJob::new("f", "second").unique("k1"))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(db.count("1").await, 1);
    assert_eq!(stored(&client, a).await.arg, b"first");
    // The same key under another function is another job.
    client
        .insert_job(NewJob::new("g", "x").unique("k1"))
        .await
        .unwrap();
    // Keys compare byte for byte: case matters, as it does to gearmand.
    client
        .insert_job(NewJob::new("f", "x").unique("K1"))
        .await
        .unwrap();
    assert_eq!(db.count("1").await, 3);
}

#[tokio::test]
async fn insert_jobs_stores_many_and_answers_their_ids_in_order() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let jobs: Vec<NewJob> = (0..2500)
        .map(|i| {
            let job = NewJob::new("batch", format!("arg-{i}"));
            // A few with keys, mixed in: they take another path.
            if i % 500 == 7 {
                job.unique(format!("u{i}"))
            } else {
                job
            }
        })
        .collect();
    let refs = within(LIMIT, "insert_jobs", client.insert_jobs(&jobs))
        .await
        .unwrap();
    assert_eq!(refs.len(), 2500);
    assert_eq!(db.count("1").await, 2500);
    let rows: Vec<(u64, Vec<u8>)> = db.query("SELECT jobid, arg FROM job").await;
    let by_id: std::collections::HashMap<u64, Vec<u8>> = rows.into_iter().collect();
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(by_id[&r.jobid], format!("arg-{i}").into_bytes(), "job {i}");
    }
}

#[tokio::test]
async fn a_bad_job_in_a_batch_stores_nothing() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let jobs = vec![NewJob::new("ok", "x"), NewJob::new("f".repeat(201), "x")];
    let err = client.insert_jobs(&jobs).await.unwrap_err();
    assert!(
        matches!(err, Error::FuncnameTooLong { len: 201, max: 200 }),
        "{err}"
    );
    assert_eq!(db.count("1").await, 0);
}

#[tokio::test]
async fn oversized_fields_are_refused_with_a_clear_error() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let err = client
        .insert_job(NewJob::new("f", "x").unique("k".repeat(256)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unique key is 256 bytes, over the limit of 255"
    );
    let err = client
        .insert_job(NewJob::new("f", vec![b'a'; 16_777_216]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "arg is 16777216 bytes, over the limit of 16777215"
    );
    let err = client.insert_job(NewJob::new("", "x")).await.unwrap_err();
    assert_eq!(err.to_string(), "funcname is empty");
    assert_eq!(db.count("1").await, 0);
}

#[tokio::test]
async fn sql_in_names_and_args_is_stored_verbatim() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let evil = "x'); DROP TABLE job; -- \" \\ `";
    // A function name has no whitespace (gearmand's admin protocol cannot
    // carry it), but may hold every quote.
    let name = "x');DROP/**/TABLE/**/job;--\"\\`";
    let r = client
        .insert_job(NewJob::new(name, evil).unique(evil))
        .await
        .unwrap();
    let job = stored(&client, r).await;
    assert_eq!(
        (job.funcname.as_str(), job.arg.as_slice()),
        (name, evil.as_bytes())
    );
    assert_eq!(job.uniqkey.as_deref(), Some(evil));
}

#[tokio::test]
async fn complete_job_deletes_the_row_and_concurrent_completions_all_land() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let jobs: Vec<NewJob> = (0..500).map(|i| NewJob::new("c", format!("{i}"))).collect();
    let refs = client.insert_jobs(&jobs).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for r in refs {
        let client = client.clone();
        tasks.spawn(async move {
            let job = client.store().get(r).await.unwrap().unwrap();
            client.complete_job(&job).await
        });
    }
    within(LIMIT, "500 completions", async {
        while let Some(res) = tasks.join_next().await {
            res.unwrap().unwrap();
        }
    })
    .await;
    assert_eq!(db.count("1").await, 0);
}

#[tokio::test]
async fn failed_job_backs_off_and_counts_the_failure() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let r = client.insert_job(NewJob::new("f", "x")).await.unwrap();
    let mut job = stored(&client, r).await;
    for n in 0..3u8 {
        let before = db.now().await;
        let retry = client.failed_job(&job).await.unwrap();
        assert_eq!(retry, Retry::In(backoff(n)));
        job = stored(&client, r).await;
        assert_eq!(job.failcount, n + 1);
        let expected = before + backoff(n);
        assert!(
            job.run_after >= expected && job.run_after <= expected + 2,
            "failure {n}: run_after {} expected ~{expected}",
            job.run_after
        );
    }
}

#[tokio::test]
async fn job_is_parked_dead_after_max_attempts() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await).with_max_attempts(3);
    let r = client.insert_job(NewJob::new("f", "x")).await.unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let job = stored(&client, r).await;
        outcomes.push(client.failed_job(&job).await.unwrap());
    }
    assert_eq!(outcomes, vec![Retry::In(60), Retry::In(120), Retry::Dead]);
    let job = stored(&client, r).await;
    assert_eq!((job.run_after, job.failcount), (NEVER, 3));
}

#[tokio::test]
async fn reschedule_job_sets_when_it_runs_next() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let r = client.insert_job(NewJob::new("f", "x")).await.unwrap();
    let job = stored(&client, r).await;
    client
        .reschedule_job(&job, When::At(2_000_000_000))
        .await
        .unwrap();
    assert_eq!(stored(&client, r).await.run_after, 2_000_000_000);
    let now = db.now().await;
    client.reschedule_job(&job, When::In(10)).await.unwrap();
    let after = stored(&client, r).await.run_after;
    assert!(after >= now + 10 && after <= now + 12);
    client.reschedule_job(&job, When::Never).await.unwrap();
    assert_eq!(stored(&client, r).await.run_after, NEVER);
}

#[tokio::test]
async fn controller_flag_is_stored() {
    let db = TestDb::new().await;
    let client = Client::new(db.store().await);
    let r = client
        .insert_job(NewJob::new("f", "x").flag(Flag::Controller))
        .await
        .unwrap();
    assert_eq!(stored(&client, r).await.flag, Flag::Controller);
}

#[tokio::test]
async fn a_unique_key_always_goes_to_the_same_shard() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let dsn = format!("{},{}", a.url, b.url);
    let client = Client::new(Arc::new(
        Store::connect(parse_dsn_list(&dsn).unwrap()).await.unwrap(),
    ));
    for i in 0..40 {
        let key = format!("key-{i}");
        let first = client
            .insert_job(NewJob::new("f", "x").unique(&key))
            .await
            .unwrap();
        let again = client
            .insert_job(NewJob::new("f", "y").unique(&key))
            .await
            .unwrap();
        assert_eq!(first, again, "{key}");
    }
    let (in_a, in_b) = (a.count("1").await, b.count("1").await);
    assert_eq!(in_a + in_b, 40);
    assert!(
        in_a > 0 && in_b > 0,
        "keys spread over both shards: {in_a}/{in_b}"
    );
    // Keyless jobs spread at random.
    for _ in 0..40 {
        client.insert_job(NewJob::new("f", "x")).await.unwrap();
    }
    assert!(a.count("1").await > in_a && b.count("1").await > in_b);
}

#[tokio::test]
async fn keyless_inserts_avoid_a_database_that_is_down() {
    let db = TestDb::new().await;
    let dead = format!("mysql://root@127.0.0.1:{}/nothing", testkit::free_port());
    let dsn = format!("{dead},{}", db.url);
    let store = Store::open(parse_dsn_list(&dsn).unwrap())
        .unwrap()
        .with_op_timeout(Duration::from_secs(2));
    let client = Client::new(Arc::new(store));
    for _ in 0..10 {
        let r = within(LIMIT, "insert", client.insert_job(NewJob::new("f", "x")))
            .await
            .unwrap();
        assert_eq!(r.dbid, 2);
    }
    assert_eq!(db.count("1").await, 10);
}

#[tokio::test]
async fn connect_fails_clearly_when_the_database_is_unreachable() {
    let url = format!(
        "mysql://user:s3cret@127.0.0.1:{}/garivini",
        testkit::free_port()
    );
    let err = within(
        LIMIT,
        "connect",
        Store::connect(parse_dsn_list(&url).unwrap()),
    )
    .await
    .err()
    .expect("connect fails");
    let text = err.to_string();
    assert!(
        text.starts_with("database 1 (mysql://user:***@127.0.0.1:"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

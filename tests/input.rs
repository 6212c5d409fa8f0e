//! Bad and hostile input where it enters, against a real MariaDB and a
//! private gearmand: the Client and `inject_jobs` (an Injector in this
//! process). Long names, bytes that are not UTF-8, arrays over the batch
//! limit, arguments over the packet limit, and SQL in every field: refused
//! with a clear error and nothing stored, or stored byte for byte. Needs
//! scripts/services up.

use std::sync::Arc;
use std::time::Duration;

use garivini::config::parse_dsn_list;
use garivini::injector::answer_refs;
use garivini::job::{MAX_ARG_LEN, MAX_FUNCNAME_LEN};
use garivini::{injector, Client, Error, Job, NewJob, Store};
use testkit::{within, Gearmand, InjectClient, Roles, TestDb};

const LIMIT: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

/// An Injector on `store` that takes arrays of up to `max_batch` jobs
/// (stopped on drop), and a client of it.
async fn injector(
    gearmand: &Gearmand,
    store: Arc<Store>,
    max_batch: usize,
) -> (Roles, InjectClient) {
    let config = injector::Config {
        max_batch,
        ..Default::default()
    };
    let role = Roles::injector(config, store, gearmand).await;
    (role, InjectClient::new(gearmand))
}

/// A store on `db` whose URL caps packets at `max_packet` bytes (the
/// driver's `max_allowed_packet` URL parameter): the server's own limit is
/// a global setting tests must not change.
async fn store_with_packet_limit(db: &TestDb, max_packet: usize) -> Arc<Store> {
    let url = format!("{}?max_allowed_packet={max_packet}", db.url);
    Arc::new(Store::connect(parse_dsn_list(&url).unwrap()).await.unwrap())
}

async fn stored(store: &Store, r: garivini::JobRef) -> Job {
    store.get(r).await.unwrap().expect("row exists")
}

#[tokio::test]
async fn a_funcname_of_200_bytes_is_stored_and_one_of_201_is_refused() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let client = Client::new(store.clone());
    // 200 bytes in 1-, 2- and 4-byte characters: the limit is the column's
    // VARCHAR(200), and none of these is over it in characters either.
    let names = ["f".repeat(200), "é".repeat(100), "🦀".repeat(50)];
    for name in &names {
        assert_eq!(name.len(), MAX_FUNCNAME_LEN);
        let r = client.insert_job(NewJob::new(name, "x")).await.unwrap();
        assert_eq!(&stored(&store, r).await.funcname, name);
    }
    let err = client
        .insert_job(NewJob::new("f".repeat(201), "x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "funcname is 201 bytes, over the limit of 200"
    );

    let (_injector, role) = injector(&gearmand, store.clone(), 1000).await;
    for name in &names {
        let answer = role
            .inject(format!(r#"{{"funcname":"{name}","run_after":60}}"#))
            .await
            .unwrap();
        let r = answer_refs(&answer).unwrap()[0];
        assert_eq!(&stored(&store, r).await.funcname, name);
    }
    let reason = role
        .inject(format!(r#"{{"funcname":"{}é"}}"#, "f".repeat(199)))
        .await
        .unwrap_err();
    assert!(reason.contains("funcname is 201 bytes"), "{reason}");
    assert_eq!(db.count("1").await, 6);
}

#[tokio::test]
async fn unique_keys_that_are_not_utf8_are_refused_and_others_compare_byte_for_byte() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let (_injector, role) = injector(&gearmand, store.clone(), 1000).await;
    // JSON is UTF-8: a key with raw bytes that are not, or an escaped lone
    // surrogate (no UTF-8 at all), is not JSON, and nothing is stored.
    let mut raw = br#"{"funcname":"f","unique":"k"#.to_vec();
    raw.extend([0xff, 0xc3, 0x28]);
    raw.extend(br#""}"#);
    let reason = role.inject(raw).await.unwrap_err();
    assert!(
        reason.contains("not JSON: invalid unicode code point"),
        "{reason}"
    );
    let reason = role
        .inject(r#"{"funcname":"f","unique":"k\udcff"}"#)
        .await
        .unwrap_err();
    assert!(reason.contains("not JSON"), "{reason}");
    assert_eq!(db.count("1").await, 0);

    // Through the Client a key is a Rust String: UTF-8 by its type. Keys
    // that differ in any byte are different jobs (utf8mb4_bin), whether
    // they come through inject_jobs or the Client, and a key that is the
    // same byte for byte is the same job.
    let client = Client::new(store.clone());
    let keys = ["caf\u{e9}", "cafe\u{301}", "Key", "key", "a%", "ab", "a_"];
    let mut ids = std::collections::HashSet::new();
    for key in keys {
        let r = client
            .insert_job(NewJob::new("f", "x").unique(key))
            .await
            .unwrap();
        assert_eq!(stored(&store, r).await.uniqkey.as_deref(), Some(key));
        let body = serde_json::json!({"funcname": "f", "unique": key, "run_after": 60});
        let again = role.inject(body.to_string()).await.unwrap();
        assert_eq!(answer_refs(&again).unwrap(), vec![r], "{key:?} dedups");
        ids.insert(r);
    }
    assert_eq!(ids.len(), keys.len());
    assert_eq!(db.count("1").await, keys.len() as u64);
}

#[tokio::test]
async fn an_array_over_the_batch_limit_is_refused_whole() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let (_injector, role) = injector(&gearmand, db.store().await, 5).await;
    let array = |n: usize| {
        let jobs: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"funcname":"f","arg":"{i}","run_after":60}}"#))
            .collect();
        format!("[{}]", jobs.join(","))
    };
    let reason = role.inject(array(6)).await.unwrap_err();
    assert!(
        reason.contains("6 jobs in one array, over the limit of 5"),
        "{reason}"
    );
    assert_eq!(db.count("1").await, 0, "nothing of it stored");
    let answer = role.inject(array(5)).await.unwrap();
    assert_eq!(answer_refs(&answer).unwrap().len(), 5);
    assert_eq!(db.count("1").await, 5);
}

#[tokio::test]
async fn an_arg_near_16_mib_is_stored_whole_or_refused_before_it_is_sent() {
    let db = TestDb::new().await;
    let store = db.store().await;
    // The server's own limit, as the store read it at connect.
    let server: u64 = db.query("SELECT @@max_allowed_packet").await[0];
    assert_eq!(store.max_packet(1).await.unwrap(), server);
    let client = Client::new(store.clone());
    let pattern = |len: usize| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8).collect() };
    // The largest arg whose INSERT fits one packet (within the store's
    // margin) is stored and read back byte for byte.
    let fits = (server.min(16 * MIB as u64) - 1 - 64 - 88) as usize - "big".len() - "shim".len();
    let arg = pattern(fits.min(MAX_ARG_LEN));
    let r = within(
        LIMIT,
        "a 16 MiB insert",
        client.insert_job(NewJob::new("big", arg.clone())),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "an arg of {} bytes must fit (max_allowed_packet {server}): {e}",
            arg.len()
        )
    });
    assert!(
        stored(&store, r).await.arg == arg,
        "read back byte for byte"
    );
    // The column's largest goes only where the server takes packets over
    // 16 MiB; on one at exactly 16 MiB (MariaDB's default) it used to fail
    // with "Packets out of sync" and a dropped connection.
    let outcome = client
        .insert_job(NewJob::new("big", pattern(MAX_ARG_LEN)))
        .await;
    if server > 16 * MIB as u64 {
        outcome.unwrap();
    } else {
        let err = outcome.unwrap_err();
        assert!(
            matches!(err, Error::JobOverPacketLimit { dbid: 1, max_allowed_packet, .. } if max_allowed_packet == server),
            "{err}"
        );
        assert_eq!(db.count("1").await, 1);
        // The database is not taken for down: the next insert goes.
        client.insert_job(NewJob::new("f", "x")).await.unwrap();
    }
}

#[tokio::test]
async fn a_job_over_the_packet_limit_is_refused_before_it_is_sent() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = store_with_packet_limit(&db, MIB).await;
    assert_eq!(store.max_packet(1).await.unwrap(), MIB as u64);
    let client = Client::new(store.clone());
    let big = NewJob::new("f", vec![b'a'; 2 * MIB]);
    for jobs in [
        vec![big.clone()],
        vec![NewJob::new("f", "small"), big.clone()],
        vec![big.clone().unique("k")],
        vec![NewJob::new("f", "small"), big.clone().unique("k")],
    ] {
        let err = client.insert_jobs(&jobs).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::JobOverPacketLimit {
                    dbid: 1,
                    max_allowed_packet,
                    len,
                } if max_allowed_packet == MIB as u64 && len > 2 * MIB as u64
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("over database 1's max_allowed_packet of 1048576 bytes"),
            "{err}"
        );
        assert!(!err.is_connection_fault());
    }
    assert_eq!(db.count("1").await, 0, "nothing stored");

    // Many rows that fit one by one but not together go in several
    // statements of one transaction.
    let jobs: Vec<NewJob> = (0..10)
        .map(|i| NewJob::new("f", vec![b'0' + i; 300 * 1024]))
        .collect();
    let refs = within(LIMIT, "insert", client.insert_jobs(&jobs))
        .await
        .unwrap();
    for (r, job) in refs.iter().zip(&jobs) {
        assert!(stored(&store, *r).await.arg == job.arg);
    }

    // inject_jobs: a clear failure, nothing stored, and the next request
    // (or one committed with it) is served.
    let (_injector, role) = injector(&gearmand, store.clone(), 1000).await;
    let body = format!(r#"{{"funcname":"f","arg":"{}"}}"#, "a".repeat(2 * MIB));
    let ok = r#"{"funcname":"f","arg":"fine","run_after":60}"#;
    let (refused, served) = tokio::join!(role.inject(body), role.inject(ok));
    let reason = refused.unwrap_err();
    assert!(
        reason.contains("over database 1's max_allowed_packet of 1048576 bytes"),
        "{reason}"
    );
    served.unwrap();
    assert_eq!(db.count("1").await, 11);
}

#[tokio::test]
async fn sql_quotes_and_nul_in_every_field_are_stored_byte_for_byte() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let hostile = [
        "x'); DROP TABLE job; --",
        "' OR '1'='1",
        "\"",
        "\\",
        "\\'",
        "%",
        "_",
        "`; DELETE FROM job; `",
        "a\0b",
        "\0",
        "line\nbreak\r\t",
        "😀 \u{202e}",
    ];
    let client = Client::new(store.clone());
    let (_injector, role) = injector(&gearmand, store.clone(), 1000).await;
    for (i, s) in hostile.iter().enumerate() {
        // A funcname cannot hold NUL (Gearman could not carry it), nor
        // whitespace or a control character (its admin protocol could not).
        let funcname: String = s
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let job = NewJob {
            coalesce: Some(s.to_string()),
            ..NewJob::new(&funcname, *s).unique(*s)
        };
        let r = client.insert_job(job).await.unwrap();
        let got = stored(&store, r).await;
        assert_eq!(got.funcname, funcname, "{i}");
        assert_eq!(got.arg, s.as_bytes(), "{i}");
        assert_eq!(got.uniqkey.as_deref(), Some(*s), "{i}");
        assert_eq!(got.coalesce.as_deref(), Some(*s), "{i}");

        let body = serde_json::json!({
            "funcname": format!("{funcname}-inj"), "arg": s, "unique": s,
            "coalesce": s, "run_after": 60,
        });
        let answer = role.inject(body.to_string()).await.unwrap();
        let got = stored(&store, answer_refs(&answer).unwrap()[0]).await;
        assert_eq!(got.funcname, format!("{funcname}-inj"), "{i}");
        assert_eq!(got.arg, s.as_bytes(), "{i}");
        assert_eq!(got.uniqkey.as_deref(), Some(*s), "{i}");
        assert_eq!(got.coalesce.as_deref(), Some(*s), "{i}");
    }
    // The same bytes, read by the server itself rather than our reader.
    let hex: Vec<String> = db
        .query("SELECT HEX(arg) FROM job WHERE funcname = 'x'');_DROP_TABLE_job;_--'")
        .await;
    assert_eq!(hex, vec!["7827293B2044524F50205441424C45206A6F623B202D2D"]);
    assert_eq!(
        db.count("1").await,
        2 * hostile.len() as u64,
        "table intact"
    );
    let err = client
        .insert_job(NewJob::new("f\0; DROP TABLE job", "x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "funcname has a NUL byte at 1: Gearman cannot carry it"
    );
    let reason = role.inject(r#"{"funcname":"f\u0000g"}"#).await.unwrap_err();
    assert!(reason.contains("funcname has a NUL byte at 1"), "{reason}");
    assert_eq!(db.count("1").await, 2 * hostile.len() as u64);
}

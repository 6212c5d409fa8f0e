//! Small edges of issue #25, against a real MariaDB and a private
//! gearmand per test: a too long `coalesce` is named as such; an empty
//! unique key is no key, and `uniqkey` and `unique` given both must agree;
//! a keyed resubmit answers the existing row and leaves its schedule as it
//! was; a `?done=` link shows only a notice our changes make; `/readyz`
//! names no database URL. Needs scripts/services up.

#[path = "support/web.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use garivini::gearman::{Outcome, WorkResult};
use garivini::injector::answer_refs;
use garivini::{controller, injector, roles, Client, NewJob};
use hyper::{Method, StatusCode};
use support::{config, WebServer, TOKEN};
use testkit::{quick_queue_runner, Gearmand, InjectClient, Roles, TestDb, Worker};

const LIMIT: Duration = Duration::from_secs(30);
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

async fn refused(client: &InjectClient, body: &str) -> String {
    match client.submit(body.to_string()).await {
        Outcome::Fail(reason) => String::from_utf8_lossy(&reason).into_owned(),
        other => panic!("{body:.80}: expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_coalesce_over_255_bytes_is_refused_as_a_coalesce_not_a_unique_key() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let _roles = Roles::injector(injector::Config::default(), store.clone(), &gearmand).await;
    let long = "c".repeat(256);
    let reason = refused(
        &InjectClient::new(&gearmand),
        &format!(r#"{{"funcname":"f","coalesce":"{long}"}}"#),
    )
    .await;
    assert!(
        reason.contains("coalesce is 256 bytes, over the limit of 255"),
        "{reason}"
    );
    let mut job = NewJob::new("f", "x");
    job.coalesce = Some(long);
    let err = Client::new(store).insert_job(job).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "coalesce is 256 bytes, over the limit of 255"
    );
    assert_eq!(db.count("1").await, 0, "nothing stored");
}

#[tokio::test]
async fn an_empty_unique_key_is_no_key_and_two_different_keys_are_refused() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let store = db.store().await;
    let _roles = Roles::injector(injector::Config::default(), store.clone(), &gearmand).await;
    let client = InjectClient::new(&gearmand);
    for (body, key) in [
        (
            r#"{"funcname":"f","uniqkey":"","unique":"k1","run_after":600}"#,
            Some("k1"),
        ),
        (
            r#"{"funcname":"f","uniqkey":"k2","unique":"","run_after":600}"#,
            Some("k2"),
        ),
        (
            r#"{"funcname":"f","uniqkey":"k3","unique":"k3","run_after":600}"#,
            Some("k3"),
        ),
        (
            r#"{"funcname":"f","uniqkey":"","unique":"","run_after":600}"#,
            None,
        ),
    ] {
        let answer = client.inject(body).await.expect("stored");
        let r = answer_refs(&answer).unwrap()[0];
        let stored: Vec<Option<String>> = db
            .query(&format!(
                "SELECT uniqkey FROM job WHERE jobid = {}",
                r.jobid
            ))
            .await;
        assert_eq!(stored[0].as_deref(), key, "{body}");
    }
    let reason = refused(&client, r#"{"funcname":"f","uniqkey":"a","unique":"b"}"#).await;
    assert!(
        reason.contains("uniqkey and unique name one key: given both, they must be equal"),
        "{reason}"
    );
    // The Client: an empty key is no key, so two such jobs are two rows.
    let c = Client::new(store);
    let a = c
        .insert_job(NewJob::new("g", "x").unique(""))
        .await
        .unwrap();
    let b = c
        .insert_job(NewJob::new("g", "x").unique(""))
        .await
        .unwrap();
    assert_ne!(a, b);
    assert_eq!(db.count("funcname = 'g' AND uniqkey IS NULL").await, 2);
}

#[tokio::test]
async fn a_keyed_resubmit_answers_the_existing_row_and_keeps_its_schedule() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let config = roles::Config {
        injector: Some(injector::Config::default()),
        controller: Some(controller::Config::default()),
        queue_runner: Some(quick_queue_runner()),
        ..roles::Config::default()
    };
    let _roles = Roles::start(config, db.store().await, &gearmand).await;
    let worker = Worker::serving("kr")
        .answering(WorkResult::Complete(Bytes::new()))
        .start(&gearmand)
        .await;
    let client = InjectClient::new(&gearmand);
    let first = client
        .inject(r#"{"funcname":"kr","arg":"a","unique":"k","run_after":100}"#)
        .await
        .unwrap();
    let first = answer_refs(&first).unwrap()[0];
    let due: Vec<u32> = db.query("SELECT run_after FROM job").await;
    let again = client
        .inject(r#"{"funcname":"kr","arg":"b","unique":"k"}"#)
        .await
        .unwrap();
    assert_eq!(answer_refs(&again).unwrap()[0], first, "the existing id");
    // Long enough for a dispatch through gearmand and a QueueRunner round.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(worker.count(), 0, "a row due in 100 s did not run now");
    let now: Vec<u32> = db.query("SELECT run_after FROM job").await;
    assert_eq!(now, due, "its schedule is unchanged");
    // A new key still runs at once.
    client
        .inject(r#"{"funcname":"kr","arg":"c","unique":"other"}"#)
        .await
        .unwrap();
    db.wait_for_count(LIMIT, "the new keyed job to run", "uniqkey = 'other'", 0)
        .await;
    assert_eq!(worker.count(), 1);
}

#[tokio::test]
async fn a_done_link_shows_only_a_notice_our_changes_make() {
    let db = TestDb::new().await;
    let web = WebServer::start(config(), db.store().await, Vec::new()).await;
    let (status, headers, page) = web
        .send(Method::POST, "/login", &[FORM], &format!("token={TOKEN}"))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    let cookie = headers["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = |path: &'static str| {
        let (web, cookie) = (&web, cookie.clone());
        async move {
            let (status, _, page) = web
                .send(Method::GET, path, &[("cookie", &cookie)], "")
                .await;
            assert_eq!(status, StatusCode::OK, "{path}");
            page
        }
    };
    let ours = page("/?done=paused:resize").await;
    assert!(ours.contains("Paused resize."), "{ours}");
    for forged in [
        "/?done=paused:Your%20session%20expired%2C%20log%20in%20at%20evil.example",
        "/?done=retried:call-555-0100",
        "/?done=hacked:resize",
    ] {
        let shown = page(forged).await;
        assert!(!shown.contains("id=\"notice\""), "{forged}: {shown}");
        assert!(!shown.contains("evil.example"), "{forged}");
    }
}

#[tokio::test]
async fn readyz_says_which_database_is_down_without_its_url() {
    let port = testkit::free_port();
    let dsn = format!("mysql://gv:s3cret@127.0.0.1:{port}/nothing");
    let store = garivini::Store::connect_or_wait(garivini::config::parse_dsn_list(&dsn).unwrap())
        .await
        .unwrap();
    let web = WebServer::start(config(), std::sync::Arc::new(store), Vec::new()).await;
    let (status, json) = web.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    let one = &json["databases"][0];
    let mut keys: Vec<&str> = one
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["dbid", "error", "ok"], "{json}");
    assert_eq!(
        (one["dbid"].as_u64(), one["ok"].as_bool()),
        (Some(1), Some(false))
    );
    let text = json.to_string();
    for hidden in ["mysql://", "gv:", "***", &port.to_string()] {
        assert!(!text.contains(hidden), "{hidden} shown: {text}");
    }
    assert!(!one["error"].as_str().unwrap().is_empty(), "{json}");
}

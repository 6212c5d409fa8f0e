//! The strict HTTP JSON API of the web role: an unknown query parameter
//! or body field is refused (400 `unknown_parameter`) and changes nothing;
//! a change asked for while the database is down (a cut proxy) is 503
//! `database_unavailable` and changes nothing; a bad function name has its
//! own code; every change is logged with its rows and the caller's address
//! (the `garivini web` binary's stderr); the OpenAPI document names every
//! path, every answer with a description, and only the parameters that act.
//! Real MariaDB (a database per test); no gearmand needed. Needs the
//! services of `scripts/services up`.

#[path = "support/web.rs"]
mod support;

use std::time::Duration;

use garivini::job::NEVER;
use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{config, WebServer, TOKEN};
use testkit::{host_port, via, wait_until, DbProxy, TestDb};

const LIMIT: Duration = Duration::from_secs(30);

/// Dead rows 1..=n of `funcname`, failcount 25.
async fn dead_rows(db: &TestDb, funcname: &str, n: u64) {
    for id in 1..=n {
        db.exec(&format!(
            "INSERT INTO job (jobid, funcname, arg, run_after, failcount) \
             VALUES ({id}, '{funcname}', 'arg-{id}', {NEVER}, 25)"
        ))
        .await;
    }
}

fn code(json: &Value) -> &str {
    json["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {json}"))
}

async fn paused_rows(db: &TestDb) -> u64 {
    db.query::<u64>("SELECT COUNT(*) FROM garivini_paused")
        .await[0]
}

#[tokio::test]
async fn an_unknown_query_parameter_is_400_naming_it_and_purge_dead_dry_run_deletes_nothing() {
    let db = TestDb::new().await;
    dead_rows(&db, "resize", 5).await;
    let web = WebServer::start(config(), db.store().await, Vec::new()).await;

    let cases = [
        (
            Method::POST,
            "/api/v1/functions/resize/purge-dead?dry_run=true",
            "dry_run",
        ),
        (
            Method::POST,
            "/api/v1/functions/resize/retry-dead?force=true",
            "force",
        ),
        (Method::POST, "/api/v1/functions/resize/pause?all=1", "all"),
        (Method::POST, "/api/v1/functions/resize/resume?now=1", "now"),
        (Method::POST, "/api/v1/jobs/1:1/retry?forse=true", "forse"),
        (
            Method::DELETE,
            "/api/v1/jobs/1:1?reset_failcount=true",
            "reset_failcount",
        ),
        (
            Method::GET,
            "/api/v1/jobs?funcname=resize&sort=desc",
            "sort",
        ),
        (Method::GET, "/api/v1/jobs/1:1?verbose=1", "verbose"),
        (Method::GET, "/api/v1/status?db=1", "db"),
    ];
    for (method, path, name) in cases {
        let (status, json) = web.call(method.clone(), path, Some(TOKEN), None).await;
        assert_eq!(
            (status, code(&json)),
            (StatusCode::BAD_REQUEST, "unknown_parameter"),
            "{method} {path}: {json}"
        );
        let line = json["error"].as_str().unwrap();
        assert!(line.contains(name), "{method} {path}: {line}");
    }
    assert_eq!(
        db.count(&format!("run_after = {NEVER} AND failcount = 25"))
            .await,
        5,
        "a refused request changed no row"
    );
    assert_eq!(paused_rows(&db).await, 0, "a refused pause paused nothing");

    // The parameters that act still do.
    let (status, json) = web
        .post(
            "/api/v1/functions/resize/retry-dead?reset_failcount=true",
            None,
        )
        .await;
    assert_eq!((status, json["count"].clone()), (StatusCode::OK, 5.into()));
    assert_eq!(db.count("failcount = 0").await, 5);
    web.stop(LIMIT).await;
}

#[tokio::test]
async fn an_unknown_body_field_is_400_naming_it_and_stores_nothing() {
    let db = TestDb::new().await;
    dead_rows(&db, "resize", 1).await;
    let web = WebServer::start(config(), db.store().await, Vec::new()).await;
    let cases = [
        (r#"{"funcname":"f","delay":3600}"#, "delay"),
        (
            r#"[{"funcname":"f"},{"funcname":"f","run_at":5}]"#,
            "run_at",
        ),
    ];
    for (body, name) in cases {
        let (status, json) = web.post("/api/v1/jobs", Some(body)).await;
        assert_eq!(
            (status, code(&json)),
            (StatusCode::BAD_REQUEST, "unknown_parameter"),
            "{body}: {json}"
        );
        assert!(json["error"].as_str().unwrap().contains(name), "{json}");
    }
    assert_eq!(db.count("funcname = 'f'").await, 0, "nothing stored");

    // The fields of inject_jobs, `uniqkey` too, are known.
    let (status, json) = web
        .post(
            "/api/v1/jobs",
            Some(r#"{"funcname":"f","arg":"a","uniqkey":"k","run_after":3600,"priority":"low","coalesce":null}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");

    // A change that takes no body refuses one rather than ignore it.
    let (status, json) = web
        .post(
            "/api/v1/functions/resize/purge-dead",
            Some(r#"{"dry_run":true}"#),
        )
        .await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "unknown_parameter"),
        "{json}"
    );
    assert!(
        json["error"].as_str().unwrap().contains("dry_run"),
        "{json}"
    );
    assert_eq!(db.count("funcname = 'resize'").await, 1, "nothing purged");
    web.stop(LIMIT).await;
}

#[tokio::test]
async fn a_change_while_the_database_is_down_is_503_database_unavailable_and_changes_nothing() {
    let db = TestDb::new().await;
    dead_rows(&db, "resize", 3).await;
    let proxy = DbProxy::start(host_port(&db.url), false).await;
    let store = garivini::Store::connect(
        garivini::config::parse_dsn_list(&via(&db.url, &proxy.addr)).unwrap(),
    )
    .await
    .unwrap();
    let web = WebServer::start(config(), std::sync::Arc::new(store), Vec::new()).await;
    proxy.cut().await;

    let cases = [
        (Method::POST, "/api/v1/functions/resize/pause", None),
        (Method::POST, "/api/v1/functions/resize/resume", None),
        (Method::POST, "/api/v1/functions/resize/purge-dead", None),
        (Method::POST, "/api/v1/functions/resize/retry-dead", None),
        (Method::POST, "/api/v1/jobs/1:1/retry", None),
        (Method::DELETE, "/api/v1/jobs/1:2", None),
        (Method::POST, "/api/v1/jobs", Some(r#"{"funcname":"f"}"#)),
        (Method::GET, "/api/v1/jobs", None),
    ];
    for (method, path, body) in cases {
        let (status, json) = web.call(method.clone(), path, Some(TOKEN), body).await;
        assert_eq!(
            (status, code(&json)),
            (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            "{method} {path}: {json}"
        );
        assert!(
            json["error"].as_str().unwrap().contains("database 1"),
            "{method} {path}: the line names the database: {json}"
        );
    }

    proxy.restore();
    assert_eq!(paused_rows(&db).await, 0, "nothing paused");
    assert_eq!(db.count(&format!("run_after = {NEVER}")).await, 3);
    assert_eq!(db.count("TRUE").await, 3, "nothing stored or deleted");
    // Once it answers, the same change goes through.
    wait_until(
        LIMIT,
        "the pause to go through once the database answers",
        || async { web.post("/api/v1/functions/resize/pause", None).await.0 == StatusCode::OK },
    )
    .await;
    assert_eq!(paused_rows(&db).await, 1);
    web.stop(LIMIT).await;
}

#[tokio::test]
async fn a_bad_function_name_is_400_invalid_funcname_wherever_it_is_given() {
    let db = TestDb::new().await;
    dead_rows(&db, "resize", 1).await;
    let web = WebServer::start(config(), db.store().await, Vec::new()).await;
    let long = "f".repeat(201);
    for path in [
        "/api/v1/functions/a%20b/purge-dead".to_string(),
        "/api/v1/functions/a%20b/retry-dead".to_string(),
        "/api/v1/functions/a%0Ab/pause".to_string(),
        "/api/v1/functions/a%00b/resume".to_string(),
        format!("/api/v1/functions/{long}/pause"),
    ] {
        let (status, json) = web.post(&path, None).await;
        assert_eq!(
            (status, code(&json)),
            (StatusCode::BAD_REQUEST, "invalid_funcname"),
            "{path}: {json}"
        );
    }
    let (status, json) = web.get(&format!("/api/v1/jobs?funcname={long}")).await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "invalid_funcname"),
        "{json}"
    );
    assert_eq!(paused_rows(&db).await, 0);
    assert_eq!(db.count("TRUE").await, 1);
    web.stop(LIMIT).await;
}

/// One request to `addr` with the token; its status and JSON.
async fn request(addr: &str, method: Method, path: &str) -> (StatusCode, Value) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::default())
        .unwrap();
    let answer = testkit::within(LIMIT, path, client.request(request))
        .await
        .unwrap();
    let status = answer.status();
    let body = testkit::within(LIMIT, path, answer.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn every_api_change_is_logged_with_its_rows_and_the_callers_address() {
    let db = TestDb::new().await;
    dead_rows(&db, "resize", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let mut cmd = testkit::bin("garivini");
    cmd.args(["--dsn", &db.url, "web", "--web-addr", &addr])
        .env("GARIVINI_WEB_TOKEN", TOKEN)
        .env("RUST_LOG", "info");
    let mut web = testkit::Proc::start_logged(
        "garivini web",
        cmd,
        &dir.path().join("out"),
        &dir.path().join("log"),
    )
    .unwrap();
    wait_until(LIMIT, "garivini web to listen", || async {
        tokio::net::TcpStream::connect(&addr).await.is_ok()
    })
    .await;

    let (status, json) = request(&addr, Method::POST, "/api/v1/jobs/1:2/retry").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (status, json) = request(&addr, Method::POST, "/api/v1/functions/resize/purge-dead").await;
    assert_eq!((status, json["count"].clone()), (StatusCode::OK, 2.into()));
    let (status, _) = request(&addr, Method::POST, "/api/v1/functions/resize/pause").await;
    assert_eq!(status, StatusCode::OK);

    let line = |log: &str, what: &str| -> Option<String> {
        log.lines()
            .find(|l| l.contains("api: changed") && l.contains(what))
            .map(str::to_string)
    };
    wait_until(LIMIT, "the three changes in the log", || async {
        let log = web.log();
        ["retry", "purge_dead", "pause"]
            .iter()
            .all(|what| line(&log, &format!("action={what} ")).is_some())
    })
    .await;
    let log = web.log();
    let retry = line(&log, "action=retry ").unwrap();
    assert!(
        retry.contains(r#"on="1:2" rows="1:2""#) && retry.contains("from=127.0.0.1:"),
        "{retry}"
    );
    let purge = line(&log, "action=purge_dead ").unwrap();
    assert!(
        purge.contains(r#"on="resize""#)
            && purge.contains(r#"rows="2 (database 1: 2)""#)
            && purge.contains("from=127.0.0.1:"),
        "{purge}"
    );
    let pause = line(&log, "action=pause ").unwrap();
    assert!(
        pause.contains(r#"on="resize""#)
            && pause.contains("changed [1]")
            && pause.contains("from=127.0.0.1:"),
        "{pause}"
    );
    assert!(!log.contains(TOKEN), "the token in the log");
    let status = web.terminate(LIMIT).await;
    assert!(status.success(), "garivini web exited {status}");
}

#[tokio::test]
async fn the_openapi_document_lists_every_path_every_answer_described_and_only_acting_parameters() {
    let db = TestDb::new().await;
    let web = WebServer::start(config(), db.store().await, Vec::new()).await;
    let (status, doc) = web
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for path in ["/healthz", "/readyz"] {
        assert!(paths.contains_key(path), "{path} not documented");
    }
    let writes = [
        ("/api/v1/jobs", "post"),
        ("/api/v1/jobs/{id}", "delete"),
        ("/api/v1/jobs/{id}/retry", "post"),
        ("/api/v1/functions/{funcname}/retry-dead", "post"),
        ("/api/v1/functions/{funcname}/purge-dead", "post"),
        ("/api/v1/functions/{funcname}/pause", "post"),
        ("/api/v1/functions/{funcname}/resume", "post"),
    ];
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for (status, answer) in responses {
                let text = answer["description"].as_str().unwrap_or_default();
                assert!(
                    !text.trim().is_empty(),
                    "{method} {path} {status}: no description"
                );
            }
            if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
                for status in ["400", "401", "408"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
            }
            // The status report names a database that does not answer
            // inside its 200; everything else that reads one answers 503.
            if path.starts_with("/api/v1/jobs") || path.starts_with("/api/v1/functions") {
                assert!(responses.contains_key("503"), "{method} {path}: no 503");
            }
            if writes.contains(&(path.as_str(), method.as_str())) {
                assert!(responses.contains_key("403"), "{method} {path}: no 403");
            }
        }
    }
    let params = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "query")
                    .map(|p| p["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        params("/api/v1/functions/{funcname}/retry-dead", "post"),
        ["reset_failcount"]
    );
    assert_eq!(params("/api/v1/jobs/{id}", "delete"), ["force"]);
    assert_eq!(
        params("/api/v1/jobs/{id}/retry", "post"),
        ["force", "reset_failcount"]
    );
    assert!(params("/api/v1/functions/{funcname}/purge-dead", "post").is_empty());
    assert!(doc["paths"]["/api/v1/jobs/{id}/retry"]["post"]["responses"]
        .get("409")
        .is_some());
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([{}]),
        "the health checks need no token"
    );
    web.stop(LIMIT).await;
}

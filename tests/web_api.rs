//! The HTTP JSON API of the web role (`/api/v1`), in this process against
//! a fresh database on the real MariaDB and, where jobs must run, a
//! private gearmand with a real QueueRunner and worker: tokens (missing,
//! wrong, read-only without one), bad JSON and oversized bodies, unknown
//! ids, a POSTed job a worker then runs, keyset paging, the changes and
//! the bulk actions, the shared status, the OpenAPI document, the health
//! checks, and the binary refusing an open address without a token.
//! Needs the services of `scripts/services up`.

#[path = "support/web.rs"]
mod support;

use std::collections::HashSet;
use std::time::Duration;

use garivini::job::NEVER;
use garivini::{roles, Client};
use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{config, WebServer, TOKEN};
use testkit::{quick_queue_runner, run_garivini, wait_until, Gearmand, Roles, TestDb, Worker};

const LIMIT: Duration = Duration::from_secs(30);

/// Rows as (funcname, run_after relative to now or NEVER, failcount),
/// ids 1, 2, ... in order; rows due later stored as leased (in flight
/// within the lease, scheduled beyond it).
async fn seed(db: &TestDb, rows: &[(&str, Option<i64>, u8)]) {
    for (i, (func, delay, failcount)) in rows.iter().enumerate() {
        let run_after = match delay {
            Some(d) => format!("UNIX_TIMESTAMP() + ({d})"),
            None => NEVER.to_string(),
        };
        let attempted_at = match delay {
            Some(d) if *d > 0 => "UNIX_TIMESTAMP()",
            _ => "0",
        };
        db.exec(&format!(
            "INSERT INTO job (jobid, funcname, arg, uniqkey, run_after, failcount, attempted_at) \
             VALUES ({id}, '{func}', 'arg-{id}', 'key-{id}', {run_after}, {failcount}, {attempted_at})",
            id = i + 1,
        ))
        .await;
    }
}

/// A web role with the test token on a new empty database (no gearmand).
async fn web_on(db: &TestDb, config: garivini::web::Config) -> WebServer {
    WebServer::start(config, db.store().await, Vec::new()).await
}

fn code(json: &Value) -> &str {
    json["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {json}"))
}

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_and_the_openapi_document_needs_none() {
    let db = TestDb::new().await;
    seed(&db, &[("resize", Some(-5), 0)]).await;
    let web = web_on(&db, config()).await;
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        for (method, path) in [
            (Method::GET, "/api/v1/status"),
            (Method::GET, "/api/v1/jobs"),
            (Method::GET, "/api/v1/jobs/1:1"),
            (Method::POST, "/api/v1/jobs/1:1/retry"),
            (Method::DELETE, "/api/v1/jobs/1:1"),
            (Method::POST, "/api/v1/functions/resize/purge-dead"),
        ] {
            let (status, json) = web.call(method.clone(), path, token, None).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert_eq!(code(&json), "unauthorized");
        }
    }
    let (_, headers, _) = web.raw(Method::GET, "/api/v1/status", None, None).await;
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(
        db.count("TRUE").await,
        1,
        "a refused request changed nothing"
    );

    let (status, doc) = web
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/status",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/retry",
        "/api/v1/functions/{funcname}/retry-dead",
        "/api/v1/functions/{funcname}/purge-dead",
        "/api/v1/functions/{funcname}/pause",
        "/api/v1/functions/{funcname}/resume",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} not documented");
    }
    assert!(doc["components"]["schemas"].get("ApiError").is_some());
    web.stop(LIMIT).await;
}

#[tokio::test]
async fn public_read_opens_reads_only_and_without_a_token_the_api_is_read_only() {
    let db = TestDb::new().await;
    seed(&db, &[("resize", None, 25)]).await;
    let public = web_on(
        &db,
        garivini::web::Config {
            public_read: true,
            ..config()
        },
    )
    .await;
    let (status, _) = public.call(Method::GET, "/api/v1/jobs", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, json) = public
        .call(Method::POST, "/api/v1/jobs/1:1/retry", None, None)
        .await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    let open = web_on(
        &db,
        garivini::web::Config {
            token: None,
            ..config()
        },
    )
    .await;
    let (status, _) = open.call(Method::GET, "/api/v1/status", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, json) = open
        .call(Method::POST, "/api/v1/jobs/1:1/retry", Some(TOKEN), None)
        .await;
    assert_eq!((status, code(&json)), (StatusCode::FORBIDDEN, "read_only"));
    assert_eq!(db.count(&format!("run_after = {NEVER}")).await, 1);
}

#[tokio::test]
async fn bad_json_an_oversized_body_and_bad_jobs_get_the_reason_and_store_nothing() {
    let db = TestDb::new().await;
    let web = web_on(
        &db,
        garivini::web::Config {
            body_limit: 4096,
            max_batch: 3,
            ..config()
        },
    )
    .await;
    let big = format!(r#"{{"funcname":"resize","arg":"{}"}}"#, "x".repeat(5000));
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "not JSON",
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "invalid_job",
        ),
        (
            "a number",
            "42".into(),
            StatusCode::BAD_REQUEST,
            "invalid_job",
        ),
        (
            "no funcname",
            r#"{"arg":"a"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_job",
        ),
        (
            "an empty funcname",
            r#"{"funcname":""}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_funcname",
        ),
        (
            "a space in the funcname",
            r#"{"funcname":"a b"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_funcname",
        ),
        (
            "a delay over the limit",
            r#"{"funcname":"f","run_after":999999999999}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_job",
        ),
        (
            "an empty array",
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "invalid_job",
        ),
        (
            "an array over max_batch",
            r#"[{"funcname":"f"},{"funcname":"f"},{"funcname":"f"},{"funcname":"f"}]"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_job",
        ),
        (
            "one bad job in an array",
            r#"[{"funcname":"f"},{"funcname":""}]"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_funcname",
        ),
        (
            "a body over the limit",
            big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (what, body, want, want_code) in cases {
        let (status, json) = web.post("/api/v1/jobs", Some(&body)).await;
        assert_eq!(status, want, "{what}: {json}");
        assert_eq!(code(&json), want_code, "{what}: {json}");
        assert!(
            !json["error"].as_str().unwrap().is_empty(),
            "{what}: no reason"
        );
    }
    assert_eq!(db.count("TRUE").await, 0, "a refused request stored a row");
    let (status, json) = web.get("/api/v1/jobs?limit=0").await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, json) = web.get("/api/v1/jobs?state=sleeping").await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, json) = web.get("/api/v1/jobs?after=garbage").await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
}

#[tokio::test]
async fn unknown_ids_get_404_and_malformed_ones_400() {
    let db = TestDb::new().await;
    seed(&db, &[("resize", Some(-5), 0)]).await;
    let web = web_on(&db, config()).await;
    let cases = [
        (
            Method::GET,
            "/api/v1/jobs/1:999",
            StatusCode::NOT_FOUND,
            "unknown_job",
        ),
        (
            Method::GET,
            "/api/v1/jobs/7:1",
            StatusCode::NOT_FOUND,
            "unknown_database",
        ),
        (
            Method::GET,
            "/api/v1/jobs/abc",
            StatusCode::BAD_REQUEST,
            "invalid_job_id",
        ),
        (
            Method::POST,
            "/api/v1/jobs/1:999/retry",
            StatusCode::NOT_FOUND,
            "unknown_job",
        ),
        (
            Method::DELETE,
            "/api/v1/jobs/1:999",
            StatusCode::NOT_FOUND,
            "unknown_job",
        ),
        (
            Method::GET,
            "/api/v1/nothing-here",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PUT,
            "/api/v1/jobs/1:1",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, want, want_code) in cases {
        let (status, json) = web.call(method.clone(), path, Some(TOKEN), None).await;
        assert_eq!(
            (status, code(&json)),
            (want, want_code),
            "{method} {path}: {json}"
        );
    }
    assert_eq!(db.count("TRUE").await, 1);
}

#[tokio::test]
async fn a_posted_job_is_committed_before_201_and_a_real_worker_then_runs_it() {
    let db = TestDb::new().await;
    let gearmand = Gearmand::start().await;
    let store = db.store().await;
    let web = WebServer::start(config(), store.clone(), gearmand.servers()).await;

    // Delayed, so that nothing runs them: both rows are there at the 201.
    let (status, json) = web
        .post(
            "/api/v1/jobs",
            Some(
                r#"[{"funcname":"web_later","arg":"a","run_after":3600},
                     {"funcname":"web_later","arg":"b","unique":"later-b","run_after":3600}]"#,
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let ids: Vec<u64> = json
        .as_array()
        .expect("an array for an array")
        .iter()
        .map(|c| c["jobid"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        assert_eq!(
            db.count(&format!("jobid = {id} AND flag = 'shim'")).await,
            1
        );
    }
    let (_, shown) = web.get(&format!("/api/v1/jobs/1:{}", ids[1])).await;
    assert_eq!(shown["job"]["uniqkey"], "later-b");
    assert_eq!(shown["state"], "scheduled");

    let worker = Worker::serving("web_now")
        .completing_with(Client::new(store.clone()))
        .start(&gearmand)
        .await;
    let runner = Roles::start(
        roles::Config {
            queue_runner: Some(quick_queue_runner()),
            ..roles::Config::default()
        },
        store.clone(),
        &gearmand,
    )
    .await;
    let (status, json) = web
        .post(
            "/api/v1/jobs",
            Some(r#"{"funcname":"web_now","arg":"hello"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json["dbid"], 1);
    let jobid = json["jobid"].as_u64().unwrap();
    wait_until(LIMIT, "the worker to run the POSTed job", || async {
        worker.count() == 1
    })
    .await;
    let ran = &worker.jobs()[0];
    assert_eq!((ran.jobid, ran.arg.as_slice()), (jobid, &b"hello"[..]));
    db.wait_for_count(
        LIMIT,
        "the completed row to go",
        &format!("jobid = {jobid}"),
        0,
    )
    .await;
    runner.stop(LIMIT).await;
    web.stop(LIMIT).await;
}

/// Every page of `path` (which has a `?`), following `next`.
async fn walk(web: &WebServer, path: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = String::new();
    for _ in 0..100 {
        let (status, page) = web.get(&format!("{path}&after={after}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        all.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => return all,
        }
    }
    panic!("over 100 pages of {path}");
}

#[tokio::test]
async fn keyset_pages_give_every_row_once_in_order_with_any_filter() {
    let db = TestDb::new().await;
    // 30 rows, many due at the same second, of two functions and failcounts.
    let rows: Vec<(&str, Option<i64>, u8)> = (0..30)
        .map(|i| {
            let func = if i % 3 == 0 { "email" } else { "resize" };
            let delay = if i % 7 == 0 {
                None
            } else {
                Some(-((i % 4) as i64) * 10)
            };
            (func, delay, (i % 2) as u8)
        })
        .collect();
    seed(&db, &rows).await;
    let web = web_on(&db, config()).await;

    let all = walk(&web, "/api/v1/jobs?limit=7").await;
    let ids: Vec<u64> = all.iter().map(|j| j["jobid"].as_u64().unwrap()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 30, "{ids:?}");
    assert_eq!(ids.len(), 30, "a row came twice: {ids:?}");
    let keys: Vec<(u64, u64)> = all
        .iter()
        .map(|j| {
            (
                j["run_after"].as_u64().unwrap(),
                j["jobid"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "pages out of order");

    let resize = walk(&web, "/api/v1/jobs?limit=4&funcname=resize").await;
    assert_eq!(resize.len(), 20);
    assert!(resize.iter().all(|j| j["funcname"] == "resize"));
    let keys: Vec<(u64, u64, u64)> = resize
        .iter()
        .map(|j| {
            let n = |k: &str| j[k].as_u64().unwrap();
            (n("run_after"), n("failcount"), n("jobid"))
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "a function's pages out of order");

    let dead = walk(&web, "/api/v1/jobs?limit=2&state=dead").await;
    assert_eq!(dead.len(), 5, "ids 1, 8, 15, 22, 29 are dead");
    assert!(dead.iter().all(|j| j["state"] == "dead"));
    let keyed = walk(&web, "/api/v1/jobs?limit=5&uniqkey_prefix=key-1").await;
    let ids: HashSet<u64> = keyed.iter().map(|j| j["jobid"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19].into());
}

#[tokio::test]
async fn retry_cancel_and_the_bulk_actions_change_what_the_terminal_then_sees() {
    let db = TestDb::new().await;
    seed(
        &db,
        &[
            ("resize", None, 25),    // 1:1 dead
            ("resize", None, 25),    // 1:2 dead
            ("resize", None, 25),    // 1:3 dead
            ("resize", Some(30), 1), // 1:4 in flight
            ("email", None, 25),     // 1:5 dead
            ("email", Some(-10), 0), // 1:6 due
        ],
    )
    .await;
    let web = web_on(&db, config()).await;

    let (status, json) = web.post("/api/v1/jobs/1:1/retry", None).await;
    assert_eq!(
        (status, json["jobs"].clone()),
        (StatusCode::OK, serde_json::json!(["1:1"]))
    );
    let (_, shown) = web.get("/api/v1/jobs/1:1").await;
    assert_eq!(shown["state"], "due");

    let (status, json) = web.post("/api/v1/jobs/1:4/retry", None).await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::CONFLICT, "job_in_flight")
    );
    let (status, _) = web.post("/api/v1/jobs/1:4/retry?force=true", None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, json) = web
        .call(Method::DELETE, "/api/v1/jobs/1:6", Some(TOKEN), None)
        .await;
    assert_eq!(
        (status, json["jobs"].clone()),
        (StatusCode::OK, serde_json::json!(["1:6"]))
    );
    assert_eq!(db.count("jobid = 6").await, 0);

    let (status, json) = web.post("/api/v1/functions/resize/retry-dead", None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["count"], 2, "{json}");
    let (status, json) = web.post("/api/v1/functions/email/purge-dead", None).await;
    assert_eq!(
        (status, json["count"].clone()),
        (StatusCode::OK, 1.into()),
        "{json}"
    );
    assert_eq!(db.count(&format!("run_after = {NEVER}")).await, 0);
    let (status, json) = web.post("/api/v1/functions/a%20b/purge-dead", None).await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "invalid_funcname")
    );

    let (status, json) = web.post("/api/v1/functions/resize/pause", None).await;
    assert_eq!(
        (status, json["changed"].clone()),
        (StatusCode::OK, serde_json::json!([1]))
    );
    // What `garivini functions list` and `status` read.
    let (code, out, err) = run_garivini(&db.url, &["functions", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("resize"), "{out}");
    let (status, json) = web.post("/api/v1/functions/resize/resume", None).await;
    assert_eq!(
        (status, json["changed"].clone()),
        (StatusCode::OK, serde_json::json!([1]))
    );
}

#[tokio::test]
async fn readers_share_one_status_for_a_few_seconds_and_it_agrees_with_garivini_status() {
    let db = TestDb::new().await;
    seed(&db, &[("resize", Some(-5), 0), ("resize", None, 25)]).await;
    let web = web_on(
        &db,
        garivini::web::Config {
            status_ttl: Duration::from_secs(2),
            // Only the first reading of the sampler: no other refreshes.
            sample_every: Duration::from_secs(3600),
            ..config()
        },
    )
    .await;
    let (status, first) = web.get("/api/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    let resize = |s: &Value| s["databases"][0]["functions"][0].clone();
    assert_eq!(
        (
            resize(&first)["due"].clone(),
            resize(&first)["dead"].clone()
        ),
        (1.into(), 1.into())
    );
    let (code, out, err) = run_garivini(&db.url, &["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let terminal: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        terminal["databases"][0]["functions"],
        first["databases"][0]["functions"]
    );

    db.exec(
        "INSERT INTO job (funcname, arg, run_after) VALUES ('resize', 'x', UNIX_TIMESTAMP() - 1)",
    )
    .await;
    let (_, cached) = web.get("/api/v1/status").await;
    assert_eq!(
        resize(&cached)["due"],
        1,
        "the report is shared, not read again"
    );
    wait_until(LIMIT, "the shared report to be read again", || async {
        web.get("/api/v1/status").await.1["databases"][0]["functions"][0]["due"] == 2
    })
    .await;
}

#[tokio::test]
async fn healthz_answers_and_readyz_says_whether_the_databases_do() {
    let db = TestDb::new().await;
    let web = web_on(&db, config()).await;
    let (status, _, body) = web.raw(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok\n"[..]));
    let (status, json) = web.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status, json["ready"].clone()),
        (StatusCode::OK, true.into())
    );

    let unreachable = garivini::Store::open(
        garivini::config::parse_dsn_list("mysql://root@127.0.0.1:1/nothing").unwrap(),
    )
    .unwrap();
    let down = WebServer::start(config(), std::sync::Arc::new(unreachable), Vec::new()).await;
    let (status, json) = down.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status, json["ready"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, false.into())
    );
}

#[tokio::test]
async fn the_binary_refuses_an_open_address_without_a_token_and_never_prints_one() {
    let db = TestDb::new().await;
    let (code, _, err) = run_garivini(&db.url, &["web", "--web-addr", "0.0.0.0:0"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("needs a token"), "{err}");

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "short\n").unwrap();
    let path = file.path().to_str().unwrap();
    let (code, _, err) = run_garivini(&db.url, &["web", "--web-token-file", path]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("shorter than 16") && !err.contains("short\n"),
        "{err}"
    );
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

#[tokio::test]
async fn the_pages_log_in_into_a_strict_cookie_and_every_change_wants_it_and_the_csrf_token() {
    let db = TestDb::new().await;
    seed(&db, &[("resize", None, 25)]).await;
    let web = web_on(&db, config()).await;
    let (status, headers, _) = web.send(Method::GET, "/", &[], "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/login");
    let (status, _, page) = web
        .send(
            Method::POST,
            "/login",
            &[FORM],
            "token=wrong-token-0123456789",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("Wrong token."));

    let (status, headers, _) = web
        .send(Method::POST, "/login", &[FORM], &format!("token={TOKEN}"))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = headers["set-cookie"].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(TOKEN),
        "the cookie holds a session key, not the token"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let logged = [("cookie", cookie.as_str()), FORM];

    let (status, _, page) = web.send(Method::GET, "/", &logged[..1], "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"id="db1-resize-dead""#), "{page}");
    assert!(
        page.contains(r#"<svg id="chart-depth""#),
        "the chart is drawn: {page}"
    );
    assert!(!page.contains(TOKEN), "the token showed in a page");
    let (_, _, confirm) = web
        .send(
            Method::GET,
            "/confirm?action=retry&id=1:1&funcname=resize",
            &logged[..1],
            "",
        )
        .await;
    let csrf = confirm
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the confirmation form carries a CSRF token")
        .to_string();

    let retry = |csrf: &str| format!("action=retry&id=1:1&funcname=resize&csrf={csrf}");
    let (status, _, _) = web.send(Method::POST, "/act", &[FORM], &retry(&csrf)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a change without the cookie"
    );
    let (status, _, _) = web
        .send(Method::POST, "/act", &logged, &retry("forged"))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a change without the CSRF token"
    );
    assert_eq!(
        db.count(&format!("run_after = {NEVER}")).await,
        1,
        "nothing changed"
    );
    let (status, headers, _) = web.send(Method::POST, "/act", &logged, &retry(&csrf)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers["location"]
        .to_str()
        .unwrap()
        .contains("done=retried"));
    assert_eq!(db.count(&format!("run_after = {NEVER}")).await, 0);
}

#[tokio::test]
async fn a_client_that_never_sends_its_body_is_answered_408_and_shutdown_is_prompt() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let db = TestDb::new().await;
    let web = web_on(
        &db,
        garivini::web::Config {
            request_timeout: Duration::from_secs(1),
            ..config()
        },
    )
    .await;
    let mut slow = tokio::net::TcpStream::connect(web.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
        .await
        .expect("the web role answers a slow client within its timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");

    // A keep-alive connection open: the role still stops at once.
    let (status, _) = web.get("/api/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    let started = std::time::Instant::now();
    web.stop(LIMIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn garivini_web_and_workers_with_web_serve_the_api_and_stop_on_sigterm() {
    let db = TestDb::new().await;
    seed(&db, &[("resize", Some(-5), 0)]).await;
    let gearmand = Gearmand::start().await;
    let servers = gearmand.servers().join(",");
    for args in [
        // The web role alone needs no gearmand.
        vec!["web"],
        vec![
            "workers",
            "--roles",
            "queuerunner,web",
            "--gearmand",
            &servers,
        ],
    ] {
        let port = testkit::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = testkit::bin("garivini");
        cmd.args(["--dsn", &db.url])
            .args(&args)
            .args(["--web-addr", &addr])
            .env("GARIVINI_WEB_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut proc = testkit::Proc::adopt("garivini web", cmd.spawn().unwrap());
        wait_until(LIMIT, "garivini web to listen", || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let request = |token: Option<&str>| {
            let mut r = hyper::Request::get(format!("http://{addr}/api/v1/status"));
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            r.body(http_body_util::Empty::new()).unwrap()
        };
        let answer = testkit::within(LIMIT, "status", client.request(request(Some(TOKEN))))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{args:?}");
        let answer = testkit::within(LIMIT, "status", client.request(request(None)))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{args:?}");
        let status = proc.terminate(LIMIT).await;
        assert!(status.success(), "{args:?} exited {status}");
    }
}

#[tokio::test]
async fn keyset_pages_over_two_shards_give_every_row_of_both_once() {
    let (one, two) = (TestDb::new().await, TestDb::new().await);
    // The same due times in both shards, so that pages cut between them.
    let rows: Vec<(&str, Option<i64>, u8)> = (0..12)
        .map(|i| ("resize", Some(-((i % 3) as i64) * 10), (i % 2) as u8))
        .collect();
    seed(&one, &rows).await;
    seed(&two, &rows).await;
    let dsn = format!("{},{}", one.url, two.url);
    let store = garivini::Store::connect(garivini::config::parse_dsn_list(&dsn).unwrap())
        .await
        .unwrap();
    let web = WebServer::start(config(), std::sync::Arc::new(store), Vec::new()).await;
    for path in [
        "/api/v1/jobs?limit=5",
        "/api/v1/jobs?limit=5&funcname=resize",
    ] {
        let all = walk(&web, path).await;
        let ids: Vec<(u64, u64)> = all
            .iter()
            .map(|j| (j["dbid"].as_u64().unwrap(), j["jobid"].as_u64().unwrap()))
            .collect();
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!((ids.len(), distinct.len()), (24, 24), "{path}: {ids:?}");
    }
}

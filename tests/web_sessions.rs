//! Logins and sessions of the web role in this process, on a fresh
//! database on the real MariaDB: wrong logins from one address are
//! answered 429 with Retry-After past 10 a minute; two logins get two
//! different sessions; a cookie is dead after its logout (its CSRF token
//! with it); the cookie is `Secure` only behind a trusted proxy that says
//! HTTPS; every answer, page or API, carries the security headers.
//! Needs the services of `scripts/services up`.

#[path = "support/web.rs"]
mod support;

use hyper::{Method, StatusCode};
use support::{config, WebServer, TOKEN};
use testkit::TestDb;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

async fn web(db: &TestDb, config: garivini::web::Config) -> WebServer {
    WebServer::start(config, db.store().await, Vec::new()).await
}

/// Logs in with the token, with `headers` besides; the whole `Set-Cookie`.
async fn log_in(web: &WebServer, headers: &[(&str, &str)]) -> String {
    let mut all = vec![FORM];
    all.extend_from_slice(headers);
    let (status, headers, page) = web
        .send(Method::POST, "/login", &all, &format!("token={TOKEN}"))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    headers["set-cookie"].to_str().unwrap().to_string()
}

/// The `name=value` of a `Set-Cookie`.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token of the logout form of a page.
fn csrf(page: &str) -> String {
    page.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {page}"))
        .to_string()
}

#[tokio::test]
async fn fifty_wrong_logins_from_one_address_are_mostly_refused_429() {
    let db = TestDb::new().await;
    let web = web(&db, config()).await;
    let (mut unauthorized, mut limited) = (0, 0);
    for i in 0..50 {
        let (status, headers, _) = web
            .send(
                Method::POST,
                "/login",
                &[FORM],
                &format!("token=wrong-{i:020}"),
            )
            .await;
        match status {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&wait), "Retry-After: {wait}");
            }
            other => panic!("a wrong login answered {other}"),
        }
    }
    assert_eq!((unauthorized, limited), (10, 40));
    // The right token too, from that address, until the minute ends; and
    // bad bearer tokens count as well.
    let (status, _, _) = web
        .send(Method::POST, "/login", &[FORM], &format!("token={TOKEN}"))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _, _) = web
        .raw(Method::GET, "/api/v1/status", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    let other = WebServer::start(config(), db.store().await, Vec::new()).await;
    for i in 0..12 {
        let (status, _, _) = other
            .raw(
                Method::GET,
                "/api/v1/status",
                Some(&format!("bad-token-{i:012}")),
                None,
            )
            .await;
        let want = if i < 10 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(status, want, "bad bearer token {i}");
    }
}

#[tokio::test]
async fn each_login_has_its_own_session_and_a_cookie_is_dead_after_its_logout() {
    let db = TestDb::new().await;
    let web = web(&db, config()).await;
    let first = pair(&log_in(&web, &[]).await);
    let second = pair(&log_in(&web, &[]).await);
    assert_ne!(first, second, "two logins, one cookie");

    let (status, _, overview) = web.send(Method::GET, "/", &[("cookie", &first)], "").await;
    assert_eq!(status, StatusCode::OK);
    let token = csrf(&overview);
    let (_, _, other_overview) = web.send(Method::GET, "/", &[("cookie", &second)], "").await;
    assert_ne!(token, csrf(&other_overview), "two sessions, one CSRF token");

    // The CSRF token of one session does not serve another.
    let retry = format!("action=retry_dead&funcname=email&csrf={token}");
    let (status, _, _) = web
        .send(Method::POST, "/act", &[("cookie", &second), FORM], &retry)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // It serves its own.
    let (status, _, page) = web
        .send(Method::POST, "/act", &[("cookie", &first), FORM], &retry)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");

    let (status, headers, _) = web
        .send(
            Method::POST,
            "/logout",
            &[("cookie", &first), FORM],
            &format!("csrf={token}"),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));

    // The old cookie and its CSRF token, replayed: refused.
    let (status, _, page) = web
        .send(Method::POST, "/act", &[("cookie", &first), FORM], &retry)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{page}");
    let (status, headers, _) = web.send(Method::GET, "/", &[("cookie", &first)], "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/login");
    // The other session lives on.
    let (status, _, _) = web.send(Method::GET, "/", &[("cookie", &second)], "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_cookie_is_secure_only_behind_a_trusted_proxy_saying_https() {
    let db = TestDb::new().await;
    let https = [("x-forwarded-proto", "https")];
    let untrusted = web(&db, config()).await;
    let cookie = log_in(&untrusted, &https).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));

    let trusted = web(
        &db,
        garivini::web::Config {
            trusted_proxy: true,
            ..config()
        },
    )
    .await;
    let cookie = log_in(&trusted, &https).await;
    assert!(cookie.contains("; Secure"), "{cookie}");
    let cookie = log_in(&trusted, &[]).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let db = TestDb::new().await;
    let web = web(&db, config()).await;
    let cookie = pair(&log_in(&web, &[]).await);
    let answers = [
        web.send(Method::GET, "/", &[("cookie", &cookie)], "").await,
        web.send(Method::GET, "/login", &[], "").await,
        web.send(Method::GET, "/healthz", &[], "").await,
        web.send(Method::GET, "/no-such-page", &[], "").await,
        web.send(
            Method::GET,
            "/api/v1/status",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            "",
        )
        .await,
        web.send(Method::GET, "/api/v1/status", &[], "").await,
    ];
    for (i, (status, headers, _)) in answers.iter().enumerate() {
        let header = |name: &str| {
            headers
                .get(name)
                .unwrap_or_else(|| panic!("answer {i} ({status}) has no {name}"))
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(header("x-frame-options"), "DENY");
        assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("referrer-policy"), "same-origin");
    }
}

//! The dashboard in a real browser: headless Chromium driven through
//! WebDriver (a private chromedriver, fantoccini), against the web role in
//! this process on a fresh database on the real MariaDB and a private
//! gearmand. Refused without the token (the login page, and a wrong token
//! refused); logged in with it, the overview shows the seeded counts and
//! the no-worker warning; a dead job opened, retried and confirmed (the
//! reset of its failcount ticked) leaves the dead list, failcount 0.
//! Saves a screenshot of the overview to target/screenshots/overview.png.
//! Needs `scripts/services up` and `scripts/browser deps` (chromium,
//! chromium-driver).

#[path = "support/web.rs"]
mod support;

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt as _;
use garivini::job::NEVER;
use hyper_util::client::legacy::connect::HttpConnector;
use support::{config, WebServer, TOKEN};
use testkit::chromedriver::{CHROMIUM, CHROMIUM_ARGS};
use testkit::{within, ChromeDriver, Gearmand, TestDb};

/// The whole scenario's bound (a cold Chromium starts in a few seconds).
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
/// One step's bound.
const STEP: Duration = Duration::from_secs(20);

async fn browser(driver: &ChromeDriver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"binary": CHROMIUM, "args": CHROMIUM_ARGS}),
    );
    within(
        STEP * 2,
        "a headless Chromium session",
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url),
    )
    .await
    .expect("chromedriver starts a Chromium session")
}

/// The text of the element with id `id`.
/// The text of `#id`, waiting (up to [`STEP`]) for it to be there: the
/// page a click led to may still be loading.
async fn text(page: &Client, id: &str) -> String {
    within(STEP, id, async {
        let url = page.current_url().await.ok();
        page.wait()
            .at_most(STEP)
            .for_element(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no #{id} on {url:?}: {e}"))
            .text()
            .await
            .unwrap()
    })
    .await
}

async fn click(page: &Client, locator: Locator<'_>, what: &str) {
    within(STEP, what, async {
        page.wait()
            .at_most(STEP)
            .for_element(locator)
            .await
            .unwrap_or_else(|e| panic!("no {what}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {what}: {e}"))
    })
    .await;
}

async fn goto(page: &Client, url: &str) {
    within(STEP, url, page.goto(url))
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
}

/// Whether `#id` shows up within [`STEP`] (a page still loading is waited
/// for).
async fn shows(page: &Client, id: &str) -> bool {
    page.wait()
        .at_most(STEP)
        .for_element(Locator::Id(id))
        .await
        .is_ok()
}

/// Whether `#id` is on the page as it is now.
async fn has(page: &Client, id: &str) -> bool {
    !within(STEP, id, page.find_all(Locator::Id(id)))
        .await
        .unwrap()
        .is_empty()
}

async fn log_in(page: &Client, token: &str) {
    let field = within(STEP, "the token field", page.find(Locator::Id("token")))
        .await
        .expect("the login page has a token field");
    within(STEP, "typing the token", field.send_keys(token))
        .await
        .unwrap();
    click(page, Locator::Id("login"), "the login button").await;
    // A click may return before the form's answer has loaded: wait until
    // the page is another one, or the login page again with its error.
    within(STEP, "the answer to the login", async {
        loop {
            let path = page.current_url().await.map(|u| u.path().to_string());
            if path.is_ok_and(|p| p != "/login") || has(page, "error").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

async fn scenario(page: &Client, web: &WebServer, db: &TestDb) {
    let base = web.base();
    // Without the token: the login page, no counts.
    goto(page, &format!("{base}/")).await;
    assert!(page.current_url().await.unwrap().path() == "/login");
    assert!(
        !has(page, "db1").await,
        "the overview showed without a login"
    );
    log_in(page, "wrong-token-0123456789abcdef").await;
    assert_eq!(text(page, "error").await, "Wrong token.");
    goto(page, &format!("{base}/jobs?state=dead")).await;
    assert_eq!(page.current_url().await.unwrap().path(), "/login");

    // With it: the overview, with the seeded counts.
    log_in(page, TOKEN).await;
    assert_eq!(page.current_url().await.unwrap().path(), "/");
    assert_eq!(text(page, "db1-resize-due").await, "2");
    assert_eq!(text(page, "db1-resize-dead").await, "1");
    assert_eq!(text(page, "db1-resize-scheduled").await, "1");
    assert_eq!(text(page, "db1-email-due").await, "1");
    assert!(
        text(page, "no-worker-resize").await.contains("no worker"),
        "the warning row for a function without a worker"
    );
    let png = within(STEP, "a screenshot", page.screenshot())
        .await
        .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("overview.png"), png).unwrap();

    // A dead job: opened from its count, retried, confirmed.
    click(
        page,
        Locator::Css("#db1-resize-dead a"),
        "the dead count's link",
    )
    .await;
    assert!(shows(page, "job-1-4").await, "the dead job is listed");
    click(page, Locator::Css("#job-1-4 a"), "the dead job's link").await;
    assert_eq!(text(page, "state").await, "dead");
    assert!(text(page, "job-json").await.contains(r#""jobid":4"#));
    click(page, Locator::Id("retry"), "the retry link").await;
    assert!(text(page, "question").await.starts_with("Retry job 1:4"));
    assert_eq!(
        db.count(&format!("jobid = 4 AND run_after = {NEVER}"))
            .await,
        1,
        "nothing changes before the confirmation"
    );
    let reset = within(
        STEP,
        "the reset-failcount box",
        page.find(Locator::Id("reset-failcount")),
    )
    .await
    .expect("a retry offers to reset the failcount");
    assert!(
        within(STEP, "whether it is ticked", reset.is_selected())
            .await
            .unwrap(),
        "ticked for a dead job"
    );
    click(page, Locator::Id("confirm"), "the confirm button").await;
    assert_eq!(text(page, "notice").await, "Retried job 1:4.");
    assert!(
        !has(page, "job-1-4").await,
        "the retried job left the dead list"
    );
    assert!(shows(page, "no-jobs").await);
    assert_eq!(
        db.count("jobid = 4 AND failcount = 0 AND run_after < UNIX_TIMESTAMP() + 5")
            .await,
        1,
        "due now, its failcount reset"
    );
    goto(page, &format!("{base}/")).await;
    assert_eq!(text(page, "db1-resize-dead").await, "0");
    assert_eq!(text(page, "db1-resize-due").await, "3");
}

#[tokio::test]
async fn an_operator_logs_in_sees_the_counts_and_retries_a_dead_job() {
    let db = TestDb::new().await;
    for (id, func, run_after, failcount) in [
        (1, "resize", "UNIX_TIMESTAMP() - 60", 0),
        (2, "resize", "UNIX_TIMESTAMP() - 5", 2),
        (3, "resize", "UNIX_TIMESTAMP() + 7200", 0),
        (4, "resize", "2147483647", 25),
        (5, "email", "UNIX_TIMESTAMP()", 0),
    ] {
        db.exec(&format!(
            "INSERT INTO job (jobid, funcname, arg, run_after, failcount) \
             VALUES ({id}, '{func}', 'arg-{id}', {run_after}, {failcount})"
        ))
        .await;
    }
    let gearmand = Gearmand::start().await;
    let web = WebServer::start(config(), db.store().await, gearmand.servers()).await;
    let driver = ChromeDriver::start().await;
    let page = browser(&driver).await;
    let ran = tokio::time::timeout(
        SCENARIO_LIMIT,
        std::panic::AssertUnwindSafe(scenario(&page, &web, &db)).catch_unwind(),
    )
    .await;
    // The session ends (Chromium quits) whatever the scenario did.
    let _ = within(STEP, "the browser to close", page.close()).await;
    match ran {
        Err(_) => panic!("the browser scenario took over {SCENARIO_LIMIT:?}"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(())) => {}
    }
    web.stop(STEP).await;
}

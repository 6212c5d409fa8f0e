//! The dashboard's pages as a browser without JavaScript uses them (GET a
//! page, POST its form with the login cookie and the CSRF token), against
//! the web role in this process on a fresh database on the real MariaDB
//! and a private gearmand: a job a real worker is running says when its
//! lease ends, and only a forced cancel deletes it (an unforced one leads
//! back to its page with the reason); a retry resets the failcount when
//! asked (asked by default for a dead job); the purge confirmation counts
//! the rows it deletes; counts past a status's caps say what "at least"
//! means, and none reads "0+". Needs the services of `scripts/services up`.

#[path = "support/web.rs"]
mod support;

use std::time::Duration;

use garivini::job::NEVER;
use garivini::{roles, Client, NewJob};
use hyper::{Method, StatusCode};
use support::{config, WebServer, TOKEN};
use testkit::{quick_queue_runner, wait_until, Gearmand, Roles, TestDb, Worker};

const LIMIT: Duration = Duration::from_secs(30);
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// The web role with the test token on `db`, knowing `gearmand`.
async fn web_on(db: &TestDb, gearmand: &Gearmand) -> WebServer {
    WebServer::start(config(), db.store().await, gearmand.servers()).await
}

/// Logs in with the token; the session cookie (`name=value`).
async fn log_in(web: &WebServer) -> String {
    let (status, headers, page) = web
        .send(Method::POST, "/login", &[FORM], &format!("token={TOKEN}"))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    let set = headers["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}

/// The page at `path`, which must answer 200.
async fn page(web: &WebServer, cookie: &str, path: &str) -> String {
    let (status, _, page) = web.send(Method::GET, path, &[("cookie", cookie)], "").await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {page}");
    page
}

/// POSTs a form to `/act`: the status and where it leads.
async fn act(web: &WebServer, cookie: &str, form: &str) -> (StatusCode, String, String) {
    let (status, headers, page) = web
        .send(Method::POST, "/act", &[("cookie", cookie), FORM], form)
        .await;
    let location = headers
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, location, page)
}

/// The CSRF token a confirmation's form carries.
fn csrf(confirm: &str) -> String {
    confirm
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {confirm}"))
        .to_string()
}

/// The element with id `id`: its opening tag, and its text (tags inside
/// dropped, entities left as they are).
fn element<'a>(page: &'a str, id: &str) -> (&'a str, String) {
    let at = page
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id} in {page}"));
    let start = page[..at].rfind('<').unwrap();
    let name: String = page[start + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let open_end = at + page[at..].find('>').unwrap() + 1;
    let close = open_end
        + page[open_end..]
            .find(&format!("</{name}>"))
            .unwrap_or(page.len() - open_end);
    let mut text = String::new();
    let mut in_tag = false;
    for c in page[open_end..close].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    (&page[start..open_end], text)
}

fn text(page: &str, id: &str) -> String {
    element(page, id).1
}

#[tokio::test]
async fn a_job_a_worker_is_running_says_when_its_lease_ends_and_only_a_forced_cancel_deletes_it() {
    let db = TestDb::new().await;
    let gearmand = Gearmand::start().await;
    let store = db.store().await;
    // A worker that holds its job for longer than the test: the job is in
    // flight, leased by a real QueueRunner.
    let worker = Worker::serving("pages_slow")
        .taking(Duration::from_secs(120))
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
    let id = Client::new(store.clone())
        .insert_job(NewJob::new("pages_slow", "slow"))
        .await
        .unwrap();
    wait_until(LIMIT, "the worker to be handed the job", || async {
        worker.count() == 1
    })
    .await;
    runner.stop(LIMIT).await;

    let web = web_on(&db, &gearmand).await;
    let cookie = log_in(&web).await;
    let job = page(&web, &cookie, &format!("/jobs/{id}")).await;
    assert_eq!(text(&job, "state"), "in flight", "{job}");
    assert_eq!(text(&job, "next-run-name"), "lease ends", "{job}");
    assert!(text(&job, "next-run").starts_with("in "), "{job}");
    let list = page(&web, &cookie, "/jobs?funcname=pages_slow").await;
    assert!(
        text(&list, &format!("job-{}-{}", id.dbid, id.jobid)).contains("lease ends in "),
        "{list}"
    );

    let confirm = page(
        &web,
        &cookie,
        &format!("/confirm?action=cancel&id={id}&funcname=pages_slow"),
    )
    .await;
    assert!(
        text(&confirm, "rows").starts_with("Rows deleted: 1"),
        "{confirm}"
    );
    let (force_box, _) = element(&confirm, "force");
    assert!(
        force_box.contains(r#"type="checkbox""#) && !force_box.contains("checked"),
        "force is offered, not chosen: {force_box}"
    );
    let warning = text(&confirm, "in-flight");
    assert!(
        warning.contains("a worker may be running it") && warning.contains("may still finish"),
        "the warning says what force means: {warning}"
    );
    assert!(
        element(&confirm, "confirm").0.contains("danger"),
        "{confirm}"
    );
    let csrf = csrf(&confirm);
    let cancel = format!("action=cancel&id={id}&funcname=pages_slow&csrf={csrf}");

    // Not forced: refused, and back to the job's page, which says why.
    let (status, back, answer) = act(&web, &cookie, &cancel).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{answer}");
    assert_eq!(back, format!("/jobs/{id}?refused=in_flight"));
    assert_eq!(db.count(&format!("jobid = {}", id.jobid)).await, 1);
    let refused = page(&web, &cookie, &back).await;
    let reason = text(&refused, "refused");
    assert!(
        reason.contains("in flight") && reason.contains("force"),
        "{reason}"
    );
    assert_eq!(text(&refused, "state"), "in flight");

    // Forced: deleted.
    let (status, to, answer) = act(&web, &cookie, &format!("{cancel}&force=on")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{answer}");
    assert!(to.contains("done=cancelled"), "{to}");
    assert_eq!(db.count(&format!("jobid = {}", id.jobid)).await, 0);
    let list = page(&web, &cookie, &to).await;
    assert_eq!(text(&list, "notice"), format!("Cancelled job {id}."));
    web.stop(LIMIT).await;
}

/// Dead rows of `funcname` with failcount 25, ids `first..first + n`.
async fn dead(db: &TestDb, funcname: &str, first: u64, n: u64) {
    for jobid in first..first + n {
        db.exec(&format!(
            "INSERT INTO job (jobid, funcname, arg, run_after, failcount) \
             VALUES ({jobid}, '{funcname}', 'x', {NEVER}, 25)"
        ))
        .await;
    }
}

#[tokio::test]
async fn a_retry_resets_the_failcount_when_ticked_as_it_is_for_a_dead_job() {
    let db = TestDb::new().await;
    let gearmand = Gearmand::start().await;
    dead(&db, "resize", 1, 2).await;
    dead(&db, "email", 3, 2).await;
    let web = web_on(&db, &gearmand).await;
    let cookie = log_in(&web).await;

    let confirm = page(
        &web,
        &cookie,
        "/confirm?action=retry&id=1:1&funcname=resize",
    )
    .await;
    let (reset_box, _) = element(&confirm, "reset-failcount");
    assert!(
        reset_box.contains("checked"),
        "ticked for a dead job: {reset_box}"
    );
    assert!(text(&confirm, "rows").contains("failcount 25"), "{confirm}");
    assert!(
        !confirm.contains(r#"id="force""#),
        "not in flight: {confirm}"
    );
    let csrf = csrf(&confirm);
    let retry = |jobid: u64, reset: &str| {
        format!("action=retry&id=1:{jobid}&funcname=resize&csrf={csrf}{reset}")
    };
    let (status, _, answer) = act(&web, &cookie, &retry(1, "&reset_failcount=on")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{answer}");
    assert_eq!(
        db.count("jobid = 1 AND failcount = 0 AND run_after <= UNIX_TIMESTAMP() + 5")
            .await,
        1,
        "due now, its failures forgotten"
    );
    // Unticked: due now, failcount kept.
    let (status, _, answer) = act(&web, &cookie, &retry(2, "")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{answer}");
    assert_eq!(
        db.count("jobid = 2 AND failcount = 25 AND run_after < 2147483647")
            .await,
        1
    );

    // Every dead job of a function, the same.
    let confirm = page(&web, &cookie, "/confirm?action=retry_dead&funcname=email").await;
    assert_eq!(text(&confirm, "row-count"), "2", "{confirm}");
    assert!(element(&confirm, "reset-failcount").0.contains("checked"));
    let (status, to, answer) = act(
        &web,
        &cookie,
        &format!("action=retry_dead&funcname=email&csrf={csrf}&reset_failcount=on"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{answer}");
    assert_eq!(
        db.count("funcname = 'email' AND failcount = 0 AND run_after < 2147483647")
            .await,
        2
    );
    let overview = page(&web, &cookie, &to).await;
    assert_eq!(text(&overview, "notice"), "Retried 2 dead jobs of email.");
    web.stop(LIMIT).await;
}

#[tokio::test]
async fn the_purge_confirmation_counts_the_rows_it_deletes_and_is_styled_as_danger() {
    let db = TestDb::new().await;
    let gearmand = Gearmand::start().await;
    dead(&db, "resize", 1, 5).await;
    dead(&db, "email", 6, 2).await;
    db.exec("INSERT INTO job (jobid, funcname, arg, run_after) VALUES (8, 'resize', 'x', UNIX_TIMESTAMP())")
        .await;
    let web = web_on(&db, &gearmand).await;
    let cookie = log_in(&web).await;

    let confirm = page(&web, &cookie, "/confirm?action=purge_dead&funcname=resize").await;
    assert_eq!(text(&confirm, "row-count"), "5", "{confirm}");
    assert!(text(&confirm, "rows").starts_with("Rows deleted: 5 dead jobs"));
    assert!(element(&confirm, "question").0.contains("danger"));
    assert!(element(&confirm, "confirm").0.contains("danger"));
    assert_eq!(db.count("TRUE").await, 8, "nothing changes before the form");
    let (status, to, answer) = act(
        &web,
        &cookie,
        &format!("action=purge_dead&funcname=resize&csrf={}", csrf(&confirm)),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{answer}");
    assert_eq!(
        db.count("funcname = 'resize'").await,
        1,
        "the live one kept"
    );
    assert_eq!(db.count("funcname = 'email'").await, 2);
    let overview = page(&web, &cookie, &to).await;
    assert_eq!(text(&overview, "notice"), "Purged 5 dead jobs of resize.");
    web.stop(LIMIT).await;
}

#[tokio::test]
async fn counts_past_the_caps_say_what_at_least_means_and_none_reads_0_plus() {
    let db = TestDb::new().await;
    let gearmand = Gearmand::start().await;
    // Two functions: each range is counted up to 10,000 entries and 2,000
    // rows of the lease window. 10,500 due rows, none failing; 2,500 rows
    // leased by a worker now.
    db.exec(
        "INSERT INTO job (funcname, arg, run_after) \
         SELECT 'bulk', 'x', UNIX_TIMESTAMP() - seq FROM seq_1_to_10500",
    )
    .await;
    db.exec(
        "INSERT INTO job (funcname, arg, run_after, attempted_at) \
         SELECT 'leased', 'x', UNIX_TIMESTAMP() + 60, UNIX_TIMESTAMP() FROM seq_1_to_2500",
    )
    .await;
    let web = web_on(&db, &gearmand).await;
    let cookie = log_in(&web).await;
    let overview = page(&web, &cookie, "/").await;

    let (due, shown) = element(&overview, "db1-bulk-due");
    assert_eq!(shown, "10000+");
    assert!(
        due.contains("at least 10000: a status reads at most 10000 entries"),
        "{due}"
    );
    assert_eq!(text(&overview, "db1-bulk-failing"), "0");
    assert_eq!(text(&overview, "db1-leased-in_flight"), "2000+");
    // The leased rows past those read are not called scheduled.
    assert_eq!(text(&overview, "db1-leased-scheduled"), "0");
    assert!(
        text(&overview, "at-least-db1").starts_with("N+ means at least N."),
        "{overview}"
    );
    for cell in overview.split('>').filter_map(|s| s.split('<').next()) {
        assert_ne!(cell.trim(), "0+", "a lower bound of 0 in {overview}");
    }
    web.stop(LIMIT).await;
}

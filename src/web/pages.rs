//! The HTML pages: the overview ([`overview`]: every database's jobs per
//! function and state, every gearmand's queues, functions without a
//! worker, the chart), the job list (filters, keyset paging), the job page, a
//! confirmation page before every change ([`confirm`]), and the login.
//! Rendered on the server (maud); they work without JavaScript, and the
//! overview refreshes itself (an HTTP refresh).

mod confirm;
mod overview;

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use super::api::{selection, Failure, ListParams};
use super::auth::{Access, Keys};
use super::State;
use crate::admin::{self, JobState};
use crate::job::JobRef;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
td.name,th.name{text-align:left}tr.warn td{background:#fff3cd}\
.notice{background:#d1e7dd;padding:.5em}.error{background:#f8d7da;padding:.5em}\
.muted{color:#777}nav a{margin-right:1em}pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap;word-break:break-all}\
.axis{stroke:#999}.tick,.chart-title{font-size:11px;fill:#555}\
polyline{stroke-width:2}.depth{stroke:#444}.added{stroke:#1f6feb}.gone{stroke:#2da44e}\
.dispatched{stroke:#d4720b}\
form.inline{display:inline}.warning{background:#fff3cd;padding:.5em}\
.danger button,button.danger{background:#b02a37;color:#fff}";

/// The page around `body`; `refresh`: seconds between reloads.
fn layout(title: &str, access: Access, keys: &Keys, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(secs) = refresh {
                    // Back to the plain overview: a notice is shown once.
                    meta http-equiv="refresh" content=(format!("{secs}; url=/"));
                }
                title { (title) " · Garivini" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/" { "Overview" }
                    a href="/jobs" { "Jobs" }
                    a href="/jobs?state=dead" { "Dead jobs" }
                    @if keys.has_token() {
                        @if access == Access::Write {
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(keys.csrf());
                                button id="logout" type="submit" { "Log out" }
                            }
                        } @else {
                            a id="login-link" href="/login" { "Log in" }
                        }
                    } @else {
                        span.muted { "read-only: no token configured" }
                    }
                }
                h1 { (title) }
                (body)
            }
        }
    }
}

/// A page that is an error.
fn error_page(state: &State, access: Access, status: StatusCode, message: &str) -> Response {
    error_back(state, access, status, message, None)
}

/// A page that is an error, with a link back to the page `back`
/// (`(href, text)`) the change came from.
fn error_back(
    state: &State,
    access: Access,
    status: StatusCode,
    message: &str,
    back: Option<(&str, &str)>,
) -> Response {
    let body = html! {
        p.error id="error" { (message) }
        @if let Some((href, text)) = back { p { a id="back" href=(href) { (text) } } }
    };
    (status, layout("Error", access, &state.keys, None, body)).into_response()
}

impl Failure {
    fn page(self, state: &State, access: Access) -> Response {
        error_page(state, access, self.status, &self.message)
    }
}

/// The access of a page's request, or the answer that refuses it: to the
/// login page for a read, 401 for a change.
fn access(state: &State, headers: &HeaderMap, need: Access) -> Result<Access, Box<Response>> {
    let have = state.keys.page_access(headers);
    match super::api::require(have, need, state.keys.has_token()) {
        Ok(()) => Ok(have),
        Err(_) if need == Access::Read => Err(Box::new(Redirect::to("/login").into_response())),
        Err(f) => Err(Box::new(f.page(state, have))),
    }
}

/// `secs` as people read a span: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
fn span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A unix time as `YYYY-MM-DD HH:MM:SS UTC`.
fn date(unix: u64) -> String {
    crate::admin::utc_date(unix)
}

fn due_in(secs: Option<i64>) -> String {
    match secs {
        None => "never (dead)".into(),
        Some(s) if s <= 0 => format!("due, {} overdue", span(s.unsigned_abs())),
        Some(s) => format!("in {}", span(s as u64)),
    }
}

/// What a job's `run_after` means in `state`: when it runs next, or, in
/// flight, when its lease ends (the column doubles as the lease: a worker
/// may be running it, and it is dispatched again only if not completed
/// by then).
fn next_run(state: JobState) -> &'static str {
    if state == JobState::InFlight {
        "lease ends"
    } else {
        "next run"
    }
}

/// [`due_in`] under the name [`next_run`] gives it, for a cell of the
/// job list: `lease ends in 4 min` for a job in flight.
fn next_run_cell(state: JobState, secs: Option<i64>) -> String {
    if state == JobState::InFlight {
        format!("{} {}", next_run(state), due_in(secs))
    } else {
        due_in(secs)
    }
}

fn url(path: &str, pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let query: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// What a change just did, read back from the redirect that follows it
/// (`done=ACTION:SUBJECT`, and `n=ROWS` for a change of many rows): fixed
/// wording, the subject only named, and only one our changes name: a job
/// id (`1:42`) for a job's change, a function name for a function's. So a
/// link can show no sentence of its own making.
fn notice(done: Option<&str>, rows: Option<u64>) -> Option<String> {
    let (action, subject) = done?.split_once(':')?;
    let of_job = matches!(action, "retried" | "cancelled");
    let named = match of_job {
        true => subject.parse::<crate::job::JobRef>().is_ok(),
        false => crate::job::check_funcname(subject).is_ok(),
    };
    if !named {
        return None;
    }
    let jobs = |n: u64| if n == 1 { "job" } else { "jobs" };
    let what = match (action, rows) {
        ("retried", _) => "Retried job".to_string(),
        ("cancelled", _) => "Cancelled job".to_string(),
        ("retried_dead", Some(n)) => format!("Retried {n} dead {} of", jobs(n)),
        ("retried_dead", None) => "Retried the dead jobs of".to_string(),
        ("purged_dead", Some(n)) => format!("Purged {n} dead {} of", jobs(n)),
        ("purged_dead", None) => "Purged the dead jobs of".to_string(),
        ("paused", _) => "Paused".to_string(),
        ("resumed", _) => "Resumed".to_string(),
        _ => return None,
    };
    Some(format!("{what} {subject}."))
}

#[derive(Debug, Default, Deserialize)]
struct Done {
    done: Option<String>,
    /// Rows the change touched.
    n: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct JobsQuery {
    #[serde(flatten)]
    list: ListParamsForm,
    done: Option<String>,
    /// As [`Done::n`] (a string: beside a flattened struct, every value is).
    n: Option<String>,
}

/// [`ListParams`] as a form sends it (every value a string).
#[derive(Debug, Default, Deserialize)]
struct ListParamsForm {
    funcname: Option<String>,
    state: Option<String>,
    uniqkey_prefix: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

const STATES: [&str; 7] = [
    "all",
    "due",
    "in_flight",
    "scheduled",
    "retrying",
    "dead",
    "failing",
];

async fn jobs(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Query(q): Query<JobsQuery>,
) -> Response {
    let access = match access(&state, &headers, Access::Read) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let form = &q.list;
    let limit = match form.limit.as_deref().filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse() {
            Ok(l) => Some(l),
            Err(_) => {
                return error_page(
                    &state,
                    access,
                    StatusCode::BAD_REQUEST,
                    "limit: not a number",
                )
            }
        },
    };
    let params = ListParams {
        funcname: form.funcname.clone(),
        state: form.state.clone(),
        uniqkey_prefix: form.uniqkey_prefix.clone(),
        limit,
        after: form.after.clone(),
    };
    let page = match params.query(state.config.lease) {
        Ok((query, prefix, after)) => {
            admin::list_page(&state.store, &query, prefix.as_deref(), after)
                .await
                .map_err(Failure::from)
        }
        Err(f) => Err(f),
    };
    let page = match page {
        Ok(page) => page,
        Err(f) => return f.page(&state, access),
    };
    let funcname = form.funcname.as_deref().unwrap_or_default();
    let chosen = form.state.as_deref().unwrap_or("all");
    let prefix = form.uniqkey_prefix.as_deref().unwrap_or_default();
    let body = html! {
        @if let Some(n) = notice(q.done.as_deref(), q.n.as_deref().and_then(|n| n.parse().ok())) { p.notice id="notice" { (n) } }
        form method="get" action="/jobs" {
            label { "function " input type="text" name="funcname" value=(funcname); }
            " "
            label { "state "
                select name="state" {
                    @for s in STATES {
                        option value=(s) selected[s == chosen] { (s.replace('_', " ")) }
                    }
                }
            }
            " "
            label { "unique key starts with " input type="text" name="uniqkey_prefix" value=(prefix); }
            " "
            button type="submit" { "Filter" }
        }
        table id="jobs" {
            tr {
                th.name { "id" } th.name { "function" } th.name { "state" } th.name { "next run" }
                th { "failcount" } th.name { "unique key" } th { "arg bytes" } th.name { "arg" }
            }
            @for j in &page.jobs {
                tr id=(format!("job-{}-{}", j.dbid, j.jobid)) {
                    td.name { a href=(format!("/jobs/{}", j.id)) { (j.id) } }
                    td.name { (j.funcname) }
                    td.name { (j.state.as_str()) }
                    td.name { (next_run_cell(j.state, j.due_in_secs)) }
                    td { (j.failcount) }
                    td.name { (j.uniqkey.as_deref().unwrap_or("")) }
                    td { (j.arg_bytes) }
                    td.name { code { (j.arg_preview) } }
                }
            }
        }
        @if page.jobs.is_empty() { p.muted id="no-jobs" { "No jobs." } }
        @if let Some(next) = page.next {
            @let next = next.to_string();
            a id="next-page" href=(url("/jobs", &[("funcname", funcname), ("state", chosen),
                ("uniqkey_prefix", prefix), ("after", &next)])) { "Next page →" }
        }
    };
    let title = match selection(chosen) {
        Some(crate::store::Selection::All) | None => "Jobs".to_string(),
        Some(_) => format!("Jobs: {}", chosen.replace('_', " ")),
    };
    layout(&title, access, &state.keys, None, body).into_response()
}

/// What the job page was sent back with: a change refused (`refused=in_flight`).
#[derive(Debug, Default, Deserialize)]
struct JobPage {
    refused: Option<String>,
}

/// Why a change of a job was refused, from the redirect back to its page:
/// fixed wording.
fn refusal(refused: Option<&str>, lease: u32) -> Option<String> {
    match refused? {
        "in_flight" => Some(format!(
            "Not changed: this job is in flight (leased, due again within the {lease} s lease): \
             a worker may be running it. To change it anyway, open Retry or Cancel again \
             and tick \"force\"."
        )),
        _ => None,
    }
}

async fn job(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(back): Query<JobPage>,
) -> Response {
    let access = match access(&state, &headers, Access::Read) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let shown = match id.parse::<JobRef>() {
        Ok(id) => admin::show(&state.store, id, state.config.lease)
            .await
            .map_err(Failure::from),
        Err(e) => Err(Failure::from(e)),
    };
    let shown = match shown {
        Ok(s) => s,
        Err(f) => return f.page(&state, access),
    };
    let field = |name: &str| shown.job.get(name).cloned().unwrap_or_default();
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
    };
    let funcname = text(field("funcname"));
    let run_after = field("run_after").as_u64().unwrap_or_default();
    let stamp = |t: Option<u64>| t.map(date).unwrap_or_default();
    let history = shown.history.clone().unwrap_or_default();
    let body = html! {
        @if let Some(r) = refusal(back.refused.as_deref(), state.config.lease) {
            p.error id="refused" { (r) }
        }
        table id="job" {
            tr { th.name { "id" } td.name { (shown.id) } }
            tr { th.name { "function" } td.name { (funcname) } }
            tr { th.name { "state" } td.name id="state" { (shown.state.as_str()) } }
            tr { th.name id="next-run-name" { (next_run(shown.state)) }
                td.name id="next-run" { (due_in(shown.due_in_secs))
                @if shown.due_in_secs.is_some() { " (" (date(run_after)) ")" } } }
            tr { th.name { "failcount" } td.name { (text(field("failcount"))) } }
            tr { th.name { "flag" } td.name { (text(field("flag"))) } }
            tr { th.name { "unique key" } td.name { (text(field("uniqkey"))) } }
            tr { th.name { "arg bytes" } td.name { (shown.arg_bytes) } }
            tr { th.name { "created" } td.name { (stamp(history.created_at)) } }
            tr { th.name { "last attempted" } td.name { (stamp(history.attempted_at)) } }
            tr { th.name { "last failed" } td.name { (stamp(history.failed_at)) } }
            tr { th.name { "last error" } td.name id="last-error" { (history.last_error.as_deref().unwrap_or("")) } }
            @if let Some(u) = &shown.unsendable {
                tr { th.name { "unsendable" } td.name { (u) } }
            }
        }
        @if shown.history.is_none() { p.muted { "This table has no history columns." } }
        @if access == Access::Write {
            p {
                a id="retry" href=(url("/confirm", &[("action", "retry"), ("id", &shown.id),
                    ("funcname", &funcname)])) { "Retry" }
                " · "
                a id="cancel" href=(url("/confirm", &[("action", "cancel"), ("id", &shown.id),
                    ("funcname", &funcname)])) { "Cancel (delete)" }
            }
        }
        h2 { "Job JSON (what its worker receives)" }
        @let (json, cut) = shown_json(&shown.job_json);
        pre id="job-json" { (json) }
        @if cut { p.muted { "(the first " (JSON_SHOWN) " bytes of " (shown.job_json.len()) ")" } }
    };
    layout(
        &format!("Job {}", shown.id),
        access,
        &state.keys,
        None,
        body,
    )
    .into_response()
}

/// Bytes of a job's JSON its page shows: an arg may be 16 MiB.
const JSON_SHOWN: usize = 64 * 1024;

/// `json` cut to [`JSON_SHOWN`] bytes (at a character), and whether it was.
fn shown_json(json: &str) -> (&str, bool) {
    if json.len() <= JSON_SHOWN {
        return (json, false);
    }
    let mut end = JSON_SHOWN;
    while !json.is_char_boundary(end) {
        end -= 1;
    }
    (&json[..end], true)
}

fn login_form(state: &State, wrong: bool) -> Markup {
    let body = html! {
        @if !state.keys.has_token() {
            p { "No token is configured: this dashboard is read-only, and open on loopback." }
        } @else {
            @if wrong { p.error id="error" { "Wrong token." } }
            form method="post" action="/login" {
                label { "Token " input id="token" type="password" name="token" autocomplete="off"; }
                " "
                button id="login" type="submit" { "Log in" }
            }
        }
    };
    layout("Log in", Access::Denied, &state.keys, None, body)
}

async fn login_page(Shared(state): Shared<Arc<State>>) -> Markup {
    login_form(&state, false)
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
}

async fn login(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Form(form): Form<Login>,
) -> Response {
    if state.keys.login(&form.token) {
        let mut response = Redirect::to("/").into_response();
        let cookie = state.keys.open_session(state.https(&headers));
        response.headers_mut().insert(
            header::SET_COOKIE,
            cookie.parse().expect("a cookie is a header value"),
        );
        response
    } else {
        // Counted, and logged once per address, by the limiter (`super::guard`).
        (StatusCode::UNAUTHORIZED, login_form(&state, true)).into_response()
    }
}

#[derive(Debug, Deserialize)]
struct Csrf {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Form(form): Form<Csrf>,
) -> Response {
    if !state.keys.csrf_ok(&form.csrf) {
        return error_page(
            &state,
            Access::Denied,
            StatusCode::FORBIDDEN,
            "wrong CSRF token",
        );
    }
    state.keys.close_session(&headers);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        Keys::logout_cookie()
            .parse()
            .expect("a cookie is a header value"),
    );
    response
}

/// The pages' routes, each request bounded in size and time.
pub(crate) fn routes(limit: usize, timeout: std::time::Duration) -> Router<Arc<State>> {
    Router::new()
        .route("/", get(overview::overview))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/confirm", get(confirm::confirm))
        .route("/act", post(confirm::act))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_spans_read_as_people_write_them() {
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(1_790_000_000), "2026-09-21 14:13:20 UTC");
        assert_eq!(span(45), "45 s");
        assert_eq!(span(3 * 3600 + 300), "3 h 5 min");
    }

    #[test]
    fn a_long_job_json_is_cut_at_a_character() {
        let long = "é".repeat(JSON_SHOWN);
        let (shown, cut) = shown_json(&long);
        assert!(cut && shown.len() <= JSON_SHOWN && shown.len() > JSON_SHOWN - 2);
        assert_eq!(shown_json("{}"), ("{}", false));
    }

    #[test]
    fn a_notice_names_only_known_changes() {
        assert_eq!(
            notice(Some("retried:1:5"), None).as_deref(),
            Some("Retried job 1:5.")
        );
        assert_eq!(
            notice(Some("purged_dead:resize"), Some(5)).as_deref(),
            Some("Purged 5 dead jobs of resize.")
        );
        assert_eq!(notice(Some("<script>:x"), None), None);
        // The subject is one our changes name, not a sentence.
        assert_eq!(notice(Some("paused:Call 555-0100 now"), None), None);
        assert_eq!(notice(Some("retried:resize"), None), None);
        assert_eq!(notice(Some("cancelled:1:x"), None), None);
    }
}

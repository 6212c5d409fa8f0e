//! The HTTP JSON API under `/api/v1`: the deployment's status, paged job
//! listings, one job, storing jobs (the fields and limits of `inject_jobs`),
//! and the operator's changes, each on the admin function `garivini`'s
//! commands call. Every error is JSON `{"code": ..., "error": ...}` whose
//! `code` is stable (see [`ApiError`]); the OpenAPI document at
//! `/api/v1/openapi.json` is generated from these handlers' types.
//!
//! Strict: a query parameter, body field or body an endpoint does not
//! take is refused before anything happens (`strict`). Every change goes
//! one way, [`strict::Change::apply`]: made, the shared status dropped,
//! logged with its rows and the caller's address.

mod doc;
mod failure;
mod strict;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::Access;
use super::State;
use crate::admin::{self, Cursor, Guard, ListedJob, PauseReport, Shown, Status};
use crate::job::{Flag, JobRef};
use crate::store::{ListQuery, Selection};
pub use doc::{ApiDoc, CreatedAnswer, DbReadiness, JobRequest, NewJobRequest, Readiness};
use doc::{DbFailed, ReadOnly, Refused};
pub use failure::ApiError;
pub(crate) use failure::Failure;
use failure::{json_errors, not_found};
use strict::{Change, NoBody, Nothing, Params, Reader};

type Answer<T> = Result<T, Failure>;

/// Refuses a request whose access is short of `need`.
pub(crate) fn require(have: Access, need: Access, has_token: bool) -> Answer<()> {
    match (need, have) {
        (_, Access::Denied) => Err(Failure::unauthorized()),
        (Access::Write, Access::Read) if !has_token => Err(Failure::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "no token configured: the web role is read-only",
        )),
        (Access::Write, Access::Read) => Err(Failure::unauthorized()),
        _ => Ok(()),
    }
}

fn allow(state: &State, headers: &HeaderMap, need: Access) -> Answer<()> {
    let have = state.keys.api_access(headers);
    require(have, need, state.keys.has_token())
}

/// The filters and the page of a job listing (the API's query and the
/// job list page's form alike). Empty values count as not given.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this function's jobs.
    pub funcname: Option<String>,
    /// `all` (default), `due`, `in_flight`, `scheduled`, `retrying`,
    /// `dead` or `failing`.
    pub state: Option<String>,
    /// Only jobs whose unique key starts with this.
    pub uniqkey_prefix: Option<String>,
    /// Jobs per page, 1 to 10000 (default 50).
    pub limit: Option<usize>,
    /// The `next` of the page before.
    pub after: Option<String>,
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// A state's name as the API and the pages write it.
pub(crate) fn selection(name: &str) -> Option<Selection> {
    Some(match name {
        "all" => Selection::All,
        "due" => Selection::Due,
        "in_flight" => Selection::InFlight,
        "scheduled" => Selection::Scheduled,
        "retrying" => Selection::Retrying,
        "dead" => Selection::Dead,
        "failing" => Selection::Failing,
        _ => return None,
    })
}

impl ListParams {
    /// The admin listing these ask for, for a lease window of `lease`.
    pub fn query(&self, lease: u32) -> Answer<(ListQuery, Option<String>, Option<Cursor>)> {
        let bad = |m: String| Failure::new(StatusCode::BAD_REQUEST, "bad_request", m);
        let selection = match given(&self.state) {
            None => Selection::All,
            Some(s) => selection(s).ok_or_else(|| bad(format!("unknown state {s:?}")))?,
        };
        let after = given(&self.after)
            .map(str::parse::<Cursor>)
            .transpose()
            .map_err(Failure::from)?;
        let query = ListQuery {
            funcname: given(&self.funcname).map(str::to_string),
            selection,
            lease,
            limit: self.limit.unwrap_or(admin::DEFAULT_LIST_LIMIT),
        };
        query.validate()?;
        Ok((
            query,
            given(&self.uniqkey_prefix).map(str::to_string),
            after,
        ))
    }
}

/// One page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// The jobs, soonest due first.
    pub jobs: Vec<ListedJob>,
    /// Give it as `after` for the next page; `null` on the last.
    pub next: Option<String>,
}

/// A stored job's id.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct Created {
    /// Row id.
    pub jobid: u64,
    /// Database id.
    pub dbid: u32,
}

/// What a change by id changed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Changed {
    /// The ids, `DBID:JOBID`.
    pub jobs: Vec<String>,
}

/// What a bulk change of a function's dead jobs changed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Bulk {
    /// The function.
    pub funcname: String,
    /// Jobs changed over every database.
    pub count: u64,
    /// Per database id, jobs changed there.
    pub databases: Vec<DbCount>,
}

/// Jobs changed in one database.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DbCount {
    /// Database id.
    pub dbid: u32,
    /// Jobs changed.
    pub count: u64,
}

/// How a retry by id treats what it meets.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RetryParams {
    /// Also retry a job in flight (a worker may be running it, and it may
    /// then run twice).
    #[serde(default)]
    pub force: bool,
    /// Set its failcount back to 0, so that one more failure does not
    /// make a dead job dead again.
    #[serde(default)]
    pub reset_failcount: bool,
}

/// How a cancel by id treats what it meets.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CancelParams {
    /// Also delete a job in flight (deleting does not stop a worker
    /// running it).
    #[serde(default)]
    pub force: bool,
}

/// How a retry of a function's dead jobs treats them.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RetryDeadParams {
    /// Set their failcount back to 0.
    #[serde(default)]
    pub reset_failcount: bool,
}

impl strict::Rows for Changed {
    fn rows(&self) -> String {
        self.jobs.join(",")
    }
}

impl strict::Rows for Bulk {
    fn rows(&self) -> String {
        let per_db: Vec<String> = self
            .databases
            .iter()
            .map(|d| format!("database {}: {}", d.dbid, d.count))
            .collect();
        format!("{} ({})", self.count, per_db.join(", "))
    }
}

impl strict::Rows for PauseReport {
    fn rows(&self) -> String {
        format!(
            "databases changed {:?}, already so {:?}, without the table {:?}",
            self.changed, self.unchanged, self.without_table
        )
    }
}

/// Stored jobs, answered 201: one id for one job, an array for an array.
pub(crate) struct Stored {
    created: Vec<Created>,
    array: bool,
}

impl strict::Rows for Stored {
    fn rows(&self) -> String {
        let ids: Vec<String> = self
            .created
            .iter()
            .map(|c| format!("{}:{}", c.dbid, c.jobid))
            .collect();
        ids.join(",")
    }
}

impl IntoResponse for Stored {
    fn into_response(self) -> Response {
        let body = if self.array {
            Json(self.created).into_response()
        } else {
            Json(self.created[0]).into_response()
        };
        (StatusCode::CREATED, body).into_response()
    }
}

/// The deployment: each database's jobs per function and state, each
/// gearmand's queues, functions without a worker, paused functions.
#[utoipa::path(get, path = "/api/v1/status", tag = "status",
    responses((status = 200, body = Status,
        description = "the shared status report (read at most once per few seconds); \
            a database or gearmand that did not answer has its `error` set"), Refused))]
async fn status(
    _: Reader,
    Shared(state): Shared<Arc<State>>,
    Params(Nothing {}): Params<Nothing>,
) -> Response {
    let report = state.status().await;
    Json(report.status.as_ref()).into_response()
}

/// A page of jobs, soonest due first; `next` gives the following page
/// (keyset paging: a deep page costs what the first does).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, body = JobPage, description = "one page of jobs and the key of the next"),
        Refused, DbFailed))]
async fn list_jobs(
    _: Reader,
    Shared(state): Shared<Arc<State>>,
    Params(params): Params<ListParams>,
) -> Answer<Json<JobPage>> {
    let (query, prefix, after) = params.query(state.config.lease)?;
    let page = admin::list_page(&state.store, &query, prefix.as_deref(), after).await?;
    Ok(Json(JobPage {
        jobs: page.jobs,
        next: page.next.map(|c| c.to_string()),
    }))
}

fn job_id(id: &str) -> Answer<JobRef> {
    Ok(id.parse::<JobRef>()?)
}

/// One job: its row, its job JSON, its state, next run and last error.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "DBID:JOBID, e.g. 1:42", pattern = r"^[1-9][0-9]*:[0-9]+$")),
    responses((status = 200, body = Shown, description = "the job"),
        (status = 404, body = ApiError, description = "`unknown_job`: no such row (completed, \
            cancelled or never stored); `unknown_database`: no database of that id"),
        Refused, DbFailed))]
async fn show_job(
    _: Reader,
    Shared(state): Shared<Arc<State>>,
    Path(id): Path<String>,
    Params(Nothing {}): Params<Nothing>,
) -> Answer<Json<Shown>> {
    Ok(Json(
        admin::show(&state.store, job_id(&id)?, state.config.lease).await?,
    ))
}

/// Stores one job (a JSON object) or several (an array of at most the
/// Injector's max batch), with the fields and limits of `inject_jobs`:
/// `funcname`, `arg`, `unique` or `uniqkey`, `run_after` (seconds from
/// now), `coalesce`, `priority`; any other field is refused. Answers 201
/// with `{jobid, dbid}` (an array for an array) only once every row is
/// committed; 400 with the reason, and nothing stored, for a bad request.
/// The rows are throughput-mode rows (flag `shim`): a QueueRunner
/// dispatches them and their worker completes them, as with
/// `Client::insert_jobs`.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body(content = JobRequest, description = "a job object or an array of them"),
    responses((status = 201, body = CreatedAnswer, description = "stored and committed: one \
            Created, or an array for an array"),
        (status = 413, body = ApiError, description = "`body_too_large`: the body is over the \
            web role's limit; nothing was stored"),
        Refused, ReadOnly, DbFailed))]
async fn post_jobs(
    change: Change,
    Params(Nothing {}): Params<Nothing>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Stored> {
    let body = body.map_err(strict::unreadable)?;
    strict::check_jobs(&body)?;
    let mut request = crate::injector::parse_request(&body, change.state.config.max_batch)?;
    for job in &mut request.jobs {
        job.flag = Flag::Shim;
    }
    let mut funcnames: Vec<&str> = request.jobs.iter().map(|j| j.funcname.as_str()).collect();
    funcnames.sort_unstable();
    funcnames.dedup();
    change
        .apply("store", &funcnames.join(","), async {
            let refs = change.state.client.insert_jobs(&request.jobs).await?;
            Ok(Stored {
                created: refs
                    .iter()
                    .map(|r| Created {
                        jobid: r.jobid,
                        dbid: r.dbid,
                    })
                    .collect(),
                array: request.array,
            })
        })
        .await
}

fn ids(refs: Vec<JobRef>) -> Changed {
    Changed {
        jobs: refs.iter().map(ToString::to_string).collect(),
    }
}

/// Makes a job due now (its failcount kept unless `reset_failcount`).
/// Refused (409) while it is in flight unless `force`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "DBID:JOBID", pattern = r"^[1-9][0-9]*:[0-9]+$"), RetryParams),
    responses((status = 200, body = Changed, description = "the job is due now"),
        (status = 404, body = ApiError, description = "`unknown_job`: no such row (completed, \
            cancelled or never stored); `unknown_database`: no database of that id"),
        (status = 409, body = ApiError, description = "`job_in_flight`: a worker may be running \
            it (`force` retries it anyway); nothing was changed"),
        Refused, ReadOnly, DbFailed))]
async fn retry_job(
    change: Change,
    Path(id): Path<String>,
    Params(params): Params<RetryParams>,
    _: NoBody,
) -> Answer<Json<Changed>> {
    let id = job_id(&id)?;
    let guard = Guard {
        lease: change.state.config.lease,
        force: params.force,
    };
    let store = &change.state.store;
    change
        .apply("retry", &id.to_string(), async {
            Ok(ids(admin::retry(
                store,
                &[id],
                params.reset_failcount,
                guard,
            )
            .await?))
        })
        .await
        .map(Json)
}

/// Deletes a job (cancels it). Refused (409) while it is in flight unless
/// `force`: deleting does not stop a worker running it.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "DBID:JOBID", pattern = r"^[1-9][0-9]*:[0-9]+$"), CancelParams),
    responses((status = 200, body = Changed, description = "the job's row is deleted"),
        (status = 404, body = ApiError, description = "`unknown_job`: no such row (completed, \
            cancelled or never stored); `unknown_database`: no database of that id"),
        (status = 409, body = ApiError, description = "`job_in_flight`: a worker may be running \
            it (`force` deletes it anyway, without stopping the worker); nothing was changed"),
        Refused, ReadOnly, DbFailed))]
async fn cancel_job(
    change: Change,
    Path(id): Path<String>,
    Params(params): Params<CancelParams>,
    _: NoBody,
) -> Answer<Json<Changed>> {
    let id = job_id(&id)?;
    let guard = Guard {
        lease: change.state.config.lease,
        force: params.force,
    };
    let store = &change.state.store;
    change
        .apply("cancel", &id.to_string(), async {
            Ok(ids(admin::cancel(store, &[id], guard).await?))
        })
        .await
        .map(Json)
}

fn bulk(funcname: &str, per_db: Vec<(u32, u64)>) -> Bulk {
    Bulk {
        funcname: funcname.to_string(),
        count: per_db.iter().map(|(_, n)| n).sum(),
        databases: per_db
            .into_iter()
            .map(|(dbid, count)| DbCount { dbid, count })
            .collect(),
    }
}

/// A function name from the path, refused (400 `invalid_funcname`) before
/// anything is read when no job could have it.
fn funcname(name: &str) -> Answer<&str> {
    crate::job::check_funcname(name)?;
    Ok(name)
}

/// Answers a pause or resume that did not reach every database 503
/// `database_unavailable`, naming each one and what was done elsewhere.
/// (Every error it collects is a database call's, the name having been
/// checked: to be asked again once it answers.)
fn everywhere(report: PauseReport, done: &str) -> Answer<PauseReport> {
    if report.errors.is_empty() {
        return Ok(report);
    }
    let elsewhere = match report.changed.is_empty() && report.unchanged.is_empty() {
        true => "in no database".to_string(),
        false => format!(
            "in databases {:?} (already so in {:?})",
            report.changed, report.unchanged
        ),
    };
    Err(Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        format!(
            "{}; {} {done} {elsewhere}; ask again once it answers",
            report.errors.join("; "),
            report.funcname
        ),
    ))
}

/// Makes every dead job of a function due now, in every database.
#[utoipa::path(post, path = "/api/v1/functions/{funcname}/retry-dead", tag = "functions",
    params(("funcname" = String, Path, description = "the function", min_length = 1, max_length = 200),
        RetryDeadParams),
    responses((status = 200, body = Bulk, description = "its dead jobs are due now: how many, \
            per database"),
        Refused, ReadOnly, DbFailed))]
async fn retry_dead(
    change: Change,
    Path(name): Path<String>,
    Params(params): Params<RetryDeadParams>,
    _: NoBody,
) -> Answer<Json<Bulk>> {
    let f = funcname(&name)?;
    let store = &change.state.store;
    change
        .apply("retry_dead", f, async {
            Ok(bulk(
                f,
                admin::retry_dead(store, f, params.reset_failcount).await?,
            ))
        })
        .await
        .map(Json)
}

/// Deletes every dead job of a function, in every database.
#[utoipa::path(post, path = "/api/v1/functions/{funcname}/purge-dead", tag = "functions",
    params(("funcname" = String, Path, description = "the function", min_length = 1, max_length = 200)),
    responses((status = 200, body = Bulk, description = "its dead jobs are deleted: how many, \
            per database"),
        Refused, ReadOnly, DbFailed))]
async fn purge_dead(
    change: Change,
    Path(name): Path<String>,
    Params(Nothing {}): Params<Nothing>,
    _: NoBody,
) -> Answer<Json<Bulk>> {
    let f = funcname(&name)?;
    let store = &change.state.store;
    change
        .apply("purge_dead", f, async {
            Ok(bulk(f, admin::purge_dead(store, f).await?))
        })
        .await
        .map(Json)
}

/// Pauses a function in every database: its jobs wait in the table.
#[utoipa::path(post, path = "/api/v1/functions/{funcname}/pause", tag = "functions",
    params(("funcname" = String, Path, description = "the function", min_length = 1, max_length = 200)),
    responses((status = 200, body = PauseReport, description = "paused in every database \
            (`without_table`: a database without the `garivini_paused` table, where it cannot be)"),
        Refused, ReadOnly, DbFailed))]
async fn pause(
    change: Change,
    Path(name): Path<String>,
    Params(Nothing {}): Params<Nothing>,
    _: NoBody,
) -> Answer<Json<PauseReport>> {
    let f = funcname(&name)?;
    let store = &change.state.store;
    change
        .apply("pause", f, async {
            everywhere(admin::pause(store, f).await?, "paused")
        })
        .await
        .map(Json)
}

/// Resumes a paused function in every database.
#[utoipa::path(post, path = "/api/v1/functions/{funcname}/resume", tag = "functions",
    params(("funcname" = String, Path, description = "the function", min_length = 1, max_length = 200)),
    responses((status = 200, body = PauseReport, description = "resumed in every database"),
        Refused, ReadOnly, DbFailed))]
async fn resume(
    change: Change,
    Path(name): Path<String>,
    Params(Nothing {}): Params<Nothing>,
    _: NoBody,
) -> Answer<Json<PauseReport>> {
    let f = funcname(&name)?;
    let store = &change.state.store;
    change
        .apply("resume", f, async {
            everywhere(admin::resume(store, f).await?, "resumed")
        })
        .await
        .map(Json)
}

/// This document (no token).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", security(()),
    responses((status = 200, body = serde_json::Value, description = "the OpenAPI document of \
            this API and the health checks"),
        (status = 400, body = ApiError, description = "`unknown_parameter`: this endpoint takes \
            no query parameter")))]
async fn openapi(Params(Nothing {}): Params<Nothing>) -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The API's routes, under `/api/v1`, each answer bounded in size and
/// time by `limit` and `timeout`.
pub(crate) fn routes(limit: usize, timeout: std::time::Duration) -> Router<Arc<State>> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/status", get(status))
        .route("/jobs", get(list_jobs).post(post_jobs))
        .route("/jobs/{id}", get(show_job).delete(cancel_job))
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/functions/{funcname}/retry-dead", post(retry_dead))
        .route("/functions/{funcname}/purge-dead", post(purge_dead))
        .route("/functions/{funcname}/pause", post(pause))
        .route("/functions/{funcname}/resume", post(resume))
        .fallback(not_found)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
}

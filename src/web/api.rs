//! The HTTP JSON API under `/api/v1`: the deployment's status, paged job
//! listings, one job, storing jobs (the fields and limits of `inject_jobs`),
//! and the operator's changes, each on the admin function `garivini`'s
//! commands call. Every error is JSON `{"code": ..., "error": ...}` whose
//! `code` is stable (see [`ApiError`]); the OpenAPI document at
//! `/api/v1/openapi.json` is generated from these handlers' types.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State as Shared};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::Access;
use super::State;
use crate::admin::{self, Cursor, Guard, ListedJob, PauseReport, Shown, Status};
use crate::error::Error;
use crate::job::{Flag, JobRef};
use crate::store::{ListQuery, Selection};

/// Every error the API answers: `code` is one of `unauthorized`,
/// `read_only`, `bad_request`, `invalid_job`, `invalid_job_id`,
/// `unknown_job`, `unknown_database`, `job_in_flight`, `not_found`,
/// `method_not_allowed`, `body_too_large`, `timeout`,
/// `database_unavailable`, `internal`; `error` says why, for people.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable, for programs.
    pub code: String,
    /// One line, for people.
    pub error: String,
}

/// An error answer: its status, its code, its line.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    fn unauthorized() -> Failure {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError {
            code: self.code.to_string(),
            error: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        let (status, code) = match &err {
            Error::InvalidJobId { .. } => (StatusCode::BAD_REQUEST, "invalid_job_id"),
            Error::UnknownJobs { .. } => (StatusCode::NOT_FOUND, "unknown_job"),
            Error::UnknownDb { .. } => (StatusCode::NOT_FOUND, "unknown_database"),
            Error::JobsInFlight { .. } => (StatusCode::CONFLICT, "job_in_flight"),
            Error::InvalidRequest { .. }
            | Error::EmptyFuncname
            | Error::FuncnameTooLong { .. }
            | Error::FuncnameHasNul { .. }
            | Error::FuncnameHasBadChar { .. }
            | Error::UniqkeyTooLong { .. }
            | Error::ArgTooLarge { .. }
            | Error::DelayTooLong { .. }
            | Error::InvalidPriority { .. }
            | Error::JobOverPacketLimit { .. }
            | Error::NoPriorityColumn { .. } => (StatusCode::BAD_REQUEST, "invalid_job"),
            Error::InvalidConfig { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            e if e.is_connection_fault() => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::warn!(%err, "web api request failed");
        }
        Failure::new(status, code, err.to_string())
    }
}

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

/// What `POST /api/v1/jobs` takes (as `inject_jobs`): one job, or an
/// array of them. Read by the Injector's own parser; this type is the
/// document's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum JobRequest {
    /// One job.
    One(NewJobRequest),
    /// Several, stored all or none.
    Many(Vec<NewJobRequest>),
}

/// One job to store.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct NewJobRequest {
    /// The worker's Gearman function: 1 to 200 bytes, no whitespace or
    /// control characters.
    #[schema(min_length = 1, max_length = 200)]
    pub funcname: String,
    /// The payload (at most 16 MiB - 1).
    pub arg: Option<String>,
    /// Dedup key (also `uniqkey`): a job whose function and key have a row
    /// answers that row.
    #[schema(max_length = 255)]
    pub unique: Option<String>,
    /// Seconds from now until it is due (at most ten years).
    #[schema(maximum = 315_360_000)]
    pub run_after: Option<u32>,
    /// Reserved.
    pub coalesce: Option<String>,
    /// `high`, `normal` (default) or `low`.
    pub priority: Option<String>,
}

/// A stored job's id.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct Created {
    /// Row id.
    pub jobid: u64,
    /// Database id.
    pub dbid: u32,
}

/// What `POST /api/v1/jobs` answers: one id for one job, an array for an
/// array (the document's; the handler builds the JSON).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum CreatedAnswer {
    /// For one job.
    One(Created),
    /// For an array, in its order.
    Many(Vec<Created>),
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

/// How a change by id treats what it meets.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ChangeParams {
    /// Also change a job in flight (a worker may be running it).
    #[serde(default)]
    pub force: bool,
    /// Retry: set its failcount back to 0.
    #[serde(default)]
    pub reset_failcount: bool,
}

/// The deployment: each database's jobs per function and state, each
/// gearmand's queues, functions without a worker, paused functions.
#[utoipa::path(get, path = "/api/v1/status", tag = "status",
    responses((status = 200, body = Status), (status = 401, body = ApiError)))]
async fn status(Shared(state): Shared<Arc<State>>, headers: HeaderMap) -> Answer<Response> {
    allow(&state, &headers, Access::Read)?;
    let report = state.status().await;
    Ok(Json(report.status.as_ref()).into_response())
}

/// A page of jobs, soonest due first; `next` gives the following page
/// (keyset paging: a deep page costs what the first does).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, body = JobPage), (status = 400, body = ApiError),
        (status = 401, body = ApiError)))]
async fn list_jobs(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Answer<Json<JobPage>> {
    allow(&state, &headers, Access::Read)?;
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
    responses((status = 200, body = Shown), (status = 400, body = ApiError),
        (status = 404, body = ApiError), (status = 401, body = ApiError)))]
async fn show_job(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Json<Shown>> {
    allow(&state, &headers, Access::Read)?;
    Ok(Json(
        admin::show(&state.store, job_id(&id)?, state.config.lease).await?,
    ))
}

/// Stores one job (a JSON object) or several (an array of at most the
/// Injector's max batch), with the fields and limits of `inject_jobs`:
/// `funcname`, `arg`, `unique` or `uniqkey`, `run_after` (seconds from
/// now), `coalesce`, `priority`. Answers 201 with `{jobid, dbid}` (an
/// array for an array) only once every row is committed; 400 with the
/// reason, and nothing stored, for a bad request. The rows are
/// throughput-mode rows (flag `shim`): a QueueRunner dispatches them and
/// their worker completes them, as with `Client::insert_jobs`.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body(content = JobRequest, description = "a job object or an array of them"),
    responses((status = 201, body = CreatedAnswer, description = "one Created, or an array for an array"),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 413, body = ApiError)))]
async fn post_jobs(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Response> {
    allow(&state, &headers, Access::Write)?;
    let body = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_request"
        };
        Failure::new(status, code, e.body_text())
    })?;
    let mut request = crate::injector::parse_request(&body, state.config.max_batch)?;
    for job in &mut request.jobs {
        job.flag = Flag::Shim;
    }
    let refs = state.client.insert_jobs(&request.jobs).await?;
    state.forget_status().await;
    let created: Vec<Created> = refs
        .iter()
        .map(|r| Created {
            jobid: r.jobid,
            dbid: r.dbid,
        })
        .collect();
    let body = if request.array {
        Json(created).into_response()
    } else {
        Json(created[0]).into_response()
    };
    Ok((StatusCode::CREATED, body).into_response())
}

fn ids(refs: Vec<JobRef>) -> Changed {
    Changed {
        jobs: refs.iter().map(ToString::to_string).collect(),
    }
}

/// Makes a job due now (its failcount kept unless `reset_failcount`).
/// Refused (409) while it is in flight unless `force`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "DBID:JOBID", pattern = r"^[1-9][0-9]*:[0-9]+$"), ChangeParams),
    responses((status = 200, body = Changed), (status = 400, body = ApiError),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 401, body = ApiError)))]
async fn retry_job(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<ChangeParams>,
) -> Answer<Json<Changed>> {
    allow(&state, &headers, Access::Write)?;
    let guard = Guard {
        lease: state.config.lease,
        force: params.force,
    };
    let done = admin::retry(&state.store, &[job_id(&id)?], params.reset_failcount, guard).await?;
    state.forget_status().await;
    Ok(Json(ids(done)))
}

/// Deletes a job (cancels it). Refused (409) while it is in flight unless
/// `force`: deleting does not stop a worker running it.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "DBID:JOBID", pattern = r"^[1-9][0-9]*:[0-9]+$"), ChangeParams),
    responses((status = 200, body = Changed), (status = 400, body = ApiError),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 401, body = ApiError)))]
async fn cancel_job(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<ChangeParams>,
) -> Answer<Json<Changed>> {
    allow(&state, &headers, Access::Write)?;
    let guard = Guard {
        lease: state.config.lease,
        force: params.force,
    };
    let done = admin::cancel(&state.store, &[job_id(&id)?], guard).await?;
    state.forget_status().await;
    Ok(Json(ids(done)))
}

fn bulk(funcname: String, per_db: Vec<(u32, u64)>) -> Bulk {
    Bulk {
        funcname,
        count: per_db.iter().map(|(_, n)| n).sum(),
        databases: per_db
            .into_iter()
            .map(|(dbid, count)| DbCount { dbid, count })
            .collect(),
    }
}

/// Makes every dead job of a function due now, in every database.
#[utoipa::path(post, path = "/api/v1/functions/{funcname}/retry-dead", tag = "functions",
    params(("funcname" = String, Path), ChangeParams),
    responses((status = 200, body = Bulk), (status = 400, body = ApiError),
        (status = 401, body = ApiError)))]
async fn retry_dead(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Path(funcname): Path<String>,
    Query(params): Query<ChangeParams>,
) -> Answer<Json<Bulk>> {
    allow(&state, &headers, Access::Write)?;
    let per_db = admin::retry_dead(&state.store, &funcname, params.reset_failcount).await?;
    state.forget_status().await;
    Ok(Json(bulk(funcname, per_db)))
}

/// Deletes every dead job of a function, in every database.
#[utoipa::path(post, path = "/api/v1/functions/{funcname}/purge-dead", tag = "functions",
    params(("funcname" = String, Path)),
    responses((status = 200, body = Bulk), (status = 400, body = ApiError),
        (status = 401, body = ApiError)))]
async fn purge_dead(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Path(funcname): Path<String>,
) -> Answer<Json<Bulk>> {
    allow(&state, &headers, Access::Write)?;
    let per_db = admin::purge_dead(&state.store, &funcname).await?;
    state.forget_status().await;
    Ok(Json(bulk(funcname, per_db)))
}

/// Pauses a function in every database: its jobs wait in the table.
#[utoipa::path(post, path = "/api/v1/functions/{funcname}/pause", tag = "functions",
    params(("funcname" = String, Path)),
    responses((status = 200, body = PauseReport), (status = 400, body = ApiError),
        (status = 401, body = ApiError)))]
async fn pause(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Path(funcname): Path<String>,
) -> Answer<Json<PauseReport>> {
    allow(&state, &headers, Access::Write)?;
    let report = admin::pause(&state.store, &funcname).await?;
    state.forget_status().await;
    Ok(Json(report))
}

/// Resumes a paused function in every database.
#[utoipa::path(post, path = "/api/v1/functions/{funcname}/resume", tag = "functions",
    params(("funcname" = String, Path)),
    responses((status = 200, body = PauseReport), (status = 400, body = ApiError),
        (status = 401, body = ApiError)))]
async fn resume(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Path(funcname): Path<String>,
) -> Answer<Json<PauseReport>> {
    allow(&state, &headers, Access::Write)?;
    let report = admin::resume(&state.store, &funcname).await?;
    state.forget_status().await;
    Ok(Json(report))
}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Garivini", description = "Garivini's HTTP JSON API: status, jobs, functions."),
    paths(status, list_jobs, show_job, post_jobs, retry_job, cancel_job, retry_dead,
        purge_dead, pause, resume),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

/// Gives every error answer that is not ours yet (a refused query, an
/// unknown method, a timeout, a body over the limit) the JSON shape with
/// a code.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    Failure::new(status, code, message).into_response()
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

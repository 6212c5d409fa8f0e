//! The API's OpenAPI document (`/api/v1/openapi.json`): the handlers'
//! paths, the answers they share (each with what it means), the health
//! checks at the root, and the types only the document reads (a job
//! request as the Injector's parser takes it, the readiness answer).

use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, OpenApi, ToSchema};

use super::{ApiError, Created};

/// Answers any endpoint of the API may give before it acts.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Refused {
    /// Refused, nothing changed. `code`: `unknown_parameter` (a query
    /// parameter, body field or body the endpoint does not take, named in
    /// `error`), `invalid_funcname`, `invalid_job_id`, `invalid_job` or
    /// `bad_request` (a value out of range or of the wrong type).
    #[response(status = 400)]
    BadRequest(ApiError),
    /// `unauthorized`: the bearer token is missing or wrong (and reads
    /// are not public).
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ApiError),
    /// `timeout`: the request (its body's upload included) took longer
    /// than the web role's limit (30 s). A change already under way may
    /// have been made: read before asking again.
    #[response(status = 408)]
    Timeout(ApiError),
    /// `too_many_requests`: this address sent too many wrong bearer tokens
    /// (10 a minute); every request with a token is refused until
    /// `Retry-After` seconds have passed.
    #[response(status = 429, headers(("Retry-After" = u32, description = "seconds to wait")))]
    TooManyRequests(ApiError),
}

/// Answers of an endpoint that reads or changes the databases.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum DbFailed {
    /// `internal`: a database refused a statement (not an outage), or a
    /// fault of ours; `error` says which.
    #[response(status = 500)]
    Internal(ApiError),
    /// `database_unavailable`: a database did not answer (down, cut off,
    /// timed out); `error` names it. The change was not made there; one
    /// that reaches several databases keeps what it made in the others.
    /// Asking again once it answers is safe, but for storing jobs: a job
    /// without a `unique` key whose commit was cut off may be stored
    /// twice.
    #[response(status = 503)]
    Unavailable(ApiError),
}

/// The answer of a change without write access.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum ReadOnly {
    /// `read_only`: no token is configured, so the web role takes no
    /// changes.
    #[response(status = 403)]
    Forbidden(ApiError),
}

/// What `POST /api/v1/jobs` takes (as `inject_jobs`): one job, or an
/// array of them. Read by the Injector's own parser; this type is the
/// document's, and its fields the only ones taken.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum JobRequest {
    /// One job.
    One(NewJobRequest),
    /// Several, stored all or none.
    Many(Vec<NewJobRequest>),
}

/// One job to store. A field not listed here is refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NewJobRequest {
    /// The worker's Gearman function: 1 to 200 bytes, no whitespace or
    /// control characters.
    #[schema(min_length = 1, max_length = 200)]
    pub funcname: String,
    /// The payload (at most 16 MiB - 1).
    pub arg: Option<String>,
    /// Dedup key: a job whose function and key have a row answers that
    /// row.
    #[schema(max_length = 255)]
    pub unique: Option<String>,
    /// The same as `unique` (the table's name for it); taken first when
    /// both are given.
    #[schema(max_length = 255)]
    pub uniqkey: Option<String>,
    /// Seconds from now until it is due (at most ten years).
    #[schema(maximum = 315_360_000)]
    pub run_after: Option<u32>,
    /// Reserved.
    #[schema(max_length = 255)]
    pub coalesce: Option<String>,
    /// `high`, `normal` (default) or `low`.
    pub priority: Option<String>,
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

/// What `/readyz` answers (the document's; the handler builds the JSON).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    /// Whether every database answers.
    pub ready: bool,
    /// Each database, in id order.
    pub databases: Vec<DbReadiness>,
}

/// One database's answer to `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DbReadiness {
    /// Database id.
    pub dbid: u32,
    /// Whether it answered.
    pub ok: bool,
    /// Why not, when it did not: its last fault, without its URL.
    pub error: Option<String>,
}

/// The process is up (served at the root, not under `/api/v1`; no token).
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, body = String, content_type = "text/plain",
        description = "`ok`: the process is up and serving", example = "ok\n")))]
#[allow(dead_code)]
fn healthz() {}

/// Whether every database answers (served at the root, not under
/// `/api/v1`; no token).
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, body = Readiness, description = "every database answers"),
        (status = 503, body = Readiness,
            description = "a database does not answer: `databases` says which, and why")))]
#[allow(dead_code)]
fn readyz() {}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Garivini", description = "Garivini's HTTP JSON API: status, jobs, functions; \
        and the health checks. Every error is JSON `{\"code\": ..., \"error\": ...}` whose `code` \
        is stable."),
    paths(super::openapi, super::status, super::list_jobs, super::show_job, super::post_jobs,
        super::retry_job, super::cancel_job, super::retry_dead, super::purge_dead, super::pause,
        super::resume, healthz, readyz),
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

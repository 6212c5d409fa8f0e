//! The API's errors: each answer's JSON `{"code": ..., "error": ...}`,
//! the one mapping of a library error to its status and code, and the
//! JSON shape given to the errors of the layers (a refused path, a
//! timeout, a body over the limit).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;

/// Every error the API answers: `code` is one of `unauthorized`,
/// `read_only`, `unknown_parameter`, `bad_request`, `invalid_funcname`,
/// `invalid_job`, `invalid_job_id`, `unknown_job`, `unknown_database`,
/// `job_in_flight`, `not_found`, `method_not_allowed`, `body_too_large`,
/// `timeout`, `database_unavailable`, `internal`; `error` says why, for
/// people.
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

    pub(super) fn unauthorized() -> Failure {
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

/// The one place a library error becomes an answer: its status and code.
impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        let (status, code) = match &err {
            Error::InvalidJobId { .. } => (StatusCode::BAD_REQUEST, "invalid_job_id"),
            Error::UnknownJobs { .. } => (StatusCode::NOT_FOUND, "unknown_job"),
            Error::UnknownDb { .. } => (StatusCode::NOT_FOUND, "unknown_database"),
            Error::JobsInFlight { .. } => (StatusCode::CONFLICT, "job_in_flight"),
            Error::EmptyFuncname
            | Error::FuncnameTooLong { .. }
            | Error::FuncnameHasNul { .. }
            | Error::FuncnameHasBadChar { .. }
            | Error::ReservedFuncname { .. } => (StatusCode::BAD_REQUEST, "invalid_funcname"),
            Error::InvalidRequest { .. }
            | Error::UniqkeyTooLong { .. }
            | Error::CoalesceTooLong { .. }
            | Error::ArgTooLarge { .. }
            | Error::DelayTooLong { .. }
            | Error::InvalidPriority { .. }
            | Error::JobOverPacketLimit { .. }
            | Error::NoPriorityColumn { .. } => (StatusCode::BAD_REQUEST, "invalid_job"),
            Error::InvalidConfig { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            // A database that did not answer (down, cut off, timed out,
            // refusing connections), told apart from one that refused the
            // statement by the error's own test.
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

pub(super) async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

/// Gives every error answer that is not ours yet (a refused query, an
/// unknown method, a timeout, a body over the limit) the JSON shape with
/// a code.
pub(super) async fn json_errors(response: Response) -> Response {
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

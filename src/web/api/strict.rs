//! What every API request passes before its handler acts: the access it
//! needs (checked first), the query parameters it takes and nothing else,
//! no body where it takes none, the fields of a job and nothing else; and
//! the one path of every change: made, the shared status dropped, logged
//! with its rows and the caller's address.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use utoipa::openapi::path::ParameterIn;
use utoipa::IntoParams;

use super::{allow, Answer, Failure};
use crate::web::auth::Access;
use crate::web::State;

/// The caller may read (the token, or public reads). Taken first, so that
/// a caller without access learns nothing else about the request.
pub(crate) struct Reader;

impl FromRequestParts<Arc<State>> for Reader {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Answer<Reader> {
        allow(state, &parts.headers, Access::Read)?;
        Ok(Reader)
    }
}

/// A change asked of the API by a caller with write access (checked
/// before anything else of the request is read), from `from`. Every write
/// handler makes its change through [`Change::apply`].
pub(crate) struct Change {
    pub state: Arc<State>,
    from: String,
}

impl FromRequestParts<Arc<State>> for Change {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Answer<Change> {
        allow(state, &parts.headers, Access::Write)?;
        Ok(Change {
            state: state.clone(),
            from: peer(parts),
        })
    }
}

/// The caller's address as the connection shows it (a reverse proxy's,
/// behind one: a forwarded header is the client's word, not evidence).
fn peer(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.to_string())
}

/// What a change changed, as its log line says it: the rows (ids, or
/// counts per database) or databases.
pub(crate) trait Rows {
    fn rows(&self) -> String;
}

impl Change {
    /// Makes the change `call` (`action` on `on`: a job id, a function),
    /// then drops the shared status report so that the next reader sees
    /// it, and logs it like a page's change, with what it changed and the
    /// caller's address; one that failed is logged with its code.
    pub async fn apply<T: Rows>(
        &self,
        action: &'static str,
        on: &str,
        call: impl Future<Output = Answer<T>>,
    ) -> Answer<T> {
        let done = call.await;
        match &done {
            Ok(changed) => {
                self.state.forget_status().await;
                tracing::info!(
                    action = %action,
                    on,
                    rows = changed.rows(),
                    from = %self.from,
                    "api: changed"
                );
            }
            Err(failure) => {
                tracing::info!(
                    action = %action,
                    on,
                    code = failure.code,
                    error = failure.message,
                    from = %self.from,
                    "api: change failed"
                );
            }
        }
        done
    }
}

/// The query of an endpoint: `T`, whose parameters (the names the OpenAPI
/// document lists, from [`IntoParams`]) are the only ones taken. Any other
/// is refused (400 `unknown_parameter`, naming it) before anything is
/// read or changed: a parameter a caller believes in but the endpoint
/// ignores (`dry_run`) must not go unnoticed.
pub(crate) struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + IntoParams + Send,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Answer<Params<T>> {
        let bad = |e: axum::extract::rejection::QueryRejection| {
            Failure::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
        };
        let known: Vec<String> = T::into_params(|| Some(ParameterIn::Query))
            .into_iter()
            .map(|p| p.name)
            .collect();
        let Query(given) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map_err(bad)?;
        if let Some((name, _)) = given.iter().find(|(name, _)| !known.contains(name)) {
            let takes = match known.is_empty() {
                true => "this endpoint takes none".to_string(),
                false => format!("this endpoint takes {}", known.join(", ")),
            };
            return Err(unknown("query parameter", name, &takes));
        }
        let Query(params) = Query::<T>::try_from_uri(&parts.uri).map_err(bad)?;
        Ok(Params(params))
    }
}

/// The query of an endpoint that takes none.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct Nothing {}

/// 400 `unknown_parameter`: `what` `name` is not one `takes` says.
fn unknown(what: &str, name: &str, takes: &str) -> Failure {
    Failure::new(
        StatusCode::BAD_REQUEST,
        "unknown_parameter",
        format!("unknown {what} {name:?}: {takes}"),
    )
}

/// A request body that could not be read: over the limit (413), or cut
/// short.
pub(crate) fn unreadable(e: BytesRejection) -> Failure {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "bad_request"
    };
    Failure::new(status, code, e.body_text())
}

/// No body, for a change that takes none: one sent (`{"dry_run": true}`)
/// is refused, as an unknown parameter is, rather than ignored.
pub(crate) struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Answer<NoBody> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(unreadable)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(NoBody);
        }
        let name = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) if !o.is_empty() => o.keys().next().cloned(),
            _ => None,
        };
        Err(match name {
            Some(name) => unknown("body field", &name, "this endpoint takes no body"),
            None => Failure::new(
                StatusCode::BAD_REQUEST,
                "unknown_parameter",
                "this endpoint takes no body",
            ),
        })
    }
}

/// The fields a job may have: those of the document's `NewJobRequest`.
static JOB_FIELDS: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    use utoipa::openapi::{schema::Schema, RefOr};
    match <super::doc::NewJobRequest as utoipa::PartialSchema>::schema() {
        RefOr::T(Schema::Object(o)) => o.properties.into_keys().collect(),
        _ => unreachable!("NewJobRequest is documented as an object"),
    }
});

/// Refuses, before the Injector's parser reads it, a job body (one job or
/// an array) with a field a job does not have (400 `unknown_parameter`: a
/// `delay` that is not `run_after` would store a job due now) or a bad
/// function name (400 `invalid_funcname`). What is not JSON, not objects
/// or lacks a field is left to the parser, which says why.
pub(crate) fn check_jobs(body: &[u8]) -> Answer<()> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    let (jobs, array) = match &value {
        Value::Array(items) => (items.iter().collect::<Vec<_>>(), true),
        one => (vec![one], false),
    };
    let takes = format!(
        "a job has {}",
        JOB_FIELDS.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    let which = |i: usize| {
        if array {
            format!("job {i}: ")
        } else {
            String::new()
        }
    };
    for (i, job) in jobs.iter().enumerate() {
        let Value::Object(fields) = job else { continue };
        if let Some(name) = fields.keys().find(|k| !JOB_FIELDS.contains(*k)) {
            let mut failure = unknown("field", name, &takes);
            failure.message = format!("{}{}", which(i), failure.message);
            return Err(failure);
        }
    }
    for (i, job) in jobs.iter().enumerate() {
        if let Some(Value::String(funcname)) = job.get("funcname") {
            crate::job::check_job_funcname(funcname).map_err(|e| {
                let mut failure = Failure::from(e);
                failure.message = format!("{}{}", which(i), failure.message);
                failure
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_takes_the_fields_the_injectors_parser_reads_and_no_other() {
        let parser = [
            "arg",
            "coalesce",
            "funcname",
            "priority",
            "run_after",
            "uniqkey",
            "unique",
        ];
        assert_eq!(
            JOB_FIELDS.iter().map(String::as_str).collect::<Vec<_>>(),
            parser
        );
        let every = r#"{"funcname":"f","arg":"a","unique":"u","uniqkey":"k",
            "run_after":1,"coalesce":null,"priority":"low"}"#;
        assert!(check_jobs(every.as_bytes()).is_ok());
        let failure = check_jobs(br#"[{"funcname":"f"},{"funcname":"f","delay":5}]"#).unwrap_err();
        assert_eq!(failure.code, "unknown_parameter");
        assert!(
            failure
                .message
                .starts_with(r#"job 1: unknown field "delay""#),
            "{}",
            failure.message
        );
        let failure = check_jobs(br#"{"funcname":"a b"}"#).unwrap_err();
        assert_eq!(failure.code, "invalid_funcname");
    }
}

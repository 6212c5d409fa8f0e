//! The confirmation page before every change (`GET /confirm`) and the
//! change itself (`POST /act`, with the login cookie and the form's CSRF
//! token). The confirmation names the rows the change touches and how
//! many; a destructive change is styled `danger`. On a job in flight it
//! says what forcing means and offers it (unticked); on a retry, it
//! offers to reset the failcount (ticked for a dead job). A change the
//! admin functions refuse (a job in flight, not forced) leads back to the
//! job's page, which says why. Plain forms: no JavaScript.

use std::sync::Arc;

use axum::extract::{Form, Query, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::{access, due_in, error_back, error_page, layout, url};
use crate::admin::{self, Guard, JobState, Shown};
use crate::error::Error;
use crate::job::JobRef;
use crate::web::api::Failure;
use crate::web::auth::Access;
use crate::web::State;

/// A change as the confirmation page and its form name it. A checkbox is
/// sent only when ticked: `force` and `reset_failcount` are "on" when
/// present and not empty.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Act {
    action: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    funcname: String,
    #[serde(default)]
    csrf: String,
    /// Change the job although it is in flight.
    #[serde(default)]
    force: Option<String>,
    /// On a retry: set the failcount to 0.
    #[serde(default)]
    reset_failcount: Option<String>,
}

fn ticked(checkbox: &Option<String>) -> bool {
    checkbox.as_deref().is_some_and(|v| !v.is_empty())
}

/// The changes the pages make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Retry,
    Cancel,
    RetryDead,
    PurgeDead,
    Pause,
    Resume,
}

impl Kind {
    fn of(action: &str) -> Option<Kind> {
        Some(match action {
            "retry" => Kind::Retry,
            "cancel" => Kind::Cancel,
            "retry_dead" => Kind::RetryDead,
            "purge_dead" => Kind::PurgeDead,
            "pause" => Kind::Pause,
            "resume" => Kind::Resume,
            _ => return None,
        })
    }

    /// It deletes rows.
    fn destroys(self) -> bool {
        matches!(self, Kind::Cancel | Kind::PurgeDead)
    }
}

/// What forcing a change of a job in flight means, said before it is
/// chosen: the running attempt is not stopped.
fn force_warning(kind: Kind) -> &'static str {
    if kind == Kind::Retry {
        "Force: make it due now although it is in flight. The running attempt is not \
         stopped and may still finish: the job may run twice."
    } else {
        "Force: delete its row although it is in flight. Deleting does not stop the \
         running attempt: it may still finish and do the job's work (its completion then \
         finds no row)."
    }
}

/// The part of a job's confirmation that depends on the job: the rows it
/// touches, the force choice if in flight, the failcount choice on a retry.
fn job_part(kind: Kind, shown: &Shown) -> Markup {
    let failcount = shown
        .job
        .get("failcount")
        .and_then(|v| v.as_u64())
        .unwrap_or_default();
    let in_flight = shown.state == JobState::InFlight;
    let dead = shown.state == JobState::Dead;
    html! {
        p id="rows" {
            "Rows " @if kind.destroys() { "deleted" } @else { "changed" } ": 1 (job "
            (shown.id) ", " (shown.state.as_str()) ", failcount " (failcount) ")."
        }
        @if in_flight {
            div.warning id="in-flight" {
                p {
                    "This job is in flight: a worker may be running it now. Its lease ends "
                    (due_in(shown.due_in_secs)) "; if it is not completed by then it is dispatched again. "
                    "Unless you force it, the change is refused and nothing changes."
                }
                label {
                    input id="force" type="checkbox" name="force" value="on";
                    " " (force_warning(kind))
                }
            }
        }
        @if kind == Kind::Retry && failcount > 0 {
            p {
                label {
                    input id="reset-failcount" type="checkbox" name="reset_failcount" value="on" checked[dead];
                    " Reset its failcount (now " (failcount) ") to 0."
                }
                br;
                span.muted {
                    "Kept, the failures so far still count: a job given up after its last allowed "
                    "failure is given up again at its next one."
                }
            }
        }
    }
}

/// The dead rows of `funcname` now, per database, in words, and their sum.
async fn dead_part(state: &State, kind: Kind, funcname: &str) -> Result<Markup, Failure> {
    let rows = admin::dead_rows(&state.store, Some(funcname)).await?;
    let total: u64 = rows.iter().map(|(_, _, n)| n).sum();
    let per_db: Vec<String> = rows
        .iter()
        .map(|(dbid, _, n)| format!("database {dbid}: {n}"))
        .collect();
    let verb = if kind.destroys() {
        "deleted"
    } else {
        "changed"
    };
    Ok(html! {
        p id="rows" {
            "Rows " (verb) ": " span id="row-count" { (total) } " dead "
            (if total == 1 { "job" } else { "jobs" }) " now"
            @if per_db.len() > 1 { " (" (per_db.join(", ")) ")" }
            "."
            @if total == 0 { " Nothing to change." }
        }
        @if kind == Kind::RetryDead {
            p {
                label {
                    input id="reset-failcount" type="checkbox" name="reset_failcount" value="on" checked;
                    " Reset their failcounts to 0."
                }
                br;
                span.muted { "Kept, each is given up again at its next failure." }
            }
        }
    })
}

pub(super) async fn confirm(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Query(act): Query<Act>,
) -> Response {
    let access = match access(&state, &headers, Access::Write) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let Some(kind) = Kind::of(&act.action) else {
        return error_page(&state, access, StatusCode::BAD_REQUEST, "unknown action");
    };
    let (id, f) = (&act.id, &act.funcname);
    let question = match kind {
        Kind::Retry => format!("Retry job {id} ({f}): make it due now?"),
        Kind::Cancel => format!("Cancel job {id} ({f}): delete its row?"),
        Kind::RetryDead => format!("Retry every dead job of {f}, in every database?"),
        Kind::PurgeDead => format!("Delete every dead job of {f}, in every database?"),
        Kind::Pause => format!("Pause {f}: its jobs wait in the database until resumed?"),
        Kind::Resume => format!("Resume {f}?"),
    };
    let back = match kind {
        Kind::Retry | Kind::Cancel => format!("/jobs/{id}"),
        _ => "/".to_string(),
    };
    let part = match kind {
        Kind::Retry | Kind::Cancel => {
            let shown = match id.parse::<JobRef>() {
                Ok(id) => admin::show(&state.store, id, state.config.lease).await,
                Err(e) => Err(e),
            };
            match shown {
                Ok(shown) => job_part(kind, &shown),
                Err(e) => return refused(&state, access, &act, e),
            }
        }
        Kind::RetryDead | Kind::PurgeDead => match dead_part(&state, kind, f).await {
            Ok(part) => part,
            Err(failure) => {
                let message = failure.message;
                return error_back(
                    &state,
                    access,
                    failure.status,
                    &message,
                    Some(("/", "Back to the overview")),
                );
            }
        },
        Kind::Pause | Kind::Resume => html! {
            p id="rows" {
                "Rows changed: none of its jobs' rows ("
                @if kind == Kind::Pause {
                    "they stay due in the database, and no role dispatches them until it is resumed"
                } @else {
                    "its waiting jobs are dispatched within a couple of seconds"
                }
                ")."
            }
        },
    };
    let danger = kind.destroys();
    let body = html! {
        p id="question" class=[danger.then_some("danger")] { (question) }
        form method="post" action="/act" class=[danger.then_some("danger")] {
            input type="hidden" name="action" value=(act.action);
            input type="hidden" name="id" value=(act.id);
            input type="hidden" name="funcname" value=(act.funcname);
            input type="hidden" name="csrf" value=(state.keys.csrf());
            (part)
            button id="confirm" type="submit" class=[danger.then_some("danger")] {
                @if danger { "Delete" } @else { "Confirm" }
            }
            " "
            a id="back" href=(back) { "Back" }
        }
    };
    layout("Confirm", access, &state.keys, None, body).into_response()
}

/// The answer to a change of a job that `err` refused: back to the job's
/// page, which says why, for a job in flight; an error page with a link
/// back to it otherwise.
fn refused(state: &State, access: Access, act: &Act, err: Error) -> Response {
    let id = act.id.parse::<JobRef>();
    if let (Error::JobsInFlight { .. }, Ok(id)) = (&err, &id) {
        return Redirect::to(&format!("/jobs/{id}?refused=in_flight")).into_response();
    }
    let failure = Failure::from(err);
    let back = match id {
        Ok(id) => (format!("/jobs/{id}"), "Back to the job"),
        Err(_) => ("/jobs".to_string(), "Back to the jobs"),
    };
    error_back(
        state,
        access,
        failure.status,
        &failure.message,
        Some((&back.0, back.1)),
    )
}

pub(super) async fn act(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Form(act): Form<Act>,
) -> Response {
    let access = match access(&state, &headers, Access::Write) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if !state.keys.csrf_ok(&act.csrf) {
        return error_page(
            &state,
            access,
            StatusCode::FORBIDDEN,
            "the form's CSRF token is wrong: reload the page and try again",
        );
    }
    let Some(kind) = Kind::of(&act.action) else {
        return error_page(&state, access, StatusCode::BAD_REQUEST, "unknown action");
    };
    let (force, reset_failcount) = (ticked(&act.force), ticked(&act.reset_failcount));
    let guard = Guard {
        lease: state.config.lease,
        force,
    };
    let f = act.funcname.as_str();
    let overview = |done: &str, n: u64| {
        url(
            "/",
            &[("done", &format!("{done}:{f}")), ("n", &n.to_string())],
        )
    };
    let sum = |per_db: Vec<(u32, u64)>| per_db.iter().map(|(_, n)| n).sum::<u64>();
    let done: Result<(String, u64), Error> = match kind {
        Kind::Retry | Kind::Cancel => {
            let id = match act.id.parse::<JobRef>() {
                Ok(id) => id,
                Err(e) => return refused(&state, access, &act, e),
            };
            let changed = if kind == Kind::Retry {
                admin::retry(&state.store, &[id], reset_failcount, guard).await
            } else {
                admin::cancel(&state.store, &[id], guard).await
            };
            changed.map(|rows| {
                let to = if kind == Kind::Retry {
                    url(
                        "/jobs",
                        &[
                            ("funcname", f),
                            ("state", "dead"),
                            ("done", &format!("retried:{id}")),
                        ],
                    )
                } else {
                    url(
                        "/jobs",
                        &[("funcname", f), ("done", &format!("cancelled:{id}"))],
                    )
                };
                (to, rows.len() as u64)
            })
        }
        Kind::RetryDead => admin::retry_dead(&state.store, f, reset_failcount)
            .await
            .map(sum)
            .map(|n| (overview("retried_dead", n), n)),
        Kind::PurgeDead => admin::purge_dead(&state.store, f)
            .await
            .map(sum)
            .map(|n| (overview("purged_dead", n), n)),
        Kind::Pause => admin::pause(&state.store, f)
            .await
            .map(|_| (url("/", &[("done", &format!("paused:{f}"))]), 0)),
        Kind::Resume => admin::resume(&state.store, f)
            .await
            .map(|_| (url("/", &[("done", &format!("resumed:{f}"))]), 0)),
    };
    match done {
        Ok((to, rows)) => {
            state.forget_status().await;
            tracing::info!(
                action = %act.action, funcname = f, job.id = %act.id, force, reset_failcount,
                rows, "web: changed"
            );
            Redirect::to(&to).into_response()
        }
        Err(e) if matches!(kind, Kind::Retry | Kind::Cancel) => {
            tracing::info!(action = %act.action, job.id = %act.id, error = %e, "web: change refused");
            refused(&state, access, &act, e)
        }
        Err(e) => {
            let failure = Failure::from(e);
            error_back(
                &state,
                access,
                failure.status,
                &failure.message,
                Some(("/", "Back to the overview")),
            )
        }
    }
}

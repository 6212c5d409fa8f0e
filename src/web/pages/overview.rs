//! The overview: every database's jobs per function and state (counts
//! past what a status reads marked `N+`, and said in words), every
//! gearmand's queues, the functions without a worker, each function's
//! actions, and the chart of the last hour. It refreshes itself.

use std::sync::Arc;

use axum::extract::{Query, State as Shared};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::{access, layout, notice, span, url, Done};
use crate::admin::{self, Status};
use crate::web::auth::Access;
use crate::web::{Report, State};

/// One row of a database's table: a function's counts, or (`total`) the
/// database's sum, which links nowhere.
struct Row<'a> {
    funcname: &'a str,
    total: bool,
    /// What the status read per range ([`at_least_title`]).
    caps: (u64, u64),
}

/// What a count marked "at least" (`N+`) means, in words: the title of
/// its cell. `caps`: what one status reads per range (see
/// [`crate::store::Counts::at_least`]); `funcname`: the function, `None`
/// for a database's sum.
fn at_least_title(
    column: &str,
    n: u64,
    (entries, rows): (u64, u64),
    funcname: Option<&str>,
) -> String {
    let read = if column == "in_flight" {
        format!("at most {rows} rows of each function's lease window")
    } else {
        format!("at most {entries} entries of each function's due, waiting and dead ranges")
    };
    let flag = column.replace('_', "-");
    let (held, command) = match funcname {
        Some(f) => (
            "this one held more",
            format!("garivini jobs list --funcname {f} --{flag}"),
        ),
        None => (
            "one function's or more held more",
            format!("garivini jobs list --{flag}"),
        ),
    };
    format!(
        "at least {n}: a status reads {read}, and {held}; \
         run `{command}` for the exact rows"
    )
}

/// The footnote under a database's table where a count is marked `N+`.
fn at_least_note(dbid: u32, functions: usize, (entries, rows): (u64, u64)) -> Markup {
    html! {
        p.muted id=(format!("at-least-db{dbid}")) {
            "N+ means at least N. So that a status costs the same on any table, it reads at most "
            (entries) " index entries of each function's due, waiting and dead ranges and "
            (rows) " rows of its lease window (fixed budgets shared by this database's "
            (functions) " functions). Where a range held more, its count is what was read, a lower bound, "
            "and the rows past those read are not told apart by state. "
            code { "garivini jobs list --funcname F --due" } " (or " code { "--in-flight" } ", ...) "
            "and the job list here list the rows themselves."
        }
    }
}

fn counts_row(
    row: Row<'_>,
    c: &admin::Counts,
    waiting: Option<admin::WaitReason>,
    dbid: u32,
    actions: Option<Markup>,
) -> Markup {
    let Row {
        funcname,
        total,
        caps,
    } = row;
    let cell = |column: &str, n: u64| {
        let id = format!("db{dbid}-{funcname}-{column}");
        let title = c
            .at_least
            .iter()
            .any(|f| f == column)
            .then(|| at_least_title(column, n, caps, (!total).then_some(funcname)));
        html! { td id=(id) class=(column) title=[title] { (c.shown(column, n)) } }
    };
    html! {
        td.name {
            @if total { (funcname) } @else { a href=(url("/jobs", &[("funcname", funcname)])) { (funcname) } }
        }
        (cell("due", c.due))
        (cell("in_flight", c.in_flight))
        (cell("retrying", c.retrying))
        (cell("scheduled", c.scheduled))
        @let dead_title = c.at_least.iter().any(|f| f == "dead")
            .then(|| at_least_title("dead", c.dead, caps, (!total).then_some(funcname)));
        td id=(format!("db{dbid}-{funcname}-dead")) class="dead" title=[dead_title] {
            @if c.dead > 0 && !total {
                a href=(url("/jobs", &[("funcname", funcname), ("state", "dead")])) { (c.shown("dead", c.dead)) }
            } @else { (c.shown("dead", c.dead)) }
        }
        (cell("failing", c.failing))
        td.waits title=[waiting.map(|_| "why its due jobs wait: they stay due, and go once this clears")] {
            @if let Some(w) = waiting { span class=(format!("waits {}", w.label())) { (w.as_str()) } }
        }
        td { (c.oldest_due_secs.map(span).unwrap_or_default()) }
        @if let Some(actions) = actions { td.name { (actions) } }
    }
}

fn function_actions(funcname: &str, dead: u64, paused: bool) -> Markup {
    let confirm = |action: &str| url("/confirm", &[("action", action), ("funcname", funcname)]);
    html! {
        @if paused {
            a href=(confirm("resume")) { "resume" }
        } @else {
            a href=(confirm("pause")) { "pause" }
        }
        @if dead > 0 {
            " · " a href=(confirm("retry_dead")) { "retry dead" }
            " · " a href=(confirm("purge_dead")) { "purge dead" }
        }
    }
}

fn overview_body(report: &Report, can_act: bool, notice: Option<String>) -> Markup {
    let status: &Status = &report.status;
    let paused: std::collections::HashSet<&str> = status
        .paused
        .functions
        .iter()
        .map(|p| p.funcname.as_str())
        .collect();
    html! {
        @if let Some(n) = notice { p.notice id="notice" { (n) } }
        @for f in &status.without_worker {
            table { tr.warn id=(format!("no-worker-{f}")) {
                td.name { "⚠ " b { (f) } " has jobs waiting and no worker registered on any gearmand: they wait in the database." }
            } }
        }
        @for db in &status.databases {
            @let caps = crate::store::status_caps(db.functions.len());
            h2 { "Database " (db.dbid) " " span.muted { (db.dsn) } }
            @if let Some(e) = &db.error {
                p.error { (e) }
            } @else {
                @if !db.history {
                    p.muted { "No history columns: in flight means due within the lease (" (status.lease) " s)." }
                }
                table id=(format!("db{}", db.dbid)) {
                    tr {
                        th.name { "function" } th { "due" } th { "in flight" } th { "retrying" }
                        th { "scheduled" } th { "dead" } th { "failing" } th { "waits" }
                        th { "oldest due" }
                        @if can_act { th.name { "actions" } }
                    }
                    @for f in &db.functions {
                        @let is_paused = paused.contains(f.funcname.as_str());
                        tr {
                            (counts_row(Row { funcname: &f.funcname, total: false, caps }, &f.counts, f.waiting, db.dbid,
                                can_act.then(|| function_actions(&f.funcname, f.counts.dead, is_paused))))
                        }
                    }
                    tr { (counts_row(Row { funcname: "(all)", total: true, caps }, &db.total, None, db.dbid, can_act.then(|| html! {}))) }
                }
                @if !db.total.at_least.is_empty() { (at_least_note(db.dbid, db.functions.len(), caps)) }
            }
        }
        h2 { "gearmand" }
        @for g in &status.gearmand {
            h3 { (g.server) }
            @if let Some(e) = &g.error {
                p.error { (e) }
            } @else {
                table {
                    tr { th.name { "function" } th { "queued" } th { "running" } th { "workers" } }
                    @for f in &g.functions {
                        tr {
                            td.name { (f.funcname) }
                            td { (f.depth.saturating_sub(f.running)) }
                            td { (f.running) }
                            td { (f.workers) }
                        }
                    }
                }
            }
        }
        @if status.gearmand.is_empty() { p.muted { "No gearmand configured." } }
        @for p in &status.paused.errors { p.error { (p) } }
        p.muted id="read-time" {
            "Status read " (span(report.at.elapsed().as_secs())) " ago, in "
            (report.took.as_millis()) " ms; one reading is shared by every browser."
        }
    }
}

pub(super) async fn overview(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    Query(done): Query<Done>,
) -> Response {
    let access = match access(&state, &headers, Access::Read) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let report = state.status().await;
    let body = html! {
        (overview_body(&report, access == Access::Write, notice(done.done.as_deref(), done.n)))
        h2 { "The last hour" }
        (crate::web::sample::chart(&state.samples.points(), state.samples.dispatched().as_deref()))
    };
    layout(
        "Overview",
        access,
        &state.keys,
        Some(state.config.refresh_secs),
        body,
    )
    .into_response()
}

//! Pausing a function (`garivini functions pause|resume|list`): its due
//! jobs wait in the table until it is resumed; the roles honour a pause
//! through [`Store::paused_functions`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Result;
use crate::store::Store;

/// A paused function across the databases (`garivini functions list`,
/// `garivini status`): its due jobs wait in the table until it is resumed.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Paused {
    /// The function.
    pub funcname: String,
    /// When it was paused: the earliest over the databases (unix time).
    pub since: u32,
    /// The databases that hold its pause (a pause on any one holds for
    /// all).
    pub databases: Vec<u32>,
}

/// Every paused function, by name, and the databases that could not say.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct PausedReport {
    /// The paused functions, by name.
    pub functions: Vec<Paused>,
    /// Databases without the `garivini_paused` table: nothing is paused
    /// there (`garivini schema check --apply` creates it).
    pub without_table: Vec<u32>,
    /// Databases that could not be read, one line each.
    pub errors: Vec<String>,
}

/// Reads the paused functions of every database at once.
pub async fn paused(store: &Store) -> PausedReport {
    let reads = futures::future::join_all(
        store
            .dbids()
            .map(|dbid| async move { (dbid, store.list_paused(dbid).await) }),
    )
    .await;
    let mut report = PausedReport::default();
    let mut by_name: BTreeMap<String, Paused> = BTreeMap::new();
    for (dbid, read) in reads {
        match read {
            Ok(Some(rows)) => {
                for row in rows {
                    let entry = by_name
                        .entry(row.funcname.clone())
                        .or_insert_with(|| Paused {
                            funcname: row.funcname,
                            since: row.since,
                            databases: Vec::new(),
                        });
                    entry.since = entry.since.min(row.since);
                    entry.databases.push(dbid);
                }
            }
            Ok(None) => report.without_table.push(dbid),
            Err(err) => report.errors.push(err.to_string()),
        }
    }
    report.functions = by_name.into_values().collect();
    report
}

/// What `garivini functions pause` or `resume` did, per database.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct PauseReport {
    /// The function.
    pub funcname: String,
    /// Databases where it was paused (or resumed) now.
    pub changed: Vec<u32>,
    /// Databases where it was so already.
    pub unchanged: Vec<u32>,
    /// Databases without the `garivini_paused` table: nothing changed there.
    pub without_table: Vec<u32>,
    /// Databases that failed, one line each.
    pub errors: Vec<String>,
}

/// Pauses `funcname` on every database: the roles stop dispatching its
/// jobs within a couple of seconds (they stay due in the table). A name
/// [`check_funcname`](crate::job::check_funcname) refuses changes nothing.
pub async fn pause(store: &Store, funcname: &str) -> Result<PauseReport> {
    crate::job::check_funcname(funcname)?;
    let changes = futures::future::join_all(
        store
            .dbids()
            .map(|dbid| async move { (dbid, store.pause_function(dbid, funcname).await) }),
    )
    .await;
    Ok(pause_report(funcname, changes))
}

/// Resumes `funcname` on every database (as [`pause`] pauses it): its
/// waiting jobs run within a couple of seconds.
pub async fn resume(store: &Store, funcname: &str) -> Result<PauseReport> {
    crate::job::check_funcname(funcname)?;
    let changes = futures::future::join_all(
        store
            .dbids()
            .map(|dbid| async move { (dbid, store.resume_function(dbid, funcname).await) }),
    )
    .await;
    Ok(pause_report(funcname, changes))
}

fn pause_report(
    funcname: &str,
    changes: Vec<(u32, Result<crate::store::functions::PauseChange>)>,
) -> PauseReport {
    use crate::store::functions::PauseChange;
    let mut report = PauseReport {
        funcname: funcname.to_string(),
        ..PauseReport::default()
    };
    for (dbid, change) in changes {
        match change {
            Ok(PauseChange::Changed) => report.changed.push(dbid),
            Ok(PauseChange::Unchanged) => report.unchanged.push(dbid),
            Ok(PauseChange::NoTable) => report.without_table.push(dbid),
            Err(err) => report.errors.push(err.to_string()),
        }
    }
    report
}

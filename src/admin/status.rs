//! The report behind `garivini status` (and the web dashboard's front
//! page): every database's rows by function and state, every gearmand's
//! queues, the functions without a worker and the paused ones.

use std::collections::HashMap;

use serde::Serialize;

use super::pause::{paused, PausedReport};
use super::{Counts, FunctionStatus, Limits};
use crate::gearman::FunctionLoad;
use crate::store::Store;

/// One database's part of the report.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct DbStatus {
    /// Database id.
    pub dbid: u32,
    /// Its URL, password masked.
    pub dsn: String,
    /// Its clock (unix time) when counted; `None` if it did not answer.
    pub now: Option<u32>,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
    /// Whether its table has the history columns (`attempted_at`,
    /// `failed_at`): its in flight is then exact and it counts retrying
    /// rows; without them, in flight is the lease-window approximation.
    pub history: bool,
    /// Per function, by name.
    pub functions: Vec<FunctionStatus>,
    /// The sum over its functions.
    pub total: Counts,
}

/// One function as one gearmand sees it (admin `status`).
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GearmandFunction {
    /// The function.
    pub funcname: String,
    /// Jobs queued or running: the depth the watermark compares.
    pub depth: u64,
    /// Jobs running.
    pub running: u64,
    /// Workers registered.
    pub workers: u64,
}

/// One gearmand's part of the report.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct GearmandStatus {
    /// Its `host:port`.
    pub server: String,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
    /// Per function, by name.
    pub functions: Vec<GearmandFunction>,
}

/// The whole deployment on one screen (`garivini status`).
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The lease window that tells in flight from scheduled, in seconds.
    pub lease: u32,
    /// Each database, by id.
    pub databases: Vec<DbStatus>,
    /// Each gearmand, in the order configured.
    pub gearmand: Vec<GearmandStatus>,
    /// Functions with rows waiting (due, in flight or scheduled) and no
    /// worker registered on any gearmand that answered: their rows wait
    /// in the database (the QueueRunner holds them back). Empty when no
    /// gearmand was given or none answered.
    pub without_worker: Vec<String>,
    /// Paused functions (`garivini functions pause`): their jobs wait in
    /// the database until resumed.
    pub paused: PausedReport,
}

impl Status {
    /// One line per database or gearmand that could not be read.
    /// (Each names its database or server.)
    pub fn errors(&self) -> Vec<String> {
        let dbs = self.databases.iter().filter_map(|db| db.error.clone());
        let servers = self.gearmand.iter().filter_map(|g| g.error.clone());
        dbs.chain(servers).collect()
    }
}

/// Reads every database and every gearmand at once. A source that fails
/// is reported in its section (see [`Status::errors`]), not as an error:
/// the rest of the screen is still worth having. Each function with due
/// rows says why they wait ([`FunctionStatus::waiting`]), as the
/// QueueRunner running with `limits` decides.
pub async fn status(store: &Store, gearmand: &[String], lease: u32, limits: &Limits) -> Status {
    let dbs = futures::future::join_all(store.dbids().map(|dbid| db_status(store, dbid, lease)));
    let servers = futures::future::join_all(gearmand.iter().map(|server| async move {
        match crate::gearman::server_status(server).await {
            Ok(rows) => {
                let mut functions: Vec<GearmandFunction> = rows
                    .into_iter()
                    .map(|(funcname, load)| GearmandFunction {
                        funcname,
                        depth: load.queued,
                        running: load.running,
                        workers: load.workers,
                    })
                    .collect();
                functions.sort_by(|a, b| a.funcname.cmp(&b.funcname));
                GearmandStatus {
                    server: server.clone(),
                    error: None,
                    functions,
                }
            }
            Err(e) => GearmandStatus {
                server: server.clone(),
                error: Some(e.to_string()),
                functions: Vec::new(),
            },
        }
    }));
    let (mut databases, gearmand, paused) = futures::join!(dbs, servers, paused(store));
    let without_worker = without_worker(&databases, &gearmand);
    let load = load_of(&gearmand);
    for db in &mut databases {
        for f in &mut db.functions {
            if f.counts.due > 0 {
                let is_paused = paused.functions.iter().any(|p| p.funcname == f.funcname);
                f.waiting = limits.reason(&f.funcname, is_paused, load.as_ref());
            }
        }
    }
    Status {
        lease,
        databases,
        gearmand,
        without_worker,
        paused,
    }
}

/// The load of each function summed over the gearmand servers that
/// answered; `None` if none did.
fn load_of(gearmand: &[GearmandStatus]) -> Option<HashMap<String, FunctionLoad>> {
    if !gearmand.iter().any(|g| g.error.is_none()) {
        return None;
    }
    let mut load: HashMap<String, FunctionLoad> = HashMap::new();
    for f in gearmand.iter().flat_map(|g| &g.functions) {
        let l = load.entry(f.funcname.clone()).or_default();
        l.queued += f.depth;
        l.running += f.running;
        l.workers += f.workers;
    }
    Some(load)
}

/// See [`Status::without_worker`].
fn without_worker(databases: &[DbStatus], gearmand: &[GearmandStatus]) -> Vec<String> {
    if !gearmand.iter().any(|g| g.error.is_none()) {
        return Vec::new();
    }
    let served: std::collections::HashSet<&str> = gearmand
        .iter()
        .flat_map(|g| &g.functions)
        .filter(|f| f.workers > 0)
        .map(|f| f.funcname.as_str())
        .collect();
    let waiting: std::collections::BTreeSet<&str> = databases
        .iter()
        .flat_map(|db| &db.functions)
        .filter(|f| f.counts.due + f.counts.in_flight + f.counts.scheduled > 0)
        .map(|f| f.funcname.as_str())
        .filter(|f| !served.contains(f))
        .collect();
    waiting.into_iter().map(str::to_string).collect()
}

async fn db_status(store: &Store, dbid: u32, lease: u32) -> DbStatus {
    let dsn = store.masked_dsn(dbid).unwrap_or_default();
    match store.count_by_function(dbid, lease).await {
        Ok((now, functions)) => {
            let mut total = Counts::default();
            for f in &functions {
                total.add(&f.counts);
            }
            DbStatus {
                dbid,
                dsn,
                now: Some(now),
                error: None,
                // Read by the count just made: no second round trip.
                history: store.has_history(dbid).await.unwrap_or(false),
                functions,
                total,
            }
        }
        Err(e) => DbStatus {
            dbid,
            dsn,
            now: None,
            error: Some(e.to_string()),
            history: false,
            functions: Vec::new(),
            total: Counts::default(),
        },
    }
}

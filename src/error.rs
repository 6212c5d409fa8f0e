//! The library's one error type. Every variant names what failed and
//! carries the values that failed, so that its `Display` is the one line a
//! user needs. DSNs in messages are always masked (no password).

use std::time::Duration;

/// Everything that can go wrong in Garivini.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `mysql://` URL that does not parse.
    #[error("invalid database URL {dsn}: {reason}")]
    InvalidDsn {
        /// The URL, password masked.
        dsn: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No database was configured.
    #[error("no database configured (expected mysql://user:pass@host:port/db)")]
    NoDatabase,
    /// No gearmand was configured.
    #[error("no gearmand configured (expected host:port)")]
    NoGearmand,
    /// A gearmand address that is not `host:port`.
    #[error("invalid gearmand address {addr:?}: expected host:port")]
    InvalidGearmandAddr {
        /// The address as given.
        addr: String,
    },
    /// A setting out of its range.
    #[error("invalid setting {name}: {reason}")]
    InvalidConfig {
        /// The setting's name (`lease`, `inject_concurrency`); the
        /// binaries show it as the flag that sets it.
        name: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A database id that is not configured.
    #[error("unknown database id {dbid} ({})", configured_ids(*configured))]
    UnknownDb {
        /// The id asked for.
        dbid: u32,
        /// How many databases there are.
        configured: usize,
    },
    /// A job id that is not `DBID:JOBID`.
    #[error("invalid job id {id:?}: expected DBID:JOBID, e.g. 1:42")]
    InvalidJobId {
        /// The id as given.
        id: String,
    },
    /// Jobs asked for by id that have no row (completed, cancelled, or
    /// never stored).
    #[error("no such job: {} (completed, cancelled, or never stored)", list(jobs))]
    UnknownJobs {
        /// The ids without a row.
        jobs: Vec<crate::job::JobRef>,
    },
    /// Jobs refused because they are in flight: due again within the
    /// lease, so a worker may be running them right now.
    #[error(
        "refused: {} in flight (due within the {lease} s lease: a worker may be running it); nothing was changed",
        list(jobs)
    )]
    JobsInFlight {
        /// The refused ids.
        jobs: Vec<crate::job::JobRef>,
        /// The lease window, in seconds.
        lease: u32,
    },
    /// A database operation failed.
    #[error("database {dbid} ({dsn}): {}", driver_text(source))]
    Db {
        /// The database id.
        dbid: u32,
        /// Its URL, password masked.
        dsn: String,
        /// What the driver said.
        #[source]
        source: mysql_async::Error,
    },
    /// A database known to be down (its last call failed on a fault of
    /// its own, and it has not answered since): the call was refused
    /// without trying, so that it fails at once instead of waiting for the
    /// timeout. The store tries the database in the background and takes
    /// calls again once it answers.
    #[error("database {dbid} ({dsn}) is down (for {since:.1?}: {reason}); not tried")]
    DbDown {
        /// The database id.
        dbid: u32,
        /// Its URL, password masked.
        dsn: String,
        /// Its last fault, as the driver said it.
        reason: String,
        /// How long it has been down.
        since: Duration,
    },
    /// A database did not answer in time.
    #[error("database {dbid} ({dsn}) did not answer within {timeout:?}")]
    DbTimeout {
        /// The database id.
        dbid: u32,
        /// Its URL, password masked.
        dsn: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The function name is empty.
    #[error("funcname is empty")]
    EmptyFuncname,
    /// The function name does not fit the `funcname` column.
    #[error("funcname is {len} bytes, over the limit of {max}")]
    FuncnameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The function name holds a NUL byte, which the Gearman protocol
    /// cannot carry in a function name.
    #[error("funcname has a NUL byte at {at}: Gearman cannot carry it")]
    FuncnameHasNul {
        /// Byte offset of the first NUL.
        at: usize,
    },
    /// The function name holds whitespace or a control character, which
    /// gearmand's line-based admin protocol cannot carry.
    #[error("funcname has {what} at byte {at}: gearmand's admin protocol cannot carry whitespace or control characters")]
    FuncnameHasBadChar {
        /// Byte offset of the character.
        at: usize,
        /// The character, named ("a newline", "U+001B").
        what: String,
    },
    /// The function name is one Garivini's roles serve
    /// ([`crate::names::RESERVED`]): a job sent to it would reach a role,
    /// not a worker.
    #[error("funcname {name} is reserved: Garivini serves it (inject_jobs, run_queued_job, job_status), so no job may be sent to it")]
    ReservedFuncname {
        /// The name.
        name: String,
    },
    /// The unique key does not fit the `uniqkey` column.
    #[error("unique key is {len} bytes, over the limit of {max}")]
    UniqkeyTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The coalesce key does not fit the `coalesce` column.
    #[error("coalesce is {len} bytes, over the limit of {max}")]
    CoalesceTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The argument does not fit the `arg` column (MEDIUMBLOB).
    #[error("arg is {len} bytes, over the limit of {max}")]
    ArgTooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A job whose INSERT is larger than the database takes in one
    /// statement (its `max_allowed_packet`): refused before it is sent.
    #[error(
        "job needs a statement of {len} bytes, over database {dbid}'s max_allowed_packet of {max_allowed_packet} bytes"
    )]
    JobOverPacketLimit {
        /// The database the job would go to.
        dbid: u32,
        /// Bytes its INSERT would take, at most.
        len: u64,
        /// The database's limit.
        max_allowed_packet: u64,
    },
    /// A job JSON document that cannot be read.
    #[error("invalid job JSON: {reason}")]
    InvalidJobJson {
        /// What is wrong with it.
        reason: String,
    },
    /// A completion's DELETE failed. On a fault of the database
    /// (`connection_fault`) the client keeps the completion and writes it
    /// once the database answers; otherwise the row stays and the job runs
    /// again after its lease.
    #[error(
        "completing job {}:{} failed: {reason}{}",
        job.dbid,
        job.jobid,
        if *connection_fault { " (kept: written once the database answers)" } else { "" }
    )]
    CompletionFailed {
        /// The job.
        job: crate::job::JobRef,
        /// Why.
        reason: String,
        /// Whether the database was unreachable (not the statement refused).
        connection_fault: bool,
    },
    /// The completion batcher is gone (the runtime is shutting down).
    #[error("completing job {}:{} was not confirmed: the client is shutting down", job.dbid, job.jobid)]
    CompletionLost {
        /// The job.
        job: crate::job::JobRef,
    },
    /// A priority that is not one of the three.
    #[error("invalid priority {value:?}: expected high, normal or low")]
    InvalidPriority {
        /// What was given.
        value: String,
    },
    /// A job of high or low priority for a table without the `priority`
    /// column (the original's, or one of an older schema.sql): nothing is
    /// stored, rather than the job stored at normal priority.
    #[error(
        "database {dbid}: the job table has no priority column, so only normal-priority jobs can be stored \
         (garivini schema check --apply adds it)"
    )]
    NoPriorityColumn {
        /// The database.
        dbid: u32,
    },
    /// An `inject_jobs` request that cannot be stored.
    #[error("invalid inject_jobs request: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// The job's delay is too far in the future for the `run_after` column.
    #[error("delay of {delay} s is over the limit of {max} s")]
    DelayTooLong {
        /// The delay asked for.
        delay: u32,
        /// The limit.
        max: u32,
    },
    /// A statement shared by several requests (group commit) failed.
    #[error("{reason}")]
    GroupFailed {
        /// What failed, as the shared statement's error said.
        reason: String,
        /// Whether the database was unreachable (not the statement refused).
        connection_fault: bool,
    },
    /// A Gearman conversation failed.
    #[error("gearmand {server}: {source}")]
    Gearman {
        /// The server's `host:port`.
        server: String,
        /// What the protocol layer said.
        #[source]
        source: gearman::GearmanError,
    },
    /// The web role's address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// gearmand answered with something we did not expect.
    #[error("gearmand {server}: unexpected {what}")]
    GearmanProtocol {
        /// The server's `host:port`.
        server: String,
        /// What came instead.
        what: String,
    },
}

impl Error {
    /// A refused setting, for the roles' `Config::validate`.
    pub(crate) fn invalid_config(name: &'static str, reason: &str) -> Error {
        Error::InvalidConfig {
            name,
            reason: reason.to_string(),
        }
    }

    /// Whether the error is the database's (unreachable, timed out, known
    /// down, or refusing connections: [`REFUSED_CONNECTION`]), as opposed
    /// to the statement's (refused by the server), the configuration's
    /// (wrong password, host not allowed, no such table) or the input's.
    /// Callers retry a fault later; the rest is reported.
    pub fn is_connection_fault(&self) -> bool {
        match self {
            Error::DbTimeout { .. } | Error::DbDown { .. } => true,
            Error::GroupFailed {
                connection_fault, ..
            }
            | Error::CompletionFailed {
                connection_fault, ..
            } => *connection_fault,
            Error::Db { source, .. } => match source {
                mysql_async::Error::Server(e) => REFUSED_CONNECTION.contains(&e.code),
                // TLS that cannot be agreed (a certificate of another CA or
                // name, a client certificate refused, a server without
                // TLS) is our configuration's, as a wrong password is: it
                // fails start-up rather than being retried as an outage.
                mysql_async::Error::Io(mysql_async::IoError::Tls(_))
                | mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
                    false
                }
                _ => true,
            },
            _ => false,
        }
    }
}

/// Server errors that are the database's state, not the statement's or
/// our configuration's: the server refuses a connection (or drops it) for
/// now, and the same call succeeds later unchanged. They count as a fault
/// of that database, like a connection refused.
///
/// - 1040 too many connections (max_connections), 1203 the user's
///   max_user_connections, 1226 a resource limit of the user (connections
///   or queries per hour): capacity, it comes back as others disconnect;
/// - 1129 host blocked after too many aborted connects: the server's
///   reaction to network trouble, cleared by `FLUSH HOSTS` (or its
///   timeout), not by changing our settings;
/// - 1041 out of memory, 1053 shutdown in progress, 1927 connection killed,
///   1158–1161 network read/write errors the server saw;
/// - 1047 (Galera) "WSREP has not yet prepared node for application use":
///   a node cut off from its cluster's primary component, or still
///   joining it; the next node of the database takes the calls.
///
/// Not here, so a start-up error and a per-call error: 1045 wrong password,
/// 1130 host not allowed to connect (both fixed only by grants or our DSN),
/// 1049 unknown database, 1146 no `job` table.
pub const REFUSED_CONNECTION: &[u16] = &[
    1040, 1041, 1047, 1053, 1129, 1158, 1159, 1160, 1161, 1203, 1226, 1927,
];

/// Ids as `1:7, 1:8`.
/// The ids of `n` configured databases, as people say it.
fn configured_ids(n: usize) -> String {
    match n {
        0 => "no database is configured".into(),
        1 => "only database 1 is configured".into(),
        n => format!("databases 1 to {n} are configured"),
    }
}

/// What the driver said, without its wrappers' repeated prefixes and odd
/// quotes: `ERROR 1045 (28000): Access denied ...`, `connection refused
/// (os error 111)`; a missing job table with what to do about it.
fn driver_text(err: &mysql_async::Error) -> String {
    match err {
        mysql_async::Error::Server(e) => {
            let text = format!("ERROR {} ({}): {}", e.code, e.state, e.message);
            if e.code == 1146 && e.message.contains(".job'") {
                format!("{text} (load schema.sql)")
            } else {
                text
            }
        }
        mysql_async::Error::Io(mysql_async::IoError::Io(e)) => e.to_string(),
        other => other.to_string(),
    }
}

fn list(jobs: &[crate::job::JobRef]) -> String {
    jobs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Short for `std::result::Result<T, garivini::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

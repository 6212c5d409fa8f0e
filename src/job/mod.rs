//! Jobs: a new job as a client submits it ([`NewJob`]), a stored job as a
//! worker receives it ([`Job`]), the job JSON that carries it through
//! gearmand, and the retry policy ([`backoff`], [`When`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod funcname;
mod json;
pub(crate) use funcname::describe_char;
pub use funcname::{check_funcname, check_job_funcname, unsendable_funcname};

/// `run_after` of a job that will never run again (dead, kept for
/// inspection). The largest value of the original's `INT` column.
pub const NEVER: u32 = 2_147_483_647;
/// Longest function name, in bytes (`funcname VARCHAR(200)`).
pub const MAX_FUNCNAME_LEN: usize = 200;
/// Longest unique key, in bytes (`uniqkey VARCHAR(255)`).
pub const MAX_UNIQKEY_LEN: usize = 255;
/// Largest argument, in bytes (`arg MEDIUMBLOB`).
pub const MAX_ARG_LEN: usize = 16_777_215;
/// Longest delay of a new job: ten years, so that now + delay stays far
/// below [`NEVER`].
pub const MAX_DELAY: u32 = 10 * 365 * 86_400;
/// Longest retry delay of [`backoff`]: one day.
pub const MAX_BACKOFF_SECS: u32 = 86_400;

/// Who completes a job's row once a worker has run it.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flag {
    /// Throughput mode: the real worker deletes the row itself.
    #[default]
    Shim,
    /// Low-latency mode: a Controller runs the job and completes the row.
    Controller,
}

impl Flag {
    /// The value stored in the `flag` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Shim => "shim",
            Flag::Controller => "controller",
        }
    }

    /// Reads the `flag` column. NULL and '' mean `shim`, as in the
    /// original (whose client binds NULL unless told otherwise), and so
    /// does anything unknown, so a row is never stuck because of its flag.
    pub fn from_column(value: Option<&[u8]>) -> Flag {
        match value {
            Some(b"controller") => Flag::Controller,
            _ => Flag::Shim,
        }
    }
}

/// Which due jobs are dispatched first, with the matching gearmand
/// background submit (SUBMIT_JOB_HIGH_BG, _BG, _LOW_BG), so that a high
/// job also overtakes a backlog queued inside gearmand. Stored in the
/// `priority` column as 0, 1 (the default) and 2; any larger value reads
/// as low.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Before every normal and low job that is due.
    High,
    /// The default.
    #[default]
    Normal,
    /// After every high and normal job that is due.
    Low,
}

impl Priority {
    /// Every level, first dispatched first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The value of the `priority` column.
    pub fn column(self) -> u8 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    /// Reads the `priority` column: 0 high, 1 normal, anything else low
    /// (so that no value the column allows leaves a row unclaimed).
    pub fn from_column(value: u64) -> Priority {
        match value {
            0 => Priority::High,
            1 => Priority::Normal,
            _ => Priority::Low,
        }
    }

    /// `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = Error;

    /// Reads `high`, `normal` or `low`.
    fn from_str(value: &str) -> Result<Priority> {
        match value {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(Error::InvalidPriority {
                value: value.to_string(),
            }),
        }
    }
}

/// A job to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Gearman function of the real worker.
    pub funcname: String,
    /// The payload.
    pub arg: Vec<u8>,
    /// Dedup key: at most one row per (funcname, uniqkey).
    pub uniqkey: Option<String>,
    /// Seconds from now until the job is due.
    pub delay: u32,
    /// Who completes the row.
    pub flag: Flag,
    /// Reserved, stored as given.
    pub coalesce: Option<String>,
    /// Which due jobs go first.
    pub priority: Priority,
    /// Stored leased by one who dispatches it right after the commit (the
    /// Injector): `delay` is then its lease, and the row records the
    /// attempt as started (`attempted_at`, where the table has it), as a
    /// claim would. (A unique key that names a row that exists leaves that
    /// row's attempt as it was.)
    pub leased: bool,
}

impl NewJob {
    /// A job for `funcname` with payload `arg`, due now, no unique key.
    pub fn new(funcname: impl Into<String>, arg: impl Into<Vec<u8>>) -> Self {
        NewJob {
            funcname: funcname.into(),
            arg: arg.into(),
            uniqkey: None,
            delay: 0,
            flag: Flag::Shim,
            coalesce: None,
            priority: Priority::Normal,
            leased: false,
        }
    }

    /// Sets its priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the dedup key. An empty key is no key, as everywhere a job
    /// enters: the job is stored without one.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.uniqkey = Some(key.into());
        self
    }

    /// Makes the job due `secs` seconds from now.
    pub fn delay(mut self, secs: u32) -> Self {
        self.delay = secs;
        self
    }

    /// Sets who completes the row.
    pub fn flag(mut self, flag: Flag) -> Self {
        self.flag = flag;
        self
    }

    /// Checks the job against the table's column limits, so that bad input
    /// is refused with a clear error before it reaches the database.
    pub fn validate(&self) -> Result<()> {
        check_job_funcname(&self.funcname)?;
        if let Some(key) = self.uniqkey.as_ref().filter(|k| k.len() > MAX_UNIQKEY_LEN) {
            return Err(Error::UniqkeyTooLong {
                len: key.len(),
                max: MAX_UNIQKEY_LEN,
            });
        }
        // `coalesce VARCHAR(255)`, the same size, but its own message: a
        // too long coalesce is not a too long unique key.
        if let Some(key) = self.coalesce.as_ref().filter(|k| k.len() > MAX_UNIQKEY_LEN) {
            return Err(Error::CoalesceTooLong {
                len: key.len(),
                max: MAX_UNIQKEY_LEN,
            });
        }
        if self.delay > MAX_DELAY {
            return Err(Error::DelayTooLong {
                delay: self.delay,
                max: MAX_DELAY,
            });
        }
        if self.arg.len() > MAX_ARG_LEN {
            return Err(Error::ArgTooLarge {
                len: self.arg.len(),
                max: MAX_ARG_LEN,
            });
        }
        Ok(())
    }
}

/// A stored job: one row of the `job` table and the database it lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Id of the database holding the row (1..n).
    pub dbid: u32,
    /// Row id within that database.
    pub jobid: u64,
    /// Gearman function of the real worker.
    pub funcname: String,
    /// The payload (a NULL column reads as empty).
    pub arg: Vec<u8>,
    /// Dedup key, if any.
    pub uniqkey: Option<String>,
    /// Reserved.
    pub coalesce: Option<String>,
    /// Unix time the row was due when it was claimed (or its lease since).
    pub run_after: u32,
    /// Who completes the row.
    pub flag: Flag,
    /// Failures so far.
    pub failcount: u8,
    /// Which due jobs go first.
    pub priority: Priority,
}

/// Where a stored job lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobRef {
    /// Database id.
    pub dbid: u32,
    /// Row id in that database.
    pub jobid: u64,
}

impl std::fmt::Display for JobRef {
    /// `DBID:JOBID`, as the admin commands take it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dbid, self.jobid)
    }
}

impl std::str::FromStr for JobRef {
    type Err = Error;

    /// Reads `DBID:JOBID` (`1:42`); anything else is an
    /// [`Error::InvalidJobId`]. Whether the database is configured is
    /// checked where the id is used.
    fn from_str(id: &str) -> Result<JobRef> {
        let parsed = id.split_once(':').and_then(|(dbid, jobid)| {
            let dbid: u32 = dbid.parse().ok().filter(|&d| d > 0)?;
            Some(JobRef {
                dbid,
                jobid: jobid.parse().ok()?,
            })
        });
        parsed.ok_or_else(|| Error::InvalidJobId { id: id.to_string() })
    }
}

impl From<&Job> for JobRef {
    fn from(job: &Job) -> JobRef {
        JobRef {
            dbid: job.dbid,
            jobid: job.jobid,
        }
    }
}

/// When a rescheduled job runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Never: the row is kept, dead, for inspection.
    Never,
    /// This many seconds from now.
    In(u32),
    /// At this unix time.
    At(u32),
}

/// The original Garivini's retry delay after a job's `failcount`-th
/// failure: 2^failcount minutes, at most a day.
///
/// ```
/// use garivini::job::backoff;
/// assert_eq!(backoff(0), 60);       // first failure: a minute
/// assert_eq!(backoff(3), 8 * 60);
/// assert_eq!(backoff(20), 86_400);  // never more than a day
/// ```
pub fn backoff(failcount: u8) -> u32 {
    1u64.checked_shl(u32::from(failcount))
        .map_or(u64::MAX, |factor| factor.saturating_mul(60))
        .min(u64::from(MAX_BACKOFF_SECS)) as u32
}

/// gearmand refuses unique ids longer than this (GEARMAN_MAX_UNIQUE_SIZE).
pub const MAX_GEARMAN_UNIQUE: usize = 64;

/// The Gearman unique id for a job's unique key: the key itself, or none
/// when gearmand cannot take it (the database still dedups): too long, or
/// holding a NUL byte, which ends a field in the Gearman protocol and
/// would make the rest of the key the start of the workload.
pub fn gearman_unique(uniqkey: Option<&str>) -> &str {
    match uniqkey {
        Some(k) if k.len() <= MAX_GEARMAN_UNIQUE && !k.contains('\0') => k,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn job() -> Job {
        Job {
            dbid: 2,
            jobid: 42,
            funcname: "resize".into(),
            arg: b"{\"w\":10}".to_vec(),
            uniqkey: Some("img-1".into()),
            coalesce: None,
            run_after: 1_790_000_000,
            flag: Flag::Shim,
            failcount: 3,
            priority: Priority::High,
        }
    }

    #[test]
    fn backoff_doubles_from_a_minute_and_stops_at_a_day() {
        assert_eq!(backoff(0), 60);
        assert_eq!(backoff(1), 120);
        assert_eq!(backoff(5), 1920);
        assert_eq!(backoff(10), 61_440);
        assert_eq!(backoff(11), 86_400);
        assert_eq!(backoff(64), 86_400);
        assert_eq!(backoff(255), 86_400);
    }

    #[test]
    fn new_job_is_checked_against_the_column_limits() {
        assert!(NewJob::new("f", "x").validate().is_ok());
        assert!(matches!(
            NewJob::new("", "x").validate(),
            Err(Error::EmptyFuncname)
        ));
        assert!(matches!(
            NewJob::new("f".repeat(201), "x").validate(),
            Err(Error::FuncnameTooLong { len: 201, .. })
        ));
        assert!(matches!(
            NewJob::new("f\0g", "x").validate(),
            Err(Error::FuncnameHasNul { at: 1 })
        ));
        assert!(NewJob::new("f", "a\0b").unique("k\0").validate().is_ok());
        assert!(matches!(
            NewJob::new("f", "x").unique("k".repeat(256)).validate(),
            Err(Error::UniqkeyTooLong { len: 256, .. })
        ));
        for name in crate::names::RESERVED {
            assert!(matches!(
                NewJob::new(name, "x").validate(),
                Err(Error::ReservedFuncname { name: n }) if n == name
            ));
            assert!(unsendable_funcname(name).unwrap().contains("reserved"));
        }
        // Exactly the names: gearmand's function names are case-sensitive.
        assert!(NewJob::new("Run_Queued_Job", "x").validate().is_ok());
        assert!(matches!(
            NewJob::new("f", vec![0u8; MAX_ARG_LEN + 1]).validate(),
            Err(Error::ArgTooLarge { .. })
        ));
    }

    #[test]
    fn unique_keys_gearmand_cannot_take_are_not_sent() {
        assert_eq!(gearman_unique(Some("k")), "k");
        assert_eq!(gearman_unique(None), "");
        assert_eq!(gearman_unique(Some(&"k".repeat(65))), "");
        assert_eq!(
            gearman_unique(Some("k\0rest")),
            "",
            "a NUL would end the field"
        );
    }
}

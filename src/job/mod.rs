//! Jobs: a new job as a client submits it ([`NewJob`]), a stored job as a
//! worker receives it ([`Job`]), the job JSON that carries it through
//! gearmand, and the retry policy ([`backoff`], [`When`]).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

/// What keeps a function name from being dispatched, if anything: a
/// control character (newline, tab, ESC, ...). gearmand takes such a name,
/// but its line-based admin protocol then prints a `status` line that no
/// reader can parse, so no depth can be read for it (and, before readers
/// skipped such lines, for any function of that server). Rows of the
/// table are held to this; new jobs to the stricter [`check_job_funcname`].
/// A [reserved](crate::names::RESERVED) name is unsendable too: a job sent
/// to it would reach one of our roles, never a worker.
pub fn unsendable_funcname(funcname: &str) -> Option<String> {
    if funcname.is_empty() {
        return Some("funcname is empty".into());
    }
    if crate::names::is_reserved(funcname) {
        return Some(
            Error::ReservedFuncname {
                name: funcname.to_string(),
            }
            .to_string(),
        );
    }
    let (at, c) = funcname.char_indices().find(|(_, c)| c.is_control())?;
    Some(format!(
        "funcname has {} at byte {at}: gearmand's admin protocol cannot carry it",
        describe_char(c)
    ))
}

/// Checks a new job's function name: not empty, at most
/// [`MAX_FUNCNAME_LEN`] bytes, and no whitespace or control character
/// (gearmand's admin protocol splits lines on them: `status` output and
/// commands such as `drop function` cannot carry them).
pub fn check_funcname(funcname: &str) -> Result<()> {
    if funcname.is_empty() {
        return Err(Error::EmptyFuncname);
    }
    if funcname.len() > MAX_FUNCNAME_LEN {
        return Err(Error::FuncnameTooLong {
            len: funcname.len(),
            max: MAX_FUNCNAME_LEN,
        });
    }
    if let Some(at) = funcname.find('\0') {
        // Gearman separates a packet's fields with NUL: such a name
        // would reach gearmand cut short, with the rest taken for the
        // next field, and no worker could ever run the job.
        return Err(Error::FuncnameHasNul { at });
    }
    match funcname
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace())
    {
        Some((at, c)) => Err(Error::FuncnameHasBadChar {
            at,
            what: describe_char(c),
        }),
        None => Ok(()),
    }
}

/// Checks a new job's function name: [`check_funcname`], and not one of
/// the names Garivini's roles serve ([`crate::names::RESERVED`]:
/// [`Error::ReservedFuncname`]). Every entrance of a job (`inject_jobs`,
/// the web API, `Client`, `gv_inject`, periodic entries) goes through
/// [`NewJob::validate`], which calls this.
pub fn check_job_funcname(funcname: &str) -> Result<()> {
    check_funcname(funcname)?;
    if crate::names::is_reserved(funcname) {
        return Err(Error::ReservedFuncname {
            name: funcname.to_string(),
        });
    }
    Ok(())
}

/// A character as a message names it: "a newline", "a space", "U+001B".
pub(crate) fn describe_char(c: char) -> String {
    match c {
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        ' ' => "a space".into(),
        other => format!("the character U+{:04X}", u32::from(other)),
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

/// The job JSON as written: borrowed fields, so encoding allocates only the
/// output buffer.
#[derive(Serialize)]
struct JobJsonOut<'a> {
    jobid: u64,
    dbid: u32,
    funcname: &'a str,
    arg: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arg_base64: Option<String>,
    uniqkey: Option<&'a str>,
    coalesce: Option<&'a str>,
    run_after: u32,
    flag: Flag,
    failcount: u8,
    priority: Priority,
}

/// What a JSON value is, for an error message that names the type and
/// never echoes the value (which may be megabytes, or private).
fn kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of a job JSON object, read one by one so that an error names
/// the field that is wrong.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Fields {
    /// An unsigned integer given as a JSON number or as a string of digits
    /// (the Perl original sends `"jobid":"42"`). `None` when absent or null.
    fn number<T: TryFrom<u64>>(&self, key: &str) -> std::result::Result<Option<T>, String> {
        use serde_json::Value;
        let value = match self.0.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        let n = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "{key} must be an unsigned integer or a string of one, not {}",
                match value {
                    Value::Number(_) => "a negative or fractional number",
                    Value::String(_) => "a string of something else",
                    other => kind(other),
                }
            )
        })?;
        T::try_from(n)
            .map(Some)
            .map_err(|_| format!("{key} {n} is out of range"))
    }

    /// A number that must be there.
    fn required<T: TryFrom<u64>>(&self, key: &str) -> std::result::Result<T, String> {
        self.number(key)?.ok_or_else(|| format!("{key} is missing"))
    }

    /// A string, or `None` when absent or null.
    fn text(&mut self, key: &str) -> std::result::Result<Option<String>, String> {
        use serde_json::Value;
        match self.0.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "{key} must be a string or null, not {}",
                kind(&other)
            )),
        }
    }
}

impl Job {
    /// Encodes the job JSON that every real worker receives.
    ///
    /// `arg` is a JSON string when the payload is UTF-8 (the usual case:
    /// text, JSON). A payload that is not UTF-8 cannot be a JSON string
    /// without loss, so it goes as `"arg": null` plus `"arg_base64"`.
    pub fn to_json(&self) -> Vec<u8> {
        let (arg, arg_base64) = match std::str::from_utf8(&self.arg) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&self.arg)),
            ),
        };
        let out = JobJsonOut {
            jobid: self.jobid,
            dbid: self.dbid,
            funcname: &self.funcname,
            arg,
            arg_base64,
            uniqkey: self.uniqkey.as_deref(),
            coalesce: self.coalesce.as_deref(),
            run_after: self.run_after,
            flag: self.flag,
            failcount: self.failcount,
            priority: self.priority,
        };
        serde_json::to_vec(&out).expect("a struct of strings and integers always serializes")
    }

    /// The Gearman unique id the job is submitted in the background with:
    /// its unique key where gearmand can take it (a `shim` row: its
    /// function's namespace is the key's), otherwise `gv:DBID:JOBID`. A
    /// row submitted again while its first copy still waits in gearmand
    /// (its lease ran out, no worker took it) is then coalesced there,
    /// not queued twice. `controller` rows all go to `run_queued_job`,
    /// where keys of different functions could meet: they always take
    /// the row's id.
    pub fn dispatch_unique(&self) -> String {
        match gearman_unique(self.uniqkey.as_deref()) {
            key if !key.is_empty() && self.flag == Flag::Shim => key.to_string(),
            _ => format!("gv:{}:{}", self.dbid, self.jobid),
        }
    }

    /// Reads a job JSON document, as the Perl original or this crate wrote it.
    ///
    /// Numbers may come as strings (the Perl original sends `"jobid":"42"`)
    /// and unknown fields are ignored; anything else of the wrong type is
    /// refused with an [`Error::InvalidJobJson`] whose one line names the
    /// field. Never panics, whatever the bytes.
    pub fn from_json(data: &[u8]) -> Result<Job> {
        Job::read_json(data).map_err(|reason| Error::InvalidJobJson { reason })
    }

    fn read_json(data: &[u8]) -> std::result::Result<Job, String> {
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
        let serde_json::Value::Object(map) = value else {
            return Err(format!("expected a JSON object, not {}", kind(&value)));
        };
        let mut f = Fields(map);
        let jobid = f.required("jobid")?;
        let dbid = f.required("dbid")?;
        let run_after = f.number("run_after")?.unwrap_or(0);
        let failcount = f.number("failcount")?.unwrap_or(0);
        let funcname = f.text("funcname")?.ok_or("funcname is missing")?;
        if funcname.is_empty() {
            return Err("funcname is empty".into());
        }
        let arg = match (f.text("arg")?, f.text("arg_base64")?) {
            (_, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("arg_base64 is not base64: {e}"))?,
            (Some(text), None) => text.into_bytes(),
            (None, None) => Vec::new(),
        };
        Ok(Job {
            dbid,
            jobid,
            funcname,
            arg,
            uniqkey: f.text("uniqkey")?,
            coalesce: f.text("coalesce")?,
            run_after,
            flag: Flag::from_column(f.text("flag")?.as_deref().map(str::as_bytes)),
            failcount,
            // Lenient, as for flag: a writer of ours or another's.
            priority: f
                .text("priority")
                .ok()
                .flatten()
                .and_then(|p| p.parse().ok())
                .unwrap_or_default(),
        })
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

    fn job() -> Job {
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
    fn job_json_round_trips() {
        let j = job();
        assert_eq!(Job::from_json(&j.to_json()).unwrap(), j);
    }

    #[test]
    fn job_json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_slice(&job().to_json()).unwrap();
        assert_eq!(v["jobid"], 42);
        assert_eq!(v["dbid"], 2);
        assert_eq!(v["funcname"], "resize");
        assert_eq!(v["arg"], "{\"w\":10}");
        assert_eq!(v["uniqkey"], "img-1");
        assert_eq!(v["coalesce"], serde_json::Value::Null);
        assert_eq!(v["flag"], "shim");
        assert_eq!(v["failcount"], 3);
        assert!(v.get("arg_base64").is_none());
    }

    #[test]
    fn job_json_accepts_numbers_as_strings_like_the_perl_original() {
        let j = Job::from_json(
            br#"{"jobid":"42","dbid":"1","funcname":"f","arg":"x","uniqkey":null,
                "coalesce":null,"run_after":"1790000000","flag":"controller","failcount":"2"}"#,
        )
        .unwrap();
        assert_eq!((j.jobid, j.dbid, j.failcount), (42, 1, 2));
        assert_eq!(j.run_after, 1_790_000_000);
        assert_eq!(j.flag, Flag::Controller);
    }

    #[test]
    fn job_json_as_the_perl_original_wrote_it_is_read() {
        // The Perl original encodes the row as DBI fetched it: every column a
        // string, NULL as null, and dbid added.
        let j = Job::from_json(
            br#"{"jobid":"7","dbid":"3","funcname":"resize","arg":"img-1.png","uniqkey":"img-1",
                "coalesce":null,"run_after":"1790000000","flag":"shim","failcount":"0"}"#,
        )
        .unwrap();
        assert_eq!(
            j,
            Job {
                dbid: 3,
                jobid: 7,
                funcname: "resize".into(),
                arg: b"img-1.png".to_vec(),
                uniqkey: Some("img-1".into()),
                coalesce: None,
                run_after: 1_790_000_000,
                flag: Flag::Shim,
                failcount: 0,
                priority: Priority::Normal,
            }
        );
        // Unknown fields (a newer or older writer's) are ignored; absent
        // optional ones take the column defaults.
        let j = Job::from_json(br#"{"jobid":1,"dbid":1,"funcname":"f","extra":[1]}"#).unwrap();
        assert_eq!((j.arg.len(), j.run_after, j.failcount), (0, 0, 0));
        assert_eq!((j.flag, j.uniqkey), (Flag::Shim, None));
    }

    fn refused(data: &[u8]) -> String {
        match Job::from_json(data) {
            Err(Error::InvalidJobJson { reason }) => reason,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(data)),
        }
    }

    #[test]
    fn job_json_refuses_what_is_not_a_job() {
        for (bad, why) in [
            (&b"not json"[..], "not JSON: expected ident at line 1 column 2"),
            (br#"[1,2]"#, "expected a JSON object, not an array"),
            (br#"{"dbid":1,"funcname":"f"}"#, "jobid is missing"),
            (br#"{"jobid":1,"funcname":"f"}"#, "dbid is missing"),
            (br#"{"jobid":1,"dbid":1}"#, "funcname is missing"),
            (br#"{"jobid":1,"dbid":1,"funcname":""}"#, "funcname is empty"),
            (
                br#"{"jobid":-1,"dbid":1,"funcname":"f"}"#,
                "jobid must be an unsigned integer or a string of one, not a negative or fractional number",
            ),
            (
                br#"{"jobid":"x","dbid":1,"funcname":"f"}"#,
                "jobid must be an unsigned integer or a string of one, not a string of something else",
            ),
            (
                br#"{"jobid":1,"dbid":true,"funcname":"f"}"#,
                "dbid must be an unsigned integer or a string of one, not a boolean",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","run_after":1.5}"#,
                "run_after must be an unsigned integer or a string of one, not a negative or fractional number",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","failcount":300}"#,
                "failcount 300 is out of range",
            ),
            (
                br#"{"jobid":1,"dbid":"4294967296","funcname":"f"}"#,
                "dbid 4294967296 is out of range",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":7}"#,
                "funcname must be a string or null, not a number",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","arg":{"a":1}}"#,
                "arg must be a string or null, not an object",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","uniqkey":["k"]}"#,
                "uniqkey must be a string or null, not an array",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","flag":1}"#,
                "flag must be a string or null, not a number",
            ),
            (
                br#"{"jobid":1,"dbid":1,"funcname":"f","arg_base64":"!!"}"#,
                "arg_base64 is not base64: Invalid symbol 33, offset 0.",
            ),
        ] {
            assert_eq!(refused(bad), why, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn job_json_errors_are_one_line_and_do_not_echo_the_value() {
        let secret = "s3cret-payload\nline two";
        let reason = refused(
            format!(r#"{{"jobid":1,"dbid":1,"funcname":"f","failcount":"{secret}"}}"#).as_bytes(),
        );
        assert!(!reason.contains("s3cret"), "{reason}");
        assert!(!reason.contains('\n'), "{reason}");
        let err = Job::from_json(b"{\"jobid\":\n\"x\"")
            .unwrap_err()
            .to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn job_json_in_bytes_that_are_not_utf8_is_refused() {
        let mut data = br#"{"jobid":1,"dbid":1,"funcname":"f","uniqkey":"k"#.to_vec();
        data.extend([0xff, 0xfe]);
        data.extend(br#""}"#);
        assert!(refused(&data).starts_with("not JSON: invalid unicode code point"));
        let lone = refused(br#"{"jobid":1,"dbid":1,"funcname":"f","uniqkey":"\udcff"}"#);
        assert!(lone.starts_with("not JSON: "), "{lone}");
        assert_eq!(lone.lines().count(), 1, "{lone}");
    }

    #[test]
    fn binary_arg_travels_as_base64_without_loss() {
        let mut j = job();
        j.arg = vec![0xff, 0x00, 0xfe, b'a'];
        let v: serde_json::Value = serde_json::from_slice(&j.to_json()).unwrap();
        assert_eq!(v["arg"], serde_json::Value::Null);
        assert_eq!(Job::from_json(&j.to_json()).unwrap().arg, j.arg);
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

//! Reading rows of the `job` table without ever failing on one.
//!
//! The driver's tuple conversions panic on a value of another type than
//! asked for, and a table created by the original Perl Garivini allows
//! more than ours: a NULL `flag` (its client binds NULL), a NULL `arg`,
//! bytes that are not UTF-8 in a `VARBINARY` or binary-collated funcname
//! or uniqkey, a signed or wider integer column. So every column is read
//! as a plain value and converted here, leniently: a row always becomes a
//! [`Job`], and what keeps it from being dispatched is said beside it
//! ([`Read::unsendable`]), for the caller to park it with one log line.

use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{FromRowError, Row, Value};

use crate::job::{unsendable_funcname, Flag, Job, Priority};

/// The columns a [`RawRow`] reads, in its order, on a table with
/// `columns`: those of the contract, then `priority` (normal where the
/// table has no such column).
pub(super) fn columns(columns: Optional) -> String {
    format!(
        "jobid, funcname, arg, uniqkey, run_after, `coalesce`, flag, failcount, {}",
        priority(columns)
    )
}

/// The `priority` column, or normal's value where the table has none.
pub(super) fn priority(columns: Optional) -> &'static str {
    if columns.priority {
        "priority"
    } else {
        "1"
    }
}

/// The parts of a table's rows that one range of its claim index reads,
/// each as a condition to put before `run_after ...`: on a table with
/// priorities one per level of the `priority_run_after (priority,
/// run_after)` index, first claimed first (an equality each, so that the
/// index gives the run_after order; a value above low's, set by hand,
/// comes last, so that no value the column allows leaves a row out);
/// without, the whole `run_after` index.
pub(super) fn levels(columns: Optional) -> &'static [&'static str] {
    if columns.priority {
        &[
            "priority = 0 AND ",
            "priority = 1 AND ",
            "priority = 2 AND ",
            "priority > 2 AND ",
        ]
    } else {
        &[""]
    }
}

/// Columns of ours that a job table may lack (the original's, or one made
/// by an older schema.sql): a statement names them only where they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Optional {
    /// `priority`.
    pub priority: bool,
    /// `created_at`, and how to read it as unix seconds.
    pub created_at: Option<Stamp>,
    /// `attempted_at` (an integer column: unix seconds).
    pub attempted_at: bool,
    /// `failed_at` (an integer column: unix seconds).
    pub failed_at: bool,
    /// `last_error`: most characters (bytes for a binary column) it holds
    /// and whether it holds only ASCII safely (a text column of another
    /// charset than utf8mb4); `None` without it.
    pub last_error: Option<ErrorColumn>,
    /// The index `funcname_run_after (funcname, run_after, ...)` (ours, not
    /// the original's): a function's due rows, and the list of functions
    /// with their oldest row, are ranges of it.
    pub funcname_index: bool,
}

/// How a `created_at` column reads as unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// TIMESTAMP or DATETIME: `UNIX_TIMESTAMP(created_at)`.
    Date,
    /// An integer column: unix seconds already.
    Int,
}

/// A `last_error` column as the table has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorColumn {
    /// Most characters (bytes, if binary) it holds.
    pub max: u32,
    /// Its charset cannot hold every character (not utf8mb4, not binary):
    /// anything beyond ASCII is written as `?`.
    pub ascii: bool,
    /// A binary column: `max` counts bytes.
    pub binary: bool,
}

impl Optional {
    /// Whether the table tells a leased row from one waiting out a backoff
    /// (`attempted_at` and `failed_at`): the states of `garivini status`
    /// and `jobs` are then exact, see [`crate::store::Selection`].
    pub fn history(self) -> bool {
        self.attempted_at && self.failed_at
    }

    /// Reads which of ours the job table has.
    pub(super) async fn read(conn: &mut impl Queryable) -> mysql_async::Result<Optional> {
        let rows: Vec<(String, String, Option<u64>, Option<String>)> = conn
            .query(
                "SELECT LOWER(COLUMN_NAME), LOWER(DATA_TYPE), CHARACTER_MAXIMUM_LENGTH, \
                 LOWER(CHARACTER_SET_NAME) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job'",
            )
            .await?;
        let mut cols = Optional::from_columns(&rows);
        cols.funcname_index = has_funcname_index(conn).await?;
        Ok(cols)
    }

    /// From (name, data type, character length, charset) of each column.
    pub(super) fn from_columns(rows: &[(String, String, Option<u64>, Option<String>)]) -> Optional {
        let find = |name: &str| rows.iter().find(|r| r.0 == name);
        let int = |name: &str| find(name).is_some_and(|r| r.1.ends_with("int"));
        Optional {
            priority: find("priority").is_some(),
            created_at: find("created_at").and_then(|r| match r.1.as_str() {
                "timestamp" | "datetime" => Some(Stamp::Date),
                t if t.ends_with("int") => Some(Stamp::Int),
                _ => None,
            }),
            attempted_at: int("attempted_at"),
            failed_at: int("failed_at"),
            last_error: find("last_error").and_then(|r| {
                let text = r.1.contains("char") || r.1.contains("text");
                let binary = r.1.contains("binary") || r.1.contains("blob");
                (text || binary).then(|| ErrorColumn {
                    max: r.2.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
                    ascii: text && r.3.as_deref() != Some("utf8mb4"),
                    binary: !text,
                })
            }),
            funcname_index: false,
        }
    }
}

/// Whether the job table has an index on `(funcname, run_after, ...)`,
/// which makes each function's rows by due time a range of its entries.
pub(super) async fn has_funcname_index(conn: &mut impl Queryable) -> mysql_async::Result<bool> {
    let found: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job' \
               AND INDEX_NAME = 'funcname_run_after' \
               AND ((SEQ_IN_INDEX = 1 AND LOWER(COLUMN_NAME) = 'funcname') \
                 OR (SEQ_IN_INDEX = 2 AND LOWER(COLUMN_NAME) = 'run_after'))",
        )
        .await?;
    Ok(found == Some(2))
}

/// One row as the server sent it, each column as a plain value; any
/// columns after [`COLUMNS`] are kept in `extra` (a listing's arg length).
pub(super) struct RawRow {
    values: Vec<Value>,
}

impl FromRow for RawRow {
    /// Never fails: conversion happens in [`RawRow::read`].
    fn from_row_opt(row: Row) -> Result<Self, FromRowError> {
        let values = row
            .unwrap_raw()
            .into_iter()
            .map(|v| v.unwrap_or(Value::NULL))
            .collect();
        Ok(RawRow { values })
    }
}

/// A row read into a job.
#[derive(Debug)]
pub(super) struct Read {
    /// The row, with anything unreadable made readable: a funcname that is
    /// not UTF-8 is shown with its bad bytes as `\xNN`.
    pub job: Job,
    /// Why the row cannot be dispatched as it is, if it cannot.
    pub unsendable: Option<String>,
    /// The values after the job's columns, as unsigned integers.
    pub extra: Vec<u64>,
}

impl RawRow {
    /// The job in database `dbid` that this row holds.
    pub fn read(self, dbid: u32) -> Read {
        let mut values = self.values.into_iter();
        let mut next = || values.next().unwrap_or(Value::NULL);
        let jobid = number(next()).unwrap_or(0).clamp(0, i128::from(u64::MAX)) as u64;
        let (funcname, mut unsendable) = match bytes(next()) {
            None => (String::new(), Some("funcname is NULL".to_string())),
            Some(raw) => match String::from_utf8(raw) {
                Ok(name) => {
                    let why = unsendable_funcname(&name);
                    (name, why)
                }
                Err(e) => (
                    escape_bytes(e.as_bytes()),
                    Some("funcname is not UTF-8: no worker can be named by it".to_string()),
                ),
            },
        };
        let arg = bytes(next()).unwrap_or_default();
        let uniqkey = bytes(next()).map(lossy);
        let run_after = clamp_u32(number(next()));
        let coalesce = bytes(next()).map(lossy);
        let flag = Flag::from_column(bytes(next()).as_deref());
        let failcount = number(next()).unwrap_or(0).clamp(0, 255) as u8;
        // NULL (a nullable column added by hand) is the default, normal.
        let priority = number(next()).map_or(Priority::Normal, |n| {
            Priority::from_column(n.clamp(0, i128::from(u64::MAX)) as u64)
        });
        if jobid == 0 && unsendable.is_none() {
            unsendable = Some("jobid is not a positive integer".into());
        }
        let extra = values.map(|v| clamp_u64(number(v))).collect();
        Read {
            job: Job {
                dbid,
                jobid,
                funcname,
                arg,
                uniqkey,
                coalesce,
                run_after,
                flag,
                failcount,
                priority,
            },
            unsendable,
            extra,
        }
    }
}

impl RawRow {
    /// Takes the last `n` values off the row (columns read after those of
    /// [`columns`] and its extras), as they came.
    pub fn take_tail(&mut self, n: usize) -> Vec<Value> {
        let at = self.values.len().saturating_sub(n);
        self.values.split_off(at)
    }
}

/// A string column's bytes; numbers and dates as their text. `None` for NULL.
pub(super) fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::NULL => None,
        Value::Bytes(b) => Some(b),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        Value::UInt(n) => Some(n.to_string().into_bytes()),
        other => Some(other.as_sql(true).into_bytes()),
    }
}

/// An integer column, whatever its width and sign (text-protocol values
/// come as digits). `None` for NULL or anything that is not a number.
pub(super) fn number(value: Value) -> Option<i128> {
    match value {
        Value::Int(n) => Some(i128::from(n)),
        Value::UInt(n) => Some(i128::from(n)),
        Value::Float(f) => Some(f as i128),
        Value::Double(f) => Some(f as i128),
        Value::Bytes(b) => std::str::from_utf8(&b).ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn clamp_u32(n: Option<i128>) -> u32 {
    n.unwrap_or(0).clamp(0, i128::from(u32::MAX)) as u32
}

fn clamp_u64(n: Option<i128>) -> u64 {
    n.unwrap_or(0).clamp(0, i128::from(u64::MAX)) as u64
}

/// Text for a key column: bytes that are not UTF-8 become U+FFFD. A key
/// is carried to the worker for information only (completions go by
/// jobid), so a lossy copy does no harm.
fn lossy(raw: Vec<u8>) -> String {
    match String::from_utf8(raw) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Bytes as text for people: valid UTF-8 as it is, every other byte as
/// `\xNN`, so that two names that differ show differently.
pub(crate) fn escape_bytes(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// Most ids in one `IN (...)` list, and most rows in one INSERT.
pub(super) const MAX_IN_LIST: usize = 1024;

/// The database's clock, in seconds: the one every run_after is compared
/// with, so that processes on several hosts agree.
pub(super) async fn db_now(q: &mut impl Queryable) -> mysql_async::Result<u32> {
    Ok(q.query_first("SELECT UNIX_TIMESTAMP()")
        .await?
        .unwrap_or_default())
}

/// Placeholders for an `IN (...)` list of `ids`, padded to the next power
/// of two with the first id repeated, so that a handful of statement
/// shapes serve every batch size and stay in the prepared statement cache.
pub(super) fn in_list(ids: &[u64]) -> (String, Vec<Value>) {
    let n = ids.len().max(1).next_power_of_two();
    let mut params: Vec<Value> = ids.iter().map(|&id| Value::from(id)).collect();
    params.resize(n, Value::from(ids.first().copied().unwrap_or(0)));
    (repeat_placeholders("?", n), params)
}

pub(super) fn repeat_placeholders(one: &str, n: usize) -> String {
    let mut s = String::with_capacity((one.len() + 2) * n);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(one);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_list_pads_to_a_power_of_two_with_a_real_id() {
        let (sql, params) = in_list(&[7, 8, 9]);
        assert_eq!(sql, "?, ?, ?, ?");
        assert_eq!(params.len(), 4);
        assert_eq!(params[3], Value::from(7u64));
        assert_eq!(in_list(&[5]).0, "?");
    }

    fn row(values: Vec<Value>) -> Read {
        RawRow { values }.read(1)
    }

    fn b(s: &[u8]) -> Value {
        Value::Bytes(s.to_vec())
    }

    /// A row of `COLUMNS` (job 1 of function "f", due at 1, flag and the
    /// rest NULL, failcount 0) with the given columns replaced.
    fn plain(changes: &[(usize, Value)]) -> Vec<Value> {
        let mut values = vec![
            Value::UInt(1),
            b(b"f"),
            Value::NULL,
            Value::NULL,
            Value::UInt(1),
            Value::NULL,
            Value::NULL,
            Value::UInt(0),
            Value::UInt(1),
        ];
        for (i, v) in changes {
            values[*i] = v.clone();
        }
        values
    }

    const JOBID: usize = 0;
    const FUNCNAME: usize = 1;
    const ARG: usize = 2;
    const UNIQKEY: usize = 3;
    const RUN_AFTER: usize = 4;
    const FLAG: usize = 6;
    const FAILCOUNT: usize = 7;

    #[test]
    fn any_row_the_original_table_allows_is_read() {
        // flag NULL, arg NULL, failcount 255, run_after 0.
        let r = row(plain(&[
            (JOBID, Value::UInt(7)),
            (RUN_AFTER, Value::UInt(0)),
            (FAILCOUNT, Value::UInt(255)),
        ]));
        assert_eq!(r.unsendable, None);
        assert_eq!((r.job.jobid, r.job.run_after, r.job.failcount), (7, 0, 255));
        assert_eq!((r.job.flag, r.job.arg.len()), (Flag::Shim, 0));
        // The text protocol's digits, an empty flag, a signed column.
        let r = row(plain(&[
            (JOBID, b(b"8")),
            (ARG, b(b"x")),
            (RUN_AFTER, Value::Int(-5)),
            (FLAG, b(b"")),
            (FAILCOUNT, b(b"3")),
        ]));
        assert_eq!((r.job.jobid, r.job.run_after, r.job.failcount), (8, 0, 3));
        assert_eq!(r.job.flag, Flag::Shim);
        let r = row(plain(&[(FLAG, b(b"controller"))]));
        assert_eq!(r.job.flag, Flag::Controller);
    }

    #[test]
    fn a_row_that_cannot_be_sent_says_why() {
        let name = |raw: &[u8]| row(plain(&[(FUNCNAME, b(raw))]));
        let r = name(b"caf\xe9");
        assert_eq!(r.job.funcname, "caf\\xE9");
        assert!(r.unsendable.unwrap().contains("not UTF-8"));
        let r = name(b"evil\nx");
        assert_eq!(
            r.unsendable.as_deref(),
            Some("funcname has a newline at byte 4: gearmand's admin protocol cannot carry it")
        );
        assert!(name(b"a\x1b[31m").unsendable.unwrap().contains("U+001B"));
        assert!(name(b"").unsendable.is_some());
        // A space is carried by gearmand's status lines (tab separated):
        // such a row, written by SQL, still runs.
        assert_eq!(name(b"my func").unsendable, None);
    }

    #[test]
    fn keys_that_are_not_utf8_are_read_lossily() {
        let r = row(plain(&[(UNIQKEY, b(b"k\xff"))]));
        assert_eq!(r.job.uniqkey.as_deref(), Some("k\u{fffd}"));
        assert_eq!(r.unsendable, None);
    }

    #[test]
    fn extra_columns_are_kept() {
        let mut values = plain(&[]);
        values.push(Value::UInt(12));
        assert_eq!(row(values).extra, vec![12]);
    }
}

//! What happened to a job: our optional columns `created_at`,
//! `attempted_at`, `failed_at` and `last_error`, where the table has them
//! ([`Optional`]). A lease (a claim, a Controller starting an Injector's
//! job) sets `attempted_at` and clears `failed_at`; a failure recorded by
//! our Client or Controller ([`Store::fail`]) sets `failed_at` and
//! `last_error`; giving a row back unrun (a failed submit, a paused
//! function, no worker) clears `attempted_at`. So a claim that finds a row
//! attempted and neither failed nor given back knows that its last
//! attempt's lease ran out, and says so in `last_error` ([`LEASE_EXPIRED`]). A foreign worker's plain `UPDATE job SET run_after=?,
//! failcount=? WHERE jobid=?` leaves them as they were, and the original's
//! INSERT fills `created_at` by its default.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};
use serde::Serialize;

use super::rows::{bytes, in_list, number, Optional, Stamp, MAX_IN_LIST};
use super::Store;
use crate::error::Result;
use crate::job::{JobRef, When, NEVER};

/// Most characters of a last error stored (the `last_error VARCHAR(1000)`
/// of schema.sql); a longer text keeps its end, where a command's stderr
/// says what went wrong.
pub const MAX_LAST_ERROR_CHARS: usize = 1000;

/// A row's history, as far as its table records it (`None`: not recorded,
/// or the table has no such column).
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct History {
    /// Unix time the row was stored (an existing row: when the column was
    /// added, at the latest).
    pub created_at: Option<u64>,
    /// Unix time of its last lease: a QueueRunner's claim, or a Controller
    /// starting it.
    pub attempted_at: Option<u64>,
    /// Unix time its last failure was recorded, while it waits out the
    /// backoff; cleared by its next lease.
    pub failed_at: Option<u64>,
    /// What its last failure said (bounded, see [`MAX_LAST_ERROR_CHARS`]).
    pub last_error: Option<String>,
}

impl History {
    /// From the values of [`columns`], in their order.
    pub(super) fn from_values(values: Vec<Value>) -> History {
        let mut values = values.into_iter();
        let mut next = || values.next().unwrap_or(Value::NULL);
        // 0 is "not set" (the columns' default), as NULL is.
        let stamp = |v: Value| {
            number(v)
                .map(|n| n.clamp(0, i128::from(u64::MAX)) as u64)
                .filter(|&n| n > 0)
        };
        History {
            created_at: stamp(next()),
            attempted_at: stamp(next()),
            failed_at: stamp(next()),
            last_error: bytes(next()).map(|b| String::from_utf8_lossy(&b).into_owned()),
        }
    }
}

/// The four history columns a read appends (NULL for those the table lacks).
pub(super) fn columns(cols: Optional) -> String {
    let created = match cols.created_at {
        Some(Stamp::Date) => "UNIX_TIMESTAMP(created_at)",
        Some(Stamp::Int) => "created_at",
        None => "NULL",
    };
    let pick = |has: bool, name: &'static str| if has { name } else { "NULL" };
    format!(
        "{created}, {}, {}, {}",
        pick(cols.attempted_at, "attempted_at"),
        pick(cols.failed_at, "failed_at"),
        pick(cols.last_error.is_some(), "last_error")
    )
}

/// The last error a claim records for a row whose last attempt ended
/// with no outcome recorded.
pub const LEASE_EXPIRED: &str = "lease expired: the last attempt recorded no completion or \
     failure before its lease ran out (its worker lost or stopped, or slower than the lease \
     without renewing it; or a worker rescheduled the row without our client)";

/// A row whose last attempt's lease ran out: attempted, and neither failed
/// nor given back since (on a table with the history columns).
const LEASE_RAN_OUT: &str = "attempted_at > 0 AND failed_at = 0";

/// What a claim's read appends to its columns: whether each row's last
/// attempt's lease ran out ([`LEASE_RAN_OUT`]), on a table that can tell
/// (nothing on one that cannot). A test of two columns of the row the
/// read locks anyway: no statement more, and no measurable cost.
pub(super) fn lease_ran_out_column(cols: Optional) -> String {
    if cols.history() {
        format!(", {LEASE_RAN_OUT}")
    } else {
        String::new()
    }
}

/// What a claim's lease adds to its `SET`: [`LEASE_EXPIRED`] as the last
/// error of a row whose last attempt's lease ran out, then what
/// [`lease_set`] sets. (Assignments are made left to right: the test sees
/// the old `attempted_at`.)
pub(super) fn claim_set(cols: Optional) -> String {
    let expired = match (cols.attempted_at, cols.failed_at, cols.last_error) {
        (true, true, Some(col)) => {
            let max = (col.max as usize).min(MAX_LAST_ERROR_CHARS);
            let text = bound_error(LEASE_EXPIRED, max, col.ascii, col.binary);
            format!(
                ", last_error = IF({LEASE_RAN_OUT}, '{}', last_error)",
                text.replace('\'', "''")
            )
        }
        _ => String::new(),
    };
    format!("{expired}{}", lease_set(cols))
}

/// What giving a row back unrun adds to its `SET`: no attempt pending.
pub(super) fn give_back_set(cols: Optional) -> &'static str {
    if cols.attempted_at {
        ", attempted_at = 0"
    } else {
        ""
    }
}

/// What a lease adds to its `SET`: the attempt's time, and the end of the
/// wait for a retry.
pub(super) fn lease_set(cols: Optional) -> &'static str {
    match (cols.attempted_at, cols.failed_at) {
        (true, true) => ", attempted_at = UNIX_TIMESTAMP(), failed_at = 0",
        (true, false) => ", attempted_at = UNIX_TIMESTAMP()",
        (false, true) => ", failed_at = 0",
        (false, false) => "",
    }
}

/// Parks rows that cannot be dispatched (`(jobid, why)`): makes them dead
/// (run_after = never) and, where the table has the column, records why
/// as their last error, so that `garivini jobs show` and the pages say it
/// after the one log line. One statement per reason (rows parked together
/// mostly share one).
pub(super) async fn park(
    conn: &mut impl Queryable,
    parked: &[(u64, String)],
    cols: Optional,
) -> mysql_async::Result<()> {
    let mut by_reason: Vec<(&str, Vec<u64>)> = Vec::new();
    for (jobid, why) in parked {
        match by_reason.iter_mut().find(|(r, _)| r == why) {
            Some((_, ids)) => ids.push(*jobid),
            None => by_reason.push((why, vec![*jobid])),
        }
    }
    for (why, ids) in by_reason {
        for chunk in ids.chunks(MAX_IN_LIST) {
            let (list, ids) = in_list(chunk);
            let mut params = vec![Value::from(NEVER)];
            let set_error = match cols.last_error {
                Some(col) => {
                    let max = (col.max as usize).min(MAX_LAST_ERROR_CHARS);
                    params.push(Value::from(bound_error(why, max, col.ascii, col.binary)));
                    ", last_error = ?"
                }
                None => "",
            };
            params.extend(ids);
            conn.exec_drop(
                format!("UPDATE job SET run_after = ?{set_error} WHERE jobid IN ({list})"),
                Params::Positional(params),
            )
            .await?;
        }
    }
    Ok(())
}

/// `text` as `last_error` can hold it: its last `max` characters (or
/// bytes, for a binary column), cut on a character boundary, with a
/// leading `…` when cut; every character beyond ASCII as `?` in a column
/// that cannot hold it.
pub fn bound_error(text: &str, max: usize, ascii: bool, bytes: bool) -> String {
    let text: std::borrow::Cow<'_, str> = if ascii {
        text.chars()
            .map(|c| if c.is_ascii() { c } else { '?' })
            .collect::<String>()
            .into()
    } else {
        text.into()
    };
    let size = |s: &str| if bytes { s.len() } else { s.chars().count() };
    if size(&text) <= max {
        return text.into_owned();
    }
    // Room for the mark of the cut: "…" is 1 char, 3 bytes (or "." in ASCII).
    let mark = if ascii { "." } else { "\u{2026}" };
    let keep = max.saturating_sub(size(mark));
    let start = if bytes {
        let mut at = text.len() - keep.min(text.len());
        while !text.is_char_boundary(at) {
            at += 1;
        }
        at
    } else {
        let skip = text.chars().count() - keep;
        text.char_indices().nth(skip).map_or(text.len(), |(i, _)| i)
    };
    if max < size(mark) {
        return String::new();
    }
    format!("{mark}{}", &text[start..])
}

impl Store {
    /// Whether the job table of database `dbid` has the history columns
    /// (`attempted_at` and `failed_at`) that make its states exact.
    pub async fn has_history(&self, dbid: u32) -> Result<bool> {
        let db = self.db(dbid)?;
        Ok(self.optional(db).await?.history())
    }

    /// Records a failed run: sets when the row runs next and its failcount
    /// (leaving `attempted_at`: a failure is not a give-back) and, where the
    /// table has the columns, `failed_at` = now and `last_error` = `error`
    /// (bounded to the column, see [`bound_error`]; NULL when none is
    /// given), in one statement. Returns whether the row still existed.
    pub async fn fail(
        &self,
        job: JobRef,
        when: When,
        failcount: u8,
        error: Option<&str>,
    ) -> Result<bool> {
        let db = self.db(job.dbid)?;
        let cols = self.optional(db).await?;
        let mut set = String::new();
        let mut extra = Vec::new();
        if cols.failed_at {
            set.push_str(", failed_at = UNIX_TIMESTAMP()");
        }
        if let Some(col) = cols.last_error {
            let max = (col.max as usize).min(MAX_LAST_ERROR_CHARS);
            set.push_str(", last_error = ?");
            extra.push(Value::from(
                error.map(|e| bound_error(e, max, col.ascii, col.binary)),
            ));
        }
        self.set_outcome(job, when, failcount, &set, extra).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_keeps_its_end_cut_on_a_character_boundary() {
        assert_eq!(bound_error("short", 10, false, false), "short");
        assert_eq!(bound_error("abcdefghij", 5, false, false), "\u{2026}ghij");
        // é is two bytes: a byte bound never splits it.
        let cut = bound_error("xxéé", 4, false, true);
        assert_eq!(cut, "\u{2026}");
        assert_eq!(bound_error("aaaaéé", 7, false, true), "\u{2026}éé");
        assert_eq!(bound_error("été", 10, true, false), "?t?");
        assert_eq!(bound_error("abcdef", 4, true, false), ".def");
        assert_eq!(bound_error("abc", 0, false, false), "");
    }
}

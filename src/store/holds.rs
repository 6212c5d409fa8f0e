//! Claiming past held rows: the functions whose due rows a claim leaves
//! where they are ([`Holds`]), and the read that claims the other
//! functions' rows function by function through `funcname_run_after`, so
//! that a held backlog is never read.

use std::collections::{HashMap, HashSet};

use mysql_async::prelude::Queryable;
use mysql_async::Value;

use super::rows::{columns, db_now, Optional, RawRow};

/// Functions whose due rows a claim must leave where they are: paused,
/// without a worker, or with no room left under their limit or the
/// watermark ([`Holds::held`]), or with room for only so many
/// ([`Holds::room`]). A held row is neither read nor rewritten: it stays
/// due, with its `run_after`, so that every surface can say it is due and
/// why it waits, and the rows of other functions are claimed as fast as
/// on a table without it.
#[derive(Debug, Clone, Default)]
pub struct Holds {
    /// Functions none of whose rows may be claimed now.
    pub held: HashSet<String>,
    /// Functions of which at most so many rows may be claimed now.
    pub room: HashMap<String, u64>,
    /// The functions that have a worker, if known: the others are held.
    /// (Alone it does not make a claim read function by function: only a
    /// row of such a function that `decide` refused does, see
    /// [`Claim::limited`].)
    pub served: Option<HashSet<String>>,
    /// Claim function by function even when no function named here has a
    /// due row: the caller's `decide` refused rows in the last claim (a
    /// dispatch function's room, shared by several functions).
    pub by_function: bool,
}

impl Holds {
    /// Whether nothing is held or limited: a claim reads the due rows in
    /// index order, as fast as it can.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.room.is_empty() && !self.by_function
    }

    /// How many rows of `funcname` may be claimed now (`u64::MAX`: any).
    pub(super) fn room_of(&self, funcname: &str) -> u64 {
        let unserved = self.served.as_ref().is_some_and(|s| !s.contains(funcname));
        if unserved || self.held.contains(funcname) {
            0
        } else {
            self.room.get(funcname).copied().unwrap_or(u64::MAX)
        }
    }

    fn limits(&self, funcname: &str) -> bool {
        self.room_of(funcname) != u64::MAX
    }
}

/// A function's oldest row, from the loose scan of [`function_firsts`].
pub(super) struct First {
    /// The name as stored (bound back as it came: any bytes).
    pub(super) name: Value,
    /// Its oldest `run_after`.
    pub(super) first: u32,
}

impl First {
    pub(super) fn name_lossy(&self) -> String {
        match &self.name {
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            other => other.as_sql(true),
        }
    }
}

/// Most functions [`function_firsts`] lists in one scan (a dive each): a
/// table of more names has the rest claimed in index order, as without
/// holds, at the next round's fast path.
const MAX_FUNCTIONS_SCANNED: usize = 1000;

/// What [`function_firsts`] read.
pub(super) struct Scan {
    /// The database's now.
    pub(super) now: u32,
    /// Each function's oldest row.
    pub(super) firsts: Vec<First>,
    /// Whether a function `holds` holds or limits has a due row.
    pub(super) limited: bool,
}

/// The database's now and each function's oldest `run_after`, when
/// `holds` holds or limits anything and the table has
/// `funcname_run_after`: one loose index scan, a dive per function however
/// many rows each has. `None`: nothing to scan for, read in index order.
pub(super) async fn function_firsts(
    q: &mut impl Queryable,
    cols: Optional,
    holds: &Holds,
) -> mysql_async::Result<Option<Scan>> {
    if holds.is_empty() || !cols.funcname_index {
        return Ok(None);
    }
    let now = db_now(q).await?;
    // One dive of the index per function, each from the last name found.
    // Not `GROUP BY funcname`: its loose index scan is the optimizer's
    // choice, and with statistics that lag a table just filled it read the
    // whole index instead (measured: 3x the claim's cost behind 100,000
    // held rows, 8x behind 1,000,000).
    let mut firsts: Vec<First> = Vec::new();
    loop {
        let next: Option<(Value, u32)> = match firsts.last() {
            None => {
                q.query_first(
                    "SELECT funcname, run_after FROM job FORCE INDEX (funcname_run_after) \
                     ORDER BY funcname, run_after LIMIT 1",
                )
                .await?
            }
            Some(last) => {
                q.exec_first(
                    "SELECT funcname, run_after FROM job FORCE INDEX (funcname_run_after) \
                     WHERE funcname > ? ORDER BY funcname, run_after LIMIT 1",
                    (last.name.clone(),),
                )
                .await?
            }
        };
        let Some((name, first)) = next else { break };
        firsts.push(First { name, first });
        if firsts.len() >= MAX_FUNCTIONS_SCANNED {
            break;
        }
    }
    let limited = firsts
        .iter()
        .any(|f| f.first <= now && holds.limits(&f.name_lossy()));
    Ok(Some(Scan {
        now,
        firsts,
        limited,
    }))
}

/// The columns a claim reads: the job's, then whether each row's last
/// lease ran out, for the claim to count.
pub(super) fn claim_columns(cols: Optional) -> String {
    format!(
        "{}{}",
        columns(cols),
        super::history::lease_ran_out_column(cols)
    )
}

/// Up to `limit` rows due at `now`, locked, skipping those other claimers
/// hold, read function by function (see [`Store::claim`](super::Store::claim)): none of a held
/// function, at most its room of a limited one, a fair share of the rest.
pub(super) async fn rows_by_function(
    tx: &mut impl Queryable,
    cols: Optional,
    now: u32,
    firsts: &[First],
    holds: &Holds,
    limit: usize,
) -> mysql_async::Result<Vec<RawRow>> {
    let columns = claim_columns(cols);
    let mut due: Vec<(&First, u64)> = firsts
        .iter()
        .filter(|f| f.first <= now)
        .map(|f| (f, holds.room_of(&f.name_lossy())))
        .filter(|(_, room)| *room > 0)
        .collect();
    due.sort_by_key(|(f, _)| f.first);
    let mut rows: Vec<RawRow> = Vec::with_capacity(limit);
    for (i, (f, room)) in due.iter().enumerate() {
        let left = limit - rows.len();
        if left == 0 {
            break;
        }
        let share = (left.div_ceil(due.len() - i) as u64).min(*room);
        let more: Vec<RawRow> = tx
            .exec(
                format!(
                    "SELECT {columns} FROM job WHERE funcname = ? AND run_after <= ? \
                     ORDER BY run_after LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                (f.name.clone(), now, share),
            )
            .await?;
        rows.extend(more);
    }
    Ok(rows)
}

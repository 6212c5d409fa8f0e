//! `garivini status`'s counts by function and state, at a cost that does
//! not grow with the table.
//!
//! A count over an index range reads every entry in it: ~0.5 s per
//! million rows, so a status of a ten-million-row table took seconds, and
//! a dashboard polling it every few seconds kept a core of the database
//! busy. Here each function's due, waiting and dead ranges are counted
//! exactly up to a cap, and a range holding more is shown as the cap and
//! marked a lower bound ([`Counts::at_least`], printed `1000+`). The caps
//! are shares of a fixed budget of index entries and rows per status
//! ([`INDEX_BUDGET`], [`ROW_BUDGET`]), so the read costs the same on a
//! table of a thousand rows or of ten million; it grows with the number
//! of functions only (a few statements per 16 of them). What is small,
//! and so what an operator reads one by one, stays exact: with up to 5
//! functions every range up to 10,000 rows, with 100 functions up to 500.
//!
//! The function list and each function's oldest due row come from one
//! loose scan of `funcname_run_after` (one index dive per function). A
//! table without that index (the original's) is counted exactly, by the
//! caps lifted: slower, never wrong.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

use super::admin::{Counts, FunctionStatus, LEASED, NOT_FAILED};
use super::rows::{bytes, db_now, escape_bytes, number, Optional};
use super::Store;
use crate::error::Result;
use crate::job::NEVER;

/// Index entries one status reads at most, shared out among the
/// functions' due, waiting and dead ranges.
pub const INDEX_BUDGET: u64 = 150_000;
/// Rows (not only index entries) one status reads at most, to tell leased
/// rows from the others in the lease windows (history columns): rows just
/// leased, so found in the buffer pool.
pub const ROW_BUDGET: u64 = 10_000;
/// However many functions there are, each range is counted exactly up to
/// at least this many entries, and...
const MIN_INDEX_CAP: u64 = 100;
/// ...its lease window's rows read up to at least this many.
const MIN_ROW_CAP: u64 = 20;
/// A range is never counted further than this exactly.
const MAX_CAP: u64 = 10_000;
/// Nor a lease window's rows read further than this.
const MAX_ROW_CAP: u64 = 2_000;
/// Parts (one range of one function) counted by one statement; the last
/// chunk is padded to it with parts that read nothing, so that the
/// statement cache holds one statement per kind of part, not one per
/// remainder.
const CHUNK: usize = 32;

/// The caps for `functions` functions: (index entries, rows) per range
/// (the dashboard names them where it shows a lower bound).
pub(crate) fn caps(functions: usize) -> (u64, u64) {
    let n = functions.max(1) as u64;
    (
        (INDEX_BUDGET / (3 * n)).clamp(MIN_INDEX_CAP, MAX_CAP),
        (ROW_BUDGET / n).clamp(MIN_ROW_CAP, MAX_ROW_CAP),
    )
}

/// One function's ranges as read: each count exact up to its cap.
#[derive(Debug, Default, Clone, Copy)]
struct Read {
    /// Due entries read (at most the index cap + 1).
    due: u64,
    /// Failing among them.
    due_failing: u64,
    /// Entries due later, not dead, read soonest first (at most the index
    /// cap + 1).
    waiting: u64,
    /// Failing among them.
    waiting_failing: u64,
    /// Of them, due within the lease window.
    window: u64,
    /// Rows of the lease window read (history only; at most the row cap
    /// + 1).
    window_rows: u64,
    /// Of them, in flight: leased, not failed since.
    in_flight: u64,
    /// Of those, failing.
    in_flight_failing: u64,
    /// Dead entries read (at most the index cap + 1).
    dead: u64,
}

/// The counts of one function from what was read: exact where a range
/// held no more than its cap, else a lower bound, named in `at_least`.
/// A state is named only with a count above 0: a range cut at its cap
/// says nothing of how the rows past the cap split among its states, and
/// "at least 0" says nothing either. When the lease window's rows were
/// not all read, those not read may be in flight or not: they count in
/// none of in flight, retrying and scheduled (each then a lower bound),
/// rather than as scheduled.
fn counts(read: &Read, (index_cap, row_cap): (u64, u64), history: bool) -> Counts {
    let mut c = Counts::default();
    let mut at_least: Vec<&str> = Vec::new();
    let mut capped = |n: u64, cap: u64, fields: &[&'static str]| {
        if n > cap {
            at_least.extend(fields);
            cap
        } else {
            n
        }
    };
    c.due = capped(read.due, index_cap, &["due", "failing"]);
    c.dead = capped(read.dead, index_cap, &["dead"]);
    let waiting = capped(
        read.waiting,
        index_cap,
        &["scheduled", "retrying", "failing"],
    );
    // The entries due later were read soonest first: a read that stopped
    // inside the lease window did not see all of it.
    let window_seen = read.window < read.waiting || read.waiting <= index_cap;
    let failing = read.waiting_failing.min(waiting);
    if history {
        // Retrying: failed before and waiting for the next try, unless
        // leased again since (in flight).
        let rows = read.window_rows.min(row_cap);
        let in_flight = read.in_flight.min(rows).min(waiting);
        let in_flight_failing = read.in_flight_failing.min(in_flight).min(failing);
        // Rows of the window not read: in flight or not, failing or not.
        let unknown = if read.window_rows > row_cap {
            read.window.min(waiting).saturating_sub(rows)
        } else {
            0
        };
        c.in_flight = in_flight;
        c.retrying = failing.saturating_sub(in_flight_failing + unknown);
        c.scheduled = (waiting - failing).saturating_sub(in_flight - in_flight_failing + unknown);
        if !window_seen || unknown > 0 {
            at_least.push("in_flight");
        }
        if unknown > 0 {
            at_least.extend(["retrying", "scheduled"]);
        }
    } else {
        c.in_flight = read.window.min(waiting);
        if !window_seen {
            at_least.push("in_flight");
        }
        at_least.retain(|f| *f != "retrying");
        c.scheduled = waiting.saturating_sub(c.in_flight);
    }
    c.failing = read.due_failing + read.waiting_failing;
    let counted = |f: &str| match f {
        "due" => c.due,
        "dead" => c.dead,
        "in_flight" => c.in_flight,
        "retrying" => c.retrying,
        "scheduled" => c.scheduled,
        _ => c.failing,
    };
    at_least.retain(|f| counted(f) > 0);
    at_least.sort();
    at_least.dedup();
    c.at_least = at_least.into_iter().map(str::to_string).collect();
    c
}

/// One range of one function, counted up to its cap: a part of a
/// statement of parts of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `(due, failing)`, from the index.
    Due,
    /// `(waiting, failing, in the lease window)`, from the index, soonest
    /// first.
    Waiting,
    /// `(rows, in flight, in flight and failing)`: rows of the lease
    /// window (history columns only). Rows, not index entries, but rows a
    /// lease just wrote, so in the buffer pool.
    Window,
    /// `(dead, 0, 0)`, from the index.
    Dead,
}

impl Part {
    /// The part's SELECT: `?`s for its number, the function and its
    /// bounds ([`Part::params`]), giving `(number, a, b, c)`.
    /// `indexed`: the table has `funcname_run_after`, which the ranges are
    /// read from (the optimizer, left to itself, may read them from
    /// `funcname_uniqkey` and the rows).
    fn sql(self, (index_cap, row_cap): (u64, u64), indexed: bool) -> String {
        let (index, rows) = (index_cap.saturating_add(1), row_cap.saturating_add(1));
        let hint = if indexed {
            "FORCE INDEX (funcname_run_after)"
        } else {
            ""
        };
        match self {
            Part::Due => format!(
                "SELECT ?, COUNT(*), SUM(failcount > 0), 0 FROM \
                   (SELECT failcount FROM job {hint} WHERE funcname = ? AND run_after <= ? \
                    LIMIT {index}) t"
            ),
            Part::Waiting => format!(
                "SELECT ?, COUNT(*), SUM(failcount > 0), SUM(run_after <= ?) FROM \
                   (SELECT failcount, run_after FROM job {hint} \
                    WHERE funcname = ? AND run_after > ? AND run_after < {NEVER} \
                    ORDER BY run_after LIMIT {index}) t"
            ),
            Part::Window => format!(
                "SELECT ?, COUNT(*), SUM(leased), SUM(leased AND failcount > 0) FROM \
                   (SELECT {NOT_FAILED} AND {LEASED} AS leased, failcount FROM job \
                    WHERE funcname = ? AND run_after > ? AND run_after <= ? \
                    LIMIT {rows}) t"
            ),
            Part::Dead => format!(
                "SELECT ?, COUNT(*), 0, 0 FROM \
                   (SELECT 1 FROM job {hint} \
                    WHERE funcname = ? AND run_after >= {NEVER} \
                    LIMIT {index}) t"
            ),
        }
    }

    fn params(self, number: usize, name: &Value, now: u32, until: u64) -> Vec<Value> {
        let (number, name) = (Value::from(number as u64), name.clone());
        match self {
            Part::Due => vec![number, name, now.into()],
            Part::Waiting => vec![number, until.into(), name, now.into()],
            Part::Window => vec![number, name, now.into(), until.into()],
            Part::Dead => vec![number, name],
        }
    }

    fn keep(self, read: &mut Read, [a, b, c]: [u64; 3]) {
        match self {
            Part::Due => (read.due, read.due_failing) = (a, b),
            Part::Waiting => (read.waiting, read.waiting_failing, read.window) = (a, b, c),
            Part::Window => (read.window_rows, read.in_flight, read.in_flight_failing) = (a, b, c),
            Part::Dead => read.dead = a,
        }
    }
}

/// What one status read counts: the functions (name, first and last
/// run_after) and how.
struct Scope {
    names: Vec<(Value, Option<u64>, Option<u64>)>,
    caps: (u64, u64),
    indexed: bool,
    now: u32,
    until: u64,
}

impl Scope {
    /// The functions whose first and last run_after pass `test`.
    fn having(&self, test: impl Fn(u64, u64) -> bool) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&i| match self.names[i] {
                (_, Some(min), Some(max)) => test(min, max),
                _ => false,
            })
            .collect()
    }

    /// Counts `part` of each function of `which` (indexes into `names`)
    /// into `reads`, [`CHUNK`] parts per statement.
    async fn read(
        &self,
        conn: &mut impl Queryable,
        part: Part,
        which: &[usize],
        reads: &mut [Read],
    ) -> mysql_async::Result<()> {
        let sql = vec![part.sql(self.caps, self.indexed); CHUNK].join(" UNION ALL ");
        for chunk in which.chunks(CHUNK) {
            let mut params = Vec::new();
            for k in 0..CHUNK {
                // Padding parts name no function (`funcname = NULL`): they
                // read nothing.
                let name = chunk.get(k).map_or(&Value::NULL, |&i| &self.names[i].0);
                params.extend(part.params(k, name, self.now, self.until));
            }
            let rows: Vec<mysql_async::Row> = conn.exec(&sql, Params::Positional(params)).await?;
            for row in rows {
                let n: Vec<u64> = row
                    .unwrap()
                    .into_iter()
                    .map(|v| number(v).map_or(0, |n| n.max(0) as u64))
                    .collect();
                if let (Some(&i), [_, a, b, c]) = (chunk.get(n[0] as usize), n.as_slice()) {
                    part.keep(&mut reads[i], [*a, *b, *c]);
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// The database's clock and its rows by function and state at that
    /// moment, for a lease window of `lease` seconds (see
    /// [`super::Selection`]), functions in name order. Each count is exact
    /// up to a cap, and past it the cap, named in [`Counts::at_least`]
    /// (see the module's doc): the read costs the same however many rows
    /// the table holds. Takes no lock.
    pub async fn count_by_function(
        &self,
        dbid: u32,
        lease: u32,
    ) -> Result<(u32, Vec<FunctionStatus>)> {
        self.count_functions(dbid, lease, None).await
    }

    /// [`Store::count_by_function`]; of function `only` alone, if given,
    /// and then exactly (the caps lifted: what a bulk action on it will
    /// touch anyway).
    pub(super) async fn count_functions(
        &self,
        dbid: u32,
        lease: u32,
        only: Option<&str>,
    ) -> Result<(u32, Vec<FunctionStatus>)> {
        let only = only.map(str::to_string);
        let db = self.db(dbid)?;
        self.attempt(db, move || {
            let only = only.clone();
            async move {
                let mut conn = db.pool().get_conn().await?;
                let now = db_now(&mut conn).await?;
                // Read here, not through `optional`'s `run`: an admin
                // command reports a database it cannot read, it logs no
                // outage.
                let cols = Optional::read(&mut conn).await?;
                *db.optional.lock().unwrap() = Some((std::time::Instant::now(), cols));
                let indexed = cols.funcname_index;
                let until = u64::from(now) + u64::from(lease);

                // A loose index scan: two dives per function.
                let names: Vec<mysql_async::Row> = match &only {
                    None => {
                        conn.query(
                            "SELECT funcname, MIN(run_after), MAX(run_after) FROM job \
                             GROUP BY funcname ORDER BY funcname",
                        )
                        .await?
                    }
                    Some(f) => {
                        conn.exec(
                            "SELECT funcname, MIN(run_after), MAX(run_after) FROM job \
                             WHERE funcname = ? GROUP BY funcname",
                            (f.as_str(),),
                        )
                        .await?
                    }
                };
                let names: Vec<(Value, Option<u64>, Option<u64>)> = names
                    .into_iter()
                    .map(|row| {
                        let mut values = row.unwrap().into_iter();
                        let name = values.next().unwrap_or(Value::NULL);
                        let mut time = || values.next().and_then(number).map(|n| n.max(0) as u64);
                        (name, time(), time())
                    })
                    .collect();
                let caps = if indexed && only.is_none() {
                    caps(names.len())
                } else {
                    (u64::MAX - 1, u64::MAX - 1)
                };
                let scope = Scope {
                    names,
                    caps,
                    indexed,
                    now,
                    until,
                };

                // Only the ranges the first and last row say are not empty.
                let (now64, never) = (u64::from(now), u64::from(NEVER));
                let mut reads = vec![Read::default(); scope.names.len()];
                let due = scope.having(|min, _| min <= now64);
                scope.read(&mut conn, Part::Due, &due, &mut reads).await?;
                let waiting = scope.having(|min, max| max > now64 && min < never);
                scope
                    .read(&mut conn, Part::Waiting, &waiting, &mut reads)
                    .await?;
                let dead = scope.having(|_, max| max >= never);
                scope.read(&mut conn, Part::Dead, &dead, &mut reads).await?;
                if cols.history() {
                    let window: Vec<usize> = waiting
                        .into_iter()
                        .filter(|&i| reads[i].window > 0)
                        .collect();
                    scope
                        .read(&mut conn, Part::Window, &window, &mut reads)
                        .await?;
                }

                let functions = scope
                    .names
                    .iter()
                    .zip(&reads)
                    .map(|((name, min, _), read)| {
                        let mut c = counts(read, caps, cols.history());
                        c.oldest_due_secs = min.filter(|&t| t <= now64).map(|t| now64 - t);
                        let name = bytes(name.clone()).unwrap_or_default();
                        FunctionStatus {
                            funcname: escape_bytes(&name),
                            counts: c,
                            waiting: None,
                        }
                    })
                    .collect();
                Ok((now, functions))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_within_its_cap_is_exact_and_one_past_it_is_at_least_the_cap() {
        let read = Read {
            due: 101,
            due_failing: 3,
            waiting: 40,
            waiting_failing: 2,
            window: 5,
            window_rows: 5,
            in_flight: 4,
            in_flight_failing: 1,
            dead: 100,
        };
        let c = counts(&read, (100, 20), true);
        assert_eq!((c.due, c.dead), (100, 100));
        // Waiting within the index cap: exact, and so is the window.
        assert_eq!((c.in_flight, c.retrying, c.scheduled), (4, 1, 35));
        assert_eq!(c.failing, 5);
        assert_eq!(c.at_least, ["due", "failing"]);
    }

    #[test]
    fn a_read_that_stopped_inside_the_lease_window_counts_in_flight_as_at_least() {
        let read = Read {
            waiting: 101,
            window: 101,
            window_rows: 21,
            in_flight: 21,
            ..Read::default()
        };
        // 20 rows of the window read, all in flight; the 80 not read may
        // be in flight too: not counted as scheduled.
        let c = counts(&read, (100, 20), true);
        assert_eq!((c.in_flight, c.retrying, c.scheduled), (20, 0, 0));
        assert_eq!(c.at_least, ["in_flight"]);
        // Without the history columns nothing is retrying, exactly.
        let c = counts(&read, (100, 20), false);
        assert_eq!((c.in_flight, c.scheduled), (100, 0));
        assert_eq!(c.at_least, ["in_flight"]);
    }

    #[test]
    fn a_zero_is_never_a_lower_bound() {
        // Past the cap of due rows, none failing among those read: 0
        // failing, not "0+"; the same for a split of the waiting range.
        let read = Read {
            due: 101,
            waiting: 101,
            window: 0,
            ..Read::default()
        };
        let c = counts(&read, (100, 20), true);
        assert_eq!(
            (c.due, c.scheduled, c.retrying, c.failing),
            (100, 100, 0, 0)
        );
        assert_eq!(c.at_least, ["due", "scheduled"]);
        let mut total = Counts::default();
        total.add(&c);
        total.add(&counts(&Read::default(), (100, 20), true));
        for field in [
            "due",
            "in_flight",
            "retrying",
            "scheduled",
            "dead",
            "failing",
        ] {
            let n = match field {
                "due" => total.due,
                "in_flight" => total.in_flight,
                "retrying" => total.retrying,
                "scheduled" => total.scheduled,
                "dead" => total.dead,
                _ => total.failing,
            };
            assert_ne!(total.shown(field, n), "0+", "{field}: {total:?}");
        }
    }

    #[test]
    fn lease_window_rows_past_the_row_cap_are_not_counted_as_scheduled() {
        // A dozen functions share the row budget: 714 rows of the window
        // read each. 3,000 rows leased, all in the window: 714+ in flight,
        // and the 2,286 not read are not "scheduled".
        let read = Read {
            waiting: 3000,
            window: 3000,
            window_rows: 715,
            in_flight: 715,
            ..Read::default()
        };
        let c = counts(&read, (3571, 714), true);
        assert_eq!((c.in_flight, c.retrying, c.scheduled), (714, 0, 0));
        assert_eq!(c.at_least, ["in_flight"]);
        // A window of 1,000 in a range of 3,000: the 2,000 past the window
        // are not in flight; 50 failing, 10 of them in flight among those
        // read, the rest maybe among the 286 not read.
        let read = Read {
            waiting: 3000,
            waiting_failing: 50,
            window: 1000,
            window_rows: 715,
            in_flight: 700,
            in_flight_failing: 10,
            ..Read::default()
        };
        let c = counts(&read, (3571, 714), true);
        assert_eq!((c.in_flight, c.retrying, c.scheduled), (700, 0, 1974));
        assert_eq!(c.at_least, ["in_flight", "scheduled"]);
    }

    #[test]
    fn the_caps_share_a_budget_among_the_functions_within_bounds() {
        assert_eq!(caps(1), (MAX_CAP, MAX_ROW_CAP));
        assert_eq!(caps(100), (500, 100));
        assert_eq!(caps(100_000), (MIN_INDEX_CAP, MIN_ROW_CAP));
    }
}

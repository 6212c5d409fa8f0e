//! Periodic jobs: the `[[periodic]]` entries of the config file, which the
//! QueueRunners turn into rows of the `job` table, one per tick.
//!
//! An [`Entry`] names a function, an argument, a priority and a
//! [`Schedule`]: a cron expression (five fields, or six with seconds
//! first; evaluated in UTC) or an interval (`every` N seconds, the ticks
//! at the multiples of N since the epoch, so that every QueueRunner agrees
//! on them). Times are the database's clock ([`Store::clock`]), never the
//! host's.
//!
//! Guarantee: **each tick is inserted at most once**, however many
//! QueueRunners run the entry, and once its row is stored the job runs at
//! least once, as any other. Each tick's row has the unique key
//! `periodic:<name>:<tick unix time>`, and goes to the database that key
//! hashes to, where one transaction advances the entry's `last_tick` in
//! the `garivini_periodic` table (only forwards) and inserts the row:
//! whoever advances it inserts, the others find it advanced and do
//! nothing. The unique key alone would not do: the row is deleted when its
//! job completes, and a QueueRunner looking a moment later would insert
//! the same tick again.
//!
//! Ticks that no QueueRunner saw (none ran, the database was down for
//! longer than [`STALL`]) are skipped: on its first look a QueueRunner
//! inserts only the tick of the moment (at most [`ON_TIME`] old). With
//! [`Entry::catch_up`] it also inserts the last tick missed before it, one
//! only, unless another QueueRunner already did.
//!
//! [`Ticker`] is the service that does this: [`Ticker::run_once`] looks
//! once and returns counts; [`Ticker::run`] looks every
//! [`DEFAULT_CHECK_EVERY`] until shutdown (the QueueRunner starts it).
//! Without the `garivini_periodic` table on a database, the ticks that go
//! there are not inserted, with one warning per database; nothing else
//! stops.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::job::{check_job_funcname, describe_char, NewJob, Priority};
use crate::outage::Outage;
use crate::store::periodic::{Tick, TickOutcome};
use crate::store::Store;

/// How often [`Ticker::run`] looks for due ticks. A look costs nothing but
/// a read of the cached database clock unless a tick is due (then one
/// transaction per tick).
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Longest entry name, in bytes (`garivini_periodic.name VARCHAR(64)`).
pub const MAX_NAME_LEN: usize = 64;
/// Largest `arg` of an entry, in bytes: an argument written in a config
/// file; anything larger belongs in a table of its own.
pub const MAX_ARG_LEN: usize = 65_535;
/// Longest interval, seconds (a year).
pub const MAX_EVERY: u32 = 366 * 86_400;
/// On a QueueRunner's first look, the tick of the moment is inserted if
/// it is at most this many seconds old; older ticks were missed while no
/// QueueRunner ran (a restart that takes a few seconds misses nothing).
pub const ON_TIME: u32 = 10;
/// A QueueRunner whose looks are further apart than this many seconds
/// (its database was down, the process was stopped) starts afresh as on
/// its first look: the ticks in between count as missed.
pub const STALL: u32 = 60;
/// Most ticks of one entry inserted in one look (the latest ones).
pub const MAX_TICKS_PER_LOOK: usize = 64;
/// The prefix of a tick's unique key: `periodic:<name>:<tick>`.
pub const KEY_PREFIX: &str = "periodic:";

/// When an entry's ticks are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A cron expression, evaluated in UTC: five fields (minute hour
    /// day-of-month month day-of-week) or six with seconds first, as the
    /// `croner` crate reads them (`L`, `W`, `#` and names included).
    Cron(String),
    /// Every this many seconds, the ticks at its multiples since the epoch
    /// (`every = 60` ticks on each minute, `every = 3600` on each hour of
    /// UTC).
    Every(u32),
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Cron(expression) => write!(f, "cron {expression:?}"),
            Schedule::Every(secs) => write!(f, "every {secs} s"),
        }
    }
}

/// One `[[periodic]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Names the entry: its row of `garivini_periodic` and its ticks'
    /// unique keys. Unique among the entries; 1 to [`MAX_NAME_LEN`] bytes,
    /// no whitespace or control character. Renaming an entry starts it
    /// afresh.
    pub name: String,
    /// The Gearman function of the real worker.
    pub funcname: String,
    /// When its ticks are.
    pub schedule: Schedule,
    /// The payload of each tick's job.
    pub arg: Vec<u8>,
    /// The priority of each tick's job.
    pub priority: Priority,
    /// On a QueueRunner's first look, also insert the last tick missed
    /// while none ran (one only); by default missed ticks are skipped.
    pub catch_up: bool,
}

impl Entry {
    /// An entry `name` running `funcname` on `schedule`, with an empty
    /// argument, normal priority, missed ticks skipped.
    pub fn new(name: impl Into<String>, funcname: impl Into<String>, schedule: Schedule) -> Entry {
        Entry {
            name: name.into(),
            funcname: funcname.into(),
            schedule,
            arg: Vec::new(),
            priority: Priority::Normal,
            catch_up: false,
        }
    }

    /// Sets the argument of its jobs.
    pub fn arg(mut self, arg: impl Into<Vec<u8>>) -> Entry {
        self.arg = arg.into();
        self
    }

    /// Sets the priority of its jobs.
    pub fn priority(mut self, priority: Priority) -> Entry {
        self.priority = priority;
        self
    }

    /// Sets whether the last missed tick is caught up.
    pub fn catch_up(mut self, catch_up: bool) -> Entry {
        self.catch_up = catch_up;
        self
    }

    /// Checks the entry; the error is one line naming it and what is
    /// wrong (for a cron expression, the expression and why).
    pub fn validate(&self) -> Result<()> {
        self.timer().map(|_| ())
    }

    /// The unique key of its job for `tick`: `periodic:<name>:<tick>`.
    pub fn unique_key(&self, tick: u32) -> String {
        format!("{KEY_PREFIX}{}:{tick}", self.name)
    }

    /// The job of its `tick`, due at once.
    pub fn job(&self, tick: u32) -> NewJob {
        NewJob::new(self.funcname.clone(), self.arg.clone())
            .unique(self.unique_key(tick))
            .priority(self.priority)
    }

    fn refuse(&self, reason: impl std::fmt::Display) -> Error {
        Error::InvalidConfig {
            name: "periodic",
            reason: format!("entry {:?}: {reason}", self.name).replace(['\r', '\n'], " "),
        }
    }

    /// The entry's schedule, parsed, with its catch-up setting; every
    /// other field checked.
    pub fn timer(&self) -> Result<Timer> {
        if self.name.is_empty() {
            return Err(self.refuse("name is empty"));
        }
        if self.name.len() > MAX_NAME_LEN {
            return Err(self.refuse(format!(
                "name is {} bytes, at most {MAX_NAME_LEN}",
                self.name.len()
            )));
        }
        if let Some((at, c)) = self
            .name
            .char_indices()
            .find(|(_, c)| c.is_control() || c.is_whitespace())
        {
            return Err(self.refuse(format!("name has {} at byte {at}", describe_char(c))));
        }
        check_job_funcname(&self.funcname).map_err(|e| self.refuse(e))?;
        if self.arg.len() > MAX_ARG_LEN {
            return Err(self.refuse(format!(
                "arg is {} bytes, at most {MAX_ARG_LEN}",
                self.arg.len()
            )));
        }
        let rule = match &self.schedule {
            Schedule::Every(0) => return Err(self.refuse("every must be at least 1 second")),
            Schedule::Every(secs) if *secs > MAX_EVERY => {
                return Err(self.refuse(format!(
                    "every = {secs} is over a year ({MAX_EVERY} seconds)"
                )))
            }
            Schedule::Every(secs) => Rule::Every(*secs),
            Schedule::Cron(expression) => {
                let cron = expression.parse::<croner::Cron>().map_err(|e| {
                    self.refuse(format!("invalid cron expression {expression:?}: {e}"))
                })?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let rule = Rule::Cron(Box::new(cron));
                if rule
                    .next_after(u32::try_from(now).unwrap_or(u32::MAX))
                    .is_none()
                {
                    return Err(self.refuse(format!(
                        "cron expression {expression:?} never matches from now on"
                    )));
                }
                rule
            }
        };
        Ok(Timer {
            rule,
            catch_up: self.catch_up,
        })
    }
}

/// Checks every entry, and that no two share a name (they would share
/// their `last_tick`, and each would take the other's ticks).
pub fn validate(entries: &[Entry]) -> Result<()> {
    let mut names = HashSet::new();
    for entry in entries {
        entry.validate()?;
        if !names.insert(entry.name.as_str()) {
            return Err(entry.refuse("two entries have this name"));
        }
    }
    Ok(())
}

/// A parsed schedule.
#[derive(Debug, Clone)]
enum Rule {
    Cron(Box<croner::Cron>),
    Every(u32),
}

impl Rule {
    /// The first tick after `t`, if there is one before 2106.
    fn next_after(&self, t: u32) -> Option<u32> {
        match self {
            Rule::Every(n) => {
                let next = u64::from(t) / u64::from(*n) * u64::from(*n) + u64::from(*n);
                u32::try_from(next).ok()
            }
            Rule::Cron(cron) => {
                let from = DateTime::<Utc>::from_timestamp(i64::from(t), 0)?;
                let next = cron.find_next_occurrence(&from, false).ok()?;
                u32::try_from(next.timestamp()).ok()
            }
        }
    }

    /// The last tick at or before `t`.
    fn latest_at(&self, t: u32) -> Option<u32> {
        match self {
            Rule::Every(n) => Some(t - t % n),
            Rule::Cron(cron) => {
                let from = DateTime::<Utc>::from_timestamp(i64::from(t), 0)?;
                let at = cron.find_previous_occurrence(&from, true).ok()?;
                u32::try_from(at.timestamp()).ok()
            }
        }
    }
}

/// An entry's schedule, parsed: which of its ticks are due at a look.
#[derive(Debug, Clone)]
pub struct Timer {
    rule: Rule,
    catch_up: bool,
}

/// The ticks one look finds due, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// The last tick missed before this QueueRunner looked, when the
    /// entry catches up (inserted unless one was inserted since).
    pub catch_up: Option<u32>,
    /// The ticks since the last look (on a first look: the tick of the
    /// moment, if it is at most [`ON_TIME`] old).
    pub ticks: Vec<u32>,
}

impl Due {
    /// All of them, oldest first.
    pub fn all(&self) -> impl Iterator<Item = u32> + '_ {
        self.catch_up
            .iter()
            .copied()
            .chain(self.ticks.iter().copied())
    }
}

impl Timer {
    /// The ticks due at `now`, given this QueueRunner's last look at the
    /// entry (`None`: this is its first). After a look at `last`, the
    /// ticks in (last, now] are due (the latest [`MAX_TICKS_PER_LOOK`]);
    /// on a first look, or after a gap of more than [`STALL`] seconds,
    /// only the latest tick at or before `now`, if it is at most
    /// [`ON_TIME`] old, and with catch-up the latest one before that.
    pub fn due(&self, last: Option<u32>, now: u32) -> Due {
        match last {
            Some(last) if last <= now && now - last <= STALL => {
                let mut ticks = Vec::new();
                let mut t = last;
                while let Some(next) = self.rule.next_after(t).filter(|&n| n <= now) {
                    ticks.push(next);
                    t = next;
                }
                let skip = ticks.len().saturating_sub(MAX_TICKS_PER_LOOK);
                ticks.drain(..skip);
                Due {
                    catch_up: None,
                    ticks,
                }
            }
            Some(last) if last > now => Due::default(),
            _ => {
                let latest = self.rule.latest_at(now);
                let current = latest.filter(|&t| now - t <= ON_TIME);
                let missed = match current {
                    Some(t) => t.checked_sub(1).and_then(|b| self.rule.latest_at(b)),
                    None => latest,
                };
                Due {
                    catch_up: missed.filter(|_| self.catch_up),
                    ticks: current.into_iter().collect(),
                }
            }
        }
    }
}

/// What one [`Ticker::run_once`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Ticks inserted as jobs by this look.
    pub inserted: usize,
    /// Ticks due that another QueueRunner (or an earlier look) had
    /// inserted already.
    pub taken: usize,
    /// Ticks not inserted because their database has no
    /// `garivini_periodic` table.
    pub no_table: usize,
    /// Ticks whose insert failed (tried again at the next look).
    pub failed: usize,
}

/// Inserts the due ticks of the entries. See the module docs.
pub struct Ticker {
    store: Arc<Store>,
    entries: Vec<(Entry, Timer)>,
    /// Per entry, the database time up to which its ticks were handled.
    looked: Vec<Option<u32>>,
    /// Databases already warned about for having no `garivini_periodic`
    /// table.
    warned: HashSet<u32>,
    outage: Outage,
    check_every: Duration,
}

impl Ticker {
    /// A ticker of `entries` on `store`; refuses entries that do not
    /// validate ([`validate`]).
    pub fn new(entries: Vec<Entry>, store: Arc<Store>) -> Result<Ticker> {
        validate(&entries)?;
        let entries = entries
            .into_iter()
            .map(|e| e.timer().map(|t| (e, t)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Ticker {
            looked: vec![None; entries.len()],
            entries,
            store,
            warned: HashSet::new(),
            outage: Outage::new("periodic jobs: cannot insert a tick"),
            check_every: DEFAULT_CHECK_EVERY,
        })
    }

    /// Looks every `every` instead of [`DEFAULT_CHECK_EVERY`].
    pub fn with_check_every(mut self, every: Duration) -> Ticker {
        self.check_every = every;
        self
    }

    /// The database clock the ticks are read on: the first database's.
    async fn now(&self) -> u32 {
        match self.store.dbids().next() {
            Some(dbid) => self.store.clock(dbid).await,
            None => 0,
        }
    }

    /// One look: inserts each entry's due ticks, oldest first. A tick
    /// whose insert fails stops its entry for this look; the next look
    /// tries it again (unless it is then more than [`STALL`] old).
    pub async fn run_once(&mut self) -> Result<Stats> {
        let now = self.now().await;
        let mut stats = Stats::default();
        let mut failure: Option<Error> = None;
        for i in 0..self.entries.len() {
            let (entry, timer) = &self.entries[i];
            let due = timer.due(self.looked[i], now);
            let mut looked = Some(self.looked[i].map_or(now, |l| l.max(now)));
            for tick in due.all() {
                let tick_of = Tick {
                    name: &entry.name,
                    tick,
                    job: entry.job(tick),
                };
                match self.store.insert_tick(&tick_of).await {
                    Ok(TickOutcome::Inserted(job)) => {
                        stats.inserted += 1;
                        tracing::debug!(
                            periodic = %entry.name,
                            tick,
                            db.id = job.dbid,
                            job.id = job.jobid,
                            "periodic tick inserted"
                        );
                    }
                    Ok(TickOutcome::Taken) => stats.taken += 1,
                    Ok(TickOutcome::NoTable { dbid }) => {
                        stats.no_table += 1;
                        if self.warned.insert(dbid) {
                            tracing::warn!(
                                db.id = dbid,
                                "no garivini_periodic table: periodic jobs whose ticks go to this database are not run \
                                 (garivini schema check --apply creates it)"
                            );
                        }
                    }
                    Err(err) => {
                        stats.failed += 1;
                        failure = Some(err);
                        // Tried again at the next look.
                        looked = tick.checked_sub(1).or(Some(0));
                        break;
                    }
                }
            }
            self.looked[i] = looked;
        }
        match failure {
            Some(err) => self.outage.failed(&err),
            None => self.outage.ended(),
        }
        Ok(stats)
    }

    /// Looks every `check_every` until `shutdown`; each look, like each
    /// pause, is raced against it.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.entries.is_empty() {
            return;
        }
        tracing::info!(entries = self.entries.len(), "periodic jobs: ticking");
        loop {
            let look = async {
                if let Ok(stats) = self.run_once().await {
                    if stats.inserted + stats.failed > 0 {
                        tracing::debug!(?stats, "periodic look");
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = look => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.check_every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(n: u32) -> Timer {
        Entry::new("e", "f", Schedule::Every(n)).timer().unwrap()
    }

    fn cron(expression: &str) -> Entry {
        Entry::new("nightly", "f", Schedule::Cron(expression.into()))
    }

    #[test]
    fn after_a_look_the_ticks_since_it_are_due() {
        let t = every(1);
        assert_eq!(t.due(Some(100), 100).ticks, Vec::<u32>::new());
        assert_eq!(t.due(Some(100), 103).ticks, vec![101, 102, 103]);
        let t = every(10);
        assert_eq!(t.due(Some(95), 121).ticks, vec![100, 110, 120]);
        assert_eq!(t.due(Some(100), 109).ticks, Vec::<u32>::new());
        // A clock that went back finds nothing.
        assert_eq!(t.due(Some(130), 121), Due::default());
    }

    #[test]
    fn a_first_look_takes_the_tick_of_the_moment_only() {
        let t = every(1);
        assert_eq!(
            t.due(None, 1000),
            Due {
                catch_up: None,
                ticks: vec![1000]
            }
        );
        let hourly = every(3600);
        // 5 s after the hour: on time.
        assert_eq!(hourly.due(None, 7205).ticks, vec![7200]);
        // 20 minutes after it: missed, skipped.
        assert_eq!(hourly.due(None, 8400), Due::default());
        // After a stall, the same.
        assert_eq!(hourly.due(Some(100), 8400), Due::default());
    }

    #[test]
    fn catch_up_adds_the_last_missed_tick_only() {
        let hourly = Entry::new("e", "f", Schedule::Every(3600))
            .catch_up(true)
            .timer()
            .unwrap();
        assert_eq!(
            hourly.due(None, 4 * 3600 + 1200),
            Due {
                catch_up: Some(4 * 3600),
                ticks: vec![]
            }
        );
        // On time for the current tick: the one before it is the missed one.
        assert_eq!(
            hourly.due(None, 4 * 3600 + 3),
            Due {
                catch_up: Some(3 * 3600),
                ticks: vec![4 * 3600]
            }
        );
        assert_eq!(
            hourly.due(None, 4 * 3600 + 3).all().collect::<Vec<_>>(),
            vec![3 * 3600, 4 * 3600]
        );
        // A QueueRunner that keeps looking catches nothing up.
        assert_eq!(
            hourly.due(Some(5 * 3600 - 1), 5 * 3600),
            Due {
                catch_up: None,
                ticks: vec![5 * 3600]
            }
        );
    }

    #[test]
    fn a_long_gap_is_capped_to_the_latest_ticks() {
        let t = every(1);
        let due = t.due(Some(1000), 1000 + STALL);
        assert_eq!(due.ticks.len(), MAX_TICKS_PER_LOOK.min(STALL as usize));
        assert_eq!(due.ticks.last(), Some(&(1000 + STALL)));
    }

    #[test]
    fn cron_ticks_are_utc() {
        // 2026-12-01 00:00:00 UTC.
        let midnight = 1_796_083_200;
        let t = cron("30 2 * * *").timer().unwrap();
        assert_eq!(
            t.due(Some(midnight + 8990), midnight + 9001).ticks,
            vec![midnight + 9000]
        );
        let seconds = cron("*/15 * * * * *").timer().unwrap();
        assert_eq!(
            seconds.due(Some(midnight), midnight + 60).ticks,
            vec![midnight + 15, midnight + 30, midnight + 45, midnight + 60]
        );
        assert_eq!(seconds.due(None, midnight + 16).ticks, vec![midnight + 15]);
    }

    #[test]
    fn a_bad_cron_expression_is_refused_in_one_line_naming_entry_and_expression() {
        for bad in ["61 * * * *", "* * *", "every minute", "", "0 0 30 2 *"] {
            let err = cron(bad).validate().unwrap_err().to_string();
            assert!(
                err.starts_with("invalid setting periodic: entry \"nightly\": "),
                "{err}"
            );
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(cron("0 3 * * MON-FRI").validate().is_ok());
    }

    #[test]
    fn bad_entries_are_refused() {
        let ok = || Entry::new("e", "f", Schedule::Every(60));
        assert!(ok().validate().is_ok());
        for (bad, what) in [
            (
                Entry {
                    name: String::new(),
                    ..ok()
                },
                "name is empty",
            ),
            (
                Entry {
                    name: "a b".into(),
                    ..ok()
                },
                "name has a space",
            ),
            (
                Entry {
                    name: "x".repeat(65),
                    ..ok()
                },
                "name is 65 bytes",
            ),
            (
                Entry {
                    funcname: String::new(),
                    ..ok()
                },
                "funcname",
            ),
            (
                Entry {
                    schedule: Schedule::Every(0),
                    ..ok()
                },
                "at least 1 second",
            ),
            (ok().arg(vec![0; MAX_ARG_LEN + 1]), "arg is 65536 bytes"),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
        let err = validate(&[ok(), ok()]).unwrap_err().to_string();
        assert!(err.contains("two entries have this name"), "{err}");
    }

    #[test]
    fn a_ticks_job_has_the_key_of_its_name_and_time() {
        let e = Entry::new("report", "mail", Schedule::Every(60))
            .arg("x")
            .priority(Priority::High);
        let job = e.job(1_800_000_000);
        assert_eq!(job.uniqkey.as_deref(), Some("periodic:report:1800000000"));
        assert_eq!((job.funcname.as_str(), &job.arg[..]), ("mail", &b"x"[..]));
        assert_eq!(job.priority, Priority::High);
        assert_eq!(job.delay, 0);
    }
}

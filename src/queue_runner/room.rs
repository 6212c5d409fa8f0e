//! What gearmand can take in a QueueRunner's round, from its `status`:
//! which functions are held, and which due rows a claim may send.

use std::collections::{HashMap, HashSet};

use crate::functions::Functions;
use crate::gearman::FunctionLoad;
use crate::job::Job;
use crate::names::dispatch_function;
use crate::store::functions::PausedFunctions;
use crate::store::Holds;

/// What gearmand can take in this round, from its `status`.
pub(super) struct Room {
    /// The roles' watermark (0: none).
    watermark: u64,
    /// Places left under the watermark, per dispatch function (a function
    /// gearmand does not know has all of `watermark`).
    left: HashMap<String, u64>,
    /// Functions with at least one worker.
    served: HashSet<String>,
    /// Places left under each limited function's concurrency limit, by
    /// its real name (whichever mode its rows are in).
    limit_left: HashMap<String, u64>,
    functions: Functions,
}

impl Room {
    pub(super) fn new(
        watermark: u64,
        load: HashMap<String, FunctionLoad>,
        functions: Functions,
    ) -> Room {
        let served = load
            .iter()
            .filter(|(_, l)| l.workers > 0)
            .map(|(f, _)| f.clone())
            .collect();
        let limit_left = functions
            .entries()
            .into_iter()
            .filter_map(|(f, s)| {
                let queued = load.get(f).map_or(0, |l| l.queued);
                Some((
                    f.to_string(),
                    u64::from(s.concurrency?).saturating_sub(queued),
                ))
            })
            .collect();
        let mut room = Room {
            watermark,
            left: HashMap::new(),
            served,
            limit_left,
            functions,
        };
        room.left = load
            .into_iter()
            .map(|(f, l)| {
                let left = room.watermark_of(&f).saturating_sub(l.queued);
                (f, left)
            })
            .collect();
        room
    }

    /// The watermark of dispatch function `function`: its own
    /// ([`crate::functions::Settings::watermark`]), else the roles'; 0 is none.
    fn watermark_of(&self, function: &str) -> u64 {
        match self
            .functions
            .get(function)
            .watermark
            .unwrap_or(self.watermark)
        {
            0 => u64::MAX,
            w => w,
        }
    }

    /// What a claim of at most `batch` rows must hold: functions without a
    /// worker, and those with less room than a batch under their limit or
    /// (for their throughput-mode rows, sent under their own name) the
    /// watermark. Low-latency rows share `run_queued_job`'s room: `admit`
    /// holds them.
    pub(super) fn holds(&self, batch: usize) -> Holds {
        let mut room: HashMap<String, u64> = HashMap::new();
        let small = |n: u64| n < batch as u64;
        for (f, &left) in self.limit_left.iter().chain(&self.left) {
            if small(left) && f != crate::names::RUN_QUEUED_JOB {
                let r = room.entry(f.clone()).or_insert(left);
                *r = (*r).min(left);
            }
        }
        Holds {
            room,
            served: Some(self.served.clone()),
            ..Holds::default()
        }
    }

    /// Which of the `due` rows to dispatch (`true`) and which to hold: per
    /// function, as many go as there is room for, and only while its real
    /// function has a worker. A job nobody can run waits in the database:
    /// in gearmand it would only be submitted again each lease and pile
    /// up (and a `controller` row would hold a Controller's slot until a
    /// worker came). Keeps no state (a claim may be retried). A paused
    /// function's rows wait too, and take no room.
    pub(super) fn admit(&self, due: &[Job], paused: &PausedFunctions) -> Vec<bool> {
        let mut taken: HashMap<&str, u64> = HashMap::new();
        let mut limited: HashMap<&str, u64> = HashMap::new();
        due.iter()
            .map(|job| {
                if paused.contains(&job.funcname) || !self.served.contains(&job.funcname) {
                    return false;
                }
                if let Some(&limit_left) = self.limit_left.get(&job.funcname) {
                    let n = limited.entry(&job.funcname).or_insert(0);
                    if *n >= limit_left {
                        return false;
                    }
                    *n += 1;
                }
                let function = dispatch_function(job.flag, &job.funcname);
                let left = self
                    .left
                    .get(function)
                    .copied()
                    .unwrap_or_else(|| self.watermark_of(function));
                let n = taken.entry(function).or_insert(0);
                *n += 1;
                *n <= left
            })
            .collect()
    }

    /// Counts `dispatched` against the room.
    pub(super) fn take(&mut self, dispatched: &[Job]) {
        for job in dispatched {
            let function = dispatch_function(job.flag, &job.funcname);
            let watermark = self.watermark_of(function);
            let left = self.left.entry(function.to_string()).or_insert(watermark);
            *left = left.saturating_sub(1);
            if let Some(left) = self.limit_left.get_mut(&job.funcname) {
                *left = left.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions;
    use crate::job::Flag;
    use crate::names::RUN_QUEUED_JOB;

    fn job(funcname: &str, flag: Flag) -> Job {
        Job {
            dbid: 1,
            jobid: 1,
            funcname: funcname.into(),
            arg: Vec::new(),
            uniqkey: None,
            coalesce: None,
            run_after: 0,
            flag,
            failcount: 0,
            priority: Default::default(),
        }
    }

    #[test]
    fn admit_fills_each_function_up_to_its_room() {
        let status: HashMap<String, FunctionLoad> = [
            ("a".to_string(), FunctionLoad::of(1, 1)),
            (RUN_QUEUED_JOB.to_string(), FunctionLoad::of(1, 1)),
            ("b".to_string(), FunctionLoad::of(0, 1)),
            ("served".to_string(), FunctionLoad::of(0, 1)),
        ]
        .into();
        let room = Room::new(2, status, Functions::default());
        let due = [
            job("a", Flag::Shim),
            job("a", Flag::Shim),
            job("b", Flag::Shim),
            job("served", Flag::Controller),
            job("served", Flag::Controller),
        ];
        assert_eq!(
            room.admit(&due, &PausedFunctions::default()),
            vec![true, false, true, true, false]
        );
    }

    #[test]
    fn rows_wait_in_the_database_while_their_function_has_no_worker() {
        let status: HashMap<String, FunctionLoad> = [
            ("idle".to_string(), FunctionLoad::of(0, 0)),
            ("busy".to_string(), FunctionLoad::of(3, 1)),
        ]
        .into();
        let room = Room::new(10, status, Functions::default());
        let due = [
            job("idle", Flag::Controller),
            job("unknown", Flag::Controller),
            job("idle", Flag::Shim),
            job("unknown", Flag::Shim),
            job("busy", Flag::Shim),
        ];
        assert_eq!(
            room.admit(&due, &PausedFunctions::default()),
            vec![false, false, false, false, true]
        );
    }

    #[test]
    fn a_paused_functions_rows_wait_and_leave_the_room_to_the_others() {
        let status: HashMap<String, FunctionLoad> = [
            ("paused".to_string(), FunctionLoad::of(0, 1)),
            ("other".to_string(), FunctionLoad::of(0, 1)),
        ]
        .into();
        let room = Room::new(1, status, Functions::default());
        let due = [
            job("paused", Flag::Shim),
            job("paused", Flag::Shim),
            job("other", Flag::Shim),
        ];
        assert_eq!(
            room.admit(&due, &PausedFunctions::of(["paused"])),
            vec![false, false, true]
        );
        assert_eq!(
            room.admit(&due, &PausedFunctions::default()),
            vec![true, false, true]
        );
    }

    #[test]
    fn a_limited_function_gets_only_the_room_its_limit_leaves() {
        let status: HashMap<String, FunctionLoad> = [
            ("one".to_string(), FunctionLoad::of(0, 1)),
            ("busy".to_string(), FunctionLoad::of(1, 1)),
            ("own".to_string(), FunctionLoad::of(3, 1)),
            ("free".to_string(), FunctionLoad::of(0, 1)),
        ]
        .into();
        let limit = |c: u32| functions::Settings {
            concurrency: Some(c),
            ..Default::default()
        };
        let own = functions::Settings {
            watermark: Some(4),
            ..Default::default()
        };
        let functions = Functions::new([
            ("one".to_string(), limit(1)),
            ("busy".to_string(), limit(1)),
            ("own".to_string(), own),
        ]);
        // No watermark of the roles': only the function's own settings hold.
        let room = Room::new(0, status, functions);
        let due = [
            job("one", Flag::Shim),
            job("one", Flag::Controller),
            job("busy", Flag::Shim),
            job("own", Flag::Shim),
            job("own", Flag::Shim),
            job("free", Flag::Shim),
            job("free", Flag::Shim),
        ];
        assert_eq!(
            room.admit(&due, &PausedFunctions::default()),
            vec![true, false, false, true, false, true, true]
        );
    }
}

//! CPU time of the processes a phase runs, and of the shared MariaDB
//! server, over the measured part of the phase: [`Meter`].
//!
//! A process's CPU time is read from the kernel's CPU clock of that
//! process (`clock_gettime` on the clock `clock_getcpuclockid(pid)` names):
//! user + system time of all its threads, those that have exited
//! included, in nanoseconds. `/proc/PID/schedstat` has the same resolution
//! but counts the main thread only, and `/proc/PID/stat` counts every
//! thread but in clock ticks (10 ms at 100 Hz: a whole latency phase of
//! gv_inject is a handful of ticks); it is the fallback where the clock
//! cannot be read. A process that exits during the phase (gv_inject) is
//! read while it is a zombie, before it is reaped: its clock is final
//! then.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::scenarios::Metrics;

/// What a process is to the scenario: the columns of the CPU table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Gearmand,
    /// `garivini` role processes (QueueRunner, Injector, Controller).
    Roles,
    /// gv_consume.
    Worker,
    /// gv_inject.
    Client,
    /// gv_bench itself, when the scenario's client and worker run in it
    /// (scenarios 1 and 2): one tokio runtime runs both, on the same
    /// threads, so they are one figure.
    InProcess,
}

impl Role {
    /// The role of one of a phase's processes, by its name.
    pub fn of(name: &str) -> Role {
        match name {
            "gearmand" => Role::Gearmand,
            "gv_consume" => Role::Worker,
            "gv_inject" => Role::Client,
            _ => Role::Roles,
        }
    }

    /// Its metric: µs of CPU per job of the processes of this role.
    pub fn metric(self) -> &'static str {
        match self {
            Role::Gearmand => "cpu_us_gearmand",
            Role::Roles => "cpu_us_roles",
            Role::Worker => "cpu_us_worker",
            Role::Client => "cpu_us_client",
            Role::InProcess => "cpu_us_in_process",
        }
    }

    pub const ALL: [Role; 5] = [
        Role::Gearmand,
        Role::Roles,
        Role::Worker,
        Role::Client,
        Role::InProcess,
    ];
}

/// µs of CPU per job of every process of the phase together (the shared
/// MariaDB server not included).
pub const OURS: &str = "cpu_us_ours";
/// µs of CPU per job of the MariaDB server over the phase.
pub const MARIADB: &str = "cpu_us_mariadbd";
/// OURS + MARIADB.
pub const ALL: &str = "cpu_us_all";
/// MARIADB less what the server was using before the phase (at the rate of
/// MARIADB_BEFORE, over the phase's length): an estimate of its CPU for the
/// phase's jobs alone, when the machine's other users load it alike
/// throughout; not given when that load is over half of MARIADB.
pub const MARIADB_NET: &str = "cpu_us_mariadbd_net";
/// OURS + MARIADB_NET.
pub const ALL_NET: &str = "cpu_us_all_net";
/// The CPU of the MariaDB server's threads that served a connection to
/// the phase's database (one thread per connection; seen in PROCESSLIST's
/// TID, polled every 100 ms), µs per job: a lower bound of its share, with
/// none of InnoDB's background work (purge, page flushing) in it.
pub const MARIADB_CONNS: &str = "cpu_us_mariadbd_conns";
/// OURS + MARIADB_CONNS.
pub const ALL_CONNS: &str = "cpu_us_all_conns";
/// The MariaDB server's CPU in the half second before the phase, the
/// phase's services idle: ms of CPU per second, what the machine's other
/// users (and our idle services) cost it.
pub const MARIADB_BEFORE: &str = "mariadbd_busy_before_ms_per_s";
/// The MariaDB server's CPU during the phase, ms per second.
pub const MARIADB_DURING: &str = "mariadbd_busy_ms_per_s";
/// Length of the measured part of the phase.
pub const PHASE_S: &str = "cpu_phase_s";
/// Prefix of the per-process metrics: `cpu_us_proc_<name>`.
pub const PROC_PREFIX: &str = "cpu_us_proc_";

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod clock {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }

    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
        fn sysconf(name: i32) -> i64;
    }

    /// CPUCLOCK_SCHED: the scheduler's runtime, in ns.
    const CPUCLOCK_SCHED: i32 = 2;
    /// glibc's CLOCK_PROCESS_CPUTIME_ID.
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    /// glibc's _SC_CLK_TCK.
    const SC_CLK_TCK: i32 = 2;

    fn read(clock: i32) -> Option<u64> {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec (64-bit Linux
        // layout); clock_gettime writes only into it.
        let rc = unsafe { clock_gettime(clock, &mut ts) };
        (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// CPU ns of all threads of process `pid` (the clock
    /// `clock_getcpuclockid(pid)` names: MAKE_PROCESS_CPUCLOCK).
    pub fn process_ns(pid: u32) -> Option<u64> {
        let pid = i32::try_from(pid).ok().filter(|&p| p > 0)?;
        read((!pid << 3) | CPUCLOCK_SCHED)
    }

    /// CPU ns of this process, all its threads.
    pub fn own_ns() -> Option<u64> {
        read(CLOCK_PROCESS_CPUTIME_ID)
    }

    /// Clock ticks per second of /proc/PID/stat.
    pub fn ticks_per_s() -> u64 {
        // SAFETY: sysconf takes an int and reads nothing of ours.
        let t = unsafe { sysconf(SC_CLK_TCK) };
        if t > 0 {
            t as u64
        } else {
            100
        }
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
mod clock {
    pub fn process_ns(_pid: u32) -> Option<u64> {
        None
    }
    pub fn own_ns() -> Option<u64> {
        None
    }
    pub fn ticks_per_s() -> u64 {
        100
    }
}

/// The fields of /proc/PID/stat after the command name: state first.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may hold spaces or parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of /proc/PID/stat, in ns (clock-tick resolution).
fn stat_ns(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // Fields 14 and 15 of stat(5); the state is field 3, f[0].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000_000 / clock::ticks_per_s())
}

/// CPU ns of process `pid` so far (None: no such process, or unreadable).
pub fn process_ns(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    clock::process_ns(pid).or_else(|| stat_ns(pid))
}

/// CPU ns of gv_bench itself so far.
pub fn own_ns() -> Option<u64> {
    clock::own_ns().or_else(|| stat_ns(std::process::id()))
}

/// Whether process `pid` has exited and waits to be reaped (its CPU time
/// is final then); false while it runs, or when there is no such process.
pub fn is_zombie(pid: u32) -> bool {
    pid != 0 && stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) == Some("Z"))
}

/// The command name of process `pid`.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// CPU time over the measured part of a phase.
pub struct Meter {
    at: Instant,
    jobs: u64,
    own: Option<u64>,
    in_process: bool,
    mariadbd: Option<(u32, u64)>,
    mariadbd_before: Option<f64>,
    db_threads: Option<DbThreads>,
    /// (name, pid, CPU ns at the start).
    start: Vec<(String, u32, u64)>,
}

/// The MariaDB server's threads that served the phase's database.
pub struct DbThreads {
    /// CPU ns of every thread of the server at the start.
    start: HashMap<u32, u64>,
    /// The threads seen serving the database, filled by a poller.
    pub seen: Arc<Mutex<HashSet<u32>>>,
    /// Stops the poller.
    _stop: tokio_util::sync::DropGuard,
}

impl DbThreads {
    pub fn new(pid: u32, stop: tokio_util::sync::DropGuard) -> DbThreads {
        DbThreads {
            start: threads_ns(pid),
            seen: Arc::default(),
            _stop: stop,
        }
    }
}

/// CPU ns of each thread of process `pid` (/proc/PID/task/TID/schedstat:
/// ns on the CPU, per thread).
fn threads_ns(pid: u32) -> HashMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        Some((tid, thread_ns(pid, tid)?))
    })
    .collect()
}

fn thread_ns(pid: u32, tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process's CPU ns at the end of the phase.
pub struct Final {
    pub name: String,
    pub ns: Option<u64>,
}

impl Meter {
    /// Starts measuring `jobs` jobs now. `procs`: (name, pid) of the
    /// phase's processes running now; those started later count from zero
    /// (their whole life is in the phase). `in_process`: the scenario's
    /// client and worker run in gv_bench (its CPU is theirs).
    pub fn start(
        jobs: u64,
        procs: &[(String, u32)],
        mariadbd: Option<u32>,
        mariadbd_before: Option<f64>,
        db_threads: Option<DbThreads>,
        in_process: bool,
    ) -> Meter {
        let start = procs
            .iter()
            .filter_map(|(name, pid)| Some((name.clone(), *pid, process_ns(*pid)?)))
            .collect();
        Meter {
            at: Instant::now(),
            jobs,
            own: own_ns(),
            in_process,
            mariadbd: mariadbd.and_then(|pid| Some((pid, process_ns(pid)?))),
            mariadbd_before,
            db_threads,
            start,
        }
    }

    /// Ends the measurement: `procs` the (name, pid) of the phase's
    /// processes still running, `exited` the final CPU of those that
    /// exited during it. Appends the metrics to `m`.
    pub fn finish(self, procs: &[(String, u32)], exited: Vec<Final>, m: &mut Metrics) {
        let secs = self.at.elapsed().as_secs_f64();
        let jobs = self.jobs.max(1) as f64;
        let per_job = |ns: u64| ns as f64 / 1000.0 / jobs;
        let mut ends: Vec<Final> = procs
            .iter()
            .map(|(name, pid)| Final {
                name: name.clone(),
                ns: process_ns(*pid),
            })
            .collect();
        ends.extend(exited);
        let mut by_role = [0u64; Role::ALL.len()];
        let mut seen = [false; Role::ALL.len()];
        let mut names: Vec<String> = Vec::new();
        for end in ends {
            let Some(ns) = end.ns else { continue };
            let since = self
                .start
                .iter()
                .find(|(name, _, _)| *name == end.name)
                .map_or(0, |s| s.2);
            let used = ns.saturating_sub(since);
            let role = Role::of(&end.name);
            let i = Role::ALL.iter().position(|&r| r == role).expect("a role");
            by_role[i] += used;
            seen[i] = true;
            // Two processes of one name (not run today) get a number.
            let mut name = end.name.clone();
            let mut k = 1;
            while names.contains(&name) {
                k += 1;
                name = format!("{}{k}", end.name);
            }
            names.push(name.clone());
            m.push((leak(format!("{PROC_PREFIX}{name}")), per_job(used)));
        }
        if self.in_process {
            if let (Some(a), Some(b)) = (self.own, own_ns()) {
                let i = Role::ALL
                    .iter()
                    .position(|&r| r == Role::InProcess)
                    .expect("a role");
                by_role[i] += b.saturating_sub(a);
                seen[i] = true;
                m.push((
                    leak(format!("{PROC_PREFIX}gv_bench")),
                    per_job(b.saturating_sub(a)),
                ));
            }
        }
        let mut ours = 0;
        for (i, role) in Role::ALL.iter().enumerate() {
            if seen[i] {
                m.push((role.metric(), per_job(by_role[i])));
                ours += by_role[i];
            }
        }
        m.push((OURS, per_job(ours)));
        m.push((PHASE_S, secs));
        if let Some((pid, a)) = self.mariadbd {
            if let Some(b) = process_ns(pid) {
                let used = b.saturating_sub(a);
                m.push((MARIADB, per_job(used)));
                m.push((ALL, per_job(ours + used)));
                m.push((MARIADB_DURING, used as f64 / 1e6 / secs.max(1e-9)));
                if let Some(t) = &self.db_threads {
                    let seen = t.seen.lock().unwrap().clone();
                    let conns: u64 = seen
                        .iter()
                        .filter_map(|&tid| {
                            let end = thread_ns(pid, tid)?;
                            Some(end.saturating_sub(t.start.get(&tid).copied().unwrap_or(0)))
                        })
                        .sum();
                    m.push((MARIADB_CONNS, per_job(conns)));
                    m.push((ALL_CONNS, per_job(ours + conns)));
                }
                // Only when the phase's own share stands out: with the
                // server as busy before as during, the difference is noise.
                if let Some(before) = self.mariadbd_before {
                    let others = (before * 1e6 * secs) as u64;
                    if others <= used / 2 {
                        let net = used - others;
                        m.push((MARIADB_NET, per_job(net)));
                        m.push((ALL_NET, per_job(ours + net)));
                    }
                }
            }
        }
        if let Some(before) = self.mariadbd_before {
            m.push((MARIADB_BEFORE, before));
        }
    }
}

/// A metric name made at run time (the metrics are named by `&'static
/// str`); a handful per phase.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// ms of CPU per second process `pid` uses over `window` (slept through).
pub async fn busy_ms_per_s(pid: u32, window: std::time::Duration) -> Option<f64> {
    let a = process_ns(pid)?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let b = process_ns(pid)?;
    Some(b.saturating_sub(a) as f64 / 1e6 / t.elapsed().as_secs_f64())
}

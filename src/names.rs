//! Names and defaults that several parts share, in one leaf that anything
//! may import: the Gearman function names of the contract (other programs
//! and the Perl original depend on them), and the settings the roles must
//! agree on.

use crate::job::Flag;

/// The function the Injector serves: a JSON job (or an array of them) in,
/// `{"jobid":N,"dbid":N}` out, once committed.
pub const INJECT_JOBS: &str = "inject_jobs";
/// The function a Controller serves; `controller` rows are sent to it.
pub const RUN_QUEUED_JOB: &str = "run_queued_job";
/// The contract's job lookup by an `inject_jobs` answer (DESIGN.md), kept
/// for the Injector.
pub const JOB_STATUS: &str = "job_status";

/// The functions Garivini's roles serve (or the contract keeps for them):
/// no job may be sent to one. A job named `run_queued_job` would have the
/// Controller submit it to itself, slot after slot; one named
/// `inject_jobs` would reach the Injector as a request it refuses, every
/// lease. So they are refused as a new job's funcname
/// ([`crate::job::check_job_funcname`]) and a row that has one is parked
/// ([`crate::job::unsendable_funcname`]).
pub const RESERVED: [&str; 3] = [INJECT_JOBS, RUN_QUEUED_JOB, JOB_STATUS];

/// Whether `funcname` is one of the [`RESERVED`] names (exactly: Gearman
/// function names are case-sensitive).
pub fn is_reserved(funcname: &str) -> bool {
    RESERVED.contains(&funcname)
}

/// How long a dispatched row is leased before it is due again (seconds).
/// Every role that leases (QueueRunner, Injector, Controller) and the admin
/// commands, which tell in-flight rows by it, default to this.
pub const DEFAULT_LEASE: u32 = 1000;
/// Most jobs of one function queued in gearmand before rows are held back
/// (0 = no limit): the QueueRunner's and the Injector's watermark.
pub const DEFAULT_QUEUE_WATERMARK_DEPTH: u64 = 4000;
/// How soon a row whose submit failed is due again (seconds).
pub const DEFAULT_SUBMIT_RETRY_DELAY: u32 = 5;

/// The Gearman function a row is sent to: its own for `shim` rows, the
/// Controller's for `controller` rows.
pub fn dispatch_function(flag: Flag, funcname: &str) -> &str {
    match flag {
        Flag::Shim => funcname,
        Flag::Controller => RUN_QUEUED_JOB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_rows_go_to_run_queued_job() {
        assert_eq!(dispatch_function(Flag::Shim, "resize"), "resize");
        assert_eq!(
            dispatch_function(Flag::Controller, "resize"),
            RUN_QUEUED_JOB
        );
    }
}

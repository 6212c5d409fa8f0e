//! The fault table `scripts/test` prints: one row per fault run, appended
//! to `target/faults-report.txt` by the fault tests.

use std::collections::HashSet;
use std::io::Write as _;
use std::time::Duration;

/// One row of the fault table.
#[derive(Debug, Clone)]
pub struct FaultRow<'a> {
    /// `throughput` or `lowlatency`.
    pub mode: &'a str,
    /// What was done.
    pub fault: &'a str,
    /// Rows not yet completed when the fault hit.
    pub in_flight: u64,
    /// Jobs a client was told were stored.
    pub acked: usize,
    /// Jobs the database committed.
    pub committed: usize,
    /// Runs, counted by job id.
    pub runs: usize,
    /// Runs beyond the first of a job.
    pub duplicates: usize,
    /// From the fault to an empty table.
    pub drained: Duration,
}

impl FaultRow<'_> {
    /// Prints the row to stderr and appends it to the table, in one write
    /// in append mode, so that rows of tests running in parallel do not mix.
    pub fn write(&self) {
        let line = format!(
            "{:<11} {:<44} {:>9} {:>6} {:>9} {:>5} {:>10} {:>8.1}\n",
            self.mode,
            self.fault,
            self.in_flight,
            self.acked,
            self.committed,
            self.runs,
            self.duplicates,
            self.drained.as_secs_f64()
        );
        eprint!("{line}");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/faults-report.txt");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// Nothing lost, nothing invented: every acked job committed (when there
/// is an ack log), every committed job ran, nothing ran uncommitted.
/// Returns (runs, duplicates).
pub fn check_runs(
    what: &str,
    acked: Option<&HashSet<(u32, u64)>>,
    committed: &HashSet<(u32, u64)>,
    runs: &[(u32, u64)],
) -> (usize, usize) {
    let ran: HashSet<(u32, u64)> = runs.iter().copied().collect();
    let none = |jobs: Vec<&(u32, u64)>, problem: &str| {
        assert!(
            jobs.is_empty(),
            "{what}: {} {problem}: {:?}",
            jobs.len(),
            &jobs[..jobs.len().min(5)]
        );
    };
    if let Some(acked) = acked {
        none(
            acked.difference(committed).collect(),
            "jobs acknowledged but never committed",
        );
    }
    none(
        committed.difference(&ran).collect(),
        "committed jobs never ran",
    );
    none(
        ran.difference(committed).collect(),
        "jobs ran that were never committed",
    );
    (runs.len(), runs.len() - ran.len())
}

//! What the example client (`gv_inject`) and worker (`gv_consume`) agree
//! on: how jobs travel, and the clock stamped into each arg.

/// How jobs travel (see the README).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Rows go straight into the database; the worker deletes its row.
    Throughput,
    /// Jobs go through `inject_jobs` (Injector) and `run_queued_job`
    /// (Controller); the worker just runs them.
    Lowlatency,
}

/// Microseconds since the epoch: the clock `gv_inject` stamps into each
/// arg and `gv_consume` compares with when the job starts.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

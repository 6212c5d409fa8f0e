//! gv_bench's flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "gv_bench",
    version,
    about = "Benchmark: gearmand (memory, -q mysql) against Garivini's throughput and low-latency modes",
    after_help = "Scenarios: 1 gearmand memory-only (ceiling), 2 gearmand -q mysql, \
                  3 Garivini throughput mode, 4 Garivini low-latency mode, \
                  5 (opt-in, --scenarios 5) throughput mode's drain, insert->start latency and \
                  `garivini status` on an empty table and on one of --big-table-rows rows. \
                  Progress goes to stderr, the table to stdout."
)]
pub struct Opts {
    /// MySQL/MariaDB server (no database): scratch databases
    /// `<--db-prefix>_*` are created on it and dropped afterwards.
    #[arg(long, env = "GARIVINI_TEST_MYSQL")]
    pub mysql: String,
    /// Name prefix of the scratch databases (`PREFIX_gv_<hex>`,
    /// `PREFIX_gq_<hex>`), for a server shared with other users.
    #[arg(long, default_value = "gv_bench")]
    pub db_prefix: String,
    /// Jobs per throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u64,
    /// Payload (job arg) size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Client submits in flight in low-latency mode (gv_inject --mode
    /// lowlatency, both measurements).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Inserts in flight in throughput mode (gv_inject --mode throughput:
    /// bulk inserts and the latency measurement; 4 is gv_inject's default).
    #[arg(long, default_value_t = 4)]
    pub insert_concurrency: usize,
    /// Jobs per multi-row insert in gv_inject's bulk inserts.
    #[arg(long, default_value_t = 500)]
    pub insert_batch: usize,
    /// Jobs running at once in each worker (in-process worker, gv_consume).
    #[arg(long, default_value_t = 16)]
    pub worker_concurrency: usize,
    /// Background jobs per pipelined submit batch (scenarios 1 and 2).
    #[arg(long, default_value_t = 1000)]
    pub submit_batch: usize,
    /// QueueRunner processes (scenario 3; scenario 4 runs one, with the
    /// Injector).
    #[arg(long, default_value_t = 1)]
    pub queuerunners: usize,
    /// Controller processes (scenario 4); 0: the Controller runs in the
    /// QueueRunner and Injector's process (`workers --roles
    /// queuerunner,injector,controller`, with --controller-args too), where
    /// the Injector hands it its jobs without gearmand.
    #[arg(long, default_value_t = 1)]
    pub controllers: usize,
    /// Repetitions of each scenario; the table shows the median.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Offered rate (jobs/s) of the latency measurements (scenario 1's
    /// gearmand-only one too).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Jobs per latency measurement.
    #[arg(long, default_value_t = 5000)]
    pub latency_jobs: u64,
    /// Scenarios to run, comma separated (5, the big table, only when
    /// asked for).
    #[arg(long, value_delimiter = ',', default_values_t = [1u8, 2, 3, 4])]
    pub scenarios: Vec<u8>,
    /// Scenario 5: rows put in the table before its second measurement
    /// (90 % dead or 30 days ahead, 10 % of 1,000 other functions due in
    /// two hours).
    #[arg(long, default_value_t = 10_000_000)]
    pub big_table_rows: u64,
    /// Scenario 5: `garivini status` runs timed on each table (the median
    /// is shown).
    #[arg(long, default_value_t = 5)]
    pub status_runs: usize,
    /// Extra flags for every QueueRunner (and for scenario 4's
    /// `garivini workers --roles queuerunner,injector`), e.g.
    /// "--batch-run-sleep 0.1"; default: none (the QueueRunner's defaults).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub queuerunner_args: String,
    /// Extra flags for every `garivini controller`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub controller_args: String,
    /// Extra flags for every gearmand started (every scenario alike). The
    /// default, one thread, is what a small host should run: gearmand's
    /// default of 4 I/O threads handing packets to a processing thread
    /// measured here 49k -> 32k jobs/s memory-only, and each hop of a job
    /// through gearmand 0.5 -> 1 ms. Pass "" for gearmand's own default.
    #[arg(long, default_value = "--threads=0", allow_hyphen_values = true)]
    pub gearmand_args: String,
    /// The gearmand executable.
    #[arg(long, default_value = "gearmand")]
    pub gearmand_bin: String,
    /// Directory of the garivini, gv_inject and gv_consume executables
    /// (default: this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seconds any one wait may take (a drain, a run, a latency
    /// measurement beyond its offered duration) before the phase fails.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Write every number as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Directory for the children's logs (default: a new one under the
    /// system temp dir, removed after a run without failures).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the logs even when every phase succeeded.
    #[arg(long)]
    pub keep_logs: bool,
}

impl Opts {
    /// Checks what the flags' types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.jobs == 0 || self.reps == 0 || self.latency_jobs == 0 || self.rate == 0 {
            anyhow::bail!("--jobs, --reps, --latency-jobs and --rate must be at least 1");
        }
        if self.db_prefix.is_empty()
            || !self
                .db_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            anyhow::bail!("--db-prefix: letters, digits and _ only");
        }
        if let Some(bad) = self.scenarios.iter().find(|s| !(1..=5).contains(*s)) {
            anyhow::bail!("--scenarios: no scenario {bad} (1 to 5)");
        }
        Ok(())
    }

    /// Whether scenario `n` runs.
    pub fn has(&self, n: u8) -> bool {
        self.scenarios.contains(&n)
    }

    /// How long any one wait may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// Extra flags given as one string, split at white space.
pub fn split_args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

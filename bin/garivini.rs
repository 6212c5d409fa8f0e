//! `garivini`: runs Garivini's roles.

mod common;

use std::time::Duration;

use clap::{Parser, Subcommand};
use garivini::queue_runner::{self, QueueRunner};

#[derive(Parser, Debug)]
#[command(version, about = "Garivini: a job persistence layer for Gearman")]
struct Cli {
    #[command(flatten)]
    servers: common::Servers,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Claims due jobs from the databases and submits them to gearmand.
    Queuerunner(QueueRunnerArgs),
}

#[derive(clap::Args, Debug)]
struct QueueRunnerArgs {
    /// Seconds a dispatched job is leased before it is due again.
    #[arg(long, default_value_t = queue_runner::DEFAULT_LEASE)]
    lease: u32,
    /// Largest batch claimed from one database per round.
    #[arg(long, default_value_t = queue_runner::DEFAULT_BATCH_MAX_SIZE)]
    batch_max_size: usize,
    /// First batch size; grows while batches come back full.
    #[arg(long, default_value_t = queue_runner::DEFAULT_BATCH_START_SIZE)]
    batch_start_size: usize,
    /// Seconds between rounds that were not full.
    #[arg(long, default_value_t = queue_runner::DEFAULT_BATCH_RUN_SLEEP.as_secs_f64())]
    batch_run_sleep: f64,
    /// Most jobs of one function queued in gearmand before rows are pushed
    /// back (0 = no limit).
    #[arg(long, default_value_t = queue_runner::DEFAULT_QUEUE_WATERMARK_DEPTH)]
    queue_watermark_depth: u64,
    /// Seconds a row over the watermark is pushed back.
    #[arg(long, default_value_t = queue_runner::DEFAULT_WATERMARK_PUSHBACK)]
    watermark_pushback: u32,
    /// Seconds before a row whose submit failed is due again.
    #[arg(long, default_value_t = queue_runner::DEFAULT_SUBMIT_RETRY_DELAY)]
    submit_retry_delay: u32,
}

impl QueueRunnerArgs {
    fn config(&self) -> anyhow::Result<queue_runner::Config> {
        let sleep = Duration::try_from_secs_f64(self.batch_run_sleep).map_err(|_| {
            anyhow::anyhow!("invalid setting --batch-run-sleep: must be a number of seconds >= 0")
        })?;
        let config = queue_runner::Config {
            lease: self.lease,
            batch_max_size: self.batch_max_size,
            batch_start_size: self.batch_start_size,
            batch_run_sleep: sleep,
            queue_watermark_depth: self.queue_watermark_depth,
            watermark_pushback: self.watermark_pushback,
            submit_retry_delay: self.submit_retry_delay,
        };
        config.validate()?;
        Ok(config)
    }
}

fn main() {
    let cli = Cli::parse();
    common::init_tracing();
    common::run(async move {
        match cli.role {
            Role::Queuerunner(args) => {
                let config = args.config()?;
                let gearmand = cli.servers.gearmand()?;
                let store = cli.servers.store().await?;
                let shutdown = common::shutdown_on_signal();
                QueueRunner::new(config, store.clone(), gearmand)?
                    .run(shutdown)
                    .await;
            }
        }
        Ok(())
    });
}

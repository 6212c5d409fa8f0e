//! `garivini`: runs Garivini's roles, one per process or several in one;
//! `garivini status` and `garivini jobs` operate a deployment.

mod admin;
mod common;

use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use garivini::{client, controller, injector, queue_runner, Client, Store};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(version, about = "Garivini: a job persistence layer for Gearman")]
struct Cli {
    #[command(flatten)]
    servers: common::Servers,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Claims due jobs from the databases and submits them to gearmand.
    Queuerunner(Settings),
    /// Serves `inject_jobs`: stores jobs from any Gearman client, then
    /// dispatches them to a Controller.
    Injector(Settings),
    /// Serves `run_queued_job`: runs stored jobs on their real workers and
    /// completes or fails their rows.
    Controller(Settings),
    /// One screen per deployment: each database's rows per function (due,
    /// in flight, scheduled, dead, failing, oldest due) and each gearmand's
    /// queues. Exits 1, after the report, if a source could not be read.
    Status(admin::StatusArgs),
    /// Lists, shows, retries or cancels stored jobs.
    Jobs {
        #[command(subcommand)]
        command: admin::JobsCommand,
    },
    /// Runs several roles in one process, sharing its database pools.
    Workers {
        /// The roles, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<Role>,
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Queuerunner,
    Injector,
    Controller,
}

/// The roles' settings; each role reads the ones that concern it.
#[derive(clap::Args, Debug)]
struct Settings {
    /// Seconds a dispatched job is leased before it is due again.
    #[arg(long, default_value_t = queue_runner::DEFAULT_LEASE)]
    lease: u32,
    /// QueueRunner: largest batch claimed from one database per round.
    #[arg(long, default_value_t = queue_runner::DEFAULT_BATCH_MAX_SIZE)]
    batch_max_size: usize,
    /// QueueRunner: first batch size; grows while batches come back full.
    #[arg(long, default_value_t = queue_runner::DEFAULT_BATCH_START_SIZE)]
    batch_start_size: usize,
    /// QueueRunner: seconds between rounds that were not full.
    #[arg(long, default_value_t = queue_runner::DEFAULT_BATCH_RUN_SLEEP.as_secs_f64())]
    batch_run_sleep: f64,
    /// QueueRunner: seconds between rounds while jobs keep coming (doubling
    /// up to --batch-run-sleep while none come).
    #[arg(long, default_value_t = queue_runner::DEFAULT_BUSY_RUN_SLEEP.as_secs_f64())]
    busy_run_sleep: f64,
    /// QueueRunner: between rounds, seconds between cheap probes for a due
    /// row (an indexed SELECT, no lock); a due row ends the pause (0 = off).
    #[arg(long, default_value_t = queue_runner::DEFAULT_IDLE_POLL.as_secs_f64())]
    idle_poll: f64,
    /// Most jobs of one function queued in gearmand before jobs are held
    /// back in the database (0 = no limit).
    #[arg(long, default_value_t = queue_runner::DEFAULT_QUEUE_WATERMARK_DEPTH)]
    queue_watermark_depth: u64,
    /// QueueRunner: seconds a row over the watermark is pushed back.
    #[arg(long, default_value_t = queue_runner::DEFAULT_WATERMARK_PUSHBACK)]
    watermark_pushback: u32,
    /// Seconds a low-latency job whose function has no worker waits in the
    /// database before it is tried again.
    #[arg(long, default_value_t = queue_runner::DEFAULT_NO_WORKER_DELAY)]
    no_worker_delay: u32,
    /// Seconds before a job whose submit to gearmand failed is due again.
    #[arg(long, default_value_t = queue_runner::DEFAULT_SUBMIT_RETRY_DELAY)]
    submit_retry_delay: u32,
    /// Injector: most jobs in one inject_jobs array.
    #[arg(long, default_value_t = injector::DEFAULT_MAX_BATCH)]
    max_batch: usize,
    /// Injector: inject_jobs requests handled at once, per gearmand.
    #[arg(long, default_value_t = injector::DEFAULT_CONCURRENCY)]
    inject_concurrency: usize,
    /// Controller: jobs run at once, per gearmand.
    #[arg(long, default_value_t = controller::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Injector, Controller: seconds shutdown waits for the work in hand.
    #[arg(long, default_value_t = garivini::gearman::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
    shutdown_timeout: f64,
    /// Controller: failures after which a job is parked as dead.
    #[arg(long, default_value_t = client::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u8,
}

impl Settings {
    fn queue_runner(&self) -> anyhow::Result<queue_runner::Config> {
        let sleep = common::seconds("--batch-run-sleep", self.batch_run_sleep)?;
        let config = queue_runner::Config {
            lease: self.lease,
            batch_max_size: self.batch_max_size,
            batch_start_size: self.batch_start_size,
            batch_run_sleep: sleep,
            busy_run_sleep: common::seconds("--busy-run-sleep", self.busy_run_sleep)?,
            idle_poll: common::seconds("--idle-poll", self.idle_poll)?,
            queue_watermark_depth: self.queue_watermark_depth,
            watermark_pushback: self.watermark_pushback,
            no_worker_delay: self.no_worker_delay,
            submit_retry_delay: self.submit_retry_delay,
        };
        config.validate()?;
        Ok(config)
    }

    fn injector(&self) -> anyhow::Result<injector::Config> {
        let config = injector::Config {
            lease: self.lease,
            max_batch: self.max_batch,
            queue_watermark_depth: self.queue_watermark_depth,
            concurrency: self.inject_concurrency,
            submit_retry_delay: self.submit_retry_delay,
            shutdown_timeout: common::seconds("--shutdown-timeout", self.shutdown_timeout)?,
        };
        config.validate()?;
        Ok(config)
    }

    fn controller(&self) -> anyhow::Result<controller::Config> {
        let config = controller::Config {
            lease: self.lease,
            concurrency: self.concurrency,
            no_worker_delay: self.no_worker_delay,
            shutdown_timeout: common::seconds("--shutdown-timeout", self.shutdown_timeout)?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// A role with its checked settings.
enum Planned {
    QueueRunner(queue_runner::Config),
    Injector(injector::Config),
    Controller(controller::Config),
}

/// Starts `roles` on shared pools and runs them until a signal.
async fn run_roles(
    roles: &[Role],
    settings: &Settings,
    servers: &common::Servers,
) -> anyhow::Result<()> {
    // Every setting is checked before anything is connected to.
    let mut plan = Vec::new();
    for role in roles {
        let planned = match role {
            Role::Queuerunner => Planned::QueueRunner(settings.queue_runner()?),
            Role::Injector => Planned::Injector(settings.injector()?),
            Role::Controller => Planned::Controller(settings.controller()?),
        };
        if !plan
            .iter()
            .any(|p| std::mem::discriminant(p) == std::mem::discriminant(&planned))
        {
            plan.push(planned);
        }
    }
    let gearmand = servers.gearmand()?;
    let store: Arc<Store> = servers.store().await?;
    let shutdown: CancellationToken = common::shutdown_on_signal();
    let mut tasks = tokio::task::JoinSet::new();
    for planned in plan {
        let (store, gearmand, shutdown) = (store.clone(), gearmand.clone(), shutdown.clone());
        match planned {
            Planned::QueueRunner(config) => {
                tasks.spawn(queue_runner::QueueRunner::new(config, store, gearmand)?.run(shutdown));
            }
            Planned::Injector(config) => {
                tasks.spawn(injector::Injector::new(config, store, gearmand)?.run(shutdown));
            }
            Planned::Controller(config) => {
                let client = Client::new(store).with_max_attempts(settings.max_attempts);
                tasks.spawn(controller::Controller::new(config, client, gearmand)?.run(shutdown));
            }
        }
    }
    while let Some(res) = tasks.join_next().await {
        res?;
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    common::init_tracing();
    common::run(async move {
        let (roles, settings) = match &cli.command {
            Command::Queuerunner(s) => (vec![Role::Queuerunner], s),
            Command::Injector(s) => (vec![Role::Injector], s),
            Command::Controller(s) => (vec![Role::Controller], s),
            Command::Workers { roles, settings } => (roles.clone(), settings),
            Command::Status(args) => return admin::status(args, &cli.servers).await,
            Command::Jobs { command } => return admin::jobs(command, &cli.servers).await,
        };
        run_roles(&roles, settings, &cli.servers).await
    });
}

//! The roles' settings: their flags, each role's library `Config` built
//! from them, and the `--config` file laid under them (see
//! `settings_file`); `config_check` shows them.

use clap::{ArgMatches, ValueEnum};
use garivini::{client, controller, functions, injector, names, periodic, queue_runner, roles};

use crate::seconds::seconds;
use crate::servers::Servers;
use crate::settings_file::{self, layered, Setting};
use crate::{Cli, Command, ConfigCommand};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Queuerunner,
    Injector,
    Controller,
    /// The web dashboard and the HTTP API (its flags: `web::WebArgs`).
    Web,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Queuerunner, Role::Injector, Role::Controller];

    /// Its name, as a subcommand and as a section of the config file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Queuerunner => "queuerunner",
            Role::Injector => "injector",
            Role::Controller => "controller",
            Role::Web => "web",
        }
    }
}

/// The roles' settings; each role reads the ones that concern it.
#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// Serve Prometheus metrics on http://IP:PORT/metrics.
    #[arg(long, value_name = "IP:PORT", env = "GARIVINI_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Seconds a dispatched job is leased before it is due again.
    #[arg(long, default_value_t = names::DEFAULT_LEASE)]
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
    #[arg(long, default_value_t = names::DEFAULT_QUEUE_WATERMARK_DEPTH)]
    queue_watermark_depth: u64,
    /// No longer used (held rows stay due): accepted so that existing
    /// command lines still start.
    #[arg(long, hide = true)]
    watermark_pushback: Option<u32>,
    /// No longer used (held rows stay due): accepted so that existing
    /// command lines still start.
    #[arg(long, hide = true)]
    no_worker_delay: Option<u32>,
    /// Seconds before a job whose submit to gearmand failed is due again;
    /// Controller: also a job still running when shutdown gave up on it.
    #[arg(long, default_value_t = names::DEFAULT_SUBMIT_RETRY_DELAY)]
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
    /// Controller: most jobs of one function run at once, of its
    /// --concurrency slots (0: no cap), so that a function whose worker
    /// hangs or that floods leaves slots to the others (jobs past it are
    /// given back to the table, for the QueueRunner).
    #[arg(long, default_value_t = 0)]
    function_share: usize,
    /// Controller beside an Injector (`workers --roles injector,controller`):
    /// jobs the Injector may hand it directly at once, without the
    /// run_queued_job round through gearmand (0 = always through gearmand).
    #[arg(long, default_value_t = controller::DEFAULT_CONCURRENCY)]
    local_concurrency: usize,
    /// Controller: seconds it waits for a job's answer before it fails the
    /// job (backoff) and frees its slot (0 = no limit).
    #[arg(long, value_name = "SECS", default_value_t = controller::DEFAULT_JOB_TIMEOUT.as_secs_f64())]
    job_timeout: f64,
    /// Injector, Controller: seconds shutdown waits for the work in hand.
    #[arg(long, default_value_t = garivini::gearman::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
    shutdown_timeout: f64,
    /// Controller: failures after which a job is parked as dead.
    #[arg(long, default_value_t = client::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u8,
    /// A function's own settings, NAME:KEY=VALUE[,KEY=VALUE...] with keys
    /// concurrency, watermark, timeout (seconds) and max-attempts; may be
    /// repeated; over the config file's [functions.NAME].
    #[arg(long = "function", value_name = "NAME:KEY=VALUE,...")]
    function: Vec<String>,
    /// QueueRunner: the config file's `[[periodic]]` entries (no flag).
    #[arg(skip)]
    pub periodic: Vec<periodic::Entry>,
    /// The config file's `[functions.NAME]` sections (see --function).
    #[arg(skip)]
    pub file_functions: Vec<(String, functions::Settings)>,
}

impl Settings {
    /// Every function's settings: the file's, then --function over them.
    pub fn functions(&self) -> anyhow::Result<functions::Functions> {
        let mut entries = self.file_functions.clone();
        for text in &self.function {
            entries.push(functions::Functions::parse_flag(text)?);
        }
        let functions = functions::Functions::new(entries);
        functions.validate()?;
        Ok(functions)
    }

    pub fn queue_runner(&self) -> anyhow::Result<queue_runner::Config> {
        if self.watermark_pushback.is_some() || self.no_worker_delay.is_some() {
            tracing::warn!(
                "--watermark-pushback and --no-worker-delay have no effect any more: held rows stay due"
            );
        }
        let sleep = seconds("--batch-run-sleep", self.batch_run_sleep)?;
        let config = queue_runner::Config {
            lease: self.lease,
            batch_max_size: self.batch_max_size,
            batch_start_size: self.batch_start_size,
            batch_run_sleep: sleep,
            busy_run_sleep: seconds("--busy-run-sleep", self.busy_run_sleep)?,
            idle_poll: seconds("--idle-poll", self.idle_poll)?,
            queue_watermark_depth: self.queue_watermark_depth,
            submit_retry_delay: self.submit_retry_delay,
            report_due_rows: self.metrics_addr.is_some(),
            periodic: self.periodic.clone(),
            functions: self.functions()?,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn injector(&self) -> anyhow::Result<injector::Config> {
        let config = injector::Config {
            lease: self.lease,
            max_batch: self.max_batch,
            queue_watermark_depth: self.queue_watermark_depth,
            concurrency: self.inject_concurrency,
            submit_retry_delay: self.submit_retry_delay,
            shutdown_timeout: seconds("--shutdown-timeout", self.shutdown_timeout)?,
            functions: self.functions()?,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn controller(&self) -> anyhow::Result<controller::Config> {
        let config = controller::Config {
            lease: self.lease,
            concurrency: self.concurrency,
            shutdown_timeout: seconds("--shutdown-timeout", self.shutdown_timeout)?,
            job_timeout: Some(seconds("--job-timeout", self.job_timeout)?).filter(|t| !t.is_zero()),
            give_back_delay: self.submit_retry_delay,
            functions: self.functions()?,
            local_concurrency: self.local_concurrency,
            function_share: self.function_share,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The roles to run, every setting checked. A role named twice runs once,
/// with the settings it was first named with.
pub fn plan(roles: &[(Role, Settings)]) -> anyhow::Result<roles::Config> {
    let mut plan = roles::Config::default();
    for (role, settings) in roles {
        match role {
            Role::Queuerunner => {
                let config = settings.queue_runner()?;
                plan.queue_runner.get_or_insert(config);
            }
            Role::Injector => {
                let config = settings.injector()?;
                plan.injector.get_or_insert(config);
            }
            Role::Controller => {
                let config = settings.controller()?;
                if plan.controller.is_none() {
                    plan.controller = Some(config);
                    plan.max_attempts = settings.max_attempts;
                }
            }
            // Its settings come from the web flags (main.rs, web.rs).
            Role::Web => {}
        }
    }
    Ok(plan)
}

/// The connection flags and each role's settings, with the config file (if
/// any) laid under what the command line and the environment gave.
pub struct Effective {
    pub file: Option<String>,
    pub servers: (Servers, Vec<Setting>),
    pub roles: Vec<(Role, Settings, Vec<Setting>)>,
    /// `status` and `jobs`: the lease that tells rows in flight when no
    /// --lease is given (see [`longest_lease`]).
    pub lease: u32,
    /// `status` and the web role: what tells why a due row waits (the
    /// QueueRunner's watermark and per-function settings).
    pub limits: garivini::waiting::Limits,
}

pub fn effective(cli: &Cli, matches: &ArgMatches) -> anyhow::Result<Effective> {
    let none = ArgMatches::default();
    let environment;
    let (roles, given): (Vec<Role>, &ArgMatches) = match &cli.command {
        Command::Queuerunner(_) => (vec![Role::Queuerunner], sub_matches(matches)),
        Command::Injector(_) => (vec![Role::Injector], sub_matches(matches)),
        Command::Controller(_) => (vec![Role::Controller], sub_matches(matches)),
        Command::Web { .. } => (vec![Role::Web], sub_matches(matches)),
        Command::Workers { roles, .. } => (roles.clone(), sub_matches(matches)),
        Command::Config(ConfigCommand::Check(_)) => {
            // No role flags here, only the environment, which wins over
            // the file as it does for a role.
            environment = settings_file::environment::<Settings>()?;
            (Role::ALL.to_vec(), &environment)
        }
        Command::Status(_) | Command::Jobs { .. } | Command::Schema(_) => (Vec::new(), &none),
        Command::Functions { .. } => (Vec::new(), &none),
    };
    let file = cli
        .config
        .as_deref()
        .map(settings_file::File::read)
        .transpose()?;
    let name = cli.config.as_ref().map(|p| p.display().to_string());
    let name_str = name.as_deref().unwrap_or_default();
    let servers = layered::<Servers>(
        matches,
        &file.as_ref().map(|f| f.top()).unwrap_or_default(),
        name_str,
    )?;
    let periodic = match &file {
        Some(file) if roles.contains(&Role::Queuerunner) => file.periodic()?,
        _ => Vec::new(),
    };
    let file_functions = match &file {
        Some(file) => file.functions()?,
        None => Vec::new(),
    };
    let mut per_role = Vec::new();
    for role in roles {
        let keys = file
            .as_ref()
            .map(|f| f.role(role.name()))
            .unwrap_or_default();
        let (mut settings, shown) = layered::<Settings>(given, &keys, name_str)?;
        if role == Role::Queuerunner {
            settings.periodic = periodic.clone();
        }
        settings.file_functions = file_functions.clone();
        per_role.push((role, settings, shown));
    }
    let lease = match &cli.command {
        Command::Status(_) | Command::Jobs { .. } | Command::Web { .. } => {
            longest_lease(file.as_ref(), name_str)?
        }
        _ => names::DEFAULT_LEASE,
    };
    // Why due rows wait is told as the QueueRunner would decide it: its
    // section of the file (or the defaults).
    let limits = {
        let keys = file
            .as_ref()
            .map(|f| f.role(Role::Queuerunner.name()))
            .unwrap_or_default();
        let (mut qr, _) = layered::<Settings>(&ArgMatches::default(), &keys, name_str)?;
        qr.file_functions = file_functions;
        garivini::waiting::Limits {
            watermark: qr.queue_watermark_depth,
            functions: qr.functions()?,
        }
    };
    Ok(Effective {
        file: name,
        servers,
        roles: per_role,
        lease,
        limits,
    })
}

fn sub_matches(matches: &ArgMatches) -> &ArgMatches {
    matches.subcommand().map_or(matches, |(_, m)| m)
}

/// The one setting `status` and `jobs` read from a role's section.
#[derive(clap::Args, Debug)]
struct Lease {
    #[arg(long, default_value_t = names::DEFAULT_LEASE)]
    lease: u32,
}

/// The longest lease a role runs with under `file`: its own section's
/// `lease`, else `[roles] lease`, else the default. A row due within it may
/// be running on a worker of any role, so `status` and `jobs` count it in
/// flight, and `jobs retry|cancel` refuse it without --force.
fn longest_lease(file: Option<&settings_file::File>, name: &str) -> anyhow::Result<u32> {
    let mut longest = 0;
    for role in Role::ALL {
        let mut keys = file.map(|f| f.role(role.name())).unwrap_or_default();
        keys.retain(|(key, _)| *key == "lease");
        let (Lease { lease }, _) = layered::<Lease>(&ArgMatches::default(), &keys, name)?;
        longest = longest.max(lease);
    }
    Ok(longest)
}

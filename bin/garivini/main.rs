//! `garivini`: runs Garivini's roles, one per process or several in one;
//! `garivini status` and `garivini jobs` operate a deployment.
//!
//! This file holds the commands and the role processes' wiring (flags in,
//! signals to a shutdown token, [`garivini::roles::run`]); `settings` the
//! roles' flags, laid over a `--config` file by `settings_file`;
//! `config_check` the config check; `admin` the status and jobs commands;
//! `functions` pause and resume; `schema` the schema check; `format` the
//! tables, ages and dates people read.

mod admin;
mod config_check;
mod format;
mod functions;
mod schema;
mod settings;
mod settings_file;
mod web;

#[path = "../common/allocator.rs"]
mod allocator;
#[path = "../common/metrics_endpoint.rs"]
mod metrics_endpoint;
#[path = "../common/seconds.rs"]
mod seconds;
#[path = "../common/servers.rs"]
mod servers;
#[path = "../common/signal.rs"]
mod signal;
#[path = "../common/terminal.rs"]
mod terminal;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use servers::Servers;
use settings::{Role, Settings};

#[derive(Parser, Debug)]
#[command(version, about = "Garivini: a job persistence layer for Gearman")]
struct Cli {
    #[command(flatten)]
    servers: Servers,
    #[command(flatten)]
    logging: terminal::Logging,
    /// A TOML file holding any of the flags (keys are their long names):
    /// top-level dsn and gearmand, then [roles] for every role and
    /// [queuerunner], [injector], [controller] over it. Flags and the
    /// environment win over the file.
    #[arg(long, global = true, env = "GARIVINI_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
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
    /// Pauses or resumes a function's jobs in every database, or lists
    /// the paused ones.
    Functions {
        #[command(subcommand)]
        command: functions::FunctionsCommand,
    },
    /// Serves the web dashboard and the HTTP JSON API (/api/v1).
    Web {
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        web: web::WebArgs,
    },
    /// Runs several roles in one process, sharing its database pools.
    Workers {
        /// The roles, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<Role>,
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        web: web::WebArgs,
    },
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The job table: checks (and mends) a table kept from the original
    /// Perl Garivini or an older schema.sql.
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Checks --config FILE (with the flags and environment given), prints
    /// the settings each role would run with, passwords masked, refuses a
    /// metrics address two of its processes would share, and tries each
    /// database and gearmand, saying which answered (exit 1 if one did
    /// not).
    Check(config_check::CheckArgs),
}

fn main() {
    let matches = terminal::matches(Cli::command());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| terminal::usage_error(e));
    terminal::init_tracing(&cli.logging);
    terminal::run(async move {
        let e = settings::effective(&cli, &matches)?;
        match &cli.command {
            Command::Config(ConfigCommand::Check(args)) => {
                return config_check::check(&e, args).await
            }
            Command::Status(args) => {
                return admin::status(args, e.lease, &e.limits, &e.servers.0).await
            }
            Command::Jobs { command } => return admin::jobs(command, e.lease, &e.servers.0).await,
            Command::Functions { command } => return functions::run(command, &e.servers.0).await,
            Command::Schema(schema::SchemaCommand::Check(args)) => {
                return schema::check(args, &e.servers.0).await
            }
            _ => {}
        }
        let roles: Vec<(Role, Settings)> = e.roles.into_iter().map(|(r, s, _)| (r, s)).collect();
        let web = match &cli.command {
            Command::Web { web, .. } => Some(web.config(e.lease, e.limits.clone())?),
            Command::Workers { web, .. } if roles.iter().any(|(r, _)| *r == Role::Web) => {
                Some(web.config(e.lease, e.limits.clone())?)
            }
            _ => None,
        };
        run_roles(&roles, web, &e.servers.0).await
    });
}

/// Starts `roles`, each with its settings, on shared pools and runs them
/// until a signal.
async fn run_roles(
    roles: &[(Role, Settings)],
    web: Option<garivini::web::Config>,
    servers: &Servers,
) -> anyhow::Result<()> {
    // Every setting is checked before anything is connected to.
    let mut plan = settings::plan(roles)?;
    plan.web = web;
    // The web role alone reads gearmand only for the overview: none given,
    // it shows none.
    let web_only = roles.iter().all(|(r, _)| *r == Role::Web);
    let gearmand = if web_only && servers.gearmand.is_none() {
        Vec::new()
    } else {
        servers.gearmand()?
    };
    // One exporter per process: the first role's address (the roles of a
    // `workers` process share it).
    if let Some(addr) = roles.iter().find_map(|(_, s)| s.metrics_addr.as_ref()) {
        metrics_endpoint::serve(addr).await?;
    }
    // Up, and not ready, while no database answers: a supervisor then
    // sees a process that waits rather than one that restarts in a loop.
    // Before the store: a role whose database is down at start-up logs so
    // and waits, and must already stop on SIGTERM.
    let shutdown = signal::shutdown_on_signal();
    let store = servers.serving_store().await?;
    // A task of its own, so that a role's panic ends here as an error
    // line and exit status 1, as any other error.
    tokio::spawn(garivini::roles::run(store, gearmand, plan, shutdown)).await??;
    Ok(())
}

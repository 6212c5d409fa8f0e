//! `garivini`: runs Garivini's roles, one per process or several in one;
//! `garivini status` and `garivini jobs` operate a deployment.

mod admin;
mod common;
mod settings_file;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use garivini::store::schema::{Applied, Kind, SchemaReport};
use garivini::{client, controller, injector, names, queue_runner, Client, Store};
use settings_file::{layered, Setting, Source};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(version, about = "Garivini: a job persistence layer for Gearman")]
struct Cli {
    #[command(flatten)]
    servers: common::Servers,
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
    /// Runs several roles in one process, sharing its database pools.
    Workers {
        /// The roles, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<Role>,
        #[command(flatten)]
        settings: Settings,
    },
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The job table: checks (and mends) a table kept from the original
    /// Perl Garivini or an older schema.sql.
    #[command(subcommand)]
    Schema(SchemaCommand),
}

#[derive(Subcommand, Debug)]
enum SchemaCommand {
    /// Compares the `job` table of every database with schema.sql's,
    /// column by column and index by index, and prints each difference.
    ///
    /// `needs:` is a difference the roles (or the original client) go
    /// wrong with, followed by the statement that mends it; `note:` is
    /// different but fine as it is. The statements only add (a column, an
    /// index, the table) or loosen (a longer type, NULL allowed, a missing
    /// ENUM value): nothing is dropped, and the original client's
    /// statements keep working. Exits 1 when something needs mending and
    /// --apply was not given (or did not mend it).
    Check(SchemaCheck),
}

#[derive(clap::Args, Debug)]
struct SchemaCheck {
    /// Run the statements, in the order shown (each waits at most 10 s
    /// for the table's lock, then fails rather than stall the roles),
    /// then check again and print the result.
    #[arg(long)]
    apply: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Checks --config FILE (with the flags and environment given) and
    /// prints the settings each role would run with, passwords masked.
    Check,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Queuerunner,
    Injector,
    Controller,
}

impl Role {
    const ALL: [Role; 3] = [Role::Queuerunner, Role::Injector, Role::Controller];

    /// Its name, as a subcommand and as a section of the config file.
    fn name(self) -> &'static str {
        match self {
            Role::Queuerunner => "queuerunner",
            Role::Injector => "injector",
            Role::Controller => "controller",
        }
    }
}

/// The roles' settings; each role reads the ones that concern it.
#[derive(clap::Args, Debug, Clone)]
struct Settings {
    /// Serve Prometheus metrics on http://IP:PORT/metrics.
    #[arg(long, value_name = "IP:PORT", env = "GARIVINI_METRICS_ADDR")]
    metrics_addr: Option<String>,
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
    /// QueueRunner: seconds a row over the watermark is pushed back.
    #[arg(long, default_value_t = queue_runner::DEFAULT_WATERMARK_PUSHBACK)]
    watermark_pushback: u32,
    /// Seconds a low-latency job whose function has no worker waits in the
    /// database before it is tried again.
    #[arg(long, default_value_t = names::DEFAULT_NO_WORKER_DELAY)]
    no_worker_delay: u32,
    /// Seconds before a job whose submit to gearmand failed is due again.
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
            report_due_rows: self.metrics_addr.is_some(),
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
    Controller(controller::Config, u8),
}

/// Starts `roles`, each with its settings, on shared pools and runs them
/// until a signal.
async fn run_roles(roles: &[(Role, Settings)], servers: &common::Servers) -> anyhow::Result<()> {
    // Every setting is checked before anything is connected to.
    let mut plan = Vec::new();
    for (role, settings) in roles {
        let planned = match role {
            Role::Queuerunner => Planned::QueueRunner(settings.queue_runner()?),
            Role::Injector => Planned::Injector(settings.injector()?),
            Role::Controller => Planned::Controller(settings.controller()?, settings.max_attempts),
        };
        if !plan
            .iter()
            .any(|p| std::mem::discriminant(p) == std::mem::discriminant(&planned))
        {
            plan.push(planned);
        }
    }
    let gearmand = servers.gearmand()?;
    // One exporter per process: the first role's address (the roles of a
    // `workers` process share it).
    if let Some(addr) = roles.iter().find_map(|(_, s)| s.metrics_addr.as_ref()) {
        common::serve_metrics(addr)?;
    }
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
            Planned::Controller(config, max_attempts) => {
                let client = Client::new(store).with_max_attempts(max_attempts);
                tasks.spawn(controller::Controller::new(config, client, gearmand)?.run(shutdown));
            }
        }
    }
    while let Some(res) = tasks.join_next().await {
        res?;
    }
    Ok(())
}

/// The connection flags and each role's settings, with the config file (if
/// any) laid under what the command line and the environment gave.
struct Effective {
    file: Option<String>,
    servers: (common::Servers, Vec<Setting>),
    roles: Vec<(Role, Settings, Vec<Setting>)>,
}

fn effective(cli: &Cli, matches: &ArgMatches) -> anyhow::Result<Effective> {
    let none = ArgMatches::default();
    let (roles, given): (Vec<Role>, &ArgMatches) = match &cli.command {
        Command::Queuerunner(_) => (vec![Role::Queuerunner], sub_matches(matches)),
        Command::Injector(_) => (vec![Role::Injector], sub_matches(matches)),
        Command::Controller(_) => (vec![Role::Controller], sub_matches(matches)),
        Command::Workers { roles, .. } => (roles.clone(), sub_matches(matches)),
        Command::Config(ConfigCommand::Check) => (Role::ALL.to_vec(), &none),
        Command::Status(_) | Command::Jobs { .. } | Command::Schema(_) => (Vec::new(), &none),
    };
    let file = cli
        .config
        .as_deref()
        .map(settings_file::File::read)
        .transpose()?;
    let name = cli.config.as_ref().map(|p| p.display().to_string());
    let name_str = name.as_deref().unwrap_or_default();
    let servers = layered::<common::Servers>(
        matches,
        &file.as_ref().map(|f| f.top()).unwrap_or_default(),
        name_str,
    )?;
    let mut per_role = Vec::new();
    for role in roles {
        let keys = file
            .as_ref()
            .map(|f| f.role(role.name()))
            .unwrap_or_default();
        let (settings, shown) = layered::<Settings>(given, &keys, name_str)?;
        per_role.push((role, settings, shown));
    }
    Ok(Effective {
        file: name,
        servers,
        roles: per_role,
    })
}

fn sub_matches(matches: &ArgMatches) -> &ArgMatches {
    matches.subcommand().map_or(matches, |(_, m)| m)
}

/// `garivini config check`: every role's settings checked and printed.
fn check(e: &Effective) -> anyhow::Result<()> {
    let source = |settings: &[Setting], flag: &str| {
        settings
            .iter()
            .find(|s| s.flag == flag)
            .map_or(Source::Default, |s| s.source)
            .name()
    };
    let (servers, shown) = &e.servers;
    let dbs = garivini::config::parse_dsn_list(servers.dsn.as_deref().unwrap_or_default())?;
    let gearmand = servers.gearmand()?;
    println!("config file: {}", e.file.as_deref().unwrap_or("(none)"));
    for db in &dbs {
        println!(
            "database {}: {} ({})",
            db.dbid,
            garivini::config::mask_dsn(&db.url),
            source(shown, "dsn")
        );
    }
    println!(
        "gearmand: {} ({})",
        gearmand.join(","),
        source(shown, "gearmand")
    );
    for (role, settings, shown) in &e.roles {
        match role {
            Role::Queuerunner => settings.queue_runner().map(|_| ())?,
            Role::Injector => settings.injector().map(|_| ())?,
            Role::Controller => settings.controller().map(|_| ())?,
        }
        println!("[{}]", role.name());
        for s in shown {
            println!("  {} = {} ({})", s.flag, s.value, s.source.name());
        }
    }
    println!("ok");
    Ok(())
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    common::init_tracing();
    common::run(async move {
        let e = effective(&cli, &matches)?;
        match &cli.command {
            Command::Config(ConfigCommand::Check) => return check(&e),
            Command::Status(args) => return admin::status(args, &e.servers.0).await,
            Command::Jobs { command } => return admin::jobs(command, &e.servers.0).await,
            Command::Schema(SchemaCommand::Check(args)) => {
                return schema_check(args, &e.servers.0).await
            }
            _ => {}
        }
        let roles: Vec<(Role, Settings)> = e.roles.into_iter().map(|(r, s, _)| (r, s)).collect();
        run_roles(&roles, &e.servers.0).await
    });
}

/// One database's `schema check`: the report, what --apply ran, and the
/// check after it.
struct SchemaOutcome {
    dbid: u32,
    dsn: String,
    report: Result<SchemaReport, garivini::Error>,
    applied: Option<Applied>,
    after: Option<Result<SchemaReport, garivini::Error>>,
}

impl SchemaOutcome {
    /// The last word on the table: the check after --apply, or the first.
    fn last(&self) -> &Result<SchemaReport, garivini::Error> {
        self.after.as_ref().unwrap_or(&self.report)
    }
}

/// `garivini schema check [--apply]`.
async fn schema_check(args: &SchemaCheck, servers: &common::Servers) -> anyhow::Result<()> {
    let dbs = garivini::config::parse_dsn_list(servers.dsn.as_deref().unwrap_or_default())?;
    let dsns: Vec<String> = dbs.iter().map(|db| db.masked()).collect();
    // Not `Servers::store`: its start-up check refuses a missing table,
    // which this command reports (and creates).
    let store = Store::open(dbs)?;
    let mut outcomes = Vec::new();
    for (dbid, dsn) in store.dbids().zip(dsns) {
        let report = store.check_schema(dbid).await;
        let (mut applied, mut after) = (None, None);
        if let (true, Ok(r)) = (args.apply, &report) {
            if r.mends().next().is_some() {
                applied = Some(store.apply_schema(r).await);
                after = Some(store.check_schema(dbid).await);
            }
        }
        outcomes.push(SchemaOutcome {
            dbid,
            dsn,
            report,
            applied,
            after,
        });
    }
    store.close().await;
    if args.json {
        let value: Vec<serde_json::Value> = outcomes.iter().map(schema_json).collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (k, o) in outcomes.iter().enumerate() {
            if k > 0 {
                println!();
            }
            print!("{}", schema_text(o));
        }
    }
    let mut problems = Vec::new();
    let mut mendable = false;
    for o in &outcomes {
        match o.last() {
            Err(err) => problems.push(err.to_string()),
            Ok(r) if r.needs_mending() => {
                let n = r.needs().count();
                let changes = if n == 1 { "change" } else { "changes" };
                if o.applied.is_some() {
                    problems.push(format!(
                        "database {} still needs {n} {changes} after --apply",
                        o.dbid
                    ));
                } else {
                    mendable |= r.mends().next().is_some();
                    problems.push(format!("database {} needs {n} {changes}", o.dbid));
                }
            }
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    if mendable {
        problems.push("run `garivini schema check --apply`, or the statements above".into());
    }
    anyhow::bail!("{}", problems.join("; "))
}

/// A report as lines, unindented.
fn findings_text(report: &SchemaReport) -> Vec<String> {
    let mut lines = Vec::new();
    for f in &report.findings {
        match f.kind {
            Kind::Needs => {
                lines.push(format!("needs: {}", f.message));
                match &f.mend {
                    Some(sql) => {
                        let sql = format!("{sql};");
                        lines.extend(sql.lines().map(|l| format!("  {l}")));
                    }
                    None => lines.push("  (no statement mends it safely: by hand)".into()),
                }
            }
            Kind::Note => lines.push(format!("note: {}", f.message)),
        }
    }
    if report.findings.is_empty() {
        lines.push("ok".into());
    } else if !report.needs_mending() {
        lines.push("ok: nothing needs mending".into());
    }
    lines
}

fn schema_text(o: &SchemaOutcome) -> String {
    let mut out = format!("database {}  {}\n", o.dbid, o.dsn);
    let mut push = |indent: &str, line: &str| {
        out.push_str(indent);
        out.push_str(line);
        out.push('\n');
    };
    let report = match &o.report {
        Ok(r) => r,
        Err(err) => {
            push("  ", &format!("unreadable: {err}"));
            return out;
        }
    };
    for l in findings_text(report) {
        push("  ", &l);
    }
    if let Some(applied) = &o.applied {
        for sql in &applied.statements {
            push("  ", &format!("applied: {}", first_line(sql)));
        }
        if let Some((sql, err)) = &applied.failed {
            push("  ", &format!("failed: {}", first_line(sql)));
            push("    ", &err.to_string());
        }
    }
    match &o.after {
        None => {}
        Some(Ok(r)) => {
            push("  ", "checked again:");
            for l in findings_text(r) {
                push("    ", &l);
            }
        }
        Some(Err(err)) => push("  ", &format!("checked again: unreadable: {err}")),
    }
    out
}

/// A statement's first line, `…` standing for the rest (a CREATE TABLE).
fn first_line(sql: &str) -> String {
    let mut lines = sql.lines();
    let first = lines.next().unwrap_or_default();
    match lines.next() {
        Some(_) => format!("{first} …"),
        None => first.to_string(),
    }
}

fn schema_json(o: &SchemaOutcome) -> serde_json::Value {
    let report = |r: &Result<SchemaReport, garivini::Error>| match r {
        Ok(r) => serde_json::json!({
            "ok": !r.needs_mending(),
            "findings": r.findings,
        }),
        Err(err) => serde_json::json!({ "error": err.to_string() }),
    };
    let mut value = serde_json::json!({
        "dbid": o.dbid,
        "dsn": o.dsn,
        "check": report(&o.report),
    });
    if let Some(applied) = &o.applied {
        value["applied"] = serde_json::json!(applied.statements);
        if let Some((sql, err)) = &applied.failed {
            value["failed"] = serde_json::json!({ "statement": sql, "error": err.to_string() });
        }
    }
    if let Some(after) = &o.after {
        value["after"] = report(after);
    }
    value
}

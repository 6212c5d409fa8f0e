//! `garivini status` and `garivini jobs ...`: their flags, and the tables
//! people read (`--json` prints the library's values as they are).

use std::time::Duration;

use garivini::admin::{self, Guard, ListQuery, Status};
use garivini::config::parse_dsn_list;
use garivini::store::Selection;
use garivini::{names, Error, JobRef, Store};

use crate::format::{age, arg_text, header, next_run, plural, printable, table, utc};
use crate::servers::Servers;

/// How long an admin command waits for one database statement.
const ADMIN_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// The help of every `--lease`; its default is the caller's (see
/// `settings::longest_lease`).
fn lease_help() -> String {
    format!(
        "Seconds of the roles' --lease. There is no lease column: a row due within this many \
         seconds counts as in flight (leased by a QueueRunner, Injector or Controller, or delayed \
         by less than the lease) [default: the longest lease a role runs with under --config FILE \
         (its section's lease, else [roles] lease), else {}]",
        names::DEFAULT_LEASE
    )
}

/// `garivini status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[arg(long, help = lease_help())]
    lease: Option<u32>,
}

/// `garivini jobs ...`.
#[derive(clap::Subcommand, Debug)]
pub enum JobsCommand {
    /// Lists rows, soonest due first.
    List {
        /// Only this function's rows.
        #[arg(long)]
        funcname: Option<String>,
        #[command(flatten)]
        state: StateFilter,
        /// Only rows whose unique key starts with PREFIX (a search by key:
        /// the whole key finds its one row).
        #[arg(long, value_name = "PREFIX")]
        unique_prefix: Option<String>,
        /// The next page: the cursor the page before ended with
        /// (RUN_AFTER.FAILCOUNT.DBID.JOBID, printed under a full page, and
        /// the `next` of --json).
        #[arg(long, value_name = "CURSOR")]
        after: Option<admin::Cursor>,
        /// Most rows shown (1 to 10000).
        #[arg(long, default_value_t = admin::DEFAULT_LIST_LIMIT)]
        limit: usize,
        /// Print JSON instead of a table: {"jobs": [...], "next": CURSOR
        /// or null}, as GET /api/v1/jobs answers.
        #[arg(long)]
        json: bool,
        #[arg(long, help = lease_help())]
        lease: Option<u32>,
    },
    /// Shows one row, its job JSON, and when it runs next.
    Show {
        /// DBID:JOBID, e.g. 1:42.
        id: JobRef,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, help = lease_help())]
        lease: Option<u32>,
    },
    /// Makes rows due now: by id, or every dead row of a function.
    ///
    /// By id, all or nothing: refused if an id has no row, or if a row is
    /// in flight (due within --lease seconds; a worker may be running it,
    /// and it would run twice) unless --force.
    Retry {
        /// DBID:JOBID ids, e.g. 1:42 1:43.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        ids: Vec<JobRef>,
        /// Every dead row, of --funcname only if given, in every database.
        #[arg(long)]
        dead: bool,
        /// The function whose dead rows to retry (with --dead).
        #[arg(long, requires = "dead")]
        funcname: Option<String>,
        /// With --dead: say how many rows of which functions it would
        /// change, and change nothing.
        #[arg(long, requires = "dead")]
        dry_run: bool,
        /// Set failcount to 0 (default: keep it, so the backoff goes on
        /// from where it was).
        #[arg(long)]
        reset_failcount: bool,
        /// Retry rows in flight too.
        #[arg(long, conflicts_with = "dead")]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, help = lease_help())]
        lease: Option<u32>,
    },
    /// Deletes rows: by id, all or nothing; every live row of a function;
    /// or every dead row of a function.
    ///
    /// By id, refused if an id has no row, or if a row is in flight (due
    /// within --lease seconds: a worker may be running it, and deleting the
    /// row does not stop it) unless --force. With --funcname F alone, every
    /// due, scheduled and retrying row of F, in every database, in chunks
    /// of 10000 rows; its rows in flight are left (and counted) unless
    /// --force, its dead rows are kept (--dead deletes those).
    #[command(group(clap::ArgGroup::new("bulk").args(["dead", "funcname"]).multiple(true)))]
    Cancel {
        /// DBID:JOBID ids, e.g. 1:42 1:43.
        #[arg(required_unless_present_any = ["dead", "funcname"], conflicts_with = "bulk")]
        ids: Vec<JobRef>,
        /// Every dead row, of --funcname only if given, in every database
        /// (a dead row is never leased: no worker runs it).
        #[arg(long)]
        dead: bool,
        /// The function whose rows to delete: its live rows (due,
        /// scheduled, retrying; in flight with --force), or with --dead
        /// its dead rows.
        #[arg(long)]
        funcname: Option<String>,
        /// With --dead or --funcname: say how many rows it would delete
        /// (per function, or per state), and delete nothing.
        #[arg(long, requires = "bulk")]
        dry_run: bool,
        /// Delete rows in flight too.
        #[arg(long, conflicts_with = "dead")]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, help = lease_help())]
        lease: Option<u32>,
    },
}

/// Which rows `jobs list` shows (at most one; default all).
#[derive(clap::Args, Debug)]
#[group(multiple = false)]
pub struct StateFilter {
    /// Rows due now.
    #[arg(long)]
    due: bool,
    /// Rows due within --lease seconds (leased, or due again soon).
    #[arg(long)]
    in_flight: bool,
    /// Rows due later than --lease seconds from now.
    #[arg(long)]
    scheduled: bool,
    /// Dead rows (run_after = never).
    #[arg(long)]
    dead: bool,
    /// Rows with failcount > 0 that are not dead.
    #[arg(long)]
    failing: bool,
    /// Rows that failed and wait out their backoff (needs the table's
    /// attempted_at and failed_at columns; none without them).
    #[arg(long)]
    retrying: bool,
}

impl StateFilter {
    fn selection(&self) -> Selection {
        match self {
            StateFilter { due: true, .. } => Selection::Due,
            StateFilter {
                in_flight: true, ..
            } => Selection::InFlight,
            StateFilter {
                scheduled: true, ..
            } => Selection::Scheduled,
            StateFilter { dead: true, .. } => Selection::Dead,
            StateFilter { failing: true, .. } => Selection::Failing,
            StateFilter { retrying: true, .. } => Selection::Retrying,
            _ => Selection::All,
        }
    }
}

/// The pools, without the start-up check: `status` reports a database it
/// cannot read in its own section rather than not at all.
fn open_store(servers: &Servers) -> anyhow::Result<Store> {
    let dbs = parse_dsn_list(servers.dsn.as_deref().unwrap_or_default())?;
    Ok(Store::open(dbs)?.with_op_timeout(ADMIN_OP_TIMEOUT))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    crate::say!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `garivini status`, with `lease` unless --lease is given: exits 1
/// (after the report) when a database or gearmand could not be read.
pub async fn status(
    args: &StatusArgs,
    lease: u32,
    limits: &admin::Limits,
    servers: &Servers,
) -> anyhow::Result<()> {
    let store = open_store(servers)?;
    let gearmand = match &servers.gearmand {
        Some(_) => servers.gearmand()?,
        None => Vec::new(),
    };
    let status = admin::status(&store, &gearmand, args.lease.unwrap_or(lease), limits).await;
    store.close().await;
    if args.json {
        print_json(&status)?;
    } else {
        crate::terminal::write_out(format_args!(
            "{}",
            status_text(&status, servers.gearmand.is_none())
        ));
    }
    let errors = status.errors();
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    Ok(())
}

fn status_text(status: &Status, no_gearmand: bool) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let exact = status.databases.iter().filter(|db| db.history).count();
    if exact < status.databases.len() {
        line(format!(
            "in flight = due within the {} s lease (leased, or delayed by less); failing = failcount > 0, not dead",
            status.lease
        ));
    }
    if exact > 0 {
        let which = if exact < status.databases.len() {
            "where the table has attempted_at and failed_at: "
        } else {
            ""
        };
        line(format!(
            "{which}in flight = leased and its {} s lease not run out; retrying = failed, waiting out its backoff; failing = failcount > 0, not dead",
            status.lease
        ));
    }
    if status
        .databases
        .iter()
        .any(|db| !db.total.at_least.is_empty())
    {
        line(
            "N+ = at least N: more rows than a status counts one by one (the rest are not read)"
                .into(),
        );
    }
    for db in &status.databases {
        line(String::new());
        let clock = db.now.map_or(String::new(), |n| format!("  at {}", utc(n)));
        line(format!("database {}  {}{clock}", db.dbid, db.dsn));
        if let Some(err) = &db.error {
            line(format!("  unreadable: {err}"));
            continue;
        }
        if db.functions.is_empty() {
            line("  no jobs".into());
            continue;
        }
        let mut titles = vec!["function", "due", "in flight", "scheduled"];
        if db.history {
            titles.push("retrying");
        }
        titles.extend(["dead", "failing", "oldest due", "waits"]);
        let mut rows = vec![header(&titles)];
        let counts = |name: &str, c: &admin::Counts, waiting: Option<admin::WaitReason>| {
            let mut row = vec![
                name.to_string(),
                c.shown("due", c.due),
                c.shown("in_flight", c.in_flight),
                c.shown("scheduled", c.scheduled),
            ];
            if db.history {
                row.push(c.shown("retrying", c.retrying));
            }
            row.extend([
                c.shown("dead", c.dead),
                c.shown("failing", c.failing),
                c.oldest_due_secs.map_or("-".into(), age),
                waiting.map_or("-", |w| w.as_str()).to_string(),
            ]);
            row
        };
        let numeric: Vec<usize> = (1..titles.len() - 1).collect();
        for f in &db.functions {
            rows.push(counts(&printable(&f.funcname), &f.counts, f.waiting));
        }
        if db.functions.len() > 1 {
            rows.push(counts("(all)", &db.total, None));
        }
        for l in table(&rows, &numeric) {
            line(format!("  {l}"));
        }
    }
    if no_gearmand {
        line(String::new());
        line("gearmand: none given (--gearmand or GARIVINI_GEARMAND)".into());
    }
    for g in &status.gearmand {
        line(String::new());
        line(format!("gearmand {}", g.server));
        if let Some(err) = &g.error {
            line(format!("  unreadable: {err}"));
            continue;
        }
        if g.functions.is_empty() {
            line("  no functions".into());
            continue;
        }
        let mut rows = vec![header(&["function", "depth", "running", "workers"])];
        for f in &g.functions {
            rows.push(vec![
                printable(&f.funcname),
                f.depth.to_string(),
                f.running.to_string(),
                f.workers.to_string(),
            ]);
        }
        for l in table(&rows, &[1, 2, 3]) {
            line(format!("  {l}"));
        }
    }
    if !status.paused.functions.is_empty() || !status.paused.without_table.is_empty() {
        line(String::new());
    }
    for f in &status.paused.functions {
        line(format!(
            "paused: {} since {} (its jobs wait in the database until `garivini functions resume`)",
            printable(&f.funcname),
            utc(f.since)
        ));
    }
    for dbid in &status.paused.without_table {
        line(format!(
            "database {dbid}: no garivini_paused table, so nothing is paused there (garivini schema check --apply creates it)"
        ));
    }
    if !status.without_worker.is_empty() {
        let names: Vec<String> = status.without_worker.iter().map(|f| printable(f)).collect();
        line(String::new());
        line(format!(
            "no worker: {} (their rows wait in the database until one registers)",
            names.join(", ")
        ));
    }
    out
}

/// Runs one `jobs` subcommand, with `lease` unless --lease is given.
pub async fn jobs(command: &JobsCommand, lease: u32, servers: &Servers) -> anyhow::Result<()> {
    let store = servers.store().await?;
    let outcome = run_jobs(command, lease, &store).await;
    outcome.map_err(|err| match err.downcast_ref::<Error>() {
        Some(e @ Error::JobsInFlight { .. }) => {
            anyhow::anyhow!("{e}; pass --force to do it anyway")
        }
        _ => err,
    })
}

async fn run_jobs(command: &JobsCommand, default_lease: u32, store: &Store) -> anyhow::Result<()> {
    match command {
        JobsCommand::List {
            funcname,
            state,
            unique_prefix,
            after,
            limit,
            json,
            lease,
        } => {
            let query = ListQuery {
                funcname: funcname.clone(),
                selection: state.selection(),
                lease: lease.unwrap_or(default_lease),
                limit: *limit,
            };
            let page = admin::list_page(store, &query, unique_prefix.as_deref(), *after).await?;
            let next = page.next.map(|c| c.to_string());
            let jobs = page.jobs;
            if *json {
                // The shape of the API's GET /api/v1/jobs.
                return print_json(&serde_json::json!({ "jobs": jobs, "next": next }));
            }
            if jobs.is_empty() {
                crate::say!("no jobs");
                return Ok(());
            }
            let mut rows = vec![header(&[
                "id", "function", "state", "next run", "fails", "uniqkey", "arg",
            ])];
            for j in &jobs {
                rows.push(vec![
                    j.id.clone(),
                    printable(&j.funcname),
                    j.state.as_str().into(),
                    next_run(j.due_in_secs),
                    j.failcount.to_string(),
                    j.uniqkey.as_deref().map_or_else(|| "-".into(), printable),
                    arg_text(j.arg_bytes, &j.arg_preview),
                ]);
            }
            for l in table(&rows, &[4]) {
                crate::say!("{l}");
            }
            if let Some(next) = next {
                crate::say!("(first {limit}; the next page: --after {next})");
            }
            Ok(())
        }
        JobsCommand::Show { id, json, lease } => {
            let shown = admin::show(store, *id, lease.unwrap_or(default_lease)).await?;
            if *json {
                return print_json(&shown);
            }
            let text = |key: &str| match &shown.job[key] {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => printable(s),
                other => other.to_string(),
            };
            let run_after = shown.job["run_after"].as_u64().unwrap_or_default() as u32;
            let when = match shown.due_in_secs {
                None => "never (dead: `garivini jobs retry` makes it due)".to_string(),
                Some(_) => format!("{} ({})", next_run(shown.due_in_secs), utc(run_after)),
            };
            crate::say!("job {}", shown.id);
            crate::say!("  funcname   {}", text("funcname"));
            crate::say!("  state      {}", shown.state.as_str());
            crate::say!("  next run   {when}");
            crate::say!("  run_after  {run_after}");
            crate::say!(
                "  failcount  {}{}",
                text("failcount"),
                if shown.failing { " (failing)" } else { "" }
            );
            crate::say!("  flag       {}", text("flag"));
            crate::say!("  uniqkey    {}", text("uniqkey"));
            crate::say!("  coalesce   {}", text("coalesce"));
            crate::say!("  arg        {} bytes", shown.arg_bytes);
            if let Some(h) = &shown.history {
                let at = |t: Option<u64>| {
                    t.map_or("-".to_string(), |t| {
                        let ago = u64::from(shown.now).saturating_sub(t);
                        format!(
                            "{} ({} ago)",
                            utc(t.min(u64::from(u32::MAX)) as u32),
                            age(ago)
                        )
                    })
                };
                crate::say!("  created    {}", at(h.created_at));
                crate::say!("  attempted  {}", at(h.attempted_at));
                if h.failed_at.is_some() {
                    crate::say!("  failed     {}", at(h.failed_at));
                }
                let error = h.last_error.as_deref().map_or("-".into(), printable);
                crate::say!("  last error {error}");
            }
            if let Some(why) = &shown.unsendable {
                crate::say!("  cannot be dispatched: {why} (parked dead by a QueueRunner)");
            }
            crate::say!("job JSON (what a worker receives):");
            crate::say!("{}", shown.job_json);
            Ok(())
        }
        JobsCommand::Retry {
            ids,
            dead,
            funcname,
            dry_run,
            reset_failcount,
            force,
            json,
            lease,
        } => {
            let failcount = if *reset_failcount { "reset" } else { "kept" };
            if *dead {
                let action = DeadAction::Retry {
                    reset_failcount: *reset_failcount,
                };
                return on_dead(store, action, funcname.as_deref(), *dry_run, *json).await;
            }
            let guard = Guard {
                lease: lease.unwrap_or(default_lease),
                force: *force,
            };
            let done = admin::retry(store, ids, *reset_failcount, guard).await?;
            if *json {
                return print_json(&serde_json::json!({
                    "retried": done.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "failcount": failcount,
                }));
            }
            crate::say!(
                "{} {} made due now (failcount {failcount}): {}",
                done.len(),
                plural(done.len(), "job"),
                ids_text(&done)
            );
            Ok(())
        }
        JobsCommand::Cancel {
            ids,
            dead,
            funcname,
            dry_run,
            force,
            json,
            lease,
        } => {
            if *dead {
                let action = DeadAction::Cancel;
                return on_dead(store, action, funcname.as_deref(), *dry_run, *json).await;
            }
            let guard = Guard {
                lease: lease.unwrap_or(default_lease),
                force: *force,
            };
            if let Some(f) = funcname {
                return cancel_function(store, f, guard, *dry_run, *json).await;
            }
            let done = admin::cancel(store, ids, guard).await?;
            if *json {
                return print_json(&serde_json::json!({
                    "cancelled": done.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }));
            }
            crate::say!(
                "{} {} cancelled (deleted): {}",
                done.len(),
                plural(done.len(), "job"),
                ids_text(&done)
            );
            Ok(())
        }
    }
}

/// What `jobs retry|cancel --dead` does to the dead rows.
#[derive(Clone, Copy)]
enum DeadAction {
    Retry { reset_failcount: bool },
    Cancel,
}

/// `jobs retry|cancel --dead [--funcname F] [--dry-run]`: every dead row of
/// `funcname` (of every function without it), in every database; with
/// `dry_run`, how many of which function, and nothing changed.
async fn on_dead(
    store: &Store,
    action: DeadAction,
    funcname: Option<&str>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let (key, done) = match action {
        DeadAction::Retry { reset_failcount } => (
            "retried",
            format!(
                "made due now (failcount {})",
                if reset_failcount { "reset" } else { "kept" }
            ),
        ),
        DeadAction::Cancel => ("cancelled", "cancelled (deleted)".to_string()),
    };
    let mut by_function: BTreeMap<String, u64> = BTreeMap::new();
    if dry_run || funcname.is_none() {
        for (_, f, n) in admin::dead_rows(store, funcname).await? {
            *by_function.entry(f).or_default() += n;
        }
    }
    if dry_run {
        let total: u64 = by_function.values().sum();
        if json {
            return print_json(&serde_json::json!({
                "dry_run": true, key: total, "by_function": by_function,
            }));
        }
        let list: Vec<String> = by_function
            .iter()
            .map(|(f, n)| format!("{f} ({n})"))
            .collect();
        crate::say!(
            "would be {done}: {total} dead {}{}{} (--dry-run: nothing changed)",
            plural(total as usize, "job"),
            if list.is_empty() { "" } else { ": " },
            list.join(", ")
        );
        return Ok(());
    }
    let functions: Vec<String> = match funcname {
        Some(f) => vec![f.to_string()],
        None => by_function.keys().cloned().collect(),
    };
    let mut by_database: BTreeMap<String, u64> = BTreeMap::new();
    for f in &functions {
        let per_db = match action {
            DeadAction::Retry { reset_failcount } => {
                admin::retry_dead(store, f, reset_failcount).await?
            }
            DeadAction::Cancel => admin::purge_dead(store, f).await?,
        };
        for (dbid, n) in per_db {
            *by_database.entry(dbid.to_string()).or_default() += n;
        }
    }
    let total: u64 = by_database.values().sum();
    if json {
        let mut answer = serde_json::json!({
            "funcname": funcname, key: total, "by_database": by_database,
        });
        if let DeadAction::Retry { reset_failcount } = action {
            answer["failcount"] = (if reset_failcount { "reset" } else { "kept" }).into();
        }
        return print_json(&answer);
    }
    let of = match funcname {
        Some(f) => f.to_string(),
        None => format!(
            "{} {}",
            functions.len(),
            plural(functions.len(), "function")
        ),
    };
    crate::say!(
        "{total} dead {} of {of} {done}",
        plural(total as usize, "job")
    );
    Ok(())
}

/// `jobs cancel --funcname F [--force] [--dry-run]`: one line per
/// database, saying what was (or would be) deleted and what was left in
/// flight, and why.
async fn cancel_function(
    store: &Store,
    funcname: &str,
    guard: Guard,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let per_db = admin::cancel_function(store, funcname, guard, dry_run).await?;
    if json {
        return print_json(&serde_json::json!({
            "funcname": funcname, "dry_run": dry_run, "force": guard.force,
            "by_database": per_db,
        }));
    }
    let f = printable(funcname);
    for db in &per_db {
        let (n, k) = (db.cancelled, db.in_flight_left);
        let jobs = format!("{n} {} of {f}", plural(n as usize, "job"));
        let them = if k == 1 { "it" } else { "them" };
        if dry_run {
            let b = &db.before;
            let mut states = format!(
                "{} due, {} scheduled, {} retrying",
                b.due, b.scheduled, b.retrying
            );
            if guard.force {
                states.push_str(&format!(", {} in flight", b.in_flight));
            }
            let left = match k {
                0 => String::new(),
                k => format!(
                    " and leave {k} in flight (a worker may be running {them}: --force deletes \
                     {them} too)"
                ),
            };
            crate::say!(
                "database {}: would cancel {jobs} ({states}){left}; --dry-run: nothing deleted",
                db.dbid
            );
        } else {
            let left = match k {
                0 => String::new(),
                k => format!(
                    "; {k} in flight left: a worker may be running {them} (--force deletes \
                     {them} too)"
                ),
            };
            crate::say!("database {}: {jobs} cancelled (deleted){left}", db.dbid);
        }
    }
    Ok(())
}

fn ids_text(ids: &[JobRef]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

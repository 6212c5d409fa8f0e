//! `garivini functions pause|resume|list`: pausing a function's jobs in
//! every database (they stay due, and run after the resume), one line per
//! command or paused function (`--json` prints the library's value, as the
//! API answers it).

use anyhow::Context as _;
use garivini::admin::{self, PauseReport};

use crate::format::{age, printable, utc};
use crate::servers::Servers;

/// `garivini functions ...`.
#[derive(clap::Subcommand, Debug)]
pub enum FunctionsCommand {
    /// Pauses a function in every database: within a couple of seconds
    /// every QueueRunner, Injector and Controller stops sending its jobs,
    /// which stay due in the table (new ones are still stored).
    Pause {
        /// The function, as its jobs' funcname.
        funcname: String,
        /// Print JSON instead of text: what changed in which database, as
        /// POST /api/v1/functions/{funcname}/pause answers.
        #[arg(long)]
        json: bool,
    },
    /// Resumes a paused function: its waiting jobs run within a couple of
    /// seconds.
    Resume {
        /// The function, as its jobs' funcname.
        funcname: String,
        /// Print JSON instead of text (as `pause --json`).
        #[arg(long)]
        json: bool,
    },
    /// Lists the paused functions, one line each.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `functions` subcommand: exits 1 (one line) on a bad name, or
/// when a database could not be changed or read.
pub async fn run(command: &FunctionsCommand, servers: &Servers) -> anyhow::Result<()> {
    // Checked before anything is connected to: a typo changes nothing.
    if let FunctionsCommand::Pause { funcname, .. } | FunctionsCommand::Resume { funcname, .. } =
        command
    {
        garivini::job::check_funcname(funcname)
            .with_context(|| format!("invalid function name {:?}", printable(funcname)))?;
    }
    let store = servers.store().await?;
    match command {
        FunctionsCommand::Pause { funcname, json } => {
            let report = admin::pause(&store, funcname).await?;
            let name = printable(funcname);
            if *json {
                crate::say!("{}", serde_json::to_string_pretty(&report)?);
                return check(&report, "paused");
            }
            check(&report, "paused")?;
            if report.changed.is_empty() {
                crate::say!("{name} was paused already");
            } else {
                crate::say!("paused {name}: its jobs wait in the database until `garivini functions resume {name}`");
            }
        }
        FunctionsCommand::Resume { funcname, json } => {
            let report = admin::resume(&store, funcname).await?;
            let name = printable(funcname);
            if *json {
                crate::say!("{}", serde_json::to_string_pretty(&report)?);
                return check(&report, "resumed");
            }
            check(&report, "resumed")?;
            if report.changed.is_empty() {
                crate::say!("{name} was not paused");
            } else {
                crate::say!("resumed {name}: its jobs run again");
            }
        }
        FunctionsCommand::List { json } => {
            let report = admin::paused(&store).await;
            if *json {
                crate::say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for f in &report.functions {
                    // The database's clock, as `since` is.
                    let now = store.clock(f.databases[0]).await;
                    crate::say!(
                        "{}  paused since {} ({} ago)",
                        printable(&f.funcname),
                        utc(f.since),
                        age(u64::from(now.saturating_sub(f.since)))
                    );
                }
                if report.functions.is_empty() && report.errors.is_empty() {
                    crate::say!("no function is paused");
                }
            }
            if !report.errors.is_empty() {
                anyhow::bail!("{}", report.errors.join("; "));
            }
            if !report.without_table.is_empty() {
                anyhow::bail!("{}", no_table(&report.without_table));
            }
        }
    }
    Ok(())
}

/// One line, and exit 1, when a database was not changed.
fn check(report: &PauseReport, done: &str) -> anyhow::Result<()> {
    let mut why = report.errors.clone();
    if !report.without_table.is_empty() {
        why.push(no_table(&report.without_table));
    }
    if why.is_empty() {
        return Ok(());
    }
    let mut ok: Vec<u32> = report
        .changed
        .iter()
        .chain(&report.unchanged)
        .copied()
        .collect();
    ok.sort_unstable();
    let so_far = if ok.is_empty() {
        format!("{} not {done}", printable(&report.funcname))
    } else {
        format!(
            "{} {done} only in {}",
            printable(&report.funcname),
            databases(&ok)
        )
    };
    anyhow::bail!("{so_far}: {}", why.join("; "))
}

fn no_table(dbids: &[u32]) -> String {
    format!(
        "{} no garivini_paused table (garivini schema check --apply creates it)",
        match dbids {
            [one] => format!("database {one} has"),
            more => format!("{} have", databases(more)),
        }
    )
}

fn databases(dbids: &[u32]) -> String {
    let ids: Vec<String> = dbids.iter().map(u32::to_string).collect();
    match dbids {
        [_] => format!("database {}", ids[0]),
        _ => format!("databases {}", ids.join(", ")),
    }
}

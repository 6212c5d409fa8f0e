//! `garivini config check`: every role's settings checked and shown (text,
//! or `--json`), the processes the file starts checked for a metrics
//! address two of them would share, then each database and gearmand tried.

use std::net::SocketAddr;

use anyhow::{anyhow, bail};
use garivini::config::DbConfig;
use garivini::{functions, periodic};
use serde_json::{json, Map, Value};

use crate::settings::{Effective, Role, Settings};
use crate::settings_file::{Setting, Source};

/// How long `config check` waits for one database or gearmand.
const ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `garivini config check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Check the settings only; connect to nothing.
    #[arg(long)]
    offline: bool,
    /// The roles that run in one `garivini workers --roles ROLES` process
    /// (comma separated), sharing its one metrics address; by default
    /// each role runs in a process of its own, as garivini@.service runs
    /// them.
    #[arg(long, value_delimiter = ',', value_name = "ROLES")]
    workers: Vec<Role>,
    /// Print JSON instead of text: the settings (each with its value and
    /// source), the processes, and what answered.
    #[arg(long)]
    json: bool,
}

/// One process the file starts: its roles, and the metrics address it
/// serves (a `workers` process: its first role's that has one).
struct Process {
    roles: Vec<Role>,
    metrics: Option<(String, SocketAddr)>,
}

impl Process {
    fn name(&self) -> String {
        match self.roles.as_slice() {
            [one] => one.name().to_string(),
            more => {
                let names: Vec<&str> = more.iter().map(|r| r.name()).collect();
                format!("workers ({})", names.join(","))
            }
        }
    }
}

/// What one database or gearmand answered.
struct Answer {
    /// "database 1", "gearmand host:port".
    what: String,
    /// The database's id and masked DSN.
    db: Option<(u32, String)>,
    heard: Heard,
}

enum Heard {
    Answered,
    Error(String),
    /// Nothing within [`ANSWER_LIMIT`].
    Nothing,
}

impl Answer {
    fn error(&self) -> Option<String> {
        match &self.heard {
            Heard::Answered => None,
            Heard::Error(err) => Some(err.clone()),
            Heard::Nothing => Some(format!("no answer within {} s", ANSWER_LIMIT.as_secs())),
        }
    }
}

/// `garivini config check`: every role's settings checked; the processes
/// checked for a shared metrics address; the settings printed; then,
/// unless --offline, each database and gearmand tried (exit 1 if one did
/// not answer, after the report).
pub async fn check(e: &Effective, args: &CheckArgs) -> anyhow::Result<()> {
    let (servers, shown) = &e.servers;
    let dbs = garivini::config::parse_dsn_list(servers.dsn.as_deref().unwrap_or_default())?;
    let gearmand = servers.gearmand()?;
    for (role, settings, _) in &e.roles {
        match role {
            Role::Queuerunner => settings.queue_runner().map(|_| ())?,
            Role::Injector => settings.injector().map(|_| ())?,
            Role::Controller => settings.controller().map(|_| ())?,
            Role::Web => {}
        }
        settings.functions()?;
    }
    let processes = processes(&e.roles, &args.workers)?;
    shared_metrics_address(&processes)?;
    if args.json {
        let mut report = settings_json(e, &dbs, &gearmand)?;
        report["processes"] = processes
            .iter()
            .map(|p| {
                let roles: Vec<&str> = p.roles.iter().map(|r| r.name()).collect();
                json!({ "roles": roles, "metrics_addr": p.metrics.as_ref().map(|m| &m.0) })
            })
            .collect();
        let answers = match args.offline {
            true => None,
            false => Some(try_servers(dbs, &gearmand).await),
        };
        report["answers"] = answers.as_ref().map_or(Value::Null, |a| answers_json(a));
        let silent = answers.as_deref().map(silent).unwrap_or_default();
        report["ok"] = silent.is_empty().into();
        crate::say!("{}", serde_json::to_string_pretty(&report)?);
        return verdict(&silent);
    }
    crate::say!("config file: {}", e.file.as_deref().unwrap_or("(none)"));
    for db in &dbs {
        crate::say!(
            "database {}: {} ({})",
            db.dbid,
            db.masked(),
            source(shown, "dsn").name()
        );
    }
    crate::say!(
        "gearmand: {} ({})",
        gearmand.join(","),
        source(shown, "gearmand").name()
    );
    for (role, settings, shown) in &e.roles {
        crate::say!("[{}]", role.name());
        for s in shown {
            crate::say!("  {} = {} ({})", s.flag, s.value, s.source.name());
        }
        if *role == Role::Queuerunner {
            for entry in &settings.periodic {
                crate::say!("  {}", describe_periodic(entry));
            }
        }
        for (name, f) in settings.functions()?.entries() {
            crate::say!("  [functions.{name}] {}", describe_function(&f));
        }
    }
    if !args.offline {
        let answers = try_servers(dbs, &gearmand).await;
        for a in &answers {
            let said = match (&a.heard, &a.db) {
                (Heard::Answered, Some(_)) => "answered; job table readable".to_string(),
                (Heard::Answered, None) => "answered".to_string(),
                (Heard::Error(err), _) => format!("NO ANSWER: {err}"),
                (Heard::Nothing, _) => format!("NO ANSWER within {} s", ANSWER_LIMIT.as_secs()),
            };
            match &a.db {
                Some((_, dsn)) => crate::say!("{} ({dsn}): {said}", a.what),
                None => crate::say!("{}: {said}", a.what),
            }
        }
        verdict(&silent(&answers))?;
    }
    crate::say!("ok");
    Ok(())
}

/// Where `flag`'s value came from.
fn source(settings: &[Setting], flag: &str) -> Source {
    settings
        .iter()
        .find(|s| s.flag == flag)
        .map_or(Source::Default, |s| s.source)
}

/// The processes the roles run in: those of `workers` in one, the others
/// each in its own; each with its metrics address, checked.
fn processes(
    roles: &[(Role, Settings, Vec<Setting>)],
    workers: &[Role],
) -> anyhow::Result<Vec<Process>> {
    if let Some(r) = workers
        .iter()
        .find(|w| !roles.iter().any(|(r, ..)| r == *w))
    {
        bail!(
            "config check --workers takes queuerunner, injector and controller, not {}",
            r.name()
        );
    }
    let addr = |role: Role| -> anyhow::Result<Option<(String, SocketAddr)>> {
        let settings = &roles.iter().find(|(r, ..)| *r == role).expect("a role").1;
        let Some(text) = &settings.metrics_addr else {
            return Ok(None);
        };
        let addr = text
            .parse()
            .map_err(|_| anyhow!("invalid --metrics-addr {text:?}: expected IP:PORT"))?;
        Ok(Some((text.clone(), addr)))
    };
    let mut processes = Vec::new();
    for (role, ..) in roles {
        if !workers.contains(role) {
            processes.push(Process {
                roles: vec![*role],
                metrics: addr(*role)?,
            });
            continue;
        }
        if processes.iter().any(|p| p.roles.contains(role)) {
            continue;
        }
        let mut together: Vec<Role> = Vec::new();
        let mut metrics = None;
        for w in workers {
            if together.contains(w) {
                continue;
            }
            together.push(*w);
            // `workers` serves its first role's address (main.rs).
            if metrics.is_none() {
                metrics = addr(*w)?;
            }
        }
        processes.push(Process {
            roles: together,
            metrics,
        });
    }
    Ok(processes)
}

/// Err naming the address and the processes when two would serve metrics
/// on one address: the second to start could not bind it. A wildcard
/// address (0.0.0.0, ::) takes its port on every address.
fn shared_metrics_address(processes: &[Process]) -> anyhow::Result<()> {
    let clash = |a: &SocketAddr, b: &SocketAddr| {
        a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (i, p) in processes.iter().enumerate() {
        let Some((text, addr)) = &p.metrics else {
            continue;
        };
        let mut sharing = vec![p.name()];
        for q in &processes[i + 1..] {
            if q.metrics.as_ref().is_some_and(|(_, b)| clash(addr, b)) {
                sharing.push(q.name());
            }
        }
        if let [rest @ .., last] = sharing.as_slice() {
            if !rest.is_empty() {
                bail!(
                    "metrics address {text} would be served by {} and {last}, one process each: \
                     all but the first would fail to bind it; give each role its own metrics-addr \
                     (in its [ROLE] section), or run them in one `garivini workers` process and \
                     check with --workers ROLES",
                    rest.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// Tries each database (a read of its job table) and each gearmand (its
/// `status`), each within [`ANSWER_LIMIT`].
async fn try_servers(dbs: Vec<DbConfig>, gearmand: &[String]) -> Vec<Answer> {
    let mut answers = Vec::new();
    let names: Vec<(u32, String)> = dbs.iter().map(|d| (d.dbid, d.masked())).collect();
    match garivini::Store::open(dbs) {
        Err(err) => answers.push(Answer {
            what: format!("the databases ({err})"),
            db: None,
            heard: Heard::Error(err.to_string()),
        }),
        Ok(store) => {
            for (dbid, masked) in names {
                let tried =
                    tokio::time::timeout(ANSWER_LIMIT, store.any_due(dbid, &Default::default()))
                        .await;
                let heard = match tried {
                    Ok(Ok(_)) => Heard::Answered,
                    Ok(Err(err)) => Heard::Error(err.to_string()),
                    Err(_) => Heard::Nothing,
                };
                answers.push(Answer {
                    what: format!("database {dbid}"),
                    db: Some((dbid, masked)),
                    heard,
                });
            }
        }
    }
    for server in gearmand {
        let one = [server.clone()];
        let tried =
            tokio::time::timeout(ANSWER_LIMIT, garivini::gearman::function_status(&one)).await;
        let heard = match tried {
            Ok((_, errors)) if errors.is_empty() => Heard::Answered,
            Ok((_, errors)) => Heard::Error(errors[0].to_string()),
            Err(_) => Heard::Nothing,
        };
        answers.push(Answer {
            what: format!("gearmand {server}"),
            db: None,
            heard,
        });
    }
    answers
}

/// The names of those that did not answer.
fn silent(answers: &[Answer]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| !matches!(a.heard, Heard::Answered))
        .map(|a| a.what.clone())
        .collect()
}

fn verdict(silent: &[String]) -> anyhow::Result<()> {
    if !silent.is_empty() {
        bail!("config check: no answer from {}", silent.join(", "));
    }
    Ok(())
}

/// The servers and every role's settings, as `--json` prints them.
fn settings_json(e: &Effective, dbs: &[DbConfig], gearmand: &[String]) -> anyhow::Result<Value> {
    let shown = &e.servers.1;
    let databases: Vec<Value> = dbs
        .iter()
        .map(|db| {
            json!({
                "dbid": db.dbid,
                "dsn": db.masked(),
                "source": source(shown, "dsn").name(),
            })
        })
        .collect();
    let mut roles = Map::new();
    for (role, settings, shown) in &e.roles {
        let values: Map<String, Value> = shown
            .iter()
            .map(|s| {
                let value = json!({ "value": s.value, "source": s.source.name() });
                (s.flag.clone(), value)
            })
            .collect();
        let functions: Map<String, Value> = settings
            .functions()?
            .entries()
            .into_iter()
            .map(|(name, f)| (name.to_string(), function_json(&f)))
            .collect();
        let mut section = json!({ "settings": values, "functions": functions });
        if *role == Role::Queuerunner {
            section["periodic"] = settings.periodic.iter().map(periodic_json).collect();
        }
        roles.insert(role.name().to_string(), section);
    }
    Ok(json!({
        "config_file": e.file,
        "databases": databases,
        "gearmand": { "servers": gearmand, "source": source(shown, "gearmand").name() },
        "roles": roles,
    }))
}

fn answers_json(answers: &[Answer]) -> Value {
    let mut databases = Vec::new();
    let mut gearmand = Vec::new();
    for a in answers {
        let (answered, error) = (matches!(a.heard, Heard::Answered), a.error());
        match (&a.db, a.what.strip_prefix("gearmand ")) {
            (Some((dbid, dsn)), _) => databases.push(json!({
                "dbid": dbid, "dsn": dsn, "answered": answered, "error": error,
            })),
            (None, Some(server)) => gearmand.push(json!({
                "server": server, "answered": answered, "error": error,
            })),
            (None, None) => databases.push(json!({
                "dbid": null, "dsn": null, "answered": answered, "error": error,
            })),
        }
    }
    json!({ "databases": databases, "gearmand": gearmand })
}

/// One function's settings, keyed as in `[functions.NAME]`.
fn function_json(f: &functions::Settings) -> Value {
    json!({
        "concurrency": f.concurrency,
        "watermark": f.watermark,
        "timeout": f.timeout.map(|t| t.as_secs_f64()),
        "max-attempts": f.max_attempts,
    })
}

/// One `[[periodic]]` entry, keyed as in the file.
fn periodic_json(e: &periodic::Entry) -> Value {
    let (cron, every) = match &e.schedule {
        periodic::Schedule::Cron(expression) => (Some(expression.clone()), None),
        periodic::Schedule::Every(secs) => (None, Some(*secs)),
    };
    json!({
        "name": e.name,
        "funcname": e.funcname,
        "cron": cron,
        "every": every,
        "arg_bytes": e.arg.len(),
        "priority": e.priority.to_string(),
        "catch-up": e.catch_up,
    })
}

/// One function's settings as `config check` prints them.
fn describe_function(f: &functions::Settings) -> String {
    let mut parts = Vec::new();
    if let Some(c) = f.concurrency {
        parts.push(format!("concurrency {c}"));
    }
    if let Some(w) = f.watermark {
        parts.push(format!("watermark {w}"));
    }
    if let Some(t) = f.timeout {
        parts.push(format!("timeout {} s", t.as_secs_f64()));
    }
    if let Some(m) = f.max_attempts {
        parts.push(format!("max-attempts {m}"));
    }
    parts.join(", ")
}

/// One `[[periodic]]` entry as `config check` prints it.
fn describe_periodic(e: &periodic::Entry) -> String {
    let schedule = match &e.schedule {
        periodic::Schedule::Cron(expression) => format!("cron {expression:?} (UTC)"),
        periodic::Schedule::Every(secs) => format!("every {secs} s"),
    };
    format!(
        "[[periodic]] {:?}: {} {schedule}, arg {} bytes, priority {}, missed ticks {}",
        e.name,
        e.funcname,
        e.arg.len(),
        e.priority,
        if e.catch_up {
            "caught up (the last one)"
        } else {
            "skipped"
        }
    )
}

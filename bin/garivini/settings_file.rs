//! `--config garivini.toml`: every flag of `garivini` in a file. Keys are
//! the flags' long names; precedence is flags > environment > file >
//! defaults. The file is laid over the flags by clap itself: its values
//! become arguments placed before the ones given, so every value is parsed
//! and checked exactly as the same flag would be.
//!
//! ```toml
//! dsn = ["mysql://garivini:secret@db1/garivini", "mysql://garivini:secret@db2/garivini"]
//! gearmand = ["gearmand1:4730", "gearmand2:4730"]
//!
//! [roles]          # every role
//! lease = 600
//! metrics-addr = "0.0.0.0:9101"
//!
//! [queuerunner]    # one role; over [roles]
//! queue-watermark-depth = 2000
//!
//! [controller]
//! concurrency = 400
//!
//! [[periodic]]     # a periodic job; one table per entry (QueueRunners)
//! name = "nightly-report"
//! funcname = "report"
//! cron = "0 3 * * *"
//!
//! [functions.resize]   # one function's own settings (every role)
//! concurrency = 2
//! timeout = 30
//! max-attempts = 5
//! ```

use std::ffi::OsString;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use garivini::{functions, periodic};

/// The role sections a file may have, besides `[roles]`.
pub const ROLE_SECTIONS: [&str; 3] = ["queuerunner", "injector", "controller"];
/// The array of tables of periodic jobs, `[[periodic]]`.
pub const PERIODIC: &str = "periodic";
/// The tables of per-function settings, `[functions.NAME]`.
pub const FUNCTIONS: &str = "functions";

/// One `[[periodic]]` table as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PeriodicTable {
    name: String,
    funcname: String,
    /// A cron expression (UTC); or `every`.
    cron: Option<String>,
    /// An interval, seconds; or `cron`.
    every: Option<u32>,
    #[serde(default)]
    arg: String,
    priority: Option<String>,
    #[serde(default, rename = "catch-up", alias = "catch_up")]
    catch_up: bool,
}

impl PeriodicTable {
    fn entry(self) -> anyhow::Result<periodic::Entry> {
        let schedule = match (self.cron, self.every) {
            (Some(cron), None) => periodic::Schedule::Cron(cron),
            (None, Some(every)) => periodic::Schedule::Every(every),
            _ => bail!(
                "{:?}: give one of cron = \"...\" or every = SECONDS",
                self.name
            ),
        };
        let priority = match self.priority.as_deref() {
            None => garivini::Priority::Normal,
            Some(p) => p.parse().map_err(|e| anyhow!("{:?}: {e}", self.name))?,
        };
        Ok(periodic::Entry::new(self.name, self.funcname, schedule)
            .arg(self.arg)
            .priority(priority)
            .catch_up(self.catch_up))
    }
}

/// A parsed configuration file.
pub struct File {
    path: String,
    table: toml::Table,
}

/// One flag's effective value and where it came from.
pub struct Setting {
    /// The flag's long name.
    pub flag: String,
    /// Its value as text ("-" when it has none).
    pub value: String,
    pub source: Source,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "environment",
            Source::File => "file",
            Source::Default => "default",
        }
    }
}

impl File {
    pub fn read(path: &Path) -> anyhow::Result<File> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            // The line the parser stopped on, counted from 1.
            let line = e
                .span()
                .map(|at| text[..at.start.min(text.len())].matches('\n').count() + 1);
            anyhow!(
                "config file {}{}: {}",
                path.display(),
                line.map(|l| format!(" line {l}")).unwrap_or_default(),
                e.message().replace('\n', " ")
            )
        })?;
        let file = File {
            path: path.display().to_string(),
            table,
        };
        for (key, value) in &file.table {
            let section = key.as_str();
            if section == PERIODIC {
                let tables = value
                    .as_array()
                    .is_some_and(|a| a.iter().all(|v| v.is_table()));
                if !tables {
                    bail!(
                        "config file {}: periodic must be [[periodic]] tables, one per entry",
                        file.path
                    );
                }
            } else if section == FUNCTIONS {
                let tables = value
                    .as_table()
                    .is_some_and(|t| t.values().all(|v| v.is_table()));
                if !tables {
                    bail!(
                        "config file {}: functions must be [functions.NAME] tables, one per function",
                        file.path
                    );
                }
            } else if section == "roles" || ROLE_SECTIONS.contains(&section) {
                if !value.is_table() {
                    bail!("config file {}: [{section}] must be a table", file.path);
                }
            } else if value.is_table() {
                bail!(
                    "config file {}: unknown section [{section}] (known: roles, {}, functions.NAME)",
                    file.path,
                    ROLE_SECTIONS.join(", ")
                );
            }
        }
        Ok(file)
    }

    /// The `[[periodic]]` entries, each checked
    /// ([`garivini::periodic::validate`]).
    pub fn periodic(&self) -> anyhow::Result<Vec<periodic::Entry>> {
        let Some(toml::Value::Array(tables)) = self.table.get(PERIODIC) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::with_capacity(tables.len());
        for (i, table) in tables.iter().enumerate() {
            let raw: PeriodicTable = table.clone().try_into().map_err(|e: toml::de::Error| {
                anyhow!(
                    "config file {}: [[periodic]] entry {}: {}",
                    self.path,
                    i + 1,
                    e.message().replace('\n', " ")
                )
            })?;
            entries.push(raw.entry().map_err(|e| {
                anyhow!(
                    "config file {}: [[periodic]] entry {}: {e}",
                    self.path,
                    i + 1
                )
            })?);
        }
        periodic::validate(&entries).map_err(|e| anyhow!("config file {}: {e}", self.path))?;
        Ok(entries)
    }

    /// The `[functions.NAME]` sections, each key checked.
    pub fn functions(&self) -> anyhow::Result<Vec<(String, functions::Settings)>> {
        let Some(toml::Value::Table(tables)) = self.table.get(FUNCTIONS) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::with_capacity(tables.len());
        for (name, table) in tables {
            let mut settings = functions::Settings::default();
            for (key, value) in table.as_table().into_iter().flatten() {
                scalar(value)
                    .and_then(|v| settings.set(key, &v))
                    .map_err(|e| anyhow!("config file {}: [functions.{name}]: {e}", self.path))?;
            }
            settings
                .validate(name)
                .map_err(|e| anyhow!("config file {}: {e}", self.path))?;
            entries.push((name.clone(), settings));
        }
        Ok(entries)
    }

    /// The top-level keys (the connection flags).
    pub fn top(&self) -> Vec<(&str, &toml::Value)> {
        self.table
            .iter()
            .filter(|(k, v)| !v.is_table() && k.as_str() != PERIODIC)
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }

    /// The keys for `role`: `[roles]`, then `[role]` over it.
    pub fn role(&self, role: &str) -> Vec<(&str, &toml::Value)> {
        let mut keys = Vec::new();
        for section in ["roles", role] {
            if let Some(toml::Value::Table(t)) = self.table.get(section) {
                for (k, v) in t {
                    keys.retain(|(old, _)| *old != k.as_str());
                    keys.push((k.as_str(), v));
                }
            }
        }
        keys
    }
}

/// `T` (a set of flags) as given in `given`, with the file's `keys` for
/// every flag given neither on the command line nor in the environment
/// (no keys: just what was given). Answers the value and each flag's
/// effective value and source.
pub fn layered<T: Args + FromArgMatches>(
    given: &ArgMatches,
    keys: &[(&str, &toml::Value)],
    file: &str,
) -> anyhow::Result<(T, Vec<Setting>)> {
    let cmd =
        T::augment_args(Command::new("garivini").no_binary_name(true)).args_override_self(true);
    let mut argv: Vec<OsString> = Vec::new();
    let mut from_file = Vec::new();
    for (key, value) in keys {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key))
            .ok_or_else(|| anyhow!("config file {file}: unknown setting {key:?}"))?;
        let id = arg.get_id().as_str();
        if explicit(given, id) {
            continue;
        }
        let value = scalar(value).map_err(|e| anyhow!("config file {file}: {key}: {e}"))?;
        // One token, so that a value starting with '-' is not taken for a flag.
        argv.push(format!("--{key}={value}").into());
        from_file.push(id.to_string());
    }
    // What was given comes after, so that it wins.
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if !explicit(given, id) {
            continue;
        }
        if let Some(values) = given.get_raw(id) {
            for v in values {
                let mut token = OsString::from(format!("--{long}="));
                token.push(v);
                argv.push(token);
            }
        }
    }
    let matches = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| anyhow!("config file {file}: {}", first_line(&e.to_string())))?;
    let value =
        T::from_arg_matches(&matches).map_err(|e| anyhow!("{}", first_line(&e.to_string())))?;
    let settings = cmd
        .get_arguments()
        .filter_map(|arg| {
            let flag = arg.get_long()?.to_string();
            let id = arg.get_id().as_str();
            let source = match source_of(given, id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env,
                _ if from_file.iter().any(|f| f == id) => Source::File,
                _ => Source::Default,
            };
            let value = matches.get_raw(id).map_or_else(
                || "-".to_string(),
                |v| v.map(|v| v.to_string_lossy()).collect::<Vec<_>>().join(","),
            );
            Some(Setting {
                flag,
                value,
                source,
            })
        })
        .collect();
    Ok((value, settings))
}

/// `T`'s flags as the environment alone gives them (no argument), for
/// [`layered`]'s `given` where there is no command line of `T`'s.
pub fn environment<T: Args>() -> anyhow::Result<ArgMatches> {
    T::augment_args(Command::new("garivini").no_binary_name(true))
        .try_get_matches_from(Vec::<OsString>::new())
        .map_err(|e| anyhow!("{}", first_line(&e.to_string())))
}

/// Where `id` got its value in `given`, if `given` knows it at all (a
/// `workers` process's matches know its settings, a `config check` none).
fn source_of(given: &ArgMatches, id: &str) -> Option<ValueSource> {
    given
        .ids()
        .any(|i| i.as_str() == id)
        .then(|| given.value_source(id))
        .flatten()
}

/// Whether `id` was given on the command line or in the environment.
fn explicit(given: &ArgMatches, id: &str) -> bool {
    matches!(
        source_of(given, id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// A TOML value as a flag's text: strings as they are, numbers and
/// booleans as written, arrays of those joined with commas (the lists of
/// databases and servers).
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => Ok(items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(",")),
        _ => Err("expected a string, a number, a boolean or a list of those".into()),
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

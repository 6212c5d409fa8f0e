//! What every binary shows on the terminal around its work: logs on
//! stderr (coloured only on a terminal, or as JSON lines), an error as one
//! line and exit status 1, with the library's settings named as the flags
//! that set them (clap's own usage errors too), and output to a pipe that
//! closes early ending the command quietly.

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};

use clap::ArgMatches;
use garivini::Error;

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event, for people (coloured on a terminal, unless
    /// NO_COLOR is set).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The logging flags every binary has.
#[derive(clap::Args, Debug, Clone)]
pub struct Logging {
    /// Log format on stderr: text, or json (one object per line).
    #[arg(long, global = true, value_enum, env = "GARIVINI_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Logs to stderr, filtered by RUST_LOG (default: info), in `format`;
/// colours only when stderr is a terminal and NO_COLOR is unset or empty.
pub fn init_tracing(logging: &Logging) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match logging.log_format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
    }
}

/// The command line, parsed by `command`: help and version are printed as
/// clap prints them; any other usage error as one line, exit status 1.
///
/// Two flags of their own, listed in `--help`, write what packagers
/// install (`scripts/install-extras`) from the same definitions, and exit:
/// `--completions SHELL` (bash, zsh, fish, elvish, powershell) and
/// `--man DIR` (a page per command, `garivini-jobs.1` and so on). Given
/// first they need nothing else (no subcommand, no required flag).
pub fn matches(command: clap::Command) -> ArgMatches {
    let command = with_generators(negative_values(command));
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("--completions") => completions(command, argv.get(2).map(|s| s.as_os_str())),
        Some("--man") => man_pages(command, argv.get(2).map(|s| s.as_os_str())),
        _ => {
            let matches = command
                .clone()
                .try_get_matches_from(argv)
                .unwrap_or_else(|err| usage_error(err));
            // Given after other flags: done all the same, never ignored.
            let given = |id: &str| matches.get_raw(id).and_then(|mut v| v.next());
            if let Some(shell) = given("completions") {
                completions(command, Some(shell));
            }
            if let Some(dir) = given("man") {
                man_pages(command, Some(dir));
            }
            matches
        }
    }
}

/// `command` with `--completions` and `--man`, so that `--help` (and the
/// completions and man pages themselves) list them.
fn with_generators(command: clap::Command) -> clap::Command {
    let raw = clap::builder::ValueParser::os_string();
    command
        .arg(
            clap::Arg::new("completions")
                .long("completions")
                .value_name("SHELL")
                .value_parser(raw.clone())
                .help(
                    "Print the completion script for SHELL (bash, zsh, fish, elvish, \
                     powershell) and exit",
                ),
        )
        .arg(
            clap::Arg::new("man")
                .long("man")
                .value_name("DIR")
                .value_parser(raw)
                .help("Write the man pages, one per command, into DIR and exit"),
        )
}

/// Writes `command`'s completion script for the shell named in `shell`;
/// a reader that went away (`| head -1`) ends it quietly, as any output.
fn completions(mut command: clap::Command, shell: Option<&std::ffi::OsStr>) -> ! {
    use clap::ValueEnum as _;
    let name = shell.and_then(|s| s.to_str()).unwrap_or_default();
    let Ok(shell) = clap_complete::Shell::from_str(name, true) else {
        eprintln!("error: --completions takes bash, zsh, fish, elvish or powershell, not {name:?}");
        std::process::exit(1);
    };
    let bin = command.get_name().to_string();
    // Into memory first: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, bin, &mut script);
    write_bytes(&script);
    std::process::exit(0);
}

/// Writes a man page for `command` and one per subcommand into `dir`.
fn man_pages(command: clap::Command, dir: Option<&std::ffi::OsStr>) -> ! {
    let Some(dir) = dir else {
        eprintln!("error: --man takes the directory to write the pages into");
        std::process::exit(1);
    };
    if let Err(err) = clap_mangen::generate_to(command, dir) {
        eprintln!(
            "error: cannot write man pages into {}: {err}",
            dir.to_string_lossy()
        );
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// Every flag that takes a value takes a negative number too, so that
/// `--lease -1` is refused as a bad value of `--lease` rather than taken
/// for an unknown flag `-1`.
fn negative_values(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            if arg.get_action().takes_values() && arg.get_long().is_some() {
                arg.allow_negative_numbers(true)
            } else {
                arg
            }
        })
        .mut_subcommands(negative_values)
}

/// Ends the process for a clap error: help and version on stdout (exit
/// 0), a usage error as one line on stderr naming the flag and the value
/// (exit 1).
pub fn usage_error(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        err.exit();
    }
    let text = err.render().to_string();
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // No command given: what there is to give, on stderr.
        eprint!("{text}");
        std::process::exit(1);
    }
    // A positional's bad value: its own error names the value and what it
    // should be ("<ID>" would add nothing).
    let positional = matches!(
        err.get(clap::error::ContextKind::InvalidArg),
        Some(clap::error::ContextValue::String(arg)) if !arg.starts_with('-')
    );
    let cause = std::error::Error::source(&err).map(|e| e.to_string());
    // The first paragraph, its lines joined: "required arguments were not
    // provided:" is followed by the arguments, indented.
    let first: Vec<&str> = text
        .trim_start()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = first.join(" ");
    let line = match cause {
        Some(cause) if positional && err.kind() == ErrorKind::ValueValidation => cause,
        _ => joined.trim_start_matches("error: ").to_string(),
    };
    let line = line.as_str();
    eprintln!("error: {} (see --help)", plain_range(line));
    std::process::exit(1);
}

/// clap's `is not in 0..=4294967295` as people write it.
fn plain_range(line: &str) -> String {
    let Some((head, range)) = line.split_once(" is not in ") else {
        return line.to_string();
    };
    match range.split_once("..=") {
        Some((low, high)) => format!("{head} is not between {low} and {high}"),
        None => line.to_string(),
    }
}

/// Writes one line on stdout; see [`write_out`].
pub fn say(line: std::fmt::Arguments<'_>) {
    write_out(format_args!("{line}\n"));
}

/// Writes `text` on stdout as it is; a reader that went away (`| head`)
/// ends the process quietly, exit status 0, instead of a panic.
pub fn write_out(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    written(out.write_fmt(text).and_then(|()| out.flush()));
}

/// [`write_out`] for bytes.
fn write_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    written(out.write_all(bytes).and_then(|()| out.flush()));
}

/// A write to stdout done: a reader that went away ends the process with
/// status 0 and nothing said; any other failure is one line, status 1.
fn written(result: std::io::Result<()>) {
    if let Err(err) = result {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {err}");
        std::process::exit(1);
    }
}

/// `println!` for command output: see [`say`].
#[macro_export]
macro_rules! say {
    () => {
        $crate::terminal::say(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::terminal::say(format_args!($($arg)*))
    };
}

/// Runs `main` on a Tokio runtime; an error is printed as one line on
/// stderr and the process exits with status 1.
pub fn run(main: impl Future<Output = anyhow::Result<()>>) {
    raise_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the Tokio runtime");
    if let Err(err) = rt.block_on(main) {
        eprintln!("error: {}", one_line(&err));
        std::process::exit(1);
    }
}

/// The soft limit on open files, once raised by [`run`].
static FILE_LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Raises the soft RLIMIT_NOFILE to the hard limit (systemd's default soft
/// limit is 1,024, whatever `LimitNOFILE` allows), and keeps what it is
/// for [`file_limit`]. A failure is logged and the limit left as it was.
fn raise_file_limit() {
    let limit = match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < hard => match rlimit::increase_nofile_limit(hard) {
            Ok(raised) => raised,
            Err(err) => {
                tracing::warn!(%err, soft, hard, "cannot raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(err) => {
            tracing::warn!(%err, "cannot read the open-files limit");
            1024
        }
    };
    let _ = FILE_LIMIT.set(limit);
}

/// The process's soft limit on open files, as [`run`] left it.
#[allow(dead_code)] // not every binary caps anything by it
pub fn file_limit() -> u64 {
    FILE_LIMIT.get().copied().unwrap_or(1024)
}

/// The error and its causes on one line, leaving out a cause whose text
/// the line already holds (many errors repeat their source in their own
/// message).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let ours = cause.downcast_ref::<Error>();
        let text = match ours {
            Some(err) => for_terminal(err),
            None => cause.to_string(),
        };
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        if ours.is_some() {
            // Our errors say what their sources said, in their own words.
            break;
        }
    }
    line
}

/// A library error as a user of the binaries reads it. The library names
/// its settings (`inject_concurrency`) and says nothing of flags or the
/// environment; this is the one place that maps them: a setting is the
/// flag of the same name with dashes (`--inject-concurrency`, also the
/// key in a `--config` file), and the database and gearmand lists come
/// from GARIVINI_DSN / --dsn and GARIVINI_GEARMAND / --gearmand.
fn for_terminal(err: &Error) -> String {
    match err {
        Error::NoDatabase => {
            "no database given: set GARIVINI_DSN or pass --dsn (mysql://user:pass@host:port/db)"
                .into()
        }
        Error::NoGearmand => {
            "no gearmand given: set GARIVINI_GEARMAND or pass --gearmand (host:port)".into()
        }
        Error::InvalidConfig { name, reason } => {
            format!("invalid setting --{}: {reason}", name.replace('_', "-"))
        }
        other => other.to_string(),
    }
}

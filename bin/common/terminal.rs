//! What every binary shows on the terminal around its work: logs on
//! stderr, and an error as one line and exit status 1, with the library's
//! settings named as the flags that set them.

use std::future::Future;

use garivini::Error;

/// Logs to stderr, filtered by RUST_LOG (default: info).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `main` on a Tokio runtime; an error is printed as one line on
/// stderr and the process exits with status 1.
pub fn run(main: impl Future<Output = anyhow::Result<()>>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the Tokio runtime");
    if let Err(err) = rt.block_on(main) {
        eprintln!("error: {}", one_line(&err));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, leaving out a cause whose text
/// the line already holds (many errors repeat their source in their own
/// message).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = match cause.downcast_ref::<Error>() {
            Some(err) => for_terminal(err),
            None => cause.to_string(),
        };
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
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

//! What every binary shares: the connection flags (with their environment
//! variables), logging, the shutdown signal, and the one-line error exit.

#![allow(dead_code)] // each binary uses its own part of this file

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use garivini::config::{parse_dsn_list, parse_gearmand_list};
use garivini::Store;
use tokio_util::sync::CancellationToken;

/// How jobs travel (see the README).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Rows go straight into the database; the worker deletes its row.
    Throughput,
    /// Jobs go through `inject_jobs` (Injector) and `run_queued_job`
    /// (Controller); the worker just runs them.
    Lowlatency,
}

/// Microseconds since the epoch: the clock `gv_inject` stamps into each
/// arg and `gv_consume` compares with when the job starts.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// A flag's seconds as a Duration, refusing what is not a number >= 0.
pub fn seconds(flag: &str, secs: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("invalid setting {flag}: must be a number of seconds >= 0"))
}

/// Where the databases and job servers are.
#[derive(clap::Args, Debug, Clone)]
pub struct Servers {
    /// Databases: mysql:// URLs, comma separated (ids 1..n in this order).
    #[arg(long, env = "GARIVINI_DSN", hide_env_values = true, global = true)]
    pub dsn: Option<String>,
    /// gearmand servers: host:port, comma separated.
    #[arg(long, env = "GARIVINI_GEARMAND", global = true)]
    pub gearmand: Option<String>,
}

impl Servers {
    /// Connects to every database and checks it has the job table.
    pub async fn store(&self) -> anyhow::Result<Arc<Store>> {
        let dbs = parse_dsn_list(self.dsn.as_deref().unwrap_or_default())?;
        let store = Store::connect(dbs)
            .await
            .context("cannot start: database unreachable or not set up (load schema.sql)")?;
        Ok(Arc::new(store))
    }

    /// The gearmand list.
    pub fn gearmand(&self) -> anyhow::Result<Vec<String>> {
        Ok(parse_gearmand_list(
            self.gearmand.as_deref().unwrap_or_default(),
        )?)
    }
}

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

/// A token cancelled on the first SIGINT or SIGTERM; a second one exits
/// at once.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            if n > 0 {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
            tracing::info!("signal received: finishing work in hand (signal again to exit now)");
            t.cancel();
        }
    });
    token
}

/// Serves the metrics the library records (see `garivini::telemetry`) as
/// Prometheus text on `http://ADDR/metrics`. Must be called within the
/// runtime; fails (one line) if the address cannot be bound.
pub fn serve_metrics(addr: &str) -> anyhow::Result<()> {
    let socket: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --metrics-addr {addr:?}: expected IP:PORT"))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(socket)
        .set_buckets(garivini::telemetry::BUCKETS)?
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    tracing::info!(addr, "serving Prometheus metrics on /metrics");
    Ok(())
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
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

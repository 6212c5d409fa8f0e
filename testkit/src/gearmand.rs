//! A private gearmand on a free loopback port, killed on drop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use garivini::gearman::{server_status, FunctionLoad};

use crate::process::{command, try_free_port, Proc};
use crate::wait::{wait_until, within};

/// How long gearmand may take to listen.
const STARTUP: Duration = Duration::from_secs(15);
/// Ports tried before giving up: another process may take the free port
/// between the probe and gearmand's bind.
const PORT_ATTEMPTS: usize = 3;
/// How long a test waits for a worker to register, and for a `status`.
const LIMIT: Duration = Duration::from_secs(10);

/// How to run a [`Gearmand`].
#[derive(Debug, Clone, Default)]
pub struct GearmandConfig {
    /// The executable (default: `gearmand` from PATH, or /usr/sbin).
    pub program: Option<PathBuf>,
    /// Flags after ours (`--listen`, `--port`, the log and pid files), e.g.
    /// `--threads=0` or a `-q mysql` queue.
    pub args: Vec<String>,
    /// Directory for its files, named `<tag>-gearmand.*`, and the tag
    /// (default: a temporary directory of its own, removed on drop).
    pub dir: Option<(PathBuf, String)>,
}

/// A registered worker that takes no job ([`Gearmand::idle_worker`]).
pub struct IdleWorker {
    _conn: tokio::net::TcpStream,
}

/// A private gearmand, killed (SIGKILL) on drop.
pub struct Gearmand {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its port.
    pub port: u16,
    program: PathBuf,
    args: Vec<String>,
    /// Its files' path, up to `gearmand.log` and the like.
    files: PathBuf,
    proc: Option<Proc>,
    _own_dir: Option<tempfile::TempDir>,
}

impl Gearmand {
    /// A gearmand with its own defaults on a free port; panics (naming
    /// `scripts/services up`) when it does not start.
    pub async fn start() -> Gearmand {
        Gearmand::launch(GearmandConfig::default())
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A gearmand run as `config` says on a free port, listening when this
    /// returns.
    pub async fn launch(config: GearmandConfig) -> anyhow::Result<Gearmand> {
        let program = match config.program {
            Some(p) => p,
            None => installed_gearmand()?,
        };
        let (own_dir, files) = match config.dir {
            Some((dir, tag)) => (None, dir.join(format!("{tag}-"))),
            None => {
                let dir = tempfile::tempdir()?;
                let files = dir.path().join("");
                (Some(dir), files)
            }
        };
        let mut attempt = 1;
        let mut gearmand = loop {
            let port = try_free_port()?;
            let mut gearmand = Gearmand {
                addr: format!("127.0.0.1:{port}"),
                port,
                program: program.clone(),
                args: config.args.clone(),
                files: files.clone(),
                proc: None,
                _own_dir: None,
            };
            match gearmand.try_restart().await {
                Ok(()) => break gearmand,
                Err(e) if attempt < PORT_ATTEMPTS => {
                    eprintln!("gearmand did not start ({e:#}); trying another port");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        gearmand._own_dir = own_dir;
        Ok(gearmand)
    }

    /// Starts it again on the same port (panicking when it does not
    /// listen).
    pub async fn restart(&mut self) {
        self.try_restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    }

    async fn try_restart(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            bail!("gearmand on {} is already running", self.addr);
        }
        let file = |what: &str| format!("{}gearmand.{what}", self.files.display());
        let mut cmd = command(&self.program);
        cmd.arg("--config-file=/dev/null")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg(format!("--log-file={}", file("server.log")))
            .arg(format!("--pid-file={}", file("pid")))
            .args(&self.args);
        let mut proc =
            Proc::start_logged("gearmand", cmd, file("out").as_ref(), file("log").as_ref())?;
        let deadline = Instant::now() + STARTUP;
        loop {
            proc.check_running()?;
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                self.proc = Some(proc);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "gearmand did not listen on {} within {STARTUP:?}; {}",
                    self.addr,
                    proc.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL): its memory queue is lost.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// Err if it has exited (or was killed).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.proc.as_mut() {
            Some(proc) => proc.check_running(),
            None => bail!("gearmand on {} is not running", self.addr),
        }
    }

    /// This one server, as the roles take their list.
    pub fn servers(&self) -> Vec<String> {
        vec![self.addr.clone()]
    }

    /// Jobs and workers of `function`, from the admin `status`.
    pub async fn load(&self, function: &str) -> garivini::Result<FunctionLoad> {
        let rows = server_status(&self.addr).await?;
        Ok(rows.into_iter().filter(|(f, _)| f == function).fold(
            FunctionLoad::default(),
            |sum, (_, l)| FunctionLoad {
                queued: sum.queued + l.queued,
                running: sum.running + l.running,
                workers: sum.workers + l.workers,
            },
        ))
    }

    async fn load_or_panic(&self, function: &str) -> FunctionLoad {
        within(LIMIT, "gearmand status", self.load(function))
            .await
            .unwrap_or_else(|e| panic!("gearmand status: {e}"))
    }

    /// Workers registered for `function`.
    pub async fn workers(&self, function: &str) -> u64 {
        self.load_or_panic(function).await.workers
    }

    /// Jobs of `function` queued or running.
    pub async fn depth(&self, function: &str) -> u64 {
        self.load_or_panic(function).await.queued
    }

    /// Waits until `function` has `n` jobs queued or running, polling;
    /// panics with `what` after `limit`.
    pub async fn wait_for_depth(&self, limit: Duration, what: &str, function: &str, n: u64) {
        wait_until(limit, what, || async { self.depth(function).await == n }).await;
    }

    /// A worker that registers for `function` (CAN_DO) and never asks for
    /// a job: gearmand counts it, so a QueueRunner submits the function's
    /// rows, and they stay queued (to watch depths). Returns once gearmand
    /// knows it; it leaves when dropped.
    pub async fn idle_worker(&self, function: &str) -> IdleWorker {
        use tokio::io::AsyncWriteExt;
        let mut conn = within(
            LIMIT,
            "connecting to gearmand",
            tokio::net::TcpStream::connect(&self.addr),
        )
        .await
        .expect("gearmand accepts a worker");
        let mut packet = b"\0REQ".to_vec();
        packet.extend(1u32.to_be_bytes()); // CAN_DO
        packet.extend((function.len() as u32).to_be_bytes());
        packet.extend(function.as_bytes());
        conn.write_all(&packet).await.expect("CAN_DO sent");
        self.wait_for_worker(function).await;
        IdleWorker { _conn: conn }
    }

    /// Waits until `function` has a worker registered.
    pub async fn wait_for_worker(&self, function: &str) {
        wait_until(LIMIT, &format!("a worker for {function}"), || async {
            self.workers(function).await > 0
        })
        .await;
    }
}

impl Drop for Gearmand {
    fn drop(&mut self) {
        self.kill();
    }
}

/// gearmand from PATH, or /usr/sbin where Debian puts it.
fn installed_gearmand() -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
    {
        let p = PathBuf::from(dir).join("gearmand");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("gearmand is not installed; run scripts/services up (it installs gearman-job-server)")
}

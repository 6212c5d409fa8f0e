//! Child processes: our binaries and any other program, killed on drop,
//! and bounded runs of them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::db::TestDb;
use crate::gearmand::Gearmand;

/// How often a process is looked at while waiting for it to exit.
const POLL: Duration = Duration::from_millis(20);
/// How long [`run_garivini`] may take.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// The directory our binaries are in: the one this executable was built
/// into (`target/<profile>`). A test is built into `target/<profile>/deps`,
/// after cargo built the package's binaries; the benchmark sits beside them.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this executable");
    let mut dir = exe
        .parent()
        .expect("an executable is in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of our binary `name` (garivini, gv_inject, gv_consume).
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "no {} (cargo builds the binaries before it runs the integration tests: run them with cargo test)",
        path.display()
    );
    path
}

/// A command for `program` with the GARIVINI_* server variables of the
/// caller's environment removed, so that only what is passed counts.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("GARIVINI_DSN")
        .env_remove("GARIVINI_GEARMAND");
    cmd
}

/// A [`command`] for our binary `name`, logging at warn.
pub fn bin(name: &str) -> Command {
    let mut cmd = command(bin_path(name));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// `--dsn URL --gearmand ADDR` (a test's servers, as our binaries take
/// them), then `rest`.
pub fn with_servers<'a>(db: &'a TestDb, gearmand: &'a Gearmand, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--dsn",
        db.url.as_str(),
        "--gearmand",
        gearmand.addr.as_str(),
    ];
    args.extend(rest);
    args
}

/// A free loopback port (bound then released: free when asked).
pub fn free_port() -> u16 {
    try_free_port().expect("a free loopback port")
}

pub(crate) fn try_free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A child process, killed (SIGKILL) on drop.
pub struct Proc {
    /// What it is called in messages.
    pub name: String,
    child: Option<Child>,
    /// The files its stdout and stderr go to, if files.
    out: Option<PathBuf>,
    log: Option<PathBuf>,
}

impl Proc {
    /// Our binary `name` with `args`; stdout discarded, stderr the caller's.
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let child = bin(name)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Proc::adopt(name, child)
    }

    /// Like [`Proc::spawn`], with stdout and stderr appended to the file
    /// `log`.
    pub fn spawn_logged(name: &str, args: &[&str], log: &Path) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", log.display()));
        let child = bin(name)
            .args(args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Proc::with_files(name, child, None, Some(log))
    }

    /// Starts `cmd`, no stdin, its stdout written to the new file `out` and
    /// its stderr to the new file `log`.
    pub fn start_logged(
        name: &str,
        mut cmd: Command,
        out: &Path,
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let create = |p: &Path| {
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(create(out)?)
            .stderr(create(log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
        Ok(Proc::with_files(name, child, Some(out), Some(log)))
    }

    /// Takes charge of a child process of any program: killed on drop, so
    /// that a failing test leaves nothing running.
    pub fn adopt(name: &str, child: Child) -> Proc {
        Proc::with_files(name, child, None, None)
    }

    fn with_files(name: &str, child: Child, out: Option<&Path>, log: Option<&Path>) -> Proc {
        Proc {
            name: name.to_string(),
            child: Some(child),
            out: out.map(Path::to_path_buf),
            log: log.map(Path::to_path_buf),
        }
    }

    /// Whether it is still running (false once it has exited or was
    /// killed).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Err if it has exited: it should still be running.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.name);
        };
        if let Some(status) = child.try_wait()? {
            bail!("{} exited early ({status}); {}", self.name, self.tail());
        }
        Ok(())
    }

    /// Whether it has exited successfully; Err if it exited otherwise.
    pub fn exited(&mut self) -> anyhow::Result<bool> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.name);
        };
        match child.try_wait()? {
            None => Ok(false),
            Some(status) if status.success() => Ok(true),
            Some(status) => bail!("{} failed ({status}); {}", self.name, self.tail()),
        }
    }

    /// What it wrote to stdout, when that goes to a file.
    pub fn stdout(&self) -> String {
        read(self.out.as_deref())
    }

    /// What it wrote to stderr (its log), terminal colours removed, when
    /// that goes to a file.
    pub fn log(&self) -> String {
        strip_ansi(&read(self.log.as_deref()))
    }

    /// The last lines of its log, for an error message.
    pub fn tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = lines[lines.len().saturating_sub(3)..].join(" | ");
        match &self.log {
            Some(path) => format!("log {}: {last}", path.display()),
            None => "no log kept".to_string(),
        }
    }

    /// Its process id (0 once it is gone).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL, as a crash, and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit (panicking after it);
    /// returns its status.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = tokio::process::Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .await;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {limit:?} of SIGTERM", self.name);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read(path: Option<&Path>) -> String {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// `text` without terminal colour sequences (ESC [ ... letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs our binary `name` to completion (bounded by `limit`, panicking
/// after it) and returns (status, stdout, stderr).
pub async fn run_bin(name: &str, args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    let mut cmd = bin(name);
    cmd.args(args);
    run_command(cmd, limit).await
}

/// Every binary that connects to a database, with the arguments that
/// make it start a role or a command: to check that each takes (or
/// refuses) a DSN the same way.
pub const EVERY_BINARY: [(&str, &[&str]); 4] = [
    ("garivini", &["queuerunner"]),
    ("garivini", &["status"]),
    ("gv_inject", &["--funcname", "f", "--count", "1"]),
    ("gv_consume", &["--funcname", "f"]),
];

/// One run of [`run_every_binary`].
pub struct BinaryRun {
    /// The binary.
    pub bin: &'static str,
    /// Its arguments besides `--dsn` and `--gearmand`.
    pub args: &'static [&'static str],
    /// How it exited.
    pub status: ExitStatus,
    /// What it wrote to stdout.
    pub out: String,
    /// What it wrote to stderr.
    pub err: String,
}

/// Runs each of [`EVERY_BINARY`] with `--dsn dsn --gearmand 127.0.0.1:1`,
/// each bounded by `limit`.
pub async fn run_every_binary(dsn: &str, limit: Duration) -> Vec<BinaryRun> {
    let mut runs = Vec::new();
    for (bin, args) in EVERY_BINARY {
        let mut all = vec!["--dsn", dsn, "--gearmand", "127.0.0.1:1"];
        all.extend(args);
        let (status, out, err) = run_bin(bin, &all, limit).await;
        runs.push(BinaryRun {
            bin,
            args,
            status,
            out,
            err,
        });
    }
    runs
}

/// Runs `garivini --dsn DSN ARGS` to completion (bounded) and returns
/// (exit code, stdout, stderr), failing the test if it panicked.
pub async fn run_garivini(dsn: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--dsn", dsn];
    all.extend(args);
    let (status, out, err) = run_bin("garivini", &all, RUN_LIMIT).await;
    assert!(
        !err.contains("panicked"),
        "garivini {args:?} panicked: {err}"
    );
    (status.code().unwrap_or(-1), out, err)
}

/// Runs a prepared command to completion, no stdin (bounded by `limit`,
/// panicking after it, the command killed), and returns (status, stdout,
/// stderr).
pub async fn run_command(cmd: Command, limit: Duration) -> (ExitStatus, String, String) {
    let what = format!("{cmd:?}");
    let mut cmd = tokio::process::Command::from(cmd);
    // Both pipes are read while waiting, so that a chatty child
    // (RUST_LOG=trace) never blocks on a full pipe.
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `DBID JOBID` lines that `gv_consume --record` (or `gv_inject
/// --record`) wrote, in order (a job run twice appears twice).
pub fn recorded_runs(path: &Path) -> Vec<(u32, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut p = l.split_whitespace();
            let mut field = || p.next().expect("two fields").parse().expect("a number");
            (field() as u32, field())
        })
        .collect()
}

/// GET `path` of the HTTP server at `addr` (a role's `--metrics-addr`);
/// the status line and the body, `None` while nothing answers there.
pub fn http_get(addr: &str, path: &str) -> Option<(String, String)> {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// GET /metrics at `addr`, which must answer 200; every sample as
/// "name{labels}" → value, `None` while nothing answers there.
pub fn scrape_metrics(addr: &str) -> Option<std::collections::HashMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics")?;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect(),
    )
}

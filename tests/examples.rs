//! The examples in examples/ (a client and a worker in Python, Perl and
//! PHP for each mode) run as a user runs them, against this test's own
//! database and gearmand and our roles (`garivini workers`): a job stored
//! by the example client is run once by the example worker and its row is
//! gone. Needs scripts/services up and scripts/examples deps (Debian's Perl
//! and PHP modules, and PyPI's python3-gearman and pymysql in
//! target/examples-venv); a language whose interpreter or modules are
//! missing is skipped with a message.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::{command, run_command, wait_until, with_servers, Gearmand, Proc, TestDb};

/// How long a client may take, and how long a job may take to run.
const LIMIT: Duration = Duration::from_secs(30);
/// The function every example serves by default.
const FUNCNAME: &str = "resize";

#[derive(Clone, Copy)]
enum Lang {
    Python,
    Perl,
    Php,
}

impl Lang {
    fn dir(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Perl => "perl",
            Lang::Php => "php",
        }
    }

    fn ext(self) -> &'static str {
        match self {
            Lang::Python => "py",
            Lang::Perl => "pl",
            Lang::Php => "php",
        }
    }

    /// The interpreter, if installed: Python the one of scripts/examples'
    /// venv.
    fn interpreter(self) -> Option<PathBuf> {
        match self {
            Lang::Python => Some(workspace().join("target/examples-venv/bin/python3")),
            Lang::Perl => on_path("perl"),
            Lang::Php => on_path("php"),
        }
        .filter(|p| p.exists())
    }

    /// A program that exits 0 when the examples' modules load.
    fn modules_check(self) -> &'static [&'static str] {
        match self {
            Lang::Python => &["-c", "import python3_gearman, pymysql"],
            Lang::Perl => &[
                "-MGearman::Worker",
                "-MGearman::Client",
                "-MDBD::mysql",
                "-e1",
            ],
            Lang::Php => &[
                "-r",
                r#"exit(extension_loaded("gearman") && extension_loaded("pdo_mysql") ? 0 : 1);"#,
            ],
        }
    }

    /// The interpreter, or None (and a message) when it or the modules are
    /// missing.
    async fn ready(self) -> Option<PathBuf> {
        let skip = |why: &str| {
            eprintln!(
                "SKIPPED: the {} examples: {why}; run scripts/examples deps",
                self.dir()
            );
            None
        };
        let Some(interpreter) = self.interpreter() else {
            return skip("no interpreter");
        };
        let mut check = Command::new(&interpreter);
        check.args(self.modules_check());
        let (status, _, err) = run_command(check, LIMIT).await;
        if !status.success() {
            return skip(&format!("modules missing: {}", err.trim()));
        }
        Some(interpreter)
    }
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

/// `examples/<lang>/<name>.<ext> ARGS` with the test's servers in
/// GARIVINI_DSN and GARIVINI_GEARMAND, as a user's shell gives them.
fn example(
    interpreter: &Path,
    lang: Lang,
    name: &str,
    db: &TestDb,
    gearmand: &Gearmand,
    args: &[&str],
) -> Command {
    let script = workspace()
        .join("examples")
        .join(lang.dir())
        .join(format!("{name}.{}", lang.ext()));
    let mut cmd = command(interpreter);
    cmd.arg(script)
        .args(args)
        .env("GARIVINI_DSN", &db.url)
        .env("GARIVINI_GEARMAND", &gearmand.addr);
    cmd
}

/// The three roles in one process, as the README runs them.
async fn roles(db: &TestDb, gearmand: &Gearmand, dir: &Path) -> Proc {
    let args = with_servers(
        db,
        gearmand,
        &[
            "workers",
            "--roles",
            "queuerunner,injector,controller",
            "--batch-run-sleep",
            "0.2",
        ],
    );
    let mut cmd = testkit::bin("garivini");
    cmd.args(args);
    let roles = Proc::start_logged(
        "garivini workers",
        cmd,
        &dir.join("roles.out"),
        &dir.join("roles.log"),
    )
    .expect("garivini workers starts");
    gearmand.wait_for_worker("inject_jobs").await;
    gearmand.wait_for_worker("run_queued_job").await;
    roles
}

/// The example worker `name`, its stdout kept; returns once gearmand knows
/// it.
async fn worker(
    interpreter: &Path,
    lang: Lang,
    name: &str,
    db: &TestDb,
    gearmand: &Gearmand,
    dir: &Path,
) -> Proc {
    let cmd = example(interpreter, lang, name, db, gearmand, &[FUNCNAME]);
    let worker = Proc::start_logged(
        name,
        cmd,
        &dir.join(format!("{name}.out")),
        &dir.join(format!("{name}.log")),
    )
    .unwrap_or_else(|e| panic!("{name} starts: {e:#}"));
    gearmand.wait_for_worker(FUNCNAME).await;
    worker
}

/// Runs the example client `name` for one job of `arg`; the jobid of its
/// answer `{"jobid":N,"dbid":1}`.
async fn client(
    interpreter: &Path,
    lang: Lang,
    name: &str,
    db: &TestDb,
    gearmand: &Gearmand,
    arg: &str,
) -> u64 {
    let cmd = example(interpreter, lang, name, db, gearmand, &[FUNCNAME, arg]);
    let (status, out, err) = run_command(cmd, LIMIT).await;
    assert!(status.success(), "{name} failed ({status}): {err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{name} printed {out:?}, not the answer JSON: {e}"));
    assert_eq!(answer["dbid"], 1, "{out}");
    answer["jobid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} printed no jobid: {out}"))
}

/// The client stores one job, the worker runs it once (its line names
/// the job), and its row is gone.
async fn a_job_runs_once(lang: Lang, mode: &str) {
    let Some(interpreter) = lang.ready().await else {
        return;
    };
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let mut roles = roles(&db, &gearmand, dir.path()).await;
    let mut worker = worker(
        &interpreter,
        lang,
        &format!("{mode}_worker"),
        &db,
        &gearmand,
        dir.path(),
    )
    .await;
    let arg = format!("img-{}-{mode}.png", lang.dir());
    let jobid = client(
        &interpreter,
        lang,
        &format!("{mode}_client"),
        &db,
        &gearmand,
        &arg,
    )
    .await;

    let line = format!("{FUNCNAME} {arg} (job 1/{jobid})");
    let runs = |worker: &Proc| worker.stdout().lines().filter(|l| *l == line).count();
    wait_until(
        LIMIT,
        &format!("the {mode} worker to print {line:?} and the row to go"),
        || async { runs(&worker) > 0 && db.count("1").await == 0 },
    )
    .await;
    // A job completed wrongly (a Perl worker returning "") comes back at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = runs(&worker);
    assert_eq!(n, 1, "{line:?} ran {n} times, not once");
    assert_eq!(db.count("1").await, 0);
    worker.check_running().expect("the worker keeps running");
    roles.check_running().expect("the roles keep running");
}

#[tokio::test]
async fn python_worker_completes_an_inserted_job_in_throughput_mode() {
    a_job_runs_once(Lang::Python, "throughput").await;
}

#[tokio::test]
async fn python_worker_runs_a_job_injected_in_low_latency_mode() {
    a_job_runs_once(Lang::Python, "lowlatency").await;
}

#[tokio::test]
async fn perl_worker_completes_an_inserted_job_in_throughput_mode() {
    a_job_runs_once(Lang::Perl, "throughput").await;
}

#[tokio::test]
async fn perl_worker_runs_a_job_injected_in_low_latency_mode() {
    a_job_runs_once(Lang::Perl, "lowlatency").await;
}

#[tokio::test]
async fn php_worker_completes_an_inserted_job_in_throughput_mode() {
    a_job_runs_once(Lang::Php, "throughput").await;
}

#[tokio::test]
async fn php_worker_runs_a_job_injected_in_low_latency_mode() {
    a_job_runs_once(Lang::Php, "lowlatency").await;
}

/// The trap the Perl examples avoid (README, "The Perl trap"): a
/// Gearman::Worker function returning "" sends a WORK_COMPLETE without its
/// result field; gearmand drops the worker and hands the job out again,
/// and the Controller never hears of a completion.
#[tokio::test]
async fn a_perl_worker_that_returns_an_empty_string_runs_its_job_again_and_again() {
    let Some(perl) = Lang::Perl.ready().await else {
        return;
    };
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    let _roles = roles(&db, &gearmand, dir.path()).await;
    let trap = r#"use Gearman::Worker; $| = 1;
        my $w = Gearman::Worker->new(job_servers => [(split /,/, $ENV{GARIVINI_GEARMAND})[0]]);
        $w->register_function(resize => sub { print "ran\n"; return "" });
        $w->work while 1;"#;
    let mut cmd = command(&perl);
    cmd.args(["-e", trap])
        .env("GARIVINI_GEARMAND", &gearmand.addr);
    let worker = Proc::start_logged(
        "perl worker returning \"\"",
        cmd,
        &dir.path().join("trap.out"),
        &dir.path().join("trap.log"),
    )
    .expect("perl starts");
    gearmand.wait_for_worker(FUNCNAME).await;
    let jobid = client(
        &perl,
        Lang::Perl,
        "lowlatency_client",
        &db,
        &gearmand,
        "img-1.png",
    )
    .await;
    wait_until(LIMIT, "the job to run a third time", || async {
        worker.stdout().lines().count() >= 3
    })
    .await;
    assert_eq!(
        db.count(&format!("jobid = {jobid}")).await,
        1,
        "no completion reached the Controller, so the row stays"
    );
}

//! Security basics with the real binaries: the password of a DSN appears
//! in no output, even at RUST_LOG=trace, whether the database is
//! unreachable (a role then starts and waits), refuses the password or
//! takes it; and the binaries do their
//! work as a user other than root. (SQL with bound parameters only: tests
//! input.rs and low_latency.rs store quotes, SQL and NUL byte for byte.)
//! Needs scripts/services up: MariaDB, and gearmand for a private one.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use testkit::{run_command, with_servers, Gearmand, Proc, TestDb};

const LIMIT: Duration = Duration::from_secs(30);
const SECRET: &str = "s3cretPW";

/// A binary of ours with RUST_LOG=trace and no GARIVINI_* from outside.
fn traced(name: &str) -> Command {
    let mut cmd = testkit::bin(name);
    cmd.env("RUST_LOG", "trace");
    cmd
}

/// Runs `cmd`, which must fail, and checks that nothing it printed holds
/// the password; returns its stderr.
async fn fails_without_showing_the_password(mut cmd: Command) -> String {
    let what = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    cmd.env_remove("RUST_BACKTRACE");
    let (status, stdout, stderr) = run_command(cmd, LIMIT).await;
    assert!(!status.success(), "{what} succeeded: {stdout}");
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !text.contains(SECRET) && !text.contains("s3cret"),
            "{what}: the password is in its {stream}:\n{text}"
        );
    }
    stderr
}

/// Runs `cmd`, a role whose database is unreachable, until it has said so
/// (it starts all the same and waits for it), then stops it; checks that
/// nothing it printed holds the password; returns its stderr.
async fn serves_without_showing_the_password(cmd: Command) -> String {
    let what = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let (out, log) = (dir.path().join("out"), dir.path().join("log"));
    let mut proc = Proc::start_logged("garivini", cmd, &out, &log).unwrap();
    testkit::wait_until(
        LIMIT,
        "the role to say its database is unreachable",
        || async { proc.log().contains("database unreachable") },
    )
    .await;
    proc.check_running().unwrap();
    let status = proc.terminate(LIMIT).await;
    assert!(status.success(), "{what} exited {status}");
    let (stdout, stderr) = (proc.stdout(), proc.log());
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !text.contains(SECRET) && !text.contains("s3cret"),
            "{what}: the password is in its {stream}:\n{text}"
        );
    }
    stderr
}

#[tokio::test]
async fn a_dsn_password_is_never_printed_when_the_database_cannot_be_used() {
    let db = TestDb::new().await;
    let closed = format!(
        "mysql://root:{SECRET}@127.0.0.1:{}/garivini",
        testkit::free_port()
    );
    // root@127.0.0.1 has no password: one given is refused by the server.
    let refused = db
        .url
        .replacen("mysql://root@", &format!("mysql://root:{SECRET}@"), 1);
    assert!(refused.contains(SECRET), "{refused}");
    // A password with '/' in it makes the URL unparsable.
    let unparsable = format!("mysql://root:{SECRET}/x@127.0.0.1:3306/garivini");
    let gearmand = format!("127.0.0.1:{}", testkit::free_port());
    for dsn in [&closed, &refused, &unparsable] {
        let runs: Vec<(&str, Vec<&str>)> = vec![
            ("garivini", vec!["--gearmand", &gearmand, "queuerunner"]),
            (
                "garivini",
                vec!["--gearmand", &gearmand, "workers", "--roles", "injector"],
            ),
            ("gv_inject", vec!["--funcname", "f", "--count", "1"]),
            (
                "gv_consume",
                vec!["--gearmand", &gearmand, "--funcname", "f"],
            ),
        ];
        for (name, args) in runs {
            // A role starts with its database unreachable, and serves.
            let serves = name == "garivini" && dsn == &closed;
            let check = |cmd| async move {
                match serves {
                    true => serves_without_showing_the_password(cmd).await,
                    false => fails_without_showing_the_password(cmd).await,
                }
            };
            // The DSN as a flag and from the environment.
            let mut by_flag = traced(name);
            by_flag.args(["--dsn", dsn]).args(&args);
            let err = check(by_flag).await;
            assert!(err.contains("root:***@"), "{name} {args:?}: {err}");
            let mut by_env = traced(name);
            by_env.env("GARIVINI_DSN", dsn).args(&args);
            check(by_env).await;
        }
    }
}

/// A MariaDB user with a password, allowed on the test database only;
/// dropped on drop.
struct PasswordUser {
    name: String,
    url: String,
}

impl PasswordUser {
    async fn create(db: &TestDb) -> PasswordUser {
        let name = format!("gv_{:012x}", rand::random::<u64>() >> 16);
        let admin = mysql_async::Pool::new(testkit::server_url().as_str());
        let mut conn = admin.get_conn().await.expect("admin connection");
        conn.query_drop(format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{SECRET}'"))
            .await
            .expect("create user");
        conn.query_drop(format!("GRANT ALL ON {}.* TO '{name}'@'%'", db.name))
            .await
            .expect("grant");
        drop(conn);
        let _ = admin.disconnect().await;
        let url = db
            .url
            .replacen("mysql://root@", &format!("mysql://{name}:{SECRET}@"), 1);
        assert!(url.contains(SECRET), "{url}");
        PasswordUser { name, url }
    }
}

impl Drop for PasswordUser {
    fn drop(&mut self) {
        testkit::cleanup_sql(format!("DROP USER IF EXISTS '{}'@'%'", self.name));
    }
}

#[tokio::test]
async fn a_dsn_password_is_never_printed_while_the_binaries_work() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let user = PasswordUser::create(&db).await;
    let dir = tempfile::tempdir().unwrap();

    let mut inject = traced("gv_inject");
    inject.args(["--dsn", &user.url, "--funcname", "sec_f", "--count", "20"]);
    let (status, stdout, stderr) = run_command(inject, LIMIT).await;
    assert!(status.success(), "gv_inject: {stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stdout}{stderr}"
    );
    assert_eq!(db.count("1").await, 20);

    // Every role and a worker, run until the jobs are done, logging at
    // trace level to files.
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let mut roles = traced("garivini");
    roles
        .env("GARIVINI_DSN", &user.url)
        .args(["--gearmand", &gearmand.addr, "workers"])
        .args(["--roles", "queuerunner,injector,controller"])
        .stdout(log("garivini.out"))
        .stderr(log("garivini.err"));
    let mut roles = Proc::adopt("garivini", roles.spawn().unwrap());
    let mut consume = traced("gv_consume");
    consume
        .args(["--dsn", &user.url, "--gearmand", &gearmand.addr])
        .args(["--funcname", "sec_f"])
        .stdout(log("gv_consume.out"))
        .stderr(log("gv_consume.err"));
    let mut consume = Proc::adopt("gv_consume", consume.spawn().unwrap());
    db.wait_for_count(LIMIT, "the 20 jobs to be run and deleted", "1", 0)
        .await;
    consume.terminate(LIMIT).await;
    roles.terminate(LIMIT).await;

    for name in [
        "garivini.out",
        "garivini.err",
        "gv_consume.out",
        "gv_consume.err",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(!text.contains(SECRET), "the password is in {name}:\n{text}");
    }
    let err = std::fs::read_to_string(dir.path().join("garivini.err")).unwrap();
    assert!(
        err.contains("TRACE") || err.contains("DEBUG"),
        "no debug or trace lines were written:\n{err}"
    );
}

/// The effective user id of this process.
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .expect("Uid line in /proc/self/status")
}

/// The user id a running process has.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .expect("Uid line")
}

const NOBODY: u32 = 65534;

/// A command for one of our binaries that runs as nobody when we are root
/// (from a copy that nobody can read, in `dir`), or as ourselves otherwise.
fn unprivileged(name: &str, dir: &Path) -> Command {
    let path = testkit::bin_path(name);
    let mut cmd = if euid() == 0 {
        let copy = dir.join(name);
        if !copy.exists() {
            std::fs::copy(&path, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .arg(copy);
        cmd
    } else {
        Command::new(path)
    };
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir)
        .env("RUST_LOG", "warn")
        .current_dir(dir);
    cmd
}

#[tokio::test]
async fn the_binaries_do_their_work_as_a_user_other_than_root() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if euid() == 0 {
        // Dropping privileges must work, or this test would prove nothing.
        let mut id = Command::new("setpriv");
        id.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "id",
            "-u",
        ]);
        let (status, stdout, stderr) = run_command(id, LIMIT).await;
        assert!(
            status.success() && stdout.trim() == NOBODY.to_string(),
            "running as root, and cannot drop to uid {NOBODY} with setpriv \
             (util-linux): {stdout}{stderr}"
        );
    }

    let mut inject = unprivileged("gv_inject", dir.path());
    inject.args(["--dsn", &db.url, "--funcname", "nobody_f", "--count", "10"]);
    let (status, _, stderr) = run_command(inject, LIMIT).await;
    assert!(status.success(), "gv_inject as uid {NOBODY}: {stderr}");
    assert_eq!(db.count("1").await, 10);

    let spawn = |name: &str, args: &[&str]| {
        let mut cmd = unprivileged(name, dir.path());
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Proc::adopt(name, cmd.spawn().unwrap())
    };
    let mut runner = spawn("garivini", &with_servers(&db, &gearmand, &["queuerunner"]));
    let mut consume = spawn(
        "gv_consume",
        &with_servers(&db, &gearmand, &["--funcname", "nobody_f"]),
    );
    db.wait_for_count(LIMIT, "the 10 jobs to be run and deleted", "1", 0)
        .await;
    if euid() == 0 {
        // setpriv execs the binary: the process we started is the binary.
        assert_eq!(uid_of(runner.pid()), NOBODY);
        assert_eq!(uid_of(consume.pid()), NOBODY);
    }
    assert!(consume.terminate(LIMIT).await.success());
    assert!(runner.terminate(LIMIT).await.success());
}

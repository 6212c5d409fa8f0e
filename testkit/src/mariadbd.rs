//! A private MariaDB server per test: `mariadb-install-db` into a
//! temporary directory, `mariadbd` on a free loopback port with the
//! options the test gives, killed and its directory removed on drop.
//!
//! For what the shared server of `scripts/services up` must never see: a
//! TLS-only server (`require_secure_transport=ON`, certificates made by
//! the test: [`TestCerts`]), `SET GLOBAL`, a server killed and restarted.
//!
//! The fixture itself talks to the server as root over its unix socket
//! ([`MariaDb::sql`], [`MariaDb::query`]), which needs no TLS and no
//! password whatever the server's options; the roles under test connect
//! over TCP ([`MariaDb::url`], [`MariaDb::addr`]).
//!
//! ```no_run
//! # async fn demo() {
//! use garivini_testkit::{MariaDb, TestCerts, SCHEMA};
//! let certs = TestCerts::make().await;
//! let server = MariaDb::start(&certs.server_args()).await;
//! let db = server.database(SCHEMA).await;
//! let dsn = format!("{}/{db}?require_ssl=true&ssl_ca={}", server.url(), certs.ca.display());
//! # }
//! ```

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mysql_async::prelude::Queryable;

use crate::process::{command, run_command, try_free_port, Proc};

/// How long `mariadb-install-db` may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the server may take to answer after it is started (crash
/// recovery included, after [`MariaDb::kill`]).
const STARTUP: Duration = Duration::from_secs(60);
/// How long one statement of the fixture's, or a clean shutdown, may take.
const LIMIT: Duration = Duration::from_secs(30);
/// Ports tried before giving up: another process may take the free port
/// between the probe and the server's bind.
const PORT_ATTEMPTS: usize = 3;
/// How long `openssl` may take for one step.
const OPENSSL_LIMIT: Duration = Duration::from_secs(30);

/// Options of every private server, before the test's own (a later option
/// wins, so the test can override any of them). Small memory, since a
/// test may run several servers at once.
const BASE_OPTIONS: &[&str] = &[
    "--bind-address=127.0.0.1",
    "--skip-name-resolve",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--max-connections=200",
];

/// A private MariaDB server, killed (SIGKILL) and its directory removed on
/// drop.
pub struct MariaDb {
    /// Its TCP port, on 127.0.0.1.
    pub port: u16,
    /// The test's options, after [`BASE_OPTIONS`].
    args: Vec<String>,
    /// The data directory, socket and logs.
    dir: tempfile::TempDir,
    /// The user to run as (`--user=root` when we are root: mariadbd
    /// refuses root otherwise).
    as_root: bool,
    proc: Option<Proc>,
    /// How many times it was started: each start logs to a file of its own.
    starts: usize,
}

impl MariaDb {
    /// A server with `extra_args` (mariadbd options such as
    /// `--require-secure-transport=ON`) on a free port, answering when this
    /// returns; panics with what failed (and the tail of its log).
    pub async fn start<S: AsRef<str>>(extra_args: &[S]) -> MariaDb {
        MariaDb::launch(extra_args)
            .await
            .unwrap_or_else(|e| panic!("private MariaDB: {e:#}"))
    }

    /// Like [`MariaDb::start`], returning the error.
    pub async fn launch<S: AsRef<str>>(extra_args: &[S]) -> anyhow::Result<MariaDb> {
        let dir = tempfile::Builder::new().prefix("gv-mariadb").tempdir()?;
        let as_root = std::fs::metadata(dir.path())?.uid() == 0;
        install(dir.path(), as_root).await?;
        let mut server = MariaDb {
            port: 0,
            args: extra_args.iter().map(|a| a.as_ref().to_string()).collect(),
            dir,
            as_root,
            proc: None,
            starts: 0,
        };
        let mut attempt = 1;
        loop {
            server.port = try_free_port()?;
            match server.try_run().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt < PORT_ATTEMPTS && server.lost_its_port() => {
                    eprintln!("mariadbd did not start ({e:#}); trying another port");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `mysql://root@127.0.0.1:PORT`: root over TCP, no password, no
    /// database and no parameters (append `/DB?require_ssl=true&...`).
    pub fn url(&self) -> String {
        format!("mysql://root@{}", self.addr())
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysql.sock")
    }

    /// Root over the unix socket, as the fixture itself connects: no TLS
    /// needed (a socket is a secure transport to the server), no password.
    pub fn socket_url(&self) -> String {
        format!("mysql://root@localhost/?socket={}", self.socket().display())
    }

    /// The server's directory (its data directory is `data/` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `stmt` (one or more statements) as root over the socket;
    /// panics naming it when it fails or takes over 30 s.
    pub async fn sql(&self, stmt: &str) {
        self.try_sql(stmt)
            .await
            .unwrap_or_else(|e| panic!("private MariaDB on {}: {stmt}: {e:#}", self.addr()))
    }

    /// Like [`MariaDb::sql`], returning the error.
    pub async fn try_sql(&self, stmt: &str) -> anyhow::Result<()> {
        let run = async {
            let mut conn = self.socket_conn().await?;
            let done = conn.query_drop(stmt).await;
            let _ = conn.disconnect().await;
            done.map_err(anyhow::Error::from)
        };
        tokio::time::timeout(LIMIT, run)
            .await
            .with_context(|| format!("no answer within {LIMIT:?}"))?
    }

    /// The rows `stmt` selects, as root over the socket; panics naming it
    /// when it fails or takes over 30 s.
    pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        stmt: &str,
    ) -> Vec<T> {
        let run = async {
            let mut conn = self.socket_conn().await?;
            let rows = conn.query(stmt).await;
            let _ = conn.disconnect().await;
            rows.map_err(anyhow::Error::from)
        };
        tokio::time::timeout(LIMIT, run)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {LIMIT:?}"))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("private MariaDB on {}: {stmt}: {e:#}", self.addr()))
    }

    /// A new database `gv_<random hex>` holding the tables of `schema` (one
    /// or more statements: [`crate::SCHEMA`], say); its name. It goes with
    /// the server.
    pub async fn database(&self, schema: &str) -> String {
        let name = format!("gv_{:016x}", rand::random::<u64>());
        self.sql(&format!("CREATE DATABASE {name}; USE {name}; {schema}"))
            .await;
        name
    }

    /// SIGKILL, as a crash, and waits until it is gone. Its files stay:
    /// [`MariaDb::restart`] starts it again on them.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// A clean shutdown (SIGTERM), waiting for the exit (panicking after
    /// 30 s).
    pub async fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate(LIMIT).await;
        }
    }

    /// Starts it again (after [`MariaDb::kill`] or [`MariaDb::stop`]) on
    /// the same port, files and options; answering when this returns.
    pub async fn restart(&mut self) {
        self.try_restart()
            .await
            .unwrap_or_else(|e| panic!("private MariaDB: {e:#}"))
    }

    /// Like [`MariaDb::restart`], returning the error.
    pub async fn try_restart(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            bail!("mariadbd on {} is already running", self.addr());
        }
        self.try_run().await
    }

    /// Whether it is running (false once killed, stopped or exited).
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    /// The server's log (stderr) since its last start.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(Proc::log)
            .unwrap_or_else(|| self.log_of_last_start())
    }

    /// Whether its last start failed on a port another process took.
    fn lost_its_port(&self) -> bool {
        let log = self.log_of_last_start();
        log.contains("Address already in use") || log.contains("Bind on TCP/IP port")
    }

    fn log_of_last_start(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("mariadbd.{start}.log"))
    }

    async fn socket_conn(&self) -> anyhow::Result<mysql_async::Conn> {
        let opts = mysql_async::Opts::from_url(&self.socket_url())?;
        Ok(mysql_async::Conn::new(opts).await?)
    }

    /// Starts mariadbd and waits until it answers on its socket.
    async fn try_run(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let dir = self.dir.path();
        let mut cmd = command("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg(format!("--port={}", self.port))
            .args(BASE_OPTIONS);
        if self.as_root {
            cmd.arg("--user=root");
        }
        cmd.args(&self.args);
        let mut proc = Proc::start_logged(
            "mariadbd",
            cmd,
            &dir.join(format!("mariadbd.{}.out", self.starts)),
            &self.log_path(self.starts),
        )?;
        let deadline = Instant::now() + STARTUP;
        loop {
            proc.check_running()?;
            let probe = tokio::time::timeout(Duration::from_secs(2), async {
                let mut conn = self.socket_conn().await?;
                conn.query_drop("SELECT 1").await?;
                let _ = conn.disconnect().await;
                anyhow::Ok(())
            });
            if let Ok(Ok(())) = probe.await {
                self.proc = Some(proc);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "mariadbd on {} did not answer within {STARTUP:?}; {}",
                    self.addr(),
                    proc.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mariadb-install-db` into `dir/data` (temporary files in `dir/tmp`):
/// root@localhost and
/// root@127.0.0.1 without password, no test database.
async fn install(dir: &Path, as_root: bool) -> anyhow::Result<()> {
    // Its own temporary directory: two bootstraps at once in /tmp can
    // trip over each other's temporary tables.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut cmd = command("mariadb-install-db");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--innodb-log-file-size=16M");
    if as_root {
        cmd.arg("--user=root");
    }
    let mut cmd = tokio::process::Command::from(cmd);
    let out = cmd.stdin(Stdio::null()).kill_on_drop(true).output();
    let out = tokio::time::timeout(INSTALL_LIMIT, out)
        .await
        .with_context(|| format!("mariadb-install-db did not finish within {INSTALL_LIMIT:?}"))?
        .context("cannot run mariadb-install-db (apt-get install mariadb-server)")?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let text = text.lines().rev().take(5).collect::<Vec<_>>();
        bail!(
            "mariadb-install-db failed ({}): {}",
            out.status,
            text.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}

/// Certificates made for a test with `openssl` (ECDSA P-256, valid for
/// two days), in a temporary directory removed on drop:
///
/// - a CA ([`TestCerts::ca`]) and a second, unrelated one
///   ([`TestCerts::other_ca`]) that signed nothing the server shows;
/// - the server's certificate, signed by the CA, for `localhost` and
///   `127.0.0.1` only;
/// - a client certificate signed by the CA (CN `garivini-client`), for
///   users created `REQUIRE X509`.
pub struct TestCerts {
    /// The CA's certificate (PEM): what a client trusts (`ssl_ca`).
    pub ca: PathBuf,
    /// Another CA's certificate (PEM), which did not sign the server's.
    pub other_ca: PathBuf,
    /// The server's certificate (PEM).
    pub server_cert: PathBuf,
    /// The server's key (PEM, unencrypted).
    pub server_key: PathBuf,
    /// The client's certificate (PEM).
    pub client_cert: PathBuf,
    /// The client's key (PEM, unencrypted PKCS#8).
    pub client_key: PathBuf,
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes them; panics naming the `openssl` step that failed.
    pub async fn make() -> TestCerts {
        TestCerts::try_make()
            .await
            .unwrap_or_else(|e| panic!("test certificates: {e:#}"))
    }

    /// Like [`TestCerts::make`], returning the error.
    pub async fn try_make() -> anyhow::Result<TestCerts> {
        let dir = tempfile::Builder::new().prefix("gv-certs").tempdir()?;
        let p = |name: &str| dir.path().join(name);
        for (ca, cn) in [
            ("ca", "Garivini test CA"),
            ("other-ca", "Unrelated test CA"),
        ] {
            let (cert, key) = (p(&format!("{ca}.pem")), p(&format!("{ca}-key.pem")));
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                path(&key)?,
                "-out",
                path(&cert)?,
            ])
            .await?;
        }
        let leaf = |cn: &str, ext: &str| {
            (
                cn.to_string(),
                format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}\n"),
            )
        };
        for (name, (cn, ext)) in [
            (
                "server",
                leaf(
                    "localhost",
                    "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1",
                ),
            ),
            (
                "client",
                leaf("garivini-client", "extendedKeyUsage=clientAuth"),
            ),
        ] {
            let (key, csr, cert, extfile) = (
                p(&format!("{name}-key.pem")),
                p(&format!("{name}.csr")),
                p(&format!("{name}-cert.pem")),
                p(&format!("{name}.ext")),
            );
            std::fs::write(&extfile, ext)?;
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                path(&key)?,
                "-out",
                path(&csr)?,
            ])
            .await?;
            openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                path(&csr)?,
                "-CA",
                path(&p("ca.pem"))?,
                "-CAkey",
                path(&p("ca-key.pem"))?,
                "-CAcreateserial",
                "-extfile",
                path(&extfile)?,
                "-out",
                path(&cert)?,
            ])
            .await?;
        }
        Ok(TestCerts {
            ca: p("ca.pem"),
            other_ca: p("other-ca.pem"),
            server_cert: p("server-cert.pem"),
            server_key: p("server-key.pem"),
            client_cert: p("client-cert.pem"),
            client_key: p("client-key.pem"),
            dir,
        })
    }

    /// The mariadbd options of a TLS-only server with these certificates:
    /// `--ssl-ca`, `--ssl-cert`, `--ssl-key` and
    /// `--require-secure-transport=ON` (a TCP connection without TLS is
    /// refused; the socket stays open to the fixture).
    pub fn server_args(&self) -> Vec<String> {
        vec![
            format!("--ssl-ca={}", self.ca.display()),
            format!("--ssl-cert={}", self.server_cert.display()),
            format!("--ssl-key={}", self.server_key.display()),
            "--require-secure-transport=ON".to_string(),
        ]
    }

    /// Their directory (for a test's own files beside them).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("not a UTF-8 path: {}", p.display()))
}

/// Runs `openssl ARGS`, bounded; Err with its last lines when it fails.
async fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = command("openssl");
    cmd.args(args);
    let (status, _, err) = run_command(cmd, OPENSSL_LIMIT).await;
    if !status.success() {
        bail!("openssl {} failed ({status}): {}", args[0], err.trim());
    }
    Ok(())
}

//! TLS to the database, against a private TLS-only MariaDB per test
//! (certificates made by the test with openssl, `--ssl-ca/cert/key`,
//! `require_secure_transport=ON`): jobs run end to end over TLS, through
//! the binaries and through the library; what a missing, wrong or
//! mismatched certificate looks like (one line naming the database, never
//! a panic); client certificates (`REQUIRE X509`); the password read from
//! `password_file`, never shown. Needs mariadb-server, openssl and
//! gearmand (scripts/services up installs them); the shared MariaDB is
//! not used.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use garivini::config::parse_dsn_list;
use garivini::Store;
use testkit::{
    recorded_runs, run_bin, run_garivini, wait_until, within, Gearmand, InjectClient, MariaDb,
    Proc, Roles, TestCerts, Worker, SCHEMA,
};

const LIMIT: Duration = Duration::from_secs(30);
const DRAIN: Duration = Duration::from_secs(60);

/// A TLS-only server with the job table in database `db`.
struct TlsServer {
    certs: TestCerts,
    server: MariaDb,
    db: String,
}

impl TlsServer {
    /// Its server takes `extra` options besides the TLS-only ones.
    async fn start(extra: &[&str]) -> TlsServer {
        let certs = TestCerts::make().await;
        let mut args = certs.server_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let server = MariaDb::start(&args).await;
        let db = server.database(SCHEMA).await;
        TlsServer { certs, server, db }
    }

    /// `mysql://USER@HOST:PORT/DB?QUERY` (QUERY may be empty).
    fn dsn_as(&self, user: &str, host: &str, query: &str) -> String {
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!(
            "mysql://{user}@{host}:{}/{}{query}",
            self.server.port, self.db
        )
    }

    /// Root on 127.0.0.1 with `query`.
    fn dsn(&self, query: &str) -> String {
        self.dsn_as("root", "127.0.0.1", query)
    }

    /// `require_ssl=true&ssl_ca=` our CA: the TLS DSN's query.
    fn tls(&self) -> String {
        format!("require_ssl=true&ssl_ca={}", self.certs.ca.display())
    }

    /// Rows of the job table.
    async fn rows(&self) -> u64 {
        self.server
            .query::<u64>(&format!("SELECT COUNT(*) FROM {}.job", self.db))
            .await[0]
    }

    /// (dbid 1, jobid) of every row.
    async fn jobids(&self) -> HashSet<(u32, u64)> {
        self.server
            .query::<u64>(&format!("SELECT jobid FROM {}.job", self.db))
            .await
            .into_iter()
            .map(|id| (1, id))
            .collect()
    }

    /// The server's count of TLS handshakes it accepted.
    async fn tls_accepts(&self) -> u64 {
        let rows: Vec<(String, String)> = self
            .server
            .query("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")
            .await;
        rows[0].1.parse().expect("a number")
    }
}

/// `garivini status` on `dsn`: (exit code, stdout, stderr), not panicked.
async fn status(dsn: &str) -> (i32, String, String) {
    run_garivini(dsn, &["status"]).await
}

/// The store, connected, or the error's one line.
async fn connect(dsn: &str) -> Result<Store, String> {
    let dbs = parse_dsn_list(dsn).map_err(|e| e.to_string())?;
    within(LIMIT, "the store to connect", Store::connect(dbs))
        .await
        .map_err(|e| e.to_string())
}

/// Asserts that `err` is one line, and returns it trimmed.
fn one_line(what: &str, err: &str) -> String {
    let err = err.trim();
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    err.to_string()
}

#[tokio::test]
async fn jobs_run_end_to_end_over_tls_through_the_binaries() {
    let tls = TlsServer::start(&[]).await;
    let gearmand = Gearmand::start().await;
    let dsn = tls.dsn(&tls.tls());
    let before = tls.tls_accepts().await;

    let (st, out, err) = run_bin(
        "gv_inject",
        &[
            "--dsn",
            &dsn,
            "--mode",
            "throughput",
            "--funcname",
            "tls_work",
            "--count",
            "200",
        ],
        LIMIT,
    )
    .await;
    assert!(st.success(), "gv_inject over TLS: {out}\n{err}");
    let committed = tls.jobids().await;
    assert_eq!(committed.len(), 200);

    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("runs.log");
    let _runner = Proc::spawn(
        "garivini",
        &[
            "--dsn",
            &dsn,
            "--gearmand",
            &gearmand.addr,
            "queuerunner",
            "--batch-run-sleep",
            "0.2",
        ],
    );
    let _consumer = Proc::spawn(
        "gv_consume",
        &[
            "--dsn",
            &dsn,
            "--gearmand",
            &gearmand.addr,
            "--mode",
            "throughput",
            "--funcname",
            "tls_work",
            "--record",
            record.to_str().unwrap(),
        ],
    );
    wait_until(DRAIN, "the job table to drain over TLS", || async {
        tls.rows().await == 0
    })
    .await;
    let ran: HashSet<(u32, u64)> = recorded_runs(&record).into_iter().collect();
    assert_eq!(ran, committed, "every committed job ran");

    let (code, out, err) = status(&dsn).await;
    assert_eq!(code, 0, "garivini status over TLS: {out}\n{err}");
    // The server refuses TCP without TLS; that every one of them did TLS
    // is the server's own count.
    assert!(tls.tls_accepts().await > before, "no TLS handshake counted");
}

#[tokio::test]
async fn low_latency_mode_runs_over_tls_with_the_library() {
    let tls = TlsServer::start(&[]).await;
    let gearmand = Gearmand::start().await;
    let store = Arc::new(connect(&tls.dsn(&tls.tls())).await.expect("TLS store"));
    let _roles = Roles::low_latency(store, &gearmand).await;
    let worker = Worker::plain(&gearmand, "tls_fast").await;
    let client = InjectClient::new(&gearmand);
    let answer = client
        .inject(r#"{"funcname":"tls_fast","arg":"over tls"}"#)
        .await
        .expect("inject_jobs answers");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(answer["dbid"], 1, "{answer}");
    wait_until(LIMIT, "the Controller to delete the row", || async {
        worker.count() == 1 && tls.rows().await == 0
    })
    .await;
    assert_eq!(worker.jobs()[0].arg, b"over tls".to_vec());
}

#[tokio::test]
async fn a_dsn_without_tls_is_refused_by_the_server_with_one_line() {
    let tls = TlsServer::start(&[]).await;
    let dsn = tls.dsn("");
    let (code, out, err) = status(&dsn).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let line = one_line("garivini status", &err);
    assert!(line.contains(&format!("database 1 ({dsn})")), "{line}");
    // MariaDB says no more than this to a client without TLS under
    // require_secure_transport (MySQL names "insecure transport").
    assert!(
        line.contains("Access denied for user 'root'") || line.contains("insecure transport"),
        "{line}"
    );

    let err = connect(&dsn).await.err().expect("refused");
    assert!(
        err.contains("database 1") && err.contains("Access denied"),
        "{err}"
    );
    // The same user over TLS is welcome.
    connect(&tls.dsn(&tls.tls())).await.expect("over TLS");
}

#[tokio::test]
async fn a_server_certificate_of_another_ca_fails_with_one_line_naming_the_database() {
    let tls = TlsServer::start(&[]).await;
    let dsn = tls.dsn(&format!(
        "require_ssl=true&ssl_ca={}",
        tls.certs.other_ca.display()
    ));
    let (code, out, err) = status(&dsn).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let line = one_line("garivini status", &err);
    assert!(line.contains(&format!("database 1 ({dsn})")), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");

    // The public roots alone do not know our CA either.
    let dsn = tls.dsn("require_ssl=true");
    let err = connect(&dsn).await.err().expect("refused");
    assert!(
        err.contains("database 1") && err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn the_name_is_checked_and_ssl_server_name_names_another() {
    // The certificate names localhost and 127.0.0.1; the server also
    // listens on 127.0.0.2, a name it does not hold.
    let tls = TlsServer::start(&["--bind-address=127.0.0.1,127.0.0.2"]).await;
    for host in ["127.0.0.1", "localhost"] {
        let dsn = tls.dsn_as("root", host, &tls.tls());
        connect(&dsn)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    let other = tls.dsn_as("root", "127.0.0.2", &tls.tls());
    let (code, out, err) = status(&other).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let line = one_line("garivini status", &err);
    assert!(line.contains(&format!("database 1 ({other})")), "{line}");
    assert!(line.contains("not valid for name \"127.0.0.2\""), "{line}");

    // Checked against a name it holds instead: taken, by the library and
    // the binaries.
    let renamed = format!("{other}&ssl_server_name=localhost");
    connect(&renamed).await.expect("checked as localhost");
    let (code, out, err) = status(&renamed).await;
    assert_eq!(code, 0, "{out}\n{err}");
    // ... still against our CA only.
    let wrong_ca = tls.dsn_as(
        "root",
        "127.0.0.2",
        &format!(
            "require_ssl=true&ssl_server_name=localhost&ssl_ca={}",
            tls.certs.other_ca.display()
        ),
    );
    let err = connect(&wrong_ca).await.err().expect("refused");
    assert!(err.contains("UnknownIssuer"), "{err}");
    // ... and a name it does not hold is refused.
    let err = connect(&format!("{other}&ssl_server_name=db.example"))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("not valid for name \"db.example\""), "{err}");
}

#[tokio::test]
async fn verify_identity_false_is_refused_at_start_up_unless_nothing_is_checked() {
    let tls = TlsServer::start(&["--bind-address=127.0.0.1,127.0.0.2"]).await;
    let other = tls.dsn_as("root", "127.0.0.2", &tls.tls());
    let unchecked = format!("{other}&verify_identity=false");
    let (code, out, err) = status(&unchecked).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let line = one_line("garivini status", &err);
    assert!(
        line.contains("verify_identity=false is not honoured") && line.contains("ssl_server_name="),
        "{line}"
    );

    // verify_ca=false checks nothing at all (any certificate, any name):
    // the driver's, and it works.
    let nothing = tls.dsn_as(
        "root",
        "127.0.0.2",
        &format!(
            "require_ssl=true&verify_ca=false&verify_identity=false&ssl_ca={}",
            tls.certs.other_ca.display()
        ),
    );
    connect(&nothing).await.expect("nothing checked");

    // Why it is refused: the driver's own setting, given directly, still
    // checks the name (blackbeam/mysql_async#404). When this starts to
    // connect, the driver honours it: drop the refusal in src/tls.rs.
    let opts = mysql_async::Opts::from_url(&format!(
        "mysql://root@127.0.0.2:{}/{}?require_ssl=true&verify_identity=false",
        tls.server.port, tls.db
    ))
    .unwrap();
    let ssl = opts
        .ssl_opts()
        .unwrap()
        .clone()
        .with_root_certs(vec![tls.certs.ca.clone().into()]);
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(opts)
        .ssl_opts(ssl)
        .into();
    let direct = within(LIMIT, "a direct connection", mysql_async::Conn::new(opts)).await;
    match direct {
        Ok(_) => panic!(
            "the driver now honours verify_identity=false: remove its refusal in src/tls.rs \
             (and this check)"
        ),
        Err(e) => assert!(e.to_string().contains("not valid for name"), "{e}"),
    }
}

#[tokio::test]
async fn a_client_certificate_user_connects_with_ssl_cert_and_key_only() {
    let tls = TlsServer::start(&[]).await;
    tls.server
        .sql(&format!(
            "CREATE USER x509user@'%' REQUIRE X509; GRANT ALL ON {}.* TO x509user@'%'",
            tls.db
        ))
        .await;
    let with_cert = tls.dsn_as(
        "x509user",
        "127.0.0.1",
        &format!(
            "{}&ssl_cert={}&ssl_key={}",
            tls.tls(),
            tls.certs.client_cert.display(),
            tls.certs.client_key.display()
        ),
    );
    connect(&with_cert)
        .await
        .expect("the client certificate is taken");
    let (code, out, err) = status(&with_cert).await;
    assert_eq!(
        code, 0,
        "garivini status with a client certificate: {out}\n{err}"
    );

    let without = tls.dsn_as("x509user", "127.0.0.1", &tls.tls());
    let (code, out, err) = status(&without).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let line = one_line("garivini status", &err);
    assert!(line.contains(&format!("database 1 ({without})")), "{line}");
    assert!(line.contains("Access denied for user 'x509user'"), "{line}");

    // A key without its certificate is refused before any connection.
    let half = tls.dsn_as(
        "x509user",
        "127.0.0.1",
        &format!("{}&ssl_key={}", tls.tls(), tls.certs.client_key.display()),
    );
    let (code, _, err) = status(&half).await;
    assert_eq!(code, 1);
    let line = one_line("garivini status", &err);
    assert!(line.contains("ssl_key needs ssl_cert"), "{line}");
}

#[tokio::test]
async fn a_store_reconnects_over_tls_after_the_server_is_killed_and_restarted() {
    let mut tls = TlsServer::start(&[]).await;
    let store = Arc::new(connect(&tls.dsn(&tls.tls())).await.expect("TLS store"));
    let client = garivini::Client::new(store);
    let insert = |arg: &'static str| {
        let client = &client;
        async move {
            within(
                LIMIT,
                "an insert",
                client.insert_job(garivini::NewJob::new("tls_restart", arg)),
            )
            .await
        }
    };
    insert("before").await.expect("stored before the crash");
    tls.server.kill();
    assert!(
        insert("while down").await.is_err(),
        "stored with the server down"
    );
    tls.server.restart().await;
    wait_until(LIMIT, "an insert over TLS after the restart", || async {
        insert("after").await.is_ok()
    })
    .await;
    let args: Vec<Vec<u8>> = tls
        .server
        .query(&format!("SELECT arg FROM {}.job ORDER BY jobid", tls.db))
        .await;
    assert_eq!(args, [b"before".to_vec(), b"after".to_vec()]);
}

/// The password `pwuser` has, in a file of the test's.
const PASSWORD: &str = "S3cret-from-a-file";

#[tokio::test]
async fn the_password_comes_from_password_file_and_never_shows() {
    let tls = TlsServer::start(&[]).await;
    tls.server
        .sql(&format!(
            "CREATE USER pwuser@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON {}.* TO pwuser@'%'",
            tls.db
        ))
        .await;
    let file = tls.certs.dir().join("password");
    // As `echo` writes it: the newline is no part of the password.
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let dsn = tls.dsn_as(
        "pwuser",
        "127.0.0.1",
        &format!("{}&password_file={}", tls.tls(), file.display()),
    );
    connect(&dsn).await.expect("the password from the file");

    // The binaries take it from the environment too (nothing secret in
    // their argv either way), and even at trace level log no password.
    let gearmand = Gearmand::start().await;
    let mut cmd = testkit::bin("gv_inject");
    cmd.env("GARIVINI_DSN", &dsn)
        .env("GARIVINI_GEARMAND", &gearmand.addr)
        .env("RUST_LOG", "trace")
        .args(["--funcname", "pw_work", "--count", "3"]);
    let (st, out, err) = testkit::run_command(cmd, LIMIT).await;
    assert!(st.success(), "gv_inject with password_file: {out}\n{err}");
    assert!(!err.contains(PASSWORD) && !out.contains(PASSWORD), "{err}");
    assert_eq!(tls.rows().await, 3);

    // A wrong password in the file: refused, and neither password shown.
    let wrong = tls.certs.dir().join("wrong");
    std::fs::write(&wrong, "not-the-Passw0rd").unwrap();
    let bad = tls.dsn_as(
        "pwuser",
        "127.0.0.1",
        &format!("{}&password_file={}", tls.tls(), wrong.display()),
    );
    let (code, out, err) = status(&bad).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let line = one_line("garivini status", &err);
    assert!(line.contains("Access denied for user 'pwuser'"), "{line}");
    assert!(
        !line.contains("not-the-Passw0rd") && !line.contains(PASSWORD),
        "{line}"
    );

    // A file that is not there: its path, at start-up.
    let missing = tls.dsn_as(
        "pwuser",
        "127.0.0.1",
        &format!("{}&password_file=/nonexistent/pw", tls.tls()),
    );
    let (code, _, err) = status(&missing).await;
    assert_eq!(code, 1);
    let line = one_line("garivini status", &err);
    assert!(
        line.contains("password_file") && line.contains("/nonexistent/pw"),
        "{line}"
    );

    // A password in the URL is masked wherever the URL is shown.
    let inline = tls.dsn_as(&format!("pwuser:{PASSWORD}x"), "127.0.0.1", &tls.tls());
    let (code, _, err) = status(&inline).await;
    assert_eq!(code, 1);
    let line = one_line("garivini status", &err);
    assert!(
        !line.contains(PASSWORD) && line.contains("pwuser:***@"),
        "{line}"
    );
}

/// A key file whose contents are a secret, for the errors to not show.
fn write_secret_key(dir: &Path) -> String {
    let path = dir.join("bad-key.pem");
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn bad_tls_files_stop_every_binary_at_start_up_with_one_line() {
    let certs = TestCerts::make().await;
    let bad_key = write_secret_key(certs.dir());
    let base = "mysql://root@127.0.0.1:1/garivini?require_ssl=true";
    let cases = [
        (
            format!("{base}&ssl_ca=/nonexistent/ca.pem"),
            "ssl_ca \"/nonexistent/ca.pem\" cannot be read",
        ),
        (
            format!("{base}&ssl_ca={}", certs.client_key.display()),
            "holds no certificate",
        ),
        (
            format!("{base}&ssl_cert={}", certs.client_cert.display()),
            "ssl_cert needs ssl_key",
        ),
        (
            format!(
                "{base}&ssl_cert={}&ssl_key={bad_key}",
                certs.client_cert.display()
            ),
            "has a damaged key block",
        ),
        (
            format!(
                "mysql://root@127.0.0.1:1/garivini?ssl_ca={}",
                certs.ca.display()
            ),
            "ssl_ca needs require_ssl=true",
        ),
    ];
    for (dsn, expected) in &cases {
        for testkit::BinaryRun {
            bin,
            args,
            status,
            out,
            err,
        } in testkit::run_every_binary(dsn, LIMIT).await
        {
            assert_eq!(status.code(), Some(1), "{bin} {args:?} {dsn}: {out}\n{err}");
            let line = one_line(bin, &err);
            assert!(line.contains(expected), "{bin} {args:?}: {line}");
            assert!(!line.contains("c2VjcmV0"), "key contents shown: {line}");
        }
    }
}

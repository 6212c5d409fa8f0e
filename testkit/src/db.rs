//! Scratch databases on the real MariaDB, and the original Perl
//! Garivini's table and statements.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use garivini::config::{parse_dsn_list, DbConfig};
use garivini::Store;
use mysql_async::prelude::Queryable;

use crate::wait::{wait_until, within};

/// The job table, as the repository's schema.sql creates it.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// The original Perl Garivini's job table, written as its schema.sql
/// writes it (names quoted), with the `flag` and `failcount` columns of its
/// last version: `flag` nullable, no charset given (the server's default
/// applies), none of our indexes. Append a table option (` DEFAULT
/// CHARSET=latin1`) to stand for an older server's default.
pub const ORIGINAL_SCHEMA: &str = "CREATE TABLE `job` (
    `jobid`       BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    `funcname`    VARCHAR(200) NOT NULL,
    `arg`         MEDIUMBLOB,
    `uniqkey`     VARCHAR(255) NULL,
    `run_after`   INT UNSIGNED NOT NULL,
    `coalesce`    VARCHAR(255) NULL,
    `flag`        ENUM('controller','shim') DEFAULT 'shim',
    `failcount`   TINYINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (jobid),
    INDEX (run_after),
    UNIQUE (funcname, uniqkey)
) ENGINE=InnoDB";

/// The original Perl client's `insert_job` statement (see
/// [`TestDb::perl_insert_job`]).
pub const PERL_INSERT_JOB: &str = "INSERT IGNORE INTO job (funcname, run_after, uniqkey, coalesce, arg, flag) VALUES (?, ?, ?, ?, ?, ?)";

/// The original worker's `complete_job`.
pub const PERL_COMPLETE_JOB: &str = "DELETE FROM job WHERE jobid=?";

/// The statements that make a database count the jobs it commits: a
/// trigger copies each inserted jobid into a table `committed`, in the
/// same transaction (and, on a cluster, replicated with it).
pub(crate) const COUNT_COMMITS: [&str; 2] = [
    "CREATE TABLE committed (jobid BIGINT UNSIGNED PRIMARY KEY)",
    "CREATE TRIGGER job_committed AFTER INSERT ON job FOR EACH ROW \
     INSERT IGNORE INTO committed VALUES (NEW.jobid)",
];

/// The jobids [`COUNT_COMMITS`] counted.
pub(crate) const COMMITTED: &str = "SELECT jobid FROM committed";

/// `jobids` of database `dbid`.
pub(crate) fn with_dbid(dbid: u32, jobids: Vec<u64>) -> HashSet<(u32, u64)> {
    jobids.into_iter().map(|id| (dbid, id)).collect()
}

/// How long creating a database, and dropping it, may take.
const SETUP_LIMIT: Duration = Duration::from_secs(20);
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// The MariaDB server URL (no database): `GARIVINI_TEST_MYSQL`, or the one
/// `scripts/services up` wrote in `target/services/env`, or the default
/// local server.
pub fn server_url() -> String {
    if let Ok(url) = std::env::var("GARIVINI_TEST_MYSQL") {
        return url;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit lives in the workspace");
    if let Ok(text) = std::fs::read_to_string(workspace.join("target/services/env")) {
        for line in text.lines() {
            if let Some(url) = line.strip_prefix("export GARIVINI_TEST_MYSQL=") {
                return url.trim().to_string();
            }
        }
    }
    "mysql://root@127.0.0.1:3306".to_string()
}

/// A database of its own, dropped on drop.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// `mysql://…/name`.
    pub url: String,
    /// The server URL it was created on (no database).
    server: String,
    pool: mysql_async::Pool,
}

impl TestDb {
    /// A database with the job table of schema.sql on [`server_url`].
    pub async fn new() -> TestDb {
        TestDb::with_schema(SCHEMA).await
    }

    /// A database on [`server_url`] whose tables `schema` (one or more
    /// statements) creates: the original Perl Garivini's table, say.
    pub async fn with_schema(schema: &str) -> TestDb {
        let server = server_url();
        TestDb::create(&server, "gv_test", Some(schema))
            .await
            .unwrap_or_else(|e| {
                panic!("MariaDB at {server} is not usable ({e:#}); run scripts/services up")
            })
    }

    /// A database `PREFIX_<random hex>` on `server`, with the tables of
    /// `schema` when given.
    pub async fn create(server: &str, prefix: &str, schema: Option<&str>) -> anyhow::Result<Self> {
        let server = server.trim_end_matches('/').to_string();
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        let admin = mysql_async::Pool::new(
            mysql_async::Opts::from_url(&server)
                .with_context(|| format!("not a MySQL server URL: {server}"))?,
        );
        let setup = async {
            let mut conn = admin.get_conn().await?;
            conn.query_drop(format!("CREATE DATABASE {name}")).await?;
            if let Some(schema) = schema {
                conn.query_drop(format!("USE {name}")).await?;
                conn.query_drop(schema).await?;
            }
            mysql_async::Result::Ok(())
        };
        let created = tokio::time::timeout(SETUP_LIMIT, setup).await;
        let _ = admin.disconnect().await;
        let db = TestDb {
            url: format!("{server}/{name}"),
            pool: mysql_async::Pool::new(format!("{server}/{name}").as_str()),
            name,
            server,
        };
        // Dropped from here on: a database created before its tables failed
        // is not left behind.
        match created {
            Ok(Ok(())) => Ok(db),
            Ok(Err(e)) => Err(e).context(format!("cannot create database {}", db.name)),
            Err(_) => anyhow::bail!("creating database {} took over {SETUP_LIMIT:?}", db.name),
        }
    }

    /// This database as database `dbid` of a DSN list.
    pub fn config(&self, dbid: u32) -> DbConfig {
        DbConfig {
            dbid,
            url: self.url.clone(),
        }
    }

    /// A store on this one database (id 1).
    pub async fn store(&self) -> Arc<Store> {
        Arc::new(
            Store::connect(parse_dsn_list(&self.url).unwrap())
                .await
                .expect("store connects"),
        )
    }

    /// The rows `sql` selects.
    pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> Vec<T> {
        let mut conn = self.pool.get_conn().await.expect("test connection");
        conn.query(sql).await.expect(sql)
    }

    /// A connection of the test's own, for statements with parameters.
    pub async fn conn(&self) -> mysql_async::Conn {
        self.pool.get_conn().await.expect("test connection")
    }

    /// The original Perl client's `insert_job`, exactly: DBI binds
    /// `run_after` as the string 'UNIX_TIMESTAMP() + 0' (which MySQL turns
    /// into 0) and `flag` as NULL unless the caller passes one. Returns
    /// the row's id (0 when INSERT IGNORE stored nothing).
    pub async fn perl_insert_job(&self, funcname: &str, arg: &str, uniqkey: Option<&str>) -> u64 {
        let insert = async {
            let mut conn = self.conn().await;
            conn.exec_drop(
                PERL_INSERT_JOB,
                (
                    funcname,
                    "UNIX_TIMESTAMP() + 0",
                    uniqkey,
                    None::<String>,
                    arg,
                    None::<String>,
                ),
            )
            .await
            .expect("the original client's INSERT IGNORE");
            conn.last_insert_id().unwrap_or_default()
        };
        within(SETUP_LIMIT, "the original client's INSERT IGNORE", insert).await
    }

    /// Runs one statement.
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.pool.get_conn().await.expect("test connection");
        conn.query_drop(sql).await.expect(sql)
    }

    /// Rows of `job` that meet `condition` (SQL).
    pub async fn count(&self, condition: &str) -> u64 {
        self.query::<u64>(&format!("SELECT COUNT(*) FROM job WHERE {condition}"))
            .await[0]
    }

    /// Waits until `condition` holds for exactly `n` rows of `job`,
    /// polling; panics with `what` after `limit`.
    pub async fn wait_for_count(&self, limit: Duration, what: &str, condition: &str, n: u64) {
        wait_until(limit, what, || async { self.count(condition).await == n }).await;
    }

    /// (dbid 1, jobid) of every row: the jobs that were committed.
    pub async fn jobids(&self) -> HashSet<(u32, u64)> {
        with_dbid(1, self.query::<u64>("SELECT jobid FROM job").await)
    }

    /// From now on, counts the jobs this database commits, by the database
    /// itself: a trigger copies each inserted jobid into a table
    /// `committed` in the same transaction (see [`TestDb::committed`]).
    pub async fn count_commits(&self) {
        for statement in COUNT_COMMITS {
            self.exec(statement).await;
        }
    }

    /// (`dbid`, jobid) of every job committed since
    /// [`TestDb::count_commits`], completed or not.
    pub async fn committed(&self, dbid: u32) -> HashSet<(u32, u64)> {
        with_dbid(dbid, self.query::<u64>(COMMITTED).await)
    }

    /// The database clock, unix seconds.
    pub async fn now(&self) -> u32 {
        self.query::<u32>("SELECT UNIX_TIMESTAMP()").await[0]
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        cleanup_sql_on(
            &self.server,
            format!("DROP DATABASE IF EXISTS {}", self.name),
        );
    }
}

/// Runs one statement on [`server_url`], from a `Drop`, ignoring failure:
/// a fixture's cleanup.
pub fn cleanup_sql(sql: String) {
    cleanup_sql_on(&server_url(), sql);
}

/// Runs one statement on `server`, ignoring failure. Drop runs outside any
/// runtime we may block, so this uses a thread and a runtime of its own.
fn cleanup_sql_on(server: &str, sql: String) {
    let server = server.to_string();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Bounded like every wait: a cleanup stuck behind another session's
        // lock must not hang the suite (what it leaves is named).
        let what = sql.clone();
        // The timeout is made inside the runtime: made outside, its timer
        // finds no reactor and the thread panics before any cleanup.
        let done = rt.block_on(async {
            tokio::time::timeout(CLEANUP_LIMIT, async {
                let pool = mysql_async::Pool::new(server.as_str());
                if let Ok(mut conn) = pool.get_conn().await {
                    let _ = conn.query_drop(sql).await;
                }
                let _ = pool.disconnect().await;
            })
            .await
        });
        if done.is_err() {
            eprintln!("cleanup gave up after {CLEANUP_LIMIT:?}: {what}");
        }
    })
    .join();
}

//! A private 3-node MariaDB Galera cluster for one test (or one benchmark
//! phase), started by `scripts/galera` in a directory of its own under
//! `target/galera-tests`, so that several can run at once; every node is
//! SIGKILLed and the directory removed on drop (its logs kept when the
//! test failed). Scratch databases on it carry the job table of
//! [`CLUSTER_SCHEMA`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mysql_async::prelude::Queryable;

use crate::wait::within;

/// How long `scripts/galera up` may take (3 nodes, 2 of them by SST).
const UP_LIMIT: Duration = Duration::from_secs(150);
/// How long bringing one node back (IST or SST) may take.
const START_LIMIT: Duration = Duration::from_secs(120);
/// How long a kill, a status or a statement of the fixture may take.
const LIMIT: Duration = Duration::from_secs(30);
/// How long one attempt at one node may take before the next is tried.
const NODE_LIMIT: Duration = Duration::from_secs(10);
/// Nodes in a cluster.
pub const NODES: usize = 3;

/// The job table for a replicated cluster, as the repository's
/// schema-cluster.sql creates it: schema.sql's, with a unique key that is
/// NULL for keyless rows (no hot certification key), and the table in
/// which QueueRunners elect one claimer.
pub const CLUSTER_SCHEMA: &str = include_str!("../../schema-cluster.sql");

/// The workspace directory.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit lives in the workspace")
}

/// A private Galera cluster of [`NODES`] nodes on loopback, stopped
/// (SIGKILL) on drop.
pub struct Cluster {
    /// Its directory (`scripts/galera --dir`).
    pub dir: PathBuf,
    /// The nodes' server URLs (no database), node 1 first.
    pub nodes: Vec<String>,
    up: bool,
}

impl Cluster {
    /// A new cluster; panics (naming the logs) when it does not come up.
    pub async fn start() -> Cluster {
        Cluster::launch("test")
            .await
            .unwrap_or_else(|e| panic!("the Galera cluster did not start: {e:#}"))
    }

    /// A new cluster in `target/galera-tests/PREFIX-<random>`, all its
    /// nodes Synced when this returns.
    pub async fn launch(prefix: &str) -> anyhow::Result<Cluster> {
        let dir = workspace()
            .join("target/galera-tests")
            .join(format!("{prefix}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            up: true,
        };
        // Dropped on failure from here on: whatever started is stopped.
        let owner = std::process::id().to_string();
        cluster.script(&["--owner", &owner, "up"], UP_LIMIT).await?;
        let env = std::fs::read_to_string(cluster.dir.join("env"))
            .context("scripts/galera up wrote no env file")?;
        for n in 1..=NODES {
            let key = format!("export GARIVINI_GALERA_NODE{n}=");
            let url = env
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .with_context(|| format!("no node {n} in {}/env", cluster.dir.display()))?;
            cluster.nodes.push(url.trim().to_string());
        }
        Ok(cluster)
    }

    /// Runs `scripts/galera --dir DIR ARGS`, bounded; Err with its output
    /// when it fails.
    async fn script(&self, args: &[&str], limit: Duration) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new(workspace().join("scripts/galera"));
        cmd.arg("--dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!("scripts/galera {}", args.join(" "));
        let child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| anyhow::anyhow!("{what} did not finish within {limit:?}"))??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Node `n`'s server URL (no database); nodes are 1..=3.
    pub fn node(&self, n: usize) -> &str {
        assert!((1..=NODES).contains(&n), "no node {n}");
        &self.nodes[n - 1]
    }

    /// SIGKILLs node `n` (a crash) and waits until it is gone.
    pub async fn kill(&self, n: usize) {
        self.node(n);
        self.script(&["kill", &n.to_string()], LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Brings node `n` back and waits until it is Synced with the others
    /// (it rejoins by IST, or SST).
    pub async fn restart(&self, n: usize) {
        self.node(n);
        self.script(&["start", &n.to_string()], START_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// One line per node: pid, port, wsrep state, cluster size.
    pub async fn status(&self) -> String {
        self.script(&["status"], LIMIT)
            .await
            .unwrap_or_else(|e| format!("status failed: {e:#}"))
    }

    /// The cluster size node `n` reports (`wsrep_cluster_size`), None when
    /// it does not answer.
    pub async fn size_seen_by(&self, n: usize) -> Option<u64> {
        let row: Option<(String, u64)> = tokio::time::timeout(NODE_LIMIT, async {
            let mut conn = connect(self.node(n)).await.ok()?;
            let row = conn
                .query_first("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'")
                .await
                .ok()?;
            let _ = conn.disconnect().await;
            row
        })
        .await
        .ok()
        .flatten();
        row.map(|(_, size)| size)
    }

    /// Waits until every node of `nodes` reports a cluster of `size`
    /// (after a kill: the dead node evicted; after a restart: it is back).
    pub async fn wait_for_size(&self, nodes: &[usize], size: u64, limit: Duration) {
        let start = Instant::now();
        loop {
            let mut all = true;
            for &n in nodes {
                all &= self.size_seen_by(n).await == Some(size);
            }
            if all {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "nodes {nodes:?} did not see a cluster of {size} within {limit:?}:\n{}",
                self.status().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A scratch database with the job table of [`CLUSTER_SCHEMA`],
    /// created through the first node that answers.
    pub async fn database(&self) -> ClusterDb {
        self.database_with(CLUSTER_SCHEMA).await
    }

    /// A scratch database whose tables `schema` creates.
    pub async fn database_with(&self, schema: &str) -> ClusterDb {
        self.try_database_with("gv_cluster", schema)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.status_now()))
    }

    /// A scratch database `PREFIX_<random hex>` whose tables `schema`
    /// creates.
    pub async fn try_database_with(&self, prefix: &str, schema: &str) -> anyhow::Result<ClusterDb> {
        let db = ClusterDb {
            name: format!("{prefix}_{:016x}", rand::random::<u64>()),
            nodes: self.nodes.clone(),
        };
        let name = db.name.clone();
        db.on_any_node(move |mut conn| {
            let (name, schema) = (name.clone(), schema.to_string());
            async move {
                conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {name}"))
                    .await?;
                conn.query_drop(format!("USE {name}")).await?;
                conn.query_drop(schema).await?;
                Ok(())
            }
        })
        .await
        .with_context(|| format!("cannot create database {}", db.name))?;
        Ok(db)
    }

    /// The status, for a panic message outside a runtime.
    fn status_now(&self) -> String {
        std::process::Command::new(workspace().join("scripts/galera"))
            .arg("--dir")
            .arg(&self.dir)
            .arg("status")
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Stops every node (SIGKILL), now; the drop does it too.
    pub fn stop(&mut self) {
        if !std::mem::take(&mut self.up) {
            return;
        }
        let out = std::process::Command::new(workspace().join("scripts/galera"))
            .arg("--dir")
            .arg(&self.dir)
            .args(["down", "--kill"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "scripts/galera --dir {} down --kill failed ({}): {}",
                self.dir.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run scripts/galera down: {e}"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // Keep the logs of a failed test, not the data.
            for n in 1..=NODES {
                let _ = std::fs::remove_dir_all(self.dir.join(format!("node{n}/data")));
            }
            eprintln!("the Galera cluster's logs are in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A connection to `url`, whose reads wait until the node has applied
/// every write the cluster committed before (`wsrep_sync_wait`), so that a
/// check sees what a client was told.
async fn connect(url: &str) -> mysql_async::Result<mysql_async::Conn> {
    let opts = mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(url)?)
        .init(vec!["SET SESSION wsrep_sync_wait = 15"]);
    mysql_async::Conn::new(opts).await
}

/// A scratch database on a [`Cluster`] (not dropped: it goes with the
/// cluster). Every check runs on the first node that answers.
pub struct ClusterDb {
    /// Its name.
    pub name: String,
    nodes: Vec<String>,
}

impl ClusterDb {
    /// Node `n`'s URL of this database, with `params` (`a=1&b=2`, or "").
    pub fn url(&self, n: usize, params: &str) -> String {
        let url = format!("{}/{}", self.nodes[n - 1].trim_end_matches('/'), self.name);
        match params {
            "" => url,
            p => format!("{url}?{p}"),
        }
    }

    /// One database on the nodes `order`, in that failover order
    /// (`URL|URL|URL`, as in `GARIVINI_DSN`), each URL with `params`.
    pub fn dsn(&self, order: &[usize], params: &str) -> String {
        order
            .iter()
            .map(|&n| self.url(n, params))
            .collect::<Vec<_>>()
            .join("|")
    }

    /// Runs `f` on a connection to this database on the first node that
    /// answers (each node bounded), Err when none did.
    async fn on_any_node<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        F: Fn(mysql_async::Conn) -> Fut,
        Fut: std::future::Future<Output = mysql_async::Result<T>>,
    {
        let mut errors = Vec::new();
        for node in &self.nodes {
            let attempt = async {
                let conn = connect(node).await?;
                f(conn).await
            };
            match tokio::time::timeout(NODE_LIMIT, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => errors.push(format!("{node}: {e}")),
                Err(_) => errors.push(format!("{node}: no answer within {NODE_LIMIT:?}")),
            }
        }
        bail!("no node answered: {}", errors.join("; "))
    }

    /// The rows `sql` selects, read on a node that answers.
    pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> Vec<T> {
        let (name, sql) = (self.name.clone(), sql.to_string());
        within(
            LIMIT,
            &sql,
            self.on_any_node(|mut conn| {
                let (name, sql) = (name.clone(), sql.clone());
                async move {
                    conn.query_drop(format!("USE {name}")).await?;
                    conn.query(sql).await
                }
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs one statement on a node that answers.
    pub async fn exec(&self, sql: &str) {
        let _: Vec<u64> = self.query(sql).await;
    }

    /// Rows of `job` that meet `condition` (SQL).
    pub async fn count(&self, condition: &str) -> u64 {
        self.query::<u64>(&format!("SELECT COUNT(*) FROM job WHERE {condition}"))
            .await[0]
    }

    /// From now on, counts the jobs this database commits, by the database
    /// itself: a trigger copies each inserted jobid into a table
    /// `committed` in the same transaction (replicated with it).
    pub async fn count_commits(&self) {
        for statement in crate::db::COUNT_COMMITS {
            self.exec(statement).await;
        }
    }

    /// (`dbid`, jobid) of every job committed since
    /// [`ClusterDb::count_commits`], completed or not.
    pub async fn committed(&self, dbid: u32) -> std::collections::HashSet<(u32, u64)> {
        crate::db::with_dbid(dbid, self.query::<u64>(crate::db::COMMITTED).await)
    }
}

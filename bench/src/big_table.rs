//! Scenario 5 (opt-in, issue #17 "cost as the table grows"): the
//! QueueRunner's drain rate, insert->start latency at the offered rate and
//! `garivini status` time, on an empty table and, in the same run, on one
//! filled first with `--big-table-rows` rows of other functions.
//!
//! The filling rows (INSERT … SELECT from MariaDB's SEQUENCE engine, a
//! million per statement, on the server): 45 % dead (run_after =
//! 2147483647, failcount 3), 45 % scheduled 30 days ahead, 10 % spread
//! over 1,000 functions `gv_bigbench_bg0..999` and due BG_DUE_AHEAD after
//! the fill started. Those last ones are not due yet during the
//! measurement on purpose: the QueueRunner claims every due row whatever
//! its function, so truly due rows would be drained with the measured
//! ones, and paused ones (garivini_paused) are claimed and pushed back a
//! second at a time, which measures the pause, not the table. Two hours
//! ahead, they sit in the claim index (priority, run_after) right after
//! the due range, as a due backlog of other functions does, without
//! being in it. The measured jobs are the scenario's own function,
//! inserted by gv_inject as in scenario 3. Before measuring, each phase
//! waits (at most SETTLE_MAX) for the server to be near idle: InnoDB
//! goes on writing the fill's index pages for a while.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use mysql_async::prelude::Queryable as _;

use crate::gv_inject::{parse_rate, Inject, Mode};
use crate::processes::{secs, Bench, Env, POLL};
use crate::scenarios::Metrics;

/// The function of scenario 5's measured jobs.
pub const BIG_FUNC: &str = "gv_bench_big";
/// Background functions of the filling rows.
pub const BG_FUNCS: u64 = 1000;
/// Rows per filling statement.
const FILL_CHUNK: u64 = 1_000_000;
/// How far ahead of the fill's start the "due" background rows are.
pub const BG_DUE_AHEAD: u64 = 7200;
/// How far ahead the scheduled rows are.
const SCHEDULED_AHEAD: u64 = 30 * 86400;
/// run_after of a dead row.
const NEVER: u64 = 2_147_483_647;
/// The server counts as settled below this CPU rate (ms/s)...
const SETTLED_MS_PER_S: f64 = 30.0;
/// ... and is waited for this long at most.
const SETTLE_MAX: Duration = Duration::from_secs(240);

impl Bench {
    /// One phase of scenario 5: on an empty table (`full` false), or on
    /// one filled with `--big-table-rows` rows first.
    pub async fn big_table(
        &self,
        env: &mut Env,
        full: bool,
        m: &mut Metrics,
    ) -> anyhow::Result<()> {
        let rows = if full { self.opts.big_table_rows } else { 0 };
        if rows > 0 {
            let t = Instant::now();
            self.fill(env.db(), rows).await?;
            m.push(("fill_seconds", t.elapsed().as_secs_f64()));
        }
        m.push(("table_rows", rows as f64));
        self.settle(m).await;

        // One gv_consume for both measurements: gv_inject empties the
        // latency file when it starts, and gv_consume appends to it.
        let file = self.dir.join(format!("{}-latency", env.tag));
        self.start_consume(env, Mode::Throughput, BIG_FUNC, Some(&file))?;
        self.wait_workers(env, BIG_FUNC, 1).await?;

        // Drain: `--jobs` jobs inserted with nothing running, then the
        // time the QueueRunner(s) take from their start until none is
        // left.
        let n = self.opts.jobs;
        let args = Inject::bulk(&self.opts, Mode::Throughput, BIG_FUNC)
            .args(&self.opts, self.servers_args(env));
        let mut inject = self.spawn_inject(env, args)?;
        self.wait_exit(env, &mut inject, self.opts.timeout())
            .await?;
        m.push((
            "insert_jobs_per_s",
            parse_rate(&inject.stdout(), Mode::Throughput.verb(), n)?,
        ));
        let queued = self.count_func(env.db(), BIG_FUNC).await?;
        if queued != n {
            bail!("{queued} rows of {BIG_FUNC} after inserting {n}");
        }
        let meter = self.meter(env, n, true, false).await;
        let start = Instant::now();
        self.start_queuerunners(env)?;
        self.wait_func_gone(env, BIG_FUNC).await?;
        let drain = start.elapsed();
        meter.finish(&env.pids(), Vec::new(), m);
        m.extend([
            ("drain_jobs_per_s", n as f64 / drain.as_secs_f64()),
            ("drain_seconds", drain.as_secs_f64()),
        ]);

        // Latency at the offered rate, the QueueRunner(s) running.
        self.wait_queuerunners(env).await?;
        self.latency(env, Mode::Throughput, BIG_FUNC, &file, m, false)
            .await?;

        // `garivini status` on the table (the database only).
        let mut times = Vec::new();
        for _ in 0..self.opts.status_runs.max(1) {
            times.push(self.status_seconds(env).await?);
        }
        times.sort_by(f64::total_cmp);
        m.extend([
            ("status_s", times[times.len() / 2]),
            ("status_min_s", times[0]),
            ("status_max_s", times[times.len() - 1]),
        ]);
        if rows > 0 {
            let left = self.count_func(env.db(), BIG_FUNC).await?;
            if left != 0 {
                bail!("{left} rows of {BIG_FUNC} left after the latency measurement");
            }
        }
        Ok(())
    }

    /// Waits (bounded) until the MariaDB server, when it runs here, is
    /// near idle: after a fill, InnoDB goes on merging and flushing the
    /// new index pages for minutes, which a table that grew over months
    /// does not carry. The empty table's phase waits too, alike.
    async fn settle(&self, m: &mut Metrics) {
        let Some(pid) = self.mariadbd else { return };
        let start = Instant::now();
        let mut busy = None;
        while start.elapsed() < SETTLE_MAX {
            busy = crate::cpu::busy_ms_per_s(pid, Duration::from_secs(2)).await;
            match busy {
                Some(b) if b < SETTLED_MS_PER_S => break,
                Some(b) => self.log(format!(
                    "waiting for MariaDB to settle: {b:.0} ms/s busy after {:.0} s",
                    start.elapsed().as_secs_f64()
                )),
                None => break,
            }
        }
        m.push(("settle_seconds", start.elapsed().as_secs_f64()));
        if let Some(b) = busy {
            m.push(("settled_mariadbd_ms_per_s", b));
        }
    }

    /// Fills `db`.job with `rows` rows of the background functions, a
    /// million per statement, printing progress.
    async fn fill(&self, db: &str, rows: u64) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let now: u64 = conn
            .query_first("SELECT UNIX_TIMESTAMP()")
            .await?
            .ok_or_else(|| anyhow!("no UNIX_TIMESTAMP()"))?;
        let (due, later) = (now + BG_DUE_AHEAD, now + SCHEDULED_AHEAD);
        self.log(format!(
            "filling {db}.job with {rows} rows: 10 % due at now+{BG_DUE_AHEAD} s over {BG_FUNCS} functions, \
             45 % dead, 45 % at now+30 days"
        ));
        let start = Instant::now();
        let mut done = 0;
        while done < rows {
            let k = FILL_CHUNK.min(rows - done);
            // seq 0..k-1; the function from the row's number over the
            // whole fill, the state from its last digit.
            let sql = format!(
                "INSERT INTO `{db}`.job (funcname, arg, run_after, failcount) \
                 SELECT CONCAT('gv_bigbench_bg', (seq + {done}) % {BG_FUNCS}), 'x', \
                 CASE WHEN seq % 10 = 0 THEN {due} WHEN seq % 10 < 5 THEN {NEVER} ELSE {later} END, \
                 CASE WHEN seq % 10 BETWEEN 1 AND 4 THEN 3 ELSE 0 END \
                 FROM `{db}`.seq_0_to_{}",
                k - 1
            );
            conn.query_drop(sql)
                .await
                .context("filling the table (needs MariaDB's SEQUENCE engine)")?;
            done += k;
            let s = start.elapsed().as_secs_f64();
            self.log(format!(
                "filled {done}/{rows} rows in {s:.0} s ({:.0} rows/s)",
                done as f64 / s.max(1e-9)
            ));
        }
        conn.query_drop(format!("ANALYZE TABLE `{db}`.job")).await?;
        Ok(())
    }

    /// Rows of `func` (over its index: cheap on a big table).
    async fn count_func(&self, db: &str, func: &str) -> anyhow::Result<u64> {
        let mut conn = self.conn().await?;
        let n: Option<u64> = conn
            .exec_first(
                format!("SELECT COUNT(*) FROM `{db}`.job WHERE funcname = ?"),
                (func,),
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Waits until no row of `func` is left.
    async fn wait_func_gone(&self, env: &mut Env, func: &str) -> anyhow::Result<()> {
        let limit = self.opts.timeout();
        let deadline = Instant::now() + limit;
        let sql = format!(
            "SELECT 1 FROM `{}`.job WHERE funcname = ? LIMIT 1",
            env.db()
        );
        loop {
            env.check()?;
            let any: Option<u8> = self.conn().await?.exec_first(sql.as_str(), (func,)).await?;
            if any.is_none() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let n = self.count_func(env.db(), func).await?;
                bail!(
                    "timeout: {n} rows of {func} still in the table after {}",
                    secs(limit)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Seconds one `garivini status --dsn DB` takes (it must succeed).
    async fn status_seconds(&self, env: &Env) -> anyhow::Result<f64> {
        let mut cmd = std::process::Command::new(self.garivini_bin());
        cmd.args(["status", "--dsn", env.dsn()])
            .env_remove("GARIVINI_GEARMAND")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null());
        let limit = self.opts.timeout();
        let t = Instant::now();
        let out = tokio::time::timeout(limit, tokio::task::spawn_blocking(move || cmd.output()))
            .await
            .map_err(|_| anyhow!("garivini status took over {}", secs(limit)))???;
        let elapsed = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "garivini status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    }
}

//! `gv_claim_bench`: the QueueRunner's claim cost per job on schema.sql's
//! table, on one without the `priority` column, and on the table before
//! the job model (no priority, no history columns), in one run: the
//! tables filled alike, then claimed in batches in turn (each round starting
//! at the next table), so that all see the same machine at the same time.
//!
//!   cargo run --release -p garivini-bench --bin gv_claim_bench -- [ROWS] [BATCH] [ROUNDS] [held[=N]]
//!
//! With `held` (issues #24 and #25), it compares instead, in one run and
//! on schema.sql's table, the claim of ROWS rows of function `work` on an
//! otherwise empty table against the same behind a held backlog: N
//! (default 100,000) due rows of function `paused`, due a day before the
//! work rows (the head of the claim index), claimed with `paused` held.
//! It fails if any claim took or touched a paused row (each must keep its
//! run_after and attempted_at = 0), or did not read function by function.
//! With `GV_CLAIM_BENCH_ANALYZE=1`, both tables are analyzed (`ANALYZE
//! TABLE job`) once filled, as the server's background statistics would
//! be a while later; without it, the optimizer plans with the statistics
//! of the nearly empty tables (it then reads the whole `funcname_run_after`
//! for the claim's list of functions instead of one dive per function).
//!
//! Its scratch databases are named `gv_claim_bench_<hex>`, or after
//! `GV_CLAIM_BENCH_DB_PREFIX` when set.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use garivini::store::{Claim, Holds};
use garivini::{NewJob, Store};
use mysql_async::prelude::Queryable;
use testkit::{TestDb, SCHEMA};

/// The held backlog's rows when `held` gives no number.
const DEFAULT_HELD: usize = 100_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, what: &str, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse()
                .with_context(|| format!("{what} must be a number, not {a:?}"))
        })
    };
    let rows = number(0, "ROWS", 200_000)?;
    let batch = number(1, "BATCH", 1000)?;
    let rounds = number(2, "ROUNDS", 150)?;
    let held = match args.get(3).map(String::as_str) {
        None => None,
        Some("held") => Some(DEFAULT_HELD),
        Some(a) => Some(
            a.strip_prefix("held=")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("the fourth argument is held or held=N, not {a:?}"))?,
        ),
    };
    let server = testkit::server_url();
    // The scratch databases' name prefix, for a run that must name its own.
    let prefix = std::env::var("GV_CLAIM_BENCH_DB_PREFIX").unwrap_or("gv_claim_bench".into());
    if let Some(held) = held {
        return held_backlog(&server, &prefix, [rows, batch, rounds], held).await;
    }
    // The table as it was before priorities: no priority column, and the
    // original's INDEX (run_after) as the claim's index.
    let without = SCHEMA
        .replace("    priority   TINYINT UNSIGNED NOT NULL DEFAULT 1,\n", "")
        .replace(
            ",\n    INDEX priority_run_after (priority, run_after)",
            ",\n    INDEX run_after (run_after)",
        );
    anyhow::ensure!(
        without != SCHEMA && !without.contains("INDEX priority_run_after"),
        "schema.sql's priority column and index are not where this benchmark expects them"
    );
    let before = [
        "    created_at   TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP,\n",
        "    attempted_at INT UNSIGNED   NOT NULL DEFAULT 0,\n",
        "    failed_at    INT UNSIGNED   NOT NULL DEFAULT 0,\n",
        "    last_error   VARCHAR(1000)  NULL DEFAULT NULL,\n",
    ]
    .iter()
    .fold(without.clone(), |t, column| t.replace(column, ""));
    anyhow::ensure!(
        !before.contains("attempted_at INT") && !before.contains("last_error   VARCHAR"),
        "schema.sql's history columns are not where this benchmark expects them"
    );
    let mut tables = Vec::new();
    for (name, schema) in [
        ("schema.sql", SCHEMA),
        ("no priority", without.as_str()),
        ("before #14", before.as_str()),
    ] {
        let db = TestDb::create(&server, &prefix, Some(schema)).await?;
        let store = db.store().await;
        tables.push((name, db, store, Duration::ZERO, 0usize));
    }
    // Filled a batch to each in turn: a table filled before the others
    // was measured up to 12 % slower than an identical one filled last.
    let jobs: Vec<NewJob> = (0..1000)
        .map(|i| NewJob::new(format!("f{}", i % 20), "x".repeat(100)))
        .collect();
    for _ in 0..rows / 1000 {
        for (_, _, store, _, _) in &tables {
            store.insert(&jobs).await?;
        }
    }
    eprintln!("{rows} rows in each table; claiming {rounds} batches of {batch} from each, in turn");
    let n = tables.len();
    for round in 0..rounds {
        // Each round starts at another table: none is always first.
        for i in (0..n).map(|k| (k + round) % n) {
            let (_, _, store, took, claimed) = &mut tables[i];
            let at = Instant::now();
            let claim = claim(store, batch, &Holds::default()).await?;
            *took += at.elapsed();
            *claimed += claim.jobs.len();
        }
    }
    let per_job = |t: &(_, _, _, Duration, usize)| t.3.as_secs_f64() * 1e6 / t.4.max(1) as f64;
    for t in &tables {
        println!(
            "{:>14}: {} jobs claimed, {:.2} µs per job",
            t.0,
            t.4,
            per_job(t)
        );
    }
    println!(
        "claim cost schema.sql / no priority: {:.3}; schema.sql / before #14: {:.3}",
        per_job(&tables[0]) / per_job(&tables[1]),
        per_job(&tables[0]) / per_job(&tables[2])
    );
    Ok(())
}

async fn claim(store: &Store, batch: usize, holds: &Holds) -> anyhow::Result<Claim> {
    Ok(store
        .claim(1, batch, 3600, holds, |due| vec![true; due.len()])
        .await?)
}

/// The claim of function `work` on an otherwise empty table against the
/// same behind `held` due rows of a held function (see the header), in
/// one run: both tables filled alike, then claimed in turn.
async fn held_backlog(
    server: &str,
    prefix: &str,
    [rows, batch, rounds]: [usize; 3],
    held: usize,
) -> anyhow::Result<()> {
    let mut tables = Vec::new();
    for name in ["empty", "held backlog"] {
        let db = TestDb::create(server, prefix, Some(SCHEMA)).await?;
        let store = db.store().await;
        tables.push((name, db, store, Duration::ZERO, 0usize));
    }
    // Due a day before the work rows: the head of the claim index
    // (priority_run_after), where a claim in index order would read them
    // first. Filled on the server (MariaDB's SEQUENCE engine).
    let backlog = &tables[1].1;
    let due_at = backlog.now().await - 86_400;
    let mut conn = backlog.conn().await;
    let mut filled = 0;
    while filled < held {
        let n = (held - filled).min(100_000);
        conn.query_drop(format!(
            "INSERT INTO job (funcname, arg, run_after) \
             SELECT 'paused', REPEAT('x', 100), {due_at} FROM seq_1_to_{n}"
        ))
        .await
        .context("filling the held backlog (needs MariaDB's SEQUENCE engine)")?;
        filled += n;
    }
    let jobs: Vec<NewJob> = (0..1000)
        .map(|_| NewJob::new("work", "x".repeat(100)))
        .collect();
    for _ in 0..rows / 1000 {
        for (_, _, store, _, _) in &tables {
            store.insert(&jobs).await?;
        }
    }
    if std::env::var("GV_CLAIM_BENCH_ANALYZE").is_ok_and(|v| v == "1") {
        for (_, db, _, _, _) in &tables {
            db.conn()
                .await
                .query_drop("ANALYZE TABLE job")
                .await
                .context("ANALYZE TABLE job")?;
        }
    }
    let holds = [
        Holds::default(),
        Holds {
            held: HashSet::from(["paused".to_string()]),
            ..Default::default()
        },
    ];
    eprintln!(
        "{rows} rows of work in each table, {held} held due rows of paused before them in one; \
         claiming {rounds} batches of {batch} from each, in turn"
    );
    let mut by_function = 0;
    for round in 0..rounds {
        for i in (0..2).map(|k| (k + round) % 2) {
            let (_, _, store, took, claimed) = &mut tables[i];
            let at = Instant::now();
            let claim = claim(store, batch, &holds[i]).await?;
            *took += at.elapsed();
            *claimed += claim.jobs.len();
            by_function += usize::from(i == 1 && claim.limited);
            if let Some(job) = claim.jobs.iter().find(|j| j.funcname != "work") {
                anyhow::bail!(
                    "a claim took job {} of the held function {}",
                    job.jobid,
                    job.funcname
                );
            }
        }
    }
    let per_job = |t: &(_, _, _, Duration, usize)| t.3.as_secs_f64() * 1e6 / t.4.max(1) as f64;
    for t in &tables {
        println!(
            "{:>14}: {} jobs claimed, {:.2} µs per job",
            t.0,
            t.4,
            per_job(t)
        );
    }
    println!(
        "claim cost held backlog of {held} / empty: {:.3} (#24: at most 1.2)",
        per_job(&tables[1]) / per_job(&tables[0])
    );
    let (kept, left): (Option<u64>, Option<u64>) = conn
        .exec_first(
            "SELECT SUM(run_after = ? AND attempted_at = 0), COUNT(*) FROM job \
             WHERE funcname = 'paused'",
            (due_at,),
        )
        .await?
        .unwrap_or_default();
    let (kept, left) = (kept.unwrap_or(0), left.unwrap_or(0));
    let touched = held as u64 - kept.min(held as u64);
    println!("paused rows the claims touched: {touched} of {held}");
    anyhow::ensure!(
        touched == 0 && left == held as u64,
        "the claims touched {touched} of the {held} held rows ({left} left): held rows must stay as they were"
    );
    anyhow::ensure!(
        held == 0 || by_function == rounds,
        "only {by_function} of {rounds} claims behind the held backlog read function by function"
    );
    Ok(())
}

//! `gv_claim_bench`: the QueueRunner's claim cost per job on schema.sql's
//! table, on one without the `priority` column, and on the table before
//! the job model (no priority, no history columns), in one run: the
//! tables filled alike, then claimed in batches in turn (each round starting
//! at the next table), so that all see the same machine at the same time.
//!
//!   cargo run --release -p garivini-bench --bin gv_claim_bench -- [ROWS] [BATCH] [ROUNDS]
//!
//! Its scratch databases are named `gv_claim_bench_<hex>`, or after
//! `GV_CLAIM_BENCH_DB_PREFIX` when set.

use std::time::{Duration, Instant};

use garivini::{NewJob, Store};
use testkit::{TestDb, SCHEMA};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rows = args.next().transpose()?.unwrap_or(200_000);
    let batch = args.next().transpose()?.unwrap_or(1000);
    let rounds = args.next().transpose()?.unwrap_or(150);
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
    let server = testkit::server_url();
    // The scratch databases' name prefix, for a run that must name its own.
    let prefix = std::env::var("GV_CLAIM_BENCH_DB_PREFIX").unwrap_or("gv_claim_bench".into());
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
            let claim = claim(store, batch).await?;
            *took += at.elapsed();
            *claimed += claim;
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

async fn claim(store: &Store, batch: usize) -> anyhow::Result<usize> {
    Ok(store
        .claim(1, batch, 3600, &Default::default(), |due| {
            vec![true; due.len()]
        })
        .await?
        .jobs
        .len())
}

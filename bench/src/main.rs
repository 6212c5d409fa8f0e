//! `gv_bench`: Garivini against plain gearmand, on one MariaDB and one
//! gearmand, side by side.
//!
//! Scenarios, run in turn in each repetition:
//!
//! 1. gearmand memory-only, with our in-process client (pipelined
//!    background submits) and worker: the ceiling without persistence;
//!    and its own submit->start latency at the offered rate of the latency
//!    measurements (one job per submit), which scenario 4's is compared to;
//! 2. gearmand with its own `-q mysql` queue, same client and worker;
//! 3. Garivini throughput mode end to end (gv_inject → MySQL → QueueRunner
//!    → gearmand → gv_consume → DELETE): insert rate, drain rate, end to end
//!    jobs/s, and insert→start latency at a steady offered rate;
//! 4. Garivini low-latency mode end to end (gv_inject → inject_jobs →
//!    Injector → Controller → gv_consume): jobs/s, and submit→start latency
//!    at a steady offered rate;
//! 5. (opt-in) cost as the table grows: throughput mode's drain rate,
//!    insert→start latency and `garivini status` time on an empty table,
//!    then on one holding `--big-table-rows` rows of other functions
//!    (`big_table`).
//!
//! Every phase gets a fresh database (dropped afterwards) and a fresh
//! private gearmand on a free loopback port. Scenarios 3 and 4 run the real
//! release binaries (`garivini`, `gv_inject`, `gv_consume`, found next to
//! this one and copied aside at start, so that a rebuild during the run
//! cannot mix versions). Every child is killed when its phase ends, every
//! wait is bounded, and a phase that fails or times out is reported as
//! failed. The table shows the median over the repetitions; `--json FILE`
//! writes every number (min, max and each repetition too). A second table
//! shows the CPU time per job of each process of each phase (and of the
//! shared MariaDB server, on its own), over the measured part of the
//! phase.
//!
//! The modules: `opts` (flags), `cpu` (CPU time per process over a
//! phase), `processes` (the phase's database,
//! gearmand and child processes, and the waits on them, on testkit's
//! fixtures), `scenarios` (the phases and the loop over them), `gv_inject`
//! (the load generator's flags and summary), `targets` (the table's rows
//! and their targets), `report` (table and JSON).

mod big_table;
mod cpu;
mod gv_inject;
mod opts;
mod processes;
mod report;
mod scenarios;
mod targets;

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

use crate::opts::Opts;
use crate::processes::Bench;
use crate::scenarios::Unit;

#[tokio::main]
async fn main() {
    // The library's own warnings (a worker's lost connection, say), at
    // RUST_LOG's level or warn.
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main().await {
        eprintln!("gv_bench: error: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    opts.validate()?;
    let dir = match &opts.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "gv_bench-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bench = Bench::new(opts, dir.clone()).await?;
    let header = report::header(&bench.opts);
    bench.log(format!("logs in {}", dir.display()));

    let load_start = report::loadavg();
    // Interrupted, the phase's future is dropped, and with it its
    // processes, its gearmand and its database.
    let results = tokio::select! {
        r = scenarios::run(&bench) => r,
        _ = tokio::signal::ctrl_c() => return Err(anyhow!("interrupted")),
    };
    let load = (load_start, report::loadavg());

    report::print_table(&bench.opts, &results, &report::table_header(&header, &load));
    if let Some(path) = &bench.opts.json {
        let value = report::to_json(&bench.opts, &results, &header, load.clone());
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        bench.log(format!("JSON written to {}", path.display()));
    }
    let failed = Unit::ALL.iter().any(|&u| !results.failures(u).is_empty());
    if failed || bench.opts.keep_logs {
        bench.log(format!("logs kept in {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    bench.disconnect().await;
    if failed {
        bail!("some phases failed (see the table)");
    }
    Ok(())
}

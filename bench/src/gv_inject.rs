//! gv_inject, the load: its flags for each measurement, and the numbers
//! read back from its summary.

use std::path::Path;

use anyhow::{anyhow, bail};

use crate::opts::Opts;

/// Which mode gv_inject submits in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Rows inserted into the job table.
    Throughput,
    /// `inject_jobs` requests.
    LowLatency,
}

impl Mode {
    /// Its `--mode` (gv_consume's too).
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::LowLatency => "lowlatency",
        }
    }

    /// The first word of gv_inject's summary line.
    pub fn verb(self) -> &'static str {
        match self {
            Mode::Throughput => "inserted",
            Mode::LowLatency => "injected",
        }
    }
}

/// One gv_inject run.
pub struct Inject<'a> {
    pub mode: Mode,
    pub func: &'a str,
    pub count: u64,
    pub batch: usize,
    pub concurrency: usize,
    /// Offered jobs/s; 0 = as fast as it goes.
    pub rate: u64,
    /// Where gv_consume writes its start times, for latency.
    pub latency: Option<&'a Path>,
}

impl<'a> Inject<'a> {
    /// `--jobs` jobs as fast as they go: multi-row inserts of
    /// `--insert-batch` (throughput), one job per request (low latency).
    pub fn bulk(opts: &Opts, mode: Mode, func: &'a str) -> Inject<'a> {
        let (batch, concurrency) = match mode {
            Mode::Throughput => (opts.insert_batch, opts.insert_concurrency),
            Mode::LowLatency => (1, opts.concurrency),
        };
        Inject {
            mode,
            func,
            count: opts.jobs,
            batch,
            concurrency,
            rate: 0,
            latency: None,
        }
    }

    /// `--latency-jobs` jobs, one per insert or request, offered at
    /// `--rate`, start times read from `file`.
    pub fn latency(opts: &Opts, mode: Mode, func: &'a str, file: &'a Path) -> Inject<'a> {
        Inject {
            count: opts.latency_jobs,
            batch: 1,
            rate: opts.rate,
            latency: Some(file),
            ..Inject::bulk(opts, mode, func)
        }
    }

    /// Its flags after `servers` (`--dsn … --gearmand …`).
    pub fn args(&self, opts: &Opts, servers: Vec<String>) -> Vec<String> {
        let mut args = servers;
        args.extend([
            "--mode".into(),
            self.mode.flag().into(),
            "--funcname".into(),
            self.func.into(),
            "--count".into(),
            self.count.to_string(),
            "--arg-size".into(),
            opts.payload.to_string(),
            "--batch".into(),
            self.batch.to_string(),
            "--concurrency".into(),
            self.concurrency.to_string(),
        ]);
        if self.rate > 0 {
            args.extend(["--rate".into(), self.rate.to_string()]);
        }
        if let Some(path) = self.latency {
            args.extend([
                "--latency-file".into(),
                path.display().to_string(),
                "--latency-wait".into(),
                opts.timeout.to_string(),
            ]);
        }
        args
    }
}

/// The number right after `key` in `line` (e.g. "p50 " in "p50 3.65 ms").
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| c.is_whitespace() || c == ',')
        .find(|t| !t.is_empty())?
        .parse()
        .ok()
}

/// gv_inject's summary "VERB N jobs in S s: R jobs/s" → R, after checking N.
pub fn parse_rate(stdout: &str, verb: &str, count: u64) -> anyhow::Result<f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(verb))
        .ok_or_else(|| anyhow!("gv_inject printed no '{verb} …' line: {stdout:?}"))?;
    let n = number_after(line, verb).map(|n| n as u64);
    if n != Some(count) {
        bail!("gv_inject reported {n:?} jobs, expected {count}: {line:?}");
    }
    let rate = line
        .rsplit(':')
        .next()
        .and_then(|r| number_after(r, ""))
        .ok_or_else(|| anyhow!("no rate in gv_inject's line {line:?}"))?;
    Ok(rate)
}

/// gv_inject's "latency WHAT: p50 X ms, p90 X ms, p99 X ms, max X ms (N
/// jobs)" line for `what` (e.g. "submit->start") → [p50, p90, p99, max];
/// None when there is no such line.
pub fn parse_latency(stdout: &str, what: &str, count: u64) -> anyhow::Result<Option<[f64; 4]>> {
    let prefix = format!("latency {what}:");
    let Some(line) = stdout.lines().find(|l| l.starts_with(&prefix)) else {
        return Ok(None);
    };
    let get = |k: &str| number_after(line, k).ok_or_else(|| anyhow!("no {k}in {line:?}"));
    let samples = line
        .rfind('(')
        .and_then(|i| number_after(&line[i..], "("))
        .map(|n| n as u64);
    if samples != Some(count) {
        bail!("latency line covers {samples:?} jobs, expected {count}: {line:?}");
    }
    Ok(Some([
        get("p50 ")?,
        get("p90 ")?,
        get("p99 ")?,
        get("max ")?,
    ]))
}

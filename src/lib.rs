//! Garivini: a job persistence layer for Gearman.
//!
//! gearmand keeps its queues in memory; Garivini keeps every accepted job in
//! a MySQL table until a worker completes it, and feeds gearmand from that
//! table without overfilling it. Guarantee: at least once. A job whose
//! insert returned is a committed row, and stays one until a worker's
//! completion deletes it; any crash only delays it until its lease ends.
//!
//! The map of the crate, one module per responsibility:
//!
//! - [`job`]: a job to store ([`NewJob`]), a stored job ([`Job`]), the job
//!   JSON every worker receives, and the retry backoff.
//! - [`store`]: the `job` table in one or more databases (shards); all SQL.
//! - [`client`]: the library API of throughput mode: insert jobs; complete,
//!   reschedule or fail them from a worker (completions batched).
//! - [`gearman`]: our one door to gearmand: pipelined background submits,
//!   multiplexed foreground submits, a worker loop, queue depths (all on
//!   TCP_NODELAY sockets).
//! - [`queue_runner`]: claims due rows in batches and submits them to
//!   gearmand, under a queue-depth watermark.
//! - [`functions`]: per-function settings (`[functions.NAME]`): a
//!   concurrency limit, a watermark, a timeout, max attempts.
//! - [`periodic`]: `[[periodic]]` entries (cron or interval): the
//!   QueueRunners insert each tick's job once, however many run.
//! - [`injector`]: low-latency mode's `inject_jobs` worker: commit, answer,
//!   dispatch to a Controller.
//! - [`controller`]: low-latency mode's `run_queued_job` worker: runs the
//!   real function in the foreground and completes or fails the row.
//! - [`roles`]: runs roles on shared pools until a shutdown token fires.
//! - [`names`]: the contract's Gearman function names and the defaults
//!   several roles share (a leaf: anything may import it).
//! - [`config`]: parsing of the database and gearmand lists.
//! - [`error`]: the one error type.
//! - [`outage`]: riding out a database or gearmand outage: one warning per
//!   outage, capped and jittered retries.
//! - [`telemetry`]: the Prometheus metrics the roles record (the catalogue).
//! - [`waiting`]: why a due job waits (paused, no worker, over the limit or
//!   the watermark), the one answer of every surface.
//! - [`admin`]: operating it: the `garivini status` report, the
//!   `garivini jobs` commands (list, show, retry, cancel) and pausing a
//!   function (`garivini functions pause|resume`, the roles honour it
//!   through [`Store::paused_functions`]).
//! - `web` (feature `web`, on by default): the dashboard and the HTTP JSON
//!   API (`garivini web`), on [`admin`]'s functions.
//!
//! Storing a job and, in a worker, completing it:
//!
//! ```no_run
//! # async fn demo(workload: &[u8]) -> garivini::Result<()> {
//! use std::sync::Arc;
//! use garivini::{config::parse_dsn_list, Client, Job, NewJob, Store};
//!
//! let store = Store::connect(parse_dsn_list("mysql://root@127.0.0.1:3306/garivini")?).await?;
//! let client = Client::new(Arc::new(store));
//! // Answers once the row is committed.
//! client.insert_job(NewJob::new("resize", "img-1.png").unique("img-1")).await?;
//!
//! // In the worker for "resize", given the Gearman workload:
//! let job = Job::from_json(workload)?;
//! client.complete_job(&job).await?;
//! # Ok(()) }
//! ```
//!
//! The binaries (`garivini`, `gv_inject`, `gv_consume`) parse arguments,
//! set up logging and call into these modules; the library itself never
//! reads argv or the environment.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod batch;
pub mod client;
pub mod config;
pub mod controller;
pub mod error;
pub mod functions;
pub mod gearman;
pub mod injector;
pub mod job;
pub mod names;
pub mod outage;
pub mod periodic;
pub mod queue_runner;
pub mod roles;
pub mod store;
pub mod telemetry;
mod tls;
pub mod waiting;
#[cfg(feature = "web")]
pub mod web;

pub use client::{Client, Retry};
pub use error::{Error, Result};
pub use job::{Flag, Job, JobRef, NewJob, Priority, When};
pub use store::Store;

//! Fixtures shared by Garivini's integration tests (`tests/`, as a
//! dev-dependency) and its benchmark (`bench/`): the real MariaDB and a
//! real gearmand, never mocks.
//!
//! - [`chromedriver`]: a private chromedriver (headless Chromium) on a
//!   free loopback port, killed on drop;
//! - [`db`]: a scratch database per test or phase on the MariaDB of
//!   `scripts/services up`, dropped on drop; the original Perl Garivini's
//!   table and statements;
//! - [`galera`]: a private 3-node MariaDB Galera cluster per test
//!   (scripts/galera), stopped on drop;
//! - [`gearmand`]: a private gearmand on a free loopback port, killed on
//!   drop;
//! - [`mariadbd`]: a private MariaDB server (TLS-only, say) in a
//!   temporary directory, killed and removed on drop;
//! - [`process`]: our binaries (and any other program) as child processes,
//!   killed on drop, and bounded runs of them;
//! - [`proxy`]: a TCP proxy in front of MariaDB that a test can cut;
//! - [`report`]: the fault table's rows;
//! - [`roles`]: our roles in the calling process, stopped on drop;
//! - [`worker`]: a Gearman worker in the calling process that records the
//!   jobs it runs;
//! - [`silent`]: a server that accepts and never answers (hung);
//! - [`wait`]: bounded waits.
//!
//! Every wait is bounded, and none sleeps on an async runtime's thread
//! (only a drop blocks: a killed child's reaping, a database's DROP). The
//! fixtures that tests use panic with a message naming what failed (and
//! `scripts/services up` when a service is missing: nothing is skipped);
//! the fallible ones the benchmark uses return errors, so that one failed
//! phase is reported rather than ending the run.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chromedriver;
pub mod db;
pub mod galera;
pub mod gearmand;
pub mod mariadbd;
pub mod process;
pub mod proxy;
pub mod report;
pub mod roles;
pub mod silent;
pub mod wait;
pub mod worker;

pub use chromedriver::ChromeDriver;
pub use db::{
    cleanup_sql, server_url, TestDb, ORIGINAL_SCHEMA, PERL_COMPLETE_JOB, PERL_INSERT_JOB, SCHEMA,
};
pub use galera::{Cluster, ClusterDb, CLUSTER_SCHEMA};
pub use gearmand::{Gearmand, GearmandConfig, IdleWorker};
pub use mariadbd::{MariaDb, TestCerts};
pub use process::{
    bin, bin_dir, bin_path, command, free_port, http_get, recorded_runs, run_bin, run_command,
    run_every_binary, run_garivini, scrape_metrics, with_servers, BinaryRun, Proc, EVERY_BINARY,
};
pub use proxy::{host_port, via, DbProxy};
pub use report::{check_runs, FaultRow};
pub use roles::{insert_numbered, queue_runner, quick_queue_runner, round, InjectClient, Roles};
pub use silent::Silent;
pub use wait::{wait_until, within};
pub use worker::{Run, Worker, WorkerSpec};

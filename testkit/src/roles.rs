//! Our roles in the test's own process, and what drives them: a bounded
//! QueueRunner round, a client of `inject_jobs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use garivini::gearman::{ForegroundClient, Outcome};
use garivini::names::{INJECT_JOBS, RUN_QUEUED_JOB};
use garivini::queue_runner::{self, QueueRunner, Stats};
use garivini::{controller, injector, roles, Client, JobRef, NewJob, Store};
use tokio_util::sync::CancellationToken;

use crate::gearmand::Gearmand;
use crate::wait::within;

/// How long one round, one request or a stop may take.
const LIMIT: Duration = Duration::from_secs(30);

/// Roles running in this process as `garivini workers` runs them
/// ([`garivini::roles::run`]), on one store and one gearmand; stopped on
/// drop.
pub struct Roles {
    stop: CancellationToken,
    running: tokio::task::JoinHandle<garivini::Result<()>>,
}

impl Roles {
    /// Starts `config`'s roles; returns once gearmand knows the Injector's
    /// and the Controller's functions (of those that run).
    pub async fn start(config: roles::Config, store: Arc<Store>, gearmand: &Gearmand) -> Roles {
        config.validate().expect("the roles' settings");
        let (injector, controller) = (config.injector.is_some(), config.controller.is_some());
        let stop = CancellationToken::new();
        let running = tokio::spawn(roles::run(store, gearmand.servers(), config, stop.clone()));
        if injector {
            gearmand.wait_for_worker(INJECT_JOBS).await;
        }
        if controller {
            gearmand.wait_for_worker(RUN_QUEUED_JOB).await;
        }
        Roles { stop, running }
    }

    /// An Injector with `config`.
    pub async fn injector(
        config: injector::Config,
        store: Arc<Store>,
        gearmand: &Gearmand,
    ) -> Roles {
        let config = roles::Config {
            injector: Some(config),
            ..roles::Config::default()
        };
        Roles::start(config, store, gearmand).await
    }

    /// An Injector and a Controller with their defaults: low-latency mode
    /// without a QueueRunner.
    pub async fn low_latency(store: Arc<Store>, gearmand: &Gearmand) -> Roles {
        let config = roles::Config {
            injector: Some(injector::Config::default()),
            controller: Some(controller::Config::default()),
            ..roles::Config::default()
        };
        Roles::start(config, store, gearmand).await
    }

    /// Stops them and waits until every one has returned, panicking
    /// after `limit`.
    pub async fn stop(mut self, limit: Duration) {
        self.stop.cancel();
        within(limit, "the roles to stop", &mut self.running)
            .await
            .expect("the roles ran")
            .expect("the roles' settings");
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The QueueRunner's defaults, but with rounds 10 times a second and a
/// failed submit due again after a second: quick enough for a test.
pub fn quick_queue_runner() -> queue_runner::Config {
    queue_runner::Config {
        batch_run_sleep: Duration::from_millis(100),
        submit_retry_delay: 1,
        ..queue_runner::Config::default()
    }
}

/// A QueueRunner with `config` on `store` and `gearmand`, for a test to
/// drive [`round`] by round.
pub fn queue_runner(
    config: queue_runner::Config,
    store: Arc<Store>,
    gearmand: &Gearmand,
) -> QueueRunner {
    QueueRunner::new(config, store, gearmand.servers()).expect("the QueueRunner's settings")
}

/// One round of `runner`, bounded.
pub async fn round(runner: &mut QueueRunner) -> garivini::Result<Stats> {
    within(LIMIT, "a QueueRunner round", runner.run_once()).await
}

/// Stores `n` jobs of `funcname` through `client`, their args `PREFIX0`,
/// `PREFIX1`, ... (bounded); their ids, in order.
pub async fn insert_numbered(
    client: &Client,
    funcname: &str,
    prefix: &str,
    n: usize,
) -> Vec<JobRef> {
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new(funcname, format!("{prefix}{i}")))
        .collect();
    within(LIMIT, "inserting the jobs", client.insert_jobs(&jobs))
        .await
        .expect("the jobs are stored")
}

/// A Gearman client of `inject_jobs`, as any program's would be; every
/// request bounded.
pub struct InjectClient {
    client: ForegroundClient,
}

impl InjectClient {
    /// A client of `gearmand`.
    pub fn new(gearmand: &Gearmand) -> InjectClient {
        InjectClient {
            client: ForegroundClient::new(gearmand.servers()),
        }
    }

    /// Submits `body` and waits for the outcome; Err when gearmand could
    /// not be reached.
    pub async fn try_submit(&self, body: impl Into<Bytes>) -> garivini::Result<Outcome> {
        within(
            LIMIT,
            "inject_jobs answers",
            self.client.submit(INJECT_JOBS, "", body.into()),
        )
        .await
    }

    /// Submits `body` to a reachable gearmand; its outcome.
    pub async fn submit(&self, body: impl Into<Bytes>) -> Outcome {
        self.try_submit(body).await.expect("gearmand reachable")
    }

    /// Submits `body`; Ok(answer), or Err(the reason) on a failure.
    pub async fn inject(&self, body: impl Into<Bytes>) -> Result<Bytes, String> {
        match self.submit(body).await {
            Outcome::Complete(answer) => Ok(answer),
            Outcome::Fail(reason) => Err(String::from_utf8_lossy(&reason).into_owned()),
            other => panic!("inject_jobs: unexpected {other:?}"),
        }
    }

    /// Injects `n` jobs of `funcname` with args `{prefix}0`, `{prefix}1`,
    /// ..., one request each, every one stored: [`insert_numbered`]
    /// through `inject_jobs`.
    pub async fn inject_numbered(&self, funcname: &str, prefix: &str, n: usize) {
        for i in 0..n {
            self.inject(format!(
                r#"{{"funcname":"{funcname}","arg":"{prefix}{i}"}}"#
            ))
            .await
            .expect("stored");
        }
    }
}

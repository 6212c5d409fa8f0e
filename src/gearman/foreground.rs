//! Foreground jobs: [`ForegroundClient`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearman::protocol::{Packet, PacketType};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::conn::{connect_asking, gearman_err, req, Conn};
use super::health::{skipped, Health};
use super::{sleep_until_some, FunctionLoad, StatusReader, REPLY_TIMEOUT};
use crate::error::{Error, Result};

/// How a foreground job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// WORK_COMPLETE, with the worker's result.
    Complete(Bytes),
    /// WORK_FAIL, with the last WORK_WARNING before it (empty if none).
    Fail(Bytes),
    /// WORK_EXCEPTION, with the worker's message.
    Exception(Bytes),
}

/// Why a foreground submit to one server got no outcome.
#[derive(Debug)]
enum Failure {
    /// The server did not take the job: it is down, refused it, or the
    /// connection was lost before JOB_CREATED. Another server may take it.
    NotCreated(Error),
    /// The connection was lost after JOB_CREATED: the outcome is unknown.
    Lost(Error),
}

type Waiter = oneshot::Sender<std::result::Result<Outcome, Failure>>;

struct Submit {
    function: String,
    unique: String,
    data: Bytes,
    /// Every server was down when it was sent: a down lane tries to
    /// connect for it rather than refuse it.
    force: bool,
    reply: Waiter,
}

impl Submit {
    fn into_parts(self) -> (Packet, Waiter) {
        let pkt = req(
            PacketType::SubmitJob,
            vec![
                Bytes::from(self.function),
                Bytes::from(self.unique),
                self.data,
            ],
        );
        (pkt, self.reply)
    }
}

/// One server's connection task, and its health as that task sees it.
struct Lane {
    tx: mpsc::Sender<Submit>,
    health: Arc<Health>,
}

/// Submits foreground jobs and waits for their outcome. Many jobs share
/// one connection per server (jobs go to the live servers in turn); each
/// connection has a task of its own, started on first use and again after
/// a failure.
///
/// A job that a server did not take (down, refused, or its connection lost
/// before JOB_CREATED) is tried on the next live server, once per server,
/// so a dead server costs a job at most a connect attempt. A job whose
/// connection is lost after JOB_CREATED gets an error: its outcome is
/// unknown. A server that failed is skipped while another is live, and
/// its task reconnects in the background (capped, jittered backoff).
#[derive(Clone)]
pub struct ForegroundClient {
    lanes: Arc<Vec<Lane>>,
    next: Arc<AtomicUsize>,
    status: StatusReader,
    /// Cancels the lanes' reconnect pauses once the last clone is dropped.
    _stop: Arc<DropGuard>,
}

/// Foreground submits queued per connection before callers wait.
const FOREGROUND_QUEUE: usize = 1024;

impl ForegroundClient {
    /// A client for `servers`. Must be called within a Tokio runtime.
    pub fn new(servers: Vec<String>) -> ForegroundClient {
        let stop = CancellationToken::new();
        let status = StatusReader::new(servers.clone());
        let lanes = servers
            .into_iter()
            .map(|server| {
                let (tx, rx) = mpsc::channel(FOREGROUND_QUEUE);
                let health = Health::new(server, "gearmand unreachable for foreground jobs");
                tokio::spawn(foreground_lane(health.clone(), rx, stop.clone()));
                Lane { tx, health }
            })
            .collect();
        ForegroundClient {
            lanes: Arc::new(lanes),
            next: Default::default(),
            status,
            _stop: Arc::new(stop.drop_guard()),
        }
    }

    /// Submits a foreground job and waits until a worker ends it. Tries
    /// the live servers in turn until one takes the job (all of them when
    /// none is live); fails with the last server's error when none does,
    /// or when the job was lost after a server took it.
    pub async fn submit(&self, function: &str, unique: &str, data: Bytes) -> Result<Outcome> {
        let lanes = &self.lanes;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut tried = vec![false; lanes.len()];
        let mut last = None;
        let gone = || Error::GearmanProtocol {
            server: "(client)".into(),
            what: "shutdown of the foreground client".into(),
        };
        loop {
            let all = !lanes.iter().any(|l| l.health.is_live());
            let pick = (0..lanes.len())
                .map(|k| (n + k) % lanes.len())
                .find(|&i| !tried[i] && (all || lanes[i].health.is_live()));
            let Some(i) = pick else {
                return Err(last.unwrap_or(Error::NoGearmand));
            };
            tried[i] = true;
            let (reply, answer) = oneshot::channel();
            let submit = Submit {
                function: function.to_string(),
                unique: unique.to_string(),
                data: data.clone(),
                force: all,
                reply,
            };
            lanes[i].tx.send(submit).await.map_err(|_| gone())?;
            match answer.await.map_err(|_| gone())? {
                Ok(outcome) => return Ok(outcome),
                Err(Failure::NotCreated(err)) => last = Some(err),
                Err(Failure::Lost(err)) => return Err(err),
            }
        }
    }

    /// Jobs and workers per function over the servers, as
    /// [`StatusReader::function_status`] reads them (its own health state:
    /// a status read says nothing of this client's connections).
    pub async fn function_status(&self) -> (HashMap<String, FunctionLoad>, Vec<Error>) {
        self.status.function_status().await
    }
}

/// One server's connection for foreground jobs: connects when the first
/// submit comes, or, while the server is down, as a probe after a pause
/// (refusing the submits that come meanwhile, unless every server is down,
/// so that the client takes them elsewhere).
async fn foreground_lane(
    health: Arc<Health>,
    mut rx: mpsc::Receiver<Submit>,
    stop: CancellationToken,
) {
    let server = health.server.clone();
    let refuse = |s: Submit, err: Error| {
        let _ = s.reply.send(Err(Failure::NotCreated(err)));
    };
    let mut first: Option<Submit> = None;
    loop {
        if health.is_live() {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => first = Some(s),
                    None => return,
                },
                _ = stop.cancelled() => return,
            }
        } else {
            let probe_at = tokio::time::Instant::now() + health.outage.delay();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(probe_at) => break,
                    _ = stop.cancelled() => return,
                    s = rx.recv() => match s {
                        None => return,
                        Some(s) if s.force => {
                            first = Some(s);
                            break;
                        }
                        Some(s) => refuse(s, skipped(&server)),
                    },
                }
            }
        }
        let conn = match connect_foreground(&server).await {
            Ok(conn) => conn,
            Err(err) => {
                health.failed(&err);
                if let Some(s) = first.take() {
                    refuse(s, err);
                }
                // Refuse what queued up meanwhile rather than make it wait.
                while let Ok(s) = rx.try_recv() {
                    refuse(s, skipped(&server));
                }
                continue;
            }
        };
        health.answered();
        if let LaneEnd::Closed = run_lane(&health, conn, first.take(), &mut rx).await {
            return;
        }
    }
}

/// How a lane's connection ended.
enum LaneEnd {
    /// The client is gone and every job ended.
    Closed,
    /// The connection was lost; the server is marked down.
    Lost,
}

/// One connection's life: submits go out as they come; JOB_CREATED
/// answers arrive in submit order and tie each waiter to its handle;
/// WORK_* packets then end the job with that handle.
async fn run_lane(
    health: &Health,
    mut conn: Conn,
    first: Option<Submit>,
    rx: &mut mpsc::Receiver<Submit>,
) -> LaneEnd {
    let server = health.server.as_str();
    // Waiters for JOB_CREATED, in submit order, with when each was sent.
    let mut created: VecDeque<(Waiter, tokio::time::Instant)> = VecDeque::new();
    let mut running: HashMap<Bytes, Vec<Waiter>> = HashMap::new();
    let mut warnings: HashMap<Bytes, Bytes> = HashMap::new();
    let mut next = first;
    let mut closed = false;
    let failure = loop {
        if closed && created.is_empty() && running.is_empty() {
            return LaneEnd::Closed;
        }
        if let Some(s) = next.take() {
            // Take whatever else is queued before the one flush.
            let mut batch = vec![s];
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
            }
            let mut fed = Ok(());
            let now = tokio::time::Instant::now();
            for s in batch {
                let (pkt, reply) = s.into_parts();
                if fed.is_ok() {
                    fed = conn.feed(pkt).await;
                }
                match fed {
                    Ok(()) => created.push_back((reply, now)),
                    Err(_) => {
                        let _ = reply.send(Err(Failure::NotCreated(gearman_err(
                            server,
                            gearman::GearmanError::ConnectionClosed,
                        ))));
                    }
                }
            }
            if let Err(e) = fed {
                break gearman_err(server, e);
            }
            if let Err(e) = conn.flush().await {
                break gearman_err(server, e);
            }
        }
        // A server that takes submits and never answers them is as good
        // as gone: its waiters go elsewhere.
        let answer_by = created.front().map(|(_, sent)| *sent + REPLY_TIMEOUT);
        tokio::select! {
            s = rx.recv(), if !closed => match s {
                Some(s) => next = Some(s),
                None => closed = true,
            },
            _ = sleep_until_some(answer_by) => {
                break gearman_err(server, gearman::GearmanError::Timeout);
            }
            pkt = conn.next() => {
                let pkt = match pkt {
                    None => break gearman_err(server, gearman::GearmanError::ConnectionClosed),
                    Some(Err(e)) => break gearman_err(server, e),
                    Some(Ok(pkt)) => pkt,
                };
                let handle = pkt.arg(0).cloned().unwrap_or_default();
                let end = |running: &mut HashMap<Bytes, Vec<Waiter>>, warnings: &mut HashMap<Bytes, Bytes>, outcome: Outcome| {
                    warnings.remove(&handle);
                    for w in running.remove(&handle).unwrap_or_default() {
                        let _ = w.send(Ok(outcome.clone()));
                    }
                };
                match pkt.ptype {
                    PacketType::JobCreated => match created.pop_front() {
                        // gearmand gives two submits with one unique id the
                        // same handle: both wait for that one job.
                        Some((w, _)) => {
                            health.answered();
                            running.entry(handle).or_default().push(w);
                        }
                        None => break Error::GearmanProtocol { server: server.to_string(), what: "JOB_CREATED with no submit".into() },
                    },
                    PacketType::Error => match created.pop_front() {
                        Some((w, _)) => {
                            let text = String::from_utf8_lossy(pkt.arg(1).map_or(&b""[..], |b| b)).into_owned();
                            let _ = w.send(Err(Failure::NotCreated(Error::GearmanProtocol { server: server.to_string(), what: format!("ERROR {text}") })));
                        }
                        None => break Error::GearmanProtocol { server: server.to_string(), what: "ERROR with no submit".into() },
                    },
                    PacketType::WorkComplete => end(&mut running, &mut warnings, Outcome::Complete(pkt.args[1].clone())),
                    PacketType::WorkFail => {
                        let warning = warnings.get(&handle).cloned().unwrap_or_default();
                        end(&mut running, &mut warnings, Outcome::Fail(warning))
                    }
                    PacketType::WorkException => end(&mut running, &mut warnings, Outcome::Exception(pkt.args[1].clone())),
                    PacketType::WorkWarning if running.contains_key(&handle) => {
                        warnings.insert(handle, pkt.args[1].clone());
                    }
                    _ => {} // WORK_DATA, WORK_STATUS, OPTION_RES: nothing to do
                }
            }
        }
    };
    // Marked down before any waiter hears of it, so that its retry goes
    // elsewhere.
    health.failed(&failure);
    let lost = || gearman_err(server, gearman::GearmanError::ConnectionClosed);
    for (w, _) in created {
        let _ = w.send(Err(Failure::NotCreated(lost())));
    }
    for w in running.into_values().flatten() {
        let _ = w.send(Err(Failure::Lost(lost())));
    }
    LaneEnd::Lost
}

/// A connection for foreground jobs that asked to be told of exceptions.
async fn connect_foreground(server: &str) -> Result<Conn> {
    connect_asking(
        server,
        PacketType::OptionReq,
        b"exceptions",
        PacketType::OptionRes,
    )
    .await
}

//! The worker loop: [`serve`].

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearman::protocol::{Packet, PacketType};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::codec::{Oversized, WorkerCodec, WorkerFrame};
use super::conn::{connect_stream, gearman_err, req};
use crate::error::{Error, Result};
use crate::outage::Outage;

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// gearmand's handle for it.
    pub handle: Bytes,
    /// The function it was submitted to.
    pub function: String,
    /// Its unique id, if it had one.
    pub unique: Option<String>,
    /// The workload.
    pub data: Bytes,
}

/// How a worker's handler ended a job.
#[derive(Debug, Clone)]
pub enum WorkResult {
    /// WORK_COMPLETE with this result.
    Complete(Bytes),
    /// WORK_FAIL.
    Fail,
    /// WORK_WARNING with this message, then WORK_FAIL: every client gets a
    /// failure, and those that read warnings get the reason.
    FailWith(Bytes),
}

/// Most worker connections per server: each wakes on every new job of its
/// function (gearmand wakes all sleeping workers), so more connections
/// than needed for throughput only cost wake-ups.
pub const MAX_WORKER_CONNECTIONS: usize = 8;
/// Jobs one worker connection holds at most before another is opened:
/// with grabs pipelined, one connection takes a backlog as fast as
/// several, and every connection more is woken on every new job.
pub const SLOTS_PER_CONNECTION: usize = 64;
/// Connections [`serve`] opens to each server for `concurrency` jobs at
/// once.
pub fn worker_connections(concurrency: usize) -> usize {
    concurrency
        .max(1)
        .div_ceil(SLOTS_PER_CONNECTION)
        .min(MAX_WORKER_CONNECTIONS)
}

/// Grabs (GRAB_JOB_UNIQ) one worker connection keeps in flight at most.
const MAX_GRABS_IN_FLIGHT: usize = 32;

/// How long a worker waits, after shutdown, for the jobs in hand.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `function` on every server with up to `concurrency` jobs running
/// at once per server, until `shutdown`. Jobs are spread over a few
/// connections ([`worker_connections`]), each holding several jobs at once
/// (gearmand assigns a connection as many jobs as it grabs) and keeping
/// several grabs in flight while jobs keep coming; answers ready together
/// go out in one write. On shutdown no new job is grabbed,
/// and the jobs in hand are finished and answered, for at most
/// `shutdown_timeout`: then their connections close, and gearmand gives
/// their Gearman jobs to other workers. Lost connections are retried with
/// capped, jittered backoff; an outage is logged once.
pub async fn serve<H, F>(
    servers: Vec<String>,
    function: String,
    concurrency: usize,
    handler: H,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
) where
    H: Fn(Assignment) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = WorkResult> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let connections = worker_connections(concurrency);
    let mut tasks = tokio::task::JoinSet::new();
    for server in servers {
        for c in 0..connections {
            // Split `concurrency` over the connections as evenly as it goes.
            let slots = concurrency / connections + usize::from(c < concurrency % connections);
            let (server, function, handler, shutdown) = (
                server.clone(),
                function.clone(),
                handler.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                // The first connection to a server speaks for all of them.
                const WHAT: &str = "gearmand unreachable for worker";
                let outage = if c == 0 {
                    Outage::new(WHAT)
                } else {
                    Outage::quiet(WHAT)
                }
                .about(format!("{server}, {function}"));
                while !shutdown.is_cancelled() {
                    let session = WorkSession {
                        server: &server,
                        function: &function,
                        slots,
                        handler: &handler,
                        shutdown: &shutdown,
                        shutdown_timeout,
                    };
                    match session.run(&outage).await {
                        Ok(()) => break,
                        Err(err) => {
                            outage.failed(&err);
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(outage.delay()) => {}
                            }
                        }
                    }
                }
            });
        }
    }
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res {
            tracing::error!(error = %e, "worker connection task ended badly");
        }
    }
}

struct WorkSession<'a, H> {
    server: &'a str,
    function: &'a str,
    slots: usize,
    handler: &'a H,
    shutdown: &'a CancellationToken,
    shutdown_timeout: Duration,
}

impl<H, F> WorkSession<'_, H>
where
    H: Fn(Assignment) -> F,
    F: Future<Output = WorkResult> + Send + 'static,
{
    /// One worker connection's life: Ok after a clean shutdown (every job
    /// in hand answered), Err when the connection is lost. Jobs still
    /// running then finish on their own; gearmand gives their Gearman jobs
    /// to another worker.
    async fn run(&self, outage: &Outage) -> Result<()> {
        let server = self.server;
        let err = |e| gearman_err(server, e);
        let mut conn = Framed::new(connect_stream(server).await?, WorkerCodec::default());
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Vec<Packet>>(self.slots);
        let mut running = 0usize;
        // Grabs sent and not answered yet, and how many to keep in flight
        // while jobs keep coming: one after a wake-up, twice as many after
        // each job (up to the free slots), so that a backlog comes in a
        // few round trips while a lone job costs one grab more at most.
        let mut grabs = 0usize;
        let mut depth = 1usize;
        // A grab found the queue empty: no more grabs; once every grab is
        // answered, sleep until gearmand's NOOP.
        let mut empty = false;
        let mut sleeping = false;
        let mut stopping = false;
        let mut give_up = tokio::time::Instant::now();

        conn.feed(req(
            PacketType::CanDo,
            vec![Bytes::copy_from_slice(self.function.as_bytes())],
        ))
        .await
        .map_err(err)?;
        loop {
            if !stopping && !sleeping {
                if empty {
                    if grabs == 0 {
                        conn.feed(req(PacketType::PreSleep, vec![]))
                            .await
                            .map_err(err)?;
                        (sleeping, empty, depth) = (true, false, 1);
                    }
                } else {
                    let want = depth.min(self.slots - running);
                    while grabs < want {
                        conn.feed(req(PacketType::GrabJobUniq, vec![]))
                            .await
                            .map_err(err)?;
                        grabs += 1;
                    }
                }
            }
            conn.flush().await.map_err(err)?;
            // A grab still unanswered is no reason to stay: a job gearmand
            // assigns to a connection that closes goes back to its queue.
            // (Waiting for the answer held a stopping role for the whole
            // shutdown timeout when gearmand hung.)
            if stopping && running == 0 {
                return Ok(());
            }
            tokio::select! {
                _ = self.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    give_up = tokio::time::Instant::now() + self.shutdown_timeout;
                }
                _ = tokio::time::sleep_until(give_up), if stopping => {
                    tracing::warn!(gearmand = %server, function = %self.function, jobs = running, "shutdown timeout: leaving jobs unfinished");
                    return Ok(());
                }
                Some(answer) = done_rx.recv() => {
                    // Every answer ready now goes out in one write.
                    let mut next = Some(answer);
                    while let Some(answer) = next {
                        running -= 1;
                        for pkt in answer {
                            conn.feed(pkt).await.map_err(err)?;
                        }
                        next = done_rx.try_recv().ok();
                    }
                }
                pkt = conn.next() => {
                    let pkt = match pkt {
                        None => return Err(err(gearman::GearmanError::ConnectionClosed)),
                        Some(frame) => match frame.map_err(err)? {
                            WorkerFrame::Packet(pkt) => pkt,
                            WorkerFrame::Oversized(big) => {
                                if self.refuse(big, &mut conn, outage).await? {
                                    grabs = grabs.saturating_sub(1);
                                }
                                continue;
                            }
                        },
                    };
                    match pkt.ptype {
                        PacketType::JobAssignUniq if pkt.args.len() == 4 => {
                            outage.ended();
                            grabs = grabs.saturating_sub(1);
                            depth = (depth * 2).min(MAX_GRABS_IN_FLIGHT);
                            running += 1;
                            self.start_job(pkt, done_tx.clone());
                        }
                        PacketType::NoJob => {
                            outage.ended();
                            grabs = grabs.saturating_sub(1);
                            empty = true;
                        }
                        PacketType::Noop => sleeping = false,
                        // e.g. an answer for a job gearmand no longer knows:
                        // nothing to undo, the connection is still good.
                        PacketType::Error => tracing::warn!(
                            gearmand = %server,
                            error = %String::from_utf8_lossy(pkt.arg(1).map_or(&b""[..], |b| b)),
                            "gearmand answered ERROR"
                        ),
                        other => tracing::debug!(gearmand = %server, packet = ?other, "ignoring packet"),
                    }
                }
            }
        }
    }

    /// Answers a packet over [`MAX_PACKET`]: a job is refused as
    /// [`WorkResult::FailWith`] would (WORK_WARNING with the reason, then
    /// WORK_FAIL); anything else is ignored. Returns whether it was a job
    /// (the answer to our grab); Err for a job without a handle.
    async fn refuse(
        &self,
        big: Oversized,
        conn: &mut Framed<TcpStream, WorkerCodec>,
        outage: &Outage,
    ) -> Result<bool> {
        let server = self.server;
        let assignment = matches!(
            big.ptype,
            PacketType::JobAssign | PacketType::JobAssignUniq | PacketType::JobAssignAll
        );
        if !assignment {
            tracing::warn!(gearmand = %server, packet = ?big.ptype, bytes = big.len, "ignoring a packet over the size limit");
            return Ok(false);
        }
        // Without its handle the job cannot be answered: malformed, as any
        // packet the codec refuses, and so is the connection.
        let Some(handle) = big.fields.first().filter(|h| !h.is_empty()).cloned() else {
            return Err(Error::GearmanProtocol {
                server: server.to_string(),
                what: format!("{:?} of {} bytes without a handle", big.ptype, big.len),
            });
        };
        outage.ended();
        let reason = big.refusal();
        tracing::warn!(
            gearmand = %server,
            function = %big.fields.get(1).map_or(&b""[..], |f| f).escape_ascii(),
            bytes = big.len,
            "refusing a job over the size limit: {reason}"
        );
        for pkt in [
            req(
                PacketType::WorkWarning,
                vec![handle.clone(), Bytes::from(reason)],
            ),
            req(PacketType::WorkFail, vec![handle]),
        ] {
            conn.feed(pkt).await.map_err(|e| gearman_err(server, e))?;
        }
        Ok(true)
    }

    /// Runs one job in a task of its own; its answer comes back on `done`.
    /// A handler that panics answers WORK_FAIL, so its slot is not lost.
    fn start_job(&self, pkt: Packet, done: tokio::sync::mpsc::Sender<Vec<Packet>>) {
        use futures::FutureExt as _;
        let unique = pkt.arg_str(2).filter(|u| !u.is_empty()).map(str::to_string);
        let assignment = Assignment {
            handle: pkt.args[0].clone(),
            function: pkt.arg_str(1).unwrap_or_default().to_string(),
            unique,
            data: pkt.args[3].clone(),
        };
        let handle = assignment.handle.clone();
        let work = std::panic::AssertUnwindSafe((self.handler)(assignment)).catch_unwind();
        tokio::spawn(async move {
            let answer = match work.await {
                Ok(WorkResult::Complete(result)) => {
                    vec![req(PacketType::WorkComplete, vec![handle, result])]
                }
                // Not WORK_EXCEPTION: gearmand 1.1 ends the job on it but
                // tells only clients that asked for exceptions, so any other
                // client would wait forever. Every client gets WORK_WARNING.
                Ok(WorkResult::FailWith(message)) => vec![
                    req(PacketType::WorkWarning, vec![handle.clone(), message]),
                    req(PacketType::WorkFail, vec![handle]),
                ],
                Ok(WorkResult::Fail) => vec![req(PacketType::WorkFail, vec![handle])],
                Err(_) => {
                    tracing::error!("job handler panicked; answering WORK_FAIL");
                    vec![req(PacketType::WorkFail, vec![handle])]
                }
            };
            // The connection may be gone; gearmand then reassigns the job.
            let _ = done.send(answer).await;
        });
    }
}

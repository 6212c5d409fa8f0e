//! Our one door to gearmand: background submits, a worker loop, and the
//! admin `status` query.
//!
//! Built on the `gearman` crate's codec and packet types, over sockets we
//! open ourselves with TCP_NODELAY. The crate 0.2.0 never sets it, and its
//! request/response traffic then stalls ~40 ms per exchange (Nagle against
//! delayed ACK: 45 jobs/s instead of thousands); this module is the one
//! place that works around it. Its admin client is used as it is, on a
//! socket of ours.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearman::protocol::{GearmanCodec, Packet, PacketType};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::outage::Outage;

/// How long a connect to gearmand may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long gearmand may take to answer a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// gearmand refuses unique ids longer than this (GEARMAN_MAX_UNIQUE_SIZE).
pub const MAX_GEARMAN_UNIQUE: usize = 64;

type Conn = Framed<TcpStream, GearmanCodec>;

fn gearman_err(server: &str, source: gearman::GearmanError) -> Error {
    Error::Gearman {
        server: server.to_string(),
        source,
    }
}

fn io_err(server: &str, err: std::io::Error) -> Error {
    gearman_err(server, gearman::GearmanError::Io(err))
}

async fn connect_stream(server: &str) -> Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
        .await
        .map_err(|_| gearman_err(server, gearman::GearmanError::Timeout))?
        .map_err(|e| io_err(server, e))?;
    stream.set_nodelay(true).map_err(|e| io_err(server, e))?;
    Ok(stream)
}

async fn connect(server: &str) -> Result<Conn> {
    Ok(Framed::new(
        connect_stream(server).await?,
        GearmanCodec::new(),
    ))
}

async fn recv(conn: &mut Conn, server: &str) -> Result<Packet> {
    match tokio::time::timeout(REPLY_TIMEOUT, conn.next()).await {
        Err(_) => Err(gearman_err(server, gearman::GearmanError::Timeout)),
        Ok(None) => Err(gearman_err(server, gearman::GearmanError::ConnectionClosed)),
        Ok(Some(pkt)) => pkt.map_err(|e| gearman_err(server, e)),
    }
}

fn req(ptype: PacketType, args: Vec<Bytes>) -> Packet {
    Packet::request(ptype, args)
}

/// The Gearman unique id for a job's unique key: the key itself, or none
/// when gearmand cannot take it (the database still dedups): too long, or
/// holding a NUL byte, which ends a field in the Gearman protocol and
/// would make the rest of the key the start of the workload.
pub fn gearman_unique(uniqkey: Option<&str>) -> &str {
    match uniqkey {
        Some(k) if k.len() <= MAX_GEARMAN_UNIQUE && !k.contains('\0') => k,
        _ => "",
    }
}

/// One background job to submit.
#[derive(Debug, Clone)]
pub struct BackgroundJob {
    /// The Gearman function.
    pub function: String,
    /// The Gearman unique id ("" for none).
    pub unique: String,
    /// The workload.
    pub data: Bytes,
}

/// Submits background jobs to a set of gearmand servers, pipelined: a
/// batch is written at once and its answers read after, so a batch costs
/// one round trip, not one per job.
pub struct Submitter {
    servers: Vec<String>,
    conns: Vec<Option<Conn>>,
    next: usize,
    outage: Outage,
}

impl Submitter {
    /// A submitter for `servers`; it connects on first use and reconnects
    /// after failures.
    pub fn new(servers: Vec<String>) -> Submitter {
        let conns = servers.iter().map(|_| None).collect();
        Submitter {
            servers,
            conns,
            next: 0,
            outage: Outage::new("gearmand unreachable for submits"),
        }
    }

    /// Submits `jobs` as background jobs. Returns, per job in order,
    /// whether gearmand acknowledged it (JOB_CREATED). A batch goes to one
    /// server, chosen in turn; what it does not acknowledge is tried on the
    /// next, until every server has been tried.
    pub async fn submit(&mut self, jobs: &[BackgroundJob]) -> Vec<bool> {
        let mut acked = vec![false; jobs.len()];
        let start = self.next;
        self.next = (self.next + 1) % self.servers.len();
        for k in 0..self.servers.len() {
            let pending: Vec<usize> = (0..jobs.len()).filter(|&i| !acked[i]).collect();
            if pending.is_empty() {
                break;
            }
            let s = (start + k) % self.servers.len();
            match self.submit_to(s, jobs, &pending, &mut acked).await {
                Ok(()) => self.outage.ended(),
                Err(err) => {
                    self.conns[s] = None;
                    self.outage.failed(&err);
                }
            }
        }
        acked
    }

    async fn submit_to(
        &mut self,
        s: usize,
        jobs: &[BackgroundJob],
        pending: &[usize],
        acked: &mut [bool],
    ) -> Result<()> {
        let server = self.servers[s].clone();
        if self.conns[s].is_none() {
            self.conns[s] = Some(connect(&server).await?);
        }
        let conn = self.conns[s].as_mut().expect("connected above");
        for &i in pending {
            let job = &jobs[i];
            let pkt = req(
                PacketType::SubmitJobBg,
                vec![
                    Bytes::copy_from_slice(job.function.as_bytes()),
                    Bytes::copy_from_slice(job.unique.as_bytes()),
                    job.data.clone(),
                ],
            );
            conn.feed(pkt).await.map_err(|e| gearman_err(&server, e))?;
        }
        conn.flush().await.map_err(|e| gearman_err(&server, e))?;
        // gearmand answers a connection's requests in order.
        for &i in pending {
            let pkt = recv(conn, &server).await?;
            match pkt.ptype {
                PacketType::JobCreated => acked[i] = true,
                PacketType::Error => {
                    tracing::warn!(
                        gearmand = %server,
                        funcname = %jobs[i].function,
                        code = %String::from_utf8_lossy(pkt.arg(0).map_or(&b""[..], |b| b)),
                        text = %String::from_utf8_lossy(pkt.arg(1).map_or(&b""[..], |b| b)),
                        "gearmand refused a job"
                    );
                }
                other => {
                    return Err(Error::GearmanProtocol {
                        server,
                        what: format!("{other:?} in answer to SUBMIT_JOB_BG"),
                    })
                }
            }
        }
        Ok(())
    }
}

/// Jobs and workers of one function, summed over the servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionLoad {
    /// Jobs queued or running.
    pub queued: u64,
    /// Jobs running.
    pub running: u64,
    /// Workers registered.
    pub workers: u64,
}

/// Jobs and workers per function on one server, from the admin `status`
/// command, in the order the server lists them.
pub async fn server_status(server: &str) -> Result<Vec<(String, FunctionLoad)>> {
    let mut admin = gearman::admin::AdminClient::from_stream(connect_stream(server).await?);
    let rows = tokio::time::timeout(REPLY_TIMEOUT, admin.status())
        .await
        .map_err(|_| gearman_err(server, gearman::GearmanError::Timeout))?
        .map_err(|e| gearman_err(server, e))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let load = FunctionLoad {
                queued: row.total,
                running: row.running,
                workers: row.worker_count,
            };
            (row.function, load)
        })
        .collect())
}

/// Jobs and workers per function, summed over `servers`, from the admin
/// `status` command. A server that does not answer is left out and named
/// in the error list.
pub async fn function_status(servers: &[String]) -> (HashMap<String, FunctionLoad>, Vec<Error>) {
    let mut load: HashMap<String, FunctionLoad> = HashMap::new();
    let mut errors = Vec::new();
    for server in servers {
        match server_status(server).await {
            Ok(rows) => {
                for (function, row) in rows {
                    let l = load.entry(function).or_default();
                    l.queued += row.queued;
                    l.running += row.running;
                    l.workers += row.workers;
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (load, errors)
}

/// Queue depth (queued + running jobs) per function, summed over `servers`;
/// see [`function_status`].
pub async fn queue_depths(servers: &[String]) -> (HashMap<String, u64>, Vec<Error>) {
    let (load, errors) = function_status(servers).await;
    (
        load.into_iter().map(|(f, l)| (f, l.queued)).collect(),
        errors,
    )
}

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

/// How long a worker waits, after shutdown, for the jobs in hand.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `function` on every server with up to `concurrency` jobs running
/// at once per server, until `shutdown`. Jobs are spread over a few
/// connections, each holding several jobs at once (gearmand assigns a
/// connection as many jobs as it grabs). On shutdown no new job is grabbed,
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
    let connections = concurrency.min(MAX_WORKER_CONNECTIONS);
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
                };
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
        let mut conn = connect(server).await?;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Vec<Packet>>(self.slots);
        let mut running = 0usize;
        let mut grabbing = false;
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
            // One grab at a time: a NO_JOB answer then means what it says.
            if !stopping && !grabbing && !sleeping && running < self.slots {
                conn.feed(req(PacketType::GrabJobUniq, vec![]))
                    .await
                    .map_err(err)?;
                grabbing = true;
            }
            conn.flush().await.map_err(err)?;
            if stopping && running == 0 && !grabbing {
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
                    running -= 1;
                    for pkt in answer {
                        conn.feed(pkt).await.map_err(err)?;
                    }
                }
                pkt = conn.next() => {
                    let pkt = match pkt {
                        None => return Err(err(gearman::GearmanError::ConnectionClosed)),
                        Some(pkt) => pkt.map_err(err)?,
                    };
                    match pkt.ptype {
                        PacketType::JobAssignUniq if pkt.args.len() == 4 => {
                            outage.ended();
                            grabbing = false;
                            running += 1;
                            self.start_job(pkt, done_tx.clone());
                        }
                        PacketType::NoJob => {
                            outage.ended();
                            grabbing = false;
                            if !stopping {
                                conn.feed(req(PacketType::PreSleep, vec![])).await.map_err(err)?;
                                sleeping = true;
                            }
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

type Waiter = oneshot::Sender<Result<Outcome>>;

struct Submit {
    function: String,
    unique: String,
    data: Bytes,
    reply: Waiter,
}

/// Submits foreground jobs and waits for their outcome. Many jobs share
/// one connection per server (jobs go to the servers in turn); each
/// connection has a task of its own, started on first use and again after
/// a failure. A job whose connection is lost before it ends gets an error:
/// its outcome is unknown.
#[derive(Clone)]
pub struct ForegroundClient {
    lanes: Arc<Vec<mpsc::Sender<Submit>>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

/// Foreground submits queued per connection before callers wait.
const FOREGROUND_QUEUE: usize = 1024;

impl ForegroundClient {
    /// A client for `servers`. Must be called within a Tokio runtime.
    pub fn new(servers: Vec<String>) -> ForegroundClient {
        let lanes = servers
            .into_iter()
            .map(|server| {
                let (tx, rx) = mpsc::channel(FOREGROUND_QUEUE);
                tokio::spawn(foreground_lane(server, rx));
                tx
            })
            .collect();
        ForegroundClient {
            lanes: Arc::new(lanes),
            next: Default::default(),
        }
    }

    /// Submits a foreground job and waits until a worker ends it.
    pub async fn submit(&self, function: &str, unique: &str, data: Bytes) -> Result<Outcome> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lane = &self.lanes[n % self.lanes.len()];
        let (reply, answer) = oneshot::channel();
        let submit = Submit {
            function: function.to_string(),
            unique: unique.to_string(),
            data,
            reply,
        };
        let gone = || Error::GearmanProtocol {
            server: "(client)".into(),
            what: "shutdown of the foreground client".into(),
        };
        lane.send(submit).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// One server's connection for foreground jobs: submits go out as they
/// come; JOB_CREATED answers arrive in submit order and tie each waiter to
/// its handle; WORK_* packets then end the job with that handle.
async fn foreground_lane(server: String, mut rx: mpsc::Receiver<Submit>) {
    let outage = Outage::new("gearmand unreachable for foreground jobs");
    while let Some(first) = rx.recv().await {
        let mut conn = match connect_foreground(&server).await {
            Ok(conn) => conn,
            Err(err) => {
                outage.failed(&err);
                let _ = first.reply.send(Err(err));
                // Fail what queued up meanwhile rather than make it wait.
                while let Ok(s) = rx.try_recv() {
                    let _ = s.reply.send(Err(gearman_err(
                        &server,
                        gearman::GearmanError::NoServersAvailable,
                    )));
                }
                tokio::time::sleep(outage.delay()).await;
                continue;
            }
        };
        outage.ended();
        let mut created: VecDeque<Waiter> = VecDeque::new();
        let mut running: HashMap<Bytes, Vec<Waiter>> = HashMap::new();
        let mut warnings: HashMap<Bytes, Bytes> = HashMap::new();
        let mut next = Some(first);
        let mut closed = false;
        let failure = loop {
            if closed && created.is_empty() && running.is_empty() {
                return;
            }
            if let Some(s) = next.take() {
                let pkt = req(
                    PacketType::SubmitJob,
                    vec![Bytes::from(s.function), Bytes::from(s.unique), s.data],
                );
                if let Err(e) = conn.feed(pkt).await {
                    let _ = s.reply.send(Err(gearman_err(
                        &server,
                        gearman::GearmanError::ConnectionClosed,
                    )));
                    break gearman_err(&server, e);
                }
                created.push_back(s.reply);
                // Take whatever else is queued before the one flush.
                while let Ok(s) = rx.try_recv() {
                    let pkt = req(
                        PacketType::SubmitJob,
                        vec![Bytes::from(s.function), Bytes::from(s.unique), s.data],
                    );
                    if conn.feed(pkt).await.is_err() {
                        let _ = s.reply.send(Err(gearman_err(
                            &server,
                            gearman::GearmanError::ConnectionClosed,
                        )));
                        break;
                    }
                    created.push_back(s.reply);
                }
                if let Err(e) = conn.flush().await {
                    break gearman_err(&server, e);
                }
            }
            tokio::select! {
                s = rx.recv(), if !closed => match s {
                    Some(s) => next = Some(s),
                    None => closed = true,
                },
                pkt = conn.next() => {
                    let pkt = match pkt {
                        None => break gearman_err(&server, gearman::GearmanError::ConnectionClosed),
                        Some(Err(e)) => break gearman_err(&server, e),
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
                            Some(w) => running.entry(handle).or_default().push(w),
                            None => break Error::GearmanProtocol { server: server.clone(), what: "JOB_CREATED with no submit".into() },
                        },
                        PacketType::Error => match created.pop_front() {
                            Some(w) => {
                                let text = String::from_utf8_lossy(pkt.arg(1).map_or(&b""[..], |b| b)).into_owned();
                                let _ = w.send(Err(Error::GearmanProtocol { server: server.clone(), what: format!("ERROR {text}") }));
                            }
                            None => break Error::GearmanProtocol { server: server.clone(), what: "ERROR with no submit".into() },
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
        outage.failed(&failure);
        let lost = || gearman_err(&server, gearman::GearmanError::ConnectionClosed);
        for w in created.into_iter().chain(running.into_values().flatten()) {
            let _ = w.send(Err(lost()));
        }
    }
}

/// A connection for foreground jobs that asked to be told of exceptions.
async fn connect_foreground(server: &str) -> Result<Conn> {
    let mut conn = connect(server).await?;
    conn.send(req(
        PacketType::OptionReq,
        vec![Bytes::from_static(b"exceptions")],
    ))
    .await
    .map_err(|e| gearman_err(server, e))?;
    let pkt = recv(&mut conn, server).await?;
    if pkt.ptype != PacketType::OptionRes {
        return Err(Error::GearmanProtocol {
            server: server.to_string(),
            what: format!("{:?} in answer to OPTION_REQ exceptions", pkt.ptype),
        });
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_keys_gearmand_cannot_take_are_not_sent() {
        assert_eq!(gearman_unique(Some("k")), "k");
        assert_eq!(gearman_unique(None), "");
        assert_eq!(gearman_unique(Some(&"k".repeat(65))), "");
        assert_eq!(
            gearman_unique(Some("k\0rest")),
            "",
            "a NUL would end the field"
        );
    }
}

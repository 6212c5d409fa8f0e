//! Our one door to gearmand: background submits, a worker loop, and the
//! admin `status` query.
//!
//! Built on the `gearman` crate's codec and packet types, over sockets we
//! open ourselves with TCP_NODELAY. The crate 0.2.0 never sets it, and its
//! request/response traffic then stalls ~40 ms per exchange (Nagle against
//! delayed ACK: 45 jobs/s instead of thousands); this module is the one
//! place that works around it. Its admin client is used as it is, on a
//! socket of ours.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearman::protocol::{GearmanCodec, Packet, PacketType};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

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
/// when gearmand would refuse it as too long (the database still dedups).
pub fn gearman_unique(uniqkey: Option<&str>) -> &str {
    match uniqkey {
        Some(k) if k.len() <= MAX_GEARMAN_UNIQUE => k,
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

/// Queue depth (queued + running jobs) per function, summed over `servers`,
/// from the admin `status` command. A server that does not answer is left
/// out and named in the error list.
pub async fn queue_depths(servers: &[String]) -> (HashMap<String, u64>, Vec<Error>) {
    let mut depths = HashMap::new();
    let mut errors = Vec::new();
    for server in servers {
        let status = async {
            let mut admin = gearman::admin::AdminClient::from_stream(connect_stream(server).await?);
            tokio::time::timeout(REPLY_TIMEOUT, admin.status())
                .await
                .map_err(|_| gearman_err(server, gearman::GearmanError::Timeout))?
                .map_err(|e| gearman_err(server, e))
        };
        match status.await {
            Ok(rows) => {
                for row in rows {
                    *depths.entry(row.function).or_insert(0) += row.total;
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (depths, errors)
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
}

/// Serves `function` on every server, `concurrency` jobs at a time per
/// server (one connection each), until `shutdown`. A job in hand is
/// finished before its connection stops. Lost connections are retried
/// with capped, jittered backoff; an outage is logged once.
pub async fn serve<H, F>(
    servers: Vec<String>,
    function: String,
    concurrency: usize,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Assignment) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = WorkResult> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for server in servers {
        for _ in 0..concurrency.max(1) {
            let (server, function, handler, shutdown) = (
                server.clone(),
                function.clone(),
                handler.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                let mut outage = Outage::new("gearmand unreachable for worker");
                while !shutdown.is_cancelled() {
                    match work_session(&server, &function, &handler, &shutdown, &mut outage).await {
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

/// One worker connection's life: returns Ok on shutdown, Err when the
/// connection is lost.
async fn work_session<H, F>(
    server: &str,
    function: &str,
    handler: &H,
    shutdown: &CancellationToken,
    outage: &mut Outage,
) -> Result<()>
where
    H: Fn(Assignment) -> F,
    F: Future<Output = WorkResult>,
{
    let mut conn = connect(server).await?;
    conn.send(req(
        PacketType::CanDo,
        vec![Bytes::copy_from_slice(function.as_bytes())],
    ))
    .await
    .map_err(|e| gearman_err(server, e))?;
    conn.send(req(PacketType::GrabJobUniq, vec![]))
        .await
        .map_err(|e| gearman_err(server, e))?;
    outage.ended();
    loop {
        let pkt = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            pkt = conn.next() => match pkt {
                None => return Err(gearman_err(server, gearman::GearmanError::ConnectionClosed)),
                Some(pkt) => pkt.map_err(|e| gearman_err(server, e))?,
            },
        };
        match pkt.ptype {
            PacketType::JobAssignUniq => {
                let unique = pkt.arg_str(2).filter(|u| !u.is_empty()).map(str::to_string);
                let assignment = Assignment {
                    handle: pkt.args[0].clone(),
                    function: pkt.arg_str(1).unwrap_or_default().to_string(),
                    unique,
                    data: pkt.args[3].clone(),
                };
                let handle = assignment.handle.clone();
                let answer = match handler(assignment).await {
                    WorkResult::Complete(result) => {
                        req(PacketType::WorkComplete, vec![handle, result])
                    }
                    WorkResult::Fail => req(PacketType::WorkFail, vec![handle]),
                };
                conn.feed(answer)
                    .await
                    .map_err(|e| gearman_err(server, e))?;
                if shutdown.is_cancelled() {
                    conn.flush().await.map_err(|e| gearman_err(server, e))?;
                    return Ok(());
                }
                conn.feed(req(PacketType::GrabJobUniq, vec![]))
                    .await
                    .map_err(|e| gearman_err(server, e))?;
                conn.flush().await.map_err(|e| gearman_err(server, e))?;
            }
            PacketType::NoJob => conn
                .send(req(PacketType::PreSleep, vec![]))
                .await
                .map_err(|e| gearman_err(server, e))?,
            PacketType::Noop => conn
                .send(req(PacketType::GrabJobUniq, vec![]))
                .await
                .map_err(|e| gearman_err(server, e))?,
            PacketType::Error => {
                return Err(Error::GearmanProtocol {
                    server: server.to_string(),
                    what: format!(
                        "ERROR {}",
                        String::from_utf8_lossy(pkt.arg(1).map_or(&b""[..], |b| b))
                    ),
                })
            }
            other => tracing::debug!(gearmand = %server, packet = ?other, "ignoring packet"),
        }
    }
}

/// Tracks one outage of a remote service: logs its start once and its end
/// once, and gives the next retry delay (exponential, capped, jittered).
pub struct Outage {
    what: &'static str,
    failures: u32,
}

/// First retry delay after a failure.
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const RETRY_CAP: Duration = Duration::from_secs(5);

impl Outage {
    /// A tracker whose log lines say `what`.
    pub fn new(what: &'static str) -> Outage {
        Outage { what, failures: 0 }
    }

    /// Records a failure; the first one of an outage is logged.
    pub fn failed(&mut self, err: &Error) {
        if self.failures == 0 {
            tracing::warn!(error = %err, "{}", self.what);
        } else {
            tracing::debug!(error = %err, failures = self.failures, "{}", self.what);
        }
        self.failures = self.failures.saturating_add(1);
    }

    /// Records a success; ends the outage if there was one.
    pub fn ended(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "{}: recovered", self.what);
            self.failures = 0;
        }
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.failures > 0
    }

    /// How long to wait before the next try: doubling from
    /// [`RETRY_BASE`], at most [`RETRY_CAP`], with up to 50 % jitter so
    /// that many processes do not retry in step.
    pub fn delay(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        let full = RETRY_BASE.saturating_mul(1 << exp).min(RETRY_CAP);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_stays_under_the_cap() {
        let mut o = Outage::new("test");
        let err = Error::NoGearmand;
        o.failed(&err);
        assert!(o.delay() <= RETRY_BASE);
        for _ in 0..40 {
            o.failed(&err);
        }
        let d = o.delay();
        assert!(d <= RETRY_CAP && d >= RETRY_CAP / 2, "{d:?}");
        o.ended();
        assert!(!o.is_down());
    }

    #[test]
    fn long_unique_keys_are_not_sent_to_gearmand() {
        assert_eq!(gearman_unique(Some("k")), "k");
        assert_eq!(gearman_unique(None), "");
        assert_eq!(gearman_unique(Some(&"k".repeat(65))), "");
    }
}

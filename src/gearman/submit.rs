//! Background submits, pipelined: [`Submitter`].

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::SinkExt;
use gearman::protocol::PacketType;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::conn::{connect, gearman_err, recv, req, Conn};
use super::health::{any_live, Health, Probe};
use super::{FunctionLoad, StatusReader};
use crate::error::{Error, Result};
use crate::job::Priority;

/// One background job to submit.
#[derive(Debug, Clone)]
pub struct BackgroundJob {
    /// The Gearman function.
    pub function: String,
    /// The Gearman unique id ("" for none).
    pub unique: String,
    /// The workload.
    pub data: Bytes,
    /// Its place in gearmand's queue of the function: a high job goes
    /// before the normal and low ones waiting there.
    pub priority: Priority,
}

/// Submits background jobs to a set of gearmand servers, pipelined: a
/// batch is written at once and its answers read after, so a batch costs
/// one round trip, not one per job.
///
/// A server that fails is skipped while another is live (see the module
/// docs): one dead server of several costs the batch that found it dead,
/// not every other batch.
pub struct Submitter {
    servers: Vec<Arc<Health>>,
    conns: Vec<Option<Conn>>,
    next: usize,
    status: StatusReader,
    /// Ends the probes of servers that failed.
    stop: CancellationToken,
    _stop: DropGuard,
}

impl Submitter {
    /// A submitter for `servers`; it connects on first use and reconnects
    /// after failures.
    pub fn new(servers: Vec<String>) -> Submitter {
        let conns = servers.iter().map(|_| None).collect();
        let stop = CancellationToken::new();
        Submitter {
            status: StatusReader::new(servers.clone()),
            servers: servers
                .into_iter()
                .map(|s| Health::new(s, "gearmand unreachable for submits"))
                .collect(),
            conns,
            next: 0,
            _stop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// Submits `jobs` as background jobs. Returns, per job in order,
    /// whether gearmand acknowledged it (JOB_CREATED). A batch goes to one
    /// live server, chosen in turn; what it does not acknowledge is tried
    /// on the next live one, until every live server has been tried. Down
    /// servers are tried only when no server is live (any more).
    pub async fn submit(&mut self, jobs: &[BackgroundJob]) -> Vec<bool> {
        let mut acked = vec![false; jobs.len()];
        let count = self.servers.len();
        if count == 0 {
            return acked;
        }
        let start = self.next;
        self.next = (self.next + 1) % count;
        let mut tried = vec![false; count];
        for live_only in [true, false] {
            if !live_only && any_live(&self.servers) {
                break;
            }
            for k in 0..count {
                let s = (start + k) % count;
                if tried[s] || (live_only && !self.servers[s].is_live()) {
                    continue;
                }
                let pending: Vec<usize> = (0..jobs.len()).filter(|&i| !acked[i]).collect();
                if pending.is_empty() {
                    return acked;
                }
                tried[s] = true;
                match self.submit_to(s, jobs, &pending, &mut acked).await {
                    Ok(()) => self.servers[s].answered(),
                    Err(err) => {
                        self.conns[s] = None;
                        self.servers[s].failed(&err);
                        self.servers[s].probe_in_background(Probe::Echo, &self.stop);
                    }
                }
            }
        }
        acked
    }

    /// Jobs and workers per function over the servers, as
    /// [`StatusReader::function_status`] reads them.
    pub async fn function_status(&self) -> (HashMap<String, FunctionLoad>, Vec<Error>) {
        self.status.function_status().await
    }

    async fn submit_to(
        &mut self,
        s: usize,
        jobs: &[BackgroundJob],
        pending: &[usize],
        acked: &mut [bool],
    ) -> Result<()> {
        let server = self.servers[s].server.clone();
        if self.conns[s].is_none() {
            self.conns[s] = Some(connect(&server).await?);
        }
        let conn = self.conns[s].as_mut().expect("connected above");
        for &i in pending {
            let job = &jobs[i];
            let kind = match job.priority {
                Priority::High => PacketType::SubmitJobHighBg,
                Priority::Normal => PacketType::SubmitJobBg,
                Priority::Low => PacketType::SubmitJobLowBg,
            };
            let pkt = req(
                kind,
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

//! Per-server health: live until a call fails, then skipped while another
//! server is live, until a probe in the background finds it answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gearman::protocol::PacketType;
use tokio_util::sync::CancellationToken;

use super::conn::{connect_asking, gearman_err, io_err};
use super::{server_status, CONNECT_TIMEOUT};
use crate::error::{Error, Result};
use crate::outage::Outage;

/// How long a probe of a server that failed may take to connect and be
/// answered.
const PROBE_TIMEOUT: Duration = CONNECT_TIMEOUT;

/// What a server that is skipped while down answers.
pub(super) fn skipped(server: &str) -> Error {
    io_err(
        server,
        std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "down since a call failed; skipped until it answers again",
        ),
    )
}

/// One gearmand server as one client sees it. Live until a call to it
/// fails; then down, skipped by new work while another server is live,
/// until it answers again (a probe, or a call made because every server
/// was down). Its outage tracker is its own.
pub(super) struct Health {
    pub(super) server: String,
    pub(super) outage: Outage,
    live: AtomicBool,
    /// A probe task is out for it.
    probing: AtomicBool,
}

impl Health {
    pub(super) fn new(server: String, what: &'static str) -> Arc<Health> {
        Health::with_outage(server.clone(), Outage::new(what).about(server))
    }

    pub(super) fn with_outage(server: String, outage: Outage) -> Arc<Health> {
        Arc::new(Health {
            server,
            outage,
            live: AtomicBool::new(true),
            probing: AtomicBool::new(false),
        })
    }

    pub(super) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The server answered: it takes new work (again).
    pub(super) fn answered(&self) {
        self.live.store(true, Ordering::Release);
        self.outage.ended();
    }

    /// A call to the server failed: new work skips it while another
    /// server is live.
    pub(super) fn failed(&self, err: &Error) {
        self.live.store(false, Ordering::Release);
        self.outage.failed(err);
    }

    /// Probes the server in a task of its own, with capped, jittered
    /// backoff, until it answers (it is live again) or `stop`. One probe
    /// at a time; none outside a Tokio runtime (the server then comes back
    /// when a call finds every server down and tries it).
    pub(super) fn probe_in_background(self: &Arc<Self>, probe: Probe, stop: &CancellationToken) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, stop) = (self.clone(), stop.clone());
        runtime.spawn(async move {
            loop {
                while !me.is_live() {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            me.probing.store(false, Ordering::Release);
                            return;
                        }
                        _ = tokio::time::sleep(me.outage.delay()) => {}
                    }
                    // A call may have found it back meanwhile.
                    if me.is_live() {
                        break;
                    }
                    match probe.run(&me.server).await {
                        Ok(()) => me.answered(),
                        Err(err) => me.failed(&err),
                    }
                }
                me.probing.store(false, Ordering::Release);
                // A failure recorded just now saw this probe still out.
                if me.is_live() || me.probing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }
}

/// Whether any of `servers` is live.
pub(super) fn any_live(servers: &[Arc<Health>]) -> bool {
    servers.iter().any(|h| h.is_live())
}

/// How a server that failed is tried again in the background.
#[derive(Debug, Clone, Copy)]
pub(super) enum Probe {
    /// Connect and ECHO: the server takes requests.
    Echo,
    /// Read its `status`.
    Status,
}

impl Probe {
    async fn run(self, server: &str) -> Result<()> {
        match self {
            Probe::Echo => tokio::time::timeout(PROBE_TIMEOUT, echo(server))
                .await
                .map_err(|_| gearman_err(server, gearman::GearmanError::Timeout))?,
            Probe::Status => server_status(server).await.map(drop),
        }
    }
}

/// One ECHO round trip on a new connection.
async fn echo(server: &str) -> Result<()> {
    connect_asking(
        server,
        PacketType::EchoReq,
        b"garivini",
        PacketType::EchoRes,
    )
    .await?;
    Ok(())
}

//! The web role's connections, served by hyper's HTTP/1 server, so that a
//! slow or idle client cannot hold what the process needs:
//!
//! - **Header-read and idle timeout**: a connection must send a whole
//!   request head within [`Config::header_timeout`](super::Config) of
//!   opening, or of its last answer on a kept-alive connection; else it is
//!   closed (hyper's `header_read_timeout`, which covers both). The request
//!   timeout starts after that, once the head is in.
//! - **A cap on open connections** ([`connection_cap`]: the file limit less
//!   [`RESERVED_FILES`] for the roles' database and gearmand connections in
//!   the same process). At the cap, a new connection is accepted and the
//!   oldest connection with no request in hand (one still sending its head,
//!   or idle) is closed to make room: a flood of slow clients then keeps
//!   losing its oldest connections, while a new client (a health check, an
//!   operator) is answered at once. Leaving new connections in the kernel's
//!   backlog instead would queue them behind the slow ones until a timeout;
//!   closing the new one would refuse exactly the clients that behave. Only
//!   when every open connection has a request in hand is the new one
//!   closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// Files left to the rest of the process (database pools, gearmand, logs,
/// the metrics endpoint) when the web connections are capped.
pub const RESERVED_FILES: u64 = 256;
/// Most open web connections, however high the file limit.
pub const MAX_CONNECTIONS: usize = 10_000;
/// How long a connection may take to send a request head, from its
/// opening or its last answer.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The cap on open web connections for a process allowed `file_limit`
/// open files: the limit less [`RESERVED_FILES`] (half the limit if that
/// leaves less than half), at most [`MAX_CONNECTIONS`], at least 1.
pub fn connection_cap(file_limit: u64) -> usize {
    let room = if file_limit >= 2 * RESERVED_FILES {
        file_limit - RESERVED_FILES
    } else {
        file_limit / 2
    };
    usize::try_from(room)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(1, MAX_CONNECTIONS)
}

/// One open connection: how many requests it has in hand, and how to
/// close it.
struct Open {
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Open>,
}

impl Table {
    /// Room for one more under `cap`: closes the oldest connection with no
    /// request in hand if needed. `false`: every one is busy.
    fn make_room(&mut self, cap: usize) -> bool {
        if self.open.len() < cap {
            return true;
        }
        let idle = self
            .open
            .iter()
            .find(|(_, o)| o.busy.load(Ordering::SeqCst) == 0)
            .map(|(id, _)| *id);
        match idle.and_then(|id| self.open.remove(&id)) {
            Some(open) => {
                open.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// Counts a request in hand on its connection while it lives.
struct InHand(Arc<AtomicUsize>);

impl InHand {
    fn new(busy: &Arc<AtomicUsize>) -> InHand {
        busy.fetch_add(1, Ordering::SeqCst);
        InHand(busy.clone())
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Logs at most one line a minute of a kind, with how many it stands for.
struct Every {
    last: Option<Instant>,
    count: u64,
}

impl Every {
    fn due(&mut self) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets each connection
/// finish the request in hand and returns when all are closed.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    cap: usize,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let table = Arc::new(Mutex::new(Table::default()));
    let tracker = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let (mut accept_errors, mut evictions, mut refusals) = (
        Every {
            last: None,
            count: 0,
        },
        Every {
            last: None,
            count: 0,
        },
        Every {
            last: None,
            count: 0,
        },
    );
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of files or memory: the cap should keep us from it;
                    // wait a little rather than spin.
                    if let Some(n) = accept_errors.due() {
                        tracing::warn!(%err, errors = n, "web: accept error");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (id, busy, close) = {
            let mut table = table.lock().unwrap();
            let full = table.open.len() >= cap;
            if !table.make_room(cap) {
                drop(stream);
                if let Some(n) = refusals.due() {
                    tracing::warn!(
                        cap,
                        refused = n,
                        "web: every connection has a request in hand; new connections closed"
                    );
                }
                continue;
            }
            if full {
                if let Some(n) = evictions.due() {
                    tracing::warn!(
                        cap,
                        closed = n,
                        "web: at the connection cap; the oldest connections without a request closed"
                    );
                }
            }
            let id = table.next;
            table.next += 1;
            let open = Open {
                busy: Arc::new(AtomicUsize::new(0)),
                close: CancellationToken::new(),
            };
            let handles = (id, open.busy.clone(), open.close.clone());
            table.open.insert(id, open);
            handles
        };
        let _ = stream.set_nodelay(true);
        let service = {
            let app = app.clone();
            let busy = busy.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                // Handlers read the peer's address (a change is logged with it).
                request.extensions_mut().insert(ConnectInfo(peer));
                let in_hand = InHand::new(&busy);
                let mut app = app.clone();
                async move {
                    let response = app.call(request).await;
                    drop(in_hand);
                    response
                }
            })
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let table = table.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            tokio::pin!(connection);
            let graceful = tokio::select! {
                _ = connection.as_mut() => false,
                () = close.cancelled() => false,
                () = shutdown.cancelled() => true,
            };
            if graceful {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
            table.lock().unwrap().open.remove(&id);
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// The peer of a request as the handlers see it.
pub(crate) fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_roles() {
        assert_eq!(connection_cap(1024), 768);
        assert_eq!(connection_cap(65_536), MAX_CONNECTIONS);
        assert_eq!(connection_cap(300), 150);
        assert_eq!(connection_cap(0), 1);
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let mut table = Table::default();
        let mut closes = Vec::new();
        for id in 0..3 {
            let open = Open {
                busy: Arc::new(AtomicUsize::new(usize::from(id == 0))),
                close: CancellationToken::new(),
            };
            closes.push(open.close.clone());
            table.open.insert(id, open);
        }
        assert!(table.make_room(3));
        // 0 has a request in hand: 1 goes.
        assert!(!closes[0].is_cancelled() && closes[1].is_cancelled());
        table.open.get(&2).unwrap().busy.store(1, Ordering::SeqCst);
        assert!(table.make_room(3));
        assert!(!table.make_room(2));
    }
}

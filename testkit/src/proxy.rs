//! A TCP proxy in front of a MariaDB that a test can cut, as a crash or
//! a network fault would, without touching the server itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::wait::wait_until;

/// A TCP proxy in front of a MariaDB that the test can cut: while it is
/// down, every open connection is closed and new ones are closed on accept,
/// as a crashed or restarting server would.
pub struct DbProxy {
    /// `127.0.0.1:PORT`, to put in a DSN with [`via`].
    pub addr: String,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DbProxy {
    /// A proxy to `upstream` (host:port), down from the start if `down`.
    pub async fn start(upstream: String, down: bool) -> DbProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let down = Arc::new(AtomicBool::new(down));
        let (cut, _) = watch::channel(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let (down2, cut2, open2) = (down.clone(), cut.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if down2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let mut cut = cut2.subscribe();
                let upstream = upstream.clone();
                let open = open2.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    }
                    drop((client, cut));
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        DbProxy {
            addr,
            down,
            cut,
            open,
            task,
        }
    }

    /// Closes every connection and refuses new ones until `restore`.
    pub async fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
        wait_until(
            Duration::from_secs(10),
            "the proxy to close its connections",
            || async { self.open.load(Ordering::SeqCst) == 0 },
        )
        .await;
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }
}

/// `url` with its host:port replaced by `addr`, and no switch to the
/// server's Unix socket (which would bypass a proxy).
pub fn via(url: &str, addr: &str) -> String {
    let rest = url.strip_prefix("mysql://").expect("a mysql:// URL");
    let (user, hostpath) = match rest.rsplit_once('@') {
        Some((user, hostpath)) => (format!("{user}@"), hostpath),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("mysql://{user}{addr}{path}{sep}prefer_socket=false")
}

/// host:port of a `mysql://user@host:port/db` URL.
pub fn host_port(url: &str) -> String {
    let rest = url.strip_prefix("mysql://").expect("a mysql:// URL");
    let hostpath = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    hostpath.split('/').next().unwrap().to_string()
}

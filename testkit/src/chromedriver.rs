//! A private chromedriver (Debian's `chromium-driver`, installed by
//! `scripts/browser deps`) on a free loopback port, for the browser test;
//! killed on drop. It drives the system's headless Chromium.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{free_port, Proc};

/// The system's Chromium, as Debian installs it.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its flags for a test machine: headless; no sandbox (tests may run as
/// root); no GPU; no shared-memory file (a small /dev/shm).
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

/// How long chromedriver may take to listen.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// A running chromedriver.
pub struct ChromeDriver {
    /// Its WebDriver URL, `http://127.0.0.1:PORT`.
    pub url: String,
    _proc: Proc,
}

impl ChromeDriver {
    /// Starts chromedriver and waits until it listens. Panics, naming
    /// `scripts/browser deps`, when it is not installed or never listens.
    pub async fn start() -> ChromeDriver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver does not start ({e}); run scripts/browser deps")
            });
        let mut proc = Proc::adopt("chromedriver", child);
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            assert!(proc.running(), "chromedriver exited at start");
            assert!(
                started.elapsed() < READY_LIMIT,
                "chromedriver did not listen within {READY_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ChromeDriver {
            url: format!("http://127.0.0.1:{port}"),
            _proc: proc,
        }
    }
}

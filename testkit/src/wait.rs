//! Bounded waits for tests: each panics with what it waited for.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// Waits until `check` returns true, polling; panics with `what` after
/// `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `fut`, panicking with `what` after `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

//! Group commit: requests that arrive while the database is busy are
//! written together. Used for completions (one DELETE for many jobs) and
//! by the Injector (one INSERT transaction for many requests).
//!
//! A request that finds a free slot is flushed at once, after at most
//! `linger`; requests that arrive while `in_flight` flushes are running
//! queue up and go together in the next one. So a lone request is never
//! held back, and under load the number of statements per request drops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

/// How a batcher groups its requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most requests in one flush.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub linger: Duration,
    /// Flushes running at once.
    pub in_flight: usize,
}

/// Starts a batcher task and returns the sender for its requests. `flush`
/// gets each batch and answers its requests (they carry their own reply
/// channels). The task ends when every sender is dropped, after the
/// flushes in hand.
pub(crate) fn spawn<T, F, Fut>(limits: Limits, flush: F) -> mpsc::Sender<T>
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<T>(limits.max_batch * limits.in_flight.max(1));
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
        let flush = Arc::new(flush);
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            if !limits.linger.is_zero() {
                let deadline = tokio::time::Instant::now() + limits.linger;
                while batch.len() < limits.max_batch {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(item) => batch.push(item),
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
            }
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            // Whatever queued up while we waited for a slot joins this batch.
            while batch.len() < limits.max_batch {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let flush = flush.clone();
            tokio::spawn(async move {
                flush(batch).await;
                drop(slot);
            });
        }
        // Wait for the last flushes before the task ends.
        let _ = slots.acquire_many(limits.in_flight.max(1) as u32).await;
    });
    tx
}

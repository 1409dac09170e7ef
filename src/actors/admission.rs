use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ActorError;

/// A bound on the work waiting for or running in the database workers.
/// actix's `SyncArbiter` queue is unbounded, so every message to the pool
/// first takes a permit here. When none frees up within `wait`, the request
/// is rejected as overloaded before anything is sent, so nothing is applied.
#[derive(Clone, Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    capacity: usize,
    wait: Duration,
    rejected: Arc<AtomicU64>,
    waited: Option<Histogram>,
}

/// Proof of admission; dropping it frees the place in the queue.
#[derive(Debug)]
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(capacity: usize, wait: Duration) -> Self {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            wait,
            rejected: Arc::new(AtomicU64::new(0)),
            waited: None,
        }
    }

    /// Admits everything; for tests and tools that need no bound.
    pub fn unbounded() -> Self {
        Self::new(Semaphore::MAX_PERMITS, Duration::ZERO)
    }

    /// Waits up to the configured time for a place in the queue.
    pub async fn admit(&self) -> Result<Ticket, ActorError> {
        let started = Instant::now();
        let permit = Arc::clone(&self.permits).acquire_owned();
        let outcome = tokio::time::timeout(self.wait, permit).await;
        if let Some(waited) = &self.waited {
            waited.observe(started.elapsed().as_secs_f64());
        }

        match outcome {
            Ok(Ok(permit)) => Ok(Ticket { _permit: permit }),
            // The semaphore is never closed, so only the timeout lands here.
            Ok(Err(_)) | Err(_) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(ActorError::Overloaded)
            }
        }
    }

    /// Takes a place at once if one is free, without waiting.
    pub fn try_admit(&self) -> Option<Ticket> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        if let Some(waited) = &self.waited {
            waited.observe(0.0);
        }
        Some(Ticket { _permit: permit })
    }

    /// Requests admitted and not yet finished.
    pub fn in_use(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests rejected because the queue stayed full.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Records every admission wait in `histogram`. Call it before cloning.
    pub fn with_wait_histogram(mut self, histogram: Histogram) -> Self {
        self.waited = Some(histogram);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_rejects_when_full() {
        let admission = Admission::new(2, Duration::from_millis(10));
        let first = admission.admit().await;
        let second = admission.admit().await;
        let third = admission.admit().await;

        assert!(first.is_ok(), "first request admitted");
        assert!(second.is_ok(), "second request admitted");
        assert!(
            matches!(third, Err(ActorError::Overloaded)),
            "third request rejected"
        );
        assert_eq!(admission.in_use(), 2);
        assert_eq!(admission.rejected(), 1);
    }

    #[tokio::test]
    async fn admission_frees_on_drop() {
        let admission = Admission::new(1, Duration::from_millis(10));
        let ticket = admission.admit().await;
        drop(ticket);

        assert!(
            admission.admit().await.is_ok(),
            "a dropped ticket frees its place"
        );
        assert_eq!(admission.in_use(), 0, "the second ticket was dropped too");
    }
}

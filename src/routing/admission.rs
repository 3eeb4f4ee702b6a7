//! Per-model admission at the gateway: `max_concurrent_requests` in flight, as many again
//! waiting for a slot, 429 with `Retry-After` past that. Each model of the routing table
//! owns its limiter, so a reload that keeps a model keeps its queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;

/// Per-model admission: `max` requests in flight, at most `max_waiting` waiting for a slot.
#[derive(Debug)]
pub struct ModelLimiter {
    sem: Arc<Semaphore>,
    max_waiting: usize,
    waiting: AtomicUsize,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ModelLimiter {
    pub fn new(max: usize, max_waiting: usize) -> Self {
        ModelLimiter {
            sem: Arc::new(Semaphore::new(max)),
            max_waiting,
            waiting: AtomicUsize::new(0),
        }
    }

    /// A slot, waiting for one if the queue has room; 429 otherwise.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::overloaded(1));
        }
        let _w = Waiting(&self.waiting);
        self.sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("The gateway is shutting down"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_queues_then_rejects() {
        let l = Arc::new(ModelLimiter::new(1, 1));
        let first = l.acquire().await.unwrap();
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        while l.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let third = l.acquire().await.unwrap_err();
        assert_eq!(third.status.as_u16(), 429);
        assert_eq!(third.retry_after, Some(1));
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(l.waiting.load(Ordering::Acquire), 0);
    }
}

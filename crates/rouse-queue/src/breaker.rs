//! The containerConcurrency breaker: at most `capacity` requests in the app at once, up to
//! `queue_depth` more waiting their turn in arrival order, and an immediate refusal beyond.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Knative's queue depth per unit of containerConcurrency.
pub const QUEUE_DEPTH_PER_SLOT: usize = 10;

/// Refused: the app's slots and the queue are all taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pending request queue full")]
pub(crate) struct QueueFull;

/// Admits requests into the app. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Requests admitted (waiting or in the app); at most `max_pending`.
    pending: AtomicUsize,
    max_pending: usize,
    /// Requests waiting for a slot.
    waiting: AtomicUsize,
    /// One permit per app slot; tokio's semaphore serves waiters first come, first served,
    /// and a waiter dropped (its client hung up) leaves the line at once.
    slots: Arc<Semaphore>,
}

/// A place in the breaker: held while waiting for a slot, then while using it.
#[derive(Debug)]
pub(crate) struct Reservation {
    breaker: Arc<Breaker>,
    waiting: bool,
}

/// A slot in the app, held until dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    _permit: OwnedSemaphorePermit,
    _place: Reservation,
}

impl Breaker {
    /// A breaker for `capacity` ≥ 1 requests at once and a queue of `queue_depth`.
    pub(crate) fn new(capacity: usize, queue_depth: usize) -> Arc<Self> {
        Arc::new(Breaker {
            pending: AtomicUsize::new(0),
            max_pending: capacity + queue_depth,
            waiting: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(capacity)),
        })
    }

    /// Takes a place (in the queue or straight in), or refuses at once when none is left.
    pub(crate) fn reserve(self: &Arc<Self>) -> Result<Reservation, QueueFull> {
        self.pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p < self.max_pending).then_some(p + 1)
            })
            .map_err(|_| QueueFull)?;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Ok(Reservation {
            breaker: self.clone(),
            waiting: true,
        })
    }

    /// Requests waiting for a slot now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

impl Reservation {
    /// Waits for a slot, in arrival order. Dropping the future gives the place up.
    pub(crate) async fn acquire(mut self) -> Ticket {
        let permit = self
            .breaker
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the breaker's semaphore is never closed");
        self.breaker.waiting.fetch_sub(1, Ordering::SeqCst);
        self.waiting = false;
        Ticket {
            _permit: permit,
            _place: self,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.waiting {
            self.breaker.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.breaker.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn admits_capacity_queues_depth_and_refuses_beyond() {
        let b = Breaker::new(2, 3);
        let mut in_app = Vec::new();
        for _ in 0..2 {
            in_app.push(b.reserve().unwrap().acquire().await);
        }
        let queued: Vec<_> = (0..3).map(|_| b.reserve().unwrap()).collect();
        assert_eq!(b.waiting(), 3);
        assert_eq!(b.reserve().unwrap_err(), QueueFull);
        // A queued place given up makes room for one more.
        drop(queued);
        assert_eq!(b.waiting(), 0);
        assert!(b.reserve().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let b = Breaker::new(1, 10);
        let first = b.reserve().unwrap().acquire().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..5 {
            let r = b.reserve().unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let t = r.acquire().await;
                tx.send(i).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(t);
            });
            tokio::task::yield_now().await;
        }
        drop(first);
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_the_line() {
        let b = Breaker::new(1, 1);
        let held = b.reserve().unwrap().acquire().await;
        let waiter = tokio::spawn(b.reserve().unwrap().acquire());
        tokio::task::yield_now().await;
        assert_eq!(b.waiting(), 1);
        assert!(b.reserve().is_err());
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(b.waiting(), 0);
        let next = b.reserve().unwrap();
        drop(held);
        let _slot = tokio::time::timeout(Duration::from_secs(1), next.acquire())
            .await
            .expect("the slot went to the next in line");
    }
}

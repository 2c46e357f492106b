//! Counting requests in flight, and waiting for them to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// A shared count of requests in flight. Clones count the same requests.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    count: AtomicUsize,
    /// Requests ever started (the drain's quiet period watches it move).
    started: AtomicU64,
    idle: Notify,
}

/// Counts one request until dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    inner: Arc<Inner>,
}

impl InFlight {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one more request until the returned guard is dropped.
    pub fn start(&self) -> InFlightGuard {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        self.inner.started.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            inner: self.inner.clone(),
        }
    }

    /// Requests started since the counter was made.
    pub fn started(&self) -> u64 {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn get(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Waits until nothing is in flight, at most `timeout`; returns whether it got there.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            loop {
                let idle = self.inner.idle.notified();
                tokio::pin!(idle);
                // Register before checking so a guard dropped in between still wakes us.
                idle.as_mut().enable();
                if self.get() == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await
        .is_ok()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.inner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_last_guard() {
        let f = InFlight::new();
        let a = f.start();
        let b = f.start();
        assert_eq!(f.get(), 2);
        assert!(!f.wait_idle(Duration::from_millis(10)).await);
        drop(a);
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.wait_idle(Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        drop(b);
        assert!(waiter.await.unwrap());
        assert_eq!(f.get(), 0);
        assert!(f.wait_idle(Duration::ZERO).await);
    }
}

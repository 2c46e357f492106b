//! A deduplicating work queue with per-key exponential backoff, in the shape of client-go's:
//! a key is queued at most once, never processed by two workers at once, and a key added while
//! it is being processed is queued again when that processing ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// First retry delay after a failure.
const BACKOFF_BASE: Duration = Duration::from_millis(20);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

struct State<K> {
    order: VecDeque<K>,
    queued: HashSet<K>,
    processing: HashSet<K>,
    dirty: HashSet<K>,
    failures: HashMap<K, u32>,
    closed: bool,
}

/// The queue. Cheap to clone.
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    notify: Arc<Notify>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            notify: self.notify.clone(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                order: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
                closed: false,
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Queues `key` unless it is already queued.
    pub fn add(&self, key: K) {
        let mut s = self.state.lock().expect("workqueue lock");
        if s.closed {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.order.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Queues `key` again after a failure, with exponential backoff.
    pub fn add_rate_limited(&self, key: K) {
        let n = {
            let mut s = self.state.lock().expect("workqueue lock");
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = BACKOFF_BASE
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(BACKOFF_MAX);
        self.add_after(key, delay);
    }

    /// Forgets the failure history of `key` (after a success).
    pub fn forget(&self, key: &K) {
        self.state
            .lock()
            .expect("workqueue lock")
            .failures
            .remove(key);
    }

    /// Waits for the next key; `None` once the queue is shut down.
    pub async fn get(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("workqueue lock");
                if s.closed {
                    return None;
                }
                if let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.order.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; re-queues it if it was added meanwhile.
    pub fn done(&self, key: &K) {
        let mut s = self.state.lock().expect("workqueue lock");
        s.processing.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.clone()) {
            s.order.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Stops the queue; waiting workers get `None`.
    pub fn shutdown(&self) {
        self.state.lock().expect("workqueue lock").closed = true;
        self.notify.notify_waiters();
    }

    /// Number of queued keys (for metrics and tests).
    pub fn len(&self) -> usize {
        self.state.lock().expect("workqueue lock").order.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_requeues_dirty_keys() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.get().await.unwrap();
        assert_eq!(k, "a");
        // Added while processing: not handed to another worker, queued again on done.
        q.add("a");
        assert_eq!(q.get().await.unwrap(), "b");
        q.done(&"b");
        assert_eq!(q.len(), 0);
        q.done(&"a");
        assert_eq!(q.get().await.unwrap(), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows() {
        let q = WorkQueue::new();
        q.add_rate_limited("k");
        q.add_rate_limited("k");
        // The first retry lands after the base delay.
        let got = tokio::time::timeout(Duration::from_millis(25), q.get()).await;
        assert_eq!(got.unwrap(), Some("k"));
    }

    #[tokio::test]
    async fn shutdown_releases_workers() {
        let q: WorkQueue<&str> = WorkQueue::new();
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.get().await });
        tokio::task::yield_now().await;
        q.shutdown();
        assert_eq!(h.await.unwrap(), None);
    }
}

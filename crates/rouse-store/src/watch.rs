//! Watch fan-out: a bounded in-memory history of recent events and the live watchers.
//!
//! Every write bumps the resourceVersion by exactly one and emits exactly one event, so the
//! history is a contiguous run of resourceVersions and a replay is a slice of it. Each event
//! is serialized once, as compact JSON, and that one copy is shared by the history and every
//! watcher's queue; a watcher parses it when it takes it. A parsed object takes several times
//! the room, and a queue of them built up during a burst (the controller behind the writes)
//! used to scatter megabytes through the heap that stayed resident after it drained.

use std::collections::VecDeque;
use std::sync::Arc;

use rouse_api::Kind;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::{EventType, StoreError, WatchEvent};

/// A committed event, its object serialized.
#[derive(Debug)]
struct Encoded {
    event_type: EventType,
    kind: Kind,
    resource_version: u64,
    object: Box<[u8]>,
}

impl Encoded {
    fn event(&self) -> Result<WatchEvent, StoreError> {
        Ok(WatchEvent {
            event_type: self.event_type,
            kind: self.kind,
            object: serde_json::from_slice(&self.object)
                .map_err(|e| StoreError::Backend(format!("retained event: {e}")))?,
            resource_version: self.resource_version,
        })
    }
}

/// A watch on the store: the events after the resourceVersion it started from, in order.
#[derive(Debug)]
pub struct Watch {
    /// `None` once the watch ended on an unreadable event.
    rx: Option<UnboundedReceiver<Arc<Encoded>>>,
}

impl Watch {
    /// The next event, waiting for it. `None` when the watch ended: the store closed, or the
    /// history had to be dropped (list again and watch from the list's resourceVersion).
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        let encoded = self.rx.as_mut()?.recv().await?;
        match encoded.event() {
            Ok(ev) => Some(ev),
            Err(e) => {
                // Cannot happen for what the hub serialized itself; end rather than skip one.
                tracing::warn!(error = %e, "watch event unreadable; ending the watch");
                self.rx = None;
                None
            }
        }
    }
}

/// Events since the process started (the last `limit` of them) and the open watchers: the
/// watch fan-out of any [`crate::Store`] backend. The embedded store numbers its events with
/// its own resourceVersions; a backend whose objects carry opaque resourceVersions (the
/// Kubernetes one) numbers the events it publishes with a local sequence instead, and that
/// sequence is what its `list` returns and its `watch` resumes from.
#[derive(Debug)]
pub struct Hub {
    /// The store's current resourceVersion (the last committed write).
    rv: u64,
    history: VecDeque<Arc<Encoded>>,
    limit: usize,
    watchers: Vec<UnboundedSender<Arc<Encoded>>>,
}

impl Hub {
    pub fn new(rv: u64, limit: usize) -> Hub {
        Hub {
            rv,
            history: VecDeque::new(),
            limit: limit.max(1),
            watchers: Vec::new(),
        }
    }

    /// The last committed resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Records committed events (in resourceVersion order) and sends them to every watcher.
    pub fn publish(&mut self, events: Vec<WatchEvent>) {
        for ev in events {
            if ev.resource_version != self.rv + 1 {
                // Only after a commit that failed yet reached the disk: the history would have
                // a hole, so drop it and let older watches get Expired instead.
                self.history.clear();
            }
            self.rv = ev.resource_version;
            let Ok(object) = serde_json::to_vec(&ev.object) else {
                // Cannot happen for JSON values. Neither the history nor the watchers may
                // have a hole: drop both, so older watches get Expired and watchers relist.
                self.history.clear();
                self.watchers.clear();
                continue;
            };
            let encoded = Arc::new(Encoded {
                event_type: ev.event_type,
                kind: ev.kind,
                resource_version: ev.resource_version,
                object: object.into_boxed_slice(),
            });
            self.watchers.retain(|w| w.send(encoded.clone()).is_ok());
            if self.history.len() == self.limit {
                self.history.pop_front();
            }
            self.history.push_back(encoded);
        }
    }

    /// The smallest `from` a watch can start at without missing events.
    fn oldest_from(&self) -> u64 {
        self.history
            .front()
            .map(|e| e.resource_version - 1)
            .unwrap_or(self.rv)
    }

    /// A new watcher that first gets the retained events after `from`, then live ones.
    pub fn watch(&mut self, from: u64) -> Result<Watch, StoreError> {
        if from > self.rv {
            return Err(StoreError::Invalid(format!(
                "resourceVersion {from} is newer than the store's current {}",
                self.rv
            )));
        }
        let oldest = self.oldest_from();
        if from < oldest {
            return Err(StoreError::Expired {
                requested: from,
                oldest,
            });
        }
        let (tx, rx) = unbounded_channel();
        let skip = (from - oldest) as usize;
        for ev in self.history.iter().skip(skip) {
            // The receiver is still in hand, so sending cannot fail.
            let _ = tx.send(ev.clone());
        }
        self.watchers.retain(|w| !w.is_closed());
        self.watchers.push(tx);
        Ok(Watch { rx: Some(rx) })
    }
}

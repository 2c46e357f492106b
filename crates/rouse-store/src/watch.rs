//! Watch fan-out: a bounded in-memory history of recent events and the live watchers.
//!
//! Every write bumps the resourceVersion by exactly one and emits exactly one event, so the
//! history is a contiguous run of resourceVersions and a replay is a slice of it. Retained
//! events keep their object as compact JSON (a parsed object takes several times the room).

use std::collections::VecDeque;

use rouse_api::Kind;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::{EventType, StoreError, WatchEvent};

/// A retained event, its object serialized.
#[derive(Debug)]
struct Retained {
    event_type: EventType,
    kind: Kind,
    resource_version: u64,
    object: Box<[u8]>,
}

impl Retained {
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

/// Events since the process started (the last `limit` of them) and the open watchers.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The store's current resourceVersion (the last committed write).
    rv: u64,
    history: VecDeque<Retained>,
    limit: usize,
    watchers: Vec<UnboundedSender<WatchEvent>>,
}

impl Hub {
    pub(crate) fn new(rv: u64, limit: usize) -> Hub {
        Hub {
            rv,
            history: VecDeque::new(),
            limit: limit.max(1),
            watchers: Vec::new(),
        }
    }

    /// The last committed resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// Records committed events (in resourceVersion order) and sends them to every watcher.
    pub(crate) fn publish(&mut self, events: Vec<WatchEvent>) {
        for ev in events {
            if ev.resource_version != self.rv + 1 {
                // Only after a commit that failed yet reached the disk: the history would have
                // a hole, so drop it and let older watches get Expired instead.
                self.history.clear();
            }
            self.rv = ev.resource_version;
            let Ok(object) = serde_json::to_vec(&ev.object) else {
                // Cannot happen for JSON values; without it the history would have a hole.
                self.history.clear();
                self.watchers.retain(|w| w.send(ev.clone()).is_ok());
                continue;
            };
            if self.history.len() == self.limit {
                self.history.pop_front();
            }
            self.history.push_back(Retained {
                event_type: ev.event_type,
                kind: ev.kind,
                resource_version: ev.resource_version,
                object: object.into_boxed_slice(),
            });
            self.watchers.retain(|w| w.send(ev.clone()).is_ok());
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
    pub(crate) fn watch(&mut self, from: u64) -> Result<UnboundedReceiver<WatchEvent>, StoreError> {
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
            let _ = tx.send(ev.event()?);
        }
        self.watchers.retain(|w| !w.is_closed());
        self.watchers.push(tx);
        Ok(rx)
    }
}

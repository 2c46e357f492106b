//! [`ClusterStore`]: the [`Store`] seam over the Kubernetes API, so the reconcilers local mode
//! runs are the ones that run on a cluster.
//!
//! Reads are served from an informer-style cache: one background task per kind lists the kind
//! and then follows its watch, relisting (with backoff, logging once per outage) whenever the
//! watch ends or fails. Every change the cache takes in is published on an [`EventHub`]
//! numbered by a local sequence; that sequence is what [`Store::list`] returns and
//! [`Store::watch`] resumes from, while objects keep Kubernetes' opaque
//! `metadata.resourceVersion` (compared only for equality, as the API server does).
//!
//! Writes are blocking calls run on the store's own runtime (so a caller on any runtime,
//! async or not, can make them without deadlocking): a lost resourceVersion race is
//! [`StoreError::Conflict`], status goes through the `/status` subresource, deletes cascade
//! through Kubernetes' garbage collector along owner references. A write's answer goes into
//! the cache at once, so a reconciler reads its own writes.

use crate::lock;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use rouse_api::Kind;
use rouse_store::{Durability, EventHub, EventType, Store, StoreError, Watch, WatchEvent};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::store::KubeStore;

/// Events the hub keeps for watches that resume.
const HISTORY: usize = 10_000;
/// The longest wait between tries while the API server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type ObjectKey = (String, String);

struct Inner {
    objects: HashMap<Kind, BTreeMap<ObjectKey, Value>>,
    hub: EventHub,
}

/// The [`Store`] over a Kubernetes API server. Cheap to share behind an `Arc`.
pub struct ClusterStore {
    api: KubeStore,
    handle: Handle,
    inner: Arc<Mutex<Inner>>,
    synced: watch::Receiver<usize>,
}

impl ClusterStore {
    /// Starts the informers for Knative's six kinds on `handle` (a runtime other than the one
    /// callers block on: writes wait for it). Reads see the cluster once
    /// [`ClusterStore::wait_synced`] returns.
    pub fn start(client: kube::Client, handle: Handle) -> ClusterStore {
        let api = KubeStore::new(client);
        let inner = Arc::new(Mutex::new(Inner {
            objects: Kind::ALL.iter().map(|k| (*k, BTreeMap::new())).collect(),
            hub: EventHub::new(0, HISTORY),
        }));
        let (synced_tx, synced) = watch::channel(0usize);
        let synced_tx = Arc::new(synced_tx);
        for kind in Kind::ALL {
            handle.spawn(inform(kind, api.clone(), inner.clone(), synced_tx.clone()));
        }
        ClusterStore {
            api,
            handle,
            inner,
            synced,
        }
    }

    /// Resolves once every kind has been listed once.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|n| *n >= Kind::ALL.len()).await;
    }

    /// True once every kind has been listed once.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow() >= Kind::ALL.len()
    }

    /// The async API layer underneath.
    pub fn api(&self) -> &KubeStore {
        &self.api
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Runs `fut` on the store's runtime and waits for it on this thread.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Backend("the Kubernetes client's runtime stopped".into()))?
    }

    /// Takes a written object into the cache (read-your-writes).
    fn absorb(&self, kind: Kind, obj: &Value, event_type: EventType) {
        apply(&mut self.lock(), kind, obj.clone(), event_type);
    }

    /// An update without a resourceVersion is unconditional in the store's contract; the API
    /// server refuses those for custom resources, so the cached version stands in.
    fn with_cached_version(&self, kind: Kind, mut obj: Value) -> Value {
        let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if rv.is_empty() {
            let (ns, name) = key_of(&obj);
            let cached = self
                .lock()
                .objects
                .get(&kind)
                .and_then(|m| m.get(&(ns, name)))
                .map(|o| o["metadata"]["resourceVersion"].clone());
            if let (Some(rv), Some(meta)) = (cached, obj.get_mut("metadata")) {
                meta["resourceVersion"] = rv;
            }
        }
        obj
    }
}

fn key_of(obj: &Value) -> ObjectKey {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

/// Kubernetes' resourceVersions are opaque; etcd-backed servers hand out increasing integers,
/// which is the only way to tell a stale watch event from a newer write already cached.
fn is_older(candidate: &Value, cached: &Value) -> bool {
    let rv = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
    };
    matches!((rv(candidate), rv(cached)), (Some(a), Some(b)) if a < b)
}

fn same_version(a: &Value, b: &Value) -> bool {
    let rv = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string)
    };
    rv(a).is_some() && rv(a) == rv(b)
}

/// Applies one change to the cache, publishing it when it changes what the cache holds.
fn apply(inner: &mut Inner, kind: Kind, obj: Value, event_type: EventType) {
    let key = key_of(&obj);
    let objects = inner.objects.entry(kind).or_default();
    let event_type = match event_type {
        EventType::Deleted => {
            if objects.remove(&key).is_none() {
                return;
            }
            EventType::Deleted
        }
        _ => match objects.get(&key) {
            Some(cached) if same_version(cached, &obj) || is_older(&obj, cached) => return,
            Some(_) => {
                objects.insert(key, obj.clone());
                EventType::Modified
            }
            None => {
                objects.insert(key, obj.clone());
                EventType::Added
            }
        },
    };
    let resource_version = inner.hub.rv() + 1;
    inner.hub.publish(vec![WatchEvent {
        event_type,
        kind,
        object: obj,
        resource_version,
    }]);
}

/// One kind's informer: list, replace the cache (publishing the differences), follow the
/// watch; on any failure back off and start again. Never ends.
async fn inform(
    kind: Kind,
    api: KubeStore,
    inner: Arc<Mutex<Inner>>,
    synced: Arc<watch::Sender<usize>>,
) {
    let mut counted = false;
    let mut backoff = Duration::from_millis(200);
    let mut failing = false;
    loop {
        let (items, rv) = match api.list(kind, None).await {
            Ok(listed) => listed,
            Err(e) => {
                if !failing {
                    tracing::warn!(%kind, error = %e, "cannot list from the API server; retrying with backoff");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if failing {
            tracing::info!(%kind, "listing from the API server again");
            failing = false;
        }
        backoff = Duration::from_millis(200);
        {
            let mut inner = lock(&inner);
            let listed: BTreeMap<ObjectKey, Value> =
                items.into_iter().map(|o| (key_of(&o), o)).collect();
            let gone: Vec<Value> = inner.objects[&kind]
                .iter()
                .filter(|(k, _)| !listed.contains_key(*k))
                .map(|(_, o)| o.clone())
                .collect();
            for o in gone {
                apply(&mut inner, kind, o, EventType::Deleted);
            }
            for (_, o) in listed {
                apply(&mut inner, kind, o, EventType::Modified);
            }
        }
        if !counted {
            counted = true;
            synced.send_modify(|n| *n += 1);
        }
        let mut events = match api.watch(kind, None, rv).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%kind, error = %e, "watch failed; relisting");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => apply(&mut lock(&inner), kind, ev.object, ev.event_type),
                Err(e) => {
                    tracing::debug!(%kind, error = %e, "watch ended; relisting");
                    break;
                }
            }
        }
    }
}

impl Store for ClusterStore {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, StoreError> {
        self.lock()
            .objects
            .get(&kind)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }

    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        let inner = self.lock();
        let items = inner
            .objects
            .get(&kind)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, o)| o.clone())
            .collect();
        Ok((items, inner.hub.rv()))
    }

    fn create_with(
        &self,
        kind: Kind,
        obj: Value,
        _durability: Durability,
    ) -> Result<Value, StoreError> {
        let api = self.api.clone();
        let created = self.block(async move { api.create(kind, obj).await })?;
        self.absorb(kind, &created, EventType::Added);
        Ok(created)
    }

    fn update_with(
        &self,
        kind: Kind,
        obj: Value,
        _durability: Durability,
    ) -> Result<Value, StoreError> {
        let obj = self.with_cached_version(kind, obj);
        let api = self.api.clone();
        let updated = self.block(async move { api.update(kind, obj).await })?;
        self.absorb(kind, &updated, EventType::Modified);
        Ok(updated)
    }

    fn update_status_with(
        &self,
        kind: Kind,
        obj: Value,
        _durability: Durability,
    ) -> Result<Value, StoreError> {
        let obj = self.with_cached_version(kind, obj);
        let api = self.api.clone();
        let updated = self.block(async move { api.update_status(kind, obj).await })?;
        self.absorb(kind, &updated, EventType::Modified);
        Ok(updated)
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let api = self.api.clone();
        let (ns, n) = (namespace.to_string(), name.to_string());
        let deleted = self.block(async move { api.delete(kind, &ns, &n).await })?;
        self.absorb(kind, &deleted, EventType::Deleted);
        Ok(deleted)
    }

    fn watch(&self, from: u64) -> Result<Watch, StoreError> {
        self.lock().hub.watch(from)
    }

    /// Every write is on the API server when its call returns.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

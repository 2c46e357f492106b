//! The controller: level-triggered, idempotent reconcilers on a deduplicating work queue.
//!
//! Service → Configuration + Route; Configuration → Revision; Revision → PodAutoscaler +
//! ServerlessService; PodAutoscaler → instances through the [`Runtime`]; ServerlessService →
//! the revision's public endpoints; Route → resolved traffic and the gateway's routing table.
//! Every reconciler reads the current state from the store and converges; events only say
//! *which* key to look at, never *what* changed.

pub mod autoscaling;
pub mod client;
pub mod names;
pub mod networking;
mod priority;
pub mod reconcile;
pub mod rollout;
pub mod workload;
pub mod workqueue;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rouse_api::Kind;
use rouse_api::config::SharedConfig;
use rouse_runtime::Runtime;
use rouse_store::{EventType, Store, StoreError};
use serde_json::Value;
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use client::Client;
pub use networking::{HostRoute, Networking};
use workqueue::WorkQueue;

/// Reconcile workers running at once.
const WORKERS: usize = 4;

/// What a reconciler failed on. Every error is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored object did not decode as its kind.
    #[error("stored {0} does not decode: {1}")]
    Decode(Kind, String),
}

/// A work item: one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Key {
    /// A key.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// Everything reconcilers share.
pub struct Context {
    pub client: Client,
    pub runtime: Arc<dyn Runtime>,
    pub networking: Arc<dyn Networking>,
    /// Read afresh on each reconcile: ConfigMaps written through the API take effect.
    pub config: SharedConfig,
    /// The domain routes are served under when `config-domain` names none for them
    /// (`--domain`); [`Context::route_domain`] gives a route's.
    pub domain: String,
    pub queue: WorkQueue<Key>,
    /// Each route's and domain mapping's entries in the gateway's routing table as last
    /// programmed, by `(kind, namespace, name)`; the lock serializes reprogramming so the
    /// newest always wins.
    pub routing: AsyncMutex<BTreeMap<(Kind, String, String), Vec<HostRoute>>>,
    /// Which routes name which configurations and revisions, from the watch.
    pub route_refs: RouteRefs,
    /// Every revision's KPA state.
    pub autoscaling: autoscaling::Autoscaling,
}

impl Context {
    /// The domain a Route with `labels` is served under (`config-domain`, else `--domain`;
    /// cluster-local Routes the cluster's own).
    pub fn route_domain(&self, labels: &BTreeMap<String, String>) -> String {
        self.config.get().route_domain(labels, &self.domain)
    }

    /// Enqueues every object, as after a relist: a config change then reaches the objects
    /// that did not change themselves (Knative's global resync).
    pub fn resync(&self) {
        let store = self.client.store().clone();
        for kind in Kind::ALL {
            if let Ok((items, _)) = store.list(kind, None) {
                for obj in &items {
                    enqueue_for(self, kind, obj, false);
                }
            }
        }
        self.queue.add(Key::new(Kind::Route, "", ""));
    }
}

/// The controller: owns the queue, the watch and the workers.
pub struct Controller {
    ctx: Arc<Context>,
    pokes: Option<mpsc::UnboundedReceiver<autoscaling::RevisionId>>,
}

impl Controller {
    /// A controller over these platform pieces.
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        networking: Arc<dyn Networking>,
        config: SharedConfig,
        domain: String,
    ) -> Self {
        Self {
            ctx: Arc::new(Context {
                client: Client::new(store),
                runtime,
                networking,
                config,
                domain,
                queue: WorkQueue::new(),
                routing: AsyncMutex::new(BTreeMap::new()),
                route_refs: RouteRefs::default(),
                autoscaling: autoscaling::Autoscaling::new(),
            }),
            pokes: None,
        }
    }

    /// Takes the activator's pokes (first request for a revision without instances).
    pub fn with_pokes(mut self, pokes: mpsc::UnboundedReceiver<autoscaling::RevisionId>) -> Self {
        self.pokes = Some(pokes);
        self
    }

    /// The shared context (for tests and wiring).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Runs until `shutdown` resolves: watches the store and the runtime, and reconciles. The
    /// loops and workers run on the controller's own threads, at a lower CPU priority than the
    /// data path (their nice value 10 higher); where those cannot be made, on the caller's
    /// runtime.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let ctx = self.ctx.clone();
        // A ConfigMap written through the API can change every route's entries (hosts, tag
        // headers): rebuild the routing table from the stored routes.
        let queue = ctx.queue.clone();
        ctx.config
            .on_change(move |_| queue.add(Key::new(Kind::Route, "", "")));
        let own = match priority::control_runtime() {
            Ok(rt) => Some(OwnRuntime(Some(rt))),
            Err(e) => {
                warn!(error = %e, "cannot start the controller's threads; sharing the platform's");
                None
            }
        };
        let handle = own
            .as_ref()
            .and_then(|o| o.0.as_ref())
            .map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone());
        let watcher = handle.spawn(watch_store(ctx.clone()));
        let instances = handle.spawn(watch_runtime(ctx.clone()));
        let mut loops = vec![
            handle.spawn(autoscaling::scrape_loop(ctx.clone())),
            handle.spawn(autoscaling::tick_loop(ctx.clone())),
        ];
        if let Some(pokes) = self.pokes {
            loops.push(handle.spawn(autoscaling::poke_loop(ctx.clone(), pokes)));
        }
        if let Some(owners) = ctx.networking.subscribe_ingresses() {
            loops.push(handle.spawn(watch_ingresses(ctx.clone(), owners)));
        }
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| handle.spawn(worker(ctx.clone())))
            .collect();
        shutdown.await;
        ctx.queue.shutdown();
        watcher.abort();
        instances.abort();
        for l in loops {
            l.abort();
        }
        for w in workers {
            let _ = w.await;
        }
        drop(own);
    }
}

/// The controller's runtime; dropped without blocking, since its owner is async code.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn worker(ctx: Arc<Context>) {
    while let Some(key) = ctx.queue.get().await {
        let result = reconcile::reconcile(&ctx, &key).await;
        match result {
            Ok(requeue) => {
                ctx.queue.forget(&key);
                if let Some(after) = requeue {
                    ctx.queue.add_after(key.clone(), after);
                }
            }
            Err(e) => {
                match &e {
                    ReconcileError::Store(StoreError::Conflict { .. }) => {
                        debug!(kind = %key.kind, namespace = %key.namespace, name = %key.name, "Conflict, retrying.")
                    }
                    _ => {
                        warn!(kind = %key.kind, namespace = %key.namespace, name = %key.name, error = %e, "Reconcile failed.")
                    }
                }
                ctx.queue.add_rate_limited(key.clone());
            }
        }
        ctx.queue.done(&key);
    }
}

/// Lists everything, then follows the store's watch; relists if the watch is lost.
async fn watch_store(ctx: Arc<Context>) {
    loop {
        let store = ctx.client.store().clone();
        let from = match store.list(Kind::Service, None) {
            Ok((_, rv)) => rv,
            Err(e) => {
                warn!(error = %e, "Listing failed; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut events = match store.watch(from) {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "Watch failed; relisting.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Routes deleted while the watch was lost must not linger in the index, and every
        // route is indexed before any reconciler (the PA's reachability) may read the index.
        ctx.route_refs.clear();
        let lists: Vec<_> = Kind::ALL
            .into_iter()
            .filter_map(|kind| store.list(kind, None).ok().map(|(items, _)| (kind, items)))
            .collect();
        for (_, routes) in lists.iter().filter(|(k, _)| *k == Kind::Route) {
            for obj in routes {
                index_route(&ctx, obj, false);
            }
        }
        for (kind, items) in &lists {
            for obj in items {
                enqueue_for(&ctx, *kind, obj, false);
            }
        }
        // Routes may be gone while the process was down: rebuild the table once.
        ctx.queue.add(Key::new(Kind::Route, "", ""));
        while let Some(ev) = events.recv().await {
            enqueue_for(
                &ctx,
                ev.kind,
                &ev.object,
                ev.event_type == EventType::Deleted,
            );
        }
        warn!("Store watch ended; relisting.");
    }
}

/// Enqueues the object itself and everything whose state depends on it.
fn enqueue_for(ctx: &Context, kind: Kind, obj: &Value, deleted: bool) {
    let meta = &obj["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or("");
    ctx.queue.add(Key::new(kind, ns, name));
    if let Some(owners) = meta["ownerReferences"].as_array() {
        for o in owners {
            if let Some(k) = o["kind"].as_str().and_then(Kind::from_name) {
                ctx.queue
                    .add(Key::new(k, ns, o["name"].as_str().unwrap_or("")));
            }
        }
    }
    match kind {
        Kind::Route => {
            index_route(ctx, obj, deleted);
            enqueue_mappings_to(ctx, kind, obj, ns, name);
        }
        Kind::Service => enqueue_mappings_to(ctx, kind, obj, ns, name),
        Kind::DomainMapping => enqueue_rival_mappings(ctx, ns, name),
        Kind::Configuration => {
            // Routes resolve configurations by name: recheck those following it.
            for route in ctx
                .route_refs
                .routes(ns, RouteRef::Configuration(name.to_string()))
            {
                ctx.queue.add(Key::new(Kind::Route, ns, &route));
            }
        }
        Kind::Revision => {
            for route in ctx
                .route_refs
                .routes(ns, RouteRef::Revision(name.to_string()))
            {
                ctx.queue.add(Key::new(Kind::Route, ns, &route));
            }
            ctx.queue.add(Key::new(Kind::PodAutoscaler, ns, name));
            ctx.queue.add(Key::new(Kind::ServerlessService, ns, name));
        }
        _ => {}
    }
}

/// Enqueues the DomainMappings in `ns` whose `spec.ref` names this Service or Route (its
/// coming or going resolves them or not) and, for a Route, those in any namespace named like
/// its own host (which the route then takes).
fn enqueue_mappings_to(ctx: &Context, kind: Kind, obj: &Value, ns: &str, name: &str) {
    let Ok((mappings, _)) = ctx.client.store().list(Kind::DomainMapping, None) else {
        return;
    };
    let host = (kind == Kind::Route).then(|| {
        let labels: BTreeMap<String, String> =
            serde_json::from_value(obj["metadata"]["labels"].clone()).unwrap_or_default();
        ctx.config
            .get()
            .network
            .route_host(name, ns, &ctx.route_domain(&labels))
    });
    for m in &mappings {
        let meta = &m["metadata"];
        let (dm_ns, dm) = (
            meta["namespace"].as_str().unwrap_or(""),
            meta["name"].as_str().unwrap_or(""),
        );
        let r = &m["spec"]["ref"];
        let refers = dm_ns == ns
            && r["kind"].as_str() == Some(kind.name())
            && r["name"].as_str() == Some(name);
        if refers || host.as_deref() == Some(dm) {
            ctx.queue.add(Key::new(Kind::DomainMapping, dm_ns, dm));
        }
    }
}

/// Enqueues the mappings of the same domain in other namespaces: one coming or going can move
/// the domain's claim.
fn enqueue_rival_mappings(ctx: &Context, ns: &str, name: &str) {
    let Ok((mappings, _)) = ctx.client.store().list(Kind::DomainMapping, None) else {
        return;
    };
    for m in &mappings {
        let meta = &m["metadata"];
        let other_ns = meta["namespace"].as_str().unwrap_or("");
        if meta["name"].as_str() == Some(name) && other_ns != ns {
            ctx.queue.add(Key::new(Kind::DomainMapping, other_ns, name));
        }
    }
}

/// Records what a route refers to in [`Context::route_refs`].
fn index_route(ctx: &Context, route: &Value, deleted: bool) {
    let meta = &route["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or("");
    ctx.route_refs
        .set(ns, name, (!deleted).then(|| RouteRefs::refs_of(route)));
}

/// Something a route's traffic refers to by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteRef {
    /// `spec.traffic` follows this configuration's latest ready revision.
    Configuration(String),
    /// `spec.traffic` pins this revision.
    Revision(String),
    /// `status.traffic` sends this revision traffic now.
    Serving(String),
}

/// An index from configurations and revisions to the routes whose traffic names them, kept
/// from the watch, so an event on one re-queues exactly the routes it can change and nobody
/// lists every route to ask who routes to a revision.
#[derive(Debug, Default)]
pub struct RouteRefs {
    inner: Mutex<RouteRefsInner>,
}

#[derive(Debug, Default)]
struct RouteRefsInner {
    /// `(namespace, route)` → what it refers to.
    by_route: HashMap<(String, String), Vec<RouteRef>>,
    /// `(namespace, reference)` → the routes making it.
    by_ref: HashMap<(String, RouteRef), HashSet<String>>,
}

impl RouteRefs {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteRefsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a stored route refers to: per `spec.traffic` target a pinned revision or else a
    /// followed configuration, and every revision its `status.traffic` serves.
    pub fn refs_of(route: &Value) -> Vec<RouteRef> {
        let mut out = Vec::new();
        let targets = |part: &str| route[part]["traffic"].as_array().into_iter().flatten();
        for t in targets("spec") {
            let revision = t["revisionName"].as_str().unwrap_or("");
            let config = t["configurationName"].as_str().unwrap_or("");
            let r = if !revision.is_empty() {
                RouteRef::Revision(revision.to_string())
            } else if !config.is_empty() {
                RouteRef::Configuration(config.to_string())
            } else {
                continue;
            };
            if !out.contains(&r) {
                out.push(r);
            }
        }
        for t in targets("status") {
            let revision = t["revisionName"].as_str().unwrap_or("");
            let r = RouteRef::Serving(revision.to_string());
            if !revision.is_empty() && !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }

    /// Records what route `namespace/name` refers to now (`None`: deleted).
    pub fn set(&self, namespace: &str, name: &str, refs: Option<Vec<RouteRef>>) {
        let mut idx = self.lock();
        let key = (namespace.to_string(), name.to_string());
        if let Some(old) = idx.by_route.remove(&key) {
            for r in old {
                let rkey = (namespace.to_string(), r);
                if let Some(routes) = idx.by_ref.get_mut(&rkey) {
                    routes.remove(name);
                    if routes.is_empty() {
                        idx.by_ref.remove(&rkey);
                    }
                }
            }
        }
        let Some(refs) = refs else { return };
        for r in &refs {
            idx.by_ref
                .entry((namespace.to_string(), r.clone()))
                .or_default()
                .insert(name.to_string());
        }
        idx.by_route.insert(key, refs);
    }

    /// The routes in `namespace` making reference `r`, sorted.
    pub fn routes(&self, namespace: &str, r: RouteRef) -> Vec<String> {
        let idx = self.lock();
        let mut out: Vec<String> = idx
            .by_ref
            .get(&(namespace.to_string(), r))
            .map(|routes| routes.iter().cloned().collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// True when some route in `namespace` makes reference `r`.
    pub fn any(&self, namespace: &str, r: RouteRef) -> bool {
        self.lock().by_ref.contains_key(&(namespace.to_string(), r))
    }

    /// Forgets every route (before a relist).
    pub fn clear(&self) {
        *self.lock() = RouteRefsInner::default();
    }
}

/// How long instance changes are gathered before their reconciles run. The data path never
/// waits for these reconciles (the activator is told of new instances directly and probes
/// them itself), while running them at once would compete for the CPU with exactly what the
/// change wakes: a starting app, the first request forwarded to a new instance.
pub const RUNTIME_EVENT_DELAY: Duration = Duration::from_millis(10);

/// Instance changes (ready, crashed, stopped) re-run the revision's data-plane reconcilers,
/// gathered over [`RUNTIME_EVENT_DELAY`].
async fn watch_runtime(ctx: Arc<Context>) {
    let mut rx = ctx.runtime.subscribe();
    loop {
        let mut changed = HashSet::new();
        let mut lagged = false;
        let mut until = None;
        loop {
            let event = match until {
                None => rx.recv().await,
                Some(until) => match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(event) => event,
                    Err(_) => break,
                },
            };
            match event {
                Ok(id) => {
                    changed.insert(id);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => lagged = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            until.get_or_insert(tokio::time::Instant::now() + RUNTIME_EVENT_DELAY);
        }
        for (ns, rev) in &changed {
            ctx.queue.add(Key::new(Kind::ServerlessService, ns, rev));
            ctx.queue.add(Key::new(Kind::PodAutoscaler, ns, rev));
            ctx.queue.add(Key::new(Kind::Revision, ns, rev));
        }
        if lagged {
            // Missed some: recheck every revision.
            if let Ok((revs, _)) = ctx.client.store().list(Kind::Revision, None) {
                for r in &revs {
                    enqueue_for(&ctx, Kind::Revision, r, false);
                }
            }
        }
    }
}

/// Looks at a Route or DomainMapping again each time the data plane's readiness for it may
/// have changed.
async fn watch_ingresses(ctx: Arc<Context>, mut owners: tokio::sync::broadcast::Receiver<Key>) {
    loop {
        match owners.recv().await {
            Ok(key) => ctx.queue.add(key),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed some: look at every route and mapping.
                for kind in [Kind::Route, Kind::DomainMapping] {
                    if let Ok((objects, _)) = ctx.client.store().list(kind, None) {
                        for o in &objects {
                            enqueue_for(&ctx, kind, o, false);
                        }
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(spec: Value, status: Value) -> Value {
        json!({"metadata": {"name": "r"}, "spec": {"traffic": spec}, "status": {"traffic": status}})
    }

    #[test]
    fn route_refs_follow_spec_and_status() {
        let r = route(
            json!([
                {"configurationName": "c", "percent": 50},
                {"revisionName": "pinned", "configurationName": "c", "percent": 50},
                {"configurationName": "c", "tag": "again"},
            ]),
            json!([{"revisionName": "c-00001", "percent": 100}]),
        );
        assert_eq!(
            RouteRefs::refs_of(&r),
            vec![
                RouteRef::Configuration("c".into()),
                RouteRef::Revision("pinned".into()),
                RouteRef::Serving("c-00001".into()),
            ]
        );

        let refs = RouteRefs::default();
        refs.set("ns", "b", Some(RouteRefs::refs_of(&r)));
        refs.set("ns", "a", Some(vec![RouteRef::Configuration("c".into())]));
        refs.set(
            "other",
            "z",
            Some(vec![RouteRef::Configuration("c".into())]),
        );
        assert_eq!(
            refs.routes("ns", RouteRef::Configuration("c".into())),
            ["a", "b"]
        );
        assert!(refs.any("ns", RouteRef::Serving("c-00001".into())));
        assert!(!refs.any("ns", RouteRef::Revision("c-00001".into())));

        // A new spec replaces what the route referred to; a delete forgets it.
        refs.set("ns", "b", Some(vec![RouteRef::Revision("pinned".into())]));
        assert_eq!(
            refs.routes("ns", RouteRef::Configuration("c".into())),
            ["a"]
        );
        assert!(!refs.any("ns", RouteRef::Serving("c-00001".into())));
        refs.set("ns", "a", None);
        assert!(!refs.any("ns", RouteRef::Configuration("c".into())));
        assert_eq!(
            refs.routes("ns", RouteRef::Revision("pinned".into())),
            ["b"]
        );
        assert!(refs.any("other", RouteRef::Configuration("c".into())));
        refs.clear();
        assert!(!refs.any("other", RouteRef::Configuration("c".into())));
    }
}

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
pub mod reconcile;
pub mod workload;
pub mod workqueue;

use std::sync::Arc;
use std::time::Duration;

use rouse_api::Kind;
use rouse_api::config::Config;
use rouse_runtime::Runtime;
use rouse_store::{EventType, Store, StoreError};
use serde_json::Value;
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use client::Client;
pub use networking::Networking;
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
    pub config: Arc<Config>,
    /// The domain routes are served under (`--domain`).
    pub domain: String,
    pub queue: WorkQueue<Key>,
    /// Serializes rebuilds of the gateway's routing table so the newest always wins.
    pub routing_lock: AsyncMutex<()>,
    /// Every revision's KPA state.
    pub autoscaling: autoscaling::Autoscaling,
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
        config: Arc<Config>,
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
                routing_lock: AsyncMutex::new(()),
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

    /// Runs until `shutdown` resolves: watches the store and the runtime, and reconciles.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let ctx = self.ctx.clone();
        let watcher = tokio::spawn(watch_store(ctx.clone()));
        let instances = tokio::spawn(watch_runtime(ctx.clone()));
        let mut loops = vec![
            tokio::spawn(autoscaling::scrape_loop(ctx.clone())),
            tokio::spawn(autoscaling::tick_loop(ctx.clone())),
        ];
        if let Some(pokes) = self.pokes {
            loops.push(tokio::spawn(autoscaling::poke_loop(ctx.clone(), pokes)));
        }
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| tokio::spawn(worker(ctx.clone())))
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
        for kind in Kind::ALL {
            if let Ok((items, _)) = store.list(kind, None) {
                for obj in &items {
                    enqueue_for(&ctx, kind, obj);
                }
            }
        }
        // Routes may be gone while the process was down: rebuild the table once.
        ctx.queue.add(Key::new(Kind::Route, "", ""));
        while let Some(ev) = events.recv().await {
            enqueue_for(&ctx, ev.kind, &ev.object);
            if ev.event_type == EventType::Deleted && ev.kind == Kind::Route {
                ctx.queue.add(Key::new(Kind::Route, "", ""));
            }
        }
        warn!("Store watch ended; relisting.");
    }
}

/// Enqueues the object itself and everything whose state depends on it.
fn enqueue_for(ctx: &Context, kind: Kind, obj: &Value) {
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
        Kind::Configuration | Kind::Revision => {
            // Routes resolve configurations and revisions by name: recheck those of the namespace.
            if let Ok((routes, _)) = ctx.client.store().list(Kind::Route, Some(ns)) {
                for r in routes {
                    if let Some(n) = r["metadata"]["name"].as_str() {
                        ctx.queue.add(Key::new(Kind::Route, ns, n));
                    }
                }
            }
            if kind == Kind::Revision {
                ctx.queue.add(Key::new(Kind::PodAutoscaler, ns, name));
                ctx.queue.add(Key::new(Kind::ServerlessService, ns, name));
            }
        }
        _ => {}
    }
}

/// Instance changes (ready, crashed, stopped) re-run the revision's data-plane reconcilers.
async fn watch_runtime(ctx: Arc<Context>) {
    let mut rx = ctx.runtime.subscribe();
    loop {
        match rx.recv().await {
            Ok((ns, rev)) => {
                ctx.queue.add(Key::new(Kind::ServerlessService, &ns, &rev));
                ctx.queue.add(Key::new(Kind::PodAutoscaler, &ns, &rev));
                ctx.queue.add(Key::new(Kind::Revision, &ns, &rev));
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed some: recheck every revision.
                if let Ok((revs, _)) = ctx.client.store().list(Kind::Revision, None) {
                    for r in &revs {
                        enqueue_for(&ctx, Kind::Revision, r);
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

//! [`Informer`]: one kind's objects (optionally narrowed by label and field selectors) kept current from
//! the Kubernetes API, for the data-plane processes (`rouse activator`, `rouse gateway`) that
//! follow a few kinds without the controller's store.
//!
//! A background task lists, publishes the whole set, then follows the watch from the list's
//! resourceVersion; a watch that times out is resumed where it was, a failed one (410 Gone, a
//! dropped connection) starts again from a fresh list. While the API server is unreachable it
//! retries with backoff (logging once per outage), and the last published set stays in force:
//! the processes keep serving what they knew.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The first wait after a failure; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between tries while the API server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one watch request stays open before it is resumed (below the API server's cap).
const WATCH_SECONDS: u32 = 290;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type ObjectKey = (String, String);

/// The objects an informer knows, as JSON.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The objects by namespace and name.
    pub objects: Arc<BTreeMap<ObjectKey, Value>>,
    /// The kind has been listed at least once (before that, `objects` is empty for want of
    /// knowing, not because there are none).
    pub synced: bool,
}

/// One kind followed from the API server; the task stops when the informer is dropped.
pub struct Informer {
    rx: watch::Receiver<Snapshot>,
    task: JoinHandle<()>,
}

impl Informer {
    /// Follows the objects of `api` (all namespaces or one, as `api` was made) matching
    /// `labels` (a label selector; empty: all). `what` names them in logs.
    pub fn start(api: Api<DynamicObject>, labels: &str, what: &str) -> Informer {
        Self::start_with_fields(api, labels, "", what)
    }

    /// [`Informer::start`] narrowed by a field selector too (`type=kubernetes.io/tls`, say;
    /// empty: none).
    pub fn start_with_fields(
        api: Api<DynamicObject>,
        labels: &str,
        fields: &str,
        what: &str,
    ) -> Informer {
        let (tx, rx) = watch::channel(Snapshot::default());
        let selector = Selector {
            labels: labels.to_string(),
            fields: fields.to_string(),
        };
        let task = tokio::spawn(follow(api, selector, what.to_string(), tx));
        Informer { rx, task }
    }

    /// A receiver of every new set (see [`watch::Receiver::changed`]).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.rx.clone()
    }

    /// The set in force.
    pub fn snapshot(&self) -> Snapshot {
        self.rx.borrow().clone()
    }
}

impl Drop for Informer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key_of(obj: &DynamicObject) -> ObjectKey {
    (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

fn publish(tx: &watch::Sender<Snapshot>, objects: &BTreeMap<ObjectKey, Value>) {
    tx.send_replace(Snapshot {
        objects: Arc::new(objects.clone()),
        synced: true,
    });
}

/// Which objects of the kind are followed.
struct Selector {
    labels: String,
    fields: String,
}

impl Selector {
    fn list(&self) -> ListParams {
        let mut lp = ListParams::default();
        if !self.labels.is_empty() {
            lp = lp.labels(&self.labels);
        }
        if !self.fields.is_empty() {
            lp = lp.fields(&self.fields);
        }
        lp
    }

    fn watch(&self) -> WatchParams {
        let mut wp = WatchParams::default().timeout(WATCH_SECONDS);
        if !self.labels.is_empty() {
            wp = wp.labels(&self.labels);
        }
        if !self.fields.is_empty() {
            wp = wp.fields(&self.fields);
        }
        wp
    }
}

/// Why a watch stopped.
enum Ended {
    /// The server closed it after its timeout: resume from the last resourceVersion.
    TimedOut,
    /// It failed or the version is gone: list again.
    Failed(String),
}

async fn follow(
    api: Api<DynamicObject>,
    selector: Selector,
    what: String,
    tx: watch::Sender<Snapshot>,
) {
    let mut backoff = MIN_BACKOFF;
    // Separate from the list's: a watch refused at once (no permission to watch, say) must
    // not turn into a relist every 200 ms.
    let mut watch_backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        let list = match api.list(&selector.list()).await {
            Ok(list) => list,
            Err(e) => {
                if !failing {
                    tracing::warn!(%what, error = %e, "cannot list from the API server; keeping the last known state and retrying with backoff");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if failing {
            tracing::info!(%what, "listing from the API server again");
            failing = false;
        }
        backoff = MIN_BACKOFF;
        let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
        let mut objects: BTreeMap<ObjectKey, Value> = BTreeMap::new();
        for obj in list.items {
            if let Ok(v) = serde_json::to_value(&obj) {
                objects.insert(key_of(&obj), v);
            }
        }
        publish(&tx, &objects);
        loop {
            let from = rv.clone();
            match watch_once(&api, &selector, &mut rv, &mut objects, &tx).await {
                Ended::TimedOut => watch_backoff = MIN_BACKOFF,
                Ended::Failed(why) => {
                    tracing::debug!(%what, %why, "watch ended; listing again");
                    if rv != from {
                        // It delivered before failing (a 410 Gone in time, a dropped
                        // connection): relist soon.
                        watch_backoff = MIN_BACKOFF;
                    }
                    tokio::time::sleep(watch_backoff).await;
                    watch_backoff = (watch_backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
    }
}

/// Follows one watch request from `rv`, applying each change and publishing once per burst
/// (the events already arrived), not once per event.
async fn watch_once(
    api: &Api<DynamicObject>,
    selector: &Selector,
    rv: &mut String,
    objects: &mut BTreeMap<ObjectKey, Value>,
    tx: &watch::Sender<Snapshot>,
) -> Ended {
    let stream = match api.watch(&selector.watch(), rv).await {
        Ok(s) => s,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let mut stream = std::pin::pin!(stream);
    while let Some(first) = stream.next().await {
        let mut changed = false;
        let mut event = Some(first);
        while let Some(ev) = event {
            match apply_event(ev, rv, objects) {
                Ok(c) => changed |= c,
                Err(ended) => {
                    if changed {
                        publish(tx, objects);
                    }
                    return ended;
                }
            }
            event = stream.next().now_or_never().flatten();
        }
        if changed {
            publish(tx, objects);
        }
    }
    Ended::TimedOut
}

/// Applies one watch event to `objects`; whether they changed, or why the watch is over.
fn apply_event(
    event: kube::Result<WatchEvent<DynamicObject>>,
    rv: &mut String,
    objects: &mut BTreeMap<ObjectKey, Value>,
) -> Result<bool, Ended> {
    let (obj, deleted) = match event {
        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => (o, false),
        Ok(WatchEvent::Deleted(o)) => (o, true),
        Ok(WatchEvent::Bookmark(b)) => {
            *rv = b.metadata.resource_version;
            return Ok(false);
        }
        Ok(WatchEvent::Error(status)) => return Err(Ended::Failed(status.message)),
        Err(e) => return Err(Ended::Failed(e.to_string())),
    };
    if let Some(v) = obj.metadata.resource_version.clone() {
        *rv = v;
    }
    let key = key_of(&obj);
    if deleted {
        objects.remove(&key);
    } else if let Ok(v) = serde_json::to_value(&obj) {
        objects.insert(key, v);
    }
    Ok(true)
}

//! `ClusterStore` (the `Store` seam over Kubernetes) against a stateful API server on
//! loopback, through kube's real client: reads from the informer cache, events from other
//! clients' writes, writes that read their own result, conflicts, status through the
//! subresource, deletes, and an API server that goes away and comes back.

use std::sync::Arc;
use std::time::Duration;

use rouse_kube::cache::ClusterStore;
use rouse_store::{EventType, Kind, Store, StoreError};
use serde_json::json;

mod common;

use common::fake::Fake;
use common::until;

const KSVC: &str = "apis/serving.knative.dev/v1/services";
const ROUTES: &str = "apis/serving.knative.dev/v1/routes";

fn ksvc(name: &str) -> serde_json::Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"template": {"spec": {"containers": [{"image": "app"}]}}}})
}

/// The store runs its client on its own runtime, as `rouse controller` does.
fn store_on(fake: &Fake) -> (Arc<ClusterStore>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(ClusterStore::start(
        fake.client.clone(),
        rt.handle().clone(),
    ));
    (store, rt)
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_come_from_the_cache_and_writes_read_back() {
    let fake = Fake::start().await;
    fake.put(KSVC, ksvc("existing"));
    let (store, rt) = store_on(&fake);
    tokio::time::timeout(Duration::from_secs(20), store.wait_synced())
        .await
        .expect("caches sync");
    assert!(store.is_synced());

    let got = store.get(Kind::Service, "shop", "existing").unwrap();
    assert_eq!(
        got["spec"]["template"]["spec"]["containers"][0]["image"],
        "app"
    );
    let (items, from) = store.list(Kind::Service, Some("shop")).unwrap();
    assert_eq!(items.len(), 1);
    assert!(
        store
            .list(Kind::Service, Some("other"))
            .unwrap()
            .0
            .is_empty()
    );
    // Only reads of this object count: the informers' own list and watch calls may still be
    // arriving for other kinds.
    let object_gets = || {
        fake.seen()
            .iter()
            .filter(|(m, p)| m == "GET" && p.contains("/services/existing"))
            .count()
    };
    let gets_before = object_gets();
    for _ in 0..10 {
        store.get(Kind::Service, "shop", "existing").unwrap();
    }
    let gets_after = object_gets();
    assert_eq!(gets_before, gets_after, "reads are served from the cache");

    // Another client's write arrives as an event on the store's watch.
    let mut watch = store.watch(from).unwrap();
    fake.put(KSVC, ksvc("from-kubectl"));
    let ev = tokio::time::timeout(Duration::from_secs(20), watch.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.event_type, EventType::Added);
    assert_eq!(ev.object["metadata"]["name"], "from-kubectl");
    assert_eq!(ev.resource_version, from + 1);

    // A write is readable at once, before its watch event could arrive.
    let created = blocking(|| store.create(Kind::Service, ksvc("mine"))).unwrap();
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        store.get(Kind::Service, "shop", "mine").unwrap()["metadata"]["resourceVersion"],
        rv.as_str()
    );
    assert!(matches!(
        blocking(|| store.create(Kind::Service, ksvc("mine"))),
        Err(StoreError::AlreadyExists { .. })
    ));

    // A stale resourceVersion is a Conflict; none at all updates the cached version.
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = "1".into();
    stale["spec"]["template"]["spec"]["containers"][0]["image"] = "v2".into();
    assert!(matches!(
        blocking(|| store.update(Kind::Service, stale.clone())),
        Err(StoreError::Conflict { .. })
    ));
    let mut unconditional = stale.clone();
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let updated = blocking(|| store.update(Kind::Service, unconditional)).unwrap();
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(
        fake.object(KSVC, "shop", "mine").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        "v2"
    );

    // Status goes through the subresource.
    let mut with_status = updated.clone();
    with_status["status"] = json!({"observedGeneration": 2});
    let stored = blocking(|| store.update_status(Kind::Service, with_status)).unwrap();
    assert_eq!(stored["status"]["observedGeneration"], 2);
    assert!(fake.seen().iter().any(|(m, p)| m == "PUT"
        && p.starts_with("/apis/serving.knative.dev/v1/namespaces/shop/services/mine/status")));

    // Delete: gone from the cache at once, and from the server.
    blocking(|| store.delete(Kind::Service, "shop", "mine")).unwrap();
    assert!(matches!(
        store.get(Kind::Service, "shop", "mine"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(fake.object(KSVC, "shop", "mine").is_none());

    // The garbage collector's deletes (another client) reach the cache through the watch.
    fake.remove(KSVC, "shop", "existing");
    until("the cascade's delete", || {
        store.get(Kind::Service, "shop", "existing").is_err()
    })
    .await;
    rt.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_waited_out() {
    let fake = Fake::start().await;
    fake.state.lock().unwrap().down = true;
    let (store, rt) = store_on(&fake);
    // While the server is down nothing syncs, reads are empty, writes fail cleanly.
    until("a few list tries", || {
        fake.seen().iter().filter(|(m, _)| m == "GET").count() >= 6
    })
    .await;
    assert!(!store.is_synced());
    assert!(matches!(
        blocking(|| store.create(Kind::Route, json!({"metadata": {"name": "r"}}))),
        Err(StoreError::Backend(_))
    ));
    fake.state.lock().unwrap().down = false;
    fake.put(
        ROUTES,
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
                            "metadata": {"name": "r", "namespace": "shop"}, "spec": {}}),
    );
    tokio::time::timeout(Duration::from_secs(40), store.wait_synced())
        .await
        .expect("caches sync once the server is back");
    until("the route in the cache", || {
        store.get(Kind::Route, "shop", "r").is_ok()
    })
    .await;
    rt.shutdown_background();
}

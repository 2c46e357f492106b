//! `Informer` (what `rouse gateway` and `rouse activator` follow the cluster with) against a
//! stateful API server on loopback, through kube's real client: the first list, changes from
//! other clients, deletions, and an API server that is not there at first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use rouse_kube::informer::{Informer, ObjectKey, Snapshot};
use serde_json::{Value, json};

mod common;

use common::fake::Fake;

const SLICES: &str = "apis/discovery.k8s.io/v1/endpointslices";

fn slice(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": "hello-00001"}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [ip]}]})
}

fn slices(client: &kube::Client) -> Informer {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<EndpointSlice>(&()));
    Informer::start(api, "kubernetes.io/service-name", "endpointslices")
}

/// Polls the informer until `cond` holds for its set (bounded).
async fn until(what: &str, informer: &Informer, cond: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rx = informer.subscribe();
    loop {
        let s = rx.borrow_and_update().clone();
        if cond(&s) {
            return s;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

fn address(objects: &BTreeMap<ObjectKey, Value>, name: &str) -> Option<String> {
    objects
        .get(&("shop".to_string(), name.to_string()))
        .and_then(|o| {
            o["endpoints"][0]["addresses"][0]
                .as_str()
                .map(str::to_string)
        })
}

#[tokio::test]
async fn lists_then_follows_additions_changes_and_deletions() {
    let fake = Fake::start().await;
    fake.put(SLICES, slice("a", "10.0.0.1"));
    let informer = slices(&fake.client);
    let s = until("the first list", &informer, |s| s.synced).await;
    assert_eq!(address(&s.objects, "a").as_deref(), Some("10.0.0.1"));
    // The selector goes to the API server with the list.
    assert!(
        fake.seen()
            .iter()
            .any(|(_, p)| p.contains("labelSelector=kubernetes.io%2Fservice-name")),
        "{:?}",
        fake.seen()
    );

    fake.put(SLICES, slice("b", "10.0.0.2"));
    fake.put(SLICES, slice("a", "10.0.0.9"));
    let s = until("the additions and the change", &informer, |s| {
        address(&s.objects, "b").is_some()
            && address(&s.objects, "a").as_deref() == Some("10.0.0.9")
    })
    .await;
    assert_eq!(s.objects.len(), 2);

    fake.remove(SLICES, "shop", "a");
    let s = until("the deletion", &informer, |s| s.objects.len() == 1).await;
    assert_eq!(address(&s.objects, "b").as_deref(), Some("10.0.0.2"));
}

#[tokio::test]
async fn an_api_server_that_is_not_there_yet_is_waited_for() {
    // An address nobody listens on yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let informer = slices(&client);
    // Refused: nothing known, and nothing claimed to be known.
    let s = informer.snapshot();
    assert!(!s.synced && s.objects.is_empty());

    // The server comes up on that address with an object: the informer's retries find it.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let fake = Fake::start_on(listener);
    fake.put(SLICES, slice("a", "10.0.0.1"));
    let s = until("the list once the server is up", &informer, |s| s.synced).await;
    assert_eq!(address(&s.objects, "a").as_deref(), Some("10.0.0.1"));
    fake.put(SLICES, slice("b", "10.0.0.2"));
    until("a change after the outage", &informer, |s| {
        s.objects.len() == 2
    })
    .await;
}

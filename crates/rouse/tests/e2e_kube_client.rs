//! End to end: kube-rs (a Kubernetes client library) through its dynamic API against the real
//! `rouse serve --tls`, configured only by the kubeconfig `rouse kubeconfig` prints: discovery,
//! create, get, list with a label selector, merge patch, watch and delete; aggregated
//! discovery, the status subresource and deletecollection with a set-based selector.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{StreamExt as _, TryStreamExt as _};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config, Discovery};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_dynamic_api() {
    let p = Platform::start_with(&["--tls"]);
    let kubeconfig = Kubeconfig::from_yaml(&p.cli_ok(&["kubeconfig"])).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();

    // Discovery finds Knative's Service by its group.
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let gvk = GroupVersionKind::gvk("serving.knative.dev", "v1", "Service");
    let (ar, caps) = discovery.resolve_gvk(&gvk).expect("Service discovered");
    assert_eq!(ar.plural, "services");
    assert!(caps.supports_operation("watch"));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let _: &ApiResource = &ar;

    let svc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "dyn", "labels": {"app": "dyn"}},
        "spec": {"template": {"spec": {"containers": [{"command": ["/bin/sleep", "1000"]}]}}},
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &svc).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // A watch from the create's resourceVersion sees the controller's status updates.
    let mut events = api
        .watch(&WatchParams::default().fields("metadata.name=dyn"), &rv)
        .await
        .unwrap()
        .boxed();
    let saw = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(ev) = events.try_next().await.unwrap() {
            if let WatchEvent::Modified(o) = ev
                && o.data["status"]["latestCreatedRevisionName"] == "dyn-00001"
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(saw, "the watch showed the first revision");

    let listed = api
        .list(&ListParams::default().labels("app=dyn"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(
        api.list(&ListParams::default().labels("app=other"))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let patched = api
        .patch(
            "dyn",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"note": "x"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["note"], "x");
    assert_eq!(api.get("dyn").await.unwrap().metadata.generation, Some(1));

    // An invalid write comes back as a Kubernetes Status with the field.
    let err = api
        .patch(
            "dyn",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"traffic": [{"latestRevision": true, "percent": 90}]}})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("not a Status: {err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.contains("spec.traffic"),
        "{}",
        status.message
    );

    api.delete("dyn", &DeleteParams::background())
        .await
        .unwrap();
    let gone = api.get_opt("dyn").await.unwrap();
    assert!(gone.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_status_and_delete_collection() {
    let p = Platform::start_with(&["--tls"]);
    let kubeconfig = Kubeconfig::from_yaml(&p.cli_ok(&["kubeconfig"])).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();

    // Aggregated discovery (apidiscovery.k8s.io/v2) finds the kinds and their status.
    let discovery = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let gvk = GroupVersionKind::gvk("serving.knative.dev", "v1", "Service");
    let (ar, caps) = discovery.resolve_gvk(&gvk).expect("Service discovered");
    assert!(caps.supports_operation("deletecollection"));
    assert!(
        caps.subresources
            .iter()
            .any(|(sub, _)| sub.plural == "status"),
        "{:?}",
        caps.subresources
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    for (name, tier) in [("one", "a"), ("two", "b"), ("three", "c")] {
        let svc: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name, "labels": {"tier": tier}},
            "spec": {"template": {"spec": {"containers": [{"command": ["/bin/sleep", "1000"]}]}}},
        }))
        .unwrap();
        api.create(&PostParams::default(), &svc).await.unwrap();
    }

    // The status subresource: written alone, checked against the schema.
    let read = api.get_status("one").await.unwrap();
    assert_eq!(read.metadata.name.as_deref(), Some("one"));
    let written = api
        .patch_status(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 42}, "metadata": {"labels": {"tier": "z"}}})),
        )
        .await
        .unwrap();
    assert_eq!(written.data["status"]["observedGeneration"], 42);
    assert_eq!(written.metadata.labels.unwrap()["tier"], "a");
    let err = api
        .patch_status(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": "no"}})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("not a Status: {err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));

    // deletecollection with a set-based selector deletes just what it matches.
    let deleted = api
        .delete_collection(
            &DeleteParams::background(),
            &ListParams::default().labels("tier in (a,b)"),
        )
        .await
        .unwrap();
    let names: Vec<String> = deleted
        .left()
        .expect("the deleted objects")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    assert_eq!(names, ["one", "two"]);
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    assert_eq!(left, ["three"]);
}

//! `KubeStore` against a scripted API server on loopback: each test lists the requests it
//! expects (method and path) and the answers to give, the way kube's mock service is scripted,
//! but over a real socket and through kube's real client.

use rouse_kube::store::CONFLICT_RETRIES;
use rouse_store::{Kind, StoreError};
use serde_json::{Value, json};

mod common;

use common::{serve, status, step, watch_step};

const KSVC: &str = "/apis/serving.knative.dev/v1/namespaces/shop/services";

fn ksvc(name: &str, rv: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "resourceVersion": rv},
        "spec": spec,
    })
}

#[tokio::test]
async fn get_and_list_address_knatives_resources() {
    let s = serve(vec![
        step("GET", &format!("{KSVC}/cart"), 200, ksvc("cart", "7", json!({}))),
        step("GET", &format!("{KSVC}/gone"), 404, status(404, "NotFound", "services.serving.knative.dev \"gone\" not found")),
        step("GET", KSVC, 200, json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "ServiceList",
            "metadata": {"resourceVersion": "42"},
            "items": [ksvc("zeta", "5", json!({})), ksvc("alpha", "6", json!({}))],
        })),
        step("GET", "/apis/autoscaling.internal.knative.dev/v1alpha1/podautoscalers", 200, json!({
            "apiVersion": "autoscaling.internal.knative.dev/v1alpha1", "kind": "PodAutoscalerList",
            "metadata": {"resourceVersion": "43"}, "items": [],
        })),
    ])
    .await;
    let got = s.store.get(Kind::Service, "shop", "cart").await.unwrap();
    assert_eq!(got["metadata"]["resourceVersion"], "7");
    assert_eq!(got["kind"], "Service");
    let err = s
        .store
        .get(Kind::Service, "shop", "gone")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { kind: Kind::Service, name, .. } if name == "gone"),
        "{err:?}"
    );
    let (items, rv) = s.store.list(Kind::Service, Some("shop")).await.unwrap();
    assert_eq!(rv, 42);
    let names: Vec<&str> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let (items, rv) = s.store.list(Kind::PodAutoscaler, None).await.unwrap();
    assert!(items.is_empty());
    assert_eq!(rv, 43);
    s.assert_done();
}

#[tokio::test]
async fn create_sends_the_object_and_maps_already_exists() {
    let s = serve(vec![
        step(
            "POST",
            KSVC,
            201,
            ksvc("cart", "1", json!({"template": {}})),
        ),
        step(
            "POST",
            KSVC,
            409,
            status(
                409,
                "AlreadyExists",
                "services.serving.knative.dev \"cart\" already exists",
            ),
        ),
    ])
    .await;
    let mut obj = ksvc("cart", "99", json!({"template": {}}));
    obj["apiVersion"] = json!("wrong/v0");
    let created = s.store.create(Kind::Service, obj.clone()).await.unwrap();
    assert_eq!(created["metadata"]["resourceVersion"], "1");
    let sent = &s.seen()[0].2;
    assert_eq!(
        sent["apiVersion"], "serving.knative.dev/v1",
        "the kind's apiVersion is sent"
    );
    assert!(
        sent["metadata"].get("resourceVersion").is_none(),
        "no stale resourceVersion on create"
    );
    assert!(sent["metadata"].get("uid").is_none());
    let err = s.store.create(Kind::Service, obj).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    s.assert_done();
}

#[tokio::test]
async fn status_goes_through_the_subresource_and_conflicts_map() {
    let s = serve(vec![
        step("PUT", &format!("{KSVC}/cart/status"), 200, ksvc("cart", "8", json!({}))),
        step("PUT", &format!("{KSVC}/cart"), 409, status(409, "Conflict",
            "Operation cannot be fulfilled on services.serving.knative.dev \"cart\": the object has been modified; please apply your changes to the latest version and try again")),
    ])
    .await;
    let mut obj = ksvc("cart", "7", json!({}));
    obj["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    s.store
        .update_status(Kind::Service, obj.clone())
        .await
        .unwrap();
    assert_eq!(s.seen()[0].2["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(s.seen()[0].2["metadata"]["resourceVersion"], "7");
    let err = s.store.update(Kind::Service, obj).await.unwrap_err();
    match err {
        StoreError::Conflict {
            kind,
            name,
            message,
            ..
        } => {
            assert_eq!((kind, name.as_str()), (Kind::Service, "cart"));
            assert!(message.contains("has been modified"));
        }
        other => panic!("want Conflict, got {other:?}"),
    }
    s.assert_done();
}

#[tokio::test]
async fn a_lost_race_is_retried_from_fresh_state() {
    let path = format!("{KSVC}/cart");
    let conflict = status(409, "Conflict", "the object has been modified");
    let s = serve(vec![
        step("GET", &path, 200, ksvc("cart", "1", json!({"a": 1}))),
        step("PUT", &path, 409, conflict.clone()),
        step("GET", &path, 200, ksvc("cart", "2", json!({"a": 2}))),
        step(
            "PUT",
            &path,
            200,
            ksvc("cart", "3", json!({"a": 2, "b": true})),
        ),
    ])
    .await;
    let out = s
        .store
        .update_with_retry(Kind::Service, "shop", "cart", false, |o| {
            o["spec"]["b"] = json!(true);
            true
        })
        .await
        .unwrap();
    assert_eq!(out["metadata"]["resourceVersion"], "3");
    let seen = s.seen();
    // The second write is the change applied to the fresh copy, at its resourceVersion.
    assert_eq!(seen[3].2["metadata"]["resourceVersion"], "2");
    assert_eq!(seen[3].2["spec"], json!({"a": 2, "b": true}));
    s.assert_done();

    // Conflicts every time: give up after the retries, with the Conflict.
    let mut script = Vec::new();
    for _ in 0..=CONFLICT_RETRIES {
        script.push(step("GET", &path, 200, ksvc("cart", "1", json!({}))));
        script.push(step("PUT", &path, 409, conflict.clone()));
    }
    let s = serve(script).await;
    let err = s
        .store
        .update_with_retry(Kind::Service, "shop", "cart", false, |_| true)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    s.assert_done();
}

#[tokio::test]
async fn an_object_deleted_during_a_reconcile_is_not_recreated() {
    let path = format!("{KSVC}/cart");
    let s = serve(vec![
        step("GET", &path, 200, ksvc("cart", "1", json!({}))),
        step(
            "PUT",
            &path,
            404,
            status(
                404,
                "NotFound",
                "services.serving.knative.dev \"cart\" not found",
            ),
        ),
    ])
    .await;
    let err = s
        .store
        .update_with_retry(Kind::Service, "shop", "cart", false, |o| {
            o["spec"]["x"] = json!(1);
            true
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(
        s.seen().iter().all(|(m, _, _)| m != "POST"),
        "nothing was created"
    );
    s.assert_done();
}

#[tokio::test]
async fn delete_cascades_in_the_background_with_a_uid_precondition() {
    let path = format!("{KSVC}/cart");
    let s = serve(vec![
        step("GET", &path, 200, ksvc("cart", "4", json!({}))),
        step("DELETE", &path, 200, ksvc("cart", "5", json!({}))),
    ])
    .await;
    let gone = s.store.delete(Kind::Service, "shop", "cart").await.unwrap();
    assert_eq!(gone["metadata"]["name"], "cart");
    let body = &s.seen()[1].2;
    assert_eq!(body["propagationPolicy"], "Background");
    assert_eq!(body["preconditions"]["uid"], "uid-cart");
    s.assert_done();
}

#[tokio::test]
async fn missing_crds_and_permissions_are_named() {
    let s = serve(vec![
        step("GET", "/apis/networking.internal.knative.dev/v1alpha1/namespaces/shop/serverlessservices/x", 404,
             status(404, "NotFound", "the server could not find the requested resource")),
        step("GET", "/apis/serving.knative.dev/v1/namespaces/shop/revisions/x", 403,
             status(403, "Forbidden", "revisions.serving.knative.dev \"x\" is forbidden: User \"system:serviceaccount:knative-serving:rouse-activator\" cannot get resource \"revisions\"")),
    ])
    .await;
    let err = s
        .store
        .get(Kind::ServerlessService, "shop", "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("serverlessservices.networking.internal.knative.dev") && err.contains("CRD"),
        "{err}"
    );
    let err = s
        .store
        .get(Kind::Revision, "shop", "x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("forbidden") && err.contains("RBAC") && err.contains("revisions"),
        "{err}"
    );
    s.assert_done();
}

#[tokio::test]
async fn a_revisions_objects_and_a_routes_ingress_are_server_side_applied() {
    use rouse_api::meta::Resource;
    use rouse_api::networking::{ServerlessService, SksMode};
    use rouse_api::serving::{Revision, Route};
    use rouse_kube::apply::{apply, apply_ingress};
    use rouse_kube::revision::{
        DeploymentConfig, deployment, private_service, public_endpoint_slices, public_endpoints,
        public_service,
    };
    use rouse_kube::route::{IngressConfig, ResolvedTarget, ingress};

    let mut rev = Revision::new_named("shop", "cart-00001");
    rev.metadata.uid = "rev-uid".into();
    rev.spec =
        serde_json::from_value(json!({"containers": [{"image": "example.org/cart"}]})).unwrap();
    let mut sks = ServerlessService::new_named("shop", "cart-00001");
    sks.metadata.uid = "sks-uid".into();
    sks.spec.mode = SksMode::Proxy;
    let mut route = Route::new_named("shop", "cart");
    route.metadata.uid = "route-uid".into();

    let d = deployment(&rev, &DeploymentConfig::default(), 1);
    let private = private_service(&sks, "rev-uid");
    let public = public_service(&sks);
    let slices = public_endpoint_slices(&sks, &public_endpoints(&sks, &[], &[]));
    let ing = ingress(
        &route,
        &[ResolvedTarget {
            tag: String::new(),
            revision: "cart-00001".into(),
            percent: 100,
            h2c: false,
        }],
        &Default::default(),
        &IngressConfig {
            network: Default::default(),
            domain: "example.com".into(),
            domains: Default::default(),
            tag_header_routing: false,
        },
    );
    let s = serve(vec![
        step(
            "PATCH",
            "/apis/apps/v1/namespaces/shop/deployments/cart-00001-deployment",
            200,
            echo(&d),
        ),
        step(
            "PATCH",
            "/api/v1/namespaces/shop/services/cart-00001-private",
            200,
            echo(&private),
        ),
        step(
            "PATCH",
            "/api/v1/namespaces/shop/services/cart-00001",
            200,
            echo(&public),
        ),
        step(
            "PATCH",
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/cart-00001-ipv4-0",
            200,
            echo(&slices[0]),
        ),
        step(
            "PATCH",
            "/apis/networking.internal.knative.dev/v1alpha1/namespaces/shop/ingresses/cart",
            200,
            echo(&ing),
        ),
    ])
    .await;
    let applied = apply(&s.client, &d).await.unwrap();
    assert_eq!(
        applied.metadata.name.as_deref(),
        Some("cart-00001-deployment")
    );
    apply(&s.client, &private).await.unwrap();
    apply(&s.client, &public).await.unwrap();
    apply(&s.client, &slices[0]).await.unwrap();
    let stored = apply_ingress(&s.client, &ing).await.unwrap();
    assert_eq!(
        stored["spec"]["rules"][0]["http"]["paths"][0]["splits"][0]["serviceName"],
        "cart-00001"
    );
    for (i, (method, path, body)) in s.seen().iter().enumerate() {
        assert_eq!(method, "PATCH");
        assert!(
            path.contains("fieldManager=rouse-controller") && path.contains("force=true"),
            "{path}"
        );
        assert_eq!(
            s.content_types.lock().unwrap()[i],
            "application/apply-patch+yaml"
        );
        // The whole object is stated, owner reference included.
        assert!(
            body["apiVersion"].is_string() && body["kind"].is_string(),
            "{body}"
        );
        assert!(
            body["metadata"]["ownerReferences"][0]["uid"].is_string(),
            "{body}"
        );
    }
    assert_eq!(
        s.seen()[0].2["spec"]["template"]["spec"]["containers"][1]["name"],
        "queue-proxy"
    );
    s.assert_done();
}

/// The answer that echoes what was applied, as an API server would.
fn echo<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

#[tokio::test]
async fn watch_turns_kubernetes_events_into_the_stores() {
    use futures_util::StreamExt;
    use rouse_store::EventType;

    let ev = |t: &str, o: Value| json!({"type": t, "object": o});
    let s = serve(vec![
        watch_step(
            KSVC,
            &[
                ev("ADDED", ksvc("cart", "11", json!({}))),
                ev(
                    "BOOKMARK",
                    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                  "metadata": {"resourceVersion": "12"}}),
                ),
                ev("MODIFIED", ksvc("cart", "13", json!({"x": 1}))),
                ev("DELETED", ksvc("cart", "14", json!({"x": 1}))),
            ],
        ),
        watch_step(
            KSVC,
            &[ev(
                "ERROR",
                status(410, "Expired", "too old resource version: 3 (1234)"),
            )],
        ),
    ])
    .await;
    let events: Vec<_> = s
        .store
        .watch(Kind::Service, Some("shop"), 10)
        .await
        .unwrap()
        .collect()
        .await;
    let got: Vec<(EventType, u64)> = events
        .iter()
        .map(|e| {
            let e = e.as_ref().unwrap();
            assert_eq!(e.kind, Kind::Service);
            assert_eq!(e.object["metadata"]["name"], "cart");
            (e.event_type, e.resource_version)
        })
        .collect();
    assert_eq!(
        got,
        [
            (EventType::Added, 11),
            (EventType::Modified, 13),
            (EventType::Deleted, 14)
        ]
    );
    let (_, path, _) = &s.seen()[0];
    assert!(
        path.contains("watch=true") && path.contains("resourceVersion=10"),
        "{path}"
    );
    let mut expired = s.store.watch(Kind::Service, Some("shop"), 3).await.unwrap();
    match expired.next().await {
        Some(Err(StoreError::Expired { requested, oldest })) => {
            assert_eq!((requested, oldest), (3, 1234))
        }
        other => panic!("want Expired, got {other:?}"),
    }
    s.assert_done();
}

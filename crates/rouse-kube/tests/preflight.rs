//! The start-up checks of `rouse controller`: missing CRDs found through discovery, missing
//! permissions through SelfSubjectAccessReviews of exactly the rules `rouse install` grants.

use std::sync::{Arc, Mutex};

use rouse_kube::install::Role;
use rouse_kube::preflight::{missing_crds, missing_permissions, permissions};
use serde_json::{Value, json};

mod common;

use common::answering;

#[tokio::test]
async fn missing_crds_are_named() {
    let client = answering(|_, path, _| match path {
        "/apis/serving.knative.dev/v1" => (
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "serving.knative.dev/v1",
                   "resources": [
                       {"name": "services", "singularName": "service", "namespaced": true, "kind": "Service", "verbs": ["get"]},
                       {"name": "services/status", "singularName": "", "namespaced": true, "kind": "Service", "verbs": ["get"]},
                       {"name": "routes", "singularName": "route", "namespaced": true, "kind": "Route", "verbs": ["get"]},
                   ]}),
        ),
        "/apis/autoscaling.internal.knative.dev/v1alpha1" => (
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "autoscaling.internal.knative.dev/v1alpha1",
                   "resources": [{"name": "podautoscalers", "singularName": "podautoscaler", "namespaced": true, "kind": "PodAutoscaler", "verbs": ["get"]}]}),
        ),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                   "reason": "NotFound", "message": "the server could not find the requested resource"}),
        ),
    })
    .await;
    assert_eq!(
        missing_crds(&client).await.unwrap(),
        [
            "configurations.serving.knative.dev",
            "revisions.serving.knative.dev",
            "serverlessservices.networking.internal.knative.dev",
            "ingresses.networking.internal.knative.dev",
            "domainmappings.serving.knative.dev",
        ]
    );
}

#[tokio::test]
async fn missing_permissions_are_named() {
    let asked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = asked.clone();
    let client = answering(move |method, path, body| {
        assert_eq!(
            (method, path),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            )
        );
        seen.lock().unwrap().push(body.clone());
        let attrs = &body["spec"]["resourceAttributes"];
        // This identity may do everything but update its certificates' Secret and write
        // Deployments' scale.
        let denied = (attrs["resource"] == "secrets" && attrs["verb"] == "update")
            || attrs["subresource"] == "scale";
        let mut answer = body.clone();
        answer["status"] = json!({"allowed": !denied});
        (201, answer)
    })
    .await;
    let wanted = permissions(Role::Controller);
    let missing = missing_permissions(&client, wanted.clone()).await.unwrap();
    let text: Vec<String> = missing.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "get apps/deployments/scale",
            "update apps/deployments/scale",
            "patch apps/deployments/scale",
            "update core/secrets \"webhook-certs\" in knative-serving",
            "update core/secrets \"autoscaler-token\" in knative-serving",
        ]
    );
    // One review per permission the install grants, cluster-wide or in knative-serving.
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), wanted.len());
    assert!(asked.iter().any(|r| {
        let a = &r["spec"]["resourceAttributes"];
        a["resource"] == "leases" && a["namespace"] == "knative-serving" && a["verb"] == "update"
    }));
    assert!(asked.iter().any(|r| {
        let a = &r["spec"]["resourceAttributes"];
        a["resource"] == "mutatingwebhookconfigurations"
            && a["name"] == "webhook.serving.knative.dev"
            && a.get("namespace").is_none()
    }));
}

//! The admission webhooks over real TLS on loopback: AdmissionReviews in, answers out (the
//! defaulting patch, Knative's refusals with field paths, ConfigMap validation, bad requests),
//! a renewed certificate served without a restart; and, against the stateful fake API
//! server, the certificates' Secret (created once, shared, renewed by compare-and-swap), the
//! CA bundle and URL registration, and the ConfigMaps read live.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rouse_api::config::{Config, SharedConfig};
use rouse_kube::install::{InstallOptions, manifests};
use rouse_kube::webhook::certs::{Certs, Lifetimes, SECRET_NAME, plan};
use rouse_kube::webhook::register::{register, sync_secret};
use rouse_kube::webhook::server::{CertSlot, serve, tls_config};
use rouse_kube::webhook::{WebhookOptions, path_of};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

mod common;

use common::fake::Fake;
use common::until;

const NS: &str = "knative-serving";
const SECRETS: &str = "api/v1/secrets";

struct Webhook {
    addr: std::net::SocketAddr,
    certs: Certs,
    slot: Arc<CertSlot>,
    config: SharedConfig,
}

async fn start_webhook() -> Webhook {
    let opts = WebhookOptions::new(NS);
    let certs = plan(
        None,
        &opts.names(),
        SystemTime::now(),
        &Lifetimes::default(),
    )
    .unwrap()
    .unwrap();
    let slot = CertSlot::new(certs.certified_key().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = SharedConfig::new(Config::default());
    tokio::spawn(serve(
        listener,
        tls_config(slot.clone()).unwrap(),
        config.clone(),
    ));
    Webhook {
        addr,
        certs,
        slot,
        config,
    }
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
    /// The certificate the server presented.
    peer: CertificateDer<'static>,
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS connection that trusts only the webhook's CA, verifying the name the API server
/// uses for the Service, offering `alpn`.
async fn connect(
    w: &Webhook,
    alpn: &[u8],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    CertificateDer<'static>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(w.certs.ca_bundle_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let name = ServerName::try_from("webhook.knative-serving.svc").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the webhook's certificate");
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    (tls, peer)
}

/// One HTTP/1.1 request over a fresh TLS connection.
async fn send(w: &Webhook, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
    let (tls, peer) = connect(w, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "webhook.knative-serving.svc")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
        peer,
    }
}

fn review(kind: &str, operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
    let (group, resource) = match kind {
        "ConfigMap" => ("", "configmaps"),
        "PodAutoscaler" => ("autoscaling.internal.knative.dev", "podautoscalers"),
        "ServerlessService" => ("networking.internal.knative.dev", "serverlessservices"),
        "Ingress" => ("networking.internal.knative.dev", "ingresses"),
        _ => ("serving.knative.dev", "services"),
    };
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "b2ab5a4c-1c1e-4b4e-9c1d-2f8f2b1f0c11",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "namespace": "shop", "operation": operation,
            "userInfo": {"username": "alice@example.com"},
            "object": object, "oldObject": old,
        }
    })
    .to_string()
    .into_bytes()
}

async fn post(w: &Webhook, path: &str, body: Vec<u8>) -> Value {
    let a = send(w, "POST", path, "application/json", body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(a.body["kind"], "AdmissionReview");
    assert_eq!(
        a.body["response"]["uid"],
        "b2ab5a4c-1c1e-4b4e-9c1d-2f8f2b1f0c11"
    );
    a.body["response"].clone()
}

fn ksvc() -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "shop",
                     "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        "spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/knative/helloworld-go"}]}}},
    })
}

/// The object as the mutating webhook leaves it (the API server validates after mutating).
fn defaulted(v: Value) -> Value {
    let mut typed: rouse_api::serving::Service = serde_json::from_value(v).unwrap();
    rouse_api::defaults::default_service(&mut typed, None, &Config::default());
    serde_json::to_value(&typed).unwrap()
}

fn patch_ops(response: &Value) -> Vec<Value> {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

#[tokio::test]
async fn defaulting_answers_with_knatives_defaults_as_a_json_patch() {
    let w = start_webhook().await;
    let r = post(&w, "/defaulting", review("Service", "CREATE", ksvc(), None)).await;
    assert_eq!(r["allowed"], true);
    let ops = patch_ops(&r);
    let has = |op: &str, path: &str, value: Value| {
        assert!(
            ops.contains(&json!({"op": op, "path": path, "value": value})),
            "no {op} {path}: {ops:#?}"
        )
    };
    has(
        "add",
        "/spec/template/spec/containers/0/name",
        json!("user-container"),
    );
    has("add", "/spec/template/spec/timeoutSeconds", json!(300));
    has(
        "add",
        "/spec/traffic",
        json!([{"latestRevision": true, "percent": 100}]),
    );
    has(
        "add",
        "/metadata/annotations",
        json!({"serving.knative.dev/creator": "alice@example.com",
               "serving.knative.dev/lastModifier": "alice@example.com"}),
    );
    // Nothing the types do not know is touched.
    assert!(
        !ops.iter()
            .any(|o| o["path"].as_str().unwrap().contains("managedFields")),
        "{ops:?}"
    );

    // The live config is what the webhook defaults with.
    let mut cfg = Config::default();
    cfg.defaults.revision_timeout_seconds = 120;
    w.config.set(cfg);
    let r = post(&w, "/defaulting", review("Service", "CREATE", ksvc(), None)).await;
    assert!(patch_ops(&r).contains(
        &json!({"op": "add", "path": "/spec/template/spec/timeoutSeconds", "value": 120})
    ));

    // An already defaulted object needs no patch.
    let mut typed: rouse_api::serving::Service = serde_json::from_value(ksvc()).unwrap();
    rouse_api::defaults::default_service(&mut typed, None, &w.config.get());
    for key in [
        "serving.knative.dev/creator",
        "serving.knative.dev/lastModifier",
    ] {
        typed
            .metadata
            .annotations
            .insert(key.into(), "alice@example.com".into());
    }
    let done = serde_json::to_value(&typed).unwrap();
    let r = post(&w, "/defaulting", review("Service", "CREATE", done, None)).await;
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none(), "{r}");
}

#[tokio::test]
async fn validation_refuses_with_knatives_message_and_field_path() {
    let w = start_webhook().await;
    let mut split = ksvc();
    split["spec"]["traffic"] = json!([{"latestRevision": true, "percent": 90}]);
    let r = post(
        &w,
        "/resource-validation",
        review("Service", "CREATE", defaulted(split), None),
    )
    .await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    assert_eq!(
        r["status"]["message"],
        "validation failed: Traffic targets sum to 90, want 100: spec.traffic"
    );
    assert_eq!(r["status"]["details"]["causes"][0]["field"], "spec.traffic");

    let r = post(
        &w,
        "/resource-validation",
        review("Service", "CREATE", defaulted(ksvc()), None),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test]
async fn domain_mappings_get_local_modes_rules() {
    let w = start_webhook().await;
    let dm = |ref_ns: &str| {
        json!({
            "apiVersion": "serving.knative.dev/v1beta1", "kind": "DomainMapping",
            "metadata": {"name": "shop.example.org", "namespace": "shop"},
            "spec": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                             "name": "hello", "namespace": ref_ns}},
        })
    };
    let r = post(
        &w,
        "/resource-validation",
        review("DomainMapping", "CREATE", dm("shop"), None),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = post(
        &w,
        "/resource-validation",
        review("DomainMapping", "CREATE", dm("elsewhere"), None),
    )
    .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["details"]["causes"][0]["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("spec.ref")),
        "{r}"
    );
    // Defaulting fills the reference's namespace with the mapping's own.
    let mut bare = dm("shop");
    bare["spec"]["ref"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let r = post(
        &w,
        "/defaulting",
        review("DomainMapping", "CREATE", bare, None),
    )
    .await;
    assert!(
        patch_ops(&r)
            .contains(&json!({"op": "add", "path": "/spec/ref/namespace", "value": "shop"})),
        "{r}"
    );
}

#[tokio::test]
async fn the_internal_kinds_are_validated_as_knative_does() {
    let w = start_webhook().await;
    let pa = |cc: i64| {
        json!({
            "apiVersion": "autoscaling.internal.knative.dev/v1alpha1", "kind": "PodAutoscaler",
            "metadata": {"name": "cart-00001", "namespace": "shop", "managedFields": [{}]},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "cart-00001-deployment"},
                     "containerConcurrency": cc, "protocolType": "http1"},
            "status": {"desiredScale": 1},
        })
    };
    let validate = |kind: &'static str, obj: Value| {
        post(
            &w,
            "/resource-validation",
            review(kind, "CREATE", obj, None),
        )
    };
    let r = validate("PodAutoscaler", pa(10)).await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = validate("PodAutoscaler", pa(5000)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(
        r["status"]["message"],
        "validation failed: expected 0 <= 5000 <= 1000: spec.containerConcurrency"
    );
    let sks = json!({
        "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "ServerlessService",
        "metadata": {"name": "cart-00001", "namespace": "shop"},
        "spec": {"mode": "Sideways", "objectRef": {}},
    });
    let r = validate("ServerlessService", sks).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.mode")),
        "{r}"
    );
    let ing = |percent: i64| {
        json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": "cart", "namespace": "shop", "generation": 2},
            "spec": {"rules": [{"hosts": ["cart.shop.example.com"], "visibility": "ExternalIP",
                "http": {"paths": [{"splits": [
                    {"serviceNamespace": "shop", "serviceName": "cart-00001", "servicePort": 80,
                     "percent": percent}]}]}}]},
        })
    };
    let r = validate("Ingress", ing(100)).await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = validate("Ingress", ing(90)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(
        r["status"]["message"],
        "validation failed: Traffic split percentage must total to 100, but was 90: \
         spec.rules[0].http.paths[0].splits"
    );
}

#[tokio::test]
async fn the_internal_kinds_get_knatives_defaults() {
    let w = start_webhook().await;
    let default =
        |kind: &'static str, obj: Value| post(&w, "/defaulting", review(kind, "CREATE", obj, None));
    // A PodAutoscaler: the class config-autoscaler names and its metric, as a JSON patch.
    let pa = json!({
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1", "kind": "PodAutoscaler",
        "metadata": {"name": "cart-00001", "namespace": "shop", "managedFields": [{}],
                     "annotations": {"autoscaling.knative.dev/min-scale": "1"}},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "cart-00001-deployment"},
                 "protocolType": "http1"},
    });
    let r = default("PodAutoscaler", pa.clone()).await;
    assert_eq!(r["allowed"], true, "{r}");
    let ops = patch_ops(&r);
    for (key, value) in [
        (
            "autoscaling.knative.dev~1class",
            "kpa.autoscaling.knative.dev",
        ),
        ("autoscaling.knative.dev~1metric", "concurrency"),
    ] {
        let op =
            json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": value});
        assert!(ops.contains(&op), "no {op} in {ops:#?}");
    }
    assert_eq!(ops.len(), 2, "only the annotations: {ops:#?}");
    // The live config's class (an HPA's metric is cpu); what is set is kept.
    let mut cfg = Config::default();
    cfg.autoscaler.pod_autoscaler_class = "hpa.autoscaling.knative.dev".into();
    w.config.set(cfg);
    let ops = patch_ops(&default("PodAutoscaler", pa.clone()).await);
    assert!(
        ops.contains(&json!({"op": "add", "path": "/metadata/annotations/autoscaling.knative.dev~1metric", "value": "cpu"})),
        "{ops:#?}"
    );
    let mut done = pa;
    done["metadata"]["annotations"]["autoscaling.knative.dev/class"] =
        json!("kpa.autoscaling.knative.dev");
    done["metadata"]["annotations"]["autoscaling.knative.dev/metric"] = json!("rps");
    let r = default("PodAutoscaler", done).await;
    assert!(r["patch"].is_null(), "nothing to add: {r}");

    // An Ingress: httpOption, each rule's visibility, a lone split's percent.
    let ing = json!({
        "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
        "metadata": {"name": "cart", "namespace": "shop", "generation": 1},
        "spec": {"rules": [{"hosts": ["cart.shop.example.com"],
            "http": {"paths": [{"splits": [
                {"serviceNamespace": "shop", "serviceName": "cart-00001", "servicePort": 80}]}]}}]},
    });
    let r = default("Ingress", ing.clone()).await;
    assert_eq!(r["allowed"], true, "{r}");
    let ops = patch_ops(&r);
    for op in [
        json!({"op": "add", "path": "/spec/httpOption", "value": "Enabled"}),
        json!({"op": "add", "path": "/spec/rules/0/visibility", "value": "ExternalIP"}),
        json!({"op": "add", "path": "/spec/rules/0/http/paths/0/splits/0/percent", "value": 100}),
    ] {
        assert!(ops.contains(&op), "no {op} in {ops:#?}");
    }
    assert_eq!(ops.len(), 3, "{ops:#?}");
    // What the controller writes is already defaulted: no patch.
    let mut written = ing;
    written["spec"]["httpOption"] = json!("Enabled");
    written["spec"]["rules"][0]["visibility"] = json!("ClusterLocal");
    written["spec"]["rules"][0]["http"]["paths"][0]["splits"][0]["percent"] = json!(100);
    let r = default("Ingress", written).await;
    assert!(r["patch"].is_null(), "{r}");

    // Knative gives a ServerlessService no defaults.
    let sks = json!({
        "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "ServerlessService",
        "metadata": {"name": "cart-00001", "namespace": "shop"},
        "spec": {"objectRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                 "protocolType": "http1"},
    });
    let r = default("ServerlessService", sks).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r["patch"].is_null(), "{r}");
}

#[tokio::test]
async fn updates_follow_knatives_rules() {
    let w = start_webhook().await;
    let mut old = ksvc();
    old["spec"]["template"]["metadata"] = json!({"name": "hello-v1"});
    let old = defaulted(old);
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("ghcr.io/knative/other");
    let r = post(
        &w,
        "/resource-validation",
        review("Service", "UPDATE", new.clone(), Some(old.clone())),
    )
    .await;
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "validation failed: Saw the following changes without a name change (-old +new): spec.template.metadata.name"
        ),
        "{message}"
    );
    // A new name makes the same change acceptable.
    new["spec"]["template"]["metadata"]["name"] = json!("hello-v2");
    let r = post(
        &w,
        "/resource-validation",
        review("Service", "UPDATE", new, Some(old.clone())),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    // An object being deleted may drop its finalizers whatever else it says.
    let mut leaving = old.clone();
    leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    leaving["spec"]["traffic"] = json!([{"percent": 1}]);
    let r = post(
        &w,
        "/resource-validation",
        review("Service", "UPDATE", leaving, Some(old)),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test]
async fn configmaps_are_validated_with_the_controllers_parser() {
    let w = start_webhook().await;
    let cm = |name: &str, data: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": NS}, "data": data})
    };
    let bad = cm("config-autoscaler", json!({"stable-window": "forever"}));
    let r = post(
        &w,
        "/config-validation",
        review("ConfigMap", "UPDATE", bad, None),
    )
    .await;
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("validation failed: config-autoscaler: stable-window: "),
        "{message}"
    );
    assert_eq!(
        r["status"]["details"]["causes"][0]["field"],
        "data.stable-window"
    );
    let bad = cm("config-deployment", json!({"progress-deadline": "0s"}));
    let r = post(
        &w,
        "/config-validation",
        review("ConfigMap", "CREATE", bad, None),
    )
    .await;
    assert_eq!(r["allowed"], false);
    let good = cm(
        "config-autoscaler",
        json!({"stable-window": "90s", "_example": "anything"}),
    );
    let r = post(
        &w,
        "/config-validation",
        review("ConfigMap", "UPDATE", good, None),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
    let other = cm("somebody-elses", json!({"stable-window": "forever"}));
    let r = post(
        &w,
        "/config-validation",
        review("ConfigMap", "UPDATE", other, None),
    )
    .await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test]
async fn reviews_over_http2() {
    let w = start_webhook().await;
    let (tls, _) = connect(&w, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://webhook.knative-serving.svc/defaulting")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(review(
                "Service",
                "CREATE",
                ksvc(),
                None,
            ))))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["response"]["allowed"], true);
        assert_eq!(body["response"]["patchType"], "JSONPatch");
    }
}

#[tokio::test]
async fn bad_requests_get_4xx() {
    let w = start_webhook().await;
    let body = review("Service", "CREATE", ksvc(), None);
    let a = send(&w, "GET", "/defaulting", "application/json", Vec::new()).await;
    assert_eq!(a.status, 405);
    let a = send(&w, "POST", "/elsewhere", "application/json", body.clone()).await;
    assert_eq!(a.status, 404);
    let a = send(&w, "POST", "/defaulting", "text/plain", body).await;
    assert_eq!(a.status, 415);
    let a = send(
        &w,
        "POST",
        "/defaulting",
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(
        a.text.starts_with("malformed AdmissionReview"),
        "{}",
        a.text
    );
    let huge = vec![b' '; 9 << 20];
    let a = send(&w, "POST", "/defaulting", "application/json", huge).await;
    assert_eq!(a.status, 413);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let w = start_webhook().await;
    let before = send(&w, "GET", "/defaulting", "application/json", Vec::new()).await;
    assert_eq!(before.peer.as_ref(), first_der(&w.certs.cert_pem).as_ref());
    // Reissued (here for one more name) by the same CA.
    let mut names = WebhookOptions::new(NS).names();
    names.push("127.0.0.1".into());
    let renewed = plan(
        Some(&w.certs),
        &names,
        SystemTime::now(),
        &Lifetimes::default(),
    )
    .unwrap()
    .expect("reissued");
    assert_eq!(renewed.ca_bundle_pem, w.certs.ca_bundle_pem);
    w.slot.set(renewed.certified_key().unwrap());
    let after = send(&w, "GET", "/defaulting", "application/json", Vec::new()).await;
    assert_eq!(after.peer.as_ref(), first_der(&renewed.cert_pem).as_ref());
    assert_ne!(after.peer, before.peer);
}

fn first_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

fn secret_puts(fake: &Fake) -> usize {
    fake.seen()
        .iter()
        .filter(|(m, p)| m == "PUT" && p.contains("/secrets/"))
        .count()
}

#[tokio::test]
async fn the_certificates_secret_is_created_once_shared_and_renewed() {
    let fake = Fake::start().await;
    let opts = WebhookOptions::new(NS);
    let life = Lifetimes::default();
    let now = SystemTime::now();
    let first = sync_secret(&fake.client, &opts, now, &life).await.unwrap();
    let stored = fake
        .object(SECRETS, NS, SECRET_NAME)
        .expect("Secret created");
    assert_eq!(stored["type"], "Opaque");
    for key in [
        "ca-cert.pem",
        "ca-key.pem",
        "server-cert.pem",
        "server-key.pem",
    ] {
        assert!(stored["data"][key].is_string(), "{key} in {stored}");
    }
    // The other replica (or a restart) reads the same certificates and writes nothing.
    let second = sync_secret(&fake.client, &opts, now, &life).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(secret_puts(&fake), 0);

    // Near expiry: renewed in place, after losing one race (re-read, then written).
    fake.state.lock().unwrap().conflicts = 1;
    let later = now + Duration::from_secs(6 * 24 * 3600);
    let renewed = sync_secret(&fake.client, &opts, later, &life)
        .await
        .unwrap();
    assert_ne!(renewed.cert_pem, first.cert_pem);
    assert_eq!(renewed.ca_bundle_pem, first.ca_bundle_pem);
    assert_eq!(secret_puts(&fake), 2);
    let again = sync_secret(&fake.client, &opts, later, &life)
        .await
        .unwrap();
    assert_eq!(again, renewed);

    // A Secret that is not Rouse's (Knative's keys only) is replaced.
    let mut foreign = fake.object(SECRETS, NS, SECRET_NAME).unwrap();
    foreign["metadata"]["annotations"] = json!({});
    fake.put(SECRETS, foreign);
    let replaced = sync_secret(&fake.client, &opts, later, &life)
        .await
        .unwrap();
    assert_ne!(replaced.ca_bundle_pem, renewed.ca_bundle_pem);
}

/// The install's WebhookConfigurations, stored as `kubectl apply` would leave them.
fn install_webhook_configs(fake: &Fake) {
    for mut doc in manifests(&InstallOptions::default()).unwrap() {
        let resource = match doc["kind"].as_str().unwrap() {
            "MutatingWebhookConfiguration" => {
                "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
            }
            "ValidatingWebhookConfiguration" => {
                "apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
            }
            _ => continue,
        };
        doc["metadata"]["namespace"] = json!("");
        fake.put(resource, doc);
    }
}

fn webhook_configs(fake: &Fake) -> Vec<Value> {
    let mut out =
        fake.objects("apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations");
    out.extend(
        fake.objects("apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"),
    );
    out
}

#[tokio::test]
async fn registration_writes_the_ca_bundle_and_outside_the_cluster_the_url() {
    let fake = Fake::start().await;
    let mut opts = WebhookOptions::new(NS);
    let certs = sync_secret(
        &fake.client,
        &opts,
        SystemTime::now(),
        &Lifetimes::default(),
    )
    .await
    .unwrap();
    let err = register(&fake.client, &opts, &certs.ca_bundle_pem)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "MutatingWebhookConfiguration webhook.serving.knative.dev not found: apply the manifests `rouse install` prints"
    );

    install_webhook_configs(&fake);
    register(&fake.client, &opts, &certs.ca_bundle_pem)
        .await
        .unwrap();
    let want = base64::engine::general_purpose::STANDARD.encode(&certs.ca_bundle_pem);
    let configs = webhook_configs(&fake);
    assert_eq!(configs.len(), 3);
    for c in &configs {
        let hook = &c["webhooks"][0];
        assert_eq!(hook["clientConfig"]["caBundle"], want, "{c}");
        assert_eq!(hook["clientConfig"]["service"]["name"], "webhook");
    }
    let puts = |fake: &Fake| fake.seen().iter().filter(|(m, _)| m == "PUT").count();
    let before = puts(&fake);
    register(&fake.client, &opts, &certs.ca_bundle_pem)
        .await
        .unwrap();
    assert_eq!(puts(&fake), before, "nothing changed, nothing written");

    opts.url = Some("https://127.0.0.1:9443".into());
    register(&fake.client, &opts, &certs.ca_bundle_pem)
        .await
        .unwrap();
    for c in webhook_configs(&fake) {
        let hook = &c["webhooks"][0];
        let name = hook["name"].as_str().unwrap();
        assert_eq!(
            hook["clientConfig"]["url"],
            format!("https://127.0.0.1:9443{}", path_of(name))
        );
        assert!(hook["clientConfig"].get("service").is_none(), "{c}");
        assert_eq!(hook["clientConfig"]["caBundle"], want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_changes_take_effect_live_and_a_bad_one_keeps_the_last_good_config() {
    let fake = Fake::start().await;
    let cm = |name: &str, data: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": NS}, "data": data})
    };
    const CONFIGMAPS: &str = "api/v1/configmaps";
    fake.put(
        CONFIGMAPS,
        cm(
            "config-defaults",
            json!({"revision-timeout-seconds": "120"}),
        ),
    );
    fake.put(CONFIGMAPS, cm("kube-root-ca.crt", json!({"ca.crt": "x"})));
    let shared = SharedConfig::new(Config::default());
    let live = rouse_kube::config_watch::start(
        fake.client.clone(),
        &tokio::runtime::Handle::current(),
        NS,
        shared.clone(),
    );
    tokio::time::timeout(Duration::from_secs(20), live.wait_synced())
        .await
        .expect("ConfigMaps listed");
    assert_eq!(shared.get().defaults.revision_timeout_seconds, 120);

    fake.put(
        CONFIGMAPS,
        cm(
            "config-autoscaler",
            json!({"enable-scale-to-zero": "false"}),
        ),
    );
    fake.put(
        CONFIGMAPS,
        cm(
            "config-deployment",
            json!({"queue-sidecar-image": "registry.example/rouse:v2"}),
        ),
    );
    until("the autoscaler change", || {
        !shared.get().autoscaler.enable_scale_to_zero
    })
    .await;
    until("config-deployment", || {
        live.deployment.borrow().queue_image.as_deref() == Some("registry.example/rouse:v2")
    })
    .await;

    // A bad value: the last good config stays, an Event says why.
    fake.put(
        CONFIGMAPS,
        cm(
            "config-defaults",
            json!({"revision-timeout-seconds": "soon"}),
        ),
    );
    until("a Warning Event on config-defaults", || {
        fake.objects("api/v1/events").iter().any(|e| {
            e["reason"] == "InvalidConfig"
                && e["type"] == "Warning"
                && e["involvedObject"]["name"] == "config-defaults"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("revision-timeout-seconds"))
        })
    })
    .await;
    assert_eq!(shared.get().defaults.revision_timeout_seconds, 120);
    assert!(!shared.get().autoscaler.enable_scale_to_zero);

    // Fixed: taken; deleted: back to Knative's default.
    fake.put(
        CONFIGMAPS,
        cm("config-defaults", json!({"revision-timeout-seconds": "60"})),
    );
    until("the fixed ConfigMap", || {
        shared.get().defaults.revision_timeout_seconds == 60
    })
    .await;
    fake.remove(CONFIGMAPS, NS, "config-defaults");
    until("the default after deletion", || {
        shared.get().defaults.revision_timeout_seconds == 300
    })
    .await;
    assert_eq!(
        fake.objects("api/v1/events").len(),
        1,
        "each bad ConfigMap reported once"
    );
}

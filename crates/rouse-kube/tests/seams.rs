//! The Runtime and Networking seams on Kubernetes against a stateful API server on loopback,
//! through kube's real client: the Deployment applied and scaled through its scale
//! subresource, instances from the pods, and the public EndpointSlices in Serve and Proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse_api::meta::Resource;
use rouse_api::networking::SksMode;
use rouse_api::serving::Revision;
use rouse_controller::networking::{HostRoute, Networking, RevisionTraffic};
use rouse_kube::cache::ClusterStore;
use rouse_kube::networking::KubeNetworking;
use rouse_kube::revision::DeploymentConfig;
use rouse_kube::route::IngressConfig;
use rouse_kube::runtime::KubeRuntime;
use rouse_runtime::{InstanceState, Runtime};
use rouse_store::{Kind, Store};
use serde_json::{Value, json};

mod common;

use common::fake::Fake;

const REVS: &str = "apis/serving.knative.dev/v1/revisions";
const SKS: &str = "apis/networking.internal.knative.dev/v1alpha1/serverlessservices";
const DEPLOYS: &str = "apis/apps/v1/deployments";
const PODS: &str = "api/v1/pods";
const SLICES: &str = "apis/discovery.k8s.io/v1/endpointslices";

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn revision() -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
           "metadata": {"name": "cart-00001", "namespace": "shop", "uid": "rev-uid",
                        "labels": {"serving.knative.dev/service": "cart",
                                   "serving.knative.dev/configuration": "cart"}},
           "spec": {"containers": [{"image": "example.org/cart"}]}})
}

fn sks(mode: &str) -> Value {
    json!({"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "ServerlessService",
           "metadata": {"name": "cart-00001", "namespace": "shop", "uid": "sks-uid",
                        "labels": {"serving.knative.dev/revision": "cart-00001"}},
           "spec": {"mode": mode, "numActivators": 2}})
}

async fn started(fake: &Fake) -> (Arc<ClusterStore>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(ClusterStore::start(
        fake.client.clone(),
        rt.handle().clone(),
    ));
    tokio::time::timeout(Duration::from_secs(20), store.wait_synced())
        .await
        .expect("caches sync");
    (store, rt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_applies_scales_and_reads_pods() {
    let fake = Fake::start().await;
    fake.put(REVS, revision());
    let (store, rt) = started(&fake).await;
    let runtime = KubeRuntime::start(
        fake.client.clone(),
        rt.handle().clone(),
        store.clone(),
        DeploymentConfig::default(),
    );
    let rev =
        Revision::from_value(store.get(Kind::Revision, "shop", "cart-00001").unwrap()).unwrap();
    let spec = rouse_controller::workload::workload_for(&rev).unwrap();
    let mut events = runtime.subscribe();

    runtime.ensure(spec.clone(), 2);
    until("the Deployment at 2", || {
        fake.object(DEPLOYS, "shop", "cart-00001-deployment")
            .is_some_and(|d| d["spec"]["replicas"] == 2)
    })
    .await;
    let d = fake
        .object(DEPLOYS, "shop", "cart-00001-deployment")
        .unwrap();
    assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "rev-uid");
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers[0]["name"], "user-container");
    assert_eq!(containers[1]["name"], "queue-proxy");

    // A new decision goes through the scale subresource, not another apply.
    let applies = |f: &Fake| {
        f.seen()
            .iter()
            .filter(|(m, p)| m == "PATCH" && p.contains("/deployments/cart-00001-deployment?"))
            .count()
    };
    let before = applies(&fake);
    runtime.ensure(spec.clone(), 0);
    until("the Deployment at 0", || {
        fake.object(DEPLOYS, "shop", "cart-00001-deployment")
            .is_some_and(|d| d["spec"]["replicas"] == 0)
    })
    .await;
    assert!(fake.seen().iter().any(|(m, p)| m == "PATCH"
        && p.starts_with("/apis/apps/v1/namespaces/shop/deployments/cart-00001-deployment/scale")));
    assert_eq!(applies(&fake), before);

    // A config change that changes the Deployment rolls it at the next decision, even an
    // unchanged one; a change that does not, writes nothing.
    let image = |f: &Fake| {
        f.object(DEPLOYS, "shop", "cart-00001-deployment").unwrap()["spec"]["template"]["spec"]
            ["containers"][1]["image"]
            .clone()
    };
    runtime.set_config(DeploymentConfig {
        queue_image: "example.org/rouse:v2".into(),
        ..DeploymentConfig::default()
    });
    runtime.ensure(spec.clone(), 0);
    until("the Deployment with the new sidecar image", || {
        image(&fake) == "example.org/rouse:v2"
    })
    .await;
    assert_eq!(applies(&fake), before + 1);
    runtime.set_config(DeploymentConfig {
        queue_image: "example.org/rouse:v2".into(),
        ..DeploymentConfig::default()
    });
    runtime.ensure(spec.clone(), 0);
    assert_eq!(applies(&fake), before + 1);

    // Pods are the instances: Ready condition, pod IP, queue-proxy port.
    fake.put(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cart-00001-deployment-abc", "namespace": "shop",
                     "labels": {"serving.knative.dev/revision": "cart-00001"}},
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    until("the pod as an instance", || {
        runtime.instances("shop", "cart-00001").len() == 1
    })
    .await;
    let inst = &runtime.instances("shop", "cart-00001")[0];
    assert_eq!(inst.state, InstanceState::Ready);
    assert_eq!(inst.endpoint, "10.1.2.3:8012".parse().unwrap());
    let ev = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(ev) = events.recv().await {
                return ev;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ev, ("shop".to_string(), "cart-00001".to_string()));
    rt.shutdown_background();
}

fn traffic(mode: SksMode, ready: &[&str]) -> RevisionTraffic {
    let ready: Vec<_> = ready.iter().map(|a| a.parse().unwrap()).collect();
    RevisionTraffic {
        mode,
        backends: ready.clone(),
        ready,
        container_concurrency: 0,
        timeout: Duration::from_secs(300),
        response_start_timeout: None,
        h2c: false,
        request_body_buffer: 0,
    }
}

fn slice_addresses(fake: &Fake) -> Vec<String> {
    fake.object(SLICES, "shop", "cart-00001-ipv4-0")
        .map(|s| {
            s["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_in_serve_and_proxy() {
    let fake = Fake::start().await;
    fake.put(REVS, revision());
    fake.put(SKS, sks("Serve"));
    fake.put(
        SLICES,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "activator-service-x", "namespace": "knative-serving",
                     "labels": {"kubernetes.io/service-name": "activator-service"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.9.0.1"], "conditions": {"ready": true}},
                      {"addresses": ["10.9.0.2"], "conditions": {"ready": true}}]}),
    );
    let (store, rt) = started(&fake).await;
    let net = example_networking(&fake, &rt, &store);

    net.set_revision(
        "shop",
        "cart-00001",
        traffic(SksMode::Serve, &["10.1.0.7:8012"]),
    );
    until("the pod in the public slice", || {
        slice_addresses(&fake) == ["10.1.0.7"]
    })
    .await;
    assert!(!net.serving_through_activator("shop", "cart-00001"));
    assert!(
        fake.object("api/v1/services", "shop", "cart-00001")
            .is_some()
    );
    let private = fake
        .object("api/v1/services", "shop", "cart-00001-private")
        .unwrap();
    assert_eq!(
        private["spec"]["selector"]["serving.knative.dev/revisionUID"],
        "rev-uid"
    );

    // Proxy (scaled to zero): the public Service points at the activators.
    fake.put(SKS, sks("Proxy"));
    until("the SKS in Proxy in the cache", || {
        store
            .get(Kind::ServerlessService, "shop", "cart-00001")
            .unwrap()["spec"]["mode"]
            == "Proxy"
    })
    .await;
    net.set_revision("shop", "cart-00001", traffic(SksMode::Proxy, &[]));
    until("the activators in the public slice", || {
        let mut a = slice_addresses(&fake);
        a.sort();
        a == ["10.9.0.1", "10.9.0.2"]
    })
    .await;
    until("the mode confirmed", || {
        net.serving_through_activator("shop", "cart-00001")
    })
    .await;

    // Back in Serve with 101 IPv4 pods and one IPv6: three slices; then one pod: the slices
    // the new set no longer names are deleted, another manager's slice is left alone.
    fake.put(SKS, sks("Serve"));
    until("the SKS in Serve in the cache", || {
        store
            .get(Kind::ServerlessService, "shop", "cart-00001")
            .unwrap()["spec"]["mode"]
            == "Serve"
    })
    .await;
    let mut many: Vec<String> = (0..101)
        .map(|i| format!("10.1.{}.{}:8012", i / 200, i % 200 + 1))
        .collect();
    many.push("[fd00::7]:8012".into());
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    net.set_revision("shop", "cart-00001", traffic(SksMode::Serve, &many));
    let slice = |name: &str| fake.object(SLICES, "shop", name);
    until("three public slices", || {
        [
            "cart-00001-ipv4-0",
            "cart-00001-ipv4-1",
            "cart-00001-ipv6-0",
        ]
        .iter()
        .all(|n| slice(n).is_some())
    })
    .await;
    fake.put(
        SLICES,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "cart-00001-foreign", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "cart-00001",
                                "endpointslice.kubernetes.io/managed-by": "someone-else"}},
        "addressType": "IPv4", "endpoints": []}),
    );
    net.set_revision(
        "shop",
        "cart-00001",
        traffic(SksMode::Serve, &["10.1.0.7:8012"]),
    );
    until("the stale slices deleted", || {
        slice("cart-00001-ipv4-1").is_none() && slice("cart-00001-ipv6-0").is_none()
    })
    .await;
    assert_eq!(slice_addresses(&fake), ["10.1.0.7"]);
    assert!(slice("cart-00001-foreign").is_some());
    rt.shutdown_background();
}

const MAPPINGS: &str = "apis/serving.knative.dev/v1beta1/domainmappings";
const INGRESSES: &str = "apis/networking.internal.knative.dev/v1alpha1/ingresses";

fn mapping(ns: &str, created: &str) -> Value {
    json!({"apiVersion": "serving.knative.dev/v1beta1", "kind": "DomainMapping",
           "metadata": {"name": "shop.example.org", "namespace": ns, "uid": format!("dm-{ns}"),
                        "creationTimestamp": created},
           "spec": {"ref": {"kind": "Service", "name": "cart", "namespace": ns,
                            "apiVersion": "serving.knative.dev/v1"},
                    "tls": {"secretName": "shop-cert"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_domain_mapping_gets_its_ingress() {
    let fake = Fake::start().await;
    fake.put(MAPPINGS, mapping("shop", "2026-01-01T00:00:00Z"));
    // A later mapping of the same domain in another namespace does not hold the claim.
    fake.put(MAPPINGS, mapping("rival", "2026-01-01T00:00:05Z"));
    let (store, rt) = started(&fake).await;
    let net = KubeNetworking::new(
        fake.client.clone(),
        rt.handle().clone(),
        store.clone(),
        IngressConfig {
            network: rouse_api::config::network::NetworkConfig {
                ingress_class: "rouse.ingress.networking.knative.dev".into(),
                ..Default::default()
            },
            domain: "example.com".into(),
            domains: Default::default(),
            tag_header_routing: false,
        },
    );
    net.set_routes(vec![HostRoute {
        host: "shop.example.org".into(),
        targets: Vec::new(),
        unavailable: None,
        tags: Vec::new(),
        rewrite_host: Some("cart.shop.example.com".into()),
    }]);
    until("the mapping's Ingress", || {
        fake.object(INGRESSES, "shop", "shop.example.org").is_some()
    })
    .await;
    let ing = fake.object(INGRESSES, "shop", "shop.example.org").unwrap();
    assert_eq!(
        ing["metadata"]["annotations"]["networking.knative.dev/ingress.class"],
        "rouse.ingress.networking.knative.dev"
    );
    assert_eq!(
        ing["metadata"]["labels"]["serving.knative.dev/domainMappingUID"],
        "dm-shop"
    );
    assert_eq!(
        ing["metadata"]["ownerReferences"][0]["kind"],
        "DomainMapping"
    );
    assert_eq!(
        ing["spec"]["tls"],
        json!([{"hosts": ["shop.example.org"], "secretName": "shop-cert",
                "secretNamespace": "shop"}])
    );
    let rule = &ing["spec"]["rules"][0];
    assert_eq!(rule["hosts"], json!(["shop.example.org"]));
    assert_eq!(rule["visibility"], "ExternalIP");
    let path = &rule["http"]["paths"][0];
    assert_eq!(path["rewriteHost"], "cart.shop.svc.cluster.local");
    assert_eq!(
        path["splits"],
        json!([{"serviceNamespace": "shop", "serviceName": "cart", "servicePort": 80,
                "percent": 100, "appendHeaders": {"K-Original-Host": "shop.example.org"}}])
    );
    assert!(
        fake.object(INGRESSES, "rival", "shop.example.org")
            .is_none()
    );
    // Served once the gateway marks it, as a Route's.
    let owner = rouse_controller::Key::new(Kind::DomainMapping, "shop", "shop.example.org");
    assert_eq!(
        net.ingress_state(&owner),
        rouse_controller::networking::IngressState::not_configured()
    );
    let mut woken = net.subscribe_ingresses().unwrap();
    mark_ready(&fake, &net, "shop.example.org", &owner).await;
    let next = tokio::time::timeout(Duration::from_secs(20), woken.recv()).await;
    assert_eq!(next.unwrap().unwrap(), owner);
    rt.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_token_is_made_once_and_read_after() {
    use rouse_kube::stat_stream::ensure_token;
    const SECRETS: &str = "api/v1/secrets";
    let fake = Fake::start().await;
    // None yet: one is made, 32 random bytes as hex.
    let made = ensure_token(&fake.client).await.unwrap();
    assert_eq!(made.len(), 64);
    assert!(made.chars().all(|c| c.is_ascii_hexdigit()), "{made}");
    let secret = fake
        .object(SECRETS, "knative-serving", "autoscaler-token")
        .expect("the Secret was created");
    assert_eq!(secret["stringData"]["token"], made.as_str());
    assert_ne!(
        ensure_token(&Fake::start().await.client).await.unwrap(),
        made
    );
    // One exists (the API server keeps it as base64 data): it is read, not replaced.
    let fake = Fake::start().await;
    fake.put(
        SECRETS,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "autoscaler-token", "namespace": "knative-serving"},
               "data": {"token": "a2VwdC10b2tlbgo="}}),
    );
    assert_eq!(ensure_token(&fake.client).await.unwrap(), "kept-token");
    assert!(
        !fake.seen().iter().any(|(m, _)| m == "POST"),
        "an existing token is never replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_publishes_itself_as_the_autoscaler_endpoint() {
    let fake = Fake::start().await;
    let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    rouse_kube::stat_stream::advertise(&fake.client, ip, Some("controller-7d9-abc"))
        .await
        .unwrap();
    let slice = fake
        .object(SLICES, "knative-serving", "autoscaler")
        .expect("the autoscaler's EndpointSlice");
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "autoscaler"
    );
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["endpoints"][0]["addresses"], json!(["10.1.2.3"]));
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(
        slice["endpoints"][0]["targetRef"]["name"],
        "controller-7d9-abc"
    );
    assert_eq!(slice["ports"][0]["port"], 8080);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networking_reports_what_the_activators_pushed() {
    use rouse_autoscaler::push::{Message, RevisionLoad};
    use rouse_kube::stat_stream::ActivatorStats;
    let fake = Fake::start().await;
    let (store, rt) = started(&fake).await;
    let stats = Arc::new(ActivatorStats::default());
    let net = example_networking(&fake, &rt, &store).with_activator_stats(stats.clone());
    stats.record(Message::Stats(vec![RevisionLoad {
        namespace: "shop".into(),
        revision: "cart-00001".into(),
        average_concurrency: 4.0,
        request_count: 9.0,
    }]));
    let taken = net.take_activator_stats();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (
            taken[0].revision.as_str(),
            taken[0].average_concurrency,
            taken[0].request_count
        ),
        ("cart-00001", 4.0, 9.0)
    );
    assert!(
        net.take_activator_stats().is_empty(),
        "each load is taken once"
    );
    // A poke goes to the current term's channel only.
    let mut pokes = stats.begin_term();
    stats.record(Message::Poke(rouse_autoscaler::push::RevisionRef {
        namespace: "shop".into(),
        revision: "cart-00001".into(),
    }));
    assert_eq!(
        pokes.try_recv().unwrap(),
        ("shop".into(), "cart-00001".into())
    );
    rt.shutdown_background();
}

const ROUTES: &str = "apis/serving.knative.dev/v1/routes";

fn condition(obj: &Value, type_: &str) -> (String, String) {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("status"), s("reason"))
        })
        .unwrap_or_default()
}

/// Route `cart`'s host split between `cart-00001` and `cart-00002`.
fn cart_split(first: u32, second: u32) -> Vec<HostRoute> {
    vec![HostRoute {
        host: "cart.shop.example.com".into(),
        targets: vec![
            ("shop".into(), "cart-00001".into(), first),
            ("shop".into(), "cart-00002".into(), second),
        ],
        unavailable: None,
        tags: Vec::new(),
        rewrite_host: None,
    }]
}

fn cart_route() -> rouse_controller::Key {
    rouse_controller::Key::new(Kind::Route, "shop", "cart")
}

/// The networking seam over `fake` with Knative's default network settings and domain
/// `example.com`.
fn example_networking(
    fake: &Fake,
    rt: &tokio::runtime::Runtime,
    store: &Arc<ClusterStore>,
) -> KubeNetworking {
    KubeNetworking::new(
        fake.client.clone(),
        rt.handle().clone(),
        store.clone(),
        IngressConfig {
            network: Default::default(),
            domain: "example.com".into(),
            domains: Default::default(),
            tag_header_routing: false,
        },
    )
}

/// Plays the gateway for route `cart`'s Ingress (see [`mark_ready`]).
async fn mark_ingress_ready(fake: &Fake, net: &KubeNetworking) {
    mark_ready(fake, net, "cart", &cart_route()).await;
}

/// Plays the gateway: Ingress `name` in `shop` as stored, marked Ready for its current
/// generation; waits for the seam to report its owner served.
async fn mark_ready(fake: &Fake, net: &KubeNetworking, name: &str, owner: &rouse_controller::Key) {
    let mut ing = fake.object(INGRESSES, "shop", name).unwrap();
    ing["status"] = json!({"observedGeneration": ing["metadata"]["generation"],
                           "conditions": [{"type": "Ready", "status": "True"}]});
    fake.put(INGRESSES, ing);
    until("the Ingress served", || {
        net.ingress_state(owner) == rouse_controller::networking::IngressState::Ready
    })
    .await;
}

/// The Route reconciler (the one local mode runs) over the Kubernetes seams: the Route is not
/// Ready until the gateway marks its Ingress Ready for the spec last written, and the seam
/// wakes the reconciler when that happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_waits_for_its_ingress() {
    use rouse_controller::networking::IngressState;
    use rouse_controller::{Controller, Key, reconcile::reconcile};
    let fake = Fake::start().await;
    let mut rev = revision();
    rev["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    fake.put(REVS, rev);
    fake.put(
        ROUTES,
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
               "metadata": {"name": "cart", "namespace": "shop", "uid": "route-uid"},
               "spec": {"traffic": [{"revisionName": "cart-00001", "percent": 100}]}}),
    );
    let (store, rt) = started(&fake).await;
    let net = Arc::new(example_networking(&fake, &rt, &store));
    let runtime = KubeRuntime::start(
        fake.client.clone(),
        rt.handle().clone(),
        store.clone(),
        DeploymentConfig::default(),
    );
    let ctx = Controller::new(
        store.clone(),
        runtime,
        net.clone(),
        Default::default(),
        "example.com".into(),
    )
    .context();
    let mut woken = net.subscribe_ingresses().expect("the seam wakes routes");
    let key = Key::new(Kind::Route, "shop", "cart");
    let route_in_cache = |status: &str| {
        store
            .get(Kind::Route, "shop", "cart")
            .is_ok_and(|r| condition(&r, "Ready").0 == status)
    };

    // Programmed, the Ingress written, but nobody serves it yet.
    reconcile(&ctx, &key).await.unwrap();
    let route = fake.object(ROUTES, "shop", "cart").unwrap();
    assert_eq!(
        condition(&route, "IngressReady"),
        ("Unknown".into(), "IngressNotConfigured".into())
    );
    assert_eq!(condition(&route, "AllTrafficAssigned").0, "True");
    assert_eq!(
        condition(&route, "Ready"),
        ("Unknown".into(), "IngressNotConfigured".into())
    );
    until("the Ingress written", || {
        fake.object(INGRESSES, "shop", "cart").is_some()
    })
    .await;
    let next = tokio::time::timeout(Duration::from_secs(20), woken.recv()).await;
    assert_eq!(next.unwrap().unwrap(), cart_route());
    assert_eq!(
        net.ingress_state(&cart_route()),
        IngressState::not_configured()
    );

    // The gateway marks it Ready: the route is woken and turns Ready.
    mark_ingress_ready(&fake, &net).await;
    let next = tokio::time::timeout(Duration::from_secs(20), woken.recv()).await;
    assert_eq!(next.unwrap().unwrap(), cart_route());
    until("the Route in the cache", || route_in_cache("Unknown")).await;
    reconcile(&ctx, &key).await.unwrap();
    let route = fake.object(ROUTES, "shop", "cart").unwrap();
    assert_eq!(condition(&route, "IngressReady").0, "True");
    assert_eq!(condition(&route, "Ready").0, "True");

    // A new split is a new spec: not served until marked again (its Ready was for the old).
    until("the Route Ready in the cache", || route_in_cache("True")).await;
    net.set_routes(cart_split(50, 50));
    assert_eq!(
        net.ingress_state(&cart_route()),
        IngressState::not_configured()
    );
    until("the new spec stored", || {
        fake.object(INGRESSES, "shop", "cart")
            .is_some_and(|i| i["metadata"]["generation"] == 2)
    })
    .await;
    until("the new generation in the informer", || {
        woken.try_recv().is_ok_and(|k| k == cart_route())
    })
    .await;
    assert_eq!(
        net.ingress_state(&cart_route()),
        IngressState::not_configured()
    );
    mark_ingress_ready(&fake, &net).await;
    rt.shutdown_background();
}

/// An h2c revision's split goes to its public Service's port 81 (the gateway speaks h2c
/// there); others to 80.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_revisions_split_uses_port_81() {
    let fake = Fake::start().await;
    let mut grpc = revision();
    grpc["metadata"]["name"] = "cart-00002".into();
    grpc["spec"]["containers"][0]["ports"] = json!([{"name": "h2c", "containerPort": 50051}]);
    fake.put(REVS, revision());
    fake.put(REVS, grpc);
    fake.put(
        ROUTES,
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
               "metadata": {"name": "cart", "namespace": "shop", "uid": "route-uid"}}),
    );
    let (store, rt) = started(&fake).await;
    let net = example_networking(&fake, &rt, &store);
    net.set_routes(cart_split(40, 60));
    until("the Ingress written", || {
        fake.object(INGRESSES, "shop", "cart").is_some()
    })
    .await;
    let ing = fake.object(INGRESSES, "shop", "cart").unwrap();
    let ports: Vec<(String, i64)> = ing["spec"]["rules"][0]["http"]["paths"][0]["splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["serviceName"].as_str().unwrap().to_string(),
                s["servicePort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("cart-00001".into(), 80), ("cart-00002".into(), 81)]
    );
    rt.shutdown_background();
}

const SERVICES: &str = "api/v1/services";

/// Route `cart`'s default host and, with `canary`, its tag host.
fn cart_hosts(canary: bool) -> Vec<HostRoute> {
    let mut table = cart_split(100, 0);
    if canary {
        let mut tag = table[0].clone();
        tag.host = "canary-cart.shop.example.com".into();
        table.push(tag);
    }
    table
}

/// Route `cart`: all traffic to `cart-00001`, also tagged `canary`.
fn cart_with_canary() -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
           "metadata": {"name": "cart", "namespace": "shop", "uid": "route-uid"},
           "spec": {"traffic": [{"revisionName": "cart-00001", "percent": 100},
                                {"revisionName": "cart-00001", "tag": "canary"}]}})
}

/// A Route's cluster-local Services follow its Ingress: written with it, the tag's removed
/// with the tag, all removed once no Ingress is written (also those written before a
/// restart). A Service of the name that the Route does not own is left alone and makes the
/// Route's Ingress NotOwned until it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_cluster_local_services_follow_its_ingress() {
    use rouse_controller::networking::IngressState;
    let fake = Fake::start().await;
    fake.put(REVS, revision());
    fake.put(ROUTES, cart_with_canary());
    let owned_by_cart = json!([{"apiVersion": "serving.knative.dev/v1", "kind": "Route",
                                "name": "cart", "uid": "route-uid", "controller": true}]);
    // Written before a restart, for a tag gone since.
    fake.put(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "old-cart", "namespace": "shop",
                            "labels": {"serving.knative.dev/route": "cart"},
                            "ownerReferences": owned_by_cart},
               "spec": {"type": "ExternalName", "externalName": "elsewhere"}}),
    );
    // The user's own, with the tag Service's name.
    let foreign = json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "canary-cart", "namespace": "shop"},
                         "spec": {"ports": [{"port": 8080}]}});
    fake.put(SERVICES, foreign.clone());
    let (store, rt) = started(&fake).await;
    let net = example_networking(&fake, &rt, &store);
    let mut woken = net.subscribe_ingresses().unwrap();

    net.set_routes(cart_hosts(true));
    until("the default Service written and the old one gone", || {
        fake.object(SERVICES, "shop", "cart").is_some()
            && fake.object(SERVICES, "shop", "old-cart").is_none()
    })
    .await;
    let svc = fake.object(SERVICES, "shop", "cart").unwrap();
    assert_eq!(svc["spec"]["type"], "ExternalName");
    assert_eq!(
        svc["spec"]["externalName"],
        "rouse-gateway-local.knative-serving.svc.cluster.local"
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(
        svc["metadata"]["labels"]["serving.knative.dev/route"],
        "cart"
    );
    assert_eq!(svc["metadata"]["ownerReferences"][0]["uid"], "route-uid");
    until("the Route told its tag's name is taken", || {
        matches!(net.ingress_state(&cart_route()),
                 IngressState::NotReady { ref reason, .. } if reason == "NotOwned")
    })
    .await;
    until("the Route woken", || {
        woken.try_recv().is_ok_and(|k| k == cart_route())
    })
    .await;
    let theirs = fake.object(SERVICES, "shop", "canary-cart").unwrap();
    assert_eq!(theirs["spec"], foreign["spec"]);
    assert!(theirs["metadata"]["ownerReferences"].is_null());

    // The user's Service gone, the seam tries again by itself: the tag's is written and the
    // Route waits for its Ingress only.
    fake.remove(SERVICES, "shop", "canary-cart");
    until("the tag's Service written", || {
        fake.object(SERVICES, "shop", "canary-cart")
            .is_some_and(|s| s["spec"]["type"] == "ExternalName")
    })
    .await;
    until("NotOwned cleared", || {
        net.ingress_state(&cart_route()) == IngressState::not_configured()
    })
    .await;

    // The tag dropped: its Service goes, the default's stays.
    net.set_routes(cart_hosts(false));
    until("the tag's Service deleted", || {
        fake.object(SERVICES, "shop", "canary-cart").is_none()
    })
    .await;
    assert!(fake.object(SERVICES, "shop", "cart").is_some());

    // No Ingress for the Route any more (no targets anywhere): no Service either.
    net.set_routes(Vec::new());
    until("the default Service deleted", || {
        fake.object(SERVICES, "shop", "cart").is_none()
    })
    .await;
    rt.shutdown_background();
}

/// Like Knative, a revision's image tag is resolved to a digest before anything runs: the
/// Revision reconciler (the one local mode runs) waits while the KubeRuntime asks the
/// registry (with the revision's pull Secret), records the digest in
/// `status.containerStatuses`, and the Deployment runs the digest, not the tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revisions_image_tag_resolves_to_the_digest_the_deployment_runs() {
    use base64::Engine as _;
    use common::registry::{Auth, TestRegistry};
    use rouse_controller::{Controller, Key, reconcile::reconcile};
    let reg = TestRegistry::start().await;
    let digest = reg.push("team/cart:v1", br#"{"schemaVersion":2}"#);
    reg.set_auth(Auth::Bearer(Some(("ci".into(), "pw".into()))));
    let pinned = format!("{}/team/cart@{digest}", reg.host());
    let image = format!("{}/team/cart:v1", reg.host());

    let fake = Fake::start().await;
    let dockerconfig = json!({"auths": {reg.host(): {"username": "ci", "password": "pw"}}});
    fake.put(
        "api/v1/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
               "metadata": {"name": "pull", "namespace": "shop"},
               "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD
                   .encode(dockerconfig.to_string())}}),
    );
    let mut rev = revision();
    rev["spec"]["containers"][0] = json!({"name": "user-container", "image": image});
    rev["spec"]["imagePullSecrets"] = json!([{"name": "pull"}]);
    fake.put(REVS, rev);
    let (store, rt) = started(&fake).await;
    let net = Arc::new(example_networking(&fake, &rt, &store));
    let runtime = KubeRuntime::start_with_registry(
        fake.client.clone(),
        rt.handle().clone(),
        store.clone(),
        DeploymentConfig::default(),
        Ok(reg.client()),
    );
    let mut events = runtime.subscribe();
    let ctx = Controller::new(
        store.clone(),
        runtime.clone(),
        net,
        Default::default(),
        "example.com".into(),
    )
    .context();
    let key = Key::new(Kind::Revision, "shop", "cart-00001");

    // Resolving: nothing made yet.
    reconcile(&ctx, &key).await.unwrap();
    let stored = fake.object(REVS, "shop", "cart-00001").unwrap();
    assert_eq!(
        condition(&stored, "ContainerHealthy"),
        ("Unknown".into(), "ResolvingDigests".into())
    );
    assert!(fake.objects(SKS).is_empty());
    // The runtime wakes the revision when the registry answered.
    let woken = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if events.recv().await.unwrap() == ("shop".to_string(), "cart-00001".to_string()) {
                return;
            }
        }
    })
    .await;
    assert!(woken.is_ok(), "the revision is notified");
    assert!(
        reg.seen()
            .iter()
            .any(|(_, p, a)| p.starts_with("/token") && a.is_some()),
        "the pull Secret's credentials went to the token service: {:?}",
        reg.seen()
    );

    // An autoscaler decision made before the status shows the digest runs it already.
    let untouched =
        Revision::from_value(store.get(Kind::Revision, "shop", "cart-00001").unwrap()).unwrap();
    let spec = rouse_controller::workload::workload_for(&untouched).unwrap();
    assert_eq!(spec.container.as_ref().unwrap().digest, None);
    runtime.ensure(spec, 1);
    let user_image = |f: &Fake| {
        f.object(DEPLOYS, "shop", "cart-00001-deployment")
            .map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].clone())
    };
    until("the Deployment", || user_image(&fake).is_some()).await;
    assert_eq!(user_image(&fake).unwrap(), pinned.as_str());

    // The reconciler records the digest and goes on.
    reconcile(&ctx, &key).await.unwrap();
    let stored = fake.object(REVS, "shop", "cart-00001").unwrap();
    assert_eq!(
        stored["status"]["containerStatuses"],
        json!([{"name": "user-container", "imageDigest": pinned}])
    );
    assert_eq!(
        condition(&stored, "ResourcesAvailable"),
        ("Unknown".into(), "Deploying".into())
    );
    assert_eq!(fake.objects(SKS).len(), 1);

    // Read back from the status (as after a restart): no registry asked again.
    until("the status in the cache", || {
        store
            .get(Kind::Revision, "shop", "cart-00001")
            .is_ok_and(|r| r["status"]["containerStatuses"][0]["imageDigest"] == pinned.as_str())
    })
    .await;
    let asked = reg.seen().len();
    let rev =
        Revision::from_value(store.get(Kind::Revision, "shop", "cart-00001").unwrap()).unwrap();
    let spec = rouse_controller::workload::workload_for(&rev).unwrap();
    assert_eq!(
        runtime.image(&spec),
        rouse_runtime::ImageState::Resolved(pinned.clone())
    );
    runtime.ensure(spec, 2);
    until("the Deployment at 2", || {
        fake.object(DEPLOYS, "shop", "cart-00001-deployment")
            .is_some_and(|d| d["spec"]["replicas"] == 2)
    })
    .await;
    assert_eq!(user_image(&fake).unwrap(), pinned.as_str());
    assert_eq!(reg.seen().len(), asked);
    rt.shutdown_background();
}

/// Per-tag visibility: the user labels the tag's cluster-local Service
/// `networking.knative.dev/visibility: cluster-local`; the seam reports it and wakes the
/// Route, Rouse's own writes keep the label, and a table with only the tag's cluster-local
/// host gives it a ClusterLocal rule only. A Service someone deletes is written again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tags_visibility_label_is_read_kept_and_its_service_recreated() {
    let fake = Fake::start().await;
    fake.put(REVS, revision());
    fake.put(ROUTES, cart_with_canary());
    let (store, rt) = started(&fake).await;
    let net = example_networking(&fake, &rt, &store);
    tokio::time::timeout(Duration::from_secs(20), net.wait_synced())
        .await
        .expect("the Services listed");
    let mut woken = net.subscribe_ingresses().unwrap();

    net.set_routes(cart_hosts(true));
    until("both Services written", || {
        fake.object(SERVICES, "shop", "cart").is_some()
            && fake.object(SERVICES, "shop", "canary-cart").is_some()
    })
    .await;
    assert!(net.cluster_local_services("shop", "cart").is_empty());

    // The user labels the tag's Service (as `kubectl label` would).
    let mut svc = fake.object(SERVICES, "shop", "canary-cart").unwrap();
    svc["metadata"]["labels"]["networking.knative.dev/visibility"] = "cluster-local".into();
    fake.put(SERVICES, svc);
    until("the label read", || {
        net.cluster_local_services("shop", "cart") == ["canary-cart".to_string()].into()
    })
    .await;
    until("the Route woken", || {
        woken.try_recv().is_ok_and(|k| k == cart_route())
    })
    .await;
    // Another Route's label is not this one's.
    assert!(net.cluster_local_services("shop", "other").is_empty());
    assert!(net.cluster_local_services("elsewhere", "cart").is_empty());

    // The reconciler then programs the tag at its cluster-local host only.
    let mut table = cart_split(100, 0);
    let mut tag = table[0].clone();
    tag.host = "canary-cart.shop.svc.cluster.local".into();
    table.push(tag);
    let applies = |f: &Fake| {
        f.seen()
            .iter()
            .filter(|(m, p)| m == "PATCH" && p.contains("/services/canary-cart?"))
            .count()
    };
    let before = applies(&fake);
    net.set_routes(table);
    until("the tag's rules cluster-local only", || {
        fake.object(INGRESSES, "shop", "cart").is_some_and(|ing| {
            let rules = ing["spec"]["rules"].as_array().cloned().unwrap_or_default();
            let of_tag: Vec<&Value> = rules
                .iter()
                .filter(|r| r["hosts"].to_string().contains("canary-cart"))
                .collect();
            of_tag.len() == 1 && of_tag[0]["visibility"] == "ClusterLocal"
        })
    })
    .await;
    let ing = fake.object(INGRESSES, "shop", "cart").unwrap();
    assert!(
        ing["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["hosts"] == json!(["cart.shop.example.com"])
                && r["visibility"] == "ExternalIP"),
        "the default stays external: {ing}"
    );
    // Rouse applied the tag's Service again and the user's label is still on it.
    until("the Service applied again", || applies(&fake) > before).await;
    let svc = fake.object(SERVICES, "shop", "canary-cart").unwrap();
    assert_eq!(
        svc["metadata"]["labels"]["networking.knative.dev/visibility"],
        "cluster-local"
    );
    assert_eq!(svc["spec"]["type"], "ExternalName");

    // Deleted by someone: written again without a routing change.
    let old_uid = fake.object(SERVICES, "shop", "cart").unwrap()["metadata"]["uid"].clone();
    fake.remove(SERVICES, "shop", "cart");
    until("the default Service written again", || {
        fake.object(SERVICES, "shop", "cart")
            .is_some_and(|s| s["metadata"]["uid"] != old_uid && s["spec"]["type"] == "ExternalName")
    })
    .await;
    rt.shutdown_background();
}

/// A Route's Services are pending (its Ingress is not reported served) until a sync wrote
/// them all; a sync that fails leaves them pending, and the Route is woken once written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_is_pending_until_its_services_are_written() {
    use rouse_kube::local_service::{LocalServices, service};
    let fake = Fake::start().await;
    let route = rouse_api::serving::Route::from_value(cart_with_canary()).unwrap();
    let local = LocalServices::default();
    let services = vec![service(&route, "cart"), service(&route, "canary-cart")];
    local.want(std::collections::HashMap::from([(
        cart_route(),
        ("route-uid".to_string(), services),
    )]));
    assert!(local.pending(&cart_route()));
    assert!(!local.pending(&rouse_controller::Key::new(Kind::Route, "shop", "other")));
    let (events, mut woken) = tokio::sync::broadcast::channel(8);

    fake.state.lock().unwrap().down = true;
    local.sync(&fake.client, &events).await;
    assert!(local.pending(&cart_route()));
    assert!(woken.try_recv().is_err());

    fake.state.lock().unwrap().down = false;
    local.sync(&fake.client, &events).await;
    assert!(!local.pending(&cart_route()));
    assert_eq!(woken.try_recv().unwrap(), cart_route());
    assert!(fake.object(SERVICES, "shop", "canary-cart").is_some());
}

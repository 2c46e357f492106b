//! The objects Knative makes per revision and per route, built from real API objects: the
//! Deployment with the queue-proxy's env contract, the private and public Services, the public
//! EndpointSlices in Serve and Proxy, and the Route's Ingress.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, EnvVar};
use rouse_api::config::network::NetworkConfig;
use rouse_api::meta::Resource;
use rouse_api::networking::{ServerlessService, SksMode};
use rouse_api::serving::{self, Revision, Route};
use rouse_kube::local_service;
use rouse_kube::revision::{
    Backend, DeploymentConfig, QueueResources, deployment, private_service, public_endpoint_slices,
    public_endpoints, public_service, queue_readiness_probe,
};
use rouse_kube::route::{IngressConfig, ResolvedTarget, ingress};
use serde_json::json;

fn revision(yaml_spec: serde_json::Value) -> Revision {
    let mut r = Revision::new_named("shop", "cart-00002");
    r.metadata.uid = "rev-uid-2".into();
    r.metadata.labels = BTreeMap::from([
        (serving::LABEL_SERVICE.into(), "cart".into()),
        (serving::LABEL_CONFIGURATION.into(), "cart".into()),
        (serving::LABEL_CONFIGURATION_GENERATION.into(), "2".into()),
    ]);
    r.metadata.annotations = BTreeMap::from([
        ("autoscaling.knative.dev/min-scale".into(), "1".into()),
        (
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        ),
    ]);
    r.spec = serde_json::from_value(yaml_spec).unwrap();
    r
}

fn app_revision() -> Revision {
    revision(json!({
        "containerConcurrency": 10,
        "timeoutSeconds": 120,
        "containers": [{
            "name": "user-container",
            "image": "example.org/cart@sha256:abc",
            "ports": [{"containerPort": 9000}],
            "env": [{"name": "MODE", "value": "prod"}],
            "readinessProbe": {"httpGet": {"path": "/ready"}, "periodSeconds": 0, "successThreshold": 1},
            "livenessProbe": {"tcpSocket": {}},
        }],
    }))
}

fn env(c: &Container) -> BTreeMap<String, EnvVar> {
    c.env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect()
}

fn value(c: &Container, name: &str) -> String {
    env(c)
        .get(name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{} has no {name}", c.name))
}

#[test]
fn deployment_is_knatives_shape() {
    let rev = app_revision();
    let d = deployment(&rev, &DeploymentConfig::default(), 3);
    let m = &d.metadata;
    assert_eq!(m.name.as_deref(), Some("cart-00002-deployment"));
    assert_eq!(m.namespace.as_deref(), Some("shop"));
    let labels = m.labels.clone().unwrap();
    assert_eq!(labels["serving.knative.dev/revision"], "cart-00002");
    assert_eq!(labels["serving.knative.dev/revisionUID"], "rev-uid-2");
    assert_eq!(labels["serving.knative.dev/configuration"], "cart");
    assert_eq!(labels["serving.knative.dev/service"], "cart");
    let ann = m.annotations.clone().unwrap();
    assert_eq!(ann["autoscaling.knative.dev/min-scale"], "1");
    assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    let owner = &m.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str()
        ),
        (
            "serving.knative.dev/v1",
            "Revision",
            "cart-00002",
            "rev-uid-2"
        )
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));

    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.revision_history_limit, Some(0));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    let strategy = serde_json::to_value(&spec.strategy).unwrap();
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(
        spec.selector.match_labels.clone().unwrap(),
        BTreeMap::from([(
            "serving.knative.dev/revisionUID".to_string(),
            "rev-uid-2".to_string()
        )])
    );
    let tmpl = &spec.template;
    let pod_labels = tmpl.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(pod_labels["app"], "cart-00002");
    assert_eq!(pod_labels["serving.knative.dev/revisionUID"], "rev-uid-2");
    let pod = tmpl.spec.as_ref().unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(120));
    assert_eq!(pod.enable_service_links, Some(false));
    assert_eq!(pod.containers.len(), 2);

    // The user container.
    let user = &pod.containers[0];
    assert_eq!(user.name, "user-container");
    assert_eq!(user.image.as_deref(), Some("example.org/cart@sha256:abc"));
    assert!(
        user.readiness_probe.is_none(),
        "the queue-proxy runs the readiness probe"
    );
    assert_eq!(value(user, "PORT"), "9000");
    assert_eq!(value(user, "K_REVISION"), "cart-00002");
    assert_eq!(value(user, "K_CONFIGURATION"), "cart");
    assert_eq!(value(user, "K_SERVICE"), "cart");
    assert_eq!(value(user, "MODE"), "prod");
    let port = &user.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("user-port"), 9000)
    );
    let pre_stop = user.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    let get = pre_stop.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/wait-for-drain"));
    assert_eq!(serde_json::to_value(&get.port).unwrap(), 8022);
    assert_eq!(user.stdin, Some(false));
    assert_eq!(user.tty, Some(false));
    // The liveness probe stays, aimed at the user port.
    let live = user.liveness_probe.as_ref().unwrap();
    assert_eq!(
        serde_json::to_value(&live.tcp_socket.as_ref().unwrap().port).unwrap(),
        9000
    );

    // The queue-proxy sidecar and its env contract.
    let qp = &pod.containers[1];
    assert_eq!(qp.name, "queue-proxy");
    assert_eq!(qp.image.as_deref(), Some("rouse:dev"));
    assert_eq!(qp.command.clone().unwrap(), ["/rouse-queue-proxy"]);
    assert!(qp.args.is_none());
    let ports: Vec<i32> = qp
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.container_port)
        .collect();
    for p in [8012, 8022, 9090, 9091] {
        assert!(ports.contains(&p), "queue-proxy lacks port {p}: {ports:?}");
    }
    for (k, v) in [
        ("SERVING_NAMESPACE", "shop"),
        ("SERVING_SERVICE", "cart"),
        ("SERVING_CONFIGURATION", "cart"),
        ("SERVING_REVISION", "cart-00002"),
        ("QUEUE_SERVING_PORT", "8012"),
        ("QUEUE_SERVING_TLS_PORT", "8112"),
        ("USER_PORT", "9000"),
        ("CONTAINER_CONCURRENCY", "10"),
        ("REVISION_TIMEOUT_SECONDS", "120"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "0"),
        ("SYSTEM_NAMESPACE", "knative-serving"),
        ("ENABLE_MULTI_CONTAINER_PROBES", "false"),
    ] {
        assert_eq!(value(qp, k), v, "{k}");
    }
    for (k, path) in [
        ("SERVING_POD", "metadata.name"),
        ("SERVING_POD_IP", "status.podIP"),
    ] {
        let e = &env(qp)[k];
        let f = e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(f.field_path, path, "{k}");
    }
    // config-observability's request log, as Knative's queue-proxy reads it (off by default).
    let o11y: serde_json::Value = serde_json::from_str(&value(qp, "OBSERVABILITY_CONFIG")).unwrap();
    assert_eq!(o11y["enableRequestLog"], false);
    assert!(
        o11y["requestLogTemplate"]
            .as_str()
            .is_some_and(|t| t.contains("{{.Request.Method}}"))
    );
    // The user's readiness probe, moved to the queue-proxy with the port resolved.
    let probe: serde_json::Value =
        serde_json::from_str(&value(qp, "SERVING_READINESS_PROBE")).unwrap();
    assert_eq!(
        probe,
        json!({"httpGet": {"path": "/ready", "port": 9000}, "periodSeconds": 0, "successThreshold": 1})
    );
    let qp_probe = qp
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(serde_json::to_value(&qp_probe.port).unwrap(), 8012);
    let h = &qp_probe.http_headers.as_ref().unwrap()[0];
    assert_eq!(
        (h.name.as_str(), h.value.as_str()),
        ("K-Network-Probe", "queue")
    );
    let sc = qp.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
}

#[test]
fn h2c_revisions_and_defaults() {
    let rev = revision(json!({
        "containers": [{"image": "example.org/grpc", "ports": [{"name": "h2c", "containerPort": 50051}]}],
    }));
    let mut cfg = DeploymentConfig {
        queue_image: "example.org/rouse:v1".into(),
        ..Default::default()
    };
    cfg.revision_timeout_seconds = 300;
    let mut rev2 = rev.clone();
    rev2.metadata
        .annotations
        .insert(serving::ANNOTATION_PROGRESS_DEADLINE.into(), "2m".into());
    let d = deployment(&rev2, &cfg, 1);
    let spec = d.spec.unwrap();
    assert_eq!(spec.progress_deadline_seconds, Some(120));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(300));
    let qp = &pod.containers[1];
    assert_eq!(qp.image.as_deref(), Some("example.org/rouse:v1"));
    assert_eq!(value(qp, "QUEUE_SERVING_PORT"), "8013");
    assert_eq!(value(qp, "USER_PORT"), "50051");
    assert_eq!(value(qp, "CONTAINER_CONCURRENCY"), "0");
    // config-observability's request log switched on reaches the sidecar.
    cfg.observability = rouse_api::config::observability::ObservabilityConfig::from_data(
        &[
            ("logging.enable-request-log".to_string(), "true".to_string()),
            (
                "logging.request-log-template".to_string(),
                "{{.Request.Method}}".to_string(),
            ),
        ]
        .into_iter()
        .collect(),
    )
    .unwrap();
    let d = deployment(&rev, &cfg, 1);
    let qp = &d.spec.unwrap().template.spec.unwrap().containers[1];
    let o11y: serde_json::Value = serde_json::from_str(&value(qp, "OBSERVABILITY_CONFIG")).unwrap();
    assert_eq!(o11y["enableRequestLog"], true);
    assert_eq!(o11y["requestLogTemplate"], "{{.Request.Method}}");
    // No readiness probe given: Knative's TCP probe on the user port.
    let probe = queue_readiness_probe(&rev.spec);
    assert_eq!(
        serde_json::to_value(&probe).unwrap(),
        json!({"tcpSocket": {"port": 50051}, "successThreshold": 1})
    );
}

#[test]
fn queue_proxy_resources_from_config_and_annotations() {
    let mut rev = app_revision();
    let resources = |rev: &Revision, cfg: &DeploymentConfig| {
        let d = deployment(rev, cfg, 1);
        let pod = d.spec.unwrap().template.spec.unwrap();
        serde_json::to_value(pod.containers[1].resources.clone().unwrap()).unwrap()
    };
    // Knative's default: a CPU request only.
    let cfg = DeploymentConfig::default();
    assert_eq!(resources(&rev, &cfg), json!({"requests": {"cpu": "25m"}}));
    let cfg = DeploymentConfig {
        queue_resources: QueueResources::default().with_knative_defaults(),
        ..Default::default()
    };
    assert_eq!(
        resources(&rev, &cfg),
        json!({"requests": {"cpu": "25m", "memory": "400Mi", "ephemeral-storage": "512Mi"},
               "limits": {"cpu": "1000m", "memory": "800Mi", "ephemeral-storage": "1024Mi"}})
    );
    // A revision's annotations override; a value that is not a quantity is left out.
    for (k, v) in [
        ("cpu-resource-request", "100m"),
        ("memory-resource-limit", "1Gi"),
        ("ephemeral-storage-resource-limit", "a lot"),
    ] {
        rev.metadata
            .annotations
            .insert(format!("queue.sidecar.serving.knative.dev/{k}"), v.into());
    }
    let got = resources(&rev, &cfg);
    assert_eq!(got["requests"]["cpu"], "100m");
    assert_eq!(got["limits"]["memory"], "1Gi");
    assert_eq!(got["limits"]["ephemeral-storage"], "1024Mi");
}

#[test]
fn an_exec_readiness_probe_stays_with_the_user_container_for_the_kubelet() {
    let rev = revision(json!({
        "containers": [{"image": "example.org/app", "readinessProbe": {
            "exec": {"command": ["/bin/true"]}, "periodSeconds": 1,
        }}],
    }));
    let pod = deployment(&rev, &DeploymentConfig::default(), 1)
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let user = serde_json::to_value(&pod.containers[0]).unwrap();
    assert_eq!(
        user["readinessProbe"]["exec"]["command"],
        json!(["/bin/true"])
    );
    // The queue-proxy checks the user port over TCP, with the probe's timing.
    let probe = serde_json::to_value(queue_readiness_probe(&rev.spec)).unwrap();
    assert_eq!(
        probe,
        json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    );
}

fn sks(mode: SksMode, activators: i32) -> ServerlessService {
    let mut s = ServerlessService::new_named("shop", "cart-00002");
    s.metadata.uid = "sks-uid".into();
    s.metadata.labels =
        BTreeMap::from([("serving.knative.dev/revision".into(), "cart-00002".into())]);
    s.spec.mode = mode;
    s.spec.num_activators = activators;
    s
}

fn backends(prefix: &str, n: u8, ready: bool) -> Vec<Backend> {
    (1..=n)
        .map(|i| Backend {
            ip: format!("{prefix}.{i}").parse::<IpAddr>().unwrap(),
            ready,
            pod: Some(format!("pod-{prefix}-{i}")),
            node: None,
        })
        .collect()
}

#[test]
fn private_and_public_services() {
    let s = sks(SksMode::Serve, 2);
    let private = private_service(&s, "rev-uid-2");
    assert_eq!(private.metadata.name.as_deref(), Some("cart-00002-private"));
    let spec = private.spec.unwrap();
    assert_eq!(
        spec.selector.unwrap(),
        BTreeMap::from([(
            "serving.knative.dev/revisionUID".to_string(),
            "rev-uid-2".to_string()
        )])
    );
    let ports: Vec<(String, i32, serde_json::Value)> = spec
        .ports
        .unwrap()
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap(),
                p.port,
                serde_json::to_value(&p.target_port).unwrap(),
            )
        })
        .collect();
    assert!(ports.contains(&("http".into(), 80, json!(8012))));
    assert!(ports.contains(&("http2".into(), 81, json!(8013))));
    assert!(ports.contains(&("http-autometric".into(), 9090, json!(9090))));
    assert_eq!(
        private.metadata.labels.unwrap()["networking.internal.knative.dev/serviceType"],
        "Private"
    );
    let public = public_service(&s);
    assert_eq!(public.metadata.name.as_deref(), Some("cart-00002"));
    assert!(
        public.spec.as_ref().unwrap().selector.is_none(),
        "the public Service has no selector"
    );
    for svc in [&public, &private_service(&s, "rev-uid-2")] {
        let o = &svc.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.uid.as_str()),
            ("ServerlessService", "sks-uid")
        );
    }
}

#[test]
fn endpoint_slices_in_serve_and_proxy() {
    let pods = backends("10.1.0", 3, true);
    let acts = backends("10.9.0", 5, true);

    // Serve: the ready pods, on the queue-proxy's ports.
    let s = sks(SksMode::Serve, 2);
    let eps = public_endpoints(&s, &pods, &acts);
    assert_eq!(eps.mode, SksMode::Serve);
    let slices = public_endpoint_slices(&s, &eps);
    assert_eq!(slices.len(), 1);
    let slice = &slices[0];
    assert_eq!(slice.address_type, "IPv4");
    let labels = slice.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "cart-00002");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "rouse.knative.dev"
    );
    let addrs: Vec<String> = slice
        .endpoints
        .iter()
        .map(|e| e.addresses[0].clone())
        .collect();
    assert_eq!(addrs, ["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
    assert_eq!(
        slice.endpoints[0]
            .target_ref
            .as_ref()
            .unwrap()
            .name
            .as_deref(),
        Some("pod-10.1.0-1")
    );
    let ports: Vec<(Option<String>, Option<i32>)> = slice
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("http".into()), Some(8012)),
            (Some("http2".into()), Some(8013))
        ]
    );
    let o = &slice.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(o.kind, "ServerlessService");

    // Proxy: 2 of the 5 activators, the same 2 every time, and still the same 2 after an
    // activator that was not chosen goes away.
    let s = sks(SksMode::Proxy, 2);
    let eps = public_endpoints(&s, &pods, &acts);
    assert_eq!(eps.mode, SksMode::Proxy);
    assert_eq!(eps.backends.len(), 2);
    assert!(
        eps.backends
            .iter()
            .all(|b| b.ip.to_string().starts_with("10.9.0."))
    );
    assert_eq!(public_endpoints(&s, &pods, &acts), eps);
    let unchosen: Vec<Backend> = acts
        .iter()
        .filter(|a| !eps.backends.contains(a))
        .cloned()
        .collect();
    let fewer: Vec<Backend> = acts
        .iter()
        .filter(|a| **a != unchosen[0])
        .cloned()
        .collect();
    assert_eq!(public_endpoints(&s, &pods, &fewer).backends, eps.backends);
    // Revisions spread over the activators: not every SKS picks the same pair.
    let picks: std::collections::BTreeSet<Vec<IpAddr>> = (0..20)
        .map(|i| {
            let mut other = sks(SksMode::Proxy, 2);
            other.metadata.name = format!("rev-{i}");
            let eps = public_endpoints(&other, &pods, &acts);
            eps.backends.iter().map(|b| b.ip).collect()
        })
        .collect();
    assert!(picks.len() > 1, "every revision chose the same activators");

    // No ready pod forces Proxy; no ready activator forces Serve.
    let s = sks(SksMode::Serve, 2);
    let cold = backends("10.1.0", 2, false);
    assert_eq!(public_endpoints(&s, &cold, &acts).mode, SksMode::Proxy);
    let s = sks(SksMode::Proxy, 2);
    let eps = public_endpoints(&s, &pods, &[]);
    assert_eq!(eps.mode, SksMode::Serve);
    assert_eq!(eps.backends.len(), 3);
    // Nothing anywhere: one empty slice says so.
    let eps = public_endpoints(&s, &[], &[]);
    let slices = public_endpoint_slices(&s, &eps);
    assert_eq!(slices.len(), 1);
    assert!(slices[0].endpoints.is_empty());
    // Mixed families: one slice per family.
    let mut mixed = backends("10.1.0", 1, true);
    mixed.push(Backend {
        ip: "fd00::5".parse().unwrap(),
        ready: true,
        pod: None,
        node: None,
    });
    let eps = public_endpoints(&sks(SksMode::Serve, 2), &mixed, &acts);
    let families: Vec<String> = public_endpoint_slices(&s, &eps)
        .iter()
        .map(|s| s.address_type.clone())
        .collect();
    assert_eq!(families, ["IPv4", "IPv6"]);
}

fn route(labels: &[(&str, &str)]) -> Route {
    let mut r = Route::new_named("shop", "cart");
    r.metadata.uid = "route-uid".into();
    r.metadata.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    r
}

fn targets() -> Vec<ResolvedTarget> {
    let t = |tag: &str, rev: &str, percent: i64| ResolvedTarget {
        tag: tag.into(),
        revision: rev.into(),
        percent,
        h2c: false,
    };
    vec![
        t("", "cart-00001", 90),
        t("", "cart-00002", 10),
        t("", "cart-00003", 0),
        t("canary", "cart-00002", 100),
    ]
}

fn cfg(domain: &str, tag_header_routing: bool) -> IngressConfig {
    IngressConfig {
        network: NetworkConfig {
            ingress_class: "rouse.ingress.networking.knative.dev".into(),
            ..Default::default()
        },
        domain: domain.into(),
        domains: Default::default(),
        tag_header_routing,
    }
}

#[test]
fn ingress_rules_splits_and_headers() {
    let ing = ingress(
        &route(&[("serving.knative.dev/service", "cart")]),
        &targets(),
        &Default::default(),
        &cfg("example.com", false),
    );
    let v = serde_json::to_value(&ing).unwrap();
    assert_eq!(v["apiVersion"], "networking.internal.knative.dev/v1alpha1");
    assert_eq!(v["kind"], "Ingress");
    assert_eq!(v["metadata"]["name"], "cart");
    assert_eq!(
        v["metadata"]["annotations"]["networking.knative.dev/ingress.class"],
        "rouse.ingress.networking.knative.dev"
    );
    assert_eq!(v["metadata"]["labels"]["serving.knative.dev/route"], "cart");
    assert_eq!(
        v["metadata"]["labels"]["serving.knative.dev/service"],
        "cart"
    );
    assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Route");
    assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "route-uid");
    assert_eq!(v["spec"]["httpOption"], "Enabled");
    let rules = v["spec"]["rules"].as_array().unwrap();
    let hosts: Vec<(serde_json::Value, serde_json::Value)> = rules
        .iter()
        .map(|r| (r["hosts"].clone(), r["visibility"].clone()))
        .collect();
    assert_eq!(
        hosts,
        [
            (
                json!(["cart.shop", "cart.shop.svc", "cart.shop.svc.cluster.local"]),
                json!("ClusterLocal")
            ),
            (json!(["cart.shop.example.com"]), json!("ExternalIP")),
            (
                json!([
                    "canary-cart.shop",
                    "canary-cart.shop.svc",
                    "canary-cart.shop.svc.cluster.local"
                ]),
                json!("ClusterLocal")
            ),
            (json!(["canary-cart.shop.example.com"]), json!("ExternalIP")),
        ]
    );
    // The default route: 90/10, the 0 % target omitted, Knative's appended headers.
    let splits = &rules[1]["http"]["paths"][0]["splits"];
    assert_eq!(
        splits,
        &json!([
            {"serviceNamespace": "shop", "serviceName": "cart-00001", "servicePort": 80, "percent": 90,
             "appendHeaders": {"Knative-Serving-Namespace": "shop", "Knative-Serving-Revision": "cart-00001"}},
            {"serviceNamespace": "shop", "serviceName": "cart-00002", "servicePort": 80, "percent": 10,
             "appendHeaders": {"Knative-Serving-Namespace": "shop", "Knative-Serving-Revision": "cart-00002"}},
        ])
    );
    assert_eq!(rules[0]["http"], rules[1]["http"]);
    assert_eq!(rules[3]["http"]["paths"][0]["splits"][0]["percent"], 100);
    // The Ingress validates against its own CRD's types (it decodes strictly).
    let back: rouse_api::ingress::Ingress = serde_json::from_value(v).unwrap();
    assert_eq!(back, ing);
}

#[test]
fn ingress_cluster_local_h2c_and_tag_headers() {
    // No domain configured (or the visibility label): cluster-local rules only.
    for (domain, labels) in [
        ("svc.cluster.local", vec![]),
        (
            "example.com",
            vec![("networking.knative.dev/visibility", "cluster-local")],
        ),
    ] {
        let ing = ingress(
            &route(&labels),
            &targets(),
            &Default::default(),
            &cfg(domain, false),
        );
        assert!(
            ing.spec
                .rules
                .iter()
                .all(|r| r.visibility == "ClusterLocal"),
            "{domain}"
        );
        assert_eq!(ing.spec.rules.len(), 2);
    }
    // An h2c revision is reached on the public Service's port 81.
    let mut t = targets();
    t[0].h2c = true;
    let ing = ingress(
        &route(&[]),
        &t,
        &Default::default(),
        &cfg("example.com", false),
    );
    let port = serde_json::to_value(
        &ing.spec.rules[0].http.as_ref().unwrap().paths[0].splits[0].service_port,
    )
    .unwrap();
    assert_eq!(port, 81);
    // Tag-header routing: the default host gets a header-matched path per tag first, then the
    // default path marked as such; the tag's host appends the tag header.
    let ing = ingress(
        &route(&[]),
        &targets(),
        &Default::default(),
        &cfg("example.com", true),
    );
    let v = serde_json::to_value(&ing).unwrap();
    let paths = &v["spec"]["rules"][1]["http"]["paths"];
    assert_eq!(
        paths[0]["headers"],
        json!({"Knative-Serving-Tag": {"exact": "canary"}})
    );
    assert_eq!(paths[0]["splits"][0]["serviceName"], "cart-00002");
    assert_eq!(
        paths[0]["appendHeaders"],
        json!({"Knative-Serving-Tag": "canary"})
    );
    assert_eq!(
        paths[1]["appendHeaders"],
        json!({"Knative-Serving-Default-Route": "true"})
    );
    assert_eq!(paths[1]["splits"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["spec"]["rules"][3]["http"]["paths"][0]["appendHeaders"],
        json!({"Knative-Serving-Tag": "canary"})
    );
}

/// Per-tag visibility: a traffic name made cluster-local (its Service labelled) keeps its
/// ClusterLocal rule and loses its external one; the other names keep both.
#[test]
fn a_cluster_local_tag_gets_its_cluster_local_rule_only() {
    let rules = |local_only: &[&str]| -> Vec<(Vec<String>, String)> {
        let local_only = local_only.iter().map(|s| s.to_string()).collect();
        ingress(
            &route(&[]),
            &targets(),
            &local_only,
            &cfg("example.com", false),
        )
        .spec
        .rules
        .into_iter()
        .map(|r| (r.hosts, r.visibility))
        .collect()
    };
    let hosts = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let canary_local = (
        hosts(&[
            "canary-cart.shop",
            "canary-cart.shop.svc",
            "canary-cart.shop.svc.cluster.local",
        ]),
        "ClusterLocal".to_string(),
    );
    let default_local = (
        hosts(&["cart.shop", "cart.shop.svc", "cart.shop.svc.cluster.local"]),
        "ClusterLocal".to_string(),
    );
    let default_external = (hosts(&["cart.shop.example.com"]), "ExternalIP".to_string());
    assert_eq!(
        rules(&["canary"]),
        [
            default_local.clone(),
            default_external.clone(),
            canary_local.clone()
        ]
    );
    assert_eq!(
        rules(&[""]),
        [
            default_local.clone(),
            canary_local.clone(),
            (
                hosts(&["canary-cart.shop.example.com"]),
                "ExternalIP".to_string()
            )
        ]
    );
    assert_eq!(rules(&["", "canary"]), [default_local, canary_local]);
}

/// A Route's cluster-local Services: one per cluster-local host of its Ingress (the default
/// and each tag), ExternalName to the gateway's Service, controlled by the Route.
#[test]
fn a_routes_cluster_local_services() {
    let r = route(&[("serving.knative.dev/service", "cart")]);
    let ing = ingress(
        &r,
        &targets(),
        &Default::default(),
        &cfg("example.com", false),
    );
    assert_eq!(local_service::names(&ing), ["cart", "canary-cart"]);
    // A cluster-local route has the same Services.
    let local = ingress(
        &r,
        &targets(),
        &Default::default(),
        &cfg("svc.cluster.local", false),
    );
    assert_eq!(local_service::names(&local), ["cart", "canary-cart"]);

    let v = serde_json::to_value(local_service::service(&r, "cart")).unwrap();
    assert_eq!(
        v,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "cart", "namespace": "shop",
                "labels": {"serving.knative.dev/route": "cart",
                           "serving.knative.dev/service": "cart"},
                "ownerReferences": [{"apiVersion": "serving.knative.dev/v1", "kind": "Route",
                                     "name": "cart", "uid": "route-uid", "controller": true,
                                     "blockOwnerDeletion": true}],
            },
            "spec": {
                "type": "ExternalName",
                "externalName": "rouse-gateway-local.knative-serving.svc.cluster.local",
                "sessionAffinity": "None",
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80}],
            },
        })
    );
    let svc = local_service::service(&r, "cart");
    assert!(local_service::controlled_by(&svc, "route-uid"));
    assert!(!local_service::controlled_by(&svc, "other-uid"));
    assert!(!local_service::controlled_by(&svc, ""));
}

#[test]
fn ingress_hosts_take_the_domain_config_domain_selects() {
    // config-domain: a default and a domain for `app: prod`; the visibility label still wins.
    let mut c = cfg("example.com", false);
    c.domains = rouse_api::config::domain::DomainConfig::from_data(&rouse_api::config::data(&[
        ("default.example.org", ""),
        ("prod.example.org", "selector:\n  app: prod\n"),
    ]))
    .unwrap();
    let external = |labels: &[(&str, &str)]| -> Vec<String> {
        ingress(&route(labels), &targets(), &Default::default(), &c)
            .spec
            .rules
            .iter()
            .filter(|r| r.visibility == "ExternalIP")
            .flat_map(|r| r.hosts.clone())
            .collect()
    };
    assert_eq!(
        external(&[]),
        [
            "cart.shop.default.example.org",
            "canary-cart.shop.default.example.org"
        ]
    );
    assert_eq!(
        external(&[("app", "prod")]),
        [
            "cart.shop.prod.example.org",
            "canary-cart.shop.prod.example.org"
        ]
    );
    assert!(
        external(&[
            ("app", "prod"),
            ("networking.knative.dev/visibility", "cluster-local")
        ])
        .is_empty()
    );
}

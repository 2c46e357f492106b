//! The Kubernetes objects Knative makes for a revision (reference §5.1, §6), as pure functions:
//! the Deployment `{rev}-deployment` with the user container(s) and the queue-proxy sidecar,
//! the private Service `{rev}-private` (selector on the pods), the public Service `{rev}`
//! (no selector) and its EndpointSlices — the pods in Serve mode, a subset of the activators
//! in Proxy mode. Each object carries an owner reference, so deleting the owner cascades.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference as KubeOwnerReference;
use rouse_api::meta::{OwnerReference, Resource};
use rouse_api::networking::{ServerlessService, SksMode};
use rouse_api::serving::{self, Container, IntOrString, Probe, Revision};
use serde_json::{Value, json};

/// The queue-proxy's HTTP/1.1 (and h2c-upgrade) serving port.
pub const QUEUE_HTTP_PORT: i32 = 8012;
/// The queue-proxy's h2c serving port.
pub const QUEUE_H2C_PORT: i32 = 8013;
/// The queue-proxy's TLS serving port.
pub const QUEUE_TLS_PORT: i32 = 8112;
/// The queue-proxy's admin port (`/wait-for-drain`).
pub const QUEUE_ADMIN_PORT: i32 = 8022;
/// The queue-proxy's autoscaler stats port.
pub const QUEUE_AUTOSCALER_METRICS_PORT: i32 = 9090;
/// The queue-proxy's request metrics port.
pub const QUEUE_USER_METRICS_PORT: i32 = 9091;
/// The name of the sidecar container.
pub const QUEUE_CONTAINER: &str = "queue-proxy";
/// The sidecar's binary in Rouse's image: `rouse queue-proxy` without the rest of the
/// platform linked in (a smaller resident set in every pod).
pub const QUEUE_COMMAND: &str = "/rouse-queue-proxy";

/// Label on every per-revision object: the revision's name.
pub const LABEL_REVISION: &str = "serving.knative.dev/revision";
/// Label on every per-revision object: the revision's UID (the Deployment's selector).
pub const LABEL_REVISION_UID: &str = "serving.knative.dev/revisionUID";
/// Label on the revision's Services: `Public` or `Private`.
pub const LABEL_SERVICE_TYPE: &str = "networking.internal.knative.dev/serviceType";
/// EndpointSlice label naming its Service.
pub const LABEL_SLICE_SERVICE: &str = "kubernetes.io/service-name";
/// EndpointSlice label naming who manages it (so Kubernetes' own controller leaves it alone).
pub const LABEL_SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// The `managed-by` value of the slices Rouse writes.
pub const SLICE_MANAGER: &str = "rouse.knative.dev";
/// Endpoints per EndpointSlice (Kubernetes' default `maxEndpointsPerSlice`).
pub const ENDPOINTS_PER_SLICE: usize = 100;

/// What the cluster's config contributes to a revision's Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentConfig {
    /// `config-deployment` `queue-sidecar-image`: the image holding `rouse`.
    pub queue_image: String,
    /// The queue-proxy's resource requests and limits (config-deployment's
    /// `queue-sidecar-{cpu,memory,ephemeral-storage}-{request,limit}`); a revision's
    /// `queue.sidecar.serving.knative.dev/{resource}-resource-{request,limit}` annotations
    /// override them.
    pub queue_resources: QueueResources,
    /// `config-deployment` `progress-deadline` (seconds), unless the revision's annotation says.
    pub progress_deadline_seconds: i32,
    /// The namespace the control plane runs in (`SYSTEM_NAMESPACE`).
    pub system_namespace: String,
    /// `config-defaults` `enable-service-links` when the revision leaves it unset.
    pub enable_service_links: bool,
    /// `config-features` `autodetect-http2` (`ENABLE_HTTP2_AUTO_DETECTION`).
    pub autodetect_http2: bool,
    /// `config-features` `multi-container-probing` (`ENABLE_MULTI_CONTAINER_PROBES`).
    pub multi_container_probing: bool,
    /// `config-defaults` defaults for timeouts the revision leaves unset (seconds).
    pub revision_timeout_seconds: i64,
    pub revision_response_start_timeout_seconds: i64,
    pub revision_idle_timeout_seconds: i64,
    /// `config-observability`: the queue-proxy's request log (`OBSERVABILITY_CONFIG`).
    pub observability: rouse_api::config::observability::ObservabilityConfig,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        Self {
            queue_image: crate::install::DEFAULT_IMAGE.to_string(),
            queue_resources: QueueResources::default(),
            progress_deadline_seconds: 600,
            system_namespace: crate::install::NAMESPACE.to_string(),
            enable_service_links: false,
            autodetect_http2: false,
            multi_container_probing: false,
            revision_timeout_seconds: 300,
            revision_response_start_timeout_seconds: 0,
            revision_idle_timeout_seconds: 0,
            observability: Default::default(),
        }
    }
}

/// `OBSERVABILITY_CONFIG`: the request-log part of `config-observability` as Knative's
/// queue-proxy reads it (JSON).
fn observability_json(o: &rouse_api::config::observability::ObservabilityConfig) -> String {
    json!({
        "enableRequestLog": o.enable_request_log,
        "enableProbeRequestLog": o.enable_probe_request_log,
        "requestLogTemplate": o.request_log_template.as_ref().map_or("", |t| t.source()),
    })
    .to_string()
}

/// `{rev}-deployment`.
pub fn deployment_name(revision: &str) -> String {
    format!("{revision}-deployment")
}

/// `{rev}-private`.
pub fn private_service_name(revision: &str) -> String {
    format!("{revision}-private")
}

/// A Kubernetes owner reference from Rouse's.
pub fn owner_reference(o: &OwnerReference) -> KubeOwnerReference {
    KubeOwnerReference {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
        controller: o.controller,
        block_owner_deletion: o.block_owner_deletion,
    }
}

/// Turns a manifest built here into its typed form; the shapes are fixed by this module and
/// covered by its tests, so a failure is a bug here, not bad input.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("rouse-kube builds well-formed objects")
}

/// The labels every object of a revision carries: the revision's own labels, its name and UID.
fn revision_labels(rev: &Revision) -> BTreeMap<String, String> {
    let mut l = rev.metadata.labels.clone();
    l.insert(LABEL_REVISION.into(), rev.metadata.name.clone());
    l.insert(LABEL_REVISION_UID.into(), rev.metadata.uid.clone());
    l
}

/// The revision's annotations minus kubectl's bookkeeping.
fn revision_annotations(rev: &Revision) -> BTreeMap<String, String> {
    let mut a = rev.metadata.annotations.clone();
    a.remove("kubectl.kubernetes.io/last-applied-configuration");
    a
}

fn label(rev: &Revision, key: &str) -> String {
    rev.metadata.labels.get(key).cloned().unwrap_or_default()
}

/// The user's readiness probe as the queue-proxy runs it (`SERVING_READINESS_PROBE`): Knative's
/// default TCP probe when none is given, the port resolved to the user port. An exec probe
/// stays with the user container (only the kubelet can run a command in it), and the
/// queue-proxy checks the user port over TCP with the same timing, as Knative's does.
pub fn queue_readiness_probe(spec: &serving::RevisionSpec) -> Probe {
    let user_port = i64::from(spec.container_port());
    let mut probe = spec
        .serving_container()
        .and_then(|c| c.readiness_probe.clone())
        .unwrap_or_else(|| Probe {
            tcp_socket: Some(Default::default()),
            success_threshold: Some(1),
            ..Default::default()
        });
    if probe.exec.take().is_some() {
        probe.tcp_socket = Some(Default::default());
    }
    let unset = |p: &Option<IntOrString>| matches!(p, None | Some(IntOrString::Int(0)));
    if let Some(h) = probe.http_get.as_mut().filter(|h| unset(&h.port)) {
        h.port = Some(IntOrString::Int(user_port));
    }
    if let Some(t) = probe.tcp_socket.as_mut().filter(|t| unset(&t.port)) {
        t.port = Some(IntOrString::Int(user_port));
    }
    if let Some(g) = probe.grpc.as_mut().filter(|g| g.port == 0) {
        g.port = user_port as i32;
    }
    probe
}

/// The resources the queue-proxy's requests and limits name, as config-deployment's keys and
/// the revision annotations spell them.
pub const QUEUE_RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

/// Prefix of the revision annotations that set the queue-proxy's resources.
const QUEUE_RESOURCE_ANNOTATION: &str = "queue.sidecar.serving.knative.dev/";

/// The queue-proxy container's resource requests and limits, by resource name.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueResources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl Default for QueueResources {
    /// Knative's: a CPU request of 25m, nothing else.
    fn default() -> Self {
        QueueResources {
            requests: BTreeMap::from([("cpu".to_string(), "25m".to_string())]),
            limits: BTreeMap::new(),
        }
    }
}

impl QueueResources {
    /// Knative's defaults with `queueproxy.resource-defaults` enabled, for what is not set:
    /// CPU 25m/1000m, memory 400Mi/800Mi, ephemeral storage 512Mi/1024Mi (request/limit).
    pub fn with_knative_defaults(mut self) -> QueueResources {
        for (name, request, limit) in [
            ("cpu", "25m", "1000m"),
            ("memory", "400Mi", "800Mi"),
            ("ephemeral-storage", "512Mi", "1024Mi"),
        ] {
            self.requests
                .entry(name.to_string())
                .or_insert_with(|| request.to_string());
            self.limits
                .entry(name.to_string())
                .or_insert_with(|| limit.to_string());
        }
        self
    }

    /// These resources with the revision's annotations applied (a value that is not a
    /// quantity is left out: validation reports it, the Deployment stays applicable).
    fn for_revision(&self, annotations: &BTreeMap<String, String>) -> Value {
        let mut out = self.clone();
        for name in QUEUE_RESOURCES {
            for (kind, map) in [("request", &mut out.requests), ("limit", &mut out.limits)] {
                let key = format!("{QUEUE_RESOURCE_ANNOTATION}{name}-resource-{kind}");
                if let Some(v) = annotations.get(&key).map(|v| v.trim())
                    && rouse_controller::workload::parse_quantity(v).is_some()
                {
                    map.insert(name.to_string(), v.to_string());
                }
            }
        }
        let mut r = serde_json::Map::new();
        if !out.requests.is_empty() {
            r.insert("requests".into(), json!(out.requests));
        }
        if !out.limits.is_empty() {
            r.insert("limits".into(), json!(out.limits));
        }
        Value::Object(r)
    }
}

/// The Deployment `{rev}-deployment` of a revision, with `replicas` instances.
pub fn deployment(rev: &Revision, cfg: &DeploymentConfig, replicas: i32) -> Deployment {
    let spec = &rev.spec;
    let name = &rev.metadata.name;
    let ns = &rev.metadata.namespace;
    let h2c = spec.is_h2c();
    let user_port = spec.container_port();
    let timeout = spec.timeout_seconds.unwrap_or(cfg.revision_timeout_seconds);
    let serving_name = spec.serving_container().map(|c| c.name.clone());

    let labels = revision_labels(rev);
    // Pods also carry `app` (the revision's name unless the user set one), as Knative's do.
    let mut pod_labels = labels.clone();
    pod_labels
        .entry("app".into())
        .or_insert_with(|| name.clone());
    let annotations = revision_annotations(rev);
    let progress_deadline = annotations
        .get(serving::ANNOTATION_PROGRESS_DEADLINE)
        .and_then(|d| rouse_api::duration::parse_go_duration(d).ok())
        .map(|d| d.as_secs() as i32)
        .unwrap_or(cfg.progress_deadline_seconds);

    let k_env = [
        ("K_REVISION", name.clone()),
        ("K_CONFIGURATION", label(rev, serving::LABEL_CONFIGURATION)),
        ("K_SERVICE", label(rev, serving::LABEL_SERVICE)),
    ];
    // Like Knative, containers run from the digests recorded in the revision's status.
    let digests: BTreeMap<&str, &str> = rev
        .status
        .container_statuses
        .iter()
        .filter(|s| !s.image_digest.is_empty())
        .map(|s| (s.name.as_str(), s.image_digest.as_str()))
        .collect();
    let mut containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            let serving = Some(&c.name) == serving_name.as_ref();
            let digest = digests.get(c.name.as_str()).copied();
            user_container(c, serving, user_port, &k_env, digest)
        })
        .collect();

    let probe = queue_readiness_probe(spec);
    let probe_json = serde_json::to_string(&probe).expect("a probe serializes");
    let queue_port = if h2c { QUEUE_H2C_PORT } else { QUEUE_HTTP_PORT };
    let field = |env: &str, path: &str| json!({"name": env, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let lit = |env: &str, v: String| json!({"name": env, "value": v});
    let env = vec![
        lit("SERVING_NAMESPACE", ns.clone()),
        lit("SERVING_SERVICE", label(rev, serving::LABEL_SERVICE)),
        lit(
            "SERVING_CONFIGURATION",
            label(rev, serving::LABEL_CONFIGURATION),
        ),
        lit("SERVING_REVISION", name.clone()),
        field("SERVING_POD", "metadata.name"),
        field("SERVING_POD_IP", "status.podIP"),
        field("HOST_IP", "status.hostIP"),
        lit("QUEUE_SERVING_PORT", queue_port.to_string()),
        lit("QUEUE_SERVING_TLS_PORT", QUEUE_TLS_PORT.to_string()),
        lit("USER_PORT", user_port.to_string()),
        lit(
            "CONTAINER_CONCURRENCY",
            spec.container_concurrency.unwrap_or(0).to_string(),
        ),
        lit("REVISION_TIMEOUT_SECONDS", timeout.to_string()),
        lit(
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            spec.response_start_timeout_seconds
                .unwrap_or(cfg.revision_response_start_timeout_seconds)
                .to_string(),
        ),
        lit(
            "REVISION_IDLE_TIMEOUT_SECONDS",
            spec.idle_timeout_seconds
                .unwrap_or(cfg.revision_idle_timeout_seconds)
                .to_string(),
        ),
        lit("SERVING_LOGGING_CONFIG", String::new()),
        lit("SERVING_LOGGING_LEVEL", String::new()),
        lit("SERVING_READINESS_PROBE", probe_json),
        lit(
            "ENABLE_HTTP2_AUTO_DETECTION",
            cfg.autodetect_http2.to_string(),
        ),
        lit("ENABLE_HTTP_FULL_DUPLEX", "false".into()),
        lit(
            "ENABLE_MULTI_CONTAINER_PROBES",
            cfg.multi_container_probing.to_string(),
        ),
        lit("SYSTEM_NAMESPACE", cfg.system_namespace.clone()),
        lit(
            "OBSERVABILITY_CONFIG",
            observability_json(&cfg.observability),
        ),
    ];
    // kubelet asks the queue-proxy, which runs the user's probe (aggressively by default).
    let mut qp_probe = json!({
        "httpGet": {
            "port": queue_port,
            "httpHeaders": [{"name": "K-Network-Probe", "value": "queue"}],
        },
    });
    for (k, v) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds.filter(|p| *p > 0)),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = v {
            qp_probe[k] = json!(v);
        }
    }
    containers.push(json!({
        "name": QUEUE_CONTAINER,
        "image": cfg.queue_image,
        "command": [QUEUE_COMMAND],
        "ports": [
            {"name": if h2c { "h2c" } else { "http1" }, "containerPort": queue_port, "protocol": "TCP"},
            {"name": "https-port", "containerPort": QUEUE_TLS_PORT, "protocol": "TCP"},
            {"name": "http-queueadm", "containerPort": QUEUE_ADMIN_PORT, "protocol": "TCP"},
            {"name": "http-autometric", "containerPort": QUEUE_AUTOSCALER_METRICS_PORT, "protocol": "TCP"},
            {"name": "http-usermetric", "containerPort": QUEUE_USER_METRICS_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "readinessProbe": qp_probe,
        "resources": cfg.queue_resources.for_revision(&annotations),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }));

    let mut pod = pod_spec_fields(spec);
    pod.insert("containers".into(), Value::Array(containers));
    pod.insert("terminationGracePeriodSeconds".into(), json!(timeout));
    pod.insert(
        "enableServiceLinks".into(),
        json!(
            spec.enable_service_links
                .unwrap_or(cfg.enable_service_links)
        ),
    );

    typed(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": ns,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(&rev.owner_ref())],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_REVISION_UID: rev.metadata.uid}},
            "progressDeadlineSeconds": progress_deadline,
            "revisionHistoryLimit": 0,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": pod,
            },
        },
    }))
}

/// A user container as Knative runs it: its image's digest once resolved; K_* env
/// everywhere; on the serving container PORT, the port named `user-port`, no readiness probe
/// but an exec one (the queue-proxy runs the others) and a preStop hook that waits for the
/// queue-proxy to drain.
fn user_container(
    c: &Container,
    serving: bool,
    user_port: i32,
    k_env: &[(&str, String)],
    digest: Option<&str>,
) -> Value {
    let mut c = c.clone();
    if let Some(d) = digest {
        c.image = d.to_string();
    }
    if c.name.is_empty() {
        // Knative's webhook names an unnamed container; Kubernetes requires a name.
        c.name = "user-container".into();
    }
    c.stdin = Some(false);
    c.tty = Some(false);
    c.termination_message_policy
        .get_or_insert_with(|| "FallbackToLogsOnError".into());
    let mut env = Vec::new();
    if serving {
        env.push(serving::EnvVar {
            name: "PORT".into(),
            value: Some(user_port.to_string()),
            value_from: None,
        });
        // The queue-proxy runs the readiness probe, but for an exec probe (the kubelet's).
        c.readiness_probe = c.readiness_probe.take().filter(|p| p.exec.is_some());
        c.ports = vec![serving::ContainerPort {
            name: "user-port".into(),
            container_port: user_port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }];
        c.lifecycle = Some(json!({"preStop": {"httpGet": {
            "port": QUEUE_ADMIN_PORT, "path": "/wait-for-drain"}}}));
        for p in [&mut c.liveness_probe, &mut c.startup_probe]
            .into_iter()
            .flatten()
        {
            if let Some(h) = p.http_get.as_mut().filter(|h| h.port.is_none()) {
                h.port = Some(IntOrString::Int(i64::from(user_port)));
            }
            if let Some(t) = p.tcp_socket.as_mut().filter(|t| t.port.is_none()) {
                t.port = Some(IntOrString::Int(i64::from(user_port)));
            }
        }
    }
    for (k, v) in k_env {
        env.push(serving::EnvVar {
            name: k.to_string(),
            value: Some(v.clone()),
            value_from: None,
        });
    }
    env.append(&mut c.env);
    c.env = env;
    serde_json::to_value(c).expect("a container serializes")
}

/// The pod-level fields a revision carries, as the PodSpec wants them.
fn pod_spec_fields(spec: &serving::RevisionSpec) -> serde_json::Map<String, Value> {
    let mut v = serde_json::to_value(spec).expect("a revision spec serializes");
    let m = v.as_object_mut().expect("a spec is an object");
    for knative_only in [
        "containerConcurrency",
        "timeoutSeconds",
        "responseStartTimeoutSeconds",
        "idleTimeoutSeconds",
        "containers",
    ] {
        m.remove(knative_only);
    }
    std::mem::take(m)
}

fn sks_labels(sks: &ServerlessService, service_type: &str) -> BTreeMap<String, String> {
    let mut l = sks.metadata.labels.clone();
    l.insert(LABEL_SERVICE_TYPE.into(), service_type.into());
    l
}

/// The ports of a revision's Services: HTTP/1.1 on 80 and h2c on 81 (the ingress picks by
/// the revision's protocol), the metrics and admin ports on their own numbers.
fn service_ports(with_metrics: bool) -> Vec<Value> {
    let mut p = vec![
        json!({"name": "http", "port": 80, "targetPort": QUEUE_HTTP_PORT, "protocol": "TCP"}),
        json!({"name": "http2", "port": 81, "targetPort": QUEUE_H2C_PORT, "protocol": "TCP"}),
        json!({"name": "https", "port": 443, "targetPort": QUEUE_TLS_PORT, "protocol": "TCP"}),
    ];
    if with_metrics {
        for (name, port) in [
            ("http-autometric", QUEUE_AUTOSCALER_METRICS_PORT),
            ("http-usermetric", QUEUE_USER_METRICS_PORT),
            ("http-queueadm", QUEUE_ADMIN_PORT),
        ] {
            p.push(json!({"name": name, "port": port, "targetPort": port, "protocol": "TCP"}));
        }
    }
    p
}

/// The private Service `{rev}-private`: a selector on the revision's pods (by revision UID);
/// the autoscaler scrapes through it and the SKS reads its endpoints. Owned by the SKS.
pub fn private_service(sks: &ServerlessService, revision_uid: &str) -> Service {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": private_service_name(&sks.metadata.name),
            "namespace": sks.metadata.namespace,
            "labels": sks_labels(sks, "Private"),
            "ownerReferences": [owner_reference(&sks.owner_ref())],
        },
        "spec": {
            "selector": {LABEL_REVISION_UID: revision_uid},
            "ports": service_ports(true),
        },
    }))
}

/// The public Service `{rev}`: no selector; its EndpointSlices (see [`public_endpoint_slices`])
/// say where traffic goes. Owned by the SKS.
pub fn public_service(sks: &ServerlessService) -> Service {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": sks.metadata.name,
            "namespace": sks.metadata.namespace,
            "labels": sks_labels(sks, "Public"),
            "ownerReferences": [owner_reference(&sks.owner_ref())],
        },
        "spec": {"ports": service_ports(false)},
    }))
}

/// One backend address: a pod of the revision or an activator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    pub ready: bool,
    /// The pod behind the address, for `targetRef`.
    pub pod: Option<String>,
    pub node: Option<String>,
}

/// Where the public Service points, and which mode that is after Knative's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicEndpoints {
    /// The effective mode: Proxy when no pod is ready, Serve when no activator is ready.
    pub mode: SksMode,
    pub backends: Vec<Backend>,
}

/// Chooses the public endpoints as the SKS reconciler does (reference §6): the ready pods in
/// Serve mode, `num_activators` of the ready activators in Proxy mode (a stable subset chosen by
/// rendezvous hashing on the SKS name, so each revision spreads over different activators and
/// keeps them as activators come and go). No ready pod forces Proxy; no ready activator forces
/// Serve.
pub fn public_endpoints(
    sks: &ServerlessService,
    pods: &[Backend],
    activators: &[Backend],
) -> PublicEndpoints {
    let ready_pods: Vec<Backend> = pods.iter().filter(|b| b.ready).cloned().collect();
    let ready_acts: Vec<Backend> = activators.iter().filter(|b| b.ready).cloned().collect();
    let mode = match sks.spec.mode {
        SksMode::Serve if ready_pods.is_empty() && !ready_acts.is_empty() => SksMode::Proxy,
        SksMode::Proxy if ready_acts.is_empty() => SksMode::Serve,
        m => m,
    };
    let backends = match mode {
        SksMode::Serve => ready_pods,
        SksMode::Proxy => {
            let n = usize::try_from(sks.spec.num_activators)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(ready_acts.len());
            activator_subset(&sks.metadata.name, ready_acts, n)
        }
    };
    PublicEndpoints { mode, backends }
}

/// The `n` activators with the highest hash of (key, address), in address order.
fn activator_subset(key: &str, mut acts: Vec<Backend>, n: usize) -> Vec<Backend> {
    if acts.len() > n {
        acts.sort_by_key(|b| std::cmp::Reverse(fnv1a(key, &b.ip.to_string())));
        acts.truncate(n);
    }
    acts.sort_by_key(|b| b.ip);
    acts
}

fn fnv1a(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0]).chain(b.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The EndpointSlices of the public Service `{rev}`: one slice per address family and per
/// [`ENDPOINTS_PER_SLICE`] addresses, named `{rev}-{family}-{n}`, on the queue-proxy's
/// (and the activator's: the same numbers) ports. Owned by the SKS.
pub fn public_endpoint_slices(
    sks: &ServerlessService,
    eps: &PublicEndpoints,
) -> Vec<EndpointSlice> {
    let name = &sks.metadata.name;
    let mut out = Vec::new();
    for (family, v4) in [("IPv4", true), ("IPv6", false)] {
        let family_eps: Vec<&Backend> = eps
            .backends
            .iter()
            .filter(|b| b.ip.is_ipv4() == v4)
            .collect();
        if family_eps.is_empty() && !(v4 && eps.backends.is_empty()) {
            continue;
        }
        // An empty IPv4 slice still says "no endpoints" explicitly.
        let chunks: Vec<&[&Backend]> = if family_eps.is_empty() {
            vec![&[]]
        } else {
            family_eps.chunks(ENDPOINTS_PER_SLICE).collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let endpoints: Vec<Value> = chunk
                .iter()
                .map(|b| {
                    let mut e = json!({
                        "addresses": [b.ip.to_string()],
                        "conditions": {"ready": b.ready, "serving": b.ready, "terminating": false},
                    });
                    if let Some(pod) = &b.pod {
                        e["targetRef"] = json!({"kind": "Pod", "name": pod, "namespace": sks.metadata.namespace});
                    }
                    if let Some(node) = &b.node {
                        e["nodeName"] = json!(node);
                    }
                    e
                })
                .collect();
            let mut labels = sks_labels(sks, "Public");
            labels.insert(LABEL_SLICE_SERVICE.into(), name.clone());
            labels.insert(LABEL_SLICE_MANAGED_BY.into(), SLICE_MANAGER.into());
            out.push(typed(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{}-{i}", family.to_ascii_lowercase()),
                    "namespace": sks.metadata.namespace,
                    "labels": labels,
                    "ownerReferences": [owner_reference(&sks.owner_ref())],
                },
                "addressType": family,
                "endpoints": endpoints,
                "ports": [
                    {"name": "http", "port": QUEUE_HTTP_PORT, "protocol": "TCP"},
                    {"name": "http2", "port": QUEUE_H2C_PORT, "protocol": "TCP"},
                ],
            })));
        }
    }
    out
}

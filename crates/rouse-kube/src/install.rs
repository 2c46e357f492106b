//! The manifests `rouse install` prints: namespace, CRDs, least-privilege RBAC, the roles'
//! Deployments, PodDisruptionBudgets and Services, Knative's ConfigMaps with their defaults, and
//! the admission webhooks' configurations.
//! `rouse install | kubectl apply --server-side -f -` installs Rouse on a cluster.

use serde_json::{Value, json};

use crate::crd;
use crate::schema::SchemaError;
use crate::webhook;

/// The namespace everything is installed in (Knative's).
pub const NAMESPACE: &str = "knative-serving";
/// The image installed when none is given.
pub const DEFAULT_IMAGE: &str = "rouse:dev";
/// Port every role answers `/healthz` (liveness) and `/readyz` (readiness) on.
pub const HEALTH_PORT: i32 = 8022;
/// Port of the controller's admission webhooks (HTTPS).
pub const WEBHOOK_PORT: i32 = 8443;
/// Port of every role's metrics.
pub const METRICS_PORT: i32 = 9090;
/// The activator's HTTP/1.1 and h2c ports (Knative's).
pub const ACTIVATOR_HTTP_PORT: i32 = 8012;
pub const ACTIVATOR_H2C_PORT: i32 = 8013;
/// The gateway's HTTP port.
pub const GATEWAY_HTTP_PORT: i32 = 8080;
/// The gateway's HTTPS port (the Service's 443).
pub const GATEWAY_HTTPS_PORT: i32 = 8443;
/// The gateway's cluster-local HTTP port (HTTP/1.1 and h2c; the local Service's 80): the
/// hosts of `ClusterLocal` Ingress rules are served here only.
pub const GATEWAY_LOCAL_PORT: i32 = 8081;
/// The name of the Service in front of the activators (Knative's).
pub const ACTIVATOR_SERVICE: &str = "activator-service";
/// The name of the gateway's LoadBalancer Service (external hosts only).
pub const GATEWAY_SERVICE: &str = "rouse-gateway";
/// The name of the gateway's cluster-local Service (Knative's `knative-local-gateway`):
/// cluster-local hosts and external ones, reachable only inside the cluster.
pub const GATEWAY_LOCAL_SERVICE: &str = "rouse-gateway-local";
/// The Service the activators push their stats to (Knative's name); no selector: the leading
/// controller writes its own address as the endpoint.
pub const AUTOSCALER_SERVICE: &str = "autoscaler";
/// The port of the autoscaler's stat stream (Knative's).
pub const AUTOSCALER_PORT: u16 = 8080;
/// Where the activators find the autoscaler in the cluster.
pub const AUTOSCALER_URL: &str = "http://autoscaler.knative-serving.svc:8080";
/// Where the activator's container mounts the stream token's Secret.
pub const AUTOSCALER_TOKEN_DIR: &str = "/var/run/rouse/autoscaler";

/// What `rouse install` may vary.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The image holding `rouse`, used for every role and the queue-proxy sidecar.
    pub image: String,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_string(),
        }
    }
}

/// Every manifest, in apply order (namespace and CRDs first).
pub fn manifests(opts: &InstallOptions) -> Result<Vec<Value>, SchemaError> {
    let mut out = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": labels("")},
    })];
    for c in crd::all()? {
        out.push(serde_json::to_value(c).map_err(|e| SchemaError {
            path: ".".into(),
            reason: e.to_string(),
        })?);
    }
    out.extend(rbac());
    out.extend(configmaps(opts));
    for role in Role::ALL {
        out.push(deployment(role, opts));
        out.push(pdb(role));
    }
    out.extend(services());
    out.extend(webhook_configurations());
    Ok(out)
}

/// The manifests as one multi-document YAML stream.
pub fn render_yaml(docs: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string_multiple(docs)
}

/// A Rouse role that runs as a Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controller,
    Activator,
    Gateway,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Controller, Role::Activator, Role::Gateway];

    /// The subcommand, the container name and the `app` label.
    pub fn name(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Activator => "activator",
            Role::Gateway => "gateway",
        }
    }

    /// The ServiceAccount, ClusterRole and bindings' name.
    pub fn account(self) -> String {
        format!("rouse-{}", self.name())
    }
}

fn labels(component: &str) -> Value {
    let mut l = json!({
        "app.kubernetes.io/name": "knative-serving",
        "app.kubernetes.io/part-of": "rouse",
    });
    if !component.is_empty() {
        l["app.kubernetes.io/component"] = json!(component);
        l["app"] = json!(component);
    }
    l
}

fn meta(name: &str, component: &str) -> Value {
    json!({"name": name, "namespace": NAMESPACE, "labels": labels(component)})
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn named_rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Value {
    let mut r = rule(groups, resources, verbs);
    r["resourceNames"] = json!(names);
    r
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const STATUS: &[&str] = &["get", "update", "patch"];

/// ServiceAccounts, cluster-wide rules for what each role touches in users' namespaces, and
/// namespaced rules for what it touches in `knative-serving` only.
fn rbac() -> Vec<Value> {
    let serving = "serving.knative.dev";
    let autoscaling = "autoscaling.internal.knative.dev";
    let networking = "networking.internal.knative.dev";
    let mut out = Vec::new();
    for role in Role::ALL {
        let (cluster_rules, ns_rules) = match role {
            Role::Controller => (
                vec![
                    rule(
                        &[serving],
                        &[
                            "services",
                            "configurations",
                            "revisions",
                            "routes",
                            "domainmappings",
                        ],
                        WRITE,
                    ),
                    rule(
                        &[serving],
                        &[
                            "services/status",
                            "configurations/status",
                            "revisions/status",
                            "routes/status",
                            "domainmappings/status",
                            "services/finalizers",
                            "configurations/finalizers",
                            "revisions/finalizers",
                            "routes/finalizers",
                            "domainmappings/finalizers",
                        ],
                        STATUS,
                    ),
                    rule(&[autoscaling], &["podautoscalers"], WRITE),
                    rule(&[autoscaling], &["podautoscalers/status"], STATUS),
                    rule(&[networking], &["serverlessservices", "ingresses"], WRITE),
                    rule(
                        &[networking],
                        &["serverlessservices/status", "ingresses/status"],
                        STATUS,
                    ),
                    rule(&["apps"], &["deployments"], WRITE),
                    rule(&["apps"], &["deployments/scale"], STATUS),
                    rule(&[""], &["services"], WRITE),
                    rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
                    rule(&[""], &["pods"], READ),
                    rule(&[""], &["namespaces"], READ),
                    // Image pull credentials for tag resolution: a revision's pull Secrets
                    // and its ServiceAccount's, read one by one (never listed).
                    rule(&[""], &["secrets", "serviceaccounts"], &["get"]),
                    rule(&[""], &["events"], &["create", "patch"]),
                    rule(
                        &["apiextensions.k8s.io"],
                        &["customresourcedefinitions"],
                        READ,
                    ),
                    // The webhook writes its CA bundle into its own configurations only.
                    named_rule(
                        &["admissionregistration.k8s.io"],
                        &["mutatingwebhookconfigurations"],
                        &[webhook::DEFAULTING_WEBHOOK],
                        &["get", "update"],
                    ),
                    named_rule(
                        &["admissionregistration.k8s.io"],
                        &["validatingwebhookconfigurations"],
                        &[webhook::VALIDATION_WEBHOOK, webhook::CONFIG_WEBHOOK],
                        &["get", "update"],
                    ),
                ],
                vec![
                    rule(&[""], &["configmaps"], READ),
                    // The webhook's certificates and the activators' stream token: creating a
                    // Secret cannot be limited by name.
                    rule(&[""], &["secrets"], &["create"]),
                    named_rule(
                        &[""],
                        &["secrets"],
                        &[
                            webhook::certs::SECRET_NAME,
                            crate::stat_stream::TOKEN_SECRET,
                        ],
                        &["get", "update"],
                    ),
                    rule(
                        &["coordination.k8s.io"],
                        &["leases"],
                        &["get", "list", "watch", "create", "update", "patch"],
                    ),
                ],
            ),
            // The activator follows Revisions, their ServerlessServices and their Services'
            // EndpointSlices, and reads its ConfigMaps; the gateway follows Ingresses, the public
            // EndpointSlices and the TLS Secrets the Ingresses name (anywhere: a DomainMapping's
            // is in its own namespace; it lists them by `type=kubernetes.io/tls` only), and
            // patches Ingress status.
            Role::Activator => (
                vec![
                    rule(&[serving], &["revisions"], READ),
                    rule(&[networking], &["serverlessservices"], READ),
                    rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                ],
                vec![rule(&[""], &["configmaps"], READ)],
            ),
            Role::Gateway => (
                vec![
                    rule(&[networking], &["ingresses"], READ),
                    rule(&[networking], &["ingresses/status"], &["patch"]),
                    rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                    rule(&[""], &["secrets"], &["list", "watch"]),
                ],
                vec![rule(&[""], &["configmaps"], READ)],
            ),
        };
        let name = role.account();
        let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]);
        out.push(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(&name, role.name()),
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels(role.name())},
            "rules": cluster_rules,
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels(role.name())},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subject,
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": meta(&name, role.name()),
            "rules": ns_rules,
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": meta(&name, role.name()),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        }));
    }
    // Users' roles: namespace admins and editors manage Knative Services, viewers read them.
    let user_kinds = [
        "services",
        "configurations",
        "revisions",
        "routes",
        "domainmappings",
    ];
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "knative-serving-aggregated-edit", "labels": {
            "rbac.authorization.k8s.io/aggregate-to-admin": "true",
            "rbac.authorization.k8s.io/aggregate-to-edit": "true",
            "app.kubernetes.io/part-of": "rouse"}},
        "rules": [rule(&[serving], &user_kinds, WRITE)],
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "knative-serving-aggregated-view", "labels": {
            "rbac.authorization.k8s.io/aggregate-to-view": "true",
            "app.kubernetes.io/part-of": "rouse"}},
        "rules": [rule(&[serving], &user_kinds, READ)],
    }));
    out
}

/// The rules `rouse install` grants a role: cluster-wide (what it touches in users'
/// namespaces) and namespaced (what it touches in `knative-serving` only). `rouse controller`
/// checks its own at start.
pub fn role_rules(role: Role) -> (Vec<Value>, Vec<Value>) {
    let name = role.account();
    let docs = rbac();
    let rules = |kind: &str| -> Vec<Value> {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name.as_str())
            .and_then(|d| d["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    (rules("ClusterRole"), rules("Role"))
}

/// Knative's defaults, key by key, per ConfigMap (from `rouse_api::config`'s defaults; a test
/// parses them back and compares with `Config::default()`).
pub const CONFIG_DEFAULTS: &[(&str, &[(&str, &str)])] = &[
    (
        "config-autoscaler",
        &[
            ("container-concurrency-target-default", "100"),
            ("container-concurrency-target-percentage", "70"),
            ("requests-per-second-target-default", "200"),
            ("target-burst-capacity", "211"),
            ("stable-window", "60s"),
            ("panic-window-percentage", "10.0"),
            ("panic-threshold-percentage", "200.0"),
            ("max-scale-up-rate", "1000.0"),
            ("max-scale-down-rate", "2.0"),
            ("enable-scale-to-zero", "true"),
            ("scale-to-zero-grace-period", "30s"),
            ("scale-to-zero-pod-retention-period", "0s"),
            ("scale-down-delay", "0s"),
            ("pod-autoscaler-class", "kpa.autoscaling.knative.dev"),
            ("activator-capacity", "100.0"),
            ("activator-queue-depth", "10000"),
            ("initial-scale", "1"),
            ("allow-zero-initial-scale", "false"),
            ("min-scale", "0"),
            ("max-scale", "0"),
            ("max-scale-limit", "0"),
        ],
    ),
    (
        "config-defaults",
        &[
            ("revision-timeout-seconds", "300"),
            ("max-revision-timeout-seconds", "600"),
            ("revision-response-start-timeout-seconds", "300"),
            ("revision-idle-timeout-seconds", "0"),
            ("container-concurrency", "0"),
            ("container-concurrency-max-limit", "1000"),
            ("allow-container-concurrency-zero", "true"),
            ("enable-service-links", "false"),
            ("container-name-template", "user-container"),
            ("init-container-name-template", "init-container"),
        ],
    ),
    (
        "config-network",
        &[
            ("domain-template", "{{.Name}}.{{.Namespace}}.{{.Domain}}"),
            ("tag-template", "{{.Tag}}-{{.Name}}"),
            ("rollout-duration", "0"),
            ("http-protocol", "Enabled"),
            ("default-external-scheme", "http"),
        ],
    ),
    (
        "config-gc",
        &[
            ("retain-since-create-time", "48h"),
            ("retain-since-last-active-time", "15h"),
            ("min-non-active-revisions", "20"),
            ("max-non-active-revisions", "1000"),
        ],
    ),
    (
        "config-deployment",
        &[
            ("progress-deadline", "600s"),
            ("queue-sidecar-cpu-request", "25m"),
            ("digest-resolution-timeout", "10s"),
            (
                "registries-skipping-tag-resolving",
                "kind.local,ko.local,dev.local",
            ),
        ],
    ),
    (
        "config-observability",
        &[
            ("logging.enable-request-log", "false"),
            ("logging.enable-probe-request-log", "false"),
            (
                "logging.request-log-template",
                rouse_api::config::observability::DEFAULT_REQUEST_LOG_TEMPLATE,
            ),
        ],
    ),
];

/// Knative's ConfigMaps: the defaults documented under `_example` (as Knative ships them: the
/// live keys are whatever the operator sets), plus the keys Rouse must set — the ingress class
/// its gateway serves and the queue-proxy image.
fn configmaps(opts: &InstallOptions) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, defaults) in CONFIG_DEFAULTS {
        let mut data = serde_json::Map::new();
        data.insert("_example".into(), json!(example_text(name, defaults)));
        match *name {
            "config-network" => {
                data.insert(
                    "ingress-class".into(),
                    json!(rouse_api::ingress::ROUSE_CLASS),
                );
            }
            "config-deployment" => {
                data.insert("queue-sidecar-image".into(), json!(opts.image));
            }
            _ => {}
        }
        out.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": meta(name, "controller"),
            "data": data,
        }));
    }
    let mut flags = String::new();
    for (key, flag) in rouse_api::config::features::KNOWN_FLAGS {
        flags.push_str(&format!("{key}: \"{}\"\n", flag_name(*flag)));
    }
    out.insert(
        4,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": meta("config-features", "controller"),
            "data": {"_example": format!("{EXAMPLE_HEADER}{flags}")},
        }),
    );
    out
}

fn flag_name(f: rouse_api::config::features::Flag) -> String {
    f.to_string()
}

const EXAMPLE_HEADER: &str = "################################\n\
#    EXAMPLE CONFIGURATION     #\n\
################################\n\
# The keys below are the defaults. To change one, copy it out of _example to the top\n\
# level of `data` and edit it there.\n";

fn example_text(name: &str, defaults: &[(&str, &str)]) -> String {
    let mut s = format!("{EXAMPLE_HEADER}# {name}\n");
    for (k, v) in defaults {
        // A value with double quotes (the request-log template) is single-quoted, so the
        // example stays YAML an operator can copy.
        if v.contains('"') {
            s.push_str(&format!("{k}: '{v}'\n"));
        } else {
            s.push_str(&format!("{k}: \"{v}\"\n"));
        }
    }
    s
}

/// The Deployment of one role: non-root, read-only root filesystem, no capabilities, resource
/// requests, probes on the health port, spread over nodes.
fn deployment(role: Role, opts: &InstallOptions) -> Value {
    let name = role.name();
    let (replicas, cpu, memory, memory_limit, ports) = match role {
        Role::Controller => (
            2,
            "100m",
            "50Mi",
            "500Mi",
            json!([
                {"name": "https-webhook", "containerPort": WEBHOOK_PORT},
                {"name": "http-autoscaler", "containerPort": AUTOSCALER_PORT},
                {"name": "http-metrics", "containerPort": METRICS_PORT},
                {"name": "http-health", "containerPort": HEALTH_PORT},
            ]),
        ),
        Role::Activator => (
            2,
            "300m",
            "60Mi",
            "600Mi",
            json!([
                {"name": "http1", "containerPort": ACTIVATOR_HTTP_PORT},
                {"name": "h2c", "containerPort": ACTIVATOR_H2C_PORT},
                {"name": "http-metrics", "containerPort": METRICS_PORT},
                {"name": "http-health", "containerPort": HEALTH_PORT},
            ]),
        ),
        Role::Gateway => (
            2,
            "300m",
            "60Mi",
            "600Mi",
            json!([
                {"name": "http", "containerPort": GATEWAY_HTTP_PORT},
                {"name": "https", "containerPort": GATEWAY_HTTPS_PORT},
                {"name": "http-local", "containerPort": GATEWAY_LOCAL_PORT},
                {"name": "http-metrics", "containerPort": METRICS_PORT},
                {"name": "http-health", "containerPort": HEALTH_PORT},
            ]),
        ),
    };
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": {"path": path, "port": "http-health"},
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let env_field = |env: &str, path: &str| json!({"name": env, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    // The activator drains its waiting requests on SIGTERM; give it Knative's 600 s.
    let grace = if role == Role::Activator { 600 } else { 30 };
    let mut env = vec![
        env_field("SYSTEM_NAMESPACE", "metadata.namespace"),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_IP", "status.podIP"),
    ];
    if role == Role::Activator {
        env.push(json!({"name": "ROUSE_AUTOSCALER_URL", "value": AUTOSCALER_URL}));
        env.push(json!({"name": "ROUSE_AUTOSCALER_TOKEN_FILE",
            "value": format!("{AUTOSCALER_TOKEN_DIR}/{}", crate::stat_stream::TOKEN_KEY)}));
    }
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(name, name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(name)},
                "spec": {
                    "serviceAccountName": role.account(),
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app": name}},
                        },
                    }]}},
                    "containers": [{
                        "name": name,
                        "image": opts.image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": [name],
                        "ports": ports,
                        "env": env,
                        "resources": {
                            "requests": {"cpu": cpu, "memory": memory},
                            "limits": {"memory": memory_limit},
                        },
                        "readinessProbe": probe("/readyz", 5, 3),
                        "livenessProbe": probe("/healthz", 10, 6),
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    });
    if role == Role::Activator {
        mount_autoscaler_token(&mut d);
    }
    d
}

/// The activator pushes its stats to the leading controller with the token the controller
/// keeps in a Secret, mounted (a rotated token reaches the file without a restart; the pod
/// starts once the controller has made the Secret).
fn mount_autoscaler_token(deployment: &mut Value) {
    let spec = &mut deployment["spec"]["template"]["spec"];
    spec["volumes"] = json!([{"name": "autoscaler-token",
        "secret": {"secretName": crate::stat_stream::TOKEN_SECRET}}]);
    spec["containers"][0]["volumeMounts"] = json!([{"name": "autoscaler-token",
        "mountPath": AUTOSCALER_TOKEN_DIR, "readOnly": true}]);
}

fn pdb(role: Role) -> Value {
    let name = role.name();
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": meta(&format!("{name}-pdb"), name),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": name}}},
    })
}

fn port(name: &str, port: i32, target: i32) -> Value {
    json!({"name": name, "port": port, "targetPort": target, "protocol": "TCP"})
}

/// The Services in front of the roles: the activator's (the public Services' endpoints in
/// Proxy mode point at its pods), the webhook, and the gateway's: the LoadBalancer for
/// outside callers, the cluster-local one (a ClusterIP) for the cluster's own.
fn services() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(ACTIVATOR_SERVICE, "activator"),
            "spec": {
                "selector": {"app": "activator"},
                "ports": [
                    port("http", 80, ACTIVATOR_HTTP_PORT),
                    port("http2", 81, ACTIVATOR_H2C_PORT),
                    port("http-metrics", 9090, METRICS_PORT),
                ],
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta("webhook", "controller"),
            "spec": {
                "selector": {"app": "controller"},
                "ports": [port("https-webhook", 443, WEBHOOK_PORT)],
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(AUTOSCALER_SERVICE, "controller"),
            "spec": {
                "ports": [port("http", i32::from(AUTOSCALER_PORT), i32::from(AUTOSCALER_PORT))],
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta("controller", "controller"),
            "spec": {
                "selector": {"app": "controller"},
                "ports": [port("http-metrics", 9090, METRICS_PORT)],
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(GATEWAY_SERVICE, "gateway"),
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "gateway"},
                "ports": [
                    port("http", 80, GATEWAY_HTTP_PORT),
                    port("https", 443, GATEWAY_HTTPS_PORT),
                ],
            },
        }),
        // One port: the listener takes HTTP/1.1 and h2c (prior knowledge) alike.
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(GATEWAY_LOCAL_SERVICE, "gateway"),
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": "gateway"},
                "ports": [port("http", 80, GATEWAY_LOCAL_PORT)],
            },
        }),
    ]
}

/// Knative's admission webhooks, served by the controllers through the `webhook` Service. No
/// CA bundle: the controller writes its own. Until it has, the API server cannot reach the
/// webhook and, failing closed, refuses writes of Knative's kinds. ConfigMaps are validated
/// failing open: the controller also refuses a bad one (keeping the last good config), and
/// re-applying the install must not need a running controller.
fn webhook_configurations() -> Vec<Value> {
    let hook = |name: &str, path: &str, failure: &str, rules: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {
                "name": webhook::SERVICE_NAME, "namespace": NAMESPACE, "path": path, "port": 443,
            }},
            "failurePolicy": failure,
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "matchPolicy": "Equivalent",
            "rules": rules,
        })
    };
    let knative_rules = json!([
        {
            "apiGroups": ["serving.knative.dev"],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["services", "configurations", "revisions", "routes"],
            "scope": "Namespaced",
        },
        {
            "apiGroups": ["serving.knative.dev"],
            "apiVersions": ["v1beta1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["domainmappings"],
            "scope": "Namespaced",
        },
    ]);
    let internal = |group: &str, resources: &[&str]| {
        json!({
            "apiGroups": [group],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": resources,
            "scope": "Namespaced",
        })
    };
    let pod_autoscalers = internal("autoscaling.internal.knative.dev", &["podautoscalers"]);
    let networking = "networking.internal.knative.dev";
    let with = |mut rules: Value, more: Vec<Value>| {
        if let Some(list) = rules.as_array_mut() {
            list.extend(more);
        }
        rules
    };
    // The internal kinds get Knative's defaults too (a ServerlessService has none), and
    // are validated.
    let mut defaulting = hook(
        webhook::DEFAULTING_WEBHOOK,
        webhook::DEFAULTING_PATH,
        "Fail",
        with(
            knative_rules.clone(),
            vec![
                pod_autoscalers.clone(),
                internal(networking, &["ingresses"]),
            ],
        ),
    );
    let validation_rules = with(
        knative_rules,
        vec![
            pod_autoscalers,
            internal(networking, &["serverlessservices", "ingresses"]),
        ],
    );
    defaulting["reinvocationPolicy"] = json!("IfNeeded");
    let mut config = hook(
        webhook::CONFIG_WEBHOOK,
        webhook::CONFIG_VALIDATION_PATH,
        "Ignore",
        json!([{
            "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
            "resources": ["configmaps"], "scope": "Namespaced",
        }]),
    );
    config["namespaceSelector"] =
        json!({"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}});
    let meta = |name: &str| json!({"name": name, "labels": labels("controller")});
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": meta(webhook::DEFAULTING_WEBHOOK),
            "webhooks": [defaulting],
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": meta(webhook::VALIDATION_WEBHOOK),
            "webhooks": [hook(
                webhook::VALIDATION_WEBHOOK,
                webhook::VALIDATION_PATH,
                "Fail",
                validation_rules,
            )],
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": meta(webhook::CONFIG_WEBHOOK),
            "webhooks": [config],
        }),
    ]
}

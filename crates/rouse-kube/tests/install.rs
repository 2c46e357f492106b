//! The manifests `rouse install` prints: every document parses, is a well-formed Kubernetes
//! object (strictly: no field the typed API would drop), and has the expected shape.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use rouse_api::config::ConfigData;
use rouse_kube::config_watch::DeploymentSettings;
use rouse_kube::digest::TagResolution;
use rouse_kube::install::{CONFIG_DEFAULTS, InstallOptions, manifests, render_yaml};
use serde_json::{Value, json};

fn docs() -> Vec<Value> {
    manifests(&InstallOptions {
        image: "registry.example/rouse:1.2.3".into(),
    })
    .expect("manifests build")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Deserializes into the typed object and serializes back: a misspelt or misplaced field is
/// dropped by the typed API and shows up as a difference.
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(typed).unwrap();
    assert_eq!(
        &back, doc,
        "{} {} loses fields in the typed API",
        doc["kind"], doc["metadata"]["name"]
    );
}

#[test]
fn yaml_stream_parses_back_to_the_same_documents() {
    let docs = docs();
    let yaml = render_yaml(&docs).unwrap();
    let back: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML parses");
    assert_eq!(back.len(), docs.len());
    assert_eq!(back, docs);
    assert!(
        yaml.starts_with("apiVersion: v1\nkind: Namespace\n"),
        "{}",
        &yaml[..80]
    );
}

#[test]
fn every_document_is_a_well_formed_object_of_its_kind() {
    let docs = docs();
    for d in &docs {
        match d["kind"].as_str().unwrap() {
            "Namespace" => strict::<Namespace>(d),
            "CustomResourceDefinition" => strict::<CustomResourceDefinition>(d),
            "ServiceAccount" => strict::<ServiceAccount>(d),
            "ClusterRole" => strict::<ClusterRole>(d),
            "ClusterRoleBinding" => strict::<ClusterRoleBinding>(d),
            "Role" => strict::<Role>(d),
            "RoleBinding" => strict::<RoleBinding>(d),
            "ConfigMap" => strict::<ConfigMap>(d),
            "Deployment" => strict::<Deployment>(d),
            "PodDisruptionBudget" => strict::<PodDisruptionBudget>(d),
            "Service" => strict::<Service>(d),
            "MutatingWebhookConfiguration" => strict::<MutatingWebhookConfiguration>(d),
            "ValidatingWebhookConfiguration" => strict::<ValidatingWebhookConfiguration>(d),
            other => panic!("unexpected kind {other}"),
        }
        let namespaced = !matches!(
            d["kind"].as_str().unwrap(),
            "Namespace"
                | "CustomResourceDefinition"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "MutatingWebhookConfiguration"
                | "ValidatingWebhookConfiguration"
        );
        assert_eq!(
            d["metadata"]["namespace"].as_str() == Some("knative-serving"),
            namespaced,
            "{} {}",
            d["kind"],
            d["metadata"]["name"]
        );
    }
}

#[test]
fn kinds_and_names() {
    let docs = docs();
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names[0], "Namespace/knative-serving");
    // CRDs come right after the namespace, before anything that could use them.
    let crds: Vec<&str> = names[1..9].iter().map(String::as_str).collect();
    assert_eq!(
        crds,
        [
            "CustomResourceDefinition/services.serving.knative.dev",
            "CustomResourceDefinition/configurations.serving.knative.dev",
            "CustomResourceDefinition/revisions.serving.knative.dev",
            "CustomResourceDefinition/routes.serving.knative.dev",
            "CustomResourceDefinition/podautoscalers.autoscaling.internal.knative.dev",
            "CustomResourceDefinition/serverlessservices.networking.internal.knative.dev",
            "CustomResourceDefinition/domainmappings.serving.knative.dev",
            "CustomResourceDefinition/ingresses.networking.internal.knative.dev",
        ]
    );
    for want in [
        "ServiceAccount/rouse-controller",
        "ServiceAccount/rouse-activator",
        "ServiceAccount/rouse-gateway",
        "ClusterRole/rouse-controller",
        "ClusterRoleBinding/rouse-activator",
        "Role/rouse-gateway",
        "RoleBinding/rouse-controller",
        "ClusterRole/knative-serving-aggregated-edit",
        "ClusterRole/knative-serving-aggregated-view",
        "ConfigMap/config-autoscaler",
        "ConfigMap/config-defaults",
        "ConfigMap/config-network",
        "ConfigMap/config-gc",
        "ConfigMap/config-features",
        "ConfigMap/config-deployment",
        "ConfigMap/config-observability",
        "Deployment/controller",
        "Deployment/activator",
        "Deployment/gateway",
        "PodDisruptionBudget/controller-pdb",
        "PodDisruptionBudget/activator-pdb",
        "PodDisruptionBudget/gateway-pdb",
        "Service/activator-service",
        "Service/webhook",
        "Service/controller",
        "Service/autoscaler",
        "Service/rouse-gateway",
        "Service/rouse-gateway-local",
        "MutatingWebhookConfiguration/webhook.serving.knative.dev",
        "ValidatingWebhookConfiguration/validation.webhook.serving.knative.dev",
        "ValidatingWebhookConfiguration/config.webhook.serving.knative.dev",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing {want} in {names:?}"
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate documents");
}

#[test]
fn deployments_are_locked_down_probed_and_sized() {
    let docs = docs();
    for role in ["controller", "activator", "gateway"] {
        let d = find(&docs, "Deployment", role);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{role}");
        assert_eq!(pod["serviceAccountName"], format!("rouse-{role}"));
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example/rouse:1.2.3");
        assert_eq!(c["args"], serde_json::json!([role]));
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{role}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{role}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{role}");
        assert!(c["resources"]["requests"]["memory"].is_string(), "{role}");
        assert!(c["readinessProbe"]["httpGet"]["path"].is_string(), "{role}");
        assert!(c["livenessProbe"]["httpGet"]["path"].is_string(), "{role}");
        // The selector matches the pods, and the PDB selects the same pods.
        let sel = &d["spec"]["selector"]["matchLabels"];
        for (k, v) in sel.as_object().unwrap() {
            assert_eq!(&d["spec"]["template"]["metadata"]["labels"][k], v, "{role}");
        }
        let pdb = find(&docs, "PodDisruptionBudget", &format!("{role}-pdb"));
        assert_eq!(&pdb["spec"]["selector"]["matchLabels"], sel);
    }
    let controller = find(&docs, "Deployment", "controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    let ports = &controller["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "https-webhook" && p["containerPort"] == 8443)
    );
    let gw = find(&docs, "Service", "rouse-gateway");
    assert_eq!(gw["spec"]["type"], "LoadBalancer");
    assert_eq!(gw["spec"]["selector"]["app"], "gateway");
}

#[test]
fn webhooks_fail_closed_for_knatives_kinds_and_open_for_configmaps() {
    let docs = docs();
    let m = find(
        &docs,
        "MutatingWebhookConfiguration",
        "webhook.serving.knative.dev",
    );
    let w = &m["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["clientConfig"]["service"]["name"], "webhook");
    assert_eq!(w["clientConfig"]["service"]["path"], "/defaulting");
    assert!(
        w["clientConfig"].get("caBundle").is_none(),
        "the controller writes it"
    );
    assert_eq!(
        w["rules"][0]["resources"],
        json!(["services", "configurations", "revisions", "routes"])
    );
    assert_eq!(w["rules"][1]["apiVersions"], json!(["v1beta1"]));
    assert_eq!(w["rules"][1]["resources"], json!(["domainmappings"]));
    // The internal kinds Knative defaults (a ServerlessService has no defaults).
    assert_eq!(
        w["rules"][2]["apiGroups"],
        json!(["autoscaling.internal.knative.dev"])
    );
    assert_eq!(w["rules"][2]["resources"], json!(["podautoscalers"]));
    assert_eq!(
        (&w["rules"][3]["apiGroups"], &w["rules"][3]["resources"]),
        (
            &json!(["networking.internal.knative.dev"]),
            &json!(["ingresses"])
        )
    );
    assert_eq!(w["rules"].as_array().unwrap().len(), 4);
    let v = find(
        &docs,
        "ValidatingWebhookConfiguration",
        "validation.webhook.serving.knative.dev",
    );
    assert_eq!(v["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(
        v["webhooks"][0]["rules"][3]["resources"],
        json!(["serverlessservices", "ingresses"])
    );
    assert_eq!(
        v["webhooks"][0]["clientConfig"]["service"]["path"],
        "/resource-validation"
    );
    let c = find(
        &docs,
        "ValidatingWebhookConfiguration",
        "config.webhook.serving.knative.dev",
    );
    assert_eq!(c["webhooks"][0]["failurePolicy"], "Ignore");
    assert_eq!(
        c["webhooks"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "knative-serving"
    );
    // Webhook configurations come last: what they guard is applied before them.
    let last = &docs[docs.len() - 3..];
    assert!(last.iter().all(|d| {
        d["kind"]
            .as_str()
            .unwrap()
            .ends_with("WebhookConfiguration")
    }));
}

#[test]
fn activators_reach_the_leading_autoscaler_with_the_token() {
    let docs = docs();
    // No selector: the leading controller writes its own address as the endpoint.
    let svc = find(&docs, "Service", "autoscaler");
    assert!(svc["spec"]["selector"].is_null(), "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    let controller = find(&docs, "Deployment", "controller");
    let ports = &controller["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"] == 8080)
    );
    // The activator is told where, and reads the token from the mounted Secret.
    let activator = find(&docs, "Deployment", "activator");
    let pod = &activator["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        env("ROUSE_AUTOSCALER_URL"),
        Some("http://autoscaler.knative-serving.svc:8080".into())
    );
    assert_eq!(
        env("ROUSE_AUTOSCALER_TOKEN_FILE"),
        Some("/var/run/rouse/autoscaler/token".into())
    );
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "autoscaler-token"
    );
    assert_eq!(
        c["volumeMounts"][0]["mountPath"],
        "/var/run/rouse/autoscaler"
    );
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
    // Only the controller (which makes the Secret) may touch Secrets.
    for role in ["activator", "gateway"] {
        let r = find(&docs, "Role", &format!("rouse-{role}"));
        assert!(!r["rules"].to_string().contains("secrets"), "{role}: {r}");
    }
}

/// A Service's ports as `(port, targetPort, name)`.
fn service_ports(svc: &Value) -> Vec<(i64, i64, &str)> {
    svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["targetPort"].as_i64().unwrap(),
                p["name"].as_str().unwrap(),
            )
        })
        .collect()
}

/// The gateway container's ports as `(containerPort, name)`.
fn gateway_container_ports(docs: &[Value]) -> Vec<(i64, String)> {
    let gateway = find(docs, "Deployment", "gateway");
    gateway["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["containerPort"].as_i64().unwrap(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_gateway_serves_https_on_443() {
    let docs = docs();
    let svc = find(&docs, "Service", "rouse-gateway");
    assert_eq!(
        service_ports(svc),
        [(80, 8080, "http"), (443, 8443, "https")]
    );
    let ports = gateway_container_ports(&docs);
    assert!(ports.contains(&(8443, "https".into())), "{ports:?}");
}

#[test]
fn cluster_local_hosts_have_their_own_gateway_service_inside_the_cluster() {
    let docs = docs();
    let svc = find(&docs, "Service", "rouse-gateway-local");
    // Not behind the load balancer: only the cluster reaches it.
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["selector"]["app"], "gateway");
    // One port: the gateway takes HTTP/1.1 and h2c on it alike.
    assert_eq!(service_ports(svc), [(80, 8081, "http")]);
    let ports = gateway_container_ports(&docs);
    assert!(ports.contains(&(8081, "http-local".into())), "{ports:?}");
    // The LoadBalancer does not carry the cluster-local port.
    let public = find(&docs, "Service", "rouse-gateway");
    assert!(
        service_ports(public)
            .iter()
            .all(|(_, target, _)| *target != 8081),
        "{public}"
    );
}

#[test]
fn rbac_is_least_privilege() {
    let docs = docs();
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for r in d["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !r[field].as_array().unwrap().iter().any(|x| x == "*"),
                    "{} {} has a wildcard in {field}",
                    d["kind"],
                    d["metadata"]["name"]
                );
            }
        }
    }
    // The activator only reads; the gateway writes nothing but Ingress status.
    let writes = |name: &str| -> Vec<String> {
        let mut out = Vec::new();
        for kind in ["ClusterRole", "Role"] {
            for r in find(&docs, kind, name)["rules"].as_array().unwrap() {
                let verbs = r["verbs"].as_array().unwrap();
                if verbs
                    .iter()
                    .any(|v| v != "get" && v != "list" && v != "watch")
                {
                    for res in r["resources"].as_array().unwrap() {
                        out.push(res.as_str().unwrap().to_string());
                    }
                }
            }
        }
        out
    };
    assert_eq!(writes("rouse-activator"), Vec::<String>::new());
    assert_eq!(writes("rouse-gateway"), ["ingresses/status"]);
    // Cluster-wide, each data-plane role reaches exactly what it follows.
    let cluster_resources = |name: &str| -> Vec<String> {
        find(&docs, "ClusterRole", name)["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["resources"].as_array().unwrap().clone())
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        cluster_resources("rouse-activator"),
        ["revisions", "serverlessservices", "endpointslices"]
    );
    // Its ConfigMaps it reads in knative-serving only.
    let activator_ns = find(&docs, "Role", "rouse-activator");
    assert_eq!(
        activator_ns["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["configmaps"],
                            "verbs": ["get", "list", "watch"]}])
    );
    assert_eq!(
        cluster_resources("rouse-gateway"),
        ["ingresses", "ingresses/status", "endpointslices", "secrets"]
    );
    // The gateway lists and watches TLS Secrets (for the Ingresses' `spec.tls`): no get, no
    // write.
    let gateway = find(&docs, "ClusterRole", "rouse-gateway");
    let secrets = gateway["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "secrets")
        .unwrap();
    assert_eq!(secrets["verbs"], serde_json::json!(["list", "watch"]));
    // Leases only in knative-serving; cluster-wide, Secrets (image pull credentials, for tag
    // resolution) and ServiceAccounts are only read one by one, never listed or written.
    let cluster = find(&docs, "ClusterRole", "rouse-controller");
    assert!(!cluster.to_string().contains("leases"));
    let touching = |doc: &Value, resource: &str| -> Vec<Value> {
        doc["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
            })
            .cloned()
            .collect()
    };
    for resource in ["secrets", "serviceaccounts"] {
        let rules = touching(cluster, resource);
        assert_eq!(rules.len(), 1, "{resource}: {rules:?}");
        assert_eq!(rules[0]["verbs"], json!(["get"]), "{resource}");
    }
    let ns = find(&docs, "Role", "rouse-controller").to_string();
    assert!(ns.contains("secrets") && ns.contains("leases"));
    // The webhook touches only its own Secret and configurations (create cannot be named).
    for (kind, resource) in [
        ("Role", "secrets"),
        ("ClusterRole", "mutatingwebhookconfigurations"),
        ("ClusterRole", "validatingwebhookconfigurations"),
    ] {
        for r in &touching(find(&docs, kind, "rouse-controller"), resource) {
            let verbs = r["verbs"].as_array().unwrap();
            let named = r["resourceNames"].as_array().is_some_and(|n| !n.is_empty());
            assert!(
                named || verbs == &[json!("create")],
                "{resource}: {verbs:?} without resourceNames"
            );
            assert!(
                !verbs
                    .iter()
                    .any(|v| v == "list" || v == "watch" || v == "delete")
            );
        }
    }
    // Bindings name their role's account.
    let b = find(&docs, "ClusterRoleBinding", "rouse-gateway");
    assert_eq!(b["subjects"][0]["name"], "rouse-gateway");
    assert_eq!(b["subjects"][0]["namespace"], "knative-serving");
    assert_eq!(b["roleRef"]["name"], "rouse-gateway");
}

/// Reads `key: "value"` (or `key: 'value'`) lines of an `_example` block.
fn example_data(cm: &Value) -> ConfigData {
    cm["data"]["_example"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| v.trim_matches('"'));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn configmaps_document_knatives_defaults() {
    use rouse_api::config::{autoscaler, defaults, features, gc, network, observability};
    let docs = docs();
    let cm = |name: &str| find(&docs, "ConfigMap", name);
    // The documented defaults, parsed by Rouse's own config code, are its defaults.
    assert_eq!(
        autoscaler::AutoscalerConfig::from_data(&example_data(cm("config-autoscaler"))).unwrap(),
        autoscaler::AutoscalerConfig::default()
    );
    assert_eq!(
        defaults::DefaultsConfig::from_data(&example_data(cm("config-defaults"))).unwrap(),
        defaults::DefaultsConfig::default()
    );
    assert_eq!(
        gc::GcConfig::from_data(&example_data(cm("config-gc"))).unwrap(),
        gc::GcConfig::default()
    );
    assert_eq!(
        network::NetworkConfig::from_data(&example_data(cm("config-network"))).unwrap(),
        network::NetworkConfig::default()
    );
    assert_eq!(
        features::FeaturesConfig::from_data(&example_data(cm("config-features"))).unwrap(),
        features::FeaturesConfig::from_data(&ConfigData::new()).unwrap()
    );
    assert_eq!(
        observability::ObservabilityConfig::from_data(&example_data(cm("config-observability")))
            .unwrap(),
        observability::ObservabilityConfig::default()
    );
    assert_eq!(
        DeploymentSettings::from_data(&example_data(cm("config-deployment")))
            .unwrap()
            .tag_resolution(),
        TagResolution::default()
    );
    // Every key of the table is in its ConfigMap's example.
    for (name, keys) in CONFIG_DEFAULTS {
        let data = example_data(cm(name));
        for (k, v) in *keys {
            assert_eq!(data.get(*k).map(String::as_str), Some(*v), "{name} {k}");
        }
    }
    // Live keys Rouse needs: the gateway's ingress class, the sidecar image.
    assert_eq!(
        cm("config-network")["data"]["ingress-class"],
        "rouse.ingress.networking.knative.dev"
    );
    let mut live = ConfigData::new();
    live.insert(
        "ingress-class".into(),
        "rouse.ingress.networking.knative.dev".into(),
    );
    assert_eq!(
        network::NetworkConfig::from_data(&live)
            .unwrap()
            .ingress_class,
        "rouse.ingress.networking.knative.dev"
    );
    assert_eq!(
        cm("config-deployment")["data"]["queue-sidecar-image"],
        "registry.example/rouse:1.2.3"
    );
}

/// With a cluster named by `ROUSE_E2E_KUBECONFIG`, the API server itself validates the
/// manifests (server-side dry run). kubectl cannot validate without a server.
#[test]
fn kubectl_server_side_dry_run_when_a_cluster_is_given() {
    let Ok(kubeconfig) = std::env::var("ROUSE_E2E_KUBECONFIG") else {
        eprintln!(
            "skipped: ROUSE_E2E_KUBECONFIG is unset (kubectl needs an API server to validate)"
        );
        return;
    };
    let kubectl = |args: &[&str]| {
        std::process::Command::new("kubectl")
            .args(["--kubeconfig", &kubeconfig])
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    // A dry run creates nothing, so namespaced documents validate only once the namespace
    // exists; before that, the namespace and the cluster-scoped documents do.
    let ns_exists = kubectl(&["get", "namespace", "knative-serving"])
        .status
        .success();
    let docs: Vec<Value> = docs()
        .into_iter()
        .filter(|d| ns_exists || d["metadata"]["namespace"].is_null())
        .collect();
    let yaml = render_yaml(&docs).unwrap();
    let mut child = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl refused the manifests:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[should_panic(expected = "loses fields in the typed API")]
fn the_strict_check_catches_a_misplaced_field() {
    let docs = docs();
    let mut d = find(&docs, "Deployment", "gateway").clone();
    d["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = true.into();
    strict::<Deployment>(&d);
}

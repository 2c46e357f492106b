//! The CRDs generated from the API types: Knative's names, structural schemas, and the YAML
//! `rouse install` prints for them.

use rouse_kube::crd;
use rouse_kube::schema::structural_violations;
use serde_json::{Value, json};

fn crds() -> Vec<Value> {
    crd::all()
        .expect("CRDs generate")
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect()
}

fn by_name(name: &str) -> Value {
    crds()
        .into_iter()
        .find(|c| c["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no CRD {name}"))
}

/// group, version, kind, short names, categories.
type Names = (String, String, String, Vec<String>, Vec<String>);

#[test]
fn knative_groups_kinds_plurals_short_names_and_categories() {
    let got: Vec<Names> = crds()
        .iter()
        .map(|c| {
            let s = &c["spec"];
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect()
            };
            assert_eq!(s["scope"], "Namespaced");
            assert_eq!(
                c["metadata"]["name"],
                format!(
                    "{}.{}",
                    s["names"]["plural"].as_str().unwrap(),
                    s["group"].as_str().unwrap()
                )
            );
            (
                s["group"].as_str().unwrap().to_string(),
                s["versions"][0]["name"].as_str().unwrap().to_string(),
                s["names"]["kind"].as_str().unwrap().to_string(),
                strings(&s["names"]["shortNames"]),
                strings(&s["names"]["categories"]),
            )
        })
        .collect();
    let want = [
        (
            "serving.knative.dev",
            "v1",
            "Service",
            &["kservice", "ksvc"][..],
            &["all", "knative", "serving"][..],
        ),
        (
            "serving.knative.dev",
            "v1",
            "Configuration",
            &["config", "cfg"],
            &["all", "knative", "serving"],
        ),
        (
            "serving.knative.dev",
            "v1",
            "Revision",
            &["rev"],
            &["all", "knative", "serving"],
        ),
        (
            "serving.knative.dev",
            "v1",
            "Route",
            &["rt"],
            &["all", "knative", "serving"],
        ),
        (
            "autoscaling.internal.knative.dev",
            "v1alpha1",
            "PodAutoscaler",
            &["kpa", "pa"],
            &["all", "knative-internal", "autoscaling"],
        ),
        (
            "networking.internal.knative.dev",
            "v1alpha1",
            "ServerlessService",
            &["sks"],
            &["all", "knative-internal", "networking"],
        ),
        (
            "serving.knative.dev",
            "v1beta1",
            "DomainMapping",
            &["dm"],
            &["all", "knative", "serving"],
        ),
        (
            "networking.internal.knative.dev",
            "v1alpha1",
            "Ingress",
            &["kingress", "king"],
            &["all", "knative-internal", "networking"],
        ),
    ];
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0);
        assert_eq!(g.1, w.1);
        assert_eq!(g.2, w.2);
        assert_eq!(g.3, w.3);
        assert_eq!(g.4, w.4);
    }
}

#[test]
fn every_schema_is_structural_and_every_crd_has_a_status_subresource() {
    for c in crds() {
        let name = c["metadata"]["name"].as_str().unwrap().to_string();
        let v = &c["spec"]["versions"][0];
        assert_eq!(v["served"], true);
        assert_eq!(v["storage"], true);
        assert_eq!(v["subresources"]["status"], json!({}), "{name}");
        let schema = &v["schema"]["openAPIV3Schema"];
        let text = schema.to_string();
        for bad in [
            "$ref",
            "definitions",
            "$defs",
            "anyOf",
            "oneOf",
            "allOf",
            "\"null\"",
            "additionalProperties\":false",
            "\"default\"",
        ] {
            assert!(!text.contains(bad), "{name}: schema contains {bad}");
        }
        assert_eq!(
            structural_violations(schema),
            Vec::<String>::new(),
            "{name}"
        );
        // Root metadata is the API server's: typed object only.
        assert_eq!(
            schema["properties"]["metadata"],
            json!({"type": "object"}),
            "{name}"
        );
        for k in ["apiVersion", "kind", "spec", "status"] {
            assert!(schema["properties"].get(k).is_some(), "{name}: no {k}");
        }
    }
}

#[test]
fn service_schema_shapes() {
    let c = by_name("services.serving.knative.dev");
    let s = &c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let container = &s["spec"]["properties"]["template"]["properties"]["spec"]["properties"]["containers"]
        ["items"]["properties"];
    // IntOrString -> x-kubernetes-int-or-string.
    assert_eq!(
        container["readinessProbe"]["properties"]["httpGet"]["properties"]["port"]["x-kubernetes-int-or-string"],
        true
    );
    // Open-ended JSON (securityContext, envFrom items) preserves unknown fields.
    assert_eq!(
        container["securityContext"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert_eq!(
        container["envFrom"]["items"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert_eq!(
        container["ports"]["items"]["properties"]["containerPort"]["type"],
        "integer"
    );
    assert_eq!(container["image"]["type"], "string");
    // Maps: labels under the template's metadata.
    assert_eq!(
        s["spec"]["properties"]["template"]["properties"]["metadata"]["properties"]["labels"]["additionalProperties"]
            ["type"],
        "string"
    );
    // Conditions: status and enum.
    let cond = &s["status"]["properties"]["conditions"]["items"];
    assert_eq!(
        cond["properties"]["status"]["enum"],
        json!(["True", "False", "Unknown"])
    );
    assert_eq!(cond["required"], json!(["type", "status"]));
    // Doc comments become descriptions (kubectl explain).
    assert!(
        s["spec"]["properties"]["template"]["properties"]["spec"]["properties"]
            ["containerConcurrency"]["description"]
            .as_str()
            .unwrap()
            .contains("concurrent requests")
    );
    // SKS mode is an enum of Knative's values.
    let sks = by_name("serverlessservices.networking.internal.knative.dev");
    assert_eq!(
        sks["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["mode"]["enum"],
        json!(["Serve", "Proxy"])
    );
}

#[test]
fn printer_columns_match_knative() {
    let cols = |name: &str| -> Vec<String> {
        by_name(name)["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    // kubectl prints NAME first, then these: NAME URL LATESTCREATED LATESTREADY READY REASON.
    assert_eq!(
        cols("services.serving.knative.dev"),
        ["URL", "LatestCreated", "LatestReady", "Ready", "Reason"]
    );
    assert_eq!(
        cols("configurations.serving.knative.dev"),
        ["LatestCreated", "LatestReady", "Ready", "Reason"]
    );
    assert_eq!(
        cols("revisions.serving.knative.dev"),
        [
            "Config Name",
            "Generation",
            "Ready",
            "Reason",
            "Actual Replicas",
            "Desired Replicas"
        ]
    );
    assert_eq!(
        cols("routes.serving.knative.dev"),
        ["URL", "Ready", "Reason"]
    );
    assert_eq!(
        cols("domainmappings.serving.knative.dev"),
        ["URL", "Ready", "Reason"]
    );
    let ksvc = by_name("services.serving.knative.dev");
    let ready = &ksvc["spec"]["versions"][0]["additionalPrinterColumns"][3];
    assert_eq!(
        ready["jsonPath"],
        ".status.conditions[?(@.type=='Ready')].status"
    );
    assert_eq!(ready["type"], "string");
}

#[test]
fn crd_yaml_snapshot_of_key_fields() {
    let ksvc = crd::all().unwrap().remove(0);
    let yaml = serde_saphyr::to_string(&ksvc).unwrap();
    // The YAML parses back to the same object.
    let back: Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(back, serde_json::to_value(&ksvc).unwrap());
    for line in [
        "apiVersion: apiextensions.k8s.io/v1",
        "kind: CustomResourceDefinition",
        "  name: services.serving.knative.dev",
        "  group: serving.knative.dev",
        "    kind: Service",
        "    listKind: ServiceList",
        "    plural: services",
        "    singular: service",
        "  scope: Namespaced",
        "      status: {}",
        "        x-kubernetes-int-or-string: true",
        "    - jsonPath: .status.url",
    ] {
        assert!(
            yaml.lines()
                .any(|l| l.trim_end() == line || l.trim() == line.trim()),
            "missing line {line:?} in\n{}",
            &yaml[..yaml.len().min(3000)]
        );
    }
}

/// Checks `value` against a structural schema the way the API server prunes and validates:
/// a field no schema names would be dropped, a value of the wrong type refused. Returns every
/// problem as `path: reason`.
fn validate(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!("{path}: want an integer or a string, got {value}"));
        }
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        other => panic!("{path}: schema type {other:?}"),
    };
    if !ok {
        out.push(format!("{path}: want {}, got {value}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array().filter(|a| !a.contains(value)) {
        out.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(m) = value.as_object() {
        for (k, v) in m {
            let child = format!("{path}.{k}");
            if let Some(s) = schema["properties"].get(k) {
                validate(v, s, &child, out);
            } else if let Some(s) = schema.get("additionalProperties") {
                validate(v, s, &child, out);
            } else {
                out.push(format!(
                    "{child}: unknown field (the API server would drop it)"
                ));
            }
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            if !m.contains_key(r.as_str().unwrap()) {
                out.push(format!("{path}.{}: required", r.as_str().unwrap()));
            }
        }
    }
    if let (Some(items), Some(s)) = (value.as_array(), schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            validate(v, s, &format!("{path}[{i}]"), out);
        }
    }
}

/// The problems the CRD of the manifest's kind finds in it (root metadata is the API
/// server's own ObjectMeta and not checked here).
fn problems(manifest: &Value) -> Vec<String> {
    let kind = manifest["kind"].as_str().unwrap();
    let group = manifest["apiVersion"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let c = crds()
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == kind && c["spec"]["group"] == group)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let schema = &c["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut m = manifest.clone();
    m.as_object_mut().unwrap().remove("metadata");
    let mut out = Vec::new();
    validate(&m, schema, "", &mut out);
    out
}

/// Knative manifests as users write them (the samples of Knative's docs, in their shapes).
const KNATIVE_MANIFESTS: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  labels: {networking.knative.dev/visibility: cluster-local}
spec:
  template:
    metadata:
      name: hello-v2
      annotations:
        autoscaling.knative.dev/target: "10"
        autoscaling.knative.dev/min-scale: "1"
    spec:
      containerConcurrency: 50
      timeoutSeconds: 120
      serviceAccountName: builder
      containers:
        - name: app
          image: ghcr.io/knative/helloworld-go:latest
          imagePullPolicy: IfNotPresent
          ports:
            - name: h2c
              containerPort: 8080
          env:
            - name: TARGET
              value: World
            - name: SECRET
              valueFrom:
                secretKeyRef: {name: creds, key: token}
          envFrom:
            - configMapRef: {name: settings}
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: "1", memory: 1Gi}
          readinessProbe:
            httpGet:
              path: /healthz
              port: 8080
              httpHeaders: [{name: X-Probe, value: "1"}]
            periodSeconds: 0
            successThreshold: 1
          livenessProbe:
            tcpSocket: {port: http}
            initialDelaySeconds: 3
          securityContext:
            runAsNonRoot: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
          volumeMounts:
            - name: config
              mountPath: /etc/config
              readOnly: true
        - name: sidecar
          image: ghcr.io/example/sidecar
      volumes:
        - name: config
          configMap: {name: settings}
  traffic:
    - latestRevision: true
      percent: 80
    - revisionName: hello-v1
      percent: 20
      tag: old
---
apiVersion: serving.knative.dev/v1
kind: Route
metadata:
  name: blue-green
spec:
  traffic:
    - configurationName: app
      latestRevision: true
      percent: 50
    - revisionName: app-00001
      percent: 50
      tag: blue
---
apiVersion: serving.knative.dev/v1
kind: Configuration
metadata:
  name: app
spec:
  template:
    spec:
      containers:
        - image: ghcr.io/knative/autoscale-go:latest
          args: ["--sleep", "100ms"]
"#;

#[test]
fn knative_manifests_fit_the_schemas_unchanged() {
    let docs: Vec<Value> = serde_saphyr::from_multiple(KNATIVE_MANIFESTS).unwrap();
    let hello: Vec<Value> =
        serde_saphyr::from_multiple(include_str!("../../../examples/hello.yaml")).unwrap();
    for m in docs.iter().chain(hello.iter()) {
        assert_eq!(
            problems(m),
            Vec::<String>::new(),
            "{}",
            m["metadata"]["name"]
        );
    }
    // Statuses as the controller writes them fit the status schema too.
    let status = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "status": {
            "observedGeneration": 2,
            "url": "http://hello.default.example.com",
            "latestCreatedRevisionName": "hello-00002",
            "latestReadyRevisionName": "hello-00002",
            "address": {"url": "http://hello.default.svc.cluster.local"},
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "traffic": [{"revisionName": "hello-00002", "percent": 100, "latestRevision": true}],
        },
    });
    assert_eq!(problems(&status), Vec::<String>::new());
}

#[test]
fn the_schema_check_finds_unknown_fields_and_wrong_types() {
    let bad = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "spec": {"template": {"spec": {
            "containerConcurrency": "ten",
            "containerz": [],
            "containers": [{"image": "x", "ports": [{"containerPort": "80"}]}],
        }}},
    });
    let found = problems(&bad);
    assert_eq!(
        found,
        [
            ".spec.template.spec.containerConcurrency: want \"integer\", got \"ten\"",
            ".spec.template.spec.containers[0].ports[0].containerPort: want \"integer\", got \"80\"",
            ".spec.template.spec.containerz: unknown field (the API server would drop it)",
        ]
    );
}

#[test]
fn the_route_ingress_fits_the_ingress_crd() {
    use rouse_kube::route::{IngressConfig, ResolvedTarget, ingress};
    let mut route = rouse_api::serving::Route::default();
    route.metadata.name = "cart".into();
    route.metadata.namespace = "shop".into();
    let t = |tag: &str, rev: &str, percent: i64| ResolvedTarget {
        tag: tag.into(),
        revision: rev.into(),
        percent,
        h2c: false,
    };
    let ing = ingress(
        &route,
        &[
            t("", "cart-00001", 70),
            t("", "cart-00002", 30),
            t("beta", "cart-00002", 100),
        ],
        &Default::default(),
        &IngressConfig {
            network: Default::default(),
            domain: "example.com".into(),
            domains: Default::default(),
            tag_header_routing: true,
        },
    );
    let v = serde_json::to_value(&ing).unwrap();
    assert!(!v["spec"]["rules"].as_array().unwrap().is_empty());
    assert_eq!(problems(&v), Vec::<String>::new());
}

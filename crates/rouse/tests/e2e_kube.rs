//! End to end against a real Kubernetes API server, when `ROUSE_E2E_KUBECONFIG` names one
//! (skipped, with the reason printed, otherwise): `rouse install` applied with kubectl, writes
//! refused while no webhook answers, `rouse controller --kubeconfig --webhook-url` as a
//! process serving the admission webhooks (a bad manifest refused with Knative's message, a
//! good one defaulted, ConfigMap changes taking effect live in the webhook and the reconcilers,
//! a bad ConfigMap refused), the per-revision objects shaped as Knative makes them; the test
//! plays the kubelet (a Node, the pod bound to it and reported Ready with an IP). The pod's
//! containers run here (the test app and `rouse-queue-proxy` on port 8012 of this machine's own
//! address, which is the pod's IP). The Route waits for its Ingress: not Ready until `rouse
//! gateway --kubeconfig` marks the Ingress Ready, then a request through the gateway reaches the
//! app; `rouse activator --kubeconfig` syncs; a 50/50 traffic split over two revisions (the
//! second pod on 10.244.1.2, added to the loopback interface when missing and run as root)
//! reaches both; leader hand-over; scale to zero and back; deleting the Service cascades. Needs
//! `kubectl` on PATH and `cargo build --workspace --bins`. The API server must reach 127.0.0.1
//! (the controllers' webhooks listen there); the suite removes the WebhookConfigurations when
//! it ends, since they then name a URL nobody serves.

mod common;
// rouse-kube's HTTPS test registry, for the tag → digest step.
#[path = "../../rouse-kube/tests/common/registry.rs"]
mod test_registry;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kubectl::{impersonating, kubectl, patch_config};
use common::sidecar::{Sidecar, sidecar_env, start_app, start_app_with};
use serde_json::Value;

const NS: &str = "rouse-e2e";
/// `hello`'s pod IP when the pod only pretends (this machine has no address but loopback,
/// which an EndpointSlice may not hold).
const PRETEND_POD_IP: &str = "10.244.9.9";

fn kubeconfig() -> Option<String> {
    std::env::var("ROUSE_E2E_KUBECONFIG")
        .ok()
        .filter(|s| !s.is_empty())
}

fn rouse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rouse"))
}

fn get_json(kc: &str, what: &str) -> Option<Value> {
    let (ok, out) = kubectl(kc, &["get", "-n", NS, what, "-o", "json"], None);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

fn until<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A `rouse controller` process and the address of its autoscaler stream.
struct Controller(Child, std::net::SocketAddr);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port for a controller's webhooks.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status code of `GET path` on a loopback port, if it answers.
fn probe(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split(' ').nth(1)?.parse().ok()
}

const WEBHOOK_CONFIGS: [&str; 3] = [
    "mutatingwebhookconfiguration/webhook.serving.knative.dev",
    "validatingwebhookconfiguration/validation.webhook.serving.knative.dev",
    "validatingwebhookconfiguration/config.webhook.serving.knative.dev",
];

/// Removes the WebhookConfigurations: a controller out of the cluster rewrote them to its URL,
/// which `kubectl apply` of the install cannot merge back, and which nobody serves once the
/// suite ends.
fn remove_webhook_configs(kc: &str) {
    let mut args = vec!["delete", "--ignore-not-found"];
    args.extend(WEBHOOK_CONFIGS);
    let (ok, out) = kubectl(kc, &args, None);
    assert!(ok, "removing the webhook configurations: {out}");
}

/// True once every WebhookConfiguration names `url` and carries a CA bundle.
fn webhooks_registered(kc: &str, url: &str) -> bool {
    WEBHOOK_CONFIGS.iter().all(|c| {
        let (_, out) = kubectl(kc, &["get", c, "-o", "json"], None);
        serde_json::from_str::<Value>(&out).is_ok_and(|v| {
            let cc = &v["webhooks"][0]["clientConfig"];
            cc["url"].as_str().is_some_and(|u| u.starts_with(url))
                && cc["caBundle"].as_str().is_some_and(|b| !b.is_empty())
        })
    })
}

/// A condition's status and reason (empty when absent).
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

fn ready(obj: &Value) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[test]
fn a_knative_service_on_a_real_api_server() {
    let Some(kc) = kubeconfig() else {
        eprintln!(
            "skipped: set ROUSE_E2E_KUBECONFIG to a kubeconfig file to run against that cluster"
        );
        return;
    };
    // Install: CRDs established.
    remove_webhook_configs(&kc);
    let install = Command::new(rouse_bin()).arg("install").output().unwrap();
    assert!(install.status.success());
    let (ok, out) = kubectl(
        &kc,
        &["apply", "--server-side", "-f", "-"],
        Some(&install.stdout),
    );
    assert!(ok, "install: {out}");
    let (ok, out) = kubectl(
        &kc,
        &[
            "wait",
            "--for",
            "condition=established",
            "--timeout=60s",
            "crd/services.serving.knative.dev",
            "crd/revisions.serving.knative.dev",
            "crd/ingresses.networking.internal.knative.dev",
        ],
        None,
    );
    assert!(ok, "CRDs established: {out}");
    // The sample image's registry is not asked (this machine may have no Internet): its
    // revisions run by tag. The test registry's images are resolved to digests.
    let (ok, out) = patch_config(
        &kc,
        "config-deployment",
        r#"{"registries-skipping-tag-resolving":"kind.local,ko.local,dev.local,ghcr.io"}"#,
    );
    assert!(ok, "config-deployment: {out}");
    let registry_rt = tokio::runtime::Runtime::new().unwrap();
    let registry = registry_rt.block_on(test_registry::TestRegistry::start());
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("registry-ca.pem");
    std::fs::write(&ca_file, &registry.ca_pem).unwrap();
    let _ = kubectl(&kc, &["create", "namespace", NS], None);
    // An earlier run's stand-in activator would put every revision behind it.
    remove_stand_in_activator(&kc);

    let ksvc = |name: &str, traffic: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
             spec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"1\"\n\
             \x20   spec:\n      containers:\n        - image: ghcr.io/knative/helloworld-go:latest\n{traffic}"
        )
    };
    // No webhook answers yet: writes of Knative's kinds fail closed, saying why.
    let (ok, out) = kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some(ksvc("hello", "").as_bytes()),
    );
    assert!(!ok, "a write with no webhook serving must fail: {out}");
    assert!(
        out.contains("failed calling webhook \"webhook.serving.knative.dev\""),
        "{out}"
    );

    let start = |identity: &str, port: u16, health: u16| {
        let mut child = Command::new(rouse_bin())
            .args(["controller", "--kubeconfig", &kc, "--identity", identity])
            // The controller trusts the test registry's CA (and only it).
            .env("SSL_CERT_FILE", &ca_file)
            .args(["--autoscaler-listen", "127.0.0.1:0"])
            .args(["--webhook-listen", &format!("127.0.0.1:{port}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{port}")])
            .args(["--health-listen", &format!("127.0.0.1:{health}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // "rouse controller: autoscaler stream on ADDR", then anything else drained.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let stream = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("the controller printed {line:?}"));
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Controller(child, stream)
    };
    let port_a = free_port();
    let health_a = free_port();
    let first = start("e2e-a", port_a, health_a);
    until("the webhooks registered", Duration::from_secs(60), || {
        webhooks_registered(&kc, &format!("https://127.0.0.1:{port_a}")).then_some(())
    });
    until("the controller ready", Duration::from_secs(60), || {
        (probe(health_a, "/readyz") == Some(200)).then_some(())
    });
    assert_eq!(probe(health_a, "/healthz"), Some(200));

    // A bad manifest is refused with Knative's message and field path.
    let split = "  traffic:\n    - latestRevision: true\n      percent: 90\n";
    let (ok, out) = kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some(ksvc("bad", split).as_bytes()),
    );
    assert!(!ok, "a bad manifest must be refused: {out}");
    assert!(
        out.contains(
            "admission webhook \"validation.webhook.serving.knative.dev\" denied the request: \
             validation failed: Traffic targets sum to 90, want 100: spec.traffic"
        ),
        "{out}"
    );
    // A good one is stored with Knative's defaults and who made it.
    let (ok, out) = kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some(ksvc("hello", "").as_bytes()),
    );
    assert!(ok, "apply ksvc: {out}");
    let stored = get_json(&kc, "ksvc/hello").unwrap();
    let tmpl = &stored["spec"]["template"]["spec"];
    assert_eq!(tmpl["containers"][0]["name"], "user-container");
    assert_eq!(tmpl["timeoutSeconds"], 300);
    assert_eq!(stored["spec"]["traffic"][0]["percent"], 100);
    assert!(stored["metadata"]["annotations"]["serving.knative.dev/creator"].is_string());

    // A ConfigMap change takes effect without a restart (the webhook defaults with it) ...
    let patch_defaults = |value: &str| {
        let p = format!("{{\"data\":{{\"revision-timeout-seconds\":{value}}}}}");
        let args = [
            "patch",
            "configmap",
            "-n",
            "knative-serving",
            "config-defaults",
        ];
        kubectl(
            &kc,
            &[&args[..], &["--type", "merge", "-p", &p]].concat(),
            None,
        )
    };
    let (ok, out) = patch_defaults("\"120\"");
    assert!(ok, "config-defaults: {out}");
    until(
        "the new revision-timeout-seconds",
        Duration::from_secs(30),
        || {
            let (ok, out) = kubectl(
                &kc,
                &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(ksvc("hello2", "").as_bytes()),
            );
            let v: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
            (v["spec"]["template"]["spec"]["timeoutSeconds"] == 120).then_some(())
        },
    );
    // ... and a bad one is refused with the key and the reason.
    let (ok, out) = patch_defaults("\"soon\"");
    assert!(!ok, "a bad ConfigMap must be refused: {out}");
    assert!(
        out.contains(
            "validation failed: config-defaults: revision-timeout-seconds: invalid integer \"soon\""
        ),
        "{out}"
    );
    let (ok, out) = patch_defaults("null");
    assert!(ok, "config-defaults restored: {out}");

    // The objects per revision (a previous holder's Lease may take its 15 s to expire).
    let deploy = until("the Deployment", Duration::from_secs(90), || {
        get_json(&kc, "deployment/hello-00001-deployment")
    });
    let pod_spec = &deploy["spec"]["template"]["spec"];
    let names: Vec<&str> = pod_spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["user-container", "queue-proxy"]);
    // The sidecar is the image's lean binary, with Knative's default resources.
    let qp = &pod_spec["containers"][1];
    assert_eq!(qp["image"], "rouse:dev");
    assert_eq!(qp["command"], serde_json::json!(["/rouse-queue-proxy"]));
    assert_eq!(
        qp["resources"],
        serde_json::json!({"requests": {"cpu": "25m"}})
    );
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["labels"]["serving.knative.dev/revision"],
        "hello-00001"
    );
    assert!(
        deploy["spec"]["selector"]["matchLabels"]["serving.knative.dev/revisionUID"].is_string()
    );
    assert_eq!(deploy["metadata"]["ownerReferences"][0]["kind"], "Revision");
    // A skipped registry: run by tag, the container recorded without a digest (as Knative).
    assert_eq!(
        pod_spec["containers"][0]["image"],
        "ghcr.io/knative/helloworld-go:latest"
    );
    let rev = get_json(&kc, "revision/hello-00001").unwrap();
    assert_eq!(
        rev["status"]["containerStatuses"],
        serde_json::json!([{"name": "user-container"}])
    );
    let private = until("the private Service", Duration::from_secs(60), || {
        get_json(&kc, "service/hello-00001-private")
    });
    assert!(private["spec"]["selector"].is_object());
    let public = until("the public Service", Duration::from_secs(60), || {
        get_json(&kc, "service/hello-00001")
    });
    assert!(public["spec"]["selector"].is_null());

    // Play the kubelet: a Node, the pod bound to it, Ready with an IP.
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: rouse-e2e-node\n";
    let (ok, out) = kubectl(&kc, &["apply", "-f", "-"], Some(node.as_bytes()));
    assert!(ok, "node: {out}");
    let pod = revision_pod(&kc, "hello-00001");
    // The pod's containers run here, on this machine's own address (an EndpointSlice may not
    // hold a loopback one); without one the pod only pretends.
    let pod_ip = own_address();
    let _pod = pod_ip.map(|ip| run_pod(ip, "hello-00001", None));
    let hello_ip = pod_ip.map_or_else(|| PRETEND_POD_IP.to_string(), |ip| ip.to_string());
    report_ready(&kc, &pod, &hello_ip);

    let slice = until(
        "the public EndpointSlice with the pod",
        Duration::from_secs(60),
        || {
            get_json(&kc, "endpointslice/hello-00001-ipv4-0").filter(|s| {
                s["endpoints"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["addresses"][0] == hello_ip.as_str()))
            })
        },
    );
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "hello-00001"
    );
    let ing = until("the Ingress", Duration::from_secs(60), || {
        get_json(&kc, "ingresses.networking.internal.knative.dev/hello")
    });
    let hosts = ing["spec"]["rules"].to_string();
    assert!(
        hosts.contains(&format!("hello.{NS}.example.com")),
        "{hosts}"
    );
    assert!(hosts.contains("\"serviceName\":\"hello-00001\""), "{hosts}");
    // The Route's cluster-local Service: cluster DNS sends hello.rouse-e2e.svc.cluster.local
    // (the Route's address) to the gateway's cluster-local Service.
    let local = until(
        "the Route's cluster-local Service",
        Duration::from_secs(60),
        || get_json(&kc, "service/hello"),
    );
    assert_eq!(local["spec"]["type"], "ExternalName", "{local}");
    assert_eq!(
        local["spec"]["externalName"], "rouse-gateway-local.knative-serving.svc.cluster.local",
        "{local}"
    );
    assert_eq!(local["spec"]["ports"][0]["port"], 80, "{local}");
    let route_uid = get_json(&kc, "route/hello").unwrap()["metadata"]["uid"].clone();
    let owner = &local["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            &owner["kind"],
            &owner["name"],
            &owner["uid"],
            &owner["controller"]
        ),
        (
            &serde_json::json!("Route"),
            &serde_json::json!("hello"),
            &route_uid,
            &serde_json::json!(true)
        ),
        "{local}"
    );
    // The Route waits for its Ingress: no gateway serves it yet, so it is not Ready.
    let route = until(
        "the Route with its traffic assigned",
        Duration::from_secs(60),
        || get_json(&kc, "route/hello").filter(|r| condition(r, "AllTrafficAssigned").0 == "True"),
    );
    assert_eq!(
        condition(&route, "IngressReady"),
        ("Unknown".into(), "IngressNotConfigured".into()),
        "{route}"
    );
    assert!(!ready(&route), "{route}");
    assert!(!get_json(&kc, "ksvc/hello").is_some_and(|s| ready(&s)));

    // The data plane from the API; the gateway serves until the end.
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_hops(&kc, dir.path());
    let svc = until("the Service Ready", Duration::from_secs(90), || {
        get_json(&kc, "ksvc/hello").filter(ready)
    });
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-00001");
    let route = get_json(&kc, "route/hello").unwrap();
    assert_eq!(condition(&route, "IngressReady").0, "True", "{route}");
    through_the_gateway(&gateway, pod_ip.is_some());
    // Before the split: its second pod is gone once the split is checked.
    domain_mapping(&kc, &gateway, pod_ip.is_some());
    traffic_split(&kc, gateway.listening, pod_ip.is_some());
    tag_visibility(&kc);

    // Leader hand-over: a second replica follows while the first leads, and takes the Lease
    // once the first is gone (after the Lease's 15 s duration).
    let holder = |kc: &str| {
        let (_, out) = kubectl(
            kc,
            &[
                "get",
                "lease",
                "-n",
                "knative-serving",
                "rouse-controller",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        );
        out
    };
    until("e2e-a leading", Duration::from_secs(60), || {
        (holder(&kc) == "e2e-a").then_some(())
    });
    let second = start("e2e-b", free_port(), free_port());
    drop(first);
    until("e2e-b taking over", Duration::from_secs(60), || {
        (holder(&kc) == "e2e-b").then_some(())
    });

    // A ConfigMap change reaches the reconcilers too: a new domain template renames the URL of
    // a Service that did not change itself (the leader resyncs on config changes).
    let patch_network = |value: &str| {
        let p = format!("{{\"data\":{{\"domain-template\":{value}}}}}");
        let args = [
            "patch",
            "configmap",
            "-n",
            "knative-serving",
            "config-network",
        ];
        kubectl(
            &kc,
            &[&args[..], &["--type", "merge", "-p", &p]].concat(),
            None,
        )
    };
    let (ok, out) = patch_network("\"{{.Name}}-{{.Namespace}}.{{.Domain}}\"");
    assert!(ok, "config-network: {out}");
    let url = format!("http://hello-{NS}.example.com");
    until(
        "the URL from the new domain template",
        Duration::from_secs(60),
        || get_json(&kc, "ksvc/hello").filter(|s| s["status"]["url"] == url.as_str()),
    );
    let (ok, out) = patch_network("null");
    assert!(ok, "config-network restored: {out}");
    let url = format!("http://hello.{NS}.example.com");
    until(
        "the URL from the default template",
        Duration::from_secs(60),
        || get_json(&kc, "ksvc/hello").filter(|s| s["status"]["url"] == url.as_str()),
    );

    config_domain(&kc);
    config_deployment_rolls_existing_revisions(&kc);
    image_tags_resolve_to_digests(&kc, &registry);
    scale_to_zero(&kc, second.1);

    // Deleting the Service cascades through Kubernetes' garbage collector (the new leader
    // is the one running now).
    let (ok, out) = kubectl(&kc, &["delete", "-n", NS, "ksvc", "hello"], None);
    assert!(ok, "delete: {out}");
    until("the cascade", Duration::from_secs(90), || {
        (get_json(&kc, "deployment/hello-00001-deployment").is_none()
            && get_json(&kc, "revision/hello-00001").is_none()
            && get_json(&kc, "service/hello-00001").is_none()
            && get_json(&kc, "service/hello").is_none())
        .then_some(())
    });
    let _ = kubectl(&kc, &["delete", "node", "rouse-e2e-node"], None);
    remove_webhook_configs(&kc);
}

/// A DomainMapping to `hello` with `spec.tls` naming a Secret the test makes: its Ingress
/// shaped as Knative's (the domain, `rewriteHost` to the Service's cluster-local host, the TLS
/// entry), the mapping Ready once the gateway marks that Ingress Ready, and requests for the
/// domain through the gateway, over HTTP and over HTTPS with the Secret's certificate (chosen
/// by SNI), served by `hello`; deleted after.
fn domain_mapping(kc: &str, hops: &Hops, pod_runs: bool) {
    const DOMAIN: &str = "hello.rouse-e2e.example.org";
    let ca = common::tls::TestCa::new();
    let leaf = ca.leaf(&[DOMAIN]);
    let secret = common::tls::tls_secret(NS, "hello-domain-tls", &leaf).to_string();
    let (ok, out) = kubectl(kc, &["apply", "-f", "-"], Some(secret.as_bytes()));
    assert!(ok, "apply the TLS Secret: {out}");
    let dm = format!(
        "apiVersion: serving.knative.dev/v1beta1\nkind: DomainMapping\nmetadata:\n  name: {DOMAIN}\n  namespace: {NS}\n\
         spec:\n  ref:\n    apiVersion: serving.knative.dev/v1\n    kind: Service\n    name: hello\n\
         \x20 tls:\n    secretName: hello-domain-tls\n"
    );
    let (ok, out) = kubectl(kc, &["apply", "-f", "-"], Some(dm.as_bytes()));
    assert!(ok, "apply the DomainMapping: {out}");
    let ing = until("the mapping's Ingress", Duration::from_secs(60), || {
        get_json(
            kc,
            &format!("ingresses.networking.internal.knative.dev/{DOMAIN}"),
        )
    });
    assert_eq!(
        ing["spec"]["tls"][0]["secretName"], "hello-domain-tls",
        "{ing}"
    );
    let rule = &ing["spec"]["rules"][0];
    assert_eq!(rule["hosts"], serde_json::json!([DOMAIN]), "{ing}");
    assert_eq!(
        rule["http"]["paths"][0]["rewriteHost"],
        format!("hello.{NS}.svc.cluster.local"),
        "{ing}"
    );
    assert_eq!(
        ing["metadata"]["ownerReferences"][0]["kind"],
        "DomainMapping"
    );
    let mapped = until("the DomainMapping Ready", Duration::from_secs(60), || {
        get_json(kc, &format!("domainmapping/{DOMAIN}")).filter(ready)
    });
    assert_eq!(condition(&mapped, "IngressReady").0, "True", "{mapped}");
    assert!(
        get_json(
            kc,
            &format!("ingresses.networking.internal.knative.dev/{DOMAIN}")
        )
        .is_some_and(|i| ready(&i)),
        "the gateway marked the mapping's Ingress Ready"
    );
    // The certificate is served for the domain once the gateway has read the Secret.
    let answer = until(
        "HTTPS for the mapped domain",
        Duration::from_secs(60),
        || common::tls::get(ca.client(&[b"h2", b"http/1.1"]), hops.tls, DOMAIN, "/", &[]).ok(),
    );
    assert_eq!(answer.peer_cert, common::tls::der(&leaf.cert));
    assert_eq!(answer.alpn.as_deref(), Some("h2"));
    if pod_runs {
        let r = common::http_get(hops.listening, DOMAIN, "/").expect("a request for the domain");
        assert_eq!(
            r.status, 200,
            "the mapped domain through the gateway: {r:?}"
        );
        assert_eq!(
            answer.status, 200,
            "the mapped domain over HTTPS: {}",
            answer.body
        );
    }
    let (ok, out) = kubectl(kc, &["delete", "-n", NS, "domainmapping", DOMAIN], None);
    assert!(ok, "delete the DomainMapping: {out}");
    let (ok, out) = kubectl(
        kc,
        &["delete", "-n", NS, "secret", "hello-domain-tls"],
        None,
    );
    assert!(ok, "delete the TLS Secret: {out}");
}

/// Per-tag visibility, as Knative's: the user labels a tag's cluster-local Service
/// `networking.knative.dev/visibility: cluster-local`; the tag's Ingress rule turns
/// ClusterLocal only and its traffic URL cluster-local, the label surviving Rouse's writes;
/// the label removed, the tag is external again. The Route's own cluster-local Service,
/// deleted, is written again at once. The split is left untagged after.
fn tag_visibility(kc: &str) {
    let (ok, out) = kubectl(
        kc,
        &["apply", "-f", "-"],
        Some(split_manifest(Some("canary")).as_bytes()),
    );
    assert!(ok, "tag the latest: {out}");
    let canary_url = |kc: &str| {
        let svc = get_json(kc, "ksvc/hello")?;
        svc["status"]["traffic"]
            .as_array()?
            .iter()
            .find(|t| t["tag"] == "canary")
            .and_then(|t| t["url"].as_str().map(str::to_string))
    };
    let external = format!("http://canary-hello.{NS}.example.com");
    let local = format!("http://canary-hello.{NS}.svc.cluster.local");
    until("the tag's external URL", Duration::from_secs(60), || {
        (canary_url(kc)? == external).then_some(())
    });
    until(
        "the tag's cluster-local Service",
        Duration::from_secs(60),
        || get_json(kc, "service/canary-hello"),
    );
    let tag_rules = |kc: &str| -> Option<Vec<String>> {
        let ing = get_json(kc, "ingresses.networking.internal.knative.dev/hello")?;
        Some(
            ing["spec"]["rules"]
                .as_array()?
                .iter()
                .filter(|r| r["hosts"].to_string().contains("canary-hello"))
                .map(|r| r["visibility"].as_str().unwrap_or("").to_string())
                .collect(),
        )
    };
    let label = |arg: &str| {
        let (ok, out) = kubectl(
            kc,
            &["label", "-n", NS, "service", "canary-hello", arg],
            None,
        );
        assert!(ok, "kubectl label {arg}: {out}");
    };
    label("networking.knative.dev/visibility=cluster-local");
    until(
        "the tag's URL cluster-local",
        Duration::from_secs(60),
        || (canary_url(kc)? == local).then_some(()),
    );
    until(
        "the tag's rule ClusterLocal only",
        Duration::from_secs(60),
        || (tag_rules(kc)? == ["ClusterLocal"]).then_some(()),
    );
    let svc = get_json(kc, "service/canary-hello").unwrap();
    assert_eq!(
        svc["metadata"]["labels"]["networking.knative.dev/visibility"], "cluster-local",
        "{svc}"
    );
    // Rouse wrote the Service since (the table changed): the label is the user's still.
    let (ok, out) = kubectl(
        kc,
        &[
            "get",
            "-n",
            NS,
            "service/canary-hello",
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    );
    assert!(ok, "{out}");
    let svc: Value = serde_json::from_str(&out).unwrap();
    let managers: Vec<&str> = svc["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"rouse-controller"), "{svc}");
    let route = get_json(kc, "route/hello").unwrap();
    assert_eq!(
        route["status"]["url"],
        format!("http://hello.{NS}.example.com")
    );
    assert_eq!(
        route["status"]["address"]["url"],
        format!("http://hello.{NS}.svc.cluster.local")
    );

    label("networking.knative.dev/visibility-");
    until(
        "the tag's URL external again",
        Duration::from_secs(60),
        || (canary_url(kc)? == external).then_some(()),
    );
    until(
        "the tag's external rule back",
        Duration::from_secs(60),
        || (tag_rules(kc)? == ["ClusterLocal", "ExternalIP"]).then_some(()),
    );

    // The Route's own Service deleted: written again without any routing change.
    let uid = get_json(kc, "service/hello").unwrap()["metadata"]["uid"].clone();
    let (ok, out) = kubectl(kc, &["delete", "-n", NS, "service", "hello"], None);
    assert!(ok, "delete the Route's Service: {out}");
    until("the Route's Service again", Duration::from_secs(60), || {
        get_json(kc, "service/hello").filter(|s| s["metadata"]["uid"] != uid)
    });

    let (ok, out) = kubectl(
        kc,
        &["apply", "-f", "-"],
        Some(split_manifest(None).as_bytes()),
    );
    assert!(ok, "untag: {out}");
    until("the tag's Service gone", Duration::from_secs(60), || {
        get_json(kc, "service/canary-hello").is_none().then_some(())
    });
}

/// config-domain (which `rouse install` does not write): a default domain moves the Service's
/// URL and its Ingress' external host; deleting the ConfigMap brings back `--domain`'s.
fn config_domain(kc: &str) {
    let cm = |key: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-domain\n  namespace: knative-serving\n\
             data:\n  {key}: \"\"\n"
        )
    };
    let (ok, out) = kubectl(
        kc,
        &["apply", "-f", "-"],
        Some(cm("e2e.example.net").as_bytes()),
    );
    assert!(ok, "config-domain: {out}");
    let host = format!("hello.{NS}.e2e.example.net");
    let url = format!("http://{host}");
    until(
        "the URL from config-domain",
        Duration::from_secs(60),
        || get_json(kc, "ksvc/hello").filter(|s| s["status"]["url"] == url.as_str()),
    );
    until(
        "the Ingress' external host from config-domain",
        Duration::from_secs(60),
        || {
            let ing = get_json(kc, "ingresses.networking.internal.knative.dev/hello")?;
            ing["spec"]["rules"]
                .as_array()?
                .iter()
                .any(|r| r["visibility"] == "ExternalIP" && r["hosts"][0] == host.as_str())
                .then_some(())
        },
    );
    let (ok, out) = kubectl(
        kc,
        &[
            "delete",
            "configmap",
            "-n",
            "knative-serving",
            "config-domain",
        ],
        None,
    );
    assert!(ok, "config-domain deleted: {out}");
    let url = format!("http://hello.{NS}.example.com");
    until(
        "the URL from --domain again",
        Duration::from_secs(60),
        || get_json(kc, "ksvc/hello").filter(|s| s["status"]["url"] == url.as_str()),
    );
}

/// config-deployment's sidecar resources and progress deadline reach the Deployment of a
/// revision that already exists (Knative rolls them); restored after.
fn config_deployment_rolls_existing_revisions(kc: &str) {
    let patch = |data: &str| patch_config(kc, "config-deployment", data);
    let (ok, out) = patch(
        r#"{"queue-sidecar-memory-request":"32Mi","queue-sidecar-cpu-limit":"500m","progress-deadline":"300s"}"#,
    );
    assert!(ok, "config-deployment: {out}");
    let d = until(
        "hello's Deployment rolled to the new config",
        Duration::from_secs(60),
        || {
            get_json(kc, "deployment/hello-00001-deployment")
                .filter(|d| d["spec"]["progressDeadlineSeconds"] == 300)
        },
    );
    let qp = &d["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(
        qp["resources"],
        serde_json::json!({"requests": {"cpu": "25m", "memory": "32Mi"}, "limits": {"cpu": "500m"}}),
        "{qp}"
    );
    let (ok, out) = patch(
        r#"{"queue-sidecar-memory-request":null,"queue-sidecar-cpu-limit":null,"progress-deadline":null}"#,
    );
    assert!(ok, "config-deployment restored: {out}");
}

/// A Service whose image lives in a registry (the test's, HTTPS on loopback) runs from the
/// digest its tag named when the revision was made; when the tag moves, the next revision
/// gets the new digest and the first keeps its own. Deleted after.
fn image_tags_resolve_to_digests(kc: &str, registry: &test_registry::TestRegistry) {
    registry.set_auth(test_registry::Auth::Bearer(None));
    let first = registry.push("e2e/app:v1", br#"{"schemaVersion":2,"v":1}"#);
    let ksvc = |version: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: pinned\n  namespace: {NS}\n\
             spec:\n  template:\n    spec:\n      containers:\n        - image: {}/e2e/app:v1\n\
             \x20         env:\n            - {{name: VERSION, value: \"{version}\"}}\n",
            registry.host()
        )
    };
    let user_image = |rev: &str| {
        until(
            &format!("{rev}'s Deployment"),
            Duration::from_secs(60),
            || get_json(kc, &format!("deployment/{rev}-deployment")),
        )["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone()
    };
    let (ok, out) = kubectl(kc, &["apply", "-f", "-"], Some(ksvc("1").as_bytes()));
    assert!(ok, "apply pinned: {out}");
    let pinned = format!("{}/e2e/app@{first}", registry.host());
    assert_eq!(user_image("pinned-00001"), pinned.as_str());
    let rev = get_json(kc, "revision/pinned-00001").unwrap();
    assert_eq!(
        rev["status"]["containerStatuses"],
        serde_json::json!([{"name": "user-container", "imageDigest": pinned}])
    );

    let second = registry.push("e2e/app:v1", br#"{"schemaVersion":2,"v":2}"#);
    let (ok, out) = kubectl(kc, &["apply", "-f", "-"], Some(ksvc("2").as_bytes()));
    assert!(ok, "apply pinned again: {out}");
    assert_eq!(
        user_image("pinned-00002"),
        format!("{}/e2e/app@{second}", registry.host()).as_str()
    );
    assert_eq!(user_image("pinned-00001"), pinned.as_str());
    let (ok, out) = kubectl(kc, &["delete", "-n", NS, "ksvc", "pinned"], None);
    assert!(ok, "delete pinned: {out}");
}

/// The name of the revision's (first) pod, once the ReplicaSet made it (not one still
/// terminating from an earlier run: without a kubelet, deleted pods linger).
fn revision_pod(kc: &str, rev: &str) -> String {
    until(&format!("{rev}'s pod"), Duration::from_secs(60), || {
        let pods = get_json(kc, "pods")?;
        pods["items"]
            .as_array()?
            .iter()
            .find(|p| {
                p["metadata"]["labels"]["serving.knative.dev/revision"] == rev
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
    })
}

/// Plays the kubelet for a pod: bound to the test's Node, running and Ready at `ip`.
fn report_ready(kc: &str, pod: &str, ip: &str) {
    let binding = format!(
        "apiVersion: v1\nkind: Binding\nmetadata:\n  name: {pod}\n  namespace: {NS}\ntarget:\n  apiVersion: v1\n  kind: Node\n  name: rouse-e2e-node\n"
    );
    let _ = kubectl(kc, &["create", "-f", "-"], Some(binding.as_bytes()));
    let status = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"startTime":"2026-01-01T00:00:00Z","conditions":[{{"type":"Ready","status":"True"}},{{"type":"ContainersReady","status":"True"}}]}}}}"#
    );
    let (ok, out) = kubectl(
        kc,
        &[
            "patch",
            "-n",
            NS,
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
        None,
    );
    assert!(ok, "pod status: {out}");
}

/// The pod of `zero` answers the autoscaler's scrape for real: a `rouse queue-proxy` in front
/// of the test app, its stats port on 127.0.0.2:9090, the address the test reports as the pod's
/// IP. Load through that sidecar (concurrency 3 against a target of 1) scales the Deployment up;
/// with the load gone, the autoscaler scales the revision to zero: the public EndpointSlice
/// points at the activator (one the test lists as ready) and the Deployment's replicas go to 0.
fn scale_to_zero(kc: &str, autoscaler: std::net::SocketAddr) {
    const POD_IP: &str = "127.0.0.2";
    const ACTIVATOR_IP: &str = "10.244.7.7";
    let app_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _app = start_app(app_port);
    let mut env = sidecar_env(app_port);
    for (k, v) in env.iter_mut() {
        match *k {
            "ROUSE_QUEUE_BIND" => *v = POD_IP.into(),
            "ROUSE_QUEUE_METRICS_PORT" => *v = "9090".into(),
            _ => {}
        }
    }
    let sidecar = Sidecar::start(&env);

    // An activator the SKS can point at (no activator runs here: its address is enough).
    let activator = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: activator-service-e2e\n  namespace: knative-serving\n  labels:\n    kubernetes.io/service-name: activator-service\n    endpointslice.kubernetes.io/managed-by: rouse-e2e\naddressType: IPv4\nendpoints:\n  - addresses: [\"{ACTIVATOR_IP}\"]\n    conditions: {{ready: true}}\nports:\n  - name: http\n    port: 8012\n    protocol: TCP\n"
    );
    let (ok, out) = kubectl(kc, &["apply", "-f", "-"], Some(activator.as_bytes()));
    assert!(ok, "activator slice: {out}");

    let ksvc = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: zero\n  namespace: {NS}\n\
         spec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: \"6s\"\n        autoscaling.knative.dev/target: \"1\"\n\
         \x20   spec:\n      containers:\n        - image: ghcr.io/knative/helloworld-go:latest\n"
    );
    let (ok, out) = kubectl(kc, &["apply", "-f", "-"], Some(ksvc.as_bytes()));
    assert!(ok, "apply ksvc zero: {out}");
    let pod = revision_pod(kc, "zero-00001");
    report_ready(kc, &pod, POD_IP);
    until("zero Ready", Duration::from_secs(90), || {
        get_json(kc, "ksvc/zero").filter(ready)
    });
    // Three requests at a time through the pod's sidecar, until the autoscaler reacts.
    let serving = sidecar.addr("serving");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::SeqCst)
                    && started.elapsed() < Duration::from_secs(120)
                {
                    let _ = common::http_get(serving, "zero.rouse-e2e", "/?sleep=300");
                }
            })
        })
        .collect();
    until(
        "zero scaled up by its load",
        Duration::from_secs(90),
        || {
            get_json(kc, "deployment/zero-00001-deployment")
                .filter(|d| d["spec"]["replicas"].as_i64() >= Some(2))
        },
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in load {
        l.join().unwrap();
    }
    let idle = Instant::now();
    until(
        "zero's Deployment scaled to 0",
        Duration::from_secs(180),
        || get_json(kc, "deployment/zero-00001-deployment").filter(|d| d["spec"]["replicas"] == 0),
    );
    println!("scaled to zero {:?} after the load stopped", idle.elapsed());
    until(
        "zero's public EndpointSlice on the activator",
        Duration::from_secs(60),
        || {
            get_json(kc, "endpointslice/zero-00001-ipv4-0").filter(|s| {
                s["endpoints"].as_array().is_some_and(|e| {
                    e.iter().all(|e| e["addresses"][0] == ACTIVATOR_IP) && !e.is_empty()
                })
            })
        },
    );
    let sks = get_json(
        kc,
        "serverlessservices.networking.internal.knative.dev/zero-00001",
    )
    .unwrap();
    assert_eq!(sks["spec"]["mode"], "Proxy", "{sks}");
    wake_through_the_activator(kc, autoscaler);
    let _ = kubectl(kc, &["delete", "-n", NS, "ksvc", "zero"], None);
    remove_stand_in_activator(kc);
}

/// A request at zero through a real `rouse activator` (out of the cluster, pointed at the
/// leader's stream with the token from the controller's Secret) pokes the autoscaler, which
/// scales the Deployment up from zero.
fn wake_through_the_activator(kc: &str, autoscaler: std::net::SocketAddr) {
    use std::io::{BufRead, Write};
    let (ok, token) = kubectl(
        kc,
        &[
            "get",
            "secret",
            "-n",
            "knative-serving",
            "autoscaler-token",
            "-o",
            "jsonpath={.data.token}",
        ],
        None,
    );
    assert!(ok, "the token Secret: {token}");
    let token = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .expect("base64 token")
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), &token).unwrap();
    let endpoints = serde_json::json!({"revisions": [
        {"namespace": NS, "name": "zero-00001", "mode": "proxy", "pods": []}
    ]});
    std::fs::write(dir.path().join("endpoints.json"), endpoints.to_string()).unwrap();
    let mut activator = Command::new(rouse_bin())
        .args([
            "activator",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(["--metrics", "127.0.0.1:0", "--endpoints"])
        .arg(dir.path().join("endpoints.json"))
        .args(["--autoscaler", &format!("http://{autoscaler}")])
        .arg("--autoscaler-token-file")
        .arg(dir.path().join("token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(activator.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listening=")?.parse().ok())
        .unwrap_or_else(|| panic!("the activator printed {line:?}"));
    let activator = Controller(activator, addr);
    // The request waits in the activator (no pod is reachable): the poke is what counts.
    let mut req = std::net::TcpStream::connect(addr).unwrap();
    let sent = Instant::now();
    req.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: zero.{NS}.example.com\r\nKnative-Serving-Namespace: {NS}\r\nKnative-Serving-Revision: zero-00001\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    until(
        "zero's Deployment scaled up by the activator's poke",
        Duration::from_secs(30),
        || {
            get_json(kc, "deployment/zero-00001-deployment")
                .filter(|d| d["spec"]["replicas"].as_i64() >= Some(1))
        },
    );
    println!(
        "request at zero through rouse activator -> Deployment replicas >= 1 on the API server: {:?}",
        sent.elapsed()
    );
    drop(req);
    drop(activator);
}

fn remove_stand_in_activator(kc: &str) {
    // Also the conformance suite's (`conformance_kube`), which it leaves when it ends.
    let _ = kubectl(
        kc,
        &[
            "delete",
            "-n",
            "knative-serving",
            "endpointslice",
            "-l",
            "endpointslice.kubernetes.io/managed-by in (rouse-e2e,rouse-conformance)",
            "--ignore-not-found",
        ],
        None,
    );
}

/// This machine's own non-loopback address (the route to a non-local address starts there;
/// nothing is sent).
fn own_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.255:9")
        .or_else(|_| s.connect("10.255.255.255:9"))
        .ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// A revision's pod, run here: the test app (answering `message` when given) and its sidecar
/// on the pod IP's port 8012 (where the public EndpointSlice sends).
fn run_pod(
    pod_ip: std::net::IpAddr,
    revision: &str,
    message: Option<&str>,
) -> (common::sidecar::Killed, Sidecar) {
    let app_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = match message {
        None => start_app(app_port),
        Some(m) => start_app_with(app_port, &[("MESSAGE", m)]),
    };
    let mut env = sidecar_env(app_port);
    for (k, v) in env.iter_mut() {
        match *k {
            "ROUSE_QUEUE_BIND" | "SERVING_POD_IP" => *v = pod_ip.to_string(),
            "QUEUE_SERVING_PORT" => *v = "8012".into(),
            "SERVING_NAMESPACE" => *v = NS.into(),
            "SERVING_REVISION" => *v = revision.into(),
            _ => {}
        }
    }
    (app, Sidecar::start(&env))
}

/// `ip` if this machine has it. A second pod needs an address of its own (port 8012 of this
/// machine's address is the first pod's); run as root, the test adds `ip`/32 to the loopback
/// interface (a non-loopback address there is one an EndpointSlice accepts).
fn extra_address(ip: std::net::IpAddr) -> Option<std::net::IpAddr> {
    let usable = || std::net::TcpListener::bind((ip, 0)).is_ok();
    if !usable() {
        let _ = Command::new("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    usable().then_some(ip)
}

/// `rouse activator` or `rouse gateway` with `--kubeconfig`, acting as its ServiceAccount; the
/// process (with its serving address) and its admin address.
fn start_hop(role: &str, kc: &str, dir: &std::path::Path) -> (Controller, std::net::SocketAddr) {
    let (hop, admin, ..) = start_hop_with(role, kc, dir, &[]);
    (hop, admin)
}

/// [`start_hop`] with `extra` flags; also the addresses printed as `tls=` and `local=`, if
/// any.
fn start_hop_with(
    role: &str,
    kc: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (
    Controller,
    std::net::SocketAddr,
    Option<std::net::SocketAddr>,
    Option<std::net::SocketAddr>,
) {
    use std::io::BufRead;
    let kc = impersonating(kc, &format!("rouse-{role}"), dir).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(rouse_bin())
        .args([role, "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kc)
        .args(["--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(extra)
        .env_remove("POD_IP")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let find = |key: &str| -> Option<std::net::SocketAddr> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
    };
    let addr = |key: &str| find(key).unwrap_or_else(|| panic!("{role} printed {line:?}"));
    (
        Controller(child, addr("listening=")),
        addr("admin="),
        find("tls="),
        find("local="),
    )
}

/// `rouse gateway` and `rouse activator` fed by the API, each with its install RBAC only.
struct Hops {
    /// The gateway's serving address.
    listening: std::net::SocketAddr,
    /// The gateway's HTTPS address.
    tls: std::net::SocketAddr,
    /// The gateway's cluster-local address (the only one serving cluster-local hosts).
    local: std::net::SocketAddr,
    _gateway: Controller,
    _activator: Controller,
}

/// Starts the hops and waits for both to have synced and for the gateway to mark `hello`'s
/// Ingress Ready.
fn start_hops(kc: &str, dir: &std::path::Path) -> Hops {
    let (gateway, gateway_admin, tls, local) = start_hop_with(
        "gateway",
        kc,
        dir,
        &[
            "--listen-tls",
            "127.0.0.1:0",
            "--listen-local",
            "127.0.0.1:0",
        ],
    );
    let tls = tls.expect("the gateway printed its HTTPS address");
    let local = local.expect("the gateway printed its cluster-local address");
    let (activator, activator_admin) = start_hop("activator", kc, dir);
    for admin in [gateway_admin, activator_admin] {
        until("the hops synced", Duration::from_secs(60), || {
            let r = common::http_get(admin, "localhost", "/readyz").ok()?;
            (r.status == 200).then_some(())
        });
    }
    until(
        "the Ingress marked Ready by the gateway",
        Duration::from_secs(60),
        || get_json(kc, "ingresses.networking.internal.knative.dev/hello").filter(ready),
    );
    Hops {
        listening: gateway.1,
        tls,
        local,
        _gateway: gateway,
        _activator: activator,
    }
}

/// A request for `hello`'s host through the gateway reaches the app; an unknown host is 404.
/// The Route's cluster-local host is served on the cluster-local listener only: the external
/// one answers it as unknown.
fn through_the_gateway(hops: &Hops, pod_runs: bool) {
    let gateway = hops.listening;
    let host = format!("hello.{NS}.example.com");
    let local_host = format!("hello.{NS}.svc.cluster.local");
    if pod_runs {
        until(
            "a request through the gateway",
            Duration::from_secs(60),
            || {
                let r = common::http_get(gateway, &host, "/").ok()?;
                (r.status == 200).then_some(())
            },
        );
        // Both hosts come from the same Ingress: known together.
        for h in [&local_host, &host] {
            let r = common::http_get(hops.local, h, "/").unwrap();
            assert_eq!(r.status, 200, "{h} through the cluster-local listener");
        }
    } else {
        eprintln!("no address but loopback here: the request through the gateway is not sent");
    }
    let r = common::http_get(gateway, &local_host, "/").unwrap();
    assert_eq!(r.status, 404, "{local_host} through the external listener");
    let r = common::http_get(gateway, "nobody.example.com", "/").unwrap();
    assert_eq!(r.status, 404);
}

/// The second revision's pod IP (on the loopback interface, see [`extra_address`]).
const SECOND_POD_IP: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, 2));
/// Requests sent through the split.
const SPLIT_REQUESTS: usize = 200;

/// A traffic split: `hello` gets a second revision and its traffic is split 50/50 between the
/// first (by name) and the latest; once the gateway serves the split the Service is Ready
/// with both in its traffic, the Ingress carries both splits as Knative shapes them, and
/// requests through the gateway reach both pods in about that proportion.
/// `hello` split 50/50 between its first revision and the latest (the second), the latest
/// tagged `tag` if given.
fn split_manifest(tag: Option<&str>) -> String {
    let tag = tag.map_or(String::new(), |t| format!("      tag: {t}\n"));
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  namespace: {NS}\n\
         spec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"1\"\n\
         \x20   spec:\n      containers:\n        - image: ghcr.io/knative/helloworld-go:latest\n\
         \x20         env:\n            - name: TARGET\n              value: two\n\
         \x20 traffic:\n    - revisionName: hello-00001\n      percent: 50\n\
         \x20   - latestRevision: true\n      percent: 50\n{tag}"
    )
}

fn traffic_split(kc: &str, gateway: std::net::SocketAddr, pods_run: bool) {
    let split = split_manifest(None);
    let (ok, out) = kubectl(kc, &["apply", "-f", "-"], Some(split.as_bytes()));
    assert!(ok, "apply the split: {out}");
    let pod = revision_pod(kc, "hello-00002");
    let ip = pods_run.then(|| extra_address(SECOND_POD_IP)).flatten();
    let _pod = ip.map(|ip| run_pod(ip, "hello-00002", Some("hello-00002")));
    report_ready(kc, &pod, &SECOND_POD_IP.to_string());

    let svc = until("the split served", Duration::from_secs(90), || {
        get_json(kc, "ksvc/hello").filter(|s| {
            ready(s)
                && s["status"]["traffic"]
                    .as_array()
                    .is_some_and(|t| t.len() == 2)
        })
    });
    let traffic: Vec<(&str, i64)> = svc["status"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap_or(""),
                t["percent"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(traffic, [("hello-00001", 50), ("hello-00002", 50)], "{svc}");
    // Knative's shape: the external rule's one path splits over the revisions' public
    // Services, each split appending the revision and namespace headers.
    let ing = get_json(kc, "ingresses.networking.internal.knative.dev/hello").unwrap();
    let external = ing["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["visibility"] == "ExternalIP")
        .unwrap_or_else(|| panic!("an external rule: {ing}"));
    assert_eq!(
        external["hosts"],
        serde_json::json!([format!("hello.{NS}.example.com")])
    );
    let splits = &external["http"]["paths"][0]["splits"];
    let want: Vec<Value> = ["hello-00001", "hello-00002"]
        .iter()
        .map(|rev| {
            serde_json::json!({"serviceName": rev, "serviceNamespace": NS, "servicePort": 80,
                "percent": 50, "appendHeaders": {"Knative-Serving-Namespace": NS,
                                                 "Knative-Serving-Revision": rev}})
        })
        .collect();
    assert_eq!(*splits, Value::Array(want), "{ing}");

    if ip.is_none() {
        eprintln!(
            "no second address for a pod here ({SECOND_POD_IP} is not on this machine and could \
             not be added): the requests through the split are not sent"
        );
        return;
    }
    let host = format!("hello.{NS}.example.com");
    let mut second = 0;
    for _ in 0..SPLIT_REQUESTS {
        let r = common::http_get(gateway, &host, "/").expect("a request through the split");
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body.trim() == "hello-00002" {
            second += 1;
        }
    }
    println!(
        "split 50/50: {} of {SPLIT_REQUESTS} requests reached hello-00001, {second} hello-00002",
        SPLIT_REQUESTS - second
    );
    // 50 % of 200 is 100 with a standard deviation near 7: 60..=140 fails only if the split
    // is not applied (or one revision is not reached at all).
    assert!(
        (60..=140).contains(&second),
        "{second} of {SPLIT_REQUESTS} reached the second revision"
    );
}

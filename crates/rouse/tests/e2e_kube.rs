//! End to end against a real Kubernetes API server, when `ROUSE_E2E_KUBECONFIG` names one
//! (skipped, with the reason printed, otherwise): `rouse install` applied with kubectl, a
//! Knative Service applied with kubectl, `rouse controller --kubeconfig` as a process, the
//! per-revision objects shaped as Knative makes them; the test plays the kubelet (a Node, the
//! pod bound to it and reported Ready with an IP) so the Service becomes Ready; the pod's
//! containers run here (the test app and `rouse queue-proxy` on this machine's own address,
//! which is the pod's IP), so a request through `rouse gateway --kubeconfig` reaches the app
//! and the gateway marks the Ingress Ready; `rouse activator --kubeconfig` syncs; deleting the
//! Service cascades. Needs `kubectl` on PATH and `cargo build --workspace --bins`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NS: &str = "rouse-e2e";

fn kubeconfig() -> Option<String> {
    std::env::var("ROUSE_E2E_KUBECONFIG")
        .ok()
        .filter(|s| !s.is_empty())
}

fn rouse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rouse"))
}

fn kubectl(kc: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kc)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
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

/// A process of the test, killed when dropped.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This machine's own non-loopback address (the route to a non-local address starts there;
/// nothing is sent): the pod IP, so that it is a real pod address and reaches here.
fn own_address() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.255:9")
        .or_else(|_| s.connect("10.255.255.255:9"))
        .ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// The pod's containers, run here: the test app on a free port and the sidecar on the pod
/// IP's port 8012 (where the public EndpointSlice sends).
fn run_pod(pod_ip: IpAddr) -> (Controller, Controller) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = Controller(
        Command::new(rouse_bin().with_file_name("rouse-testapp"))
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("the test app starts (cargo build --workspace --bins)"),
    );
    let env = [
        ("SERVING_NAMESPACE", NS.to_string()),
        ("SERVING_SERVICE", "hello".into()),
        ("SERVING_CONFIGURATION", "hello".into()),
        ("SERVING_REVISION", "hello-00001".into()),
        ("SERVING_POD", "hello-00001-deployment-e2e".into()),
        ("SERVING_POD_IP", pod_ip.to_string()),
        ("QUEUE_SERVING_PORT", "8012".into()),
        ("QUEUE_SERVING_TLS_PORT", "8112".into()),
        ("USER_PORT", port.to_string()),
        ("CONTAINER_CONCURRENCY", "0".into()),
        ("REVISION_TIMEOUT_SECONDS", "300".into()),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0".into()),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "0".into()),
        ("SERVING_LOGGING_CONFIG", String::new()),
        ("SERVING_LOGGING_LEVEL", String::new()),
        (
            "SERVING_READINESS_PROBE",
            r#"{"tcpSocket":{"port":0},"successThreshold":1}"#.into(),
        ),
        ("ENABLE_HTTP2_AUTO_DETECTION", "false".into()),
        ("ROUSE_QUEUE_BIND", pod_ip.to_string()),
        ("ROUSE_QUEUE_H2C_PORT", "0".into()),
        ("ROUSE_QUEUE_ADMIN_PORT", "0".into()),
        ("ROUSE_QUEUE_METRICS_PORT", "0".into()),
        ("ROUSE_QUEUE_USER_METRICS_PORT", "0".into()),
    ];
    let sidecar = Controller(
        Command::new(rouse_bin())
            .arg("queue-proxy")
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (app, sidecar)
}

/// A kubeconfig like `kc` that acts as the install's ServiceAccount `account`, so what the
/// role does is checked against its RBAC.
fn impersonating(kc: &str, account: &str, dir: &std::path::Path) -> PathBuf {
    let (ok, out) = kubectl(
        kc,
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ],
        None,
    );
    assert!(ok, "kubectl config view: {out}");
    let mut config: Value = serde_json::from_str(&out).expect("kubeconfig as JSON");
    config["users"][0]["user"]["as"] =
        format!("system:serviceaccount:knative-serving:{account}").into();
    let path = dir.join(format!("{account}.kubeconfig"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// `rouse activator` or `rouse gateway` with `--kubeconfig`, acting as its ServiceAccount, and
/// its serving and admin addresses.
fn start_hop(role: &str, kc: &str, dir: &std::path::Path) -> (Controller, SocketAddr, SocketAddr) {
    let kc = impersonating(kc, &format!("rouse-{role}"), dir);
    let mut child = Command::new(rouse_bin())
        .args([role, "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kc)
        .args(["--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .env_remove("POD_IP")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("{role} printed {line:?}"))
    };
    let (serving, admin) = (addr("listening="), addr("admin="));
    (Controller(child), serving, admin)
}

/// One HTTP/1.1 GET; the status and body.
fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, raw.split_once("\r\n\r\n")?.1.to_string()))
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
    let _ = kubectl(&kc, &["create", "namespace", NS], None);

    let ksvc = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  namespace: {NS}\n\
         spec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"1\"\n\
         \x20   spec:\n      containers:\n        - image: ghcr.io/knative/helloworld-go:latest\n"
    );
    let (ok, out) = kubectl(&kc, &["apply", "-f", "-"], Some(ksvc.as_bytes()));
    assert!(ok, "apply ksvc: {out}");

    let start = |identity: &str| {
        Controller(
            Command::new(rouse_bin())
                .args(["controller", "--kubeconfig", &kc, "--identity", identity])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let first = start("e2e-a");

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
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["labels"]["serving.knative.dev/revision"],
        "hello-00001"
    );
    assert!(
        deploy["spec"]["selector"]["matchLabels"]["serving.knative.dev/revisionUID"].is_string()
    );
    assert_eq!(deploy["metadata"]["ownerReferences"][0]["kind"], "Revision");
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
    let pod = until("the revision's pod", Duration::from_secs(60), || {
        let pods = get_json(&kc, "pods")?;
        pods["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["labels"]["serving.knative.dev/revision"] == "hello-00001")
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
    });
    let binding = format!(
        "apiVersion: v1\nkind: Binding\nmetadata:\n  name: {pod}\n  namespace: {NS}\ntarget:\n  apiVersion: v1\n  kind: Node\n  name: rouse-e2e-node\n"
    );
    let _ = kubectl(&kc, &["create", "-f", "-"], Some(binding.as_bytes()));
    // The pod's containers run here when this machine has an address other than loopback
    // (a pod IP is a routable address, not loopback); otherwise the pod only pretends.
    let pod_ip = own_address();
    let _pod = pod_ip.map(run_pod);
    let ip = pod_ip.map_or_else(|| "10.244.9.9".to_string(), |ip| ip.to_string());
    let status = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}},{{"type":"ContainersReady","status":"True"}}]}}}}"#
    );
    let (ok, out) = kubectl(
        &kc,
        &[
            "patch",
            "-n",
            NS,
            "pod",
            &pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
        None,
    );
    assert!(ok, "pod status: {out}");

    let svc = until("the Service Ready", Duration::from_secs(90), || {
        get_json(&kc, "ksvc/hello").filter(ready)
    });
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-00001");
    let slice = until(
        "the public EndpointSlice with the pod",
        Duration::from_secs(60),
        || {
            get_json(&kc, "endpointslice/hello-00001-ipv4-0").filter(|s| {
                s["endpoints"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["addresses"][0] == ip.as_str()))
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

    // The data plane from the API, each hop with its install RBAC only: the gateway routes the
    // Ingress's host to the pod and marks the Ingress Ready; the activator syncs its
    // Revisions and EndpointSlices.
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, gateway, gateway_admin) = start_hop("gateway", &kc, dir.path());
    let (_activator, _, activator_admin) = start_hop("activator", &kc, dir.path());
    for admin in [gateway_admin, activator_admin] {
        until("the hops synced", Duration::from_secs(60), || {
            (get(admin, "localhost", "/readyz")?.0 == 200).then_some(())
        });
    }
    until(
        "the Ingress marked Ready by the gateway",
        Duration::from_secs(60),
        || get_json(&kc, "ingresses.networking.internal.knative.dev/hello").filter(ready),
    );
    let host = format!("hello.{NS}.example.com");
    if pod_ip.is_some() {
        let (status, body) = until(
            "a request through the gateway",
            Duration::from_secs(60),
            || get(gateway, &host, "/").filter(|(s, _)| *s == 200),
        );
        assert_eq!(status, 200, "{body}");
    } else {
        eprintln!(
            "no address other than loopback here: the request through the gateway is not sent"
        );
    }
    assert_eq!(
        get(gateway, "nobody.example.com", "/").map(|r| r.0),
        Some(404)
    );

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
    let _second = start("e2e-b");
    drop(first);
    until("e2e-b taking over", Duration::from_secs(60), || {
        (holder(&kc) == "e2e-b").then_some(())
    });

    // Deleting the Service cascades through Kubernetes' garbage collector (the new leader
    // is the one running now).
    let (ok, out) = kubectl(&kc, &["delete", "-n", NS, "ksvc", "hello"], None);
    assert!(ok, "delete: {out}");
    until("the cascade", Duration::from_secs(90), || {
        (get_json(&kc, "deployment/hello-00001-deployment").is_none()
            && get_json(&kc, "revision/hello-00001").is_none()
            && get_json(&kc, "service/hello-00001").is_none())
        .then_some(())
    });
    let _ = kubectl(&kc, &["delete", "node", "rouse-e2e-node"], None);
}
